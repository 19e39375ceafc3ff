//! The plugin's end of its descriptor channel, inherited from a tether host (see
//! [`tether_transport::descriptor_pair`]): where the host hands it the descriptors of bulk
//! file transfers.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use tether_protocol::env::DESCRIPTOR_FD;
use tether_transport::DescriptorReceiver;

/// This plugin's descriptor channel: where a tether host that started it hands it open
/// descriptors, such as the file of `ReadFileBulk` and the ring of `WriteFileBulk` (whose
/// first event names the tokens to [take](DescriptorReceiver::take) them under). Taken from
/// `TETHER_DESCRIPTOR_FD` on first use; `None` when the host gave none (a Go host, a
/// plugin run by hand) or what it named is not one.
///
/// [`HostFiles`](crate::HostFiles) uses it for you; this is for calls made with a raw
/// `FilesClient`.
pub fn descriptor_channel() -> Option<&'static DescriptorReceiver> {
    static CHANNEL: OnceLock<Option<DescriptorReceiver>> = OnceLock::new();
    CHANNEL.get_or_init(take).as_ref()
}

fn take() -> Option<DescriptorReceiver> {
    let value = std::env::var_os(DESCRIPTOR_FD)?;
    let number = value
        .to_str()
        .and_then(|text| text.parse::<RawFd>().ok())
        .filter(|number| *number > 2);
    let Some(number) = number else {
        tracing::warn!(
            value = %value.to_string_lossy(),
            "{DESCRIPTOR_FD} does not name a descriptor above 2; bulk transfers use gRPC messages"
        );
        return None;
    };
    // An open descriptor? (Checked before anything takes ownership of the number.)
    // SAFETY: borrowed for the one fcntl(F_GETFD) below, which only reads its flags and
    // fails with EBADF, touching nothing, if the number is not open.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(number) };
    if rustix::io::fcntl_getfd(borrowed).is_err() {
        tracing::warn!(
            fd = number,
            "{DESCRIPTOR_FD} names a descriptor that is not open; bulk transfers use gRPC messages"
        );
        return None;
    }
    // Only the channel's kind of socket is taken: anything else is left open, as it was.
    if rustix::net::sockopt::socket_type(borrowed) != Ok(rustix::net::SocketType::SEQPACKET) {
        tracing::warn!(
            fd = number,
            "{DESCRIPTOR_FD} names a descriptor that is not a descriptor channel; bulk \
             transfers use gRPC messages"
        );
        return None;
    }
    // SAFETY: the host opened this descriptor for this process and named it in tether's own
    // variable, which nothing else in the process reads; the OnceLock above takes it once.
    let fd = unsafe { OwnedFd::from_raw_fd(number) };
    match DescriptorReceiver::new(fd) {
        Ok(receiver) => Some(receiver),
        Err(err) => {
            tracing::warn!(%err, "bulk transfers use gRPC messages");
            None
        }
    }
}
