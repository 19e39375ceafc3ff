//! `tether` run as a process on real files: what it prints, and its exit codes.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// How long a test waits for `--follow` to print a line before calling it a failure: it
/// bounds how long a failure takes to be noticed, never how fast anything runs.
const PATIENCE: Duration = Duration::from_secs(60);

fn tether(args: &[&str]) -> Output {
    #[allow(clippy::disallowed_methods, reason = "runs the binary under test")]
    Command::new(TETHER)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("tether runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test file");
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

const GOOD: &str = r#"[plugins.filelister]
workspace = "workspace"
grant = [
    "read:docs/**",
    { capability = "env:API_KEY", uses = 1 },
    { capability = "write:old/**", expires_at = "2020-01-01T00:00:00Z" },
    { capability = "delete:tmp/*", expires_in = "8h" },
]
deny = ["read:docs/private/**"]

[plugins.colorlister]
grant = ["read:**"]
"#;

#[test]
fn a_valid_policy_is_summarised_one_line_per_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "policy.toml", GOOD);
    let output = tether(&["policy", "check", arg(&file)]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(text.contains("valid, 2 plugins"), "{text}");
    let workspace = dir.path().join("workspace");
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with("filelister:"))
        .expect("a line for filelister");
    for expected in [
        format!("workspace {}", workspace.display()),
        "read:docs/** (until revoked)".to_owned(),
        "env:API_KEY (1 use)".to_owned(),
        "write:old/** (until 2020-01-01T00:00:00Z)".to_owned(),
        "delete:tmp/* (for 8h from loading)".to_owned(),
        "denies read:docs/private/**".to_owned(),
    ] {
        assert!(line.contains(&expected), "{expected:?} in {line}");
    }
    assert!(
        text.contains("colorlister: no workspace; grants read:** (until revoked); denies nothing"),
        "{text}"
    );
}

/// Checks `text` as a policy file and returns its output, asserting exit code 1.
fn check_invalid(text: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = write(dir.path(), "policy.toml", text);
    let mut args = vec!["policy", "check", arg(&file)];
    args.extend(extra);
    let output = tether(&args);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}{}", stderr(&output));
    out.replace(arg(&file), "policy.toml")
}

#[test]
fn every_error_of_a_policy_is_reported_at_its_line_and_column() {
    let out = check_invalid(
        r#"[plugins.p]
workspace = "w"
grant = [
    "read:docs/**",
    "read:/etc/**",
    "bus:publish:x",
    { capability = "read:a", expire_in = "1h" },
]
deny = ["read:docs/[a]"]

[plugins.q]
grant = ["env:*"]
"#,
        &[],
    );
    for expected in [
        "policy.toml:5:5: error: plugin `p`: grant \"read:/etc/**\": paths are relative to the \
         plugin's workspace; remove the leading `/`",
        "policy.toml:6:5: error: plugin `p`: grant \"bus:publish:x\": unknown capability kind \
         `bus`",
        "declare it: --kind NAME:ACTIONS:none|path|name",
        "policy.toml:7:5: error: plugin `p`: grant \"read:a\": unknown field `expire_in`",
        "policy.toml:9:9: error: plugin `p`: denial \"read:docs/[a]\": only `*` and `**` are \
         wildcards",
        // The loader names only the first plugin with errors; check names them all.
        "policy.toml:12:10: error: plugin `q`: grant \"env:*\": an env capability names one \
         variable exactly",
        "policy.toml: not valid, 5 errors",
    ] {
        assert!(out.contains(expected), "{expected:?} in\n{out}");
    }
    // The offending line is shown under each error.
    assert!(out.contains("    5 |     \"read:/etc/**\","), "{out}");
}

