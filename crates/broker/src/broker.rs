//! [`Broker`]: one side of the shared `plugin.GRPCBroker/StartStream` stream.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tether_protocol::plugin::ConnInfo;
use tether_protocol::plugin::conn_info::Knock;
use tether_protocol::plugin::grpc_broker_client::GrpcBrokerClient;
use tether_protocol::plugin::grpc_broker_server::{GrpcBroker, GrpcBrokerServer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::BrokerError;
use crate::serve::Served;
use tether_transport::mux::{self, MuxStream, Session};
use tether_transport::tls::MutualTls;
use tether_transport::{Link, Listener, Peer, PeerCredentials};

/// go-plugin's dial timeout, and how long it keeps an unclaimed connection info.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connection infos kept unclaimed at once; more are dropped (and logged), so a
/// peer flooding the stream cannot grow the buffer without bound.
pub(crate) const MAX_UNCLAIMED: usize = 1024;

/// Outgoing connection infos queued before the stream is open.
const OUTGOING_QUEUE: usize = 64;

/// How a [`Broker`] listens and dials.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    peer_name: Arc<str>,
    socket_dir: PathBuf,
    peer: Peer,
    confine_dialed: bool,
    dial_timeout: Duration,
    unclaimed_ttl: Duration,
    tls: Option<MutualTls>,
    socket_group: Option<u32>,
    frames: bool,
}

impl BrokerConfig {
    /// A broker whose sockets live in `socket_dir`, that accepts connections only from
    /// `peer` and dials only sockets `peer` serves. `peer_name` names the other side in logs
    /// and errors: the plugin's name on the host, `"host"` in a plugin.
    pub fn new(peer_name: impl Into<Arc<str>>, socket_dir: impl Into<PathBuf>, peer: Peer) -> Self {
        BrokerConfig {
            peer_name: peer_name.into(),
            socket_dir: socket_dir.into(),
            peer,
            confine_dialed: false,
            dial_timeout: DEFAULT_TIMEOUT,
            unclaimed_ttl: DEFAULT_TIMEOUT,
            tls: None,
            socket_group: None,
            frames: false,
        }
    }

    /// Dial with tether's frames instead of HTTP/2 (off by default): only when the other
    /// side is known to be a tether peer that serves them (a tether host that offered them,
    /// a tether plugin that took them). Brokered servers accept both either way.
    pub fn frames(mut self, on: bool) -> Self {
        self.frames = on;
        self
    }

    /// Gives every brokered socket to group `gid`, mode 0660 (go-plugin's
    /// `PLUGIN_UNIX_SOCKET_GROUP`). Peer credentials are still checked on every connection.
    pub fn socket_group(mut self, gid: u32) -> Self {
        self.socket_group = Some(gid);
        self
    }

