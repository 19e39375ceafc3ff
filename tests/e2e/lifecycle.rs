//! Start, call, observe, stop: the plugin lifecycle with real processes.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_host::{StdioSink, Stop};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{EchoRequest, LogRequest, PrintRequest, SpawnChildRequest};
use tracing::Level;

use crate::support::*;

#[tokio::test]
async fn start_call_observe_and_stop_gracefully() {
    let stdio = SharedBuffer::default();
    let plugin = test_plugin("lifecycle")
        .stdio(StdioSink::Writer(Box::new(stdio.clone())))
        .start()
        .await
        .expect("the test plugin starts");
    let pid = plugin.pid();
    let socket_dir = plugin.socket_dir().expect("socket dir").to_owned();
    let mode = std::fs::metadata(&socket_dir)
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the socket directory is private");
    plugin.health().await.expect("healthy");

    let mut testing = TestingClient::new(plugin.channel());
    let reply = testing
        .echo(EchoRequest {
            message: "ping".into(),
        })
        .await
        .expect("echo")
        .into_inner();
    assert_eq!(reply.message, "ping");

    // What the plugin's code prints arrives over the stdio stream, not as protocol noise.
    testing
        .print(PrintRequest {
            stdout: "to stdout\n".into(),
            stderr: "to stderr\n".into(),
            repeat: 0,
        })
        .await
        .expect("print");
    assert!(
        eventually(PATIENCE, || {
            let text = stdio.text();
            text.contains("to stdout\n") && text.contains("to stderr\n")
        })
        .await,
        "stdio did not arrive: {:?}",
        stdio.text()
    );

    // Log lines keep their level and fields.
    testing.log(LogRequest {}).await.expect("log");
    let expected = [
        ("a trace line", Level::TRACE, "n=0"),
        ("a debug line", Level::DEBUG, "n=1"),
        ("an info line", Level::INFO, "n=2"),
        ("a warn line", Level::WARN, "n=3"),
        ("an error line", Level::ERROR, "n=4"),
    ];
    assert!(
        eventually(PATIENCE, || {
            let events = recorded("lifecycle");
            expected.iter().all(|(message, level, field)| {
                events.iter().any(|e| {
                    e.target == "tether::plugin"
                        && e.message == *message
                        && e.level == *level
                        && e.fields.contains(field)
                })
            })
        })
        .await,
        "log lines not re-levelled: {:#?}",
        recorded("lifecycle")
    );

    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful);
    assert!(exit.status.success(), "{:?}", exit.status);
    assert!(is_gone(pid));
    assert!(!socket_dir.exists(), "the socket directory is removed");
}

#[tokio::test]
async fn a_plugin_that_ignores_shutdown_is_killed_after_the_timeouts() {
    let plugin = test_plugin("stubborn")
        .arg("--ignore-shutdown")
        .graceful_timeout(Duration::from_millis(300))
        .kill_timeout(Duration::from_millis(300))
        .start()
        .await
        .expect("start");
    let pid = plugin.pid();
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Killed);
    assert_eq!(
        exit.status.status().and_then(|s| s.signal()),
        Some(9),
        "{:?}",
        exit.status
    );
    assert!(is_gone(pid));
}

#[tokio::test]
async fn a_forked_child_does_not_outlive_shutdown() {
    let plugin = test_plugin("forker")
        .sandbox(sandbox().allow_processes(true))
        .start()
        .await
        .expect("start");
    let child = TestingClient::new(plugin.channel())
        .spawn_child(SpawnChildRequest {})
        .await
        .expect("spawn child")
        .into_inner()
        .pid;
    assert!(!is_gone(child), "the child runs before shutdown");
    plugin.shutdown().await.expect("shutdown");
    assert!(
        eventually(PATIENCE, || is_gone(child)).await,
        "child {child} outlived its plugin"
    );
}

