//! The rows of docs/security.md's corpus that take more than one call (A8, B15 and
//! C16-C22), one test per row, named by its item, run against real plugin processes. Each
//! row checks the expected outcome, the audit record where the host sees the attempt,
//! and that the host still serves afterwards. The single-call rows (A1-A13, B14) are the
//! table in `hostserve.rs`.
//!
//! Also covered elsewhere, each by its own test:
//! - C16 with a custom host service (the claim in the body and in metadata):
//!   `hostconn::two_plugins_share_one_service_and_each_call_is_attributed_to_its_caller`.
//! - C18, first half (an id never issued): `hostconn::dialing_an_id_never_issued_times_out_naming_the_id`.
//! - C19 (handshake abuse): one test per kind of abuse in `handshake.rs`.
//! - B15, second half (`/proc/<host>/environ`): a row of the sandbox table in `sandbox.rs`.

#![allow(
    clippy::unwrap_used,
    reason = "helpers of the row tests; a failed unwrap fails the row"
)]

use std::time::Duration;

use tether_hostserve::{Limits, Manifest, ManifestError};
use tether_test_contract::testing::HostOpResponse;

use crate::hostserve::{Fixture, GRANTS, op, op_with};
use crate::support::{eventually, intrude, recorded};

/// Reasons in the audit records of `plugin`, with their decision and operation.
fn audited(fixture: &Fixture, plugin: &str) -> Vec<(String, String, String)> {
    fixture
        .audit_lines()
        .iter()
        .filter(|record| record["plugin"] == plugin)
        .map(|record| {
            let field = |name: &str| record[name].as_str().unwrap_or_default().to_owned();
            (field("operation"), field("decision"), field("reason"))
        })
        .collect()
}

/// A8: bad grants in a manifest are rejected, naming each.
#[tokio::test]
async fn a8_bad_grants_in_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.toml");
    std::fs::write(
        &path,
        r#"name = "p"
version = "1.0.0"
protocol_version = 1
capabilities = ["read:config/**", "read:/**", "read:../**", "read:", "READ:x", "exec:x", "env:API_*"]
"#,
    )
    .unwrap();
    let err = Manifest::load(&path).unwrap_err();
    let ManifestError::Capabilities { errors, .. } = &err else {
        panic!("expected a capabilities error, got {err}");
    };
    let named: Vec<&str> = errors.iter().map(|e| e.capability.as_str()).collect();
    assert_eq!(
        named,
        [
            "read:/**",
            "read:../**",
            "read:",
            "READ:x",
            "exec:x",
            "env:API_*"
        ]
    );
    let message = err.to_string();
    for bad in named {
        assert!(message.contains(bad), "{message}");
    }

    std::fs::write(
        &path,
        "name = \"p\"\nversion = \"1\"\nprotocol_version = 1\ncapabilities = [\"read:config/**\", \"env:API_KEY\"]\n",
    )
    .unwrap();
    let manifest = Manifest::load(&path).unwrap();
    assert_eq!(manifest.capabilities.len(), 2);
}

/// B15: the plugin starts with a cleared environment plus the allowlist.
#[tokio::test]
async fn b15_a_cleared_environment() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("env", &GRANTS);
    let (plugin, _connection) = fixture.start("env").await;
    let own = op(&plugin, "own_env", b"").await;
    let unexpected: Vec<&String> = own
        .names
        .iter()
        .filter(|name| {
            !name.starts_with("PLUGIN_")
                && ![
                    "TMPDIR",
                    "TETHER_TEST_PLUGIN",
                    "TETHER_DESCRIPTOR_FD",
                    "TETHER_FRAMES",
                ]
                .contains(&name.as_str())
        })
        .collect();
    assert!(unexpected.is_empty(), "the plugin inherited {unexpected:?}");
    // What it may have, it asks the host for, and the host records it.
    let granted = op(&plugin, "get_env", b"PATH").await;
    assert_eq!(granted.outcome, "ok", "{}", granted.message);
    let records = fixture.audit_records(1).await;
    assert_eq!(records[0]["operation"], "get_env");
}

