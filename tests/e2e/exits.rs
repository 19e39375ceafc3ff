//! A plugin's end, as the host sees it: the exit is noticed as it happens (pidfd), a call
//! in flight fails with the exit instead of a transport error or a hang, the report says
//! how the process ended and what it last wrote, and nothing else of the plugin's process
//! group survives its leader.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use tether_host::{DEFAULT_CALL_TIMEOUT, Error, Exit, PluginClient};
use tether_plugin_sdk::protocol::parse_grpc_timeout;
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{
    EchoRequest, HostOpRequest, LogRequest, SpawnChildRequest, TickRequest,
};

use crate::support::{
    HANDSHAKE, HOSTILE_PLUGIN, PATIENCE, eventually, is_gone, record_events, recorded, sandbox,
    test_plugin,
};

fn kill(pid: u32, signal: i32) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) with a pid this test started; it touches no memory.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

#[tokio::test]
async fn a_call_in_flight_fails_with_the_plugins_exit() {
    record_events();
    let plugin = Arc::new(
        PluginClient::builder("killed-mid-call", HOSTILE_PLUGIN)
            .handshake(HANDSHAKE)
            .sandbox(sandbox())
            .start()
            .await
            .expect("start"),
    );
    let pid = plugin.pid();
    let caller = Arc::clone(&plugin);
    let call = tokio::spawn(async move {
        let mut client = TestingClient::new(caller.channel());
        // This plugin never answers "hang".
        caller
            .guard(client.host_op(HostOpRequest {
                op: "hang".into(),
                ..HostOpRequest::default()
            }))
            .await
    });
    // The plugin says when it has the call.
    assert!(
        eventually(PATIENCE, || recorded("killed-mid-call")
            .iter()
            .any(|event| event.message.contains("hanging on the call")))
        .await,
        "the call never reached the plugin: {:?}",
        recorded("killed-mid-call")
    );
    assert!(!call.is_finished(), "the hang answered");
    kill(pid, libc::SIGKILL);
    let result = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call ended")
        .expect("the task ran");
    match result {
        Err(Error::Exited(report)) => {
            assert_eq!(
                report.status.status().and_then(|s| s.signal()),
                Some(libc::SIGKILL),
                "{report}"
            );
            assert_eq!(report.plugin, "killed-mid-call");
            assert!(
                report.to_string().contains("killed by signal 9"),
                "{report}"
            );
        }
        Err(other) => panic!("expected Error::Exited, got {other}"),
        Ok(_) => panic!("the call succeeded after the plugin was killed"),
    }
    assert!(is_gone(pid));
}

