//! The traced greeter, run as a user runs it: one trace id on the host's spans, the
//! plugin's spans and the audit record of the plugin's host-service call, each span the
//! child of the one that called it; and the traceparent conversions it rests on.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use serde_json::Value;
use tether_example_tracing::{SpanRecord, exported, remote_parent, traceparent, tracer_provider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;

/// A `span key=value ... name=NAME` line of the host's output, as a map.
fn span_fields(line: &str) -> HashMap<&str, &str> {
    let rest = line
        .trim_start()
        .strip_prefix("span ")
        .expect("a span line");
    let (fields, name) = rest.split_once(" name=").expect("the name comes last");
    let mut map: HashMap<&str, &str> = fields
        .split(' ')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    map.insert("name", name);
    map
}

#[test]
fn one_trace_joins_host_plugin_host_service_call_and_audit_record() {
    #[allow(
        clippy::disallowed_methods,
        reason = "runs the example's host, which starts the plugin"
    )]
    let output = Command::new(env!("CARGO_BIN_EXE_traced-host"))
        .arg("Ada")
        .output()
        .expect("traced-host runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.lines().next(), Some("Hello, Ada!"), "{stdout}");

    let spans: Vec<HashMap<&str, &str>> = stdout
        .lines()
        .filter(|line| line.trim_start().starts_with("span "))
        .map(span_fields)
        .collect();
    assert_eq!(spans.len(), 4, "{stdout}");
    let find = |process: &str, name: &str| {
        spans
            .iter()
            .find(|span| span["process"] == process && span["name"] == name)
            .unwrap_or_else(|| panic!("the {process}'s span {name} in\n{stdout}"))
    };
    let operation = find("host", "greet");
    let call = find("host", "greeter.v1.Greeter/Greet");
    let served = find("plugin", "greeter.v1.Greeter/Greet");
    let read = find("plugin", "host.files/read_file");

    // One trace, and each span the child of the one that called it, across the process
    // boundary both ways.
    let trace_id = operation["trace_id"];
    assert_eq!(trace_id.len(), 32, "{stdout}");
    for span in [call, served, read] {
        assert_eq!(span["trace_id"], trace_id, "{stdout}");
    }
    assert_eq!(operation["parent_id"], "-", "{stdout}");
    assert_eq!(call["parent_id"], operation["span_id"], "{stdout}");
    assert_eq!(served["parent_id"], call["span_id"], "{stdout}");
    assert_eq!(read["parent_id"], served["span_id"], "{stdout}");
    assert_eq!(
        (call["kind"], served["kind"], read["kind"]),
        ("client", "server", "client")
    );
    // Printed as one tree: one trace line.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("trace ")).count(),
        1,
        "{stdout}"
    );

    // The traceparent the host sent names its client span.
    assert!(
        stdout.contains(&format!("traceparent 00-{trace_id}-{}-01", call["span_id"])),
        "{stdout}"
    );

    // The plugin's log event while serving the call, as the host logged it, names the
    // trace and the host's span that called.
    let logged = stderr
        .lines()
        .find(|line| line.contains("read the greeting through the host"))
        .unwrap_or_else(|| panic!("the plugin's log event in\n{stderr}"));
    assert!(
        logged.contains(&format!("trace_id={trace_id}"))
            && logged.contains(&format!("span_id={}", call["span_id"])),
        "{logged}"
    );

    // The host's audit record of the plugin's read names the same trace.
    let records: Vec<Value> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("audit {"))
        .map(|json| serde_json::from_str(&format!("{{{json}")).expect("an audit record is JSON"))
        .collect();
    assert_eq!(records.len(), 1, "{stdout}");
    let record = &records[0];
    assert_eq!(record["operation"], "read_file", "{record}");
    assert_eq!(record["decision"], "allowed", "{record}");
    assert_eq!(record["request_id"], "greet-1", "{record}");
    assert_eq!(record["trace_id"], trace_id, "{record}");
}

#[test]
fn a_traceparent_made_from_a_span_parents_the_span_on_the_other_side() {
    let records: Arc<Mutex<Vec<SpanRecord>>> = Arc::default();
    let sink = records.clone();
    let provider = tracer_provider(
        "test",
        Arc::new(move |record| sink.lock().expect("records").push(record)),
    );
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(filter_fn(exported)),
    );
    tracing::subscriber::with_default(subscriber, || {
        let caller = tracing::info_span!(target: "tether_example_tracing::test", "caller");
        let sent = traceparent(&caller).expect("an OpenTelemetry span");
        // What the callee does with the traceparent it received.
        let received: tether::protocol::TraceContext =
            sent.to_string().parse().expect("a valid traceparent");
        let callee = tracing::info_span!(target: "tether_example_tracing::test", "callee");
        callee
            .set_parent(remote_parent(&received))
            .expect("the callee's span has not started");
        let context = callee.context();
        let callee_context = context.span().span_context().clone();
        assert_eq!(callee_context.trace_id().to_string(), sent.trace_id());
        // A span of another target stays out of the trace: no traceparent from it.
        assert!(traceparent(&tracing::info_span!("untraced")).is_none());
    });
    drop(provider);
    let records = records.lock().expect("records").clone();
    let caller = records
        .iter()
        .find(|r| r.name == "caller")
        .expect("the caller's span");
    let callee = records
        .iter()
        .find(|r| r.name == "callee")
        .expect("the callee's span");
    assert_eq!(callee.trace_id, caller.trace_id);
    assert_eq!(callee.parent_id.as_deref(), Some(caller.span_id.as_str()));
}
