//! `tether inspect` on the real test plugin: its handshake, its manifest, its sandbox, and
//! a graceful stop. The CLI is another package's binary, so it is built with cargo here
//! (as the demo is).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tether_host::Layer;

use crate::support::{TEST_PLUGIN, cargo_build, missing};

/// Builds `tether` once.
fn tether() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["tether-cli"]).join("tether"))
}

fn inspect(plugin: &Path, extra: &[&str]) -> Output {
    inspect_with(plugin, "TETHER_TEST_PLUGIN=e2e", extra)
}

/// Runs `tether inspect` on `plugin` with the magic cookie `cookie` (`KEY=VALUE`).
pub(crate) fn inspect_with(plugin: &Path, cookie: &str, extra: &[&str]) -> Output {
    #[allow(
        clippy::disallowed_methods,
        reason = "runs the CLI, which starts the plugin"
    )]
    Command::new(tether())
        .arg("inspect")
        .arg(plugin)
        .args(["--cookie", cookie])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("tether runs")
}

/// `strict` where this kernel enforces every layer, else `best-effort`.
fn sandbox() -> &'static str {
    if Layer::ALL.iter().all(|&layer| missing(layer).is_none()) {
        "strict"
    } else {
        "best-effort"
    }
}

#[test]
fn inspect_shows_the_handshake_manifest_and_sandbox_and_stops_the_plugin_gracefully() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let plugin = dir.path().join("test-plugin");
    std::fs::copy(TEST_PLUGIN, &plugin).expect("staging the plugin");
    std::fs::write(
        dir.path().join("plugin.toml"),
        "name = \"test-plugin\"\nversion = \"0.3.0\"\nprotocol_version = 1\n\
         capabilities = [\"read:docs/**\", \"env:HOME\"]\n",
    )
    .expect("writing its manifest");

    let output = inspect(&plugin, &["--sandbox", sandbox(), "--versions", "3,1"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}{err}");
    for expected in [
        "core protocol version: 1",
        "app protocol version:  1 (offered: 3, 1)",
        "network:               unix",
        "health:                SERVING",
        "name:         test-plugin",
        "version:      0.3.0",
        "requests:     read:docs/**, env:HOME",
        &format!("sandbox ({})", sandbox()),
        "not listed: the plugin does not serve gRPC reflection",
        "stopped: Graceful",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    for layer in Layer::ALL {
        let state = if missing(layer).is_none() {
            "on "
        } else {
            "OFF"
        };
        assert!(
            text.contains(&format!("{state} {layer}")),
            "{layer} {state} in\n{text}"
        );
    }
    // The socket the plugin served on is gone with it.
    let address = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("address:"))
        .expect("its address")
        .trim();
    assert!(!Path::new(address).exists(), "{address} is left behind");
}

#[test]
fn inspect_says_when_there_is_no_manifest_and_when_the_plugin_cannot_start() {
    let output = inspect(Path::new(TEST_PLUGIN), &["--sandbox", sandbox()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("manifest\n  none ("), "{text}");

    // No version in common: it cannot start, which is exit code 2 with the reason.
    let output = inspect(Path::new(TEST_PLUGIN), &["--versions", "99"]);
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("error: could not start the plugin")
            && err.contains("no app protocol version in common"),
        "{err}"
    );
}

#[test]
fn inspect_shows_the_binarys_digest_and_refuses_one_that_is_not_the_pinned_one() {
    let digest = tether_host::Sha256::of_file(Path::new(TEST_PLUGIN)).expect("hash");
    let output = inspect(
        Path::new(TEST_PLUGIN),
        &["--sandbox", sandbox(), "--sha256", &digest.to_string()],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "sha256:                {digest} (verified: the pinned digest)"
        )),
        "{text}"
    );

    // Another digest pinned: not started, exit code 2, both digests named.
    let other = tether_host::Sha256::of(b"another binary");
    let output = inspect(
        Path::new(TEST_PLUGIN),
        &["--sandbox", sandbox(), "--sha256", &other.to_string()],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("its SHA-256 is {digest}, but {other} is pinned")),
        "{err}"
    );

    // Not a digest: a usage error, before anything starts.
    let output = inspect(Path::new(TEST_PLUGIN), &["--sha256", "12ab"]);
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("is not a SHA-256 digest"), "{err}");
}
