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

use clap::{Parser, Subcommand};

use crate::context::Context;

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    about = "Deploy, check and run the encrypted file pipeline",
    version
)]
struct Cli {
    /// Environment to act on: `local` (the AWS emulator) or a file terraform/environments/<name>.tfvars.
    #[arg(
        long = "env",
        global = true,
        default_value = "local",
        env = "XTASK_ENV"
    )]
    env: String,
    /// Print every command and AWS API call that would run, and change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Print more detail about what runs.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or check the private, encrypted state and artifact buckets of an environment.
    Bootstrap(bootstrap::Args),
    /// Build and upload the service binary, run Terraform init, plan and apply, then save
    /// outputs and user-data (`--plan FILE` applies a reviewed plan instead).
    Deploy(deploy::Args),
    /// What `deploy` would change, saved for `deploy --plan FILE` (exit 0 none, 2 changes, 1 error).
    Plan(plan::Args),
    /// Write the EC2 user-data script from the environment's Terraform outputs.
    RenderUserData(render_user_data::Args),
    /// Upload and download through the deployed service and check every property.
    Smoke(smoke::Args),
    /// A new bearer token (SSM SecureString); waits until the service accepts it.
    RotateToken(rotate::Args),
    /// A new TLS key and certificate, made on the instance; waits for it and pins it.
    RotateCert(rotate::Args),
    /// Destroy an environment's infrastructure (and optionally its state and artifact buckets).
    Destroy(destroy::Args),
    /// Start, stop, inspect or reset the local AWS emulator (moto server).
    Local(local::Args),
    /// Run every check: formatting, lints, static Terraform checks, tests against the emulator.
    Test(test::Args),
    /// Run the whole pipeline locally: emulator, stack, service, smoke test (no AWS account).
    Up(up::Args),
    /// Stop the local service and emulator started by `up`.
    Down(down::Args),
    /// Measure the service's throughput and memory against direct S3 transfers (release build).
    Bench(bench::Args),
    /// Many concurrent clients for a bounded time, then check every acknowledged file was
    /// processed and no multipart upload is left (release build, on the emulator).
    Load(load::Args),
}

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
    if let Command::Plan(args) = cli.command {
        return plan::run(&cx, args).map(ExitCode::from);
    }
    match cli.command {
        Command::Plan(_) => unreachable!("handled above"),
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
    .map(|()| ExitCode::SUCCESS)
}
