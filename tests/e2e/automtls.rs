//! AutoMTLS between a tether host and tether plugins: the main connection and brokered
//! connections both ways over TLS with the two throwaway certificates, and each way it can
//! fail refused with an error that says which.

use std::time::Duration;

use tether_host::{Error, PluginClient};
use tether_hostserve::Limits;
use tether_test_contract::testing::HostOpRequest;
use tether_test_contract::testing::testing_client::TestingClient;

use crate::hostserve::Fixture;
use crate::support::{BAD_PLUGIN, PATIENCE, eventually, record_events, recorded, test_plugin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_host_services_run_over_mutual_tls() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("mtls", &["read:config/**"]);
    let plugin = test_plugin("mtls")
        .arg("--host-files")
        .auto_mtls(true)
        .start()
        .await
        .expect("a tether plugin speaks AutoMTLS");
    assert!(
        plugin.broker().is_some_and(|broker| broker.uses_tls()),
        "brokered connections should speak TLS too"
    );
    // Host services: the plugin dials the host's endpoint through the broker, over TLS.
    let connection = fixture.connect(&plugin).await;
    let response = TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: "read_file".into(),
            path: b"config/a.txt".to_vec(),
            data: Vec::new(),
            size: 0,
        })
        .await
        .expect("the plugin answers over TLS")
        .into_inner();
    assert_eq!(response.outcome, "ok", "{response:?}");
    assert_eq!(response.data, b"config a");
    let records = fixture.audit_records(1).await;
    assert!(
        records
            .iter()
            .any(|record| record["plugin"] == "mtls" && record["decision"] == "allowed"),
        "{records:?}"
    );
    // A reattach config carries no certificates: refused, saying why.
    let err = plugin
        .reattach_config()
        .expect_err("no reattach config for this plugin");
    assert!(err.to_string().contains("AutoMTLS"), "{err}");
    drop(connection);
    plugin.shutdown().await.expect("a clean stop over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_tls_at_the_host_service_endpoint_is_refused_and_audited() {
    let fixture = Fixture::new(Limits::default());
    let plugin = test_plugin("mtls-knock")
        .arg("--host-files")
        .auto_mtls(true)
        .start()
        .await
        .expect("a tether plugin speaks AutoMTLS");
    let connection = fixture.connect(&plugin).await;
    let endpoint = connection
        .address()
        .expect("a spawned plugin's endpoint")
        .to_owned();
    // The plugin itself (the one process admitted there) connects without TLS and sends
    // nothing: the endpoint refuses it once the handshake times out, and audits it.
    let response = TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: "open_connections".into(),
            path: endpoint.display().to_string().into_bytes(),
            data: Vec::new(),
            size: 1,
        })
        .await
        .expect("the plugin answers")
        .into_inner();
    assert_eq!(response.size, 1, "{response:?}");
    let records = fixture.audit_records(1).await;
    let refused = records
        .iter()
        .find(|record| record["operation"] == "connect")
        .unwrap_or_else(|| panic!("no connect record: {records:?}"));
    assert_eq!(refused["decision"], "denied", "{refused}");
    assert_eq!(refused["pid"], plugin.pid(), "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("TLS handshake")),
        "{refused}"
    );
    drop(connection);
    plugin.shutdown().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_refuses_a_connection_without_tls_and_says_so() {
    record_events();
    let plugin = test_plugin("mtls-plain")
        .auto_mtls(true)
        .start()
        .await
        .expect("a tether plugin speaks AutoMTLS");
    // The plugin's main socket, in its private directory.
    let dir = plugin
        .broker()
        .expect("a spawned plugin has a broker")
        .socket_dir()
        .to_owned();
    let socket = std::fs::read_dir(&dir)
        .expect("the socket directory")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("plugin-"))
        })
        .expect("the plugin's socket");
    // This process is the plugin's host, so its credentials pass; but it speaks no TLS.
    let plain =
        tether_transport::connect(&socket, tether_transport::Peer::Process(plugin.pid())).await;
    let refused = match plain {
        Ok(channel) => TestingClient::new(channel)
            .host_op(HostOpRequest {
                op: "read_file".into(),
                path: b"x".to_vec(),
                data: Vec::new(),
                size: 0,
            })
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a plain connection got through to an AutoMTLS plugin"
    );
    // The plugin says why, in its log, which reaches the host at WARN.
    let said = eventually(PATIENCE, || {
        recorded("mtls-plain").iter().any(|event| {
            event.level == tracing::Level::WARN && event.message.contains("does not speak TLS")
        })
    })
    .await;
    assert!(said, "{:#?}", recorded("mtls-plain"));
    // The host's own TLS connection is unaffected.
    plugin.health().await.expect("health over TLS");
    plugin.shutdown().await.expect("a clean stop");
}

