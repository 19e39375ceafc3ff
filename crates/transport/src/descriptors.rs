//! The descriptor channel: a host hands open descriptors (files and shared memory, for bulk file data) to a
//! plugin it started.
//!
//! The host makes a connected pair of `SOCK_SEQPACKET` sockets before the spawn
//! ([`descriptor_pair`]) and gives the child one end; nobody else can reach it, so a
//! descriptor sent on it goes to that plugin process and no other. Each message is one
//! 8-byte token and one descriptor (`SCM_RIGHTS`). The host's end only sends: it is shut
//! down for reading, so a plugin cannot push descriptors or data into the host this way.
//! The plugin's end ([`DescriptorReceiver`]) takes the descriptor of a token that arrived
//! through some other means (a gRPC response), keeping any others it reads meanwhile
//! until they are asked for.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The longest a plugin keeps descriptors nobody asked for yet (their callers gave up);
/// past this, the oldest are closed.
const MAX_UNCLAIMED: usize = 64;

/// Why a descriptor could not be sent or taken.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// The inherited descriptor is not the channel's socket.
    #[error("descriptor {fd} is not a descriptor channel: {reason}")]
    NotAChannel {
        /// The descriptor number.
        fd: i32,
        /// What is wrong with it.
        reason: String,
    },
    /// The other end is gone (the plugin exited, or the host closed its end).
    #[error("the descriptor channel is closed: the other end is gone")]
    Closed,
    /// Nothing could be sent or arrived in time.
    #[error(
        "the descriptor channel {what} for {waited:?}: the other end is not taking or \
         sending descriptors"
    )]
    Stalled {
        /// `was full` (sending) or `brought nothing` (receiving).
        what: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// A system call on the channel failed.
    #[error("the descriptor channel failed to {action}: {source}")]
    Io {
        /// What it was doing.
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error(action: &'static str) -> impl FnOnce(rustix::io::Errno) -> DescriptorError {
    move |errno| DescriptorError::Io {
        action,
        source: errno.into(),
    }
}

/// A new descriptor channel: the host's sending end, and the end to give the plugin
/// (close-on-exec, as every descriptor tether makes; the spawner clears that flag in the
/// child).
pub fn descriptor_pair() -> Result<(DescriptorSender, OwnedFd), DescriptorError> {
    let (host, plugin) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(io_error("create a socket pair"))?;
    rustix::net::shutdown(&host, Shutdown::Read).map_err(io_error("shut down its reading"))?;
    // The plugin's end is its own open file: blocking or not is the plugin's to choose,
    // and the receiver sets non-blocking.
    rustix::io::ioctl_fionbio(&plugin, false).map_err(io_error("make its end blocking"))?;
    Ok((
        DescriptorSender {
            socket: host,
            next: AtomicU64::new(1),
        },
        plugin,
    ))
}

/// The host's end of a descriptor channel: sends descriptors, never receives.
#[derive(Debug)]
pub struct DescriptorSender {
    socket: OwnedFd,
    next: AtomicU64,
}

impl DescriptorSender {
    /// Sends a copy of `fd` to the plugin and returns the token it goes under, waiting up
    /// to `within` if the channel is full (a plugin that never takes what it is sent).
    pub async fn send(&self, fd: BorrowedFd<'_>, within: Duration) -> Result<u64, DescriptorError> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = token.to_le_bytes();
        let try_send = |socket: BorrowedFd<'_>| {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                socket,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
        };
        match try_send(self.socket.as_fd()) {
            Ok(_) => return Ok(token),
            Err(rustix::io::Errno::AGAIN) => {}
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                return Err(DescriptorError::Closed);
            }
            Err(errno) => return Err(io_error("send a descriptor")(errno)),
        }
        // Full: wait for room.
        let ready = registered(&self.socket, Interest::WRITABLE, "wait for room")?;
        let sending = async {
            loop {
                let mut guard = ready
                    .writable()
                    .await
                    .map_err(|source| DescriptorError::Io {
                        action: "wait for room",
                        source,
                    })?;
                match guard.try_io(|socket| try_send(socket.get_ref().as_fd()).map_err(Into::into))
                {
                    Ok(Ok(_)) => return Ok(token),
                    Ok(Err(err)) if err.raw_os_error() == Some(EPIPE) => {
                        return Err(DescriptorError::Closed);
                    }
                    Ok(Err(source)) => {
                        return Err(DescriptorError::Io {
                            action: "send a descriptor",
                            source,
                        });
                    }
                    Err(_would_block) => {}
                }
            }
        };
        tokio::time::timeout(within, sending)
            .await
            .unwrap_or(Err(DescriptorError::Stalled {
                what: "was full",
                waited: within,
            }))
    }
}

