//! [`CallContext`]: what a call carries from process to process besides its message, so
//! that a host's request id and deadline follow the work through a plugin and into the
//! plugin's calls back to the host (the gRPC equivalent of passing Go's `ctx` along).
//!
//! The deadline travels as gRPC's own `grpc-timeout` header (tonic enforces it on the
//! server side), the request id as `tether-request-id` metadata, and a W3C trace context
//! ([`TraceContext`]) as `traceparent` metadata. A request id and a trace id are
//! correlation aids chosen by the caller, never an identity: hosts identify plugins by
//! their connection.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tonic::codegen::http::{HeaderMap, HeaderValue};
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The metadata key of a request id.
pub const REQUEST_ID_METADATA: &str = "tether-request-id";

/// The metadata key of a W3C trace context (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT_METADATA: &str = "traceparent";

/// The header in which gRPC carries a call's deadline (`grpc-timeout`, for example `30S`).
pub const GRPC_TIMEOUT_METADATA: &str = "grpc-timeout";

/// The metadata key in which a host names the capability a denied call lacked
/// (`tether-capability`, for example `read:config/app.toml`).
pub const CAPABILITY_METADATA: &str = "tether-capability";

/// The longest request id accepted.
const MAX_REQUEST_ID: usize = 64;

/// Whether `id` is a well-formed request id: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Parses a `grpc-timeout` header value: at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), as the gRPC over HTTP/2 specification writes it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at_checked(split)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` header value: the most precise unit whose
/// amount fits in 8 digits (the inverse of [`parse_grpc_timeout`], to that precision).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(char, u128); 6] = [
        ('n', timeout.as_nanos()),
        ('u', timeout.as_micros()),
        ('m', timeout.as_millis()),
        ('S', u128::from(timeout.as_secs())),
        ('M', u128::from(timeout.as_secs() / 60)),
        ('H', u128::from(timeout.as_secs() / 3600)),
    ];
    units.iter().find(|(_, amount)| *amount <= MAX).map_or_else(
        || format!("{MAX}H"),
        |(unit, amount)| format!("{amount}{unit}"),
    )
}

/// Why a `traceparent` value, or a new trace context, could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// The value is not `00-<32 hex>-<16 hex>-<2 hex>`, in lowercase.
    #[error(
        "malformed traceparent {0:?}: expected 00-<32 lowercase hex trace id>-<16 lowercase \
         hex parent id>-<2 lowercase hex flags>"
    )]
    Malformed(String),
    /// The trace id is all zeros, which the W3C specification makes invalid.
    #[error("invalid traceparent: the trace id is all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros, which the W3C specification makes invalid.
    #[error("invalid traceparent: the parent id is all zeros")]
    ZeroParentId,
    /// The operating system gave no random bytes for new ids.
    #[error("no random bytes for a trace id: {0}")]
    Random(String),
}

impl From<TraceparentError> for Status {
    fn from(err: TraceparentError) -> Self {
        match err {
            TraceparentError::Random(_) => Status::internal(err.to_string()),
            _ => Status::invalid_argument(err.to_string()),
        }
    }
}

/// A W3C trace context, version `00`: the trace a call belongs to, the span that made the
/// call (its parent id), and the trace flags. Sent as `traceparent` metadata, written
/// `00-<trace id>-<parent id>-<flags>` in lowercase hex.
///
/// ```
/// use tether_protocol::TraceContext;
///
/// let root = TraceContext::new_root()?;
/// let child = root.child()?;
/// assert_eq!(child.trace_id(), root.trace_id());
/// assert_ne!(child.span_id(), root.span_id());
/// assert_eq!(child.to_string().parse::<TraceContext>()?, child);
/// # Ok::<(), tether_protocol::TraceparentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// The `sampled` trace flag.
const SAMPLED: u8 = 0x01;

