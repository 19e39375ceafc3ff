//! OS confinement of plugin processes (Linux), applied by the host between fork and exec,
//! so a plugin is confined from its first instruction without cooperating.
//!
//! Everything is built in the parent ([`prepare`]): the Landlock ruleset (with its file
//! descriptors), the seccomp programs, the resource limits. Between fork and exec
//! ([`Prepared::apply`]) the child makes only raw system calls on that prepared state:
//! `prlimit64`, `close_range`, `landlock_restrict_self`, `prctl` and `seccomp`.
//!
//! The layers, and what each covers:
//! - resource limits: address space, open files, file size, no core dumps;
//! - file descriptors: everything but 0-2 is closed at exec (`close_range` with
//!   `CLOSE_RANGE_CLOEXEC`), whatever the host process inherited or leaked;
//! - Landlock filesystem: execute and read on the plugin binary and its loader, read on its
//!   shared libraries and `/etc/ld.so.cache`, create and remove sockets in its private
//!   socket directory, read-write beneath its private data directory if the host gives it
//!   one ([`DataDir`]), and nothing else (no `/proc`, so not the host's environment either);
//! - Landlock network: no TCP bind or connect (ABI 4);
//! - Landlock scopes: no abstract Unix sockets or signals outside the sandbox (ABI 6);
//! - seccomp: an allowlist ([`allowed_syscalls`], each call with its reason);
//!   everything else fails with `ENOSYS`, the dangerous calls by name with `EPERM`; Unix
//!   sockets only, four ioctl requests, a few prctl options and fcntl commands, threads
//!   only unless processes are allowed, never new namespaces or `CLONE_PARENT`.
//!
//! The environment (cleared, plus an allowlist) and the process group with a parent-death
//! signal are applied by the host for every plugin, sandbox or not.
//!
//! The layers live in one module each: `rlimits`, `landlock`, `seccomp` (with the system
//! call table in `syscalls`), and `loader` (the files a dynamically linked program needs,
//! which Landlock must let it read). `status` is what the host reports and checks.
//!
//! Off Linux there is no sandbox: [`prepare`] reports every layer as not enforced
//! ("unsupported on this operating system"), and a [`SandboxMode::Strict`] sandbox is
//! refused with a [`SandboxError`] naming the first layer, so a strict host never starts an
//! unconfined plugin.
//!
//! ```
//! use tether_sandbox::{KernelSupport, Layer};
//!
//! let kernel = KernelSupport::probe();
//! for layer in Layer::ALL {
//!     match kernel.missing(layer) {
//!         None => println!("{layer}: available"),
//!         Some(why) => println!("{layer}: {why}"),
//!     }
//! }
//! ```

#[cfg(unix)]
mod data_dir;
mod program;
mod status;

#[cfg(unix)]
pub use data_dir::{DataDir, DataDirError};
pub use program::resolve_program;
pub use status::{
    KernelSupport, Layer, LayerStatus, ResourceLimits, Sandbox, SandboxError, SandboxMode,
    SandboxStatus,
};

#[cfg(target_os = "linux")]
mod bpf;
#[cfg(target_os = "linux")]
mod kernel;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod loader;
#[cfg(target_os = "linux")]
mod prepare;
#[cfg(target_os = "linux")]
mod rlimits;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
mod syscalls;

#[cfg(target_os = "linux")]
use kernel as platform;
#[cfg(target_os = "linux")]
pub use prepare::{Prepared, prepare, prepare_verified};
#[cfg(target_os = "linux")]
pub use syscalls::{Syscall, allowed_syscalls, conditional_syscalls, refused_syscalls};

#[cfg(not(target_os = "linux"))]
mod unsupported;
// Built on Linux too, for its tests, so what other systems compile is checked here.
#[cfg(all(test, target_os = "linux"))]
#[allow(
    unreachable_pub,
    reason = "public off Linux, where the module is re-exported"
)]
mod unsupported;
#[cfg(not(target_os = "linux"))]
use unsupported as platform;
#[cfg(not(target_os = "linux"))]
pub use unsupported::{Prepared, prepare, prepare_verified};
