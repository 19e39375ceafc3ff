//! [`Served`]: a gRPC server running on a brokered socket.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Connected;

use crate::broker::Broker;
use tether_transport::activity::{Activity, ActivityLayer};
use tether_transport::frames::ViolationHook;
use tether_transport::{Conn, ConnectionCounts, Listener};

/// How long in-flight calls may finish after a served endpoint is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A gRPC server on a brokered socket; from [`Broker::accept_and_serve`] or
/// [`Served::start`]. Dropping it (or [`Served::stop`]) stops the server: in-flight calls get
/// a short grace period, then the socket is closed and its file removed.
#[derive(Debug)]
pub struct Served {
    id: u32,
    address: PathBuf,
    counts: Arc<ConnectionCounts>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Served {
    /// Serves `routes` on `listener` (accepted for `id` on `broker`), each accepted
    /// connection first passed through `wrap`: the place to attach what every request on
    /// that connection should carry, through the IO type's [`Connected::ConnectInfo`].
    /// `on_violation` is told of each framed connection closed because the peer broke the
    /// frame protocol ([`tether_transport::frames::accept`]). The server stops when the
    /// result is dropped or stopped, or when the broker closes.
    pub fn start<IO, W>(
        broker: &Broker,
        id: u32,
        listener: Listener,
        mut wrap: W,
        routes: Routes,
        activity: Option<Activity>,
        on_violation: Option<ViolationHook<IO::ConnectInfo>>,
    ) -> Self
    where
        W: FnMut(Conn) -> io::Result<IO> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    {
        let stop = broker.closed_token().child_token();
        let address = listener.path().to_owned();
        let counts = listener.counts();
        let peer = broker.peer_name().to_owned();
        let incoming = listener.map(move |conn| conn.and_then(&mut wrap));
        // A tether peer's connections carry frames; the others go to tonic's server.
        let framed_service =
            tower::Layer::layer(&ActivityLayer::new(activity.clone()), routes.clone());
        let (incoming, framed) =
            tether_transport::frames::accept(incoming, framed_service, stop.clone(), on_violation);
        let server = Server::builder()
            .layer(ActivityLayer::new(activity))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let served = async {
                let result = server.await;
                stopping.cancel();
                framed.drained().await;
                result
            };
            let result = tokio::select! {
                result = served => result,
                () = async { stopping.cancelled().await; tokio::time::sleep(STOP_GRACE).await } => {
                    tracing::debug!(target: "tether::broker", plugin = %peer, id, "calls still running {STOP_GRACE:?} after stop; closing anyway");
                    Ok(())
                }
            };
            if let Err(err) = result {
                tracing::warn!(target: "tether::broker", plugin = %peer, id, %err, "a brokered server failed");
            }
        });
        Served {
            id,
            address,
            counts,
            stop,
            task: Some(task),
        }
    }

    /// The broker id this endpoint serves.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The socket the endpoint listens on.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Connections accepted from the expected peer and refused from others.
    pub fn connections(&self) -> &ConnectionCounts {
        &self.counts
    }

    /// Whether the server has stopped (it was told to, or the broker closed).
    pub fn is_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the server and waits until its socket is closed and removed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // The task finishes on its own within the grace period and removes the socket.
        self.stop.cancel();
    }
}
