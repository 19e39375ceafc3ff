//! Shared mappings of memory files, for the bulk [`crate::ring`] and the [`crate::lane`].

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

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
