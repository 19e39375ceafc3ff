//! Shared mappings of memory files, for the bulk [`crate::ring`] and the [`crate::lane`].

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A new memory file of `len` bytes named `name`, mode 0600, without execute permission
/// (and, from Linux 6.3, sealed against ever getting it), sealed against shrinking and
/// growing so that no mapping of it can lose its pages. On failure, says which step failed.
pub(crate) fn sealed_memory(name: &str, len: u64) -> Result<OwnedFd, (&'static str, io::Error)> {
    let step =
        |action: &'static str| move |errno: rustix::io::Errno| (action, io::Error::from(errno));
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let memory = rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL)
        .or_else(|_| rustix::fs::memfd_create(name, flags))
        .map_err(step("create its memory"))?;
    rustix::fs::fchmod(&memory, rustix::fs::Mode::from_raw_mode(0o600))
        .map_err(step("set its memory's mode"))?;
    rustix::fs::ftruncate(&memory, len).map_err(step("size its memory"))?;
    rustix::fs::fcntl_add_seals(
        &memory,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(step("seal its memory"))?;
    Ok(memory)
}

/// A shared mapping, unmapped when dropped.
#[derive(Debug)]
pub(crate) struct Mapping {
    start: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to a
// thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; what shared access does with the memory is up to each user (the ring
// passes the address to the kernel or writes through `&mut self`; the lane uses atomics).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `memory`, which must be at least that long and sealed
    /// against shrinking (checked by the caller), read-only or read-write.
    pub(crate) fn new(memory: &OwnedFd, len: usize, writable: bool) -> io::Result<Mapping> {
        let protection = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new shared mapping of `len` bytes of `memory`, which is at least that
        // long and sealed against shrinking (checked by the caller), chosen by the kernel.
        let start = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                MapFlags::SHARED,
                memory,
                0,
            )
        }?;
        let start = NonNull::new(start.cast::<u8>())
            .ok_or_else(|| io::Error::other("the kernel mapped it at address 0"))?;
        Ok(Mapping { start, len })
    }

    /// The first byte.
    pub(crate) fn start(&self) -> NonNull<u8> {
        self.start
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.start.as_ptr().cast(), self.len) };
    }
}
