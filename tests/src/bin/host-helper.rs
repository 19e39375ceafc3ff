//! A second process for tests.
//!
//! - `host-helper <test-plugin path>`: a host for tests that kill the host; starts one test
//!   plugin, prints `plugin-pid <pid>` on stdout, then waits to be killed.
//! - `host-helper dial <socket>`: a foreign local process (neither host nor plugin) that
//!   tries to call `HostTesting.WhoAmI` on a plugin's host-service socket; prints
//!   `answered <plugin>` and exits 0, or `refused: <error>` and exits 3.
//! - `host-helper gibibyte <test-plugin path> <dir>`: gives a test plugin tether's host
//!   services on a workspace in `dir`, has it write and then read 1 GiB through them, in
//!   gRPC messages and then in bulk, and prints `written`, `read`, `bulk_written`,
//!   `bulk_read`, `host_peak_kib` and `plugin_peak_kib` (VmHWM).
//! - `host-helper flood <test-plugin path> <mib>`: has a test plugin write `mib` MiB on
//!   stdout and as many on stderr, checks it still answers, and prints `host_peak_kib`
//!   and `plugin_peak_kib`.
//! - `host-helper orphan-host <hostile-plugin>`: starts the hostile plugin with processes
//!   allowed, has it leave an orphaned grandchild, prints both pids, and waits to be killed.
//! - `host-helper reattach <config.json>`: once a line arrives on stdin (the first host has
//!   admitted it), attaches to a running test plugin from its `ReattachConfig`, echoes through it, prints `pid <pid>` and `echo <message>`, and
//!   exits, leaving the plugin running.
//! - `host-helper attach-probe <config.json>`: like `reattach`, then reports what the
//!   attached client says it knows (`sandbox`, `broker`, `exit_status`), what
//!   `establish_host_services` and `HostServices::connect` answer on it (`hostconn` and
//!   `hostserve`: `attached <plugin>` for the typed refusal, else `other <error>`), stops the
//!   plugin through it and prints `stopped <how> <exit>`.
//! - `host-helper cycles <test-plugin path> <n>`: supervises a test plugin, kills it `n`
//!   times (each time waiting for the restart), shuts down, and prints its own open fds,
//!   threads and resident memory before and after, and the socket directories left.
//! - `host-helper write-hang <test-plugin path> <workspace>`: a host to kill in the middle
//!   of a `WriteFile`: has a test plugin stream 3 MiB into `output/target` and never end
//!   the write; once the host holds it all and part of it is in its temporary file, prints
//!   `temp <name>`, `plugin-pid <pid>` and `ready`, then waits to be killed.
//! - `host-helper service-cycles <test-plugin path> <dir> <n>`: `n` times starts a test
//!   plugin, connects it to tether's host services, reads a file through them, disconnects
//!   and stops it; prints its own fds, threads, sockets and resident memory after the first
//!   cycle and at the end, the socket directories left, the plugin instances the host
//!   services still track, and how long the cycles took (`millis`).
//! - `host-helper connection-flood <test-plugin path> <dir> <n>`: with the soft
//!   `RLIMIT_NOFILE` at 1024, has one test plugin dial its host-service socket `n` times
//!   while another is served; prints what came of it (see `connection_flood`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tether_broker::Peer;
use tether_host::{HandshakeConfig, PluginClient};
use tether_test_contract::testing::WhoAmIRequest;
use tether_test_contract::testing::host_testing_client::HostTestingClient;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, socket] if mode == "dial" => Ok(dial(Path::new(socket)).await),
        [mode, program, dir] if mode == "gibibyte" => gibibyte(program, Path::new(dir)).await,
        [mode, program, mib] if mode == "flood" => flood(program, mib.parse()?).await,
        [mode, program, n] if mode == "cycles" => cycles(program, n.parse()?).await,
        [mode, config] if mode == "reattach" => reattach(Path::new(config)).await,
        [mode, config] if mode == "attach-probe" => attach_probe(Path::new(config)).await,
        [mode, program, workspace] if mode == "write-hang" => {
            write_hang(program, Path::new(workspace)).await
        }
        [mode, program, dir, n] if mode == "service-cycles" => {
            service_cycles(program, Path::new(dir), n.parse()?).await
        }
        [mode, program, dir, n] if mode == "connection-flood" => {
            connection_flood(program, Path::new(dir), n.parse()?).await
        }
        [mode, program] if mode == "orphan-host" => orphan_host(program).await,
        [program] => host(program).await,
        _ => anyhow::bail!("usage: host-helper <test-plugin path> | host-helper dial <socket>"),
    }
}

