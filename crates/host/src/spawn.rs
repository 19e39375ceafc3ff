//! Starting plugin processes from one long-lived thread, and watching them end.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that started the child exits, and tokio's
//! blocking-pool threads exit when idle; so every plugin is started from a dedicated
//! thread that lives as long as the host process, with a vfork-style clone (see [`spawn`]).
//! The child gets its own process group (so the host can signal it and everything it
//! forks) and SIGKILL when the host dies.
//!
//! A plugin's end is watched through a pidfd without reaping it ([`Group::exited`]): while
//! the leader is a zombie its pid, and so its process group id, cannot be reused, so the
//! host kills the rest of the group then, and reaps the leader only after. Every signal the
//! host sends goes through [`Group::signal`], which refuses once the leader is reaped: a
//! signal can never reach a process group that reused the id.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
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

/// What to execute: the file, the plugin's `argv` and its whole environment (nothing of
/// the host's is inherited), and where it starts.
#[derive(Debug)]
pub(crate) struct Exec {
    /// The file executed: the resolved path, or the verified binary's open file (executed
    /// through `/proc/self/fd/N`, so that what runs is what was checked).
    pub(crate) program: Program,
    /// `argv[0]`: the program as the plugin knows it.
    pub(crate) arg0: OsString,
    pub(crate) args: Vec<OsString>,
    /// The environment; a later value of a variable replaces an earlier one.
    pub(crate) env: BTreeMap<OsString, OsString>,
    pub(crate) cwd: Option<PathBuf>,
    /// The plugin's end of its descriptor channel, if it gets one: it keeps it under the
    /// number [`tether_protocol::env::DESCRIPTOR_FD`] names.
    pub(crate) descriptors: Option<OwnedFd>,
}

/// The file a plugin is executed from.
#[derive(Debug)]
pub(crate) enum Program {
    Path(PathBuf),
    Verified(OwnedFd),
}

/// A started plugin process: its pid and the read ends of its stdout and stderr.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

struct Request {
    exec: Exec,
    sandbox: Prepared,
    umask: Option<u32>,
    reply: oneshot::Sender<io::Result<Spawned>>,
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
            // One stack and one set of slots for every child: they run one at a time, and
            // this thread waits for each to exec before the next.
            let mut spawner = Spawner::new().map_err(|err| {
                tracing::error!(%err, "cannot prepare for starting plugins");
                err.to_string()
            });
            // Lives until the process exits: the sender is in a static.
            for request in requests {
                let result = match &mut spawner {
                    Ok(spawner) => spawner.start(&request),
                    Err(why) => Err(io::Error::other(format!(
                        "the host cannot start plugins: {why}"
                    ))),
                };
                // The prepared sandbox (its Landlock ruleset) is closed here, after the
                // child has exec'd.
                drop(request.sandbox);
                let _ = request.reply.send(result);
            }
        })?;
    // Two racing first calls may both start a thread; the loser's exits at once.
    Ok(SPAWNER.get_or_init(|| sender))
}

/// Starts `exec` in a new process group, with SIGKILL as its parent-death signal and
/// `umask` as its file mode mask if given, then confined by `sandbox` (built by the caller,
/// applied between the clone and the exec), with stdin from /dev/null and stdout and
/// stderr piped to the host.
///
/// The child is started as `posix_spawn` starts one, `clone(CLONE_VM | CLONE_VFORK)`,
/// sharing the host's memory until it execs, and its descriptor table too (`CLONE_FILES`)
/// until it takes a copy of only the few low [`Slots`] it needs. A `fork` would copy the
/// host's page tables and every descriptor it holds (and the exec then tear them down
/// again): costs that grow with the host, which grows with every plugin it runs, so that
/// starting N plugins cost O(N^2).
pub(crate) async fn spawn(
    exec: Exec,
    sandbox: Prepared,
    umask: Option<u32>,
) -> io::Result<Spawned> {
    guard::ensure();
    let (reply, spawned) = oneshot::channel();
    spawner()?
        .send(Request {
            exec,
            sandbox,
            umask,
            reply,
        })
        .map_err(|_| io::Error::other("the tether-spawner thread is gone"))?;
    let spawned = spawned
        .await
        .map_err(|_| io::Error::other("the tether-spawner thread dropped the request"))??;
    guard::register(spawned.pid);
    Ok(spawned)
}

