//! `cargo xtask local start | stop | status | reset`: the emulator the `local` environment and
//! the tests run against.

use anyhow::{Result, bail};
use std::process::ExitCode;

use aws_clients::subprocess_env;

use crate::context::Context;
use crate::flags::{self, LocalAction};
use crate::local::emulator::{self, Status};

const IN_MEMORY: &str =
    "moto keeps all data in memory: stopping it loses every bucket, object, key and role";

pub fn run(cx: &Context, args: flags::Local) -> Result<ExitCode> {
    match args.action {
        LocalAction::Start { port, no_iam } => {
            let port = match port {
                Some(port) => port,
                None => emulator::configured_port()?,
            };
            let (record, started) = emulator::start(cx, port, !no_iam && emulator::iam_wanted())?;
            if cx.dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            if started {
                println!(
                    "emulator started: {} (pid {}, log {})\n\
                     TLS with a certificate signed by the CA in {} (AWS_CA_BUNDLE in `local env`); \
                     plain HTTP on {} only for the control API and refusal tests",
                    record.endpoint_url(),
                    record.pid,
                    emulator::log_path(&cx.root).display(),
                    emulator::ca_bundle_path(&cx.root).display(),
                    record.plain_endpoint_url(),
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
            if record.iam {
                println!(
                    "IAM is enforced: requests must be signed by the operator (`eval \"$(cargo xtask local env)\"`) or another identity of the emulator"
                );
            } else {
                println!("IAM is NOT enforced: every request is allowed (--no-iam)");
            }
        }
        LocalAction::Env { tests: false } => {
            let settings = emulator::local_settings(&cx.root, emulator::OPERATOR_PROFILE);
            if !emulator::aws_config_path(&cx.root).is_file() {
                bail!("the emulator has no operator yet: start it with `cargo xtask local start`");
            }
            for (name, value) in subprocess_env(&settings) {
                print_export(name, value)?;
            }
            if let Some(endpoint) = &settings.endpoint_url {
                print_export("AWS_ENDPOINT_URL", endpoint)?;
            }
        }
        LocalAction::Env { tests: true } => {
            let Status::Running(record) = emulator::status(&cx.root) else {
                bail!("the emulator is not running: start it with `cargo xtask local start`");
            };
            if !record.iam {
                bail!(
                    "the emulator does not enforce IAM, and the tests prove what enforcement refuses; restart it without --no-iam"
                );
            }
            for (name, value) in crate::test_env::test_env(cx, &record)? {
                print_export(name, value)?;
            }
        }
        LocalAction::Stop => match emulator::stop(cx)? {
            Some(record) => println!("emulator stopped (pid {})", record.pid),
            None => println!("emulator is not running"),
        },
        LocalAction::Status => match emulator::status(&cx.root) {
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
        LocalAction::Reset => match emulator::status(&cx.root) {
            Status::Running(record) => {
                if cx.aws_call(format!(
                    "POST {}/moto-api/reset",
                    record.plain_endpoint_url()
                )) {
                    emulator::reset(&cx.root, record)?;
                    println!("emulator reset: all data wiped, a new operator made");
                }
            }
            _ => bail!("the emulator is not running; start it with `cargo xtask local start`"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// One `export` line for `eval`, the value single-quoted (a path may hold spaces).
fn print_export(name: &str, value: impl AsRef<std::ffi::OsStr>) -> Result<()> {
    println!("{}", export_line(name, value.as_ref())?);
    Ok(())
}

fn export_line(name: &str, value: &std::ffi::OsStr) -> Result<String> {
    let Some(value) = value.to_str() else {
        bail!("{name} is not UTF-8 ({value:?}): it cannot be exported for a shell");
    };
    Ok(format!("export {name}='{}'", value.replace('\'', r"'\''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_values_survive_the_shell_whatever_they_hold() {
        let value = "/home/a b/it's $HOME `x`";
        let line = export_line("V", value.as_ref()).unwrap();
        let echoed = std::process::Command::new("sh")
            .args(["-c", &format!("{line}; printf %s \"$V\"")])
            .output()
            .expect("run sh");
        assert_eq!(String::from_utf8(echoed.stdout).unwrap(), value);
    }
}
