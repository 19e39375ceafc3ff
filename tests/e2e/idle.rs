//! Idle plugins: a supervisor with an idle timeout stops a plugin no call is under way with,
//! records it, and starts it again (set-up hook included) on the next call; an open stream
//! keeps it up. (A host-service call under way keeps it up too: `gate.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tether_host::{Busy, PluginClient, RestartPolicy, State, Supervisor};
use tether_hostserve::Limits;
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{EchoRequest, HostOpRequest, TickRequest};
use tokio::time::Instant;

use crate::hostserve::Fixture;
use crate::supervision::quick;
use crate::support::{PATIENCE, eventually, is_gone, test_plugin};

/// The pid of the running instance, if one runs.
pub(crate) fn running_pid(supervisor: &Supervisor) -> Option<u32> {
    match supervisor.state() {
        State::Running { plugin, .. } => Some(plugin.pid()),
        _ => None,
    }
}

/// The running instance with a call counted as under way on it, so it cannot be stopped
/// for being idle while the guard lives (as `Supervisor::channel` does it).
pub(crate) async fn busy_instance(supervisor: &Supervisor) -> (Arc<PluginClient>, Busy) {
    loop {
        let plugin = supervisor.plugin().await.expect("an instance runs");
        let busy = plugin.activity().begin();
        if running_pid(supervisor) == Some(plugin.pid()) {
            return (plugin, busy);
        }
    }
}

pub(crate) fn is_idle(supervisor: &Supervisor) -> bool {
    matches!(supervisor.state(), State::Idle { .. })
}

pub(crate) fn idle_after(timeout: Duration) -> RestartPolicy {
    RestartPolicy {
        idle_timeout: Some(timeout),
        ..quick()
    }
}

#[tokio::test]
async fn an_idle_plugin_is_stopped_and_the_next_call_starts_it_again_with_its_setup() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("idler", &["read:config/**"]);
    let (factory_services, setup_services) =
        (Arc::clone(&fixture.services), Arc::clone(&fixture.services));
    let setups = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&setups);
    let supervisor = Supervisor::start(
        "idler",
        move || factory_services.configure(test_plugin("idler").arg("--host-files")),
        idle_after(Duration::from_secs(1)),
        move |plugin| {
            counted.fetch_add(1, Ordering::SeqCst);
            let services = Arc::clone(&setup_services);
            Box::pin(async move { Ok(services.connect(&plugin).await?.required()?) })
        },
    );
    let mut client = TestingClient::new(supervisor.channel());
    let echo = |message: &str| EchoRequest {
        message: message.into(),
    };
    let answer = client
        .echo(echo("first"))
        .await
        .expect("the plugin answers");
    assert_eq!(answer.into_inner().message, "first");

    // No call for the idle timeout: stopped, recorded.
    assert!(
        eventually(PATIENCE, || is_idle(&supervisor)).await,
        "the idle plugin was not stopped: {:?}",
        supervisor.state()
    );
    let records = fixture.audit_records(2).await;
    assert_eq!(records[0]["operation"], "process:started");
    let first = records[0]["pid"].as_u64().expect("the first start's pid");
    let first = u32::try_from(first).expect("a pid");
    let stopped = &records[1];
    assert_eq!(stopped["operation"], "process:idle_stopped", "{stopped}");
    assert_eq!(stopped["pid"], first, "{stopped}");
    assert!(
        eventually(PATIENCE, || is_gone(first)).await,
        "the idle instance's process is gone"
    );
    assert_eq!(stopped["decision"], "allowed", "{stopped}");
    assert!(
        stopped["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("no call under way for 1s")),
        "{stopped}"
    );
    // Without a call it stays stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(is_idle(&supervisor), "{:?}", supervisor.state());
    assert_eq!(setups.load(Ordering::SeqCst), 1);

    // The next call, on the same client, starts it again: a new process, set up again, with
    // its host services.
    let answer = client.echo(echo("second")).await.expect("started again");
    assert_eq!(answer.into_inner().message, "second");
    let read = client
        .host_op(HostOpRequest {
            op: "read_file".into(),
            path: b"config/a.txt".to_vec(),
            ..HostOpRequest::default()
        })
        .await
        .expect("the plugin answers")
        .into_inner();
    assert_eq!(
        (read.outcome.as_str(), read.data.as_slice()),
        ("ok", &b"config a"[..]),
        "{}",
        read.message
    );
    // (A loaded machine may let it doze off between the two calls: then it was started once
    // more, the same way.)
    let records = fixture.audit_lines();
    let starts: Vec<_> = records
        .iter()
        .filter(|record| record["operation"] == "process:started")
        .collect();
    assert!(starts.len() >= 2, "{records:#?}");
    assert_ne!(starts[1]["pid"], first, "a new process");
    assert_eq!(
        setups.load(Ordering::SeqCst),
        starts.len(),
        "the set-up hook ran for every instance"
    );
    assert!(
        starts[1]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("started again on demand after an idle stop")),
        "{}",
        starts[1]
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn an_open_stream_keeps_an_idle_plugin_up() {
    let supervisor = Supervisor::start(
        "streamer",
        || test_plugin("streamer"),
        idle_after(Duration::from_secs(1)),
        |_plugin| Box::pin(async { Ok(()) }),
    );
    let mut client = TestingClient::new(supervisor.channel());
    let mut ticks = client
        .ticks(TickRequest { every_ms: 100 })
        .await
        .expect("the stream opens")
        .into_inner();
    let pid = running_pid(&supervisor).expect("an instance runs");

    // Three idle timeouts with only the stream open: the plugin stays up.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        ticks
            .message()
            .await
            .expect("the stream goes on")
            .expect("a tick");
    }
    assert_eq!(
        running_pid(&supervisor),
        Some(pid),
        "{:?}",
        supervisor.state()
    );

    // The stream closed, nothing under way: stopped.
    drop(ticks);
    assert!(
        eventually(PATIENCE, || is_idle(&supervisor)).await,
        "the plugin was not stopped once its stream closed: {:?}",
        supervisor.state()
    );
    assert!(eventually(PATIENCE, || is_gone(pid)).await);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn without_an_idle_timeout_a_plugin_stays_up() {
    let supervisor = Supervisor::start(
        "keeper",
        || test_plugin("keeper"),
        quick(),
        |_plugin| Box::pin(async { Ok(()) }),
    );
    let plugin = supervisor.plugin().await.expect("runs");
    let pid = plugin.pid();
    drop(plugin);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running_pid(&supervisor),
        Some(pid),
        "{:?}",
        supervisor.state()
    );
    supervisor.shutdown().await;
}
