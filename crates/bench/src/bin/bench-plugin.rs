//! The benchmark plugin: answers pings, and makes host-service calls on request, timing
//! them where they happen (see `crates/bench/proto/tether/bench/v1`).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{HandshakeConfig, Host, HostFiles, Plugin, Routes};

use crate::contract::bench_server::{Bench, BenchServer};
use crate::contract::{
    HostCallsRequest, HostCallsResponse, HostLoadRequest, HostLoadResponse, PingRequest,
    PingResponse, TransferRequest, TransferResponse,
};

#[path = "../contract.rs"]
mod contract;

/// The benchmark's handshake.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_BENCH_PLUGIN", "bench");

/// The variable the host grants for host-service calls.
const VARIABLE: &str = "PATH";

struct Service {
    host: Host,
}

impl Service {
    fn files(&self) -> Result<HostFiles, Status> {
        Ok(self.host.files()?)
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl Bench for Service {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            payload: request.into_inner().payload,
        }))
    }

    async fn host_calls(
        &self,
        request: Request<HostCallsRequest>,
    ) -> Result<Response<HostCallsResponse>, Status> {
        let HostCallsRequest { warmup, calls } = request.into_inner();
        let files = self.files()?;
        for _ in 0..warmup {
            files.get_env(VARIABLE).await?;
        }
        let mut latencies = Vec::with_capacity(calls as usize);
        for _ in 0..calls {
            let began = Instant::now();
            files.get_env(VARIABLE).await?;
            latencies.push(nanos(began.elapsed()));
        }
        Ok(Response::new(HostCallsResponse { nanos: latencies }))
    }

    async fn host_load(
        &self,
        request: Request<HostLoadRequest>,
    ) -> Result<Response<HostLoadResponse>, Status> {
        let HostLoadRequest {
            concurrency,
            millis,
        } = request.into_inner();
        let files = self.files()?;
        let calls = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let began = Instant::now();
        let until = began + Duration::from_millis(millis);
        let workers = (0..concurrency.max(1)).map(|_| {
            let (files, calls, errors) = (files.clone(), Arc::clone(&calls), Arc::clone(&errors));
            tokio::spawn(async move {
                while Instant::now() < until {
                    match files.get_env(VARIABLE).await {
                        Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        });
        futures_util::future::join_all(workers).await;
        Ok(Response::new(HostLoadResponse {
            calls: calls.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            nanos: nanos(began.elapsed()),
        }))
    }

    async fn transfer(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<Response<TransferResponse>, Status> {
        let TransferRequest {
            path,
            bytes,
            chunk,
            bulk,
        } = request.into_inner();
        let files = self.files()?;
        if bulk {
            // In bulk: the bytes are made as they are written, straight into the shared
            // memory; the file handed over is read into a 1 MiB buffer, as the floor does.
            let mut source = tokio::io::AsyncReadExt::take(tokio::io::repeat(0x5a), bytes);
            let began = Instant::now();
            let written = files.write_file_from(&path, 0o644, &mut source).await?;
            let write_nanos = nanos(began.elapsed());
            // The file the host hands over, read as the disk floor reads it: into a
            // page-aligned block of 1 MiB.
            let began = Instant::now();
            let file = files.open_file(&path).await?;
            let read = tokio::task::spawn_blocking(move || {
                let (mut file, mut storage, mut read) = (file, vec![0u8; (1 << 20) + 4096], 0u64);
                let start = storage.as_ptr().align_offset(4096);
                let block = &mut storage[start..start + (1 << 20)];
                loop {
                    match std::io::Read::read(&mut file, block) {
                        Ok(0) => return Ok(read),
                        Ok(n) => read += n as u64,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(err),
                    }
                }
            })
            .await
            .map_err(|err| Status::internal(err.to_string()))?
            .map_err(|err| Status::internal(err.to_string()))?;
            let read_nanos = nanos(began.elapsed());
            return Ok(Response::new(TransferResponse {
                written,
                read,
                write_nanos,
                read_nanos,
                peak_rss_kib: peak_rss_kib(),
            }));
        }
        let chunk = u64::from(chunk.max(1));
        let count = bytes.div_ceil(chunk);
        // Chunks are made as they are sent: the plugin never holds the whole file.
        let chunks = futures_util::stream::iter(0..count).map(move |i| {
            let len = chunk.min(bytes - i * chunk);
            vec![0x5a; usize::try_from(len).unwrap_or(0)]
        });
        let began = Instant::now();
        let written = files.write_file_stream(&path, 0o644, chunks).await?;
        let write_nanos = nanos(began.elapsed());
        let began = Instant::now();
        let mut stream = files.read_file(&path).await?;
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            read += chunk?.len() as u64;
        }
        let read_nanos = nanos(began.elapsed());
        Ok(Response::new(TransferResponse {
            written,
            read,
            write_nanos,
            read_nanos,
            peak_rss_kib: peak_rss_kib(),
        }))
    }
}

/// This process's peak resident memory, KiB (a sandboxed plugin cannot read `/proc`).
fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}

fn main() -> ExitCode {
    let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    plugin
        .version(1, Routes::new(BenchServer::new(Service { host })))
        .run()
}
