//! Host services through the broker: `establish_host_services`, identity, reuse, refusal,
//! and brokered services in both directions, with real plugin processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_host::{BrokerError, PluginClient};
use tether_hostconn::{Outcome, PluginIdentity, establish_host_services};
use tether_test_contract::testing::host_testing_server::{HostTesting, HostTestingServer};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{
    CallHostRequest, CallHostResponse, EchoRequest, ServeBrokeredRequest, WhoAmIRequest,
    WhoAmIResponse,
};
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

use crate::support::{
    HANDSHAKE, PATIENCE, PLAIN_PLUGIN, eventually, intrude, record_events, recorded, test_plugin,
};

/// One call as the host's service saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// Who the endpoint says called.
    pub(crate) identity: PluginIdentity,
    /// Who the plugin claimed to be in the request body.
    claimed: String,
    /// Who the plugin claimed to be in its metadata.
    metadata: Option<String>,
}

/// A host service shared by every plugin, recording who called.
#[derive(Default)]
pub(crate) struct WhoAmI {
    calls: Mutex<Vec<Call>>,
}

#[tonic::async_trait]
impl HostTesting for WhoAmI {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let identity = PluginIdentity::of(&request)?.clone();
        let metadata = request
            .metadata()
            .get("x-plugin-name")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let reply = WhoAmIResponse {
            plugin: identity.name().to_owned(),
            pid: identity.pid(),
        };
        self.calls.lock().expect("calls lock").push(Call {
            identity,
            claimed: request.into_inner().claimed_name,
            metadata,
        });
        Ok(Response::new(reply))
    }
}

impl WhoAmI {
    pub(crate) fn calls_by(&self, plugin: &str) -> Vec<Call> {
        let calls = self.calls.lock().expect("calls lock");
        calls
            .iter()
            .filter(|call| call.identity.name() == plugin)
            .cloned()
            .collect()
    }
}

pub(crate) fn services(shared: &Arc<WhoAmI>) -> Routes {
    Routes::new(HostTestingServer::from_arc(Arc::clone(shared)))
}

async fn start_with_host_services(name: &str) -> PluginClient {
    test_plugin(name)
        .arg("--host-services")
        .start()
        .await
        .expect("the test plugin starts")
}

pub(crate) async fn call_host(
    plugin: &PluginClient,
    count: u32,
    claim: &str,
) -> Result<CallHostResponse, Status> {
    TestingClient::new(plugin.channel())
        .call_host(CallHostRequest {
            count,
            claim: claim.to_owned(),
        })
        .await
        .map(Response::into_inner)
}

fn connected(outcome: Outcome) -> tether_hostconn::HostConnection {
    match outcome {
        Outcome::Connected(connection) => connection,
        Outcome::NotRequested => panic!("the plugin did not request host services"),
    }
}

#[tokio::test]
async fn two_plugins_share_one_service_and_each_call_is_attributed_to_its_caller() {
    let shared = Arc::new(WhoAmI::default());
    let alpha = start_with_host_services("alpha").await;
    let beta = start_with_host_services("beta").await;
    let _alpha_host = connected(
        establish_host_services(&alpha, services(&shared))
            .await
            .unwrap(),
    );
    let _beta_host = connected(
        establish_host_services(&beta, services(&shared))
            .await
            .unwrap(),
    );

    // Each plugin claims to be the other, in the body and in the metadata.
    let a = call_host(&alpha, 3, "beta").await.unwrap();
    let b = call_host(&beta, 2, "alpha").await.unwrap();
    assert_eq!((a.calls, a.seen_as.as_str()), (3, "alpha"));
    assert_eq!((b.calls, b.seen_as.as_str()), (2, "beta"));

    let by_alpha = shared.calls_by("alpha");
    let by_beta = shared.calls_by("beta");
    assert_eq!(by_alpha.len(), 3, "{by_alpha:?}");
    assert_eq!(by_beta.len(), 2, "{by_beta:?}");
    for call in &by_alpha {
        assert_eq!(call.identity.pid(), alpha.pid());
        assert_eq!(call.identity.instance(), alpha.instance());
        assert_eq!(call.claimed, "beta");
        assert_eq!(call.metadata.as_deref(), Some("beta"));
    }
    for call in &by_beta {
        assert_eq!(call.identity.pid(), beta.pid());
        assert_eq!(call.identity.instance(), beta.instance());
        assert_eq!(call.metadata.as_deref(), Some("alpha"));
    }
    assert_ne!(alpha.instance(), beta.instance());
}