/// The stack a child runs on until it execs: mapped once, with a guard page below it so
/// that an overflow faults instead of writing over the host's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Ample for the child's work (system calls on prepared state): a few KiB are used.
    const LEN: usize = 256 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<ChildStack> {
        let len = Self::LEN + Self::GUARD;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The top of the stack (it grows down), 16-byte aligned.
    fn top(&mut self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is page-aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

// SAFETY: the mapping is owned, and used by one thread at a time.
unsafe impl Send for ChildStack {}

/// Low descriptor numbers, reserved when the spawner starts (before the host holds the
/// descriptors of many plugins), where the child's stdin, stdout, stderr, program and
/// Landlock ruleset are put before each clone. The child then copies only the descriptors
/// below [`Slots::end`] into a table of its own: a constant cost, however many the host
/// holds.
/// Between spawns every slot but stdin (always /dev/null) holds /dev/null as well, so that
/// the host keeps no end of a plugin's pipes.
struct Slots {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    program: OwnedFd,
    ruleset: OwnedFd,
    descriptors: OwnedFd,
}

impl Slots {
    fn new() -> io::Result<Slots> {
        let null = || {
            rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(io::Error::from)
            .and_then(above_stdio)
        };
        Ok(Slots {
            stdin: null()?,
            stdout: null()?,
            stderr: null()?,
            program: null()?,
            ruleset: null()?,
            descriptors: null()?,
        })
    }

    /// One past the highest slot: the child keeps the descriptors below it.
    fn end(&self) -> RawFd {
        [
            &self.stdin,
            &self.stdout,
            &self.stderr,
            &self.program,
            &self.ruleset,
            &self.descriptors,
        ]
        .iter()
        .map(|fd| fd.as_raw_fd())
        .max()
        .map_or(3, |highest| highest + 1)
    }

    /// Puts `fd` in `slot` (close-on-exec, as every slot is).
    fn fill(slot: &mut OwnedFd, fd: impl AsFd) -> io::Result<()> {
        rustix::io::dup3(fd, slot, rustix::io::DupFlags::CLOEXEC)?;
        Ok(())
    }

    /// Back to /dev/null, dropping the host's hold on what the last child was given.
    fn clear(&mut self) -> io::Result<()> {
        Self::fill(&mut self.stdout, &self.stdin)?;
        Self::fill(&mut self.stderr, &self.stdin)?;
        Self::fill(&mut self.program, &self.stdin)?;
        Self::fill(&mut self.ruleset, &self.stdin)?;
        Self::fill(&mut self.descriptors, &self.stdin)
    }
}

/// What the child needs, all built before the clone: it only reads it, except `failed`,
/// where it reports why it could not exec.
struct Child<'a> {
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    cwd: Option<&'a CString>,
    /// The child keeps the descriptors below this (see [`Slots`]).
    keep_below: RawFd,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    ruleset: RawFd,
    /// The descriptor channel's slot, kept across the exec; -1 when there is none.
    descriptors: RawFd,
    umask: Option<u32>,
    host: Pid,
    sandbox: &'a Prepared,
    /// The step that failed and its errno, written by the child before it exits.
    failed: (Step, i32),
}

/// Why a child could not exec: the step and the system's error (shown in the message, not
/// as a further source, so that it is not printed twice).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub(crate) struct ChildFailed {
    step: &'static str,
    error: io::Error,
}

