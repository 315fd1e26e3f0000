//! `cargo xtask`: the workflow tool of this repository. See README.md.

mod artifact;
mod bench;
mod bootstrap;
mod buckets;
mod context;
mod deploy;
mod destroy;
mod down;
mod elf;
mod environment;
mod flags;
mod load;
mod local;
mod outputs;
mod paths;
mod plan;
mod private_buckets;
mod process;
mod provider_schema;
mod render_user_data;
mod rotate;
mod seal;
mod secrets;
mod smoke;
mod terraform;
mod test;
mod test_env;
mod tools;
mod up;

#[cfg(test)]
mod integration_tests;

use std::process::ExitCode;

use clap::Parser as _;

use crate::context::Context;
use crate::flags::{Cli, Command};

fn main() -> ExitCode {
    forget_cargo_run_variables();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo run` gives the xtask its package's variables (CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
/// ...). Some build scripts (ring's) declare `rerun-if-env-changed` on them, so nested cargo
/// commands inheriting them would rebuild those crates, and the next direct `cargo build`
/// would rebuild them again (measured: about a minute each way).
fn forget_cargo_run_variables() {
    let keys: Vec<_> = std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| {
            key.starts_with("CARGO_PKG_")
                || matches!(
                    key.as_str(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                )
        })
        .collect();
    for key in keys {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::remove_var(key) };
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cx = Context::new(&cli.env, cli.dry_run, cli.verbose)?;
    match cli.command {
        Command::Plan(args) => plan::run(&cx, args),
        Command::Bootstrap(args) => bootstrap::run(&cx, args),
        Command::Deploy(args) => deploy::run(&cx, args),
        Command::RenderUserData(args) => render_user_data::run(&cx, args),
        Command::Smoke(args) => smoke::run(&cx, args),
        Command::RotateToken(args) => rotate::token(&cx, args),
        Command::RotateCert(args) => rotate::cert(&cx, args),
        Command::Destroy(args) => destroy::run(&cx, args),
        Command::Local(args) => local::run(&cx, args),
        Command::Test(args) => test::run(&cx, args),
        Command::Up(args) => up::run(&cx, args),
        Command::Down(args) => down::run(&cx, args),
        Command::Bench(args) => bench::run(&cx, args),
        Command::Load(args) => load::run(&cx, args),
    }
}
