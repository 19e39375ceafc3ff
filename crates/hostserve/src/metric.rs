//! The metrics the gate and the audit trail emit, through the [`metrics`] facade: this
//! crate installs no recorder; the host installs one (a Prometheus exporter, say) before it
//! opens its [`Audit`](crate::Audit) trail (whose counters are registered then, so that
//! its writer thread counts into it), and may call [`describe`] to give them their
//! descriptions and units. Without a recorder, a call still builds its
//! labels (the plugin's name is shared, not copied; an operation of the host's own services
//! and a hook's name are formatted) and records them nowhere.
//!
//! | Name | Type | Labels | Meaning |
//! |------|------|--------|---------|
//! | `tether_hostservice_calls_total` | counter | `plugin`, `operation`, `decision` | Host-service calls, by how they were decided (`allowed`, `denied`): one per audit record of a call. |
//! | `tether_hostservice_denials_total` | counter | `plugin`, `operation`, `decided_by` | Denied calls, by who denied them (`policy`, `host`, `operator`, `hook:<name>`). |
//! | `tether_hostservice_call_duration_seconds` | histogram | `plugin`, `operation` | Time from [`Gate::begin`](crate::Gate::begin) to the call's audit record. |
//! | `tether_audit_records_dropped_total` | counter | — | Audit records given up for lack of queue room ([`Audit::dropped`](crate::Audit::dropped)). |
//! | `tether_audit_records_failed_total` | counter | — | Audit records given up because writing them failed ([`Audit::failed`](crate::Audit::failed)). |
//!
//! `operation` is as in audit records (`read_file`, `tether.bus.v1.Bus/Publish` …), except
//! for a call refused before its method ran (past the open-call limit, or a method the
//! service does not have), where a plugin chooses the method name: there it is `other`
//! unless it is a file operation, so that a plugin cannot make up label values.

use std::time::Duration;

use metrics::{SharedString, Unit};

use crate::audit::{Decider, Decision, Operation};

/// Counter: host-service calls (labels `plugin`, `operation`, `decision`).
pub const CALLS: &str = "tether_hostservice_calls_total";
/// Counter: denied host-service calls (labels `plugin`, `operation`, `decided_by`).
pub const DENIALS: &str = "tether_hostservice_denials_total";
/// Histogram, seconds: from [`Gate::begin`](crate::Gate::begin) to the call's audit record
/// (labels `plugin`, `operation`).
pub const CALL_DURATION: &str = "tether_hostservice_call_duration_seconds";
/// Counter: audit records given up for lack of queue room.
pub const AUDIT_DROPPED: &str = "tether_audit_records_dropped_total";
/// Counter: audit records given up because writing them failed.
pub const AUDIT_FAILED: &str = "tether_audit_records_failed_total";

/// Describes this crate's metrics (help text, units) to the installed recorder; call it
/// once after installing one. Optional: the metrics are emitted either way.
pub fn describe() {
    metrics::describe_counter!(CALLS, Unit::Count, "Host-service calls, by decision.");
    metrics::describe_counter!(
        DENIALS,
        Unit::Count,
        "Denied host-service calls, by who denied them."
    );
    metrics::describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "Time from the start of a host-service call to its audit record."
    );
    metrics::describe_counter!(
        AUDIT_DROPPED,
        Unit::Count,
        "Audit records given up for lack of queue room."
    );
    metrics::describe_counter!(
        AUDIT_FAILED,
        Unit::Count,
        "Audit records given up because writing them failed."
    );
}

/// The `operation` label of a call. `checked`: whether the call reached its method (so the
/// method is one the service has, not a name the plugin made up).
fn operation_label(operation: &Operation, checked: bool) -> SharedString {
    match operation {
        Operation::File(operation) => SharedString::const_str(operation.as_str()),
        Operation::Connect => SharedString::const_str("connect"),
        Operation::Process(kind) => SharedString::from_owned(format!("process:{kind}")),
        Operation::Method { service, method } if checked => {
            SharedString::from_owned(format!("{service}/{method}"))
        }
        Operation::Method { .. } => SharedString::const_str("other"),
    }
}

/// The `decided_by` label.
fn decider_label(decider: &Decider) -> SharedString {
    match decider {
        Decider::Policy => SharedString::const_str("policy"),
        Decider::Host => SharedString::const_str("host"),
        Decider::Operator => SharedString::const_str("operator"),
        Decider::Hook(_) => SharedString::from_owned(decider.to_string()),
    }
}

/// Counts one recorded call (and its duration, if it started as a [`Call`](crate::Call)).
pub(crate) fn call(
    plugin: SharedString,
    operation: &Operation,
    checked: bool,
    decision: Decision,
    decided_by: &Decider,
    elapsed: Option<Duration>,
) {
    let operation = operation_label(operation, checked);
    metrics::counter!(CALLS, "plugin" => plugin.clone(), "operation" => operation.clone(),
        "decision" => decision.as_str())
    .increment(1);
    if decision == Decision::Denied {
        metrics::counter!(DENIALS, "plugin" => plugin.clone(), "operation" => operation.clone(),
            "decided_by" => decider_label(decided_by))
        .increment(1);
    }
    if let Some(elapsed) = elapsed {
        metrics::histogram!(CALL_DURATION, "plugin" => plugin, "operation" => operation)
            .record(elapsed);
    }
}

/// Reading metrics back in tests, from a `metrics_util` debugging recorder.
#[cfg(test)]
pub(crate) mod testing {
    use metrics_util::CompositeKey;
    use metrics_util::debugging::{DebugValue, Snapshotter};

    /// What was recorded since the last snapshot (a snapshot resets counters and empties
    /// histograms): take one, then read it.
    #[derive(Debug)]
    pub(crate) struct Taken(Vec<(CompositeKey, DebugValue)>);

    impl Taken {
        /// What `snapshotter`'s recorder recorded since the last snapshot.
        pub(crate) fn from(snapshotter: &Snapshotter) -> Self {
            let values = snapshotter.snapshot().into_vec();
            Taken(
                values
                    .into_iter()
                    .map(|(key, _, _, value)| (key, value))
                    .collect(),
            )
        }

        /// The values of the metrics named `name` whose labels include `labels`.
        fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&DebugValue> {
            self.0
                .iter()
                .filter(|(key, _)| {
                    let key = key.key();
                    key.name() == name
                        && labels.iter().all(|(label, value)| {
                            key.labels()
                                .any(|have| have.key() == *label && have.value() == *value)
                        })
                })
                .map(|(_, value)| value)
                .collect()
        }

        /// The sum of the counters named `name` whose labels include `labels`.
        pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
            self.values(name, labels)
                .into_iter()
                .map(|value| match value {
                    DebugValue::Counter(n) => *n,
                    other => panic!("{name} is no counter: {other:?}"),
                })
                .sum()
        }

        /// The samples of the histograms named `name` whose labels include `labels`.
        pub(crate) fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
            self.values(name, labels)
                .into_iter()
                .flat_map(|value| match value {
                    DebugValue::Histogram(samples) => samples.iter().map(|s| s.into_inner()),
                    other => panic!("{name} is no histogram: {other:?}"),
                })
                .collect()
        }
    }
}
