//! Write a tether plugin: a process that a host starts, that speaks go-plugin's protocol,
//! and that serves your gRPC services.
//!
//! Most plugins depend on the `tether` facade instead, with its `plugin` feature: it
//! re-exports this crate as `tether::plugin`.
//!
//! A plugin's `main` builds a [`Plugin`] from its handshake configuration and the tonic
//! services it serves for each app protocol version, then calls [`Plugin::run`]:
//!
//! ```no_run
//! use tether_plugin_sdk::{HandshakeConfig, Plugin, Routes};
//!
//! /// What the host and the plugin agree on before anything else.
//! const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("GREETER_PLUGIN", "greeter-v1");
//!
//! /// The plugin's services for app protocol version 1: the servers tonic generated from
//! /// your `.proto`, e.g. `Routes::new(GreeterServer::new(Greeter))`.
//! fn services() -> Routes {
//!     Routes::default()
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Plugin::new(HANDSHAKE).version(1, services()).run()
//! }
//! ```
//!
//! `examples/guestbook` in tether's repository is a whole plugin, with its own `.proto`.
//!
//! What `run` does for you, in order:
//! - checks the magic cookie; run by hand, the binary explains on stderr that it is a
//!   plugin and exits with status 1 (started by a host whose cookie value differs, it says
//!   that host and plugin disagree on the handshake configuration, and exits with 1);
//! - picks the highest app protocol version both the host (`PLUGIN_PROTOCOL_VERSIONS`) and
//!   the plugin serve;
//! - listens on a Unix socket in `PLUGIN_UNIX_SOCKET_DIR` (else a private temporary
//!   directory; its sockets given to `PLUGIN_UNIX_SOCKET_GROUP` when the host names one) and
//!   prints the handshake line on the real stdout;
//! - answers what the host asks for as go-plugin does: AutoMTLS (`PLUGIN_CLIENT_CERT`: its
//!   own certificate in the handshake, TLS on every connection both ways) and multiplexing
//!   (`PLUGIN_MULTIPLEX_GRPC`: yamux on the host's one connection, brokered connections as
//!   its streams);
//! - from then on sends whatever the process writes on stdout and stderr to the host over
//!   go-plugin's stdio stream, so a stray `println!` neither breaks the protocol nor blocks;
//! - writes `tracing` events as go-plugin's JSON log lines on the real stderr, so the host
//!   shows them at their level;
//! - serves health (`"plugin"` = SERVING), the controller's `Shutdown`, stdio and the broker
//!   stream next to your services;
//! - fails a call whose handler panics with `INTERNAL`, its message saying
//!   `plugin handler panicked at <file:line:column>: <panic message>`, logs that at error
//!   level (the host shows it as the plugin's log line), and goes on serving; a panic while
//!   a response stream is produced ends that stream with the same status. A call to a
//!   service or method the plugin does not serve fails with `UNIMPLEMENTED` naming what
//!   was asked and what the plugin serves. (With `panic = "abort"` a panic ends the
//!   process instead, and the host reports the exit.)
//! - ignores SIGINT (the host owns Ctrl-C), stops gracefully on SIGTERM or `Shutdown`, and
//!   removes its socket on every exit path it controls;
//! - stops the same way, with a warning in its log, when the process that started it dies,
//!   whatever host that was (go-plugin's kills no orphan): it watches its parent through a
//!   pidfd, or polls `getppid()` where there is none.
//!
//! A plugin that keeps state writes it in the directory the host gave it with
//! `PluginBuilder::data_dir`: its working directory, named in `TETHER_DATA_DIR`
//! ([`protocol::env::DATA_DIR`]). Under tether's sandbox it can write nowhere else.
//!
//! # Host services
//!
//! A plugin that calls back into its host opts in with one call,
//! [`Plugin::with_host_services`] (the host's side is one line too:
//! `tether_hostconn::establish_host_services`). It gets a [`Host`], a cheap, cloneable
//! handle on the one brokered connection the host sets up, dialed once and reused by
//! every call. From it come the client of tether's ready-made host services
//! ([`Host::files`]) and a client of any other service the host serves ([`Host::client`],
//! given a generated client's `new`), all on that connection. In a handler,
//! [`Host::for_call`] gives the call's view, whose clients pass the caller's request id
//! and deadline on, so the host's audit records carry the id and the plugin's calls stop
//! when the host's caller would have given up:
//!
//! ```no_run
//! use tether_plugin_sdk::protocol::hostserve::GetEnvRequest;
//! use tether_plugin_sdk::protocol::hostserve::files_client::FilesClient;
//! use tether_plugin_sdk::tonic::{Request, Response, Status};
//! use tether_plugin_sdk::{HandshakeConfig, Host, Plugin, Routes};
//!
//! const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("LISTER_PLUGIN", "lister-v1");
//!
//! struct Lister {
//!     host: Host,
//! }
//!
//! impl Lister {
//!     /// A method of the plugin's service (in a real plugin, of the trait tonic generated
//!     /// from its `.proto`): lists the directory the host asked about.
//!     async fn list(&self, request: Request<String>) -> Result<Response<String>, Status> {
//!         let host = self.host.for_call(&request);
//!         // Tether's file client, and a generated client (here of tether's own host
//!         // services; any service the host serves works the same), on one connection.
//!         let entries = host.files()?.read_dir(request.get_ref()).await?;
//!         let user = host
//!             .client(FilesClient::new)?
//!             .get_env(GetEnvRequest { name: "USER".to_owned() })
//!             .await?;
//!         let report = format!("{} entries, listed for {}", entries.len(), user.get_ref().value);
//!         Ok(Response::new(report))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
//!     let lister = Lister { host };
//!     // Served as `Routes::new(ListerServer::new(lister))`, with the generated server.
//!     # drop(lister);
//!     plugin.version(1, Routes::default()).run()
//! }
//! ```
//!
//! Before the host connects, or after it disconnects, `files()` and `client()` fail with
//! [`HostServicesError`] (`FAILED_PRECONDITION` as a [`tonic::Status`]);
//! [`Host::connected`] waits for the connection. [`Host::with_context`] gives the view for
//! a [`CallContext`] of your own. A plugin that does not opt in has no host-service code
//! and serves no host-service contract. For other brokered services in either direction,
//! see [`Plugin::broker`].
//!
//! What it does not do: start processes, or talk to anything but its host.

mod builtin;
mod calls;
mod descriptors;
mod error;
mod files;
mod host;
mod lanes;
mod log;
mod parent;
mod serve;
mod stdio;

pub use descriptors::descriptor_channel;
pub use error::ServeError;
pub use files::{DEFAULT_HOST_CALL_TIMEOUT, FileChunks, HostCallError, HostFiles};
pub use host::{CallHost, Host, HostChannel, HostServicesError};
pub use log::JsonLogLayer;
pub use serve::{NoHost, Plugin, WithHost};
pub use tether_broker::{Broker, BrokerError};
pub use tether_protocol::{CallContext, HandshakeConfig};
pub use tether_transport::{DescriptorError, DescriptorReceiver};
pub use tonic::service::Routes;

/// The protocol crate, re-exported so plugins need only this one dependency for it.
pub use tether_protocol as protocol;
/// The tonic version this SDK serves with.
pub use tonic;
