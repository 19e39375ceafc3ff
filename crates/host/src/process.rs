//! The plugin process as the host sees it: a [`Process`] this host spawned (its process
//! group, exit watch, stderr and stdout readers, stdio forwarding), or an [`Attached`]
//! process another host started.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open};
use tether_protocol::plugin::grpc_stdio_client::GrpcStdioClient;
use tether_transport::Link;
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::error::Error;
use crate::lines::{self, Read, Tail};
use crate::logs::{self, LogParser};
use crate::spawn::{self, Group};
use crate::stdio::{self, StdioSink};

/// Longest stderr line kept whole; longer lines are split.
const MAX_LOG_LINE: usize = 64 * 1024;
/// How long to wait for a dead plugin's stderr to close before reporting its tail.
const STDERR_SETTLE: Duration = Duration::from_secs(1);

/// A process this host spawned, and the tasks that watch it. Dropping it kills the process
/// group.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    /// Signals the process group while its leader is unreaped; see `spawn::Group`.
    group: Arc<Group>,
    exit: watch::Receiver<Option<ExitStatus>>,
    tail: Arc<Mutex<Tail>>,
    stderr_closed: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    socket_dir: Option<tempfile::TempDir>,
    /// Landlock confines its files, and no files may be made in the socket directory.
    files_confined: bool,
}

impl Process {
    /// Takes over the spawned process `pid` (leader of its own process group): watches its
    /// end and reads its `stderr`.
    pub(crate) fn new(
        plugin: &str,
        pid: u32,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        socket_dir: tempfile::TempDir,
        files_confined: bool,
    ) -> Process {
        let group = Arc::new(Group::new(pid));
        let exit = watch_exit(Arc::clone(&group), pid);
        let (closed_sender, stderr_closed) = watch::channel(false);
        let tail = Arc::<Mutex<Tail>>::default();
        let reader = tokio::spawn(read_stderr(
            plugin.to_owned(),
            stderr,
            Arc::clone(&tail),
            closed_sender,
        ));
        Process {
            pid,
            group,
            exit,
            tail,
            stderr_closed,
            tasks: vec![reader],
            socket_dir: Some(socket_dir),
            files_confined,
        }
    }

    /// Its pid (also its process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Keeps `task` until the process is dropped, then aborts it.
    pub(crate) fn keep(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Signals its process group (nothing once the leader is reaped).
    pub(crate) fn signal(&self, signal: Signal) {
        self.group.signal(signal);
    }

    /// How it exited, if it has.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until it exits; `None` if watching it failed (logged).
    pub(crate) async fn wait(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.clone();
        exit.wait_for(Option::is_some).await.ok().and_then(|s| *s)
    }

    /// Waits (a little: its last words may still be in the pipe) for its stderr to close.
    pub(crate) async fn stderr_settled(&self) {
        let mut closed = self.stderr_closed.clone();
        let _ = timeout(STDERR_SETTLE, closed.wait_for(|closed| *closed)).await;
    }

    /// The private socket directory the host made for it.
    pub(crate) fn socket_dir(&self) -> Option<&Path> {
        self.socket_dir.as_ref().map(|dir| dir.path())
    }

    /// Removes its socket directory (once; logged if it fails).
    pub(crate) fn remove_socket_dir(&mut self, plugin: &str) {
        if let Some(dir) = self.socket_dir.take() {
            let path = dir.path().to_owned();
            if let Err(err) = dir.close() {
                tracing::warn!(plugin, path = %path.display(), %err, "could not remove the socket directory");
            }
        }
    }

    pub(crate) fn tail_text(&self) -> String {
        self.tail.lock().map(|tail| tail.text()).unwrap_or_default()
    }

    /// The stderr tail once stderr has closed (bounded wait); kills the process first when
    /// asked, so that a live process's last words are read too.
    pub(crate) async fn settled_tail(&mut self, kill: bool) -> String {
        if kill {
            self.group.signal(Signal::KILL);
        }
        self.stderr_settled().await;
        self.tail_text()
    }

    /// Why a plugin may have died before its handshake, when its last words suggest the
    /// sandbox refused it a file.
    fn sandbox_hint(&self, stderr_tail: &str) -> Option<&'static str> {
        (self.files_confined
            && stderr_tail
                .to_ascii_lowercase()
                .contains("permission denied"))
        .then_some(
            "the sandbox denies plugins the filesystem; a plugin built with go-plugin \
                 needs Sandbox::allow_socket_dir_files(true) (it makes a temporary file where \
                 it binds its socket); for other files, Sandbox::allow_read or host services",
        )
    }

