//! tether's host services against real plugin processes: the bad-input corpus of
//! docs/security.md (A, B, C), the symlink swap race, revocation at runtime, two plugins
//! with different grants, and 1 GiB through the services in bounded memory.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tether_host::PluginClient;
use tether_hostconn::{HostConnection, Outcome};
use tether_hostserve::{Audit, HostServices, Limits, Policy};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{HostOpRequest, HostOpResponse};

use crate::support::{HOST_HELPER, PATIENCE, TEST_PLUGIN, eventually, sandbox, test_plugin};

/// The grant the corpus assumes, plus `env:PATH` for an allowed environment read.
pub(crate) const GRANTS: [&str; 5] = [
    "read:config/**",
    "write:output/**",
    "write:links/**",
    "env:API_KEY",
    "env:PATH",
];

pub(crate) struct Fixture {
    _root: tempfile::TempDir,
    pub(crate) workspace: PathBuf,
    outside: PathBuf,
    audit: PathBuf,
    pub(crate) services: Arc<HostServices>,
}

impl Fixture {
    pub(crate) fn new(limits: Limits) -> Self {
        let root = tempfile::tempdir().expect("fixture setup");
        let workspace = root.path().join("workspace");
        let outside = root.path().join("outside");
        let w = |p: &str| workspace.join(p);
        for dir in ["config/sub", "config/many", "secrets", "output", "links"] {
            std::fs::create_dir_all(w(dir)).expect("fixture setup");
        }
        std::fs::create_dir_all(outside.join("dir")).expect("fixture setup");
        std::fs::write(outside.join("dir/f"), "OUTSIDE").expect("fixture setup");
        std::fs::write(w("config/a.txt"), "config a").expect("fixture setup");
        std::fs::write(w("config/sub/b.txt"), "config b").expect("fixture setup");
        std::fs::write(w("secrets/key"), "SECRET-KEY").expect("fixture setup");
        for i in 0..2500 {
            std::fs::write(w(&format!("config/many/{i:05}")), "").expect("fixture setup");
        }
        symlink("/etc/passwd", w("config/link_out")).expect("fixture setup");
        symlink("../secrets/key", w("config/link_secret")).expect("fixture setup");
        symlink("loop2", w("config/loop1")).expect("fixture setup");
        symlink("loop1", w("config/loop2")).expect("fixture setup");
        symlink("nothing-here", w("config/dangling")).expect("fixture setup");
        symlink("/proc/self/root", w("config/proc")).expect("fixture setup");
        symlink("/proc/self/fd/0", w("config/fd")).expect("fixture setup");
        symlink(outside.join("dir"), w("links/out")).expect("fixture setup");

        let audit = root.path().join("audit.jsonl");
        let policy = Policy::new();
        Fixture {
            services: Arc::new(HostServices::new(
                policy,
                Audit::to_file(&audit, 64 << 20).expect("fixture setup"),
                limits,
            )),
            _root: root,
            workspace,
            outside,
            audit,
        }
    }

    pub(crate) fn grant(&self, plugin: &str, grants: &[&str]) {
        let policy = self.services.policy();
        policy.set_workspace(plugin, &self.workspace);
        for grant in grants {
            policy.grant(plugin, grant).expect("fixture setup");
        }
    }

    pub(crate) async fn start(&self, name: &str) -> (PluginClient, HostConnection) {
        self.start_with(name, &[]).await
    }

    /// [`Fixture::start`] with more arguments for the test plugin.
    pub(crate) async fn start_with(
        &self,
        name: &str,
        args: &[&str],
    ) -> (PluginClient, HostConnection) {
        let plugin = test_plugin(name)
            .arg("--host-files")
            .args(args.iter().copied())
            .start()
            .await
            .expect("fixture setup");
        let connection = self.connect(&plugin).await;
        (plugin, connection)
    }

    /// Gives a started test plugin the fixture's host services.
    pub(crate) async fn connect(&self, plugin: &PluginClient) -> HostConnection {
        match self.services.connect(plugin).await.expect("host services") {
            Outcome::Connected(connection) => connection,
            Outcome::NotRequested => panic!("the test plugin did not request host services"),
        }
    }

    /// The audit records so far.
    pub(crate) fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("fixture setup"))
            .collect()
    }

    /// Waits until the audit file holds `count` records, and returns them.
    pub(crate) async fn audit_records(&self, count: usize) -> Vec<Value> {
        let complete = eventually(PATIENCE, || self.audit_lines().len() >= count).await;
        let lines = self.audit_lines();
        assert!(
            complete,
            "expected {count} audit records, found {}",
            lines.len()
        );
        lines
    }
}

