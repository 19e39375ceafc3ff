//! The plugin's side of the lifecycle: cookie, negotiation, socket, handshake, serving.

use std::collections::BTreeMap;
use std::fs::Permissions;
use std::io::Write;
use std::marker::PhantomData;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tether_broker::{Broker, BrokerConfig, Peer};
use tether_protocol::admission::admission_server::AdmissionServer;
use tether_protocol::hostconn::acceptor_server::AcceptorServer;
use tether_protocol::lane::lanes_server::LanesServer;
use tether_protocol::plugin::grpc_controller_server::GrpcControllerServer;
use tether_protocol::plugin::grpc_stdio_server::GrpcStdioServer;
use tether_protocol::{
    CORE_PROTOCOL_VERSION, DEFAULT_MAX_MESSAGE_SIZE, HEALTH_SERVICE, Handshake, HandshakeConfig,
    Network, Protocol, env, format_versions, negotiate, parse_versions,
};
use tether_transport::mux::{Role, Session};
use tether_transport::tls::{self, Identity, MutualTls};
use tether_transport::{Listener, PeerSet};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

use crate::builtin::{Admission, Controller};
use crate::calls::{self, CallLayer};
use crate::error::ServeError;
use crate::host::{AcceptorService, Host, LinkSetter};
use crate::lanes::{self, LanesService};
use crate::log::JsonLogLayer;
use crate::stdio::{self, StdioService};

/// A plugin, described by its handshake and the services it serves per app protocol version.
///
/// `H` records whether the plugin opted in to host services: [`NoHost`] from
/// [`Plugin::new`], [`WithHost`] after [`Plugin::with_host_services`], which a plugin
/// can call only once.
pub struct Plugin<H = NoHost> {
    handshake: HandshakeConfig,
    versions: BTreeMap<u32, Routes>,
    max_message_size: usize,
    log_level: Option<LevelFilter>,
    shutdown_grace: Duration,
    worker_threads: usize,
    broker: Broker,
    host_link: Option<LinkSetter>,
    /// The processes that may connect: the host that started this plugin, and whoever it
    /// admits later.
    admitted: PeerSet,
    host: PhantomData<H>,
}

/// Marks a [`Plugin`] that has not opted in to host services: it serves no host-service
/// code, and the host's `establish_host_services` reports that it did not request them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHost;

/// Marks a [`Plugin`] that opted in to host services with [`Plugin::with_host_services`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WithHost;

impl<H> std::fmt::Debug for Plugin<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("handshake", &self.handshake)
            .field("versions", &self.versions.keys().collect::<Vec<_>>())
            .field("max_message_size", &self.max_message_size)
            .field("log_level", &self.log_level)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("worker_threads", &self.worker_threads)
            .field("broker", &self.broker)
            .field("host_services", &self.host_link.is_some())
            .finish()
    }
}

impl Plugin<NoHost> {
    /// A plugin with this handshake and no services yet.
    pub fn new(handshake: HandshakeConfig) -> Self {
        // The host is the process that started the plugin; nobody else may connect.
        crate::parent::remember();
        let admitted = PeerSet::of(std::os::unix::process::parent_id());
        Plugin {
            handshake,
            versions: BTreeMap::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            log_level: Some(LevelFilter::INFO),
            shutdown_grace: Duration::from_secs(2),
            worker_threads: 1,
            broker: Broker::new(broker_config(admitted.clone())),
            host_link: None,
            admitted,
            host: PhantomData,
        }
    }

    /// Opts in to host services: the plugin serves the `HostConnection` contract and dials
    /// the host's services, once, when the host establishes them. The returned [`Host`]
    /// (cheap to clone) gives the file client and clients of your own host services, all
    /// on that one connection:
    ///
    /// ```no_run
    /// # use tether_plugin_sdk::{HandshakeConfig, HostServicesError, Plugin};
    /// # use tether_plugin_sdk::protocol::hostserve::files_client::FilesClient;
    /// # const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");
    /// # fn main() -> Result<(), HostServicesError> {
    /// let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    /// // Give `host` to your services; once the host has connected:
    /// let files = host.files()?;
    /// // Any generated client of a service the host serves, here tether's own:
    /// let services = host.client(FilesClient::new)?;
    /// # Ok(()) }
    /// ```
    ///
    /// A plugin that does not call this serves no host-service code at all, and the host's
    /// `establish_host_services` reports that it did not request them. A plugin opts in
    /// once: there is one connection, and a second opt-in does not compile.
    ///
    /// ```compile_fail,E0599
    /// # use tether_plugin_sdk::{HandshakeConfig, Plugin};
    /// # const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");
    /// let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    /// let (plugin, again) = plugin.with_host_services(); // no such method on Plugin<WithHost>
    /// ```
    pub fn with_host_services(self) -> (Plugin<WithHost>, Host) {
        let (host, set) = Host::new();
        let plugin = Plugin {
            handshake: self.handshake,
            versions: self.versions,
            max_message_size: self.max_message_size,
            log_level: self.log_level,
            shutdown_grace: self.shutdown_grace,
            worker_threads: self.worker_threads,
            broker: self.broker,
            host_link: Some(set),
            admitted: self.admitted,
            host: PhantomData,
        };
        (plugin, host)
    }
}

