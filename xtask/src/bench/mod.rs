//! `cargo xtask bench`: throughput and memory of the service against direct S3 transfers of
//! the same files on the same server, in one run, as ratios.
//!
//! (a) through the service over HTTP; (b) direct with aws-sdk-s3 using the service's part size
//! and concurrency (the limit of our stack); (c) direct with boto3 (what users reach for).
//! Runs are interleaved (a, b, c, a, b, c, ...) so drift on the machine hits all three alike.
//!
//! The data path is s3s-fs, a fast S3 server on a temp directory; KMS stays on the emulator.
//! s3s-fs ignores SSE headers, so encryption costs nothing there; one case also runs on moto.
//! The service and this client run release builds: a debug client would understate (b).

mod cases;
mod data;
pub mod fleet;
pub mod large;
mod plot;
pub mod report;
pub mod small;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail, ensure};

use crate::buckets;
use crate::context::Context;
use crate::flags;
use crate::local::emulator;
use crate::measuring::{rerun_in_release, servers};
use crate::tools::PythonTool;
use cases::measure;
pub use data::{SourceFile, generate_files, generate_small};
use report::Report;

pub const MIB: u64 = 1024 * 1024;
pub const BOTO3: PythonTool = PythonTool {
    venv: "boto3",
    executable: "python",
    requirement: "boto3>=1.36,<2",
};

/// One case's servers and settings, shared by the three variants.
pub struct Setup {
    pub http: reqwest::Client,
    /// Direct client for (b) and for clearing the buckets between runs.
    pub s3: aws_sdk_s3::Client,
    pub s3_endpoint: String,
    pub region: String,
    /// Credentials (and region) for the boto3 script, as environment variables.
    pub aws_env: Vec<(&'static str, String)>,
    pub service_url: String,
    pub initial: String,
    pub final_: String,
    pub kms_key_arn: String,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub max_buffered_parts: usize,
    pub python: PathBuf,
    pub script: PathBuf,
    /// Downloads land here.
    pub out_dir: PathBuf,
    pub repetitions: u32,
}

#[derive(serde::Deserialize)]
pub struct Boto3Result {
    pub seconds: f64,
    #[serde(default)]
    pub latencies_ms: Vec<f64>,
}

impl Setup {
    pub fn file_url(&self, name: &str) -> String {
        format!("{}/v1/files/{name}", self.service_url)
    }

    /// Waits (server side) until the service has processed `name`.
    pub async fn wait_processed(&self, name: &str) -> Result<()> {
        let status: serde_json::Value = self
            .http
            .get(format!("{}/status?wait=60", self.file_url(name)))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("status of {name}"))?
            .json()
            .await?;
        ensure!(
            status["state"] == "processed",
            "{name} was not processed: {status}"
        );
        Ok(())
    }

    /// Runs the boto3 script with these arguments plus the connection settings. Called from
    /// async code: the wait for the script is handed off the runtime's worker.
    pub fn boto3(&self, args: &[String]) -> Result<Boto3Result> {
        let mut command = Command::new(&self.python);
        command
            .arg(&self.script)
            .args(args)
            .arg(format!("--endpoint={}", self.s3_endpoint))
            .arg(format!("--region={}", self.region))
            .arg(format!("--kms-key-arn={}", self.kms_key_arn))
            .envs(self.aws_env.iter().map(|(k, v)| (k, v)));
        let output =
            tokio::task::block_in_place(|| command.output()).context("running the boto3 script")?;
        if !output.status.success() {
            bail!(
                "the boto3 script failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "the boto3 script printed no result: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Deletes every object in both buckets, so a run never reads another run's data and the
    /// disk holds one run at a time.
    pub async fn clear_buckets(&self) -> Result<()> {
        for bucket in [&self.initial, &self.final_] {
            buckets::empty_unversioned(&self.s3, bucket).await?;
        }
        Ok(())
    }
}

pub fn run(cx: &Context, args: flags::Bench) -> Result<ExitCode> {
    if !cx.env.is_local() {
        bail!("`bench` runs on this machine only (s3s-fs and the emulator); drop --env");
    }
    if cx.dry_run {
        bail!("`bench` has no dry run");
    }
    if cfg!(debug_assertions) {
        return rerun_in_release(cx);
    }
    let work = cx.state_root.join("bench").join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("out")).context("creating the work directory")?;

    let s3s_fs = servers::ensure_s3s_fs(cx)?;
    let python = BOTO3.ensure(cx)?;
    let (record, started_emulator) =
        emulator::start(cx, emulator::configured_port()?, emulator::iam_wanted())?;
    let result = measure(cx, &args, &work, &s3s_fs, &python, &record.endpoint_url());
    if started_emulator {
        emulator::stop(cx)?;
    }
    // The data is gigabytes; keep only the logs (and the report).
    for dir in ["data", "out", "s3s-fs"] {
        let _ = std::fs::remove_dir_all(work.join(dir));
    }
    let report = result.with_context(|| format!("the logs are in {}", work.display()))?;
    write_report(cx, &report, args.plot)?;
    Ok(ExitCode::SUCCESS)
}

fn write_report(cx: &Context, report: &Report, plot: bool) -> Result<()> {
    let dir = cx.state_root.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    let path = dir.join(format!("bench-{}.json", report.unix_time));
    std::fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(dir.join("latest.json"), &json)?;
    println!("\nnotes:");
    for note in &report.notes {
        println!("  - {note}");
    }
    println!("\nreport: {}", path.display());
    if plot {
        let svg = path.with_extension("svg");
        plot::write_svg(report, &svg)?;
        println!("chart:  {}", svg.display());
    }
    Ok(())
}
