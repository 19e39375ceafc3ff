//! `cargo xtask demo`: builds the plugins and runs the demo.
//!
//! Until the filelister/colorlister demo lands, this is the lifecycle walkthrough in
//! `tests/src/bin/walkthrough.rs`, run against the real test plugins.

use anyhow::Result;

use crate::{cargo, run_step};

pub(crate) fn run() -> Result<()> {
    run_step(
        "building the plugins and the walkthrough host",
        cargo().args(["build", "--quiet", "--package", "tether-e2e", "--bins"]),
    )?;
    run_step(
        "running the walkthrough",
        cargo().args([
            "run",
            "--quiet",
            "--package",
            "tether-e2e",
            "--bin",
            "walkthrough",
        ]),
    )
}