pub(crate) async fn op(plugin: &PluginClient, op: &str, path: &[u8]) -> HostOpResponse {
    op_with(plugin, op, path, Vec::new(), 0).await
}

pub(crate) async fn op_with(
    plugin: &PluginClient,
    op: &str,
    path: &[u8],
    data: Vec<u8>,
    size: u64,
) -> HostOpResponse {
    TestingClient::new(plugin.channel())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
        .host_op(HostOpRequest {
            op: op.into(),
            path: path.to_vec(),
            data,
            size,
        })
        .await
        .expect("the plugin answers")
        .into_inner()
}

/// One row of the corpus: what the plugin asks, and what must come of it.
struct Row {
    item: &'static str,
    op: &'static str,
    path: Vec<u8>,
    outcome: &'static str,
    /// The audit decision: `allowed` or `denied`.
    decision: &'static str,
}

fn row(
    item: &'static str,
    op: &'static str,
    path: impl Into<Vec<u8>>,
    outcome: &'static str,
) -> Row {
    let decision = match outcome {
        "ok" | "not_found" | "already_exists" | "other" => "allowed",
        _ => "denied",
    };
    Row {
        item,
        op,
        path: path.into(),
        outcome,
        decision,
    }
}

fn corpus() -> Vec<Row> {
    let long_name = format!("config/{}", "a".repeat(5000));
    let long_component = format!("config/{}", "a".repeat(300));
    let deep = format!("config{}", "/a".repeat(10_000));
    let long_path = format!("config/{}", "a/".repeat(2100)) + "x";
    vec![
        row("A1", "read_file", "../secret", "invalid"),
        row("A1", "read_file", "config/../../etc/passwd", "invalid"),
        row("A1", "read_file", "config/../secrets/key", "invalid"),
        row("A2", "read_file", "/etc/passwd", "invalid"),
        row("A2", "read_file", "//etc/passwd", "invalid"),
        row("A2", "read_file", "/config/x", "invalid"),
        row("A3", "read_dir", "", "invalid"),
        row("A3", "read_dir", ".", "invalid"),
        row("A3", "read_dir", "./", "invalid"),
        row("A3", "read_dir", "config", "ok"),
        row("A3", "read_dir", "config/", "invalid"),
        row("A3", "read_file", "config", "other"),
        row("A4", "read_file", "config/./a.txt", "invalid"),
        row("A4", "read_file", "config//a.txt", "invalid"),
        row("A4", "read_file", "config/a.txt/", "invalid"),
        row("A4", "read_file", "config/a.txt\0", "invalid"),
        row("A4", "read_file", "config/a.txt", "ok"),
        row("A5", "read_file", "config/%2e%2e/secrets/key", "not_found"),
        row("A5", "read_file", "config\\..\\secrets\\key", "denied"),
        row(
            "A5",
            "read_file",
            "config/\u{2024}\u{2024}/secrets/key",
            "not_found",
        ),
        row("A6", "read_file", "config/*", "not_found"),
        row("A6", "read_file", "config/[a].txt", "not_found"),
        row("A6", "read_dir", "config/*", "not_found"),
        row("A7", "read_file", long_name, "invalid"),
        row("A7", "read_file", long_component, "invalid"),
        row("A7", "read_file", long_path, "invalid"),
        row("A7", "read_file", deep, "invalid"),
        row("A9", "read_file", "config/link_out", "denied"),
        row("A9", "read_file", "config/link_secret", "denied"),
        row("A9", "read_file", "secrets/key", "denied"),
        row("A10", "read_file", "config/loop1", "denied"),
        row("A10", "read_file", "config/dangling", "denied"),
        row("A10", "read_dir", "config/loop1", "denied"),
        row("A11", "read_file", "config/proc/etc/passwd", "denied"),
        row("A11", "read_file", "config/fd", "denied"),
        row("A11", "read_file", "/proc/self/root/etc/passwd", "invalid"),
        row("A13", "read_file", b"config/\xffa.txt".to_vec(), "invalid"),
        row("A13", "read_dir", b"config/\xc0\xaf".to_vec(), "invalid"),
        row("B14", "get_env", "api_key", "denied"),
        row("B14", "get_env", "API_KEY ", "invalid"),
        row("B14", "get_env", "API_*", "invalid"),
        row("B14", "get_env", "*", "invalid"),
        row("B14", "get_env", "", "invalid"),
        row("B14", "get_env", "API_KEY=x", "invalid"),
        row("B14", "get_env", "API_KEY\0", "invalid"),
        row("B14", "get_env", "HOME", "denied"),
        row("B14", "get_env", "API_KEY", "ok"),
        row("B14", "get_env", "PATH", "ok"),
        row("write", "write_file", "output/new.txt", "ok"),
        row("write", "write_file", "config/a.txt", "denied"),
        row("write", "write_file", "output/../config/a.txt", "invalid"),
        row("write", "delete_file", "output/new.txt", "denied"),
        row("create", "create_dir", "output/made", "ok"),
        row("create", "create_dir", "output/made", "already_exists"),
        row("create", "create_dir", "output/made/deeper", "ok"),
        row("create", "create_dir", "output/missing/x", "not_found"),
        row("create", "create_dir", "output/../x", "invalid"),
        row("create", "create_dir", "config/new", "denied"),
        row("create", "create_dir", "links/out/x", "denied"),
        row("stat", "stat", "config/link_out", "ok"),
        row("stat", "stat", "secrets/key", "denied"),
    ]
}

