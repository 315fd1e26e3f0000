//! Emptying versioned buckets: every object version and delete marker, paginated, deleted in
//! batches of up to 1,000 keys (the DeleteObjects limit).

use anyhow::{Result, bail};
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
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
        for chunk in batch.chunks(1000) {
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
            deleted += chunk.len();
        }
    }
}

fn identifier(key: Option<&str>, version_id: Option<&str>) -> Result<ObjectIdentifier> {
    let Some(key) = key else {
        bail!("s3:ListObjectVersions returned an entry without a key");
    };
    Ok(ObjectIdentifier::builder()
        .key(key)
        .set_version_id(version_id.map(str::to_string))
        .build()
        .expect("key is set"))
}
