//! The go-plugin conformance matrix: each go-plugin release of `go::VERSIONS` × role (a
//! tether host running the Go `kvplugin` and `counterplugin`; the Go `gohost` running
//! tether's `kv-plugin` and `counter-plugin`) × AutoMTLS off/on × broker multiplexing
//! off/on. Every cell is its own test, named
//! `interop::matrix::<release>::<role>_<plugin>::<features>`, and every counter cell
//! makes callbacks through the broker.
//!
//! A cell runs, or is listed (on stderr, and in the skip record `cargo xtask test` counts
//! apart from passes) with why the release cannot do it (`Unsupported`), and is still run
//! far enough to check that reason.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tether_host::{PluginBuilder, Stop};
use tether_plugin_sdk::Routes;
use tether_plugin_sdk::tonic::Code;
use tether_test_contract::interop::add_helper_server::AddHelperServer;
use tether_test_contract::interop::counter_client::CounterClient;
use tether_test_contract::interop::kv_client::KvClient;
use tether_test_contract::interop::{CounterGetRequest, CounterPutRequest, GetRequest, PutRequest};
use tracing::Level;

use super::go::{self, GoPlugin};
use super::{Adder, COUNTER_PLUGIN, KV_PLUGIN, go_plugin, plugin_pid, run_go_host};
use crate::support::{PATIENCE, eventually, is_gone, recorded, skip};

/// Who hosts whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A tether host runs the Go plugins.
    TetherHost,
    /// The Go host runs tether's plugins.
    GoHost,
}

/// Which plugin: the key-value store, or the counter that calls back the host's
/// `AddHelper` through the broker on every Put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Kv,
    Counter,
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug)]
struct Cell {
    release: &'static GoPlugin,
    role: Role,
    kind: Kind,
    auto_mtls: bool,
    multiplex: bool,
}

impl Cell {
    fn name(&self) -> String {
        let role = match (self.role, self.kind) {
            (Role::TetherHost, Kind::Kv) => "tether_host_go_kv",
            (Role::TetherHost, Kind::Counter) => "tether_host_go_counter",
            (Role::GoHost, Kind::Kv) => "go_host_tether_kv",
            (Role::GoHost, Kind::Counter) => "go_host_tether_counter",
        };
        let features = match (self.auto_mtls, self.multiplex) {
            (false, false) => "plain",
            (true, false) => "automtls",
            (false, true) => "multiplex",
            (true, true) => "automtls_multiplex",
        };
        format!("{}::{role}::{features}", self.release.dir)
    }

    /// The Go host's environment that asks for this cell's features.
    fn go_host_env(&self) -> Vec<(&'static str, &'static str)> {
        let mut env = Vec::new();
        if self.auto_mtls {
            env.push(("TETHER_TEST_AUTOMTLS", "1"));
        }
        if self.multiplex {
            env.push(("TETHER_TEST_MULTIPLEX", "1"));
        }
        env
    }
}

/// Whether a cell runs, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Runs,
    /// The go-plugin release cannot do it.
    Unsupported(String),
}

fn verdict(cell: &Cell) -> Verdict {
    let release = cell.release;
    if cell.auto_mtls && !release.auto_mtls {
        return Verdict::Unsupported(format!("go-plugin {} has no AutoMTLS", release.version));
    }
    if cell.multiplex && !release.multiplex {
        return Verdict::Unsupported(format!(
            "go-plugin {} has no GRPCBrokerMultiplex (broker multiplexing came in 1.6)",
            release.version
        ));
    }
    if cell.auto_mtls
        && cell.role == Role::TetherHost
        && cell.kind == Kind::Counter
        && !release.plugin_dials_host_with_mtls
    {
        return Verdict::Unsupported(format!(
            "a go-plugin {} plugin cannot dial its host through the broker under AutoMTLS: \
             it verifies the host's certificate against no roots (fixed in 1.4.4)",
            release.version
        ));
    }
    Verdict::Runs
}

