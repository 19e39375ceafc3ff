//! A hostile plugin: on request, it tries each direct access of docs/security.md's corpus,
//! sections D and E, and reports what the kernel answered. It serves
//! `tether.testing.v1.Testing`; each attempt is a `HostOp` whose `op` names it and whose
//! `path` is its argument:
//!
//! - `read <path>`: read a file;
//! - `tcp_connect <addr>`, `tcp_bind`, `udp_send <addr>`, `netlink`: the network;
//! - `signal <pid>`, `ptrace <pid>`, `vm_read <pid>`: another process;
//! - `write_exec <dir>`: write an executable into `dir` and run it; `memfd_exec`: the same
//!   through an anonymous file;
//! - `fork`: start a process; `double_fork`: leave an orphaned grandchild running (its
//!   pid in `size`); `fork_bomb`: start them without end; `unshare`,
//!   `clone_namespace`: enter new namespaces;
//! - `memory_bomb`: allocate and touch memory without end;
//! - `fds`: the file descriptors open when `main` began;
//! - `dial_plugin <socket>`: connect to another plugin's socket, ask it to shut down and
//!   call it; `names` says how each went;
//! - `syscalls <n,n,...>`: each system call number with all-zero arguments; `data` holds,
//!   per number, the number and the errno (0 if it succeeded), as two little-endian u32;
//! - `ioctls <path>`: a sweep of ioctl requests on `path` opened read-only (`socket`: on a
//!   Unix socket), in `data` as request and errno pairs likewise;
//! - `attributes <path>`: every system call that changes or reads a file's attributes
//!   (xattrs old and new, fileattr, modes, owners, times) on `path`; `names` holds
//!   `<syscall> <errno>` for each, 0 if it succeeded;
//! - `hang`: never answer.
//!
//! The response's `outcome` is `ok` when the attempt succeeded, else `errno <n>`; `message`
//! says more. Nothing here is polite: run it only under tests.

#![allow(
    clippy::disallowed_types,
    reason = "a hostile test plugin: it dials sockets itself"
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::OnceLock;

use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{HandshakeConfig, Plugin, Routes};
use tether_test_contract::testing::testing_server::{Testing, TestingServer};
use tether_test_contract::testing::*;

const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e");

/// The fds open when `main` began: what the host let the plugin inherit.
static INHERITED: OnceLock<Vec<String>> = OnceLock::new();

struct Hostile;

fn errno(err: &std::io::Error) -> HostOpResponse {
    HostOpResponse {
        outcome: format!("errno {}", err.raw_os_error().unwrap_or(0)),
        message: err.to_string(),
        ..HostOpResponse::default()
    }
}

fn ok(message: impl Into<String>) -> HostOpResponse {
    HostOpResponse {
        outcome: "ok".into(),
        message: message.into(),
        ..HostOpResponse::default()
    }
}

fn last_errno() -> HostOpResponse {
    errno(&std::io::Error::last_os_error())
}

fn open_fds() -> Vec<String> {
    (0..1024)
        // SAFETY: F_GETFD only asks whether the fd is open.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .map(|fd| fd.to_string())
        .collect()
}

fn pid_of(arg: &str) -> libc::pid_t {
    arg.parse().unwrap_or(0)
}

