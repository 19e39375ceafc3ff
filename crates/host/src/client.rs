//! [`PluginClient`]: one running plugin process and the gRPC connection to it.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::process::Signal;
use tether_broker::{Broker, BrokerConfig, Peer};
use tether_protocol::admission::AdmitRequest;
use tether_protocol::admission::admission_client::AdmissionClient;
use tether_protocol::plugin::Empty;
use tether_protocol::plugin::grpc_controller_client::GrpcControllerClient;
use tether_protocol::plugin::grpc_stdio_client::GrpcStdioClient;
use tether_protocol::{
    CORE_PROTOCOL_VERSION, DEFAULT_MAX_MESSAGE_SIZE, HEALTH_SERVICE, Handshake, HandshakeConfig,
    MAX_HANDSHAKE_LINE, Network, Protocol, env, format_versions,
};
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::channel::PluginChannel;
use crate::error::{Error, ExitReport};
use crate::lines::{self, Read, Tail, excerpt};
use crate::logs::{self, LogParser};
use crate::spawn::{self, Group};
use crate::stdio::{self, StdioSink};
use crate::transport;
use tether_sandbox::{self as sandbox, Layer, Sandbox, SandboxMode, SandboxStatus};

/// Longest stderr line kept whole; longer lines are split.
const MAX_LOG_LINE: usize = 64 * 1024;
/// How long to wait for a dead plugin's stderr to close before reporting its tail.
const STDERR_SETTLE: Duration = Duration::from_secs(1);

/// How a plugin process came to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It exited after the controller's `Shutdown`, within the graceful timeout.
    Graceful,
    /// It exited after SIGTERM to its process group.
    Terminated,
    /// It was killed with SIGKILL.
    Killed,
    /// It had already exited before `shutdown` was called.
    AlreadyExited,
}

/// The end of a plugin process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginExit {
    /// The process's exit status (`ExitStatusExt::signal` tells a signal death).
    pub status: ExitStatus,
    /// What ended it.
    pub stop: Stop,
}

/// Configures and starts a plugin process; from [`PluginClient::builder`].
#[derive(Debug)]
pub struct PluginBuilder {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    handshake: HandshakeConfig,
    versions: Vec<u32>,
    env: Vec<(OsString, OsString)>,
    start_timeout: Duration,
    graceful_timeout: Duration,
    call_timeout: Option<Duration>,
    kill_timeout: Duration,
    max_message_size: usize,
    /// In a mutex only so the builder is `Sync` (a sink's writer need only be `Send`), which
    /// keeps `start`'s future `Send`.
    stdio: Mutex<StdioSink>,
    socket_base: Option<PathBuf>,
    broker_timeout: Duration,
    sandbox: Sandbox,
}

impl PluginBuilder {
    /// Appends a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The magic cookie the plugin expects (go-plugin's `HandshakeConfig`).
    pub fn handshake(mut self, handshake: HandshakeConfig) -> Self {
        self.handshake = handshake;
        self
    }

    /// The app protocol versions this host accepts (default `[1]`).
    pub fn protocol_versions(mut self, versions: &[u32]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    /// Sets a variable in the plugin's environment, which otherwise starts empty.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Passes the host's value of `key` to the plugin, if the host has one.
    pub fn inherit_env(self, key: impl Into<OsString>) -> Self {
        let key = key.into();
        match std::env::var_os(&key) {
            Some(value) => self.env(key, value),
            None => self,
        }
    }

    /// How long the plugin has to print its handshake line (default 60 s, go-plugin's).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long `shutdown` waits after the controller's `Shutdown` (default 2 s).
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_timeout = timeout;
        self
    }

    /// How long `shutdown` waits after SIGTERM before SIGKILL (default 2 s).
    pub fn kill_timeout(mut self, timeout: Duration) -> Self {
        self.kill_timeout = timeout;
        self
    }

    /// The largest gRPC message the built-in clients send or accept (default 4 MiB). Use
    /// [`PluginClient::max_message_size`] to give your own clients the same limit.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Where the plugin's stdio goes (default: `tracing`).
    pub fn stdio(mut self, sink: StdioSink) -> Self {
        self.stdio = Mutex::new(sink);
        self
    }

