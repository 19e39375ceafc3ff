//! go-plugin's multiplexing between a tether host and tether plugins: one socket carries
//! the main connection and brokered connections both ways, with and without AutoMTLS.

use tether_host::{Error, PluginClient};
use tether_hostserve::Limits;
use tether_test_contract::testing::HostOpRequest;
use tether_test_contract::testing::testing_client::TestingClient;

use crate::hostserve::Fixture;
use crate::support::{BAD_PLUGIN, is_empty_dir, test_plugin};

async fn host_services_over_one_socket(name: &str, auto_mtls: bool) {
    let fixture = Fixture::new(Limits::default());
    fixture.grant(name, &["read:config/**"]);
    let plugin = test_plugin(name)
        .arg("--host-files")
        .multiplex(true)
        .auto_mtls(auto_mtls)
        .start()
        .await
        .expect("a tether plugin multiplexes");
    let broker = plugin.broker().expect("a spawned plugin has a broker");
    assert!(broker.is_multiplexed());
    assert_eq!(broker.uses_tls(), auto_mtls);
    // The plugin dials the host's services: a knock, and a stream of the main connection.
    let connection = fixture.connect(&plugin).await;
    let mut client = TestingClient::new(plugin.channel());
    for _ in 0..3 {
        let response = client
            .host_op(HostOpRequest {
                op: "read_file".into(),
                path: b"config/a.txt".to_vec(),
                data: Vec::new(),
                size: 0,
            })
            .await
            .expect("the plugin answers on a stream")
            .into_inner();
        assert_eq!(response.outcome, "ok", "{response:?}");
        assert_eq!(response.data, b"config a");
    }
    let records = fixture.audit_records(3).await;
    assert!(
        records.iter().all(|record| record["plugin"] == name),
        "{records:?}"
    );
    // One socket in all: the plugin removed its socket once the host's connection carried
    // everything, and no brokered socket was made.
    let dir = broker.socket_dir().to_owned();
    assert!(is_empty_dir(&dir), "sockets left in {}", dir.display());
    let err = plugin
        .reattach_config()
        .expect_err("no reattach config for this plugin");
    let expected = if auto_mtls {
        "AutoMTLS"
    } else {
        "multiplexing"
    };
    assert!(err.to_string().contains(expected), "{err}");
    drop(connection);
    plugin.shutdown().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_host_services_share_one_multiplexed_socket() {
    host_services_over_one_socket("mux", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_streams_speak_tls_with_auto_mtls() {
    host_services_over_one_socket("mux-mtls", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_flows_over_multiplexed_tls_streams() {
    // Past yamux's 256 KiB stream window many times over, both ways, under TLS.
    const SIZE: u64 = 16 << 20;
    let fixture = Fixture::new(Limits::default());
    fixture.grant("mux-bulk", &["read:output/**", "write:output/**"]);
    let plugin = test_plugin("mux-bulk")
        .arg("--host-files")
        .multiplex(true)
        .auto_mtls(true)
        .start()
        .await
        .expect("a tether plugin multiplexes");
    let connection = fixture.connect(&plugin).await;
    let mut client = TestingClient::new(plugin.channel());
    for op in ["write_zeros", "read_stream"] {
        let response = client
            .host_op(HostOpRequest {
                op: op.into(),
                path: b"output/bulk".to_vec(),
                data: Vec::new(),
                size: SIZE,
            })
            .await
            .expect("the plugin answers")
            .into_inner();
        assert_eq!((op, response.outcome.as_str()), (op, "ok"), "{response:?}");
        assert_eq!(response.size, SIZE, "{op}");
    }
    drop(connection);
    plugin.shutdown().await.expect("a clean stop");
}

#[tokio::test]
async fn a_plugin_that_does_not_multiplex_is_refused_when_the_host_asks() {
    let err = PluginClient::builder("bad-no-mux", BAD_PLUGIN)
        .arg("no-cert")
        .multiplex(true)
        .start()
        .await
        .expect_err("the plugin must not start");
    assert!(matches!(err, Error::Multiplex { .. }), "{err:?}");
    assert!(err.to_string().contains("did not agree"), "{err}");
}
