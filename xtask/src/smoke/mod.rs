//! `cargo xtask smoke`: uploads and downloads through the service and checks every property a
//! deployment promises — SSE-KMS with the deployed key, processing, byte-exact downloads,
//! ranges, refusals — then cleans up after itself.

mod cases;
mod checks;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::context::{Context, block_on};
use crate::flags;
use crate::outputs::Outputs;
use crate::outputs::outputs_file;
use crate::seal::Sealer;
use crate::secrets::Secrets;
use aws_clients::AwsClients;

use checks::http_client;
pub use checks::smoke;

impl flags::Smoke {
    pub fn default_for_tests() -> flags::Smoke {
        flags::Smoke {
            timeout_secs: 60,
            ..flags::Smoke::default()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub seconds: f64,
    /// Bytes moved (up + down), for a throughput figure.
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub run_id: String,
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
}

pub fn run(cx: &Context, args: flags::Smoke) -> Result<ExitCode> {
    let outputs = Outputs::load(&outputs_file(cx)).ok();
    let local_services = if cx.env.is_local() {
        crate::local::instance::read_records(cx)
    } else {
        Vec::new()
    };
    // Through every local instance `up` started; elsewhere through the stack's URL.
    let urls: Vec<String> = match (&args.url, &outputs) {
        (Some(url), _) => vec![url.trim_end_matches('/').to_string()],
        (None, _) if !local_services.is_empty() => local_services.iter().map(|s| s.url()).collect(),
        (None, Some(outputs)) => match outputs.string("service_url") {
            Ok(url) => vec![url.trim_end_matches('/').to_string()],
            Err(_) => bail!(
                "no service URL: the `{}` outputs have no `service_url` (no host is deployed); pass --url",
                cx.env.name
            ),
        },
        (None, None) => bail!(
            "no service URL: pass --url, or deploy `{}` first (its outputs give service_url)",
            cx.env.name
        ),
    };
    let deployed_key = outputs
        .as_ref()
        .and_then(|o| o.string("kms_key_arn").ok().map(str::to_string));
    // The operator's credentials: the S3 checks read the objects themselves, the Encryption
    // SDK case encrypts with the deployed key, and the token and the certificate to pin come
    // from SSM.
    let aws = block_on(AwsClients::connect(&cx.env.aws))?;
    let mut args = args;
    let mut pin = None;
    if let Some(outputs) = &outputs
        && outputs.string("auth_token_parameter").is_ok()
    {
        let secrets = Secrets::new(outputs, &aws)?;
        if urls.iter().any(|url| url.starts_with("https://")) {
            // A new instance publishes its certificate only once it has booted.
            pin = Some(block_on(secrets.wait_for_certificate(
                None,
                Duration::from_secs(args.ready_timeout_secs),
            ))?);
        }
        if args.token.is_none() {
            args.token = Some(block_on(secrets.token())?);
        }
    }
    let sealer = Sealer::for_this_machine(cx, &cx.env.aws)?;
    let mut reports = Vec::new();
    for url in &urls {
        block_on(wait_until_ready(
            url,
            pin.as_deref(),
            Duration::from_secs(args.ready_timeout_secs),
        ))?;
        let report = block_on(smoke(
            url,
            &args,
            deployed_key.as_deref(),
            Some(&aws),
            Some(&sealer),
            pin.as_deref(),
        ))?;
        if !args.json {
            print_table(&report);
        }
        reports.push(report);
    }
    if args.json {
        // One report as before for one URL; a list for several instances.
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            all => serde_json::to_string_pretty(all)?,
        };
        println!("{json}");
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.failed > 0)
        .map(|r| format!("{} against {}", r.failed, r.url))
        .collect();
    if !failed.is_empty() {
        bail!("smoke check(s) failed: {}", failed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls `/readyz` until it answers 200, printing progress; a freshly booted instance first
/// installs and starts the service (user-data), then checks its buckets and key.
pub async fn wait_until_ready(url: &str, pin: Option<&str>, timeout: Duration) -> Result<()> {
    let http = http_client(pin, Duration::from_secs(10))?;
    let started = Instant::now();
    let mut reported = Instant::now();
    let interval = (timeout / 20).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let last = match http.get(format!("{url}/readyz")).send().await {
            Ok(response) if response.status().as_u16() == 200 => return Ok(()),
            Ok(response) => format!(
                "HTTP {}: {}",
                response.status().as_u16(),
                response.text().await.unwrap_or_default().trim()
            ),
            Err(err) => format!("{err:#}"),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            bail!(
                "{url}/readyz did not answer 200 within {} s (last: {last}); on the instance, `journalctl -u filepipe` and /var/log/cloud-init-output.log tell why",
                timeout.as_secs()
            );
        }
        if reported.elapsed() >= Duration::from_secs(30) || waited < Duration::from_secs(1) {
            eprintln!(
                "    waiting for {url}/readyz ({:.0} s of {} s; last: {last})",
                waited.as_secs_f64(),
                timeout.as_secs()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(interval).await;
    }
}

pub fn print_table(report: &Report) {
    let mut out = std::io::stdout().lock();
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(out, "smoke {} (run {})", report.url, report.run_id);
    let _ = writeln!(
        out,
        "{:width$}  {:6}  {:>8}  {:>12}  detail",
        "check", "result", "seconds", "MB/s"
    );
    for check in &report.checks {
        let throughput = if check.bytes > 0 && check.seconds > 0.0 {
            format!("{:.1}", check.bytes as f64 / 1e6 / check.seconds)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:width$}  {:6}  {:>8.2}  {:>12}  {}",
            check.name,
            if check.passed { "ok" } else { "FAILED" },
            check.seconds,
            throughput,
            check.detail
        );
    }
    let _ = writeln!(out, "{} passed, {} failed", report.passed, report.failed);
}
