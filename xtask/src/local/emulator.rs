//! The local AWS emulator (moto server): start, stop, status, reset.
//!
//! One emulator per checkout, bound to 127.0.0.1. It speaks TLS, as AWS endpoints do, with a
//! certificate it makes at start, signed by a CA whose certificate it writes to
//! `target/xtask/local/emulator-ca.pem`: the one CA every local client trusts for it (the AWS
//! SDK through `AwsSettings::ca_bundle`, Terraform and the AWS CLI through AWS_CA_BUNDLE and
//! the profiles' `ca_bundle`). The next port serves the same emulator over plain HTTP, for its
//! control API and for the tests that prove TLS-only policies refuse plain HTTP. Its pid and
//! ports are recorded in `target/xtask/local/emulator.json`; `stop` only ever signals that
//! recorded pid, and only while it still is a moto server.
//!
//! It enforces IAM, as AWS does: once started, it makes an **operator** (an IAM user with an
//! admin policy and an access key) and from then on refuses every request that is not signed
//! by a known identity or that the identity's policies do not allow. The operator's key and,
//! once `up` has made the stack, the service role (assumed through the operator) are profiles
//! of one AWS config file, `target/xtask/local/aws-config` (mode 0600), which the xtask, the
//! tests, Terraform, the local service and the AWS CLI all read. moto's own mistakes in
//! authorization are corrected in `moto_server_fidelity.py`, never in a policy.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::control::answers;
pub use super::control::{http_status, tail};
use super::identities::{expect_ok, make_operator};
pub use super::identities::{operator_arn, operator_key, write_aws_config};
use crate::context::Context;
use crate::local::aws::{LOCAL, read_record, record_path};
pub use crate::local::aws::{
    OPERATOR_PROFILE, PORT_ENV, Record, SERVICE_PROFILE, aws_config_path, ca_bundle_path,
    configured_port, http_port_for, local_settings,
};
use crate::paths::state_dir;
use crate::process;
use crate::tools::PythonTool;

/// Always the project's own pinned copy, never one from PATH: moto 5.2 serializes
/// GetBucketVersioning with the wrong XML root (`GetBucketVersioningResponse`), which
/// aws-sdk-rust rejects (seen with 5.2.1 and 5.2.5); 5.1.x answers correctly.
pub const MOTO: PythonTool = PythonTool {
    venv: "moto_server",
    executable: "moto_server",
    requirement: "moto[server]>=5.1.22,<5.2",
};
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// moto with the corrections of its authorization, run by the venv's python.
const FIDELITY_LAUNCHER: &str = "xtask/src/moto_server_fidelity.py";
/// Set to 1 to start the emulator without IAM enforcement (for debugging only).
pub const NO_IAM_ENV: &str = "XTASK_EMULATOR_NO_IAM";
/// IAM enforcement, unless NO_IAM_ENV says otherwise.
pub fn iam_wanted() -> bool {
    std::env::var(NO_IAM_ENV).map_or(true, |v| v != "1")
}

#[derive(Debug)]
pub enum Status {
    Running(Record),
    /// A record whose process is gone, is no longer moto, or does not answer.
    Stale(Record),
    Stopped,
}

pub fn log_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("moto.log")
}

