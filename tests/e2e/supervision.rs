//! The supervisor, with real processes: a killed plugin comes back with its host services,
//! a hung one is killed and restarted, one that crashes on every start is marked failed
//! while the host keeps serving the others.

use std::sync::Arc;
use std::time::Duration;

use tether_host::{
    Error, PluginClient, Restart, RestartPolicy, State, Stop, Supervisor, SupervisorError,
};
use tether_hostconn::{Outcome, establish_host_services};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{HostOpRequest, TickRequest};
use tonic::Code;

use crate::hostconn::{WhoAmI, call_host, services};
use crate::support::{
    BAD_PLUGIN, HANDSHAKE, HOST_HELPER, HOSTILE_PLUGIN, PATIENCE, TEST_PLUGIN, is_gone,
    record_events, sandbox, test_plugin,
};

/// Quick restarts and frequent health checks; a health check fails only after 5 s without
/// an answer, a margin no loaded machine eats, so no test sees a spurious restart.
pub(crate) fn quick() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        health_interval: Some(Duration::from_millis(200)),
        health_timeout: Duration::from_secs(5),
        ..RestartPolicy::default()
    }
}

/// The running instance other than `old` (by pid), once there is one.
pub(crate) async fn next_instance(supervisor: &Supervisor, old: u32) -> Arc<PluginClient> {
    let mut states = supervisor.watch();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let State::Running { plugin, .. } = &*states.borrow_and_update()
                && plugin.pid() != old
            {
                return Arc::clone(plugin);
            }
            states.changed().await.expect("the supervisor runs");
        }
    })
    .await
    .expect("a new instance starts")
}

pub(crate) fn kill(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) on a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

#[tokio::test]
async fn a_killed_plugin_is_restarted_and_its_host_services_come_back() {
    let shared = Arc::new(WhoAmI::default());
    let routes = Arc::clone(&shared);
    let supervisor = Supervisor::start(
        "phoenix",
        || test_plugin("phoenix").arg("--host-services"),
        quick(),
        move |plugin| {
            let routes = services(&routes);
            Box::pin(async move {
                match establish_host_services(&plugin, routes).await? {
                    Outcome::Connected(connection) => Ok(connection),
                    Outcome::NotRequested => Err("no host services requested".into()),
                }
            })
        },
    );
    let first = supervisor.plugin().await.expect("the first instance");
    call_host(&first, 1, "").await.expect("a callback works");
    let old = first.pid();

    // Killed in the middle of a streaming call: the stream fails with the exit.
    let mut ticks = TestingClient::new(first.channel())
        .ticks(TickRequest { every_ms: 10 })
        .await
        .expect("the stream opens")
        .into_inner();
    first
        .guard(ticks.message())
        .await
        .expect("a first tick")
        .expect("the stream runs");
    kill(old);
    let end = loop {
        match tokio::time::timeout(PATIENCE, first.guard(ticks.message()))
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    match end {
        Err(Error::Exited(report)) => {
            assert!(report.to_string().contains("signal 9"), "{report}");
        }
        other => panic!("expected Error::Exited, got {other:?}"),
    }
    drop(first);

    let second = next_instance(&supervisor, old).await;
    // The new instance has its host services again, without the host's code doing anything.
    let reply = call_host(&second, 2, "")
        .await
        .expect("a callback after the restart");
    assert_eq!(reply.seen_as, "phoenix");
    let pids: Vec<u32> = shared
        .calls_by("phoenix")
        .iter()
        .map(|call| call.identity.pid())
        .collect();
    assert_eq!(pids, [old, second.pid(), second.pid()]);
    assert!(matches!(
        supervisor.state(),
        State::Running { restarts: 1, .. }
    ));
    assert!(is_gone(old));
    drop(second);
    // With no other handle left, the supervisor stops the plugin gracefully.
    let exit = supervisor
        .shutdown()
        .await
        .expect("an instance was running");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
}

#[tokio::test]
async fn a_hung_plugin_misses_its_deadline_then_is_killed_and_restarted() {
    record_events();
    let supervisor = Supervisor::start(
        "frozen",
        || {
            PluginClient::builder("frozen", HOSTILE_PLUGIN)
                .handshake(HANDSHAKE)
                .sandbox(sandbox())
        },
        quick(),
        |_| Box::pin(async { Ok(()) }),
    );
    let first = supervisor.plugin().await.expect("the first instance");
    let old = first.pid();
    // The call's deadline fires: the plugin blocks its only thread.
    let mut request = tonic::Request::new(HostOpRequest {
        op: "freeze".into(),
        ..HostOpRequest::default()
    });
    request.set_timeout(Duration::from_millis(500));
    let status = TestingClient::new(first.channel())
        .host_op(request)
        .await
        .expect_err("a frozen plugin does not answer");
    // tonic's client enforces the deadline itself (Cancelled, "Timeout expired"), or the
    // server does (DeadlineExceeded), whichever is first.
    assert!(
        status.code() == Code::DeadlineExceeded
            || (status.code() == Code::Cancelled && status.message().contains("Timeout")),
        "{status}"
    );
    drop(first);

    // The health checks notice, and the supervisor kills and replaces it.
    let second = next_instance(&supervisor, old).await;
    second.health().await.expect("the new instance answers");
    assert!(is_gone(old), "the hung instance was killed");
    drop(second);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_crashes_on_every_start_is_marked_failed_and_others_keep_serving() {
    record_events();
    let policy = RestartPolicy {
        restart: Restart::OnFailure,
        max_restarts: 3,
        ..quick()
    };
    let supervisor = Supervisor::start(
        "crasher",
        || {
            PluginClient::builder("crasher", BAD_PLUGIN)
                .arg("exit-early")
                .sandbox(sandbox())
        },
        policy,
        |_| Box::pin(async { Ok(()) }),
    );
    let healthy = test_plugin("bystander").start().await.expect("start");
    let err = tokio::time::timeout(PATIENCE, supervisor.plugin())
        .await
        .expect("the supervisor decides")
        .expect_err("it never runs");
    match &err {
        SupervisorError::Failed {
            restarts, reason, ..
        } => {
            assert_eq!(*restarts, 3);
            assert!(reason.contains("exited"), "{reason}");
        }
        other => panic!("expected Failed, got {other}"),
    }
    // The host is still up, and its other plugin answers.
    healthy
        .health()
        .await
        .expect("the other plugin still answers");
    healthy.shutdown().await.expect("shutdown");
    supervisor.shutdown().await;
}

/// Runs `host-helper <args>` (a host in a process of its own, so its resources are its
/// own) and returns its `key value...` lines.
pub(crate) async fn helper(args: &[&str]) -> Vec<(String, Vec<u64>)> {
    #[allow(
        clippy::disallowed_methods,
        reason = "the host must be a separate process to measure its own resources"
    )]
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(HOST_HELPER)
            .args(args)
            .output(),
    )
    .await
    .expect("the helper host finishes")
    .expect("the helper host runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let key = words.next()?.to_owned();
            Some((key, words.filter_map(|w| w.parse().ok()).collect()))
        })
        .collect()
}

