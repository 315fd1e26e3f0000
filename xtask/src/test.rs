//! `cargo xtask test`: the one test command, used by developers and CI alike.

use anyhow::{Context as _, Result};
use service::testing::ENDPOINT_VAR;
use xshell::cmd;

use crate::context::Context;
use crate::emulator;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(cx: &Context, _args: Args) -> Result<()> {
    let started = std::time::Instant::now();
    let sh = &cx.sh;
    cx.run("cargo fmt --check", cmd!(sh, "cargo fmt --all -- --check"))?;
    cx.run(
        "cargo clippy",
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --locked -- -D warnings"
        ),
    )?;

    let (record, we_started) = emulator::start(cx, emulator::configured_port()?)
        .context("starting the emulator for the tests")?;
    let endpoint = record.endpoint_url();
    if we_started {
        eprintln!("    emulator started for this run: {endpoint}");
    } else if !cx.dry_run {
        eprintln!("    using the running emulator: {endpoint}");
    }
    let result = cx.run(
        "cargo test",
        cmd!(sh, "cargo test --workspace --locked").env(ENDPOINT_VAR, &endpoint),
    );
    if we_started {
        emulator::stop(cx).context("stopping the emulator this run started")?;
    }
    result?;
    eprintln!(
        "all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