/// Starts the hostile plugin with processes allowed, has it leave an orphaned grandchild,
/// prints `plugin-pid <pid>` and `grandchild-pid <pid>`, then waits to be killed.
async fn orphan_host(program: &str) -> anyhow::Result<ExitCode> {
    use tether_host::Sandbox;
    use tether_test_contract::testing::HostOpRequest;
    use tether_test_contract::testing::testing_client::TestingClient;

    let plugin = PluginClient::builder("orphan-maker", program)
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
        .sandbox(Sandbox::best_effort().allow_processes(true))
        .start()
        .await
        .context("starting the hostile plugin")?;
    let forked = TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: "double_fork".into(),
            ..HostOpRequest::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(forked.outcome == "ok", "double_fork: {}", forked.message);
    println!("plugin-pid {}", plugin.pid());
    println!("grandchild-pid {}", forked.size);
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn host(program: &str) -> anyhow::Result<ExitCode> {
    let plugin = PluginClient::builder("helper-child", program)
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
        .start()
        .await
        .context("starting the test plugin")?;
    println!("plugin-pid {}", plugin.pid());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn dial(socket: &Path) -> ExitCode {
    let attempt = async {
        let channel = tether_transport::connect(socket, Peer::SameUser).await?;
        let answer = HostTestingClient::new(channel)
            .who_am_i(WhoAmIRequest {
                claimed_name: "intruder".into(),
            })
            .await?;
        anyhow::Ok(answer.into_inner().plugin)
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(plugin)) => {
            println!("answered {plugin}");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            println!("refused: {err:#}");
            ExitCode::from(3)
        }
        Err(_) => {
            println!("refused: no answer within 10 s");
            ExitCode::from(3)
        }
    }
}

async fn gibibyte(program: &str, dir: &Path) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use tether_hostserve::{Audit, HostServices, Limits, Policy};
    use tether_plugin_sdk::tonic::Response;
    use tether_test_contract::testing::HostOpRequest;
    use tether_test_contract::testing::testing_client::TestingClient;

    const GIB: u64 = 1 << 30;
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(workspace.join("output"))?;
    let policy = Policy::new();
    policy.set_workspace("gib", &workspace);
    policy.grant("gib", "write:output/**")?;
    policy.grant("gib", "read:output/**")?;
    let limits = Limits {
        write_quota: 2 * GIB,
        ..Limits::default()
    };
    let services = Arc::new(HostServices::new(policy, Audit::tracing_only(), limits));
    let plugin = PluginClient::builder("gib", program)
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
        .arg("--host-files")
        .start()
        .await?;
    let _host = services
        .connect(&plugin)
        .await?
        .connection()
        .context("the test plugin did not request host services")?;
    let client = TestingClient::new(plugin.channel());
    let ask = |op: &str, size: u64| {
        let request = HostOpRequest {
            op: op.into(),
            path: b"output/big".to_vec(),
            data: Vec::new(),
            size,
        };
        let mut client = client.clone();
        async move { client.host_op(request).await.map(Response::into_inner) }
    };
    // In gRPC messages, then in bulk (a pipe for the write, the open file for the read).
    let written = ask("write_zeros", GIB).await?;
    anyhow::ensure!(written.outcome == "ok", "write: {}", written.message);
    let read = ask("read_stream", 0).await?;
    anyhow::ensure!(read.outcome == "ok", "read: {}", read.message);
    let bulk_written = ask("write_from", GIB).await?;
    anyhow::ensure!(
        bulk_written.outcome == "ok",
        "bulk write: {}",
        bulk_written.message
    );
    let bulk_read = ask("copy_count", 0).await?;
    anyhow::ensure!(
        bulk_read.outcome == "ok",
        "bulk read: {}",
        bulk_read.message
    );
    let host_peak = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:").map(str::to_owned))
        .context("no VmHWM")?;
    println!("written {}", written.size);
    println!("read {}", read.size);
    println!("bulk_written {}", bulk_written.size);
    println!("bulk_read {}", bulk_read.size);
    println!(
        "host_peak_kib {}",
        host_peak.trim().trim_end_matches("kB").trim()
    );
    println!("plugin_peak_kib {}", pid_kib(plugin.pid(), "VmHWM:")?);
    plugin.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// A `kB` figure of a plugin's `/proc/<pid>/status`, read by the host: what the plugin
/// reports of itself (getrusage) starts from the host's peak, whose memory it shared until
/// its exec.
fn pid_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} for pid {pid}"))
}

