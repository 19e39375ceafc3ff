//! go-plugin's controller service, served next to the plugin's own. (The broker service is
//! `tether-broker`'s.)

use tether_protocol::plugin::Empty;
use tether_protocol::plugin::grpc_controller_server::GrpcController;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

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
