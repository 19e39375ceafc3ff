//! The demo itself: every step of the transcript, in order.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tether_demo_contract::bus::Message;
use tether_demo_contract::filelister::file_lister_client::FileListerClient;
use tether_demo_contract::filelister::{
    Announcement, HANDSHAKE, ListFilesRequest, ListFilesResponse, VERSION,
};
use tether_host::{PluginChannel, PluginClient, Sandbox, Stop};
use tether_hostconn::{HostConnection, Outcome};
use tether_hostserve::{Audit, Capability, Gate, HostServices, Limits, Manifest, Policy};
use tether_protocol::CallContext;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;
use tonic::{Code, Status};

use crate::bus::{self, Bus};
use crate::out::{Out, use_color};
use crate::{Args, SandboxChoice, sample};

/// The demo's plugins, in the order they start.
const PLUGINS: [&str; 2] = ["filelister", "colorlister"];

/// The budget of each call the host makes to a plugin.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The bus topic on which the plugins announce their results, and the host listens.
const REPORTS: &str = "reports";

/// The one plugin this operator lets use the bus.
const BUS_GRANTEE: &str = "filelister";

/// The audit operation of a publish on the bus.
const PUBLISH: &str = "tether.bus.v1.Bus/Publish";

/// A started plugin and its host-service connection.
struct Running {
    name: &'static str,
    client: PluginClient,
    connection: Option<HostConnection>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let out = Out {
        color: use_color(args.color, &std::io::stdout()),
        quiet: args.quiet,
    };
    let temp = tempfile::Builder::new()
        .prefix("tether-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let plugins_dir = match args.plugins {
        Some(dir) => dir,
        None => default_plugins_dir()?,
    };
    let workspace = match args.workspace {
        Some(dir) => prepare_workspace(&dir)?,
        None => {
            let dir = temp.path().join("workspace");
            sample::create(&dir)?;
            dir
        }
    };
    let keep_audit = args.audit.is_some();
    let audit_path = args
        .audit
        .unwrap_or_else(|| temp.path().join("audit.jsonl"));
    let audit_start = std::fs::metadata(&audit_path).map_or(0, |m| m.len());
    let audit = AuditLog {
        path: audit_path.clone(),
        start: audit_start,
    };

    out.title("tether demo: two plugins, one set of host services, every call checked and audited");
    out.line(&format!("workspace  {}", workspace.display()));
    out.line(&format!("plugins    {}", plugins_dir.display()));
    out.line(&format!("audit log  {}", audit_path.display()));

    // 1. Manifests, and what the operator grants.
    out.step(
        1,
        "Read each plugin's manifest; the operator grants capabilities",
    );
    // The operator declares the host's own capability kind beside the built-in ones, so
    // that manifests may request it and grants may name it.
    let policy =
        Policy::with_kinds([bus::kind()]).context("declaring the bus's capability kind")?;
    let mut withheld = Vec::new();
    for name in PLUGINS {
        let manifest = load_manifest(&plugins_dir, name, &policy)?;
        let requested: Vec<&str> = manifest.capabilities.iter().map(|c| c.as_str()).collect();
        out.line(&format!(
            "{name:<12} {} (protocol {}) requests {}",
            manifest.version,
            manifest.protocol_version,
            requested.join(", ")
        ));
        policy.set_workspace(name, &workspace);
        for capability in &manifest.capabilities {
            if !operator_grants(name, capability) {
                withheld.push((name, capability.to_string()));
                continue;
            }
            policy
                .grant(name, capability.as_str())
                .with_context(|| format!("granting {capability} to {name}"))?;
        }
    }
    out.note("Requests are not grants: the operator decides. This operator grants each");
    out.note("plugin the files it requests, beneath the workspace, and the bus (the host's");
    out.note(&format!(
        "own service, step 6) to {BUS_GRANTEE} only. Nothing else is allowed."
    ));
    for name in PLUGINS {
        let mut line = format!("{name:<12} holds {}", policy.grants(name).join(", "));
        let not_granted: Vec<&str> = withheld
            .iter()
            .filter(|(plugin, _)| *plugin == name)
            .map(|(_, capability)| capability.as_str())
            .collect();
        if !not_granted.is_empty() {
            line.push_str(&format!("; not granted: {}", not_granted.join(", ")));
        }
        out.line(&line);
    }
    let audit_sink = Audit::to_file(&audit_path, 64 << 20)
        .with_context(|| format!("opening the audit log {}", audit_path.display()))?;
    // One gate for every host service: the file services and the host's own bus decide
    // with the same policy and write to the same audit trail.
    let gate = Gate::new(policy, audit_sink, Limits::default());
    let bus = Arc::new(Bus::new(gate.clone()));
    let services = Arc::new(HostServices::from_gate(gate).serve(bus::server(Arc::clone(&bus))));
    // The host's own subscription, before any plugin runs.
    let mut reports = bus.listen(REPORTS);

