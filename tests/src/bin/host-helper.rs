//! A second process for tests.
//!
//! - `host-helper <test-plugin path>`: a host for tests that kill the host; starts one test
//!   plugin, prints `plugin-pid <pid>` on stdout, then waits to be killed.
//! - `host-helper dial <socket>`: a foreign local process (neither host nor plugin) that
//!   tries to call `HostTesting.WhoAmI` on a plugin's host-service socket; prints
//!   `answered <plugin>` and exits 0, or `refused: <error>` and exits 3.
//! - `host-helper gibibyte <test-plugin path> <dir>`: gives a test plugin tether's host
//!   services on a workspace in `dir`, has it write and then read 1 GiB through them, and
//!   prints `written`, `read`, `host_peak_kib` and `plugin_peak_kib` (VmHWM).
//! - `host-helper flood <test-plugin path> <mib>`: has a test plugin write `mib` MiB on
//!   stdout and as many on stderr, checks it still answers, and prints `host_peak_kib`
//!   and `plugin_peak_kib`.
//! - `host-helper reattach <config.json>`: once a line arrives on stdin (the first host has
//!   admitted it), attaches to a running test plugin from its `ReattachConfig`, echoes through it, prints `pid <pid>` and `echo <message>`, and
//!   exits, leaving the plugin running.
//! - `host-helper cycles <test-plugin path> <n>`: supervises a test plugin, kills it `n`
//!   times (each time waiting for the restart), shuts down, and prints its own open fds,
//!   threads and resident memory before and after, and the socket directories left.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tether_broker::Peer;
use tether_host::{HandshakeConfig, PluginClient};
use tether_plugin_sdk::protocol::testing::WhoAmIRequest;
use tether_plugin_sdk::protocol::testing::host_testing_client::HostTestingClient;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, socket] if mode == "dial" => Ok(dial(Path::new(socket)).await),
        [mode, program, dir] if mode == "gibibyte" => gibibyte(program, Path::new(dir)).await,
        [mode, program, mib] if mode == "flood" => flood(program, mib.parse()?).await,
        [mode, program, n] if mode == "cycles" => cycles(program, n.parse()?).await,
        [mode, config] if mode == "reattach" => reattach(Path::new(config)).await,
        [program] => host(program).await,
        _ => anyhow::bail!("usage: host-helper <test-plugin path> | host-helper dial <socket>"),
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
        let channel = tether_broker::unix::connect(socket, Peer::SameUser).await?;
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
    use tether_plugin_sdk::protocol::testing::HostOpRequest;
    use tether_plugin_sdk::protocol::testing::testing_client::TestingClient;
    use tether_plugin_sdk::tonic::Response;

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
    let written = ask("write_zeros", GIB).await?;
    anyhow::ensure!(written.outcome == "ok", "write: {}", written.message);
    let read = ask("read_stream", 0).await?;
    anyhow::ensure!(read.outcome == "ok", "read: {}", read.message);
    let host_peak = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:").map(str::to_owned))
        .context("no VmHWM")?;
    println!("written {}", written.size);
    println!("read {}", read.size);
    println!(
        "host_peak_kib {}",
        host_peak.trim().trim_end_matches("kB").trim()
    );
    println!(
        "plugin_peak_kib {}",
        read.peak_rss_kib.max(written.peak_rss_kib)
    );
    plugin.shutdown().await?;
    Ok(ExitCode::SUCCESS)
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
    use tether_plugin_sdk::protocol::testing::testing_client::TestingClient;
    use tether_plugin_sdk::protocol::testing::{HostOpRequest, PrintRequest};

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
    // Any host op reports the plugin's peak memory (this one fails: no host services).
    let peak = client
        .host_op(HostOpRequest::default())
        .await?
        .into_inner()
        .peak_rss_kib;
    println!("host_peak_kib {}", own_kib("VmHWM:")?);
    println!("plugin_peak_kib {peak}");
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
    use tether_plugin_sdk::protocol::testing::EchoRequest;
    use tether_plugin_sdk::protocol::testing::testing_client::TestingClient;

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
