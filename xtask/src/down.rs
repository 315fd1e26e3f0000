//! `cargo xtask down`: stops what `up` started — the local service and the emulator.

use anyhow::{Context as _, Result, bail};
use std::process::ExitCode;

use crate::context::Context;
use crate::flags;
use crate::local::{emulator, instance};

pub fn run(cx: &Context, args: flags::Down) -> Result<ExitCode> {
    if !cx.env.is_local() {
        bail!(
            "`down` stops the local stack only; for `{0}` use `destroy --env {0}`",
            cx.env.name
        );
    }
    match instance::stop(cx)? {
        true => println!("service stopped"),
        false => println!("service was not running"),
    }
    match emulator::stop(cx)? {
        Some(record) => println!("emulator stopped (pid {}); its data is gone", record.pid),
        None => println!("emulator was not running"),
    }
    if args.purge {
        let dir = cx.state_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        println!("removed {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
