//! Write a tether plugin: a process that a host starts, that speaks go-plugin's protocol,
//! and that serves your gRPC services.
//!
//! A plugin's `main` builds a [`Plugin`] from its handshake configuration and the tonic
//! services it serves for each app protocol version, then calls [`Plugin::run`]:
//!
//! ```no_run
//! use tether_plugin_sdk::protocol::filelister::file_lister_server::{FileLister, FileListerServer};
//! use tether_plugin_sdk::protocol::filelister::{HANDSHAKE, ListFilesRequest, ListFilesResponse};
//! use tether_plugin_sdk::tonic::{self, Request, Response, Status};
//! use tether_plugin_sdk::{Plugin, Routes};
//!
//! struct Hello;
//!
//! #[tonic::async_trait]
//! impl FileLister for Hello {
//!     async fn list_files(
//!         &self,
//!         request: Request<ListFilesRequest>,
//!     ) -> Result<Response<ListFilesResponse>, Status> {
//!         let report = format!("hello from a plugin, asked about {}", request.into_inner().dir);
//!         Ok(Response::new(ListFilesResponse { report, ..Default::default() }))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Plugin::new(HANDSHAKE)
//!         .version(1, Routes::new(FileListerServer::new(Hello)))
//!         .run()
//! }
//! ```
//!
//! What `run` does for you, in order:
//! - checks the magic cookie; run by hand, the binary explains on stderr that it is a
//!   plugin and exits with status 1;
//! - picks the highest app protocol version both the host (`PLUGIN_PROTOCOL_VERSIONS`) and
//!   the plugin serve;
//! - listens on a Unix socket in `PLUGIN_UNIX_SOCKET_DIR` (else a private temporary
//!   directory) and prints the handshake line on the real stdout;
//! - from then on sends whatever the process writes on stdout and stderr to the host over
//!   go-plugin's stdio stream, so a stray `println!` neither breaks the protocol nor blocks;
//! - writes `tracing` events as go-plugin's JSON log lines on the real stderr, so the host
//!   shows them at their level;
//! - serves health (`"plugin"` = SERVING), the controller's `Shutdown`, stdio and the broker
//!   stream next to your services;
//! - ignores SIGINT (the host owns Ctrl-C), stops gracefully on SIGTERM or `Shutdown`, and
//!   removes its socket on every exit path it controls.
//!
//! # Host services
//!
//! A plugin that calls back into its host opts in with one call, and gets a cheap,
//! cloneable [`HostServices`] handle that hands out a typed client once the host has
//! connected (the host's side is one line too: `tether_hostconn::establish_host_services`):
//!
//! ```no_run
//! use tether_plugin_sdk::protocol::testing::WhoAmIRequest;
//! use tether_plugin_sdk::protocol::testing::host_testing_client::HostTestingClient;
//! use tether_plugin_sdk::tonic::{Status, transport::Channel};
//! use tether_plugin_sdk::{HandshakeConfig, HostServices, Plugin};
//!
//! # const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");
//! let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services(HostTestingClient::new);
//!
//! // In any of the plugin's services, holding a clone of `host`:
//! async fn ask(host: &HostServices<HostTestingClient<Channel>>) -> Result<String, Status> {
//!     // Before the host connects, or after it disconnects, `client()` says so.
//!     let reply = host.client()?.who_am_i(WhoAmIRequest::default()).await?;
//!     Ok(reply.into_inner().plugin)
//! }
//! ```
//!
//! The client rides one brokered connection, dialed once when the host establishes the
//! services and reused by every call. A plugin that does not call
//! [`Plugin::with_host_services`] has no host-service code and serves no host-service
//! contract. For other brokered services in either direction, see [`Plugin::broker`].
//!
//! # Passing the caller's context on
//!
//! A host may send a request id and a deadline with its call. [`CallContext::of`] reads
//! them from the request being served, and [`HostFiles::with_context`] (or
//! [`CallContext::request`] for other clients) puts them on the plugin's calls back to the
//! host, so the host's audit records carry the id, and the plugin's calls stop when the
//! host's caller would have given up:
//!
//! ```no_run
//! # use tether_plugin_sdk::{CallContext, HostFiles, HostCallError};
//! # async fn serve(files: HostFiles, request: tonic::Request<()>) -> Result<(), HostCallError> {
//! let files = files.with_context(&CallContext::of(&request));
//! let entries = files.read_dir("docs").await?;
//! # drop(entries); Ok(()) }
//! ```
//!
//! What it does not do: start processes, or talk to anything but its host.

mod builtin;
mod error;
mod files;
mod host;
mod log;
mod serve;
mod stdio;

pub use error::ServeError;
pub use files::{DEFAULT_HOST_CALL_TIMEOUT, FileChunks, HostCallError, HostFiles};
pub use host::{HostServices, HostServicesError};
pub use log::JsonLogLayer;
pub use serve::Plugin;
pub use tether_broker::{Broker, BrokerError};
pub use tether_protocol::{CallContext, HandshakeConfig};
pub use tonic::service::Routes;

/// The protocol crate, re-exported so plugins need only this one dependency for it.
pub use tether_protocol as protocol;
/// The tonic version this SDK serves with.
pub use tonic;