/// C16: a plugin names another plugin in its request metadata.
#[tokio::test]
async fn c16_a_plugin_claiming_another_name() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("alice", &GRANTS);
    fixture.grant("mallory", &[]);
    let (alice, _a) = fixture.start("alice").await;
    let (mallory, _m) = fixture.start("mallory").await;

    let forged = op_with(
        &mallory,
        "claim_read",
        b"config/a.txt",
        b"alice".to_vec(),
        0,
    )
    .await;
    assert_eq!(forged.outcome, "denied", "{forged:?}");
    assert!(forged.message.contains("`mallory`"), "{}", forged.message);
    assert!(forged.data.is_empty());
    let own = op_with(&alice, "claim_read", b"config/a.txt", b"alice".to_vec(), 0).await;
    assert_eq!(own.outcome, "ok", "{}", own.message);

    let records = fixture.audit_records(2).await;
    let by_pid = |pid: u32| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|record| record["pid"] == pid)
            .map(|record| {
                let field = |name: &str| record[name].as_str().unwrap_or_default().to_owned();
                (field("plugin"), field("decision"))
            })
            .collect()
    };
    assert_eq!(by_pid(mallory.pid()), [("mallory".into(), "denied".into())]);
    assert_eq!(by_pid(alice.pid()), [("alice".into(), "allowed".into())]);
}

/// C16: a request id is recorded, never trusted; a malformed one is refused.
#[tokio::test]
async fn c16_request_ids_are_recorded_and_checked() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("tagger", &GRANTS);
    let (plugin, _connection) = fixture.start("tagger").await;
    let read = |id: &str| op_with(&plugin, "tagged_read", b"config/a.txt", id.into(), 0);

    let good = read("job-17").await;
    assert_eq!(
        (good.outcome.as_str(), good.data.as_slice()),
        ("ok", &b"config a"[..])
    );
    let spaced = read("two words").await;
    assert_eq!(spaced.outcome, "invalid", "{spaced:?}");
    assert!(
        spaced.message.contains("invalid request id"),
        "{}",
        spaced.message
    );
    let long = read(&"x".repeat(65)).await;
    assert_eq!(long.outcome, "invalid", "{long:?}");
    assert!(long.data.is_empty());

    let records = fixture.audit_records(3).await;
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r["decision"].clone(), r["request_id"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("allowed".into(), "job-17".into()),
            ("denied".into(), serde_json::Value::Null),
            ("denied".into(), serde_json::Value::Null),
        ]
    );
    assert!(
        records[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid request id"),
        "{}",
        records[1]
    );
    // The id is the caller's to choose; who the caller is stays the host's decision.
    assert_eq!(records[0]["plugin"], "tagger");
    assert_eq!(records[0]["pid"], plugin.pid());
}

/// C17: another process connecting to a plugin's host-service socket.
#[tokio::test]
async fn c17_a_foreign_process_is_refused_and_audited() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("guarded-files", &GRANTS);
    let (plugin, connection) = fixture.start("guarded-files").await;
    let socket = connection.address().unwrap().to_owned();

    let intruder = intrude(&socket).await;
    assert_eq!(
        intruder.code,
        Some(3),
        "the intruder got through: {}",
        intruder.said
    );
    let intruder_pid = intruder.pid;

    let records = fixture.audit_records(1).await;
    let refused = records
        .iter()
        .find(|record| record["operation"] == "connect")
        .unwrap_or_else(|| panic!("no connect record: {records:?}"));
    assert_eq!(refused["plugin"], "guarded-files");
    assert_eq!(refused["decision"], "denied");
    assert_eq!(refused["pid"], intruder_pid);
    assert_eq!(refused["resource"], socket.display().to_string());
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("pid {intruder_pid}"))
            && reason.contains(&format!("pid {}", plugin.pid())),
        "{reason}"
    );
    // The plugin is still served.
    assert_eq!(
        op(&plugin, "read_file", b"config/a.txt").await.outcome,
        "ok"
    );
}

