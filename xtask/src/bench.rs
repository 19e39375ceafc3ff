//! `cargo xtask bench`: builds `tether-bench` in release mode, and go-plugin's side (the
//! `gobench` fixture with the Go plugins, against go-plugin 1.8.0, the newest release of
//! the interop matrix, and against 1.0.1, the oldest) when Go is installed, then measures
//! and writes
//! `docs/benchmarks.md` and `docs/benchmarks.json`. Extra arguments go to `tether-bench`
//! (`-- --help`).

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
