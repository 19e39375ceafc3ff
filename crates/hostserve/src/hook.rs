//! The decision hook: who decides a request that no grant covers.
//!
//! The capability policy denies by default. When a [`DecisionHook`] is configured, the
//! policy puts every request that no grant covers (and no denial refuses) to the hook as a
//! [`Question`] and acts on its [`Answer`]: allow this request, allow it from now on, or
//! deny it. The policy bounds every question with its own timeout, and anything but an
//! answer in time (an error, a timeout, a hook that is gone) denies the request: the hook
//! fails closed.
//!
//! Two hooks are ready-made:
//!
//! - [`FnHook`]: a plain function in the host process (a rule engine, an interactive
//!   prompt);
//! - [`ExternalHook`]: a program of the operator's, spoken to in JSON lines over its stdin
//!   and stdout.
//!
//! The protocol an external hook speaks is documented on [`ExternalHook`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// The longest line read from a hook's stdout or stderr; the rest of a longer line is
/// read and discarded, so a hook cannot make the host buffer without end.
const MAX_LINE: usize = 64 * 1024;
/// How many characters of an invalid answer line an error shows.
const SHOWN_ANSWER: usize = 200;
/// How many characters of a line of the hook's stderr are logged.
const SHOWN_STDERR: usize = 1000;
/// How long, once a hook closed its stdout, the host waits for its exit status (to report
/// it) before killing it.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a question that could not be written, because the hook no longer reads its
/// stdin, waits for the hook's end to be reported (longer than [`EXIT_GRACE`]) before the
/// hook is declared gone.
const STDIN_CLOSED_GRACE: Duration = Duration::from_secs(4);
/// The `tracing` target of everything this module logs.
const TARGET: &str = "tether::hook";

/// A request no grant covers, put to the decision hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Question {
    /// The plugin's name, as the host knows it.
    pub plugin: String,
    /// The plugin's instance number.
    pub instance: u64,
    /// The process that made the request.
    pub pid: u32,
    /// What the plugin asked for, such as `read_file` or `tether.bus.v1.Bus/Publish`.
    pub operation: String,
    /// What it asked about: a path, a variable, a topic.
    pub resource: String,
    /// The capability that would allow it, such as `bus:publish:alerts`.
    pub capability: String,
}

/// The hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Allow this request only; the next one no grant covers is asked again.
    AllowOnce,
    /// Allow this request and, as the policy decides, later ones the capability covers.
    AllowAlways,
    /// Deny this request.
    Deny,
}

/// The hook's decision on one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the hook decided.
    pub answer: Answer,
    /// Why, if the hook said; recorded in the audit trail.
    pub reason: Option<String>,
}

/// The future of one question to a [`DecisionHook`].
pub type HookFuture = Pin<Box<dyn Future<Output = Result<Verdict, HookError>> + Send>>;

/// Decides requests no grant covers. The policy bounds every question with its own timeout
/// (no answer in time = denied), so implementations need not.
///
/// The policy drops the future of a question that timed out; implementations must forget
/// such a question without harm to the ones after it.
pub trait DecisionHook: Send + Sync + fmt::Debug + 'static {
    /// Who decides, as recorded in the audit trail (`hook:<name>`).
    fn name(&self) -> &str;

    /// Puts `question` to the hook; the future resolves to its verdict.
    fn decide(&self, question: Question) -> HookFuture;
}