const EPIPE: i32 = rustix::io::Errno::PIPE.raw_os_error();

/// A copy of `socket` registered with the current runtime for `interest`: a registration
/// of its own for each wait, so that the channel can be used from whatever runtime serves
/// the call.
fn registered(
    socket: &OwnedFd,
    interest: Interest,
    action: &'static str,
) -> Result<AsyncFd<OwnedFd>, DescriptorError> {
    let copy = socket.try_clone().map_err(|source| DescriptorError::Io {
        action: "copy its socket",
        source,
    })?;
    // SAFETY: the AsyncFd owns `copy` until it is dropped, and an OwnedFd always returns
    // that same open descriptor.
    unsafe { AsyncFd::register_with_interest(copy, interest) }.map_err(|err| DescriptorError::Io {
        action,
        source: err.into(),
    })
}

/// The plugin's end of a descriptor channel. Not tied to a runtime: each wait registers
/// with the runtime it runs on.
#[derive(Debug)]
pub struct DescriptorReceiver {
    socket: OwnedFd,
    /// Descriptors read while looking for another token, oldest first by token.
    unclaimed: tokio::sync::Mutex<HashMap<u64, OwnedFd>>,
}

impl DescriptorReceiver {
    /// The receiving end over `fd`, checked to be a `SOCK_SEQPACKET` socket, and made
    /// non-blocking and close-on-exec.
    pub fn new(fd: OwnedFd) -> Result<DescriptorReceiver, DescriptorError> {
        use std::os::fd::AsRawFd;
        let number = fd.as_raw_fd();
        let not = |reason: String| DescriptorError::NotAChannel { fd: number, reason };
        let kind = rustix::net::sockopt::socket_type(&fd)
            .map_err(|errno| not(format!("not a socket ({errno})")))?;
        if kind != SocketType::SEQPACKET {
            return Err(not(format!("a socket of type {kind:?}, not SEQPACKET")));
        }
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
            .map_err(io_error("mark it close-on-exec"))?;
        rustix::io::ioctl_fionbio(&fd, true).map_err(io_error("make it non-blocking"))?;
        Ok(DescriptorReceiver {
            socket: fd,
            unclaimed: tokio::sync::Mutex::default(),
        })
    }

    /// The descriptor sent under `token`, waiting up to `within` for it to arrive.
    pub async fn take(&self, token: u64, within: Duration) -> Result<OwnedFd, DescriptorError> {
        let mut unclaimed = self.unclaimed.lock().await;
        if let Some(fd) = unclaimed.remove(&token) {
            return Ok(fd);
        }
        let ready = registered(&self.socket, Interest::READABLE, "wait for a descriptor")?;
        let reading = async {
            loop {
                let (got, fd) = next(&ready).await?;
                let Some(fd) = fd else { continue };
                if got == token {
                    return Ok(fd);
                }
                if unclaimed.len() >= MAX_UNCLAIMED
                    && let Some(oldest) = unclaimed.keys().min().copied()
                {
                    unclaimed.remove(&oldest);
                }
                unclaimed.insert(got, fd);
            }
        };
        tokio::time::timeout(within, reading)
            .await
            .unwrap_or(Err(DescriptorError::Stalled {
                what: "brought nothing",
                waited: within,
            }))
    }
}