    // 2. Start the plugins.
    let sandbox = match args.sandbox {
        SandboxChoice::Strict => Sandbox::strict(),
        SandboxChoice::BestEffort => Sandbox::best_effort(),
        SandboxChoice::Off => Sandbox::off(),
    };
    out.step(2, "Start each plugin as its own sandboxed process");
    let mut running = Vec::new();
    for name in PLUGINS {
        let program = plugins_dir.join(name).join(name);
        let client = PluginClient::builder(name, &program)
            .handshake(HANDSHAKE)
            .protocol_versions(&[VERSION])
            .sandbox(sandbox.clone())
            .start()
            .await
            .with_context(|| format!("starting the plugin {name} ({})", program.display()))?;
        out.line(&format!(
            "{name:<12} pid {}, {}",
            client.pid(),
            sandbox_summary(&client)
        ));
        running.push(Running {
            name,
            client,
            connection: None,
        });
    }

    // 3. One set of host services, shared, one line per plugin.
    out.step(3, "Give both plugins the same host services: one line each");
    out.note("The file services and the host's own bus, behind one gate, one line per plugin:");
    out.note("let connection = services.connect(&plugin).await?;");
    for plugin in &mut running {
        match services
            .connect(&plugin.client)
            .await
            .with_context(|| format!("connecting host services to {}", plugin.name))?
        {
            Outcome::Connected(connection) => {
                out.line(&format!(
                    "{:<12} connected: its own endpoint, every call tagged with its identity",
                    plugin.name
                ));
                plugin.connection = Some(connection);
            }
            Outcome::NotRequested => bail!(
                "the plugin {} does not take host services; is it really the demo's?",
                plugin.name
            ),
        }
    }
    out.note(&format!(
        "The host subscribes to the bus topic `{REPORTS}` itself: bus.listen(\"{REPORTS}\")."
    ));
    let filelister = lister(&running, "filelister")?;
    let colorlister = lister(&running, "colorlister")?;

    // 4. filelister: ReadDir, CreateDir, WriteFile.
    out.step(
        4,
        "filelister lists docs/ through ReadDir and writes its report through WriteFile",
    );
    let listed = call(&filelister, "demo-4", "docs", out.color)
        .await
        .map_err(|status| call_failed("filelister", &status))?;
    out.block(&listed.report);
    let on_disk = std::fs::read_to_string(workspace.join(&listed.written_to))
        .with_context(|| format!("reading back the report {}", listed.written_to))?;
    ensure!(
        on_disk == listed.report,
        "the report in {} differs from what filelister returned",
        listed.written_to
    );
    out.ok(&format!(
        "report written to {} ({} bytes; the file on the host's disk matches)",
        listed.written_to,
        on_disk.len()
    ));

    // 5. colorlister: ReadFile, with the host's request id and deadline passed on.
    out.step(5, "colorlister reads every file in docs/ through ReadFile");
    out.note(&format!(
        "The host's call carries request id demo-5 and a {}s deadline; the plugin passes",
        CALL_TIMEOUT.as_secs()
    ));
    out.note("both on to each of its own host-service calls.");
    let colored = call(&colorlister, "demo-5", "docs", out.color)
        .await
        .map_err(|status| call_failed("colorlister", &status))?;
    out.block(&colored.report);
    // One ReadDir, one ReadFile per file, and (step 6) one publish on the bus.
    let calls = 2 + colored.files.iter().filter(|f| !f.is_dir).count();
    let records = audit
        .wait_for(|records| {
            records
                .iter()
                .filter(|r| r["request_id"] == "demo-5")
                .count()
                >= calls
        })
        .await?;
    ensure!(
        records
            .iter()
            .filter(|r| r["request_id"] == "demo-5")
            .all(|r| r["timeout_ms"].as_u64().is_some()),
        "a host-service call of request demo-5 arrived without the deadline"
    );
    let propagated: Vec<&Record> = records
        .iter()
        .filter(|r| r["request_id"] == "demo-5" && r["operation"] != PUBLISH)
        .collect();
    out.ok(&format!(
        "{} audit records of file calls carry request id demo-5 and the time left:",
        propagated.len()
    ));
    for record in &propagated {
        out.line(&format!(
            "  {:<10} {:<16} {} ms left",
            record["operation"].as_str().unwrap_or("?"),
            record["resource"].as_str().unwrap_or("?"),
            record["timeout_ms"]
        ));
    }