impl<H> Plugin<H> {
    /// The plugin's side of go-plugin's broker, for services the plugin offers the host
    /// ([`Broker::accept_and_serve`], then send the id in a response) or dials
    /// ([`Broker::dial`]). Usable once [`Plugin::run`] serves; clones share one broker.
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// Serves `routes` when the host negotiates app protocol `version`.
    ///
    /// Call once per version the plugin supports; the highest version the host also
    /// accepts wins.
    pub fn version(mut self, version: u32, routes: Routes) -> Self {
        self.versions.insert(version, routes);
        self
    }

    /// The largest message the built-in services decode or encode. Set the same limit on
    /// your own services with their generated `max_decoding_message_size`.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How many threads [`Plugin::run`] serves calls on. `1`, the default, is tokio's
    /// current-thread runtime: every call, the broker and the host-service client run on
    /// one thread, with no hand-off between cores, which measured fastest on small
    /// machines (lower latency and more host-service calls per second; see
    /// docs/benchmarks.md). More than one gives a multi-thread runtime with that many workers, for
    /// plugins that do heavy work inside their handlers (blocking work belongs in
    /// `tokio::task::spawn_blocking` either way).
    #[must_use]
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads.max(1);
        self
    }

    /// The most verbose `tracing` level sent to the host (default `INFO`); the transport
    /// crates (`h2`, `hyper`, `tower`, `tonic`) send at most `INFO`.
    pub fn log_level(mut self, level: LevelFilter) -> Self {
        self.log_level = Some(level);
        self
    }

    /// Do not install the JSON log layer as the global `tracing` subscriber; install your
    /// own, for example with [`crate::JsonLogLayer`] on a stderr you duplicated earlier.
    pub fn without_default_logging(mut self) -> Self {
        self.log_level = None;
        self
    }

    /// How long in-flight calls may take to finish after a shutdown request (default 2 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Serves until the host shuts the plugin down: the whole `main` of a plugin.
    ///
    /// Starts a tokio runtime and runs [`Plugin::serve`] on it: by default tokio's
    /// current-thread runtime, every call on the one thread that called `run`; with
    /// [`Plugin::worker_threads`] above 1, a multi-thread runtime with that many workers.
    /// Run by hand (without the host's magic cookie) it prints an explanation on stderr and
    /// returns status 1; started with the cookie set to another value (a host with another
    /// handshake configuration), it says so on stderr and returns status 1 too.
    pub fn run(self) -> ExitCode {
        if let Err(
            err @ (ServeError::NotLaunchedByHost { .. } | ServeError::CookieMismatch { .. }),
        ) = self.check_cookie()
        {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
        let runtime = if self.worker_threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.worker_threads)
                .enable_all()
                .build()
        };
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(source) => {
                eprintln!("{}", ServeError::Runtime { source });
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.serve()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                // stderr may be captured by now; the log line reaches the host either way.
                tracing::error!(%err, "plugin stopped with an error");
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        }
    }

    fn check_cookie(&self) -> Result<(), ServeError> {
        let key = self.handshake.magic_cookie_key.as_ref();
        match std::env::var_os(key) {
            Some(value) if value == self.handshake.magic_cookie_value.as_ref() => Ok(()),
            Some(_) => Err(ServeError::CookieMismatch {
                key: key.to_owned(),
            }),
            None => Err(ServeError::NotLaunchedByHost {
                key: key.to_owned(),
            }),
        }
    }

    /// Serves on the current tokio runtime until the host shuts the plugin down.
    pub async fn serve(mut self) -> Result<(), ServeError> {
        self.check_cookie()?;
        let served: Vec<u32> = self.versions.keys().copied().collect();
        let lowest = *served.first().ok_or(ServeError::NoVersions)?;
        // Unset (or not UTF-8): the host did not say, which is not the same as accepting
        // nothing; the log line below says which it was.
        let host_accepts =
            std::env::var(env::PROTOCOL_VERSIONS).map(|value| parse_versions(&value));
        let negotiated = host_accepts
            .as_deref()
            .ok()
            .and_then(|accepts| negotiate(accepts, &served));
        // Like go-plugin: without a common version answer with our lowest, and let the host
        // report the mismatch; the log line below tells it which versions we serve.
        let version = negotiated.unwrap_or(lowest);
        let routes = self
            .versions
            .remove(&version)
            .ok_or(ServeError::NoVersions)?;

        let socket_dir = SocketDir::new()?;
        // Only the host (and the processes it admits) may connect; everyone else is refused
        // and logged. The socket is removed when the listener is dropped.
        let listener = Listener::bind(
            socket_dir.path(),
            &format!("plugin-{}-", std::process::id()),
            Peer::Processes(self.admitted.clone()),
            "host".into(),
        )
        .map_err(|source| ServeError::Bind {
            path: socket_dir.path().to_owned(),
            source,
        })?;
        let socket_path = listener.path().to_owned();
        if let Some(gid) = socket_group()? {
            tether_transport::share_with_group(&socket_path, gid, 0o660)
                .map_err(|source| ServeError::SocketGroup { source })?;
        }
        // AutoMTLS, when the host asks for it: every connection, the main one and brokered
        // ones both ways, is TLS with the host's certificate and ours, required both ways.
        let identity = auto_mtls()?;
        let tls = identity.as_ref().map(|(_, tls)| tls.clone());
        if let Some(tls) = &tls {
            self.broker.use_tls(tls.clone());
        }
        // Multiplexing, when the host asks for it: yamux on the one connection the host
        // makes, TLS per stream rather than on the socket.
        let multiplex = std::env::var(env::MULTIPLEX_GRPC).is_ok_and(|value| value == "true");
        // A tether host offers frames; taken only on a socket of its own (not multiplexed).
        let frames = !multiplex && std::env::var(env::FRAMES).is_ok_and(|value| value == "1");
        let listener = match (&tls, multiplex) {
            (Some(tls), false) => listener.tls(tls.clone()),
            _ => listener,
        };

        let capture = stdio::capture().map_err(|source| ServeError::Stdio { source })?;
        if let Some(level) = self.log_level {
            // The transport's frame-level events are noise to the host, and costly.
            let quiet = level.min(LevelFilter::INFO);
            let filter = Targets::new()
                .with_default(level)
                .with_targets(["h2", "hyper", "hyper_util", "tower", "tonic"].map(|t| (t, quiet)));
            let layer = JsonLogLayer::new(capture.real_stderr).with_filter(filter);
            // A plugin that installed its own subscriber keeps it.
            let _ =
                tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
        }
        match (&host_accepts, negotiated) {
            (_, Some(_)) => {}
            (Ok(host_accepts), None) => tracing::error!(
                tether_host_versions = format_versions(host_accepts),
                tether_plugin_versions = format_versions(&served),
                "no app protocol version in common with the host: the host accepts [{}], \
                 this plugin serves [{}]",
                format_versions(host_accepts),
                format_versions(&served),
            ),
            (Err(err), None) => tracing::warn!(
                tether_plugin_versions = format_versions(&served),
                "the host did not say which app protocol versions it accepts ({}: {err}); \
                 answering with the lowest this plugin serves, {version}, of [{}]",
                env::PROTOCOL_VERSIONS,
                format_versions(&served),
            ),
        }

        let shutdown = CancellationToken::new();
        watch_signals(&shutdown)?;
        let certificate = identity.map(|(identity, _)| identity.handshake_field());
        // A host that dies stops the plugin too, whichever host it is.
        crate::parent::watch(&shutdown);
        write_handshake(
            capture.real_stdout,
            version,
            &socket_path,
            certificate,
            multiplex,
            frames,
        )?;
        tracing::debug!(version, socket = %socket_path.display(), "plugin serving");

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
            .await;
        let limit = self.max_message_size;
        let routes = routes
            .add_service(health_service)
            .add_service(
                GrpcControllerServer::new(Controller {
                    shutdown: shutdown.clone(),
                })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add_service(AdmissionServer::new(Admission::new(self.admitted.clone())))
            .add_service(
                self.broker
                    .grpc_service()
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                GrpcStdioServer::new(StdioService::new(capture.output, shutdown.clone()))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            );

        let routes = match self.host_link.take() {
            Some(set) => routes.add_service(
                AcceptorServer::new(AcceptorService {
                    broker: self.broker.clone(),
                    set,
                })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            ),
            None => routes,
        };
        // A host that offers frames may move its calls onto a lane: `Lanes` takes it, and
        // the lane is served below with the same services as the socket.
        let (routes, offered_lanes) = match frames {
            true => {
                let (offered, lanes) = tokio::sync::mpsc::channel(1);
                let service = LanesServer::new(LanesService {
                    offered,
                    taken: AtomicBool::new(false),
                });
                (routes.add_service(service), Some(lanes))
            }
            false => (routes, None),
        };
        // Stopping ends the broker stream (so the server can drain) and brokered endpoints.
        let broker = self.broker.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            broker.close();
        });

        let incoming = match multiplex {
            false => listener,
            true => {
                let mut socket = listener;
                let first = tokio::select! {
                    conn = futures_util::StreamExt::next(&mut socket) => conn,
                    () = shutdown.cancelled() => return Ok(()),
                };
                let conn = match first {
                    Some(Ok(conn)) => conn,
                    Some(Err(source)) => return Err(ServeError::Multiplex { source }),
                    None => {
                        return Err(ServeError::Multiplex {
                            source: std::io::Error::other("the socket closed"),
                        });
                    }
                };
                let credentials = conn.credentials();
                let (session, inbound) = Session::new(conn, Role::Plugin, "host");
                let (main, streams) = tokio::sync::mpsc::unbounded_channel();
                self.broker
                    .multiplex(session, inbound, credentials, Some(main));
                let main = Listener::over_streams(
                    streams,
                    credentials,
                    &socket_path,
                    Peer::Processes(self.admitted.clone()),
                    "host".into(),
                );
                match tls {
                    Some(tls) => main.tls(tls),
                    None => main,
                }
                // The socket is removed here: its one connection carries everything.
            }
        };
        let served = calls::served_services(&routes);
        // Connections that open with tether's frames are served here, with the same
        // layers and span as tonic's server gives the others.
        let framed_service = {
            let inner = tower::Layer::layer(&CallLayer::new(served.clone()), routes.clone());
            tower::service_fn(
                move |request: tonic::codegen::http::Request<tonic::body::Body>| {
                    let span = call_span(&request);
                    tracing::Instrument::instrument(
                        tower::ServiceExt::oneshot(inner.clone(), request),
                        span,
                    )
                },
            )
        };
        let lanes = tokio::spawn(match offered_lanes {
            Some(offered) => futures_util::future::Either::Left(lanes::serve_lanes(
                offered,
                framed_service.clone(),
                shutdown.clone(),
            )),
            None => futures_util::future::Either::Right(std::future::ready(())),
        });
        let (incoming, framed) =
            tether_transport::frames::accept(incoming, framed_service, shutdown.clone(), None);
        let server = Server::builder()
            .trace_fn(call_span)
            .layer(CallLayer::new(served))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let served_all = async {
            let result = server.await;
            shutdown.cancel();
            framed.drained().await;
            let _ = lanes.await;
            result
        };
        let grace = self.shutdown_grace;
        let result = tokio::select! {
            result = served_all => result.map_err(|source| ServeError::Serve { source }),
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "calls still running after the shutdown grace period; stopping anyway");
                Ok(())
            }
        };
        health
            .set_service_status(HEALTH_SERVICE, ServingStatus::NotServing)
            .await;
        tracing::debug!("plugin stopped");
        result
    }
}

