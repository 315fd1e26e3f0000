//! Reading each setting back from a bucket, as found (what bootstrap checks and reports).

use anyhow::{Context as _, Result};
use aws_clients::AwsResultExt;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{BucketVersioningStatus, ExpirationStatus, LifecycleRule, ObjectOwnership};
use serde_json::Value;

use super::settings::{BucketSetting, Found, check_tls_only_policy};

/// A bucket's default encryption, as S3 reports its first rule.
struct DefaultEncryption {
    algorithm: String,
    key: Option<String>,
    bucket_key: bool,
}

async fn default_encryption(s3: &S3, name: &str, owner: &str) -> Result<Option<DefaultEncryption>> {
    let result = s3
        .get_bucket_encryption()
        .bucket(name)
        .expected_bucket_owner(owner)
        .send()
        .await;
    let encryption = match result {
        Err(err) if err.code() == Some("ServerSideEncryptionConfigurationNotFoundError") => {
            return Ok(None);
        }
        other => other.aws_context(format!("s3:GetBucketEncryption {name}"))?,
    };
    let rule = encryption
        .server_side_encryption_configuration()
        .and_then(|c| c.rules().first());
    let default = rule.and_then(|r| r.apply_server_side_encryption_by_default());
    Ok(Some(DefaultEncryption {
        algorithm: default
            .map(|d| d.sse_algorithm().as_str().to_string())
            .unwrap_or_else(|| "none".into()),
        key: default
            .and_then(|d| d.kms_master_key_id())
            .map(str::to_string),
        bucket_key: rule.and_then(|r| r.bucket_key_enabled()) == Some(true),
    }))
}

/// Reads the setting back from the bucket `name` of `owner`.
pub async fn inspect(
    s3: &S3,
    name: &str,
    owner: &str,
    setting: &BucketSetting<'_>,
) -> Result<Found> {
    let found = match setting {
        BucketSetting::PublicAccessBlock => {
            let result = s3
                .get_public_access_block()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("NoSuchPublicAccessBlockConfiguration") => {
                    Found::missing()
                }
                other => {
                    let config = other.aws_context(format!("s3:GetPublicAccessBlock {name}"))?;
                    let c = config.public_access_block_configuration();
                    let flags = c.map(|c| {
                        [
                            c.block_public_acls(),
                            c.ignore_public_acls(),
                            c.block_public_policy(),
                            c.restrict_public_buckets(),
                        ]
                    });
                    let on = flags
                        .map(|f| f.iter().filter(|f| **f == Some(true)).count())
                        .unwrap_or(0);
                    Found {
                        ok: on == 4,
                        current: format!("{on} of 4 blocks on"),
                    }
                }
            }
        }
        BucketSetting::OwnerEnforced => {
            let result = s3
                .get_bucket_ownership_controls()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("OwnershipControlsNotFoundError") => {
                    Found::missing()
                }
                other => {
                    let controls =
                        other.aws_context(format!("s3:GetBucketOwnershipControls {name}"))?;
                    let ownership = controls
                        .ownership_controls()
                        .and_then(|c| c.rules().first())
                        .map(|r| r.object_ownership().as_str().to_string())
                        .unwrap_or_else(|| "none".into());
                    Found {
                        ok: ownership == ObjectOwnership::BucketOwnerEnforced.as_str(),
                        current: ownership,
                    }
                }
            }
        }
        BucketSetting::Versioning => {
            let versioning = s3
                .get_bucket_versioning()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await
                .aws_context(format!("s3:GetBucketVersioning {name}"))?;
            let status = versioning
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "never enabled".into());
            Found {
                ok: versioning.status() == Some(&BucketVersioningStatus::Enabled),
                current: status,
            }
        }
        BucketSetting::SseKms { kms_key_arn } => match default_encryption(s3, name, owner).await? {
            None => Found::missing(),
            Some(found) => {
                let key_ok = match kms_key_arn {
                    Some(want) => found.key.as_deref() == Some(*want),
                    // The AWS-managed key: no key id, or the aws/s3 alias.
                    None => found
                        .key
                        .as_deref()
                        .is_none_or(|k| k.ends_with("alias/aws/s3")),
                };
                Found {
                    ok: found.algorithm == "aws:kms" && key_ok && found.bucket_key,
                    current: format!(
                        "{} with {}, bucket key {}",
                        found.algorithm,
                        found.key.as_deref().unwrap_or("the AWS-managed key"),
                        if found.bucket_key { "on" } else { "off" }
                    ),
                }
            }
        },
        BucketSetting::Lifecycle {
            noncurrent_days,
            current_days,
        } => {
            let result = s3
                .get_bucket_lifecycle_configuration()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("NoSuchLifecycleConfiguration") => Found::missing(),
                other => {
                    let lifecycle =
                        other.aws_context(format!("s3:GetBucketLifecycleConfiguration {name}"))?;
                    let enabled = |r: &&LifecycleRule| r.status() == &ExpirationStatus::Enabled;
                    let noncurrent = lifecycle.rules().iter().filter(enabled).any(|r| {
                        r.noncurrent_version_expiration()
                            .and_then(|e| e.noncurrent_days())
                            == Some(*noncurrent_days)
                    });
                    let current = current_days.is_none_or(|days| {
                        lifecycle
                            .rules()
                            .iter()
                            .filter(enabled)
                            .any(|r| r.expiration().and_then(|e| e.days()) == Some(days))
                    });
                    let abort = lifecycle.rules().iter().filter(enabled).any(|r| {
                        r.abort_incomplete_multipart_upload()
                            .and_then(|a| a.days_after_initiation())
                            == Some(1)
                    });
                    let word = |ok: bool| if ok { "ok" } else { "missing" };
                    Found {
                        ok: noncurrent && abort && current,
                        current: format!(
                            "{} rule(s), noncurrent expiry {}, multipart abort {}, current expiry {}",
                            lifecycle.rules().len(),
                            word(noncurrent),
                            word(abort),
                            if current_days.is_some() {
                                word(current)
                            } else {
                                "not wanted"
                            }
                        ),
                    }
                }
            }
        }
        BucketSetting::TlsOnlyPolicy { bucket, region } => {
            let result = s3
                .get_bucket_policy()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("NoSuchBucketPolicy") => Found::missing(),
                other => {
                    let policy = other.aws_context(format!("s3:GetBucketPolicy {name}"))?;
                    let document: Value = serde_json::from_str(policy.policy().unwrap_or("{}"))
                        .context("bucket policy is not JSON")?;
                    match check_tls_only_policy(&document, bucket, region) {
                        Ok(()) => Found {
                            ok: true,
                            current: "denies non-TLS requests".into(),
                        },
                        Err(err) => Found {
                            ok: false,
                            current: err.to_string(),
                        },
                    }
                }
            }
        }
    };
    Ok(found)
}
