//! A host process for tests that kill the host: starts one test plugin, prints
//! `plugin-pid <pid>` on stdout, then waits to be killed.

use std::time::Duration;

use anyhow::Context;
use tether_host::{HandshakeConfig, PluginClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let program = std::env::args()
        .nth(1)
        .context("usage: host-helper <test-plugin path>")?;
    let plugin = PluginClient::builder("helper-child", program)
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
        .start()
        .await?;
    println!("plugin-pid {}", plugin.pid());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
