//! A host with none of tether's host-side safety nets, for tests of what a plugin does on
//! its own when its host dies.
//!
//! `bare-host <strict|best-effort|off> <plugin> <dir>` starts `plugin` the way a host would
//! (the test handshake's cookie, `PLUGIN_PROTOCOL_VERSIONS`, `PLUGIN_UNIX_SOCKET_DIR` set
//! to `dir/sockets`, which it creates), confined by tether's sandbox in the given mode applied with
//! `tether-sandbox` directly, but with no parent-death signal, no process group and no
//! guard process: like a go-plugin host, nothing kills the plugin when this process dies.
//! The plugin's stderr (its log) goes to `dir/plugin.log`. Once the plugin has printed its
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
    let [mode, plugin, dir] = args.as_slice() else {
        anyhow::bail!("usage: bare-host <strict|best-effort|off> <plugin> <dir>");
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
    let mut prepared = tether_sandbox::prepare(&sandbox, &program, &sockets, None)
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
    // SAFETY: `apply` makes only raw system calls on state built by `prepare`.
    unsafe {
        command.pre_exec(move || prepared.apply());
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
