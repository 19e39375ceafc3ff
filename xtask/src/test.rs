//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use anyhow::Result;

use crate::{cargo, proto, run_step};

pub(crate) fn run() -> Result<()> {
    run_step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    println!("==> generated code freshness");
    proto::run(proto::Mode::Check)?;
    run_step(
        "cargo clippy (warnings denied)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step(
        "cargo test",
        cargo().args(["test", "--workspace", "--locked"]),
    )?;
    Ok(())
}