    /// The error for a process that ended before its handshake.
    pub(crate) async fn exited_early(
        &mut self,
        plugin: &str,
        cookie_key: &str,
        status: Option<ExitStatus>,
    ) -> Error {
        let stderr_tail = self.settled_tail(false).await;
        match status {
            Some(status) => Error::ExitedBeforeHandshake {
                plugin: plugin.to_owned(),
                status,
                cookie_key: cookie_key.to_owned(),
                hint: self.sandbox_hint(&stderr_tail),
                stderr_tail,
            },
            None => Error::Internal {
                plugin: plugin.to_owned(),
                reason: "the process ended but its exit status was lost".into(),
            },
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Whether or not the leader exited, nothing of the plugin may outlive its client
        // (the exit watcher then reaps the leader).
        self.group.signal(Signal::KILL);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The process of a plugin another host started and owns. This host is not its parent: it
/// sees the process end (through a pidfd) but cannot learn its exit status, and it has none
/// of its pipes. Dropping it leaves the process running.
#[derive(Debug)]
pub(crate) struct Attached {
    pid: u32,
    /// Opened after checking it is the plugin (its start time), so signals and the exit
    /// watch can reach no other process.
    pidfd: OwnedFd,
    ended: watch::Receiver<bool>,
    watcher: JoinHandle<()>,
}

impl Attached {
    /// The process of a plugin another host started, named by `pid` and its start time
    /// (`/proc/<pid>/stat`, field 22). Fails, touching nothing, when no such process runs.
    pub(crate) fn open(pid: u32, start_time: u64) -> Result<Attached, String> {
        let raw = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| format!("{pid} is not a process id"))?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty())
            .map_err(|err| format!("no process {pid} ({err}): the plugin has exited"))?;
        // Checked after opening: if the pidfd named another process (the pid reused), its
        // start time differs and nothing is done with it.
        match spawn::process_start_time(pid) {
            Some(found) if found == start_time => {}
            Some(found) => {
                return Err(format!(
                    "pid {pid} now belongs to another process (started at tick {found}, not \
                     {start_time}): the plugin has exited"
                ));
            }
            None => return Err(format!("no process {pid}: the plugin has exited")),
        }
        let watched = pidfd
            .try_clone()
            .map_err(|err| format!("could not watch process {pid}: {err}"))?;
        let (sender, ended) = watch::channel(false);
        let watcher = tokio::spawn(async move {
            match spawn::ended(watched).await {
                Ok(_) => {
                    let _ = sender.send(true);
                }
                Err(err) => tracing::warn!(pid, %err, "watching the attached plugin failed"),
            }
        });
        Ok(Attached {
            pid,
            pidfd,
            ended,
            watcher,
        })
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to this process alone (not its group), through its pidfd.
    pub(crate) fn signal(&self, signal: Signal) {
        if let Err(err) = rustix::process::pidfd_send_signal(self.pidfd.as_fd(), signal)
            && err != rustix::io::Errno::SRCH
        {
            tracing::warn!(pid = self.pid, %err, "could not signal the attached plugin");
        }
    }

    /// Whether it has ended.
    pub(crate) fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Waits until it ends; `false` if watching it failed (logged).
    pub(crate) async fn wait(&self) -> bool {
        let mut ended = self.ended.clone();
        ended.wait_for(|ended| *ended).await.is_ok()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // The process is its host's: only stop watching it.
        self.watcher.abort();
    }
}

/// Publishes how `group`'s leader ended, once it has. The task is not among a
/// `Process`'s `tasks`: it must outlive the client to reap the process it kills.
fn watch_exit(group: Arc<Group>, pid: u32) -> watch::Receiver<Option<ExitStatus>> {
    let (sender, exit) = watch::channel(None);
    tokio::spawn(async move {
        match group.exited().await {
            Ok(status) => {
                let _ = sender.send(Some(status));
            }
            Err(err) => tracing::warn!(pid, %err, "watching the plugin process failed"),
        }
    });
    exit
}

/// Re-levels the plugin's stderr log lines and keeps their tail.
async fn read_stderr(
    plugin: String,
    stderr: impl AsyncRead + Unpin,
    tail: Arc<Mutex<Tail>>,
    closed: watch::Sender<bool>,
) {
    let mut stderr = BufReader::new(stderr);
    let mut parser = LogParser::default();
    loop {
        let (line, last) = match lines::read_line(&mut stderr, MAX_LOG_LINE).await {
            Ok(Read::Line(line) | Read::TooLong(line)) => (line, false),
            Ok(Read::Eof(line)) => (line, true),
            Err(err) => {
                tracing::debug!(plugin, %err, "reading the plugin's stderr failed");
                (Vec::new(), true)
            }
        };
        if !line.is_empty() {
            if let Ok(mut tail) = tail.lock() {
                tail.push(&line);
            }
            logs::emit(&plugin, &parser.parse(&String::from_utf8_lossy(&line)));
        }
        if last {
            let _ = closed.send(true);
            return;
        }
    }
}

/// Reads whatever the plugin writes on its real stdout after the handshake, so it never
/// blocks on a full pipe.
pub(crate) async fn drain_stdout(plugin: String, stdout: BufReader<impl AsyncRead + Unpin>) {
    let mut stdout = stdout;
    while let Ok(Read::Line(line) | Read::TooLong(line)) =
        lines::read_line(&mut stdout, MAX_LOG_LINE).await
    {
        let line = String::from_utf8_lossy(&line);
        tracing::debug!(target: "tether::stdout", plugin, "{line}");
    }
}

/// Forwards the plugin's stdio stream (go-plugin's `GRPCStdio`) to `sink`.
pub(crate) async fn run_stdio(plugin: String, mut client: GrpcStdioClient<Link>, sink: StdioSink) {
    match client.stream_stdio(()).await {
        Ok(response) => stdio::forward(plugin, response.into_inner(), sink).await,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::debug!(
                target: "tether::host",
                plugin,
                "the plugin does not mirror its stdio (go-plugin before 1.5)"
            );
        }
        Err(status) => {
            tracing::debug!(target: "tether::host", plugin, %status, "the plugin's stdio stream failed");
        }
    }
}