    // 6. The host's own service: the bus.
    out.step(6, "The host's own service: a message bus");
    show_bus(
        &out,
        &audit,
        &mut reports,
        listed.announced.as_ref(),
        colored.announced.as_ref(),
    )
    .await?;

    // 7. A denial, with its audit record.
    out.step(
        7,
        "colorlister is asked to list secrets/, which it was not granted",
    );
    expect_denied(
        &out,
        &audit,
        &colorlister,
        "colorlister",
        "demo-7",
        "secrets",
    )
    .await?;

    // 8. A revocation, at runtime.
    out.step(
        8,
        "The operator revokes write:reports/** from filelister while it runs",
    );
    ensure!(
        services.policy().revoke("filelister", "write:reports/**"),
        "filelister had no write:reports/** to revoke"
    );
    out.line(&format!(
        "filelister now holds: {}",
        services.policy().grants("filelister").join(", ")
    ));
    expect_denied(&out, &audit, &filelister, "filelister", "demo-8", "docs").await?;
    let records = audit.read()?;
    ensure!(
        records.iter().any(|r| r["request_id"] == "demo-8"
            && r["operation"] == "read_dir"
            && r["decision"] == "allowed"),
        "filelister's ReadDir after the revocation has no allowed audit record"
    );
    out.note("Its ReadDir was still allowed; only the revoked capability is gone, from the");
    out.note("next call on, without a restart.");

    // 9. Shutdown.
    out.step(
        9,
        "Shut down: disconnect the host services, stop each plugin",
    );
    for plugin in running {
        if let Some(connection) = plugin.connection {
            connection.close().await;
        }
        let exit = plugin
            .client
            .shutdown()
            .await
            .with_context(|| format!("stopping {}", plugin.name))?;
        let how = match exit.stop {
            Stop::Graceful => "after the controller's Shutdown",
            Stop::Terminated => "after SIGTERM",
            Stop::Killed => "after SIGKILL",
            Stop::AlreadyExited => "before the host asked",
        };
        let status = match exit.status.status() {
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("with status {code}"),
                (None, Some(signal)) => format!("by signal {signal}"),
                (None, None) => format!("({status})"),
            },
            // The demo starts its plugins, so it always learns the status.
            None => "with a status unknown to this host".to_owned(),
        };
        out.line(&format!(
            "{:<12} host services disconnected; exited {status} {how}",
            plugin.name
        ));
    }
    drop(reports);
    drop(bus);
    drop(services);
    let records = audit.wait_for(|_| true).await?;
    let denied = records.iter().filter(|r| r["decision"] == "denied").count();
    let kept = if keep_audit {
        format!("the audit log is kept in {}", audit_path.display())
    } else {
        "the audit log was temporary: pass --audit FILE to keep it".to_owned()
    };
    if !out.quiet {
        println!();
    }
    out.summary(&format!(
        "demo finished: 2 plugins, 4 calls, {} audit records ({} allowed, {denied} denied); {kept}",
        records.len(),
        records.len() - denied
    ));
    Ok(())
}

/// `plugins/` beside this executable, where `cargo xtask demo` stages the plugins.
fn default_plugins_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable's directory")?;
    let dir = exe
        .parent()
        .map(|dir| dir.join("plugins"))
        .context("this executable has no directory")?;
    ensure!(
        dir.is_dir(),
        "no plugins in {}: run `cargo xtask demo`, which builds and stages them, or pass \
         --plugins DIR (a directory holding filelister/ and colorlister/, each with its \
         plugin.toml and executable)",
        dir.display()
    );
    Ok(dir)
}

/// Uses `dir` as the workspace, writing the sample files into it if it is missing or empty.
fn prepare_workspace(dir: &Path) -> Result<PathBuf> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
        Err(err) => {
            return Err(err).with_context(|| format!("reading the workspace {}", dir.display()));
        }
    };
    if empty {
        sample::create(dir)?;
    }
    std::fs::canonicalize(dir).with_context(|| format!("resolving the workspace {}", dir.display()))
}