    /// Speaks TLS on every brokered connection, accepted and dialed (go-plugin's AutoMTLS):
    /// the other side must present the certificate `tls` pins. Also settable later, once,
    /// with [`Broker::use_tls`].
    pub fn tls(mut self, tls: MutualTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Dial only addresses directly inside the socket directory (the host's rule for the
    /// plugin's private directory). Off by default: a plugin dials wherever its host listens.
    pub fn confine_dialed_addresses(mut self, confine: bool) -> Self {
        self.confine_dialed = confine;
        self
    }

    /// How long `dial` waits for the other side's connection info (default 5 s).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// How long a received connection info waits to be dialed before it is dropped
    /// (default 5 s).
    pub fn unclaimed_ttl(mut self, ttl: Duration) -> Self {
        self.unclaimed_ttl = ttl;
        self
    }
}

/// One side of go-plugin's broker: hands out ids, listens for the other side
/// ([`Broker::accept`]) and connects to what the other side offers ([`Broker::dial`]).
///
/// Cheap to clone; every clone is the same broker. Attach it to the stream once: on the
/// host with [`Broker::start_stream`], in a plugin by serving [`Broker::grpc_service`].
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    config: BrokerConfig,
    next_id: AtomicU32,
    outgoing: mpsc::Sender<ConnInfo>,
    /// The receiving half of `outgoing`, until the stream takes it.
    unsent: Mutex<Option<mpsc::Receiver<ConnInfo>>>,
    pending: Mutex<Pending>,
    closed: CancellationToken,
    /// TLS for brokered connections, from the config or set once later.
    tls: OnceLock<MutualTls>,
    /// go-plugin's multiplexed mode, once set.
    mux: OnceLock<Arc<Multiplexed>>,
}

/// go-plugin's multiplexed mode (1.6+): brokered connections are streams of the main
/// connection, arranged by a knock on the broker stream instead of a connection info.
struct Multiplexed {
    session: Session,
    /// The other side's, which every stream shares.
    credentials: PeerCredentials,
    routes: Mutex<MuxRoutes>,
    /// Knocks this side sent, waiting for their acknowledgement.
    acks: Mutex<HashMap<u32, oneshot::Sender<ConnInfo>>>,
    /// One dial at a time: the other side hands its next stream to the id knocked last.
    dialing: tokio::sync::Mutex<()>,
}

/// Where arriving streams go.
#[derive(Default)]
struct MuxRoutes {
    /// The listener of each accepted id.
    listeners: HashMap<u32, mpsc::UnboundedSender<MuxStream>>,
    /// Ids knocked for and acknowledged, oldest first: each takes the next stream.
    knocked: VecDeque<u32>,
    /// Streams that arrive without a knock: the plugin's main server; none on the host.
    main: Option<mpsc::UnboundedSender<MuxStream>>,
}

/// Connection infos that arrived before anyone dialed them, and dials waiting for theirs.
#[derive(Default)]
struct Pending {
    arrived: HashMap<u32, (ConnInfo, Instant)>,
    waiting: HashMap<u32, oneshot::Sender<ConnInfo>>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker not yet attached to a stream. Connection infos sent before the stream
    /// opens are queued.
    pub fn new(config: BrokerConfig) -> Self {
        let (outgoing, unsent) = mpsc::channel(OUTGOING_QUEUE);
        let tls = OnceLock::new();
        if let Some(config_tls) = &config.tls {
            let _ = tls.set(config_tls.clone());
        }
        Broker {
            shared: Arc::new(Shared {
                config,
                next_id: AtomicU32::new(1),
                outgoing,
                unsent: Mutex::new(Some(unsent)),
                pending: Mutex::default(),
                closed: CancellationToken::new(),
                tls,
                mux: OnceLock::new(),
            }),
        }
    }

    /// Host side: opens `StartStream` on the plugin's `channel` in the background and runs
    /// the broker on it until either side closes. The task is returned so its owner can
    /// abort it; it also ends on its own when the stream ends.
    pub fn start_stream(
        &self,
        channel: impl Into<Link>,
        max_message_size: usize,
    ) -> JoinHandle<()> {
        let channel: Link = channel.into();
        let broker = self.clone();
        let unsent = self.take_unsent();
        tokio::spawn(async move {
            let Some(unsent) = unsent else {
                tracing::warn!(target: "tether::broker", plugin = %broker.peer_name(), "the broker is already attached to a stream");
                return;
            };
            let closed = broker.shared.closed.clone();
            let mut client = GrpcBrokerClient::new(channel)
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size);
            let outgoing = ReceiverStream::new(unsent).take_until(closed.clone().cancelled_owned());
            // A Go plugin sends no response headers until it has something to send, so
            // this waits in the background.
            let opened = tokio::select! {
                () = closed.cancelled() => return,
                opened = client.start_stream(outgoing) => opened,
            };
            match opened {
                Ok(response) => broker.receive_all(response.into_inner()).await,
                Err(status) => tracing::debug!(
                    target: "tether::broker",
                    plugin = %broker.peer_name(),
                    %status,
                    "the broker stream could not be opened"
                ),
            }
            broker.close();
        })
    }

    /// Plugin side: the `plugin.GRPCBroker` service to serve next to the plugin's own. The
    /// host opens its stream once; a second `StartStream` is refused.
    pub fn grpc_service(&self) -> GrpcBrokerServer<BrokerService> {
        GrpcBrokerServer::new(BrokerService {
            broker: self.clone(),
        })
    }

    /// Speaks TLS on every brokered connection from now on (a plugin learns the host's
    /// certificate only when it starts serving). Returns `false`, changing nothing, if TLS
    /// was already set.
    pub fn use_tls(&self, tls: MutualTls) -> bool {
        self.shared.tls.set(tls).is_ok()
    }

    /// Whether brokered connections speak TLS.
    pub fn uses_tls(&self) -> bool {
        self.shared.tls.get().is_some()
    }

