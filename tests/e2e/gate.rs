//! The gate, on a host service of the host's own (`HostTally`, capability kind `tally`)
//! served beside the file services to real sandboxed plugins: grants, denials, runtime
//! revocation, expiry, single-use grants, two plugins sharing the service, the decision
//! hook as an external process, one set of limits for every service, and an audit trail
//! that denies what it cannot record when its disk is full.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use std::sync::Arc;

use tether_host::{PluginClient, Supervisor};
use tether_hostconn::HostConnection;
use tether_hostserve::{
    Audit, CapabilityKind, ExternalHook, Gate, HostServices, Lifetime, Limits, Need, OnFailure,
    Policy, Resource,
};
use tether_test_contract::testing::host_tally_server::{HostTally, HostTallyServer};
use tether_test_contract::testing::{TallyRequest, TallyResponse};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::hostserve::{op, op_with};
use crate::idle::{busy_instance, idle_after, is_idle, running_pid};
use crate::support::{PATIENCE, eventually, skip, test_plugin};

/// The operation the audit trail records for `HostTally.Add`.
const ADD: &str = "tether.testing.v1.HostTally/Add";

/// The test host's own service: a tally per name, behind the gate.
struct Tally {
    gate: Gate,
    totals: Mutex<HashMap<String, u64>>,
    /// `Hold` calls answer once this is true.
    release: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl HostTally for Tally {
    async fn add(&self, request: Request<TallyRequest>) -> Result<Response<TallyResponse>, Status> {
        let name = request.get_ref().name.clone();
        let mut call = self
            .gate
            .check(&request, Need::new("tally").action("add").resource(&name))
            .await?;
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let total = totals.entry(name).or_default();
        *total += request.get_ref().amount;
        let total = *total;
        drop(totals);
        call.finish(Ok(Response::new(TallyResponse { total })))
    }

    async fn hold(
        &self,
        request: Request<TallyRequest>,
    ) -> Result<Response<TallyResponse>, Status> {
        let name = request.get_ref().name.clone();
        let mut call = self
            .gate
            .check(&request, Need::new("tally").action("hold").resource(&name))
            .await?;
        let mut release = self.release.clone();
        let released = release.wait_for(|released| *released).await.is_ok();
        call.finish(if released {
            Ok(Response::new(TallyResponse { total: 0 }))
        } else {
            Err(Status::unavailable("the test host went away"))
        })
    }
}

struct Host {
    root: tempfile::TempDir,
    audit_path: std::path::PathBuf,
    audit: Audit,
    services: HostServices,
    release: watch::Sender<bool>,
}

impl Host {
    /// A host serving the file services and `HostTally` behind one gate.
    fn new(limits: Limits) -> Self {
        let root = tempfile::tempdir().expect("test setup");
        let audit_path = root.path().join("audit.jsonl");
        let audit = Audit::to_file(&audit_path, 64 << 20).expect("test setup");
        Host::with_audit(root, audit_path, audit, limits)
    }

    fn with_audit(
        root: tempfile::TempDir,
        audit_path: std::path::PathBuf,
        audit: Audit,
        limits: Limits,
    ) -> Self {
        let workspace = root.path().join("workspace");
        std::fs::create_dir_all(workspace.join("config")).expect("test setup");
        std::fs::write(workspace.join("config/a.txt"), "a").expect("test setup");
        let tally = CapabilityKind::new("tally")
            .actions(["add", "hold"])
            .resource(Resource::NAME);
        let policy = Policy::with_kinds([tally]).expect("test setup");
        let gate = Gate::new(policy, audit.clone(), limits);
        let (release, released) = watch::channel(false);
        let services = HostServices::from_gate(gate.clone()).serve(HostTallyServer::new(Tally {
            gate,
            totals: Mutex::default(),
            release: released,
        }));
        Host {
            root,
            audit_path,
            audit,
            services,
            release,
        }
    }

    fn policy(&self) -> &Policy {
        self.services.policy()
    }

