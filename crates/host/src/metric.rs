//! The metrics the host emits, through the [`metrics`] facade: this crate installs no
//! recorder; the host application installs one (a Prometheus exporter, say) and may call
//! [`describe`] to give them their descriptions and units. They are counted once per start
//! or restart, never per call.
//!
//! | Name | Type | Labels | Meaning |
//! |------|------|--------|---------|
//! | `tether_plugin_starts_total` | counter | `plugin` | Plugin instances started ([`PluginBuilder::start`](crate::PluginBuilder::start) succeeded, the supervisor's starts included). |
//! | `tether_plugin_start_failures_total` | counter | `plugin` | Starts that failed (the process, its handshake, its connection or its first health check). |
//! | `tether_supervisor_restarts_total` | counter | `plugin` | Restarts a [`Supervisor`](crate::Supervisor) decided on (it backs off, then starts the plugin again). |
//! | `tether_plugin_idle_stops_total` | counter | `plugin` | Instances a [`Supervisor`](crate::Supervisor) stopped after their idle timeout (the next call starts the plugin again). |
//! | `tether_sandbox_layer_enforced` | gauge | `plugin`, `layer` | Per sandbox layer ([`Layer::name`](crate::Layer::name)), at the plugin's latest start: 1 enforced, 0 not. |

use metrics::{SharedString, Unit};

use tether_sandbox::SandboxStatus;

/// Counter: plugin instances started (label `plugin`).
pub const PLUGIN_STARTS: &str = "tether_plugin_starts_total";
/// Counter: plugin starts that failed (label `plugin`).
pub const PLUGIN_START_FAILURES: &str = "tether_plugin_start_failures_total";
/// Counter: restarts a supervisor decided on (label `plugin`).
pub const SUPERVISOR_RESTARTS: &str = "tether_supervisor_restarts_total";
/// Counter: instances a supervisor stopped for being idle (label `plugin`).
pub const PLUGIN_IDLE_STOPS: &str = "tether_plugin_idle_stops_total";
/// Gauge: 1 if a sandbox layer is enforced on the plugin, else 0, as of its latest start
/// (labels `plugin`, `layer`).
pub const SANDBOX_LAYER: &str = "tether_sandbox_layer_enforced";

/// Describes this crate's metrics (help text, units) to the installed recorder; call it
/// once after installing one. Optional: the metrics are emitted either way.
pub fn describe() {
    metrics::describe_counter!(PLUGIN_STARTS, Unit::Count, "Plugin instances started.");
    metrics::describe_counter!(
        PLUGIN_START_FAILURES,
        Unit::Count,
        "Plugin starts that failed."
    );
    metrics::describe_counter!(
        SUPERVISOR_RESTARTS,
        Unit::Count,
        "Plugin restarts decided by a supervisor."
    );
    metrics::describe_counter!(
        PLUGIN_IDLE_STOPS,
        Unit::Count,
        "Plugin instances stopped by their supervisor after their idle timeout."
    );
    metrics::describe_gauge!(
        SANDBOX_LAYER,
        "Whether a sandbox layer is enforced on the plugin (1) or not (0), at its latest start."
    );
}

/// A started plugin: counted, and its sandbox layers set.
pub(crate) fn started(plugin: &str, sandbox: &SandboxStatus) {
    let plugin = SharedString::from_owned(plugin.to_owned());
    metrics::counter!(PLUGIN_STARTS, "plugin" => plugin.clone()).increment(1);
    for layer in &sandbox.layers {
        let enforced = if layer.enforced { 1.0 } else { 0.0 };
        metrics::gauge!(SANDBOX_LAYER, "plugin" => plugin.clone(), "layer" => layer.layer.name())
            .set(enforced);
    }
}

/// A plugin that failed to start.
pub(crate) fn start_failed(plugin: &str) {
    metrics::counter!(PLUGIN_START_FAILURES, "plugin" => plugin.to_owned()).increment(1);
}

/// A restart a supervisor decided on.
pub(crate) fn restarting(plugin: &str) {
    metrics::counter!(SUPERVISOR_RESTARTS, "plugin" => plugin.to_owned()).increment(1);
}

/// An instance a supervisor stopped for being idle.
pub(crate) fn idle_stopped(plugin: &str) {
    metrics::counter!(PLUGIN_IDLE_STOPS, "plugin" => plugin.to_owned()).increment(1);
}
