//! Host services for a plugin in one line.
//!
//! ```no_run
//! # async fn demo(plugin: tether_host::PluginClient, plugin2: tether_host::PluginClient,
//! #     services: tonic::service::Routes) -> Result<(), tether_hostconn::Error> {
//! use tether_hostconn::establish_host_services;
//!
//! // `services`: any tonic services, e.g. `Routes::new(HostServicesServer::from_arc(shared))`;
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
//! `tether.hostconn.v1.HostConnection` contract. The plugin dials once and reuses that one
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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tether_broker::unix::Conn;
use tether_broker::{BrokerError, ConnectionCounts, Served};
pub use tether_broker::{Refusal, RefusalHook};
use tether_host::{PluginChannel, PluginClient};
use tether_protocol::hostconn::host_connection_client::HostConnectionClient;
use tether_protocol::hostconn::{DisconnectRequest, EstablishRequest};
use tonic::service::Routes;
use tonic::{Code, Request, Status};

/// How long the plugin has to dial the endpoint and answer `Establish`: its broker waits up
/// to 5 s for the offer by default, and this leaves room beyond that.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// How long `close` waits for the plugin to acknowledge `Disconnect`.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Who made a host-service call: the plugin the endpoint was made for.
///
/// Put in every request's extensions by the endpoint; services read it with
/// [`PluginIdentity::of`]. It cannot be forged by the plugin: it comes from the endpoint the
/// call arrived on, and the connection's peer credentials were checked to be that plugin's
/// process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginIdentity {
    name: Arc<str>,
    instance: u64,
    pid: u32,
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

    /// The plugin's instance number ([`PluginClient::instance`]).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The pid of the calling process (checked to be the plugin's).
    pub fn pid(&self) -> u32 {
        self.pid
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
}

/// Why host services could not be established.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// Boxed: the client is large, and `Outcome` should stay small.
    contract: Box<HostConnectionClient<PluginChannel>>,
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

async fn disconnect(plugin: &str, mut contract: HostConnectionClient<PluginChannel>) {
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
#[derive(Default, Clone)]
pub struct Options {
    on_refused: Option<RefusalHook>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("on_refused", &self.on_refused.is_some())
            .finish()
    }
}

impl Options {
    /// Calls `hook` for every connection to the plugin's host-service socket that the
    /// peer-credential check refuses (any process but the plugin's), for example to audit
    /// it. Refusals are always logged (target `tether::broker`) either way.
    #[must_use]
    pub fn on_refused(mut self, hook: RefusalHook) -> Self {
        self.on_refused = Some(hook);
        self
    }
}

/// [`establish_host_services`] with [`Options`].
pub async fn establish_host_services_with(
    plugin: &PluginClient,
    services: Routes,
    options: Options,
) -> Result<Outcome, Error> {
    let name = plugin.name().to_owned();
    let broker = plugin.broker();
    let id = broker.next_id();
    let mut listener = broker.accept(id).await.map_err(|source| Error::Offer {
        plugin: name.clone(),
        source,
    })?;
    if let Some(hook) = options.on_refused {
        listener = listener.on_refused(hook);
    }
    let (name_arc, instance) = (Arc::<str>::from(name.as_str()), plugin.instance());
    let identify = move |conn: Conn| {
        let identity = PluginIdentity {
            name: Arc::clone(&name_arc),
            instance,
            pid: conn.credentials().pid.unwrap_or_default(),
        };
        Ok(conn.with_info(identity))
    };
    let served = Served::start(broker, id, listener, identify, services);

    let limit = plugin.max_message_size();
    let mut contract = HostConnectionClient::new(plugin.channel())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let answer = tokio::time::timeout(
        ESTABLISH_TIMEOUT,
        contract.establish(EstablishRequest { broker_id: id }),
    )
    .await;
    let failure = match answer {
        Ok(Ok(_)) => {
            tracing::debug!(plugin = name, broker_id = id, "host services established");
            return Ok(Outcome::Connected(HostConnection {
                plugin: name,
                served: Some(served),
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
