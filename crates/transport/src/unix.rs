//! The Unix-socket transport under the broker, and the host's main connection: who may be on
//! the other end of a socket ([`Peer`]), connecting with that check on every connection
//! ([`connect`]), listening with it on every accepted connection ([`Listener`]), and the
//! check that an address lies directly in a socket directory ([`address_in_dir`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tempfile::NamedTempFile;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::either::Either;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::mux::{self, MuxStream, Session};
use crate::tls::{self, MutualTls};

/// How long a peer that connected has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a connection runs on: a socket of its own, or a stream of a multiplexed one.
type Raw = Either<UnixStream, MuxStream>;

/// A connection's byte stream: plain, or TLS when AutoMTLS is on.
type Io = Either<Raw, Box<tokio_rustls::TlsStream<Raw>>>;

/// Who may be on the other end of a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Exactly this process: the host's view of the plugin it spawned.
    Process(u32),
    /// Any of a set of processes that can grow: a plugin's view of its host (the process
    /// that started it) and of the processes that host admits later.
    Processes(PeerSet),
    /// Any process of the same user. Weaker than the others: on a machine where plugins run
    /// as the host's user, another plugin is of the same user.
    SameUser,
}

impl Peer {
    /// Whether a process with these credentials is this peer.
    pub fn admits(&self, credentials: &PeerCredentials) -> bool {
        match self {
            Peer::Process(pid) => credentials.pid == Some(*pid),
            Peer::Processes(set) => credentials.pid.is_some_and(|pid| set.contains(pid)),
            Peer::SameUser => credentials.uid == rustix::process::getuid().as_raw(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Process(pid) => write!(f, "pid {pid}"),
            Peer::Processes(set) => {
                let pids: Vec<String> = set.pids().iter().map(u32::to_string).collect();
                write!(f, "pid {}", pids.join(" or "))
            }
            Peer::SameUser => write!(f, "uid {}", rustix::process::getuid().as_raw()),
        }
    }
}

/// A set of pids, shared: every listener and dialer holding a clone sees what is admitted
/// later. Pids are only added; a process that ends takes its pid with it only in the sense
/// that a new process with that pid would need to be admitted again by the host to be
/// trusted, so the host should admit only processes it keeps track of.
#[derive(Debug, Clone, Default)]
pub struct PeerSet(Arc<std::sync::RwLock<std::collections::BTreeSet<u32>>>);

impl PeerSet {
    /// A set holding `pid`.
    pub fn of(pid: u32) -> Self {
        let set = PeerSet::default();
        set.admit(pid);
        set
    }

    /// Adds `pid`.
    pub fn admit(&self, pid: u32) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pid);
    }

    /// Whether `pid` is in the set.
    pub fn contains(&self, pid: u32) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&pid)
    }

    /// The pids in the set, in order.
    pub fn pids(&self) -> Vec<u32> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

impl PartialEq for PeerSet {
    fn eq(&self, other: &Self) -> bool {
        self.pids() == other.pids()
    }
}

impl Eq for PeerSet {}

/// The kernel's word (`SO_PEERCRED`) on the process at the other end of a connection, taken
/// when it connected. It is also the connection info tonic puts in each request's
/// extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's pid in this process's pid namespace, if the kernel could translate it.
    pub pid: Option<u32>,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

impl PeerCredentials {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<Self> {
        PeerCredentials::of_socket(std::os::fd::AsFd::as_fd(stream))
    }

