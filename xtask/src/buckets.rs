//! Bucket operations shared by bootstrap (state bucket), the sandbox provisioner (data
//! buckets) and destroy: create, put each protective setting, and empty versioned buckets
//! (every version and delete marker, in DeleteObjects batches of up to 1,000 keys).

use std::time::Duration;

use anyhow::{Result, bail};
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
use service::aws::AwsResultExt;

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

/// A bucket setting to put, for the state bucket and the data buckets alike.
pub enum Desired<'a> {
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
    Policy(&'a str),
}

impl Desired<'_> {
    fn name(&self) -> &'static str {
        match self {
            Desired::PublicAccessBlock => "public access block",
            Desired::OwnerEnforced => "object ownership",
            Desired::Versioning => "versioning",
            Desired::SseKms { .. } => "default encryption",
            Desired::Lifecycle { .. } => "lifecycle",
            Desired::Policy(_) => "bucket policy",
        }
    }
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
pub async fn put(s3: &S3, bucket: &str, owner: &str, desired: &Desired<'_>) -> Result<()> {
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
    desired: &Desired<'_>,
) -> std::result::Result<(), PutError> {
    match desired {
        Desired::PublicAccessBlock => s3
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
        Desired::OwnerEnforced => s3
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
        Desired::Versioning => s3
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
        Desired::SseKms { kms_key_arn } => {
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
        Desired::Lifecycle {
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
        Desired::Policy(policy) => s3
            .put_bucket_policy()
            .bucket(name)
            .expected_bucket_owner(owner)
            .policy(*policy)
            .send()
            .await
            .map(drop)
            .map_err(classify),
    }
}