impl ChildFailed {
    /// The errno of `error`, or of the child failure it wraps.
    pub(crate) fn errno(error: &io::Error) -> Option<i32> {
        error.raw_os_error().or_else(|| {
            error
                .get_ref()?
                .downcast_ref::<ChildFailed>()?
                .error
                .raw_os_error()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    None,
    Signals,
    Descriptors,
    ProcessGroup,
    Stdio,
    Directory,
    DeathSignal,
    HostGone,
    Sandbox,
    Exec,
}

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::None => "nothing",
            Step::Signals => "resetting the signal handlers",
            Step::Descriptors => "taking its own descriptor table",
            Step::ProcessGroup => "making its process group",
            Step::Stdio => "connecting its stdin, stdout and stderr",
            Step::Directory => "entering its working directory",
            Step::DeathSignal => "setting its parent-death signal",
            Step::HostGone => "checking the host still runs",
            Step::Sandbox => "applying the sandbox",
            Step::Exec => "executing the program",
        }
    }
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// A pipe whose ends are both close-on-exec (the child's end goes to it through a slot).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// `fd`, or a copy numbered 3 or above: a slot must never be 0-2, which the child
/// connects the slots to.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// What the spawner thread keeps: the stack children run on, the slots they take their
/// descriptors from, and the host's pid, which a child checks is still its parent's.
struct Spawner {
    stack: ChildStack,
    slots: Slots,
    host: Pid,
}

impl Spawner {
    fn new() -> io::Result<Spawner> {
        Ok(Spawner {
            stack: ChildStack::new()?,
            slots: Slots::new()?,
            host: rustix::process::getpid(),
        })
    }

    /// Starts the child of `request` (see [`spawn`]); the clone suspends this thread until
    /// the child has exec'd or exited.
    fn start(&mut self, request: &Request) -> io::Result<Spawned> {
        let started = self.start_in_slots(&request.exec, &request.sandbox, request.umask);
        // Whatever happened, the host must not keep the plugin's pipes open.
        let cleared = self.slots.clear();
        let spawned = started?;
        cleared?;
        Ok(spawned)
    }

