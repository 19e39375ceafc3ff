//! Host services on the plugin's side: the `tether.hostconn.v1.HostConnection` contract,
//! served only when a plugin opts in with [`crate::Plugin::with_host_services`], and the
//! typed client handle the plugin's code calls through.

use std::fmt;
use std::sync::Arc;

use tether_broker::Broker;
use tether_protocol::hostconn::host_connection_server::HostConnection;
use tether_protocol::hostconn::{
    DisconnectRequest, DisconnectResponse, EstablishRequest, EstablishResponse,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Where the connection to the host's services stands.
#[derive(Debug, Clone)]
enum Link<C> {
    NotYet,
    Connected(C),
    Disconnected,
}

/// The plugin's handle on its host's services: a typed client `C` (for example a generated
/// `HostServicesClient<Channel>`) once the host has connected them.
///
/// Cheap to clone: clone it into every service that needs the host. All clones share one
/// brokered connection, dialed once when the host calls `establish_host_services` and
/// reused for every call.
pub struct HostServices<C> {
    link: watch::Receiver<Link<C>>,
}

impl<C> Clone for HostServices<C> {
    fn clone(&self) -> Self {
        HostServices {
            link: self.link.clone(),
        }
    }
}

impl<C> fmt::Debug for HostServices<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.link.borrow() {
            Link::NotYet => "not connected yet",
            Link::Connected(_) => "connected",
            Link::Disconnected => "disconnected",
        };
        f.debug_struct("HostServices")
            .field("state", &state)
            .finish()
    }
}

/// Why a host-service client is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostServicesError {
    /// The host has not connected its services (yet).
    #[error(
        "host services are not connected yet: the host has not called establish_host_services \
         for this plugin, or it has not finished"
    )]
    NotConnected,
    /// The host withdrew its services.
    #[error("host services were disconnected by the host; calls to them are no longer possible")]
    Disconnected,
}

impl From<HostServicesError> for Status {
    fn from(err: HostServicesError) -> Self {
        Status::failed_precondition(err.to_string())
    }
}

impl<C: Clone> HostServices<C> {
    /// The typed client, if the host's services are connected now.
    pub fn client(&self) -> Result<C, HostServicesError> {
        match &*self.link.borrow() {
            Link::Connected(client) => Ok(client.clone()),
            Link::NotYet => Err(HostServicesError::NotConnected),
            Link::Disconnected => Err(HostServicesError::Disconnected),
        }
    }

    /// Waits until the host connects its services, then returns the client; fails at once
    /// if they were disconnected. Bound the wait with `tokio::time::timeout`.
    pub async fn connected(&self) -> Result<C, HostServicesError> {
        let mut link = self.link.clone();
        let link = link
            .wait_for(|link| !matches!(link, Link::NotYet))
            .await
            .map_err(|_| HostServicesError::Disconnected)?;
        match &*link {
            Link::Connected(client) => Ok(client.clone()),
            _ => Err(HostServicesError::Disconnected),
        }
    }

    pub(crate) fn new<F>(make: F) -> (Self, LinkSetter)
    where
        F: Fn(Channel) -> C + Send + Sync + 'static,
        C: Send + Sync + 'static,
    {
        let (sender, link) = watch::channel(Link::NotYet);
        let set = move |channel: Option<Channel>| {
            sender.send_replace(match channel {
                Some(channel) => Link::Connected(make(channel)),
                None => Link::Disconnected,
            });
        };
        (HostServices { link }, Arc::new(set))
    }
}

/// Sets the link: `Some(channel)` when connected, `None` when disconnected.
pub(crate) type LinkSetter = Arc<dyn Fn(Option<Channel>) + Send + Sync>;

/// `tether.hostconn.v1.HostConnection`, served when the plugin opted in.
pub(crate) struct HostConnectionService {
    pub(crate) broker: Broker,
    pub(crate) set: LinkSetter,
}

#[tonic::async_trait]
impl HostConnection for HostConnectionService {
    async fn establish(
        &self,
        request: Request<EstablishRequest>,
    ) -> Result<Response<EstablishResponse>, Status> {
        let id = request.into_inner().broker_id;
        let channel = self.broker.dial(id).await.map_err(|err| {
            tracing::warn!(%err, "could not connect to the host's services");
            Status::unavailable(format!(
                "the plugin could not dial the host's services: {err}"
            ))
        })?;
        (self.set)(Some(channel));
        tracing::debug!(broker_id = id, "host services connected");
        Ok(Response::new(EstablishResponse {}))
    }

    async fn disconnect(
        &self,
        _request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectResponse>, Status> {
        (self.set)(None);
        tracing::debug!("host services disconnected");
        Ok(Response::new(DisconnectResponse {}))
    }
}
