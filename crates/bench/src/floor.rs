//! The raw floor: a 32-byte request/response round trip over a Unix socket between two
//! processes, with blocking std IO and nothing else.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Bytes per message.
const MESSAGE: usize = 32;

/// Measures `calls` round trips (after `calls / 10` to warm up) against an echo child
/// (this program, `floor-echo`); returns the latencies in nanoseconds.
pub(crate) fn measure(calls: usize) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().context("a directory for the floor's socket")?;
    let path = dir.path().join("floor.sock");
    let listener = UnixListener::bind(&path).context("binding the floor's socket")?;
    let exe = std::env::current_exe().context("finding tether-bench")?;
    let mut child = Command::new(exe)
        .arg("floor-echo")
        .arg(&path)
        .spawn()
        .context("starting the floor's echo process")?;
    let (mut stream, _) = listener.accept().context("the echo process connecting")?;
    let request = [0x42u8; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let mut nanos = Vec::with_capacity(calls);
    for i in 0..calls / 10 + calls {
        let began = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        if i >= calls / 10 {
            nanos.push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    drop(stream);
    let status = child.wait()?;
    if !status.success() {
        bail!("the floor's echo process failed: {status}");
    }
    Ok(nanos)
}

/// The echo side: answers each 32-byte message with itself until the socket closes.
pub(crate) fn echo(path: &Path) -> Result<()> {
    let mut stream = UnixStream::connect(path).context("connecting to the floor's socket")?;
    let mut buffer = [0u8; MESSAGE];
    loop {
        match stream.read_exact(&mut buffer) {
            Ok(()) => stream.write_all(&buffer)?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}