    /// Starts a test plugin with host services and connects them: one line.
    async fn start(&self, name: &str) -> (PluginClient, HostConnection) {
        self.policy()
            .set_workspace(name, self.root.path().join("workspace"));
        let plugin = test_plugin(name)
            .arg("--host-services")
            .start()
            .await
            .expect("test setup");
        let connection = self
            .services
            .connect(&plugin)
            .await
            .expect("test setup")
            .required()
            .expect("the test plugin takes host services");
        (plugin, connection)
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("every audit line is JSON"))
            .collect()
    }

    /// The audit records of `plugin`'s calls to `operation`, once there are `count`.
    async fn records_of(&self, plugin: &str, operation: &str, count: usize) -> Vec<Value> {
        let of = || {
            self.records()
                .into_iter()
                .filter(|r| r["plugin"] == plugin && r["operation"] == operation)
                .collect::<Vec<_>>()
        };
        let complete = eventually(PATIENCE, || of().len() >= count).await;
        let records = of();
        assert!(complete, "expected {count} records, found {records:#?}");
        records
    }
}

/// `HostTally.Add` of `amount` to `name`, from `plugin`: the outcome and the new total.
async fn add(plugin: &PluginClient, name: &str, amount: u64) -> (String, u64, String) {
    let response = op_with(plugin, "tally_add", name.as_bytes(), Vec::new(), amount).await;
    (response.outcome, response.size, response.capability)
}