impl AsFd for DescriptorReceiver {
    /// The channel's socket (to pass it on, or to poll it yourself).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The next message on `socket`: its token, and its descriptor if it carried exactly one
/// (anything else it carried is closed).
async fn next(socket: &AsyncFd<OwnedFd>) -> Result<(u64, Option<OwnedFd>), DescriptorError> {
    loop {
        let mut guard = socket
            .readable()
            .await
            .map_err(|source| DescriptorError::Io {
                action: "wait for a descriptor",
                source,
            })?;
        let received = guard.try_io(|socket| {
            let mut bytes = [0u8; 8];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let message = rustix::net::recvmsg(
                socket.get_ref(),
                &mut [IoSliceMut::new(&mut bytes)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            )?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for item in control.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = item {
                    fds.extend(rights);
                }
            }
            Ok((message.bytes, bytes, fds))
        });
        match received {
            Ok(Ok((0, _, fds))) if fds.is_empty() => return Err(DescriptorError::Closed),
            Ok(Ok((8, bytes, mut fds))) if fds.len() == 1 => {
                return Ok((u64::from_le_bytes(bytes), fds.pop()));
            }
            Ok(Ok((len, _, fds))) => {
                tracing::warn!(
                    target: "tether::transport",
                    len,
                    descriptors = fds.len(),
                    "a malformed message on the descriptor channel was dropped"
                );
                return Ok((0, None));
            }
            Ok(Err(source)) => {
                return Err(DescriptorError::Io {
                    action: "receive a descriptor",
                    source,
                });
            }
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        (read.into(), write.into())
    }

    #[tokio::test]
    async fn a_descriptor_arrives_under_its_token_whatever_the_order_of_asking() {
        let (sender, plugin) = descriptor_pair().unwrap();
        let receiver = DescriptorReceiver::new(plugin).unwrap();
        let (first_read, mut first_write) = pipe();
        let (second_read, mut second_write) = pipe();
        let wait = Duration::from_secs(30);
        let first = sender.send(first_read.as_fd(), wait).await.unwrap();
        let second = sender.send(second_read.as_fd(), wait).await.unwrap();
        assert_ne!(first, second);
        first_write.write_all(b"first").unwrap();
        second_write.write_all(b"second").unwrap();
        drop((first_write, second_write, first_read, second_read));
        // The second is asked for first: the first is kept until asked for.
        let mut text = String::new();
        std::fs::File::from(receiver.take(second, wait).await.unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "second");
        text.clear();
        std::fs::File::from(receiver.take(first, wait).await.unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "first");
    }

    #[tokio::test]
    async fn the_host_end_takes_nothing_from_the_plugin() {
        let (sender, plugin) = descriptor_pair().unwrap();
        let (read, _write) = pipe();
        // The plugin's end cannot push a descriptor (or anything) into the host's.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [read.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = rustix::net::sendmsg(
            &plugin,
            &[IoSlice::new(&[0u8; 8])],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        );
        assert_eq!(sent, Err(rustix::io::Errno::PIPE), "{sent:?}");
        drop(sender);
    }

    #[tokio::test]
    async fn a_gone_plugin_or_a_silent_host_is_an_error_not_a_hang() {
        let (sender, plugin) = descriptor_pair().unwrap();
        let receiver = DescriptorReceiver::new(plugin).unwrap();
        let waited = receiver.take(7, Duration::from_millis(50)).await;
        assert!(
            matches!(waited, Err(DescriptorError::Stalled { .. })),
            "{waited:?}"
        );
        drop(sender);
        let closed = receiver.take(7, Duration::from_secs(30)).await;
        assert!(matches!(closed, Err(DescriptorError::Closed)), "{closed:?}");

        let (sender, plugin) = descriptor_pair().unwrap();
        drop(plugin);
        let (read, _write) = pipe();
        let sent = sender.send(read.as_fd(), Duration::from_secs(30)).await;
        assert!(matches!(sent, Err(DescriptorError::Closed)), "{sent:?}");
    }

    #[tokio::test]
    async fn a_plugin_that_never_takes_fills_the_channel_and_the_host_stops_waiting() {
        let (sender, _plugin) = descriptor_pair().unwrap();
        let (read, _write) = pipe();
        let mut last = Ok(0);
        for _ in 0..100_000 {
            last = sender.send(read.as_fd(), Duration::from_millis(50)).await;
            if last.is_err() {
                break;
            }
        }
        assert!(
            matches!(last, Err(DescriptorError::Stalled { .. })),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn anything_but_a_seqpacket_socket_is_refused() {
        let (read, _write) = pipe();
        let refused = DescriptorReceiver::new(read.into());
        assert!(
            matches!(refused, Err(DescriptorError::NotAChannel { .. })),
            "{refused:?}"
        );
    }
}
