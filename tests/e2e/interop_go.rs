//! Building the Go fixtures (`tests/go/fixtures`, Go module `tetherinterop`) against each
//! go-plugin release of the conformance matrix: one tiny module per release in
//! `tests/go/versions/<dir>` requires that release and the fixtures (by `replace`), with
//! go.mod and go.sum committed. Every release module pins the same gRPC and protobuf, so
//! the Go build cache is shared between them.
//!
//! Built with Go modules (`-mod=readonly`: nothing but the committed go.sum decides what
//! is fetched, through the Go module proxy), into `<target>/go/<dir>/`, once per test run
//! and only when a source is newer than the programs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// One go-plugin release of the matrix, and what it has.
#[derive(Debug)]
pub(crate) struct GoPlugin {
    /// The module version, as go.mod spells it.
    pub(crate) version: &'static str,
    /// Its module under `tests/go/versions/` (and its directory of programs under
    /// `<target>/go/`).
    pub(crate) dir: &'static str,
    /// Whether its plugins serve `GRPCStdio` (go-plugin 1.4 and later).
    pub(crate) grpc_stdio: bool,
    /// Whether its `ClientConfig` has `AutoMTLS` (every release here: 1.0.1 has it too).
    pub(crate) auto_mtls: bool,
    /// Whether it has broker multiplexing, `ClientConfig.GRPCBrokerMultiplex` (1.6 and
    /// later).
    pub(crate) multiplex: bool,
    /// Whether its plugins can dial their host through the broker under AutoMTLS (1.4.4
    /// and later: before, a plugin verifies the host's brokered endpoint against no roots
    /// at all, "x509: failed to load system roots and no roots provided").
    pub(crate) plugin_dials_host_with_mtls: bool,
}

pub(crate) const V1_0_1: GoPlugin = GoPlugin {
    version: "v1.0.1",
    plugin_dials_host_with_mtls: false,
    dir: "v1_0_1",
    grpc_stdio: false,
    auto_mtls: true,
    multiplex: false,
};
pub(crate) const V1_4_10: GoPlugin = GoPlugin {
    version: "v1.4.10",
    plugin_dials_host_with_mtls: true,
    dir: "v1_4_10",
    grpc_stdio: true,
    auto_mtls: true,
    multiplex: false,
};
pub(crate) const V1_6_3: GoPlugin = GoPlugin {
    version: "v1.6.3",
    plugin_dials_host_with_mtls: true,
    dir: "v1_6_3",
    grpc_stdio: true,
    auto_mtls: true,
    multiplex: true,
};
pub(crate) const V1_8_0: GoPlugin = GoPlugin {
    version: "v1.8.0",
    plugin_dials_host_with_mtls: true,
    dir: "v1_8_0",
    grpc_stdio: true,
    auto_mtls: true,
    multiplex: true,
};

/// Every release of the matrix, oldest first.
pub(crate) const VERSIONS: [&GoPlugin; 4] = [&V1_0_1, &V1_4_10, &V1_6_3, &V1_8_0];

/// The programs the tests run.
const PROGRAMS: [&str; 3] = ["kvplugin", "counterplugin", "gohost"];

/// What these tests need, for the message when it is missing.
const NEEDS: &str = "the Go interop fixtures need Go 1.26 or later on PATH, and the Go \
     module proxy (or the modules already in the module cache); `cargo xtask test` skips \
     these tests, saying so, when Go is missing";

/// `tests/go`.
fn go_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go")
}

/// The newest modification time of any file under `dir`.
pub(crate) fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)
        .expect("the Go programs' sources")
        .flatten()
    {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        latest = latest.max(time);
    }
    latest
}

/// The path of `program` built against `release`, building the release's programs first
/// if needed.
pub(crate) fn bin(release: &GoPlugin, program: &str) -> PathBuf {
    static BUILT: [OnceLock<Result<PathBuf, String>>; 4] =
        [const { OnceLock::new() }; VERSIONS.len()];
    let index = VERSIONS
        .iter()
        .position(|known| known.dir == release.dir)
        .expect("a release of the matrix");
    match BUILT[index].get_or_init(|| build(release)) {
        Ok(dir) => dir.join(program),
        Err(why) => panic!("{why}"),
    }
}

/// Builds `release`'s programs into `<target>/go/<dir>/` unless they are newer than every
/// source. One build at a time: the first fills the shared build cache for the others.
fn build(release: &GoPlugin) -> Result<PathBuf, String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = crate::support::bin_dir()
        .parent()
        .expect("the target directory")
        .join("go");
    let bin = target.join(release.dir);
    let module = go_tree().join("versions").join(release.dir);
    let built = PROGRAMS
        .iter()
        .map(|name| std::fs::metadata(bin.join(name)).and_then(|m| m.modified()))
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .and_then(|times| times.into_iter().min());
    let sources = newest(&go_tree().join("fixtures")).max(newest(&module));
    if built.is_some_and(|built| built > sources) {
        return Ok(bin);
    }
    #[allow(clippy::disallowed_methods, reason = "builds the Go fixtures")]
    let output = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", bin.display()))
        .args(PROGRAMS.map(|name| format!("tetherinterop/{name}")))
        .current_dir(&module)
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOCACHE", target.join("cache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .output()
        .map_err(|err| format!("could not run `go` ({err}); {NEEDS}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the Go fixtures against go-plugin {} in {} failed ({}); {NEEDS}:\n{}",
            release.version,
            module.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(bin)
}
