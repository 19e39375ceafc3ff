//! What the server does around every call, at the edges a handler does not see:
//!
//! - a handler that panics fails its call with `INTERNAL`, whose message carries the panic
//!   message and where it happened, and the plugin keeps serving (without this, the call's
//!   connection task dies, the host sees `Cancelled: h2 protocol error`, and the panic text
//!   arrives later as stray stderr);
//! - a call to a service or method the plugin does not serve fails with `UNIMPLEMENTED`
//!   saying what was asked for and which services the plugin does serve (tonic's own answer
//!   has an empty message).
//!
//! Why not a ready-made layer: tower-http's `CatchPanicLayer` answers HTTP 500, which a
//! gRPC client reads as an `UNKNOWN`/transport failure, and it neither sees the panic's
//! location nor covers a panic while a response stream is being produced. This layer
//! polls the handler's future and the response body under `catch_unwind`, and a panic hook
//! (installed once, chaining to the previous hook for every other panic) records the
//! message and location of a panic raised there instead of printing it.
//!
//! Only with `panic = "unwind"` (Rust's default): under `panic = "abort"` the process
//! ends, and the host reports the exit. A panic in a task or thread the handler spawned is
//! not the call's (it reaches the previous hook, and the handler sees a `JoinError`); a
//! panic the handler catches itself is recorded by the hook but not printed.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::pin::{Pin, pin};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{Request, Response};
use tonic::service::Routes;
use tower::{Layer, Service};

thread_local! {
    /// Set while this thread polls a handler's future or response body.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// What the hook recorded of the last panic raised while `CATCHING`.
    static CAUGHT: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

/// A caught panic: its message and where it was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Panic {
    message: String,
    /// `file:line:column`, when the hook saw it.
    location: Option<String>,
}

impl Panic {
    /// The `INTERNAL` status's message.
    fn describe(&self) -> String {
        match &self.location {
            Some(location) => format!("plugin handler panicked at {location}: {}", self.message),
            None => format!("plugin handler panicked: {}", self.message),
        }
    }
}

/// Installs, once per process, the hook that records panics raised under [`guarded`]
/// instead of printing them; every other panic goes to the hook that was there before.
fn install_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if CATCHING.with(Cell::get) {
                let panic = Panic {
                    message: payload_text(info.payload()),
                    location: info.location().map(ToString::to_string),
                };
                CAUGHT.with(|caught| *caught.borrow_mut() = Some(panic));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic whose payload is not a string".to_owned()
    }
}

/// Runs `f` (one poll of a handler's future or body), turning a panic into a [`Panic`].
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    let was = CATCHING.with(|catching| catching.replace(true));
    CAUGHT.with(|caught| caught.borrow_mut().take());
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|catching| catching.set(was));
    result.map_err(|payload| {
        CAUGHT
            .with(|caught| caught.borrow_mut().take())
            // Someone replaced our hook after it was installed: no location then.
            .unwrap_or_else(|| Panic {
                message: payload_text(&*payload),
                location: None,
            })
    })
}

/// The longest panic description a status carries: it travels in an HTTP/2 header (or
/// trailer), whose size the client limits. The log line has it whole.
const MAX_STATUS_MESSAGE: usize = 1024;

/// Logs a caught panic at error level (the host forwards it as the plugin's log line) and
/// gives the status the call fails with.
fn panicked(path: &str, panic: &Panic) -> Status {
    let description = panic.describe();
    tracing::error!(
        target: "tether_plugin_sdk::calls",
        method = path,
        panic = panic.message,
        location = panic.location.as_deref().unwrap_or("unknown"),
        "{description}; the call fails with INTERNAL and the plugin keeps serving"
    );
    Status::internal(capped(description))
}

/// `text`, cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary, saying so.
fn capped(mut text: String) -> String {
    if text.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut; the plugin's error log has the whole message)");
    }
    text
}

/// The names of the services `routes` serves, for error messages.
///
/// tonic's `Routes` does not list its services, but its `Debug` output shows the paths it
/// routes, `"/<service>/{*rest}"`, one per service. Only diagnostics depend on this: if a
/// tonic or axum upgrade changes that output, the list comes out empty (a unit test says
/// so) and the error message says it could not list them.
pub(crate) fn served_services(routes: &Routes) -> Vec<String> {
    const SUFFIX: &str = "/{*rest}\"";
    let text = format!("{routes:?}");
    let mut names: Vec<String> = text
        .split("\"/")
        .skip(1)
        .filter_map(|part| part.find(SUFFIX).map(|end| &part[..end]))
        .filter(|name| !name.is_empty() && !name.contains(['/', '"', ' ']))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The tower layer the plugin's server runs every call through; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct CallLayer {
    served: Arc<[String]>,
}

impl CallLayer {
    /// A layer for a server serving `served` (from [`served_services`]).
    pub(crate) fn new(served: Vec<String>) -> Self {
        install_hook();
        CallLayer {
            served: served.into(),
        }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            served: Arc::clone(&self.served),
        }
    }
}

