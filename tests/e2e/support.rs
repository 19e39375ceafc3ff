//! Shared helpers: plugin paths, a recording `tracing` layer, process checks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tether_host::{HandshakeConfig, KernelSupport, Layer, PluginBuilder, PluginClient, Sandbox};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};

pub(crate) const TEST_PLUGIN: &str = env!("CARGO_BIN_EXE_test-plugin");
pub(crate) const BAD_PLUGIN: &str = env!("CARGO_BIN_EXE_bad-plugin");
pub(crate) const HOST_HELPER: &str = env!("CARGO_BIN_EXE_host-helper");
pub(crate) const PLAIN_PLUGIN: &str = env!("CARGO_BIN_EXE_plain-plugin");
pub(crate) const HOSTILE_PLUGIN: &str = env!("CARGO_BIN_EXE_hostile-plugin");
pub(crate) const STATE_PLUGIN: &str = env!("CARGO_BIN_EXE_state-plugin");
pub(crate) const BARE_HOST: &str = env!("CARGO_BIN_EXE_bare-host");

/// How long a test waits for something that should happen (an exit noticed, a restart, a
/// record written) before it calls the wait a failure. Generous, because a loaded 2-core
/// machine can stall any process for seconds: it bounds how long a failure takes to be
/// noticed, never how fast anything runs.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e");

/// Where a host process that a test kills makes its plugins' socket directories. A host
/// killed outright cannot remove them; here they are inside a directory the test removes,
/// not left in the system temp dir. The host takes it as its private runtime directory
/// (`XDG_RUNTIME_DIR`: it is ours, mode 0700), and as its temp dir should it not.
pub(crate) struct SocketBase(tempfile::TempDir);

impl SocketBase {
    pub(crate) fn new() -> Self {
        Self(tempfile::tempdir().expect("a temporary directory"))
    }

    /// The environment that points a host process at this directory.
    pub(crate) fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("XDG_RUNTIME_DIR", self.0.path()),
            ("TMPDIR", self.0.path()),
        ]
    }

    /// The names of the socket directories in it (`tether-<plugin>-...`).
    pub(crate) fn socket_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.path())
            .expect("the socket base is readable")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("tether-"))
            .collect();
        names.sort();
        names
    }
}

/// A builder for the well-behaved test plugin, named `name`, under the strict sandbox
/// (where this kernel has every layer): every test of the other features also proves they
/// work sandboxed.
pub(crate) fn test_plugin(name: &str) -> PluginBuilder {
    record_events();
    PluginClient::builder(name, TEST_PLUGIN)
        .handshake(HANDSHAKE)
        .sandbox(sandbox())
}

/// The environment variable that makes the suite act as on a kernel without some layers
/// (their names as `Layer` displays them, comma-separated, e.g. `seccomp,landlock
/// network`): how the skips below are checked on a kernel that has everything.
pub(crate) const PRETEND_MISSING: &str = "TETHER_TEST_PRETEND_MISSING";

/// What this kernel gives the sandbox (less what `PRETEND_MISSING` takes away): `None`
/// where the layer is enforced, else why not.
pub(crate) fn missing(layer: Layer) -> Option<String> {
    static KERNEL: OnceLock<KernelSupport> = OnceLock::new();
    let pretended = std::env::var(PRETEND_MISSING).unwrap_or_default();
    if pretended
        .split(',')
        .any(|name| name.trim() == layer.to_string())
    {
        return Some(format!("{PRETEND_MISSING} takes it away"));
    }
    KERNEL.get_or_init(KernelSupport::probe).missing(layer)
}

/// `Strict` where this kernel enforces every layer, else `BestEffort`: the sandbox for
/// tests whose subject is something else, so that they still run on such a kernel.
pub(crate) fn sandbox() -> Sandbox {
    if Layer::ALL.iter().all(|&layer| missing(layer).is_none()) {
        Sandbox::strict()
    } else {
        Sandbox::best_effort()
    }
}

/// Whether the running test can check what it needs `layer` for (`what`); if this kernel
/// lacks the layer, records the test as skipped, saying which layer and why, and returns
/// false. The record goes to the file `TETHER_TEST_SKIPS` names (set by `cargo xtask test`
/// and `cargo xtask soak`, which count skips apart from passes) and to stderr.
pub(crate) fn kernel_enforces(layer: Layer, what: &str) -> bool {
    let Some(why) = missing(layer) else {
        return true;
    };
    skip(what, &format!("needs the {layer} layer ({why})"));
    false
}