/// Host services answer the same, audited the same, whether the two tether peers carry
/// their calls as frames (the default) or as HTTP/2 (frames turned off).
#[tokio::test]
async fn host_services_are_the_same_over_frames_and_over_http2() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("wire-frames", &GRANTS);
    fixture.grant("wire-http2", &GRANTS);
    for (name, frames) in [("wire-frames", true), ("wire-http2", false)] {
        let plugin = test_plugin(name)
            .arg("--host-files")
            .frames(frames)
            .start()
            .await
            .expect("start");
        assert_eq!(plugin.framed(), frames, "{name}");
        let _connection = fixture.connect(&plugin).await;
        let read = op(&plugin, "read_file", b"config/a.txt").await;
        assert_eq!(read.outcome, "ok", "{name}: {}", read.message);
        let denied = op(&plugin, "read_file", b"secrets/key").await;
        assert_eq!(denied.outcome, "denied", "{name}: {}", denied.message);
        plugin.shutdown().await.expect("a graceful stop");
    }
    // The trail's writer thread may still be writing the last records.
    let lines = fixture.audit_records(4).await;
    for name in ["wire-frames", "wire-http2"] {
        let mine: Vec<&Value> = lines.iter().filter(|line| line["plugin"] == name).collect();
        assert_eq!(mine.len(), 2, "{name}: one record per call: {mine:?}");
        assert_eq!(mine[0]["decision"], "allowed", "{name}");
        assert_eq!(mine[1]["decision"], "denied", "{name}");
    }
}

#[tokio::test]
async fn host_services_on_a_lane_check_revoke_and_audit_as_on_the_socket() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("on-lane", &GRANTS);
    let plugin = test_plugin("on-lane")
        .arg("--host-files")
        .start()
        .await
        .expect("start");
    let services = fixture.services.as_ref().clone().lane(true);
    let connection = match services.connect(&plugin).await.expect("host services") {
        Outcome::Connected(connection) => connection,
        Outcome::NotRequested => panic!("the test plugin did not request host services"),
    };
    assert!(connection.on_lane(), "a tether plugin takes the lane");
    let read = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(read.outcome, "ok", "{}", read.message);
    assert_eq!(
        read.data,
        std::fs::read(fixture.workspace.join("config/a.txt")).unwrap()
    );
    let denied = op(&plugin, "read_file", b"secrets/key").await;
    assert_eq!(denied.outcome, "denied", "{}", denied.message);
    assert!(
        fixture
            .services
            .policy()
            .revoke("on-lane", "read:config/**")
    );
    let revoked = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(revoked.outcome, "denied", "{}", revoked.message);
    assert_eq!(revoked.capability, "read:config/a.txt");

    let records = fixture.audit_records(3).await;
    let decisions: Vec<&str> = records
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allowed", "denied", "denied"]);
    for record in &records {
        // The identity is the plugin the lane was made for, as on its socket.
        assert_eq!(record["plugin"], "on-lane", "{record}");
        assert_eq!(record["pid"], plugin.pid(), "{record}");
        assert_eq!(record["instance"], plugin.instance(), "{record}");
    }

    // Closing the connection ends the lane: the plugin's later calls fail clearly.
    connection.close().await;
    let after = op(&plugin, "read_file", b"config/a.txt").await;
    assert_ne!(after.outcome, "ok", "{after:?}");
    plugin.shutdown().await.expect("a graceful stop");
}

/// The audit record of the connection the host closed because the plugin broke the
/// protocol, once it is written.
async fn violation_record(fixture: &Fixture) -> Value {
    let found = eventually(PATIENCE, || {
        fixture
            .audit_lines()
            .iter()
            .any(|record| record["operation"] == "connect")
    })
    .await;
    let records = fixture.audit_lines();
    assert!(found, "no connect record: {records:?}");
    records
        .into_iter()
        .find(|record| record["operation"] == "connect")
        .expect("found above")
}

