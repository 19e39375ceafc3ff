//! Starting plugin processes from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and tokio's
//! blocking-pool threads exit when idle; so every plugin is forked from a dedicated thread
//! that lives as long as the host process. The child gets its own process group (so the
//! host can signal it and everything it forks) and SIGKILL when the host dies.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;

use rustix::process::{Signal, getppid, set_parent_process_death_signal};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::sandbox::Prepared;

struct Request {
    command: Command,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

fn spawner() -> io::Result<&'static mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, requests) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("tether-spawner".into())
        .spawn(move || {
            // Lives until the process exits: the sender is in a static.
            for request in requests {
                let _runtime = request.runtime.enter();
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the one place where tether starts plugin processes"
                )]
                let child = { request.command }.spawn();
                let _ = request.reply.send(child);
            }
        })?;
    // Two racing first calls may both start a thread; the loser's exits at once.
    Ok(SPAWNER.get_or_init(|| sender))
}

/// Spawns `command` in a new process group, with SIGKILL as its parent-death signal, then
/// confined by `sandbox` (built by the caller, applied between fork and exec).
pub(crate) async fn spawn(mut command: Command, mut sandbox: Prepared) -> io::Result<Child> {
    let host = rustix::process::getpid();
    command.process_group(0).kill_on_drop(false);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe raw
    // system calls (prctl, getppid, and the sandbox's: see `Prepared::apply`); it allocates
    // nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(|errno| io::Error::from_raw_os_error(errno.raw_os_error()))?;
            // The host may have died between fork and prctl: then nobody would kill us.
            if getppid() != Some(host) {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            sandbox.apply()
        });
    }
    let (reply, child) = oneshot::channel();
    spawner()?
        .send(Request {
            command,
            runtime: Handle::current(),
            reply,
        })
        .map_err(|_| io::Error::other("the tether-spawner thread is gone"))?;
    child
        .await
        .map_err(|_| io::Error::other("the tether-spawner thread dropped the request"))?
}

/// Sends `signal` to the plugin's whole process group; a group that is gone is not an error.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(err) => tracing::warn!(pgid, %err, "could not signal the plugin's process group"),
    }
}
