//! Host services for a plugin in one line.
//!
//! Most hosts depend on the `tether` facade instead, with its `host` feature: it re-exports
//! this crate's items in `tether::host`.
//!
//! ```no_run
//! # async fn demo(plugin: tether_host::PluginClient, plugin2: tether_host::PluginClient,
//! #     services: tonic::service::Routes) -> Result<(), tether_hostconn::Error> {
//! use tether_hostconn::establish_host_services;
//!
//! // `services`: any tonic services, e.g. `Routes::new(FilesServer::from_arc(shared))`;
//! // one implementation can serve every plugin.
//! let host = establish_host_services(&plugin, services.clone()).await?;
//! let host2 = establish_host_services(&plugin2, services).await?;
//! // Keep the handles while the plugins run: dropping one disconnects that plugin.
//! # drop((host, host2)); Ok(()) }
//! ```
//!
//! What the line does: opens an endpoint for this plugin alone on the plugin's broker (a
//! Unix socket in its private socket directory that only the plugin's process may connect
//! to), serves `services` there, and tells the plugin the broker id through the
//! `tether.hostconn.v1.Acceptor` contract. The plugin dials once and reuses that one
//! connection for all its calls. A plugin that did not opt in to host services does not
//! serve the contract: the result is [`Outcome::NotRequested`] and nothing is left running.
//!
//! Identity: every request that reaches `services` through this endpoint carries the
//! [`PluginIdentity`] of the plugin the endpoint was made for, decided by the host, never by
//! anything the plugin writes. Read it with [`PluginIdentity::of`].
//!
//! To test a plugin's logic against real host services without a process, serve them in
//! the test's own process with [`in_process`].

mod local;

pub use local::{InProcess, in_process};

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tether_broker::{BrokerError, ConnectionCounts, Peer, Served};
pub use tether_broker::{Refusal, RefusalHook};
use tether_host::{PluginChannel, PluginClient};
use tether_protocol::hostconn::acceptor_client::AcceptorClient;
use tether_protocol::hostconn::{DisconnectRequest, EstablishRequest};
use tether_transport::activity::ActivityLayer;
use tether_transport::frames::{Broken, serve_framed_after_preface};
use tether_transport::lane::lane;
use tether_transport::{Conn, DescriptorSender};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic::{Code, Request, Status};

/// How long the plugin has to dial the endpoint and answer `Establish`: its broker waits up
/// to 5 s for the offer by default, and this leaves room beyond that.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// How long `close` waits for the plugin to acknowledge `Disconnect`.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections a plugin may hold open to its host-service socket at once, unless
/// [`Options::max_connections`] says otherwise. The SDK dials one and reuses it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// Who made a host-service call: the plugin the endpoint was made for.
///
/// Put in every request's extensions by the endpoint; services read it with
/// [`PluginIdentity::of`]. It cannot be forged by the plugin: it comes from the endpoint the
/// call arrived on, and the connection's peer credentials were checked to be that plugin's
/// process.
///
/// Two identities are equal when name, instance and pid are: the descriptor channel it
/// carries is the plugin's, not part of who it is.
#[derive(Debug, Clone)]
pub struct PluginIdentity {
    name: Arc<str>,
    instance: u64,
    pid: u32,
    descriptors: Option<Arc<DescriptorSender>>,
}

impl PartialEq for PluginIdentity {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.instance, self.pid) == (&other.name, other.instance, other.pid)
    }
}

impl Eq for PluginIdentity {}

impl std::hash::Hash for PluginIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.name, self.instance, self.pid).hash(state);
    }
}

impl PluginIdentity {
    /// The identity of the plugin that made `request`, or a `FAILED_PRECONDITION` status
    /// when the service was not reached through `establish_host_services`.
    pub fn of<T>(request: &Request<T>) -> Result<&PluginIdentity, Status> {
        request.extensions().get::<PluginIdentity>().ok_or_else(|| {
            Status::failed_precondition(
                "this call carries no plugin identity: host services must be served through \
                 tether_hostconn::establish_host_services",
            )
        })
    }