    /// Switches to go-plugin's multiplexed mode (1.6+) on `session`, the main connection:
    /// from now on [`Broker::accept`] listens for knocked streams and [`Broker::dial`] knocks
    /// and opens a stream, instead of sockets and connection infos. `inbound` are the
    /// streams the other side opens, all from the process with `credentials`; those that
    /// arrive without a knock go to `main` (a plugin's main server), or are closed (a host
    /// has none). Returns `false`, changing nothing, if the broker is already multiplexed.
    pub fn multiplex(
        &self,
        session: Session,
        mut inbound: mux::Inbound,
        credentials: PeerCredentials,
        main: Option<mpsc::UnboundedSender<MuxStream>>,
    ) -> bool {
        let mux = Arc::new(Multiplexed {
            session,
            credentials,
            routes: Mutex::new(MuxRoutes {
                main,
                ..MuxRoutes::default()
            }),
            acks: Mutex::default(),
            dialing: tokio::sync::Mutex::new(()),
        });
        if self.shared.mux.set(Arc::clone(&mux)).is_err() {
            return false;
        }
        let peer = Arc::clone(&self.shared.config.peer_name);
        let closed = self.shared.closed.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = closed.cancelled() => return,
                    stream = inbound.recv() => stream,
                };
                let Some(stream) = stream else { return };
                mux.route(stream, &peer);
            }
        });
        true
    }

    /// Whether brokered connections are streams of the main connection.
    pub fn is_multiplexed(&self) -> bool {
        self.shared.mux.get().is_some()
    }

    /// The next unused broker id, counting from 1.
    pub fn next_id(&self) -> u32 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Listens on a new socket in the socket directory and tells the other side that `id`
    /// is served there. Only the configured peer may connect; others are refused and
    /// logged with their pid.
    pub async fn accept(&self, id: u32) -> Result<Listener, BrokerError> {
        let config = &self.shared.config;
        let closed = || BrokerError::Closed {
            peer: self.peer_name().to_owned(),
        };
        if self.is_closed() {
            return Err(closed());
        }
        if let Some(mux) = self.shared.mux.get() {
            let (sender, streams) = mpsc::unbounded_channel();
            lock(&mux.routes).listeners.insert(id, sender);
            let listener = Listener::over_streams(
                streams,
                mux.credentials,
                format!("multiplexed stream for broker id {id}"),
                config.peer.clone(),
                Arc::clone(&config.peer_name),
            );
            tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, "accepting knocked streams");
            return Ok(match self.shared.tls.get() {
                Some(tls) => listener.tls(tls.clone()),
                None => listener,
            });
        }
        let prefix = format!("broker-{}-{id}-", std::process::id());
        let listener = Listener::bind(
            &config.socket_dir,
            &prefix,
            config.peer.clone(),
            Arc::clone(&config.peer_name),
        )
        .map_err(|source| BrokerError::Listen {
            peer: self.peer_name().to_owned(),
            id,
            socket_dir: config.socket_dir.clone(),
            source,
        })?;
        if let Some(gid) = config.socket_group {
            tether_transport::share_with_group(listener.path(), gid, 0o660).map_err(|err| {
                BrokerError::Listen {
                    peer: self.peer_name().to_owned(),
                    id,
                    socket_dir: config.socket_dir.clone(),
                    source: std::io::Error::other(err.to_string()),
                }
            })?;
        }
        let listener = match self.shared.tls.get() {
            Some(tls) => listener.tls(tls.clone()),
            None => listener,
        };
        let info = ConnInfo {
            service_id: id,
            network: "unix".to_owned(),
            address: listener.path().display().to_string(),
            knock: None,
        };
        tokio::select! {
            biased;
            () = self.shared.closed.cancelled() => return Err(closed()),
            sent = self.shared.outgoing.send(info) => sent.map_err(|_| closed())?,
        }
        tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, socket = %listener.path().display(), "accepting");
        Ok(listener)
    }

    /// [`Broker::accept`], then serves `routes` on the socket until the returned [`Served`]
    /// is stopped or dropped, or the broker closes.
    pub async fn accept_and_serve(
        &self,
        id: u32,
        routes: tonic::service::Routes,
    ) -> Result<Served, BrokerError> {
        let listener = self.accept(id).await?;
        Ok(Served::start(self, id, listener, Ok, routes, None, None))
    }

    /// Waits (up to the dial timeout) for the other side to offer `id`, then connects to it,
    /// checking that the configured peer serves the socket. The channel reconnects on its
    /// own, with the same check, if the connection drops; dial once and reuse it.
    pub async fn dial(&self, id: u32) -> Result<Link, BrokerError> {
        let peer = || self.peer_name().to_owned();
        if self.shared.mux.get().is_some() {
            return self.dial_multiplexed(id).await.map(Link::from);
        }
        let receiver = {
            let mut pending = self.pending();
            pending.purge(self.shared.config.unclaimed_ttl, self.peer_name());
            if let Some((info, _)) = pending.arrived.remove(&id) {
                Ok(info)
            } else if pending.waiting.get(&id).is_some_and(|w| !w.is_closed()) {
                return Err(BrokerError::DialInProgress { peer: peer(), id });
            } else {
                let (sender, receiver) = oneshot::channel();
                pending.waiting.insert(id, sender);
                Err(receiver)
            }
        };
        let info = match receiver {
            Ok(info) => info,
            Err(receiver) => {
                let timeout = self.shared.config.dial_timeout;
                let outcome = tokio::select! {
                    biased;
                    () = self.shared.closed.cancelled() => Err(BrokerError::Closed { peer: peer() }),
                    received = tokio::time::timeout(timeout, receiver) => match received {
                        Ok(Ok(info)) => Ok(info),
                        Ok(Err(_)) => Err(BrokerError::Closed { peer: peer() }),
                        Err(_) => Err(BrokerError::DialTimeout { peer: peer(), id, timeout }),
                    },
                };
                if outcome.is_err() {
                    self.pending().waiting.remove(&id);
                }
                outcome?
            }
        };
        self.connect(id, info).await
    }

    /// Stops the broker: the stream to the other side ends, waiting dials fail with
    /// [`BrokerError::Closed`], and endpoints served with [`Broker::accept_and_serve`] stop.
    pub fn close(&self) {
        if !self.shared.closed.is_cancelled() {
            tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), "broker closed");
        }
        self.shared.closed.cancel();
    }

    /// Whether the broker is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Resolves when the broker closes.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// The name of the other side, for logs and errors.
    pub fn peer_name(&self) -> &str {
        &self.shared.config.peer_name
    }

    /// Where this broker's sockets live.
    pub fn socket_dir(&self) -> &Path {
        &self.shared.config.socket_dir
    }

    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.shared.closed
    }

    fn take_unsent(&self) -> Option<mpsc::Receiver<ConnInfo>> {
        self.shared
            .unsent
            .lock()
            .ok()
            .and_then(|mut unsent| unsent.take())
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // The lock is never held across a panic-prone call; recover the data if it was.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the receiving half of the stream until it ends or the broker closes.
    async fn receive_all(
        &self,
        mut incoming: impl Stream<Item = Result<ConnInfo, Status>> + Unpin,
    ) {
        loop {
            let message = tokio::select! {
                () = self.shared.closed.cancelled() => return,
                message = incoming.next() => message,
            };
            match message {
                Some(Ok(info)) => self.receive(info),
                Some(Err(status)) => {
                    tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), %status, "the broker stream failed");
                    return;
                }
                None => return,
            }
        }
    }

    /// Hands a received connection info to its waiting dial, or keeps it for a later one.
    pub(crate) fn receive(&self, info: ConnInfo) {
        let id = info.service_id;
        if let Some(knock) = &info.knock {
            let Some(mux) = self.shared.mux.get() else {
                tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, "ignoring a multiplexing knock: this connection is not multiplexed");
                return;
            };
            if knock.ack {
                match lock(&mux.acks).remove(&id) {
                    Some(waiter) => {
                        let _ = waiter.send(info);
                    }
                    None => {
                        tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, "an acknowledgement of a knock nobody waits for")
                    }
                }
            } else if knock.knock {
                let error = mux.knocked(id);
                if !error.is_empty() {
                    tracing::warn!(target: "tether::broker", plugin = %self.peer_name(), id, "refused a knock: {error}");
                }
                let ack = ConnInfo {
                    service_id: id,
                    network: String::new(),
                    address: String::new(),
                    knock: Some(Knock {
                        knock: true,
                        ack: true,
                        error,
                    }),
                };
                if self.shared.outgoing.try_send(ack).is_err() {
                    tracing::warn!(target: "tether::broker", plugin = %self.peer_name(), id, "could not acknowledge a knock: the broker stream is closed or full");
                }
            }
            return;
        }
        let mut pending = self.pending();
        let info = match pending.waiting.remove(&id) {
            Some(waiter) => match waiter.send(info) {
                Ok(()) => return,
                // The dial gave up a moment ago: keep the info like any other.
                Err(info) => info,
            },
            None => info,
        };
        pending.purge(self.shared.config.unclaimed_ttl, self.peer_name());
        if pending.arrived.len() >= MAX_UNCLAIMED {
            tracing::warn!(
                target: "tether::broker",
                plugin = %self.peer_name(),
                id,
                "dropping a connection info: {MAX_UNCLAIMED} are already waiting unclaimed"
            );
            return;
        }
        if pending.arrived.insert(id, (info, Instant::now())).is_some() {
            tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, "a newer connection info replaced an unclaimed one");
        }
    }

    /// The socket an offered connection info names, if this broker may dial it: a `unix`
    /// address, directly inside the socket directory when dialed addresses are confined.
    pub(crate) fn check_offer(&self, id: u32, info: ConnInfo) -> Result<PathBuf, BrokerError> {
        let config = &self.shared.config;
        let peer = || self.peer_name().to_owned();
        if info.network != "unix" {
            return Err(BrokerError::UnsupportedNetwork {
                peer: peer(),
                id,
                network: info.network,
                address: info.address,
            });
        }
        if !config.confine_dialed {
            return Ok(PathBuf::from(info.address));
        }
        tether_transport::address_in_dir(&info.address, &config.socket_dir).ok_or_else(|| {
            BrokerError::AddressOutsideSocketDir {
                peer: peer(),
                id,
                address: info.address,
                socket_dir: config.socket_dir.clone(),
            }
        })
    }

    /// Checks an offered connection info and connects to it.
    async fn connect(&self, id: u32, info: ConnInfo) -> Result<Link, BrokerError> {
        let config = &self.shared.config;
        let peer = || self.peer_name().to_owned();
        let path = self.check_offer(id, info)?;
        let tls = self.shared.tls.get().cloned();
        let failed = |source| BrokerError::Connect {
            peer: peer(),
            id,
            source,
        };
        let channel: Link = match config.frames {
            true => tether_transport::connect_framed(
                &path,
                config.peer.clone(),
                tls.as_ref(),
                &format!("{} (broker id {id})", self.peer_name()),
            )
            .await
            .map_err(failed)?
            .into(),
            false => tether_transport::connect_with(&path, config.peer.clone(), tls)
                .await
                .map_err(failed)?
                .into(),
        };
        tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, socket = %path.display(), "dialed");
        Ok(channel)
    }
}