fn attempt(op: &str, arg: &str) -> HostOpResponse {
    match op {
        "read" => match std::fs::File::open(arg) {
            Ok(mut file) => {
                let mut data = Vec::new();
                match file.read_to_end(&mut data) {
                    Ok(_) => HostOpResponse { data, ..ok("read") },
                    Err(err) => errno(&err),
                }
            }
            Err(err) => errno(&err),
        },
        "tcp_connect" => match TcpStream::connect(arg) {
            Ok(_) => ok("connected"),
            Err(err) => errno(&err),
        },
        "tcp_bind" => match TcpListener::bind("127.0.0.1:0") {
            Ok(listener) => ok(format!("bound {:?}", listener.local_addr())),
            Err(err) => errno(&err),
        },
        "udp_send" => match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"hi", arg)) {
            Ok(_) => ok("sent"),
            Err(err) => errno(&err),
        },
        "netlink" => {
            // SAFETY: a plain socket call; the fd is closed if it opens.
            let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return last_errno();
            }
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
            ok("netlink socket opened")
        }
        "signal" => {
            // Signal 0: the permission check without a signal.
            // SAFETY: kill with signal 0 sends nothing.
            if unsafe { libc::kill(pid_of(arg), 0) } != 0 {
                return last_errno();
            }
            ok("may signal")
        }
        "ptrace" => {
            // PTRACE_SEIZE does not stop the tracee; detach at once if it worked.
            // SAFETY: seize and detach take no pointers.
            let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid_of(arg), 0usize, 0usize) };
            if seized != 0 {
                return last_errno();
            }
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid_of(arg), 0usize, 0usize) };
            ok("seized")
        }
        "vm_read" => {
            let mut buffer = [0u8; 8];
            let local = libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: buffer.len(),
            };
            let remote = libc::iovec {
                iov_base: 0x400000 as *mut libc::c_void,
                iov_len: buffer.len(),
            };
            // SAFETY: reads at most 8 bytes into `buffer`.
            let read = unsafe { libc::process_vm_readv(pid_of(arg), &local, 1, &remote, 1, 0) };
            if read < 0 {
                return last_errno();
            }
            ok("read another process's memory")
        }
        "write_exec" => {
            // An empty argument: the plugin's own temporary (and socket) directory.
            let dir = if arg.is_empty() {
                std::env::temp_dir()
            } else {
                arg.into()
            };
            let path = dir.join("dropped");
            let written = std::fs::File::create(&path)
                .and_then(|mut file| file.write_all(b"#!/bin/sh\necho escaped\n"))
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                });
            if let Err(err) = written {
                return HostOpResponse {
                    names: vec!["write".into()],
                    ..errno(&err)
                };
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "the hostile plugin tries to exec what it dropped"
            )]
            match std::process::Command::new(&path).output() {
                Ok(out) => ok(String::from_utf8_lossy(&out.stdout).into_owned()),
                Err(err) => HostOpResponse {
                    names: vec!["exec".into()],
                    ..errno(&err)
                },
            }
        }
        "memfd_exec" => {
            // SAFETY: the name is a valid C string.
            let fd = unsafe { libc::memfd_create(c"dropped".as_ptr(), 0) };
            if fd < 0 {
                return last_errno();
            }
            ok("memfd created")
        }
        "unshare" => {
            // SAFETY: a plain system call with no pointers.
            if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
                return last_errno();
            }
            ok("new namespaces")
        }
        "clone_namespace" => {
            let flags = libc::CLONE_NEWUSER | libc::SIGCHLD;
            // SAFETY: a fork-like clone (no new stack); the child only exits.
            match unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) } {
                -1 => last_errno(),
                // SAFETY: the child only exits.
                0 => unsafe { libc::_exit(0) },
                _ => ok("cloned into a new user namespace"),
            }
        }
        "fork" => {
            // SAFETY: the child exits at once without touching anything.
            match unsafe { libc::fork() } {
                -1 => last_errno(),
                // SAFETY: the child only exits.
                0 => unsafe { libc::_exit(0) },
                _ => ok("forked"),
            }
        }
        "leave_group" => {
            // A forked child (not a group leader, so nothing else stops it) tries to leave
            // the plugin's process group with setsid; it exits with the errno, 0 if it left.
            // SAFETY: the child makes two system calls and exits.
            match unsafe { libc::fork() } {
                -1 => last_errno(),
                // SAFETY: the child makes one system call, reads errno and exits.
                0 => unsafe {
                    let code = if libc::setsid() == -1 {
                        *libc::__errno_location()
                    } else {
                        0
                    };
                    libc::_exit(code)
                },
                child => {
                    let mut status = 0;
                    // SAFETY: waits for the child just forked.
                    if unsafe { libc::waitpid(child, &mut status, 0) } == -1 {
                        return last_errno();
                    }
                    match libc::WEXITSTATUS(status) {
                        0 => ok("left the process group"),
                        code => errno(&std::io::Error::from_raw_os_error(code)),
                    }
                }
            }
        }
        "double_fork" => {
            // A child that forks a grandchild and exits at once: the grandchild, orphaned,
            // is no child of the plugin any more. `size` is its pid.
            let mut pipe = [0; 2];
            // SAFETY: pipe writes two fds into the array.
            if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
                return last_errno();
            }
            // SAFETY: the child and the grandchild make raw system calls only, then exit or
            // sleep; nothing of the parent's state is touched.
            match unsafe { libc::fork() } {
                -1 => last_errno(),
                // SAFETY: the child forks once, writes four bytes and exits; the grandchild
                // only sleeps.
                0 => unsafe {
                    let grandchild = libc::fork();
                    if grandchild == 0 {
                        loop {
                            libc::sleep(3600);
                        }
                    }
                    let bytes = grandchild.to_ne_bytes();
                    libc::write(pipe[1], bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0)
                },
                child => {
                    let mut bytes = [0u8; 4];
                    // SAFETY: reads at most four bytes into the array, closes the pipe and
                    // reaps the child that wrote them.
                    unsafe {
                        libc::read(pipe[0], bytes.as_mut_ptr().cast(), bytes.len());
                        libc::close(pipe[0]);
                        libc::close(pipe[1]);
                        libc::waitpid(child, std::ptr::null_mut(), 0);
                    }
                    match i32::from_ne_bytes(bytes) {
                        grandchild if grandchild > 0 => HostOpResponse {
                            size: grandchild.unsigned_abs().into(),
                            ..ok("double forked")
                        },
                        _ => errno(&std::io::Error::from_raw_os_error(libc::ECHILD)),
                    }
                }
            }
        }
        "fork_bomb" => {
            let mut started = 0u64;
            loop {
                // SAFETY: each child sleeps, then exits; nothing else is touched.
                match unsafe { libc::fork() } {
                    -1 => {
                        return HostOpResponse {
                            size: started,
                            ..last_errno()
                        };
                    }
                    // SAFETY: the child only sleeps and exits.
                    0 => unsafe {
                        libc::sleep(30);
                        libc::_exit(0)
                    },
                    _ => started += 1,
                }
            }
        }
        "memory_bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touched, so it is really resident; the allocator aborts when it fails.
                hoard.push(vec![1u8; 64 << 20]);
            }
        }
        "syscalls" => {
            let mut data = Vec::new();
            for number in arg
                .split(',')
                .filter_map(|n| n.parse::<libc::c_long>().ok())
            {
                // SAFETY: each call is refused by the filter (that is what the test checks);
                // with all-zero arguments none that slipped through touches memory.
                let result = unsafe { libc::syscall(number, 0, 0, 0, 0, 0, 0) };
                let errno = if result == -1 { raw_errno() } else { 0 };
                data.extend_from_slice(&u32::try_from(number).unwrap_or(u32::MAX).to_le_bytes());
                data.extend_from_slice(&errno.to_le_bytes());
            }
            HostOpResponse {
                data,
                ..ok("called")
            }
        }
        "ioctls" => {
            let fd = if arg == "socket" {
                let mut pair = [0; 2];
                // SAFETY: socketpair writes two fds into the array.
                if unsafe {
                    libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr())
                } != 0
                {
                    return last_errno();
                }
                pair[0]
            } else {
                match std::fs::File::open(arg) {
                    Ok(file) => std::os::fd::IntoRawFd::into_raw_fd(file),
                    Err(err) => return errno(&err),
                }
            };
            let mut data = Vec::new();
            let mut buffer = [0u8; 256];
            for request in ioctl_sweep() {
                // SAFETY: the argument points at a zeroed buffer larger than any of the
                // swept requests' structures.
                let result = unsafe { libc::ioctl(fd, request.into(), buffer.as_mut_ptr()) };
                let errno = if result == -1 { raw_errno() } else { 0 };
                data.extend_from_slice(&request.to_le_bytes());
                data.extend_from_slice(&errno.to_le_bytes());
            }
            HostOpResponse {
                data,
                ..ok("swept")
            }
        }
        "attributes" => HostOpResponse {
            names: attributes(arg),
            ..ok("tried")
        },
        "fds" => HostOpResponse {
            names: INHERITED.get().cloned().unwrap_or_default(),
            // The descriptor the host gave on purpose: its channel.
            data: std::env::var("TETHER_DESCRIPTOR_FD")
                .unwrap_or_default()
                .into_bytes(),
            ..ok("fds at start")
        },
        other => HostOpResponse {
            outcome: "unknown".into(),
            message: format!("unknown attempt {other:?}"),
            ..HostOpResponse::default()
        },
    }
}

