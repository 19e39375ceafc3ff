//! The greeter, tested two ways: its service against real host services served in this
//! process (no plugin process: how a plugin author tests their logic), then the two
//! binaries as a user runs them.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tether::host::in_process;
use tether::hostserve::{Audit, HostServices, Limits, Policy};
use tether::plugin::Host;
use tether::tonic::{Code, Request, Status};
use tether_example_greeter::proto::GreetRequest;
use tether_example_greeter::proto::greeter_server::Greeter as _;
use tether_example_greeter::{GRANT, GREETING_FILE, Greeter, PLUGIN};

/// Host services for the plugin named [`PLUGIN`] with `grants`, over a workspace whose
/// greeting is `Hello`.
fn services(grants: &[&str]) -> (TempDir, HostServices, Audit) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let workspace = dir.path().join("workspace");
    std::fs::create_dir(&workspace).expect("the workspace is created");
    std::fs::write(workspace.join(GREETING_FILE), "Hello\n").expect("the greeting is written");
    let policy = Policy::new();
    policy.set_workspace(PLUGIN, &workspace);
    for grant in grants {
        policy.grant(PLUGIN, grant).expect("a valid grant");
    }
    let audit =
        Audit::to_file(dir.path().join("audit.jsonl"), 1 << 20).expect("the audit log opens");
    let services = HostServices::new(policy, audit.clone(), Limits::default());
    (dir, services, audit)
}

fn audit(dir: &TempDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .expect("the audit log is readable")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each record is JSON"))
        .collect()
}

async fn greet(services: &HostServices, name: &str) -> Result<String, Status> {
    let local = in_process(PLUGIN, services.routes())
        .await
        .expect("in-process host services start");
    let greeter = Greeter::new(Host::from_channel(local.channel()));
    let reply = greeter
        .greet(Request::new(GreetRequest { name: name.into() }))
        .await?;
    Ok(reply.into_inner().greeting)
}

#[tokio::test]
async fn with_the_grant_the_greeting_is_read_through_the_host_and_audited() {
    let (dir, services, trail) = services(&[GRANT]);
    assert_eq!(greet(&services, "Ada").await.unwrap(), "Hello, Ada!");
    assert!(trail.flush(Duration::from_secs(30)).await);
    let records = audit(&dir);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["plugin"], PLUGIN);
    assert_eq!(records[0]["operation"], "read_file");
    assert_eq!(records[0]["resource"], GREETING_FILE);
    assert_eq!(records[0]["decision"], "allowed");
}

#[tokio::test]
async fn without_it_the_call_is_denied_naming_the_capability_and_audited() {
    let (dir, services, trail) = services(&[]);
    let status = greet(&services, "Ada").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(GRANT), "{status:?}");
    assert!(trail.flush(Duration::from_secs(30)).await);
    let records = audit(&dir);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["decision"], "denied");
}

#[tokio::test]
async fn an_empty_name_is_refused_before_any_host_call() {
    let (dir, services, trail) = services(&[GRANT]);
    let status = greet(&services, " ").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(trail.flush(Duration::from_secs(30)).await);
    assert!(audit(&dir).is_empty());
}

/// The binaries as a user runs them: the host starts the real plugin process, sandboxed.
#[test]
fn the_host_binary_greets_through_the_plugin_binary() {
    #[allow(
        clippy::disallowed_methods,
        reason = "running the example's host, as a user would"
    )]
    let output = Command::new(env!("CARGO_BIN_EXE_greeter-host"))
        .args(["Ada", "--plugin", env!("CARGO_BIN_EXE_greeter-plugin")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.starts_with("Hello, Ada!\n"), "{stdout}");
    assert!(stdout.contains(r#""request_id":"greet-1""#), "{stdout}");
}

/// Run by hand, the plugin says what it is instead of waiting for a host.
#[test]
fn the_plugin_run_by_hand_explains_itself() {
    #[allow(
        clippy::disallowed_methods,
        reason = "running the plugin by hand, as a user might"
    )]
    let output = Command::new(env!("CARGO_BIN_EXE_greeter-plugin"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).is_empty());
}