fn write_record(root: &Path, record: Record) -> Result<()> {
    let path = record_path(root);
    std::fs::create_dir_all(path.parent().unwrap())
        .with_context(|| format!("creating {}", path.parent().unwrap().display()))?;
    std::fs::write(&path, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn remove_record(root: &Path) -> Result<()> {
    match std::fs::remove_file(record_path(root)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", record_path(root).display()))
        }
        _ => Ok(()),
    }
}

pub fn status(root: &Path) -> Status {
    match read_record(root) {
        None => Status::Stopped,
        Some(record) if is_moto_process(record.pid) && answers(record.http_port) => {
            Status::Running(record)
        }
        Some(record) => Status::Stale(record),
    }
}

/// Starts the emulator unless this checkout's emulator already runs. Returns the record and
/// whether this call started it.
pub fn start(cx: &Context, port: u16, iam: bool) -> Result<(Record, bool)> {
    match status(&cx.root) {
        Status::Running(record) => return Ok((record, false)),
        Status::Stale(record) => {
            if is_moto_process(record.pid) {
                // Alive: maybe only busy. Give it time before replacing it.
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if answers(record.http_port) {
                        return Ok((record, false));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                terminate(record.pid)?;
            }
            remove_record(&cx.root)?;
        }
        Status::Stopped => {}
    }

    let http_port = http_port_for(port);
    for (taken, what) in [(port, "TLS"), (http_port, "plain-HTTP")] {
        if let Err(err) = TcpListener::bind(("127.0.0.1", taken)) {
            bail!(
                "port {taken} on 127.0.0.1 (the emulator's {what} port) is already in use by another program ({err}); \
                 stop it, or pick another port with `cargo xtask local start --port N` (or {PORT_ENV}); the emulator takes N and N+1"
            );
        }
    }

    let moto = MOTO.ensure(cx)?;
    let python = moto.with_file_name("python3");
    if !python.exists() && !cx.dry_run {
        bail!(
            "{} has no python3 beside it to run {FIDELITY_LAUNCHER}",
            moto.display()
        );
    }
    let launcher = cx.root.join(FIDELITY_LAUNCHER);
    cx.step(format!(
        "start moto server on https://127.0.0.1:{port} and http://127.0.0.1:{http_port} ({})",
        if iam {
            "IAM enforced"
        } else {
            "IAM NOT enforced: every request is allowed"
        }
    ));
    if cx.dry_run {
        eprintln!(
            "    (dry run) {} {FIDELITY_LAUNCHER} -p {port} --http-port {http_port} > {}",
            python.display(),
            log_path(&cx.root).display()
        );
        return Ok((
            Record {
                pid: 0,
                port,
                http_port,
                iam,
            },
            false,
        ));
    }

    let log_file = log_path(&cx.root);
    std::fs::create_dir_all(log_file.parent().unwrap())?;
    let log = std::fs::File::create(&log_file)
        .with_context(|| format!("creating {}", log_file.display()))?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&python)
            .arg(&launcher)
            .env("FILEPIPE_EC2_STAND_IN_ARN", operator_arn())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .arg("--http-port")
            .arg(http_port.to_string())
            .arg("--ca-bundle")
            .arg(ca_bundle_path(&cx.root))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the xtask does not kill the emulator.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", moto.display()))?
    };
    let record = Record {
        pid: child.id(),
        port,
        http_port,
        iam,
    };
    write_record(&cx.root, record)?;

    let deadline = Instant::now() + READY_TIMEOUT;
    // The TLS server is bound before the plain one answers (one process, in that order).
    while !answers(http_port) {
        if let Some(exit) = child.try_wait()? {
            remove_record(&cx.root)?;
            bail!(
                "moto server exited ({exit}) before it answered; last lines of {}:\n{}",
                log_file.display(),
                tail(&log_file, 15)
            );
        }
        if Instant::now() > deadline {
            terminate(record.pid)?;
            remove_record(&cx.root)?;
            bail!(
                "moto server did not answer on port {http_port} within {}s; see {}",
                READY_TIMEOUT.as_secs(),
                log_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(err) = make_operator(&cx.root, record) {
        terminate(record.pid)?;
        remove_record(&cx.root)?;
        return Err(err.context("making the emulator's operator identity"));
    }
    Ok((record, true))
}

/// Stops the recorded emulator. Returns the record of what was stopped, if anything ran.
pub fn stop(cx: &Context) -> Result<Option<Record>> {
    let Some(record) = read_record(&cx.root) else {
        return Ok(None);
    };
    let alive = is_moto_process(record.pid);
    if cx.dry_run {
        if alive {
            eprintln!("    (dry run) kill -TERM {}", record.pid);
        }
        return Ok(alive.then_some(record));
    }
    if alive {
        terminate(record.pid)?;
    }
    remove_record(&cx.root)?;
    Ok(alive.then_some(record))
}

/// Wipes every bucket, key, role and user in the emulator, then makes a new operator (the
/// reset removed the old one).
pub fn reset(root: &Path, record: Record) -> Result<()> {
    // The control API needs no signature; make_operator reopens the free requests it needs.
    let status = http_status(record.http_port, "POST", "/moto-api/reset")
        .context("calling the emulator's reset API")?;
    expect_ok(status, "reset")?;
    make_operator(root, record)
}

fn is_moto_process(pid: u32) -> bool {
    process::runs(pid, "moto_server")
}

fn terminate(pid: u32) -> Result<()> {
    process::terminate(pid, "moto_server")
}