fn raw_errno() -> u32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .and_then(|code| u32::try_from(code).ok())
        .unwrap_or(u32::MAX)
}

/// The ioctl requests swept: every number of the terminal ('T'), file ('f', 'X', 0x94),
/// version ('v'), socket (0x89) and block (0x12) types, with no argument and with 4, 8, 28
/// and 32-byte arguments in every direction. `FIONREAD`, `FIONBIO`, `FIOCLEX` and
/// `FIONCLEX` are among them.
fn ioctl_sweep() -> Vec<u32> {
    let mut requests = Vec::new();
    for kind in [0x54u32, 0x66, 0x58, 0x94, 0x76, 0x89, 0x12] {
        for number in 0..=255u32 {
            for direction in 0..4u32 {
                for size in [0u32, 4, 8, 28, 32] {
                    requests.push(direction << 30 | size << 16 | kind << 8 | number);
                }
            }
        }
    }
    requests.extend([1, 2]); // FIBMAP, FIGETBSZ
    requests.sort_unstable();
    requests.dedup();
    requests
}

/// Connects to another plugin's socket and tries to stop it and to call it: one line per
/// attempt, `<what>: ok` or `<what>: refused: <why>`.
async fn dial_plugin(socket: &std::path::Path) -> HostOpResponse {
    use tether_plugin_sdk::protocol::plugin::Empty;
    use tether_plugin_sdk::protocol::plugin::grpc_controller_client::GrpcControllerClient;
    use tether_test_contract::testing::testing_client::TestingClient;
    use tether_transport::{self as unix, Peer};

    let said = |what: &str, result: Result<(), String>| match result {
        Ok(()) => format!("{what}: ok"),
        Err(why) => format!("{what}: refused: {why}"),
    };
    let names = match unix::connect(socket, Peer::SameUser).await {
        Err(err) => vec![said("connect", Err(err.to_string()))],
        Ok(channel) => {
            let stop = GrpcControllerClient::new(channel.clone())
                .shutdown(Empty {})
                .await
                .map(drop)
                .map_err(|status| status.to_string());
            let echo = TestingClient::new(channel)
                .echo(EchoRequest {
                    message: "from an intruder".into(),
                })
                .await
                .map(drop)
                .map_err(|status| status.to_string());
            vec![said("shutdown", stop), said("echo", echo)]
        }
    };
    HostOpResponse {
        names,
        ..ok("dialed")
    }
}

