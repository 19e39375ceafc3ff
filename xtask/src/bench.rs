//! `cargo xtask bench`: builds `tether-bench` in release mode, and go-plugin's side from
//! Debian's packages when Go is installed, then measures and writes `docs/benchmarks.md`
//! and `docs/benchmarks.json`. Extra arguments go to `tether-bench` (`-- --help`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::{cargo, project_root, proto, run_step};

/// Where Debian installs go-plugin's sources.
const GO_PLUGIN: &str = "/usr/share/gocode/src/github.com/hashicorp/go-plugin";

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
    if proto::on_path("go") && Path::new(GO_PLUGIN).is_dir() {
        let bin = target.join("go/bin");
        run_step(
            "building go-plugin's side (Go, GOPATH mode, Debian's go-plugin)",
            Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(format!("{}/", bin.display()))
                .args(GO_PROGRAMS.map(|name| format!("tetherinterop/{name}")))
                .env("GO111MODULE", "off")
                .env(
                    "GOPATH",
                    format!(
                        "/usr/share/gocode:{}",
                        project_root().join("tests/go").display()
                    ),
                )
                .env("GOCACHE", target.join("go/cache")),
        )?;
        args.push("--go-bin".into());
        args.push(bin.display().to_string());
    } else {
        println!(
            "==> no Go toolchain: the go-plugin rows will say so (install: apt-get install -y \
             golang-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev \
             golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev)"
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

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || project_root().join("target"),
            |dir| project_root().join(dir),
        )
}
