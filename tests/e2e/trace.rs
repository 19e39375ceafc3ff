//! One trace across the boundary: a host's trace id on the plugin's log events and on the
//! audit records of the plugin's host-service calls made for that call.

use tether_hostserve::Limits;
use tether_plugin_sdk::protocol::CallContext;
use tether_test_contract::testing::HostOpRequest;
use tether_test_contract::testing::testing_client::TestingClient;
use tracing::Instrument;

use crate::hostserve::{Fixture, GRANTS, op_with};
use crate::support::{PATIENCE, eventually, recorded};

#[tokio::test]
async fn a_host_trace_reaches_the_plugin_log_and_the_audit_record() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("traced", &GRANTS);
    let (plugin, _connection) = fixture.start("traced").await;

    // The host starts a trace: a context with new ids, and a span of its own carrying them.
    let context = CallContext::new()
        .with_request_id("trace-1")
        .expect("a valid id")
        .with_new_trace()
        .expect("random ids");
    let trace_id = context.trace_id().expect("a trace");
    assert_eq!(trace_id.len(), 32);
    let span = tracing::info_span!("host call", trace_id = %trace_id);
    let request = context
        .request(HostOpRequest {
            op: "traced_read".into(),
            path: b"config/a.txt".to_vec(),
            ..HostOpRequest::default()
        })
        .expect("no deadline");
    let answer = TestingClient::new(plugin.channel())
        .host_op(request)
        .instrument(span)
        .await
        .expect("the plugin answers")
        .into_inner();
    assert_eq!(
        (answer.outcome.as_str(), answer.data.as_slice()),
        ("ok", &b"config a"[..]),
        "{}",
        answer.message
    );

    // The plugin's event, logged while serving the call, as the host received it.
    let logged = || {
        recorded("traced")
            .into_iter()
            .find(|event| event.message == "traced read")
    };
    assert!(
        eventually(PATIENCE, || logged().is_some()).await,
        "the plugin's event reached the host: {:?}",
        recorded("traced")
    );
    let event = logged().expect("waited for above");
    assert!(event.fields.contains(&trace_id), "{event:?}");

    // The plugin's host-service call, made for the host's call, in the same trace.
    let records = fixture.audit_records(1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["decision"], "allowed", "{record}");
    assert_eq!(record["operation"], "read_file", "{record}");
    assert_eq!(record["trace_id"], trace_id.as_str(), "{record}");
    assert_eq!(record["request_id"], "trace-1", "{record}");
}

#[tokio::test]
async fn a_malformed_traceparent_is_refused_and_audited() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("traceparents", &GRANTS);
    let (plugin, _connection) = fixture.start("traceparents").await;
    let read = |traceparent: &str| {
        op_with(
            &plugin,
            "traceparent_read",
            b"config/a.txt",
            traceparent.into(),
            0,
        )
    };

    let good = read("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").await;
    assert_eq!(
        (good.outcome.as_str(), good.data.as_slice()),
        ("ok", &b"config a"[..]),
        "{}",
        good.message
    );
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "not a traceparent",
    ] {
        let refused = read(bad).await;
        assert_eq!(refused.outcome, "invalid", "{bad}: {refused:?}");
        assert!(refused.message.contains("traceparent"), "{refused:?}");
        assert!(refused.data.is_empty());
    }

    let records = fixture.audit_records(4).await;
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r["decision"].clone(), r["trace_id"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("allowed".into(), "4bf92f3577b34da6a3ce929d0e0e4736".into()),
            ("denied".into(), serde_json::Value::Null),
            ("denied".into(), serde_json::Value::Null),
            ("denied".into(), serde_json::Value::Null),
        ]
    );
    for record in &records[1..] {
        assert!(
            record["reason"]
                .as_str()
                .is_some_and(|reason| reason.starts_with("invalid traceparent")),
            "{record}"
        );
    }
}
