//! Bucket operations shared by bootstrap (state and artifact buckets), the sandbox
//! provisioner (data and log buckets) and destroy: create, put each protective setting, and empty versioned buckets
//! (every version and delete marker, in DeleteObjects batches of up to 1,000 keys).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    BucketVersioningStatus, CreateBucketConfiguration, Delete, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration,
    ObjectIdentifier, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, VersioningConfiguration,
};
use serde_json::{Value, json};
use service::aws::{AwsResultExt, partition};

/// Deletes every version and delete marker; returns how many were deleted. A bucket that no
/// longer exists counts as empty, so a re-run after a partial failure goes on.
pub async fn empty_bucket(s3: &S3, bucket: &str) -> Result<usize> {
    let mut deleted = 0;
    loop {
        // Always list from the start: what was deleted is gone, so no markers are needed.
        let page = match s3
            .list_object_versions()
            .bucket(bucket)
            .max_keys(1000)
            .send()
            .await
        {
            Ok(page) => page,
            Err(err) if err.code() == Some("NoSuchBucket") => return Ok(deleted),
            Err(err) => return Err(err).aws_context(format!("s3:ListObjectVersions {bucket}")),
        };
        let mut batch: Vec<ObjectIdentifier> = Vec::new();
        for version in page.versions() {
            batch.push(identifier(version.key(), version.version_id())?);
        }
        for marker in page.delete_markers() {
            batch.push(identifier(marker.key(), marker.version_id())?);
        }
        if batch.is_empty() {
            return Ok(deleted);
        }
        deleted += delete_objects(s3, bucket, &batch).await?;
    }
}

/// Deletes these objects (or versions) with DeleteObjects, 1,000 per request; returns how
/// many were deleted. Any key S3 could not delete fails the call.
pub async fn delete_objects(s3: &S3, bucket: &str, objects: &[ObjectIdentifier]) -> Result<usize> {
    for chunk in objects.chunks(1000) {
        let result = s3
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(chunk.to_vec()))
                    .quiet(true)
                    .build()
                    .expect("objects are set"),
            )
            .send()
            .await
            .aws_context(format!("s3:DeleteObjects {bucket}"))?;
        if let Some(error) = result.errors().first() {
            bail!(
                "s3:DeleteObjects {bucket}: {} of {} keys failed, first: {} ({})",
                result.errors().len(),
                chunk.len(),
                error.key().unwrap_or("?"),
                error.message().unwrap_or("no message")
            );
        }
    }
    Ok(objects.len())
}

pub fn identifier(key: Option<&str>, version_id: Option<&str>) -> Result<ObjectIdentifier> {
    let Some(key) = key else {
        bail!("an S3 listing returned an entry without a key");
    };
    Ok(ObjectIdentifier::builder()
        .key(key)
        .set_version_id(version_id.map(str::to_string))
        .build()
        .expect("key is set"))
}

/// Deletes every object of an unversioned bucket (the benchmark's and the load test's), a
/// page at a time. Listing versions instead would make moto copy every object at once.
pub async fn empty_unversioned(s3: &S3, bucket: &str) -> Result<()> {
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(1000)
            .send()
            .await
            .aws_context(format!("s3:ListObjectsV2 {bucket}"))?;
        let objects = page
            .contents()
            .iter()
            .map(|o| identifier(o.key(), None))
            .collect::<Result<Vec<_>>>()?;
        if objects.is_empty() {
            return Ok(());
        }
        delete_objects(s3, bucket, &objects).await?;
    }
}

/// The keys under `prefix` of a bucket, every page of them.
pub async fn list_keys(s3: &S3, bucket: &str, prefix: &str) -> Result<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.aws_context(format!("s3:ListObjectsV2 {bucket}/{prefix}"))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    Ok(keys)
}

/// How many keys are under `prefix` of a bucket.
pub async fn count_keys(s3: &S3, bucket: &str, prefix: &str) -> Result<usize> {
    Ok(list_keys(s3, bucket, prefix).await?.len())
}