#[tokio::test]
async fn a_plugin_that_forges_its_lanes_counts_loses_the_lane_and_is_audited() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("forger", &GRANTS);
    fixture.grant("bystander", &GRANTS);
    let services = fixture.services.as_ref().clone().lane(true);
    // The forger may read /proc, to find the lane among its mappings (the SDK keeps no
    // descriptor of it); its sandbox stands otherwise.
    let start = |name: &'static str| {
        let services = services.clone();
        async move {
            let plugin = test_plugin(name)
                .sandbox(sandbox().allow_read("/proc"))
                .arg("--host-files")
                .start()
                .await
                .expect("start");
            let connection = match services.connect(&plugin).await.expect("host services") {
                Outcome::Connected(connection) => connection,
                Outcome::NotRequested => panic!("the test plugin did not request host services"),
            };
            assert!(connection.on_lane(), "a tether plugin takes the lane");
            (plugin, connection)
        }
    };
    let (plugin, _connection) = start("forger").await;
    let honest = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(honest.outcome, "ok", "{honest:?}");

    // The plugin writes a count into the shared memory that no honest reader writes, then
    // calls: the host refuses to write its answer into a ring it cannot trust.
    let forged = op(&plugin, "forge_lane", b"config/a.txt").await;
    assert_eq!(forged.outcome, "ok", "{forged:?}");
    assert!(forged.names[0].starts_with("forged at"), "{forged:?}");
    assert!(
        !forged.names[1].starts_with("ok"),
        "a call through a forged lane fails: {forged:?}"
    );

    // One audit record says what happened, to whom, and where.
    let record = violation_record(&fixture).await;
    assert_eq!(record["decision"], "denied", "{record}");
    assert_eq!(record["plugin"], "forger", "{record}");
    assert_eq!(record["pid"], plugin.pid(), "{record}");
    assert_eq!(record["instance"], plugin.instance(), "{record}");
    assert_eq!(record["resource"], "lane", "{record}");
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("broke the protocol") && reason.contains("count of bytes read"),
        "{record}"
    );

    // The lane is gone for good: later calls fail at once, without a hang.
    let after = op(&plugin, "read_file", b"config/a.txt").await;
    assert_ne!(after.outcome, "ok", "{after:?}");
    // The host goes on serving its other plugins, on their lanes.
    let (bystander, _bystander_connection) = start("bystander").await;
    let served = op(&bystander, "read_file", b"config/a.txt").await;
    assert_eq!(served.outcome, "ok", "{served:?}");
    plugin.shutdown().await.expect("a graceful stop");
    bystander.shutdown().await.expect("a graceful stop");
}

#[tokio::test]
async fn a_plugin_that_breaks_the_frames_on_its_socket_loses_that_connection_and_is_audited() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("framebreaker", &GRANTS);
    let (plugin, connection) = fixture.start("framebreaker").await;
    let endpoint = connection
        .address()
        .expect("a spawned plugin's endpoint")
        .to_owned();
    // The plugin dials its host-service socket itself, starts frames, and sends a frame of
    // a kind no client sends (a 9-byte header: no payload, stream 1, kind 0x7f).
    let mut bytes = tether_transport::frames::PREFACE.to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0, 0x7f]);
    let broken = op_with(
        &plugin,
        "garbage_wire",
        endpoint.display().to_string().as_bytes(),
        bytes,
        0,
    )
    .await;
    assert_eq!(broken.outcome, "ok", "{broken:?}");
    assert!(broken.names[0].starts_with("closed"), "{broken:?}");

    let record = violation_record(&fixture).await;
    assert_eq!(record["decision"], "denied", "{record}");
    assert_eq!(record["plugin"], "framebreaker", "{record}");
    assert_eq!(record["pid"], plugin.pid(), "{record}");
    assert_eq!(
        record["resource"],
        endpoint.display().to_string(),
        "{record}"
    );
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("broke the protocol") && reason.contains("kind 127"),
        "{record}"
    );
    // Only that connection was lost: the plugin's own calls go on.
    let read = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(read.outcome, "ok", "{read:?}");
    drop(connection);
    plugin.shutdown().await.expect("a graceful stop");
}