/// A `kB` figure of this process's `/proc/self/status`.
fn own_kib(key: &str) -> anyhow::Result<u64> {
    std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key}"))
}

fn test_plugin(name: &str, program: &str) -> tether_host::PluginBuilder {
    PluginClient::builder(name, program)
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
}

async fn flood(program: &str, mib: u32) -> anyhow::Result<ExitCode> {
    use tether_test_contract::testing::PrintRequest;
    use tether_test_contract::testing::testing_client::TestingClient;

    let plugin = test_plugin("flooder", program).start().await?;
    let mut client = TestingClient::new(plugin.channel());
    let line = format!("{}\n", "x".repeat((1 << 20) - 1));
    tokio::time::timeout(
        Duration::from_secs(120),
        client.print(PrintRequest {
            stdout: line.clone(),
            stderr: line,
            repeat: mib.saturating_sub(1),
        }),
    )
    .await
    .context("the flood blocked the plugin")??;
    plugin.health().await?;
    println!("host_peak_kib {}", own_kib("VmHWM:")?);
    println!("plugin_peak_kib {}", pid_kib(plugin.pid(), "VmHWM:")?);
    plugin.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

async fn cycles(program: &str, n: u32) -> anyhow::Result<ExitCode> {
    use tether_host::{RestartPolicy, State, Supervisor};

    let sockets = tempfile::tempdir()?;
    let base = sockets.path().to_owned();
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, Iterator::count);
    let measure = || -> anyhow::Result<(usize, usize, u64)> {
        Ok((
            count("/proc/self/fd"),
            count("/proc/self/task"),
            own_kib("VmRSS:")?,
        ))
    };
    let policy = RestartPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        max_restarts: n + 1,
        health_interval: None,
        ..RestartPolicy::default()
    };
    let program = program.to_owned();
    let supervisor = Supervisor::start(
        "cycler",
        move || test_plugin("cycler", &program).socket_base_dir(&base),
        policy,
        |_| Box::pin(async { Ok(()) }),
    );
    let mut states = supervisor.watch();
    let mut before = None;
    // One cycle first, so that what is made once (the spawner thread, pools) is counted.
    for cycle in 0..=n {
        let plugin = supervisor.plugin().await?;
        if cycle == 1 {
            before = Some(measure()?);
        }
        if cycle == n {
            break;
        }
        let pid = plugin.pid();
        drop(plugin);
        let pid_t = libc::pid_t::try_from(pid)?;
        // SAFETY: kill(2) on the plugin this helper supervises.
        unsafe { libc::kill(pid_t, libc::SIGKILL) };
        // Wait for the instance that replaces it.
        loop {
            states.changed().await?;
            if let State::Running { plugin, .. } = &*states.borrow_and_update()
                && plugin.pid() != pid
            {
                break;
            }
        }
    }
    supervisor.shutdown().await;
    // Let the runtime finish dropping what the last instance left.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fds, threads, rss) = before.context("fewer than two cycles")?;
    let (fds_after, threads_after, rss_after) = measure()?;
    println!("fds {fds} {fds_after}");
    println!("threads {threads} {threads_after}");
    println!("rss_kib {rss} {rss_after}");
    println!(
        "socket_dirs_left {}",
        count(&sockets.path().display().to_string())
    );
    Ok(ExitCode::SUCCESS)
}

