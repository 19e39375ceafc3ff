//! A second process for tests.
//!
//! - `host-helper <test-plugin path>`: a host for tests that kill the host; starts one test
//!   plugin, prints `plugin-pid <pid>` on stdout, then waits to be killed.
//! - `host-helper dial <socket>`: a foreign local process (neither host nor plugin) that
//!   tries to call `HostTesting.WhoAmI` on a plugin's host-service socket; prints
//!   `answered <plugin>` and exits 0, or `refused: <error>` and exits 3.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tether_broker::Peer;
use tether_host::{HandshakeConfig, PluginClient};
use tether_plugin_sdk::protocol::testing::WhoAmIRequest;
use tether_plugin_sdk::protocol::testing::host_testing_client::HostTestingClient;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, socket] if mode == "dial" => Ok(dial(Path::new(socket)).await),
        [program] => host(program).await,
        _ => anyhow::bail!("usage: host-helper <test-plugin path> | host-helper dial <socket>"),
    }
}

async fn host(program: &str) -> anyhow::Result<ExitCode> {
    let plugin = PluginClient::builder("helper-child", program)
        .handshake(HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e"))
        .start()
        .await
        .context("starting the test plugin")?;
    println!("plugin-pid {}", plugin.pid());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn dial(socket: &Path) -> ExitCode {
    let attempt = async {
        let channel = tether_broker::unix::connect(socket, Peer::SameUser).await?;
        let answer = HostTestingClient::new(channel)
            .who_am_i(WhoAmIRequest {
                claimed_name: "intruder".into(),
            })
            .await?;
        anyhow::Ok(answer.into_inner().plugin)
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(plugin)) => {
            println!("answered {plugin}");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            println!("refused: {err:#}");
            ExitCode::from(3)
        }
        Err(_) => {
            println!("refused: no answer within 10 s");
            ExitCode::from(3)
        }
    }
}
