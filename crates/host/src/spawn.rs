//! Starting plugin processes from one long-lived thread, and watching them end.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and tokio's
//! blocking-pool threads exit when idle; so every plugin is forked from a dedicated thread
//! that lives as long as the host process. The child gets its own process group (so the
//! host can signal it and everything it forks) and SIGKILL when the host dies.
//!
//! A plugin's end is watched through a pidfd without reaping it ([`Group::exited`]): while
//! the leader is a zombie its pid, and so its process group id, cannot be reused, so the
//! host kills the rest of the group then, and reaps the leader only after. Every signal the
//! host sends goes through [`Group::signal`], which refuses once the leader is reaped: a
//! signal can never reach a process group that reused the id.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, getppid, pidfd_open,
    set_parent_process_death_signal, waitid,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::guard;
use tether_sandbox::Prepared;

struct Request {
    command: Command,
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

/// Spawns `command` in a new process group, with SIGKILL as its parent-death signal and
/// `umask` as its file mode mask if given, then confined by `sandbox` (built by the caller,
/// applied between fork and exec).
pub(crate) async fn spawn(
    mut command: Command,
    mut sandbox: Prepared,
    umask: Option<u32>,
) -> io::Result<Child> {
    let host = rustix::process::getpid();
    guard::ensure();
    command.process_group(0);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe raw
    // system calls (prctl, getppid, umask, and the sandbox's: see `Prepared::apply`); it
    // allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            if let Some(mask) = umask {
                rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
            }
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
        .send(Request { command, reply })
        .map_err(|_| io::Error::other("the tether-spawner thread is gone"))?;
    let child = child
        .await
        .map_err(|_| io::Error::other("the tether-spawner thread dropped the request"))??;
    guard::register(child.id());
    Ok(child)
}

/// A plugin's process group, led by the spawned process, until the host reaps the leader.
/// (A plugin another host started is `process::Attached`: this host is not its parent.)
#[derive(Debug)]
pub(crate) struct Group {
    pid: u32,
    /// Whether the leader has been reaped; held while reaping and while signalling.
    reaped: Mutex<bool>,
}

impl Group {
    pub(crate) fn new(pid: u32) -> Group {
        Group {
            pid,
            reaped: Mutex::new(false),
        }
    }

    /// Sends `signal` to the whole process group, unless the leader has been reaped (then
    /// the group was killed already, and its id may belong to someone else).
    pub(crate) fn signal(&self, signal: Signal) {
        let reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        if !*reaped {
            signal_group(self.pid, signal);
        }
    }

    /// Waits for the leader to end, kills what is left of its group, reaps the leader, and
    /// returns how it ended.
    pub(crate) async fn exited(&self) -> io::Result<ExitStatus> {
        let pid = Pid::from_raw(i32::try_from(self.pid).map_err(io::Error::other)?)
            .ok_or_else(|| io::Error::other("pid 0"))?;
        match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => {
                // The leader stays a zombie until reaped below.
                let pidfd = ended(pidfd).await?;
                self.reap(WaitId::PidFd(pidfd.as_fd()))
            }
            // Before Linux 5.3: wait on a blocking thread, still without reaping first.
            Err(_) => {
                let blocking_pid = pid;
                tokio::task::spawn_blocking(move || {
                    waitid(
                        WaitId::Pid(blocking_pid),
                        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
                    )
                })
                .await
                .map_err(io::Error::other)??;
                self.reap(WaitId::Pid(pid))
            }
        }
    }

    fn reap(&self, id: WaitId<'_>) -> io::Result<ExitStatus> {
        let mut reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        // The leader is a zombie: its pid still names this group.
        signal_group(self.pid, Signal::KILL);
        let status = waitid(id, WaitIdOptions::EXITED)?
            .ok_or_else(|| io::Error::other("waitid returned no status"))?;
        *reaped = true;
        guard::unregister(self.pid);
        let raw = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => (code & 0xff) << 8,
            (None, Some(signal)) => signal | if status.dumped() { 0x80 } else { 0 },
            (None, None) => 0,
        };
        Ok(ExitStatus::from_raw(raw))
    }
}

/// Waits until `pidfd`'s process has ended (a pidfd is readable from then on), and gives
/// the descriptor back.
pub(crate) async fn ended(pidfd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: `pidfd` is an open descriptor the AsyncFd owns until `into_inner`, and an
    // OwnedFd always returns that same descriptor.
    let ready = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)?;
    let _ = ready.readable().await?;
    Ok(ready.into_inner())
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces: state is field 3.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Sends `signal` to the plugin's whole process group; a group that is gone is not an error.
fn signal_group(pgid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(err) => tracing::warn!(pgid, %err, "could not signal the plugin's process group"),
    }
}