    fn start_in_slots(
        &mut self,
        exec: &Exec,
        sandbox: &Prepared,
        umask: Option<u32>,
    ) -> io::Result<Spawned> {
        let Spawner { stack, slots, host } = self;
        let host = *host;
        // Everything the child reads is built here: it must not allocate.
        let path = match &exec.program {
            Program::Path(path) => cstring(path.as_os_str().as_bytes(), "the program's path")?,
            Program::Verified(file) => {
                Slots::fill(&mut slots.program, file)?;
                cstring(
                    format!("/proc/self/fd/{}", slots.program.as_raw_fd()).as_bytes(),
                    "the program's path",
                )?
            }
        };
        let mut strings = vec![cstring(exec.arg0.as_bytes(), "argv[0]")?];
        for arg in &exec.args {
            strings.push(cstring(arg.as_bytes(), "an argument")?);
        }
        let argc = strings.len();
        let descriptors = match &exec.descriptors {
            Some(fd) => {
                Slots::fill(&mut slots.descriptors, fd)?;
                let number = slots.descriptors.as_raw_fd();
                strings.push(cstring(
                    format!("{}={number}", tether_protocol::env::DESCRIPTOR_FD).as_bytes(),
                    "an environment variable",
                )?);
                number
            }
            None => -1,
        };
        for (key, value) in &exec.env {
            if descriptors >= 0 && key.as_bytes() == tether_protocol::env::DESCRIPTOR_FD.as_bytes()
            {
                continue;
            }
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            strings.push(cstring(&pair, "an environment variable")?);
        }
        let mut argv: Vec<*const libc::c_char> =
            strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> =
            strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        let cwd = match &exec.cwd {
            Some(dir) => Some(cstring(
                dir.as_os_str().as_bytes(),
                "the working directory",
            )?),
            None => None,
        };
        if let Some(ruleset) = sandbox.ruleset() {
            Slots::fill(&mut slots.ruleset, ruleset)?;
        }
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        Slots::fill(&mut slots.stdout, &stdout_write)?;
        Slots::fill(&mut slots.stderr, &stderr_write)?;
        drop((stdout_write, stderr_write));
        let mut child = Child {
            path: &path,
            argv: &argv,
            envp: &envp,
            cwd: cwd.as_ref(),
            keep_below: slots.end(),
            stdin: slots.stdin.as_raw_fd(),
            stdout: slots.stdout.as_raw_fd(),
            stderr: slots.stderr.as_raw_fd(),
            ruleset: slots.ruleset.as_raw_fd(),
            descriptors,
            umask,
            host,
            sandbox,
            failed: (Step::None, 0),
        };

        // No signal may reach the child before it has reset the handlers it shares with the
        // host: blocked here, unblocked by the child once reset (and here once it has exec'd).
        // SAFETY: sigset_t is plain data, filled by sigfillset before use.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain data, written by pthread_sigmask.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid for writing; pthread_sigmask changes this thread only.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        }
        // SAFETY: `run_child` runs on `stack` (mapped, with a guard page) in a process that
        // shares this memory until it execs or exits; CLONE_VFORK suspends this thread until
        // then, so `child` outlives every use the child makes of it. The child only makes
        // async-signal-safe system calls on data built above, and writes only `failed`.
        let pid = unsafe {
            libc::clone(
                run_child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
                std::ptr::from_mut(&mut child).cast(),
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores this thread's mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
        if pid < 0 {
            return Err(clone_error);
        }
        let (step, errno) = child.failed;
        if step != Step::None {
            // The child has exited: reap it, so that no zombie is left.
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = waitid(WaitId::Pid(pid), WaitIdOptions::EXITED);
            }
            let source = io::Error::from_raw_os_error(errno);
            return Err(io::Error::new(
                source.kind(),
                ChildFailed {
                    step: step.describe(),
                    error: source,
                },
            ));
        }
        let pid = u32::try_from(pid).map_err(io::Error::other)?;
        Ok(Spawned {
            pid,
            stdout: stdout_read,
            stderr: stderr_read,
        })
    }
}

/// The child, between the clone and the exec. Async-signal-safe system calls only; no
/// allocation, no lock, nothing written but `failed`.
extern "C" fn run_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` the suspended parent keeps alive (see `start`).
    let child = unsafe { &mut *arg.cast::<Child<'_>>() };
    let step = match prepare_child(child) {
        Ok(()) => {
            // SAFETY: pointers into NUL-terminated strings, arrays ending in null, all
            // alive in the suspended parent.
            unsafe {
                libc::execve(
                    child.path.as_ptr(),
                    child.argv.as_ptr(),
                    child.envp.as_ptr(),
                )
            };
            (Step::Exec, io::Error::last_os_error())
        }
        Err(failed) => failed,
    };
    child.failed = (step.0, step.1.raw_os_error().unwrap_or(libc::EINVAL));
    // SAFETY: ends the child without running anything of the host's (no atexit, no
    // flushing of buffers it shares).
    unsafe { libc::_exit(127) }
}

fn prepare_child(child: &Child<'_>) -> Result<(), (Step, io::Error)> {
    let os = |step: Step| {
        move |errno: rustix::io::Errno| (step, io::Error::from_raw_os_error(errno.raw_os_error()))
    };
    let last = |step: Step| (step, io::Error::last_os_error());
    // The host's handlers are code of the host, in memory the child shares: every signal
    // the host handles goes back to its default, and SIGPIPE (which Rust ignores) too.
    for signal in 1..=libc::SIGRTMAX() {
        // SAFETY: sigaction reads and writes the struct given; errors (for signals glibc
        // keeps for itself) are ignored.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) != 0 {
                continue;
            }
            let handler = action.sa_sigaction;
            if handler != libc::SIG_DFL && (handler != libc::SIG_IGN || signal == libc::SIGPIPE) {
                action.sa_sigaction = libc::SIG_DFL;
                action.sa_flags = 0;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    }
    // A table of its own, with only the slots and what lies below them: everything else
    // the host holds stays out of the child (and out of the exec's work).
    // SAFETY: close_range on the child's own (unshared) table; unshare as a fallback for
    // kernels before 5.9, which copies the whole table.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            child.keep_below as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) != 0
            && libc::unshare(libc::CLONE_FILES) != 0
        {
            return Err(last(Step::Descriptors));
        }
    }
    // SAFETY: an empty set, then the mask the plugin starts with: nothing blocked.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(last(Step::Signals));
        }
    }
    // SAFETY: setpgid(0, 0): a process group of its own, led by the child.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(last(Step::ProcessGroup));
    }
    // What lies below the slots and is not close-on-exec (opened by the host before its
    // first plugin) must not reach the plugin either, sandboxed or not. Best effort: a
    // kernel before 5.11 lacks the flag (and the sandbox reports that layer off).
    // SAFETY: marks 3.. of the child's own table close-on-exec.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    for (from, to) in [(child.stdin, 0), (child.stdout, 1), (child.stderr, 2)] {
        // SAFETY: the slots, numbered 3 or above, onto 0-2 of the child's own table;
        // dup2's copy is not close-on-exec.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(last(Step::Stdio));
        }
    }
    if let Some(dir) = child.cwd {
        // SAFETY: a NUL-terminated path alive in the suspended parent.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return Err(last(Step::Directory));
        }
    }
    if let Some(mask) = child.umask {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    }
    set_parent_process_death_signal(Some(Signal::KILL)).map_err(os(Step::DeathSignal))?;
    // The host may have died before prctl: then nobody would kill the plugin.
    if getppid() != Some(child.host) {
        return Err((Step::HostGone, io::Error::from_raw_os_error(libc::ESRCH)));
    }
    child
        .sandbox
        .apply_with_ruleset_at(child.ruleset)
        .map_err(|err| (Step::Sandbox, err))?;
    // The descriptor channel is the one slot the plugin keeps, under its own number: given
    // on purpose, after the sandbox marked every descriptor above 2 close-on-exec.
    // SAFETY: clears the close-on-exec flag of a slot in the child's own table.
    if child.descriptors >= 0 && unsafe { libc::fcntl(child.descriptors, libc::F_SETFD, 0) } != 0 {
        return Err(last(Step::Descriptors));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tether_sandbox::Sandbox;

    /// Starts `sleep 30` unconfined, straight through the spawner.
    async fn sleeper() -> Spawned {
        let dir = tempfile::tempdir().expect("a directory");
        let program = tether_sandbox::resolve_program(std::path::Path::new("sleep"))
            .expect("sleep is installed");
        let prepared = tether_sandbox::prepare(&Sandbox::off(), &program, dir.path(), None)
            .expect("an empty sandbox");
        let exec = Exec {
            program: Program::Path(program),
            arg0: "sleep".into(),
            args: vec!["30".into()],
            env: BTreeMap::new(),
            cwd: None,
            descriptors: None,
        };
        spawn(exec, prepared, None).await.expect("sleep starts")
    }

    /// How many of this process's descriptors are `fd`'s pipe (or file).
    fn held(fd: &OwnedFd) -> usize {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("an open descriptor");
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(Result::ok)
            .filter(|entry| std::fs::read_link(entry.path()).is_ok_and(|link| link == target))
            .count()
    }

    #[tokio::test]
    async fn the_host_keeps_only_the_read_ends_of_a_childs_output_pipes() {
        let child = sleeper().await;
        // The write ends went to the child through the slots, which hold /dev/null again.
        assert_eq!(
            held(&child.stdout),
            1,
            "the host still holds stdout's write end"
        );
        assert_eq!(
            held(&child.stderr),
            1,
            "the host still holds stderr's write end"
        );
        let link = |n: u32| std::fs::read_link(format!("/proc/{}/fd/{n}", child.pid));
        assert_eq!(
            link(1).expect("the child's stdout"),
            std::fs::read_link(format!("/proc/self/fd/{}", child.stdout.as_raw_fd()))
                .expect("the read end"),
            "the child writes its stdout into the pipe the host reads"
        );
        assert_eq!(
            link(0).expect("the child's stdin").to_string_lossy(),
            "/dev/null"
        );
        let group = Group::new(child.pid);
        group.signal(Signal::KILL);
        let status = group.exited().await.expect("it is reaped");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_child_runs_in_a_process_group_of_its_own() {
        let child = sleeper().await;
        let pid = Pid::from_raw(i32::try_from(child.pid).expect("a pid")).expect("not 0");
        assert_eq!(
            rustix::process::getpgid(Some(pid)).expect("its group"),
            pid,
            "it leads its own group"
        );
        let group = Group::new(child.pid);
        group.signal(Signal::KILL);
        group.exited().await.expect("it is reaped");
    }
}
