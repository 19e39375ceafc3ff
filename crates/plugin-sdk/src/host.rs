//! Host services on the plugin's side: the `tether.hostconn.v1.Acceptor` contract,
//! served only when a plugin opts in with [`crate::Plugin::with_host_services`]; [`Host`],
//! the handle on the one brokered connection that contract sets up; [`CallHost`], its
//! per-call view; and [`HostChannel`], the channel every client made from them rides.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tether_broker::Broker;
use tether_protocol::CallContext;
use tether_protocol::hostconn::acceptor_server::Acceptor;
use tether_protocol::hostconn::{
    DisconnectRequest, DisconnectResponse, EstablishRequest, EstablishResponse,
};
use tether_transport::Link as Channel;
use tether_transport::frames::FramedChannel;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::codegen::{Bytes, http};
use tonic::{Request, Response, Status};

use crate::files::HostFiles;

/// Where the connection to the host's services stands.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    NotYet,
    Connected(Channel),
    Disconnected,
}

/// Sets the [`Link`] every [`Host`] of a plugin sees.
pub(crate) type LinkSetter = watch::Sender<Link>;

/// The plugin's handle on its host's services, from [`crate::Plugin::with_host_services`]:
/// the file client ([`Host::files`]) and a client for any other service the host serves
/// ([`Host::client`]), all on one brokered connection, dialed once when the host calls
/// `establish_host_services` and reused by every call.
///
/// Cheap to clone: clone it into every service that needs the host. In a handler,
/// [`Host::for_call`] gives the view whose calls carry the caller's request id and
/// deadline. Before the host connects, and after it disconnects, `files()` and `client()`
/// fail with [`HostServicesError`].
#[derive(Clone)]
pub struct Host {
    link: watch::Receiver<Link>,
    max_message_size: usize,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.link.borrow() {
            Link::NotYet => "not connected yet",
            Link::Connected(_) => "connected",
            Link::Disconnected => "disconnected",
        };
        f.debug_struct("Host")
            .field("state", &state)
            .field("max_message_size", &self.max_message_size)
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

impl Host {
    /// A handle that is not connected yet, and what connects it.
    pub(crate) fn new() -> (Host, LinkSetter) {
        let (set, link) = watch::channel(Link::NotYet);
        let host = Host {
            link,
            max_message_size: tether_protocol::DEFAULT_MAX_MESSAGE_SIZE,
        };
        (host, set)
    }

    /// A handle already connected through `channel`: for tests of a plugin's logic, with
    /// the channel of `tether_hostconn::in_process`.
    pub fn from_channel(channel: impl Into<Channel>) -> Host {
        let (host, set) = Host::new();
        set.send_replace(Link::Connected(channel.into()));
        host
    }

    /// This handle, with [`Host::files`] sending and accepting messages of up to `bytes`
    /// (default [`tether_protocol::DEFAULT_MAX_MESSAGE_SIZE`]); match the host's
    /// `Limits::max_message_size`. A client from [`Host::client`] sets its own limits, with
    /// its generated `max_decoding_message_size` and `max_encoding_message_size`.
    #[must_use]
    pub fn with_max_message_size(&self, bytes: usize) -> Host {
        Host {
            link: self.link.clone(),
            max_message_size: bytes,
        }
    }

    /// The client of tether's ready-made host services (`tether.hostserve.v1`: files
    /// beneath the plugin's workspace, named environment variables).
    pub fn files(&self) -> Result<HostFiles, HostServicesError> {
        Ok(HostFiles::new(self.channel(None)?, self.max_message_size))
    }

    /// A client of any other service the host serves on the connection, made by `make`
    /// (a generated client's `new`): `host.client(CounterClient::new)?`.
    pub fn client<C>(&self, make: impl FnOnce(HostChannel) -> C) -> Result<C, HostServicesError> {
        Ok(make(self.channel(None)?))
    }

    /// Waits until the host connects its services; fails at once if they were
    /// disconnected. Bound the wait with `tokio::time::timeout`.
    pub async fn connected(&self) -> Result<(), HostServicesError> {
        let mut link = self.link.clone();
        let link = link
            .wait_for(|link| !matches!(link, Link::NotYet))
            .await
            .map_err(|_| HostServicesError::Disconnected)?;
        match &*link {
            Link::Connected(_) => Ok(()),
            _ => Err(HostServicesError::Disconnected),
        }
    }

