//! A well-behaved tether plugin serving `tether.testing.v1.Testing`, for end-to-end tests.
//!
//! Arguments: `--versions 1,2` (the app protocol versions it serves, default `1`);
//! `--host-services` or `--host-files` (opts in to host services, one connection for both:
//! `CallHost` calls the host's `HostTesting` on it, `HostOp` tether's host services);
//! `--host-message-limit N` (the largest message to or from tether's host services);
//! `--ignore-shutdown` (after a graceful stop, stays alive and ignores SIGTERM, so the host
//! must kill it); `sleep-forever` (used for the child it spawns).

#![allow(
    clippy::disallowed_types,
    reason = "a test plugin: some ops dial the host's sockets directly, as a hostile plugin would"
)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_broker::Served;
use tether_plugin_sdk::protocol::hostserve::files_client::FilesClient;
use tether_plugin_sdk::protocol::hostserve::{BulkEvent, ReadFileRequest, WriteFileBulkRequest};
use tether_plugin_sdk::tonic::metadata::MetadataValue;
use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{
    Broker, CallHost, FileChunks, HandshakeConfig, Host, HostCallError, HostChannel, Plugin, Routes,
};
use tether_test_contract::testing::host_tally_client::HostTallyClient;
use tether_test_contract::testing::host_testing_client::HostTestingClient;
use tether_test_contract::testing::testing_server::{Testing, TestingServer};
use tether_test_contract::testing::*;
use tether_transport::ring::{RingOffer, RingWriter};
use tracing::level_filters::LevelFilter;

/// The cookie the end-to-end tests use.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e");

#[derive(Clone)]
struct Service {
    version: u32,
    /// Present when started with `--host-services` or `--host-files`.
    host: Option<Host>,
    broker: Broker,
    /// Endpoints served for the host with `ServeBrokered`, kept alive.
    served: Arc<Mutex<Vec<Served>>>,
    /// `ReadFile` streams opened by `hold_reads` and not read yet.
    held: Arc<Mutex<Vec<FileChunks>>>,
    /// `WriteFileBulk` calls opened by `bulk_write_stall`, with their rings, never written.
    held_bulk: Arc<Mutex<Vec<HeldWrite>>>,
}

/// A `WriteFileBulk` opened by hand: its events, its ring and its request stream.
type RawWrite = (
    tonic::Streaming<BulkEvent>,
    RingOffer,
    tokio::sync::mpsc::Sender<WriteFileBulkRequest>,
);

/// A `WriteFileBulk` left hanging (see [`RawWrite`]).
type HeldWrite = RawWrite;

