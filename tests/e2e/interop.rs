//! Interoperability with go-plugin 1.0.1 (Debian's packages), in both directions: a tether
//! host runs Go plugins built with go-plugin, and a Go host built with go-plugin runs
//! tether plugins, with callbacks through the broker each way.
//!
//! The Go fixtures are our own, in `tests/go/src/tetherinterop` (GOPATH mode), built once
//! into `<target>/go/bin` and rebuilt only when their sources change. `cargo xtask test`
//! skips these tests, saying so, where the Go toolchain is missing; run directly without
//! it, they fail and say what to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use tether_host::{Error, PluginClient, Stop};
use tether_plugin_sdk::tonic::{self, Code, Request, Response, Status};
use tether_plugin_sdk::{HandshakeConfig, Routes};
use tether_test_contract::interop::add_helper_server::{AddHelper, AddHelperServer};
use tether_test_contract::interop::counter_client::CounterClient;
use tether_test_contract::interop::kv_client::KvClient;
use tether_test_contract::interop::{
    CounterGetRequest, CounterPutRequest, GetRequest, PutRequest, SumRequest, SumResponse,
};
use tracing::Level;

use crate::support::{PATIENCE, eventually, is_gone, record_events, recorded, sandbox};

/// go-plugin's example handshake, which the fixtures use.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");

/// What to install for these tests (docs/protocol.md, section 12, Interoperability).
pub(crate) const GO_PACKAGES: &str = "golang-go golang-github-hashicorp-go-plugin-dev \
    golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev";

/// Where Debian puts go-plugin's sources.
const GO_PLUGIN_SOURCES: &str = "/usr/share/gocode/src/github.com/hashicorp/go-plugin";

/// The Go fixtures' programs.
const GO_PROGRAMS: [&str; 3] = ["kvplugin", "counterplugin", "gohost"];

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_kv-plugin");
const COUNTER_PLUGIN: &str = env!("CARGO_BIN_EXE_counter-plugin");

/// The fixtures' GOPATH tree.
fn go_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go")
}

/// The newest modification time of any file under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)
        .expect("the Go fixtures' sources")
        .flatten()
    {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        latest = latest.max(time);
    }
    latest
}

/// Builds the Go fixtures (once per test run, and only if a source is newer than the
/// programs), returning the directory that holds them.
fn go_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_go_fixtures);
    match dir {
        Ok(dir) => dir.join(name),
        Err(why) => panic!("{why}"),
    }
}

