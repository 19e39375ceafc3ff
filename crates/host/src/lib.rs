//! Launch and own plugin processes that speak go-plugin's gRPC protocol: tether plugins and
//! Go plugins built with go-plugin alike.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tether_host::Error> {
//! use std::time::Duration;
//! use tether_host::{HandshakeConfig, PluginClient};
//!
//! let plugin = PluginClient::builder("kv", "./plugins/kv")
//!     .handshake(HandshakeConfig::new("BASIC_PLUGIN", "hello"))
//!     .protocol_versions(&[1])
//!     .graceful_timeout(Duration::from_secs(2))
//!     .start()
//!     .await?;
//! // Build any generated tonic client on `plugin.channel()`.
//! let exit = plugin.shutdown().await?;
//! println!("plugin stopped: {:?}", exit.stop);
//! # Ok(()) }
//! ```
//!
//! What `start` does: creates a private socket directory (mode 0700); spawns the plugin
//! from a long-lived thread in its own process group, with a parent-death signal and a
//! cleared environment (plus the variables you allow); reads the handshake line under the
//! start timeout while watching for an early exit; checks the core version, `grpc`, the app
//! version, that the address lies in the private directory and that the socket belongs to
//! the spawned process (`SO_PEERCRED`); connects; opens the stdio and broker streams; and
//! pings health. The plugin's stderr log lines become `tracing` events at their own level
//! (target `tether::plugin`), its stdio goes to a [`StdioSink`].
//!
//! [`PluginClient::broker`] is the host's side of go-plugin's broker (see `tether-broker`):
//! serve something the plugin dials, or dial something it serves. Host services in one line
//! are `tether-hostconn`'s `establish_host_services`.
//!
//! Every plugin is sandboxed by default ([`Sandbox`], Linux): resource limits, only fds
//! 0-2, Landlock (its own binary and libraries, sockets in its private directory, no TCP,
//! no signals out) and a seccomp filter, applied between fork and exec.
//! [`PluginClient::sandbox`] tells which layers hold on this kernel; `Strict` refuses to
//! start a plugin if any does not. A plugin can write nowhere unless given a private data
//! directory ([`PluginBuilder::data_dir`]).
//!
//! # Metrics
//!
//! Through the `metrics` facade (this crate installs no recorder; the table is in
//! [`metric`] and docs/operating.md): plugin starts and failed starts
//! (`tether_plugin_starts_total`, `tether_plugin_start_failures_total`), supervisor
//! restarts (`tether_supervisor_restarts_total`) and idle stops
//! (`tether_plugin_idle_stops_total`), each labelled `plugin`, and per plugin
//! and sandbox layer whether the layer was enforced at its latest start
//! (`tether_sandbox_layer_enforced`, 1 or 0).
//!
//! [`Supervisor`] restarts a plugin by policy with backoff and health checks, and with an
//! idle timeout stops a plugin nothing is under way with and starts it again on the next
//! call ([`Supervisor::channel`]). A [`Pool`] keeps plugins started ahead of need, for
//! hosts that start one per job: taking one costs a queue pop, not a process start.
//!
//! # Attaching to a running plugin
//!
//! [`PluginClient::reattach`] attaches another host process to a running plugin, from the
//! starting host's [`PluginClient::reattach_config`], once that host has admitted the
//! attaching process ([`PluginClient::admit`]). An attached client calls the plugin,
//! checks its health, sees its end and can stop it; dropping it leaves the plugin
//! running. It does not pretend to know what only the starting host knows: [`PluginClient::sandbox`] and
//! [`PluginClient::broker`] are `None` (so host services are refused, with
//! `tether_hostconn::Error::Attached`), and its end is [`Exit::Unknown`].
//!
//! # Verified binaries
//!
//! [`PluginBuilder::sha256`] pins the binary's SHA-256: the host hashes the open file and
//! executes that same file through its descriptor, so nothing can swap the binary between
//! the check and the exec. [`PluginBuilder::on_lifecycle`] reports each start, refused or
//! failed start and idle stop ([`LifecycleEvent`]), for an audit trail.
//!
//! Not supported: TCP transports.
//!
//! # Modules
//!
//! `builder` ([`PluginBuilder`] and the start sequence), `handshake` (reading and
//! checking the handshake line), `process` (a spawned process: its exit watch, stderr and
//! stdout readers and stdio forwarding; and an attached one), `client` ([`PluginClient`]),
//! `reattach` ([`ReattachConfig`]), `supervisor` ([`Supervisor`]), `pool` ([`Pool`]), `spawn`
//! (starting plugins from one long-lived thread with a vfork-style clone, process groups,
//! reaping). Sockets (the private directory, the
//! address check, connecting with peer credentials) are in the `tether-transport` crate;
//! `transport` is this crate's thin wrapper over it, mapping its errors to [`Error`]. The
//! sandbox is the `tether-sandbox` crate, the broker `tether-broker`.

mod builder;
mod channel;
mod client;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod guard;
mod handshake;
mod lifecycle;
mod lines;
mod logs;
pub mod metric;
mod pool;
mod process;
mod reattach;
mod spawn;
mod stdio;
mod supervisor;
mod transport;
mod verify;

pub use builder::PluginBuilder;
pub use channel::PluginChannel;
pub use client::{DEFAULT_CALL_TIMEOUT, Exit, PluginClient, PluginExit, Stop};
pub use error::{Error, ExitReport};
pub use lifecycle::{LifecycleEvent, LifecycleHook, LifecycleKind};
pub use pool::Pool;
pub use reattach::{GoAddr, GoReattachConfig, ReattachConfig};
pub use stdio::StdioSink;
pub use supervisor::{
    Restart, RestartPolicy, Setup, SetupError, State, SupervisedChannel, Supervisor,
    SupervisorError,
};
pub use tether_broker::{Broker, BrokerError};
pub use tether_protocol::HandshakeConfig;
pub use tether_sandbox::{
    DataDirError, KernelSupport, Layer, LayerStatus, ResourceLimits, Sandbox, SandboxError,
    SandboxMode, SandboxStatus,
};
pub use tether_sandbox::{Syscall, allowed_syscalls, conditional_syscalls, refused_syscalls};
pub use tether_transport::activity::{Activity, Busy};
pub use verify::{BinaryRefusal, DigestError, DigestSource, Sha256};
