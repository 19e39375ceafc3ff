//! Interoperability with go-plugin, in both directions: a tether host runs Go plugins
//! built with go-plugin, and a Go host built with go-plugin runs tether plugins, with
//! callbacks through the broker each way; over go-plugin 1.0.1, 1.4.10, 1.6.3 and 1.8.0
//! (the conformance matrix, `interop_matrix.rs`).
//!
//! The Go fixtures are our own, a Go module in `tests/go/fixtures`, built against each
//! release by its module in `tests/go/versions/` (`interop_go.rs`). `cargo xtask test`
//! skips these tests, saying so, where Go is missing or too old; run directly without it,
//! they fail and say what to install.

#[path = "interop_go.rs"]
pub(crate) mod go;
#[path = "interop_matrix.rs"]
mod matrix;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use tether_host::{Error, PluginBuilder, PluginClient};
use tether_plugin_sdk::HandshakeConfig;
use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_test_contract::interop::add_helper_server::AddHelper;
use tether_test_contract::interop::{SumRequest, SumResponse};

use crate::support::{PATIENCE, eventually, is_gone, record_events, sandbox};

use self::go::GoPlugin;

/// go-plugin's example handshake, which the fixtures use.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");

const KV_PLUGIN: &str = env!("CARGO_BIN_EXE_kv-plugin");
const COUNTER_PLUGIN: &str = env!("CARGO_BIN_EXE_counter-plugin");

/// A Go plugin built against `release`, under a tether host, sandboxed like any plugin,
/// plus the temporary file go-plugin makes where it binds its socket.
fn go_plugin(name: &str, release: &GoPlugin, program: &str) -> PluginBuilder {
    record_events();
    PluginClient::builder(name, go::bin(release, program))
        .handshake(HANDSHAKE)
        .sandbox(sandbox().allow_socket_dir_files(true))
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

/// Runs the Go host built against `release` with `args` and the environment `env`.
fn run_go_host(release: &GoPlugin, args: &[&str], env: &[(&str, &str)]) -> Output {
    #[allow(clippy::disallowed_methods, reason = "runs the Go host fixture")]
    let output = Command::new(go::bin(release, "gohost"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the Go host runs");
    output
}

/// The `plugin pid N` line the Go host prints first.
fn plugin_pid(stdout: &str) -> u32 {
    stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("plugin pid "))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid line: {stdout}"))
}

#[tokio::test]
async fn without_socket_dir_files_a_go_plugin_cannot_start_and_the_error_says_why() {
    let err = go_plugin("go-confined", &go::V1_0_1, "kvplugin")
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
async fn a_version_mismatch_with_a_go_plugin_is_the_clear_error() {
    let err = go_plugin("go-old", &go::V1_0_1, "kvplugin")
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

/// A Go host that dies without stopping its tether plugin: the plugin notices that its
/// parent is gone and exits on its own.
#[tokio::test]
async fn go_host_dies_and_tether_plugin_exits() {
    let output = run_go_host(&go::V1_8_0, &["orphan", KV_PLUGIN], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let pid = plugin_pid(&stdout);
    let exited = eventually(PATIENCE, || is_gone(pid)).await;
    if !exited {
        // Leave nothing running behind a failed test.
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    assert!(
        exited,
        "the tether plugin (pid {pid}) outlived its Go host by {PATIENCE:?}: it does not notice \
         that its parent died"
    );
}