/// Why a decision hook could not be started, or gave no verdict. Every one of these denies
/// the request.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook's program could not be started.
    #[error("could not start the decision hook `{program}`: {source}")]
    Spawn {
        /// The program, as given.
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The hook's process exited, closed its stdout, or stopped reading its stdin; this
    /// question and every later one to it fail.
    #[error("the decision hook `{name}` is gone ({detail}); requests no grant covers are denied")]
    Gone {
        /// The hook's name.
        name: String,
        /// What became of it, such as `exited with status 3`.
        detail: String,
    },
    /// The hook answered the question with a line that is not a valid answer.
    #[error("the decision hook `{name}` sent an answer that is not valid ({detail}): {line}")]
    Protocol {
        /// The hook's name.
        name: String,
        /// The line, escaped and capped at 200 characters.
        line: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Anything else, such as a question that could not be written to the hook.
    #[error("the decision hook `{name}` failed: {detail}")]
    Failed {
        /// The hook's name.
        name: String,
        /// What went wrong.
        detail: String,
    },
}

/// The function of a [`FnHook`].
type DecideFn = dyn Fn(&Question) -> Verdict + Send + Sync;

/// A hook from a plain function (e.g. an in-process prompt or rule engine).
pub struct FnHook {
    name: String,
    decide: Arc<DecideFn>,
}

impl FnHook {
    /// A hook called `name` that decides with `f`.
    ///
    /// `f` runs on Tokio's blocking threads, so it may block (an interactive prompt) without
    /// stalling the host, and the policy's timeout holds even then: a verdict after it is
    /// discarded. A panic in `f` fails the question ([`HookError::Failed`]).
    pub fn new(
        name: impl Into<String>,
        f: impl Fn(&Question) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            decide: Arc::new(f),
        }
    }
}

impl fmt::Debug for FnHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHook")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DecisionHook for FnHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&self, question: Question) -> HookFuture {
        let decide = Arc::clone(&self.decide);
        let name = self.name.clone();
        Box::pin(async move {
            let failed = |detail: String| HookError::Failed {
                name: name.clone(),
                detail,
            };
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|err| failed(format!("no Tokio runtime to run it on: {err}")))?;
            runtime
                .spawn_blocking(move || decide(&question))
                .await
                .map_err(|err| {
                    failed(if err.is_panic() {
                        "the function panicked".to_owned()
                    } else {
                        format!("the function did not run to its end: {err}")
                    })
                })
        })
    }
}

/// A hook in an external process speaking JSON lines on its stdin/stdout.
///
/// Questions are written to the program's stdin one at a time; a question whose future is
/// dropped midway through its line is finished by the next question, so the program never
/// sees two questions spliced together. The program is killed when the `ExternalHook` is
/// dropped; questions still outstanding then fail ([`HookError::Gone`]).
///
/// # Protocol
///
/// The host starts the program once and keeps it running. For each question it writes one
/// JSON object, on one line, to the program's stdin:
///
/// ```text
/// {"id":7,"plugin":"filelister","instance":1,"pid":4242,"operation":"tether.bus.v1.Bus/Publish","resource":"alerts","capability":"bus:publish:alerts"}
/// ```
///
/// - `id`: a number, unique for the life of the program, that its answer must repeat;
/// - `plugin`, `instance`, `pid`: the plugin's name, its instance number, and the process
///   that asked;
/// - `operation`: what it asked for, such as `read_file` or `tether.bus.v1.Bus/Publish`;
/// - `resource`: what it asked about (a path, a variable, a topic);
/// - `capability`: the capability that would allow it, such as `bus:publish:alerts`.
///
/// More fields may be added; a hook should ignore the ones it does not know.
///
/// The program answers each question with one JSON object, on one line, on its stdout:
///
/// ```text
/// {"id":7,"answer":"allow_once","reason":"approved by the on-call operator"}
/// ```
///
/// - `id`: the question's;
/// - `answer`: `allow_once` (this request only), `allow_always` (this request and, as the
///   policy decides, later ones the capability covers) or `deny`;
/// - `reason` (optional): text recorded in the audit trail.
///
/// Several questions can be outstanding at once, and the program may answer them in any
/// order: answers are matched to questions by `id`. An answer that comes too late (its
/// question timed out, and was denied) is logged and ignored. An answer line that is not
/// valid fails the question whose `id` it carries ([`HookError::Protocol`]: denied); a line
/// with no `id` to be read is logged and ignored, and so is a line longer than 64 KiB.
/// Fields of an answer other than these are ignored. Whatever the program writes to its
/// stderr is logged, line by line, as warnings (target `tether::hook`).
///
/// The program must keep running: once it exits or closes its stdout, every outstanding
/// and later question fails ([`HookError::Gone`]), so requests no grant covers are denied
/// until the host starts a new hook. It must exit when its stdin ends: that is how it
/// learns that the host is gone, if the host could not kill it. A minimal hook that allows
/// every request once:
///
/// ```sh
/// #!/bin/sh
/// while IFS= read -r line; do
///   id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
///   printf '{"id":%s,"answer":"allow_once","reason":"allowed by the example"}\n' "$id"
/// done
/// ```
pub struct ExternalHook {
    shared: Arc<Shared>,
    pid: Option<u32>,
    /// The tasks reading the program's stdout (which owns the [`Child`], so aborting it
    /// kills the program) and its stderr.
    tasks: [AbortHandle; 2],
}

