//! go-plugin's `PLUGIN_UNIX_SOCKET_GROUP`: the host gives the socket directory to a group
//! (0770), and the sockets in it, the plugin's and brokered ones, go to that group (0660).

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use tether_host::{Error, PluginClient};
use tether_hostserve::Limits;

use crate::hostserve::Fixture;
use crate::support::test_plugin;

/// A group the host may give files to and the test process is not in: `daemon` (gid 1) as
/// root; else the host's own group, which proves less.
fn group() -> u32 {
    if rustix::process::getuid().is_root() {
        1
    } else {
        rustix::process::getgid().as_raw()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_go_to_the_socket_group() {
    let gid = group();
    let fixture = Fixture::new(Limits::default());
    fixture.grant("grouped", &["read:config/**"]);
    let plugin = test_plugin("grouped")
        .arg("--host-files")
        .socket_group(gid.to_string())
        .start()
        .await
        .expect("the plugin starts with a socket group");
    // A brokered socket of the host's, for its services.
    let connection = fixture.connect(&plugin).await;
    let dir = plugin
        .broker()
        .expect("a spawned plugin has a broker")
        .socket_dir()
        .to_owned();
    let meta = std::fs::metadata(&dir).expect("the socket directory");
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o770);
    let sockets: Vec<_> = std::fs::read_dir(&dir)
        .expect("the socket directory")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    // The plugin's main socket, and the host's brokered one.
    assert!(sockets.len() >= 2, "{sockets:?}");
    for socket in &sockets {
        let meta = std::fs::metadata(socket).expect("a socket");
        assert_eq!(meta.gid(), gid, "{}", socket.display());
        // Group read-write, nothing for others.
        let mode = meta.permissions().mode();
        assert_eq!(mode & 0o067, 0o060, "{}: {mode:o}", socket.display());
    }
    drop(connection);
    plugin.shutdown().await.expect("a clean stop");
}

#[tokio::test]
async fn an_unknown_socket_group_is_a_clear_error() {
    let err = PluginClient::builder("ungrouped", crate::support::TEST_PLUGIN)
        .socket_group("no-such-group-anywhere")
        .start()
        .await
        .expect_err("an unknown group");
    assert!(matches!(err, Error::SocketGroup { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-group-anywhere"), "{err}");
}