    /// The deadline of every call on [`PluginClient::channel`] that has none of its own
    /// ([`DEFAULT_CALL_TIMEOUT`], 30 s, unless set; `None`: no default). It travels to the
    /// plugin as the call's `grpc-timeout`; a call's own deadline wins.
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long the broker waits for the plugin to offer a dialed id, and keeps an offer
    /// nobody dialed (default 5 s, go-plugin's).
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// How the plugin process is confined (default [`Sandbox::best_effort`]: every layer
    /// this kernel offers).
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Where private socket directories are created (default: the system temp dir).
    pub fn socket_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_base = Some(dir.into());
        self
    }

    /// Starts the plugin, completes the handshake, connects and checks its health.
    ///
    /// A failure is also logged (target `tether::host`, WARN, with the plugin's name): a
    /// plugin that misbehaves at the trust boundary leaves a trace even if the caller
    /// drops the error.
    ///
    /// Counted in the metrics ([`crate::metric`]): `tether_plugin_starts_total` or
    /// `tether_plugin_start_failures_total`, and on success the plugin's sandbox layers in
    /// `tether_sandbox_layer_enforced`.
    pub async fn start(self) -> Result<PluginClient, Error> {
        let name = self.name.clone();
        let started = self.start_process().await;
        match &started {
            Ok(client) => crate::metric::started(&name, &client.sandbox),
            Err(err) => {
                crate::metric::start_failed(&name);
                tracing::warn!(target: "tether::host", plugin = name, error = %err, "plugin failed to start");
            }
        }
        started
    }

    async fn start_process(self) -> Result<PluginClient, Error> {
        let name = self.name.clone();
        let internal = |reason: &str| Error::Internal {
            plugin: name.clone(),
            reason: reason.to_owned(),
        };
        let base = self.socket_base.clone().unwrap_or_else(std::env::temp_dir);
        let program = sandbox::resolve_program(&self.program).map_err(|source| Error::Spawn {
            plugin: name.clone(),
            program: self.program.clone(),
            source,
        })?;
        let socket_dir = transport::socket_dir(&name, &base)?;
        let sandbox =
            sandbox::prepare(&self.sandbox, &program, socket_dir.path()).map_err(|source| {
                Error::Sandbox {
                    plugin: name.clone(),
                    source,
                }
            })?;
        let sandbox_status = sandbox.status().clone();
        log_sandbox(&name, &sandbox_status);

        let mut command = std::process::Command::new(&program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                self.handshake.magic_cookie_key.as_ref(),
                self.handshake.magic_cookie_value.as_ref(),
            )
            .env(env::PROTOCOL_VERSIONS, format_versions(&self.versions))
            .env(env::UNIX_SOCKET_DIR, socket_dir.path())
            .env(env::TMPDIR, socket_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn::spawn(command, sandbox)
            .await
            .map_err(|source| Error::Spawn {
                plugin: name.clone(),
                program: self.program.clone(),
                source,
            })?;
        let pid = child.id();
        // The process is watched and reaped through its `Group`; the std handle only hands
        // over the pipes (dropping it neither waits nor kills).
        let stdout = child
            .stdout
            .take()
            .and_then(|pipe| tokio::process::ChildStdout::from_std(pipe).ok())
            .ok_or_else(|| internal("no stdout pipe"))?;
        let stderr = child
            .stderr
            .take()
            .and_then(|pipe| tokio::process::ChildStderr::from_std(pipe).ok())
            .ok_or_else(|| internal("no stderr pipe"))?;
        drop(child);
        let group = Arc::new(Group::new(pid));

        let dir = socket_dir.path().to_owned();
        let exit = watch_exit(Arc::clone(&group), pid);
        let (closed_sender, stderr_closed) = watch::channel(false);
        let mut process = Process {
            pid,
            group,
            exit,
            tail: Arc::default(),
            stderr_closed,
            tasks: Vec::new(),
            socket_dir: Some(socket_dir),
            files_confined: sandbox_status.is_enforced(Layer::LandlockFilesystem)
                && !self.sandbox.socket_dir_files(),
        };
        process.tasks.push(tokio::spawn(read_stderr(
            name.clone(),
            stderr,
            Arc::clone(&process.tail),
            closed_sender,
        )));

        let mut stdout = BufReader::new(stdout);
        let handshake = self.read_handshake(&mut process, &mut stdout).await?;
        process
            .tasks
            .push(tokio::spawn(drain_stdout(name.clone(), stdout)));
        let address = match handshake.network {
            Network::Unix => transport::check_address(&name, &handshake.address, &dir)?,
            Network::Tcp => {
                return Err(Error::UnexpectedNetwork {
                    plugin: name,
                    network: handshake.network.to_string(),
                    address: handshake.address,
                });
            }
        };
        let channel = transport::connect(&name, &address, pid).await?;
        let limit = self.max_message_size;

        // The broker and stdio streams are opened in the background: a Go plugin sends no
        // response headers on them until it has something to send.
        let broker = Broker::new(
            BrokerConfig::new(name.as_str(), &dir, Peer::Process(pid))
                .confine_dialed_addresses(true)
                .dial_timeout(self.broker_timeout)
                .unclaimed_ttl(self.broker_timeout),
        );
        process
            .tasks
            .push(broker.start_stream(channel.clone(), limit));
        let stdio_client = GrpcStdioClient::new(channel.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        process.tasks.push(tokio::spawn(run_stdio(
            name.clone(),
            stdio_client,
            self.stdio
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        )));

        let client = PluginClient {
            controller: GrpcControllerClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            health: HealthClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            name,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            version: handshake.app_version,
            channel,
            max_message_size: limit,
            graceful_timeout: self.graceful_timeout,
            call_timeout: self.call_timeout,
            kill_timeout: self.kill_timeout,
            broker,
            process,
            sandbox: sandbox_status,
            address,
        };
        client.health().await?;
        tracing::debug!(
            plugin = client.name,
            pid,
            version = client.version,
            "plugin started"
        );
        Ok(client)
    }

    /// Reads and checks the handshake line, failing early when the process exits.
    async fn read_handshake(
        &self,
        process: &mut Process,
        stdout: &mut BufReader<impl AsyncRead + Unpin>,
    ) -> Result<Handshake, Error> {
        let name = &self.name;
        let cookie_key = self.handshake.magic_cookie_key.as_ref();
        let deadline = Instant::now() + self.start_timeout;
        let timed_out = |tail: String| Error::HandshakeTimeout {
            plugin: name.clone(),
            timeout: self.start_timeout,
            stderr_tail: tail,
        };
        let mut exit = process.exit.clone();
        // Each branch yields a plain value: a `watch::Ref` held across the awaits below
        // would make this future (and `start`'s) not `Send`.
        let first = tokio::select! {
            biased;
            read = lines::read_line(stdout, MAX_HANDSHAKE_LINE) => Ok(read),
            status = exit.wait_for(Option::is_some) => Err(Some(status.ok().and_then(|s| *s))),
            () = tokio::time::sleep_until(deadline) => Err(None),
        };
        let read = match first {
            Ok(read) => read,
            Err(Some(status)) => return Err(process.exited_early(name, cookie_key, status).await),
            Err(None) => return Err(timed_out(process.settled_tail(false).await)),
        };
        let line = match read {
            Ok(Read::Line(line)) => line,
            Ok(Read::Eof(line)) if !line.is_empty() => line,
            Ok(Read::Eof(_)) | Err(_) => {
                // stdout closed: the process is exiting, or misbehaving until the deadline.
                let exited = timeout_at(deadline, exit.wait_for(Option::is_some))
                    .await
                    .map(|status| status.ok().and_then(|s| *s));
                return match exited {
                    Ok(status) => Err(process.exited_early(name, cookie_key, status).await),
                    Err(_) => Err(timed_out(process.settled_tail(false).await)),
                };
            }
            Ok(Read::TooLong(prefix)) => {
                return Err(Error::HandshakeTooLong {
                    plugin: name.clone(),
                    limit: MAX_HANDSHAKE_LINE,
                    prefix: excerpt(&prefix, 200),
                });
            }
        };
        let text = String::from_utf8_lossy(&line);
        let handshake: Handshake = text.parse().map_err(|reason| Error::NotAHandshake {
            plugin: name.clone(),
            line: excerpt(&line, 200),
            reason,
        })?;
        if handshake.core_version != CORE_PROTOCOL_VERSION {
            return Err(Error::CoreVersion {
                plugin: name.clone(),
                got: handshake.core_version,
                expected: CORE_PROTOCOL_VERSION,
            });
        }
        if handshake.protocol == Protocol::NetRpc {
            return Err(Error::NetRpc {
                plugin: name.clone(),
            });
        }
        if !self.versions.contains(&handshake.app_version) {
            // A tether plugin said on stderr which versions it serves; collect that.
            let tail = process.settled_tail(true).await;
            return Err(Error::IncompatibleVersion {
                plugin: name.clone(),
                offered: handshake.app_version,
                accepted: self.versions.clone(),
                plugin_serves: logs::plugin_versions(&tail),
            });
        }
        Ok(handshake)
    }
}

/// A running plugin process and the gRPC channel to it.
///
/// Dropping the client kills the plugin's whole process group and removes its socket
/// directory; [`PluginClient::shutdown`] stops it gracefully first.
#[derive(Debug)]
pub struct PluginClient {
    name: String,
    version: u32,
    channel: Channel,
    max_message_size: usize,
    graceful_timeout: Duration,
    call_timeout: Option<Duration>,
    kill_timeout: Duration,
    controller: GrpcControllerClient<Channel>,
    health: HealthClient<Channel>,
    instance: u64,
    broker: Broker,
    process: Process,
    sandbox: SandboxStatus,
    /// The plugin's socket.
    address: PathBuf,
}

/// What another host process needs to attach to a running plugin
/// ([`PluginClient::reattach`]); serialisable, from [`PluginClient::reattach_config`].
/// A tether plugin accepts the attaching process only once the host that started it has
/// named it with [`PluginClient::admit`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReattachConfig {
    /// The plugin's name.
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// When that process started (clock ticks since boot): with the pid, it names one
    /// process for good, so a reused pid is never taken for the plugin.
    pub start_time: u64,
    /// Its Unix socket.
    pub address: PathBuf,
    /// The app protocol version it serves.
    pub protocol_version: u32,
}

