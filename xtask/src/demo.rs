//! `cargo xtask demo`: builds the demo host and its two plugins, stages the plugins (each
//! executable beside its `plugin.toml`) in a temporary directory, and runs the demo on its
//! embedded sample workspace. Extra arguments go to `tether-demo` (try `-- --help`).

use std::path::Path;

use anyhow::{Context, Result};

use crate::{cargo, project_root, run_step};

/// The demo's plugins: their directories under `plugins/`, and their executables' names.
pub(crate) const PLUGINS: [&str; 2] = ["filelister", "colorlister"];

pub(crate) fn run(extra: &[&str]) -> Result<()> {
    run_step(
        "building tether-demo and its plugins",
        cargo().args([
            "build",
            "--quiet",
            "--package",
            "tether-demo",
            "--package",
            "tether-filelister",
            "--package",
            "tether-colorlister",
        ]),
    )?;
    let staging = tempfile::Builder::new()
        .prefix("tether-demo-plugins-")
        .tempdir()
        .context("creating a temporary directory for the plugins")?;
    let bin_dir = crate::target_dir().join("debug");
    stage_plugins(&bin_dir, staging.path())?;
    let plugins = staging.path().to_string_lossy().into_owned();
    let mut args = vec!["--plugins", plugins.as_str()];
    // `cargo xtask demo -- --help`: the `--` only separates xtask's arguments from the demo's.
    args.extend(extra.iter().skip_while(|arg| **arg == "--"));
    run_step(
        "running tether-demo",
        std::process::Command::new(bin_dir.join("tether-demo")).args(&args),
    )
}

/// Copies each plugin's executable from `bin_dir` and its manifest from `plugins/<name>/`
/// into `into/<name>/`.
pub(crate) fn stage_plugins(bin_dir: &Path, into: &Path) -> Result<()> {
    for name in PLUGINS {
        let dir = into.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let manifest = project_root()
            .join("plugins")
            .join(name)
            .join("plugin.toml");
        std::fs::copy(&manifest, dir.join("plugin.toml"))
            .with_context(|| format!("copying {}", manifest.display()))?;
        let program = bin_dir.join(name);
        std::fs::copy(&program, dir.join(name))
            .with_context(|| format!("copying {}", program.display()))?;
    }
    Ok(())
}
