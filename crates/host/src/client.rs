//! [`PluginClient`]: one plugin process, spawned by this host or attached to, and the gRPC
//! connection to it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::process::Signal;
use tether_broker::Broker;
use tether_protocol::HEALTH_SERVICE;
use tether_protocol::admission::AdmitRequest;
use tether_protocol::admission::admission_client::AdmissionClient;
use tether_protocol::plugin::Empty;
use tether_protocol::plugin::grpc_controller_client::GrpcControllerClient;
use tether_transport::Link;
use tokio::time::{Instant, timeout, timeout_at};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::builder::PluginBuilder;
use crate::channel::PluginChannel;
use crate::error::{Error, ExitReport};
use crate::process::{Attached, Process};
use tether_sandbox::SandboxStatus;
use tether_transport::DescriptorSender;
use tether_transport::activity::Activity;

/// How a plugin process came to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It exited after the controller's `Shutdown`, within the graceful timeout.
    Graceful,
    /// It exited after SIGTERM to its process group (to its process alone, when attached).
    Terminated,
    /// It was killed with SIGKILL.
    Killed,
    /// It had already exited before `shutdown` was called.
    AlreadyExited,
}

/// How a plugin process ended, as far as this host can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Its exit status (`ExitStatusExt::signal` tells a signal death): this host started
    /// the plugin and reaped it.
    Status(ExitStatus),
    /// It ended, but its status is unknown to this host: the client is attached
    /// ([`PluginClient::reattach`]) to a plugin another host started, and only that host,
    /// its parent, learns the status; or watching the process failed (logged).
    Unknown,
}

impl Exit {
    /// The exit status, when known.
    pub fn status(self) -> Option<ExitStatus> {
        match self {
            Exit::Status(status) => Some(status),
            Exit::Unknown => None,
        }
    }

    /// Whether it is known to have exited with status 0.
    pub fn success(self) -> bool {
        self.status().is_some_and(|status| status.success())
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Status(status) => match (status.code(), status.signal()) {
                (Some(code), _) => write!(f, "exited with status {code}"),
                (None, Some(signal)) => write!(f, "was killed by signal {signal}"),
                (None, None) => write!(f, "ended ({status})"),
            },
            Exit::Unknown => f.write_str(
                "ended, with an exit status unknown to this host (it did not start the plugin)",
            ),
        }
    }
}

/// The end of a plugin process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginExit {
    /// How the process ended ([`Exit::Unknown`] for an attached client).
    pub status: Exit,
    /// What ended it.
    pub stop: Stop,
}

/// The deadline of a call to a plugin that has none of its own.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`PluginClient::guard`] waits for the exit of a plugin whose connection broke.
const EXIT_SETTLE: Duration = Duration::from_secs(1);

/// Numbers each started plugin, so two runs of one plugin (or a reused pid) are told apart.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// A plugin process and the gRPC channel to it: one this host started
/// ([`PluginClient::builder`]), or one another host started and this one attached to
/// ([`PluginClient::reattach`]).
///
/// Dropping a started plugin's client kills the plugin's whole process group and removes
/// its socket directory; [`PluginClient::shutdown`] stops it gracefully first. Dropping an
/// attached client leaves the plugin running.
#[derive(Debug)]
pub struct PluginClient {
    name: String,
    version: u32,
    channel: Link,
    max_message_size: usize,
    graceful_timeout: Duration,
    call_timeout: Option<Duration>,
    kill_timeout: Duration,
    controller: GrpcControllerClient<Link>,
    health: HealthClient<Link>,
    instance: u64,
    /// Calls under way, both ways.
    activity: Activity,
    /// The binary's digest, if it was verified at the start.
    verified: Option<crate::Sha256>,
    /// The plugin's socket.
    address: PathBuf,
    owner: Owner,
}

/// Whose process the plugin is, and so what this host knows of it.
#[derive(Debug)]
pub(crate) enum Owner {
    /// This host spawned it: it owns the process group, its pipes, the broker stream and
    /// the sandbox.
    Spawned {
        /// The process and its readers.
        process: Process,
        /// The host's side of the plugin's broker.
        broker: Broker,
        /// What confines the process.
        sandbox: SandboxStatus,
        /// The host's end of the plugin's descriptor channel.
        descriptors: Arc<DescriptorSender>,
        /// Whether the host's calls go over a lane ([`crate::PluginBuilder::lane`]).
        on_lane: bool,
    },
    /// Another host spawned it and owns all of that; this one only calls it, sees its end
    /// and may stop it.
    Attached(Attached),
}

