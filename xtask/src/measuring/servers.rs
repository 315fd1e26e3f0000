//! The processes a benchmark run owns: the s3s-fs S3 server and the release-built service.
//! They are children of the xtask (not detached), so they end with it, also on Ctrl-C.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aws_clients::AwsSettings;
use xshell::cmd;

use crate::context::Context;
use crate::local::emulator;
use crate::local::instance::{Detach, spawn_service};

/// Newer s3s-fs releases need a newer rustc than this workspace's.
const S3S_FS_VERSION: &str = "0.14.1";
pub const SERVICE_RELEASE: &str = "target/release/service";

/// A child process that is stopped when dropped, so an error anywhere in a run leaves no
/// server behind.
pub struct Owned {
    child: Child,
}

impl Owned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SIGTERM first: the service drains and exits; s3s-fs just exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/tools/bin/s3s-fs`, installed with cargo when absent.
pub fn ensure_s3s_fs(cx: &Context) -> Result<PathBuf> {
    let tools = cx.root.join("target").join("tools");
    let binary = tools.join("bin").join("s3s-fs");
    let installed = Command::new(&binary)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains(S3S_FS_VERSION))
        .unwrap_or(false);
    if !installed {
        let spec = format!("s3s-fs@{S3S_FS_VERSION}");
        cx.run(
            &format!(
                "cargo install {spec} into {} (about 3 minutes, once)",
                tools.display()
            ),
            cmd!(
                cx.sh,
                "cargo install {spec} --features binary --locked --root {tools}"
            ),
        )?;
    }
    Ok(binary)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts s3s-fs serving `root` on 127.0.0.1 and waits until it accepts connections.
pub fn start_s3s_fs(
    binary: &Path,
    root: &Path,
    log: &Path,
    (access_key, secret_key): &(String, String),
) -> Result<(Owned, String)> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let port = free_port()?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Owned { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if server.child.try_wait()?.is_some() || Instant::now() > deadline {
            bail!(
                "s3s-fs did not start; last lines of {}:\n{}",
                log.display(),
                emulator::tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // s3s-fs speaks plain HTTP: it stands in for S3's speed, not its security.
    Ok((server, format!("http://127.0.0.1:{port}")))
}

/// Starts the release-built service with `env` and waits until it is ready.
pub fn start_service(
    cx: &Context,
    env: Vec<(String, String)>,
    aws: &AwsSettings,
    log: &Path,
) -> Result<(Owned, String)> {
    start_program(&cx.root.join(SERVICE_RELEASE), env, aws, log)
}

/// [`start_service`] with another build of the service.
pub fn start_program(
    program: &Path,
    env: Vec<(String, String)>,
    aws: &AwsSettings,
    log: &Path,
) -> Result<(Owned, String)> {
    start_pinned(program, env, aws, log, None)
}

/// [`start_program`] serving HTTPS with the certificate `pin` (in `env`'s TLS files) when
/// given; returns the service and its URL.
pub fn start_pinned(
    program: &Path,
    env: Vec<(String, String)>,
    aws: &AwsSettings,
    log: &Path,
    pin: Option<&str>,
) -> Result<(Owned, String)> {
    let port = free_port()?;
    let child = spawn_service(program, env, aws, port, log, Detach::No, pin)?;
    let scheme = if pin.is_some() { "https" } else { "http" };
    Ok((Owned { child }, format!("{scheme}://127.0.0.1:{port}")))
}

/// The peak resident set size (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// The resident set size (VmRSS) of a process now, in bytes.
pub fn current_rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS:")
}

fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} line in {path}"))?;
    Ok(kib * 1024)
}