#[tokio::test]
async fn a_hosts_own_service_allows_what_is_granted_and_denies_and_audits_the_rest() {
    let host = Host::new(Limits::default());
    host.policy().grant("counter", "tally:add:visits").unwrap();
    let (plugin, _connection) = host.start("counter").await;

    assert_eq!(
        add(&plugin, "visits", 2).await,
        ("ok".into(), 2, String::new())
    );
    assert_eq!(
        add(&plugin, "visits", 3).await,
        ("ok".into(), 5, String::new())
    );
    let (outcome, _, capability) = add(&plugin, "other", 1).await;
    assert_eq!(
        (outcome.as_str(), capability.as_str()),
        ("denied", "tally:add:other")
    );
    // Over the same connection, the file services: nothing granted there.
    assert_eq!(op(&plugin, "stat", b"config/a.txt").await.outcome, "denied");

    let records = host.records_of("counter", ADD, 3).await;
    let summary: Vec<(&Value, &Value, &Value, &Value)> = records
        .iter()
        .map(|r| {
            (
                &r["resource"],
                &r["decision"],
                &r["decided_by"],
                &r["capability"],
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                &"visits".into(),
                &"allowed".into(),
                &"policy".into(),
                &"tally:add:visits".into()
            ),
            (
                &"visits".into(),
                &"allowed".into(),
                &"policy".into(),
                &"tally:add:visits".into()
            ),
            (
                &"other".into(),
                &"denied".into(),
                &"policy".into(),
                &"tally:add:other".into()
            ),
        ]
    );
    assert!(
        records[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no grant covers"),
        "{records:#?}"
    );
    assert_eq!(records[0]["pid"], plugin.pid());
}

#[tokio::test]
async fn a_grant_revoked_at_runtime_denies_the_next_call() {
    let host = Host::new(Limits::default());
    host.policy().grant("revoked", "tally:add:t").unwrap();
    let (plugin, _connection) = host.start("revoked").await;
    assert_eq!(add(&plugin, "t", 1).await.0, "ok");
    assert!(host.policy().revoke("revoked", "tally:add:t"));
    assert_eq!(add(&plugin, "t", 1).await.0, "denied");
    let records = host.records_of("revoked", ADD, 2).await;
    assert_eq!(
        (&records[0]["decision"], &records[1]["decision"]),
        (&"allowed".into(), &"denied".into())
    );
}

#[tokio::test]
async fn a_single_use_grant_allows_exactly_one_call() {
    let host = Host::new(Limits::default());
    host.policy()
        .grant_for("once", "tally:add:t", Lifetime::uses(1))
        .unwrap();
    let (plugin, _connection) = host.start("once").await;
    assert_eq!(add(&plugin, "t", 1).await.0, "ok");
    assert_eq!(add(&plugin, "t", 1).await.0, "denied");
    assert_eq!(add(&plugin, "t", 1).await.0, "denied");
    let records = host.records_of("once", ADD, 3).await;
    let decisions: Vec<&str> = records
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allowed", "denied", "denied"]);
    assert!(
        records[1]["reason"]
            .as_str()
            .unwrap()
            .contains("no uses left"),
        "{records:#?}"
    );
    assert!(host.policy().grants("once").is_empty());
}

#[tokio::test]
async fn an_expired_grant_denies_the_next_call_and_says_so() {
    let host = Host::new(Limits::default());
    let (plugin, _connection) = host.start("expiring").await;
    // A grant that lasts long enough for one call here, however loaded the machine: the
    // lifetime doubles until a call made within it is allowed.
    let mut lifetime = Duration::from_secs(1);
    let expires = loop {
        let expires = SystemTime::now() + lifetime;
        host.policy()
            .grant_for("expiring", "tally:add:t", Lifetime::until(expires))
            .unwrap();
        if add(&plugin, "t", 1).await.0 == "ok" {
            break expires;
        }
        assert!(
            lifetime < PATIENCE,
            "no call was allowed within {lifetime:?}"
        );
        lifetime *= 2;
    };
    while SystemTime::now() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(add(&plugin, "t", 1).await.0, "denied");
    let records = host.records_of("expiring", ADD, 2).await;
    let last = records.last().unwrap();
    assert_eq!(last["decision"], "denied");
    assert!(
        last["reason"].as_str().unwrap().contains("expired at"),
        "{last}"
    );
    assert!(host.policy().grants("expiring").is_empty());
}

#[tokio::test]
async fn two_plugins_sharing_the_service_each_get_only_their_own_grants() {
    let host = Host::new(Limits::default());
    host.policy().grant("alpha", "tally:add:alpha").unwrap();
    host.policy().grant("beta", "tally:add:beta").unwrap();
    let (alpha, _a) = host.start("alpha").await;
    let (beta, _b) = host.start("beta").await;
    assert_eq!(add(&alpha, "alpha", 1).await.0, "ok");
    assert_eq!(add(&beta, "beta", 10).await.0, "ok");
    assert_eq!(add(&alpha, "beta", 1).await.2, "tally:add:beta");
    assert_eq!(add(&beta, "alpha", 1).await.2, "tally:add:alpha");
    // One implementation, shared: each total holds only what its own plugin added.
    assert_eq!(add(&alpha, "alpha", 1).await.1, 2);
    assert_eq!(add(&beta, "beta", 1).await.1, 11);
    for (plugin, other) in [("alpha", "beta"), ("beta", "alpha")] {
        let records = host.records_of(plugin, ADD, 3).await;
        let denied: Vec<&Value> = records
            .iter()
            .filter(|r| r["decision"] == "denied")
            .map(|r| &r["resource"])
            .collect();
        assert_eq!(denied, [&Value::from(other)], "{records:#?}");
    }
}

/// A decision hook as an operator would write one: a shell script answering one JSON line
/// per question, by the tally's name (`silent` gets no answer at all).
const HOOK_SCRIPT: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"capability":"tally:add:once"'*) answer=allow_once ;;
    *'"capability":"tally:add:always"'*) answer=allow_always ;;
    *'"capability":"tally:add:silent"'*) continue ;;
    *) answer=deny ;;
  esac
  printf '{"id":%s,"answer":"%s","reason":"the script says so"}\n' "$id" "$answer"
done
"#;

