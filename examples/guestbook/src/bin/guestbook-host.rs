//! The guestbook host: grants the plugin what it needs, serves it tether's file services
//! and the host's own guestbook in one line, starts it sandboxed, greets a visitor through
//! it, shows what the operator's revocation does, prints the audit trail and shuts down.
//!
//! `cargo build -p tether-example-guestbook`, then run `guestbook-host` from the target
//! directory (it finds `guestbook-plugin` beside itself); `--help` for its options.
//!
//! With `--metrics ADDR`, it also exports tether's metrics for Prometheus at
//! `http://ADDR/metrics`, and keeps serving them after the demo until Ctrl-C.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tether::CallContext;
use tether::host::{KernelSupport, PluginChannel, PluginClient, Sandbox, Stop};
use tether::hostserve::{Audit, Gate, HostServices, Limits, Policy};
use tether_example_guestbook::proto::GreetRequest;
use tether_example_guestbook::proto::greeter_client::GreeterClient;
use tether_example_guestbook::proto::guestbook_server::GuestbookServer;
use tether_example_guestbook::{
    BOOK, GREETING_FILE, Guestbook, HANDSHAKE, VERSION, capability_kind,
};
use tokio::signal::unix::SignalKind;
use tonic::Code;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The plugin's name: the policy and the audit trail know it by this.
const PLUGIN: &str = "guestbook";

/// The capabilities the operator grants the plugin.
const GRANTS: [&str; 2] = ["read:greeting.txt", "guestbook:sign:visitors"];

/// The budget of each call the host makes to the plugin.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// tether's guestbook example: a sandboxed plugin greets a visitor, reading its greeting
/// through tether's file service and signing the host's guestbook through the host's own
/// service, both over one connection, every call checked and audited.
#[derive(Debug, Parser)]
#[command(name = "guestbook-host", version)]
struct Args {
    /// Who visits.
    #[arg(default_value = "Ada")]
    name: String,

    /// The plugin's executable. Default: `guestbook-plugin` beside this executable.
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,

    /// Show the host's and the plugin's log lines (INFO) on stderr.
    #[arg(short, long)]
    verbose: bool,

    /// Export tether's metrics for Prometheus at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9464), and keep serving them after the demo until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    // The recorder first: the audit trail registers its counters with the one installed
    // when it is opened.
    if let Some(address) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .with_context(|| format!("serving metrics on {address}"))?;
        tether::hostserve::metric::describe();
        tether::host::metric::describe();
    }
    let program = match args.plugin {
        Some(program) => program,
        None => beside_this_executable("guestbook-plugin")?,
    };
    ensure!(
        program.is_file(),
        "the plugin {} is not a file: build both binaries with `cargo build -p \
         tether-example-guestbook`, or pass --plugin FILE",
        program.display()
    );
    let temp = tempfile::Builder::new()
        .prefix("guestbook-")
        .tempdir()
        .context("creating a temporary directory")?;
    let workspace = temp.path().join("workspace");
    std::fs::create_dir(&workspace).context("creating the plugin's workspace")?;
    std::fs::write(workspace.join(GREETING_FILE), "Hello\n")
        .context("writing the plugin's greeting")?;
    let audit_path = temp.path().join("audit.jsonl");

    println!("guestbook: a plugin calls tether's file service and the host's own service");
    println!("   plugin     {}", program.display());
    println!(
        "   workspace  {} (temporary; holds {GREETING_FILE})",
        workspace.display()
    );

    // 1. The operator's policy: the host's own capability kind, and what the plugin may do.
    println!();
    println!("1. Declare the host's `guestbook` capability kind; the operator grants the plugin");
    let policy = Policy::with_kinds([capability_kind()])?;
    policy.set_workspace(PLUGIN, &workspace);
    for capability in GRANTS {
        policy.grant(PLUGIN, capability)?;
    }
    println!("   {PLUGIN} may: {}", policy.grants(PLUGIN).join(", "));

    // One gate for every host service: one policy, one audit trail, one set of limits.
    let audit = Audit::to_file(&audit_path, 1 << 20)
        .with_context(|| format!("opening the audit log {}", audit_path.display()))?;
    let gate = Gate::new(policy.clone(), audit, Limits::default());
    let guestbook = Arc::new(Guestbook::new(gate.clone()));
    let services = HostServices::from_gate(gate.clone())
        .serve(GuestbookServer::from_arc(Arc::clone(&guestbook)));

    // 2. Start the plugin, sandboxed.
    println!();
    println!("2. Start the plugin as its own sandboxed process");
    let plugin = PluginClient::builder(PLUGIN, &program)
        .handshake(HANDSHAKE)
        .protocol_versions(&[VERSION])
        .sandbox(sandbox())
        .start()
        .await
        .with_context(|| format!("starting the plugin {}", program.display()))?;
    println!("   pid {}, {}", plugin.pid(), sandbox_summary(&plugin));

    // 3. Its host services in one line: the file services and the guestbook, one connection.
    println!();
    println!("3. Give it the file services and the guestbook: one line, one connection");
    let connection = services.connect(&plugin).await?.required()?;
    println!("   connected: every call it makes is tied to it, checked and audited");

    // 4. Greet a visitor.
    println!();
    println!("4. Greet {} (request id guestbook-1)", args.name);
    let mut greeter = GreeterClient::new(plugin.channel());
    let reply = greet(&mut greeter, "guestbook-1", &args.name)
        .await
        .map_err(|status| call_failed(&status))?;
    println!(
        "   the plugin read {GREETING_FILE} and signed the {BOOK} book for {}:",
        args.name
    );
    println!("   {:?} (entry #{})", reply.greeting, reply.entry);

    // 5. The operator revokes the guestbook capability: from the next call on, it is denied.
    println!();
    println!("5. The operator revokes guestbook:sign:visitors; greet again (guestbook-2)");
    ensure!(
        policy.revoke(PLUGIN, "guestbook:sign:visitors"),
        "the plugin held no guestbook:sign:visitors to revoke"
    );
    match greet(&mut greeter, "guestbook-2", &args.name).await {
        Ok(reply) => bail!("the plugin signed after the revocation: {reply:?}"),
        Err(status) if status.code() == Code::PermissionDenied => {
            println!("   denied: {}", status.message());
            println!(
                "   (its read of {GREETING_FILE} was still allowed: only the revoked grant is gone)"
            );
        }
        Err(status) => return Err(call_failed(&status)),
    }

    // 6. The audit trail: one record per host-service call.
    println!();
    println!("6. The audit trail: one record per host-service call");
    ensure!(
        gate.audit().flush(Duration::from_secs(5)).await,
        "the audit log {} was not written within 5 s",
        audit_path.display()
    );
    let records = std::fs::read_to_string(&audit_path)
        .with_context(|| format!("reading the audit log {}", audit_path.display()))?;
    let mut denial = None;
    println!(
        "   {:<7}  {:<27}  {:<12}  {:<23}  request id",
        "", "operation", "resource", "capability"
    );
    for line in records.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("an audit line is not JSON: {line}"))?;
        let field = |key: &str| record[key].as_str().unwrap_or("-").to_owned();
        println!(
            "   {:<7}  {:<27}  {:<12}  {:<23}  {}",
            field("decision"),
            field("operation"),
            field("resource"),
            field("capability"),
            field("request_id"),
        );
        if field("decision") == "denied" {
            denial = Some(line.to_owned());
        }
    }
    if let Some(line) = denial {
        println!("   the denial, as written to the audit log:");
        println!("   {line}");
    }

    // 7. Shut down: withdraw the host services, stop the plugin.
    println!();
    println!("7. Shut down");
    connection.close().await;
    let exit = plugin.shutdown().await.context("stopping the plugin")?;
    let how = match exit.stop {
        Stop::Graceful => "after the controller's Shutdown",
        Stop::Terminated => "after SIGTERM",
        Stop::Killed => "after SIGKILL",
        Stop::AlreadyExited => "before the host asked",
    };
    println!(
        "   host services withdrawn; the plugin exited {how} ({})",
        exit.status
            .status()
            .map_or_else(|| exit.status.to_string(), |status| status.to_string())
    );
    let names: Vec<String> = guestbook
        .signatures(BOOK)
        .iter()
        .map(|signature| format!("{} (through plugin `{}`)", signature.name, signature.plugin))
        .collect();
    println!();
    println!("done. The {BOOK} book holds: {}", names.join(", "));

    if let Some(address) = args.metrics {
        // Listening before saying so: a Ctrl-C right after the line below must stop the
        // host cleanly (removing its temporary directory), not kill it.
        let mut interrupt =
            tokio::signal::unix::signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
        println!();
        println!("serving metrics at http://{address}/metrics until Ctrl-C");
        interrupt.recv().await;
    }
    Ok(())
}

