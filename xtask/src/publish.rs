//! The checks that keep the crates fit to be picked by users, run by `cargo xtask test`:
//! every crate has its place in ARCHITECTURE.md's code map; the declared `rust-version` is
//! not older than what the dependencies declare (clippy's `incompatible_msrv` checks our
//! own code against it); the documentation builds without a warning; and every public
//! crate packages and builds from its package (`cargo package`).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, project_root, run_step};

/// The heading of ARCHITECTURE.md's section that must name every workspace crate.
const CODE_MAP: &str = "## Code map";

/// One workspace member, as `cargo metadata` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The package name.
    pub(crate) name: String,
    /// Its version.
    pub(crate) version: String,
    /// Its directory relative to the workspace root, such as `crates/host`.
    pub(crate) dir: String,
    /// Whether it may be published (no `publish = false`).
    pub(crate) public: bool,
    /// Its `rust-version`, if it declares one.
    pub(crate) rust_version: Option<String>,
}

/// What `cargo metadata` says about the workspace: its members, and the highest
/// `rust-version` any dependency declares, with that dependency's name.
pub(crate) struct Workspace {
    pub(crate) members: Vec<Member>,
    pub(crate) newest_dependency: Option<(String, String)>,
}

pub(crate) fn workspace() -> Result<Workspace> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata's output")?;
    let root = project_root();
    let member_ids: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("cargo metadata has no workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut members = Vec::new();
    let mut newest: Option<(String, String)> = None;
    for package in metadata["packages"]
        .as_array()
        .context("cargo metadata has no packages")?
    {
        let id = package["id"].as_str().unwrap_or_default();
        let name = package["name"].as_str().unwrap_or_default().to_owned();
        let version = package["version"].as_str().unwrap_or_default().to_owned();
        let rust_version = package["rust_version"].as_str().map(str::to_owned);
        if member_ids.contains(id) {
            let manifest = Path::new(package["manifest_path"].as_str().unwrap_or_default());
            let dir = manifest
                .parent()
                .and_then(|dir| dir.strip_prefix(&root).ok())
                .map(|dir| dir.display().to_string())
                .with_context(|| format!("{name}'s manifest is outside the workspace"))?;
            // `publish = false` reads as an empty list of registries.
            let public = package["publish"]
                .as_array()
                .is_none_or(|registries| !registries.is_empty());
            members.push(Member {
                name,
                version,
                dir,
                public,
                rust_version,
            });
        } else if let Some(version) = rust_version
            && newest
                .as_ref()
                .is_none_or(|(_, seen)| parse(&version) > parse(seen))
        {
            newest = Some((name, version));
        }
    }
    members.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(Workspace {
        members,
        newest_dependency: newest,
    })
}

/// `1.88` or `1.88.0` as comparable numbers.
fn parse(version: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    parts.resize(3, 0);
    parts
}

/// The fast checks: the code map and `rust-version`.
pub(crate) fn check_layout() -> Result<()> {
    let workspace = workspace()?;
    println!("==> every crate in ARCHITECTURE.md's code map");
    let architecture = std::fs::read_to_string(project_root().join("ARCHITECTURE.md"))
        .context("reading ARCHITECTURE.md")?;
    let missing = missing_from_code_map(&architecture, &workspace.members);
    if !missing.is_empty() {
        bail!(
            "ARCHITECTURE.md's \"{CODE_MAP}\" does not name these crates' folders; add an \
             entry for each (`folder` (`package`): what it holds):\n  {}",
            missing.join("\n  ")
        );
    }

    println!("==> rust-version is not older than the dependencies'");
    check_rust_version(&workspace)
}

