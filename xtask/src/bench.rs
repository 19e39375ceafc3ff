//! `cargo xtask bench`: builds `tether-bench` in release mode, and go-plugin's side from
//! Debian's packages when Go is installed, then measures and writes `docs/benchmarks.md`
//! and `docs/benchmarks.json`. Extra arguments go to `tether-bench` (`-- --help`).

use std::process::Command;

use anyhow::Result;

use crate::{cargo, go, project_root, run_step, target_dir};

/// The Go programs the benchmark runs.
const GO_PROGRAMS: [&str; 3] = ["gobench", "kvplugin", "counterplugin"];

pub(crate) fn run(extra: &[&str]) -> Result<()> {
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
    if go::available() {
        let bin = target.join("go/bin");
        run_step(
            "building go-plugin's side (Go, GOPATH mode, Debian's go-plugin)",
            &mut go::build(&GO_PROGRAMS, &bin, &target.join("go/cache")),
        )?;
        args.push("--go-bin".into());
        args.push(bin.display().to_string());
    } else {
        println!(
            "==> no Go toolchain: the go-plugin rows will say so (install: apt-get install -y \
             {})",
            go::PACKAGES
        );
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
