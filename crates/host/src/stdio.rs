//! Where a plugin's stdio goes on the host: what the plugin's code printed after the
//! handshake, mirrored over `plugin.GRPCStdio`.

use std::fmt;
use std::io::Write;

use futures_util::StreamExt;
use tether_protocol::plugin::StdioData;
use tether_protocol::plugin::stdio_data::Channel;
use tonic::Streaming;

/// Where the host sends what a plugin prints on its stdout and stderr.
#[derive(Default)]
pub enum StdioSink {
    /// One `tracing` event per line (target `tether::stdio`, level INFO, with the plugin's
    /// name and the stream). The default.
    #[default]
    Tracing,
    /// The raw bytes of both streams, to a writer of the host's choosing. The writer is
    /// called from the host's runtime: it should not block for long.
    Writer(Box<dyn Write + Send>),
    /// Dropped (still read, so the plugin never blocks).
    Discard,
}

impl fmt::Debug for StdioSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StdioSink::Tracing => "Tracing",
            StdioSink::Writer(_) => "Writer(..)",
            StdioSink::Discard => "Discard",
        })
    }
}

/// The longest partial line kept while waiting for its newline.
const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// Reads the stdio stream until it ends, sending everything to `sink`.
pub(crate) async fn forward(plugin: String, mut stream: Streaming<StdioData>, mut sink: StdioSink) {
    let mut partial = [Vec::new(), Vec::new()];
    while let Some(message) = stream.next().await {
        let data = match message {
            Ok(data) => data,
            Err(status) => {
                tracing::debug!(plugin, %status, "stdio stream ended with an error");
                break;
            }
        };
        let channel = data.channel();
        match &mut sink {
            StdioSink::Discard => {}
            StdioSink::Writer(writer) => {
                if let Err(err) = writer.write_all(&data.data).and_then(|()| writer.flush()) {
                    tracing::warn!(plugin, %err, "writing the plugin's stdio failed");
                }
            }
            StdioSink::Tracing => {
                let (index, name) = match channel {
                    Channel::Stderr => (1, "stderr"),
                    Channel::Stdout | Channel::Invalid => (0, "stdout"),
                };
                let buffer = &mut partial[index];
                buffer.extend_from_slice(&data.data);
                while let Some(newline) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=newline).collect();
                    emit(&plugin, name, &line[..newline]);
                }
                if buffer.len() > MAX_PARTIAL_LINE {
                    emit(&plugin, name, buffer);
                    buffer.clear();
                }
            }
        }
    }
    for (buffer, name) in partial.iter().zip(["stdout", "stderr"]) {
        if !buffer.is_empty() {
            emit(&plugin, name, buffer);
        }
    }
}

fn emit(plugin: &str, stream: &str, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    tracing::info!(target: "tether::stdio", plugin, stream, "{line}");
}
