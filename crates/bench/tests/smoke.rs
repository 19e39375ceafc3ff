//! Keeps the benchmark harness from rotting: every measurement on a tiny size, both files
//! written with every row. Asserts what was written, never how fast anything ran.

use std::path::Path;
use std::process::Command;

#[test]
fn the_harness_runs_every_measurement_and_writes_both_files() {
    let out = tempfile::tempdir().expect("a temporary directory");
    #[allow(clippy::disallowed_methods, reason = "runs the benchmark harness")]
    let output = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .arg("--out")
        .arg(out.path())
        .args(["--repeats", "2", "--calls", "50", "--starts", "3"])
        .args(["--bytes", "1048576"])
        .args([
            "--plugins",
            "2,4",
            "--load-plugins",
            "2",
            "--load-millis",
            "200",
        ])
        .output()
        .expect("tether-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("==> repetition 2/2: floors"),
        "progress is shown: {stdout}"
    );

    let markdown = std::fs::read_to_string(out.path().join("benchmarks.md")).expect("markdown");
    for figure in [
        "host -> plugin unary call (health) p50",
        "plugin -> host service call (GetEnv, audited, reused connection) p50",
        "cold start (spawn to first call, sandboxed) p50",
        "warm start (taken from a Pool, to first call answered, sandboxed) p50",
        "sandboxing overhead on cold start p50",
        "WriteFile of",
        "ReadFile of",
        "2 plugins started at once, each answering health",
        "4 plugins started at once, each answering health",
        "the cost per plugin of 2",
        "low-latency lane between tether peers: plugin -> host GetEnv (audited) p50",
        "low-latency lane between tether peers: a 32-byte round trip between two processes",
        "low-latency lane between tether peers: host -> plugin 32-byte unary call p50",
        "host -> plugin 32-byte unary call on a lane vs go-plugin's health call p50",
        "resident memory per idle plugin (PSS mean",
        "aggregate audited host-service calls across 2 plugins",
        "floor with tokio's current-thread runtime on both sides p50",
        "measured 2 times in this run",
        "## Analysis",
    ] {
        assert!(markdown.contains(figure), "{figure:?} missing:\n{markdown}");
    }
    assert!(
        markdown.contains("4/4 in"),
        "every plugin answered:\n{markdown}"
    );
    // Where the sockets were, and on what: a disk file system makes every start dearer.
    let temp = tether_host::PluginBuilder::default_socket_base_dir();
    assert!(
        markdown.contains(&format!("plugin sockets in {} (", temp.display())),
        "{markdown}"
    );
    // The plugin linked without PIE is built by `cargo xtask bench` only.
    assert!(
        markdown.contains("not built here (`cargo xtask bench` builds it)"),
        "{markdown}"
    );
    // Without --go the go-plugin rows say why they are empty.
    assert!(markdown.contains("skipped: no Go toolchain"), "{markdown}");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("benchmarks.json")).expect("json"),
    )
    .expect("valid JSON");
    let figures = &json["figures"];
    assert_eq!(figures["settings"]["calls"], 50);
    assert_eq!(figures["settings"]["repeats"], 2);
    // Every figure twice, each latency beside a floor of its own.
    for series in [
        &figures["floor"],
        &figures["floor_tokio"],
        &figures["floor_pinned"],
        &figures["host_call"]["floor"],
        &figures["host_call"]["figure"],
        &figures["health"]["floor"],
        &figures["cold_start_sandboxed"],
        &figures["warm_start"],
    ] {
        let runs = series["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2, "{series}");
        assert!(
            runs.iter()
                .all(|run| run["samples"] == 50 || run["samples"] == 3),
            "{series}"
        );
    }
    for list in ["transfer", "load"] {
        assert_eq!(figures[list].as_array().map(Vec::len), Some(2), "{list}");
    }
    // Two counts of plugins at once, each in both repetitions, for each way of starting
    // them: the default first; each has its rows.
    let many = figures["many"].as_array().expect("many");
    assert!(!many.is_empty() && many.len().is_multiple_of(4), "{many:?}");
    assert_eq!(many[1]["healthy"], 4);
    let default = many[0]["variant"].as_str().expect("a variant");
    assert!(
        default.starts_with(&format!("sockets in {} (", temp.display())),
        "{default}"
    );
    for run in many {
        let variant = run["variant"].as_str().expect("a variant");
        assert!(
            markdown.contains(&format!(
                "4 plugins started at once, each answering health ({variant})"
            )),
            "{variant}: {markdown}"
        );
    }
    assert_eq!(figures["transfer"][0]["bytes"], 1_048_576);
    assert!(figures["transfer"][0]["disk_read_seconds"].as_f64() > Some(0.0));
    let rows = json["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        markdown
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| figure"))
            .count()
    );
    assert!(Path::new(&out.path().join("benchmarks.md")).is_file());
}

#[test]
fn a_go_release_that_is_not_release_equals_dir_is_refused_with_an_example() {
    #[allow(clippy::disallowed_methods, reason = "runs the benchmark harness")]
    let output = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .args(["--go", "target/go/v1_8_0"])
        .output()
        .expect("tether-bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not RELEASE=DIR (for example v1.8.0=target/go/v1_8_0)"),
        "{stderr}"
    );
}
