//! [`Activity`]: how many calls are under way between a host and one plugin, and since
//! when none is, so a supervisor can stop a plugin that has been idle (and only then).
//!
//! A call counts from the moment it is made until its response body ends or is dropped:
//! a server stream or a bidirectional stream keeps its call under way for as long as it is
//! open. [`Tracked`] (or [`ActivityLayer`] on a tonic server) counts every call through a
//! service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

/// Calls under way with one plugin, both ways, and when the last one ended. Cheap to
/// clone; clones count together.
#[derive(Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    busy: AtomicUsize,
    /// When the last call ended (or the activity was made), in nanoseconds after `origin`.
    last: AtomicU64,
    origin: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activity")
            .field("in_flight", &self.in_flight())
            .field("idle_for", &self.idle_for())
            .finish()
    }
}

impl Activity {
    /// No call under way, idle from now.
    pub fn new() -> Activity {
        Activity {
            inner: Arc::new(Inner {
                busy: AtomicUsize::new(0),
                last: AtomicU64::new(0),
                origin: Instant::now(),
            }),
        }
    }

    /// One call under way until the returned guard is dropped.
    pub fn begin(&self) -> Busy {
        self.inner.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
        }
    }

    /// How many calls are under way now.
    pub fn in_flight(&self) -> usize {
        self.inner.busy.load(Ordering::Acquire)
    }

    /// How long no call has been under way; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight() > 0 {
            return None;
        }
        let last = Duration::from_nanos(self.inner.last.load(Ordering::Acquire));
        let idle = self.inner.origin.elapsed().saturating_sub(last);
        // A call may have begun since the check above: then it is not idle.
        (self.in_flight() == 0).then_some(idle)
    }

    fn ended(&self) {
        let now = u64::try_from(self.inner.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.inner.last.fetch_max(now, Ordering::AcqRel);
        self.inner.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call under way ([`Activity::begin`]); it ends when this is dropped.
#[must_use = "the call counts as under way only while this guard lives"]
pub struct Busy {
    activity: Activity,
}

impl fmt::Debug for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Busy")
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity.ended();
    }
}

/// A service whose every call counts in an [`Activity`] until its response body ends.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Option<Activity>,
}

impl<S> Tracked<S> {
    /// `inner`, counting its calls in `activity` (none: not counted).
    pub fn new(inner: S, activity: Option<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }

    /// The activity its calls count in.
    pub fn activity(&self) -> Option<&Activity> {
        self.activity.as_ref()
    }
}

impl<S, B> Service<http::Request<B>> for Tracked<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        TrackedFuture {
            busy: self.activity.as_ref().map(Activity::begin),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`Tracked`] call: its body keeps the call under way.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(response.map(|response| match this.busy.take() {
            Some(busy) => response.map(|body| Body::new(TrackedBody { body, _busy: busy })),
            None => response,
        }))
    }
}

pin_project_lite::pin_project! {
    struct TrackedBody {
        #[pin]
        body: Body,
        _busy: Busy,
    }
}

impl http_body::Body for TrackedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// [`Tracked`] as a tower layer (for a tonic server's `layer`).
#[derive(Debug, Clone, Default)]
pub struct ActivityLayer {
    activity: Option<Activity>,
}

impl ActivityLayer {
    /// Counts every call of the wrapped service in `activity` (none: not counted).
    pub fn new(activity: Option<Activity>) -> ActivityLayer {
        ActivityLayer { activity }
    }
}

impl<S> Layer<S> for ActivityLayer {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked::new(inner, self.activity.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_counts_until_its_guard_goes_and_idleness_starts_then() {
        let activity = Activity::new();
        assert_eq!(activity.in_flight(), 0);
        assert!(activity.idle_for().is_some());
        let first = activity.begin();
        let second = activity.clone().begin();
        assert_eq!(activity.in_flight(), 2);
        assert_eq!(activity.idle_for(), None);
        drop(first);
        assert_eq!(activity.idle_for(), None, "one call is still under way");
        drop(second);
        let idle = activity.idle_for().expect("idle");
        assert!(
            idle < Duration::from_secs(60),
            "idle counts from the last end"
        );
    }
}
