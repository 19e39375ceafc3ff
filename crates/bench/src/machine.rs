//! The machine a benchmark ran on, for the top of the report.

use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    pub(crate) go: String,
    /// Where the plugins' socket directories went, and the file system there: creating
    /// and removing a socket costs an inode on a disk file system, nothing on a tmpfs.
    pub(crate) sockets: String,
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl Machine {
    pub(crate) fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        Machine {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
            rustc: command("rustc", &["--version"]).unwrap_or_else(|| "unknown".to_owned()),
            go: command("go", &["version"]).unwrap_or_else(|| "not installed".to_owned()),
            sockets: sockets(),
        }
    }
}

/// The default socket base of plugins started here, with its file system's type.
fn sockets() -> String {
    let dir = tether_host::PluginBuilder::default_socket_base_dir();
    format!("{} ({})", dir.display(), file_system(&dir))
}

/// The type of the file system `dir` is on, by name where it is a common one.
pub(crate) fn file_system(dir: &std::path::Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(fs) => {
            #[allow(
                clippy::useless_conversion,
                reason = "f_type is an i64 on x86_64 and narrower on some other targets"
            )]
            let magic = i64::from(fs.f_type);
            match magic {
                0x0102_1994 => "tmpfs".to_owned(),
                0xef53 => "ext2/3/4".to_owned(),
                0x5846_5342 => "xfs".to_owned(),
                0x9123_683e => "btrfs".to_owned(),
                0x794c_7630 => "overlayfs".to_owned(),
                other => format!("file system type {other:#x}"),
            }
        }
        Err(err) => format!("file system unknown: {err}"),
    }
}
