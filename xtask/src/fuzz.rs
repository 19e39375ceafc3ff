//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the libFuzzer targets in `fuzz/` on
//! the stable toolchain (the sanitizer-coverage flags cargo-fuzz would pass, without
//! needing cargo-fuzz or nightly), then runs each target for a bounded time on its corpus.
//!
//! `fuzz/` is its own workspace with its own lock file and target directory
//! (`fuzz/target`), so building it never touches the main build. Seeds are committed in
//! `fuzz/seeds/<target>/`; the working corpus grows in `fuzz/corpus/<target>/` (ignored by
//! git) and starts as a copy of the seeds; crashes land in `fuzz/artifacts/<target>/`.
//! Not part of `cargo xtask test`. See docs/fuzzing.md.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::{cargo, project_root, run_step};

/// Every fuzz target, one per parser of untrusted input (`fuzz/fuzz_targets/<name>.rs`).
const TARGETS: [&str; 9] = [
    "handshake",
    "capability",
    "manifest",
    "policy",
    "path",
    "hclog",
    "conninfo",
    "call_context",
    "traceparent",
];

/// Seconds each target runs unless `--seconds` says otherwise.
const DEFAULT_SECONDS: u64 = 60;

/// The flags `cargo fuzz build` passes by default (sanitizer coverage for libFuzzer), all
/// stable `-C` options, plus debug assertions and overflow checks so that arithmetic bugs
/// crash instead of wrapping.
const RUSTFLAGS: &[&str] = &[
    "--cfg fuzzing",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "-Ccodegen-units=1",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// How one target's run went.
struct Outcome {
    target: &'static str,
    seconds: u64,
    runs: Option<u64>,
    corpus: usize,
    /// `None` when it found nothing; else what it found and where it wrote the input.
    failure: Option<String>,
}

pub(crate) fn run(args: &[&str]) -> Result<()> {
    let (seconds, targets) = parse_args(args)?;
    let fuzz = project_root().join("fuzz");
    let triple = host_triple()?;
    run_step(
        "building the fuzz targets (release, sanitizer coverage, fuzz/target)",
        cargo()
            .args(["build", "--release", "--bins", "--manifest-path"])
            .arg(fuzz.join("Cargo.toml"))
            .args(["--target", &triple])
            // Without `--target`, RUSTFLAGS would also instrument build scripts and proc
            // macros; with it, they apply to the fuzz targets and their dependencies only.
            .env("RUSTFLAGS", RUSTFLAGS.join(" "))
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("CARGO_TARGET_DIR", fuzz.join("target")),
    )?;
    let bin_dir = fuzz.join("target").join(&triple).join("release");
    let mut outcomes = Vec::new();
    for target in targets {
        println!("==> fuzzing {target} for {seconds} s");
        outcomes.push(fuzz_one(&fuzz, &bin_dir, target, seconds)?);
    }
    println!();
    println!(
        "{:<14} {:>8} {:>14} {:>8}  result",
        "target", "seconds", "runs", "corpus"
    );
    for outcome in &outcomes {
        let runs = outcome
            .runs
            .map_or_else(|| "?".to_owned(), |runs| runs.to_string());
        println!(
            "{:<14} {:>8} {:>14} {:>8}  {}",
            outcome.target,
            outcome.seconds,
            runs,
            outcome.corpus,
            outcome.failure.as_deref().unwrap_or("ok")
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.failure.is_some())
        .map(|outcome| outcome.target)
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) failed: {}; reproduce with the target's binary and the input \
             file (docs/fuzzing.md)",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// `[--seconds N] [TARGET...]`; no target means all of them.
fn parse_args(args: &[&str]) -> Result<(u64, Vec<&'static str>)> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match *arg {
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .ok()
                    .filter(|seconds| *seconds > 0)
                    .with_context(|| format!("--seconds {value:?}: expected whole seconds > 0"))?;
            }
            name => match TARGETS.iter().find(|target| **target == name) {
                Some(target) => targets.push(*target),
                None => bail!(
                    "unknown fuzz target {name:?}; the targets are {}",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if targets.is_empty() {
        targets.extend(TARGETS);
    }
    Ok((seconds, targets))
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV named no host triple")
}

/// Runs one target for `seconds` on its corpus; its libFuzzer log goes to
/// `fuzz/artifacts/<target>/last-run.log`.
fn fuzz_one(fuzz: &Path, bin_dir: &Path, target: &'static str, seconds: u64) -> Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    seed(&fuzz.join("seeds").join(target), &corpus)?;
    let log_path = artifacts.join("last-run.log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut prefix = artifacts.into_os_string();
    prefix.push("/");
    let started = Instant::now();
    let status = Command::new(bin_dir.join(target))
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg({
            let mut arg = std::ffi::OsString::from("-artifact_prefix=");
            arg.push(&prefix);
            arg
        })
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(project_root())
        .status()
        .with_context(|| format!("running the fuzz target {target}"))?;
    let seconds = started.elapsed().as_secs();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let runs = text
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|runs| runs.trim().parse().ok());
    let failure = (!status.success()).then(|| {
        let written = text
            .lines()
            .find_map(|line| line.split_once("Test unit written to "))
            .map(|(_, file)| file.trim().to_owned());
        let kind = text
            .lines()
            .find_map(|line| line.split_once("ERROR: libFuzzer: "))
            .map_or("failed", |(_, kind)| kind.trim());
        match written {
            Some(file) => format!("{kind}: {file} (log: {})", log_path.display()),
            None => format!("{kind} ({status}; log: {})", log_path.display()),
        }
    });
    let outcome = Outcome {
        target,
        seconds,
        runs,
        corpus: count_files(&corpus)?,
        failure,
    };
    record(fuzz, &outcome)?;
    Ok(outcome)
}

/// Appends the outcome to `fuzz/artifacts/runs.tsv`, the local history of every run, so
/// that the time and executions a target has had add up across runs.
fn record(fuzz: &Path, outcome: &Outcome) -> Result<()> {
    let path = fuzz.join("artifacts").join("runs.tsv");
    let new = !path.exists();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if new {
        writeln!(file, "unix_time\ttarget\tseconds\truns\tcorpus\tresult")?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    writeln!(
        file,
        "{now}\t{}\t{}\t{}\t{}\t{}",
        outcome.target,
        outcome.seconds,
        outcome
            .runs
            .map_or_else(String::new, |runs| runs.to_string()),
        outcome.corpus,
        outcome.failure.as_deref().unwrap_or("ok")
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Copies into `corpus` every seed it does not have yet.
fn seed(seeds: &Path, corpus: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(seeds) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", seeds.display()))?;
        let to: PathBuf = corpus.join(entry.file_name());
        if entry.file_type()?.is_file() && !to.exists() {
            fs::copy(entry.path(), &to)
                .with_context(|| format!("copying {} to the corpus", entry.path().display()))?;
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> Result<usize> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter(|entry| entry.as_ref().is_ok_and(|entry| entry.path().is_file()))
        .count())
}
