//! The workflow tool of this repository as a library: one module per command, the leaves
//! they share, and `run`, which `main.rs` calls. Its tests against real tools live in
//! `xtask/tests/`. See README.md.

pub mod artifact;
pub mod bench;
pub mod bootstrap;
pub mod buckets;
pub mod context;
pub mod deploy;
pub mod destroy;
pub mod down;
pub mod elf;
pub mod environment;
pub mod flags;
pub mod load;
pub mod local;
pub mod measuring;
pub mod outputs;
pub mod paths;
pub mod plan;
pub mod private_buckets;
pub mod process;
pub mod provider_schema;
pub mod render_user_data;
pub mod rotate;
pub mod seal;
pub mod secrets;
pub mod smoke;
pub mod terraform;
pub mod test;
pub mod test_env;
pub mod tools;
pub mod up;
pub mod user_data;

use std::process::ExitCode;

use crate::context::Context;
use crate::flags::{Cli, Command};

/// Runs the command `cli` names; its exit code, or the error to print.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