#[tokio::test]
async fn a_stream_cut_by_the_plugins_death_fails_with_its_exit() {
    let plugin = test_plugin("killed-mid-stream")
        .start()
        .await
        .expect("start");
    let mut client = TestingClient::new(plugin.channel());
    let mut ticks = plugin
        .guard(client.ticks(TickRequest { every_ms: 10 }))
        .await
        .expect("the stream opens")
        .into_inner();
    // Each message is read through `guard` too.
    for expected in 0..3 {
        let tick = plugin.guard(ticks.message()).await.expect("a tick");
        assert_eq!(tick.map(|tick| tick.n), Some(expected));
    }
    kill(plugin.pid(), libc::SIGKILL);
    let end = loop {
        // Ticks already on their way may still arrive; then the end.
        match tokio::time::timeout(PATIENCE, plugin.guard(ticks.message()))
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    match end {
        Err(Error::Exited(report)) => {
            assert_eq!(
                report.status.status().and_then(|s| s.signal()),
                Some(libc::SIGKILL),
                "{report}"
            );
        }
        other => panic!("expected Error::Exited, got {other:?}"),
    }
}

#[tokio::test]
async fn the_exit_report_has_the_signal_and_the_last_words_on_stderr() {
    let plugin = test_plugin("last-words").start().await.expect("start");
    // The test plugin logs one line per level on stderr.
    TestingClient::new(plugin.channel())
        .log(LogRequest {})
        .await
        .expect("log");
    kill(plugin.pid(), libc::SIGKILL);
    let report = tokio::time::timeout(PATIENCE, plugin.exited())
        .await
        .expect("the exit is noticed");
    assert_eq!(
        report.status.status().and_then(|s| s.signal()),
        Some(libc::SIGKILL)
    );
    assert!(report.stderr_tail.contains("an error line"), "{report}");
    // Reaped, not left a zombie: the exit is published only after the host reaps it.
    let proc_dir = format!("/proc/{}", plugin.pid());
    assert!(
        !std::path::Path::new(&proc_dir).exists(),
        "{proc_dir} remains"
    );
    assert_eq!(
        plugin
            .exit_status()
            .and_then(Exit::status)
            .and_then(|s| s.signal()),
        Some(9)
    );

    // A call after the end fails with the same report, not a transport error.
    let after = plugin
        .guard(TestingClient::new(plugin.channel()).log(LogRequest {}))
        .await;
    assert!(matches!(after, Err(Error::Exited(_))), "{after:?}");
}

#[tokio::test]
async fn nothing_the_plugin_forked_outlives_its_leader() {
    let plugin = test_plugin("orphan-maker")
        .sandbox(sandbox().allow_processes(true))
        .start()
        .await
        .expect("start");
    let child = TestingClient::new(plugin.channel())
        .spawn_child(SpawnChildRequest {})
        .await
        .expect("spawn child")
        .into_inner()
        .pid;
    assert!(!is_gone(child), "the child runs");
    // Only the leader is killed, and the host is not asked to shut anything down.
    kill(plugin.pid(), libc::SIGKILL);
    tokio::time::timeout(PATIENCE, plugin.exited())
        .await
        .expect("the exit is noticed");
    assert!(
        eventually(PATIENCE, || is_gone(child)).await,
        "child {child} outlived its plugin's leader"
    );
    // The client is still usable, and dropping it later signals nothing (the leader is
    // reaped: its process group id may belong to someone else by now).
    assert!(plugin.exit_status().is_some());
    drop(plugin);
}

/// The deadline a call reached the test plugin with ("" if none).
async fn deadline_seen(plugin: &PluginClient, own: Option<Duration>) -> String {
    let mut request = tonic::Request::new(EchoRequest {
        message: "grpc-timeout".into(),
    });
    if let Some(own) = own {
        request.set_timeout(own);
    }
    TestingClient::new(plugin.channel())
        .echo(request)
        .await
        .expect("echo")
        .into_inner()
        .message
}

#[tokio::test]
async fn calls_get_the_default_deadline_unless_they_carry_their_own() {
    let plugin = test_plugin("deadlines")
        .call_timeout(Some(Duration::from_secs(2)))
        .start()
        .await
        .expect("start");
    assert_eq!(deadline_seen(&plugin, None).await, "2000000u");
    // A call's own deadline wins, longer or shorter.
    assert_eq!(
        deadline_seen(&plugin, Some(Duration::from_secs(45))).await,
        "45000000u"
    );
    assert_eq!(
        deadline_seen(&plugin, Some(Duration::from_millis(700))).await,
        "700000u"
    );
    plugin.shutdown().await.expect("shutdown");

    let default = test_plugin("default-deadline")
        .start()
        .await
        .expect("start");
    assert_eq!(
        parse_grpc_timeout(&deadline_seen(&default, None).await),
        Some(DEFAULT_CALL_TIMEOUT)
    );
    default.shutdown().await.expect("shutdown");

    let none = test_plugin("no-deadline")
        .call_timeout(None)
        .start()
        .await
        .expect("start");
    assert_eq!(deadline_seen(&none, None).await, "");
    none.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_default_deadline_ends_a_call_the_plugin_never_answers() {
    record_events();
    let plugin = PluginClient::builder("default-deadline-hang", HOSTILE_PLUGIN)
        .handshake(HANDSHAKE)
        .sandbox(sandbox())
        .call_timeout(Some(Duration::from_millis(300)))
        .start()
        .await
        .expect("start");
    let mut client = TestingClient::new(plugin.channel());
    let result = tokio::time::timeout(
        PATIENCE,
        plugin.guard(client.host_op(HostOpRequest {
            op: "hang".into(),
            ..HostOpRequest::default()
        })),
    )
    .await
    .expect("the default deadline ends the call");
    match result {
        Err(Error::Call { status, .. }) => assert!(
            status.code() == tonic::Code::DeadlineExceeded || status.message().contains("Timeout"),
            "{status}"
        ),
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert!(plugin.exit_status().is_none(), "the plugin still runs");
    plugin.shutdown().await.expect("shutdown");
}

/// Runs `host-helper <mode> <config>` as a second host process attached to `plugin`
/// (admitted first), and returns its stdout.
async fn second_host(plugin: &PluginClient, mode: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("reattach.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&plugin.reattach_config().expect("a running plugin's config"))
            .expect("serialisable"),
    )
    .expect("write the config");
    #[allow(
        clippy::disallowed_methods,
        reason = "the second host is another process"
    )]
    let mut second = tokio::process::Command::new(crate::support::HOST_HELPER)
        .arg(mode)
        .arg(&config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the second host runs");
    // The plugin refuses every process but its host, until the host admits the second one.
    plugin
        .admit(second.id().expect("running"))
        .await
        .expect("admit the second host");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = second.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").await.expect("tell it to attach");
    }
    let output = second
        .wait_with_output()
        .await
        .expect("the second host ends");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_second_host_process_attaches_to_a_running_plugin_and_leaves_it_running() {
    let plugin = test_plugin("shared").start().await.expect("start");
    let stdout = second_host(&plugin, "reattach").await;
    assert!(
        stdout.contains(&format!("pid {}", plugin.pid())),
        "{stdout}"
    );
    assert!(stdout.contains("echo from the second host"), "{stdout}");
    // The second host is gone; the plugin is still the first host's, and still serving.
    plugin.health().await.expect("still healthy");
    let exit = plugin.shutdown().await.expect("shutdown");
    assert!(exit.status.success(), "{exit:?}");
}

#[tokio::test]
async fn an_attached_host_says_what_it_cannot_know_and_is_refused_host_services() {
    let plugin = test_plugin("probed").start().await.expect("start");
    assert!(!plugin.is_attached());
    assert!(plugin.sandbox().is_some() && plugin.broker().is_some());
    let stdout = second_host(&plugin, "attach-probe").await;
    let lines: Vec<&str> = stdout.lines().collect();
    // No sandbox status, broker or exit status of its own: only the first host has them.
    assert_eq!(
        lines,
        [
            "attached true",
            "sandbox none",
            "broker none",
            "exit_status None",
            // Host services on it: the typed refusal, naming the plugin, at once.
            "hostconn attached probed",
            "hostserve attached probed",
            // It stopped the plugin, and says it cannot know how the process exited.
            "stopped Graceful Unknown",
        ],
        "{stdout}"
    );
    // The starting host, the plugin's parent, learns the real status.
    let report = plugin.exited().await;
    assert_eq!(
        report.status.status().and_then(|status| status.code()),
        Some(0),
        "{report}"
    );
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, tether_host::Stop::AlreadyExited);
    assert!(exit.status.success(), "{exit:?}");
}

#[tokio::test]
async fn attaching_to_a_plugin_that_exited_is_a_clear_error_and_signals_nothing() {
    // The plugin's process is gone.
    let plugin = test_plugin("gone").start().await.expect("start");
    let config = plugin.reattach_config().expect("a running plugin's config");
    plugin.shutdown().await.expect("shutdown");
    let err = PluginClient::reattach(&config)
        .await
        .expect_err("it exited");
    assert!(
        matches!(&err, Error::Reattach { plugin, reason } if plugin == "gone" && reason.contains("exited")),
        "{err}"
    );

    // The pid now names another process (here, a live one): it must not be taken for the
    // plugin, nor touched. (Its start time may even match, both started in the same clock
    // tick: then it fails because it does not serve the plugin's socket.)
    #[allow(
        clippy::disallowed_methods,
        clippy::zombie_processes,
        reason = "a stranger process that reuses a plugin's pid; killed and reaped below"
    )]
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep runs");
    let reused = tether_host::ReattachConfig {
        pid: stranger.id(),
        ..config
    };
    let err = PluginClient::reattach(&reused)
        .await
        .expect_err("another process");
    assert!(
        matches!(&err, Error::Reattach { reason, .. }
            if reason.contains("another process") || reason.contains("does not serve")),
        "{err}"
    );
    assert!(
        stranger.try_wait().expect("try_wait").is_none(),
        "the stranger was touched"
    );
    stranger.kill().expect("kill the stranger");
    stranger.wait().expect("reap the stranger");
}

#[tokio::test]
async fn a_plugin_is_attached_to_from_terraforms_reattach_json() {
    let plugin = test_plugin("tf-json").start().await.expect("start");
    let config = plugin.reattach_config().expect("a running plugin's config");
    // Written as Terraform's TF_REATTACH_PROVIDERS, read back as Terraform would pass it.
    let json = tether_host::ReattachConfig::to_terraform([("example.com/tether/tf-json", &config)]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        parsed["example.com/tether/tf-json"]["Addr"]["Network"],
        "unix"
    );
    let read = tether_host::ReattachConfig::from_terraform(&json).expect("Terraform's JSON");
    let attached = PluginClient::reattach(&read["example.com/tether/tf-json"])
        .await
        .expect("attach from Terraform's JSON");
    assert!(attached.is_attached());
    attached
        .health()
        .await
        .expect("the attached plugin answers");
    drop(attached);
    plugin.shutdown().await.expect("shutdown");
}