/// The slow checks: the documentation, and packaging every public crate.
pub(crate) fn check_packages() -> Result<()> {
    let workspace = workspace()?;

    run_step(
        "cargo doc (warnings denied)",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--no-deps",
                "--all-features",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;

    let public: Vec<&Member> = workspace.members.iter().filter(|m| m.public).collect();
    forget_unpacked(&public)?;
    // Cargo also takes a registry crate's build for immutable: without this, a crate's
    // verification would link the previous run's build of a dependency it packaged.
    let mut clean = cargo();
    clean.args(["clean", "--quiet"]);
    for member in &public {
        clean.args(["--package", &member.name]);
    }
    run_step(
        "cargo clean of the public crates' earlier builds (their packages are built anew)",
        &mut clean,
    )?;
    let mut package = cargo();
    package.args(["package", "--locked", "--allow-dirty"]);
    for member in &public {
        package.args(["--package", &member.name]);
    }
    run_step(
        &format!(
            "cargo package ({} public crates, each built from its package)",
            public.len()
        ),
        &mut package,
    )
}

/// Removes what an earlier `cargo package` unpacked of these crates from its temporary
/// local registry into `$CARGO_HOME/registry/src/`. Cargo takes a registry's crates for
/// immutable and never unpacks a name and version twice, so without this the verification
/// of a crate would build against the previous run's package of its dependencies (same
/// version, older code) and fail, or pass, on stale code. Local registries are the
/// directories whose name has no host (it starts with `-`); crates.io's are untouched.
fn forget_unpacked(crates: &[&Member]) -> Result<()> {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")),
        |home| Some(home.into()),
    );
    let Some(src) = home.map(|home| home.join("registry/src")) else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    for registry in registries {
        let registry = registry
            .context("listing cargo's unpacked registries")?
            .path();
        let local = registry
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('-'));
        if !local {
            continue;
        }
        for member in crates {
            let unpacked = registry.join(format!("{}-{}", member.name, member.version));
            if unpacked.is_dir() {
                std::fs::remove_dir_all(&unpacked)
                    .with_context(|| format!("removing {}", unpacked.display()))?;
            }
        }
    }
    Ok(())
}

/// The members whose folder ARCHITECTURE.md's code map does not name (as `` `dir` `` or
/// `` `dir/` ``), as `dir (package)`.
pub(crate) fn missing_from_code_map(architecture: &str, members: &[Member]) -> Vec<String> {
    let section = architecture
        .split_once(CODE_MAP)
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .unwrap_or("");
    members
        .iter()
        .filter(|member| {
            !section.contains(&format!("`{}`", member.dir))
                && !section.contains(&format!("`{}/`", member.dir))
        })
        .map(|member| format!("{} ({})", member.dir, member.name))
        .collect()
}

fn check_rust_version(workspace: &Workspace) -> Result<()> {
    let Some((dependency, needed)) = &workspace.newest_dependency else {
        return Ok(());
    };
    for member in &workspace.members {
        let Some(declared) = &member.rust_version else {
            if member.public {
                bail!("{} declares no rust-version", member.name);
            }
            continue;
        };
        if parse(declared) < parse(needed) {
            bail!(
                "{} declares rust-version {declared}, but its dependency {dependency} needs \
                 {needed}: raise `rust-version` in the workspace Cargo.toml",
                member.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(dir: &str) -> Member {
        Member {
            name: format!("pkg-{dir}"),
            version: "0.1.0".into(),
            dir: dir.to_owned(),
            public: true,
            rust_version: Some("1.88".into()),
        }
    }

    #[test]
    fn the_code_map_must_name_each_folder_in_its_own_section() {
        let text = "# A\n## Code map\n- `crates/host` (`tether-host`): x\n- `tests/`: y\n\
                    ## Invariants\n`crates/broker` is named here, outside the map\n";
        let members = [
            member("crates/host"),
            member("tests"),
            member("crates/broker"),
        ];
        assert_eq!(
            missing_from_code_map(text, &members),
            ["crates/broker (pkg-crates/broker)"]
        );
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(parse("1.88") == parse("1.88.0"));
        assert!(parse("1.100") > parse("1.88.1"));
        assert!(parse("1.9") < parse("1.10"));
    }

    /// The real workspace: every member is in the code map, and the public crates are the
    /// ones meant to be.
    #[test]
    fn this_workspace_passes_its_own_checks() {
        let workspace = workspace().expect("cargo metadata runs");
        let architecture = std::fs::read_to_string(project_root().join("ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md is readable");
        assert_eq!(
            missing_from_code_map(&architecture, &workspace.members),
            Vec::<String>::new()
        );
        check_rust_version(&workspace).expect("rust-version holds");
        let public: Vec<&str> = workspace
            .members
            .iter()
            .filter(|m| m.public)
            .map(|m| m.name.as_str())
            .collect();
        assert!(public.contains(&"tether"), "{public:?}");
        assert!(!public.contains(&"tether-e2e"), "{public:?}");
    }
}