/// One `Greet`, with a request id and a deadline that the plugin passes on to its calls.
async fn greet(
    greeter: &mut GreeterClient<PluginChannel>,
    request_id: &str,
    name: &str,
) -> Result<tether_example_guestbook::proto::GreetResponse, tonic::Status> {
    let request = CallContext::new()
        .with_request_id(request_id)?
        .with_timeout(CALL_TIMEOUT)
        .request(GreetRequest {
            name: name.to_owned(),
        })?;
    Ok(greeter.greet(request).await?.into_inner())
}

fn call_failed(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the plugin's Greet failed ({:?}): {}",
        status.code(),
        status.message()
    )
}

/// `Strict` (every layer, or the plugin does not start) where this kernel has every layer,
/// else `BestEffort` (every layer it has).
fn sandbox() -> Sandbox {
    if KernelSupport::probe().is_complete() {
        Sandbox::strict()
    } else {
        Sandbox::best_effort()
    }
}

/// Which layers of the sandbox hold.
fn sandbox_summary(plugin: &PluginClient) -> String {
    let Some(status) = plugin.sandbox() else {
        return "sandbox unknown: another host started the plugin".to_owned();
    };
    let off: Vec<String> = status
        .layers
        .iter()
        .filter(|layer| !layer.enforced)
        .map(|layer| layer.layer.to_string())
        .collect();
    if off.is_empty() {
        format!(
            "sandbox {:?}: all {} layers on",
            status.mode,
            status.layers.len()
        )
    } else {
        format!(
            "sandbox {:?}: {} of {} layers on (this kernel lacks {})",
            status.mode,
            status.layers.len() - off.len(),
            status.layers.len(),
            off.join(", ")
        )
    }
}

/// `name` in the directory of this executable, where cargo builds both binaries.
fn beside_this_executable(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    Ok(exe
        .parent()
        .map_or_else(|| Path::new(name).to_owned(), |dir| dir.join(name)))
}

/// Log lines go to stderr: warnings, or with `--verbose` the host's and the plugin's
/// INFO lines. The audit records are printed by the host itself.
fn init_logging(verbose: bool) {
    let filter = if verbose {
        Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("tether::audit", LevelFilter::OFF)
            .with_target("h2", LevelFilter::WARN)
            .with_target("tower", LevelFilter::WARN)
    } else {
        Targets::new()
            .with_default(LevelFilter::WARN)
            .with_target("tether::audit", LevelFilter::OFF)
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                )
                .without_time()
                .with_filter(filter),
        )
        .init();
}
