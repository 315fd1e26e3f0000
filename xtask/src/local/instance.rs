//! The service `up` runs on this machine: installed by the rendered user-data from the
//! artifact bucket and started with the settings it wrote, recorded (pid and port) so
//! `smoke` finds it and `down` stops it; and the one way any command (`up`, `bench`, `load`)
//! starts a service binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsSettings};
use serde::{Deserialize, Serialize};

use crate::context::{Context, block_on};
use crate::local::{emulator, first_boot};
use crate::outputs::Outputs;
use crate::process;
use crate::secrets::{self, Secrets};

/// The local service started by `up`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct ServiceRecord {
    pub pid: u32,
    pub port: u16,
    /// Serves HTTPS (with the certificate the user-data made), as on the instance.
    #[serde(default)]
    pub tls: bool,
}

impl ServiceRecord {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Asks the service to read its token and certificate again, as `systemctl reload`
    /// does on the instance.
    pub fn reload(&self) -> Result<()> {
        if !process::runs(self.pid, SERVICE_PROGRAM) {
            bail!(
                "the local service (pid {}) is not running: `cargo xtask up` starts it",
                self.pid
            );
        }
        process::signal(self.pid, SERVICE_PROGRAM, "HUP")
    }
}

/// What the service's command line contains: the binary the user-data installed.
const SERVICE_PROGRAM: &str = crate::artifact::FILE_NAME;

pub fn record_path(cx: &Context) -> PathBuf {
    cx.state_dir().join("service.json")
}

/// The first of the local instances, if `up` started any.
pub fn read_record(cx: &Context) -> Option<ServiceRecord> {
    read_records(cx).into_iter().next()
}

/// Every local instance `up` started (`--instances`), in port order.
pub fn read_records(cx: &Context) -> Vec<ServiceRecord> {
    let Ok(text) = std::fs::read_to_string(record_path(cx)) else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<ServiceRecord>>(&text)
        // Written by a checkout from before --instances: one record.
        .or_else(|_| serde_json::from_str::<ServiceRecord>(&text).map(|r| vec![r]))
        .unwrap_or_default()
}

/// The log of the first instance.
pub fn log_path(cx: &Context) -> PathBuf {
    instance_log_path(cx, 1)
}

/// The log of the `n`-th instance (from 1).
pub fn instance_log_path(cx: &Context, n: usize) -> PathBuf {
    match n {
        1 => cx.state_dir().join("service.log"),
        n => cx.state_dir().join(format!("service-{n}.log")),
    }
}

/// Where the local stand-in for the instance keeps its root (`/usr/local/bin`, `/etc/filepipe`).
pub fn host_root(cx: &Context) -> PathBuf {
    cx.state_dir().join("host")
}

