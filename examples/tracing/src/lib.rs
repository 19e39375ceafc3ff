//! One trace across the plugin boundary, with `tracing-opentelemetry`.
//!
//! The greeter's contract (`tether-example-greeter`) served by a plugin whose spans, like
//! its host's, are OpenTelemetry spans: the host's span for its call, the plugin's span
//! serving it, and the plugin's span for its host-service call (a file read the host
//! checks and audits) all share one trace id, each parented on the one before. The link
//! across each process boundary is the W3C `traceparent` that tether's [`CallContext`]
//! carries in gRPC metadata, made from the OpenTelemetry span that sends the call
//! ([`traceparent`]) and turned back into a parent on the other side ([`remote_parent`]).
//!
//! Offline: no collector. Each process exports its finished spans with
//! `opentelemetry_sdk`'s simple processor to a [`SpanSink`] as [`SpanRecord`]s. The host
//! keeps its own in memory; the plugin writes its own to its stdout as JSON lines, which
//! go-plugin's stdio stream forwards to the host (a sandboxed plugin may not write files
//! or open sockets, and its stderr is its log). `src/bin/traced-host.rs` prints the whole
//! trace, both processes' spans as one tree, and the audit record of the plugin's
//! host-service call, which carries the same trace id.

use std::fmt;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde::{Deserialize, Serialize};
use tether::CallContext;
use tether::plugin::Host;
use tether::protocol::TraceContext;
use tether::tonic::{self, Request, Response, Status};
use tether_example_greeter::GREETING_FILE;
use tether_example_greeter::proto::greeter_server::Greeter as GreeterRpc;
use tether_example_greeter::proto::{GreetRequest, GreetResponse};
use tracing::Instrument as _;
use tracing::metadata::Metadata;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The plugin's name, as the host's policy and audit trail know it.
pub const PLUGIN: &str = "traced-greeter";

/// The longest greeting the plugin reads.
const MAX_GREETING: usize = 256;

/// The targets whose spans become OpenTelemetry spans: this example's own. The tether
/// crates' spans (the plugin SDK's span per call, for one) stay out of the trace.
const TARGETS: [&str; 3] = ["tether_example_tracing", "traced_host", "traced_plugin"];

/// Whether `metadata` is a span of this example, for the OpenTelemetry layer's filter.
pub fn exported(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && TARGETS.iter().any(|t| metadata.target().starts_with(t))
}

/// One finished span, as the example prints it and the plugin sends it to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The process that made the span: `host` or `plugin`.
    pub process: String,
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// The span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The parent span's id, if the span has a parent (in this process or another).
    pub parent_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// `client`, `server` or `internal`.
    pub kind: String,
    /// When it started, in nanoseconds since the Unix epoch (the order of siblings).
    pub start_ns: u128,
}

impl SpanRecord {
    fn of(process: &str, span: &SpanData) -> Self {
        let parent = span.parent_span_id;
        SpanRecord {
            process: process.to_owned(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_id: (parent != SpanId::INVALID).then(|| parent.to_string()),
            name: span.name.to_string(),
            kind: match span.span_kind {
                SpanKind::Client => "client",
                SpanKind::Server => "server",
                SpanKind::Producer => "producer",
                SpanKind::Consumer => "consumer",
                SpanKind::Internal => "internal",
            }
            .to_owned(),
            start_ns: span
                .start_time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos()),
        }
    }
}

/// Where a process's finished spans go.
pub type SpanSink = Arc<dyn Fn(SpanRecord) + Send + Sync>;

/// An `opentelemetry_sdk` span exporter that hands each finished span, as a
/// [`SpanRecord`], to a [`SpanSink`].
#[derive(Clone)]
pub struct RecordExporter {
    process: &'static str,
    sink: SpanSink,
}

impl fmt::Debug for RecordExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordExporter")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl SpanExporter for RecordExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        for span in &batch {
            (self.sink)(SpanRecord::of(self.process, span));
        }
        std::future::ready(Ok(()))
    }
}

/// A tracer provider for `process` that exports every span, as it ends, to `sink` (the
/// simple processor: no background thread, nothing lost at exit).
pub fn tracer_provider(process: &'static str, sink: SpanSink) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(RecordExporter { process, sink })
        .build()
}

/// The `traceparent` of the OpenTelemetry span behind `span`: its trace id and its own
/// span id, so that what the callee makes of it is a child of `span`. `None` if `span`
/// is not an OpenTelemetry span (filtered out, or no layer installed).
pub fn traceparent(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    )
    .parse()
    .ok()
}