    /// The plugin's name, as the host named it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's name, shared: a clone costs a reference count, not a copy (for labels
    /// put on every call, such as metrics').
    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The plugin's instance number ([`PluginClient::instance`]).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The pid of the calling process (checked to be the plugin's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The host's end of the plugin's descriptor channel
    /// ([`PluginClient::descriptors`]), on which a service hands the plugin an open file,
    /// shared memory or another descriptor. `None` when the plugin has none (served
    /// [`in_process`]).
    pub fn descriptors(&self) -> Option<&Arc<DescriptorSender>> {
        self.descriptors.as_ref()
    }
}

impl std::fmt::Display for PluginIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{} (pid {})", self.name, self.instance, self.pid)
    }
}

/// What [`establish_host_services`] achieved.
#[derive(Debug)]
#[must_use = "dropping the connection disconnects the plugin's host services at once; keep it \
              while the plugin runs"]
pub enum Outcome {
    /// The plugin accepted the services and is connected to them.
    Connected(HostConnection),
    /// The plugin does not take host services (it does not serve the contract); nothing was
    /// left running for it.
    NotRequested,
}

impl Outcome {
    /// Whether the plugin is connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, Outcome::Connected(_))
    }

    /// The connection, if the plugin accepted the services.
    pub fn connection(self) -> Option<HostConnection> {
        match self {
            Outcome::Connected(connection) => Some(connection),
            Outcome::NotRequested => None,
        }
    }

    /// The connection, or [`Error::NotRequested`] for a plugin that does not take host
    /// services: for hosts whose plugins must take them.
    pub fn required(self) -> Result<HostConnection, Error> {
        match self {
            Outcome::Connected(connection) => Ok(connection),
            Outcome::NotRequested => Err(Error::NotRequested),
        }
    }
}

/// Why host services could not be established.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin does not take host services, and the host required it to
    /// ([`Outcome::required`]).
    #[error(
        "the plugin does not take host services (it never opted in with \
         Plugin::with_host_services); rebuild it with host services, or treat \
         Outcome::NotRequested as fine"
    )]
    NotRequested,
    /// The client is attached ([`PluginClient::reattach`]) to a plugin another host started:
    /// host services ride the plugin's broker stream, which only that host has.
    #[error(
        "cannot give host services to plugin `{plugin}`: this host attached to it \
         (PluginClient::reattach) and has no broker stream to it; only the host that started \
         the plugin can serve it host services"
    )]
    Attached {
        /// The plugin's name.
        plugin: String,
    },
    /// The endpoint could not be opened or offered on the plugin's broker.
    #[error("could not offer host services to plugin `{plugin}`: {source}")]
    Offer {
        /// The plugin's name.
        plugin: String,
        /// What the broker said.
        #[source]
        source: BrokerError,
    },
    /// The plugin answered `Establish` with an error (for example, it could not dial).
    #[error("plugin `{plugin}` could not accept host services ({code:?}): {message}")]
    Refused {
        /// The plugin's name.
        plugin: String,
        /// The gRPC status code.
        code: Code,
        /// The plugin's message.
        message: String,
    },
    /// The plugin did not answer `Establish` in time.
    #[error(
        "plugin `{plugin}` did not answer Establish within {timeout:?}; it may be stuck, or its \
         broker stream may be closed"
    )]
    Timeout {
        /// The plugin's name.
        plugin: String,
        /// How long the host waited.
        timeout: Duration,
    },
}

/// The host's side of one plugin's host services. Dropping it (or [`HostConnection::close`])
/// tells the plugin to disconnect and stops the endpoint.
#[derive(Debug)]
pub struct HostConnection {
    plugin: String,
    served: Option<Served>,
    /// The lane, when the plugin took one (dropping it stops serving it).
    lane: Option<LaneServer>,
    /// Boxed: the client is large, and `Outcome` should stay small.
    contract: Box<AcceptorClient<PluginChannel>>,
}

impl HostConnection {
    /// The broker id the endpoint was offered on.
    pub fn broker_id(&self) -> Option<u32> {
        self.served.as_ref().map(Served::id)
    }

    /// The endpoint's socket.
    pub fn address(&self) -> Option<&Path> {
        self.served.as_ref().map(Served::address)
    }

    /// Whether the plugin's calls come over a lane ([`Options::lane`]).
    pub fn on_lane(&self) -> bool {
        self.lane.is_some()
    }

