//! What the benchmarks (`bench`, `load`) share: the release build they re-run themselves in,
//! the processes they measure against (`servers.rs`), a key on the emulator, and percentiles.

pub mod servers;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt, AwsSettings};
use xshell::cmd;

use crate::context::Context;

/// Builds the service and this xtask with optimisations, then runs the same command with
/// that build: a debug-built client would understate the direct transfers.
pub fn rerun_in_release(cx: &Context) -> Result<ExitCode> {
    // One build of both: the packages share one feature resolution, so nothing builds twice.
    cx.run(
        "cargo build --release -p service -p xtask (the benchmark measures optimised code)",
        cmd!(cx.sh, "cargo build --release --locked -p service -p xtask"),
    )?;
    let xtask = cx.root.join("target").join("release").join("xtask");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = Command::new(&xtask)
        .args(&args)
        .status()
        .with_context(|| format!("running {}", xtask.display()))?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    Ok(ExitCode::SUCCESS)
}

/// A new KMS key on the emulator; its ARN.
pub async fn create_key(settings: &AwsSettings) -> Result<String> {
    let clients = AwsClients::connect(settings).await?;
    let key = clients
        .kms
        .create_key()
        .description("filepipe benchmark")
        .send()
        .await
        .aws_context("kms:CreateKey")?;
    key.key_metadata()
        .and_then(|m| m.arn())
        .map(str::to_string)
        .context("kms:CreateKey returned no ARN")
}

/// Nearest-rank percentile; NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