    /// The view of this handle for the call `request` is serving: its clients pass on the
    /// caller's request id, deadline and trace ([`CallContext::of`]), the trace with a new
    /// span id ([`CallContext::child`]). In a handler:
    /// `let host = self.host.for_call(&request);`.
    pub fn for_call<T>(&self, request: &Request<T>) -> CallHost {
        let context = CallContext::of(request);
        let context = context.child().unwrap_or_else(|err| {
            // The trace id still follows the call, under the caller's span id.
            tracing::warn!(%err, "no new span id for the host-service calls of this call");
            context
        });
        self.with_context(&context)
    }

    /// The view of this handle whose clients carry `context`.
    pub fn with_context(&self, context: &CallContext) -> CallHost {
        CallHost {
            host: self.clone(),
            context: Arc::new(context.clone()),
        }
    }

    fn channel(&self, context: Option<Arc<CallContext>>) -> Result<HostChannel, HostServicesError> {
        match &*self.link.borrow() {
            Link::Connected(channel) => Ok(HostChannel {
                channel: channel.clone(),
                context,
            }),
            Link::NotYet => Err(HostServicesError::NotConnected),
            Link::Disconnected => Err(HostServicesError::Disconnected),
        }
    }
}

/// A [`Host`] seen from one call: [`CallHost::files`] and [`CallHost::client`] give the
/// same clients as the host's, whose calls also carry the call's [`CallContext`]. Made
/// by [`Host::for_call`] or [`Host::with_context`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallHost {
    host: Host,
    context: Arc<CallContext>,
}

impl CallHost {
    /// [`Host::files`], whose calls carry this view's context (and, for unary calls whose
    /// context has no deadline, [`crate::DEFAULT_HOST_CALL_TIMEOUT`]).
    pub fn files(&self) -> Result<HostFiles, HostServicesError> {
        Ok(HostFiles::new(
            self.host.channel(Some(Arc::clone(&self.context)))?,
            self.host.max_message_size,
        ))
    }

    /// [`Host::client`], whose calls carry this view's context.
    pub fn client<C>(&self, make: impl FnOnce(HostChannel) -> C) -> Result<C, HostServicesError> {
        Ok(make(self.host.channel(Some(Arc::clone(&self.context)))?))
    }

    /// The context this view's calls carry, for example to log its request id.
    pub fn context(&self) -> &CallContext {
        &self.context
    }
}

/// The channel a host-service client rides: the one brokered connection to the host, and
/// for clients made from a [`CallHost`], the context of the call being served.
///
/// A `tower` service, so every generated client takes it (`XClient<HostChannel>`, the same
/// type from [`Host::client`] and [`CallHost::client`]). With a context, each call carries
/// its request id and the time left before its deadline as `grpc-timeout`; is bounded
/// locally by that deadline, its response stream too; and once the deadline has passed,
/// fails with `DEADLINE_EXCEEDED` without being sent.
#[derive(Debug, Clone)]
pub struct HostChannel {
    channel: Channel,
    context: Option<Arc<CallContext>>,
}

impl HostChannel {
    /// The context this channel's calls carry, if any.
    pub(crate) fn context(&self) -> Option<&CallContext> {
        self.context.as_deref()
    }

    /// This channel, its calls carrying `context` instead.
    pub(crate) fn with_context(&self, context: &CallContext) -> HostChannel {
        HostChannel {
            channel: self.channel.clone(),
            context: Some(Arc::new(context.clone())),
        }
    }
}

/// The error of a [`HostChannel`] call: a [`Status`], or the transport's error, boxed as
/// tonic expects.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for HostChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let Some(context) = self.context.clone() else {
            let call = self.channel.call(request);
            return Box::pin(call);
        };
        if let Err(status) = context.apply_to_headers(request.headers_mut()) {
            return Box::pin(std::future::ready(Err(status.into())));
        }
        let call = self.channel.call(request);
        let Some(deadline) = context.deadline() else {
            return Box::pin(call);
        };
        let deadline = Instant::from_std(deadline);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(response)) => Ok(response.map(|body| {
                    Body::new(DeadlineBody {
                        body,
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        context,
                        expired: false,
                    })
                })),
                Ok(Err(err)) if Instant::now() < deadline => Err(err),
                // Past the deadline, whatever ended the call (this timer, or tonic's own
                // on the same `grpc-timeout`, which reports CANCELLED) is the deadline.
                _ => Err(context.deadline_exceeded().into()),
            }
        })
    }
}