/// The service [`CallLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct CallService<S> {
    inner: S,
    served: Arc<[String]>,
}

impl<S, B> Service<Request<B>> for CallService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<GuardedBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GuardedBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path: Arc<str> = request.uri().path().into();
        let served = Arc::clone(&self.served);
        let called = guarded(|| self.inner.call(request));
        Box::pin(async move {
            let future = match called {
                Ok(future) => future,
                Err(panic) => return Ok(status_response(panicked(&path, &panic))),
            };
            let mut future = pin!(future);
            let answered = poll_fn(|cx| match guarded(|| future.as_mut().poll(cx)) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
                Err(panic) => Poll::Ready(Err(panic)),
            })
            .await;
            match answered {
                Ok(Ok(response)) if is_bare_unimplemented(&response) => {
                    Ok(status_response(not_served(&path, &served)))
                }
                Ok(Ok(response)) => Ok(response.map(|body| GuardedBody::new(body, path))),
                Ok(Err(err)) => Err(err),
                Err(panic) => Ok(status_response(panicked(&path, &panic))),
            }
        })
    }
}

/// A trailers-only response carrying `status`.
fn status_response(status: Status) -> Response<GuardedBody> {
    let (parts, ()) = status.into_http::<()>().into_parts();
    Response::from_parts(parts, GuardedBody::done())
}

/// Whether `response` is tonic's `UNIMPLEMENTED` with no message: what its router answers
/// for an unknown service, and a generated server for an unknown method.
fn is_bare_unimplemented(response: &Response<Body>) -> bool {
    let headers = response.headers();
    let unimplemented = headers
        .get(Status::GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == b"12");
    let message = headers
        .get(Status::GRPC_MESSAGE)
        .is_some_and(|message| !message.is_empty());
    unimplemented && !message
}

/// The `UNIMPLEMENTED` status for a call to `path`, which the plugin does not serve.
fn not_served(path: &str, served: &[String]) -> Status {
    let asked = path.strip_prefix('/').unwrap_or(path);
    let service = asked.split_once('/').map_or(asked, |(service, _)| service);
    let list = if served.is_empty() {
        "(the plugin could not list its services)".to_owned()
    } else {
        served.join(", ")
    };
    let message = if served.iter().any(|name| name == service) {
        format!(
            "this plugin serves `{service}` but not the method `{asked}`: host and plugin were \
             probably built from different versions of that service's contract; it serves: \
             {list}"
        )
    } else {
        format!("this plugin does not serve `{asked}`; it serves: {list}")
    };
    Status::unimplemented(message)
}

/// A response body polled under [`guarded`]: a panic while producing a response stream
/// ends the stream with trailers carrying `INTERNAL` and the panic message, which the
/// client reads as the stream's final status (after the messages sent before it).
#[derive(Debug)]
pub(crate) struct GuardedBody {
    /// `None` once the body has ended with a panic, or for a trailers-only answer.
    inner: Option<Body>,
    /// The call's path, for the log line.
    path: Arc<str>,
}

impl GuardedBody {
    fn new(inner: Body, path: Arc<str>) -> Self {
        GuardedBody {
            inner: Some(inner),
            path,
        }
    }

