//! Stopping when the host is gone: a plugin never outlives the process that started it,
//! whatever that process is.
//!
//! tether's own host kills its plugins when it dies, but a host built with HashiCorp's
//! go-plugin does not (it kills them only from `Client.Kill` or `CleanupClients`), and
//! neither does any other process that happens to start a plugin. So the plugin watches its
//! parent itself: the parent's pid is remembered when the [`Plugin`](crate::Plugin) is
//! built, and [`watch`] waits for that process to end through a pidfd (readable once the
//! process has exited; `pidfd_open`, Linux 5.3), or where there is none (an older kernel,
//! a filter that refuses it) polls `getppid()` twice a second: an orphan is reparented, so
//! its parent's pid changes. Either way the plugin then shuts down as on SIGTERM or the
//! controller's `Shutdown`, with a warning in its log.
//!
//! Not `PR_SET_PDEATHSIG`: it fires when the *thread* that started the plugin exits, and a
//! Go host starts plugins from whichever thread its goroutine runs on, so the plugin would
//! be killed while its host lives on. And a signal would skip the graceful stop.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, getppid, pidfd_open};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// How often the fallback checks whether the plugin has been reparented.
const POLL: Duration = Duration::from_millis(500);

/// The pid of the process that started this plugin, as first seen (`None`: the parent is
/// outside this pid namespace, and `getppid()` says 0).
static PARENT: OnceLock<Option<Pid>> = OnceLock::new();

/// Remembers the parent's pid, once: called as early as the SDK runs (building the
/// [`Plugin`](crate::Plugin)), so that a host that dies before the plugin serves is noticed.
pub(crate) fn remember() -> Option<Pid> {
    *PARENT.get_or_init(getppid)
}

/// Starts watching the parent on the current runtime: when it is gone, logs a warning and
/// cancels `shutdown` (the graceful stop).
pub(crate) fn watch(shutdown: &CancellationToken) {
    let parent = remember();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let how = gone(parent).await;
        let pid = Pid::as_raw(parent);
        tracing::warn!(
            parent = pid,
            "the host that started this plugin (pid {pid}) is gone ({how}); shutting down"
        );
        shutdown.cancel();
    });
}

/// Waits until `parent` is no longer this process's parent; says how that was seen.
async fn gone(parent: Option<Pid>) -> &'static str {
    let pid = Pid::as_raw(parent);
    if getppid() != parent {
        return "it was gone before the watch began";
    }
    if let Some(parent_pid) = parent {
        match pidfd_open(parent_pid, PidfdFlags::empty()) {
            // The pidfd was opened while `parent` was still the parent (checked after the
            // open: a dead parent's pid could have been reused by then, but a live parent's
            // cannot), so it names the parent.
            Ok(pidfd) if getppid() == parent => {
                tracing::debug!(
                    parent = pid,
                    "watching the host (pid {pid}) through a pidfd"
                );
                match exited(pidfd).await {
                    Ok(()) => return "it exited",
                    Err(err) => {
                        tracing::debug!(%err, "cannot wait on the host's pidfd; polling instead");
                    }
                }
            }
            Ok(_) => return "it was gone before the watch began",
            // ENOSYS before Linux 5.3 or under a filter, EPERM or EACCES under a policy.
            Err(err) => tracing::debug!(%err, "no pidfd for the host; polling instead"),
        }
    }
    tracing::debug!(
        parent = pid,
        "watching the host (pid {pid}) by polling getppid() every {POLL:?}"
    );
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if getppid() != parent {
            return "this plugin was reparented";
        }
    }
}

/// Waits until the process behind `pidfd` has exited (the descriptor turns readable).
async fn exited(pidfd: OwnedFd) -> std::io::Result<()> {
    // SAFETY: the AsyncFd owns `pidfd` until it is dropped here, and an OwnedFd always
    // returns that same open descriptor.
    let ready = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    let _guard = ready.readable().await?;
    Ok(())
}
