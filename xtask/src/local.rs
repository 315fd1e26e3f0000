//! `cargo xtask local start | stop | status | reset`: the emulator the `local` environment and
//! the tests run against.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::context::Context;
use crate::emulator::{self, Status};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Start the emulator on 127.0.0.1 (installs moto[server] into target/venv if needed).
    Start {
        /// Port to listen on [default: $XTASK_EMULATOR_PORT or 4566].
        #[arg(long)]
        port: Option<u16>,
    },
    /// Stop the emulator this checkout started; its data is lost.
    Stop,
    /// Say whether the emulator runs, where, and what that means for its data.
    Status,
    /// Wipe all data in the running emulator.
    Reset,
}

const IN_MEMORY: &str =
    "moto keeps all data in memory: stopping it loses every bucket, object, key and role";

pub fn run(cx: &Context, args: Args) -> Result<()> {
    match args.action {
        Action::Start { port } => {
            let port = match port {
                Some(port) => port,
                None => emulator::configured_port()?,
            };
            let (record, started) = emulator::start(cx, port)?;
            if cx.dry_run {
                return Ok(());
            }
            if started {
                println!(
                    "emulator started: {} (pid {}, log {})",
                    record.endpoint_url(),
                    record.pid,
                    emulator::log_path(&cx.root).display()
                );
            } else {
                println!(
                    "emulator already running: {} (pid {})",
                    record.endpoint_url(),
                    record.pid
                );
                if record.port != port {
                    eprintln!(
                        "note: it listens on port {}, not the {port} asked for; stop it first to change ports",
                        record.port
                    );
                }
            }
            println!("{IN_MEMORY}");
        }
        Action::Stop => match emulator::stop(cx)? {
            Some(record) => println!("emulator stopped (pid {})", record.pid),
            None => println!("emulator is not running"),
        },
        Action::Status => match emulator::status(&cx.root) {
            Status::Running(record) => {
                println!(
                    "emulator running: {} (pid {})\n{IN_MEMORY}",
                    record.endpoint_url(),
                    record.pid
                );
            }
            Status::Stale(record) => {
                println!(
                    "emulator not running (stale record for pid {} on port {}; `local start` replaces it)",
                    record.pid, record.port
                );
            }
            Status::Stopped => println!("emulator not running\n{IN_MEMORY}"),
        },
        Action::Reset => match emulator::status(&cx.root) {
            Status::Running(record) => {
                if cx.aws_call(format!("POST {}/moto-api/reset", record.endpoint_url())) {
                    emulator::reset(record)?;
                    println!("emulator reset: all data wiped");
                }
            }
            _ => bail!("the emulator is not running; start it with `cargo xtask local start`"),
        },
    }
    Ok(())
}