#[tokio::test]
async fn the_decision_hook_in_a_real_process_allows_once_for_ever_denies_and_times_out() {
    let host = Host::new(Limits::default());
    let hook = ExternalHook::spawn("script", "/bin/sh", &["-c", HOOK_SCRIPT]).unwrap();
    host.policy().set_hook(hook, Duration::from_secs(2));
    let (plugin, _connection) = host.start("asking").await;

    assert_eq!(add(&plugin, "once", 1).await.0, "ok");
    assert!(
        host.policy().grants("asking").is_empty(),
        "allow once grants nothing"
    );
    assert_eq!(add(&plugin, "always", 1).await.0, "ok");
    assert_eq!(host.policy().grants("asking"), ["tally:add:always"]);
    // From now on the grant decides, not the hook.
    assert_eq!(add(&plugin, "always", 1).await.0, "ok");
    assert_eq!(add(&plugin, "no", 1).await.2, "tally:add:no");
    assert_eq!(add(&plugin, "silent", 1).await.2, "tally:add:silent");

    let records = host.records_of("asking", ADD, 5).await;
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
                r["decided_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("once", "allowed", "hook:script"),
            ("always", "allowed", "hook:script"),
            ("always", "allowed", "policy"),
            ("no", "denied", "hook:script"),
            ("silent", "denied", "hook:script"),
        ]
    );
    let reason = |i: usize| records[i]["reason"].as_str().unwrap().to_owned();
    assert!(reason(0).contains("allowed it once"), "{}", reason(0));
    assert!(reason(3).contains("the script says so"), "{}", reason(3));
    assert!(
        reason(4).contains("gave no answer within 2s"),
        "{}",
        reason(4)
    );
}

#[tokio::test]
async fn the_file_services_and_the_hosts_own_share_one_gate_and_its_limits() {
    let limits = Limits {
        max_concurrent_calls: 2,
        queue_wait: Duration::from_millis(200),
        ..Limits::default()
    };
    let host = Host::new(limits);
    host.policy().grant("shared", "tally:hold:h").unwrap();
    host.policy().grant("shared", "read:config/**").unwrap();
    let (plugin, _connection) = host.start("shared").await;

    // Two calls to the host's own service take both of the plugin's slots...
    assert_eq!(
        op_with(&plugin, "tally_hold", b"h", Vec::new(), 2)
            .await
            .outcome,
        "ok"
    );
    assert!(
        eventually(PATIENCE, || host.services.calls_in_flight("shared") == 2).await,
        "the held calls never took their slots"
    );
    // ... so a file call waits for one, in vain: the same gate, the same limit.
    let refused = op(&plugin, "stat", b"config/a.txt").await;
    assert_eq!(refused.outcome, "exhausted", "{}", refused.message);
    let records = host.records_of("shared", "stat", 1).await;
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("concurrency limit reached"),
        "{records:#?}"
    );
    host.release.send_replace(true);
    assert!(
        eventually(PATIENCE, || host.services.calls_in_flight("shared") == 0).await,
        "the held calls never ended"
    );
    assert_eq!(op(&plugin, "stat", b"config/a.txt").await.outcome, "ok");
}

/// Mounts a tmpfs of `bytes` at `dir`; `None` (the test is recorded as skipped) where this
/// process may not mount.
fn small_disk(dir: &Path, bytes: u64) -> Option<Mounted> {
    std::fs::create_dir_all(dir).expect("test setup");
    let options = std::ffi::CString::new(format!("size={bytes},mode=0700")).expect("no NUL");
    let mounted = rustix::mount::mount(
        "tether-test",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        Some(options.as_c_str()),
    );
    match mounted {
        Ok(()) => Some(Mounted(dir.to_owned())),
        Err(err) => {
            skip(
                "fills a small disk under the audit file",
                &format!("mounting a tmpfs needs CAP_SYS_ADMIN ({err})"),
            );
            None
        }
    }
}

struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[tokio::test]
async fn with_its_disk_full_the_audit_trail_denies_what_it_cannot_record_and_loses_nothing() {
    let root = tempfile::tempdir().expect("test setup");
    let disk = root.path().join("disk");
    let Some(_mounted) = small_disk(&disk, 64 * 1024) else {
        return;
    };
    let audit_path = disk.join("audit.jsonl");
    let audit = Audit::to_file_with(&audit_path)
        .queue(8)
        .on_failure(OnFailure::FailClosed {
            wait: Duration::from_millis(500),
        })
        .open()
        .expect("test setup");
    // Slots enough for the whole flood, so every call meets the audit trail.
    let limits = Limits {
        max_concurrent_calls: 64,
        ..Limits::default()
    };
    let host = Host::with_audit(root, audit_path.clone(), audit, limits);
    host.policy().grant("flooder", "tally:add:t").unwrap();
    let (plugin, _connection) = host.start("flooder").await;
    assert_eq!(add(&plugin, "t", 1).await.0, "ok");

    // Fill the disk: the audit file cannot grow by a byte.
    let filler = disk.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).expect("test setup");
        let block = [b'x'; 4096];
        while file.write(&block).is_ok_and(|n| n > 0) {}
        while file.write(&block[..1]).is_ok_and(|n| n > 0) {}
    }

    // A flood of concurrent calls, more than the queue holds.
    let flood = op_with(&plugin, "tally_flood", b"t", Vec::new(), 48).await;
    assert_eq!(flood.names.len(), 48);
    let allowed = flood.names.iter().filter(|o| *o == "ok").count();
    let refused: Vec<&String> = flood.names.iter().filter(|o| *o != "ok").collect();
    assert!(
        !refused.is_empty(),
        "with the disk full, some calls must be denied: {:?}",
        flood.names
    );
    for outcome in &refused {
        assert!(
            outcome.contains("cannot record this call")
                && (outcome.contains("No space left on device") || outcome.contains("behind")),
            "a denial that does not say why: {outcome}"
        );
    }
    assert!(
        host.audit.health().failing.is_some(),
        "{:?}",
        host.audit.health()
    );

    // Room again: every record that waited is written, none torn, none lost.
    std::fs::remove_file(&filler).expect("test setup");
    assert!(
        host.audit.flush(PATIENCE).await,
        "{:?}",
        host.audit.health()
    );
    let records = host.records();
    let written_allowed = records
        .iter()
        .filter(|r| r["operation"] == ADD && r["decision"] == "allowed")
        .count();
    assert_eq!(
        written_allowed,
        1 + allowed,
        "every allowed call has its record in the file"
    );
    // The denials are recorded too where the queue had room, and counted where not.
    let written_denied = records
        .iter()
        .filter(|r| r["operation"] == ADD && r["decision"] == "denied")
        .count();
    assert_eq!(
        written_denied as u64 + host.audit.dropped(),
        refused.len() as u64,
        "{:?}",
        host.audit.health()
    );
    assert_eq!(host.audit.failed(), 0, "{:?}", host.audit.health());
}

#[tokio::test]
async fn a_host_service_call_under_way_keeps_an_idle_plugin_up() {
    let host = Arc::new(Host::new(Limits::default()));
    host.policy()
        .grant("busy", "tally:hold:h")
        .expect("test setup");
    let setup_host = Arc::clone(&host);
    let supervisor = Supervisor::start(
        "busy",
        || test_plugin("busy").arg("--host-services"),
        idle_after(Duration::from_secs(1)),
        move |plugin| {
            let host = Arc::clone(&setup_host);
            Box::pin(async move { Ok(host.services.connect(&plugin).await?.required()?) })
        },
    );
    let (plugin, busy) = busy_instance(&supervisor).await;
    let pid = plugin.pid();
    {
        // Counted as busy until the plugin's two host calls are under way.
        let _busy = busy;
        assert_eq!(
            op_with(&plugin, "tally_hold", b"h", Vec::new(), 2)
                .await
                .outcome,
            "ok"
        );
        assert!(
            eventually(PATIENCE, || host.services.calls_in_flight("busy") == 2).await,
            "the held calls never reached the host"
        );
    }
    drop(plugin);

    // Three idle timeouts with only the plugin's host-service calls under way: it stays up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        running_pid(&supervisor),
        Some(pid),
        "{:?}",
        supervisor.state()
    );

    host.release.send_replace(true);
    assert!(
        eventually(PATIENCE, || is_idle(&supervisor)).await,
        "the plugin was not stopped once its host calls ended: {:?}",
        supervisor.state()
    );
    supervisor.shutdown().await;
}