impl ExternalHook {
    /// Starts `program` with `args` (stdin/stdout piped, stderr lines forwarded to
    /// `tracing::warn` target `tether::hook`), killed when the `ExternalHook` is dropped
    /// (kill_on_drop).
    ///
    /// The program inherits the host's environment and working directory. Must be called
    /// within a Tokio runtime, which runs the tasks that read the program's output.
    pub fn spawn(
        name: impl Into<String>,
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
    ) -> Result<Self, HookError> {
        let name = name.into();
        let program = program.as_ref();
        let spawn_error = |source| HookError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|err| spawn_error(io::Error::other(err)))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[allow(
            clippy::disallowed_methods,
            reason = "the decision hook is the operator's own program, not a plugin: trusted, \
                      not sandboxed, and killed when its ExternalHook is dropped"
        )]
        let spawned = command.spawn();
        let mut child = spawned.map_err(spawn_error)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(spawn_error(io::Error::other(
                "its stdin, stdout and stderr were not piped",
            )));
        };
        let pid = child.id();
        let shared = Arc::new(Shared {
            name: name.clone(),
            state: Mutex::new(State::default()),
            stdin: tokio::sync::Mutex::new(LineWriter::new(stdin)),
        });
        let reader = runtime.spawn(read_answers(Arc::clone(&shared), child, stdout));
        let forwarder = runtime.spawn(forward_stderr(name, stderr));
        tracing::info!(target: TARGET, hook = %shared.name, pid, program = %program.to_string_lossy(),
            "started the decision hook");
        Ok(Self {
            shared,
            pid,
            tasks: [reader.abort_handle(), forwarder.abort_handle()],
        })
    }

    /// How many questions await an answer.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.shared.state().pending.len()
    }
}

impl fmt::Debug for ExternalHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("ExternalHook")
            .field("name", &self.shared.name)
            .field("pid", &self.pid)
            .field("outstanding", &state.pending.len())
            .field("gone", &state.gone)
            .finish()
    }
}

impl Drop for ExternalHook {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.gone("was stopped".to_owned(), false);
    }
}

impl DecisionHook for ExternalHook {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn decide(&self, question: Question) -> HookFuture {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.ask(&question).await })
    }
}

/// What an [`ExternalHook`] shares with its tasks and with the futures of its questions.
struct Shared {
    name: String,
    state: Mutex<State>,
    stdin: tokio::sync::Mutex<LineWriter<ChildStdin>>,
}

/// Where each question awaits its answer.
type Waiting = oneshot::Sender<Result<Verdict, HookError>>;

#[derive(Default)]
struct State {
    /// The id of the last question asked.
    last_id: u64,
    /// The questions awaiting an answer, by id.
    pending: HashMap<u64, Waiting>,
    /// Set once the hook is gone: what became of it.
    gone: Option<String>,
}

/// A question on the wire.
#[derive(Serialize)]
struct WireQuestion<'a> {
    id: u64,
    #[serde(flatten)]
    question: &'a Question,
}

/// An answer on the wire.
#[derive(Deserialize)]
struct WireAnswer {
    id: u64,
    answer: Answer,
    #[serde(default)]
    reason: Option<String>,
}