async fn reattach(config: &Path) -> anyhow::Result<ExitCode> {
    use tether_host::ReattachConfig;
    use tether_test_contract::testing::EchoRequest;
    use tether_test_contract::testing::testing_client::TestingClient;

    let config: ReattachConfig = serde_json::from_slice(&std::fs::read(config)?)?;
    // The plugin admits only the host that started it, until that host admits this
    // process: wait for the word (a line on stdin).
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let plugin = PluginClient::reattach(&config).await?;
    let echo = TestingClient::new(plugin.channel())
        .echo(EchoRequest {
            message: "from the second host".into(),
        })
        .await?
        .into_inner()
        .message;
    println!("pid {}", plugin.pid());
    println!("echo {echo}");
    // Dropping the attached client leaves the plugin to the host that started it.
    drop(plugin);
    Ok(ExitCode::SUCCESS)
}

async fn attach_probe(config: &Path) -> anyhow::Result<ExitCode> {
    use tether_host::ReattachConfig;
    use tether_hostserve::{Audit, HostServices, Limits, Policy};

    let config: ReattachConfig = serde_json::from_slice(&std::fs::read(config)?)?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let plugin = PluginClient::reattach(&config).await?;
    println!("attached {}", plugin.is_attached());
    println!(
        "sandbox {}",
        plugin
            .sandbox()
            .map_or_else(|| "none".to_owned(), ToString::to_string)
    );
    println!(
        "broker {}",
        if plugin.broker().is_some() {
            "some"
        } else {
            "none"
        }
    );
    println!("exit_status {:?}", plugin.exit_status());
    let describe = |result: Result<tether_hostconn::Outcome, tether_hostconn::Error>| match result {
        Err(tether_hostconn::Error::Attached { plugin }) => format!("attached {plugin}"),
        Err(other) => format!("other {other}"),
        Ok(_) => "other: host services were established".to_owned(),
    };
    let services = HostServices::new(Policy::new(), Audit::tracing_only(), Limits::default());
    // Bounded, so that a hang is reported as one rather than stalling the test.
    let hostconn = tokio::time::timeout(
        PATIENCE,
        tether_hostconn::establish_host_services(&plugin, services.routes()),
    )
    .await
    .map_or_else(|_| "hung".to_owned(), describe);
    println!("hostconn {hostconn}");
    let hostserve = tokio::time::timeout(PATIENCE, services.connect(&plugin))
        .await
        .map_or_else(|_| "hung".to_owned(), describe);
    println!("hostserve {hostserve}");
    let exit = plugin.shutdown().await?;
    println!("stopped {:?} {:?}", exit.stop, exit.status);
    Ok(ExitCode::SUCCESS)
}

/// Polls `check` every 10 ms until it holds or `limit` passes; returns whether it held. A
/// wait on an event, bounded only so that a failure is reported.
async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
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

/// How long the helpers below wait for an event before they report a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// Asks `plugin` for the test op `op`, with a deadline far beyond [`PATIENCE`].
async fn host_op(
    plugin: &PluginClient,
    op: &str,
    path: &[u8],
    size: u64,
) -> anyhow::Result<tether_test_contract::testing::HostOpResponse> {
    use tether_plugin_sdk::tonic::Request;
    use tether_test_contract::testing::HostOpRequest;
    use tether_test_contract::testing::testing_client::TestingClient;

    let mut request = Request::new(HostOpRequest {
        op: op.into(),
        path: path.to_vec(),
        data: Vec::new(),
        size,
    });
    request.set_timeout(Duration::from_secs(3600));
    let answer = TestingClient::new(plugin.channel())
        .host_op(request)
        .await?;
    Ok(answer.into_inner())
}

