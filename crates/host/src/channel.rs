//! [`PluginChannel`]: the channel to a plugin, with a default deadline for every call.

use std::task::{Context, Poll};
use std::time::Duration;

use tether_protocol::GRPC_TIMEOUT_METADATA as GRPC_TIMEOUT;
use tether_transport::activity::{Activity, Tracked, TrackedFuture};
use tether_transport::{Link, LinkError};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderValue};

/// The gRPC channel to a plugin's main connection, from [`crate::PluginClient::channel`]:
/// build any generated client on it (`MyClient::new(plugin.channel())`). Cheap to clone.
///
/// A call that carries no deadline of its own gets the plugin's default one
/// ([`crate::PluginBuilder::call_timeout`], 30 s unless configured), sent to the plugin as
/// the call's `grpc-timeout`, so both sides give up together. A call's own deadline
/// (`request.set_timeout(...)`) wins, longer or shorter. The deadline covers a call until
/// its response starts, so a long upload to a plugin (a client stream) needs its own
/// deadline, or `call_timeout(None)`.
///
/// Every call counts in the plugin's [`Activity`](crate::PluginClient::activity) until its
/// response ends: an open stream keeps the plugin from counting as idle.
#[derive(Debug, Clone)]
pub struct PluginChannel {
    inner: Tracked<Link>,
    deadline: Option<HeaderValue>,
}

impl PluginChannel {
    pub(crate) fn new(
        inner: Link,
        deadline: Option<Duration>,
        activity: &Activity,
    ) -> PluginChannel {
        PluginChannel {
            inner: Tracked::new(inner, Some(activity.clone())),
            deadline: deadline.and_then(|deadline| {
                HeaderValue::try_from(tether_protocol::format_grpc_timeout(deadline)).ok()
            }),
        }
    }
}

impl Service<http::Request<Body>> for PluginChannel {
    type Response = http::Response<Body>;
    type Error = LinkError;
    type Future = TrackedFuture<<Link as Service<http::Request<Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(deadline) = &self.deadline {
            request
                .headers_mut()
                .entry(GRPC_TIMEOUT)
                .or_insert_with(|| deadline.clone());
        }
        Service::call(&mut self.inner, request)
    }
}
