//! `tether inspect` on real Go plugins built with go-plugin: the services it lists through
//! gRPC server reflection, which go-plugin registers on every plugin's server since 1.4,
//! and what it says for a plugin without it (go-plugin 1.0.1). A Go interop test, skipped
//! with the others where Go is missing.

use std::path::Path;
use std::process::Output;

use crate::cli::inspect_with;
use crate::interop::go::{self, GoPlugin, VERSIONS};

/// Runs `tether inspect` on `plugin` with go-plugin's example handshake, which the Go
/// fixtures use. A plugin built with go-plugin makes a temporary file where it binds its
/// socket: allowed in its socket directory, under every layer this kernel offers.
fn inspect(plugin: &Path) -> Output {
    inspect_with(
        plugin,
        "BASIC_PLUGIN=hello",
        &["--sandbox", "best-effort", "--socket-dir-files"],
    )
}

/// What inspect prints under `gRPC services`, one entry a line, up to the next heading.
fn services(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|line| *line != "gRPC services")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(str::trim)
        .collect()
}

/// Whether go-plugin `release` registers gRPC reflection on its plugins' servers.
fn serves_reflection(release: &GoPlugin) -> bool {
    release.version != go::V1_0_1.version
}

#[test]
fn inspect_lists_a_go_plugins_services_by_grpc_reflection() {
    for release in VERSIONS {
        let plugin = go::bin(release, "kvplugin");
        let output = inspect(&plugin);
        let text = String::from_utf8_lossy(&output.stdout);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "go-plugin {}: {text}{err}",
            release.version
        );
        assert!(
            text.contains("health:                SERVING") && text.contains("stopped: Graceful"),
            "go-plugin {}: {text}",
            release.version
        );
        let listed = services(&text);
        if serves_reflection(release) {
            // Sorted by name: the plugin's own service, gRPC's health and reflection
            // services, and go-plugin's internal ones.
            let mut expected = vec![
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "plugin.GRPCBroker",
                "plugin.GRPCController",
            ];
            if release.grpc_stdio {
                expected.push("plugin.GRPCStdio");
            }
            expected.push("proto.KV");
            assert_eq!(listed, expected, "go-plugin {}: {text}", release.version);
        } else {
            assert_eq!(
                listed,
                ["not listed: the plugin does not serve gRPC reflection"],
                "go-plugin {}: {text}",
                release.version
            );
        }
    }
}
