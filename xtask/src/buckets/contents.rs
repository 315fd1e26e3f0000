//! What a bucket holds: listing and counting keys, and emptying a bucket (every version and
//! delete marker, in DeleteObjects batches of up to 1,000 keys) before it is deleted.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use aws_clients::AwsResultExt;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

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