async fn start_bad(mode: &str, auto_mtls: bool) -> Error {
    PluginClient::builder(format!("bad-{mode}"), BAD_PLUGIN)
        .arg(mode)
        .auto_mtls(auto_mtls)
        .start_timeout(Duration::from_secs(60))
        .start()
        .await
        .expect_err("the plugin must not start")
}

#[tokio::test]
async fn a_plugin_without_tls_is_refused_when_the_host_asks_for_it() {
    let err = start_bad("no-cert", true).await;
    assert!(matches!(err, Error::AutoMtls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("answered without a certificate") && text.contains("bad-no-cert"),
        "{text}"
    );
}

#[tokio::test]
async fn a_certificate_the_host_did_not_ask_for_is_refused() {
    let err = start_bad("unasked-cert", false).await;
    assert!(matches!(err, Error::AutoMtls { .. }), "{err:?}");
    assert!(
        err.to_string().contains("did not ask for AutoMTLS"),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_serving_another_certificate_than_it_announced_is_refused() {
    let err = start_bad("wrong-cert", true).await;
    assert!(matches!(err, Error::AutoMtls { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not the one it announced"),
        "{err}"
    );
}

/// A tether plugin started by hand as a host would, with `PLUGIN_CLIENT_CERT`: it
/// requires that certificate. A host presenting another, or none, is refused; the one
/// with the announced certificate gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_refuses_a_host_presenting_another_certificate() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use tether_transport::tls::{Identity, MutualTls, certificate_from_handshake};
    use tether_transport::{ConnectError, Peer, connect_with};

    let dir = tempfile::tempdir().expect("a socket directory");
    let host = Identity::generate().expect("the host's certificate");
    let stranger = Identity::generate().expect("another certificate");
    #[allow(
        clippy::disallowed_methods,
        reason = "the test plays the host, to present a certificate a tether host never would"
    )]
    let mut plugin = Command::new(crate::support::TEST_PLUGIN)
        .env_clear()
        .env(
            crate::support::HANDSHAKE.magic_cookie_key.as_ref(),
            crate::support::HANDSHAKE.magic_cookie_value.as_ref(),
        )
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", dir.path())
        .env("PLUGIN_CLIENT_CERT", host.certificate_pem())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test plugin starts");
    let mut line = String::new();
    BufReader::new(plugin.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the handshake line");
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(fields.len(), 6, "{line}");
    let socket = std::path::PathBuf::from(fields[3]);
    let announced = certificate_from_handshake(fields[5]).expect("the plugin's certificate");
    let pid = plugin.id();

    // Another certificate than PLUGIN_CLIENT_CERT: the plugin refuses the handshake.
    let impostor = MutualTls::new(&stranger, announced.clone()).expect("TLS");
    let refused = match connect_with(&socket, Peer::Process(pid), Some(impostor)).await {
        Err(ConnectError::Tls { reason, .. }) => reason,
        Err(other) => other.to_string(),
        Ok(channel) => TestingClient::new(channel)
            .host_op(HostOpRequest {
                op: "read_file".into(),
                path: b"x".to_vec(),
                data: Vec::new(),
                size: 0,
            })
            .await
            .err()
            .map(|status| status.to_string())
            .unwrap_or_default(),
    };
    assert!(
        !refused.is_empty(),
        "a host with another certificate got through"
    );
    // The announced pair works.
    let genuine = MutualTls::new(&host, announced).expect("TLS");
    let channel = connect_with(&socket, Peer::Process(pid), Some(genuine))
        .await
        .expect("the host the plugin was told of gets through");
    let answer = TestingClient::new(channel)
        .host_op(HostOpRequest {
            op: "read_file".into(),
            path: b"x".to_vec(),
            data: Vec::new(),
            size: 0,
        })
        .await;
    // The plugin answers (it has no host services here, so the op itself fails inside).
    assert!(answer.is_ok(), "{answer:?}");

    plugin.kill().expect("stop the plugin");
    let _ = plugin.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut plugin.stderr.take().expect("stderr"), &mut stderr)
        .expect("the plugin's log");
    assert!(
        stderr.contains("not the one it announced"),
        "the plugin did not say why it refused: {stderr}"
    );
}
