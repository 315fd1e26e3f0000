//! The local AWS emulator (moto server): start, stop, status, reset.
//!
//! One emulator per checkout, bound to 127.0.0.1. Its pid and port are recorded in
//! `target/xtask/local/emulator.json`; `stop` only ever signals that recorded pid, and only
//! while it still is a moto server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::context::{Context, state_dir};
use crate::environment::LOCAL;
use crate::process;
use crate::tools::PythonTool;

pub const DEFAULT_PORT: u16 = 4566;
/// Overrides the port `local start` uses when none is given with `--port`.
pub const PORT_ENV: &str = "XTASK_EMULATOR_PORT";
/// Always the project's own pinned copy, never one from PATH: moto 5.2 serializes
/// GetBucketVersioning with the wrong XML root (`GetBucketVersioningResponse`), which
/// aws-sdk-rust rejects (seen with 5.2.1 and 5.2.5); 5.1.x answers correctly.
pub const MOTO: PythonTool = PythonTool {
    venv: "moto_server",
    executable: "moto_server",
    requirement: "moto[server]>=5.1.22,<5.2",
};
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    pub port: u16,
}

impl Record {
    pub fn endpoint_url(&self) -> String {
        endpoint_for_port(self.port)
    }
}

#[derive(Debug)]
pub enum Status {
    Running(Record),
    /// A record whose process is gone, is no longer moto, or does not answer.
    Stale(Record),
    Stopped,
}

pub fn endpoint_for_port(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// The port asked for by the environment, or the default.
pub fn configured_port() -> Result<u16> {
    match std::env::var(PORT_ENV) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{PORT_ENV}={value:?} is not a port number")),
        Err(_) => Ok(DEFAULT_PORT),
    }
}

/// Where the local environment's AWS endpoint is: the running emulator's port if one is
/// recorded, else the configured port.
pub fn endpoint_url(root: &Path) -> String {
    let port = read_record(root)
        .map(|r| r.port)
        .or_else(|| configured_port().ok())
        .unwrap_or(DEFAULT_PORT);
    endpoint_for_port(port)
}

fn record_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("emulator.json")
}

pub fn log_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("moto.log")
}

fn read_record(root: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(root)).ok()?;
    serde_json::from_str(&text).ok()
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
        Some(record) if is_moto_process(record.pid) && answers(record.port) => {
            Status::Running(record)
        }
        Some(record) => Status::Stale(record),
    }
}

/// Starts the emulator unless this checkout's emulator already runs. Returns the record and
/// whether this call started it.
pub fn start(cx: &Context, port: u16) -> Result<(Record, bool)> {
    match status(&cx.root) {
        Status::Running(record) => return Ok((record, false)),
        Status::Stale(record) => {
            if is_moto_process(record.pid) {
                // Alive: maybe only busy. Give it time before replacing it.
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if answers(record.port) {
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

    if let Err(err) = TcpListener::bind(("127.0.0.1", port)) {
        bail!(
            "port {port} on 127.0.0.1 is already in use by another program ({err}); \
             stop it, or pick another port with `cargo xtask local start --port N` (or {PORT_ENV})"
        );
    }

    let moto = MOTO.ensure(cx)?;
    cx.step(format!("start moto server on 127.0.0.1:{port}"));
    if cx.dry_run {
        eprintln!(
            "    (dry run) {} -H 127.0.0.1 -p {port} > {}",
            moto.display(),
            log_path(&cx.root).display()
        );
        return Ok((Record { pid: 0, port }, false));
    }

    let log_file = log_path(&cx.root);
    std::fs::create_dir_all(log_file.parent().unwrap())?;
    let log = std::fs::File::create(&log_file)
        .with_context(|| format!("creating {}", log_file.display()))?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
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
    };
    write_record(&cx.root, record)?;

    let deadline = Instant::now() + READY_TIMEOUT;
    while !answers(port) {
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
                "moto server did not answer on port {port} within {}s; see {}",
                READY_TIMEOUT.as_secs(),
                log_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
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

/// Wipes every bucket, key and role in the emulator.
pub fn reset(record: Record) -> Result<()> {
    let status = http_status(record.port, "POST", "/moto-api/reset")
        .context("calling the emulator's reset API")?;
    if status != 200 {
        bail!("the emulator's reset API answered HTTP {status}");
    }
    Ok(())
}

/// The dashboard page is static: unlike `/moto-api/data.json`, which serialises every
/// stored object, it stays cheap however much the emulator holds.
fn answers(port: u16) -> bool {
    matches!(http_status(port, "GET", "/moto-api/"), Ok(200))
}

/// A minimal HTTP/1.1 exchange on 127.0.0.1: all the emulator's control API and readiness
/// checks need, and usable inside or outside an async runtime.
pub fn http_status(port: u16, method: &str, path: &str) -> Result<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
