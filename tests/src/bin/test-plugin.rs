//! A well-behaved tether plugin serving `tether.testing.v1.Testing`, for end-to-end tests.
//!
//! Arguments: `--versions 1,2` (the app protocol versions it serves, default `1`);
//! `--host-services` (opts in to host services: `CallHost` calls the host's `HostTesting`);
//! `--ignore-shutdown` (after a graceful stop, stays alive and ignores SIGTERM, so the host
//! must kill it); `sleep-forever` (used for the child it spawns).

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_broker::Served;
use tether_plugin_sdk::protocol::testing::host_testing_client::HostTestingClient;
use tether_plugin_sdk::protocol::testing::testing_server::{Testing, TestingServer};
use tether_plugin_sdk::protocol::testing::*;
use tether_plugin_sdk::tonic::metadata::MetadataValue;
use tether_plugin_sdk::tonic::transport::Channel;
use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{Broker, HandshakeConfig, HostServices, Plugin, Routes};
use tracing::level_filters::LevelFilter;

/// The cookie the end-to-end tests use.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e");

#[derive(Clone)]
struct Service {
    version: u32,
    /// Present when started with `--host-services`.
    host: Option<HostServices<HostTestingClient<Channel>>>,
    broker: Broker,
    /// Endpoints served for the host with `ServeBrokered`, kept alive.
    served: Arc<Mutex<Vec<Served>>>,
}

#[tonic::async_trait]
impl Testing for Service {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            message: request.into_inner().message,
            protocol_version: self.version,
        }))
    }

    async fn print(
        &self,
        request: Request<PrintRequest>,
    ) -> Result<Response<PrintResponse>, Status> {
        let request = request.into_inner();
        print!("{}", request.stdout);
        for _ in 0..request.repeat {
            print!("{}", request.stdout);
        }
        eprint!("{}", request.stderr);
        let _ = std::io::stdout().flush();
        Ok(Response::new(PrintResponse {}))
    }

    async fn log(&self, _request: Request<LogRequest>) -> Result<Response<LogResponse>, Status> {
        tracing::trace!(n = 0, "a trace line");
        tracing::debug!(n = 1, "a debug line");
        tracing::info!(n = 2, "an info line");
        tracing::warn!(n = 3, "a warn line");
        tracing::error!(n = 4, "an error line");
        Ok(Response::new(LogResponse {}))
    }

    async fn spawn_child(
        &self,
        _request: Request<SpawnChildRequest>,
    ) -> Result<Response<SpawnChildResponse>, Status> {
        let exe = std::env::current_exe().map_err(|e| Status::internal(e.to_string()))?;
        #[allow(
            clippy::disallowed_methods,
            clippy::zombie_processes,
            reason = "the host kills it with the process group; this test plugin forks a child to prove the host cleans up its process group"
        )]
        let child = std::process::Command::new(exe)
            .arg("sleep-forever")
            .spawn()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(SpawnChildResponse { pid: child.id() }))
    }

    async fn call_host(
        &self,
        request: Request<CallHostRequest>,
    ) -> Result<Response<CallHostResponse>, Status> {
        let CallHostRequest { count, claim } = request.into_inner();
        let host = self.host.as_ref().ok_or_else(|| {
            Status::failed_precondition("this test plugin was started without --host-services")
        })?;
        let mut seen_as = String::new();
        for _ in 0..count {
            let mut call = Request::new(WhoAmIRequest {
                claimed_name: claim.clone(),
            });
            if let Ok(value) = MetadataValue::try_from(claim.as_str()) {
                // A lie the host must not believe.
                call.metadata_mut().insert("x-plugin-name", value);
            }
            seen_as = host.client()?.who_am_i(call).await?.into_inner().plugin;
        }
        Ok(Response::new(CallHostResponse {
            calls: count,
            seen_as,
        }))
    }

    async fn serve_brokered(
        &self,
        _request: Request<ServeBrokeredRequest>,
    ) -> Result<Response<ServeBrokeredResponse>, Status> {
        let id = self.broker.next_id();
        let served = self
            .broker
            .accept_and_serve(id, Routes::new(TestingServer::new(self.clone())))
            .await
            .map_err(|err| Status::internal(err.to_string()))?;
        self.served
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?
            .push(served);
        Ok(Response::new(ServeBrokeredResponse { broker_id: id }))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sleep-forever") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let versions: Vec<u32> = args
        .iter()
        .position(|a| a == "--versions")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1]);
    let plugin = Plugin::new(HANDSHAKE).log_level(LevelFilter::TRACE);
    let (mut plugin, host) = if args.iter().any(|a| a == "--host-services") {
        let (plugin, host) = plugin.with_host_services(HostTestingClient::new);
        (plugin, Some(host))
    } else {
        (plugin, None)
    };
    let served = Arc::default();
    for version in versions {
        let service = Service {
            version,
            host: host.clone(),
            broker: plugin.broker(),
            served: Arc::clone(&served),
        };
        plugin = plugin.version(version, Routes::new(TestingServer::new(service)));
    }
    let code = plugin.run();
    if args.iter().any(|a| a == "--ignore-shutdown") {
        // The SDK's SIGTERM handler stays installed: SIGTERM no longer stops the process.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    code
}