/// This operator's decision on a capability `plugin` requests: the files (beneath the
/// workspace) to whoever requests them, the bus to [`BUS_GRANTEE`] only.
fn operator_grants(plugin: &str, capability: &Capability) -> bool {
    capability.kind() != bus::KIND || plugin == BUS_GRANTEE
}

/// Reads `name`'s manifest with the capability kinds `policy` knows (the bus's too).
fn load_manifest(plugins_dir: &Path, name: &str, policy: &Policy) -> Result<Manifest> {
    let path = plugins_dir.join(name).join("plugin.toml");
    let manifest = Manifest::load_with(&path, &policy.kinds())?;
    ensure!(
        manifest.name == name,
        "{} names the plugin {:?}, expected {name:?}",
        path.display(),
        manifest.name
    );
    ensure!(
        manifest.protocol_version == VERSION,
        "{} says protocol {}, but this host speaks protocol {VERSION}",
        path.display(),
        manifest.protocol_version
    );
    Ok(manifest)
}

/// Which layers hold, by name, without kernel-specific detail.
fn sandbox_summary(client: &PluginClient) -> String {
    let Some(status) = client.sandbox() else {
        return "sandbox unknown: another host started the plugin".to_owned();
    };
    let on: Vec<String> = status
        .layers
        .iter()
        .filter(|layer| layer.enforced)
        .map(|layer| layer.layer.to_string())
        .collect();
    let off: Vec<String> = status
        .layers
        .iter()
        .filter(|layer| !layer.enforced)
        .map(|layer| layer.layer.to_string())
        .collect();
    if off.is_empty() {
        format!("sandbox {:?}: all {} layers on", status.mode, on.len())
    } else {
        format!(
            "sandbox {:?}: {} of {} layers on; off: {}",
            status.mode,
            on.len(),
            status.layers.len(),
            off.join(", ")
        )
    }
}

fn lister(running: &[Running], name: &str) -> Result<FileListerClient<PluginChannel>> {
    running
        .iter()
        .find(|plugin| plugin.name == name)
        .map(|plugin| FileListerClient::new(plugin.client.channel()))
        .with_context(|| format!("the plugin {name} is not running"))
}

/// One `ListFiles` call, with a request id and the demo's deadline.
async fn call(
    client: &FileListerClient<PluginChannel>,
    request_id: &str,
    dir: &str,
    color: bool,
) -> Result<ListFilesResponse, Status> {
    let request = CallContext::new()
        .with_request_id(request_id)?
        .with_timeout(CALL_TIMEOUT)
        .request(ListFilesRequest {
            dir: dir.to_owned(),
            color,
        })?;
    Ok(client.clone().list_files(request).await?.into_inner())
}