fn build_go_fixtures() -> Result<PathBuf, String> {
    let missing = || {
        format!(
            "the Go interop fixtures need Go and go-plugin: apt-get install -y {GO_PACKAGES} \
             (`cargo xtask test` skips these tests, saying so, when they are missing)"
        )
    };
    if !Path::new(GO_PLUGIN_SOURCES).is_dir() {
        return Err(missing());
    }
    let target = crate::support::bin_dir()
        .parent()
        .expect("the target directory")
        .join("go");
    let bin = target.join("bin");
    let sources = go_tree().join("src");
    let built = GO_PROGRAMS
        .iter()
        .map(|name| std::fs::metadata(bin.join(name)).and_then(|m| m.modified()))
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .and_then(|times| times.into_iter().min());
    if built.is_some_and(|built| built > newest(&sources)) {
        return Ok(bin);
    }
    let gopath = format!("/usr/share/gocode:{}", go_tree().display());
    #[allow(clippy::disallowed_methods, reason = "builds the Go fixtures")]
    let output = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", bin.display()))
        .args(GO_PROGRAMS.map(|name| format!("tetherinterop/{name}")))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", target.join("cache"))
        .env("GOFLAGS", "")
        .output()
        .map_err(|err| format!("could not run `go` ({err}); {}", missing()))?;
    if !output.status.success() {
        return Err(format!(
            "building the Go fixtures failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(bin)
}

/// A Go plugin under a tether host, sandboxed like any plugin, plus the temporary file
/// go-plugin makes where it binds its socket.
fn go_plugin(name: &str, program: &str) -> tether_host::PluginBuilder {
    record_events();
    PluginClient::builder(name, go_bin(program))
        .handshake(HANDSHAKE)
        .sandbox(sandbox().allow_socket_dir_files(true))
}

#[tokio::test]
async fn without_socket_dir_files_a_go_plugin_cannot_start_and_the_error_says_why() {
    let err = go_plugin("go-confined", "kvplugin")
        .sandbox(sandbox())
        .start()
        .await
        .expect_err("go-plugin cannot make its temporary file");
    match &err {
        Error::ExitedBeforeHandshake {
            stderr_tail, hint, ..
        } => {
            assert!(stderr_tail.contains("permission denied"), "{stderr_tail}");
            assert!(
                hint.is_some_and(|hint| hint.contains("allow_socket_dir_files(true)")),
                "{err}"
            );
        }
        other => panic!("expected ExitedBeforeHandshake, got {other}"),
    }
    assert!(err.to_string().contains("hint: "), "{err}");
}

#[tokio::test]
async fn a_tether_host_runs_a_go_kv_plugin() {
    let plugin = go_plugin("go-kv", "kvplugin")
        .start()
        .await
        .expect("the Go plugin starts (it has no GRPCStdio, which the host tolerates)");
    plugin.health().await.expect("health");
    let mut kv = KvClient::new(plugin.channel());
    kv.put(PutRequest {
        key: "greeting".into(),
        value: b"hello from rust".to_vec(),
    })
    .await
    .expect("put");
    let value = kv
        .get(GetRequest {
            key: "greeting".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .value;
    assert_eq!(value, b"hello from rust");
    let missing = kv
        .get(GetRequest {
            key: "missing".into(),
        })
        .await
        .expect_err("a missing key is an error");
    assert_eq!(missing.code(), Code::NotFound, "{missing}");
    assert!(missing.message().contains("missing"), "{missing}");

    // hclog's JSON lines arrive as events at the level the Go plugin logged them.
    let expected = [
        (Level::TRACE, "starting"),
        (Level::INFO, "stored a value"),
        (Level::DEBUG, "read a value"),
        (Level::WARN, "get of a missing key"),
    ];
    let arrived = eventually(PATIENCE, || {
        let events = recorded("go-kv");
        expected.iter().all(|(level, message)| {
            events
                .iter()
                .any(|e| e.target == "tether::plugin" && e.level == *level && e.message == *message)
        })
    })
    .await;
    let events: Vec<_> = recorded("go-kv")
        .into_iter()
        .filter(|e| e.target == "tether::plugin")
        .map(|e| (e.level, e.message, e.fields))
        .collect();
    assert!(arrived, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|(_, message, fields)| message == "stored a value"
                && fields.contains("key=greeting")),
        "{events:#?}"
    );

    // go-plugin 1.0.1 has no GRPCStdio: the host noticed, and carried on.
    assert!(
        recorded("go-kv")
            .iter()
            .any(|e| e.message.contains("does not mirror its stdio")),
        "{events:#?}"
    );

    // Graceful shutdown through go-plugin's controller, and nothing left running.
    let pid = plugin.pid();
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
    assert!(is_gone(pid));
}

/// The host's `AddHelper`: adds, and counts the calls.
#[derive(Default)]
struct Adder {
    calls: AtomicU32,
}

#[tonic::async_trait]
impl AddHelper for Adder {
    async fn sum(&self, request: Request<SumRequest>) -> Result<Response<SumResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let SumRequest { a, b } = request.into_inner();
        Ok(Response::new(SumResponse { r: a + b }))
    }
}

#[tokio::test]
async fn a_go_counter_plugin_calls_back_the_tether_hosts_add_helper_through_the_broker() {
    let plugin = go_plugin("go-counter", "counterplugin")
        .start()
        .await
        .expect("the Go plugin starts");
    let adder = Arc::new(Adder::default());
    let mut counter = CounterClient::new(plugin.channel());
    for value in [3, 4] {
        // go-plugin dials each broker id once: serve the helper under a fresh id per Put.
        let broker = plugin.broker().expect("a started plugin has a broker");
        let id = broker.next_id();
        let _served = broker
            .accept_and_serve(
                id,
                Routes::new(AddHelperServer::from_arc(Arc::clone(&adder))),
            )
            .await
            .expect("serve AddHelper on the broker");
        counter
            .put(CounterPutRequest {
                add_server: id,
                key: "apples".into(),
                value,
            })
            .await
            .expect("put: the Go plugin dials the host's AddHelper");
    }
    let total = counter
        .get(CounterGetRequest {
            key: "apples".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .value;
    assert_eq!(total, 7);
    assert_eq!(
        adder.calls.load(Ordering::SeqCst),
        2,
        "one callback per Put"
    );

    let pid = plugin.pid();
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
    assert!(is_gone(pid));
}

#[tokio::test]
async fn a_version_mismatch_with_a_go_plugin_is_the_clear_error() {
    let err = go_plugin("go-old", "kvplugin")
        .protocol_versions(&[2, 3])
        .start()
        .await
        .expect_err("the Go plugin serves only version 1");
    assert!(
        matches!(
            &err,
            Error::IncompatibleVersion {
                offered: 1,
                accepted,
                ..
            } if accepted == &[2, 3]
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("go-old") && message.contains("[2, 3]"),
        "{message}"
    );
}

/// Runs the Go host on a tether plugin and returns its stdout lines.
fn go_host(kind: &str, plugin: &str) -> Vec<String> {
    #[allow(clippy::disallowed_methods, reason = "runs the Go host fixture")]
    let output = Command::new(go_bin("gohost"))
        .args([kind, plugin])
        .output()
        .expect("the Go host runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // go-plugin 1.0.1 says this when Kill had to force the plugin.
    assert!(!stderr.contains("failed to exit gracefully"), "{stderr}");
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let pid: u32 = lines
        .first()
        .and_then(|line| line.strip_prefix("plugin pid "))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid line: {stdout}"));
    assert!(
        is_gone(pid),
        "the tether plugin outlived the Go host's Kill"
    );
    lines[1..].to_vec()
}

#[test]
fn a_go_host_runs_a_tether_kv_plugin() {
    assert_eq!(
        go_host("kv", KV_PLUGIN),
        [
            "get greeting = hello from go",
            "get missing: NotFound",
            "exited = true"
        ]
    );
}

#[test]
fn a_go_host_runs_a_tether_counter_plugin_that_calls_back_through_the_go_broker() {
    assert_eq!(
        go_host("counter", COUNTER_PLUGIN),
        [
            "get apples = 7",
            "host AddHelper calls = 2",
            "exited = true"
        ]
    );
}
