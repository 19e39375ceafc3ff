//! The Go toolchain and go-plugin from Debian's packages, for the interop tests and the
//! benchmark's go-plugin side (docs/protocol.md, section 12, Interoperability).

use std::path::Path;
use std::process::Command;

use crate::{project_root, proto};

/// The Debian packages that provide Go and go-plugin 1.0.1.
pub(crate) const PACKAGES: &str = "golang-go golang-github-hashicorp-go-plugin-dev \
    golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev";

/// Where Debian installs go-plugin's sources.
const GO_PLUGIN: &str = "/usr/share/gocode/src/github.com/hashicorp/go-plugin";

/// Whether `go` and go-plugin's sources are installed.
pub(crate) fn available() -> bool {
    proto::on_path("go") && Path::new(GO_PLUGIN).is_dir()
}

/// `go build` of `tetherinterop/<program>` for each program, into `bin/`, in GOPATH mode
/// with Debian's go-plugin first, caching under `cache`.
pub(crate) fn build(programs: &[&str], bin: &Path, cache: &Path) -> Command {
    let mut command = Command::new("go");
    command
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", bin.display()))
        .args(programs.iter().map(|name| format!("tetherinterop/{name}")))
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!(
                "/usr/share/gocode:{}",
                project_root().join("tests/go").display()
            ),
        )
        .env("GOCACHE", cache);
    command
}
