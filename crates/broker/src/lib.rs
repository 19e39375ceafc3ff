//! go-plugin's bidirectional gRPC broker, both sides, for tether: classic mode, and
//! go-plugin 1.6's multiplexed mode.
//!
//! Host and plugin each own a [`Broker`]; the two share the one
//! `plugin.GRPCBroker/StartStream` stream the host opens on the plugin's main connection.
//! Either side can serve something the other dials:
//!
//! - [`Broker::next_id`] hands out ids from 1;
//! - [`Broker::accept`] listens on a new Unix socket in the socket directory and sends
//!   `ConnInfo{service_id, "unix", address}` on the stream; [`Broker::accept_and_serve`] also
//!   serves tonic routes there until the returned [`Served`] is dropped;
//! - [`Broker::dial`] waits (5 s by default, like go-plugin) for the other side's
//!   `ConnInfo` with that id and connects to it. Infos that arrive before anyone dials wait
//!   in a buffer keyed by id and expire unclaimed after 5 s.
//!
//! The id travels inside the application's own request, as in go-plugin.
//!
//! Multiplexed ([`Broker::multiplex`], go-plugin 1.6+): the main connection carries yamux,
//! and brokered connections are its streams. `accept` sends nothing and waits for knocks;
//! `dial` sends a knock for the id, waits for its acknowledgement and opens a stream, which
//! the other side hands to that id. One dial at a time, because a go-plugin acceptor hands
//! its next stream to the id knocked last. With AutoMTLS ([`BrokerConfig::tls`],
//! [`Broker::use_tls`]) every brokered connection, either way, is TLS.
//!
//! ```no_run
//! # async fn demo(channel: tonic::transport::Channel, routes: tonic::service::Routes) -> Result<(), tether_broker::BrokerError> {
//! use tether_broker::{Broker, BrokerConfig, Peer};
//!
//! // On the host, for the plugin it spawned as pid 4242 with socket directory `dir`:
//! let broker = Broker::new(BrokerConfig::new("kv", "/tmp/tether-kv-x", Peer::Process(4242))
//!     .confine_dialed_addresses(true));
//! broker.start_stream(channel, 4 * 1024 * 1024);
//! let id = broker.next_id();
//! let served = broker.accept_and_serve(id, routes).await?; // now tell the plugin `id`
//! # Ok(()) }
//! ```
//!
//! Trust: every connection a broker accepts or makes is checked with the kernel's peer
//! credentials ([`Peer`]). On the host the peer is exactly the plugin process it spawned,
//! and dialed sockets must lie in the plugin's private socket directory; a connection from
//! any other process is closed at once and logged (target `tether::broker`) with its pid.
//! In a plugin the peer is any process of the same user. The sockets themselves, and the
//! peer check, are `tether-transport`'s.
//!
//! Brokered channels are [`tonic::transport::Channel`]s: dial once and reuse the channel;
//! it multiplexes calls over one connection and reconnects, with the same check, if needed.

mod broker;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod serve;

pub use broker::{Broker, BrokerConfig, BrokerService, DEFAULT_TIMEOUT};
pub use error::BrokerError;
pub use serve::Served;
pub use tether_transport::{
    ConnectError, ConnectionCounts, Peer, PeerCredentials, Refusal, RefusalHook,
};

#[cfg(test)]
mod tests;
