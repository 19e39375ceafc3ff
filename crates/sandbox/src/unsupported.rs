//! Off Linux: no layer can be enforced, and the status says so.

use std::io;
use std::path::Path;

use crate::{KernelSupport, Layer, LayerStatus, Sandbox, SandboxError, SandboxMode, SandboxStatus};

const UNSUPPORTED: &str = "unsupported on this operating system (tether's sandbox is Linux-only)";

/// Nothing is available here.
pub(crate) fn probe() -> KernelSupport {
    KernelSupport {
        landlock_abi: 0,
        seccomp: false,
        close_range: false,
    }
}

/// A sandbox that confines nothing, with a status that says why.
#[derive(Debug)]
pub struct Prepared {
    status: SandboxStatus,
}

impl Prepared {
    /// What confines the plugin: here, nothing.
    pub fn status(&self) -> &SandboxStatus {
        &self.status
    }

    /// None here.
    pub fn ruleset(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// Does nothing: there is nothing to apply.
    pub fn apply(&self) -> io::Result<()> {
        Ok(())
    }

    /// Does nothing: there is nothing to apply.
    pub fn apply_with_ruleset_at(&self, _fd: i32) -> io::Result<()> {
        Ok(())
    }
}

/// [`prepare`]: no layer binds the file here.
pub fn prepare_verified(
    sandbox: &Sandbox,
    program: &Path,
    _file: std::os::fd::BorrowedFd<'_>,
    socket_dir: &Path,
    data_dir: Option<&crate::DataDir>,
) -> Result<Prepared, SandboxError> {
    prepare(sandbox, program, socket_dir, data_dir)
}

/// Reports every layer as not enforced; refuses a [`SandboxMode::Strict`] sandbox.
pub fn prepare(
    sandbox: &Sandbox,
    _program: &Path,
    _socket_dir: &Path,
    _data_dir: Option<&crate::DataDir>,
) -> Result<Prepared, SandboxError> {
    if sandbox.mode == SandboxMode::Strict {
        return Err(SandboxError {
            layer: Layer::ALL[0],
            reason: format!("{UNSUPPORTED}; the plugin is not started (its sandbox is Strict)"),
        });
    }
    let detail = if sandbox.mode == SandboxMode::Off {
        "sandbox off"
    } else {
        UNSUPPORTED
    };
    Ok(Prepared {
        status: SandboxStatus {
            mode: sandbox.mode,
            layers: Layer::ALL
                .iter()
                .map(|&layer| LayerStatus {
                    layer,
                    enforced: false,
                    detail: detail.to_owned(),
                })
                .collect(),
        },
    })
}

// On Linux this module is compiled for its tests only, so that what other systems build is
// checked here too.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_file_changes_nothing_here() {
        let file = std::fs::File::open("/").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&file);
        let dir = Path::new("/nonexistent");
        assert!(prepare_verified(&Sandbox::strict(), dir, fd, dir, None).is_err());
        let prepared = prepare_verified(&Sandbox::off(), dir, fd, dir, None).unwrap();
        assert!(prepared.status.layers.iter().all(|layer| !layer.enforced));
    }

    #[test]
    fn strict_is_refused_and_the_others_report_every_layer_off() {
        let dir = Path::new("/nonexistent");
        let err = prepare(&Sandbox::strict(), dir, dir, None).unwrap_err();
        assert!(err.reason.contains("unsupported"), "{err}");
        for sandbox in [Sandbox::best_effort(), Sandbox::off()] {
            let prepared = prepare(&sandbox, dir, dir, None).unwrap();
            assert_eq!(prepared.status().layers.len(), Layer::ALL.len());
            assert!(!prepared.status().layers.iter().any(|l| l.enforced));
            prepared.apply().unwrap();
            assert!(prepared.ruleset().is_none());
            prepared.apply_with_ruleset_at(-1).unwrap();
        }
        assert!(!probe().is_complete());
    }
}