/// Records that the running test cannot check `what` here, and `why`: in the file
/// `TETHER_TEST_SKIPS` names (set by `cargo xtask test` and `cargo xtask soak`, which
/// count skips apart from passes) and on stderr.
pub(crate) fn skip(what: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("an e2e test")
        .to_owned();
    let line = format!("{test}: {what}: {why}\n");
    eprint!("skipped: {line}");
    if let Some(path) = std::env::var_os("TETHER_TEST_SKIPS") {
        use std::io::Write;
        // One short O_APPEND write per line: lines of concurrent tests never interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        written.expect("recording a skipped test");
    }
}

/// One `tracing` event the host emitted about a plugin.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) target: String,
    pub(crate) level: Level,
    pub(crate) plugin: String,
    pub(crate) message: String,
    pub(crate) fields: String,
    /// Every other field, as `name=value` (debug-formatted).
    pub(crate) others: Vec<String>,
}

fn events() -> &'static Mutex<Vec<Recorded>> {
    static EVENTS: OnceLock<Mutex<Vec<Recorded>>> = OnceLock::new();
    EVENTS.get_or_init(Mutex::default)
}

/// Installs (once) a global subscriber that records the host's plugin events.
pub(crate) fn record_events() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
}

/// Events recorded so far for `plugin`.
pub(crate) fn recorded(plugin: &str) -> Vec<Recorded> {
    events()
        .lock()
        .expect("events lock")
        .iter()
        .filter(|e| e.plugin == plugin)
        .cloned()
        .collect()
}

struct Recorder;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if !target.starts_with("tether::") {
            return;
        }
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        events().lock().expect("events lock").push(Recorded {
            target: target.to_owned(),
            level: *event.metadata().level(),
            plugin: visitor.plugin,
            message: visitor.message,
            fields: visitor.fields,
            others: visitor.others,
        });
    }
}

#[derive(Default)]
struct Fields {
    plugin: String,
    message: String,
    fields: String,
    others: Vec<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "plugin" => self.plugin = value.to_owned(),
            "fields" => self.fields = value.to_owned(),
            "message" => self.message = value.to_owned(),
            other => self.others.push(format!("{other}={value}")),
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        match field.name() {
            "message" => self.message = value,
            "plugin" => self.plugin = value.trim_matches('"').to_owned(),
            "fields" => self.fields = value.trim_matches('"').to_owned(),
            other => self.others.push(format!("{other}={value}")),
        }
    }
}

/// Polls `check` until it holds or `limit` passes; returns whether it held. Used to wait
/// on readiness (never to measure speed).
pub(crate) async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is gone (no such process, or a zombie nobody has reaped yet).
pub(crate) fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// A shared byte buffer usable as a `StdioSink::Writer`.
#[derive(Clone, Default)]
pub(crate) struct SharedBuffer(pub(crate) Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("buffer lock")).into_owned()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `dir` exists and holds no entries.
pub(crate) fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// What a foreign process (`host-helper dial`) got when it tried `socket`.
pub(crate) struct Intrusion {
    pub(crate) pid: u32,
    /// 3 when it was refused.
    pub(crate) code: Option<i32>,
    pub(crate) said: String,
}

/// Runs `host-helper dial socket`: a local process that is neither host nor plugin.
pub(crate) async fn intrude(socket: &Path) -> Intrusion {
    #[allow(
        clippy::disallowed_methods,
        reason = "the test needs a separate local process that is neither host nor plugin"
    )]
    let intruder = std::process::Command::new(HOST_HELPER)
        .arg("dial")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("host-helper starts");
    let pid = intruder.id();
    let output = tokio::task::spawn_blocking(move || intruder.wait_with_output())
        .await
        .expect("the waiting task")
        .expect("host-helper ends");
    Intrusion {
        pid,
        code: output.status.code(),
        said: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// Builds `packages` with cargo (other packages' binaries are not built for this package's
/// tests), the way `cargo xtask` does, and returns the directory of cargo's build outputs
/// for this profile (`target/debug`), where their binaries are.
pub(crate) fn cargo_build(packages: &[&str]) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace");
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(root)
        .args(["build", "--quiet", "--locked"]);
    for package in packages {
        command.args(["--package", package]);
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "builds other packages' binaries with cargo"
    )]
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building {packages:?} failed: {status}");
    bin_dir()
}

/// The directory of cargo's build outputs for this profile (`target/debug`).
pub(crate) fn bin_dir() -> PathBuf {
    // This test binary is `<target>/debug/deps/e2e-<hash>`.
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_owned()
}
