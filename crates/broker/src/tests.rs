//! Both sides of the broker in one process, over real Unix sockets and a real tonic server.

#![allow(
    clippy::disallowed_types,
    reason = "tests: a plain socket plays the plugin's side"
)]

use std::time::Duration;

use tether_protocol::plugin::ConnInfo;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use tether_transport as unix;

/// A "plugin" serving the broker service on a socket, and a "host" attached to it.
struct Pair {
    host: Broker,
    plugin: Broker,
    host_dir: tempfile::TempDir,
    _plugin_dir: tempfile::TempDir,
}

fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

/// Starts the pair; `host_config` and `plugin_config` adjust the default configurations.
async fn start(
    host_config: impl FnOnce(BrokerConfig) -> BrokerConfig,
    plugin_config: impl FnOnce(BrokerConfig) -> BrokerConfig,
    plugin_shares_dir: bool,
) -> Pair {
    let (host_dir, plugin_dir) = dirs();
    let plugin_sockets = if plugin_shares_dir {
        host_dir.path()
    } else {
        plugin_dir.path()
    };
    let plugin = Broker::new(plugin_config(BrokerConfig::new(
        "host",
        plugin_sockets,
        Peer::SameUser,
    )));
    let main_socket = host_dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&main_socket).unwrap();
    let service = plugin.grpc_service();
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let channel = unix::connect(&main_socket, Peer::Process(std::process::id()))
        .await
        .unwrap();
    let host = Broker::new(host_config(
        BrokerConfig::new(
            "test-plugin",
            host_dir.path(),
            Peer::Process(std::process::id()),
        )
        .confine_dialed_addresses(true),
    ));
    host.start_stream(channel, 4 << 20);
    Pair {
        host,
        plugin,
        host_dir,
        _plugin_dir: plugin_dir,
    }
}

fn health_routes() -> Routes {
    let (_, service) = tonic_health::server::health_reporter();
    Routes::new(service)
}

async fn healthy(channel: impl Into<tether_transport::Link>) -> bool {
    let channel: tether_transport::Link = channel.into();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok()
}

#[tokio::test]
async fn either_side_serves_and_the_other_dials() {
    let pair = start(|c| c, |c| c, true).await;

    let id = pair.host.next_id();
    let served = pair
        .host
        .accept_and_serve(id, health_routes())
        .await
        .unwrap();
    assert!(served.address().starts_with(pair.host_dir.path()));
    let channel = pair.plugin.dial(id).await.unwrap();
    assert!(healthy(channel.clone()).await);
    assert!(healthy(channel).await);
    assert_eq!(served.connections().accepted(), 1, "one connection, reused");

    let id = pair.plugin.next_id();
    let _served = pair
        .plugin
        .accept_and_serve(id, health_routes())
        .await
        .unwrap();
    let channel = pair.host.dial(id).await.unwrap();
    assert!(healthy(channel).await);
}

#[tokio::test]
async fn a_side_that_dials_with_frames_is_served_frames_on_the_same_socket() {
    let pair = start(|c| c.frames(true), |c| c.frames(true), true).await;
    let id = pair.host.next_id();
    let served = pair
        .host
        .accept_and_serve(id, health_routes())
        .await
        .unwrap();
    let framed = pair.plugin.dial(id).await.unwrap();
    assert!(framed.is_framed(), "{framed:?}");
    assert!(healthy(framed.clone()).await);
    assert!(healthy(framed).await);
    // A peer that speaks HTTP/2 is served on the same socket.
    let http2 = tether_transport::connect(served.address(), Peer::Process(std::process::id()))
        .await
        .unwrap();
    assert!(healthy(http2).await);
    assert_eq!(served.connections().accepted(), 2, "one framed, one HTTP/2");
}

#[tokio::test]
async fn dialing_an_id_never_offered_times_out_naming_it() {
    let pair = start(|c| c.dial_timeout(Duration::from_millis(200)), |c| c, true).await;
    let err = pair.host.dial(4711).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::DialTimeout { id: 4711, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("id 4711") && message.contains("test-plugin"),
        "{message}"
    );
}

