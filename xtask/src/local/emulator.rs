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

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use aws_clients::{AwsClients, AwsSettings};

use crate::context::{Context, block_on};
use crate::local::aws::{LOCAL, LOCAL_REGION, read_record, record_path};
pub use crate::local::aws::{
    OPERATOR_PROFILE, OUTSIDER_PROFILE, PORT_ENV, Record, SERVICE_PROFILE, aws_config_path,
    ca_bundle_path, configured_port, endpoint_url, http_port_for, local_settings,
};
use crate::paths::{state_dir, write_private};
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
const OUTSIDER_ACCOUNT: &str = "111111111111";
const OPERATOR_USER: &str = "filepipe-operator";
/// The account moto puts everything in.
const EMULATOR_ACCOUNT: &str = "123456789012";

/// The operator's IAM user: Terraform's identity locally, as an admin role is on AWS.
pub fn operator_arn() -> String {
    format!("arn:aws:iam::{EMULATOR_ACCOUNT}:user/{OPERATOR_USER}")
}

/// IAM enforcement, unless NO_IAM_ENV says otherwise.
pub fn iam_wanted() -> bool {
    std::env::var(NO_IAM_ENV).map_or(true, |v| v != "1")
}

/// The operator's access key.
#[derive(Serialize, Deserialize)]
struct OperatorKey {
    access_key_id: String,
    secret_access_key: String,
}

#[derive(Debug)]
pub enum Status {
    Running(Record),
    /// A record whose process is gone, is no longer moto, or does not answer.
    Stale(Record),
    Stopped,
}

fn operator_key_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("operator.json")
}

fn read_keys(root: &Path) -> Result<[OperatorKey; 2]> {
    let path = operator_key_path(root);
    serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (start the emulator first)", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))
}

/// The operator's access key id and secret.
pub fn operator_key(root: &Path) -> Result<(String, String)> {
    let [operator, _] = read_keys(root)?;
    Ok((operator.access_key_id, operator.secret_access_key))
}

/// (Re)writes the local AWS config file: the operator, and the service role assumed through
/// the operator once the stack exists.
pub fn write_aws_config(root: &Path, service_role_arn: Option<&str>) -> Result<()> {
    write_aws_config_at(root, &aws_config_path(root), service_role_arn)
}

/// The same identities in a config file at `path` (tests keep their own service role there).
pub fn write_aws_config_at(root: &Path, path: &Path, service_role_arn: Option<&str>) -> Result<()> {
    let [operator, outsider] = read_keys(root)?;
    let mut text =
        "# Written by `cargo xtask local start` and `up`: identities of the local emulator.\n"
            .to_string();
    // endpoint_url: every AWS call a profile leads to goes to the emulator, the role
    // assumption included (the SDK's STS client for it reads only the profile and the
    // environment).
    // ca_bundle: the AWS CLI and the Go SDK under Terraform trust the emulator's CA.
    let endpoint = endpoint_url(root);
    let ca_bundle = ca_bundle_path(root);
    let ca_bundle = ca_bundle.display();
    for (profile, key) in [(OPERATOR_PROFILE, operator), (OUTSIDER_PROFILE, outsider)] {
        text.push_str(&format!(
            "\n[profile {profile}]\n\
             aws_access_key_id = {}\n\
             aws_secret_access_key = {}\n\
             region = {LOCAL_REGION}\n\
             endpoint_url = {endpoint}\n\
             ca_bundle = {ca_bundle}\n",
            key.access_key_id, key.secret_access_key
        ));
    }
    if let Some(role) = service_role_arn {
        // As the instance profile gives it on EC2: temporary credentials of the role, which
        // the SDK renews by itself.
        text.push_str(&format!(
            "\n[profile {SERVICE_PROFILE}]\n\
             role_arn = {role}\n\
             source_profile = {OPERATOR_PROFILE}\n\
             role_session_name = filepipe-local-service\n\
             region = {LOCAL_REGION}\n\
             endpoint_url = {endpoint}\n\
             ca_bundle = {ca_bundle}\n"
        ));
    }
    write_private(path, &text)
}

