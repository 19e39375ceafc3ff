//! [`Link`]: a channel to a peer, over HTTP/2 or over frames.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::TryFutureExt;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;

use crate::frames::FramedChannel;

/// A channel to a peer, whichever way it speaks: tonic's HTTP/2 [`Channel`] (any gRPC
/// peer, go-plugin's included) or a [`FramedChannel`] (a tether peer that agreed to
/// frames). Generated clients take either (`MyClient::new(link)`); cheap to clone.
#[derive(Debug, Clone)]
pub enum Link {
    /// gRPC over HTTP/2.
    Http2(Channel),
    /// gRPC's calls over tether's frames.
    Framed(FramedChannel),
}

impl Link {
    /// Whether calls go over frames.
    pub fn is_framed(&self) -> bool {
        matches!(self, Link::Framed(_))
    }
}

impl From<Channel> for Link {
    fn from(channel: Channel) -> Self {
        Link::Http2(channel)
    }
}

impl From<FramedChannel> for Link {
    fn from(channel: FramedChannel) -> Self {
        Link::Framed(channel)
    }
}

/// The error of a call on a [`Link`]: tonic turns it into the call's status.
pub type LinkError = Box<dyn StdError + Send + Sync>;

impl tower::Service<http::Request<Body>> for Link {
    type Response = http::Response<Body>;
    type Error = LinkError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, LinkError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        match self {
            Link::Http2(channel) => channel.poll_ready(cx).map_err(Into::into),
            Link::Framed(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Link::Http2(channel) => Box::pin(channel.call(request).map_err(Into::into)),
            Link::Framed(channel) => Box::pin(channel.call(request).map_err(Into::into)),
        }
    }
}