/// C18: a plugin dials a broker id issued to another plugin.
#[tokio::test]
async fn c18_a_broker_id_issued_to_another_plugin() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("alice", &GRANTS);
    fixture.grant("bob", &GRANTS);
    let (alice, _a) = fixture.start("alice").await;
    let (bob, _b) = fixture.start("bob").await;

    // The host offers bob an endpoint under a fresh id of bob's broker.
    let broker = bob.broker().expect("a started plugin has a broker");
    let id = broker.next_id();
    let _served = broker
        .accept_and_serve(id, fixture.services.routes())
        .await
        .unwrap();

    // Bob, to whom it was issued, dials it (before it expires unclaimed).
    let dialed = op_with(&bob, "dial_broker", b"", Vec::new(), u64::from(id)).await;
    assert_eq!(dialed.outcome, "ok", "{}", dialed.message);
    // Alice asks for bob's id: her broker never received it.
    let stolen = op_with(&alice, "dial_broker", b"", Vec::new(), u64::from(id)).await;
    assert_eq!(stolen.outcome, "other", "{stolen:?}");
    assert!(
        stolen.message.contains(&format!("id {id}")) && stolen.message.contains("timed out"),
        "{}",
        stolen.message
    );
    // Both plugins are still served.
    assert_eq!(op(&alice, "read_file", b"config/a.txt").await.outcome, "ok");
    assert_eq!(op(&bob, "read_file", b"config/a.txt").await.outcome, "ok");
}

/// C20: a message over the host's limit.
#[tokio::test]
async fn c20_a_message_over_the_limit() {
    let fixture = Fixture::new(Limits {
        max_message_size: 1 << 20,
        ..Limits::default()
    });
    fixture.grant("big", &GRANTS);
    let (plugin, _connection) = fixture.start("big").await;
    let too_big = op_with(&plugin, "write_chunk", b"output/big", vec![7; 2 << 20], 0).await;
    assert!(
        ["exhausted", "other"].contains(&too_big.outcome.as_str()),
        "{too_big:?}"
    );
    assert!(!fixture.workspace.join("output/big").exists());
    let after = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(after.outcome, "ok", "{}", after.message);

    // The plugin's side has its own limit: 4 MiB by default, or what the plugin sets.
    let fixture = Fixture::new(Limits {
        max_message_size: 16 << 20,
        ..Limits::default()
    });
    fixture.grant("small", &GRANTS);
    fixture.grant("large", &GRANTS);
    let (small, _s) = fixture.start("small").await;
    let (large, _l) = fixture
        .start_with("large", &["--host-message-limit", "16777216"])
        .await;
    let refused = op_with(&small, "write_chunk", b"output/six", vec![6; 6 << 20], 0).await;
    assert_ne!(refused.outcome, "ok", "{refused:?}");
    assert!(!fixture.workspace.join("output/six").exists());
    let sent = op_with(&large, "write_chunk", b"output/six", vec![6; 6 << 20], 0).await;
    assert_eq!(sent.outcome, "ok", "{}", sent.message);
    assert_eq!(sent.size, 6 << 20);
}

fn count(response: &HostOpResponse, outcome: &str) -> usize {
    response
        .names
        .iter()
        .filter(|name| *name == outcome)
        .count()
}