/// Makes the operator with the emulator's free requests, then (with `record.iam`) turns
/// enforcement on: from then on every request must be signed by a known identity. Also makes
/// an `outsider`, an administrator of another account, for tests of what crosses accounts.
fn make_operator(root: &Path, record: Record) -> Result<()> {
    expect_ok(
        post(record.http_port, "/moto-api/reset-auth", "inf")?,
        "reset-auth",
    )?;
    let endpoint = record.endpoint_url();
    let ca_bundle = ca_bundle_path(root);
    let (operator, outsider) = block_on(async move {
        let clients = AwsClients::connect(&AwsSettings::emulator(
            endpoint,
            LOCAL_REGION,
            Some(ca_bundle),
        ))
        .await?;
        let iam = aws_sdk_iam::Client::new(&clients.sdk_config);
        anyhow::Ok((
            make_admin(&iam, EMULATOR_ACCOUNT).await?,
            make_admin(&iam, OUTSIDER_ACCOUNT).await?,
        ))
    })?;
    write_private(
        &operator_key_path(root),
        &serde_json::to_string(&[operator, outsider])?,
    )?;
    write_aws_config(root, None)?;
    if record.iam {
        expect_ok(
            post(record.http_port, "/moto-api/reset-auth", "0")?,
            "reset-auth",
        )?;
    }
    Ok(())
}

/// An IAM user with an admin policy and an access key, in `account` (moto's
/// `x-moto-account-id` header picks the account of an unsigned request).
async fn make_admin(iam: &aws_sdk_iam::Client, account: &'static str) -> Result<OperatorKey> {
    let in_account = move |request: &mut aws_sdk_iam::config::http::HttpRequest| {
        request.headers_mut().insert("x-moto-account-id", account);
    };
    iam.create_user()
        .user_name(OPERATOR_USER)
        .customize()
        .mutate_request(in_account)
        .send()
        .await
        .context("iam:CreateUser for the operator")?;
    iam.put_user_policy()
        .user_name(OPERATOR_USER)
        .policy_name("administrator")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .customize()
        .mutate_request(in_account)
        .send()
        .await
        .context("iam:PutUserPolicy for the operator")?;
    let created = iam
        .create_access_key()
        .user_name(OPERATOR_USER)
        .customize()
        .mutate_request(in_account)
        .send()
        .await
        .context("iam:CreateAccessKey for the operator")?;
    let key = created.access_key().context("no access key returned")?;
    Ok(OperatorKey {
        access_key_id: key.access_key_id().to_string(),
        secret_access_key: key.secret_access_key().to_string(),
    })
}

fn expect_ok(status: u16, what: &str) -> Result<()> {
    if status != 200 {
        bail!("the emulator's {what} API answered HTTP {status}");
    }
    Ok(())
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

/// The dashboard page is static: unlike `/moto-api/data.json`, which serialises every
/// stored object, it stays cheap however much the emulator holds.
fn answers(port: u16) -> bool {
    matches!(http_status(port, "GET", "/moto-api/"), Ok(200))
}

/// A minimal HTTP/1.1 exchange on 127.0.0.1: all the emulator's control API and readiness
/// checks need, and usable inside or outside an async runtime.
pub fn http_status(port: u16, method: &str, path: &str) -> Result<u16> {
    request(port, method, path, "")
}

fn post(port: u16, path: &str, body: &str) -> Result<u16> {
    request(port, "POST", path, body).with_context(|| format!("POST {path} to the emulator"))
}

fn request(port: u16, method: &str, path: &str, body: &str) -> Result<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))
}

fn is_moto_process(pid: u32) -> bool {
    process::runs(pid, "moto_server")
}

fn terminate(pid: u32) -> Result<()> {
    process::terminate(pid, "moto_server")
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
