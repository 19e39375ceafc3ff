//! go-plugin's multiplexing (go-plugin 1.6 and later): one socket for everything. yamux runs
//! on the main connection (the host is yamux's client, the plugin its server); the main
//! gRPC connection and every brokered connection are yamux streams on it, TLS per stream
//! when AutoMTLS is on.
//!
//! A [`Session`] drives one yamux connection on a task of its own. It opens streams
//! ([`Session::open`]) and hands the streams the other side opens to the receiver returned
//! with it; which stream belongs to which service is the broker's business (its knock), not
//! this module's.

use std::io;
use std::task::{Context, Poll};

use futures_util::future::poll_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// One yamux stream, as a tokio byte stream.
pub type MuxStream = Compat<yamux::Stream>;

/// Streams the other side opened, in the order they arrived.
pub type Inbound = mpsc::UnboundedReceiver<MuxStream>;

/// Requests to open a stream, each answered on its own channel.
type OpenRequest = oneshot::Sender<io::Result<MuxStream>>;

/// Which end of the yamux connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host: yamux's client.
    Host,
    /// The plugin: yamux's server.
    Plugin,
}

/// A yamux connection, driven on a task of its own until the other side closes it or every
/// clone of the `Session` is dropped. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    open: mpsc::Sender<OpenRequest>,
}

impl Session {
    /// Runs yamux over `io` as `role`: returns the session, and the streams the other side
    /// opens. Must be called within a tokio runtime.
    pub fn new<T>(io: T, role: Role, label: &str) -> (Session, Inbound)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mode = match role {
            Role::Host => yamux::Mode::Client,
            Role::Plugin => yamux::Mode::Server,
        };
        let connection = yamux::Connection::new(io.compat(), yamux::Config::default(), mode);
        let (open, requests) = mpsc::channel(16);
        let (inbound, streams) = mpsc::unbounded_channel();
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut driver = Driver {
                connection,
                requests,
                waiting: None,
                inbound,
            };
            match poll_fn(|cx| driver.poll(cx)).await {
                Ok(()) => {
                    tracing::debug!(target: "tether::transport", peer = %label, "the multiplexed connection closed")
                }
                Err(err) => {
                    tracing::debug!(target: "tether::transport", peer = %label, %err, "the multiplexed connection failed")
                }
            }
        });
        (Session { open }, streams)
    }

    /// Opens a new stream to the other side.
    pub async fn open(&self) -> io::Result<MuxStream> {
        let (answer, opened) = oneshot::channel();
        self.open.send(answer).await.map_err(|_| closed())?;
        opened.await.map_err(|_| closed())?
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.open.is_closed()
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the multiplexed connection is closed",
    )
}

struct Driver<T> {
    connection: yamux::Connection<Compat<T>>,
    requests: mpsc::Receiver<OpenRequest>,
    /// A request waiting for yamux to open its stream.
    waiting: Option<OpenRequest>,
    inbound: mpsc::UnboundedSender<MuxStream>,
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Opens requested streams, hands over arriving ones, and keeps the connection going;
    /// ready when it ends.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), yamux::ConnectionError>> {
        loop {
            if self.waiting.is_none() {
                match self.requests.poll_recv(cx) {
                    Poll::Ready(Some(request)) => self.waiting = Some(request),
                    // Every handle is gone: close the connection.
                    Poll::Ready(None) => return self.connection.poll_close(cx),
                    Poll::Pending => break,
                }
            }
            let Some(request) = self.waiting.take() else {
                break;
            };
            match self.connection.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let _ = request.send(Ok(stream.compat()));
                }
                Poll::Ready(Err(err)) => {
                    let _ = request.send(Err(io::Error::other(err.to_string())));
                }
                Poll::Pending => {
                    self.waiting = Some(request);
                    break;
                }
            }
        }
        loop {
            match self.connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // Nobody listening any more: the stream is dropped, which resets it.
                    let _ = self.inbound.send(stream.compat());
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(err)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