#[tokio::test]
async fn a_plugin_that_breaks_http2_or_speaks_no_protocol_on_its_socket_is_audited() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("h2breaker", &GRANTS);
    let (plugin, connection) = fixture.start("h2breaker").await;
    let endpoint = connection
        .address()
        .expect("a spawned plugin's endpoint")
        .to_owned();
    let socket = endpoint.display().to_string();
    // An HTTP/1 request: neither tether's frames nor HTTP/2.
    let http1 = b"GET / HTTP/1.1\r\nHost: host\r\n\r\n".to_vec();
    // HTTP/2's preface and SETTINGS, then DATA on stream 0, which HTTP/2 forbids: hyper,
    // inside tonic's server, ends the connection with GOAWAY PROTOCOL_ERROR.
    let mut http2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    http2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    http2.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, b'x']);
    for bytes in [http1, http2] {
        let sent = op_with(&plugin, "garbage_wire", socket.as_bytes(), bytes, 0).await;
        assert_eq!(sent.outcome, "ok", "{sent:?}");
        assert!(sent.names[0].starts_with("closed"), "{sent:?}");
    }

    // One record each, naming the plugin, the socket and what it did.
    let connects = || {
        fixture
            .audit_lines()
            .into_iter()
            .filter(|record| record["operation"] == "connect")
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(PATIENCE, || connects().len() >= 2).await,
        "{:?}",
        fixture.audit_lines()
    );
    let records = connects();
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert_eq!(record["decision"], "denied", "{record}");
        assert_eq!(record["plugin"], "h2breaker", "{record}");
        assert_eq!(record["pid"], plugin.pid(), "{record}");
        assert_eq!(record["resource"], socket, "{record}");
    }
    let reasons: Vec<&str> = records
        .iter()
        .map(|record| record["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(
        reasons.iter().any(|reason| reason.contains("neither")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("GOAWAY PROTOCOL_ERROR")),
        "{reasons:?}"
    );
    // Only those connections were lost: the plugin's own calls go on.
    let read = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(read.outcome, "ok", "{read:?}");
    drop(connection);
    plugin.shutdown().await.expect("a graceful stop");
}

