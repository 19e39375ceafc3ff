//! tether's side of each measurement, with real plugin processes (`bench-plugin`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use tether_host::{PluginBuilder, PluginChannel, PluginClient, Pool, Sandbox, StdioSink};
use tether_hostconn::{HostConnection, Outcome};
use tether_hostserve::{Audit, HostServices, Limits, Policy};
use tether_protocol::HandshakeConfig;

use crate::contract::bench_client::BenchClient;
use crate::contract::{HostCallsRequest, HostLoadRequest, PingRequest, TransferRequest};

/// The benchmark plugin's handshake (see `bench-plugin`).
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_BENCH_PLUGIN", "bench");

/// Where `bench-plugin` is: beside this program.
pub(crate) fn plugin_program() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding tether-bench")?;
    let program = exe
        .parent()
        .context("tether-bench has no directory")?
        .join("bench-plugin");
    ensure!(
        program.is_file(),
        "{} is missing: build it with `cargo build --release -p tether-bench` (cargo xtask \
         bench does)",
        program.display()
    );
    Ok(program)
}

/// `bench-plugin` linked without PIE (as Go links its plugins), which `cargo xtask bench`
/// builds beside it; `None` when it was not built.
pub(crate) fn plugin_program_no_pie() -> Result<Option<PathBuf>> {
    let program = plugin_program()?.with_file_name("bench-plugin-nopie");
    Ok(program.is_file().then_some(program))
}

/// Host services for benchmark plugins: `env:PATH` and files under `data/` for each name,
/// audited to a file like a real host's.
pub(crate) struct Host {
    _dir: tempfile::TempDir,
    pub(crate) services: Arc<HostServices>,
    pub(crate) audit: Audit,
}

impl Host {
    pub(crate) fn new(names: &[String], limits: Limits) -> Result<Host> {
        let dir = tempfile::Builder::new()
            .prefix("tether-bench-")
            .tempdir()
            .context("a directory for the benchmark's workspace")?;
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(workspace.join("data")).context("the workspace")?;
        let policy = Policy::new();
        for name in names {
            policy.set_workspace(name, &workspace);
            for grant in ["env:PATH", "read:data/**", "write:data/**"] {
                policy.grant(name, grant)?;
            }
        }
        let audit = if std::env::var_os("XAUDIT").is_some() {
            Audit::tracing_only()
        } else {
            Audit::to_file(dir.path().join("audit.jsonl"), 1 << 40).context("audit")?
        };
        let services = Arc::new(HostServices::new(policy, audit.clone(), limits));
        Ok(Host {
            _dir: dir,
            services,
            audit,
        })
    }
}

/// A started benchmark plugin, with its host services if it has them.
pub(crate) struct Running {
    pub(crate) client: PluginClient,
    pub(crate) connection: Option<HostConnection>,
}

impl Running {
    pub(crate) fn bench(&self) -> BenchClient<PluginChannel> {
        BenchClient::new(self.client.channel())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub(crate) async fn stop(self) -> Result<()> {
        if let Some(connection) = self.connection {
            connection.close().await;
        }
        self.client.shutdown().await?;
        Ok(())
    }
}

/// How host and plugin connect: tether's frames, HTTP/2 on go-plugin's classic sockets, or with
/// go-plugin's opt-in AutoMTLS and multiplexing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// tether's frames (the default between tether peers).
    Plain,
    /// HTTP/2, as with a go-plugin peer: frames not offered.
    Http2,
    /// Frames on lanes (shared memory): the host's calls to the plugin and the plugin's
    /// calls to the host.
    Lane,
    AutoMtls,
    Multiplexed,
    MultiplexedAutoMtls,
}

impl Wire {
    pub(crate) const OPT_IN: [Wire; 5] = [
        Wire::Lane,
        Wire::Http2,
        Wire::AutoMtls,
        Wire::Multiplexed,
        Wire::MultiplexedAutoMtls,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Wire::Plain => "plain",
            Wire::Http2 => "HTTP/2 (frames off)",
            Wire::Lane => "lane",
            Wire::AutoMtls => "AutoMTLS",
            Wire::Multiplexed => "multiplexed",
            Wire::MultiplexedAutoMtls => "multiplexed + AutoMTLS",
        }
    }
}

pub(crate) async fn start(
    program: &Path,
    name: &str,
    sandbox: Sandbox,
    host: Option<&Host>,
) -> Result<Running> {
    start_over(program, name, sandbox, host, Wire::Plain).await
}