/// C21: streams the plugin never reads, and a call flood.
#[tokio::test]
async fn c21_unread_streams_and_a_flood() {
    // Long enough that the flood below is refused well before the host gives up on the
    // unread streams, even on a loaded machine.
    const STALL: Duration = Duration::from_secs(10);
    let fixture = Fixture::new(Limits {
        max_concurrent_calls: 4,
        queue_wait: Duration::from_millis(300),
        stall_timeout: STALL,
        ..Limits::default()
    });
    const BIG: usize = 8 << 20;
    std::fs::write(fixture.workspace.join("config/big.bin"), vec![1u8; BIG]).unwrap();
    fixture.grant("hog", &GRANTS);
    fixture.grant("other", &GRANTS);
    let (hog, _h) = fixture.start("hog").await;
    let (other, _o) = fixture.start("other").await;

    // The hog opens six reads and reads none: four slots, then refusals.
    let held = op_with(&hog, "hold_reads", b"config/big.bin", Vec::new(), 6).await;
    assert_eq!(
        (count(&held, "ok"), count(&held, "exhausted")),
        (4, 2),
        "{held:?}"
    );
    // A flood of calls from the hog is refused while its slots are taken ...
    let flood = op_with(&hog, "flood", b"config/a.txt", Vec::new(), 50).await;
    assert_eq!(count(&flood, "exhausted"), 50, "{flood:?}");
    // ... while another plugin is served.
    let served = op(&other, "read_file", b"config/a.txt").await;
    assert_eq!(served.outcome, "ok", "{}", served.message);
    let listed = op(&other, "read_dir", b"config").await;
    assert_eq!(listed.outcome, "ok", "{}", listed.message);

    // The host gives up on the unread streams and frees their slots.
    let gave_up = eventually(STALL * 4, || {
        recorded("hog")
            .iter()
            .filter(|event| event.message.contains("ReadFile ended early"))
            .count()
            == 4
    })
    .await;
    assert!(gave_up, "the host still waits on the unread streams");
    // Reading them now shows they ended early, never as a complete file.
    let drained = op(&hog, "drain_held", b"").await;
    assert_eq!(drained.names.len(), 4, "{drained:?}");
    for ending in &drained.names {
        let (size, rest) = ending.split_once(' ').unwrap();
        assert!(size.parse::<usize>().unwrap() < BIG, "{ending}");
        assert!(
            rest.starts_with("other:") && rest.contains("took no data"),
            "{ending}"
        );
    }
    let after = op(&hog, "read_file", b"config/a.txt").await;
    assert_eq!(after.outcome, "ok", "{}", after.message);

    let hog_records = audited(&fixture, "hog");
    let limited = hog_records
        .iter()
        .filter(|(_, decision, reason)| {
            decision == "denied" && reason.contains("concurrency limit reached")
        })
        .count();
    assert_eq!(limited, 2 + 50, "{hog_records:?}");
    assert!(
        audited(&fixture, "other")
            .iter()
            .all(|(_, decision, _)| decision == "allowed")
    );
}

/// C21: a write that stops sending.
#[tokio::test]
async fn c21_a_stalled_write() {
    let fixture = Fixture::new(Limits {
        stall_timeout: Duration::from_secs(1),
        ..Limits::default()
    });
    fixture.grant("staller", &GRANTS);
    let (plugin, _connection) = fixture.start("staller").await;
    let stalled = op_with(&plugin, "write_stall", b"output/stalled", b"x".to_vec(), 0).await;
    assert_eq!(stalled.outcome, "other", "{stalled:?}");
    assert!(
        stalled.message.contains("sent nothing"),
        "{}",
        stalled.message
    );
    assert!(!fixture.workspace.join("output/stalled").exists());
    let leftovers = std::fs::read_dir(fixture.workspace.join("output"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "the temporary file is removed");
    let records = fixture.audit_records(1).await;
    assert_eq!(records[0]["operation"], "write_file");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("sent nothing"),
        "{}",
        records[0]
    );
    let after = op_with(&plugin, "write_file", b"output/after", b"ok".to_vec(), 0).await;
    assert_eq!(after.outcome, "ok", "{}", after.message);
}

/// C22: a directory with very many entries.
#[tokio::test]
async fn c22_very_many_entries() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("pager", &GRANTS);
    let (plugin, _connection) = fixture.start("pager").await;
    let listing = op(&plugin, "read_dir", b"config/many").await;
    assert_eq!(listing.outcome, "ok", "{}", listing.message);
    let mut names = listing.names.clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2500, "every entry once, over three pages");
    let pages = fixture.audit_records(3).await;
    assert_eq!(pages.len(), 3, "three pages of at most 1000: {pages:?}");
}
