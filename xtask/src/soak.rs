//! `cargo xtask soak [N]`: the end-to-end suite N times in a row (default 20) with a CPU
//! hog spinning on every core beside it, then failures per test.
//!
//! A test that fails here only under load is a defect of the test or of the code, never
//! "just the machine": CI runs on two loaded cores, and one red run blocks every landing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, go, target_dir, test};

/// Runs of the suite when none is given.
const DEFAULT_RUNS: usize = 20;

/// One run of the suite that takes longer than this is stopped and counted as a hang.
const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);

pub(crate) fn run(args: &[&str]) -> Result<()> {
    let runs = match args {
        [] => DEFAULT_RUNS,
        [n] => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("soak takes a number of runs above 0, not {n:?}"))?,
        _ => bail!("usage: cargo xtask soak [RUNS] (default {DEFAULT_RUNS})"),
    };
    println!("==> building the end-to-end suite");
    let suite = build_suite()?;
    let go_missing = go::missing();
    let with_go = go_missing.is_none();
    if let Some(why) = go_missing {
        println!(
            "note: the Go interop tests are skipped: {why} ({})",
            go::install_hint()
        );
    }
    let logs = target_dir().join("soak");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let hog = Hog::start(cores);
    println!("==> {runs} runs of the suite, a CPU hog busy on each of {cores} cores beside it");
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut skips: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed_runs = 0;
    let started = Instant::now();
    for run in 1..=runs {
        let log = logs.join(format!("run-{run}.log"));
        let outcome = run_once(&suite, with_go, &log)?;
        for name in &outcome.failed {
            *failures.entry(name.clone()).or_default() += 1;
        }
        for skip in &outcome.skipped {
            *skips.entry(skip.clone()).or_default() += 1;
        }
        let verdict = if outcome.clean() {
            "ok".to_owned()
        } else {
            failed_runs += 1;
            format!("FAILED (output: {})", log.display())
        };
        println!(
            "run {run:>3}/{runs}: {:>3} passed, {:>2} failed, {:>2} skipped, {:>6.1} s  {verdict}",
            outcome.passed,
            outcome.failed.len(),
            outcome.skipped.len(),
            outcome.took.as_secs_f64(),
        );
        if let Some(trouble) = &outcome.trouble {
            println!("          {trouble}");
        }
    }
    drop(hog);

    println!(
        "\n{runs} runs in {:.0} s under the hog: {} clean, {failed_runs} with failures",
        started.elapsed().as_secs_f64(),
        runs - failed_runs
    );
    for (skip, count) in &skips {
        println!("skipped in {count}/{runs} runs: {skip}");
    }
    if failures.is_empty() && failed_runs == 0 {
        println!("no test failed");
        return Ok(());
    }
    println!("\n| test | failed runs |\n|---|---|");
    for (name, count) in &failures {
        println!("| {name} | {count}/{runs} |");
    }
    bail!(
        "{failed_runs} of {runs} runs failed; the logs are in {}",
        logs.display()
    )
}

/// Builds the `e2e` test binary and returns its path.
fn build_suite() -> Result<PathBuf> {
    let output = cargo()
        .args([
            "test",
            "--locked",
            "--package",
            "tether-e2e",
            "--test",
            "e2e",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the end-to-end suite failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("\"compiler-artifact\""))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|artifact| artifact["target"]["name"] == "e2e")
        .find_map(|artifact| artifact["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `e2e` test executable")
}

/// What one run of the suite did.
struct Outcome {
    passed: usize,
    failed: Vec<String>,
    skipped: Vec<String>,
    took: Duration,
    /// Why the run failed beyond its failed tests (a hang, a crash of the harness).
    trouble: Option<String>,
}

impl Outcome {
    fn clean(&self) -> bool {
        self.failed.is_empty() && self.trouble.is_none()
    }
}

fn run_once(suite: &Path, with_go: bool, log: &Path) -> Result<Outcome> {
    let skips = log.with_extension("skips");
    let _ = std::fs::remove_file(&skips);
    let output =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let errors = output.try_clone()?;
    let mut command = std::process::Command::new(suite);
    if !with_go {
        command.args(["--skip", test::INTEROP]);
    }
    command
        .env(test::SKIPS_ENV, &skips)
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors);
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("running {}", suite.display()))?;
    let (status, hung) = wait_bounded(child, RUN_LIMIT)?;
    let took = started.elapsed();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let results = test::results(&text);
    let trouble = if hung {
        Some(format!("stopped after {RUN_LIMIT:?}: the suite hung"))
    } else if !status.success() && results.failed.is_empty() {
        Some(format!("the suite failed ({status}) with no failed test"))
    } else {
        None
    };
    Ok(Outcome {
        passed: results.passed,
        failed: results.failed,
        skipped: test::read_skips(&skips),
        took,
        trouble,
    })
}

/// Waits for `child` at most `limit`; kills it past that. Returns its status and whether
/// it had to be killed.
fn wait_bounded(mut child: Child, limit: Duration) -> Result<(std::process::ExitStatus, bool)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Ok((child.wait()?, true));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Threads that keep every core busy until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Hog {
    fn start(cores: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005))
                                .wrapping_add(1);
                        }
                    }
                })
            })
            .collect();
        Hog { stop, threads }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
