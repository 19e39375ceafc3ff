//! Errors at the edges, each with a message that says what failed and what to do: a
//! handler's panic, a call to a service the plugin does not serve, and a plugin started
//! without its host's cookie or with another host's.

use std::process::{Command, Output};

use tether_host::{Error, HandshakeConfig};
use tether_test_contract::testing::host_testing_client::HostTestingClient;
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{EchoRequest, HostOpRequest, TickRequest, WhoAmIRequest};
use tonic::Code;
use tracing::Level;

use crate::support::*;

#[tokio::test]
async fn a_handler_panic_is_internal_with_its_message_and_location_and_the_plugin_serves_on() {
    let plugin = test_plugin("panicky").start().await.expect("start");
    let mut client = TestingClient::new(plugin.channel());
    let status = client
        .host_op(HostOpRequest {
            op: "panic".into(),
            path: "boom from the e2e test".into(),
            ..HostOpRequest::default()
        })
        .await
        .expect_err("the handler panicked");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("plugin handler panicked at tests/src/bin/test-plugin.rs:"),
        "the location of the panic: {message}"
    );
    assert!(
        message.ends_with(": boom from the e2e test"),
        "the panic's message: {message}"
    );

    // The same plugin, on the same connection, still answers.
    let reply = client
        .echo(EchoRequest {
            message: "still here".into(),
        })
        .await
        .expect("a call after the panic");
    assert_eq!(reply.into_inner().message, "still here");
    assert_eq!(plugin.exit_status(), None, "the plugin still runs");

    // The host shows the panic as the plugin's error-level log line.
    assert!(
        eventually(PATIENCE, || recorded("panicky").iter().any(|event| {
            event.target == "tether::plugin"
                && event.level == Level::ERROR
                && event.message.contains("plugin handler panicked at")
                && event.message.contains("boom from the e2e test")
        }))
        .await,
        "no error-level log of the panic: {:?}",
        recorded("panicky")
    );
    plugin.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_panic_inside_a_response_stream_ends_it_with_internal_after_the_messages_sent() {
    let plugin = test_plugin("panicky-stream").start().await.expect("start");
    let mut client = TestingClient::new(plugin.channel());
    let mut request = tonic::Request::new(TickRequest { every_ms: 1 });
    request
        .metadata_mut()
        .insert("x-panic-at", "2".parse().expect("ascii"));
    let mut ticks = client
        .ticks(request)
        .await
        .expect("the stream starts")
        .into_inner();
    for n in 0..2 {
        let tick = ticks.message().await.expect("a tick").expect("not the end");
        assert_eq!(tick.n, n);
    }
    let status = ticks.message().await.expect_err("the stream panicked");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("plugin handler panicked at tests/src/bin/test-plugin.rs:")
            && message.ends_with(": the tick stream broke at tick 2"),
        "{message}"
    );
    let reply = client
        .echo(EchoRequest {
            message: "after the stream".into(),
        })
        .await
        .expect("a call after the panic");
    assert_eq!(reply.into_inner().message, "after the stream");
    plugin.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_call_to_a_service_the_plugin_does_not_serve_names_what_it_serves() {
    let plugin = test_plugin("unserved").start().await.expect("start");
    // The host's own service, which no plugin serves.
    let status = HostTestingClient::new(plugin.channel())
        .who_am_i(WhoAmIRequest::default())
        .await
        .expect_err("the plugin does not serve HostTesting");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with(
            "this plugin does not serve `tether.testing.v1.HostTesting/WhoAmI`; it serves: "
        ),
        "{message}"
    );
    for served in [
        "tether.testing.v1.Testing",
        "plugin.GRPCController",
        "plugin.GRPCStdio",
        "grpc.health.v1.Health",
    ] {
        assert!(message.contains(served), "names {served}: {message}");
    }
    plugin.shutdown().await.expect("shutdown");
}

fn run_by_hand(cookie: Option<&str>) -> Output {
    let mut command = Command::new(TEST_PLUGIN);
    command.env_clear();
    if let Some(value) = cookie {
        command.env(HANDSHAKE.magic_cookie_key.as_ref(), value);
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "running the plugin as a user or a foreign host would"
    )]
    let output = command.output().expect("run the plugin");
    output
}

#[test]
fn a_missing_cookie_and_a_wrong_one_explain_themselves_differently() {
    let missing = run_by_hand(None);
    let wrong = run_by_hand(Some("not-the-e2e-value"));
    for output in [&missing, &wrong] {
        assert_eq!(output.status.code(), Some(1));
        assert!(output.stdout.is_empty(), "no handshake");
    }
    let missing = String::from_utf8_lossy(&missing.stderr);
    let wrong = String::from_utf8_lossy(&wrong.stderr);
    assert_ne!(missing, wrong);

    assert!(
        missing.contains("started without the environment variable TETHER_TEST_PLUGIN"),
        "{missing}"
    );
    assert!(missing.contains("Run the host application"), "{missing}");

    assert!(
        wrong.contains("TETHER_TEST_PLUGIN"),
        "names the key: {wrong}"
    );
    assert!(
        wrong.contains("to a value other than the one this plugin was"),
        "says the value differs: {wrong}"
    );
    assert!(
        wrong.contains("disagree on the handshake configuration"),
        "{wrong}"
    );
    assert!(
        !wrong.contains("run by hand"),
        "a wrong value is not someone running it by hand: {wrong}"
    );
    let handshake = HANDSHAKE;
    assert!(
        !wrong.contains(handshake.magic_cookie_value.as_ref())
            && !wrong.contains("not-the-e2e-value"),
        "neither value is printed: {wrong}"
    );
}

#[tokio::test]
async fn a_host_with_another_cookie_gets_a_start_error_naming_the_cookie_it_set() {
    // Another value: the plugin says the configurations disagree.
    let err = test_plugin("wrong-cookie-value")
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "another-value"))
        .start()
        .await
        .expect_err("the plugin refuses another cookie value");
    match &err {
        Error::ExitedBeforeHandshake {
            status,
            cookie_key,
            stderr_tail,
            ..
        } => {
            assert_eq!(status.code(), Some(1));
            assert_eq!(cookie_key, "TETHER_TEST_PLUGIN");
            assert!(
                stderr_tail.contains("disagree on the handshake configuration"),
                "{stderr_tail}"
            );
        }
        other => panic!("expected ExitedBeforeHandshake, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("the host set the magic cookie TETHER_TEST_PLUGIN"),
        "{err}"
    );

    // Another key: the plugin misses its own; the host names the one it set.
    let err = test_plugin("wrong-cookie-key")
        .handshake(HandshakeConfig::new("SOME_OTHER_PLUGIN", "e2e"))
        .start()
        .await
        .expect_err("the plugin misses its cookie");
    assert!(
        matches!(&err, Error::ExitedBeforeHandshake { cookie_key, .. } if cookie_key == "SOME_OTHER_PLUGIN"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("the host set the magic cookie SOME_OTHER_PLUGIN"),
        "{text}"
    );
    assert!(
        text.contains("started without the environment variable TETHER_TEST_PLUGIN"),
        "the plugin's own words, from its stderr: {text}"
    );
}