/// Every cell, in table order.
fn every_cell() -> Vec<Cell> {
    let mut cells = Vec::new();
    for release in go::VERSIONS {
        for (role, kind) in [
            (Role::TetherHost, Kind::Kv),
            (Role::TetherHost, Kind::Counter),
            (Role::GoHost, Kind::Kv),
            (Role::GoHost, Kind::Counter),
        ] {
            for (auto_mtls, multiplex) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                cells.push(Cell {
                    release,
                    role,
                    kind,
                    auto_mtls,
                    multiplex,
                });
            }
        }
    }
    cells
}

/// The whole table, printed, and the cells that must run whatever tether lacks: every
/// release, both roles, both plugins, without the optional features.
#[test]
fn table() {
    let cells = every_cell();
    let mut lines = Vec::new();
    for cell in &cells {
        let verdict = match verdict(cell) {
            Verdict::Runs => "runs".to_owned(),
            Verdict::Unsupported(why) => format!("unsupported: {why}"),
        };
        lines.push(format!("{:<52} {verdict}", cell.name()));
    }
    eprintln!("go-plugin conformance matrix:\n{}", lines.join("\n"));
    assert_eq!(cells.len(), go::VERSIONS.len() * 16);
    for cell in cells
        .iter()
        .filter(|cell| !cell.auto_mtls && !cell.multiplex)
    {
        assert_eq!(verdict(cell), Verdict::Runs, "{}", cell.name());
    }
    // What a release lacks: multiplexing before 1.6, and before 1.4.4 a plugin's dial of
    // its host through the broker under AutoMTLS. 1.0.1 already has AutoMTLS.
    for cell in &cells {
        if let Verdict::Unsupported(why) = verdict(cell) {
            assert!(
                (cell.multiplex && !cell.release.multiplex)
                    || (cell.auto_mtls
                        && cell.kind == Kind::Counter
                        && cell.role == Role::TetherHost
                        && !cell.release.plugin_dials_host_with_mtls),
                "{}: {why}",
                cell.name()
            );
        }
    }
    // Everything else runs: tether speaks AutoMTLS and multiplexing in both roles.
    let running = cells
        .iter()
        .filter(|cell| verdict(cell) == Verdict::Runs)
        .count();
    assert_eq!(running, 47, "cells that run");
}

/// Runs `cell`, or checks and records why it does not run.
async fn run(cell: Cell) {
    const WHAT: &str = "this cell of the go-plugin matrix";
    match verdict(&cell) {
        Verdict::Runs => match cell.role {
            Role::TetherHost => match cell.kind {
                Kind::Kv => tether_host_runs_go_kv(&cell).await,
                Kind::Counter => tether_host_runs_go_counter(&cell).await,
            },
            Role::GoHost => go_host_runs_tether_plugin(&cell),
        },
        Verdict::Unsupported(why) => {
            match cell.role {
                Role::GoHost => go_host_refuses(&cell, &why),
                Role::TetherHost if cell.release.multiplex || !cell.multiplex => {
                    go_plugin_cannot_dial_the_host_under_mtls(&cell).await;
                }
                Role::TetherHost => {}
            }
            skip(WHAT, &format!("unsupported: {why}"));
        }
    }
}

/// A Go plugin under a tether host, with the cell's features.
fn tether_host(cell: &Cell, name: &str, program: &str) -> PluginBuilder {
    go_plugin(name, cell.release, program)
        .auto_mtls(cell.auto_mtls)
        .multiplex(cell.multiplex)
}

/// The working directory a sandboxed plugin may write, where the Go `kvplugin` keeps its
/// values: its private data directory (`PluginBuilder::data_dir`), removed with the
/// returned handle.
fn working_dir(builder: PluginBuilder) -> (PluginBuilder, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a data directory for the Go plugin");
    (builder.data_dir(dir.path()), dir)
}

