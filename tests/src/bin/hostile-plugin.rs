//! A hostile plugin: on request, it tries each direct access of security.md sections D and
//! E, and reports what the kernel answered. It serves `tether.testing.v1.Testing`; each
//! attempt is a `HostOp` whose `op` names it and whose `path` is its argument:
//!
//! - `read <path>`: read a file;
//! - `tcp_connect <addr>`, `tcp_bind`, `udp_send <addr>`, `netlink`: the network;
//! - `signal <pid>`, `ptrace <pid>`, `vm_read <pid>`: another process;
//! - `write_exec <dir>`: write an executable into `dir` and run it; `memfd_exec`: the same
//!   through an anonymous file;
//! - `fork`: start a process; `fork_bomb`: start them without end; `unshare`,
//!   `clone_namespace`: enter new namespaces;
//! - `memory_bomb`: allocate and touch memory without end;
//! - `fds`: the file descriptors open when `main` began;
//! - `hang`: never answer.
//!
//! The response's `outcome` is `ok` when the attempt succeeded, else `errno <n>`; `message`
//! says more. Nothing here is polite: run it only under tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::OnceLock;

use tether_plugin_sdk::protocol::testing::testing_server::{Testing, TestingServer};
use tether_plugin_sdk::protocol::testing::*;
use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{HandshakeConfig, Plugin, Routes};

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
        "fds" => HostOpResponse {
            names: INHERITED.get().cloned().unwrap_or_default(),
            ..ok("fds at start")
        },
        other => HostOpResponse {
            outcome: "unknown".into(),
            message: format!("unknown attempt {other:?}"),
            ..HostOpResponse::default()
        },
    }
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
