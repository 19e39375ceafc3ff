//! Lanes on the plugin's side: taking the lane a tether host offers (for its own calls,
//! `tether.lane.v1.Lanes`, or for the plugin's calls to its services, `Establish`), and
//! serving on it what the plugin serves on its socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tether_protocol::lane::lanes_server::Lanes;
use tether_protocol::lane::{OpenRequest, OpenResponse};
use tether_transport::frames::serve_framed_after_preface;
use tether_transport::lane::{LaneOffer, LaneStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{Bytes, http};
use tonic::{Request, Response, Status};

/// How long the plugin waits for a lane's descriptors, which the host sent before asking.
const LANE_WAIT: Duration = Duration::from_secs(5);

/// How long the host has, after the plugin answered `Open`, to start frames on the lane.
const START_WAIT: Duration = Duration::from_secs(10);

/// Takes a lane the host offered: its memory file and the plugin's ends of its doorbells,
/// under their descriptor-channel tokens, checked to be a lane.
pub(crate) async fn take(
    memory: u64,
    data_bell: u64,
    room_bell: u64,
) -> Result<LaneStream, String> {
    let channel = crate::descriptors::descriptor_channel()
        .ok_or("this plugin has no descriptor channel to take it from")?;
    let take = |token, what: &'static str| async move {
        channel
            .take(token, LANE_WAIT)
            .await
            .map_err(|err| format!("its {what}: {err}"))
    };
    let offer = LaneOffer {
        memory: take(memory, "memory").await?,
        data_bell: take(data_bell, "data doorbell").await?,
        room_bell: take(room_bell, "room doorbell").await?,
    };
    LaneStream::open(offer).map_err(|err| err.to_string())
}

/// `tether.lane.v1.Lanes`: hands the lane the host offers for its calls to the task that
/// serves it ([`serve_lanes`]). One lane in the plugin's life.
pub(crate) struct LanesService {
    pub(crate) offered: mpsc::Sender<LaneStream>,
    pub(crate) taken: AtomicBool,
}

#[tonic::async_trait]
impl Lanes for LanesService {
    async fn open(&self, request: Request<OpenRequest>) -> Result<Response<OpenResponse>, Status> {
        if self.taken.swap(true, Ordering::SeqCst) {
            return Err(Status::failed_precondition(
                "this plugin already serves on a lane: it takes one in its life",
            ));
        }
        let request = request.into_inner();
        let stream = match take(request.memory, request.data_bell, request.room_bell).await {
            Ok(stream) => stream,
            Err(reason) => {
                self.taken.store(false, Ordering::SeqCst);
                tracing::warn!(%reason, "could not take the lane the host offered for its calls");
                return Err(Status::invalid_argument(format!(
                    "the plugin could not take the lane: {reason}"
                )));
            }
        };
        self.offered
            .send(stream)
            .await
            .map_err(|_| Status::unavailable("the plugin is stopping"))?;
        tracing::debug!("serving the host's calls on a lane");
        Ok(Response::new(OpenResponse {}))
    }
}

/// Serves each lane `offered` with `service` (what the plugin serves on its socket) until
/// `stop`; returns once every lane's calls have ended.
pub(crate) async fn serve_lanes<S, B>(
    mut offered: mpsc::Receiver<LaneStream>,
    service: S,
    stop: CancellationToken,
) where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let lanes = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            stream = offered.recv() => stream,
            () = stop.cancelled() => None,
        };
        let Some(stream) = stream else { break };
        lanes.spawn(serve_lane(stream, service.clone(), stop.clone()));
    }
    lanes.close();
    lanes.wait().await;
}

async fn serve_lane<S, B>(stream: LaneStream, service: S, stop: CancellationToken)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The requests carry the host's credentials, as on the socket: the lane's doorbells
    // are socket pairs the host made.
    let host = match stream.peer_credentials() {
        Ok(host) => host,
        Err(err) => {
            tracing::warn!(%err, "could not tell who made the lane; not serving it");
            return;
        }
    };
    // A breach is logged there; the host's calls on the lane then fail, and the host
    // decides what to do with this plugin.
    let _ = serve_framed_after_preface(stream, service, host, stop, START_WAIT).await;
}
