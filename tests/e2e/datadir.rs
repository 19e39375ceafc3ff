//! A plugin's private data directory: created private by the host, the plugin's working
//! directory, read-write to that plugin alone under `Strict`, each file bounded by the
//! file-size limit; refused when it is not private; absent, nothing is writable.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tether_host::{Error, Layer, PluginBuilder, PluginClient, ResourceLimits, Sandbox};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{HostOpRequest, HostOpResponse};

use crate::support::{HANDSHAKE, STATE_PLUGIN, kernel_enforces, record_events, sandbox};

const EACCES: &str = "errno 13";

fn state(name: &str, sandbox: Sandbox) -> PluginBuilder {
    record_events();
    PluginClient::builder(name, STATE_PLUGIN)
        .handshake(HANDSHAKE)
        .sandbox(sandbox)
}

/// Asks the state plugin to do `op` on `path` (with `data`).
async fn ask(plugin: &PluginClient, op: &str, path: &Path, data: &[u8]) -> HostOpResponse {
    TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: op.into(),
            path: path.as_os_str().as_encoded_bytes().to_vec(),
            data: data.to_vec(),
            size: 0,
        })
        .await
        .unwrap_or_else(|status| panic!("{op} {}: no answer: {status}", path.display()))
        .into_inner()
}

/// Like [`ask`], and the operation must succeed.
async fn done(plugin: &PluginClient, op: &str, path: &str, data: &[u8]) -> HostOpResponse {
    let answer = ask(plugin, op, Path::new(path), data).await;
    assert_eq!(answer.outcome, "ok", "{op} {path}: {}", answer.message);
    answer
}

#[tokio::test]
async fn a_plugin_keeps_state_in_its_data_dir_and_writes_nowhere_else() {
    let base = tempfile::tempdir().unwrap();
    // Created by the host, with its missing parents.
    let data = base.path().join("plugins/state-a");
    let plugin = state("state-a", sandbox())
        .data_dir(&data)
        .start()
        .await
        .expect("the state plugin starts with a data directory");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the data directory is private");
    let status = plugin.sandbox().expect("a started plugin's sandbox");
    if status.is_enforced(Layer::LandlockFilesystem) {
        assert!(
            status
                .to_string()
                .contains("read-write in its data directory"),
            "{status}"
        );
    }

    // Its working directory, and named in its environment.
    let place = done(&plugin, "where", "", b"").await;
    assert_eq!(Path::new(&place.message), data);
    assert_eq!(place.data, data.as_os_str().as_encoded_bytes());

    // Write (relative to the working directory), read back, append, truncate.
    done(&plugin, "write", "kv_one", b"hello").await;
    assert_eq!(std::fs::read(data.join("kv_one")).unwrap(), b"hello");
    assert_eq!(done(&plugin, "read", "kv_one", b"").await.data, b"hello");
    done(&plugin, "append", "kv_one", b", world").await;
    let truncated = TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: "truncate".into(),
            path: b"kv_one".to_vec(),
            data: Vec::new(),
            size: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(truncated.outcome, "ok", "{}", truncated.message);
    assert_eq!(done(&plugin, "read", "kv_one", b"").await.data, b"hello");

    // Directories, renames within and across them, removal; by absolute path too.
    done(&plugin, "mkdir", "sub", b"").await;
    done(&plugin, "rename", "kv_one", b"kv_two").await;
    done(&plugin, "rename", "kv_two", b"sub/kv_three").await;
    let absolute = data.join("sub").display().to_string();
    assert_eq!(
        done(&plugin, "list", &absolute, b"").await.names,
        ["kv_three"]
    );
    done(&plugin, "remove", "sub/kv_three", b"").await;
    done(&plugin, "rmdir", "sub", b"").await;
    assert!(done(&plugin, "list", ".", b"").await.names.is_empty());
    assert!(std::fs::read_dir(&data).unwrap().next().is_none());

    if kernel_enforces(
        Layer::LandlockFilesystem,
        "writes outside the data directory",
    ) {
        // Beside it, through `..`, in its parent, in /tmp: refused by Landlock.
        let beside = base.path().join("plugins/beside");
        for path in [
            beside.display().to_string(),
            "../escaped".to_owned(),
            base.path().join("escaped").display().to_string(),
            "/tmp/tether-escaped".to_owned(),
        ] {
            let answer = ask(&plugin, "write", Path::new(&path), b"x").await;
            assert_eq!(answer.outcome, EACCES, "write {path}: {}", answer.message);
        }
        let answer = ask(&plugin, "mkdir", Path::new("../made"), b"").await;
        assert_eq!(answer.outcome, EACCES, "mkdir ..: {}", answer.message);
        // Nor out of it by renaming.
        done(&plugin, "write", "kv_out", b"x").await;
        let answer = ask(&plugin, "rename", Path::new("kv_out"), b"../kv_out").await;
        assert_eq!(answer.outcome, EACCES, "rename out: {}", answer.message);
        assert!(!beside.exists() && !base.path().join("escaped").exists());
        assert!(!base.path().join("made").exists() && !base.path().join("plugins/kv_out").exists());
    }
    plugin.shutdown().await.unwrap();
    // The state outlives the plugin, for its next start.
    assert_eq!(std::fs::read(data.join("kv_out")).unwrap(), b"x");
}