#[tokio::test]
async fn unclaimed_connection_infos_expire() {
    let pair = start(
        |c| c,
        |c| {
            c.unclaimed_ttl(Duration::from_millis(50))
                .dial_timeout(Duration::from_millis(300))
        },
        true,
    )
    .await;
    let id = pair.host.next_id();
    let fresh = pair
        .host
        .accept_and_serve(id, health_routes())
        .await
        .unwrap();
    let stale_id = pair.host.next_id();
    let _stale = pair
        .host
        .accept_and_serve(stale_id, health_routes())
        .await
        .unwrap();
    // The fresh one is claimed at once; the stale one waits past its time to live.
    assert!(healthy(pair.plugin.dial(id).await.unwrap()).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let err = pair.plugin.dial(stale_id).await.unwrap_err();
    assert!(matches!(err, BrokerError::DialTimeout { .. }), "{err:?}");
    drop(fresh);
}

#[tokio::test]
async fn the_host_dials_only_inside_the_private_socket_dir() {
    // The plugin's sockets live elsewhere than the host's private directory.
    let pair = start(|c| c, |c| c, false).await;
    let id = pair.plugin.next_id();
    let _served = pair
        .plugin
        .accept_and_serve(id, health_routes())
        .await
        .unwrap();
    let err = pair.host.dial(id).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::AddressOutsideSocketDir { id: got, .. } if got == id),
        "{err:?}"
    );
}

#[tokio::test]
async fn offers_on_other_networks_are_refused() {
    let pair = start(|c| c, |c| c, true).await;
    pair.host.receive(ConnInfo {
        service_id: 9,
        network: "tcp".into(),
        address: "127.0.0.1:1".into(),
        knock: None,
    });
    let err = pair.host.dial(9).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::UnsupportedNetwork { id: 9, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_second_dial_of_the_same_id_is_refused_while_the_first_waits() {
    let pair = start(|c| c.dial_timeout(Duration::from_secs(2)), |c| c, true).await;
    let host = pair.host.clone();
    let first = tokio::spawn(async move { host.dial(5).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = pair.host.dial(5).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::DialInProgress { id: 5, .. }),
        "{err:?}"
    );
    pair.host.close();
    let first = first.await.unwrap().unwrap_err();
    assert!(matches!(first, BrokerError::Closed { .. }), "{first:?}");
}

#[tokio::test]
async fn closing_one_side_closes_the_other_and_stops_served_endpoints() {
    let pair = start(|c| c, |c| c.dial_timeout(Duration::from_secs(30)), true).await;
    let id = pair.plugin.next_id();
    let served = pair
        .plugin
        .accept_and_serve(id, health_routes())
        .await
        .unwrap();
    let address = served.address().to_owned();
    // The stream is open once an offer has crossed it.
    assert!(healthy(pair.host.dial(id).await.unwrap()).await);
    let plugin = pair.plugin.clone();
    let waiting = tokio::spawn(async move { plugin.dial(999).await });

    pair.host.close();
    tokio::time::timeout(Duration::from_secs(10), pair.plugin.closed())
        .await
        .expect("the plugin's broker closes when the host's stream ends");
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, BrokerError::Closed { .. }), "{err:?}");
    let err = pair.plugin.accept(pair.plugin.next_id()).await.unwrap_err();
    assert!(matches!(err, BrokerError::Closed { .. }), "{err:?}");
    served.stop().await;
    assert!(!address.exists(), "the served socket is removed");
}

/// A broker on no stream, whose sockets live in `/run/tether-x`.
fn offline(confine: bool) -> Broker {
    Broker::new(
        BrokerConfig::new("p", "/run/tether-x", Peer::SameUser).confine_dialed_addresses(confine),
    )
}

fn info(service_id: u32, network: &str, address: &str) -> ConnInfo {
    ConnInfo {
        service_id,
        network: network.into(),
        address: address.into(),
        knock: None,
    }
}

#[test]
fn a_flood_of_offers_keeps_at_most_max_unclaimed() {
    use crate::broker::MAX_UNCLAIMED;

    let broker = offline(true);
    let extra = 10;
    for id in 0..MAX_UNCLAIMED + extra {
        let id = u32::try_from(id).unwrap();
        broker.receive(info(id, "unix", &format!("/run/tether-x/{id}")));
    }
    assert_eq!(broker.unclaimed(), MAX_UNCLAIMED);
    // The first ones are kept; the overflow is dropped.
    assert!(broker.take_arrived(0).is_some());
    assert!(
        broker
            .take_arrived(u32::try_from(MAX_UNCLAIMED).unwrap())
            .is_none()
    );
}

#[test]
fn an_offer_goes_to_the_dial_waiting_for_it_and_a_knock_to_nobody() {
    use tether_protocol::plugin::conn_info::Knock;

    let broker = offline(true);
    let mut waiting = broker.wait_for(3);
    let mut knock = info(3, "unix", "/run/tether-x/k.sock");
    knock.knock = Some(Knock {
        knock: true,
        ack: false,
        error: String::new(),
    });
    broker.receive(knock);
    assert!(waiting.try_recv().is_err());
    assert_eq!(broker.unclaimed(), 0);
    let offer = info(3, "unix", "/run/tether-x/s.sock");
    broker.receive(offer.clone());
    assert_eq!(waiting.try_recv().ok(), Some(offer));
    assert_eq!(broker.unclaimed(), 0);
}