#[tokio::test]
async fn the_bad_input_corpus_gets_clear_answers_and_one_audit_record_each() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("corpus", &GRANTS);
    let (plugin, _connection) = fixture.start("corpus").await;

    let rows = corpus();
    let mut failures = Vec::new();
    for row in &rows {
        let answer = op_with(&plugin, row.op, &row.path, b"written".to_vec(), 0).await;
        if answer.outcome != row.outcome {
            failures.push(format!(
                "{} {} {:?}: expected {}, got {} ({})",
                row.item,
                row.op,
                String::from_utf8_lossy(&row.path),
                row.outcome,
                answer.outcome,
                answer.message
            ));
        }
        if answer.outcome == "denied"
            && row.op != "stat"
            && !answer.message.contains("symbolic link")
        {
            assert!(
                !answer.capability.is_empty() && answer.message.contains(&answer.capability),
                "a policy denial names the missing capability: {answer:?}"
            );
        }
        // Nothing outside the grants ever comes back.
        let data = String::from_utf8_lossy(&answer.data);
        assert!(
            !data.contains("SECRET") && !data.contains("root:"),
            "{} leaked: {data}",
            row.item
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // One audit record per call, in order, with the expected decision.
    let records = fixture.audit_records(rows.len()).await;
    assert_eq!(records.len(), rows.len());
    for (row, record) in rows.iter().zip(&records) {
        assert_eq!(record["plugin"], "corpus");
        assert_eq!(record["instance"], plugin.instance());
        assert_eq!(record["pid"], plugin.pid());
        assert_eq!(record["operation"], row.op, "{record}");
        assert_eq!(
            record["decision"], row.decision,
            "{} {}: {record}",
            row.item, row.op
        );
        assert!(
            record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
        assert!(
            !record["reason"].as_str().unwrap_or_default().is_empty(),
            "{record}"
        );
        // The SDK gives unary host-service calls its default deadline.
        if ["read_dir", "get_env", "stat", "delete_file", "create_dir"].contains(&row.op) {
            let left = record["timeout_ms"].as_u64().unwrap_or_default();
            assert!(left > 0 && left <= 30_000, "{record}");
        }
    }

    // The host still serves: a good call after the whole corpus.
    let after = op(&plugin, "read_file", b"config/sub/b.txt").await;
    assert_eq!(
        (after.outcome.as_str(), after.data.as_slice()),
        ("ok", &b"config b"[..])
    );
    assert_eq!(
        std::fs::read_to_string(fixture.workspace.join("output/new.txt")).unwrap(),
        "written"
    );
    // CreateDir made what it was allowed to, and nothing through the link.
    assert!(fixture.workspace.join("output/made/deeper").is_dir());
    assert!(!fixture.workspace.join("config/new").exists());
    assert!(!fixture.workspace.join("../outside/dir/x").exists());
}

#[tokio::test]
async fn the_write_quota_holds_and_leaves_no_partial_file() {
    let fixture = Fixture::new(Limits {
        write_quota: 1 << 20,
        ..Limits::default()
    });
    fixture.grant("quota", &GRANTS);
    let (plugin, _connection) = fixture.start("quota").await;
    let fits = op_with(
        &plugin,
        "write_zeros",
        b"output/fits",
        Vec::new(),
        600 << 10,
    )
    .await;
    assert_eq!(fits.outcome, "ok", "{}", fits.message);
    let over = op_with(
        &plugin,
        "write_zeros",
        b"output/over",
        Vec::new(),
        600 << 10,
    )
    .await;
    assert_eq!(over.outcome, "exhausted", "{}", over.message);
    assert!(over.message.contains("quota"), "{}", over.message);
    assert!(!fixture.workspace.join("output/over").exists());
    let leftovers: Vec<_> = std::fs::read_dir(fixture.workspace.join("output"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["fits"], "temporary files are cleaned up");
    assert_eq!(fixture.services.bytes_written("quota"), 600 << 10);
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_never_leaks_outside_content() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("racer", &GRANTS);
    let (plugin, _connection) = fixture.start("racer").await;

    let swap = fixture.workspace.join("config/swap");
    std::fs::create_dir_all(&swap).unwrap();
    std::fs::write(swap.join("f"), "inside").unwrap();
    let real = fixture.workspace.join("config/swap-real");
    let link = fixture.workspace.join("config/swap-link");
    symlink(fixture.outside.join("dir"), &link).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, swap, real, link) =
            (Arc::clone(&stop), swap.clone(), real.clone(), link.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Directory out, symlink in; then back.
                let _ = std::fs::rename(&swap, &real);
                let _ = std::fs::rename(&link, &swap);
                let _ = std::fs::rename(&swap, &link);
                let _ = std::fs::rename(&real, &swap);
                swaps += 1;
            }
            swaps
        })
    };
    // Bounded work under its own deadline: the plugin reads until the race has been met
    // both ways (20 reads of the real file, 20 refused through the symlink), at most
    // 40,000 reads; the deadline only bounds how long a failure takes to show.
    let mut request = tonic::Request::new(HostOpRequest {
        op: "race_read".into(),
        path: b"config/swap/f".to_vec(),
        data: Vec::new(),
        size: 20,
    });
    request.set_timeout(PATIENCE);
    let answer = TestingClient::new(plugin.channel())
        .host_op(request)
        .await
        .expect("the racing reads finish")
        .into_inner();
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert_eq!(answer.outcome, "ok", "{}", answer.message);
    let count = |key: &str| {
        answer
            .names
            .iter()
            .filter_map(|seen| seen.split_once(' '))
            .filter(|(_, seen)| *seen == key)
            .map(|(count, _)| count.parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert!(
        !answer.names.iter().any(|seen| seen.contains("OUTSIDE")),
        "outside content came back: {:?}",
        answer.names
    );
    // The race was met: reads found the real directory, and reads found the symlink in its
    // place and were refused.
    assert!(
        count("inside") >= 20 && count("error: denied") >= 20,
        "the race was not met in {} reads ({swaps} swaps): {:?}",
        answer.size,
        answer.names
    );
}

#[tokio::test]
async fn revoking_a_grant_applies_to_the_next_call_and_both_decisions_are_audited() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("revoked", &GRANTS);
    let (plugin, _connection) = fixture.start("revoked").await;
    let before = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(before.outcome, "ok", "{}", before.message);
    assert!(
        fixture
            .services
            .policy()
            .revoke("revoked", "read:config/**")
    );
    let after = op(&plugin, "read_file", b"config/a.txt").await;
    assert_eq!(after.outcome, "denied", "{}", after.message);
    assert_eq!(after.capability, "read:config/a.txt");

    let records = fixture.audit_records(2).await;
    let decisions: Vec<&str> = records
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allowed", "denied"]);
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("read:config/**")
    );
}