/// Runs the rendered user-data as the instance would at first boot (first_boot.rs), then
/// starts the binary it downloaded and checked, with the settings it wrote (HTTPS with the
/// key it made, the token it fetched), as the service role: `instances` processes on ports
/// from `port` up, which share the stack's queue as a fleet of instances does. Only the
/// listen address and the instance id differ (loopback, and the port asked for), and the
/// emulator's endpoint is added. Records pids and ports for `down` and `smoke`; writes the
/// pinned certificate and the curl header file.
pub fn start(
    cx: &Context,
    outputs: &Outputs,
    port: u16,
    instances: usize,
) -> Result<Vec<ServiceRecord>> {
    stop(cx)?;
    emulator::write_aws_config(&cx.root, Some(outputs.string("service_role_arn")?))?;
    let instance_role = emulator::local_settings(&cx.root, emulator::SERVICE_PROFILE);
    let installed = first_boot::run(
        cx,
        outputs.string("user_data")?,
        &host_root(cx),
        &instance_role,
        cx.env.region(),
    )?;
    eprintln!(
        "    installed {} (downloaded with the service role, checksum verified)",
        installed.binary.display()
    );
    // What a client holds: the certificate the instance published, and the token, both read
    // over the operator's channel.
    let operator = block_on(AwsClients::connect(&cx.env.aws))?;
    let secrets = Secrets::new(outputs, &operator)?;
    let cert =
        block_on(secrets.certificate())?.context("the user-data published no certificate")?;
    secrets::write_pin(cx, &cert)?;
    secrets::write_header(cx, &block_on(secrets.token())?)?;
    let mut env = installed.environment;
    env.retain(|(key, _)| key != "LISTEN_ADDR");
    let instance_id = env
        .iter()
        .find(|(key, _)| key == "INSTANCE_ID")
        .map(|(_, id)| id.clone())
        .unwrap_or_default();
    let mut records = Vec::new();
    for n in 1..=instances.max(1) {
        let mut env = env.clone();
        if n > 1 {
            env.retain(|(key, _)| key != "INSTANCE_ID");
            env.push(("INSTANCE_ID".into(), format!("{instance_id}-{n}")));
        }
        let port = port
            .checked_add(n as u16 - 1)
            .context("--port leaves no room for the instances")?;
        let started = spawn_service(
            &installed.binary,
            env,
            &instance_role,
            port,
            &instance_log_path(cx, n),
            Detach::Yes,
            Some(&cert),
        );
        let child = match started {
            Ok(child) => child,
            Err(err) => {
                for record in &records {
                    stop_one(record)?;
                }
                return Err(err);
            }
        };
        let record = ServiceRecord {
            pid: child.id(),
            port,
            tls: true,
        };
        records.push(record);
        // Written as each starts, so `down` finds every one that did.
        std::fs::write(record_path(cx), serde_json::to_string(&records)?)?;
        eprintln!("    service ready at {} (pid {})", record.url(), record.pid);
    }
    Ok(records)
}

/// The instance's refresh (filepipe-refresh.timer on EC2), run once in the local root: the
/// token and certificate as SSM now holds them or asks for; then the service reloads.
pub fn refresh(cx: &Context) -> Result<()> {
    let records = read_records(cx);
    if records.is_empty() {
        bail!("no local service runs: `cargo xtask up` starts it");
    }
    let instance_role = emulator::local_settings(&cx.root, emulator::SERVICE_PROFILE);
    first_boot::refresh(cx, &host_root(cx), &instance_role)?;
    records.iter().try_for_each(ServiceRecord::reload)
}

/// Whether a started service outlives the xtask (and a Ctrl-C meant for it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    Yes,
    No,
}

/// Starts a service binary with `env` on 127.0.0.1:`port`, connected to `aws` (endpoints,
/// region, credentials), output to `log`, and waits until /readyz answers; a service that
/// exits or never gets ready is stopped and its log quoted.
pub fn spawn_service(
    program: &Path,
    mut env: Vec<(String, String)>,
    aws: &AwsSettings,
    port: u16,
    log: &Path,
    detach: Detach,
    tls_pin: Option<&str>,
) -> Result<Child> {
    if let Err(err) = TcpListener::bind(("127.0.0.1", port)) {
        bail!("port {port} on 127.0.0.1 is in use ({err}); pick another with --port");
    }
    env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = crate::local::aws::aws_command(program, aws);
    command
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if detach == Detach::Yes {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let pinned = tls_pin
        .map(|cert| secrets::pinned_client(cert, Duration::from_secs(5)))
        .transpose()?;
    let ready = || match &pinned {
        Some(client) => block_on(async {
            client
                .get(format!("https://127.0.0.1:{port}/readyz"))
                .send()
                .await
        })
        .is_ok_and(|r| r.status().as_u16() == 200),
        None => matches!(emulator::http_status(port, "GET", "/readyz"), Ok(200)),
    };
    loop {
        if ready() {
            return Ok(child);
        }
        let exited = child.try_wait()?.is_some();
        if exited || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the service did not become ready; last lines of {}:\n{}",
                log.display(),
                emulator::tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the services `up` started, if they still run. Returns whether any did.
pub fn stop(cx: &Context) -> Result<bool> {
    let mut any = false;
    for record in read_records(cx) {
        any |= stop_one(&record)?;
    }
    let _ = std::fs::remove_file(record_path(cx));
    Ok(any)
}

fn stop_one(record: &ServiceRecord) -> Result<bool> {
    let running = process::runs(record.pid, SERVICE_PROGRAM);
    if running {
        process::terminate(record.pid, SERVICE_PROGRAM)?;
    }
    Ok(running)
}