/// The OpenTelemetry context whose remote span is the caller's, from the trace context a
/// call carried: the parent for the span that serves the call.
pub fn remote_parent(trace: &TraceContext) -> opentelemetry::Context {
    let trace_id = TraceId::from_hex(&trace.trace_id()).unwrap_or(TraceId::INVALID);
    let span_id = SpanId::from_hex(&trace.span_id()).unwrap_or(SpanId::INVALID);
    let span_context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(trace.flags()),
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span_context)
}

/// The plugin's `greeter.v1.Greeter`, traced: a server span for each call, parented on the
/// caller's span, and a client span for its file read through the host, whose
/// `traceparent` goes with the read (and into the host's audit record).
#[derive(Debug, Clone)]
pub struct TracedGreeter {
    host: Host,
}

impl TracedGreeter {
    /// A greeter that reads its greeting through `host`.
    pub fn new(host: Host) -> Self {
        TracedGreeter { host }
    }
}

#[tonic::async_trait]
impl GreeterRpc for TracedGreeter {
    async fn greet(
        &self,
        request: Request<GreetRequest>,
    ) -> Result<Response<GreetResponse>, Status> {
        // The caller's request id, deadline and trace, from the request's metadata.
        let context = CallContext::of(&request);
        let span = tracing::info_span!("greeter.v1.Greeter/Greet", otel.kind = "server");
        if let Some(trace) = context.trace() {
            // Before the span starts: its trace becomes the caller's.
            if let Err(err) = span.set_parent(remote_parent(trace)) {
                tracing::warn!(%err, "the caller's trace could not become this span's parent");
            }
        }
        let name = request.into_inner().name;
        async move {
            if name.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "say who to greet: the name is empty",
                ));
            }
            let read = tracing::info_span!(
                "host.files/read_file",
                otel.kind = "client",
                file = GREETING_FILE
            );
            // The read carries the request id and deadline of the call, and the read's
            // own span as its parent.
            let context = match traceparent(&read) {
                Some(trace) => context.with_trace(trace),
                None => context,
            };
            let greeting = self
                .host
                .with_context(&context)
                .files()?
                .read_file_to_vec(GREETING_FILE, MAX_GREETING)
                .instrument(read)
                .await?;
            let greeting = String::from_utf8(greeting).map_err(|_| {
                Status::failed_precondition(format!("{GREETING_FILE} is not UTF-8 text"))
            })?;
            tracing::info!(bytes = greeting.len(), "read the greeting through the host");
            Ok(Response::new(GreetResponse {
                greeting: format!("{}, {name}!", greeting.trim()),
            }))
        }
        .instrument(span)
        .await
    }
}

/// Writes `records` as trees, one per trace: each span under its parent, indented, in
/// the order they started, as `span trace_id=.. span_id=.. parent_id=..|- process=..
/// kind=.. name=..` lines.
pub fn render(records: &[SpanRecord]) -> String {
    let mut records = records.to_vec();
    records.sort_by_key(|record| record.start_ns);
    let mut traces: Vec<&str> = Vec::new();
    for record in &records {
        if !traces.contains(&record.trace_id.as_str()) {
            traces.push(&record.trace_id);
        }
    }
    let known = |id: &Option<String>| {
        id.as_ref()
            .is_some_and(|id| records.iter().any(|r| &r.span_id == id))
    };
    let mut out = String::new();
    for trace in traces {
        out.push_str(&format!("trace {trace}\n"));
        // Roots: no parent, or a parent no process exported.
        for root in records
            .iter()
            .filter(|r| r.trace_id == trace && !known(&r.parent_id))
        {
            subtree(&records, root, 1, &mut out);
        }
    }
    out
}

fn subtree(records: &[SpanRecord], span: &SpanRecord, depth: usize, out: &mut String) {
    out.push_str(&format!(
        "{:indent$}span trace_id={} span_id={} parent_id={} process={} kind={} name={}\n",
        "",
        span.trace_id,
        span.span_id,
        span.parent_id.as_deref().unwrap_or("-"),
        span.process,
        span.kind,
        span.name,
        indent = depth * 2,
    ));
    for child in records
        .iter()
        .filter(|r| r.parent_id.as_deref() == Some(span.span_id.as_str()))
    {
        subtree(records, child, depth + 1, out);
    }
}