#[tokio::test]
async fn dropping_the_client_kills_the_plugin() {
    let plugin = test_plugin("dropped").start().await.expect("start");
    let pid = plugin.pid();
    let dir = plugin.socket_dir().expect("dir").to_owned();
    drop(plugin);
    assert!(
        eventually(PATIENCE, || is_gone(pid)).await,
        "pid {pid} survived"
    );
    assert!(!dir.exists());
}

#[tokio::test]
async fn sigterm_stops_the_plugin_gracefully_and_removes_its_socket() {
    let plugin = test_plugin("terminated").start().await.expect("start");
    let dir = plugin.socket_dir().expect("dir").to_owned();
    assert!(!is_empty_dir(&dir), "the socket exists while serving");
    let pid = rustix::process::Pid::from_raw(plugin.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = plugin.wait().await.expect("exit status");
    assert!(status.success(), "SIGTERM is a graceful stop: {status:?}");
    assert!(is_empty_dir(&dir), "the plugin removed its socket");
}

#[tokio::test]
async fn sigint_is_ignored() {
    let plugin = test_plugin("interrupted").start().await.expect("start");
    let pid = rustix::process::Pid::from_raw(plugin.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    // Once the signal is no longer pending it was delivered (or discarded as ignored): a
    // health check after that proves the plugin is still serving.
    assert!(
        eventually(PATIENCE, || !signal_pending(plugin.pid(), libc::SIGINT)).await,
        "SIGINT stayed pending"
    );
    plugin.health().await.expect("still healthy after SIGINT");
    assert_eq!(plugin.exit_status(), None);
    assert_eq!(
        plugin.shutdown().await.expect("shutdown").stop,
        Stop::Graceful
    );
}

#[tokio::test]
async fn a_flood_of_prints_neither_blocks_the_plugin_nor_breaks_the_protocol() {
    let plugin = test_plugin("chatty")
        .stdio(StdioSink::Discard)
        .start()
        .await
        .expect("start");
    let mut testing = TestingClient::new(plugin.channel());
    // 8 MiB of println!-style output in one call: far more than any pipe holds.
    testing
        .print(PrintRequest {
            stdout: format!("{}\n", "y".repeat(1023)),
            stderr: String::new(),
            repeat: 8 * 1024,
        })
        .await
        .expect("printing does not block the call");
    let reply = testing
        .echo(EchoRequest {
            message: "still here".into(),
        })
        .await
        .expect("echo after flood");
    assert_eq!(reply.into_inner().message, "still here");
    plugin.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn plugins_die_when_their_host_is_killed() {
    let sockets = SocketBase::new();
    #[allow(
        clippy::disallowed_methods,
        reason = "the test starts a host process in order to kill it"
    )]
    let mut host = Command::new(HOST_HELPER)
        .arg(TEST_PLUGIN)
        .envs(sockets.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the host helper");
    let mut line = String::new();
    BufReader::new(host.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the plugin pid");
    let pid: u32 = line
        .trim()
        .strip_prefix("plugin-pid ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unexpected host output {line:?}"));
    assert!(!is_gone(pid));

    host.kill().expect("SIGKILL the host");
    host.wait().expect("reap the host");
    let killed = Instant::now();
    assert!(
        eventually(PATIENCE, || is_gone(pid)).await,
        "plugin {pid} still alive {:?} after its host was killed",
        killed.elapsed()
    );
    // Nobody was left to remove the plugin's socket directory: it is in `sockets`, which
    // this test removes, not in the system temp dir.
    let left = sockets.socket_dirs();
    assert!(
        left.len() == 1 && left[0].starts_with("tether-helper-child-"),
        "{left:?}"
    );
}

#[tokio::test]
async fn nothing_a_plugin_forked_outlives_its_killed_host_not_even_an_orphan() {
    let sockets = SocketBase::new();
    #[allow(
        clippy::disallowed_methods,
        reason = "the test starts a host process in order to kill it"
    )]
    let mut host = Command::new(HOST_HELPER)
        .args(["orphan-host", HOSTILE_PLUGIN])
        .envs(sockets.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the host helper");
    let mut lines = BufReader::new(host.stdout.take().expect("stdout")).lines();
    let mut pid_of = |key: &str| -> u32 {
        let line = lines.next().expect("a line").expect("readable");
        line.strip_prefix(key)
            .and_then(|pid| pid.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected `{key} <pid>`, got {line:?}"))
    };
    let plugin = pid_of("plugin-pid ");
    let grandchild = pid_of("grandchild-pid ");
    assert!(!is_gone(plugin) && !is_gone(grandchild));
    // Orphaned: not the plugin's child any more, so no parent-death signal reaches it.
    let parent = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(") ")?;
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        });
    assert_ne!(
        parent,
        Some(plugin),
        "the grandchild is still the plugin's child"
    );

    host.kill().expect("SIGKILL the host");
    host.wait().expect("reap the host");
    assert!(
        eventually(PATIENCE, || is_gone(plugin) && is_gone(grandchild)).await,
        "after its host was killed: plugin {plugin} gone {}, grandchild {grandchild} gone {}",
        is_gone(plugin),
        is_gone(grandchild)
    );
}