/// A response body that ends with `DEADLINE_EXCEEDED` once its call's deadline passes.
struct DeadlineBody {
    body: Body,
    deadline: Pin<Box<Sleep>>,
    context: Arc<CallContext>,
    expired: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(this.context.deadline_exceeded())));
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Takes the lane the host offered in `request` and starts frames on it.
async fn take_lane(request: &EstablishRequest) -> Result<FramedChannel, String> {
    let stream = crate::lanes::take(
        request.lane_memory,
        request.lane_data_bell,
        request.lane_room_bell,
    )
    .await?;
    FramedChannel::start(stream, "the host's services (lane)")
        .await
        .map_err(|err| format!("could not start frames on the lane: {err}"))
}

/// `tether.hostconn.v1.Acceptor`, served when the plugin opted in.
pub(crate) struct AcceptorService {
    pub(crate) broker: Broker,
    pub(crate) set: LinkSetter,
}

#[tonic::async_trait]
impl Acceptor for AcceptorService {
    async fn establish(
        &self,
        request: Request<EstablishRequest>,
    ) -> Result<Response<EstablishResponse>, Status> {
        let request = request.into_inner();
        if request.lane_memory != 0 {
            match take_lane(&request).await {
                Ok(channel) => {
                    self.set.send_replace(Link::Connected(channel.into()));
                    tracing::debug!("host services connected on a lane");
                    return Ok(Response::new(EstablishResponse { lane: true }));
                }
                Err(reason) => {
                    tracing::warn!(%reason, "could not take the lane the host offered; dialing its socket instead");
                }
            }
        }
        let id = request.broker_id;
        let channel = self.broker.dial(id).await.map_err(|err| {
            tracing::warn!(%err, "could not connect to the host's services");
            Status::unavailable(format!(
                "the plugin could not dial the host's services: {err}"
            ))
        })?;
        self.set.send_replace(Link::Connected(channel));
        tracing::debug!(broker_id = id, "host services connected");
        Ok(Response::new(EstablishResponse { lane: false }))
    }