/// Removes its question from the pending ones when dropped: answered, failed, or
/// abandoned by a caller that timed out.
struct Outstanding<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.shared.state().pending.remove(&self.id);
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gone_error(&self, detail: String) -> HookError {
        HookError::Gone {
            name: self.name.clone(),
            detail,
        }
    }

    /// Asks `question` and waits for its answer.
    async fn ask(&self, question: &Question) -> Result<Verdict, HookError> {
        let (id, mut answer) = {
            let mut state = self.state();
            if let Some(detail) = &state.gone {
                return Err(self.gone_error(detail.clone()));
            }
            state.last_id += 1;
            let id = state.last_id;
            let (sender, receiver) = oneshot::channel();
            state.pending.insert(id, sender);
            (id, receiver)
        };
        let _outstanding = Outstanding { shared: self, id };
        let mut line = serde_json::to_vec(&WireQuestion { id, question }).map_err(|err| {
            HookError::Failed {
                name: self.name.clone(),
                detail: format!("could not encode the question: {err}"),
            }
        })?;
        line.push(b'\n');
        let written = self.stdin.lock().await.write_line(line).await;
        match written {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                // The hook no longer reads its stdin: it has exited, or will not answer.
                // Wait a little for the reader to report how it ended.
                if let Ok(Ok(result)) = tokio::time::timeout(STDIN_CLOSED_GRACE, &mut answer).await
                {
                    return result;
                }
                return Err(self.gone_error(self.gone("closed its stdin".to_owned(), false)));
            }
            Err(err) => {
                return Err(HookError::Failed {
                    name: self.name.clone(),
                    detail: format!("could not write the question to its stdin: {err}"),
                });
            }
        }
        match answer.await {
            Ok(result) => result,
            // Every sender is used before it is dropped; should one not be, the hook is
            // as good as gone.
            Err(_) => Err(self.gone_error("dropped the question".to_owned())),
        }
    }

    /// Declares the hook gone (`detail` replaces an earlier reason only if `replace`),
    /// fails every outstanding question, and returns the reason now recorded.
    fn gone(&self, detail: String, replace: bool) -> String {
        let (detail, pending) = {
            let mut state = self.state();
            let detail = match &state.gone {
                Some(earlier) if !replace => earlier.clone(),
                _ => {
                    state.gone = Some(detail.clone());
                    detail
                }
            };
            (detail, std::mem::take(&mut state.pending))
        };
        for waiting in pending.into_values() {
            // The question may have been abandoned meanwhile; nothing to tell then.
            let _ = waiting.send(Err(self.gone_error(detail.clone())));
        }
        detail
    }

    /// Handles one line of the hook's stdout.
    fn answer(&self, line: &[u8]) {
        if line.trim_ascii().is_empty() {
            return;
        }
        let (id, result) = match serde_json::from_slice::<WireAnswer>(line) {
            Ok(wire) => (
                wire.id,
                Ok(Verdict {
                    answer: wire.answer,
                    reason: wire.reason,
                }),
            ),
            Err(err) => {
                let id = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|value| value.get("id").and_then(serde_json::Value::as_u64));
                let Some(id) = id else {
                    tracing::warn!(target: TARGET, hook = %self.name, line = %shown(line, SHOWN_ANSWER),
                        %err, "ignored a line of the decision hook that is not an answer");
                    return;
                };
                tracing::warn!(target: TARGET, hook = %self.name, id, line = %shown(line, SHOWN_ANSWER),
                    %err, "the decision hook sent an answer that is not valid");
                let error = HookError::Protocol {
                    name: self.name.clone(),
                    line: shown(line, SHOWN_ANSWER),
                    detail: err.to_string(),
                };
                (id, Err(error))
            }
        };
        let waiting = self.state().pending.remove(&id);
        match waiting {
            Some(waiting) => {
                // The question may have been abandoned since; nothing to tell then.
                let _ = waiting.send(result);
            }
            None => tracing::info!(target: TARGET, hook = %self.name, id,
                "ignored an answer to a question that is not outstanding (it timed out, or was never asked)"),
        }
    }
}

/// The program's stdin, and the line being written to it.
struct LineWriter<W> {
    stdin: W,
    line: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    fn new(stdin: W) -> Self {
        Self {
            stdin,
            line: Vec::new(),
            written: 0,
        }
    }