impl Broker {
    /// `dial` in multiplexed mode: a channel whose every connection is a knock for `id`,
    /// its acknowledgement, and a new stream.
    async fn dial_multiplexed(&self, id: u32) -> Result<Channel, BrokerError> {
        let broker = self.clone();
        let open = move || {
            let broker = broker.clone();
            async move {
                broker
                    .knock_and_open(id)
                    .await
                    .map_err(std::io::Error::other)
            }
        };
        let tls = self.shared.tls.get().cloned();
        let channel = tether_transport::channel_over(
            format!("multiplexed stream for broker id {id}"),
            open,
            tls,
        )
        .await
        .map_err(|source| BrokerError::Connect {
            peer: self.peer_name().to_owned(),
            id,
            source,
        })?;
        tracing::debug!(target: "tether::broker", plugin = %self.peer_name(), id, "dialed a multiplexed stream");
        Ok(channel)
    }

    /// Knocks for `id`, waits for the acknowledgement, and opens the stream the other side
    /// then hands to `id`.
    async fn knock_and_open(&self, id: u32) -> Result<MuxStream, BrokerError> {
        let peer = || self.peer_name().to_owned();
        let mux = self
            .shared
            .mux
            .get()
            .ok_or_else(|| BrokerError::Closed { peer: peer() })?;
        let _one_at_a_time = mux.dialing.lock().await;
        let (sender, acked) = oneshot::channel();
        lock(&mux.acks).insert(id, sender);
        let knock = ConnInfo {
            service_id: id,
            network: String::new(),
            address: String::new(),
            knock: Some(Knock {
                knock: true,
                ack: false,
                error: String::new(),
            }),
        };
        let timeout = self.shared.config.dial_timeout;
        let acknowledged = tokio::select! {
            biased;
            () = self.shared.closed.cancelled() => Err(BrokerError::Closed { peer: peer() }),
            acked = async {
                self.shared.outgoing.send(knock).await.map_err(|_| BrokerError::Closed { peer: peer() })?;
                tokio::time::timeout(timeout, acked).await.map_err(|_| BrokerError::Knock {
                    peer: peer(),
                    id,
                    reason: format!("no acknowledgement within {timeout:?}"),
                })?.map_err(|_| BrokerError::Closed { peer: peer() })
            } => acked,
        };
        let acknowledged = match acknowledged {
            Ok(info) => info,
            Err(err) => {
                lock(&mux.acks).remove(&id);
                return Err(err);
            }
        };
        let refused = acknowledged
            .knock
            .map(|knock| knock.error)
            .filter(|error| !error.is_empty());
        if let Some(reason) = refused {
            return Err(BrokerError::Knock {
                peer: peer(),
                id,
                reason,
            });
        }
        mux.session
            .open()
            .await
            .map_err(|source| BrokerError::Knock {
                peer: peer(),
                id,
                reason: format!("the acknowledged stream could not be opened: {source}"),
            })
    }
}