    /// Connections the endpoint accepted from the plugin, and refused from anyone else.
    pub fn connections(&self) -> Option<&ConnectionCounts> {
        self.served.as_ref().map(Served::connections)
    }

    /// Tells the plugin to disconnect (waiting briefly for its answer), then stops the
    /// endpoint and removes its socket. Later calls by the plugin fail with a clear error.
    pub async fn close(mut self) {
        disconnect(&self.plugin, (*self.contract).clone()).await;
        if let Some(served) = self.served.take() {
            served.stop().await;
        }
        if let Some(lane) = self.lane.take() {
            lane.stop().await;
        }
    }
}

impl Drop for HostConnection {
    fn drop(&mut self) {
        let Some(served) = self.served.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (plugin, contract) = (self.plugin.clone(), (*self.contract).clone());
            runtime.spawn(async move { disconnect(&plugin, contract).await });
        }
        drop(served);
    }
}

async fn disconnect(plugin: &str, mut contract: AcceptorClient<PluginChannel>) {
    match tokio::time::timeout(
        DISCONNECT_TIMEOUT,
        contract.disconnect(DisconnectRequest {}),
    )
    .await
    {
        Ok(Ok(_)) => tracing::debug!(plugin, "host services disconnected"),
        Ok(Err(status)) => {
            tracing::debug!(plugin, %status, "the plugin did not acknowledge Disconnect");
        }
        Err(_) => tracing::debug!(plugin, "the plugin did not answer Disconnect in time"),
    }
}

/// Gives `plugin` the host services `services`: the one line of host-service setup.
///
/// Returns [`Outcome::NotRequested`] for a plugin that does not take host services. The
/// returned connection must be kept: dropping it disconnects the plugin.
pub async fn establish_host_services(
    plugin: &PluginClient,
    services: Routes,
) -> Result<Outcome, Error> {
    establish_host_services_with(plugin, services, Options::default()).await
}

/// Optional settings of [`establish_host_services_with`].
#[derive(Clone)]
pub struct Options {
    on_refused: Option<RefusalHook>,
    on_violation: Option<ViolationHook>,
    max_connections: usize,
    lane: bool,
}

/// A connection to a plugin's host services that the host closed because the plugin broke
/// its protocol ([`Options::on_violation`]): frames that are not, or a lane's shared counts
/// forged.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The plugin the connection was made for.
    pub plugin: PluginIdentity,
    /// The host-service socket the connection came through; `None` for the plugin's lane.
    pub socket: Option<PathBuf>,
    /// What the plugin did, in words.
    pub reason: String,
}

/// Called for each [`Violation`], on the task that served the connection: keep it quick.
pub type ViolationHook = Arc<dyn Fn(&Violation) + Send + Sync>;

impl Default for Options {
    fn default() -> Self {
        Options {
            on_refused: None,
            on_violation: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            lane: false,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("on_refused", &self.on_refused.is_some())
            .field("on_violation", &self.on_violation.is_some())
            .field("max_connections", &self.max_connections)
            .field("lane", &self.lane)
            .finish()
    }
}

impl Options {
    /// Offers the plugin a lane ([`tether_transport::lane`]) for its calls to the host's
    /// services: shared memory instead of the socket, where a waiting side keeps looking
    /// for up to 50 us before it sleeps. Calls that follow each other closely then cross
    /// without waking either process, at the price of that spinning CPU on both sides
    /// after each call. Off by default.
    ///
    /// The services, their identity, capability checks, deadlines and audit are the same
    /// on the lane as on the socket. A plugin that cannot take the lane (a Go plugin, one
    /// started without a descriptor channel, one attached to) dials the socket as before.
    #[must_use]
    pub fn lane(mut self, on: bool) -> Self {
        self.lane = on;
        self
    }

    /// Calls `hook` for every connection to the plugin's host-service socket that the
    /// peer-credential check refuses (any process but the plugin's), for example to audit
    /// it. Refusals are always logged (target `tether::broker`) either way. The hook is
    /// also called for the plugin's own connections refused past
    /// [`Options::max_connections`] (target `tether::hostconn`).
    #[must_use]
    pub fn on_refused(mut self, hook: RefusalHook) -> Self {
        self.on_refused = Some(hook);
        self
    }

