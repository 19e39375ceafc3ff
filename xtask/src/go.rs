//! Go, for the interop tests and the benchmark's go-plugin side (docs/protocol.md,
//! section 12, Interoperability): the fixtures are a Go module (`tests/go/fixtures`),
//! built against each go-plugin release by its own module in `tests/go/versions/<dir>`,
//! with the modules fetched through the Go module proxy. Nothing of Go comes from
//! Debian's packages: Debian's `golang-go` is older than the modules need.

use std::path::Path;
use std::process::Command;

use crate::project_root;
use crate::proto::on_path;

/// The go-plugin releases the benchmark measures: the newest of the matrix first (ratios
/// are taken to it), then the oldest.
pub(crate) const BENCH_RELEASES: [&str; 2] = ["v1_8_0", "v1_0_1"];

/// The go-plugin version `tests/go/versions/<release>/go.mod` requires (`v1.8.0`), or the
/// directory's name if it cannot be read.
pub(crate) fn release_version(release: &str) -> String {
    let go_mod = project_root()
        .join("tests/go/versions")
        .join(release)
        .join("go.mod");
    std::fs::read_to_string(go_mod)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.trim()
                    .strip_prefix("github.com/hashicorp/go-plugin ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
            })
        })
        .unwrap_or_else(|| release.to_owned())
}

/// The Go version the modules need: the `go` line of `tests/go/fixtures/go.mod`.
pub(crate) fn needed() -> String {
    let go_mod = project_root().join("tests/go/fixtures/go.mod");
    std::fs::read_to_string(go_mod)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("go ").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "1.26".to_owned())
}

/// What to do where Go is missing, for messages.
pub(crate) fn install_hint() -> String {
    format!(
        "they need Go {} or later on PATH and the Go module proxy; the project's machines \
         have both, Debian's golang-go is too old",
        needed()
    )
}

/// `1.26.8` from `go1.26.8`, `1.27rc1` or `1.26.0`, as numbers to compare.
fn version(text: &str) -> Option<Vec<u32>> {
    let text = text.trim().trim_start_matches("go");
    let numbers: Vec<u32> = text
        .split('.')
        .map(|part| {
            part.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
        })
        .collect::<Result<_, _>>()
        .ok()?;
    (!numbers.is_empty()).then_some(numbers)
}

/// Why Go cannot build the fixtures here, if it cannot.
pub(crate) fn missing() -> Option<String> {
    if !on_path("go") {
        return Some("no `go` on PATH".to_owned());
    }
    let output = Command::new("go").args(["env", "GOVERSION"]).output();
    let have = match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        Ok(output) => {
            return Some(format!(
                "`go env GOVERSION` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Err(err) => return Some(format!("could not run `go`: {err}")),
    };
    let needed = needed();
    match (version(&have), version(&needed)) {
        (Some(have_v), Some(needed_v)) if have_v >= needed_v => None,
        (Some(_), Some(_)) => Some(format!(
            "{have} is older than the Go {needed} the fixtures' modules need"
        )),
        _ => Some(format!(
            "cannot compare Go versions `{have}` and `{needed}`"
        )),
    }
}

/// `go build` of `tetherinterop/<program>` for each program against the go-plugin release
/// module `tests/go/versions/<release>`, into `bin/`, caching builds under `cache`. The
/// committed go.sum decides every module (`-mod=readonly`), and only the Go on PATH is
/// used (`GOTOOLCHAIN=local`: no toolchain download).
pub(crate) fn build(release: &str, programs: &[&str], bin: &Path, cache: &Path) -> Command {
    let mut command = Command::new("go");
    command
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", bin.display()))
        .args(programs.iter().map(|name| format!("tetherinterop/{name}")))
        .current_dir(project_root().join("tests/go/versions").join(release))
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("GOCACHE", cache);
    command
}

#[cfg(test)]
mod tests {
    use super::version;

    #[test]
    fn go_versions_compare_as_numbers() {
        assert_eq!(version("go1.26.8"), Some(vec![1, 26, 8]));
        assert_eq!(version("1.26.0"), Some(vec![1, 26, 0]));
        assert_eq!(version("go1.27rc1"), Some(vec![1, 27]));
        assert!(version("go1.26.8") >= version("1.26.0"));
        assert!(version("go1.19.8") < version("1.26.0"));
        assert!(version("go1.9") < version("1.26"));
        assert_eq!(version("devel"), None);
    }
}