    fn done() -> Self {
        GuardedBody {
            inner: None,
            path: Arc::from(""),
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match guarded(|| Pin::new(inner).poll_frame(cx)) {
            Ok(poll) => poll,
            Err(panic) => {
                // The inner body is in an unknown state: never poll it again.
                this.inner = None;
                Poll::Ready(Some(Ok(trailers(&panicked(&this.path, &panic)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = tonic::codegen::http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be encoded fails; the code alone still tells.
        let bare = Status::new(status.code(), "");
        let _ = bare.add_header(&mut map);
    }
    Frame::trailers(map)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Body as _;
    use tether_protocol::plugin::grpc_controller_server::GrpcControllerServer;
    use tonic::codegen::http;

    use super::*;

    fn request(path: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://plugin{path}"))
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .expect("a valid request")
    }

    /// A service whose future panics, or whose body does, or that answers `status`.
    #[derive(Clone)]
    enum Fake {
        PanicInFuture,
        PanicInBody,
        Answer(Status),
    }

    impl Service<Request<Body>> for Fake {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                match this {
                    Fake::PanicInFuture => panic!("boom in the handler"),
                    Fake::PanicInBody => {
                        let stream = futures_util::stream::once(async {
                            panic!("boom in the stream");
                            #[allow(unreachable_code)]
                            Ok::<_, Status>(Frame::data(Bytes::new()))
                        });
                        let body = stream_body(stream);
                        Ok(Response::new(body))
                    }
                    Fake::Answer(status) => {
                        let (parts, ()) = status.into_http::<()>().into_parts();
                        Ok(Response::from_parts(parts, Body::empty()))
                    }
                }
            })
        }
    }

    /// A body from a stream of frames.
    fn stream_body(
        stream: impl futures_util::Stream<Item = Result<Frame<Bytes>, Status>> + Send + 'static,
    ) -> Body {
        struct StreamBody<S>(Pin<Box<S>>);
        impl<S: futures_util::Stream<Item = Result<Frame<Bytes>, Status>>> http_body::Body
            for StreamBody<S>
        {
            type Data = Bytes;
            type Error = Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
                self.0.as_mut().poll_next(cx)
            }
        }
        Body::new(StreamBody(Box::pin(stream)))
    }

    async fn call(fake: Fake, path: &str, served: &[&str]) -> Response<GuardedBody> {
        let layer = CallLayer::new(served.iter().map(|s| (*s).to_owned()).collect());
        let mut service = layer.layer(fake);
        service.call(request(path)).await.expect("infallible")
    }

    fn status_of(response: &Response<GuardedBody>) -> Status {
        Status::from_header_map(response.headers()).expect("a trailers-only status")
    }

    #[tokio::test]
    async fn a_panic_in_the_handler_is_internal_with_message_and_location() {
        let response = call(Fake::PanicInFuture, "/pkg.Svc/Do", &[]).await;
        let status = status_of(&response);
        assert_eq!(status.code(), tonic::Code::Internal);
        let text = status.message();
        assert!(
            text.starts_with("plugin handler panicked at crates/plugin-sdk/src/calls.rs:"),
            "{text}"
        );
        assert!(text.ends_with(": boom in the handler"), "{text}");
    }

    #[tokio::test]
    async fn a_panic_in_a_response_stream_ends_it_with_internal_trailers() {
        let response = call(Fake::PanicInBody, "/pkg.Svc/Stream", &[]).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        let mut body = pin!(response.into_body());
        let frame = poll_fn(|cx| body.as_mut().poll_frame(cx))
            .await
            .expect("a frame")
            .expect("not an error");
        let trailers = frame.into_trailers().expect("trailers");
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().contains("calls.rs:")
                && status.message().ends_with("boom in the stream"),
            "{}",
            status.message()
        );
        assert!(body.is_end_stream());
        assert!(poll_fn(|cx| body.as_mut().poll_frame(cx)).await.is_none());
    }

    #[tokio::test]
    async fn an_unknown_service_names_the_path_and_the_served_services() {
        let served = ["plugin.GRPCController", "tether.testing.v1.Testing"];
        let bare = Fake::Answer(Status::unimplemented(""));
        let status = status_of(&call(bare.clone(), "/pkg.Svc/Method", &served).await);
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.message(),
            "this plugin does not serve `pkg.Svc/Method`; it serves: plugin.GRPCController, \
             tether.testing.v1.Testing"
        );
        let status = status_of(&call(bare, "/tether.testing.v1.Testing/Gone", &served).await);
        assert!(
            status
                .message()
                .starts_with("this plugin serves `tether.testing.v1.Testing` but not the method"),
            "{}",
            status.message()
        );
        // A handler's own UNIMPLEMENTED, with a message, is left alone.
        let own = Fake::Answer(Status::unimplemented("not yet"));
        let status = status_of(&call(own, "/tether.testing.v1.Testing/Echo", &served).await);
        assert_eq!(status.message(), "not yet");
    }

    #[test]
    fn served_services_are_read_from_the_routes() {
        struct Nothing;
        #[tonic::async_trait]
        impl tether_protocol::plugin::grpc_controller_server::GrpcController for Nothing {
            async fn shutdown(
                &self,
                _: tonic::Request<tether_protocol::plugin::Empty>,
            ) -> Result<tonic::Response<tether_protocol::plugin::Empty>, Status> {
                Err(Status::unimplemented("test"))
            }
        }
        let (_, health) = tonic_health::server::health_reporter();
        let routes = Routes::new(GrpcControllerServer::new(Nothing)).add_service(health);
        assert_eq!(
            served_services(&routes),
            ["grpc.health.v1.Health", "plugin.GRPCController"]
        );
    }

    #[test]
    fn long_panic_messages_are_cut_at_a_character_boundary() {
        assert_eq!(capped("short".into()), "short");
        let long = "é".repeat(MAX_STATUS_MESSAGE);
        let cut = capped(long);
        assert!(cut.len() < MAX_STATUS_MESSAGE + 80, "{}", cut.len());
        assert!(cut.ends_with("the plugin's error log has the whole message)"));
    }

    #[test]
    fn a_guarded_panic_is_caught_and_the_flag_restored() {
        install_hook();
        assert!(!CATCHING.with(Cell::get));
        let caught = guarded(|| panic!("inside"));
        assert_eq!(caught.map_err(|p| p.message), Err("inside".to_owned()));
        assert!(!CATCHING.with(Cell::get), "the flag is restored");
    }
}