/// Empties and deletes unversioned buckets.
pub async fn remove_unversioned(s3: &S3, names: &[&str]) -> Result<()> {
    for bucket in names {
        empty_unversioned(s3, bucket).await?;
        s3.delete_bucket()
            .bucket(*bucket)
            .send()
            .await
            .aws_context(format!("s3:DeleteBucket {bucket}"))?;
    }
    Ok(())
}

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
    fn missing() -> Found {
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

/// Creates a bucket in `region` (ours already: fine) and waits until it is visible.
pub async fn create(s3: &S3, bucket: &str, region: &str) -> Result<()> {
    let mut request = s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that must not be named as a location constraint.
    if region != "us-east-1" {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match request.send().await {
        Ok(_) => {}
        Err(err) if err.code() == Some("BucketAlreadyOwnedByYou") => {}
        Err(err) if err.code() == Some("BucketAlreadyExists") => {
            bail!("bucket name {bucket} is taken by another AWS account (bucket names are global)")
        }
        Err(err) => return Err(err).aws_context(format!("s3:CreateBucket {bucket}")),
    }
    // S3 is eventually consistent right after creation: wait until HeadBucket sees it.
    for _ in 0..30 {
        if s3.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("bucket {bucket} was created but is not visible after 30 s")
}

/// Puts one setting. Right after CreateBucket, S3 may answer OperationAborted ("a
/// conflicting conditional operation is in progress") or NoSuchBucket; both pass within
/// seconds, so those are retried with backoff.
pub async fn put(s3: &S3, bucket: &str, owner: &str, desired: &BucketSetting<'_>) -> Result<()> {
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match put_once(s3, bucket, owner, desired).await {
            Ok(()) => return Ok(()),
            Err(err)
                if attempt < 6
                    && matches!(
                        err.code.as_deref(),
                        Some("OperationAborted" | "NoSuchBucket")
                    ) =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(err) => bail!("setting {} on {bucket}: {}", desired.name(), err.message),
        }
    }
    unreachable!()
}

/// An SDK error reduced to its AWS error code (for retry decisions) and a readable message.
struct PutError {
    code: Option<String>,
    message: String,
}

fn classify<E>(err: aws_sdk_s3::error::SdkError<E>) -> PutError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    PutError {
        code: err.code().map(str::to_string),
        message: aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
    }
}

async fn put_once(
    s3: &S3,
    name: &str,
    owner: &str,
    desired: &BucketSetting<'_>,
) -> std::result::Result<(), PutError> {
    match desired {
        BucketSetting::PublicAccessBlock => s3
            .put_public_access_block()
            .bucket(name)
            .expected_bucket_owner(owner)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await
            .map(drop)
            .map_err(classify),
        BucketSetting::OwnerEnforced => s3
            .put_bucket_ownership_controls()
            .bucket(name)
            .expected_bucket_owner(owner)
            .ownership_controls(
                OwnershipControls::builder()
                    .rules(
                        OwnershipControlsRule::builder()
                            .object_ownership(ObjectOwnership::BucketOwnerEnforced)
                            .build()
                            .expect("object_ownership is set"),
                    )
                    .build()
                    .expect("rules are set"),
            )
            .send()
            .await
            .map(drop)
            .map_err(classify),
        BucketSetting::Versioning => s3
            .put_bucket_versioning()
            .bucket(name)
            .expected_bucket_owner(owner)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map(drop)
            .map_err(classify),
        BucketSetting::SseKms { kms_key_arn } => {
            let default = ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::AwsKms)
                .set_kms_master_key_id(kms_key_arn.map(str::to_string))
                .build()
                .expect("sse_algorithm is set");
            s3.put_bucket_encryption()
                .bucket(name)
                .expected_bucket_owner(owner)
                .server_side_encryption_configuration(
                    ServerSideEncryptionConfiguration::builder()
                        .rules(
                            ServerSideEncryptionRule::builder()
                                .apply_server_side_encryption_by_default(default)
                                .bucket_key_enabled(true)
                                .build(),
                        )
                        .build()
                        .expect("rules are set"),
                )
                .send()
                .await
                .map(drop)
                .map_err(classify)
        }
        BucketSetting::Lifecycle {
            noncurrent_days,
            current_days,
        } => {
            let mut rules = vec![
                LifecycleRule::builder()
                    .id("housekeeping")
                    .status(ExpirationStatus::Enabled)
                    .filter(LifecycleRuleFilter::builder().prefix("").build())
                    .noncurrent_version_expiration(
                        NoncurrentVersionExpiration::builder()
                            .noncurrent_days(*noncurrent_days)
                            .build(),
                    )
                    .abort_incomplete_multipart_upload(
                        AbortIncompleteMultipartUpload::builder()
                            .days_after_initiation(1)
                            .build(),
                    )
                    .expiration(
                        LifecycleExpiration::builder()
                            .expired_object_delete_marker(true)
                            .build(),
                    )
                    .build()
                    .expect("status is set"),
            ];
            if let Some(days) = current_days {
                rules.push(
                    LifecycleRule::builder()
                        .id("expire-current-objects")
                        .status(ExpirationStatus::Enabled)
                        .filter(LifecycleRuleFilter::builder().prefix("").build())
                        .expiration(LifecycleExpiration::builder().days(*days).build())
                        .build()
                        .expect("status is set"),
                );
            }
            s3.put_bucket_lifecycle_configuration()
                .bucket(name)
                .expected_bucket_owner(owner)
                .lifecycle_configuration(
                    BucketLifecycleConfiguration::builder()
                        .set_rules(Some(rules))
                        .build()
                        .expect("rules are set"),
                )
                .send()
                .await
                .map(drop)
                .map_err(classify)
        }
        BucketSetting::TlsOnlyPolicy { bucket, region } => s3
            .put_bucket_policy()
            .bucket(name)
            .expected_bucket_owner(owner)
            .policy(tls_only_policy(bucket, region).to_string())
            .send()
            .await
            .map(drop)
            .map_err(classify),
    }
}

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
