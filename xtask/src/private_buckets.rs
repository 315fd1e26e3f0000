//! The buckets `bootstrap` makes for an environment before Terraform runs: the state bucket
//! and the artifact bucket. Which account they are in, what they are named and which KMS key
//! encrypts them, resolved in one place for bootstrap, deploy, artifact delivery and destroy.

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt};

use crate::context::Context;

/// What a bootstrapped bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    State,
    Artifacts,
}

impl Purpose {
    pub fn label(self) -> &'static str {
        match self {
            Purpose::State => "state",
            Purpose::Artifacts => "artifact",
        }
    }

    /// The `<env>.xtask.hcl` key that names the bucket.
    pub fn setting(self) -> &'static str {
        match self {
            Purpose::State => "state_bucket",
            Purpose::Artifacts => "artifact_bucket",
        }
    }
}

/// A bucket bootstrap makes for an environment, and how to reach it.
#[derive(Debug, Clone)]
pub struct PrivateBucket {
    pub purpose: Purpose,
    pub name: String,
    pub account_id: String,
    /// `None` means the AWS-managed `aws/s3` key.
    pub kms_key_arn: Option<String>,
}

/// The state bucket and the artifact bucket of an environment.
#[derive(Debug, Clone)]
pub struct Buckets {
    pub state: PrivateBucket,
    pub artifacts: PrivateBucket,
}

/// Account id (STS), bucket names, and the checked KMS key for their default encryption.
pub async fn resolve_buckets(cx: &Context, clients: &AwsClients) -> Result<Buckets> {
    let identity = clients
        .sts
        .get_caller_identity()
        .send()
        .await
        .aws_context("sts:GetCallerIdentity (are AWS credentials configured?)")?;
    let account_id = identity
        .account()
        .context("sts:GetCallerIdentity returned no account id")?
        .to_string();
    let kms_key_arn = match &cx.env.state_kms_key_id {
        None => None,
        Some(key_id) => {
            let key = clients
                .kms
                .describe_key()
                .key_id(key_id)
                .send()
                .await
                .aws_context(format!("kms:DescribeKey {key_id}"))?;
            let meta = key
                .key_metadata()
                .with_context(|| format!("kms:DescribeKey {key_id} returned no metadata"))?;
            if !meta.enabled() {
                bail!("KMS key {key_id} for the state bucket is disabled");
            }
            Some(
                meta.arn()
                    .with_context(|| format!("KMS key {key_id} has no ARN"))?
                    .to_string(),
            )
        }
    };
    let bucket = |purpose, name| PrivateBucket {
        purpose,
        name,
        account_id: account_id.clone(),
        kms_key_arn: kms_key_arn.clone(),
    };
    Ok(Buckets {
        state: bucket(Purpose::State, cx.env.state_bucket_name(&account_id)),
        artifacts: bucket(Purpose::Artifacts, cx.env.artifact_bucket_name(&account_id)),
    })
}

pub fn backend_file(cx: &Context) -> std::path::PathBuf {
    cx.state_dir().join("backend.hcl")
}

/// The backend settings bootstrap wrote, or the one sentence that says to bootstrap first.
pub fn require_backend_file(cx: &Context) -> Result<std::path::PathBuf> {
    let backend = backend_file(cx);
    if !backend.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask bootstrap --env {}` first",
            backend.display(),
            cx.env.name
        );
    }
    Ok(backend)
}