    /// The credentials of the process at the other end of the Unix socket `socket`; for a
    /// socket pair, of the process that made the pair.
    pub fn of_socket(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED writes a `ucred`, at most `len` bytes of it, into `cred`.
        let done = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PeerCredentials {
            // 0: the peer is outside this process's pid namespace.
            pid: u32::try_from(cred.pid).ok().filter(|pid| *pid != 0),
            uid: cred.uid,
            gid: cred.gid,
        })
    }
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid} (uid {})", self.uid),
            None => write!(f, "an unknown pid (uid {})", self.uid),
        }
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be reached.
    #[error("could not connect to {address}: {source}")]
    Io {
        /// The socket path.
        address: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Somebody else serves the socket.
    #[error("{address} is served by {found}, not by {expected}")]
    WrongPeer {
        /// The socket path.
        address: String,
        /// Who should serve it.
        expected: Peer,
        /// Who does.
        found: PeerCredentials,
    },
    /// The TLS handshake failed (AutoMTLS): the peer does not speak TLS, or presented
    /// another certificate, or refused ours.
    #[error("TLS with {address} failed: {reason}")]
    Tls {
        /// The socket path.
        address: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The HTTP/2 connection could not be set up.
    #[error("could not open a gRPC connection on {address}: {source}")]
    Channel {
        /// The socket path.
        address: String,
        /// What tonic said.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the socket at `path` and checks that `peer` serves it.
async fn socket_checked(path: &Path, peer: Peer) -> Result<UnixStream, ConnectError> {
    let address = || path.display().to_string();
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Io {
            address: address(),
            source,
        })?;
    let found = PeerCredentials::of(&stream).map_err(|source| ConnectError::Io {
        address: address(),
        source,
    })?;
    if !peer.admits(&found) {
        return Err(ConnectError::WrongPeer {
            address: address(),
            expected: peer,
            found,
        });
    }
    Ok(stream)
}

/// Speaks TLS over `raw` as the dialing side when `tls` is given.
async fn secure(address: &str, raw: Raw, tls: Option<&MutualTls>) -> Result<Io, ConnectError> {
    let Some(tls) = tls else {
        return Ok(Either::Left(raw));
    };
    let handshake = tls.connector().connect(MutualTls::server_name(), raw);
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectError::Tls {
            address: address.to_owned(),
            reason: format!(
                "the peer did not complete the TLS handshake within \
                 {TLS_HANDSHAKE_TIMEOUT:?}: it does not speak TLS"
            ),
        })?
        .map_err(|err| ConnectError::Tls {
            address: address.to_owned(),
            reason: tls::explain(&err),
        })?;
    Ok(Either::Right(Box::new(stream.into())))
}

/// Connects to the socket at `path`, checks that `peer` serves it, and speaks TLS over it
/// when `tls` is given.
async fn connect_checked(
    path: &Path,
    peer: Peer,
    tls: Option<&MutualTls>,
) -> Result<Io, ConnectError> {
    let stream = socket_checked(path, peer).await?;
    secure(&path.display().to_string(), Either::Left(stream), tls).await
}

/// Connects to the socket at `path`, checks that `peer` serves it, and runs yamux over it
/// as the host (go-plugin's multiplexing): the session opens streams to the plugin, the
/// returned [`mux::Inbound`] yields the streams the plugin opens, and the credentials are
/// the plugin's, which its streams share. `label` names the plugin in logs.
pub async fn connect_multiplexed(
    path: &Path,
    peer: Peer,
    label: &str,
) -> Result<(Session, mux::Inbound, PeerCredentials), ConnectError> {
    let stream = socket_checked(path, peer).await?;
    let credentials = PeerCredentials::of(&stream).map_err(|source| ConnectError::Io {
        address: path.display().to_string(),
        source,
    })?;
    let (session, inbound) = Session::new(stream, mux::Role::Host, label);
    Ok((session, inbound, credentials))
}

/// A gRPC channel whose connections are streams from `open` (streams of a multiplexed
/// connection), speaking TLS on each when `tls` is given. The first stream is opened before
/// this returns, so a failure is an error here, not on the first call. `address` names the
/// connection in errors.
pub async fn channel_over<F, Fut>(
    address: String,
    open: F,
    tls: Option<MutualTls>,
) -> Result<Channel, ConnectError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<MuxStream>> + Send + 'static,
{
    let stream = open().await.map_err(|source| ConnectError::Io {
        address: address.clone(),
        source,
    })?;
    let first = secure(&address, Either::Right(stream), tls.as_ref()).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let open = Arc::new(open);
    let name = address.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.lock().ok().and_then(|mut first| first.take());
        let open = Arc::clone(&open);
        let tls = tls.clone();
        let name = name.clone();
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => {
                    let raw = Either::Right(open().await?);
                    secure(&name, raw, tls.as_ref())
                        .await
                        .map_err(io::Error::other)?
                }
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://tether.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Channel { address, source })
}

/// A gRPC channel to the socket at `path`. Every connection the channel makes (the first,
/// and any reconnection) is checked to be served by `peer`; the first is made before this
/// returns, so a wrong peer or a missing socket is an error here, not on the first call.
pub async fn connect(path: &Path, peer: Peer) -> Result<Channel, ConnectError> {
    connect_with(path, peer, None).await
}

/// [`connect`], speaking TLS on every connection when `tls` is given (AutoMTLS): the
/// peer must present the certificate `tls` pins, and gets ours.
pub async fn connect_with(
    path: &Path,
    peer: Peer,
    tls: Option<MutualTls>,
) -> Result<Channel, ConnectError> {
    let first = connect_checked(path, peer.clone(), tls.as_ref()).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let socket = path.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.lock().ok().and_then(|mut first| first.take());
        let socket = socket.clone();
        let peer = peer.clone();
        let tls = tls.clone();
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => connect_checked(&socket, peer, tls.as_ref())
                    .await
                    .map_err(io::Error::other)?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // tonic requires a URI but the connector decides where to connect.
    Endpoint::from_static("http://tether.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Channel {
            address: path.display().to_string(),
            source,
        })
}

