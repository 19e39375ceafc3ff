//! Redirects the process's stdout and stderr into pipes that are always drained, and
//! streams what arrives to the host over `plugin.GRPCStdio`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Mutex;

use futures_util::{Stream, StreamExt};
use rustix::pipe::PipeFlags;
use tether_protocol::plugin::grpc_stdio_server::GrpcStdio;
use tether_protocol::plugin::{StdioData, stdio_data::Channel};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How many chunks wait for the host before new output is dropped.
const BUFFERED_CHUNKS: usize = 256;
const CHUNK: usize = 32 * 1024;

/// The process's original stdout and stderr, and the stream of what its code prints.
pub(crate) struct Capture {
    /// Where the handshake line goes.
    pub(crate) real_stdout: File,
    /// Where log lines go.
    pub(crate) real_stderr: File,
    pub(crate) output: mpsc::Receiver<StdioData>,
}

/// Points fds 1 and 2 at pipes drained by two threads, keeping the originals.
///
/// Output waits in a bounded buffer for the host; when the host does not read (or never
/// asked), new output is dropped rather than blocking the plugin.
pub(crate) fn capture() -> io::Result<Capture> {
    let real_stdout = File::from(rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?);
    let real_stderr = File::from(rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stderr(), 3)?);
    let (out_read, out_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let (err_read, err_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    rustix::stdio::dup2_stdout(&out_write)?;
    rustix::stdio::dup2_stderr(&err_write)?;
    drop((out_write, err_write));
    // Whatever Rust's stdout buffer still holds now goes to the pipe, not the handshake.
    io::stdout().flush()?;

    let (sender, output) = mpsc::channel(BUFFERED_CHUNKS);
    drain(out_read, Channel::Stdout, sender.clone())?;
    drain(err_read, Channel::Stderr, sender)?;
    Ok(Capture {
        real_stdout,
        real_stderr,
        output,
    })
}

fn drain(pipe: OwnedFd, channel: Channel, sender: mpsc::Sender<StdioData>) -> io::Result<()> {
    let name = format!("tether-{}", channel.as_str_name().to_ascii_lowercase());
    std::thread::Builder::new().name(name).spawn(move || {
        let mut pipe = File::from(pipe);
        let mut buffer = vec![0; CHUNK];
        let mut dropped = 0u64;
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    let data = StdioData {
                        channel: channel.into(),
                        data: buffer[..n].to_vec(),
                    };
                    if sender.try_send(data).is_err() {
                        dropped += n as u64;
                        if dropped == n as u64 {
                            tracing::warn!(
                                channel = channel.as_str_name(),
                                "the host is not reading stdio; dropping output"
                            );
                        }
                    } else {
                        dropped = 0;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::warn!(%err, "reading captured output failed");
                    return;
                }
            }
        }
    })?;
    Ok(())
}

type StdioStream = Pin<Box<dyn Stream<Item = Result<StdioData, Status>> + Send>>;

/// `plugin.GRPCStdio`: hands the captured output to the first host that asks.
pub(crate) struct StdioService {
    output: Mutex<Option<mpsc::Receiver<StdioData>>>,
    shutdown: CancellationToken,
}

impl StdioService {
    pub(crate) fn new(output: mpsc::Receiver<StdioData>, shutdown: CancellationToken) -> Self {
        StdioService {
            output: Mutex::new(Some(output)),
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl GrpcStdio for StdioService {
    type StreamStdioStream = StdioStream;

    async fn stream_stdio(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        let output = self
            .output
            .lock()
            .map_err(|_| Status::internal("stdio state poisoned"))?
            .take()
            .ok_or_else(|| {
                Status::failed_precondition("stdio is already being streamed to the host")
            })?;
        let stream = ReceiverStream::new(output)
            .map(Ok)
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
