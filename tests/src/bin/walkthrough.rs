//! `cargo xtask demo` until the filelister/colorlister demo lands: a walkthrough of one
//! plugin's lifecycle with real processes, printed step by step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tether_host::{HandshakeConfig, PluginClient};
use tether_plugin_sdk::protocol::testing::testing_client::TestingClient;
use tether_plugin_sdk::protocol::testing::{EchoRequest, LogRequest, PrintRequest};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e");

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask demo`, which builds it",
        path.display()
    );
    Ok(path)
}

fn step(text: &str) {
    println!("\n==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only_tether = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("tether", LevelFilter::TRACE);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_filter(only_tether),
        )
        .init();
    println!("tether lifecycle walkthrough (the filelister/colorlister demo is not built yet)");

    step("Start a plugin: host accepts app protocol versions [2, 3], the plugin serves [1, 2]");
    let started = Instant::now();
    let plugin = PluginClient::builder("greeter", sibling("test-plugin")?)
        .args(["--versions", "1,2"])
        .handshake(HANDSHAKE)
        .protocol_versions(&[2, 3])
        .start()
        .await?;
    println!(
        "    started pid {} in {:?}: negotiated version {}, socket directory {}",
        plugin.pid(),
        started.elapsed(),
        plugin.protocol_version(),
        plugin
            .socket_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    );

    step("Call the plugin's own gRPC service");
    let mut testing = TestingClient::new(plugin.channel());
    let reply = testing
        .echo(EchoRequest {
            message: "hello, plugin".into(),
        })
        .await?
        .into_inner();
    println!(
        "    Echo -> {:?} (served by its v{} services)",
        reply.message, reply.protocol_version
    );

    step("The plugin prints with println!: it arrives over the stdio stream (tether::stdio)");
    testing
        .print(PrintRequest {
            stdout: "a line the plugin printed on stdout\n".into(),
            stderr: "a line the plugin printed on stderr\n".into(),
            repeat: 0,
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    step("The plugin logs with tracing: each line keeps its level and fields (tether::plugin)");
    testing.log(LogRequest {}).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    step("A misbehaving plugin that exits before its handshake gets a clear error at once");
    let started = Instant::now();
    match PluginClient::builder("broken", sibling("bad-plugin")?)
        .arg("exit-early")
        .start()
        .await
    {
        Ok(_) => anyhow::bail!("the broken plugin started"),
        Err(err) => println!("    after {:?}: {err}", started.elapsed()),
    }

    step("Shut down: Shutdown RPC, then SIGTERM, then SIGKILL of the process group if needed");
    let exit = plugin.shutdown().await?;
    println!("    stopped: {:?}, {}", exit.stop, exit.status);
    println!("\nDone. Run `cargo xtask test` for the full test suite.");
    Ok(())
}