    async fn disconnect(
        &self,
        _request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectResponse>, Status> {
        self.set.send_replace(Link::Disconnected);
        tracing::debug!("host services disconnected");
        Ok(Response::new(DisconnectResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tether_protocol::REQUEST_ID_METADATA;
    use tether_test_contract::testing::host_testing_client::HostTestingClient;
    use tether_test_contract::testing::host_testing_server::{HostTesting, HostTestingServer};
    use tether_test_contract::testing::{WhoAmIRequest, WhoAmIResponse};
    use tether_transport::{Listener, Peer};
    use tonic::Code;
    use tonic::service::Routes;
    use tonic::transport::Server;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// What the server saw of each call: its request id and `grpc-timeout`.
    #[derive(Default)]
    struct Seen {
        calls: Mutex<Vec<(Option<String>, Option<String>)>>,
    }

    #[tonic::async_trait]
    impl HostTesting for Seen {
        async fn who_am_i(
            &self,
            request: Request<WhoAmIRequest>,
        ) -> Result<Response<WhoAmIResponse>, Status> {
            let header = |key| {
                request
                    .metadata()
                    .get(key)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            };
            let seen = (
                header(REQUEST_ID_METADATA),
                header(tether_protocol::GRPC_TIMEOUT_METADATA),
            );
            self.calls.lock().unwrap().push(seen);
            if request.get_ref().claimed_name == "slow" {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(Response::new(WhoAmIResponse::default()))
        }
    }

    /// A [`Host`] connected over a real Unix socket to `HostTesting` and health, served
    /// in this process; and what the server sees.
    async fn host() -> (Host, Arc<Seen>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let me = Peer::Process(std::process::id());
        let listener = Listener::bind(dir.path(), "host-", me.clone(), "test".into()).unwrap();
        let path = listener.path().to_owned();
        let seen = Arc::new(Seen::default());
        let (_health, health) = tonic_health::server::health_reporter();
        let routes =
            Routes::new(HostTestingServer::from_arc(Arc::clone(&seen))).add_service(health);
        tokio::spawn(
            Server::builder()
                .add_routes(routes)
                .serve_with_incoming(listener),
        );
        let channel = tether_transport::connect(&path, me).await.unwrap();
        (Host::from_channel(channel), seen, dir)
    }

    fn context(id: &str, timeout: Duration) -> CallContext {
        CallContext::new()
            .with_request_id(id)
            .unwrap()
            .with_timeout(timeout)
    }

    fn timeout_of(seen: &(Option<String>, Option<String>)) -> Duration {
        seen.1
            .as_deref()
            .and_then(tether_protocol::parse_grpc_timeout)
            .expect("a grpc-timeout")
    }

    #[tokio::test]
    async fn a_calls_view_puts_its_request_id_and_deadline_on_the_wire() {
        let (host, seen, _dir) = host().await;
        host.connected().await.unwrap();

        // The host's own client sends neither.
        host.client(HostTestingClient::new)
            .unwrap()
            .who_am_i(WhoAmIRequest::default())
            .await
            .unwrap();
        // The view for a served request passes on what that request carried.
        let served = context("req-1", Duration::from_secs(5))
            .request(())
            .unwrap();
        let call = host.for_call(&served);
        assert_eq!(call.context().request_id(), Some("req-1"));
        let mut client: HostTestingClient<HostChannel> =
            call.client(HostTestingClient::new).unwrap();
        client.who_am_i(WhoAmIRequest::default()).await.unwrap();
        // The context's deadline replaces a later one set on the request itself.
        let mut request = Request::new(WhoAmIRequest::default());
        request.set_timeout(Duration::from_secs(60));
        client.who_am_i(request).await.unwrap();

        let calls = seen.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[0], (None, None));
        for call in &calls[1..] {
            assert_eq!(call.0.as_deref(), Some("req-1"));
            let left = timeout_of(call);
            assert!(
                left <= Duration::from_secs(5) && left > Duration::from_secs(4),
                "{call:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_passed_deadline_fails_the_call_without_sending_it() {
        let (host, seen, _dir) = host().await;
        let late = host.with_context(&context("late-1", Duration::ZERO));
        let status = late
            .client(HostTestingClient::new)
            .unwrap()
            .who_am_i(WhoAmIRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("late-1"), "{status:?}");
        // The file client rides the same channel.
        let files = late.files().unwrap().get_env("HOME").await.unwrap_err();
        assert!(
            matches!(
                files,
                crate::HostCallError::Other {
                    code: Code::DeadlineExceeded,
                    ..
                }
            ),
            "{files:?}"
        );
        assert!(
            seen.calls.lock().unwrap().is_empty(),
            "the server saw a call"
        );
    }

    #[tokio::test]
    async fn a_call_and_its_response_stream_end_at_the_deadline() {
        let (host, seen, _dir) = host().await;
        let call = host.with_context(&context("slow-1", Duration::from_millis(300)));
        let began = std::time::Instant::now();
        let status = call
            .client(HostTestingClient::new)
            .unwrap()
            .who_am_i(WhoAmIRequest {
                claimed_name: "slow".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("slow-1"), "{status:?}");
        assert!(began.elapsed() < Duration::from_secs(10));
        assert_eq!(seen.calls.lock().unwrap().len(), 1);

        // Health's Watch answers at once, then stays open: the stream ends at the deadline.
        let call = host.with_context(&context("watch-1", Duration::from_millis(300)));
        let mut watch = call
            .client(HealthClient::new)
            .unwrap()
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        watch.message().await.unwrap().expect("the current status");
        let status = watch.message().await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("watch-1"), "{status:?}");
    }

    #[tokio::test]
    async fn before_and_after_the_connection_clients_say_why_not() {
        let (host, set) = Host::new();
        assert_eq!(host.files().map(drop), Err(HostServicesError::NotConnected));
        let waiting = tokio::spawn({
            let host = host.clone();
            async move { host.connected().await }
        });
        set.send_replace(Link::Disconnected);
        assert_eq!(waiting.await.unwrap(), Err(HostServicesError::Disconnected));
        assert_eq!(
            host.client(HostTestingClient::new).map(drop),
            Err(HostServicesError::Disconnected)
        );
        assert_eq!(
            Status::from(HostServicesError::Disconnected).code(),
            Code::FailedPrecondition
        );
    }
}