    /// Writes `line`, first finishing the line of an earlier question whose future was
    /// dropped midway, so the hook never reads two questions spliced together.
    /// Cancel-safe: what is written is counted as it is written.
    async fn write_line(&mut self, line: Vec<u8>) -> io::Result<()> {
        self.finish().await?;
        self.line = line;
        self.written = 0;
        self.finish().await
    }

    async fn finish(&mut self) -> io::Result<()> {
        while let Some(rest) = self
            .line
            .get(self.written..)
            .filter(|rest| !rest.is_empty())
        {
            match self.stdin.write(rest).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => self.written += n,
            }
        }
        Ok(())
    }
}

/// What [`read_line`] read.
enum Line {
    /// A line, without its newline.
    Complete,
    /// A line longer than [`MAX_LINE`]: its first [`MAX_LINE`] bytes.
    TooLong,
    /// The end of the stream.
    End,
}

/// Reads one line into `line` (cleared first), keeping at most [`MAX_LINE`] bytes of it;
/// the rest of a longer line is read and discarded.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> io::Result<Line> {
    line.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Complete,
            });
        }
        let (content, used, complete) = match available.iter().position(|&byte| byte == b'\n') {
            Some(newline) => (&available[..newline], newline + 1, true),
            None => (available, available.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        too_long |= content.len() > room;
        line.extend_from_slice(&content[..content.len().min(room)]);
        reader.consume(used);
        if complete {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// Reads the answers on the hook's stdout until it closes, then fails every outstanding
/// and later question. Owns the hook's process: when this task ends or is aborted, the
/// process is killed (`kill_on_drop`).
async fn read_answers(shared: Arc<Shared>, mut child: Child, stdout: ChildStdout) {
    let mut stdout = BufReader::new(stdout);
    let mut line = Vec::new();
    let ended = loop {
        match read_line(&mut stdout, &mut line).await {
            Ok(Line::Complete) => shared.answer(&line),
            Ok(Line::TooLong) => {
                tracing::warn!(target: TARGET, hook = %shared.name, line = %shown(&line, SHOWN_ANSWER),
                    "ignored a line of the decision hook longer than {MAX_LINE} bytes")
            }
            Ok(Line::End) => break "closed its stdout".to_owned(),
            Err(err) => break format!("its stdout could not be read: {err}"),
        }
    };
    let detail = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) => exited(status),
        Ok(Err(err)) => format!("{ended}; its exit status is unknown: {err}"),
        // Still running, but of no more use: killed as `child` is dropped.
        Err(_) => ended,
    };
    tracing::warn!(target: TARGET, hook = %shared.name,
        "the decision hook is gone ({detail}); requests no grant covers are denied");
    shared.gone(detail, true);
}

/// Logs every line of the hook's stderr.
async fn forward_stderr(name: String, stderr: ChildStderr) {
    let mut stderr = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        match read_line(&mut stderr, &mut line).await {
            Ok(Line::Complete | Line::TooLong) => {
                tracing::warn!(target: TARGET, hook = %name, "{}", shown(&line, SHOWN_STDERR))
            }
            Ok(Line::End) => break,
            Err(err) => {
                tracing::warn!(target: TARGET, hook = %name, %err, "could not read the decision hook's stderr");
                break;
            }
        }
    }
}