/// Opens a `WriteFileBulk` of `path` by hand, and takes its ring from the SDK's descriptor
/// channel.
async fn open_raw_write(
    raw: &FilesClient<HostChannel>,
    path: &[u8],
) -> Result<RawWrite, HostCallError> {
    let channel = tether_plugin_sdk::descriptor_channel()
        .ok_or_else(|| HostCallError::Invalid("no descriptor channel".into()))?;
    let (requests, outgoing) = tokio::sync::mpsc::channel(2);
    let _ = requests
        .send(WriteFileBulkRequest {
            path: path.to_vec(),
            ..WriteFileBulkRequest::default()
        })
        .await;
    let mut events = raw
        .clone()
        .write_file_bulk(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let first = events
        .message()
        .await?
        .ok_or_else(|| HostCallError::Invalid("no first event".into()))?;
    let take = |token| async move {
        channel
            .take(token, DESCRIPTOR_WAIT)
            .await
            .map_err(|err| HostCallError::Invalid(err.to_string()))
    };
    let offer = RingOffer {
        control: take(first.token).await?,
        memory: take(first.ring_token).await?,
        slots: first.slots,
        slot_size: first.slot_size,
    };
    Ok((events, offer, requests))
}

/// How long a raw bulk call waits for its descriptors.
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(30);

/// The outcome of a raw bulk call's last event: `ok <bytes>` or `<code>: <message>`.
async fn bulk_ending(events: &mut tonic::Streaming<BulkEvent>) -> String {
    loop {
        match events.message().await {
            Ok(Some(event)) if event.done => return format!("ok {}", event.bytes),
            Ok(Some(_)) => {}
            Ok(None) => return "ended without an outcome".to_owned(),
            Err(status) => return format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

/// A raw `WriteFileBulk` of `data` to `path`, ending as `ending` says: `confirm` (the end
/// and the true count), `lie` (the end with one byte too many) or `abandon` (the request
/// stream ends without the end). Returns the call's outcome.
async fn raw_bulk_write(
    raw: &FilesClient<HostChannel>,
    path: &[u8],
    data: &[u8],
    ending: &str,
) -> Result<String, HostCallError> {
    let (mut events, offer, requests) = open_raw_write(raw, path).await?;
    let mut ring = RingWriter::new(offer).map_err(|err| HostCallError::Invalid(err.to_string()))?;
    ring.write_from(&mut { data })
        .await
        .map_err(|err| HostCallError::Invalid(err.to_string()))?;
    ring.finish()
        .map_err(|err| HostCallError::Invalid(err.to_string()))?;
    let bytes = data.len() as u64;
    match ending {
        "confirm" | "lie" => {
            let _ = requests
                .send(WriteFileBulkRequest {
                    end: true,
                    bytes: if ending == "lie" { bytes + 1 } else { bytes },
                    ..WriteFileBulkRequest::default()
                })
                .await;
        }
        _ => {}
    }
    drop(requests);
    let ending = bulk_ending(&mut events).await;
    drop(ring);
    Ok(ending)
}

#[tonic::async_trait]
impl Testing for Service {
    type TicksStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Tick, Status>> + Send>>;

    async fn ticks(
        &self,
        request: Request<TickRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        // `x-panic-at: N`: the stream panics instead of sending tick N (a handler bug in a
        // response stream, which the SDK must turn into the stream's INTERNAL status).
        let panic_at: Option<u64> = request
            .metadata()
            .get("x-panic-at")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let every = Duration::from_millis(u64::from(request.into_inner().every_ms.max(1)));
        let ticks = futures_util::stream::unfold(0u64, move |n| async move {
            tokio::time::sleep(every).await;
            if panic_at == Some(n) {
                panic!("the tick stream broke at tick {n}");
            }
            Some((Ok(Tick { n }), n + 1))
        });
        Ok(Response::new(Box::pin(ticks)))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        // "grpc-timeout" is answered with the deadline the call arrived with ("" if none).
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let message = request.into_inner().message;
        Ok(Response::new(EchoResponse {
            message: if message == "grpc-timeout" {
                deadline
            } else {
                message
            },
            protocol_version: self.version,
        }))
    }

    async fn print(
        &self,
        request: Request<PrintRequest>,
    ) -> Result<Response<PrintResponse>, Status> {
        let request = request.into_inner();
        print!("{}", request.stdout);
        eprint!("{}", request.stderr);
        for _ in 0..request.repeat {
            print!("{}", request.stdout);
            eprint!("{}", request.stderr);
        }
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
            Status::failed_precondition(
                "this test plugin was started without --host-services or --host-files",
            )
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
            seen_as = host
                .client(HostTestingClient::new)?
                .who_am_i(call)
                .await?
                .into_inner()
                .plugin;
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

    async fn host_op(
        &self,
        request: Request<HostOpRequest>,
    ) -> Result<Response<HostOpResponse>, Status> {
        // Only `traced_read` uses this view: the other ops deliberately send no context.
        let call = self.host.as_ref().map(|host| host.for_call(&request));
        let request = request.into_inner();
        if request.op == "panic" {
            // A handler bug: the SDK must turn it into INTERNAL and keep serving.
            panic!("{}", String::from_utf8_lossy(&request.path));
        }
        let mut response = match self.run_host_op(&request, call.as_ref()).await {
            Ok(response) => response,
            Err(err) => failure(err),
        };
        response.peak_rss_kib = peak_rss_kib();
        Ok(Response::new(response))
    }
}

/// The outcome of a failed host-service call, by kind.
fn failure(err: HostCallError) -> HostOpResponse {
    let (outcome, capability) = match &err {
        HostCallError::Denied { capability, .. } => ("denied", capability.clone()),
        HostCallError::Confined(_) => ("denied", String::new()),
        HostCallError::Invalid(_) => ("invalid", String::new()),
        HostCallError::NotFound(_) => ("not_found", String::new()),
        HostCallError::AlreadyExists(_) => ("already_exists", String::new()),
        HostCallError::Exhausted(_) => ("exhausted", String::new()),
        HostCallError::TooLarge { .. } => ("too_large", String::new()),
        HostCallError::NotConnected(_) => ("not_connected", String::new()),
        HostCallError::Other { .. } => ("other", String::new()),
    };
    HostOpResponse {
        outcome: outcome.into(),
        message: err.to_string(),
        capability,
        ..HostOpResponse::default()
    }
}

fn poisoned() -> HostCallError {
    HostCallError::Invalid("a lock was poisoned".into())
}

/// This process's peak resident set size (VmHWM), from `getrusage`: a sandboxed plugin
/// cannot read `/proc`.
fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}

impl Service {
    async fn run_host_op(
        &self,
        request: &HostOpRequest,
        call: Option<&CallHost>,
    ) -> Result<HostOpResponse, HostCallError> {
        use futures_util::StreamExt;
        let ok = HostOpResponse {
            outcome: "ok".into(),
            ..HostOpResponse::default()
        };
        if request.op == "dial_broker" {
            let id = u32::try_from(request.size).unwrap_or(u32::MAX);
            return Ok(match self.broker.dial(id).await {
                Ok(_) => ok,
                Err(err) => HostOpResponse {
                    outcome: "other".into(),
                    message: err.to_string(),
                    ..HostOpResponse::default()
                },
            });
        }
        if request.op == "forge_host_lane" {
            // A hostile plugin on the lane its host calls it on: forges the count of bytes
            // it read from the host's ring, and answers. `names`: what it forged.
            return Ok(HostOpResponse {
                names: vec![forge_lane_count()?],
                ..ok
            });
        }
        if request.op == "own_env" {
            return Ok(HostOpResponse {
                names: std::env::vars_os()
                    .map(|(key, _)| key.to_string_lossy().into_owned())
                    .collect(),
                ..ok
            });
        }
        let host = self.host.as_ref().ok_or_else(|| {
            HostCallError::Invalid("started without --host-files or --host-services".into())
        })?;
        // The SDK's client, a raw one for requests the SDK would never send (forged
        // identities), and the channel itself (for calls whose request never ends).
        let files = host.files()?;
        let raw = host.client(FilesClient::new)?;
        let channel = host.client(|channel| channel)?;
        let path = request.path.clone();
        Ok(match request.op.as_str() {
            "claim_read" => {
                // Reads `path` claiming to be the plugin named in `data`, in the metadata
                // keys a naive host might trust.
                let claim = String::from_utf8_lossy(&request.data).into_owned();
                let mut call = Request::new(ReadFileRequest { path: path.clone() });
                for key in ["x-plugin-name", "tether-plugin", "plugin"] {
                    if let Ok(value) = MetadataValue::try_from(claim.as_str()) {
                        call.metadata_mut().insert(key, value);
                    }
                }
                let mut stream = raw.clone().read_file(call).await?.into_inner();
                let mut data = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    data.extend(chunk.data);
                }
                HostOpResponse { data, ..ok }
            }
            "tagged_read" => {
                // Reads `path` with the request id in `data`, as sent, well formed or not.
                let id = String::from_utf8_lossy(&request.data).into_owned();
                let mut call = Request::new(ReadFileRequest { path: path.clone() });
                if let Ok(value) = MetadataValue::try_from(id.as_str()) {
                    call.metadata_mut()
                        .insert(tether_plugin_sdk::protocol::REQUEST_ID_METADATA, value);
                }
                let mut stream = raw.clone().read_file(call).await?.into_inner();
                let mut data = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    data.extend(chunk.data);
                }
                HostOpResponse { data, ..ok }
            }
            "traced_read" => {
                // Logs inside the call, then reads `path` passing the caller's context on
                // (request id, deadline, trace under a new span id).
                tracing::info!(path = %String::from_utf8_lossy(&path), "traced read");
                let call = call.ok_or_else(|| HostCallError::Invalid("no host".into()))?;
                HostOpResponse {
                    data: call.files()?.read_file_to_vec(&path, 16 << 20).await?,
                    ..ok
                }
            }
            "traceparent_read" => {
                // Reads `path` with the traceparent in `data`, as sent, well formed or not.
                let traceparent = String::from_utf8_lossy(&request.data).into_owned();
                let mut call = Request::new(ReadFileRequest { path: path.clone() });
                if let Ok(value) = MetadataValue::try_from(traceparent.as_str()) {
                    call.metadata_mut()
                        .insert(tether_plugin_sdk::protocol::TRACEPARENT_METADATA, value);
                }
                let mut stream = raw.clone().read_file(call).await?.into_inner();
                let mut data = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    data.extend(chunk.data);
                }
                HostOpResponse { data, ..ok }
            }
            "read_dir" => HostOpResponse {
                names: files
                    .read_dir(&path)
                    .await?
                    .into_iter()
                    .map(|entry| entry.name)
                    .collect(),
                ..ok
            },
            "read_file" => HostOpResponse {
                data: files.read_file_to_vec(&path, 16 << 20).await?,
                ..ok
            },
            "read_stream" => {
                let mut stream = files.read_file(&path).await?;
                let mut size = 0u64;
                while let Some(chunk) = stream.next().await {
                    size += chunk?.len() as u64;
                }
                HostOpResponse { size, ..ok }
            }
            "write_file" => HostOpResponse {
                size: files.write_file(&path, &request.data).await?,
                ..ok
            },
            "write_chunk" => {
                let chunk = futures_util::stream::iter([request.data.clone()]);
                HostOpResponse {
                    size: files.write_file_stream(&path, 0o600, chunk).await?,
                    ..ok
                }
            }
            "write_zeros" => {
                const CHUNK: u64 = 64 * 1024;
                let total = request.size;
                let chunks = futures_util::stream::iter(0..total.div_ceil(CHUNK)).map(move |i| {
                    let len = CHUNK.min(total - i * CHUNK);
                    vec![0u8; usize::try_from(len).unwrap_or(0)]
                });
                HostOpResponse {
                    size: files.write_file_stream(&path, 0o644, chunks).await?,
                    ..ok
                }
            }
            "delete_file" => {
                files.delete_file(&path).await?;
                ok
            }
            "get_env" => {
                let name = String::from_utf8_lossy(&path).into_owned();
                match files.get_env(&name).await? {
                    Some(value) => HostOpResponse {
                        data: value.into_bytes(),
                        size: 1,
                        ..ok
                    },
                    None => ok,
                }
            }
            "create_dir" => {
                files.create_dir(&path).await?;
                ok
            }
            "tally_add" => {
                // The host's own service, on the same connection as the files.
                let mut tally = host.client(HostTallyClient::new)?;
                let name = String::from_utf8_lossy(&path).into_owned();
                let total = tally
                    .add(TallyRequest {
                        name,
                        amount: request.size,
                    })
                    .await?
                    .into_inner()
                    .total;
                HostOpResponse { size: total, ..ok }
            }
            "tally_flood" => {
                // `size` concurrent adds of 1 to `path`; `names` holds each outcome, as
                // `ok` or `<outcome>: <message>`.
                let tally = host.client(HostTallyClient::new)?;
                let name = String::from_utf8_lossy(&path).into_owned();
                let calls = (0..request.size).map(|_| {
                    let (mut tally, name) = (tally.clone(), name.clone());
                    async move {
                        match tally.add(TallyRequest { name, amount: 1 }).await {
                            Ok(_) => "ok".to_owned(),
                            Err(status) => {
                                let failed = failure(HostCallError::from(status));
                                format!("{}: {}", failed.outcome, failed.message)
                            }
                        }
                    }
                });
                HostOpResponse {
                    names: futures_util::future::join_all(calls).await,
                    ..ok
                }
            }
            "tally_hold" => {
                // `size` calls that answer only when the host lets them; returns at once.
                let tally = host.client(HostTallyClient::new)?;
                let name = String::from_utf8_lossy(&path).into_owned();
                for _ in 0..request.size {
                    let (mut tally, name) = (tally.clone(), name.clone());
                    tokio::spawn(async move {
                        let _ = tally.hold(TallyRequest { name, amount: 0 }).await;
                    });
                }
                ok
            }
            "stat" => {
                let stat = files.stat(&path).await?;
                HostOpResponse {
                    size: stat.size,
                    names: vec![format!("{:?}", stat.kind())],
                    ..ok
                }
            }
            "race_read" => {
                // Reads `path` until it has seen at least `size` successes and `size`
                // denials (the race met both ways), or `size * 2000` reads; reports every
                // distinct content and error seen, and the count of each.
                let mut seen = std::collections::BTreeMap::<String, u64>::new();
                let (mut successes, mut denials) = (0u64, 0u64);
                let limit = request.size.saturating_mul(2000);
                let mut reads = 0u64;
                while reads < limit && (successes < request.size || denials < request.size) {
                    reads += 1;
                    let key = match files.read_file_to_vec(&path, 1 << 16).await {
                        Ok(data) => {
                            successes += 1;
                            String::from_utf8_lossy(&data).into_owned()
                        }
                        Err(err) => {
                            let outcome = failure(err).outcome;
                            if outcome == "denied" {
                                denials += 1;
                            }
                            format!("error: {outcome}")
                        }
                    };
                    *seen.entry(key).or_default() += 1;
                }
                HostOpResponse {
                    names: seen
                        .into_iter()
                        .map(|(key, count)| format!("{count} {key}"))
                        .collect(),
                    size: reads,
                    ..ok
                }
            }
            "has_descriptor_channel" => HostOpResponse {
                size: u64::from(tether_plugin_sdk::descriptor_channel().is_some()),
                ..ok
            },
            "copy_file" => {
                // Through the SDK's copy_file_to (the open file, when the host started us).
                let mut data = Vec::new();
                let size = files.copy_file_to(&path, &mut data).await?;
                HostOpResponse { data, size, ..ok }
            }
            "copy_count" => {
                // Through the SDK's copy_file_to, into a sink that only counts.
                let size = files.copy_file_to(&path, &mut tokio::io::sink()).await?;
                HostOpResponse { size, ..ok }
            }
            "write_from" => {
                // Through the SDK's write_file_from: `data`, or `size` zeros if `data` is empty.
                let size = if request.data.is_empty() {
                    let mut zeros =
                        tokio::io::AsyncReadExt::take(tokio::io::repeat(0), request.size);
                    files.write_file_from(&path, 0o644, &mut zeros).await?
                } else {
                    files
                        .write_file_from(&path, 0o644, &mut request.data.as_slice())
                        .await?
                };
                HostOpResponse { size, ..ok }
            }
            "raw_bulk_read" => {
                // ReadFileBulk by hand: the file taken from the SDK's descriptor channel,
                // then read, and written to (which must fail: it is open read-only).
                use std::io::{Read, Write};
                let channel = tether_plugin_sdk::descriptor_channel()
                    .ok_or_else(|| HostCallError::Invalid("no descriptor channel".into()))?;
                let mut events = raw
                    .clone()
                    .read_file_bulk(ReadFileRequest { path: path.clone() })
                    .await?
                    .into_inner();
                let first = events
                    .message()
                    .await?
                    .ok_or_else(|| HostCallError::Invalid("no first event".into()))?;
                let fd = channel
                    .take(first.token, DESCRIPTOR_WAIT)
                    .await
                    .map_err(|err| HostCallError::Invalid(err.to_string()))?;
                let mut file = std::fs::File::from(fd);
                let mut data = Vec::new();
                file.read_to_end(&mut data)
                    .map_err(|err| HostCallError::Invalid(err.to_string()))?;
                let written = match file.write(b"overwritten") {
                    Ok(n) => format!("wrote {n} bytes"),
                    Err(err) => format!("write refused: {}", err.raw_os_error().unwrap_or(0)),
                };
                let ending = if first.done {
                    "done".to_owned()
                } else {
                    bulk_ending(&mut events).await
                };
                HostOpResponse {
                    size: first.size,
                    names: vec![ending, written],
                    data,
                    ..ok
                }
            }
            "raw_bulk_write" => {
                // WriteFileBulk by hand, ending as `data`'s first line says (confirm, lie,
                // abandon); the rest of `data` is written.
                let text = request.data.clone();
                let (ending, contents) = match text.iter().position(|b| *b == b'\n') {
                    Some(at) => (
                        String::from_utf8_lossy(&text[..at]).into_owned(),
                        &text[at + 1..],
                    ),
                    None => (
                        String::from_utf8_lossy(&text).into_owned(),
                        &text[text.len()..],
                    ),
                };
                HostOpResponse {
                    names: vec![raw_bulk_write(&raw, &path, contents, &ending).await?],
                    ..ok
                }
            }
            "bulk_write_stall" => {
                // Opens a WriteFileBulk, takes its ring and never sends through it or closes
                // it (until `drain_bulk`).
                let held = open_raw_write(&raw, &path).await?;
                self.held_bulk.lock().map_err(|_| poisoned())?.push(held);
                ok
            }
            "ring_abuse" => {
                // Tries to shrink the ring's memory under the host, then sends a record for
                // a slot the ring does not have; the outcome of each.
                use std::os::fd::AsFd;
                let (mut events, offer, _requests) = open_raw_write(&raw, &path).await?;
                let shrunk = match rustix::fs::ftruncate(&offer.memory, 0) {
                    Ok(()) => "shrunk".to_owned(),
                    Err(errno) => format!("shrink refused: {errno}"),
                };
                let ring = RingWriter::new(offer)
                    .map_err(|err| HostCallError::Invalid(err.to_string()))?;
                let record = [9u8, 0, 0, 0, 16, 0, 0, 0];
                let _ = rustix::net::send(ring.as_fd(), &record, rustix::net::SendFlags::empty());
                HostOpResponse {
                    names: vec![shrunk, bulk_ending(&mut events).await],
                    ..ok
                }
            }
            "drain_bulk" => {
                // The outcome of every held write.
                let held = std::mem::take(&mut *self.held_bulk.lock().map_err(|_| poisoned())?);
                let mut endings = Vec::new();
                for (mut events, _ring, _requests) in held {
                    endings.push(bulk_ending(&mut events).await);
                }
                HostOpResponse {
                    names: endings,
                    ..ok
                }
            }
            "push_into_channel" => {
                // Tries to send the host data and a descriptor on the descriptor channel,
                // whose host end only sends.
                use std::os::fd::AsFd;
                let channel = tether_plugin_sdk::descriptor_channel()
                    .ok_or_else(|| HostCallError::Invalid("no descriptor channel".into()))?;
                let (read, _write) =
                    rustix::pipe::pipe().map_err(|err| HostCallError::Invalid(err.to_string()))?;
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
                let fds = [read.as_fd()];
                control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
                let sent = rustix::net::sendmsg(
                    channel.as_fd(),
                    &[std::io::IoSlice::new(&[0xAB; 8])],
                    &mut control,
                    rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT,
                );
                HostOpResponse {
                    message: match sent {
                        Ok(n) => format!("sent {n} bytes"),
                        Err(errno) => format!("refused: {errno}"),
                    },
                    ..ok
                }
            }
            "hold_reads" => {
                // Opens `size` reads of `path` and never reads them (until `drain_held`).
                let mut outcomes = Vec::new();
                for _ in 0..request.size {
                    match files.read_file(&path).await {
                        Ok(stream) => {
                            self.held.lock().map_err(|_| poisoned())?.push(stream);
                            outcomes.push("ok".to_owned());
                        }
                        Err(err) => outcomes.push(failure(err).outcome),
                    }
                }
                HostOpResponse {
                    names: outcomes,
                    ..ok
                }
            }
            "drain_held" => {
                // Reads every held stream to its end: `<bytes> <outcome>: <message>` each.
                let held = std::mem::take(&mut *self.held.lock().map_err(|_| poisoned())?);
                let mut endings = Vec::new();
                for mut stream in held {
                    let mut size = 0;
                    let mut ending = "ok: complete".to_owned();
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(chunk) => size += chunk.len(),
                            Err(err) => {
                                let failed = failure(err);
                                ending = format!("{}: {}", failed.outcome, failed.message);
                            }
                        }
                    }
                    endings.push(format!("{size} {ending}"));
                }
                HostOpResponse {
                    names: endings,
                    ..ok
                }
            }
            "flood" => {
                // `size` concurrent `stat` calls of `path`: the outcome of each.
                let calls = (0..request.size).map(|_| files.stat(&path));
                let outcomes = futures_util::future::join_all(calls).await;
                HostOpResponse {
                    names: outcomes
                        .into_iter()
                        .map(|outcome| match outcome {
                            Ok(_) => "ok".to_owned(),
                            Err(err) => failure(err).outcome,
                        })
                        .collect(),
                    ..ok
                }
            }
            "write_stall" => {
                // Sends the first chunk, then nothing, for as long as the host waits.
                let chunks = futures_util::stream::iter([request.data.clone()])
                    .chain(futures_util::stream::pending());
                HostOpResponse {
                    size: files.write_file_stream(&path, 0o644, chunks).await?,
                    ..ok
                }
            }
            "write_hold" => {
                // Sends `size` bytes (zeros, 64 KiB chunks) to `path`, then nothing, never
                // ending the write: the tests kill a side in the middle of it.
                const CHUNK: u64 = 64 * 1024;
                let total = request.size;
                let chunks = futures_util::stream::iter(0..total.div_ceil(CHUNK))
                    .map(move |i| {
                        vec![0u8; usize::try_from(CHUNK.min(total - i * CHUNK)).unwrap_or(0)]
                    })
                    .chain(futures_util::stream::pending());
                HostOpResponse {
                    size: files.write_file_stream(&path, 0o644, chunks).await?,
                    ..ok
                }
            }
            "open_streams" => {
                // Opens `size` calls of the host-service method named by `path` (`ReadDir`,
                // `WriteFile`) whose request never ends (nothing is sent), and answers once
                // `data` (a decimal count) of them have ended: the outcome of each. The
                // others stay open.
                let method = String::from_utf8_lossy(&path).into_owned();
                let wait_for: usize = String::from_utf8_lossy(&request.data).parse().unwrap_or(0);
                let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
                for _ in 0..request.size {
                    let (channel, method, sender) =
                        (channel.clone(), method.clone(), sender.clone());
                    tokio::spawn(async move {
                        let _ = sender.send(never_ending_call(channel, &method).await);
                    });
                }
                drop(sender);
                let mut names = Vec::new();
                while names.len() < wait_for {
                    match receiver.recv().await {
                        Some(outcome) => names.push(outcome),
                        None => break,
                    }
                }
                HostOpResponse { names, ..ok }
            }
            "forge_lane" => {
                // A hostile plugin: finds its lane's memory among its descriptors, writes
                // into it a count no honest reader writes (bytes read from the host's ring,
                // far past what the host wrote), then calls the host through the lane.
                // `names`: what it forged, and how the call ended.
                let forged = forge_lane_count()?;
                let call = match files.read_file_to_vec(&path, 1 << 20).await {
                    Ok(_) => "ok".to_owned(),
                    Err(err) => {
                        let message = err.to_string();
                        format!("{}: {message}", failure(err).outcome)
                    }
                };
                HostOpResponse {
                    names: vec![forged, call],
                    ..ok
                }
            }
            "garbage_wire" => {
                // Dials the host-service socket at `path` itself, sends `data` as it is (any
                // protocol, or none), and reads until the host closes; `names`: how it ended.
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let socket = std::path::PathBuf::from(String::from_utf8_lossy(&path).into_owned());
                let mut conn = tokio::net::UnixStream::connect(&socket)
                    .await
                    .map_err(|err| HostCallError::Invalid(format!("dial {socket:?}: {err}")))?;
                conn.write_all(&request.data)
                    .await
                    .map_err(|err| HostCallError::Invalid(format!("write: {err}")))?;
                let mut rest = Vec::new();
                let ending = match tokio::time::timeout(
                    Duration::from_secs(30),
                    conn.read_to_end(&mut rest),
                )
                .await
                {
                    Ok(Ok(read)) => format!("closed after {read} bytes"),
                    Ok(Err(err)) => format!("closed: {err}"),
                    Err(_) => "still open".to_owned(),
                };
                HostOpResponse {
                    names: vec![ending],
                    ..ok
                }
            }
            "open_connections" => {
                // Dials the socket at `path` `size` times (each dial waits while the host's
                // backlog is full) and keeps every connection open, sending nothing: `size`
                // is how many connected, `names` `failed <n> <first error>`.
                let socket = std::path::PathBuf::from(String::from_utf8_lossy(&path).into_owned());
                let count = request.size;
                let (streams, failed) = tokio::task::spawn_blocking(move || {
                    let (mut streams, mut failed) = (Vec::new(), Vec::new());
                    for _ in 0..count {
                        match std::os::unix::net::UnixStream::connect(&socket) {
                            Ok(stream) => streams.push(stream),
                            Err(err) => failed.push(err.to_string()),
                        }
                    }
                    (streams, failed)
                })
                .await
                .map_err(|err| HostCallError::Invalid(err.to_string()))?;
                let connected = streams.len() as u64;
                HELD_CONNECTIONS
                    .lock()
                    .map_err(|_| poisoned())?
                    .extend(streams);
                HostOpResponse {
                    size: connected,
                    names: vec![format!(
                        "failed {} {}",
                        failed.len(),
                        failed.first().map_or("", String::as_str)
                    )],
                    ..ok
                }
            }
            other => return Err(HostCallError::Invalid(format!("unknown op {other:?}"))),
        })
    }
}