impl Multiplexed {
    /// A knock for `id` arrived: the next stream goes to its listener. Returns the error
    /// to acknowledge it with: empty when there is a listener.
    fn knocked(&self, id: u32) -> String {
        let mut routes = lock(&self.routes);
        match routes.listeners.get(&id) {
            Some(listener) if !listener.is_closed() => {
                routes.knocked.push_back(id);
                String::new()
            }
            _ => format!("no listener for id {id}"),
        }
    }

    /// Hands an arriving stream to the id knocked for first, or to the main server.
    fn route(&self, stream: MuxStream, peer: &str) {
        let mut routes = lock(&self.routes);
        match routes.knocked.pop_front() {
            Some(id) => {
                let delivered = routes
                    .listeners
                    .get(&id)
                    .is_some_and(|listener| listener.send(stream).is_ok());
                if !delivered {
                    routes.listeners.remove(&id);
                    tracing::debug!(target: "tether::broker", plugin = %peer, id, "a knocked stream arrived after its listener closed");
                }
            }
            None => match &routes.main {
                Some(main) => {
                    let _ = main.send(stream);
                }
                None => {
                    tracing::warn!(target: "tether::broker", plugin = %peer, "closed a stream the other side opened without a knock")
                }
            },
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The locks are never held across a panic-prone call; recover the data if one was.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The synchronous halves of `dial`, for tests and the fuzz targets (see `crate::fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
impl Broker {
    /// What `dial` does before it waits: registers a waiter for `id`.
    pub(crate) fn wait_for(&self, id: u32) -> oneshot::Receiver<ConnInfo> {
        let (sender, receiver) = oneshot::channel();
        self.pending().waiting.insert(id, sender);
        receiver
    }

    /// What `dial` does when the info already arrived: takes it.
    pub(crate) fn take_arrived(&self, id: u32) -> Option<ConnInfo> {
        self.pending().arrived.remove(&id).map(|(info, _)| info)
    }

    /// How many connection infos wait unclaimed.
    pub(crate) fn unclaimed(&self) -> usize {
        self.pending().arrived.len()
    }
}

impl Pending {
    /// Drops connection infos nobody dialed within `ttl`.
    fn purge(&mut self, ttl: Duration, peer: &str) {
        self.arrived.retain(|id, (_, at)| {
            let keep = at.elapsed() < ttl;
            if !keep {
                tracing::debug!(target: "tether::broker", plugin = %peer, id, "dropping a connection info nobody dialed within {ttl:?}");
            }
            keep
        });
        self.waiting.retain(|_, waiter| !waiter.is_closed());
    }
}

type ConnInfoStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

/// `plugin.GRPCBroker` on the plugin side; from [`Broker::grpc_service`].
#[derive(Debug)]
pub struct BrokerService {
    broker: Broker,
}

#[tonic::async_trait]
impl GrpcBroker for BrokerService {
    type StartStreamStream = ConnInfoStream;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let Some(unsent) = self.broker.take_unsent() else {
            return Err(Status::failed_precondition(
                "the broker stream is already open; it is opened once per plugin",
            ));
        };
        let broker = self.broker.clone();
        let incoming = request.into_inner();
        tokio::spawn(async move {
            broker.receive_all(incoming).await;
            broker.close();
        });
        let stream = ReceiverStream::new(unsent)
            .map(Ok)
            .take_until(self.broker.shared.closed.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
