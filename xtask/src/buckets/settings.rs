//! The protective settings of a bucket, each with what it should be in words, and the
//! TLS-only policy the state and artifact buckets carry.

use anyhow::{Context as _, Result, bail};
use aws_clients::partition;
use serde_json::{Value, json};

/// One protective setting of a bucket, with how to read it back (`inspect`) and how to put
/// it (`put`) side by side: the state bucket and the data buckets share every rule here.
pub enum BucketSetting<'a> {
    /// All four public access blocks on.
    PublicAccessBlock,
    /// ACLs disabled: the bucket owner owns every object.
    OwnerEnforced,
    Versioning,
    /// Default SSE-KMS with a bucket key; `None` is the AWS-managed `aws/s3` key.
    SseKms {
        kms_key_arn: Option<&'a str>,
    },
    /// Abort incomplete multipart uploads after a day, expire noncurrent versions after
    /// `noncurrent_days`, and current objects after `current_days` if given.
    Lifecycle {
        noncurrent_days: i32,
        current_days: Option<i32>,
    },
    /// Every request without TLS denied (the state bucket's whole policy).
    TlsOnlyPolicy {
        bucket: &'a str,
        region: &'a str,
    },
}

/// A setting as found on a bucket.
pub struct Found {
    pub ok: bool,
    pub current: String,
}

impl Found {
    pub(super) fn missing() -> Found {
        Found {
            ok: false,
            current: "none".into(),
        }
    }
}

impl BucketSetting<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            BucketSetting::PublicAccessBlock => "public access block",
            BucketSetting::OwnerEnforced => "object ownership",
            BucketSetting::Versioning => "versioning",
            BucketSetting::SseKms { .. } => "default encryption",
            BucketSetting::Lifecycle { .. } => "lifecycle",
            BucketSetting::TlsOnlyPolicy { .. } => "bucket policy",
        }
    }

    /// What the setting should be, in words.
    pub fn want(&self) -> String {
        match self {
            BucketSetting::PublicAccessBlock => "all four blocks on".into(),
            BucketSetting::OwnerEnforced => "BucketOwnerEnforced".into(),
            BucketSetting::Versioning => "Enabled".into(),
            BucketSetting::SseKms { kms_key_arn } => format!(
                "aws:kms with {}, bucket key on",
                kms_key_arn.unwrap_or("the AWS-managed key")
            ),
            BucketSetting::Lifecycle {
                noncurrent_days,
                current_days,
            } => format!(
                "noncurrent versions expire after {noncurrent_days} days, incomplete uploads aborted after 1 day{}",
                current_days
                    .map(|d| format!(", current objects expire after {d} days"))
                    .unwrap_or_default()
            ),
            BucketSetting::TlsOnlyPolicy { .. } => "deny every request without TLS".into(),
        }
    }
}

/// The TLS-only policy of a bucket.
pub fn tls_only_policy(bucket_name: &str, region: &str) -> Value {
    let arn = format!("arn:{}:s3:::{bucket_name}", partition(region));
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn.clone(), format!("{arn}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}
        }]
    })
}

/// Checks a policy document denies non-TLS access to the whole bucket.
pub fn check_tls_only_policy(policy: &Value, bucket_name: &str, region: &str) -> Result<()> {
    let arn = format!("arn:{}:s3:::{bucket_name}", partition(region));
    let statements = policy["Statement"]
        .as_array()
        .context("policy has no Statement list")?;
    let denies_plain_http = statements.iter().any(|s| {
        s["Effect"] == "Deny"
            && s["Principal"] == "*"
            && s["Action"] == "s3:*"
            && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
            && s["Resource"]
                .as_array()
                .is_some_and(|r| r.contains(&json!(arn)) && r.contains(&json!(format!("{arn}/*"))))
    });
    if !denies_plain_http {
        bail!("policy does not deny non-TLS requests to {arn} and its objects");
    }
    Ok(())
}