#[tokio::test]
async fn versions_are_negotiated_to_the_highest_common_one() {
    let plugin = test_plugin("negotiated")
        .args(["--versions", "1,2"])
        .protocol_versions(&[2, 3])
        .start()
        .await
        .expect("start");
    assert_eq!(plugin.protocol_version(), 2);
    let reply = TestingClient::new(plugin.channel())
        .echo(EchoRequest {
            message: String::new(),
        })
        .await
        .expect("echo")
        .into_inner();
    assert_eq!(
        reply.protocol_version, 2,
        "the plugin serves its v2 services"
    );
    plugin.shutdown().await.expect("shutdown");
}

#[test]
fn a_plugin_run_by_hand_explains_itself_and_exits_1() {
    #[allow(
        clippy::disallowed_methods,
        reason = "running the plugin by hand, as a confused user would"
    )]
    let output = Command::new(TEST_PLUGIN)
        .env_clear()
        .output()
        .expect("run the plugin");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no handshake for a human");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("This binary is a tether plugin"),
        "{stderr}"
    );
    assert!(stderr.contains("TETHER_TEST_PLUGIN"), "{stderr}");
}

/// Whether `signal` is pending for process `pid` (for the process or any of its threads).
fn signal_pending(pid: u32, signal: i32) -> bool {
    let bit = 1u64 << (signal - 1);
    let pending = |status: &str| {
        status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("ShdPnd:")
                    .or_else(|| line.strip_prefix("SigPnd:"))
            })
            .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .any(|mask| mask & bit != 0)
    };
    let process = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|task| std::fs::read_to_string(task.path().join("status")).is_ok_and(|s| pending(&s)));
    pending(&process) || threads
}

/// A host started to be killed, and its plugin once known: whatever a failing test leaves
/// running is killed when this is dropped, so that no stray process outlives the test.
struct Orphaning {
    host: std::process::Child,
    plugin: Option<u32>,
}