/// The span a call is served in: with the `trace_id` and `span_id` of its `traceparent`
/// (see [`tether_protocol::CallContext`]), so the plugin's events while serving it carry them; none for a
/// call without one. At `ERROR` level so that it is enabled whatever level the plugin logs
/// at, and its fields reach events of every level.
fn call_span<B>(request: &tonic::codegen::http::Request<B>) -> tracing::Span {
    let trace = request
        .headers()
        .get(tether_protocol::TRACEPARENT_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<tether_protocol::TraceContext>().ok());
    match trace {
        Some(trace) => tracing::error_span!(
            "call",
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id(),
            method = %request.uri().path(),
        ),
        None => tracing::Span::none(),
    }
}

/// SIGINT is ignored (the host owns Ctrl-C); SIGTERM starts a graceful stop.
fn watch_signals(shutdown: &CancellationToken) -> Result<(), ServeError> {
    let runtime = |source| ServeError::Runtime { source };
    // Registering a tokio handler replaces the default action for the rest of the process.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(runtime)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(runtime)?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = interrupt.recv() => tracing::debug!("ignoring SIGINT: the host owns Ctrl-C"),
                Some(()) = terminate.recv() => {
                    tracing::debug!("SIGTERM: shutting down");
                    shutdown.cancel();
                }
                else => return,
            }
        }
    });
    Ok(())
}

