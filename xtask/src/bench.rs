//! `cargo xtask bench`: builds `tether-bench` in release mode, and go-plugin's side (the
//! `gobench` fixture with the Go plugins, against go-plugin 1.8.0, the newest release of
//! the interop matrix, and against 1.0.1, the oldest) when Go is installed, then measures
//! and writes
//! `docs/benchmarks.md` and `docs/benchmarks.json`. Extra arguments go to `tether-bench`
//! (`-- --help`).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, go, project_root, run_step, target_dir};

/// The Go programs the benchmark runs.
const GO_PROGRAMS: [&str; 3] = ["gobench", "kvplugin", "counterplugin"];

pub(crate) fn run(extra: &[&str]) -> Result<()> {
    // The plugin linked without PIE first (only its last link differs), kept beside the
    // PIE build, which the next step links again. Cargo keeps one fingerprint for both
    // links: touching the source makes each of them link.
    let source = project_root().join("crates/bench/src/bin/bench-plugin.rs");
    touch(&source)?;
    run_step(
        "building bench-plugin without PIE, as Go links its plugins (release)",
        cargo().args([
            "rustc",
            "--release",
            "--locked",
            "--package",
            "tether-bench",
            "--bin",
            "bench-plugin",
            "--",
            "-C",
            "relocation-model=static",
        ]),
    )?;
    let release = target_dir().join("release");
    std::fs::copy(
        release.join("bench-plugin"),
        release.join("bench-plugin-nopie"),
    )
    .with_context(|| format!("copying bench-plugin to {}", release.display()))?;
    ensure_not_pie(&release.join("bench-plugin-nopie"))?;
    touch(&source)?;
    run_step(
        "building tether-bench (release)",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "--package",
            "tether-bench",
        ]),
    )?;
    let target = target_dir();
    let mut args: Vec<String> = vec![
        "--out".into(),
        project_root().join("docs").display().to_string(),
    ];
    match go::missing() {
        None => {
            for release in go::BENCH_RELEASES {
                let bin = target.join("go").join(release);
                run_step(
                    &format!("building go-plugin's side (Go modules, tests/go/versions/{release})"),
                    &mut go::build(release, &GO_PROGRAMS, &bin, &target.join("go/cache")),
                )?;
                args.push("--go".into());
                args.push(format!(
                    "{}={}",
                    go::release_version(release),
                    bin.display()
                ));
            }
        }
        Some(why) => println!(
            "==> {why}: the go-plugin rows will say so ({})",
            go::install_hint()
        ),
    }
    args.extend(
        extra
            .iter()
            .skip_while(|arg| **arg == "--")
            .map(|arg| (*arg).to_owned()),
    );
    run_step(
        "measuring",
        Command::new(target.join("release/tether-bench"))
            .args(&args)
            .current_dir(project_root()),
    )
}

/// Fails unless `program` is an ELF executable linked at a fixed address (`ET_EXEC`), not a
/// position-independent one (`ET_DYN`).
fn ensure_not_pie(program: &std::path::Path) -> Result<()> {
    let mut header = [0u8; 18];
    std::io::Read::read_exact(
        &mut std::fs::File::open(program)
            .with_context(|| format!("opening {}", program.display()))?,
        &mut header,
    )
    .with_context(|| format!("reading the ELF header of {}", program.display()))?;
    let kind = u16::from_le_bytes([header[16], header[17]]);
    anyhow::ensure!(
        header.starts_with(b"\x7fELF") && kind == 2,
        "{} is not an executable linked without PIE (ELF type {kind}): cargo did not link it \
         again with -C relocation-model=static",
        program.display()
    );
    Ok(())
}

/// Sets `path`'s modification time to now, so that cargo links its target again.
fn touch(path: &std::path::Path) -> Result<()> {
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|file| file.set_modified(std::time::SystemTime::now()))
        .with_context(|| format!("touching {}", path.display()))
}
