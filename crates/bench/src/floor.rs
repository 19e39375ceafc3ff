//! The raw floor: a 32-byte request/response round trip over a Unix socket between two
//! processes, with blocking std IO and nothing else; and the same on tokio's
//! current-thread runtime on both sides, the floor of any async host and plugin.

#![allow(
    clippy::disallowed_types,
    reason = "the floor is what a bare socket can do, measured without tether-transport on purpose"
)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Bytes per message.
const MESSAGE: usize = 32;

/// Measures `calls` round trips (after `calls / 10` to warm up) against an echo child
/// (this program, `floor-echo`); returns the latencies in nanoseconds. With `pinned`,
/// both processes run on CPU 0, so no wake-up crosses cores.
pub(crate) fn measure(calls: usize, pinned: bool) -> Result<Vec<u64>> {
    let previous = pinned.then(pin_to_cpu0).transpose()?;
    let result = measure_here(calls);
    if let Some(previous) = previous {
        // SAFETY: restores the affinity mask read before.
        unsafe {
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &previous);
        }
    }
    result
}

/// Pins this thread (and the processes it starts) to CPU 0; returns the previous mask.
fn pin_to_cpu0() -> Result<libc::cpu_set_t> {
    // SAFETY: the masks are plain bitsets, written by the calls they are given to.
    unsafe {
        let mut previous: libc::cpu_set_t = std::mem::zeroed();
        let size = size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut previous) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        Ok(previous)
    }
}

/// The floor on tokio: both sides on a current-thread runtime (the echo child is this
/// program, `floor-echo --tokio`), measured on a thread of its own.
pub(crate) fn measure_tokio(calls: usize) -> Result<Vec<u64>> {
    on_a_thread_of_its_own("the tokio floor", move || measure_tokio_here(calls))
}

/// Runs the future `make` gives on a current-thread runtime, on a thread of its own (so
/// that it measures the same way from any caller); `what` names it in errors.
fn on_a_thread_of_its_own<T, Fut>(
    what: &'static str,
    make: impl FnOnce() -> Fut + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("starting the runtime of {what}"))?
            .block_on(make())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

async fn measure_tokio_here(calls: usize) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().context("a directory for the floor's socket")?;
    let path = dir.path().join("floor.sock");
    let listener = tokio::net::UnixListener::bind(&path).context("binding the floor's socket")?;
    let child = spawn_echo(&path, true)?;
    let (mut stream, _) = listener
        .accept()
        .await
        .context("the echo process connecting")?;
    let nanos = round_trips(&mut stream, calls).await?;
    drop(stream);
    finish(child)?;
    Ok(nanos)
}

/// `calls` 32-byte round trips (after `calls / 10` to warm up) on `stream`, timed.
async fn round_trips<S>(stream: &mut S, calls: usize) -> Result<Vec<u64>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = [0x42u8; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let mut nanos = Vec::with_capacity(calls);
    for i in 0..calls / 10 + calls {
        let began = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        record(&mut nanos, i, calls, began);
    }
    Ok(nanos)
}

/// The tokio echo side: [`echo`] on a current-thread runtime.
pub(crate) fn echo_tokio(path: &Path) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the echo's runtime")?
        .block_on(async {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .context("connecting to the floor's socket")?;
            echo_async(stream).await
        })
}