fn write_handshake(
    mut stdout: std::fs::File,
    version: u32,
    socket: &Path,
    certificate: Option<String>,
    multiplex: bool,
    frames: bool,
) -> Result<(), ServeError> {
    let line = Handshake {
        core_version: CORE_PROTOCOL_VERSION,
        app_version: version,
        network: Network::Unix,
        address: socket.display().to_string(),
        protocol: match frames {
            true => Protocol::TetherFrames,
            false => Protocol::Grpc,
        },
        server_cert: certificate,
        multiplex,
    };
    // One write, so the host never sees half a line; then the real stdout is closed.
    stdout
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|source| ServeError::Handshake { source })
}

/// The group the host asked sockets to be given to (`PLUGIN_UNIX_SOCKET_GROUP`), if any.
fn socket_group() -> Result<Option<u32>, ServeError> {
    match std::env::var(env::UNIX_SOCKET_GROUP) {
        Ok(group) if !group.is_empty() => tether_transport::resolve_group(&group)
            .map(Some)
            .map_err(|source| ServeError::SocketGroup { source }),
        _ => Ok(None),
    }
}

/// The broker's configuration: brokered sockets where the host says, given to its socket
/// group if it named one (an unknown group fails `serve`, which checks it again).
fn broker_config(admitted: PeerSet) -> BrokerConfig {
    // A tether host that offers frames serves them on its brokered sockets too.
    let frames = std::env::var(env::FRAMES).is_ok_and(|value| value == "1");
    let config =
        BrokerConfig::new("host", broker_socket_dir(), Peer::Processes(admitted)).frames(frames);
    match socket_group() {
        Ok(Some(gid)) => config.socket_group(gid),
        _ => config,
    }
}