#[test]
fn a_pinned_digest_is_summarised_and_a_bad_one_reported_at_its_line() {
    let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "policy.toml",
        &format!("[plugins.p]\nsha256 = \"{digest}\"\ngrant = [\"read:**\"]\n"),
    );
    let output = tether(&["policy", "check", arg(&file)]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains(&format!("denies nothing; binary pinned to sha256 {digest}")),
        "{text}"
    );

    let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    std::fs::write(&file, format!("[plugins.p]\npublisher = \"{key}\"\n")).unwrap();
    let output = tether(&["policy", "check", arg(&file)]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains(&format!("binary vouched for by publisher {key}")),
        "{text}"
    );
    let out = check_invalid("[plugins.p]\npublisher = \"RWnot-a-key\"\n", &[]);
    assert!(
        out.contains("policy.toml:2:13: error: plugin `p`: publisher \"RWnot-a-key\" is not a minisign public key"),
        "{out}"
    );

    let out = check_invalid("[plugins.p]\ngrant = []\nsha256 = \"12ab\"\n", &[]);
    assert!(
        out.contains(
            "policy.toml:3:10: error: plugin `p`: sha256 \"12ab\" is not a SHA-256 digest: it \
             has 4 characters, not 64; write the 64 hexadecimal digits `sha256sum` prints"
        ),
        "{out}"
    );
    assert!(out.contains("not valid, 1 error"), "{out}");
}

#[test]
fn an_unknown_key_and_bad_toml_are_reported_at_their_line() {
    let out = check_invalid("[plugins.p]\nworkspace = \"w\"\n\ngrants = []\n", &[]);
    assert!(
        out.contains("policy.toml:4:1: error: unknown field `grants`, expected one of"),
        "{out}"
    );
    let out = check_invalid("\n\n[plugins.p\ngrant = []\n", &[]);
    assert!(out.contains("policy.toml:3:"), "{out}");
    let out = check_invalid("[plugins.p]\nworkspace = 3\n", &[]);
    assert!(out.contains("policy.toml:2:13: error:"), "{out}");
}

#[test]
fn the_hosts_own_kinds_are_declared_with_kind() {
    let text = "[plugins.p]\ngrant = [\"bus:publish:alerts/**\", \"counter:incr\"]\n";
    check_invalid(text, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "policy.toml", text);
    let output = tether(&[
        "policy",
        "check",
        arg(&file),
        "--kind",
        "bus:publish,subscribe:path",
        "--kind",
        "counter:incr:none",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    // A kind the host could not declare, or a malformed spec, is a usage error.
    let output = tether(&["policy", "check", arg(&file), "--kind", "bus:publish"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("NAME:ACTIONS:RESOURCE"),
        "{}",
        stderr(&output)
    );
    // Only the undeclared kind is an error.
    let out = check_invalid(text, &["--kind", "bus:publish:path"]);
    assert!(
        out.contains("policy.toml:2:35: error: plugin `p`: grant \"counter:incr\""),
        "{out}"
    );
    assert!(out.contains("not valid, 1 error"), "{out}");
}

#[test]
fn a_missing_policy_file_is_exit_code_2_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for args in [
        vec!["policy", "check", arg(&missing)],
        vec!["policy", "explain", arg(&missing), "p", "read:x"],
        vec!["audit", "query", arg(&missing)],
        vec!["audit", "summary", arg(&missing)],
    ] {
        let output = tether(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = stderr(&output);
        assert!(
            err.contains("error: could not read the") && err.contains("missing.toml"),
            "{args:?}: {err}"
        );
    }
    let output = tether(&["inspect", arg(&missing), "--cookie", "K=V"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("error: could not read the plugin"),
        "{}",
        stderr(&output)
    );
    // Bad usage is exit code 2 as well.
    assert_eq!(tether(&["policy", "check"]).status.code(), Some(2));
    let output = tether(&["inspect", arg(&missing), "--cookie", "no-equals-sign"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("is not KEY=VALUE"),
        "{}",
        stderr(&output)
    );
}

fn explain(file: &Path, plugin: &str, request: &str) -> (i32, String) {
    let output = tether(&["policy", "explain", arg(file), plugin, request]);
    let text = format!("{}{}", stdout(&output), stderr(&output));
    (output.status.code().expect("an exit code"), text)
}

#[test]
fn explain_names_the_grant_or_denial_that_decides_and_spends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "policy.toml", GOOD);

    let (code, text) = explain(&file, "filelister", "read:docs/a.txt");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("allowed: `filelister` may read:docs/a.txt"),
        "{text}"
    );
    assert!(
        text.contains("by the grant `read:docs/**` (until revoked)"),
        "{text}"
    );

    let (code, text) = explain(&file, "filelister", "read:docs/private/key");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("by the denial `read:docs/private/**`"),
        "{text}"
    );

    let (code, text) = explain(&file, "filelister", "write:old/report");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("the grant `write:old/**` would, but it expired at 2020-01-01T00:00:00Z"),
        "{text}"
    );

    // A single-use grant: explaining it twice still finds its one use.
    for _ in 0..2 {
        let (code, text) = explain(&file, "filelister", "env:API_KEY");
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains("by the grant `env:API_KEY` (1 use left"),
            "{text}"
        );
    }

    let (code, text) = explain(&file, "filelister", "read:elsewhere");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no grant covers `read:elsewhere`"), "{text}");

    let (code, text) = explain(&file, "stranger", "read:docs/a.txt");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("the policy file has no entry for `stranger`"),
        "{text}"
    );

    let (code, text) = explain(&file, "filelister", "read:docs/../secret");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("the request is not well formed"), "{text}");

    // An invalid policy is not explained.
    let bad = write(
        dir.path(),
        "bad.toml",
        "[plugins.p]\ngrant = [\"read:/x\"]\n",
    );
    let (code, text) = explain(&bad, "p", "read:x");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("tether policy check"), "{text}");
}