    /// Calls `hook` for every connection to the host's services (on the socket or the lane)
    /// that the host closed because the plugin broke the protocol, for example to audit
    /// it. Violations are always logged (target `tether::frames`, and `tether::lane` for a
    /// lane's counts) either way. The plugin's calls on that connection fail; the host and
    /// its other plugins go on.
    #[must_use]
    pub fn on_violation(mut self, hook: ViolationHook) -> Self {
        self.on_violation = Some(hook);
        self
    }

    /// How many connections the plugin may hold open to its host-service socket at once
    /// (default [`DEFAULT_MAX_CONNECTIONS`], at least 1): each costs the host a file
    /// descriptor, so a plugin that dials without end would otherwise exhaust the host's.
    /// Past the limit, a new connection is closed at once, logged and passed to the
    /// refusal hook.
    #[must_use]
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.max_connections = limit.max(1);
        self
    }
}

/// A connection to a plugin's host-service endpoint, counted while it is open.
struct Counted {
    conn: Conn<PluginIdentity>,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Counted {
    type ConnectInfo = PluginIdentity;

    fn connect_info(&self) -> PluginIdentity {
        self.conn.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
}

/// The host's side of a plugin's lane: the task serving the host's services on it.
#[derive(Debug)]
struct LaneServer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LaneServer {
    /// Makes a lane, hands the plugin its descriptors on `channel` (their tokens go into
    /// `request`), and serves `service` on the host's side once the plugin starts it.
    async fn offer<S>(
        channel: &DescriptorSender,
        request: &mut EstablishRequest,
        service: S,
        identity: PluginIdentity,
        on_violation: Option<ViolationHook>,
    ) -> Result<LaneServer, String>
    where
        S: tower::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (stream, offer) = lane().map_err(|err| err.to_string())?;
        let hand_over = |fd| channel.send(fd, ESTABLISH_TIMEOUT);
        request.lane_memory = hand_over(offer.memory.as_fd())
            .await
            .map_err(|err| err.to_string())?;
        request.lane_data_bell = hand_over(offer.data_bell.as_fd())
            .await
            .map_err(|err| err.to_string())?;
        request.lane_room_bell = hand_over(offer.room_bell.as_fd())
            .await
            .map_err(|err| err.to_string())?;
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let outcome = serve_framed_after_preface(
                stream,
                service,
                identity.clone(),
                stopping,
                ESTABLISH_TIMEOUT,
            )
            .await;
            match outcome {
                Ok(()) => {}
                Err(broken @ Broken::Protocol(_)) => {
                    if let Some(hook) = on_violation {
                        hook(&Violation {
                            plugin: identity,
                            socket: None,
                            reason: broken.reason().to_owned(),
                        });
                    }
                }
                Err(broken) => {
                    tracing::debug!(target: "tether::hostconn", plugin = %identity.name, reason = %broken, "the plugin's lane closed");
                }
            }
        });
        Ok(LaneServer { stop, task })
    }

    /// Stops serving: calls under way finish first (briefly), then the lane closes.
    async fn stop(mut self) {
        self.stop.cancel();
        let task = &mut self.task;
        if tokio::time::timeout(DISCONNECT_TIMEOUT, task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for LaneServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// [`establish_host_services`] with [`Options`].
pub async fn establish_host_services_with(
    plugin: &PluginClient,
    services: Routes,
    options: Options,
) -> Result<Outcome, Error> {
    let name = plugin.name().to_owned();
    let Some(broker) = plugin.broker() else {
        return Err(Error::Attached { plugin: name });
    };
    let id = broker.next_id();
    let mut listener = broker.accept(id).await.map_err(|source| Error::Offer {
        plugin: name.clone(),
        source,
    })?;
    if let Some(hook) = &options.on_refused {
        listener = listener.on_refused(Arc::clone(hook));
    }
    let (name_arc, instance) = (Arc::<str>::from(name.as_str()), plugin.instance());
    let descriptors = plugin.descriptors().cloned();
    // What a lane needs, kept before the socket's endpoint takes its own.
    let lane_offer = options
        .lane
        .then(|| {
            descriptors
                .clone()
                .map(|channel| (channel, services.clone()))
        })
        .flatten();
    let (socket, limit, pid) = (
        listener.path().to_owned(),
        options.max_connections,
        plugin.pid(),
    );
    let listener_path = socket.clone();
    let open = Arc::new(AtomicUsize::new(0));
    let identify = move |conn: Conn| {
        if open.fetch_add(1, Ordering::Relaxed) >= limit {
            open.fetch_sub(1, Ordering::Relaxed);
            let reason = format!(
                "connection limit reached: plugin `{name_arc}` already has {limit} connections \
                 open to its host-service socket (the limit); this one was closed"
            );
            tracing::warn!(
                target: "tether::hostconn",
                plugin = %name_arc,
                instance,
                socket = %socket.display(),
                limit,
                "{reason}"
            );
            if let Some(hook) = &options.on_refused {
                hook(&Refusal {
                    label: Arc::clone(&name_arc),
                    socket: socket.clone(),
                    credentials: Some(conn.credentials()),
                    expected: Peer::Process(pid),
                    reason: reason.clone(),
                });
            }
            // Dropping `conn` closes it; tonic's accept loop goes on to the next.
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason));
        }
        // The broker's listener admits only the plugin's process (its peer is
        // `Peer::Process(pid)`): a connection that got here has that pid.
        debug_assert_eq!(
            conn.credentials().pid,
            Some(pid),
            "the listener admits the plugin only"
        );
        let identity = PluginIdentity {
            name: Arc::clone(&name_arc),
            instance,
            pid,
            descriptors: descriptors.clone(),
        };
        Ok(Counted {
            conn: conn.with_info(identity),
            open: Arc::clone(&open),
        })
    };
    // Host-service calls count as the plugin's activity: a plugin at work for the host is
    // not idle.
    let activity = Some(plugin.activity().clone());
    let on_violation = options.on_violation.clone().map(|hook| {
        let socket = listener_path;
        Arc::new(move |plugin: &PluginIdentity, broken: &Broken| {
            hook(&Violation {
                plugin: plugin.clone(),
                socket: Some(socket.clone()),
                reason: broken.reason().to_owned(),
            });
        }) as tether_transport::frames::ViolationHook<PluginIdentity>
    });
    let served = Served::start(
        broker,
        id,
        listener,
        identify,
        services,
        activity,
        on_violation,
    );

    let mut request = EstablishRequest {
        broker_id: id,
        ..EstablishRequest::default()
    };
    let lane = match lane_offer {
        Some((channel, lane_services)) => {
            let identity = PluginIdentity {
                name: Arc::from(name.as_str()),
                instance,
                pid,
                descriptors: Some(Arc::clone(&channel)),
            };
            let service = tower::Layer::layer(
                &ActivityLayer::new(Some(plugin.activity().clone())),
                lane_services,
            );
            let on_violation = options.on_violation.clone();
            match LaneServer::offer(&channel, &mut request, service, identity, on_violation).await {
                Ok(lane) => Some(lane),
                Err(reason) => {
                    tracing::warn!(target: "tether::hostconn", plugin = name, %reason, "could not offer the plugin a lane; it uses the socket");
                    None
                }
            }
        }
        None => None,
    };

    let limit = plugin.max_message_size();
    let mut contract = AcceptorClient::new(plugin.channel())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let answer = tokio::time::timeout(ESTABLISH_TIMEOUT, contract.establish(request)).await;
    let failure = match answer {
        Ok(Ok(answer)) => {
            let on_lane = answer.get_ref().lane;
            tracing::debug!(
                plugin = name,
                broker_id = id,
                lane = on_lane,
                "host services established"
            );
            return Ok(Outcome::Connected(HostConnection {
                plugin: name,
                served: Some(served),
                lane: lane.filter(|_| on_lane),
                contract: Box::new(contract),
            }));
        }
        Ok(Err(status)) if status.code() == Code::Unimplemented => None,
        Ok(Err(status)) => Some(Error::Refused {
            plugin: name.clone(),
            code: status.code(),
            message: status.message().to_owned(),
        }),
        Err(_) => Some(Error::Timeout {
            plugin: name.clone(),
            timeout: ESTABLISH_TIMEOUT,
        }),
    };
    // Nothing stays running for a plugin that did not take the services.
    served.stop().await;
    match failure {
        None => {
            tracing::debug!(plugin = name, "the plugin did not request host services");
            Ok(Outcome::NotRequested)
        }
        Some(err) => Err(err),
    }
}