/// One line per start: what confines the plugin (a warning when something does not).
fn log_sandbox(plugin: &str, status: &SandboxStatus) {
    if status.mode == SandboxMode::Off {
        tracing::warn!(target: "tether::sandbox", plugin, sandbox = %status, "the plugin runs without a sandbox");
    } else if status.is_complete() {
        tracing::info!(target: "tether::sandbox", plugin, sandbox = %status, "plugin sandboxed");
    } else {
        tracing::warn!(target: "tether::sandbox", plugin, sandbox = %status, "plugin sandboxed partially: this kernel lacks some layers");
    }
}

/// Numbers each started plugin, so two runs of one plugin (or a reused pid) are told apart.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

impl PluginClient {
    /// Describes a plugin to start: its name (used in logs and errors) and its executable.
    pub fn builder(name: impl Into<String>, program: impl Into<PathBuf>) -> PluginBuilder {
        PluginBuilder {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            handshake: HandshakeConfig::new("TETHER_PLUGIN", "tether"),
            versions: vec![1],
            env: Vec::new(),
            start_timeout: Duration::from_secs(60),
            graceful_timeout: Duration::from_secs(2),
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            kill_timeout: Duration::from_secs(2),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            stdio: Mutex::default(),
            socket_base: None,
            broker_timeout: tether_broker::DEFAULT_TIMEOUT,
            sandbox: Sandbox::default(),
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

    /// The host's side of the plugin's broker: serve something the plugin dials
    /// ([`Broker::accept_and_serve`]), or dial something the plugin serves
    /// ([`Broker::dial`]). Only the plugin process may connect to what it serves, and dialed
    /// sockets must lie in the plugin's private socket directory and be served by it.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// What confines the plugin process: each sandbox layer and whether it is enforced.
    pub fn sandbox(&self) -> &SandboxStatus {
        &self.sandbox
    }

    /// The plugin process's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The negotiated app protocol version.
    pub fn protocol_version(&self) -> u32 {
        self.version
    }

    /// The gRPC channel to the plugin: build your service clients on it. Calls without a
    /// deadline of their own get the default one ([`PluginBuilder::call_timeout`]).
    pub fn channel(&self) -> PluginChannel {
        PluginChannel::new(self.channel.clone(), self.call_timeout)
    }

    /// The message-size limit this client was configured with, for your own clients'
    /// `max_decoding_message_size` and `max_encoding_message_size`.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The private socket directory the host made for this plugin.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.process.socket_dir.as_ref().map(|dir| dir.path())
    }

    /// The last lines the plugin wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        self.process.tail_text()
    }

