//! The host's calls to a plugin on a lane (`PluginBuilder::lane`): shared memory instead of
//! the socket, the same calls, and a plugin that abuses it loses it.

use std::time::Duration;

use futures_util::StreamExt;
use tether_host::{StdioSink, Stop};
use tether_plugin_sdk::protocol::lane::OpenRequest;
use tether_plugin_sdk::protocol::lane::lanes_client::LanesClient;
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{EchoRequest, HostOpRequest, PrintRequest, TickRequest};
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn the_hosts_calls_go_on_a_lane_when_asked_with_their_deadlines_streams_and_stdio() {
    let stdio = SharedBuffer::default();
    let plugin = test_plugin("laned")
        .lane(true)
        .stdio(StdioSink::Writer(Box::new(stdio.clone())))
        .start()
        .await
        .expect("the test plugin starts");
    assert!(plugin.on_lane(), "a tether plugin takes the lane");
    assert!(plugin.framed(), "a lane carries frames");
    plugin.health().await.expect("healthy");

    // Metadata and the default deadline reach the plugin as on the socket.
    let mut testing = TestingClient::new(plugin.channel());
    let deadline = testing
        .echo(EchoRequest {
            message: "grpc-timeout".into(),
        })
        .await
        .expect("echo")
        .into_inner()
        .message;
    assert!(!deadline.is_empty(), "the call's deadline travels with it");
    // A stream, then dropped half way: the plugin goes on answering.
    let mut ticks = testing
        .ticks(TickRequest { every_ms: 5 })
        .await
        .expect("ticks")
        .into_inner();
    for expected in 0..3 {
        let tick = ticks.next().await.expect("a tick").expect("a tick");
        assert_eq!(tick.n, expected);
    }
    drop(ticks);
    let echoed = testing
        .echo(EchoRequest {
            message: "after the stream".into(),
        })
        .await
        .expect("echo")
        .into_inner()
        .message;
    assert_eq!(echoed, "after the stream");
    // The stdio stream rides the lane too.
    testing
        .print(PrintRequest {
            stdout: "printed on a laned plugin\n".into(),
            stderr: String::new(),
            repeat: 0,
        })
        .await
        .expect("print");
    assert!(
        eventually(PATIENCE, || stdio
            .text()
            .contains("printed on a laned plugin"))
        .await,
        "stdio did not arrive: {:?}",
        stdio.text()
    );

    // A plugin takes one lane in its life: another Open is refused, and the first goes on.
    let again = LanesClient::new(plugin.channel())
        .open(OpenRequest {
            memory: 1,
            data_bell: 2,
            room_bell: 3,
        })
        .await
        .expect_err("a second lane is refused");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    plugin.health().await.expect("the first lane still serves");

    // Without asking, calls stay on the socket; an Open naming descriptors the host never
    // sent fails clearly (after the plugin waited for them), and the plugin goes on.
    let plain = test_plugin("unlaned").start().await.expect("start");
    assert!(!plain.on_lane());
    let bogus = LanesClient::new(plain.channel())
        .open(OpenRequest {
            memory: 1 << 40,
            data_bell: (1 << 40) + 1,
            room_bell: (1 << 40) + 2,
        })
        .await
        .expect_err("no such descriptors");
    assert_eq!(bogus.code(), Code::InvalidArgument, "{bogus:?}");
    assert!(
        bogus.message().contains("could not take the lane"),
        "{bogus:?}"
    );
    plain.health().await.expect("still serving");
    plain.shutdown().await.expect("a graceful stop");

    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(
        exit.stop,
        Stop::Graceful,
        "the lane carries the shutdown too"
    );
}

#[tokio::test]
async fn a_plugin_that_forges_its_hosts_lane_loses_it_and_the_host_goes_on() {
    // The forger may read /proc, to find the lane among its mappings (the SDK keeps no
    // descriptor of it); its sandbox stands otherwise.
    let plugin = test_plugin("lane-forger")
        .lane(true)
        .sandbox(sandbox().allow_read("/proc"))
        .start()
        .await
        .expect("start");
    assert!(plugin.on_lane());
    let mut testing = TestingClient::new(plugin.channel());
    let forged = testing
        .host_op(HostOpRequest {
            op: "forge_host_lane".into(),
            ..HostOpRequest::default()
        })
        .await
        .expect("the answer comes before the host writes again")
        .into_inner();
    assert_eq!(forged.outcome, "ok", "{forged:?}");
    assert!(forged.names[0].starts_with("forged at"), "{forged:?}");

    // The plugin now claims to have read more than the host wrote: the host will not write
    // into a ring it cannot trust. The call fails, says why, and does not hang.
    let call = testing.echo(EchoRequest {
        message: "after forging".into(),
    });
    let failed = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("a call on a broken lane fails, it does not hang")
        .expect_err("a call on a forged lane fails");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().contains("count of bytes read"),
        "the error says what the plugin did: {failed:?}"
    );
    // For good: later calls fail at once.
    let again = tokio::time::timeout(PATIENCE, plugin.health())
        .await
        .expect("no hang");
    assert!(again.is_err(), "{again:?}");

    // The host goes on: another plugin on a lane of its own answers.
    let bystander = test_plugin("lane-bystander")
        .lane(true)
        .start()
        .await
        .expect("start");
    assert!(bystander.on_lane());
    bystander.health().await.expect("healthy");
    bystander.shutdown().await.expect("a graceful stop");
    // The forger cannot be asked to stop on its lane: it is stopped by signal.
    let exit = tokio::time::timeout(PATIENCE + Duration::from_secs(30), plugin.shutdown())
        .await
        .expect("stopping a plugin whose lane broke does not hang")
        .expect("shutdown");
    assert_ne!(exit.stop, Stop::Graceful, "{exit:?}");
}
