//! go-plugin's controller and broker services, served next to the plugin's own.

use std::pin::Pin;
use std::sync::Mutex;

use futures_util::{Stream, StreamExt};
use tether_protocol::plugin::grpc_broker_server::GrpcBroker;
use tether_protocol::plugin::grpc_controller_server::GrpcController;
use tether_protocol::plugin::{ConnInfo, Empty};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// `plugin.GRPCController`: `Shutdown` starts a graceful stop.
pub(crate) struct Controller {
    pub(crate) shutdown: CancellationToken,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::debug!("the host asked the plugin to shut down");
        self.shutdown.cancel();
        Ok(Response::new(Empty {}))
    }
}

type ConnInfoStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

/// `plugin.GRPCBroker`: keeps the host's broker stream open for the plugin's lifetime.
///
/// Brokered connections (`accept`, `dial`) arrive with `tether-broker`; until then the
/// stream exists, stays open, and connection infos the host sends are logged and dropped.
pub(crate) struct Broker {
    pub(crate) shutdown: CancellationToken,
    /// The sending half of the stream to the host, kept so the stream stays open.
    pub(crate) outgoing: Mutex<Option<mpsc::Sender<ConnInfo>>>,
}

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = ConnInfoStream;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = incoming.next() => match message {
                        Some(Ok(info)) => tracing::debug!(
                            service_id = info.service_id,
                            "broker: the host offered a connection nobody asked for"
                        ),
                        Some(Err(status)) => {
                            tracing::debug!(%status, "broker stream from the host failed");
                            return;
                        }
                        None => return,
                    },
                }
            }
        });
        let (sender, receiver) = mpsc::channel(16);
        *self
            .outgoing
            .lock()
            .map_err(|_| Status::internal("broker state poisoned"))? = Some(sender);
        let stream = ReceiverStream::new(receiver)
            .map(Ok)
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