fn record(time: &str, plugin: &str, operation: &str, resource: &str, decision: &str) -> String {
    serde_json::json!({
        "time": time,
        "plugin": plugin,
        "instance": 1,
        "pid": 42,
        "operation": operation,
        "resource": resource,
        "decision": decision,
        "decided_by": "policy",
        "capability": format!("read:{resource}"),
        "reason": if decision == "allowed" { "granted" } else { "no grant covers it" },
    })
    .to_string()
}

/// An audit trail rotated twice: `audit.jsonl.2` (oldest), `.1` (with a bad line), and
/// `audit.jsonl`.
fn trail(dir: &Path) -> PathBuf {
    write(
        dir,
        "audit.jsonl.2",
        &format!(
            "{}\n",
            record(
                "2026-03-02T10:00:00.000Z",
                "filelister",
                "read_file",
                "docs/a",
                "allowed"
            )
        ),
    );
    write(
        dir,
        "audit.jsonl.1",
        &format!(
            "{}\nnot a record\n{}\n",
            record(
                "2026-03-02T10:01:00.000Z",
                "colorlister",
                "read_file",
                "secrets/k",
                "denied"
            ),
            record(
                "2026-03-02T10:02:00.000Z",
                "filelister",
                "stat",
                "docs",
                "allowed"
            ),
        ),
    );
    write(
        dir,
        "audit.jsonl",
        &format!(
            "{}\n{}\n",
            record(
                "2026-03-02T10:03:00.000Z",
                "filelister",
                "read_file",
                "docs/a",
                "allowed"
            ),
            record(
                "2026-03-02T10:04:00.000Z",
                "colorlister",
                "read_file",
                "secrets/k",
                "denied"
            ),
        ),
    )
}

