//! Creating a bucket and putting each setting on it, retrying what S3 answers right after
//! creation.

use std::time::Duration;

use anyhow::{Result, bail};
use aws_clients::AwsResultExt;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    BucketVersioningStatus, CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration,
    LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration, ObjectOwnership,
    OwnershipControls, OwnershipControlsRule, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    VersioningConfiguration,
};

use super::settings::{BucketSetting, tls_only_policy};

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
pub(super) struct PutError {
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