impl Drop for Orphaning {
    fn drop(&mut self) {
        let _ = self.host.kill();
        let _ = self.host.wait();
        if let Some(plugin) = self.plugin.filter(|&pid| !is_gone(pid)) {
            let pid = rustix::process::Pid::from_raw(plugin.cast_signed()).expect("a pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Orphaning {
    /// Reads `plugin-pid <pid>` and the plugin's handshake line (possibly after
    /// `handshake `) from the host's stdout, in either order: once both are there, the
    /// plugin serves.
    fn started(mut host: std::process::Child) -> Orphaning {
        let stdout = host.stdout.take().expect("stdout");
        let mut orphaning = Orphaning { host, plugin: None };
        let mut lines = BufReader::new(stdout).lines();
        let mut handshake = false;
        while orphaning.plugin.is_none() || !handshake {
            let line = lines
                .next()
                .expect("the host printed the plugin's pid and handshake")
                .expect("readable");
            if let Some(number) = line.strip_prefix("plugin-pid ") {
                orphaning.plugin = Some(number.trim().parse().expect("a pid"));
            } else {
                let line = line.strip_prefix("handshake ").unwrap_or(&line);
                assert!(line.starts_with("1|1|unix|"), "not a handshake: {line:?}");
                handshake = true;
            }
        }
        orphaning
    }

    /// Kills the host with SIGKILL once the plugin watches it, and checks that the plugin,
    /// which nothing else will kill, stops by itself and says why in its log (`log`, its
    /// stderr). Through a pidfd, unless `polling`.
    async fn host_killed_plugin_stops(mut self, log: &Path, polling: bool) {
        let (watch, why) = if polling {
            (
                "by polling getppid()",
                "is gone (this plugin was reparented)",
            )
        } else {
            ("through a pidfd", "is gone (it exited)")
        };
        let plugin = self.plugin.expect("the plugin's pid");
        assert!(!is_gone(plugin), "plugin {plugin} is not running");
        // Once the plugin watches its host (through a pidfd: under the sandbox too, its
        // filter lets pidfd_open through), the host dies.
        let watching = eventually(PATIENCE, || {
            std::fs::read_to_string(log).is_ok_and(|text| text.contains(watch))
        })
        .await;
        assert!(
            watching,
            "the plugin does not watch its host {watch}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        self.host.kill().expect("SIGKILL the host");
        self.host.wait().expect("reap the host");
        let gone = eventually(PATIENCE, || is_gone(plugin)).await;
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            gone,
            "plugin {plugin} still runs after its host was killed; its log:\n{logged}"
        );
        // The plugin's own watch stopped it (nothing signalled it): its warning says how
        // it saw the host go, and the graceful path ran to the end.
        assert!(
            logged.contains(&format!("{why}; shutting down")),
            "no warning that the host is gone in its log:\n{logged}"
        );
        assert!(logged.contains("plugin stopped"), "{logged}");
    }
}

#[tokio::test]
async fn a_plugin_stops_by_itself_when_a_host_that_kills_nothing_dies() {
    // A host like go-plugin's, or any process: here a shell that starts the plugin in the
    // background with a host's environment, and is then killed.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = dir.path().join("plugin.log");
    #[allow(
        clippy::disallowed_methods,
        reason = "the test starts a host process in order to kill it"
    )]
    let host = Command::new("sh")
        .arg("-c")
        .arg(r#""$PLUGIN" 2>"$LOG" & echo "plugin-pid $!"; wait"#)
        .env_clear()
        .env("PLUGIN", TEST_PLUGIN)
        .env("LOG", &log)
        .env(
            HANDSHAKE.magic_cookie_key.as_ref(),
            HANDSHAKE.magic_cookie_value.as_ref(),
        )
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the shell");
    Orphaning::started(host)
        .host_killed_plugin_stops(&log, false)
        .await;
}

/// Starts the test plugin from `bare-host` in the sandbox for tests (Strict where this
/// kernel has every layer), with `pidfd_open` refused if `no_pidfd`, and checks it stops
/// by itself when the bare host is killed.
async fn bare_host_dies(no_pidfd: bool) {
    let mode = if sandbox().mode() == tether_host::SandboxMode::Strict {
        "strict"
    } else {
        "best-effort"
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(BARE_HOST);
    command.arg(mode).arg(TEST_PLUGIN).arg(dir.path());
    if no_pidfd {
        command.arg("no-pidfd");
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "the test starts a host process in order to kill it"
    )]
    let host = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the bare host");
    Orphaning::started(host)
        .host_killed_plugin_stops(&dir.path().join("plugin.log"), no_pidfd)
        .await;
}

#[tokio::test]
async fn a_strictly_sandboxed_plugin_stops_by_itself_when_its_host_dies() {
    // tether's sandbox applied by a host with neither the parent-death signal nor the
    // guard of tether's host: only the plugin's own watch can stop it, through the
    // sandbox's system call filter.
    bare_host_dies(false).await;
}

#[tokio::test]
async fn without_pidfd_open_a_plugin_still_stops_when_its_host_dies_by_polling() {
    // As on a kernel before 5.3: the watch falls back to polling getppid().
    bare_host_dies(true).await;
}