pub(crate) async fn start_over(
    program: &Path,
    name: &str,
    sandbox: Sandbox,
    host: Option<&Host>,
    wire: Wire,
) -> Result<Running> {
    let client = builder(program, name, sandbox, wire)
        .start()
        .await
        .with_context(|| format!("starting {name}"))?;
    ensure!(
        client.on_lane() == (wire == Wire::Lane),
        "{name}: a lane was {}, and the host's calls are {}on one",
        if wire == Wire::Lane {
            "asked for"
        } else {
            "not asked for"
        },
        if client.on_lane() { "" } else { "not " },
    );
    let connection = match host {
        Some(host) => match host
            .services
            .as_ref()
            .clone()
            .lane(wire == Wire::Lane)
            .connect(&client)
            .await?
        {
            Outcome::Connected(connection) => Some(connection),
            Outcome::NotRequested => bail!("{name} did not take host services"),
        },
        None => None,
    };
    Ok(Running { client, connection })
}

/// How every benchmark plugin is started.
fn builder(program: &Path, name: &str, sandbox: Sandbox, wire: Wire) -> PluginBuilder {
    PluginClient::builder(name, program)
        .handshake(HANDSHAKE)
        .auto_mtls(matches!(wire, Wire::AutoMtls | Wire::MultiplexedAutoMtls))
        .multiplex(matches!(
            wire,
            Wire::Multiplexed | Wire::MultiplexedAutoMtls
        ))
        .frames(!matches!(wire, Wire::Http2))
        .lane(wire == Wire::Lane)
        .sandbox(sandbox)
        .stdio(StdioSink::Discard)
        // Transfers of any size and loads of any length: no default deadline.
        .call_timeout(None)
}

/// Host -> plugin: the health check (go-plugin's Ping) and a 32-byte unary call.
pub(crate) async fn unary(
    program: &Path,
    calls: usize,
    wire: Wire,
    sandbox: Sandbox,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let plugin = start_over(program, "bench-unary", sandbox, None, wire).await?;
    let mut health = Vec::with_capacity(calls);
    for i in 0..calls / 10 + calls {
        let began = Instant::now();
        plugin.client.health().await?;
        if i >= calls / 10 {
            health.push(nanos(began.elapsed()));
        }
    }
    let mut bench = plugin.bench();
    let mut ping = Vec::with_capacity(calls);
    for i in 0..calls / 10 + calls {
        let began = Instant::now();
        bench
            .ping(PingRequest {
                payload: vec![0x42; 32],
            })
            .await?;
        if i >= calls / 10 {
            ping.push(nanos(began.elapsed()));
        }
    }
    plugin.stop().await?;
    Ok((health, ping))
}

/// Plugin -> host: `GetEnv` over the reused brokered connection, timed in the plugin.
pub(crate) async fn host_calls(
    program: &Path,
    calls: usize,
    wire: Wire,
    sandbox: Sandbox,
) -> Result<Vec<u64>> {
    let name = "bench-callback".to_owned();
    let host = Host::new(std::slice::from_ref(&name), Limits::default())?;
    let plugin = start_over(program, &name, sandbox, Some(&host), wire).await?;
    let count = u32::try_from(calls).context("too many calls")?;
    let nanos = plugin
        .bench()
        .host_calls(HostCallsRequest {
            warmup: count / 10,
            calls: count,
        })
        .await?
        .into_inner()
        .nanos;
    plugin.stop().await?;
    Ok(nanos)
}

/// Spawn to first successful call (`start` ends with a health check), `starts` times.
pub(crate) async fn cold_start(
    program: &Path,
    starts: usize,
    sandbox: &Sandbox,
) -> Result<Vec<u64>> {
    let mut nanos = Vec::with_capacity(starts);
    for i in 0..starts + 1 {
        let began = Instant::now();
        let plugin = start(program, "bench-cold", sandbox.clone(), None).await?;
        // The first start fills caches (the sandbox's ELF walk, the page cache): a warm-up.
        if i > 0 {
            nanos.push(self::nanos(began.elapsed()));
        }
        plugin.stop().await?;
    }
    Ok(nanos)
}

