//! The host's metrics, with real processes: starts, failed starts, supervisor restarts, idle
//! stops and the sandbox layers, read back from a debugging recorder installed for the test's thread
//! (a current-thread runtime: the supervisor's task runs there too).

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::time::Duration;

use tether_host::metric::{
    PLUGIN_IDLE_STOPS, PLUGIN_START_FAILURES, PLUGIN_STARTS, SANDBOX_LAYER, SUPERVISOR_RESTARTS,
};
use tether_host::{PluginClient, Supervisor};

use crate::idle::{idle_after, is_idle};
use crate::supervision::{kill, next_instance, quick};
use crate::support::{BAD_PLUGIN, HANDSHAKE, PATIENCE, eventually, sandbox, test_plugin};

/// The value of the one metric named `name` with exactly `labels`, if recorded.
fn value<'a>(
    taken: &'a [(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    taken
        .iter()
        .find(|(key, _)| {
            let key = key.key();
            key.name() == name
                && key.labels().count() == labels.len()
                && labels.iter().all(|(label, value)| {
                    key.labels()
                        .any(|have| have.key() == *label && have.value() == *value)
                })
        })
        .map(|(_, value)| value)
}

/// What was recorded since the last snapshot (taking one resets what it took).
fn take(snapshotter: &Snapshotter) -> Vec<(CompositeKey, DebugValue)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn starts_restarts_and_sandbox_layers_are_counted_per_plugin() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let supervisor = Supervisor::start(
        "metered",
        || test_plugin("metered"),
        quick(),
        |_| Box::pin(async { Ok(()) }),
    );
    let first = supervisor.plugin().await.expect("the first instance");
    kill(first.pid());
    let second = next_instance(&supervisor, first.pid()).await;
    let layers = second
        .sandbox()
        .expect("a started plugin's sandbox")
        .clone();
    drop((first, second));
    supervisor.shutdown().await;

    // One that never gets going: a failed start.
    PluginClient::builder("broken", BAD_PLUGIN)
        .handshake(HANDSHAKE)
        .arg("exit-early")
        .sandbox(sandbox())
        .start()
        .await
        .expect_err("the plugin exits before its handshake");

    // One snapshot: taking one resets what it took.
    let taken = take(&snapshotter);
    let metered = [("plugin", "metered")];
    assert_eq!(
        value(&taken, PLUGIN_STARTS, &metered),
        Some(&DebugValue::Counter(2)),
        "{taken:?}"
    );
    assert_eq!(
        value(&taken, SUPERVISOR_RESTARTS, &metered),
        Some(&DebugValue::Counter(1)),
        "{taken:?}"
    );
    assert_eq!(value(&taken, PLUGIN_START_FAILURES, &metered), None);
    let broken = [("plugin", "broken")];
    assert_eq!(
        value(&taken, PLUGIN_START_FAILURES, &broken),
        Some(&DebugValue::Counter(1)),
        "{taken:?}"
    );
    assert_eq!(value(&taken, PLUGIN_STARTS, &broken), None);
    // Every layer, as the plugin's own status reports it (whatever this kernel has).
    assert_eq!(layers.layers.len(), 6);
    for layer in &layers.layers {
        let labels = [("plugin", "metered"), ("layer", layer.layer.name())];
        let expected = if layer.enforced { 1.0 } else { 0.0 };
        assert_eq!(
            value(&taken, SANDBOX_LAYER, &labels),
            Some(&DebugValue::Gauge(expected.into())),
            "{}: {taken:?}",
            layer.layer
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn idle_stops_are_counted_and_are_not_restarts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let supervisor = Supervisor::start(
        "dozing",
        || test_plugin("dozing"),
        idle_after(Duration::from_millis(300)),
        |_| Box::pin(async { Ok(()) }),
    );
    let first = supervisor.plugin().await.expect("the first instance").pid();
    assert!(
        eventually(PATIENCE, || is_idle(&supervisor)).await,
        "{:?}",
        supervisor.state()
    );
    // Woken by the next demand, then idle again.
    let second = supervisor.plugin().await.expect("started again").pid();
    assert_ne!(first, second);
    assert!(
        eventually(PATIENCE, || is_idle(&supervisor)).await,
        "{:?}",
        supervisor.state()
    );
    supervisor.shutdown().await;

    let taken = take(&snapshotter);
    // Every instance ended idle (at least two: a loaded machine may let one more doze off
    // before the test took it).
    let dozing = [("plugin", "dozing")];
    let Some(&DebugValue::Counter(starts)) = value(&taken, PLUGIN_STARTS, &dozing) else {
        panic!("no starts counted: {taken:?}");
    };
    assert!(starts >= 2, "{taken:?}");
    assert_eq!(
        value(&taken, PLUGIN_IDLE_STOPS, &dozing),
        Some(&DebugValue::Counter(starts)),
        "{taken:?}"
    );
    assert_eq!(value(&taken, SUPERVISOR_RESTARTS, &dozing), None);
}
