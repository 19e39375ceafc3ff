//! Every handshake failure, each produced by a tiny misbehaving plugin, gives its own
//! error, and early failures are reported long before the start timeout.

use std::time::{Duration, Instant};

use tether_host::{Error, PluginClient};

use crate::support::*;

/// Long enough that a failure reported "at once" is clearly not a timeout.
const START_TIMEOUT: Duration = Duration::from_secs(30);

async fn start_bad(mode: &str) -> (Error, Duration) {
    record_events();
    let started = Instant::now();
    let result = PluginClient::builder(format!("bad-{mode}"), BAD_PLUGIN)
        .arg(mode)
        // `foreign-socket` starts a second process to own its socket.
        .sandbox(sandbox().allow_processes(true))
        .start_timeout(START_TIMEOUT)
        .start()
        .await;
    let elapsed = started.elapsed();
    let err = match result {
        Ok(_) => panic!("bad plugin {mode} started"),
        Err(err) => err,
    };
    // Each failure at the trust boundary also leaves a trace in the host's log.
    let logged = recorded(&format!("bad-{mode}")).iter().any(|event| {
        event.target == "tether::host"
            && event.level == tracing::Level::WARN
            && event.others.iter().any(|field| field.starts_with("error="))
    });
    assert!(logged, "no start failure logged for {mode}");
    (err, elapsed)
}

fn early(mode: &str, elapsed: Duration) {
    assert!(
        elapsed < START_TIMEOUT / 2,
        "{mode}: reported after {elapsed:?}, not at once"
    );
}

#[tokio::test]
async fn garbage_before_the_handshake() {
    let (err, elapsed) = start_bad("garbage").await;
    assert!(
        matches!(&err, Error::NotAHandshake { line, .. } if line == "hello from a chatty plugin"),
        "{err}"
    );
    assert!(
        err.to_string().contains("bad-garbage"),
        "names the plugin: {err}"
    );
    early("garbage", elapsed);
}

#[tokio::test]
async fn an_overlong_line_without_newline() {
    let (err, elapsed) = start_bad("overlong").await;
    assert!(matches!(err, Error::HandshakeTooLong { .. }), "{err}");
    early("overlong", elapsed);
}

#[tokio::test]
async fn a_wrong_core_version() {
    let (err, elapsed) = start_bad("core-version").await;
    assert!(
        matches!(
            err,
            Error::CoreVersion {
                got: 2,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    early("core-version", elapsed);
}

#[tokio::test]
async fn netrpc() {
    let (err, elapsed) = start_bad("netrpc").await;
    assert!(matches!(err, Error::NetRpc { .. }), "{err}");
    early("netrpc", elapsed);
}

#[tokio::test]
async fn an_address_outside_the_private_directory() {
    let (err, elapsed) = start_bad("outside").await;
    assert!(
        matches!(&err, Error::AddressOutsideSocketDir { address, .. } if address == "/tmp/elsewhere/plugin.sock"),
        "{err}"
    );
    early("outside", elapsed);
}

#[tokio::test]
async fn a_tcp_address_the_host_did_not_offer() {
    let (err, elapsed) = start_bad("tcp").await;
    assert!(matches!(err, Error::UnexpectedNetwork { .. }), "{err}");
    early("tcp", elapsed);
}

#[tokio::test]
async fn a_socket_owned_by_another_process() {
    let (err, elapsed) = start_bad("foreign-socket").await;
    match &err {
        Error::SocketNotOwnedByPlugin {
            expected_pid,
            peer_pid: Some(peer),
            ..
        } => assert_ne!(*peer, *expected_pid),
        other => panic!("expected SocketNotOwnedByPlugin, got {other}"),
    }
    early("foreign-socket", elapsed);
}

#[tokio::test]
async fn exiting_before_the_handshake_reports_status_and_stderr() {
    let (err, elapsed) = start_bad("exit-early").await;
    match &err {
        Error::ExitedBeforeHandshake {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(status.code(), Some(3));
            assert!(
                stderr_tail.contains("cannot read my configuration"),
                "{stderr_tail}"
            );
        }
        other => panic!("expected ExitedBeforeHandshake, got {other}"),
    }
    assert!(err.to_string().contains("cannot read my configuration"));
    early("exit-early", elapsed);
}

#[tokio::test]
async fn no_line_before_the_timeout() {
    record_events();
    let timeout = Duration::from_millis(500);
    let err = PluginClient::builder("bad-silent", BAD_PLUGIN)
        .arg("silent")
        .start_timeout(timeout)
        .start()
        .await
        .expect_err("a silent plugin does not start");
    assert!(
        matches!(err, Error::HandshakeTimeout { timeout: t, .. } if t == timeout),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_executable() {
    let err = PluginClient::builder("missing", "/nonexistent/plugin")
        .start()
        .await
        .expect_err("no such file");
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}

#[tokio::test]
async fn no_common_version_names_both_sets() {
    let started = Instant::now();
    let err = test_plugin("versionless")
        .args(["--versions", "1,2"])
        .protocol_versions(&[4, 5])
        .start_timeout(START_TIMEOUT)
        .start()
        .await
        .expect_err("no common version");
    match &err {
        Error::IncompatibleVersion {
            offered,
            accepted,
            plugin_serves,
            ..
        } => {
            assert_eq!(*offered, 1);
            assert_eq!(accepted, &[4, 5]);
            assert_eq!(plugin_serves.as_deref(), Some(&[1, 2][..]));
        }
        other => panic!("expected IncompatibleVersion, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("accepts [4, 5]") && message.contains("serves [1, 2]"),
        "{message}"
    );
    early("versions", started.elapsed());
}
