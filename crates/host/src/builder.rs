//! [`PluginBuilder`]: what to start, and the start sequence ([`PluginBuilder::start`]):
//! sandbox, spawn, handshake, connection, broker and stdio streams, health.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tether_broker::{Broker, BrokerConfig, Peer};
use tether_protocol::plugin::grpc_stdio_client::GrpcStdioClient;
use tether_protocol::{
    DEFAULT_MAX_MESSAGE_SIZE, HandshakeConfig, Network, Protocol, env, format_versions,
};
use tether_transport::Link;
use tokio::io::BufReader;

use crate::client::{DEFAULT_CALL_TIMEOUT, Owner, Parts, PluginClient};
use crate::error::Error;
use crate::handshake::{self, Expected};
use crate::lifecycle::{LifecycleEvent, LifecycleHook, LifecycleKind};
use crate::process::{self, Process};
use crate::spawn;
use crate::stdio::StdioSink;
use crate::transport;
use crate::verify::{self, BinaryRefusal, DigestSource, Sha256};
use tether_sandbox::{self as sandbox, Layer, Sandbox, SandboxMode, SandboxStatus};

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
    auto_mtls: bool,
    multiplex: bool,
    frames: bool,
    lane: bool,
    socket_group: Option<String>,
    data_dir: Option<PathBuf>,
    sha256: Option<Sha256>,
    hooks: Hooks,
    /// Why this start happens, when a supervisor starts the plugin again (for the
    /// lifecycle event).
    pub(crate) start_reason: Option<String>,
}

/// A test hook given the binary's path.
#[cfg(feature = "testing")]
type PathHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// The builder's callbacks.
#[derive(Clone, Default)]
struct Hooks {
    lifecycle: Option<LifecycleHook>,
    sha256_from: Option<DigestSource>,
    #[cfg(feature = "testing")]
    after_verify: Option<PathHook>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("lifecycle", &self.lifecycle.is_some())
            .field("sha256_from", &self.sha256_from.is_some())
            .finish_non_exhaustive()
    }
}

impl PluginBuilder {
    /// A plugin named `name` (in logs and errors) run from `program`, with the defaults.
    pub(crate) fn new(name: String, program: PathBuf) -> PluginBuilder {
        PluginBuilder {
            name,
            program,
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
            auto_mtls: false,
            multiplex: false,
            frames: true,
            lane: false,
            socket_group: None,
            data_dir: None,
            sha256: None,
            hooks: Hooks::default(),
            start_reason: None,
        }
    }

