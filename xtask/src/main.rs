//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! One module per task; Rust instead of shell scripts so that the tasks behave the same on
//! every machine with a Rust toolchain.
#![allow(
    clippy::disallowed_methods,
    reason = "xtask drives cargo and other tools as child processes"
)]

mod bench;
mod demo;
mod fuzz;
mod go;
mod guides;
mod proto;
mod publish;
mod soak;
mod test;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo [-- ARGS]  build and run the demo (two plugins, shared host services, a denial,
                  a revocation, shutdown); ARGS go to tether-demo, e.g. -- --help
  bench [-- ARGS] build in release mode and measure tether against the socket floor and
                  go-plugin; writes docs/benchmarks.md and docs/benchmarks.json
  test            formatting, clippy (warnings denied), generated-code freshness, the code
                  map, all tests, docs (warnings denied), `cargo package` of the public crates
  package         only the publishing checks of `test`: code map, rust-version, docs,
                  `cargo package` of every public crate
  soak [RUNS]     the end-to-end suite RUNS times (default 20) with a CPU hog on every
                  core beside it; prints failures per test
  fuzz [--seconds N] [TARGET...]  run the fuzz targets in fuzz/ (default 60 s each)
  proto           regenerate crates/protocol/src/generated from proto/, and each
                  workspace member's src/generated from its own proto/ (examples/*,
                  crates/demo-contract, crates/bench, tests/contract)
  proto --check   fail if the committed generated code is stale
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["test"] => test::run(),
        ["package"] => publish::check_layout().and_then(|()| publish::check_packages()),
        ["soak", extra @ ..] => soak::run(extra),
        ["demo", extra @ ..] => demo::run(extra),
        ["fuzz", extra @ ..] => fuzz::run(extra),
        ["bench", extra @ ..] => bench::run(extra),
        ["proto"] => proto::run(proto::Mode::Write),
        ["proto", "--check"] => proto::run(proto::Mode::Check),
        ["help" | "--help" | "-h"] | [] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("unknown task {args:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of `xtask/`).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || project_root().join("target"),
            |dir| project_root().join(dir),
        )
}

/// A `cargo` command run from the workspace root, using the cargo that runs xtask.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root());
    cmd
}

/// Runs a command to completion, printing what runs; fails with the command line on error.
fn run_step(step: &str, cmd: &mut Command) -> Result<()> {
    println!("==> {step}");
    let status = cmd
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status}): {cmd:?}");
    }
    Ok(())
}
