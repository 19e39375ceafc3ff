//! Verified plugin binaries: a pinned SHA-256, checked on the open file that is executed;
//! each start, refusal and failure in the audit trail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use blake2::{Blake2b512, Digest};
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

/// A minisign key pair made here: what a publisher signs manifests with.
struct Publisher {
    pair: Ed25519KeyPair,
    id: [u8; 8],
}

impl Publisher {
    fn new(id: u8) -> Publisher {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
        Publisher {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key"),
            id: [id; 8],
        }
    }

    /// The public key as `minisign.pub`'s second line has it.
    fn public(&self) -> String {
        let mut bytes = b"Ed".to_vec();
        bytes.extend_from_slice(&self.id);
        bytes.extend_from_slice(self.pair.public_key().as_ref());
        BASE64.encode(bytes)
    }

    /// A `.minisig` for `content`, as `minisign -S` makes it (prehashed with BLAKE2b-512).
    fn sign(&self, content: &[u8]) -> String {
        let hash = Blake2b512::digest(content);
        let signature = self.pair.sign(&hash);
        let mut line = b"ED".to_vec();
        line.extend_from_slice(&self.id);
        line.extend_from_slice(signature.as_ref());
        let trusted = "timestamp:1764547200\tfile:plugin.toml\thashed";
        let mut global = signature.as_ref().to_vec();
        global.extend_from_slice(trusted.as_bytes());
        let global = self.pair.sign(&global);
        format!(
            "untrusted comment: signature from a tether test key\n{}\ntrusted comment: {trusted}\n{}\n",
            BASE64.encode(line),
            BASE64.encode(global.as_ref())
        )
    }
}

/// Writes `plugin.toml` (naming `name` and `digest`) beside `program`, signed by `by`.
fn sign_manifest(program: &Path, name: &str, digest: &Sha256, by: &Publisher) -> PathBuf {
    let manifest = program.with_file_name("plugin.toml");
    let text = format!(
        "name = \"{name}\"\nversion = \"1.2.0\"\nprotocol_version = 1\n\
         capabilities = [\"read:config/**\"]\nsha256 = \"{digest}\"\n"
    );
    std::fs::write(&manifest, &text).expect("write the manifest");
    std::fs::write(
        program.with_file_name("plugin.toml.minisig"),
        by.sign(text.as_bytes()),
    )
    .expect("write the signature");
    manifest
}

#[tokio::test]
async fn a_plugin_starts_only_as_its_publishers_signed_manifest_describes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = copy(TEST_PLUGIN, dir.path(), "signed-plugin");
    let digest = Sha256::of_file(&program).expect("hash");
    let publisher = Publisher::new(7);
    let fixture = Fixture::new(Limits::default());
    let policy = fixture.services.policy();
    policy.trust_publisher("signed", publisher.public().parse().expect("a key"));
    let start = || {
        fixture
            .services
            .configure(builder("signed", &program))
            .start()
    };
    let refused = |err: Error| match err {
        Error::Binary { reason, .. } => reason.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Signed, naming the plugin and its binary: it starts, verified.
    let manifest = sign_manifest(&program, "signed", &digest, &publisher);
    let plugin = start().await.expect("a signed plugin starts");
    assert_eq!(plugin.verified_sha256(), Some(digest));
    assert_eq!(echo(&plugin).await.expect("test plugin"), "who runs?");
    plugin.shutdown().await.expect("stops");

    // The manifest changed after signing (a capability added): refused.
    let text = std::fs::read_to_string(&manifest).expect("read");
    std::fs::write(&manifest, text.replace("config/**", "**")).expect("write");
    let reason = refused(start().await.expect_err("a changed manifest"));
    assert!(
        reason.contains("the signature does not match the manifest"),
        "{reason}"
    );

    // Signed by someone else: refused.
    sign_manifest(&program, "signed", &digest, &Publisher::new(9));
    let reason = refused(start().await.expect_err("another signer"));
    assert!(reason.contains("was made with another key"), "{reason}");

    // No signature at all: refused, saying how to sign.
    std::fs::remove_file(program.with_file_name("plugin.toml.minisig")).expect("remove");
    let reason = refused(start().await.expect_err("unsigned"));
    assert!(reason.contains("minisign -Sm"), "{reason}");

    // Signed for another plugin: refused.
    sign_manifest(&program, "other", &digest, &publisher);
    let reason = refused(start().await.expect_err("another plugin's manifest"));
    assert!(reason.contains("describes plugin `other`"), "{reason}");

    // Properly signed, but the binary is not the one it names: refused.
    sign_manifest(
        &program,
        "signed",
        &Sha256::of(b"the published build"),
        &publisher,
    );
    match start().await.expect_err("another binary") {
        Error::Binary {
            reason: BinaryRefusal::Mismatch { expected, actual },
            ..
        } => assert_eq!(
            (expected, actual),
            (Sha256::of(b"the published build"), digest)
        ),
        other => panic!("expected a mismatch, got {other:?}"),
    }

    // One start, five refusals, each in the audit trail.
    let records = fixture.audit_records(6).await;
    let operations: Vec<&str> = records
        .iter()
        .map(|record| record["operation"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        operations,
        [
            "process:started",
            "process:refused",
            "process:refused",
            "process:refused",
            "process:refused",
            "process:refused"
        ]
    );
}
