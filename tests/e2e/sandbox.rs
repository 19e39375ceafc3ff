//! The sandbox against a hostile plugin: every direct access of docs/security.md sections D
//! and E (items 23-28) and B15's `/proc/<host>/environ`, each a row with the errno the
//! kernel must answer under `Strict`; the same plugin unconfined (`Off`) to prove the rows
//! can fail; memory and fork bombs; a plugin that never answers.

use std::collections::BTreeSet;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use tether_host::{
    Error, Layer, PluginBuilder, PluginClient, ResourceLimits, Sandbox, allowed_syscalls,
    conditional_syscalls, refused_syscalls,
};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{EchoRequest, HostOpRequest, HostOpResponse};

use crate::support::{
    HANDSHAKE, HOSTILE_PLUGIN, PATIENCE, eventually, is_gone, kernel_enforces, missing,
    record_events, recorded, sandbox,
};

const EPERM: &str = "errno 1";
const EACCES: &str = "errno 13";

fn hostile(name: &str, sandbox: Sandbox) -> PluginBuilder {
    record_events();
    PluginClient::builder(name, HOSTILE_PLUGIN)
        .handshake(HANDSHAKE)
        .sandbox(sandbox)
}

async fn attempt(plugin: &PluginClient, op: &str, arg: &str) -> HostOpResponse {
    TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: op.into(),
            path: arg.as_bytes().to_vec(),
            ..HostOpRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("{op} {arg}: the plugin did not answer: {status}"))
        .into_inner()
}

/// What the host offers to be attacked: a file, a TCP and a UDP socket, its own pid.
struct Targets {
    _dir: tempfile::TempDir,
    secret: String,
    tcp: TcpListener,
    udp: UdpSocket,
}

impl Targets {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("fixture setup");
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, "HOST-SECRET").expect("fixture setup");
        Targets {
            secret: secret.to_string_lossy().into_owned(),
            _dir: dir,
            tcp: TcpListener::bind("127.0.0.1:0").expect("fixture setup"),
            udp: UdpSocket::bind("127.0.0.1:0").expect("fixture setup"),
        }
    }

    /// Each attempt: item, operation, argument, the outcome under `Strict`, and the layer
    /// that gives that outcome.
    fn rows(&self) -> Vec<(&'static str, &'static str, String, &'static str, Layer)> {
        let host = std::process::id().to_string();
        let tcp = self.tcp.local_addr().expect("bound").to_string();
        let udp = self.udp.local_addr().expect("bound").to_string();
        let (fs, scopes, seccomp) = (
            Layer::LandlockFilesystem,
            Layer::LandlockScopes,
            Layer::Seccomp,
        );
        vec![
            ("D23", "read", "/etc/passwd".into(), EACCES, fs),
            ("D23", "read", self.secret.clone(), EACCES, fs),
            ("D23", "read", format!("/proc/{host}/cmdline"), EACCES, fs),
            ("B15", "read", format!("/proc/{host}/environ"), EACCES, fs),
            ("D24", "tcp_connect", tcp, EPERM, seccomp),
            ("D24", "tcp_bind", String::new(), EPERM, seccomp),
            ("D24", "udp_send", udp, EPERM, seccomp),
            ("D24", "netlink", String::new(), EPERM, seccomp),
            ("D25", "signal", host.clone(), EPERM, scopes),
            ("D25", "ptrace", host.clone(), EPERM, seccomp),
            ("D25", "vm_read", host, EPERM, seccomp),
            ("D27", "write_exec", String::new(), EACCES, fs),
            ("D27", "write_exec", "/tmp".into(), EACCES, fs),
            ("D27", "memfd_exec", String::new(), EPERM, seccomp),
            ("D25", "unshare", String::new(), EPERM, seccomp),
            ("D25", "clone_namespace", String::new(), EPERM, seccomp),
            ("E28", "fork", String::new(), EPERM, seccomp),
            ("E28", "fork_bomb", String::new(), EPERM, seccomp),
        ]
    }
}