#[test]
fn audit_query_reads_rotated_files_oldest_first_filters_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = trail(dir.path());

    let output = tether(&["audit", "query", arg(&file)]);
    assert_eq!(output.status.code(), Some(1), "a bad line is exit code 1");
    let err = stderr(&output);
    assert!(
        err.contains(&format!("{}.1:2: skipped, not an audit record", arg(&file))),
        "{err}"
    );
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{text}");
    let times: Vec<&str> = lines[1..]
        .iter()
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        times,
        [
            "2026-03-02T10:00:00.000Z",
            "2026-03-02T10:01:00.000Z",
            "2026-03-02T10:02:00.000Z",
            "2026-03-02T10:03:00.000Z",
            "2026-03-02T10:04:00.000Z",
        ]
    );
    assert!(
        lines[2].contains("colorlister") && lines[2].contains("denied"),
        "{text}"
    );

    let output = tether(&[
        "audit",
        "query",
        arg(&file),
        "--decision",
        "denied",
        "--json",
    ]);
    let records: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line as written"))
        .collect();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r["decision"] == "denied" && r["plugin"] == "colorlister")
    );

    let output = tether(&[
        "audit",
        "query",
        arg(&file),
        "--plugin",
        "filelister",
        "--operation",
        "read_file",
        "--since",
        "2026-03-02T10:00:30Z",
        "--json",
    ]);
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("2026-03-02T10:03:00.000Z"), "{text}");

    let output = tether(&[
        "audit",
        "query",
        arg(&file),
        "--until",
        "2026-03-02T10:01:00Z",
        "--json",
    ]);
    assert_eq!(stdout(&output).lines().count(), 1);
    // Everything is older than a minute ago; nothing is newer.
    let output = tether(&["audit", "query", arg(&file), "--since", "1m"]);
    assert!(stdout(&output).contains("no record matches"));
}

#[test]
fn audit_summary_counts_per_plugin_and_the_resources_most_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let file = trail(dir.path());
    let output = tether(&["audit", "summary", arg(&file)]);
    assert_eq!(output.status.code(), Some(1), "the bad line is reported");
    let text = stdout(&output);
    let row = |plugin: &str| -> Vec<String> {
        text.lines()
            .find(|line| line.starts_with(plugin))
            .unwrap_or_else(|| panic!("no row for {plugin} in {text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let filelister = row("filelister");
    assert_eq!(filelister[1..4], ["3", "3", "0"], "{text}");
    assert!(
        text.contains("read_file docs/a (2), stat docs (1)"),
        "{text}"
    );
    let colorlister = row("colorlister");
    assert_eq!(colorlister[1..4], ["2", "0", "2"], "{text}");
    assert!(text.contains("read_file secrets/k (2)"), "{text}");
}

#[test]
fn audit_query_follow_reads_on_as_the_file_grows_and_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "audit.jsonl",
        &format!(
            "{}\n",
            record(
                "2026-03-02T10:00:00.000Z",
                "p",
                "read_file",
                "first",
                "allowed"
            )
        ),
    );
    #[allow(clippy::disallowed_methods, reason = "runs the binary under test")]
    let mut child = Command::new(TETHER)
        .args(["audit", "query", arg(&file), "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tether runs");
    let (lines, received) = mpsc::channel();
    let out = child.stdout.take().expect("its stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = received
            .recv_timeout(PATIENCE)
            .expect("a line within the patience");
        let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        value["resource"].as_str().expect("a resource").to_owned()
    };
    assert_eq!(next(), "first");

    let append = |path: &Path, resource: &str| {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        writeln!(
            file,
            "{}",
            record(
                "2026-03-02T10:01:00.000Z",
                "p",
                "read_file",
                resource,
                "allowed"
            )
        )
        .unwrap();
    };
    append(&file, "grown");
    assert_eq!(next(), "grown");

    // Rotated as the audit writer does: a last line into the old file, renamed, a new one.
    append(&file, "before-rotation");
    std::fs::rename(&file, dir.path().join("audit.jsonl.1")).unwrap();
    append(&file, "after-rotation");
    // The rest of the old file first, then the new one.
    assert_eq!(next(), "before-rotation");
    assert_eq!(next(), "after-rotation");

    child.kill().expect("stopping tether");
    child.wait().expect("tether stopped");
}