fn random<const N: usize>() -> Result<[u8; N], TraceparentError> {
    let mut bytes = [0u8; N];
    // getrandom(2), which plugin sandboxes allow; never all zeros in practice, but the
    // specification forbids it, so draw again in that case.
    for _ in 0..4 {
        getrandom::fill(&mut bytes).map_err(|err| TraceparentError::Random(err.to_string()))?;
        if bytes.iter().any(|&b| b != 0) {
            return Ok(bytes);
        }
    }
    Err(TraceparentError::Random(
        "the operating system returned zeros".to_owned(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// A new trace: random trace and span ids, sampled.
    pub fn new_root() -> Result<Self, TraceparentError> {
        Ok(TraceContext {
            trace_id: random()?,
            span_id: random()?,
            flags: SAMPLED,
        })
    }

    /// The context of a call made from this one: the same trace id and flags, a new random
    /// span id.
    pub fn child(&self) -> Result<Self, TraceparentError> {
        Ok(TraceContext {
            span_id: random()?,
            ..*self
        })
    }

    /// The trace id, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id (the `parent-id` of the `traceparent` sent), as 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }
}

impl FromStr for TraceContext {
    type Err = TraceparentError;

    /// Parses a version `00` `traceparent`, strictly: exactly four dash-separated fields of
    /// 2, 32, 16 and 2 lowercase hex digits, non-zero ids.
    fn from_str(value: &str) -> Result<Self, TraceparentError> {
        let malformed = || TraceparentError::Malformed(value.escape_debug().to_string());
        let mut fields = value.split('-');
        let (Some(version), Some(trace_id), Some(span_id), Some(flags), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(malformed());
        };
        if version != "00" {
            return Err(malformed());
        }
        let trace_id = parse_hex::<16>(trace_id).ok_or_else(malformed)?;
        let span_id = parse_hex::<8>(span_id).ok_or_else(malformed)?;
        let [flags] = parse_hex::<1>(flags).ok_or_else(malformed)?;
        if trace_id == [0; 16] {
            return Err(TraceparentError::ZeroTraceId);
        }
        if span_id == [0; 8] {
            return Err(TraceparentError::ZeroParentId);
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.span_id(),
            self.flags
        )
    }
}

/// A request id, a deadline and a trace context, read from an incoming request and applied
/// to outgoing ones.
///
/// ```
/// use std::time::Duration;
/// use tether_protocol::CallContext;
///
/// // A host starts a call with an id and a 5 s budget...
/// let context = CallContext::new().with_request_id("demo-1")?.with_timeout(Duration::from_secs(5));
/// let outgoing = context.request("payload")?;
///
/// // ...a plugin reads both from the request it receives, and passes them on.
/// let received = CallContext::of(&outgoing);
/// assert_eq!(received.request_id(), Some("demo-1"));
/// assert!(received.remaining().is_some_and(|left| left <= Duration::from_secs(5)));
/// let onward = received.request(())?;
/// assert_eq!(CallContext::of(&onward).request_id(), Some("demo-1"));
/// # Ok::<(), tonic::Status>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    request_id: Option<String>,
    deadline: Option<Instant>,
    trace: Option<TraceContext>,
}

impl CallContext {
    /// No request id and no deadline.
    pub fn new() -> Self {
        CallContext::default()
    }

    /// The context `request` carries: its request id and trace context, if well formed
    /// (others are ignored), and its deadline, counted from now.
    pub fn of<T>(request: &Request<T>) -> Self {
        let metadata = request.metadata();
        let request_id = metadata
            .get(REQUEST_ID_METADATA)
            .and_then(|value| value.to_str().ok())
            .filter(|id| valid_request_id(id))
            .map(str::to_owned);
        let deadline = metadata
            .get(GRPC_TIMEOUT_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let trace = metadata
            .get(TRACEPARENT_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        CallContext {
            request_id,
            deadline,
            trace,
        }
    }

    /// This context with `id` as its request id; `INVALID_ARGUMENT` if `id` is not well
    /// formed (see [`valid_request_id`]).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Result<Self, Status> {
        let id = id.into();
        if !valid_request_id(&id) {
            return Err(Status::invalid_argument(format!(
                "invalid request id {:?}: use 1 to {MAX_REQUEST_ID} characters of \
                 A-Z a-z 0-9 . _ : -",
                id.escape_debug().to_string()
            )));
        }
        self.request_id = Some(id);
        Ok(self)
    }

    /// This context with the trace context `traceparent` (see [`TraceContext`]); a typed
    /// error if it is not a well-formed version `00` `traceparent`.
    pub fn with_traceparent(mut self, traceparent: &str) -> Result<Self, TraceparentError> {
        self.trace = Some(traceparent.parse()?);
        Ok(self)
    }

    /// This context with `trace` as its trace context.
    #[must_use]
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// This context in a new trace ([`TraceContext::new_root`]).
    pub fn with_new_trace(self) -> Result<Self, TraceparentError> {
        Ok(self.with_trace(TraceContext::new_root()?))
    }

    /// The context of a call made while serving this one: the same request id, deadline
    /// and trace id, with a new span id ([`TraceContext::child`]); unchanged without a
    /// trace context.
    pub fn child(&self) -> Result<Self, TraceparentError> {
        let mut child = self.clone();
        child.trace = self.trace.as_ref().map(TraceContext::child).transpose()?;
        Ok(child)
    }

    /// The trace context, if any.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The trace id, as 32 lowercase hex digits, if there is a trace context.
    pub fn trace_id(&self) -> Option<String> {
        self.trace.as_ref().map(TraceContext::trace_id)
    }

    /// This context with a deadline `timeout` from now (or the current one, if sooner).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        let deadline = Instant::now().checked_add(timeout);
        self.deadline = match (self.deadline, deadline) {
            (Some(current), Some(new)) => Some(current.min(new)),
            (current, new) => current.or(new),
        };
        self
    }

    /// The request id, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The status of a call made, or still running, after this context's deadline:
    /// `DEADLINE_EXCEEDED`, naming the request id if there is one.
    pub fn deadline_exceeded(&self) -> Status {
        Status::deadline_exceeded(match &self.request_id {
            Some(id) => format!("the deadline of request {id} has passed"),
            None => "the caller's deadline has passed".to_owned(),
        })
    }

    /// What this context puts on an outgoing call: its request id, its trace context, and
    /// the time left as a `grpc-timeout` value; [`CallContext::deadline_exceeded`] once the
    /// deadline has passed.
    fn outgoing(&self) -> Result<[(&'static str, Option<String>); 3], Status> {
        let timeout = match self.remaining() {
            Some(left) if left.is_zero() => return Err(self.deadline_exceeded()),
            left => left.map(format_grpc_timeout),
        };
        Ok([
            (REQUEST_ID_METADATA, self.request_id.clone()),
            (
                TRACEPARENT_METADATA,
                self.trace.map(|trace| trace.to_string()),
            ),
            (GRPC_TIMEOUT_METADATA, timeout),
        ])
    }

    /// Puts this context on an outgoing request: the request id, the trace context as it
    /// is (use [`CallContext::child`] for a new span), and the time left as its
    /// timeout (replacing any the request had). Fails with `DEADLINE_EXCEEDED`, sending
    /// nothing, once the deadline has passed.
    pub fn apply<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        let metadata = request.metadata_mut();
        for (key, value) in self.outgoing()? {
            if let Some(value) = value.and_then(|value| MetadataValue::try_from(value).ok()) {
                metadata.insert(key, value);
            }
        }
        Ok(())
    }

    /// [`CallContext::apply`] for the HTTP headers of an outgoing call, for code that sees
    /// calls below tonic's `Request`, such as a `tower` service wrapping a channel.
    pub fn apply_to_headers(&self, headers: &mut HeaderMap) -> Result<(), Status> {
        for (key, value) in self.outgoing()? {
            if let Some(value) = value.and_then(|value| HeaderValue::try_from(value).ok()) {
                headers.insert(key, value);
            }
        }
        Ok(())
    }

    /// A new request for `message`, carrying this context (see [`CallContext::apply`]).
    pub fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        self.apply(&mut request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout("4999m"),
            Some(Duration::from_millis(4999))
        );
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5 S", "1.5S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeouts_format_in_the_most_precise_unit_that_fits() {
        assert_eq!(format_grpc_timeout(Duration::from_millis(30)), "30000000n");
        assert_eq!(format_grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(format_grpc_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        for timeout in [
            Duration::from_millis(1),
            Duration::from_secs(30),
            Duration::from_secs(86_400),
        ] {
            assert_eq!(
                parse_grpc_timeout(&format_grpc_timeout(timeout)),
                Some(timeout)
            );
        }
    }

    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(valid_request_id("demo-1"));
        assert!(valid_request_id("a.b_c:d-E9"));
        assert!(valid_request_id(&"x".repeat(64)));
        for bad in ["", "has space", "new\nline", "ü", &"x".repeat(65)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
        assert!(CallContext::new().with_request_id("bad id").is_err());
    }

    #[test]
    fn context_travels_through_a_request_and_on() {
        let context = CallContext::new()
            .with_request_id("req-7")
            .expect("valid id")
            .with_timeout(Duration::from_secs(5));
        let request = context.request(()).expect("deadline not passed");
        let timeout = request
            .metadata()
            .get(GRPC_TIMEOUT_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .expect("the timeout is on the request");
        assert!(timeout <= Duration::from_secs(5) && timeout > Duration::from_secs(4));
        let received = CallContext::of(&request);
        assert_eq!(received.request_id(), Some("req-7"));
        assert!(received.remaining().expect("deadline") <= Duration::from_secs(5));
    }

    #[test]
    fn headers_carry_the_same_context_as_a_request() {
        let context = CallContext::new()
            .with_request_id("req-8")
            .expect("valid id")
            .with_timeout(Duration::from_secs(5));
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT_METADATA, HeaderValue::from_static("99H"));
        context
            .apply_to_headers(&mut headers)
            .expect("deadline not passed");
        assert_eq!(
            headers.get(REQUEST_ID_METADATA).map(HeaderValue::as_bytes),
            Some(&b"req-8"[..])
        );
        let timeout = headers
            .get(GRPC_TIMEOUT_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .expect("the context's timeout replaced the header's");
        assert!(timeout <= Duration::from_secs(5) && timeout > Duration::from_secs(4));

        let mut untouched = HeaderMap::new();
        CallContext::new()
            .apply_to_headers(&mut untouched)
            .expect("no deadline");
        assert!(untouched.is_empty(), "{untouched:?}");

        let late = context.with_timeout(Duration::ZERO);
        let status = late
            .apply_to_headers(&mut HeaderMap::new())
            .expect_err("the deadline has passed");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(status.message(), late.deadline_exceeded().message());
    }

    #[test]
    fn a_passed_deadline_stops_the_next_call() {
        let context = CallContext::new()
            .with_request_id("late")
            .expect("valid id")
            .with_timeout(Duration::ZERO);
        let status = context.request(()).expect_err("the deadline has passed");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("late"), "{}", status.message());
    }

    #[test]
    fn a_malformed_incoming_id_is_ignored_and_a_sooner_deadline_wins() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(REQUEST_ID_METADATA, MetadataValue::from_static("two words"));
        assert_eq!(CallContext::of(&request).request_id(), None);
        let sooner = CallContext::new()
            .with_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(60));
        assert!(sooner.remaining().expect("deadline") <= Duration::from_secs(1));
    }

    #[test]
    fn traceparents_parse_strictly() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace: TraceContext = value.parse().expect("the specification's example");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.span_id(), "00f067aa0ba902b7");
        assert_eq!(trace.flags(), 1);
        assert_eq!(trace.to_string(), value);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                matches!(
                    bad.parse::<TraceContext>(),
                    Err(TraceparentError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceContext>(),
            Err(TraceparentError::ZeroTraceId)
        );
        assert_eq!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".parse::<TraceContext>(),
            Err(TraceparentError::ZeroParentId)
        );
        let refused = CallContext::new().with_traceparent("nope");
        assert!(matches!(refused, Err(TraceparentError::Malformed(_))));
        assert_eq!(
            Status::from(TraceparentError::ZeroTraceId).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn a_trace_travels_and_children_keep_its_id() {
        let context = CallContext::new()
            .with_request_id("req-9")
            .expect("valid id")
            .with_new_trace()
            .expect("random bytes");
        let trace = *context.trace().expect("a trace");
        assert_eq!(trace.trace_id().len(), 32);
        assert_eq!(trace.span_id().len(), 16);
        let request = context.request(()).expect("no deadline");
        assert_eq!(
            request
                .metadata()
                .get(TRACEPARENT_METADATA)
                .and_then(|value| value.to_str().ok()),
            Some(trace.to_string().as_str())
        );
        let received = CallContext::of(&request);
        assert_eq!(received.trace(), Some(&trace));
        let child = received.child().expect("random bytes");
        assert_eq!(child.trace_id(), context.trace_id());
        assert_eq!(child.request_id(), Some("req-9"));
        assert_ne!(
            child.trace().map(TraceContext::span_id),
            Some(trace.span_id())
        );
        assert_eq!(CallContext::new().child(), Ok(CallContext::new()));

        let mut headers = HeaderMap::new();
        child.apply_to_headers(&mut headers).expect("no deadline");
        assert_eq!(
            headers
                .get(TRACEPARENT_METADATA)
                .and_then(|value| value.to_str().ok()),
            child.trace().map(ToString::to_string).as_deref()
        );

        let mut malformed = Request::new(());
        malformed
            .metadata_mut()
            .insert(TRACEPARENT_METADATA, MetadataValue::from_static("00-zz"));
        assert_eq!(CallContext::of(&malformed).trace(), None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const UNITS: [(char, Duration); 6] = [
            ('H', Duration::from_secs(3600)),
            ('M', Duration::from_secs(60)),
            ('S', Duration::from_secs(1)),
            ('m', Duration::from_millis(1)),
            ('u', Duration::from_micros(1)),
            ('n', Duration::from_nanos(1)),
        ];

        proptest! {
            #[test]
            fn every_header_in_the_grammar_parses_to_its_duration(
                amount in 0..=99_999_999u32,
                unit in 0..UNITS.len(),
                zeros in 0..=8usize,
            ) {
                let (letter, size) = UNITS[unit];
                let digits = format!("{amount:0zeros$}");
                prop_assume!(digits.len() <= 8);
                prop_assert_eq!(
                    parse_grpc_timeout(&format!("{digits}{letter}")),
                    Some(size * amount)
                );
            }

            #[test]
            fn a_formatted_timeout_parses_back_to_its_precision(
                timeout in prop_oneof![
                    (0..=10_000_000_000u64).prop_map(Duration::from_nanos),
                    (0..=99_999_999 * 3600u64, 0..1_000_000_000u32)
                        .prop_map(|(secs, nanos)| Duration::new(secs, nanos)),
                ],
            ) {
                let header = format_grpc_timeout(timeout);
                let parsed = parse_grpc_timeout(&header).expect("a formatted header parses");
                prop_assert!(parsed <= timeout, "{header}");
                // At most one unit lost, and a unit is at most 1000 of the next finer one
                // while at least 10^8 of those fit: the error is below 10^-5 of the timeout.
                prop_assert!((timeout - parsed).as_nanos() * 100_000 <= timeout.as_nanos(), "{header}");
                prop_assert_eq!(format_grpc_timeout(parsed), header);
            }

            #[test]
            fn any_text_parses_or_is_refused_without_panicking(value in any::<String>()) {
                let _ = parse_grpc_timeout(&value);
                let _ = valid_request_id(&value);
            }

            #[test]
            fn headers_outside_the_grammar_are_refused(
                bad in prop_oneof![
                    "[0-9]{9,14}[HMSmun]",
                    "[0-9]{1,8}[^HMSmun]",
                    "[0-9]{0,8}[^0-9][0-9]{0,8}[HMSmun]",
                    "[HMSmun]",
                    "[0-9]{0,9}",
                ],
            ) {
                prop_assert_eq!(parse_grpc_timeout(&bad), None, "{:?}", bad);
            }

            #[test]
            fn well_formed_request_ids_travel_unchanged(id in "[A-Za-z0-9._:-]{1,64}") {
                prop_assert!(valid_request_id(&id));
                let request = CallContext::new()
                    .with_request_id(id.clone())
                    .expect("valid")
                    .request(())
                    .expect("no deadline");
                let received = CallContext::of(&request);
                prop_assert_eq!(received.request_id(), Some(id.as_str()));
            }

            #[test]
            fn request_ids_outside_the_grammar_are_refused(
                bad in prop_oneof![
                    "[A-Za-z0-9._:-]{0,10}[^A-Za-z0-9._:-][A-Za-z0-9._:-]{0,10}",
                    "[A-Za-z0-9._:-]{65,80}",
                    Just(String::new()),
                ],
            ) {
                prop_assert!(!valid_request_id(&bad));
                let refused = CallContext::new().with_request_id(bad.clone());
                prop_assert_eq!(
                    refused.map_err(|status| status.code()),
                    Err(tonic::Code::InvalidArgument)
                );
                // Received from a peer, it is dropped rather than passed on.
                if let Ok(value) = MetadataValue::try_from(bad.as_str()) {
                    let mut request = Request::new(());
                    request.metadata_mut().insert(REQUEST_ID_METADATA, value);
                    let received = CallContext::of(&request);
                    prop_assert_eq!(received.request_id(), None);
                }
            }
        }
    }
}