/// A [`FramedChannel`](crate::frames::FramedChannel) to the socket at `path`: the
/// connection is checked to be served by `peer` and speaks TLS when `tls` is given, as
/// [`connect_with`]'s, then carries gRPC's calls as tether's frames instead of HTTP/2. Only
/// for a peer that agreed to frames (a tether plugin answering a tether host's offer).
/// `label` names the peer in errors and logs. A framed channel does not reconnect.
pub async fn connect_framed(
    path: &Path,
    peer: Peer,
    tls: Option<&MutualTls>,
    label: &str,
) -> Result<crate::frames::FramedChannel, ConnectError> {
    let io = connect_checked(path, peer, tls).await?;
    crate::frames::FramedChannel::start(io, label)
        .await
        .map_err(|source| ConnectError::Io {
            address: path.display().to_string(),
            source,
        })
}

/// `address` as a path, if it is spelled exactly `dir/<name>`: no `.`, `..`, doubled or
/// trailing `/`, nothing in a subdirectory.
pub fn address_in_dir(address: &str, dir: &Path) -> Option<PathBuf> {
    let path = Path::new(address);
    // `Path::components` hides `.` and `//`, so compare with the canonical spelling.
    path.file_name()
        .map(|name| dir.join(name))
        .filter(|joined| joined.as_os_str() == path.as_os_str() && joined.parent() == Some(dir))
}

/// How many connections a [`Listener`] accepted and refused.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ConnectionCounts {
    /// Connections accepted from the expected peer.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused because another process made them.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A connection a [`Listener`] refused: who tried, where, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The other side's name (the `label` the listener was bound with).
    pub label: Arc<str>,
    /// The listening socket.
    pub socket: PathBuf,
    /// The process that connected, if the kernel could say.
    pub credentials: Option<PeerCredentials>,
    /// Who was expected.
    pub expected: Peer,
    /// Why it was refused, in words.
    pub reason: String,
}

/// Called for each refused connection, on the task accepting connections: keep it quick.
pub type RefusalHook = Arc<dyn Fn(&Refusal) + Send + Sync>;

/// A listening Unix socket whose connections are checked against a [`Peer`]: others are
/// closed at once, logged with their pid, and passed to the [`RefusalHook`] if one is set.
/// The socket file is removed when the listener is dropped.
pub struct Listener {
    source: Source,
    peer: Peer,
    label: Arc<str>,
    counts: Arc<ConnectionCounts>,
    on_refused: Option<RefusalHook>,
    tls: Option<MutualTls>,
    handshakes: FuturesUnordered<Handshaking>,
}

/// Where a [`Listener`]'s connections come from.
enum Source {
    /// A socket of its own, removed when the listener is dropped.
    Socket(NamedTempFile<UnixListener>),
    /// Streams of a multiplexed connection, all from the process that made it.
    Streams {
        streams: mux::Inbound,
        credentials: PeerCredentials,
        name: PathBuf,
    },
}