/// Under `Strict` (or, on a kernel without every layer, `BestEffort`, checking only the
/// rows of the layers it has and recording the others as skipped).
#[tokio::test]
async fn under_strict_every_direct_access_fails_with_the_expected_errno() {
    let targets = Targets::new();
    let plugin = hostile("hostile-strict", sandbox())
        .start()
        .await
        .expect("the hostile plugin starts under Strict");

    let status = plugin.sandbox().expect("a started plugin's sandbox");
    for layer in Layer::ALL {
        if missing(layer).is_none() {
            assert!(status.is_enforced(layer), "{layer}: {status}");
        }
    }

    let mut failures = Vec::new();
    for (item, op, arg, expected, layer) in targets.rows() {
        if !kernel_enforces(layer, &format!("row {item} {op}")) {
            continue;
        }
        let answer = attempt(&plugin, op, &arg).await;
        if answer.outcome != expected {
            failures.push(format!(
                "{item} {op} {arg:?}: expected {expected}, got {} ({})",
                answer.outcome, answer.message
            ));
        }
        if String::from_utf8_lossy(&answer.data).contains("SECRET") {
            failures.push(format!("{item} {op} {arg:?}: the host's secret leaked"));
        }
    }
    // D26: only fds 0-2 were inherited, and the descriptor channel the host gave on
    // purpose, under the number it named.
    if kernel_enforces(Layer::FileDescriptors, "row D26 fds") {
        let fds = attempt(&plugin, "fds", "").await;
        let channel = String::from_utf8_lossy(&fds.data).into_owned();
        if channel.is_empty() || fds.names != ["0", "1", "2", channel.as_str()] {
            failures.push(format!(
                "D26 fds: inherited {:?} (the descriptor channel is {channel:?})",
                fds.names
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The plugin and the host are both still fine.
    let echo = TestingClient::new(plugin.channel())
        .echo(EchoRequest {
            message: "still here".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.message, "still here");
    plugin.shutdown().await.unwrap();
}

#[tokio::test]
async fn unconfined_the_same_plugin_reads_the_host_files_so_the_rows_can_fail() {
    let targets = Targets::new();
    let plugin = hostile("hostile-off", Sandbox::off())
        .start()
        .await
        .unwrap();
    assert!(
        !plugin
            .sandbox()
            .expect("a started plugin's sandbox")
            .is_enforced(Layer::LandlockFilesystem)
    );

    let read = attempt(&plugin, "read", &targets.secret).await;
    assert_eq!(read.outcome, "ok", "{}", read.message);
    assert_eq!(read.data, b"HOST-SECRET");
    let passwd = attempt(&plugin, "read", "/etc/passwd").await;
    assert_eq!(passwd.outcome, "ok", "{}", passwd.message);
    let tcp = targets.tcp.local_addr().unwrap().to_string();
    assert_eq!(attempt(&plugin, "tcp_connect", &tcp).await.outcome, "ok");
    plugin.shutdown().await.unwrap();
}

#[tokio::test]
async fn allowed_processes_still_cannot_enter_new_namespaces_or_leave_the_group() {
    if !kernel_enforces(
        Layer::Seccomp,
        "namespaces and setsid are denied by the filter",
    ) {
        return;
    }
    let plugin = hostile("hostile-forker", sandbox().allow_processes(true))
        .start()
        .await
        .unwrap();
    assert_eq!(attempt(&plugin, "fork", "").await.outcome, "ok");
    // Nor leave the process group, which would let a process outlive the plugin.
    for op in ["clone_namespace", "unshare", "memfd_exec", "leave_group"] {
        let answer = attempt(&plugin, op, "").await;
        assert_eq!(answer.outcome, EPERM, "{op}: {}", answer.message);
    }
    plugin.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_memory_bomb_kills_only_the_plugin_and_the_host_reports_it() {
    let limited = sandbox().limits(ResourceLimits {
        address_space: Some(1 << 30),
        ..ResourceLimits::default()
    });
    let plugin = hostile("memory-bomb", limited).start().await.unwrap();
    let pid = plugin.pid();
    let call = TestingClient::new(plugin.channel())
        .host_op(HostOpRequest {
            op: "memory_bomb".into(),
            ..HostOpRequest::default()
        })
        .await;
    assert!(call.is_err(), "the bomb returned: {call:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), plugin.wait())
        .await
        .expect("the plugin died")
        .expect("an exit status")
        .status()
        .expect("a started plugin's exit status is known");
    // The allocator aborts when the address-space limit refuses more.
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(is_gone(pid));

    // The host goes on starting plugins.
    let next = hostile("after-the-bomb", sandbox()).start().await.unwrap();
    next.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_fork_bomb_never_starts_a_single_process() {
    if !kernel_enforces(Layer::Seccomp, "new processes are denied by the filter") {
        return;
    }
    let plugin = hostile("fork-bomb", sandbox()).start().await.unwrap();
    let bomb = attempt(&plugin, "fork_bomb", "").await;
    assert_eq!(bomb.outcome, EPERM, "{}", bomb.message);
    assert_eq!(bomb.size, 0, "processes started");
    plugin.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_plugin_that_never_answers_is_bounded_by_the_callers_deadline_and_killed() {
    let plugin = hostile("hanger", sandbox()).start().await.unwrap();
    let pid = plugin.pid();
    let call = tokio::time::timeout(Duration::from_millis(500), attempt(&plugin, "hang", "")).await;
    assert!(call.is_err(), "the hang answered");
    let exit = tokio::time::timeout(Duration::from_secs(30), plugin.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
    assert!(
        exit.status.status().and_then(|s| s.code()).is_some()
            || exit.status.status().and_then(|s| s.signal()).is_some()
    );
    assert!(is_gone(pid));
}

#[tokio::test]
async fn strict_refuses_to_start_when_a_layer_cannot_be_built_and_says_which() {
    let what = "a Landlock rule on a missing path is the layer that cannot be built";
    if !(kernel_enforces(Layer::FileDescriptors, what)
        && kernel_enforces(Layer::LandlockFilesystem, what))
    {
        return;
    }
    let err = hostile(
        "unbuildable",
        Sandbox::strict().allow_read("/nonexistent/tether-path"),
    )
    .start()
    .await
    .expect_err("a rule on a missing path cannot be built");
    let Error::Sandbox { source, .. } = &err else {
        panic!("expected a sandbox error, got {err}");
    };
    assert_eq!(source.layer, Layer::LandlockFilesystem);
    let message = err.to_string();
    assert!(
        message.contains("unbuildable") && message.contains("/nonexistent/tether-path"),
        "{message}"
    );
}

/// The C library's errno values the filter answers with.
const EPERM_CODE: u32 = 1;
const ENOSYS_CODE: u32 = 38;
const ENOTTY_CODE: u32 = 25;

/// `(value, errno)` pairs of two little-endian u32 each, as the hostile plugin reports them.
fn pairs(data: &[u8]) -> Vec<(u32, u32)> {
    data.chunks_exact(8)
        .map(|pair| {
            let word =
                |at: usize| u32::from_le_bytes(pair[at..at + 4].try_into().expect("four bytes"));
            (word(0), word(4))
        })
        .collect()
}

#[tokio::test]
async fn every_system_call_off_the_allowlist_is_refused() {
    if !kernel_enforces(Layer::Seccomp, "the system call filter") {
        return;
    }
    let plugin = hostile("syscall-sweep", sandbox()).start().await.unwrap();
    let allowed: BTreeSet<i64> = allowed_syscalls(false)
        .iter()
        .chain(&conditional_syscalls())
        .map(|call| call.number)
        .collect();
    let refused: BTreeSet<i64> = refused_syscalls(false)
        .iter()
        .map(|call| call.number)
        .collect();
    // Every number the architecture has room for, far past the newest system call, but
    // the two the kernel never filters: x86_64's uretprobe (335) and uprobe (336) pass
    // every seccomp filter by design, and called from anywhere but the kernel's probe
    // trampoline they only kill the caller (SIGILL) or fail.
    let unfiltered: &[i64] = if cfg!(target_arch = "x86_64") {
        &[335, 336]
    } else {
        &[]
    };
    let swept: Vec<i64> = (0..1024)
        .filter(|n| !allowed.contains(n) && !unfiltered.contains(n))
        .collect();
    let list = swept
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let answer = attempt(&plugin, "syscalls", &list).await;
    let results = pairs(&answer.data);
    assert_eq!(results.len(), swept.len(), "{}", answer.message);
    let wrong: Vec<String> = results
        .iter()
        .filter_map(|&(number, errno)| {
            let expected = if refused.contains(&i64::from(number)) {
                EPERM_CODE
            } else {
                ENOSYS_CODE
            };
            (errno != expected).then(|| format!("{number}: errno {errno}, expected {expected}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} calls got past the filter or the wrong answer:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Still serving.
    assert_eq!(attempt(&plugin, "fds", "").await.outcome, "ok");
    plugin.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_ioctl_request_off_the_allowlist_is_refused_on_files_binaries_and_sockets() {
    if !kernel_enforces(Layer::Seccomp, "the ioctl allowlist") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readable");
    std::fs::write(&file, "a granted file").unwrap();
    let plugin = hostile("ioctl-sweep", sandbox().allow_read(dir.path()))
        .start()
        .await
        .unwrap();
    let allowed = [libc::FIONREAD, libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX].map(|r| r as u32);
    let terminal = [libc::TCGETS, libc::TIOCGWINSZ].map(|r| r as u32);
    let binary = std::fs::canonicalize(HOSTILE_PLUGIN).unwrap();
    for target in [file.to_str().unwrap(), binary.to_str().unwrap(), "socket"] {
        let answer = attempt(&plugin, "ioctls", target).await;
        assert_eq!(answer.outcome, "ok", "{target}: {}", answer.message);
        let results = pairs(&answer.data);
        assert!(
            results.len() > 30_000,
            "{target}: only {} requests",
            results.len()
        );
        let wrong: Vec<String> = results
            .iter()
            .filter(|(request, _)| !allowed.contains(request))
            .filter_map(|&(request, errno)| {
                let expected = if terminal.contains(&request) {
                    ENOTTY_CODE
                } else {
                    EPERM_CODE
                };
                (errno != expected)
                    .then(|| format!("{request:#010x}: errno {errno}, expected {expected}"))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{target}: {} requests got past the filter or the wrong answer, e.g.\n{}",
            wrong.len(),
            wrong[..wrong.len().min(20)].join("\n")
        );
    }
    plugin.shutdown().await.unwrap();
}

/// Mode, owner, times and extended attributes of `path`, as the host sees them.
fn attributes_of(path: &std::path::Path) -> (u32, u32, i64, i64, isize) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).expect("the file exists");
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    let mut names = [0u8; 1024];
    // SAFETY: listxattr writes at most `names.len()` bytes into `names`.
    let listed =
        unsafe { libc::listxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    (
        meta.mode(),
        meta.uid(),
        meta.mtime(),
        meta.mtime_nsec(),
        listed,
    )
}

#[tokio::test]
async fn attribute_calls_old_and_new_are_refused_on_host_files_and_the_plugins_own_binary() {
    if !kernel_enforces(
        Layer::Seccomp,
        "the attribute calls are refused by the filter",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The plugin runs from a copy, so that a failure cannot damage the build's binary.
    let binary = dir.path().join("hostile-plugin");
    std::fs::copy(HOSTILE_PLUGIN, &binary).unwrap();
    let readable = dir.path().join("granted/readable");
    std::fs::create_dir(dir.path().join("granted")).unwrap();
    std::fs::write(&readable, "granted").unwrap();
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, "HOST-SECRET").unwrap();
    let plugin = PluginClient::builder("attribute-thief", &binary)
        .handshake(HANDSHAKE)
        .sandbox(sandbox().allow_read(dir.path().join("granted")))
        .start()
        .await
        .unwrap();
    // The *xattrat and fileattr calls are newer than any list: refused as unknown.
    let newer = [
        "setxattrat",
        "getxattrat",
        "listxattrat",
        "removexattrat",
        "file_getattr",
        "file_setattr",
    ];
    for path in [&secret, &readable, &binary] {
        let before = attributes_of(path);
        let answer = attempt(&plugin, "attributes", path.to_str().unwrap()).await;
        assert_eq!(answer.names.len(), 18, "{answer:?}");
        for tried in &answer.names {
            let (call, errno) = tried.split_once(' ').unwrap();
            let expected = if newer.contains(&call) {
                ENOSYS_CODE
            } else {
                EPERM_CODE
            };
            assert_eq!(
                errno.parse::<u32>().unwrap(),
                expected,
                "{call} on {}: {tried}",
                path.display()
            );
        }
        assert_eq!(attributes_of(path), before, "{} changed", path.display());
    }
    plugin.shutdown().await.unwrap();
}

#[tokio::test]
async fn another_sandboxed_plugin_cannot_call_or_stop_a_plugin_and_the_attempt_is_logged() {
    let victim = crate::support::test_plugin("victim").start().await.unwrap();
    let socket = victim
        .reattach_config()
        .expect("a running plugin's config")
        .address;
    let intruder = hostile("intruder", sandbox()).start().await.unwrap();
    let answer = attempt(&intruder, "dial_plugin", socket.to_str().unwrap()).await;
    assert!(!answer.names.is_empty(), "{answer:?}");
    assert!(
        answer.names.iter().all(|said| said.contains(": refused")),
        "the intruder got through: {:?}",
        answer.names
    );
    victim.health().await.expect("the victim still serves");
    // The victim logged the refusal, naming the intruder.
    let intruder_pid = format!("pid {}", intruder.pid());
    let logged = eventually(PATIENCE, || {
        recorded("victim").iter().any(|event| {
            event.message.contains("refused a connection") && event.message.contains(&intruder_pid)
        })
    })
    .await;
    assert!(logged, "no refusal logged: {:?}", recorded("victim"));
    intruder.shutdown().await.unwrap();
    let exit = victim.shutdown().await.unwrap();
    assert!(exit.status.success(), "{exit:?}");
}

/// A descriptor the host holds without close-on-exec (as any library may leave one) stays
/// in the host: the child takes a descriptor table of its own with only what it is given,
/// even unconfined, where no sandbox layer closes anything.
#[tokio::test]
async fn a_descriptor_the_host_leaks_reaches_no_plugin_even_an_unconfined_one() {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open("/dev/null").expect("fixture setup");
    // SAFETY: getrlimit writes the struct it is given.
    let soft = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    };
    // High, as in a host that holds many plugins' descriptors.
    let at = libc::c_int::try_from(soft.saturating_sub(16).min(4000)).expect("a small number");
    // SAFETY: duplicates an open descriptor; F_DUPFD (not F_DUPFD_CLOEXEC) leaves the copy
    // inheritable across exec. Closed below.
    let leaked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, at) };
    assert!(
        leaked >= at,
        "fixture setup: {}",
        std::io::Error::last_os_error()
    );
    let started = hostile("leak-unconfined", Sandbox::off()).start().await;
    let fds = match &started {
        Ok(plugin) => Some(attempt(plugin, "fds", "").await),
        Err(_) => None,
    };
    // SAFETY: the descriptor duplicated above, closed once.
    unsafe { libc::close(leaked) };
    let plugin = started.expect("the plugin starts unconfined");
    let fds = fds.expect("the plugin answered");
    assert!(
        !fds.names.contains(&leaked.to_string()),
        "the host's descriptor {leaked} reached the plugin: it holds {:?}",
        fds.names
    );
    for stdio in ["0", "1", "2"] {
        assert!(
            fds.names.iter().any(|name| name == stdio),
            "{:?}",
            fds.names
        );
    }
    plugin.shutdown().await.expect("it stops");
}

/// A program that exists and is executable but cannot be executed (its interpreter is
/// missing) is refused with the step that failed, and leaves no process behind.
#[tokio::test]
async fn a_program_the_kernel_cannot_execute_is_refused_with_the_step_that_failed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("fixture setup");
    let script = dir.path().join("no-interpreter");
    std::fs::write(&script, "#!/nonexistent/tether-interpreter\n").expect("fixture setup");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("fixture setup");
    let err = PluginClient::builder("no-interpreter", &script)
        .handshake(HANDSHAKE)
        .sandbox(Sandbox::off())
        .start()
        .await
        .expect_err("nothing can be executed");
    let Error::Spawn { source, .. } = &err else {
        panic!("expected a spawn error, got {err}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("executing the program")
            && message.contains("no-interpreter")
            && message.contains("check the path and that it is executable"),
        "{message}"
    );
}
