//! Encryption SDK messages as a producer holding the key makes them, for the smoke test and
//! `load`: made by the service binary's `service seal`, so the Encryption SDK is built into
//! the service only and the xtask builds without it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, bail};
use aws_clients::AwsSettings;
use xshell::cmd;

use crate::context::Context;
use crate::local::aws::aws_command;

/// `service seal` with the AWS settings it calls KMS with, and a directory for its files.
pub struct Sealer {
    program: PathBuf,
    aws: AwsSettings,
    work: PathBuf,
}

impl Sealer {
    pub fn new(program: PathBuf, aws: AwsSettings, work: PathBuf) -> Sealer {
        Sealer { program, aws, work }
    }

    /// With the service built (debug) for this machine, whatever the instances run; after
    /// `up` or the tests nothing is rebuilt.
    pub fn for_this_machine(cx: &Context, aws: &AwsSettings) -> Result<Sealer> {
        cx.run(
            "cargo build --workspace --bin service (for `service seal` on this machine)",
            cmd!(cx.sh, "cargo build --locked --workspace --bin service"),
        )?;
        Ok(Sealer::new(
            cx.root.join("target/debug/service"),
            aws.clone(),
            cx.state_dir(),
        ))
    }

    /// The message of `plaintext` under `key_arn` (the SDK's default suite and frame size).
    pub async fn seal(&self, key_arn: &str, plaintext: Vec<u8>) -> Result<Vec<u8>> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let stem = format!(
            "seal-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let (input, output) = (
            self.work.join(format!("{stem}.plain")),
            self.work.join(format!("{stem}.esdk")),
        );
        let mut command = aws_command(&self.program, &self.aws);
        command
            .arg("seal")
            .arg(format!("--kms-key-arn={key_arn}"))
            .arg(format!("--region={}", self.aws.region))
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(&output);
        let program = self.program.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(input.parent().expect("a file in a directory"))?;
            std::fs::write(&input, plaintext)
                .with_context(|| format!("writing {}", input.display()))?;
            let result = command
                .output()
                .with_context(|| format!("running {} seal", program.display()));
            let _ = std::fs::remove_file(&input);
            let ran = result?;
            if !ran.status.success() {
                let _ = std::fs::remove_file(&output);
                bail!(
                    "`{} seal` failed ({}): {}",
                    program.display(),
                    ran.status,
                    String::from_utf8_lossy(&ran.stderr).trim()
                );
            }
            let message =
                std::fs::read(&output).with_context(|| format!("reading {}", output.display()));
            let _ = std::fs::remove_file(&output);
            message
        })
        .await
        .context("the sealing task")??;
        Ok(sealed)
    }
}