/// Taking a plugin from a [`Pool`] of one, started ahead, to its health check answered
/// (`take` ends with one), `starts` times; between takes, the pool refills and the plugin
/// waits a few milliseconds, as a pooled plugin waits for its job (not timed).
pub(crate) async fn warm_start(program: &Path, starts: usize) -> Result<Vec<u64>> {
    let owned = program.to_owned();
    let pool = Pool::start(1, move || {
        builder(&owned, "bench-warm", Sandbox::best_effort(), Wire::Plain)
    });
    let mut nanos = Vec::with_capacity(starts);
    for i in 0..starts + 1 {
        let waited = Instant::now();
        while pool.ready() < 1 {
            if let Some(why) = pool.last_failure() {
                bail!("the pool cannot start bench-warm: {why}");
            }
            ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "the pool did not refill within a minute"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // A pooled plugin waits for its job: let the refill's own work finish first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let began = Instant::now();
        let plugin = pool.take().await.context("taking a pooled plugin")?;
        if i > 0 {
            nanos.push(self::nanos(began.elapsed()));
        }
        plugin.shutdown().await?;
    }
    pool.shutdown().await;
    Ok(nanos)
}

/// What the throughput run measured, from its own process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Transfer {
    pub(crate) bytes: u64,
    /// WriteFile with the default `durable_writes` (fsync before the rename).
    pub(crate) write_seconds: f64,
    /// WriteFile with `durable_writes` off.
    pub(crate) write_unsynced_seconds: f64,
    pub(crate) read_seconds: f64,
    /// The same three in bulk (WriteFileBulk's shared memory, ReadFileBulk's open file).
    pub(crate) bulk_write_seconds: f64,
    pub(crate) bulk_write_unsynced_seconds: f64,
    pub(crate) bulk_read_seconds: f64,
    /// The disk's floor: the same bytes written with `std::fs` in 1 MiB blocks, then fsync.
    pub(crate) disk_write_sync_seconds: f64,
    /// The same, without the fsync.
    pub(crate) disk_write_seconds: f64,
    /// Reading that file back with `std::fs` in 1 MiB blocks, right after writing it (from
    /// the page cache, as ReadFile reads the file it just wrote).
    pub(crate) disk_read_seconds: f64,
    pub(crate) host_peak_rss_kib: u64,
    pub(crate) plugin_peak_rss_kib: u64,
}