/// A connection from the expected peer, in its TLS handshake.
type Handshaking = BoxFuture<'static, (PeerCredentials, Result<Io, String>)>;

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("socket", &self.path())
            .field("peer", &self.peer)
            .field("label", &self.label)
            .field("counts", &self.counts)
            .field("on_refused", &self.on_refused.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    /// Listens on a new socket with a fresh, unguessable name `<prefix>…​.sock` in `dir`.
    /// `label` names the other side in logs.
    pub fn bind(dir: &Path, prefix: &str, peer: Peer, label: Arc<str>) -> io::Result<Self> {
        let socket = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".sock")
            .rand_bytes(8)
            .make_in(dir, |path| UnixListener::bind(path))?;
        Ok(Listener {
            source: Source::Socket(socket),
            peer,
            label,
            counts: Arc::default(),
            on_refused: None,
            tls: None,
            handshakes: FuturesUnordered::new(),
        })
    }

    /// Takes the streams a multiplexed connection's other side opens as connections (from
    /// the broker, once it routed them): all come from the process with `credentials`,
    /// checked when the multiplexed connection was made. `name` stands for the socket path
    /// in logs and refusals.
    pub fn over_streams(
        streams: mux::Inbound,
        credentials: PeerCredentials,
        name: impl Into<PathBuf>,
        peer: Peer,
        label: Arc<str>,
    ) -> Self {
        Listener {
            source: Source::Streams {
                streams,
                credentials,
                name: name.into(),
            },
            peer,
            label,
            counts: Arc::default(),
            on_refused: None,
            tls: None,
            handshakes: FuturesUnordered::new(),
        }
    }

    /// Speaks TLS on every accepted connection (AutoMTLS): the peer must present the
    /// certificate `tls` pins. A peer that does not speak TLS, presents another certificate
    /// or none, or does not finish the handshake within 10 seconds, is refused like a wrong
    /// process: logged, counted, and passed to the [`RefusalHook`].
    #[must_use]
    pub fn tls(mut self, tls: MutualTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Calls `hook` for every refused connection (for example, to audit it).
    #[must_use]
    pub fn on_refused(mut self, hook: RefusalHook) -> Self {
        self.on_refused = Some(hook);
        self
    }

    fn refuse(&self, credentials: Option<PeerCredentials>, reason: String) {
        self.counts.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_refused {
            hook(&Refusal {
                label: Arc::clone(&self.label),
                socket: self.path().to_owned(),
                credentials,
                expected: self.peer.clone(),
                reason,
            });
        }
    }

    /// The socket's path (for a listener over streams, the name it was given).
    pub fn path(&self) -> &Path {
        match &self.source {
            Source::Socket(socket) => socket.path(),
            Source::Streams { name, .. } => name,
        }
    }

    /// Who may connect.
    pub fn peer(&self) -> Peer {
        self.peer.clone()
    }

    /// Accepted and refused connections so far; shared, so it stays readable while the
    /// listener is being served.
    pub fn counts(&self) -> Arc<ConnectionCounts> {
        Arc::clone(&self.counts)
    }

    /// Polls for the next connection from the expected peer, refusing all others; `None`
    /// once a listener over streams has no more to give.
    fn poll_next_conn(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
        loop {
            let mut exhausted = false;
            let arrived = match &mut self.source {
                Source::Socket(socket) => match socket.as_file().poll_accept(cx) {
                    Poll::Ready(Ok((stream, _))) => Some(Arrived::Socket(stream)),
                    Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                    Poll::Pending => None,
                },
                Source::Streams {
                    streams,
                    credentials,
                    ..
                } => match streams.poll_recv(cx) {
                    Poll::Ready(Some(stream)) => Some(Arrived::Stream(stream, *credentials)),
                    Poll::Ready(None) => {
                        exhausted = true;
                        None
                    }
                    Poll::Pending => None,
                },
            };
            match arrived {
                Some(Arrived::Socket(stream)) => {
                    if let Some(conn) = self.check_peer(stream) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                    continue;
                }
                Some(Arrived::Stream(stream, credentials)) => {
                    if let Some(conn) = self.admit(Either::Right(stream), credentials) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                    continue;
                }
                None => {}
            }
            match self.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some((credentials, Ok(stream)))) => {
                    self.counts.accepted.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(Conn {
                        stream,
                        credentials,
                        info: credentials,
                    })));
                }
                Poll::Ready(Some((credentials, Err(reason)))) => {
                    tracing::warn!(
                        target: "tether::broker",
                        plugin = %self.label,
                        peer_pid = credentials.pid,
                        socket = %self.path().display(),
                        "refused a connection from {credentials}: {reason}",
                    );
                    self.refuse(
                        Some(credentials),
                        format!("refused a connection from {credentials}: {reason}"),
                    );
                }
                Poll::Ready(None) if exhausted => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Checks who connected: a connection from the expected peer is returned, or with TLS
    /// on, starts its handshake; any other is refused.
    fn check_peer(&mut self, stream: UnixStream) -> Option<Conn> {
        let credentials = match PeerCredentials::of(&stream) {
            Ok(credentials) => credentials,
            Err(err) => {
                tracing::warn!(
                    target: "tether::broker",
                    plugin = %self.label,
                    socket = %self.path().display(),
                    %err,
                    "refused a connection whose peer credentials could not be read"
                );
                self.refuse(
                    None,
                    format!("its peer credentials could not be read: {err}"),
                );
                return None;
            }
        };
        if !self.peer.admits(&credentials) {
            tracing::warn!(
                target: "tether::broker",
                plugin = %self.label,
                peer_pid = credentials.pid,
                peer_uid = credentials.uid,
                expected = %self.peer,
                socket = %self.path().display(),
                "refused a connection from {credentials}: only {} may connect here",
                self.peer,
            );
            self.refuse(
                Some(credentials),
                format!(
                    "refused a connection from {credentials}: only {} may connect here",
                    self.peer
                ),
            );
            return None;
        }
        self.admit(Either::Left(stream), credentials)
    }

    /// A connection from the expected peer: returned as it is, or with TLS on, handed to
    /// its handshake.
    fn admit(&mut self, raw: Raw, credentials: PeerCredentials) -> Option<Conn> {
        match &self.tls {
            None => {
                self.counts.accepted.fetch_add(1, Ordering::Relaxed);
                Some(Conn {
                    stream: Either::Left(raw),
                    credentials,
                    info: credentials,
                })
            }
            Some(tls) => {
                let handshake = tls.acceptor().accept(raw);
                self.handshakes.push(
                    async move {
                        let result =
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                                Ok(Ok(stream)) => Ok(Either::Right(Box::new(stream.into()))),
                                Ok(Err(err)) => Err(tls::explain(&err)),
                                Err(_) => Err(format!(
                                    "it did not complete the TLS handshake within \
                                 {TLS_HANDSHAKE_TIMEOUT:?}, though AutoMTLS is on here"
                                )),
                            };
                        (credentials, result)
                    }
                    .boxed(),
                );
                None
            }
        }
    }
}

