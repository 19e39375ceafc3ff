//! Verified plugin binaries: a pinned SHA-256, checked on the open file that is executed;
//! each start, refusal and failure in the audit trail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tether_host::{BinaryRefusal, Error, PluginClient, Sha256};
use tether_hostserve::Limits;
use tether_test_contract::testing::EchoRequest;
use tether_test_contract::testing::testing_client::TestingClient;

use crate::hostserve::Fixture;
use crate::support::{HANDSHAKE, PLAIN_PLUGIN, TEST_PLUGIN, record_events, sandbox};

/// A copy of `binary` at `dir/name`, mode 0755.
fn copy(binary: &str, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(binary, &path).expect("copy the plugin");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn builder(name: &str, program: &Path) -> tether_host::PluginBuilder {
    record_events();
    PluginClient::builder(name, program)
        .handshake(HANDSHAKE)
        .sandbox(sandbox())
}

async fn echo(plugin: &PluginClient) -> Result<String, tonic::Status> {
    TestingClient::new(plugin.channel())
        .echo(EchoRequest {
            message: "who runs?".into(),
        })
        .await
        .map(|answer| answer.into_inner().message)
}

#[tokio::test]
async fn a_pinned_binary_starts_from_the_checked_file_and_its_start_is_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = copy(TEST_PLUGIN, dir.path(), "pinned-plugin");
    let digest = Sha256::of_file(&program).expect("hash");
    let fixture = Fixture::new(Limits::default());
    fixture.services.policy().pin_sha256("pinned", digest);

    let plugin = fixture
        .services
        .configure(builder("pinned", &program))
        .start()
        .await
        .expect("the pinned binary starts");
    assert_eq!(echo(&plugin).await.expect("test plugin"), "who runs?");
    let exe = std::fs::read_link(format!("/proc/{}/exe", plugin.pid())).expect("its exe");
    assert_eq!(exe, program, "the process runs the pinned file");

    let started = fixture.audit_records(1).await;
    let started = &started[0];
    assert_eq!(started["operation"], "process:started", "{started}");
    assert_eq!(started["decision"], "allowed", "{started}");
    assert_eq!(started["pid"], plugin.pid(), "{started}");
    assert_eq!(started["resource"], program.display().to_string());
    let reason = started["reason"].as_str().expect("a reason");
    assert!(
        reason.contains(&format!("binary verified, sha256 {digest}")),
        "{reason}"
    );
    plugin.shutdown().await.expect("stops");
}

#[tokio::test]
async fn a_binary_replaced_after_its_digest_was_pinned_is_refused_and_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = copy(TEST_PLUGIN, dir.path(), "replaced-plugin");
    let pinned = Sha256::of_file(&program).expect("hash");
    let fixture = Fixture::new(Limits::default());
    fixture.services.policy().pin_sha256("replaced", pinned);
    // Another binary, with the same handshake, takes the pinned one's place.
    std::fs::remove_file(&program).expect("remove");
    copy(PLAIN_PLUGIN, dir.path(), "replaced-plugin");
    let actual = Sha256::of_file(&program).expect("hash");

    let err = fixture
        .services
        .configure(builder("replaced", &program))
        .start()
        .await
        .expect_err("the replaced binary is refused");
    match &err {
        Error::Binary {
            plugin,
            reason:
                BinaryRefusal::Mismatch {
                    expected,
                    actual: found,
                },
            ..
        } => {
            assert_eq!(plugin, "replaced");
            assert_eq!((expected, found), (&pinned, &actual));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("its SHA-256 is {actual}, but {pinned} is pinned")),
        "{message}"
    );

    let refused = fixture.audit_records(1).await;
    let refused = &refused[0];
    assert_eq!(refused["operation"], "process:refused", "{refused}");
    assert_eq!(refused["decision"], "denied", "{refused}");
    assert_eq!(refused["decided_by"], "operator", "{refused}");
    assert_eq!(
        refused["pid"],
        Value::Null,
        "nothing was started: {refused}"
    );
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains(&actual.to_string())),
        "{refused}"
    );
}

#[tokio::test]
async fn a_binary_swapped_between_the_check_and_the_exec_is_not_what_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = copy(TEST_PLUGIN, dir.path(), "swapped-plugin");
    let pinned = Sha256::of_file(&program).expect("hash");
    let impostor = copy(PLAIN_PLUGIN, dir.path(), "impostor");

    // Between the check and the exec, the impostor is renamed over the checked path.
    let swap = impostor.clone();
    let plugin = builder("swapped", &program)
        .sha256(pinned)
        .after_verify(move |path| std::fs::rename(&swap, path).expect("swap the binary"))
        .start()
        .await
        .expect("the checked binary starts");
    assert!(!impostor.exists(), "the swap happened");
    assert_ne!(
        Sha256::of_file(&program).expect("hash"),
        pinned,
        "the path now holds the impostor"
    );
    // What runs is the test plugin that was checked: the impostor has no Testing service.
    assert_eq!(
        echo(&plugin).await.expect("the checked plugin"),
        "who runs?"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", plugin.pid())).expect("its exe");
    assert_eq!(
        exe,
        PathBuf::from(format!("{} (deleted)", program.display())),
        "the process runs the file that was checked, since unlinked"
    );
    plugin.shutdown().await.expect("stops");
}

#[tokio::test]
async fn a_pinned_binary_others_could_rewrite_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = copy(TEST_PLUGIN, dir.path(), "writable-plugin");
    let pinned = Sha256::of_file(&program).expect("hash");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o775)).expect("chmod");
    let err = builder("writable", &program)
        .sha256(pinned)
        .start()
        .await
        .expect_err("a group-writable pinned binary is refused");
    assert!(
        matches!(
            &err,
            Error::Binary {
                reason: BinaryRefusal::Writable { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod go-w"), "{err}");
}

#[tokio::test]
async fn a_start_that_fails_is_audited_with_its_reason() {
    let fixture = Fixture::new(Limits::default());
    let err = fixture
        .services
        .configure(builder("wrong-versions", Path::new(TEST_PLUGIN)).protocol_versions(&[99]))
        .start()
        .await
        .expect_err("no version in common");
    let failed = fixture.audit_records(1).await;
    let failed = &failed[0];
    assert_eq!(failed["operation"], "process:failed", "{failed}");
    assert_eq!(failed["decision"], "denied", "{failed}");
    assert_eq!(failed["decided_by"], "host", "{failed}");
    assert_eq!(failed["reason"], err.to_string(), "{failed}");
}