#[tokio::test]
async fn a_plugin_without_host_service_code_is_not_requested_and_nothing_stays() {
    record_events();
    let plain = PluginClient::builder("plain", PLAIN_PLUGIN)
        .handshake(HANDSHAKE)
        .start()
        .await
        .unwrap();
    let shared = Arc::new(WhoAmI::default());
    let outcome = establish_host_services(&plain, services(&shared))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::NotRequested), "{outcome:?}");

    // Only the plugin's own socket is left in its private directory: no broker listener.
    let dir = plain.socket_dir().unwrap().to_owned();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let own = format!("plugin-{}-", plain.pid());
    assert!(
        names.len() == 1 && names[0].starts_with(&own) && names[0].ends_with(".sock"),
        "{names:?}"
    );
    plain.health().await.unwrap();
    assert!(shared.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_foreign_process_is_refused_at_the_host_service_socket_and_logged() {
    let shared = Arc::new(WhoAmI::default());
    let plugin = start_with_host_services("guarded").await;
    let host = connected(
        establish_host_services(&plugin, services(&shared))
            .await
            .unwrap(),
    );
    let socket = host.address().unwrap().to_owned();

    let intruder = intrude(&socket).await;
    let (intruder_pid, said) = (intruder.pid, intruder.said);
    assert_eq!(intruder.code, Some(3), "the intruder got through: {said}");
    assert!(said.starts_with("refused"), "{said}");

    let connections = host.connections().unwrap();
    assert!(connections.refused() >= 1);
    let logged = eventually(PATIENCE, || {
        recorded("guarded").iter().any(|event| {
            event.target == "tether::broker"
                && event.level == tracing::Level::WARN
                && event.others.contains(&format!("peer_pid={intruder_pid}"))
        })
    })
    .await;
    assert!(
        logged,
        "no refusal logged with pid {intruder_pid}: {:?}",
        recorded("guarded")
    );

    // The plugin itself is unaffected, and nobody else was served.
    assert_eq!(call_host(&plugin, 1, "").await.unwrap().seen_as, "guarded");
    assert!(
        shared
            .calls
            .lock()
            .unwrap()
            .iter()
            .all(|call| call.claimed != "intruder")
    );
}

#[tokio::test]
async fn dialing_an_id_never_issued_times_out_naming_the_id() {
    let plugin = test_plugin("dialer")
        .broker_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let err = plugin
        .broker()
        .expect("a started plugin has a broker")
        .dial(4242)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BrokerError::DialTimeout { id: 4242, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("id 4242") && message.contains("timed out") && message.contains("dialer"),
        "{message}"
    );
}

#[tokio::test]
async fn brokered_services_work_in_both_directions() {
    let shared = Arc::new(WhoAmI::default());
    let plugin = start_with_host_services("both-ways").await;
    let _host = connected(
        establish_host_services(&plugin, services(&shared))
            .await
            .unwrap(),
    );

    // Plugin -> host.
    assert_eq!(
        call_host(&plugin, 1, "").await.unwrap().seen_as,
        "both-ways"
    );

    // Host -> plugin: the plugin serves Testing on a brokered endpoint, the host dials it.
    let id = TestingClient::new(plugin.channel())
        .serve_brokered(ServeBrokeredRequest {})
        .await
        .unwrap()
        .into_inner()
        .broker_id;
    let channel = plugin
        .broker()
        .expect("a started plugin has a broker")
        .dial(id)
        .await
        .unwrap();
    let echoed = TestingClient::new(channel)
        .echo(EchoRequest {
            message: "through the broker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echoed.message, "through the broker");
}

#[tokio::test]
async fn a_thousand_sequential_calls_use_one_brokered_connection() {
    let shared = Arc::new(WhoAmI::default());
    let plugin = start_with_host_services("busy").await;
    let host = connected(
        establish_host_services(&plugin, services(&shared))
            .await
            .unwrap(),
    );
    let done = call_host(&plugin, 1000, "").await.unwrap();
    assert_eq!(done.calls, 1000);
    assert_eq!(shared.calls_by("busy").len(), 1000);
    let connections = host.connections().unwrap();
    assert_eq!(
        connections.accepted(),
        1,
        "the plugin connected more than once"
    );
    assert_eq!(connections.refused(), 0);
}

#[tokio::test]
async fn calls_before_connecting_and_after_disconnecting_fail_clearly() {
    let shared = Arc::new(WhoAmI::default());
    let plugin = start_with_host_services("early-late").await;

    let early = call_host(&plugin, 1, "").await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert!(
        early.message().contains("not connected yet"),
        "{}",
        early.message()
    );

    let host = connected(
        establish_host_services(&plugin, services(&shared))
            .await
            .unwrap(),
    );
    let socket = host.address().unwrap().to_owned();
    call_host(&plugin, 1, "").await.unwrap();
    host.close().await;
    assert!(!socket.exists(), "the endpoint's socket outlived close()");

    let late = call_host(&plugin, 1, "").await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(
        late.message().contains("disconnected"),
        "{}",
        late.message()
    );
}

#[tokio::test]
async fn dropping_the_handle_disconnects_the_plugin() {
    let shared = Arc::new(WhoAmI::default());
    let plugin = start_with_host_services("dropped").await;
    let host = connected(
        establish_host_services(&plugin, services(&shared))
            .await
            .unwrap(),
    );
    let socket = host.address().unwrap().to_owned();
    call_host(&plugin, 1, "").await.unwrap();
    drop(host);

    let removed = eventually(PATIENCE, || !socket.exists()).await;
    assert!(removed, "the endpoint's socket outlived the handle");
    // The plugin hears Disconnect from a background task: poll for it, boundedly.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = call_host(&plugin, 1, "").await;
    while tokio::time::Instant::now() < deadline {
        if matches!(&last, Err(status) if status.message().contains("disconnected")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = call_host(&plugin, 1, "").await;
    }
    panic!("the plugin was not told it is disconnected: {last:?}");
}