#[tokio::test]
async fn two_plugins_with_different_grants_share_one_host_services_value() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("reader", &["read:config/**"]);
    fixture.grant("writer", &["write:output/**"]);
    let (reader, _r) = fixture.start("reader").await;
    let (writer, _w) = fixture.start("writer").await;

    assert_eq!(
        op(&reader, "read_file", b"config/a.txt").await.outcome,
        "ok"
    );
    assert_eq!(
        op(&writer, "read_file", b"config/a.txt").await.outcome,
        "denied"
    );
    assert_eq!(
        op_with(&writer, "write_file", b"output/w", b"w".to_vec(), 0)
            .await
            .outcome,
        "ok"
    );
    assert_eq!(
        op_with(&reader, "write_file", b"output/r", b"r".to_vec(), 0)
            .await
            .outcome,
        "denied"
    );

    let records = fixture.audit_records(4).await;
    let by = |plugin: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["plugin"] == plugin)
            .map(|r| {
                format!(
                    "{} {}",
                    r["operation"].as_str().unwrap(),
                    r["decision"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(by("reader"), ["read_file allowed", "write_file denied"]);
    assert_eq!(by("writer"), ["read_file denied", "write_file allowed"]);
}

#[tokio::test]
async fn a_gibibyte_written_and_read_through_host_services_in_bounded_memory() {
    // The host runs in its own process, so its peak memory is its own, not this test
    // binary's (which runs many tests at once).
    let dir = tempfile::tempdir().unwrap();
    #[allow(
        clippy::disallowed_methods,
        reason = "the host side must be a separate process to measure its own peak memory"
    )]
    let output = tokio::process::Command::new(HOST_HELPER)
        .arg("gibibyte")
        .arg(TEST_PLUGIN)
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = |key: &str| -> u64 {
        report
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    assert_eq!(value("written"), 1 << 30);
    assert_eq!(value("read"), 1 << 30);
    assert_eq!(value("bulk_written"), 1 << 30);
    assert_eq!(value("bulk_read"), 1 << 30);
    let (host, plugin) = (value("host_peak_kib"), value("plugin_peak_kib"));
    println!("1 GiB through host services: host peak {host} KiB, plugin peak {plugin} KiB");
    assert!(host < 64 * 1024, "host peak {host} KiB");
    assert!(plugin < 64 * 1024, "plugin peak {plugin} KiB");
}

/// The blocking threads the FIFO test's own runtime may have: the host services it serves
/// run their blocking steps there. A few more than a plugin's call slots, so that a read
/// that blocked its thread without holding a slot would soon leave no thread for the
/// next reads, which then never answer.
const FIFO_HOST_THREADS: usize = 16 + 8;

#[test]
fn fifos_sockets_and_devices_under_a_read_grant_are_refused_at_once() {
    assert_eq!(Limits::default().max_concurrent_calls, 16);
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(FIFO_HOST_THREADS)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(fifos_sockets_and_devices());
}

async fn fifos_sockets_and_devices() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("special", &GRANTS);
    fixture.grant("bystander", &GRANTS);
    let (plugin, _connection) = fixture.start("special").await;
    let (bystander, _bystander_connection) = fixture.start("bystander").await;
    let config = fixture.workspace.join("config");
    let c_path = |name: &str| {
        std::ffi::CString::new(config.join(name).as_os_str().as_encoded_bytes())
            .expect("a path without NUL")
    };
    // SAFETY: mkfifo and mknod with valid C strings.
    unsafe {
        assert_eq!(libc::mkfifo(c_path("fifo").as_ptr(), 0o644), 0);
        // A character device like /dev/null (1, 3); creating one needs root, as here.
        let made = libc::mknod(
            c_path("device").as_ptr(),
            libc::S_IFCHR | 0o644,
            libc::makedev(1, 3),
        );
        assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    }
    let _socket =
        std::os::unix::net::UnixListener::bind(config.join("socket")).expect("a socket file");

    for name in ["fifo", "socket", "device"] {
        let path = format!("config/{name}");
        let answer = tokio::time::timeout(PATIENCE, op(&plugin, "read_file", path.as_bytes()))
            .await
            .unwrap_or_else(|_| panic!("reading the {name} never answered"));
        assert_eq!(answer.outcome, "other", "{name}: {answer:?}");
        assert!(
            answer.message.contains("not a regular file") && answer.message.contains(&path),
            "{name}: {}",
            answer.message
        );
    }
    // Hundreds of reads of the FIFO, none left waiting on a host thread (there are only
    // FIFO_HOST_THREADS); another plugin is served meanwhile and after. (Counting the
    // threads instead flaked: how many idle ones tokio's pool keeps depends on how bursty
    // the calls are and how loaded the machine is, not on whether any is blocked.)
    let reads =
        futures_util::future::join_all((0..300).map(|_| op(&plugin, "read_file", b"config/fifo")));
    let answers = tokio::time::timeout(PATIENCE, reads)
        .await
        .expect("every read of the FIFO is answered");
    assert!(answers.iter().all(|answer| answer.outcome != "ok"));
    let served = op(&bystander, "read_file", b"config/a.txt").await;
    assert_eq!(served.outcome, "ok", "{}", served.message);
    // Each read left its one audit record: refused as not a regular file, or (past the
    // plugin's open-call limit, as 300 at once are) refused at the door.
    let records = fixture.audit_records(3 + 300 + 1).await;
    let reasons: Vec<&str> = records
        .iter()
        .filter(|record| record["plugin"] == "special")
        .map(|record| record["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 303, "{reasons:#?}");
    assert!(
        reasons
            .iter()
            .all(|reason| reason.contains("not a regular file") || reason.contains("limit reached")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .filter(|reason| reason.contains("not a regular file"))
            .count()
            >= 3 + 16,
        "{reasons:#?}"
    );
}

#[tokio::test]
async fn refusals_and_failures_name_the_path_and_what_would_allow_them() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("named", &GRANTS);
    let (plugin, _connection) = fixture.start("named").await;
    // Through a symbolic link: refused by confinement, which no capability lifts.
    let through = op_with(&plugin, "write_file", b"links/out/x", b"x".to_vec(), 0).await;
    assert_eq!(through.outcome, "denied", "{through:?}");
    assert!(through.capability.is_empty(), "{through:?}");
    assert!(
        through.message.contains("\"links/out/x\"")
            && !through.message.contains("\"\"")
            && through.message.contains("no capability allows this"),
        "{}",
        through.message
    );
    // By policy: the capability that would allow it, in the status and the message.
    let denied = op(&plugin, "read_file", b"secrets/key").await;
    assert_eq!(denied.capability, "read:secrets/key", "{denied:?}");
    assert!(
        denied.message.contains("read:secrets/key"),
        "{}",
        denied.message
    );
    // A failure of an allowed call names the path.
    let missing = op(&plugin, "read_file", b"config/none.txt").await;
    assert_eq!(missing.outcome, "not_found", "{missing:?}");
    assert!(
        missing.message.contains("config/none.txt"),
        "{}",
        missing.message
    );
}

#[tokio::test]
async fn a_hard_link_to_a_file_outside_the_grants_is_not_read_through() {
    for allowed in [false, true] {
        let fixture = Fixture::new(Limits {
            allow_hard_links: allowed,
            ..Limits::default()
        });
        // Inside `config/` (granted), another name for `secrets/key` (not granted).
        std::fs::hard_link(
            fixture.workspace.join("secrets/key"),
            fixture.workspace.join("config/linked"),
        )
        .unwrap();
        fixture.grant("linker", &GRANTS);
        let (plugin, _connection) = fixture.start("linker").await;
        let answer = op(&plugin, "read_file", b"config/linked").await;
        if allowed {
            // The operator's choice, for workspaces whose links it trusts.
            assert_eq!(answer.outcome, "ok", "{}", answer.message);
            continue;
        }
        assert_eq!(answer.outcome, "denied", "{answer:?}");
        assert!(
            answer.message.contains("config/linked") && answer.message.contains("2 hard links"),
            "{}",
            answer.message
        );
        assert!(!String::from_utf8_lossy(&answer.data).contains("SECRET"));
        let records = fixture.audit_records(1).await;
        assert_eq!(records[0]["decision"], "denied", "{records:?}");
        // The file itself, read by its own single name, is fine once the link is gone.
        std::fs::remove_file(fixture.workspace.join("config/linked")).unwrap();
        let plain = op(&plugin, "read_file", b"config/a.txt").await;
        assert_eq!(plain.outcome, "ok", "{}", plain.message);
    }
}

#[tokio::test]
async fn a_read_in_flight_when_its_grant_is_revoked_finishes_and_the_next_is_denied() {
    let fixture = Fixture::new(Limits::default());
    const BIG: usize = 4 << 20;
    std::fs::write(fixture.workspace.join("config/big.bin"), vec![7u8; BIG]).unwrap();
    fixture.grant("revoked-midway", &GRANTS);
    let (plugin, _connection) = fixture.start("revoked-midway").await;
    // The stream is opened (the call was checked and allowed), then the grant goes.
    let held = op_with(&plugin, "hold_reads", b"config/big.bin", Vec::new(), 1).await;
    assert_eq!(held.names, ["ok"], "{held:?}");
    assert!(
        fixture
            .services
            .policy()
            .revoke("revoked-midway", "read:config/**")
    );
    // Like an open file descriptor, the stream already allowed runs to its end...
    let drained = op(&plugin, "drain_held", b"").await;
    assert_eq!(
        drained.names,
        [format!("{BIG} ok: complete")],
        "{drained:?}"
    );
    // ... and the next call is checked against the new grants.
    let next = op(&plugin, "read_file", b"config/big.bin").await;
    assert_eq!(next.outcome, "denied", "{next:?}");
}
