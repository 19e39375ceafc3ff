//! The traced greeter plugin: serves `greeter.v1.Greeter` with OpenTelemetry spans
//! parented on its caller's, and writes each finished span to its stdout as one JSON line
//! (a [`SpanRecord`]), which the host receives over go-plugin's stdio stream. Its log
//! events go to the host as usual, on the stderr it had at start.
//!
//! A host starts it; run by hand, it explains that and exits.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::process::ExitCode;
use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use tether::plugin::{JsonLogLayer, Plugin, Routes};
use tether_example_greeter::proto::greeter_server::GreeterServer;
use tether_example_greeter::{HANDSHAKE, VERSION};
use tether_example_tracing::{SpanRecord, TracedGreeter, exported, tracer_provider};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;

fn main() -> ExitCode {
    // Each span as it ends, one line on stdout: the SDK streams the plugin's stdout to the
    // host (go-plugin's stdio stream), where traced-host picks the span lines out; a host
    // that does not read it gets none, and the plugin drops them rather than block.
    let provider = tracer_provider(
        "plugin",
        Arc::new(|record: SpanRecord| {
            if let Ok(line) = serde_json::to_string(&record) {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
            }
        }),
    );
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("traced-plugin"))
        .with_filter(filter_fn(exported));
    // The log layer the SDK would install, on the stderr the host reads log lines from
    // (kept before the SDK points stderr elsewhere), beside the span layer.
    let logs = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(|stderr| JsonLogLayer::new(File::from(stderr)).with_filter(LevelFilter::INFO));
    let subscriber = tracing_subscriber::registry().with(spans).with(logs.ok());
    let _ = tracing::subscriber::set_global_default(subscriber);

    let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    let status = plugin
        .without_default_logging()
        .version(
            VERSION,
            Routes::new(GreeterServer::new(TracedGreeter::new(host))),
        )
        .run();
    let _ = provider.shutdown();
    status
}