/// Finds the lane's memory among this process's mappings (the SDK keeps only the
/// mapping, not the descriptor) and sets the count of bytes read from the host's ring (the
/// fourth control line) to `u64::MAX`, as a hostile plugin could. Says where.
fn forge_lane_count() -> Result<String, HostCallError> {
    const READ_FROM_HOST_RING: usize = 3 * 128;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|err| HostCallError::Invalid(format!("read /proc/self/maps: {err}")))?;
    let start = maps
        .lines()
        .find(|line| line.contains("tether-lane"))
        .and_then(|line| line.split('-').next())
        .and_then(|start| usize::from_str_radix(start, 16).ok())
        .ok_or_else(|| HostCallError::Invalid("no lane among this process's mappings".into()))?;
    // SAFETY: the line is inside the lane's mapping, which the SDK keeps while the lane is
    // open, and is written as the atomic it is.
    let count = unsafe { &*((start + READ_FROM_HOST_RING) as *const std::sync::atomic::AtomicU64) };
    count.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    Ok(format!("forged at {start:#x}"))
}

/// Connections opened by `open_connections`, kept open for the plugin's life.
static HELD_CONNECTIONS: Mutex<Vec<std::os::unix::net::UnixStream>> = Mutex::new(Vec::new());

/// Calls `/tether.hostserve.v1.Files/<method>` with a request stream that never
/// sends anything nor ends; returns how the call ended (the host refusing it, say).
async fn never_ending_call(channel: HostChannel, method: &str) -> String {
    use tether_plugin_sdk::tonic::codegen::http::uri::PathAndQuery;
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(err) = grpc.ready().await {
        return format!("not ready: {err}");
    }
    let Ok(path) = PathAndQuery::try_from(format!("/tether.hostserve.v1.Files/{method}")) else {
        return "bad method".to_owned();
    };
    let request = Request::new(futures_util::stream::pending::<()>());
    match grpc
        .client_streaming::<_, (), (), _>(request, path, Nothing)
        .await
    {
        Ok(_) => "ok".to_owned(),
        Err(status) => failure(HostCallError::from(status)).outcome,
    }
}