pub(crate) fn value<'a>(report: &'a [(String, Vec<u64>)], key: &str) -> &'a [u64] {
    report
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, values)| values.as_slice())
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

#[tokio::test]
async fn a_plugin_flooding_100_mib_on_stdout_and_stderr_blocks_nothing_and_memory_stays_bounded() {
    let report = helper(&["flood", TEST_PLUGIN, "100"]).await;
    let (host, plugin) = (
        value(&report, "host_peak_kib")[0],
        value(&report, "plugin_peak_kib")[0],
    );
    println!("100 MiB on each stream: host peak {host} KiB, plugin peak {plugin} KiB");
    assert!(host < 64 * 1024, "host peak {host} KiB");
    assert!(plugin < 64 * 1024, "plugin peak {plugin} KiB");
}

#[tokio::test]
async fn a_hundred_crash_and_restart_cycles_leave_the_host_as_it_was() {
    let report = helper(&["cycles", TEST_PLUGIN, "100"]).await;
    println!("100 cycles: {report:?}");
    let fds = value(&report, "fds");
    let threads = value(&report, "threads");
    let rss = value(&report, "rss_kib");
    assert!(fds[1] <= fds[0], "open fds grew: {fds:?}");
    assert!(threads[1] <= threads[0], "threads grew: {threads:?}");
    assert!(
        rss[1] <= rss[0] + 4 * 1024,
        "resident memory grew: {rss:?} KiB"
    );
    assert_eq!(value(&report, "socket_dirs_left"), [0]);
}

#[tokio::test]
async fn a_hundred_plugins_start_and_stop_at_once_while_one_never_answers() {
    // One plugin never prints its handshake: nothing else may wait for it.
    let stuck = tokio::spawn(
        PluginClient::builder("stuck", BAD_PLUGIN)
            .arg("silent")
            .sandbox(sandbox())
            .start_timeout(Duration::from_secs(3600))
            .start(),
    );
    let started =
        futures_util::future::join_all((0..100).map(|i| test_plugin(&format!("many-{i}")).start()))
            .await;
    let plugins: Vec<PluginClient> = started
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every plugin starts");
    let healthy = futures_util::future::join_all(plugins.iter().map(PluginClient::health)).await;
    assert!(healthy.iter().all(Result::is_ok), "{healthy:?}");
    assert!(!stuck.is_finished(), "the silent plugin is still starting");
    let pids: Vec<u32> = plugins.iter().map(PluginClient::pid).collect();
    let stopped =
        futures_util::future::join_all(plugins.into_iter().map(PluginClient::shutdown)).await;
    assert!(stopped.iter().all(Result::is_ok), "{stopped:?}");
    assert!(pids.iter().all(|pid| is_gone(*pid)));
    stuck.abort();
}
