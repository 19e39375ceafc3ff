//! A host with none of tether's host-side safety nets, for tests of what a plugin does on
//! its own when its host dies.
//!
//! `bare-host <strict|best-effort|off> <plugin> <dir>` starts `plugin` the way a host would
//! (the test handshake's cookie, `PLUGIN_PROTOCOL_VERSIONS`, `PLUGIN_UNIX_SOCKET_DIR` set
//! to `dir/sockets`, which it creates), confined by tether's sandbox in the given mode applied with
//! `tether-sandbox` directly, but with no parent-death signal, no process group and no
//! guard process: like a go-plugin host, nothing kills the plugin when this process dies.
//! The plugin's stderr (its log) goes to `dir/plugin.log`. With a fourth argument,
//! `no-pidfd`, the plugin also runs under a seccomp filter of this host's own that answers
//! `pidfd_open` with `ENOSYS`, as a kernel before 5.3 would. Once the plugin has printed its
//! handshake line, prints `plugin-pid <pid>` and `handshake <line>`, then waits to be
//! killed.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tether_sandbox::Sandbox;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, plugin, dir, no_pidfd) = match args.as_slice() {
        [mode, plugin, dir] => (mode, plugin, dir, false),
        [mode, plugin, dir, flag] if flag == "no-pidfd" => (mode, plugin, dir, true),
        _ => anyhow::bail!("usage: bare-host <strict|best-effort|off> <plugin> <dir> [no-pidfd]"),
    };
    let dir = Path::new(dir);
    let sandbox = match mode.as_str() {
        "strict" => Sandbox::strict(),
        "best-effort" => Sandbox::best_effort(),
        "off" => Sandbox::off(),
        other => anyhow::bail!("unknown sandbox mode {other:?}"),
    };
    let program = tether_sandbox::resolve_program(Path::new(plugin)).context("the plugin")?;
    let sockets = dir.join("sockets");
    std::fs::create_dir(&sockets).context("the socket directory")?;
    let prepared = tether_sandbox::prepare(&sandbox, &program, &sockets, None)
        .context("the plugin's sandbox")?;
    let log = std::fs::File::create(dir.join("plugin.log")).context("the log file")?;
    let mut command = Command::new(&program);
    command
        .env_clear()
        .env("TETHER_TEST_PLUGIN", "e2e")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", &sockets)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let filter = no_pidfd_filter();
    // SAFETY: between fork and exec only raw system calls (prctl, seccomp, and the
    // sandbox's `apply`) on state built before the fork.
    unsafe {
        command.pre_exec(move || {
            if no_pidfd {
                let program = libc::sock_fprog {
                    len: filter.len() as libc::c_ushort,
                    filter: filter.as_ptr().cast_mut(),
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &raw const program,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            prepared.apply()
        });
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "a host without tether's spawner: nothing of it may kill the plugin"
    )]
    let mut child = command.spawn().context("starting the plugin")?;
    let stdout = child.stdout.take().context("the plugin's stdout")?;
    let mut handshake = String::new();
    BufReader::new(stdout)
        .read_line(&mut handshake)
        .context("reading the handshake")?;
    println!("plugin-pid {}", child.id());
    println!("handshake {}", handshake.trim_end());
    // `child` is never waited for: the plugin is on its own once this process is killed.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A seccomp program that answers `pidfd_open` with `ENOSYS` and allows everything else.
fn no_pidfd_filter() -> Vec<libc::sock_filter> {
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        // The system call's number: `seccomp_data.nr`, at offset 0.
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_pidfd_open as u32,
            0,
            1,
        ),
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}
