//! go-plugin's controller service and tether's admission service, served next to the
//! plugin's own. (The broker service is `tether-broker`'s.)

use tether_protocol::admission::{AdmitRequest, AdmitResponse};
use tether_protocol::plugin::Empty;
use tether_protocol::plugin::grpc_controller_server::GrpcController;
use tether_transport::PeerSet;
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

/// `tether.admission.v1.Admission`: the host names another process that may connect, such
/// as a second host process about to reattach. Only an admitted process can ask, since no
/// other can connect.
pub(crate) struct Admission {
    admitted: PeerSet,
}

impl Admission {
    pub(crate) fn new(admitted: PeerSet) -> Self {
        Admission { admitted }
    }
}

#[tonic::async_trait]
impl tether_protocol::admission::admission_server::Admission for Admission {
    async fn admit(
        &self,
        request: Request<AdmitRequest>,
    ) -> Result<Response<AdmitResponse>, Status> {
        let pid = request.into_inner().pid;
        if pid == 0 {
            return Err(Status::invalid_argument("pid 0 names no process"));
        }
        self.admitted.admit(pid);
        tracing::info!(
            pid,
            "the host admitted another process on the plugin's socket"
        );
        Ok(Response::new(AdmitResponse {}))
    }
}
