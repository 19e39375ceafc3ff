//! The demo, end to end: `tether-demo` runs the real filelister and colorlister plugins,
//! under the strict sandbox, and its transcript is snapshot-tested (timestamps, pids,
//! paths and remaining times redacted).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tether_host::Layer;

use crate::support::{cargo_build, kernel_enforces, missing};

/// The demo's plugins.
const PLUGINS: [&str; 2] = ["filelister", "colorlister"];

/// Builds `tether-demo` and the plugins (other packages' binaries are not built for this
/// package's tests), once, with the same command `cargo xtask demo` uses.
fn build_demo() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["tether-demo", "tether-filelister", "tether-colorlister"]))
}

/// A demo run's directories: the staged plugins, a workspace (not created), an audit file.
struct Run {
    root: tempfile::TempDir,
}

impl Run {
    fn new() -> Self {
        let bins = build_demo();
        let root = tempfile::tempdir().expect("a temporary directory");
        let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        for name in PLUGINS {
            let dir = root.path().join("plugins").join(name);
            std::fs::create_dir_all(&dir).expect("staging the plugins");
            std::fs::copy(
                project.join(name).join("plugin.toml"),
                dir.join("plugin.toml"),
            )
            .expect("staging a manifest");
            std::fs::copy(bins.join(name), dir.join(name)).expect("staging a plugin");
        }
        Run { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn demo(&self, extra: &[&str]) -> Output {
        #[allow(clippy::disallowed_methods, reason = "runs the demo host")]
        Command::new(build_demo().join("tether-demo"))
            .arg("--plugins")
            .arg(self.path("plugins"))
            .arg("--workspace")
            .arg(self.path("workspace"))
            .arg("--audit")
            .arg(self.path("audit.jsonl"))
            .arg("--sandbox")
            .arg(demo_sandbox())
            .args(extra)
            .env_remove("NO_COLOR")
            .output()
            .expect("tether-demo runs")
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .expect("the audit log")
            .lines()
            .map(|line| serde_json::from_str(line).expect("an audit record"))
            .collect()
    }
}

/// `strict` where this kernel enforces every layer, else `best-effort`, so that the demo's
/// steps are still checked there.
fn demo_sandbox() -> &'static str {
    if Layer::ALL.iter().all(|&layer| missing(layer).is_none()) {
        "strict"
    } else {
        "best-effort"
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_demo_runs_every_step_on_the_real_plugins_under_the_strict_sandbox() {
    // The transcript shows each plugin's sandbox, all layers on.
    for layer in Layer::ALL {
        if !kernel_enforces(layer, "the transcript shows the strict sandbox") {
            return;
        }
    }
    let run = Run::new();
    let output = run.demo(&[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");

    // The transcript, with what changes from run to run redacted.
    let mut redacted = stdout.clone();
    for (name, placeholder) in [
        ("workspace", "[WORKSPACE]"),
        ("plugins", "[PLUGINS]"),
        ("audit.jsonl", "[AUDIT]"),
    ] {
        redacted = redacted.replace(&run.path(name).display().to_string(), placeholder);
    }
    insta::with_settings!({filters => vec![
        (r"pid \d+", "pid [PID]"),
        (r#""pid":\d+"#, r#""pid":"[PID]""#),
        (r#""time":"[^"]+""#, r#""time":"[TIME]""#),
        (r#""timeout_ms":\d+"#, r#""timeout_ms":"[MS]""#),
        (r"\d+ ms left", "[MS] ms left"),
    ]}, {
        insta::assert_snapshot!("demo_transcript", redacted);
    });
    assert!(
        !stdout.contains('\x1b'),
        "no colors when stdout is not a terminal"
    );

    // The plugins' log lines reach the host with the request id they were working for.
    assert!(
        stderr.lines().any(|line| line.contains("colorlister")
            && line.contains("request_id=demo-5")
            && line.contains("deadline_ms=")),
        "{stderr}"
    );

    // The audit log kept every decision; every call of request demo-5 had its deadline,
    // its publish on the host's bus too.
    let records = run.audit();
    assert_eq!(records.len(), 12, "{records:#?}");
    let demo5: Vec<_> = records
        .iter()
        .filter(|r| r["request_id"] == "demo-5")
        .collect();
    assert_eq!(demo5.len(), 5);
    for record in demo5 {
        assert_eq!(record["plugin"], "colorlister");
        let left = record["timeout_ms"].as_u64().expect("a deadline");
        assert!(left > 0 && left <= 10_000, "{record}");
    }

    // The host's own service, on the same gate: filelister's publish allowed, colorlister's
    // denied, each audited under the bus's capability.
    let publishes: Vec<_> = records
        .iter()
        .filter(|r| r["operation"] == "tether.bus.v1.Bus/Publish")
        .map(|r| {
            (
                r["plugin"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
                r["capability"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        publishes,
        [
            ("filelister", "allowed", "bus:publish:reports", "reports"),
            ("colorlister", "denied", "bus:publish:reports", "reports"),
        ]
    );
    // The report filelister wrote through the host, before its write was revoked.
    let report = std::fs::read_to_string(run.path("workspace/reports/docs.txt")).unwrap();
    assert!(report.starts_with("docs: 4 entries\n"), "{report}");
}

#[test]
fn quiet_prints_only_the_summary_and_a_missing_plugin_dir_says_what_to_do() {
    let run = Run::new();
    let output = run.demo(&["--quiet"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(
            "demo finished: 2 plugins, 4 calls, 12 audit records (9 allowed, 3 denied)"
        ),
        "{stdout}"
    );

    #[allow(clippy::disallowed_methods, reason = "runs the demo host")]
    let missing = Command::new(build_demo().join("tether-demo"))
        .args(["--plugins", "/nonexistent/plugins", "--quiet"])
        .output()
        .expect("tether-demo runs");
    assert!(!missing.status.success());
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains("/nonexistent/plugins/filelister/plugin.toml"),
        "{stderr}"
    );
}
