//! The one place where tether touches sockets: listening, connecting, and checking who is
//! on the other end with the kernel's peer credentials. The broker, the plugin SDK, the
//! host-services connection and the host all go through it, so another transport (TLS,
//! multiplexing, Windows named pipes) is added here rather than in five crates.
//!
//! Today it speaks Unix-domain sockets:
//! - [`socket_dir`] makes a private directory (mode 0700) for a plugin's sockets;
//! - [`Listener`] binds a socket there and hands out only connections whose peer the
//!   [`Peer`] rule admits (others are closed at once, counted and logged);
//! - [`connect`] opens a gRPC channel whose every connection, reconnections included, is
//!   checked to be served by the expected [`Peer`];
//! - [`address_in_dir`] accepts an address only if it names a socket directly in a given
//!   directory;
//! - [`tls`] is go-plugin's AutoMTLS: throwaway certificates ([`tls::Identity`]) and TLS
//!   that pins the peer's exact certificate, required both ways ([`tls::MutualTls`]), which
//!   [`Listener::tls`] and [`connect_with`] speak on every connection;
//! - [`descriptor_pair`] is the descriptor channel a host gives a plugin it starts, to hand
//!   it open descriptors ([`DescriptorSender`], [`DescriptorReceiver`]): the files and
//!   [`ring`]s of bulk file transfers, and the [`lane`]s of host-service calls in shared
//!   memory;
//! - [`mux`] is go-plugin's multiplexing: yamux on the main connection
//!   ([`connect_multiplexed`], [`mux::Session`]), its streams served by
//!   [`Listener::over_streams`] and dialed by [`channel_over`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tether_transport::{Listener, Peer, connect, socket_dir};
//!
//! let dir = socket_dir("example", &std::env::temp_dir())?;
//! // Admit only processes of this user; a host admits exactly the plugin it spawned.
//! let listener = Listener::bind(dir.path(), "example", Peer::SameUser, Arc::from("example"))?;
//! let path = listener.path().to_owned();
//! // Serve `listener` with tonic's `serve_with_incoming`, then, elsewhere:
//! let channel = connect(&path, Peer::SameUser).await?;
//! # drop(channel); Ok(()) }
//! ```
//!
//! Unix only: on other systems this crate does not compile, with an error that says so.

#![allow(
    clippy::disallowed_types,
    reason = "the one crate allowed to use sockets directly (see clippy.toml)"
)]

#[cfg(not(unix))]
compile_error!(
    "tether-transport supports Unix-domain sockets only (Linux, macOS, the BSDs); \
     Windows named pipes are not implemented yet"
);

#[cfg(unix)]
pub mod activity;
#[cfg(target_os = "linux")]
mod descriptors;
#[cfg(unix)]
mod dir;
pub mod frames;
#[cfg(target_os = "linux")]
pub mod lane;
mod link;
pub mod mux;
#[cfg(target_os = "linux")]
pub mod ring;
#[cfg(target_os = "linux")]
mod shm;
pub mod tls;
#[cfg(unix)]
mod unix;

#[cfg(target_os = "linux")]
pub use descriptors::{DescriptorError, DescriptorReceiver, DescriptorSender, descriptor_pair};
#[cfg(unix)]
pub use dir::{GroupError, resolve_group, share_with_group, socket_dir};
pub use link::{Link, LinkError};
#[cfg(unix)]
pub use unix::{
    Conn, ConnectError, ConnectionCounts, Listener, Peer, PeerCredentials, PeerSet, Refusal,
    RefusalHook, address_in_dir, channel_over, connect, connect_framed, connect_multiplexed,
    connect_with,
};