    /// How the process exited, if it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.process.exit.borrow()
    }

    /// Waits until the process exits.
    pub async fn wait(&self) -> Option<ExitStatus> {
        let mut exit = self.process.exit.clone();
        exit.wait_for(Option::is_some).await.ok().and_then(|s| *s)
    }

    /// What another host process needs to attach to this plugin while it runs.
    ///
    /// Fails with [`Error::Reattach`] when the process's start time cannot be read (from
    /// `/proc/<pid>/stat`): the plugin has exited, or `/proc` is not mounted. Without it a
    /// reused pid could not be told from the plugin, and [`PluginClient::reattach`]
    /// would refuse the config anyway.
    pub fn reattach_config(&self) -> Result<ReattachConfig, Error> {
        let pid = self.process.pid;
        let start_time = spawn::process_start_time(pid).ok_or_else(|| Error::Reattach {
            plugin: self.name.clone(),
            reason: format!(
                "could not read the start time of its process {pid} from /proc/{pid}/stat: \
                 the plugin has exited, or /proc is not mounted"
            ),
        })?;
        Ok(ReattachConfig {
            name: self.name.clone(),
            pid,
            start_time,
            address: self.address.clone(),
            protocol_version: self.version,
        })
    }

    /// Attaches to a plugin another host process started and still owns, from its
    /// [`ReattachConfig`]: checks that the process is the plugin's (its pid and start
    /// time, and that it serves the plugin's socket; otherwise [`Error::Reattach`], and
    /// nothing is signalled), and checks its health.
    ///
    /// The attached client calls the plugin, sees its end ([`PluginClient::exited`], with
    /// status 0: only the starting host, its parent, learns the real one) and can stop it
    /// ([`PluginClient::shutdown`]: `Shutdown`, then signals to that process alone, through
    /// a pidfd). Dropping it leaves the plugin running. It has no broker (host services
    /// stay with the starting host), no stderr and no sandbox status of its own.
    pub async fn reattach(config: &ReattachConfig) -> Result<PluginClient, Error> {
        let name = config.name.clone();
        let dir = config
            .address
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::Reattach {
                plugin: name.clone(),
                reason: format!(
                    "its socket address {:?} names no file in a directory; a reattach config \
                     comes from `reattach_config` on the host that started the plugin",
                    config.address
                ),
            })?;
        let group =
            Group::attached(config.pid, config.start_time).map_err(|reason| Error::Reattach {
                plugin: name.clone(),
                reason,
            })?;
        // The start time is only as fine as a clock tick: the process must also serve the
        // plugin's socket (its credentials are checked at every connection).
        let channel = transport::connect(&name, &config.address, config.pid)
            .await
            .map_err(|err| Error::Reattach {
                plugin: name.clone(),
                reason: format!(
                    "process {} does not serve the plugin's socket ({err}): the plugin has \
                     exited",
                    config.pid
                ),
            })?;
        let limit = DEFAULT_MAX_MESSAGE_SIZE;
        let broker = Broker::new(BrokerConfig::new(
            name.as_str(),
            &dir,
            Peer::Process(config.pid),
        ));
        broker.close();
        let group = Arc::new(group);
        let pid = config.pid;
        let exit = watch_exit(Arc::clone(&group), pid);
        let (_, stderr_closed) = watch::channel(true);
        let client = PluginClient {
            controller: GrpcControllerClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            name,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            version: config.protocol_version,
            channel,
            max_message_size: limit,
            graceful_timeout: Duration::from_secs(2),
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            kill_timeout: Duration::from_secs(5),
            broker,
            process: Process {
                pid,
                group,
                exit,
                tail: Arc::default(),
                stderr_closed,
                tasks: Vec::new(),
                socket_dir: None,
                files_confined: false,
            },
            sandbox: SandboxStatus {
                mode: SandboxMode::BestEffort,
                layers: Vec::new(),
            },
            address: config.address.clone(),
        };
        client.health().await?;
        Ok(client)
    }

    /// Kills the plugin's whole process group at once (SIGKILL), without asking; the end
    /// is then reported by [`PluginClient::exited`]. For a graceful stop, use
    /// [`PluginClient::shutdown`].
    pub fn kill(&self) {
        self.process.group.signal(Signal::KILL);
    }

    /// Waits until the process ends, and says how: its status or signal and the end of its
    /// stderr. The host learns of the end from a pidfd as it happens; by then the rest of
    /// the plugin's process group has been killed too.
    pub async fn exited(&self) -> ExitReport {
        let status = self.wait().await;
        // Its last words may still be in the pipe: wait (a little) for stderr to close.
        let mut closed = self.process.stderr_closed.clone();
        let _ = timeout(STDERR_SETTLE, closed.wait_for(|closed| *closed)).await;
        ExitReport {
            plugin: self.name.clone(),
            status: status.unwrap_or_else(|| ExitStatus::from_raw(0)),
            stderr_tail: self.process.tail_text(),
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
    pub async fn shutdown(mut self) -> Result<PluginExit, Error> {
        let result = self.stop().await;
        self.broker.close();
        self.process.group.signal(Signal::KILL);
        if let Some(dir) = self.process.socket_dir.take() {
            let path = dir.path().to_owned();
            if let Err(err) = dir.close() {
                tracing::warn!(plugin = self.name, path = %path.display(), %err, "could not remove the socket directory");
            }
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
        let mut exit = self.process.exit.clone();
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
                tracing::debug!(
                    plugin = self.name,
                    ?signal,
                    "signalling the plugin's process group"
                );
                self.process.group.signal(signal);
            }
            let deadline = deadline.max(Instant::now());
            if let Ok(Ok(status)) = timeout_at(deadline, exit.wait_for(Option::is_some)).await
                && let Some(status) = *status
            {
                return Ok(PluginExit { status, stop });
            }
        }
        Err(Error::Internal {
            plugin: self.name.clone(),
            reason: format!("pid {} did not exit after SIGKILL", self.process.pid),
        })
    }
}

