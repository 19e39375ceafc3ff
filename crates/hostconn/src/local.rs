//! [`in_process`]: host services served in the caller's own process, for testing a plugin's
//! logic against the real services without starting a process.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Server};

use crate::PluginIdentity;

/// Buffer of each in-memory connection, per direction.
const PIPE: usize = 256 * 1024;

/// Host services running in this process; see [`in_process`]. Dropping it stops them.
#[derive(Debug)]
pub struct InProcess {
    channel: Channel,
    task: JoinHandle<()>,
}

impl InProcess {
    /// A channel to the services, for any generated client, or for the SDK's
    /// `Host::from_channel(channel)`.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `routes` in this process over in-memory connections, every request carrying a
/// [`PluginIdentity`] named `plugin` (instance 0, this process's pid): the services see
/// exactly what they would see from a plugin process of that name.
///
/// For tests of a plugin's logic, such as a plugin crate's own unit tests against the real
/// `tether-hostserve` services. The caller chooses the identity, so this is never a way to
/// give services to untrusted code: plugins get theirs through
/// [`crate::establish_host_services`].
pub async fn in_process(
    plugin: &str,
    routes: Routes,
) -> Result<InProcess, tonic::transport::Error> {
    let identity = PluginIdentity {
        name: Arc::from(plugin),
        instance: 0,
        pid: std::process::id(),
        descriptors: None,
    };
    let (connections, accepted) = mpsc::channel::<io::Result<Local>>(4);
    let task = tokio::spawn(async move {
        let incoming = ReceiverStream::new(accepted);
        if let Err(err) = Server::builder()
            .add_routes(routes)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::warn!(target: "tether::hostconn", %err, "the in-process host services stopped");
        }
    });
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (client, server) = tokio::io::duplex(PIPE);
        let connections = connections.clone();
        let identity = identity.clone();
        async move {
            connections
                .send(Ok(Local {
                    stream: server,
                    identity,
                }))
                .await
                .map_err(|_| io::Error::other("the in-process host services have stopped"))?;
            Ok::<_, io::Error>(TokioIo::new(client))
        }
    });
    let channel = Endpoint::from_static("http://in-process.invalid")
        .connect_with_connector(connector)
        .await?;
    Ok(InProcess { channel, task })
}

/// The server's end of one in-memory connection, carrying the identity into its requests.
struct Local {
    stream: DuplexStream,
    identity: PluginIdentity,
}

impl Connected for Local {
    type ConnectInfo = PluginIdentity;

    fn connect_info(&self) -> PluginIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for Local {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Local {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
