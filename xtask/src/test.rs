//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! The Go interop tests (`tests/e2e/interop*.rs`, the go-plugin conformance matrix) need Go
//! (the version the `go` line of `tests/go/fixtures/go.mod` names) and the Go module proxy.
//! Where Go is missing or too old they are skipped, counted, and the line says why and
//! what to install. CI's machines have Go, so CI runs them.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, go, project_root, proto, publish, run_step};

/// The name prefix of the Go interop tests in the `e2e` test binary (modules `interop`,
/// whose matrix cells are `interop::matrix::...`, and `interop_real`).
pub(crate) const INTEROP: &str = "interop";

/// The environment variable naming the file where a test that cannot run on this machine
/// (a kernel without a sandbox layer it needs) records `test: why`, one line each, so that
/// the summary counts it as skipped rather than passed.
pub(crate) const SKIPS_ENV: &str = "TETHER_TEST_SKIPS";

pub(crate) fn run() -> Result<()> {
    run_step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    println!("==> generated code freshness");
    proto::run(proto::Mode::Check)?;
    let go_missing = go::missing();
    let go = go_missing.is_none();
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
    publish::check_layout()?;
    let skips = tempfile::NamedTempFile::new().context("creating the skip record")?;
    if go {
        run_step(
            "cargo test (with the Go interop tests)",
            cargo()
                .args(["test", "--workspace", "--locked"])
                .env(SKIPS_ENV, skips.path()),
        )?;
    } else {
        let skipped = count_interop_tests()?;
        run_step(
            "cargo test (without the Go interop tests: no usable Go)",
            cargo()
                .args(["test", "--workspace", "--locked", "--", "--skip", INTEROP])
                .env(SKIPS_ENV, skips.path()),
        )?;
        println!(
            "skipped: {skipped} Go interop tests: {} ({})",
            go_missing.unwrap_or_default(),
            go::install_hint()
        );
    }
    publish::check_packages()?;
    let skipped = read_skips(skips.path());
    if !skipped.is_empty() {
        println!(
            "skipped: {} checks not run here (not counted as passed):",
            skipped.len()
        );
        for skip in &skipped {
            println!("  {skip}");
        }
    }
    Ok(())
}

/// The `test: why` lines tests recorded in the skip file at `path`, if any.
pub(crate) fn read_skips(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a libtest run printed: how many tests passed, and which failed.
pub(crate) struct Results {
    pub(crate) passed: usize,
    pub(crate) failed: Vec<String>,
}

/// Reads libtest's `test NAME ... ok|FAILED` lines.
pub(crate) fn results(output: &str) -> Results {
    let mut results = Results {
        passed: 0,
        failed: Vec::new(),
    };
    for line in output.lines() {
        let Some((name, verdict)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.rsplit_once(" ... "))
        else {
            continue;
        };
        match verdict.trim() {
            "ok" => results.passed += 1,
            "FAILED" => results.failed.push(name.to_owned()),
            _ => {}
        }
    }
    results
}

/// `gofmt -l` on the Go fixtures: lists files that are not formatted.
fn gofmt() -> Result<()> {
    println!("==> gofmt -l tests/go/fixtures");
    let output = Command::new("gofmt")
        .arg("-l")
        .arg(project_root().join("tests/go/fixtures"))
        .output()
        .context("running gofmt")?;
    let listed = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !listed.trim().is_empty() {
        bail!(
            "gofmt: these Go files are not formatted (run `gofmt -w tests/go/fixtures`):\n{listed}{}",
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
