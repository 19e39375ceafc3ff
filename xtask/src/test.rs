//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! The Go interop tests (`tests/e2e/interop.rs`) need Go and go-plugin from Debian's
//! packages. Where they are missing, they are skipped, counted, and the line says what to
//! install; `.ci/run` installs them, so CI always runs them.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, go, project_root, proto, run_step};

/// The name prefix of the Go interop tests in the `e2e` test binary.
const INTEROP: &str = "interop::";

pub(crate) fn run() -> Result<()> {
    run_step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    println!("==> generated code freshness");
    proto::run(proto::Mode::Check)?;
    let go = go::available();
    if go {
        gofmt()?;
    }
    run_step(
        "cargo clippy (warnings denied)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    if go {
        return run_step(
            "cargo test (with the Go interop tests)",
            cargo().args(["test", "--workspace", "--locked"]),
        );
    }
    let skipped = count_interop_tests()?;
    run_step(
        "cargo test (without the Go interop tests: no Go toolchain)",
        cargo().args(["test", "--workspace", "--locked", "--", "--skip", INTEROP]),
    )?;
    println!(
        "skipped: {skipped} Go interop tests: no Go toolchain (install: apt-get install -y \
         {})",
        go::PACKAGES
    );
    Ok(())
}

/// `gofmt -l` on the Go fixtures: lists files that are not formatted.
fn gofmt() -> Result<()> {
    println!("==> gofmt -l tests/go");
    let output = Command::new("gofmt")
        .arg("-l")
        .arg(project_root().join("tests/go/src"))
        .output()
        .context("running gofmt")?;
    let listed = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !listed.trim().is_empty() {
        bail!(
            "gofmt: these Go files are not formatted (run `gofmt -w tests/go/src`):\n{listed}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// How many Go interop tests the `e2e` binary has.
fn count_interop_tests() -> Result<usize> {
    let output = cargo()
        .args([
            "test",
            "--locked",
            "--quiet",
            "--package",
            "tether-e2e",
            "--test",
            "e2e",
        ])
        .args(["--", INTEROP, "--list"])
        .output()
        .context("listing the Go interop tests")?;
    if !output.status.success() {
        bail!(
            "listing the Go interop tests failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with(INTEROP) && line.ends_with(": test"))
        .count())
}
