//! Building a plugin's sandbox in the parent ([`prepare`]), and applying it between fork
//! and exec ([`Prepared::apply`]).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::process::{Resource, Rlimit};
use seccompiler::BpfProgram;

use crate::{
    DataDir, KernelSupport, Layer, LayerStatus, Sandbox, SandboxError, SandboxMode, SandboxStatus,
};

/// A sandbox built in the parent, ready to apply between fork and exec.
pub struct Prepared {
    rlimits: Vec<(Resource, Rlimit)>,
    close_fds: bool,
    /// The Landlock ruleset, enforced with `landlock_restrict_self` (no logging flags).
    ruleset: Option<OwnedFd>,
    filters: Vec<BpfProgram>,
    status: SandboxStatus,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Builds the sandbox of a plugin started from `program` (resolved by
/// [`resolve_program`](crate::resolve_program)), whose private socket directory is
/// `socket_dir` and whose private data directory, if it has one, is `data_dir` (granted
/// read-write beneath, never execute).
pub fn prepare(
    sandbox: &Sandbox,
    program: &Path,
    socket_dir: &Path,
    data_dir: Option<&DataDir>,
) -> Result<Prepared, SandboxError> {
    prepare_program(sandbox, program, None, socket_dir, data_dir)
}

/// [`prepare`] for a plugin executed from `file`, the open file of `program` the host
/// verified: the right to execute is bound to that file itself (as well as to `program`'s
/// path), so it holds even if the path was replaced since.
pub fn prepare_verified(
    sandbox: &Sandbox,
    program: &Path,
    file: BorrowedFd<'_>,
    socket_dir: &Path,
    data_dir: Option<&DataDir>,
) -> Result<Prepared, SandboxError> {
    prepare_program(sandbox, program, Some(file), socket_dir, data_dir)
}

fn prepare_program(
    sandbox: &Sandbox,
    program: &Path,
    file: Option<BorrowedFd<'_>>,
    socket_dir: &Path,
    data_dir: Option<&DataDir>,
) -> Result<Prepared, SandboxError> {
    let mut status = SandboxStatus {
        mode: sandbox.mode,
        layers: Vec::new(),
    };
    if sandbox.mode == SandboxMode::Off {
        status.layers = Layer::ALL
            .iter()
            .map(|&layer| LayerStatus {
                layer,
                enforced: false,
                detail: "sandbox off".into(),
            })
            .collect();
        return Ok(Prepared {
            rlimits: Vec::new(),
            close_fds: false,
            ruleset: None,
            filters: Vec::new(),
            status,
        });
    }
    let strict = sandbox.mode == SandboxMode::Strict;
    let mut report = |layer: Layer, enforced: bool, detail: String| {
        if strict && !enforced {
            return Err(SandboxError {
                layer,
                reason: format!("{detail}; the plugin is not started (its sandbox is Strict)"),
            });
        }
        status.layers.push(LayerStatus {
            layer,
            enforced,
            detail,
        });
        Ok(())
    };

    let rlimits = crate::rlimits::rlimits(&sandbox.limits);
    report(
        Layer::ResourceLimits,
        true,
        crate::rlimits::describe(&sandbox.limits),
    )?;

    let kernel = KernelSupport::probe();
    // Reports a layer this kernel may lack: `on` says what it enforces when it has it.
    let mut report_kernel = |layer: Layer, on: String| match kernel.missing(layer) {
        None => report(layer, true, on),
        Some(why) => report(layer, false, why),
    };
    report_kernel(Layer::FileDescriptors, "only 0-2 survive exec".into())?;

    let abi = kernel.landlock_abi;
    let ruleset = if kernel.missing(Layer::LandlockFilesystem).is_none() {
        let (ruleset, paths) =
            crate::landlock::ruleset(sandbox, program, file, socket_dir, data_dir, abi)?;
        let data = if data_dir.is_some() {
            ", read-write in its data directory"
        } else {
            ""
        };
        report_kernel(
            Layer::LandlockFilesystem,
            format!("ABI {abi}; {paths} paths readable, sockets in its own directory{data}"),
        )?;
        Option::<OwnedFd>::from(ruleset)
    } else {
        report_kernel(Layer::LandlockFilesystem, String::new())?;
        None
    };
    report_kernel(Layer::LandlockNetwork, "no TCP bind or connect".into())?;
    report_kernel(
        Layer::LandlockScopes,
        "no abstract Unix sockets or signals outside its sandbox".into(),
    )?;

    let filters = if kernel.seccomp {
        let filters = crate::seccomp::filters(sandbox.allow_processes)?;
        report_kernel(
            Layer::Seccomp,
            if sandbox.allow_processes {
                "system call filter (processes allowed)".into()
            } else {
                "system call filter (threads only)".into()
            },
        )?;
        filters
    } else {
        report_kernel(Layer::Seccomp, String::new())?;
        Vec::new()
    };

    Ok(Prepared {
        rlimits,
        close_fds: kernel.close_range,
        ruleset,
        filters,
        status,
    })
}

impl Prepared {
    /// What confines the plugin: every layer and whether it is enforced.
    pub fn status(&self) -> &SandboxStatus {
        &self.status
    }

    /// The Landlock ruleset the child restricts itself with, if there is one: for a
    /// spawner that gives the child a descriptor table of its own, which must put a copy
    /// of it there and apply with [`Prepared::apply_with_ruleset_at`].
    pub fn ruleset(&self) -> Option<BorrowedFd<'_>> {
        self.ruleset.as_ref().map(AsFd::as_fd)
    }

    /// Confines the calling process. Runs between fork (or vfork) and exec: raw system
    /// calls only on state built by [`prepare`]; no allocation, no lock, and nothing of
    /// that state changed (a vfork child shares the host's memory).
    pub fn apply(&self) -> io::Result<()> {
        self.confine(self.ruleset.as_ref().map(AsRawFd::as_raw_fd))
    }

    /// [`Prepared::apply`], with the ruleset (see [`Prepared::ruleset`]) found at `fd` in
    /// the calling process's descriptor table. Ignored if there is no ruleset.
    pub fn apply_with_ruleset_at(&self, fd: RawFd) -> io::Result<()> {
        self.confine(self.ruleset.as_ref().map(|_| fd))
    }

    fn confine(&self, ruleset: Option<RawFd>) -> io::Result<()> {
        let os = |errno: rustix::io::Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        for (resource, limit) in &self.rlimits {
            rustix::process::setrlimit(*resource, *limit).map_err(os)?;
        }
        if self.close_fds {
            // SAFETY: marks fds 3.. close-on-exec; std's own error pipe is already so.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                )
            };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(fd) = ruleset {
            // What the landlock crate's `restrict_self` does on a kernel that supports
            // the ruleset (it was created): no new privileges, then the restriction.
            // SAFETY: prctl and landlock_restrict_self on this process only.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        for filter in &self.filters {
            seccompiler::apply_filter(filter)
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_enforces_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let prepared = prepare(&Sandbox::off(), &exe, dir.path(), None).unwrap();
        assert_eq!(prepared.status.layers.len(), Layer::ALL.len());
        assert!(prepared.status.layers.iter().all(|layer| !layer.enforced));
        assert!(prepared.filters.is_empty() && prepared.ruleset.is_none());
    }
}