impl Drop for PluginClient {
    fn drop(&mut self) {
        // Waiting dials fail at once, and endpoints served for the plugin stop.
        self.broker.close();
    }
}

/// The deadline of a call to a plugin that has none of its own.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`PluginClient::guard`] waits for the exit of a plugin whose connection broke.
const EXIT_SETTLE: Duration = Duration::from_secs(1);

/// Whether `status` is what a call gets when the connection to the plugin breaks.
fn broken(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Publishes how `group`'s leader ended, once it has. The task is not among a
/// `Process`'s `tasks`: it must outlive the client to reap the process it kills.
fn watch_exit(group: Arc<Group>, pid: u32) -> watch::Receiver<Option<ExitStatus>> {
    let (sender, exit) = watch::channel(None);
    tokio::spawn(async move {
        match group.exited().await {
            Ok(status) => {
                let _ = sender.send(Some(status));
            }
            Err(err) => tracing::warn!(pid, %err, "watching the plugin process failed"),
        }
    });
    exit
}

/// The process and the tasks that watch it. Dropping it kills the process group.
#[derive(Debug)]
struct Process {
    pid: u32,
    /// Signals the process group while its leader is unreaped; see `spawn::Group`.
    group: Arc<Group>,
    exit: watch::Receiver<Option<ExitStatus>>,
    tail: Arc<Mutex<Tail>>,
    stderr_closed: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    socket_dir: Option<tempfile::TempDir>,
    /// Landlock confines its files, and no files may be made in the socket directory.
    files_confined: bool,
}

impl Process {
    fn tail_text(&self) -> String {
        self.tail.lock().map(|tail| tail.text()).unwrap_or_default()
    }

    /// The stderr tail once stderr has closed (bounded wait); kills the process first when
    /// asked, so that a live process's last words are read too.
    async fn settled_tail(&mut self, kill: bool) -> String {
        if kill {
            self.group.signal(Signal::KILL);
        }
        let _ = timeout(STDERR_SETTLE, self.stderr_closed.wait_for(|closed| *closed)).await;
        self.tail_text()
    }

    /// Why a plugin may have died before its handshake, when its last words suggest the
    /// sandbox refused it a file.
    fn sandbox_hint(&self, stderr_tail: &str) -> Option<&'static str> {
        (self.files_confined
            && stderr_tail
                .to_ascii_lowercase()
                .contains("permission denied"))
        .then_some(
            "the sandbox denies plugins the filesystem; a plugin built with go-plugin \
                 needs Sandbox::allow_socket_dir_files(true) (it makes a temporary file where \
                 it binds its socket); for other files, Sandbox::allow_read or host services",
        )
    }

    async fn exited_early(
        &mut self,
        plugin: &str,
        cookie_key: &str,
        status: Option<ExitStatus>,
    ) -> Error {
        let stderr_tail = self.settled_tail(false).await;
        match status {
            Some(status) => Error::ExitedBeforeHandshake {
                plugin: plugin.to_owned(),
                status,
                cookie_key: cookie_key.to_owned(),
                hint: self.sandbox_hint(&stderr_tail),
                stderr_tail,
            },
            None => Error::Internal {
                plugin: plugin.to_owned(),
                reason: "the process ended but its exit status was lost".into(),
            },
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Whether or not the leader exited, nothing of the plugin may outlive its client
        // (the exit watcher then reaps the leader); an attached plugin is its host's.
        if !self.group.is_attached() {
            self.group.signal(Signal::KILL);
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Re-levels the plugin's stderr log lines and keeps their tail.
async fn read_stderr(
    plugin: String,
    stderr: impl AsyncRead + Unpin,
    tail: Arc<Mutex<Tail>>,
    closed: watch::Sender<bool>,
) {
    let mut stderr = BufReader::new(stderr);
    let mut parser = LogParser::default();
    loop {
        let (line, last) = match lines::read_line(&mut stderr, MAX_LOG_LINE).await {
            Ok(Read::Line(line) | Read::TooLong(line)) => (line, false),
            Ok(Read::Eof(line)) => (line, true),
            Err(err) => {
                tracing::debug!(plugin, %err, "reading the plugin's stderr failed");
                (Vec::new(), true)
            }
        };
        if !line.is_empty() {
            if let Ok(mut tail) = tail.lock() {
                tail.push(&line);
            }
            logs::emit(&plugin, &parser.parse(&String::from_utf8_lossy(&line)));
        }
        if last {
            let _ = closed.send(true);
            return;
        }
    }
}

/// Reads whatever the plugin writes on its real stdout after the handshake, so it never
/// blocks on a full pipe.
async fn drain_stdout(plugin: String, stdout: BufReader<impl AsyncRead + Unpin>) {
    let mut stdout = stdout;
    while let Ok(Read::Line(line) | Read::TooLong(line)) =
        lines::read_line(&mut stdout, MAX_LOG_LINE).await
    {
        let line = String::from_utf8_lossy(&line);
        tracing::debug!(target: "tether::stdout", plugin, "{line}");
    }
}

async fn run_stdio(plugin: String, mut client: GrpcStdioClient<Channel>, sink: StdioSink) {
    match client.stream_stdio(()).await {
        Ok(response) => stdio::forward(plugin, response.into_inner(), sink).await,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::debug!(
                target: "tether::host",
                plugin,
                "the plugin does not mirror its stdio (go-plugin before 1.5)"
            );
        }
        Err(status) => {
            tracing::debug!(target: "tether::host", plugin, %status, "the plugin's stdio stream failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}

    /// A host starts and drives plugins from spawned tasks, so these futures must be `Send`
    /// (a `watch::Ref` held across an await once made `start`'s not).
    #[test]
    fn start_and_the_client_futures_are_send() {
        assert_send_sync::<PluginBuilder>();
        assert_send_sync::<PluginClient>();
        let builder = PluginClient::builder("p", "/nonexistent")
            .stdio(StdioSink::Writer(Box::new(std::io::sink())));
        let start = builder.start();
        assert_send(&start);
    }
}
