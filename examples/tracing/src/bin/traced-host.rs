//! The traced greeter host: grants the plugin `read:greeting.txt`, starts it sandboxed,
//! calls `Greet` in a trace of its own, and prints the whole trace (its spans and the
//! plugin's, one tree) and the audit record of the plugin's file read, which names the
//! same trace.
//!
//! `traced-host [NAME] [--plugin FILE]`; the plugin defaults to `traced-plugin` beside
//! this executable (`cargo build -p tether-example-tracing` builds both).

use std::error::Error;
use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use tether::CallContext;
use tether::host::{KernelSupport, PluginClient, Sandbox, StdioSink};
use tether::hostserve::{Audit, HostServices, Limits, Policy};
use tether::tokio::runtime::Builder;
use tether_example_greeter::proto::GreetRequest;
use tether_example_greeter::proto::greeter_client::GreeterClient;
use tether_example_greeter::{GRANT, GREETING_FILE, HANDSHAKE, VERSION};
use tether_example_tracing::{PLUGIN, SpanRecord, exported, render, traceparent, tracer_provider};
use tracing::Instrument as _;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How long the plugin's spans may take to reach the host after its reply, on a loaded
/// machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let mut name = "world".to_owned();
    let mut plugin = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--plugin" => plugin = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: traced-host [NAME] [--plugin FILE]");
                return ExitCode::SUCCESS;
            }
            _ => name = arg,
        }
    }
    let runtime = Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(&name, plugin)),
        Err(err) => Err(format!("could not start the async runtime: {err}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The spans of both processes, as they end.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanRecord>>>);

impl Spans {
    fn push(&self, record: SpanRecord) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    fn all(&self) -> Vec<SpanRecord> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The plugin's stdout and stderr, as go-plugin's stdio stream brings them: each line
/// that is a span record joins the host's spans, any other line goes to the host's stderr.
struct PluginOutput {
    spans: Spans,
    partial: Vec<u8>,
}

impl Write for PluginOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(bytes);
        while let Some(newline) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=newline).collect();
            match serde_json::from_slice::<SpanRecord>(&line) {
                Ok(record) => self.spans.push(record),
                Err(_) => std::io::stderr().write_all(&line)?,
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn run(name: &str, program: Option<PathBuf>) -> Result<()> {
    let program = match program {
        Some(program) => program,
        None => std::env::current_exe()?.with_file_name("traced-plugin"),
    };
    if !program.is_file() {
        return Err(format!(
            "the plugin {} is not a file: build it with `cargo build -p tether-example-tracing`, \
             or pass --plugin FILE",
            program.display()
        )
        .into());
    }

    // This process's spans go to the same list as the plugin's. To stderr: warnings, and
    // the plugin's log lines from INFO up (they arrive as `tether::plugin` events, and
    // those logged while serving a traced call carry its trace_id).
    let spans = Spans::default();
    let mine = spans.clone();
    let provider = tracer_provider("host", Arc::new(move |record| mine.push(record)));
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("traced-host"))
                .with_filter(filter_fn(exported)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(
                    Targets::new()
                        .with_default(LevelFilter::WARN)
                        .with_target("tether::plugin", LevelFilter::INFO),
                ),
        );
    tracing::subscriber::set_global_default(subscriber)?;

    let dir = std::env::temp_dir().join(format!("tether-traced-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("workspace"))?;
    let result = greet(name, &program, &dir, &spans).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = provider.shutdown();
    result
}

async fn greet(name: &str, program: &Path, dir: &Path, spans: &Spans) -> Result<()> {
    let workspace = dir.join("workspace");
    std::fs::write(workspace.join(GREETING_FILE), "Hello\n")?;
    let policy = Policy::new();
    policy.set_workspace(PLUGIN, &workspace);
    policy.grant(PLUGIN, GRANT)?;
    let audit_path = dir.join("audit.jsonl");
    let audit = Audit::to_file(&audit_path, 1 << 20)?;
    let services = HostServices::new(policy, audit.clone(), Limits::default());

    let sandbox = if KernelSupport::probe().is_complete() {
        Sandbox::strict()
    } else {
        Sandbox::best_effort()
    };
    let plugin = PluginClient::builder(PLUGIN, program)
        .handshake(HANDSHAKE)
        .protocol_versions(&[VERSION])
        .sandbox(sandbox)
        // Where the plugin's spans arrive.
        .stdio(StdioSink::Writer(Box::new(PluginOutput {
            spans: spans.clone(),
            partial: Vec::new(),
        })))
        .start()
        .await?;
    let connection = services.connect(&plugin).await?.required()?;

    // The host's trace: a span for the whole operation, and a client span for the call
    // whose ids travel as the call's traceparent, so the plugin's span is its child.
    let operation = tracing::info_span!("greet", who = name);
    let call =
        tracing::info_span!(parent: &operation, "greeter.v1.Greeter/Greet", otel.kind = "client");
    let trace = traceparent(&call).ok_or("the host's span is not an OpenTelemetry span")?;
    let context = CallContext::new()
        .with_request_id("greet-1")?
        .with_trace(trace);
    let request = context.request(GreetRequest {
        name: name.to_owned(),
    })?;
    let reply = GreeterClient::new(plugin.channel())
        .greet(request)
        .instrument(call)
        .instrument(operation)
        .await;

    // The plugin's server span ends before its reply is sent; its line may still be on
    // the way through the stdio stream.
    let deadline = Instant::now() + PATIENCE;
    while !spans
        .all()
        .iter()
        .any(|span| span.process == "plugin" && span.kind == "server")
        && Instant::now() < deadline
    {
        tether::tokio::time::sleep(Duration::from_millis(20)).await;
    }
    connection.close().await;
    plugin.shutdown().await?;
    let greeting = reply?.into_inner().greeting;
    if !audit.flush(PATIENCE).await {
        return Err("the audit trail was not written in time".into());
    }

    println!("{greeting}");
    println!("request id greet-1, traceparent {trace}");
    print!("{}", render(&spans.all()));
    println!("audit trail:");
    for record in std::fs::read_to_string(&audit_path)?.lines() {
        println!("audit {record}");
    }
    Ok(())
}