/// `syscall(number, args...)`: the return value, or `-errno`.
fn raw_syscall(number: libc::c_long, args: [usize; 5]) -> i64 {
    // SAFETY: every caller passes pointers to live locals at least as large as the call
    // reads or writes; the filter is expected to refuse the call before it looks at them.
    let result = unsafe { libc::syscall(number, args[0], args[1], args[2], args[3], args[4]) };
    if result == -1 {
        -i64::from(raw_errno())
    } else {
        result
    }
}

/// Tries every attribute call on `path`: `<syscall> <errno>` each, 0 if it succeeded.
fn attributes(path: &str) -> Vec<String> {
    let Ok(c_path) = std::ffi::CString::new(path) else {
        return vec!["bad-path 22".into()];
    };
    let p = c_path.as_ptr() as usize;
    let capability = c"security.capability".as_ptr() as usize;
    let user = c"user.tether".as_ptr() as usize;
    // A file capability granting everything.
    let value = [
        1u8, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let (v, len) = (value.as_ptr() as usize, value.len());
    let mut out = [0u8; 256];
    let o = out.as_mut_ptr() as usize;
    // struct xattr_args { u64 value; u32 size; u32 flags; }, for the *xattrat calls.
    let set_args: [u64; 2] = [v as u64, len as u64];
    let get_args: [u64; 2] = [o as u64, 256];
    // struct file_attr (fsx_xflags first): FS_XFLAG_IMMUTABLE.
    let attr: [u32; 6] = [0x8, 0, 0, 0, 0, 0];
    let at = libc::AT_FDCWD as usize;
    // A descriptor for the f* calls: opening may itself be refused (Landlock).
    let fd = std::fs::File::open(path).ok();
    let f = fd.as_ref().map_or(usize::MAX, |file| {
        std::os::fd::AsRawFd::as_raw_fd(file) as usize
    });
    let calls: [(&str, libc::c_long, [usize; 5]); 18] = [
        ("setxattr", libc::SYS_setxattr, [p, capability, v, len, 0]),
        ("lsetxattr", libc::SYS_lsetxattr, [p, user, v, len, 0]),
        ("fsetxattr", libc::SYS_fsetxattr, [f, user, v, len, 0]),
        ("getxattr", libc::SYS_getxattr, [p, user, o, 256, 0]),
        ("listxattr", libc::SYS_listxattr, [p, o, 256, 0, 0]),
        ("removexattr", libc::SYS_removexattr, [p, user, 0, 0, 0]),
        (
            "setxattrat",
            463,
            [at, p, 0, capability, set_args.as_ptr() as usize],
        ),
        (
            "getxattrat",
            464,
            [at, p, 0, user, get_args.as_ptr() as usize],
        ),
        ("listxattrat", 465, [at, p, 0, o, 256]),
        ("removexattrat", 466, [at, p, 0, user, 0]),
        ("file_getattr", 468, [at, p, o, 24, 0]),
        ("file_setattr", 469, [at, p, attr.as_ptr() as usize, 24, 0]),
        ("fchmodat", libc::SYS_fchmodat, [at, p, 0o7777, 0, 0]),
        ("fchmodat2", libc::SYS_fchmodat2, [at, p, 0o7777, 0, 0]),
        ("fchmod", libc::SYS_fchmod, [f, 0o7777, 0, 0, 0]),
        ("fchownat", libc::SYS_fchownat, [at, p, 1, 1, 0]),
        ("fchown", libc::SYS_fchown, [f, 1, 1, 0, 0]),
        ("utimensat", libc::SYS_utimensat, [at, p, 0, 0, 0]),
    ];
    calls
        .iter()
        .map(|(call, number, args)| {
            let result = raw_syscall(*number, *args);
            format!("{call} {}", if result < 0 { -result } else { 0 })
        })
        .collect()
}

#[tonic::async_trait]
impl Testing for Hostile {
    type TicksStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Tick, Status>> + Send>>;

    async fn ticks(&self, _: Request<TickRequest>) -> Result<Response<Self::TicksStream>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            message: request.into_inner().message,
            protocol_version: 1,
        }))
    }

    async fn print(&self, _: Request<PrintRequest>) -> Result<Response<PrintResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn log(&self, _: Request<LogRequest>) -> Result<Response<LogResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn spawn_child(
        &self,
        _: Request<SpawnChildRequest>,
    ) -> Result<Response<SpawnChildResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn call_host(
        &self,
        _: Request<CallHostRequest>,
    ) -> Result<Response<CallHostResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn serve_brokered(
        &self,
        _: Request<ServeBrokeredRequest>,
    ) -> Result<Response<ServeBrokeredResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }

    async fn host_op(
        &self,
        request: Request<HostOpRequest>,
    ) -> Result<Response<HostOpResponse>, Status> {
        let HostOpRequest { op, path, .. } = request.into_inner();
        if op == "dial_plugin" {
            let socket = std::path::PathBuf::from(String::from_utf8_lossy(&path).into_owned());
            return Ok(Response::new(dial_plugin(&socket).await));
        }
        if op == "hang" {
            // Says it has the call (the host logs the line), then never answers.
            eprintln!("hanging on the call");
            std::future::pending::<()>().await;
        }
        if op == "freeze" {
            // Blocks the plugin's only runtime thread: nothing, health included, answers.
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        let arg = String::from_utf8_lossy(&path).into_owned();
        let response = tokio::task::spawn_blocking(move || attempt(&op, &arg))
            .await
            .map_err(|err| Status::internal(err.to_string()))?;
        Ok(Response::new(response))
    }
}

fn main() -> ExitCode {
    let _ = INHERITED.set(open_fds());
    Plugin::new(HANDSHAKE)
        .version(1, Routes::new(TestingServer::new(Hostile)))
        .run()
}