/// What a client is made of (see [`PluginClient::new`]).
pub(crate) struct Parts {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) channel: Link,
    pub(crate) max_message_size: usize,
    pub(crate) graceful_timeout: Duration,
    pub(crate) call_timeout: Option<Duration>,
    pub(crate) kill_timeout: Duration,
    pub(crate) address: PathBuf,
    pub(crate) verified: Option<crate::Sha256>,
    pub(crate) owner: Owner,
}

impl PluginClient {
    /// Describes a plugin to start: its name (used in logs and errors) and its executable.
    pub fn builder(name: impl Into<String>, program: impl Into<PathBuf>) -> PluginBuilder {
        PluginBuilder::new(name.into(), program.into())
    }

    /// A client on a connected channel, numbered as the next instance.
    pub(crate) fn new(parts: Parts) -> PluginClient {
        let limit = parts.max_message_size;
        PluginClient {
            controller: GrpcControllerClient::new(parts.channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            health: HealthClient::new(parts.channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            name: parts.name,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            activity: Activity::new(),
            verified: parts.verified,
            version: parts.version,
            channel: parts.channel,
            max_message_size: limit,
            graceful_timeout: parts.graceful_timeout,
            call_timeout: parts.call_timeout,
            kill_timeout: parts.kill_timeout,
            address: parts.address,
            owner: parts.owner,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A number unique to this start of this plugin within the host process, from 1.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether this client is attached ([`PluginClient::reattach`]) to a plugin another
    /// host started, rather than the host that started it.
    pub fn is_attached(&self) -> bool {
        matches!(self.owner, Owner::Attached(_))
    }

    /// The host's side of the plugin's broker: serve something the plugin dials
    /// ([`Broker::accept_and_serve`]), or dial something the plugin serves
    /// ([`Broker::dial`]). Only the plugin process may connect to what it serves, and dialed
    /// sockets must lie in the plugin's private socket directory and be served by it.
    ///
    /// `None` for an attached client: the plugin's one broker stream belongs to the host
    /// that started it, so brokered connections (and host services) stay with that host.
    pub fn broker(&self) -> Option<&Broker> {
        match &self.owner {
            Owner::Spawned { broker, .. } => Some(broker),
            Owner::Attached(_) => None,
        }
    }

    /// The host's end of the plugin's descriptor channel (see
    /// [`tether_transport::descriptor_pair`]), on which host services hand the plugin the
    /// descriptors of bulk file transfers.
    ///
    /// `None` for an attached client: the channel stays with the host that started it.
    pub fn descriptors(&self) -> Option<&Arc<DescriptorSender>> {
        match &self.owner {
            Owner::Spawned { descriptors, .. } => Some(descriptors),
            Owner::Attached(_) => None,
        }
    }

    /// What confines the plugin process: each sandbox layer and whether it is enforced.
    ///
    /// `None` for an attached client: the host that started the plugin sandboxed it, and
    /// this one cannot tell how.
    pub fn sandbox(&self) -> Option<&SandboxStatus> {
        match &self.owner {
            Owner::Spawned { sandbox, .. } => Some(sandbox),
            Owner::Attached(_) => None,
        }
    }

    /// The plugin process's pid (also its process group id, when this host started it).
    pub fn pid(&self) -> u32 {
        match &self.owner {
            Owner::Spawned { process, .. } => process.pid(),
            Owner::Attached(attached) => attached.pid(),
        }
    }

    /// The plugin's socket.
    pub(crate) fn address(&self) -> &Path {
        &self.address
    }

    /// The negotiated app protocol version.
    pub fn protocol_version(&self) -> u32 {
        self.version
    }

    /// The gRPC channel to the plugin: build your service clients on it. Calls without a
    /// deadline of their own get the default one ([`PluginBuilder::call_timeout`]).
    pub fn channel(&self) -> PluginChannel {
        PluginChannel::new(self.channel.clone(), self.call_timeout, &self.activity)
    }

    /// Whether calls to this plugin travel as tether's frames (a tether plugin that took
    /// the host's offer, [`PluginBuilder::frames`]) rather than HTTP/2 (a Go plugin, an
    /// attached one, or frames turned off or not taken).
    pub fn framed(&self) -> bool {
        self.channel.is_framed()
    }

    /// Whether calls to this plugin travel in shared memory, on a lane the plugin took
    /// ([`PluginBuilder::lane`]), rather than on its socket.
    pub fn on_lane(&self) -> bool {
        matches!(self.owner, Owner::Spawned { on_lane: true, .. })
    }

    /// The SHA-256 of the binary this instance runs, if the host verified it at the start
    /// ([`PluginBuilder::sha256`]); `None` if nothing was pinned, and for an attached client.
    pub fn verified_sha256(&self) -> Option<crate::Sha256> {
        self.verified
    }

    /// The calls under way with this plugin instance: those on [`PluginClient::channel`]
    /// until their responses end (an open stream counts), and its host-service calls
    /// (`tether-hostconn` counts them). A [`Supervisor`](crate::Supervisor) with an idle
    /// timeout stops the plugin once none has been under way for that long; count work of
    /// your own with [`Activity::begin`].
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The message-size limit this client was configured with, for your own clients'
    /// `max_decoding_message_size` and `max_encoding_message_size`.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The private socket directory the host made for this plugin (`None` once removed,
    /// and for an attached client).
    pub fn socket_dir(&self) -> Option<&Path> {
        match &self.owner {
            Owner::Spawned { process, .. } => process.socket_dir(),
            Owner::Attached(_) => None,
        }
    }

    /// The last lines the plugin wrote on stderr (always empty for an attached client: the
    /// plugin's stderr is its starting host's).
    pub fn stderr_tail(&self) -> String {
        match &self.owner {
            Owner::Spawned { process, .. } => process.tail_text(),
            Owner::Attached(_) => String::new(),
        }
    }

    /// How the process ended, if it has ([`Exit::Unknown`] for an attached client).
    pub fn exit_status(&self) -> Option<Exit> {
        match &self.owner {
            Owner::Spawned { process, .. } => process.exit_status().map(Exit::Status),
            Owner::Attached(attached) => attached.has_ended().then_some(Exit::Unknown),
        }
    }

    /// Waits until the process ends; `None` if watching it failed (logged).
    /// [`Exit::Unknown`] for an attached client.
    pub async fn wait(&self) -> Option<Exit> {
        match &self.owner {
            Owner::Spawned { process, .. } => process.wait().await.map(Exit::Status),
            Owner::Attached(attached) => attached.wait().await.then_some(Exit::Unknown),
        }
    }

    /// Sends `signal` to the plugin: its process group, or an attached plugin's process
    /// alone (through a pidfd).
    fn signal(&self, signal: Signal) {
        match &self.owner {
            Owner::Spawned { process, .. } => process.signal(signal),
            Owner::Attached(attached) => attached.signal(signal),
        }
    }

    /// Kills the plugin's whole process group at once (SIGKILL), without asking; the end
    /// is then reported by [`PluginClient::exited`]. For a graceful stop, use
    /// [`PluginClient::shutdown`]. An attached client kills the plugin's process alone.
    pub fn kill(&self) {
        self.signal(Signal::KILL);
    }

    /// Waits until the process ends, and says how: its status or signal and the end of its
    /// stderr. The host learns of the end from a pidfd as it happens; by then the rest of
    /// the plugin's process group has been killed too. An attached client learns only that
    /// it ended ([`Exit::Unknown`], no stderr).
    pub async fn exited(&self) -> ExitReport {
        let status = self.wait().await.unwrap_or(Exit::Unknown);
        if let Owner::Spawned { process, .. } = &self.owner {
            process.stderr_settled().await;
        }
        ExitReport {
            plugin: self.name.clone(),
            status,
            stderr_tail: self.stderr_tail(),
        }
    }

    /// Runs a call to the plugin (any generated client's future) so that, if the plugin
    /// process ends before the call does, the call fails at once with [`Error::Exited`]
    /// (its status or signal and stderr), instead of with a transport error or a hang.
    /// Other failures are [`Error::Call`].
    ///
    /// ```no_run
    /// # async fn demo(plugin: tether_host::PluginClient) -> Result<(), tether_host::Error> {
    /// use tether_protocol::hostconn::DisconnectRequest;
    /// use tether_protocol::hostconn::acceptor_client::AcceptorClient;
    /// let mut client = AcceptorClient::new(plugin.channel());
    /// let reply = plugin.guard(client.disconnect(DisconnectRequest {})).await?;
    /// # drop(reply); Ok(()) }
    /// ```
    pub async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, Error> {
        let result = tokio::select! {
            biased;
            result = call => result,
            report = self.exited() => return Err(Error::Exited(report)),
        };
        match result {
            Ok(value) => Ok(value),
            Err(status) => {
                // A broken connection usually means the process is ending: give its exit a
                // moment to arrive, and report that rather than the transport's words.
                if broken(&status)
                    && let Ok(report) = timeout(EXIT_SETTLE, self.exited()).await
                {
                    return Err(Error::Exited(report));
                }
                Err(Error::Call {
                    plugin: self.name.clone(),
                    status,
                })
            }
        }
    }

    /// Pings the plugin's health service (`"plugin"` must be SERVING).
    pub async fn health(&self) -> Result<(), Error> {
        let response = self
            .health
            .clone()
            .check(HealthCheckRequest {
                service: HEALTH_SERVICE.to_owned(),
            })
            .await
            .map_err(|status| Error::Rpc {
                plugin: self.name.clone(),
                call: "its health check",
                status,
            })?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(Error::NotServing {
                plugin: self.name.clone(),
                status: other.as_str_name().to_owned(),
            }),
        }
    }

    /// Lets process `pid` connect to the plugin's socket too, for example a second host
    /// process about to [`reattach`](Self::reattach) with this plugin's
    /// [`reattach_config`](Self::reattach_config). A tether plugin refuses (and logs)
    /// every other process than the one that started it and those admitted this way.
    /// Plugins built with go-plugin do not serve this (the error says `Unimplemented`).
    pub async fn admit(&self, pid: u32) -> Result<(), Error> {
        AdmissionClient::new(self.channel())
            .admit(AdmitRequest { pid })
            .await
            .map_err(|status| Error::Rpc {
                plugin: self.name.clone(),
                call: "admitting another process",
                status,
            })?;
        Ok(())
    }

    /// Stops the plugin: the controller's `Shutdown`, up to the graceful timeout; then
    /// SIGTERM to its process group, up to the kill timeout; then SIGKILL. Anything left in
    /// its process group is killed and its socket directory removed.
    ///
    /// An attached client signals the plugin's process alone, and reports
    /// [`Exit::Unknown`]: the status is the starting host's to learn.
    pub async fn shutdown(mut self) -> Result<PluginExit, Error> {
        let result = self.stop().await;
        self.signal(Signal::KILL);
        if let Owner::Spawned {
            process, broker, ..
        } = &mut self.owner
        {
            broker.close();
            process.remove_socket_dir(&self.name);
        }
        result
    }

    async fn stop(&mut self) -> Result<PluginExit, Error> {
        if let Some(status) = self.exit_status() {
            return Ok(PluginExit {
                status,
                stop: Stop::AlreadyExited,
            });
        }
        let deadline = Instant::now() + self.graceful_timeout;
        match timeout_at(deadline, self.controller.shutdown(Empty {})).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::debug!(plugin = self.name, %status, "Shutdown failed"),
            Err(_) => tracing::debug!(plugin = self.name, "Shutdown did not answer in time"),
        }
        let steps = [
            (None, deadline, Stop::Graceful),
            (
                Some(Signal::TERM),
                Instant::now() + self.kill_timeout,
                Stop::Terminated,
            ),
            (
                Some(Signal::KILL),
                Instant::now() + Duration::from_secs(10),
                Stop::Killed,
            ),
        ];
        for (signal, deadline, stop) in steps {
            if let Some(signal) = signal {
                tracing::debug!(plugin = self.name, ?signal, "signalling the plugin");
                self.signal(signal);
            }
            let deadline = deadline.max(Instant::now());
            if let Ok(Some(status)) = timeout_at(deadline, self.wait()).await {
                return Ok(PluginExit { status, stop });
            }
        }
        Err(Error::Internal {
            plugin: self.name.clone(),
            reason: format!("pid {} did not exit after SIGKILL", self.pid()),
        })
    }
}

impl Drop for PluginClient {
    fn drop(&mut self) {
        // Waiting dials fail at once, and endpoints served for the plugin stop.
        if let Some(broker) = self.broker() {
            broker.close();
        }
    }
}

/// Whether `status` is what a call gets when the connection to the plugin breaks.
fn broken(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_exit_says_so_instead_of_claiming_a_status() {
        let report = ExitReport {
            plugin: "p".into(),
            status: Exit::Unknown,
            stderr_tail: String::new(),
        };
        assert_eq!(
            report.to_string(),
            "plugin `p` ended, with an exit status unknown to this host (it did not start the \
             plugin)"
        );
        assert_eq!(Exit::Unknown.status(), None);
        assert!(!Exit::Unknown.success());

        let known = ExitReport {
            status: Exit::Status(ExitStatus::from_raw(3 << 8)),
            ..report
        };
        assert_eq!(
            known.to_string(),
            "plugin `p` exited with status 3; it wrote nothing on stderr"
        );
        assert!(Exit::Status(ExitStatus::from_raw(0)).success());
    }
}