/// What a listener's source gave.
enum Arrived {
    Socket(UnixStream),
    Stream(MuxStream, PeerCredentials),
}

impl Stream for Listener {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_conn(cx)
    }
}

/// A connection accepted by a [`Listener`], from its expected peer.
///
/// tonic puts its `info` (by default the peer's [`PeerCredentials`]) into the extensions of
/// every request that arrives on it; [`Conn::with_info`] replaces it with what the services
/// should see instead, such as the identity of the plugin the endpoint serves.
#[derive(Debug)]
pub struct Conn<T = PeerCredentials> {
    stream: Io,
    credentials: PeerCredentials,
    info: T,
}

impl<T> Conn<T> {
    /// Who connected.
    pub fn credentials(&self) -> PeerCredentials {
        self.credentials
    }

    /// The same connection, carrying `info` into its requests' extensions.
    pub fn with_info<U>(self, info: U) -> Conn<U> {
        Conn {
            stream: self.stream,
            credentials: self.credentials,
            info,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Connected for Conn<T> {
    type ConnectInfo = T;

    fn connect_info(&self) -> T {
        self.info.clone()
    }
}

impl<T: Unpin> AsyncRead for Conn<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<T: Unpin> AsyncWrite for Conn<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_directly_inside_the_dir() {
        let dir = Path::new("/tmp/tether-x-abc");
        assert_eq!(
            address_in_dir("/tmp/tether-x-abc/plugin-1.sock", dir),
            Some(PathBuf::from("/tmp/tether-x-abc/plugin-1.sock"))
        );
        for bad in [
            "/tmp/elsewhere.sock",
            "/tmp/tether-x-abc/../elsewhere.sock",
            "/tmp/tether-x-abc/./plugin.sock",
            "/tmp/tether-x-abc//plugin.sock",
            "/tmp/tether-x-abc/plugin.sock/",
            "/tmp//tether-x-abc/plugin.sock",
            "/tmp/tether-x-abc/sub/plugin.sock",
            "tmp/tether-x-abc/plugin.sock",
            "/tmp/tether-x-abc",
            "127.0.0.1:1234",
            "",
        ] {
            assert_eq!(address_in_dir(bad, dir), None, "{bad}");
        }
    }

    #[test]
    fn peers_admit_only_whom_they_name() {
        let me = PeerCredentials {
            pid: Some(std::process::id()),
            uid: rustix::process::getuid().as_raw(),
            gid: 0,
        };
        assert!(Peer::Process(std::process::id()).admits(&me));
        assert!(!Peer::Process(1).admits(&me));
        assert!(!Peer::Process(std::process::id()).admits(&PeerCredentials { pid: None, ..me }));
        assert!(Peer::SameUser.admits(&me));
        assert!(!Peer::SameUser.admits(&PeerCredentials {
            uid: me.uid.wrapping_add(1),
            ..me
        }));
    }

    #[tokio::test]
    async fn a_listener_refuses_the_wrong_process_and_removes_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        // Only pid 1 may connect: this test process is refused.
        let listener = Listener::bind(dir.path(), "t-", Peer::Process(1), "test".into()).unwrap();
        let path = listener.path().to_owned();
        assert!(path.starts_with(dir.path()));
        let counts = listener.counts();
        let serving = tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut listener = listener;
            listener.next().await.map(|conn| conn.map(|_| ()))
        });
        let stream = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        // The refused connection is closed: the read ends.
        let read = tokio::io::AsyncReadExt::read(&mut { stream }, &mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(counts.refused(), 1);
        assert_eq!(counts.accepted(), 0);
        serving.abort();
        let _ = serving.await;
        assert!(!path.exists(), "socket file left behind");
    }