/// Runs the throughput measurement in a fresh process (`transfer-host`), so that the
/// host's peak memory is its own.
pub(crate) fn transfer(bytes: u64) -> Result<Transfer> {
    let exe = std::env::current_exe().context("finding tether-bench")?;
    let output = std::process::Command::new(exe)
        .arg("transfer-host")
        .arg(bytes.to_string())
        .output()
        .context("running the throughput host")?;
    if !output.status.success() {
        bail!(
            "the throughput host failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading the throughput host's figures")
}

/// The host side of [`transfer`], in its own process: writes then reads `bytes` through
/// host services, and prints the figures as JSON.
pub(crate) async fn transfer_host(bytes: u64) -> Result<()> {
    let program = plugin_program()?;
    // The disk's floor, measured right before the bulk figure it is judged against, once,
    // as the figure is: this VM's disk swings by 2x and more from one gibibyte to the next.
    let (mut disk_write_sync_seconds, mut disk_write_seconds, mut disk_read_seconds) =
        (0.0, 0.0, 0.0);
    // (write, read, plugin's peak) for gRPC messages, then in bulk.
    let mut durable = [(0.0, 0.0, 0); 2];
    let mut unsynced = [0.0; 2];
    for (durable_writes, bulk) in [(true, false), (false, false), (true, true), (false, true)] {
        if bulk {
            let (write, read) = disk_floor(bytes, durable_writes)?;
            match durable_writes {
                true => (disk_write_sync_seconds, disk_read_seconds) = (write, read),
                false => disk_write_seconds = write,
            }
        }
        let name = "bench-transfer".to_owned();
        let limits = Limits {
            write_quota: bytes.saturating_mul(2),
            durable_writes,
            ..Limits::default()
        };
        let host = Host::new(std::slice::from_ref(&name), limits)?;
        let plugin = start(&program, &name, Sandbox::best_effort(), Some(&host)).await?;
        settle();
        let done = plugin
            .bench()
            .transfer(TransferRequest {
                path: "data/big.bin".into(),
                bytes,
                chunk: 64 * 1024,
                bulk,
            })
            .await?
            .into_inner();
        ensure!(
            done.written == bytes && done.read == bytes,
            "wrote {} and read {} of {bytes} bytes",
            done.written,
            done.read
        );
        // The plugin's peak, read by the host: what the plugin reports of itself
        // (getrusage) starts from the host's peak, whose memory it shared until its exec.
        let plugin_peak = status_kib(&plugin.client.pid().to_string(), "VmHWM:")?;
        plugin.stop().await?;
        let lane = usize::from(bulk);
        if durable_writes {
            durable[lane] = (
                done.write_nanos as f64 / 1e9,
                done.read_nanos as f64 / 1e9,
                plugin_peak,
            );
        } else {
            unsynced[lane] = done.write_nanos as f64 / 1e9;
        }
    }
    let figures = Transfer {
        bytes,
        write_seconds: durable[0].0,
        write_unsynced_seconds: unsynced[0],
        read_seconds: durable[0].1,
        bulk_write_seconds: durable[1].0,
        bulk_write_unsynced_seconds: unsynced[1],
        bulk_read_seconds: durable[1].1,
        disk_write_sync_seconds,
        disk_write_seconds,
        disk_read_seconds,
        host_peak_rss_kib: status_kib("self", "VmHWM:")?,
        plugin_peak_rss_kib: durable[0].2.max(durable[1].2),
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// Waits for the data earlier runs left dirty to reach the disk (`sync`), so that a write
/// measured next does not pay for their writeback.
fn settle() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Writes `bytes` to a file in 1 MiB blocks with `std::fs`, with a final fsync when `sync`,
/// then reads it back: the seconds of each. After a `sync`, so that it pays for no earlier
/// writeback, as each figure does.
fn disk_floor(bytes: u64, sync: bool) -> Result<(f64, f64)> {
    use std::io::{Read, Write};
    let dir = tempfile::Builder::new()
        .prefix("tether-bench-disk-")
        .tempdir()
        .context("a directory for the disk floor")?;
    // Page-aligned, as the plugin's block is: where a block starts decides how fast the
    // kernel copies into it (on this AMD EPYC a page-cache read into a block 16 bytes past
    // a 64-byte boundary, where a 1 MiB `Vec` from malloc starts, ran at half the speed),
    // so a floor and a figure with blocks that start differently compare the allocator.
    let mut storage = vec![0x5a_u8; (1 << 20) + 4096];
    let start = storage.as_ptr().align_offset(4096);
    let block = &mut storage[start..start + (1 << 20)];
    let path = dir.path().join("floor.bin");
    settle();
    let began = Instant::now();
    let mut file = std::fs::File::create(&path).context("the disk floor's file")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    if sync {
        file.sync_all()?;
    }
    let write = began.elapsed().as_secs_f64();
    drop(file);
    let began = Instant::now();
    let mut file = std::fs::File::open(&path).context("the disk floor's file")?;
    let mut read = 0_u64;
    loop {
        let n = file.read(block)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    ensure!(read == bytes, "read {read} of {bytes} bytes back");
    let read_seconds = began.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((write, read_seconds))
}

/// The floor of a cold start: starting `/bin/true` and waiting for it, `starts` times.
pub(crate) fn spawn_floor(starts: usize) -> Result<Vec<u64>> {
    let mut nanos = Vec::with_capacity(starts);
    for i in 0..starts + 1 {
        let began = Instant::now();
        let status = std::process::Command::new("/bin/true")
            .status()
            .context("running /bin/true")?;
        ensure!(status.success(), "/bin/true failed: {status}");
        if i > 0 {
            nanos.push(self::nanos(began.elapsed()));
        }
    }
    Ok(nanos)
}

/// A way of starting many plugins at once: which program, and where its sockets go.
#[derive(Debug, Clone)]
pub(crate) struct ManyVariant {
    /// How the report names it.
    pub(crate) label: String,
    pub(crate) program: PathBuf,
    /// `None`: the default socket base.
    pub(crate) socket_base: Option<PathBuf>,
}

/// The ways the report starts many plugins at once: as any host would (the default socket
/// base); with sockets on a tmpfs where the default is not one; and with the plugin linked
/// without PIE where `cargo xtask bench` built it.
pub(crate) fn many_variants(program: &Path) -> Result<Vec<ManyVariant>> {
    let base = PluginBuilder::default_socket_base_dir();
    let base_fs = crate::machine::file_system(&base);
    let mut variants = vec![ManyVariant {
        label: format!("sockets in {} ({base_fs})", base.display()),
        program: program.to_owned(),
        socket_base: None,
    }];
    let shm = Path::new("/dev/shm");
    let tmpfs =
        (base_fs != "tmpfs" && crate::machine::file_system(shm) == "tmpfs").then(|| shm.to_owned());
    if let Some(dir) = &tmpfs {
        variants.push(ManyVariant {
            label: format!("sockets on a tmpfs ({})", dir.display()),
            program: program.to_owned(),
            socket_base: Some(dir.clone()),
        });
    }
    if let Some(no_pie) = plugin_program_no_pie()? {
        variants.push(ManyVariant {
            label: match &tmpfs {
                Some(dir) => format!("plugin linked without PIE, sockets on {}", dir.display()),
                None => "plugin linked without PIE".to_owned(),
            },
            program: no_pie,
            socket_base: tmpfs,
        });
    }
    Ok(variants)
}

/// What starting many plugins at once measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Many {
    /// The [`ManyVariant`]'s label.
    pub(crate) variant: String,
    pub(crate) plugins: usize,
    pub(crate) healthy: usize,
    pub(crate) start_seconds: f64,
    pub(crate) rss_per_plugin_kib_mean: u64,
    pub(crate) rss_per_plugin_kib_max: u64,
    /// Proportional set size: each shared page (the binary's code) divided among the
    /// processes that map it, so the sum over plugins is the memory they take together.
    pub(crate) pss_per_plugin_kib_mean: u64,
}

/// Starts `count` plugins at once, checks each answers health, and reads their memory.
pub(crate) async fn many(variant: &ManyVariant, count: usize) -> Result<Many> {
    let began = Instant::now();
    let started = futures_util::future::join_all((0..count).map(|i| {
        let name = format!("bench-many-{i}");
        let mut builder = builder(&variant.program, &name, Sandbox::best_effort(), Wire::Plain);
        if let Some(base) = &variant.socket_base {
            builder = builder.socket_base_dir(base);
        }
        async move {
            let client = builder
                .start()
                .await
                .with_context(|| format!("starting {name}"))?;
            anyhow::Ok(Running {
                client,
                connection: None,
            })
        }
    }))
    .await;
    let start_seconds = began.elapsed().as_secs_f64();
    let plugins: Vec<Running> = started.into_iter().collect::<Result<_>>()?;
    let health =
        futures_util::future::join_all(plugins.iter().map(|plugin| plugin.client.health())).await;
    let healthy = health.iter().filter(|result| result.is_ok()).count();
    // Idle: let start-up allocations settle before reading resident memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss: Vec<u64> = plugins
        .iter()
        .map(|plugin| status_kib(&plugin.client.pid().to_string(), "VmRSS:"))
        .collect::<Result<_>>()?;
    let pss: Vec<u64> = plugins
        .iter()
        .map(|plugin| {
            kib_of(
                &format!("/proc/{}/smaps_rollup", plugin.client.pid()),
                "Pss:",
            )
        })
        .collect::<Result<_>>()?;
    futures_util::future::join_all(plugins.into_iter().map(Running::stop)).await;
    Ok(Many {
        variant: variant.label.clone(),
        plugins: count,
        healthy,
        start_seconds,
        rss_per_plugin_kib_mean: rss.iter().sum::<u64>() / rss.len().max(1) as u64,
        rss_per_plugin_kib_max: rss.iter().copied().max().unwrap_or(0),
        pss_per_plugin_kib_mean: pss.iter().sum::<u64>() / pss.len().max(1) as u64,
    })
}

/// What the aggregate host-service load measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Load {
    pub(crate) plugins: usize,
    pub(crate) concurrency_per_plugin: u32,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) calls_per_second: f64,
    pub(crate) audit_records_dropped: u64,
}

/// `plugins` plugins each making host-service calls, 16 at a time, for `millis`.
pub(crate) async fn load(program: &Path, plugins: usize, millis: u64) -> Result<Load> {
    let names: Vec<String> = (0..plugins).map(|i| format!("bench-load-{i}")).collect();
    let host = Host::new(&names, Limits::default())?;
    let mut running = Vec::new();
    for name in &names {
        running.push(start(program, name, Sandbox::best_effort(), Some(&host)).await?);
    }
    let concurrency = 16;
    let began = Instant::now();
    let results = futures_util::future::join_all(running.iter().map(|plugin| {
        let mut bench = plugin.bench();
        async move {
            bench
                .host_load(HostLoadRequest {
                    concurrency,
                    millis,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    }))
    .await;
    let seconds = began.elapsed().as_secs_f64();
    let mut calls = 0;
    let mut errors = 0;
    for result in results {
        let result = result?;
        calls += result.calls;
        errors += result.errors;
    }
    futures_util::future::join_all(running.into_iter().map(Running::stop)).await;
    Ok(Load {
        plugins,
        concurrency_per_plugin: concurrency,
        calls,
        errors,
        seconds,
        calls_per_second: calls as f64 / seconds,
        audit_records_dropped: host.audit.dropped(),
    })
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// A `kB` figure of `/proc/<pid>/status`.
pub(crate) fn status_kib(pid: &str, key: &str) -> Result<u64> {
    kib_of(&format!("/proc/{pid}/status"), key)
}

/// A `kB` figure of a `/proc` file of `key: value kB` lines.
fn kib_of(path: &str, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}