/// A codec for calls that send no message and read none (`never_ending_call`).
#[derive(Clone, Copy)]
struct Nothing;

impl tonic::codec::Codec for Nothing {
    type Encode = ();
    type Decode = ();
    type Encoder = Nothing;
    type Decoder = Nothing;
    fn encoder(&mut self) -> Nothing {
        Nothing
    }
    fn decoder(&mut self) -> Nothing {
        Nothing
    }
}

impl tonic::codec::Encoder for Nothing {
    type Item = ();
    type Error = Status;
    fn encode(&mut self, (): (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for Nothing {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, Status> {
        Ok(Some(()))
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
    if args
        .iter()
        .any(|a| a == "--host-services" || a == "--host-files")
    {
        let (plugin, host) = plugin.with_host_services();
        // `--host-message-limit N`: the largest message to and from the host services.
        let limit = args
            .iter()
            .position(|a| a == "--host-message-limit")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok());
        let host = match limit {
            Some(limit) => host.with_max_message_size(limit),
            None => host,
        };
        run(plugin, Some(host), &args, versions)
    } else {
        run(plugin, None, &args, versions)
    }
}

/// Serves `versions` of the testing service, then stays alive if told to.
fn run<H>(
    mut plugin: Plugin<H>,
    host: Option<Host>,
    args: &[String],
    versions: Vec<u32>,
) -> ExitCode {
    let served = Arc::default();
    let held = Arc::default();
    let held_bulk = Arc::default();
    for version in versions {
        let service = Service {
            version,
            host: host.clone(),
            broker: plugin.broker(),
            served: Arc::clone(&served),
            held: Arc::clone(&held),
            held_bulk: Arc::clone(&held_bulk),
        };
        // Tests send large `HostOp` payloads to exercise the host services' own limits.
        let server = TestingServer::new(service)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        plugin = plugin.version(version, Routes::new(server));
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