/// Shows what happened on the bus in steps 4 and 5: filelister's announcement, as the
/// host's own subscription received it, colorlister's denied one, and their audit records.
async fn show_bus(
    out: &Out,
    audit: &AuditLog,
    reports: &mut Receiver<Message>,
    filelister: Option<&Announcement>,
    colorlister: Option<&Announcement>,
) -> Result<()> {
    out.note("The bus (tether.bus.v1.Bus, in crates/demo-host/src/bus.rs) is the host's own");
    out.note("tonic service, behind the same gate as the files: bus:publish:TOPIC and");
    out.note("bus:subscribe:TOPIC are capabilities like the file ones. After their listings");
    out.note(&format!(
        "(steps 4 and 5), both plugins announced them on `{REPORTS}`."
    ));

    // filelister's announcement, as it tells it and as the host's subscription got it.
    let filelister = filelister.context("filelister's response says nothing of the bus")?;
    ensure!(
        filelister.error.is_empty(),
        "filelister could not publish on the bus: {}",
        filelister.error
    );
    out.line(&format!(
        "filelister   published on `{}`; the host delivered it to {} subscriber{}",
        filelister.topic,
        filelister.delivered,
        if filelister.delivered == 1 { "" } else { "s" }
    ));
    let message = tokio::time::timeout(Duration::from_secs(5), reports.recv())
        .await
        .context("the host's subscription received nothing in 5 s")?
        .context("the host's subscription ended")?;
    let text = String::from_utf8_lossy(&message.payload);
    ensure!(
        message.publisher == "filelister" && text == filelister.message,
        "the host's subscription received {text:?} from {:?}, not filelister's announcement",
        message.publisher
    );
    out.ok(&format!(
        "the host's subscription to `{}` received, from {}:",
        message.topic, message.publisher
    ));
    out.block(&text);
    out.note("The host names the publisher, by the endpoint the message came on; a plugin");
    out.note("cannot speak for another.");

    // colorlister's, denied: the typed error in its response, and nothing delivered.
    let colorlister = colorlister.context("colorlister's response says nothing of the bus")?;
    let needed = format!("{}:publish:{REPORTS}", bus::KIND);
    ensure!(
        colorlister.missing_capability == needed,
        "colorlister's publish was not denied for lack of {needed}: {:?}",
        colorlister.error
    );
    ensure!(
        matches!(reports.try_recv(), Err(TryRecvError::Empty)),
        "the host's subscription received a message colorlister was denied"
    );
    out.line(&format!(
        "colorlister  tried to publish {:?} on `{}`; its ListFiles still",
        colorlister.message, colorlister.topic
    ));
    out.line("             succeeded, and its response says why nothing was published:");
    let error = &colorlister.error;
    out.denied(error.strip_prefix("denied: ").unwrap_or(error));

    let records = audit
        .wait_for(|records| records.iter().filter(|r| r["operation"] == PUBLISH).count() >= 2)
        .await?;
    let publishes: Vec<&Record> = records
        .iter()
        .filter(|r| r["operation"] == PUBLISH)
        .collect();
    ensure!(
        publishes.len() == 2
            && publishes.iter().any(|r| r["plugin"] == "filelister"
                && r["decision"] == "allowed"
                && r["capability"] == needed.as_str())
            && publishes.iter().any(|r| r["plugin"] == "colorlister"
                && r["decision"] == "denied"
                && r["capability"] == needed.as_str()),
        "the publishes' audit records are not one allowed for filelister and one denied \
         for colorlister"
    );
    out.line("Both publishes were checked and audited like file calls, each with the");
    out.line("request id of the host's call its plugin was serving:");
    for record in publishes {
        out.block(&record.line);
    }
    Ok(())
}

fn call_failed(plugin: &str, status: &Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{plugin}'s ListFiles failed ({:?}): {}",
        status.code(),
        status.message()
    )
}

/// Makes a call that must be denied, and shows the denial and its audit record.
async fn expect_denied(
    out: &Out,
    audit: &AuditLog,
    client: &FileListerClient<PluginChannel>,
    plugin: &str,
    request_id: &str,
    dir: &str,
) -> Result<()> {
    match call(client, request_id, dir, out.color).await {
        Ok(_) => bail!("{plugin} listed {dir}/, which it should have been denied"),
        Err(status) if status.code() == Code::PermissionDenied => {
            let message = status.message();
            out.denied(message.strip_prefix("denied: ").unwrap_or(message));
        }
        Err(status) => return Err(call_failed(plugin, &status)),
    }
    let records = audit
        .wait_for(|records| {
            records
                .iter()
                .any(|r| r["request_id"] == request_id && r["decision"] == "denied")
        })
        .await?;
    let record = records
        .iter()
        .find(|r| r["request_id"] == request_id && r["decision"] == "denied")
        .context("the denial has no audit record")?;
    out.line("its audit record:");
    out.block(&record.line);
    Ok(())
}

/// The audit log this run appends to.
struct AuditLog {
    path: PathBuf,
    /// Where this run's records start.
    start: u64,
}

impl AuditLog {
    /// This run's records, once `ready` says they are all there (the log is written by a
    /// background thread); fails after 5 s.
    async fn wait_for(&self, ready: impl Fn(&[Record]) -> bool) -> Result<Vec<Record>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = self.read()?;
            if ready(&records) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!(
                    "the audit log {} is missing records after 5 s",
                    self.path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn read(&self) -> Result<Vec<Record>> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("reading the audit log {}", self.path.display()))?;
        let start = usize::try_from(self.start)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..])
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let value = serde_json::from_str(line)
                    .with_context(|| format!("an audit line is not JSON: {line}"))?;
                Ok(Record {
                    line: line.to_owned(),
                    value,
                })
            })
            .collect()
    }
}

/// One audit record: the line as written, and parsed.
struct Record {
    line: String,
    value: Value,
}

impl std::ops::Index<&str> for Record {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.value[key]
    }
}