    /// The plugin's name, as given to [`PluginClient::builder`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's binary, as given to [`PluginClient::builder`].
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Pins the SHA-256 of the plugin's binary (default: none). At each start the host
    /// opens the binary once, refuses it unless it is a regular file owned by root or the
    /// host's user and writable by neither group nor others (else it could be rewritten in
    /// place after the check), hashes that open file, and executes that very file through
    /// its descriptor: renaming or replacing the path between the check and the exec
    /// changes nothing. A binary whose digest differs does not start ([`Error::Binary`]).
    /// The binary must be a compiled executable, not a `#!` script. Parse the digest, as
    /// `sha256sum` prints it, with `str::parse`:
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
    /// use tether_host::{PluginClient, Sha256};
    /// let pinned: Sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?;
    /// let plugin = PluginClient::builder("kv", "./kv-plugin").sha256(pinned).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn sha256(mut self, digest: Sha256) -> Self {
        self.sha256 = Some(digest);
        self
    }

    /// Asks `source` at each start which SHA-256 the binary must have, given the resolved
    /// path of the binary (default: none): `tether-hostserve` reads it from the plugin's
    /// signed manifest. An error refuses the start ([`Error::Binary`], with
    /// [`BinaryRefusal::NotVouched`]); a digest is checked as [`PluginBuilder::sha256`]
    /// checks it, and must equal the pinned one if there is one too.
    pub fn sha256_from(
        mut self,
        source: impl Fn(&Path) -> Result<Sha256, String> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.sha256_from = Some(Arc::new(source));
        self
    }

    /// The pinned digest, if any ([`PluginBuilder::sha256`]).
    pub fn pinned_sha256(&self) -> Option<Sha256> {
        self.sha256
    }

    /// Calls `hook` on each start, refused or failed start, and idle stop of this plugin
    /// (default: none). `tether-hostserve`'s `HostServices::configure` installs one that
    /// writes each to the audit trail. A later call replaces the hook.
    pub fn on_lifecycle(mut self, hook: impl Fn(&LifecycleEvent) + Send + Sync + 'static) -> Self {
        self.hooks.lifecycle = Some(Arc::new(hook));
        self
    }

    /// The lifecycle hook, if one is installed.
    pub(crate) fn lifecycle_hook(&self) -> Option<LifecycleHook> {
        self.hooks.lifecycle.clone()
    }

    /// Test hook: runs after the binary was verified and before it is executed, with its
    /// path (to swap the file there and show that what runs is what was checked).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn after_verify(mut self, hook: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        self.hooks.after_verify = Some(Arc::new(hook));
        self
    }

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

    /// go-plugin's AutoMTLS (default off, as in go-plugin; Terraform turns it on): the host
    /// makes a throwaway certificate and passes it in `PLUGIN_CLIENT_CERT`, the plugin
    /// answers with its own in the handshake, and every connection between them, the main
    /// one and brokered ones both ways, is TLS that requires exactly those two certificates.
    /// A plugin that answers without a certificate does not start
    /// ([`Error::AutoMtls`]). Peer credentials are checked as without TLS.
    pub fn auto_mtls(mut self, on: bool) -> Self {
        self.auto_mtls = on;
        self
    }

    /// go-plugin's multiplexing (go-plugin 1.6+; default off, as in go-plugin): the host
    /// asks with `PLUGIN_MULTIPLEX_GRPC=true`, and if the plugin agrees (field 7 of its
    /// handshake) the main connection carries yamux, and the main gRPC connection and every
    /// brokered connection are streams on it: one socket in all. A plugin that does not
    /// agree does not start ([`Error::Multiplex`]). Not with reattach.
    pub fn multiplex(mut self, on: bool) -> Self {
        self.multiplex = on;
        self
    }

    /// Whether to offer the plugin tether's frames (default on): the host sets
    /// `TETHER_FRAMES=1`, and a tether plugin that answers `tether-frames` in its handshake
    /// gets its calls as frames instead of HTTP/2, the same calls (metadata, deadlines,
    /// cancellation, streams) at a fraction of HTTP/2's cost. A Go plugin ignores the offer
    /// and speaks HTTP/2, as does every plugin with [`multiplex`](Self::multiplex) on.
    /// Generated clients on [`PluginClient::channel`] work the same either way.
    pub fn frames(mut self, on: bool) -> Self {
        self.frames = on;
        self
    }

    /// Whether to move the host's calls to the plugin onto a lane (default off): shared
    /// memory the host makes and hands the plugin after the handshake
    /// (`tether.lane.v1.Lanes`), the same frames as on the socket, without a system call
    /// while calls follow each other closely. Every call on [`PluginClient::channel`] goes
    /// there, with the same deadlines, metadata, cancellation and streams; a plugin that
    /// breaks the lane's protocol loses it, and calls fail with `UNAVAILABLE` saying why.
    ///
    /// It costs CPU: after each answer, the host's reader keeps looking for the next one
    /// for 50 us before it sleeps, as the plugin's does after each call. Only with
    /// [`frames`](Self::frames) taken: a plugin that cannot take the lane (a Go plugin, an
    /// older tether SDK, one without the descriptor channel) keeps its calls on the socket,
    /// with a warning; [`PluginClient::on_lane`] says which.
    pub fn lane(mut self, on: bool) -> Self {
        self.lane = on;
        self
    }

    /// Gives the plugin's socket directory and every socket in it to `group`, a name or a
    /// gid, and tells the plugin with go-plugin's `PLUGIN_UNIX_SOCKET_GROUP` (go-plugin
    /// 1.5+). The directory is made set-group-id (mode 2770), so what is created in it is
    /// the group's, and the plugin runs with umask 007, so its sockets are born
    /// group-writable: a sandboxed plugin may not change file owners or modes. Peer
    /// credentials are still checked on every connection. An unknown group fails
    /// [`start`](Self::start) with [`Error::SocketGroup`]. A go-plugin plugin changes its
    /// sockets' group and mode itself, which the sandbox refuses: run such a plugin with
    /// this option only without the sandbox.
    pub fn socket_group(mut self, group: impl Into<String>) -> Self {
        self.socket_group = Some(group.into());
        self
    }

    /// Gives the plugin a private directory to keep state in (default: none, and the plugin
    /// can write nowhere). At each start the host creates `dir` (mode `0700`, with missing
    /// parents) or checks the existing one, refusing ([`Error::DataDir`]) a symbolic link,
    /// a non-directory, another user's directory or one writable by group or others. The
    /// sandbox grants the plugin read-write beneath it (create, write, rename and remove
    /// files and directories; not execute), each file bounded by
    /// [`ResourceLimits::file_size`](crate::ResourceLimits::file_size); it becomes the
    /// plugin's working directory, and `TETHER_DATA_DIR` holds its absolute path. Give
    /// every plugin its own: another plugin cannot reach it unless given the same one.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), tether_host::Error> {
    /// use tether_host::{PluginClient, Sandbox};
    /// let plugin = PluginClient::builder("kv", "./kv-plugin")
    ///     .sandbox(Sandbox::strict())
    ///     .data_dir("/var/lib/myapp/plugins/kv")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Where private socket directories go unless [`PluginBuilder::socket_base_dir`] says:
    /// `$XDG_RUNTIME_DIR` when it is this user's private directory, else the system temp
    /// dir. For reports and diagnostics: the file system it is on decides part of a start's
    /// cost.
    pub fn default_socket_base_dir() -> PathBuf {
        default_socket_base(std::env::var_os("XDG_RUNTIME_DIR"))
    }

    /// Where private socket directories are created. By default `$XDG_RUNTIME_DIR` when it
    /// is this user's private directory (owned by the effective user, no access for group or
    /// others), as it is in a login session: usually a tmpfs, where a socket costs no disk
    /// inode to create and remove (0.1-0.4 ms of a plugin's 3 ms start, measured where
    /// `/tmp` is on ext4). Else the system temp dir (`$TMPDIR`, else `/tmp`).
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
        let program = self.program.clone();
        let lifecycle = self.hooks.lifecycle.clone();
        let reason = self.start_reason.clone();
        let started = self.start_process().await;
        let (kind, process, detail) = match &started {
            Ok(client) => {
                if let Some(status) = client.sandbox() {
                    crate::metric::started(&name, status);
                }
                let mut detail = match client.verified_sha256() {
                    Some(digest) => format!("binary verified, sha256 {digest}"),
                    None => "binary not pinned".to_owned(),
                };
                if let Some(reason) = reason {
                    detail = format!("{reason}; {detail}");
                }
                (
                    LifecycleKind::Started,
                    Some((client.pid(), client.instance())),
                    detail,
                )
            }
            Err(err) => {
                crate::metric::start_failed(&name);
                tracing::warn!(target: "tether::host", plugin = name, error = %err, "plugin failed to start");
                let kind = match err {
                    Error::Binary { .. } => LifecycleKind::Refused,
                    _ => LifecycleKind::Failed,
                };
                (kind, None, err.to_string())
            }
        };
        if let Some(hook) = lifecycle {
            hook(&LifecycleEvent {
                plugin: name,
                pid: process.map(|(pid, _)| pid),
                instance: process.map(|(_, instance)| instance),
                program,
                kind,
                detail,
            });
        }
        started
    }

    async fn start_process(self) -> Result<PluginClient, Error> {
        let name = self.name.clone();
        let internal = |reason: &str| Error::Internal {
            plugin: name.clone(),
            reason: reason.to_owned(),
        };
        let base = self
            .socket_base
            .clone()
            .unwrap_or_else(Self::default_socket_base_dir);
        let program = sandbox::resolve_program(&self.program).map_err(|source| Error::Spawn {
            plugin: name.clone(),
            program: self.program.clone(),
            source,
        })?;
        // Opened once, checked and hashed; this open file is what is executed.
        let verified = match (self.sha256, self.hooks.sha256_from.clone()) {
            (None, None) => None,
            (pinned, source) => {
                let path = program.clone();
                let verified = tokio::task::spawn_blocking(move || {
                    let expected = match (pinned, source) {
                        (pinned, Some(source)) => {
                            let vouched = source(&path).map_err(BinaryRefusal::NotVouched)?;
                            match pinned {
                                Some(pinned) if pinned != vouched => {
                                    return Err(BinaryRefusal::NotVouched(format!(
                                        "what vouches for it names sha256 {vouched}, but {pinned} \
                                         is pinned"
                                    )));
                                }
                                _ => vouched,
                            }
                        }
                        (Some(pinned), None) => pinned,
                        (None, None) => {
                            return Err(BinaryRefusal::NotVouched("no digest to check".into()));
                        }
                    };
                    verify::open_verified(&path, &expected).map(|file| (file, expected))
                })
                .await
                .map_err(|err| internal(&format!("verifying the binary: {err}")))?;
                Some(verified.map_err(|reason| Error::Binary {
                    plugin: name.clone(),
                    program: program.clone(),
                    reason,
                })?)
            }
        };
        let verified_digest = verified.as_ref().map(|(_, digest)| *digest);
        let verified = verified.map(|(file, _)| file);
        #[cfg(feature = "testing")]
        if let Some(hook) = &self.hooks.after_verify {
            hook(&program);
        }
        let socket_dir = transport::socket_dir(&name, &base)?;
        let socket_gid = match &self.socket_group {
            Some(group) => Some(transport::share_dir(&name, socket_dir.path(), group)?),
            None => None,
        };
        let data_dir = self.data_dir.as_ref().map(sandbox::DataDir::create);
        let data_dir = data_dir.transpose().map_err(|source| Error::DataDir {
            plugin: name.clone(),
            source,
        })?;
        let sandbox = match &verified {
            Some(file) => sandbox::prepare_verified(
                &self.sandbox,
                &program,
                file.as_fd(),
                socket_dir.path(),
                data_dir.as_ref(),
            ),
            None => sandbox::prepare(
                &self.sandbox,
                &program,
                socket_dir.path(),
                data_dir.as_ref(),
            ),
        }
        .map_err(|source| Error::Sandbox {
            plugin: name.clone(),
            source,
        })?;
        let sandbox_status = sandbox.status().clone();
        log_sandbox(&name, &sandbox_status);

        let identity = match self.auto_mtls {
            true => Some(tether_transport::tls::Identity::generate().map_err(|err| {
                Error::AutoMtls {
                    plugin: name.clone(),
                    reason: err.to_string(),
                }
            })?),
            false => None,
        };
        // The plugin's environment: nothing of the host's, then (later values win) what
        // the host set, and what go-plugin's protocol passes.
        let mut environment: BTreeMap<OsString, OsString> = self.env.iter().cloned().collect();
        let mut set = |key: &str, value: &OsStr| {
            environment.insert(key.into(), value.to_owned());
        };
        set(
            self.handshake.magic_cookie_key.as_ref(),
            OsStr::new(self.handshake.magic_cookie_value.as_ref()),
        );
        set(
            env::PROTOCOL_VERSIONS,
            OsStr::new(&format_versions(&self.versions)),
        );
        set(env::UNIX_SOCKET_DIR, socket_dir.path().as_os_str());
        set(env::TMPDIR, socket_dir.path().as_os_str());
        if let Some(identity) = &identity {
            set(env::CLIENT_CERT, OsStr::new(identity.certificate_pem()));
        }
        if self.multiplex {
            set(env::MULTIPLEX_GRPC, OsStr::new("true"));
        }
        if self.frames && !self.multiplex {
            set(env::FRAMES, OsStr::new("1"));
        }
        if let Some(group) = &self.socket_group {
            set(env::UNIX_SOCKET_GROUP, OsStr::new(group));
        }
        if let Some(data_dir) = &data_dir {
            set(env::DATA_DIR, data_dir.path().as_os_str());
        }
        // The descriptor channel: how the host hands the plugin pipes for bulk transfers.
        let (descriptors, plugin_end) = tether_transport::descriptor_pair()
            .map_err(|err| internal(&format!("the descriptor channel: {err}")))?;
        let exec = spawn::Exec {
            // The verified binary is executed through its open descriptor (inherited, and
            // close-on-exec: it closes only once the kernel has opened the file through
            // it), keeping the usual argv[0].
            program: match &verified {
                Some(file) => spawn::Program::Verified(
                    file.try_clone()
                        .map_err(|err| internal(&format!("the verified binary: {err}")))?,
                ),
                None => spawn::Program::Path(program.clone()),
            },
            arg0: program.clone().into_os_string(),
            args: self.args.clone(),
            env: environment,
            cwd: data_dir.as_ref().map(|dir| dir.path().to_owned()),
            descriptors: Some(plugin_end),
        };
        // With a socket group the plugin's sockets are born group-writable (the sandbox
        // forbids it changing file modes and owners) in a set-group-id directory.
        let umask = socket_gid.map(|_| 0o007);
        let spawned = spawn::spawn(exec, sandbox, umask)
            .await
            .map_err(|source| Error::Spawn {
                plugin: name.clone(),
                program: self.program.clone(),
                source,
            })?;
        drop(verified);
        let pid = spawned.pid;
        // The process is watched and reaped through its `Group`.
        let stdout =
            tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(spawned.stdout))
                .map_err(|err| internal(&format!("the stdout pipe: {err}")))?;
        let stderr =
            tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(spawned.stderr))
                .map_err(|err| internal(&format!("the stderr pipe: {err}")))?;

        let dir = socket_dir.path().to_owned();
        let files_confined = sandbox_status.is_enforced(Layer::LandlockFilesystem)
            && !self.sandbox.socket_dir_files();
        let mut process = Process::new(&name, pid, stderr, socket_dir, files_confined);

        let mut stdout = BufReader::new(stdout);
        let expected = Expected {
            plugin: &name,
            cookie_key: self.handshake.magic_cookie_key.as_ref(),
            start_timeout: self.start_timeout,
            versions: &self.versions,
        };
        let handshake = handshake::read(&expected, &mut process, &mut stdout).await?;
        process.keep(tokio::spawn(process::drain_stdout(name.clone(), stdout)));
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
        let tls =
            handshake::mutual_tls(&name, identity.as_ref(), handshake.server_cert.as_deref())?;
        handshake::check_multiplex(&name, self.multiplex, handshake.multiplex)?;
        // Frames only when offered and taken: a plugin that answers `tether-frames`
        // unasked still serves HTTP/2 on the same socket.
        let framed = self.frames && !self.multiplex && handshake.protocol == Protocol::TetherFrames;
        let (channel, multiplexed): (Link, _) = match (self.multiplex, framed) {
            (false, false) => (
                transport::connect(&name, &address, pid, tls.clone())
                    .await?
                    .into(),
                None,
            ),
            (false, true) => (
                transport::connect_framed(&name, &address, pid, tls.clone())
                    .await?
                    .into(),
                None,
            ),
            (true, _) => {
                let (channel, session) =
                    transport::connect_multiplexed(&name, &address, pid, tls.clone()).await?;
                (channel.into(), Some(session))
            }
        };
        let limit = self.max_message_size;
        // A lane, when asked for and the plugin speaks frames: every call after this one
        // goes there, the broker and stdio streams included.
        let (channel, on_lane) = match self.lane && framed {
            true => match transport::open_lane(&name, &channel, &descriptors, limit).await {
                Ok(lane) => (Link::from(lane), true),
                Err(reason) => {
                    tracing::warn!(target: "tether::host", plugin = %name, %reason, "the plugin did not take a lane; its calls stay on its socket");
                    (channel, false)
                }
            },
            false => (channel, false),
        };

        // The broker and stdio streams are opened in the background: a Go plugin sends no
        // response headers on them until it has something to send.
        let mut broker_config = BrokerConfig::new(name.as_str(), &dir, Peer::Process(pid))
            .confine_dialed_addresses(true)
            .dial_timeout(self.broker_timeout)
            .unclaimed_ttl(self.broker_timeout)
            .frames(framed);
        if let Some(tls) = tls {
            broker_config = broker_config.tls(tls);
        }
        if let Some(gid) = socket_gid {
            broker_config = broker_config.socket_group(gid);
        }
        let broker = Broker::new(broker_config);
        if let Some((session, inbound, credentials)) = multiplexed {
            broker.multiplex(session, inbound, credentials, None);
        }
        process.keep(broker.start_stream(channel.clone(), limit));
        let stdio_client = GrpcStdioClient::new(channel.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        process.keep(tokio::spawn(process::run_stdio(
            name.clone(),
            stdio_client,
            self.stdio
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        )));

        let version = handshake.app_version;
        let client = PluginClient::new(Parts {
            name,
            version,
            channel,
            max_message_size: limit,
            graceful_timeout: self.graceful_timeout,
            call_timeout: self.call_timeout,
            kill_timeout: self.kill_timeout,
            address,
            verified: verified_digest,
            owner: Owner::Spawned {
                process,
                broker,
                sandbox: sandbox_status,
                descriptors: Arc::new(descriptors),
                on_lane,
            },
        });
        client.health().await?;
        tracing::debug!(plugin = client.name(), pid, version, "plugin started");
        Ok(client)
    }
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