/// Answers each `MESSAGE`-byte message on `stream` with itself until the other side closes.
async fn echo_async<S>(mut stream: S) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = [0u8; MESSAGE];
    loop {
        match stream.read_exact(&mut buffer).await {
            Ok(_) => stream.write_all(&buffer).await?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

fn measure_here(calls: usize) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().context("a directory for the floor's socket")?;
    let path = dir.path().join("floor.sock");
    let listener = UnixListener::bind(&path).context("binding the floor's socket")?;
    let child = spawn_echo(&path, false)?;
    let (mut stream, _) = listener.accept().context("the echo process connecting")?;
    let request = [0x42u8; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let mut nanos = Vec::with_capacity(calls);
    for i in 0..calls / 10 + calls {
        let began = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        record(&mut nanos, i, calls, began);
    }
    drop(stream);
    finish(child)?;
    Ok(nanos)
}

/// Starts this program's echo side on the socket at `path`, blocking or on tokio.
fn spawn_echo(path: &Path, tokio: bool) -> Result<Child> {
    let exe = std::env::current_exe().context("finding tether-bench")?;
    let mut command = Command::new(exe);
    command.arg("floor-echo");
    if tokio {
        command.arg("--tokio");
    }
    command
        .arg(path)
        .spawn()
        .context("starting the floor's echo process")
}

/// Waits for the echo side, which ends when the socket closes.
fn finish(mut child: Child) -> Result<()> {
    let status = child.wait()?;
    if !status.success() {
        bail!("the floor's echo process failed: {status}");
    }
    Ok(())
}

/// Keeps round trip `i` of `calls` (after the first tenth, the warm-up), begun at `began`.
fn record(nanos: &mut Vec<u64>, i: usize, calls: usize, began: Instant) {
    if i >= calls / 10 {
        nanos.push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
}

/// The echo side: answers each 32-byte message with itself until the socket closes.
pub(crate) fn echo(path: &Path) -> Result<()> {
    let mut stream = UnixStream::connect(path).context("connecting to the floor's socket")?;
    let mut buffer = [0u8; MESSAGE];
    loop {
        match stream.read_exact(&mut buffer) {
            Ok(()) => stream.write_all(&buffer)?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

/// A bare tonic call: the bench contract's 32-byte `Ping` served by tonic alone in a child
/// process (this program, `tonic-echo`), over HTTP/2 on a Unix socket, both sides on
/// current-thread runtimes, no tether on either side: what tether over HTTP/2 (a go-plugin
/// peer's wire) is compared with. Returns the latencies in nanoseconds.
pub(crate) fn measure_bare_tonic(calls: usize) -> Result<Vec<u64>> {
    on_a_thread_of_its_own("the bare tonic client", move || bare_tonic_here(calls))
}

async fn bare_tonic_here(calls: usize) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().context("a directory for the bare tonic socket")?;
    let path = dir.path().join("tonic.sock");
    let exe = std::env::current_exe().context("finding tether-bench")?;
    let mut child = Command::new(exe)
        .arg("tonic-echo")
        .arg(&path)
        .spawn()
        .context("starting the bare tonic server")?;
    let nanos = bare_tonic_calls(&path, calls).await;
    let _ = child.kill();
    let _ = child.wait();
    nanos
}

async fn bare_tonic_calls(path: &Path, calls: usize) -> Result<Vec<u64>> {
    use crate::contract::PingRequest;
    use crate::contract::bench_client::BenchClient;

    // The socket file appears at bind, a moment before the server listens: until it
    // does, connecting is refused, so the connection is retried for a while.
    let waited = Instant::now();
    let channel = loop {
        let socket = path.to_owned();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        match tonic::transport::Endpoint::from_static("http://bare-tonic.invalid")
            .connect_with_connector(connector)
            .await
        {
            Ok(channel) => break channel,
            Err(err) if waited.elapsed() > std::time::Duration::from_secs(10) => {
                return Err(err).context("the bare tonic server did not listen within 10 s");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    };
    let mut client = BenchClient::new(channel);
    let mut nanos = Vec::with_capacity(calls);
    for i in 0..calls / 10 + calls {
        let began = Instant::now();
        client
            .ping(PingRequest {
                payload: vec![0x42; MESSAGE],
            })
            .await
            .context("a bare tonic call")?;
        record(&mut nanos, i, calls, began);
    }
    Ok(nanos)
}

/// The bare tonic server's side: serves `Ping` at `socket` until killed.
pub(crate) fn tonic_echo(socket: &Path) -> Result<()> {
    use crate::contract::bench_server::BenchServer;

    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the bare tonic server's runtime")?
        .block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener)?;
            let incoming = futures_util::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await.map(|(stream, _)| stream);
                Some((accepted, listener))
            });
            tonic::transport::Server::builder()
                .add_service(BenchServer::new(BarePing))
                .serve_with_incoming(incoming)
                .await
                .context("serving bare tonic")
        })
}

/// `Ping` and nothing else.
struct BarePing;

#[tonic::async_trait]
impl crate::contract::bench_server::Bench for BarePing {
    async fn ping(
        &self,
        request: tonic::Request<crate::contract::PingRequest>,
    ) -> Result<tonic::Response<crate::contract::PingResponse>, tonic::Status> {
        Ok(tonic::Response::new(crate::contract::PingResponse {
            payload: request.into_inner().payload,
        }))
    }

    async fn host_calls(
        &self,
        _request: tonic::Request<crate::contract::HostCallsRequest>,
    ) -> Result<tonic::Response<crate::contract::HostCallsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the bare tonic server only answers Ping",
        ))
    }

    async fn host_load(
        &self,
        _request: tonic::Request<crate::contract::HostLoadRequest>,
    ) -> Result<tonic::Response<crate::contract::HostLoadResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the bare tonic server only answers Ping",
        ))
    }

    async fn transfer(
        &self,
        _request: tonic::Request<crate::contract::TransferRequest>,
    ) -> Result<tonic::Response<crate::contract::TransferResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the bare tonic server only answers Ping",
        ))
    }
}

/// The lane alone: the same 32-byte round trip as the floor, between this process and a
/// child (this program, `lane-echo`), through a lane (`tether_transport::lane`: shared
/// memory, each reader looking before it sleeps), both sides on current-thread runtimes.
/// Returns the latencies in nanoseconds.
pub(crate) fn measure_lane(calls: usize) -> Result<Vec<u64>> {
    on_a_thread_of_its_own("the lane's round trip", move || lane_here(calls))
}

async fn lane_here(calls: usize) -> Result<Vec<u64>> {
    use std::os::fd::AsRawFd;
    let (mut stream, offer) = tether_transport::lane::lane().context("making a lane")?;
    let exe = std::env::current_exe().context("finding tether-bench")?;
    let fds = [&offer.memory, &offer.data_bell, &offer.room_bell];
    for fd in fds {
        // The child inherits these three (and only these are named to it).
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
            .context("letting the echo process inherit the lane")?;
    }
    let child = Command::new(exe)
        .arg("lane-echo")
        .args(fds.map(|fd| fd.as_raw_fd().to_string()))
        .spawn()
        .context("starting the lane's echo process")?;
    drop(offer);
    let nanos = round_trips(&mut stream, calls).await?;
    drop(stream);
    finish(child)?;
    Ok(nanos)
}

/// The lane's echo side: answers each 32-byte message with itself until the lane closes.
pub(crate) fn lane_echo(memory: i32, data_bell: i32, room_bell: i32) -> Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: the three descriptors were inherited from the parent, which named them, and
    // nothing else in this process owns them.
    let offer = unsafe {
        tether_transport::lane::LaneOffer {
            memory: OwnedFd::from_raw_fd(memory),
            data_bell: OwnedFd::from_raw_fd(data_bell),
            room_bell: OwnedFd::from_raw_fd(room_bell),
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the echo's runtime")?
        .block_on(async move {
            let stream =
                tether_transport::lane::LaneStream::open(offer).context("opening the lane")?;
            echo_async(stream).await
        })
}