/// How a process ended, in words.
fn exited(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// `line` as text fit for a log or an error: not UTF-8 replaced, control and other
/// invisible characters escaped, capped at `max` characters.
fn shown(line: &[u8], max: usize) -> String {
    let mut shown = String::new();
    for (index, c) in String::from_utf8_lossy(line).chars().enumerate() {
        if index == max {
            shown.push('…');
            break;
        }
        match c {
            // Quotes are left alone so JSON stays readable.
            '"' | '\'' => shown.push(c),
            _ => shown.extend(c.escape_debug()),
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;

    use super::*;

    /// Generous: the tests assert what happens, never how fast.
    const WAIT: Duration = Duration::from_secs(10);

    fn question(capability: &str) -> Question {
        Question {
            plugin: "filelister".to_owned(),
            instance: 1,
            pid: 4242,
            operation: "tether.bus.v1.Bus/Publish".to_owned(),
            resource: "alerts".to_owned(),
            capability: capability.to_owned(),
        }
    }

    /// A hook running `script` in `/bin/sh`.
    fn script(script: &str) -> ExternalHook {
        ExternalHook::spawn("script", "/bin/sh", &["-c", script]).expect("/bin/sh starts")
    }

    async fn ask(hook: &dyn DecisionHook, capability: &str) -> Result<Verdict, HookError> {
        timeout(WAIT, hook.decide(question(capability)))
            .await
            .expect("the hook answers in time")
    }

    /// Answers by the capability: `bus:publish:*` always, `env:*` never, anything else once.
    const BY_CAPABILITY: &str = r#"
        while IFS= read -r line; do
          id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
          case "$line" in
            *'"capability":"bus:publish:'*) answer=allow_always ;;
            *'"capability":"env:'*) answer=deny ;;
            *) answer=allow_once ;;
          esac
          printf '{"id":%s,"answer":"%s","reason":"%s by script"}\n' "$id" "$answer" "$answer"
        done
    "#;

    fn verdict(answer: Answer, reason: &str) -> Verdict {
        Verdict {
            answer,
            reason: Some(reason.to_owned()),
        }
    }

    #[tokio::test]
    async fn answers_allow_once_allow_always_and_deny() {
        let hook = script(BY_CAPABILITY);
        assert_eq!(hook.name(), "script");
        assert_eq!(
            ask(&hook, "read:notes/today.txt").await.unwrap(),
            verdict(Answer::AllowOnce, "allow_once by script")
        );
        assert_eq!(
            ask(&hook, "bus:publish:alerts").await.unwrap(),
            verdict(Answer::AllowAlways, "allow_always by script")
        );
        assert_eq!(
            ask(&hook, "env:API_KEY").await.unwrap(),
            verdict(Answer::Deny, "deny by script")
        );
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn writes_each_question_as_one_json_line() {
        // Echoes each question back as its answer's reason.
        let hook = script(
            r#"
            while IFS= read -r line; do
              id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
              quoted=$(printf '%s' "$line" | sed 's/\\/\\\\/g; s/"/\\"/g')
              printf '{"id":%s,"answer":"deny","reason":"%s"}\n' "$id" "$quoted"
            done
            "#,
        );
        let mut asked = question("bus:publish:alerts");
        asked.resource = "line\nbreak \"quoted\" \\ é".to_owned();
        let verdict = timeout(WAIT, hook.decide(asked.clone()))
            .await
            .expect("the hook answers in time")
            .unwrap();
        let line: serde_json::Value =
            serde_json::from_str(verdict.reason.as_deref().expect("a reason")).unwrap();
        assert!(line["id"].is_u64(), "{line}");
        assert_eq!(
            line,
            serde_json::json!({
                "id": line["id"],
                "plugin": "filelister",
                "instance": 1,
                "pid": 4242,
                "operation": "tether.bus.v1.Bus/Publish",
                "resource": asked.resource,
                "capability": "bus:publish:alerts",
            })
        );
    }

    #[tokio::test]
    async fn matches_answers_out_of_order_by_id() {
        // Reads two questions, then answers the second first; each reason names the
        // capability of the question it answers.
        let hook = script(
            r#"
            answer() {
              id=$(printf '%s' "$1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
              capability=$(printf '%s' "$1" | sed -n 's/.*"capability":"\([^"]*\)".*/\1/p')
              printf '{"id":%s,"answer":"%s","reason":"%s"}\n' "$id" "$2" "$capability"
            }
            IFS= read -r first
            IFS= read -r second
            answer "$second" deny
            answer "$first" allow_once
            cat >/dev/null
            "#,
        );
        let (a, b) = tokio::join!(ask(&hook, "read:a"), ask(&hook, "read:b"));
        let (a, b) = (a.unwrap(), b.unwrap());
        // Which question was written first is up to the scheduler; each answer must
        // reach its own question all the same.
        assert_eq!(a.reason.as_deref(), Some("read:a"));
        assert_eq!(b.reason.as_deref(), Some("read:b"));
        assert_ne!(a.answer, b.answer);
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn a_question_never_answered_is_forgotten_when_its_caller_gives_up() {
        let hook = script("cat >/dev/null");
        let mut pending = hook.decide(question("read:a"));
        assert!(
            timeout(Duration::from_millis(100), &mut pending)
                .await
                .is_err()
        );
        assert_eq!(hook.outstanding(), 1);
        drop(pending);
        assert_eq!(hook.outstanding(), 0);

        // The caller's timeout drops the future itself.
        let abandoned = timeout(Duration::from_millis(100), hook.decide(question("read:b"))).await;
        assert!(abandoned.is_err());
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn a_late_answer_is_ignored_and_later_questions_still_answered() {
        // Answers each question only once the next one arrives, then answers that one too.
        let hook = script(
            r#"
            IFS= read -r first
            IFS= read -r second
            for line in "$first" "$second"; do
              id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
              printf '{"id":%s,"answer":"allow_once","reason":"late or not"}\n' "$id"
            done
            cat >/dev/null
            "#,
        );
        let first = timeout(Duration::from_millis(100), hook.decide(question("read:a"))).await;
        assert!(first.is_err(), "the first question times out: {first:?}");
        assert_eq!(
            ask(&hook, "read:b").await.unwrap(),
            verdict(Answer::AllowOnce, "late or not")
        );
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn lines_that_are_not_answers_are_ignored() {
        let hook = script(
            r#"
            while IFS= read -r line; do
              id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
              echo 'not json at all'
              echo '{"no":"id"}'
              echo
              head -c 100000 /dev/zero | tr '\0' x
              echo
              printf '{"id":%s,"answer":"allow_once"}\n' "$id"
            done
            "#,
        );
        assert_eq!(
            ask(&hook, "read:a").await.unwrap(),
            Verdict {
                answer: Answer::AllowOnce,
                reason: None
            }
        );
    }

    #[tokio::test]
    async fn an_invalid_answer_with_an_id_fails_its_question() {
        let hook = script(
            r#"
            while IFS= read -r line; do
              id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
              printf '{"id":%s,"answer":"maybe","reason":"\\u001b[31m"}\n' "$id"
            done
            "#,
        );
        let err = ask(&hook, "read:a").await.unwrap_err();
        let HookError::Protocol { name, line, detail } = &err else {
            panic!("not a protocol error: {err:?}");
        };
        assert_eq!(name, "script");
        assert!(line.contains(r#""answer":"maybe""#), "{line}");
        assert!(detail.contains("maybe"), "{detail}");
        assert!(err.to_string().contains("maybe"), "{err}");
        // The hook is still usable.
        assert!(matches!(
            ask(&hook, "read:b").await,
            Err(HookError::Protocol { .. })
        ));
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn a_hook_that_exits_is_gone_for_this_and_every_later_question() {
        let hook = script("IFS= read -r line; exit 3");
        let err = ask(&hook, "read:a").await.unwrap_err();
        assert!(
            matches!(&err, HookError::Gone { name, detail } if name == "script" && detail == "exited with status 3"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the decision hook `script` is gone (exited with status 3); requests no grant covers are denied"
        );
        let err = ask(&hook, "read:b").await.unwrap_err();
        assert!(
            matches!(&err, HookError::Gone { detail, .. } if detail == "exited with status 3"),
            "{err:?}"
        );
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn a_hook_that_exits_at_once_is_gone() {
        // The question may be written before the hook ends, or fail to be written after.
        let hook = script("exit 5");
        let err = ask(&hook, "read:a").await.unwrap_err();
        assert!(
            matches!(&err, HookError::Gone { detail, .. }
                if detail == "exited with status 5" || detail == "closed its stdin"),
            "{err:?}"
        );
        assert!(matches!(
            ask(&hook, "read:b").await,
            Err(HookError::Gone { .. })
        ));
        assert_eq!(hook.outstanding(), 0);
    }

    #[tokio::test]
    async fn dropping_the_hook_fails_outstanding_questions() {
        let hook = script("cat >/dev/null");
        let mut pending = hook.decide(question("read:a"));
        assert!(
            timeout(Duration::from_millis(100), &mut pending)
                .await
                .is_err()
        );
        drop(hook);
        let err = timeout(WAIT, pending)
            .await
            .expect("fails in time")
            .unwrap_err();
        assert!(
            matches!(&err, HookError::Gone { detail, .. } if detail == "was stopped"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn spawning_a_missing_program_names_it() {
        let err =
            ExternalHook::spawn("missing", "/nonexistent/tether-hook", &[] as &[&str]).unwrap_err();
        assert!(
            matches!(&err, HookError::Spawn { program, source }
                if program == "/nonexistent/tether-hook" && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("could not start the decision hook `/nonexistent/tether-hook`: "),
            "{err}"
        );
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error() {
        let err = ExternalHook::spawn("sh", "/bin/sh", &["-c", "true"]).unwrap_err();
        assert!(matches!(&err, HookError::Spawn { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn fn_hook_decides_with_its_function() {
        let hook = FnHook::new("rules", |question: &Question| Verdict {
            answer: if question.capability.starts_with("bus:") {
                Answer::AllowOnce
            } else {
                Answer::Deny
            },
            reason: Some(format!("rule for {}", question.plugin)),
        });
        assert_eq!(hook.name(), "rules");
        assert_eq!(
            ask(&hook, "bus:publish:alerts").await.unwrap(),
            verdict(Answer::AllowOnce, "rule for filelister")
        );
        assert_eq!(
            ask(&hook, "env:API_KEY").await.unwrap(),
            verdict(Answer::Deny, "rule for filelister")
        );
        let hook: Arc<dyn DecisionHook> = Arc::new(hook);
        assert!(format!("{hook:?}").contains("rules"));
    }

    #[tokio::test]
    async fn fn_hook_that_panics_fails_the_question() {
        let hook = FnHook::new("panics", |_: &Question| -> Verdict { panic!("no rule") });
        assert!(matches!(
            ask(&hook, "read:a").await,
            Err(HookError::Failed { .. })
        ));
    }

    #[tokio::test]
    async fn a_line_abandoned_midway_is_finished_before_the_next() {
        // A pipe that holds 16 bytes, read by nobody at first.
        let (stdin, mut hook_end) = tokio::io::duplex(16);
        let mut writer = LineWriter::new(stdin);
        let first = format!("{{\"id\":1,\"pad\":\"{}\"}}\n", "x".repeat(100));
        let second = "{\"id\":2}\n".to_owned();
        let abandoned = timeout(
            Duration::from_millis(50),
            writer.write_line(first.clone().into_bytes()),
        )
        .await;
        assert!(abandoned.is_err(), "the pipe is full: {abandoned:?}");
        let read = tokio::spawn(async move {
            let mut all = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut hook_end, &mut all)
                .await
                .map(|_| all)
        });
        timeout(WAIT, writer.write_line(second.clone().into_bytes()))
            .await
            .expect("written in time")
            .unwrap();
        drop(writer);
        let all = timeout(WAIT, read)
            .await
            .expect("read in time")
            .unwrap()
            .unwrap();
        assert_eq!(all, first + &second);
    }

    #[test]
    fn shown_escapes_and_caps() {
        assert_eq!(
            shown(b"{\"a\":1}\x1b[31m\n", 200),
            "{\"a\":1}\\u{1b}[31m\\n"
        );
        assert_eq!(shown("é\u{202e}".as_bytes(), 200), "é\\u{202e}");
        assert_eq!(shown(&[b'x'; 300], 200), format!("{}…", "x".repeat(200)));
        assert_eq!(shown(b"\xff", 200), "\u{fffd}");
    }

    #[test]
    fn answers_are_snake_case() {
        for (answer, text) in [
            (Answer::AllowOnce, "\"allow_once\""),
            (Answer::AllowAlways, "\"allow_always\""),
            (Answer::Deny, "\"deny\""),
        ] {
            assert_eq!(serde_json::to_string(&answer).unwrap(), text);
            assert_eq!(serde_json::from_str::<Answer>(text).unwrap(), answer);
        }
    }
}