    /// Serves gRPC health on a listener with `server_tls`, and returns its path, the
    /// refusals it saw, and the server task.
    fn serve_health(
        dir: &Path,
        server_tls: Option<MutualTls>,
    ) -> (
        PathBuf,
        Arc<Mutex<Vec<Refusal>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&refusals);
        let mut listener = Listener::bind(dir, "tls-", Peer::SameUser, "test".into())
            .unwrap()
            .on_refused(Arc::new(move |refusal: &Refusal| {
                seen.lock().unwrap().push(refusal.clone());
            }));
        if let Some(tls) = server_tls {
            listener = listener.tls(tls);
        }
        let path = listener.path().to_owned();
        let (_, health) = tonic_health::server::health_reporter();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(listener)
                .await;
        });
        (path, refusals, task)
    }

    async fn check_health(channel: Channel) -> Result<(), tonic::Status> {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
    }

    /// Both sides' certificates, and a third party's.
    fn identities() -> (tls::Identity, tls::Identity, tls::Identity) {
        (
            tls::Identity::generate().unwrap(),
            tls::Identity::generate().unwrap(),
            tls::Identity::generate().unwrap(),
        )
    }

    #[tokio::test]
    async fn mutual_tls_admits_exactly_the_announced_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (host, plugin, stranger) = identities();
        let serving = MutualTls::new(&plugin, host.certificate().clone()).unwrap();
        let (path, refusals, task) = serve_health(dir.path(), Some(serving));

        // The right pair: calls go through, over TLS.
        let dialing = MutualTls::new(&host, plugin.certificate().clone()).unwrap();
        let channel = connect_with(&path, Peer::SameUser, Some(dialing))
            .await
            .unwrap();
        check_health(channel).await.unwrap();
        assert!(refusals.lock().unwrap().is_empty());

        // A client with another certificate: the server refuses it, and says why.
        let impostor = MutualTls::new(&stranger, plugin.certificate().clone()).unwrap();
        let refused = match connect_with(&path, Peer::SameUser, Some(impostor)).await {
            Ok(channel) => check_health(channel).await.err().map(|s| s.to_string()),
            Err(err) => Some(err.to_string()),
        };
        assert!(
            refused.is_some(),
            "a client with a stranger's certificate got through"
        );
        eventually_refused(&refusals, "not the one it announced").await;

        // A client that pins another server certificate: it refuses the server.
        let wrong_pin = MutualTls::new(&host, stranger.certificate().clone()).unwrap();
        let err = connect_with(&path, Peer::SameUser, Some(wrong_pin))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectError::Tls { reason, .. } if reason.contains("not the one it announced")),
            "{err}"
        );

        // A client without TLS: refused, named as such.
        let plain = connect(&path, Peer::SameUser).await;
        let failed = match plain {
            Ok(channel) => check_health(channel).await.is_err(),
            Err(_) => true,
        };
        assert!(failed, "a plain client got through a TLS listener");
        eventually_refused(&refusals, "does not speak TLS").await;
        task.abort();
    }

    #[tokio::test]
    async fn a_tls_client_says_when_the_server_does_not_speak_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (host, plugin, _) = identities();
        let (path, _, task) = serve_health(dir.path(), None);
        let dialing = MutualTls::new(&host, plugin.certificate().clone()).unwrap();
        let err = connect_with(&path, Peer::SameUser, Some(dialing))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectError::Tls { reason, .. } if reason.contains("does not speak TLS")),
            "{err}"
        );
        task.abort();
    }

    /// Waits (generously) for a refusal whose reason contains `needle`.
    async fn eventually_refused(refusals: &Mutex<Vec<Refusal>>, needle: &str) {
        for _ in 0..400 {
            if refusals
                .lock()
                .unwrap()
                .iter()
                .any(|refusal| refusal.reason.contains(needle))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "no refusal saying {needle:?}; refusals: {:?}",
            refusals.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn grpc_runs_over_tls_on_multiplexed_streams_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (host, plugin, _) = identities();
        let plugin_tls = MutualTls::new(&plugin, host.certificate().clone()).unwrap();
        let host_tls = MutualTls::new(&host, plugin.certificate().clone()).unwrap();
        let mut socket = Listener::bind(dir.path(), "mux-", Peer::SameUser, "test".into()).unwrap();
        let path = socket.path().to_owned();

        // The plugin: yamux over the first connection, health served on its streams, and a
        // stream of its own opened back to the host.
        let plugin_side = tokio::spawn(async move {
            let conn = socket.next().await.unwrap().unwrap();
            let credentials = conn.credentials();
            let (session, inbound) = Session::new(conn, mux::Role::Plugin, "host");
            let listener = Listener::over_streams(
                inbound,
                credentials,
                "yamux",
                Peer::SameUser,
                "host".into(),
            )
            .tls(plugin_tls.clone());
            let (_, health) = tonic_health::server::health_reporter();
            let serving = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(listener),
            );
            let mut back = session.open().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut back, b"hello host")
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::flush(&mut back).await.unwrap();
            (session, serving, back)
        });

        let (session, mut inbound, _) = connect_multiplexed(&path, Peer::SameUser, "plugin")
            .await
            .unwrap();
        let opener = session.clone();
        let channel = channel_over(
            "yamux".to_owned(),
            move || {
                let opener = opener.clone();
                async move { opener.open().await }
            },
            Some(host_tls),
        )
        .await
        .unwrap();
        check_health(channel.clone()).await.unwrap();
        check_health(channel).await.unwrap();

        let mut from_plugin = inbound.recv().await.expect("the plugin's stream");
        let mut greeting = [0u8; 10];
        tokio::io::AsyncReadExt::read_exact(&mut from_plugin, &mut greeting)
            .await
            .unwrap();
        assert_eq!(&greeting, b"hello host");
        let (_plugin_session, serving, _back) = plugin_side.await.unwrap();
        serving.abort();
    }
}