/// Where socket directories go by default: `runtime_dir` (`$XDG_RUNTIME_DIR`) if it is an
/// absolute path to a directory the effective user owns that no one else may enter, as the
/// XDG specification requires of it; else the system temp dir.
fn default_socket_base(runtime_dir: Option<OsString>) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = runtime_dir.map(PathBuf::from)
        && dir.is_absolute()
        && let Ok(metadata) = std::fs::metadata(&dir)
        && metadata.is_dir()
        && metadata.uid() == rustix::process::geteuid().as_raw()
        && metadata.mode() & 0o077 == 0
    {
        return dir;
    }
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn sockets_go_to_the_users_private_runtime_dir_else_the_temp_dir() {
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let runtime = Some(private.path().as_os_str().to_owned());
        assert_eq!(default_socket_base(runtime.clone()), private.path());

        let temp = std::env::temp_dir();
        assert_eq!(default_socket_base(None), temp);
        assert_eq!(default_socket_base(Some("relative/dir".into())), temp);
        let missing = private.path().join("missing").into_os_string();
        assert_eq!(default_socket_base(Some(missing)), temp);
        let file = private.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(default_socket_base(Some(file.into_os_string())), temp);
        // Others may enter it: not the private directory the specification promises.
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(default_socket_base(runtime), temp);
    }

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
