//! The guestbook example end to end: the real plugin binary, started sandboxed by a host
//! built here with tether's public API only, and the example's own host binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tether::CallContext;
use tether::host::{HostConnection, KernelSupport, PluginClient, Sandbox, Stop};
use tether::hostserve::{Audit, Gate, HostServices, Limits, Policy};
use tether::plugin::HostCallError;
use tether_example_guestbook::proto::greeter_client::GreeterClient;
use tether_example_guestbook::proto::guestbook_server::GuestbookServer;
use tether_example_guestbook::proto::{GreetRequest, GreetResponse};
use tether_example_guestbook::{
    BOOK, GREETING_FILE, Guestbook, HANDSHAKE, Signature, VERSION, capability_kind,
};
use tonic::{Code, Status};

const PLUGIN: &str = env!("CARGO_BIN_EXE_guestbook-plugin");
const HOST: &str = env!("CARGO_BIN_EXE_guestbook-host");

/// The plugin's name, as the policy and the audit trail know it.
const NAME: &str = "guestbook";

/// `Strict` where this kernel has every layer of the sandbox, else `BestEffort`, as in the
/// end-to-end tests: the example must work confined.
fn sandbox() -> Sandbox {
    if KernelSupport::probe().is_complete() {
        Sandbox::strict()
    } else {
        Sandbox::best_effort()
    }
}

/// A host running the guestbook plugin with its host services.
struct Running {
    _dir: TempDir,
    audit_path: PathBuf,
    gate: Gate,
    guestbook: Arc<Guestbook>,
    plugin: PluginClient,
    connection: HostConnection,
}

/// Starts the plugin sandboxed, granted `grants`, with the file services and the guestbook
/// served over one connection.
async fn start(grants: &[&str]) -> Running {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let workspace = dir.path().join("workspace");
    std::fs::create_dir(&workspace).expect("the workspace");
    std::fs::write(workspace.join(GREETING_FILE), "Hello\n").expect("the greeting");
    let audit_path = dir.path().join("audit.jsonl");

    let policy = Policy::with_kinds([capability_kind()]).expect("the guestbook kind");
    policy.set_workspace(NAME, &workspace);
    for capability in grants {
        policy.grant(NAME, capability).expect("a valid grant");
    }
    let audit = Audit::to_file(&audit_path, 1 << 20).expect("the audit file");
    let gate = Gate::new(policy, audit, Limits::default());
    let guestbook = Arc::new(Guestbook::new(gate.clone()));
    let services = HostServices::from_gate(gate.clone())
        .serve(GuestbookServer::from_arc(Arc::clone(&guestbook)));

    let plugin = PluginClient::builder(NAME, PLUGIN)
        .handshake(HANDSHAKE)
        .protocol_versions(&[VERSION])
        .sandbox(sandbox())
        .start()
        .await
        .expect("the guestbook plugin starts");
    let connection = services
        .connect(&plugin)
        .await
        .expect("host services are offered")
        .required()
        .expect("the plugin takes host services");
    Running {
        _dir: dir,
        audit_path,
        gate,
        guestbook,
        plugin,
        connection,
    }
}

impl Running {
    /// One `Greet` for `name`, carrying `request_id`.
    async fn greet(&self, request_id: &str, name: &str) -> Result<GreetResponse, Status> {
        let request = CallContext::new()
            .with_request_id(request_id)?
            .with_timeout(Duration::from_secs(30))
            .request(GreetRequest {
                name: name.to_owned(),
            })?;
        let mut greeter = GreeterClient::new(self.plugin.channel());
        Ok(greeter.greet(request).await?.into_inner())
    }

    /// Every audit record so far.
    async fn records(&self) -> Vec<Value> {
        assert!(self.gate.audit().flush(Duration::from_secs(30)).await);
        std::fs::read_to_string(&self.audit_path)
            .expect("the audit file")
            .lines()
            .map(|line| serde_json::from_str(line).expect("an audit record is JSON"))
            .collect()
    }

    /// Withdraws the host services and stops the plugin, which must stop gracefully.
    async fn stop(self) {
        self.connection.close().await;
        let exit = self.plugin.shutdown().await.expect("the plugin stops");
        assert_eq!(exit.stop, Stop::Graceful);
        assert!(exit.status.success(), "{:?}", exit.status);
    }
}