/// Our certificate and the TLS to speak, when the host passed its certificate in
/// `PLUGIN_CLIENT_CERT` (AutoMTLS); `None` when it did not (an empty value counts as not).
fn auto_mtls() -> Result<Option<(Identity, MutualTls)>, ServeError> {
    let host_pem = match std::env::var(env::CLIENT_CERT) {
        Ok(pem) if !pem.trim().is_empty() => pem,
        _ => return Ok(None),
    };
    let setup = || {
        let host = tls::certificate_from_pem(&host_pem)?;
        let identity = Identity::generate()?;
        let mutual = MutualTls::new(&identity, host)?;
        Ok((identity, mutual))
    };
    setup()
        .map(Some)
        .map_err(|source| ServeError::AutoMtls { source })
}

/// The directory the socket lives in: the host's (`PLUGIN_UNIX_SOCKET_DIR`), or a private
/// temporary one that is removed when the plugin stops.
enum SocketDir {
    Host(PathBuf),
    Own(tempfile::TempDir),
}

impl SocketDir {
    fn new() -> Result<Self, ServeError> {
        match std::env::var_os(env::UNIX_SOCKET_DIR) {
            Some(dir) if !dir.is_empty() => Ok(SocketDir::Host(dir.into())),
            _ => tempfile::Builder::new()
                .prefix("tether-plugin-")
                .permissions(Permissions::from_mode(0o700))
                .tempdir()
                .map(SocketDir::Own)
                .map_err(|source| ServeError::SocketDir { source }),
        }
    }

    fn path(&self) -> &Path {
        match self {
            SocketDir::Host(path) => path,
            SocketDir::Own(dir) => dir.path(),
        }
    }
}

/// Where brokered sockets go: the host's private directory (`PLUGIN_UNIX_SOCKET_DIR`), else
/// `$TMPDIR` as in go-plugin. Read without side effects, so [`Plugin::new`] stays pure.
fn broker_socket_dir() -> PathBuf {
    match std::env::var_os(env::UNIX_SOCKET_DIR) {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => std::env::temp_dir(),
    }
}