#[tokio::test]
async fn another_plugin_cannot_reach_a_plugins_data_dir() {
    if !kernel_enforces(Layer::LandlockFilesystem, "one data directory per plugin") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let (mine, theirs) = (base.path().join("mine"), base.path().join("theirs"));
    let owner = state("owner", sandbox())
        .data_dir(&mine)
        .start()
        .await
        .unwrap();
    let other = state("other", sandbox())
        .data_dir(&theirs)
        .start()
        .await
        .unwrap();
    done(&owner, "write", "kv_secret", b"mine").await;
    done(&other, "write", "kv_theirs", b"theirs").await;

    let secret = mine.join("kv_secret");
    for (op, path) in [
        ("read", secret.clone()),
        ("write", secret.clone()),
        ("write", mine.join("planted")),
        ("remove", secret.clone()),
        ("list", mine.clone()),
    ] {
        let answer = ask(&other, op, &path, b"theirs").await;
        assert_eq!(
            answer.outcome,
            EACCES,
            "{op} {}: {}",
            path.display(),
            answer.message
        );
    }
    assert_eq!(std::fs::read(&secret).unwrap(), b"mine");
    assert!(!mine.join("planted").exists());
    other.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_file_in_the_data_dir_is_bounded_by_the_file_size_limit() {
    if !kernel_enforces(Layer::ResourceLimits, "the file-size limit") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("bounded");
    let limit = 16 * 1024;
    let plugin = state(
        "bounded",
        sandbox().limits(ResourceLimits {
            file_size: Some(limit),
            ..ResourceLimits::default()
        }),
    )
    .data_dir(&data)
    .start()
    .await
    .unwrap();
    done(&plugin, "write", "small", &[1; 1024]).await;
    // Past the limit the write fails (EFBIG), or SIGXFSZ ends the plugin unless it ignores
    // that signal; either way the file stops at the limit.
    let big = vec![2; 4 * 16 * 1024];
    let answer = TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: "write".into(),
            path: b"big".to_vec(),
            data: big,
            size: 0,
        })
        .await;
    if let Ok(answer) = answer {
        assert_eq!(
            answer.get_ref().outcome,
            "errno 27",
            "{:?}",
            answer.get_ref()
        );
    }
    let written = std::fs::metadata(data.join("big")).unwrap().len();
    assert!(
        written <= limit,
        "{written} bytes written past the {limit}-byte limit"
    );
    let _ = plugin.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_that_is_not_private_is_refused_before_the_plugin_starts() {
    let base = tempfile::tempdir().unwrap();
    let real = base.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = base.path().join("file");
    std::fs::write(&file, "").unwrap();

    for (dir, says) in [
        (&link, "symbolic link"),
        (&shared, "writable by group or others"),
        (&file, "not a directory"),
    ] {
        let err = state("refused", sandbox())
            .data_dir(dir)
            .start()
            .await
            .expect_err("a data directory that is not private");
        assert!(
            matches!(&err, Error::DataDir { plugin, .. } if plugin == "refused"),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(says) && message.contains(&dir.display().to_string()),
            "{message}"
        );
    }
    // Nothing was changed: the host refuses, it does not repair.
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o777);
}

#[tokio::test]
async fn without_a_data_dir_a_sandboxed_plugin_writes_nowhere() {
    let plugin = state("stateless", sandbox()).start().await.unwrap();
    let place = done(&plugin, "where", "", b"").await;
    assert!(place.data.is_empty(), "TETHER_DATA_DIR is set: {place:?}");
    // The working directory is the host's, as before.
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(Path::new(&place.message), cwd);
    if kernel_enforces(Layer::LandlockFilesystem, "no writable directory") {
        let tmp = tempfile::tempdir().unwrap();
        for path in [tmp.path().join("kv_x"), Path::new("kv_x").to_owned()] {
            let answer = ask(&plugin, "write", &path, b"x").await;
            assert_eq!(
                answer.outcome,
                EACCES,
                "write {}: {}",
                path.display(),
                answer.message
            );
        }
        assert!(!tmp.path().join("kv_x").exists() && !cwd.join("kv_x").exists());
    }
    plugin.shutdown().await.unwrap();
}