/// The one record of `operation` in the call `request_id`.
fn record<'a>(records: &'a [Value], operation: &str, request_id: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["operation"] == operation && r["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "{operation} in {request_id}: {records:#?}");
    found[0]
}

#[tokio::test]
async fn a_granted_plugin_reads_its_greeting_and_signs_the_book_over_one_connection() {
    let host = start(&["read:greeting.txt", "guestbook:sign:visitors"]).await;

    let ada = host.greet("gb-ada", "Ada").await.unwrap();
    assert_eq!(ada.greeting, "Hello, Ada!");
    assert_eq!(ada.entry, 1);
    let grace = host.greet("gb-grace", "Grace").await.unwrap();
    assert_eq!(grace.greeting, "Hello, Grace!");
    assert_eq!(grace.entry, 2);
    // The host knows who signed from the connection, not from anything the plugin sent.
    let signed_by = |name: &str| Signature {
        name: name.to_owned(),
        plugin: NAME.to_owned(),
    };
    assert_eq!(
        host.guestbook.signatures(BOOK),
        [signed_by("Ada"), signed_by("Grace")]
    );

    let records = host.records().await;
    assert_eq!(records.len(), 4, "{records:#?}");
    for id in ["gb-ada", "gb-grace"] {
        let read = record(&records, "read_file", id);
        assert_eq!(read["plugin"], NAME);
        assert_eq!(read["resource"], "greeting.txt");
        assert_eq!(read["decision"], "allowed");
        assert_eq!(read["capability"], "read:greeting.txt");
        let sign = record(&records, "guestbook.v1.Guestbook/Sign", id);
        assert_eq!(sign["plugin"], NAME);
        assert_eq!(sign["resource"], BOOK);
        assert_eq!(sign["decision"], "allowed");
        assert_eq!(sign["decided_by"], "policy");
        assert_eq!(sign["capability"], "guestbook:sign:visitors");
        // The plugin passed the host's deadline on with the request id.
        assert!(sign["timeout_ms"].as_u64().is_some(), "{sign:#}");
    }
    host.stop().await;
}

#[tokio::test]
async fn without_guestbook_sign_the_plugin_reports_the_typed_denial() {
    let host = start(&["read:greeting.txt"]).await;

    let status = host.greet("gb-denied", "Ada").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    match HostCallError::from(status) {
        HostCallError::Denied {
            capability,
            message,
        } => {
            assert_eq!(capability, "guestbook:sign:visitors");
            assert!(message.contains("`guestbook:sign:visitors`"), "{message}");
        }
        other => panic!("expected the typed denial, got {other:?}"),
    }
    assert!(host.guestbook.signatures(BOOK).is_empty());

    let records = host.records().await;
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(
        record(&records, "read_file", "gb-denied")["decision"],
        "allowed"
    );
    let sign = record(&records, "guestbook.v1.Guestbook/Sign", "gb-denied");
    assert_eq!(sign["plugin"], NAME);
    assert_eq!(sign["resource"], BOOK);
    assert_eq!(sign["decision"], "denied");
    assert_eq!(sign["decided_by"], "policy");
    assert_eq!(sign["capability"], "guestbook:sign:visitors");
    host.stop().await;
}

#[test]
fn the_host_binary_runs_the_example_from_start_to_finish() {
    #[allow(
        clippy::disallowed_methods,
        reason = "the test runs the example's host binary as a newcomer would"
    )]
    let output = std::process::Command::new(HOST)
        .arg("Ada")
        .arg("--plugin")
        .arg(PLUGIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "\"Hello, Ada!\" (entry #1)",
        "denied: plugin `guestbook` lacks the capability `guestbook:sign:visitors`",
        "allowed  guestbook.v1.Guestbook/Sign",
        "denied   guestbook.v1.Guestbook/Sign",
        "the plugin exited after the controller's Shutdown",
        "done. The visitors book holds: Ada (through plugin `guestbook`)",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert!(stderr.is_empty(), "the host warned:\n{stderr}");
}

#[test]
fn the_host_binary_exports_its_metrics_for_prometheus() {
    use std::io::{BufRead, BufReader, Read, Write};

    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    #[allow(
        clippy::disallowed_methods,
        reason = "the test runs the example's host binary as an operator would"
    )]
    let mut host = std::process::Command::new(HOST)
        .args(["Ada", "--plugin", PLUGIN, "--metrics", &address])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo runs, then the host serves its metrics until stopped.
    let mut stdout = String::new();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let serving = loop {
        match lines.next() {
            Some(line) => {
                let line = line.unwrap();
                stdout.push_str(&line);
                stdout.push('\n');
                if line.starts_with("serving metrics at") {
                    break true;
                }
            }
            None => break false,
        }
    };
    let scraped = serving.then(|| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    // Stopped as its operator would, with Ctrl-C: it ends cleanly and removes its
    // temporary directory (a SIGKILL would leave it behind in the temp dir).
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&host),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = host.wait().unwrap();
    let mut stderr = String::new();
    host.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let Some(metrics) = scraped else {
        panic!("the host never served its metrics:\n{stdout}\n{stderr}");
    };
    assert!(
        status.success(),
        "{status:?} after Ctrl-C:\n{stdout}\n{stderr}"
    );
    let workspace = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("workspace "))
        .and_then(|rest| rest.trim().split(" (temporary").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no workspace line in:\n{stdout}"));
    let temporary = workspace.parent().expect("the workspace has a parent");
    assert!(
        !temporary.exists(),
        "{} is still there after the host stopped",
        temporary.display()
    );
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        stdout.contains(&format!("serving metrics at http://{address}/metrics")),
        "{stdout}"
    );
    for expected in [
        r#"tether_hostservice_calls_total{plugin="guestbook",operation="read_file",decision="allowed"} 2"#,
        r#"tether_hostservice_calls_total{plugin="guestbook",operation="guestbook.v1.Guestbook/Sign",decision="allowed"} 1"#,
        r#"tether_hostservice_calls_total{plugin="guestbook",operation="guestbook.v1.Guestbook/Sign",decision="denied"} 1"#,
        r#"tether_hostservice_denials_total{plugin="guestbook",operation="guestbook.v1.Guestbook/Sign",decided_by="policy"} 1"#,
        r#"tether_hostservice_call_duration_seconds_count{plugin="guestbook",operation="read_file"} 2"#,
        r#"tether_plugin_starts_total{plugin="guestbook"} 1"#,
        "tether_audit_records_dropped_total 0",
        "tether_audit_records_failed_total 0",
        "# HELP tether_hostservice_calls_total Host-service calls, by decision.",
    ] {
        assert!(
            metrics.lines().any(|line| line == expected),
            "no {expected:?} in:\n{metrics}"
        );
    }
    // Every sandbox layer, 1 or 0 as this kernel has it.
    let layers: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with(r#"tether_sandbox_layer_enforced{plugin="guestbook","#))
        .collect();
    assert_eq!(layers.len(), 6, "{metrics}");
    assert!(
        layers
            .iter()
            .all(|line| line.ends_with(" 1") || line.ends_with(" 0")),
        "{layers:?}"
    );
}