async fn write_hang(program: &str, workspace: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::sync::Arc;
    use tether_hostserve::{Audit, HostServices, Limits, Policy, RESERVED_PREFIX};

    const SENT: u64 = 3 << 20;
    let policy = Policy::new();
    policy.set_workspace("hung-writer", workspace);
    policy.grant("hung-writer", "write:output/**")?;
    let limits = Limits {
        stall_timeout: Duration::from_secs(3600),
        ..Limits::default()
    };
    let services = Arc::new(HostServices::new(policy, Audit::tracing_only(), limits));
    let plugin = test_plugin("hung-writer", program)
        .arg("--host-files")
        .start()
        .await?;
    let _host = services
        .connect(&plugin)
        .await?
        .connection()
        .context("the test plugin did not request host services")?;
    let writer = Arc::new(plugin);
    let writing = Arc::clone(&writer);
    let _write =
        tokio::spawn(async move { host_op(&writing, "write_hold", b"output/target", SENT).await });
    let output = workspace.join("output");
    // The host's temporary file, once part of the write is in it.
    let temp = || -> Option<String> {
        std::fs::read_dir(&output)
            .ok()?
            .filter_map(Result::ok)
            .find(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(RESERVED_PREFIX)
                    && entry.metadata().is_ok_and(|meta| meta.len() >= 1 << 20)
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
    };
    let under_way = until(PATIENCE, || {
        services.bytes_written("hung-writer") == SENT && temp().is_some()
    })
    .await;
    anyhow::ensure!(
        under_way,
        "the write never got under way: {} bytes counted",
        services.bytes_written("hung-writer")
    );
    println!("temp {}", temp().unwrap_or_default());
    println!("plugin-pid {}", writer.pid());
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// This process's open fds, sockets among them, threads and resident memory (KiB).
fn resources() -> anyhow::Result<[u64; 4]> {
    let mut fds = 0;
    let mut sockets = 0;
    for fd in std::fs::read_dir("/proc/self/fd")?.filter_map(Result::ok) {
        fds += 1;
        if std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    let threads = std::fs::read_dir("/proc/self/task")?.count() as u64;
    Ok([fds, sockets, threads, own_kib("VmRSS:")?])
}

async fn service_cycles(program: &str, dir: &Path, n: u32) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use tether_hostserve::{Audit, HostServices, Limits, Policy};

    let workspace = dir.join("workspace");
    std::fs::create_dir_all(workspace.join("config"))?;
    std::fs::write(workspace.join("config/a.txt"), "cycle")?;
    let sockets = dir.join("sockets");
    std::fs::create_dir_all(&sockets)?;
    let policy = Policy::new();
    policy.set_workspace("cycler", &workspace);
    policy.grant("cycler", "read:config/**")?;
    let services = Arc::new(HostServices::new(
        policy,
        Audit::tracing_only(),
        Limits::default(),
    ));
    let started = std::time::Instant::now();
    let mut before = None;
    // One cycle first, so that what is made once (the spawner thread, pools) is counted.
    for cycle in 0..n {
        if cycle == 1 {
            before = Some(resources()?);
        }
        let plugin = test_plugin("cycler", program)
            .arg("--host-files")
            .socket_base_dir(&sockets)
            .start()
            .await?;
        let host = services
            .connect(&plugin)
            .await?
            .connection()
            .context("the test plugin did not request host services")?;
        let read = host_op(&plugin, "read_file", b"config/a.txt", 0).await?;
        anyhow::ensure!(
            read.outcome == "ok" && read.data == b"cycle",
            "cycle {cycle}: {read:?}"
        );
        host.close().await;
        plugin.shutdown().await?;
    }
    let millis = started.elapsed().as_millis();
    let before = before.context("fewer than two cycles")?;
    let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, Iterator::count);
    // What the last cycle left is released in the background (connections closing,
    // idle blocking threads ending): wait for it, and report whatever is left then.
    let settled = until(PATIENCE, || {
        resources().is_ok_and(|now| now[..3].iter().zip(&before[..3]).all(|(n, b)| n <= b))
            && count(&sockets) == 0
            && services.tracked_instances() == 0
    })
    .await;
    let after = resources()?;
    for (i, key) in ["fds", "sockets", "threads", "rss_kib"].iter().enumerate() {
        println!("{key} {} {}", before[i], after[i]);
    }
    println!("socket_dirs_left {}", count(&sockets));
    println!("tracked_instances {}", services.tracked_instances());
    println!("settled {}", u8::from(settled));
    println!("millis {millis}");
    Ok(ExitCode::SUCCESS)
}

async fn connection_flood(program: &str, dir: &Path, n: u64) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use tether_host::{ResourceLimits, Sandbox};
    use tether_hostserve::{Audit, HostServices, Limits, Policy};

    // The host runs with the usual soft limit of open files; the flooding plugin may open
    // four times as many, more than the host could accept.
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process, with a valid struct.
    unsafe {
        anyhow::ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0);
        files.rlim_cur = files.rlim_max.min(1024);
        anyhow::ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &files) == 0);
    }
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(workspace.join("config"))?;
    std::fs::write(workspace.join("config/a.txt"), "served")?;
    let audit_file = dir.join("audit.jsonl");
    let policy = Policy::new();
    for plugin in ["flooder", "bystander"] {
        policy.set_workspace(plugin, &workspace);
        policy.grant(plugin, "read:config/**")?;
    }
    let limits = Limits::default();
    let max_connections = limits.max_connections as u64;
    let services = Arc::new(HostServices::new(
        policy,
        Audit::to_file(&audit_file, 64 << 20)?,
        limits,
    ));
    let flooder = test_plugin("flooder", program)
        .arg("--host-files")
        .sandbox(Sandbox::best_effort().limits(ResourceLimits {
            open_files: Some(4096),
            ..ResourceLimits::default()
        }))
        .start()
        .await?;
    let bystander = test_plugin("bystander", program)
        .arg("--host-files")
        .start()
        .await?;
    let mut connections = Vec::new();
    for plugin in [&flooder, &bystander] {
        connections.push(
            services
                .connect(plugin)
                .await?
                .connection()
                .context("the test plugin did not request host services")?,
        );
    }
    let socket = connections[0]
        .address()
        .context("no host-service socket")?
        .to_owned();
    let fds_before = resources()?[0];
    let flood = tokio::time::timeout(
        PATIENCE,
        host_op(
            &flooder,
            "open_connections",
            socket.as_os_str().as_encoded_bytes(),
            n,
        ),
    )
    .await;
    let (done, connected) = match &flood {
        Ok(Ok(answer)) => (1, answer.size),
        _ => (0, 0),
    };
    // Every connection past the limit is refused and audited: wait for the records.
    let refusals = || {
        std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("connection limit reached"))
            .count() as u64
    };
    let expected = connected.saturating_sub(max_connections - 1);
    until(PATIENCE, || done == 1 && refusals() >= expected).await;
    let fds_after = resources()?[0];
    let outcome = |answer: anyhow::Result<tether_test_contract::testing::HostOpResponse>| {
        u8::from(answer.is_ok_and(|answer| answer.outcome == "ok" && answer.data == b"served"))
    };
    let bystander_ok = outcome(host_op(&bystander, "read_file", b"config/a.txt", 0).await);
    let flooder_ok = outcome(host_op(&flooder, "read_file", b"config/a.txt", 0).await);
    println!("flood_done {done}");
    println!("connected {connected}");
    println!("refused {}", refusals());
    println!("expected_refusals {expected}");
    println!("max_connections {max_connections}");
    println!("fds {fds_before} {fds_after}");
    println!("bystander_ok {bystander_ok}");
    println!("flooder_ok {flooder_ok}");
    if let Ok(Ok(answer)) = &flood {
        println!("# {:?}", answer.names);
    } else {
        println!("# the flood did not finish: {flood:?}");
    }
    bystander.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