mod properties {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;
    use tether_protocol::plugin::conn_info::Knock;

    use super::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._ -]{1,20}".prop_filter("a file name", |n| n != "." && n != "..")
    }

    proptest! {
        #[test]
        fn a_socket_directly_in_the_dir_is_dialed_as_offered(name in name(), id in any::<u32>()) {
            let address = format!("/run/tether-x/{name}");
            for confine in [true, false] {
                let path = offline(confine).check_offer(id, info(id, "unix", &address));
                prop_assert_eq!(path.ok(), Some(PathBuf::from(&address)));
            }
        }

        #[test]
        fn other_networks_are_refused_naming_the_offer(
            network in "[a-z0-9]{0,6}",
            address in any::<String>(),
            id in any::<u32>(),
        ) {
            prop_assume!(network != "unix");
            for confine in [true, false] {
                let err = offline(confine)
                    .check_offer(id, info(id, &network, &address))
                    .unwrap_err();
                let BrokerError::UnsupportedNetwork { id: got, network: n, address: a, .. } = err
                else {
                    panic!("expected an unsupported network, got {err:?}");
                };
                prop_assert_eq!((got, n.as_str(), a.as_str()), (id, network.as_str(), address.as_str()));
            }
        }

        #[test]
        fn a_confined_broker_refuses_every_socket_not_directly_in_its_dir(
            name in name(),
            shape in 0..8usize,
            id in any::<u32>(),
        ) {
            let address = [
                format!("/run/{name}"),
                format!("/run/tether-x/../{name}"),
                format!("/run/tether-x/./{name}"),
                format!("/run/tether-x//{name}"),
                format!("/run/tether-x/{name}/"),
                format!("/run/tether-x/sub/{name}"),
                format!("run/tether-x/{name}"),
                format!("/run/tether-x-other/{name}"),
            ][shape]
                .clone();
            let err = offline(true).check_offer(id, info(id, "unix", &address)).unwrap_err();
            prop_assert!(
                matches!(&err, BrokerError::AddressOutsideSocketDir { id: got, address: a, .. }
                    if *got == id && *a == address),
                "{:?}", err
            );
            // Unconfined (a plugin dialing its host), the address is taken as offered.
            let path = offline(false).check_offer(id, info(id, "unix", &address));
            prop_assert_eq!(path.ok(), Some(PathBuf::from(&address)));
        }

        #[test]
        fn any_offer_is_checked_without_panicking(
            network in prop_oneof![Just("unix".to_owned()), any::<String>()],
            address in prop_oneof!["/run/tether-x/[^/]{0,8}", "[/.a]{0,12}", any::<String>()],
        ) {
            if let Ok(path) = offline(true).check_offer(1, info(1, &network, &address)) {
                prop_assert_eq!(path.parent(), Some(Path::new("/run/tether-x")));
                prop_assert_eq!(path.as_os_str(), address.as_str());
            }
        }

        #[test]
        fn received_offers_wait_per_id_and_knocks_are_never_kept(
            offers in proptest::collection::vec((0..6u32, any::<bool>(), name()), 0..24),
            waiting in proptest::collection::btree_set(0..6u32, 0..3),
        ) {
            let broker = offline(true);
            let mut waiters: Vec<_> = waiting.iter().map(|id| (*id, broker.wait_for(*id))).collect();
            let mut expected_waiters = BTreeMap::new();
            let mut expected_kept = BTreeMap::new();
            for (id, knock, name) in &offers {
                let mut offer = info(*id, "unix", &format!("/run/tether-x/{name}"));
                if *knock {
                    offer.knock = Some(Knock { knock: true, ack: false, error: String::new() });
                } else if waiting.contains(id) && !expected_waiters.contains_key(id) {
                    // The first offer for an id goes to its waiting dial...
                    expected_waiters.insert(*id, offer.clone());
                } else {
                    // ...later ones replace each other until dialed.
                    expected_kept.insert(*id, offer.clone());
                }
                broker.receive(offer);
            }
            for (id, waiter) in &mut waiters {
                prop_assert_eq!(waiter.try_recv().ok(), expected_waiters.get(id).cloned());
            }
            prop_assert_eq!(broker.unclaimed(), expected_kept.len());
            for (id, offer) in expected_kept {
                prop_assert_eq!(broker.take_arrived(id), Some(offer));
            }
        }
    }
}