async fn tether_host_runs_go_kv(cell: &Cell) {
    let name = format!("go-kv-{}", cell.name());
    let (builder, dir) = working_dir(tether_host(cell, &name, "kvplugin"));
    let plugin = builder
        .start()
        .await
        .expect("the Go plugin starts (1.0.1 has no GRPCStdio, which the host tolerates)");
    plugin.health().await.expect("health");
    let mut kv = KvClient::new(plugin.channel());
    let put = kv
        .put(PutRequest {
            key: "greeting".into(),
            value: b"hello from rust".to_vec(),
        })
        .await;
    let mut expected = vec![
        (Level::TRACE, "starting"),
        (Level::WARN, "get of a missing key"),
    ];
    put.expect("put: the Go plugin writes kv_greeting in its working directory");
    let value = kv
        .get(GetRequest {
            key: "greeting".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .value;
    assert_eq!(value, b"hello from rust");
    assert_eq!(
        std::fs::read(dir.path().join("kv_greeting")).expect("the file the Go plugin wrote"),
        b"hello from rust"
    );
    expected.extend([
        (Level::INFO, "stored a value"),
        (Level::DEBUG, "read a value"),
    ]);
    let missing_key = kv
        .get(GetRequest {
            key: "missing".into(),
        })
        .await
        .expect_err("a missing key is an error");
    assert_eq!(missing_key.code(), Code::NotFound, "{missing_key}");
    assert!(missing_key.message().contains("missing"), "{missing_key}");

    // hclog's JSON lines arrive as events at the level the Go plugin logged them.
    let arrived = eventually(PATIENCE, || {
        let events = recorded(&name);
        expected.iter().all(|(level, message)| {
            events
                .iter()
                .any(|e| e.target == "tether::plugin" && e.level == *level && e.message == *message)
        })
    })
    .await;
    let events: Vec<_> = recorded(&name)
        .into_iter()
        .filter(|e| e.target == "tether::plugin")
        .map(|e| (e.level, e.message, e.fields))
        .collect();
    assert!(arrived, "{expected:?} in {events:#?}");

    // Releases before 1.4 have no GRPCStdio: the host noticed, and carried on.
    let noticed = recorded(&name)
        .iter()
        .any(|e| e.message.contains("does not mirror its stdio"));
    assert_eq!(noticed, !cell.release.grpc_stdio, "{events:#?}");

    // Graceful shutdown through go-plugin's controller, and nothing left running.
    let pid = plugin.pid();
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
    assert!(is_gone(pid));
}

async fn tether_host_runs_go_counter(cell: &Cell) {
    let name = format!("go-counter-{}", cell.name());
    let plugin = tether_host(cell, &name, "counterplugin")
        .start()
        .await
        .expect("the Go plugin starts");
    let adder = Arc::new(Adder::default());
    let mut counter = CounterClient::new(plugin.channel());
    for value in [3, 4] {
        // go-plugin dials each broker id once: serve the helper under a fresh id per Put.
        let broker = plugin.broker().expect("a started plugin has a broker");
        let id = broker.next_id();
        let _served = broker
            .accept_and_serve(
                id,
                Routes::new(AddHelperServer::from_arc(Arc::clone(&adder))),
            )
            .await
            .expect("serve AddHelper on the broker");
        counter
            .put(CounterPutRequest {
                add_server: id,
                key: "apples".into(),
                value,
            })
            .await
            .expect("put: the Go plugin dials the host's AddHelper");
    }
    let total = counter
        .get(CounterGetRequest {
            key: "apples".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .value;
    assert_eq!(total, 7);
    assert_eq!(
        adder.calls.load(Ordering::SeqCst),
        2,
        "one callback per Put"
    );

    let pid = plugin.pid();
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
    assert!(is_gone(pid));
}

/// An old Go plugin under AutoMTLS starts and answers, but its dial of the host's brokered
/// endpoint fails its own certificate check: the cell is unsupported for that reason, and
/// this checks that it is that reason.
async fn go_plugin_cannot_dial_the_host_under_mtls(cell: &Cell) {
    let name = format!("go-counter-{}", cell.name());
    let plugin = tether_host(cell, &name, "counterplugin")
        .start()
        .await
        .expect("the Go plugin starts with AutoMTLS");
    plugin.health().await.expect("health over TLS");
    let broker = plugin.broker().expect("a started plugin has a broker");
    let id = broker.next_id();
    let _served = broker
        .accept_and_serve(id, Routes::new(AddHelperServer::new(Adder::default())))
        .await
        .expect("serve AddHelper on the broker");
    let refused = CounterClient::new(plugin.channel())
        .put(CounterPutRequest {
            add_server: id,
            key: "apples".into(),
            value: 1,
        })
        .await
        .expect_err("the old Go plugin's dial fails its certificate check");
    assert!(refused.message().contains("no roots provided"), "{refused}");
    plugin.shutdown().await.expect("shutdown");
}

/// The Go host built against the cell's release runs a tether plugin with the cell's
/// features, and says what it saw.
fn go_host_runs_tether_plugin(cell: &Cell) {
    let version = run_go_host(cell.release, &["version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("go-plugin {}", cell.release.version),
        "the Go host was built against the cell's release"
    );
    // The tether plugin's print reaches the Go host over GRPCStdio (go-plugin 1.1 and
    // later call StreamStdio; 1.0 does not).
    let stdio = if cell.release.grpc_stdio {
        "plugin stdout: kv-plugin stored greeting"
    } else {
        "plugin stdout: (no GRPCStdio before go-plugin 1.1)"
    };
    let (kind, plugin, expected) = match cell.kind {
        Kind::Kv => (
            "kv",
            KV_PLUGIN,
            vec![
                "get greeting = hello from go",
                "get missing: NotFound",
                stdio,
                "exited = true",
            ],
        ),
        Kind::Counter => (
            "counter",
            COUNTER_PLUGIN,
            vec![
                "get apples = 7",
                "host AddHelper calls = 2",
                "exited = true",
            ],
        ),
    };
    let output = run_go_host(cell.release, &[kind, plugin], &cell.go_host_env());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // go-plugin says this when Kill had to force the plugin.
    assert!(!stderr.contains("failed to exit gracefully"), "{stderr}");
    let pid = plugin_pid(&stdout);
    assert!(
        is_gone(pid),
        "the tether plugin outlived the Go host's Kill"
    );
    let lines: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(lines, expected, "{stderr}");
}

/// The Go host built against a release without the cell's feature refuses it, saying so,
/// with status 3, before it starts anything.
fn go_host_refuses(cell: &Cell, why: &str) {
    let output = run_go_host(cell.release, &["kv", KV_PLUGIN], &cell.go_host_env());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let field = if why.contains("AutoMTLS") {
        "AutoMTLS"
    } else {
        "GRPCBrokerMultiplex"
    };
    assert!(
        stderr.contains(&format!(
            "go-plugin {} has no {field}",
            cell.release.version
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "it started nothing");
}

/// One test per cell: `<release>::<role>_<plugin>::<features>`.
macro_rules! cells {
    ($($release:ident: $constant:ident),* $(,)?) => {$(
        mod $release {
            cells!(@role $constant, tether_host_go_kv, TetherHost, Kv);
            cells!(@role $constant, tether_host_go_counter, TetherHost, Counter);
            cells!(@role $constant, go_host_tether_kv, GoHost, Kv);
            cells!(@role $constant, go_host_tether_counter, GoHost, Counter);
        }
    )*};
    (@role $constant:ident, $module:ident, $role:ident, $kind:ident) => {
        mod $module {
            cells!(@cell $constant, $role, $kind, plain, false, false);
            cells!(@cell $constant, $role, $kind, automtls, true, false);
            cells!(@cell $constant, $role, $kind, multiplex, false, true);
            cells!(@cell $constant, $role, $kind, automtls_multiplex, true, true);
        }
    };
    (@cell $constant:ident, $role:ident, $kind:ident, $name:ident, $mtls:expr, $mux:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            use crate::interop::matrix::{Cell, Kind, Role, run};
            run(Cell {
                release: &crate::interop::go::$constant,
                role: Role::$role,
                kind: Kind::$kind,
                auto_mtls: $mtls,
                multiplex: $mux,
            })
            .await;
        }
    };
}

cells!(v1_0_1: V1_0_1, v1_4_10: V1_4_10, v1_6_3: V1_6_3, v1_8_0: V1_8_0);
