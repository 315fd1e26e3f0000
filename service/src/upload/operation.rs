//! One upload: a body that fits in one part is a single PutObject, anything larger a
//! multipart upload (its metadata completed by a copy onto itself); the client's integrity
//! values checked before anything is committed.

use std::collections::HashMap;

use anyhow::anyhow;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use super::body::{BodyLimits, BodyReader, Digests, RATE_WINDOW};
use super::conditions::{Precondition, conditional};
use super::in_flight::AbortOnDrop;
use super::{
    Destination, Expected, STAGING_BYTES, SseKms, Stored, UploadError, Uploaded, Uploader, checksum,
};
use crate::names::percent_encode_path;
use aws_clients::AwsResultExt;

impl Uploader {
    /// Streams `body` into `to`.
    pub async fn upload<S, E>(
        &self,
        to: &Destination,
        body: S,
        expected: &Expected,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let limits = BodyLimits {
            max_size: to.max_size,
            idle_timeout: self.idle_timeout,
            min_rate: to.min_body_rate,
            window: RATE_WINDOW,
        };
        let body = std::pin::pin!(body);
        let mut body = BodyReader::new(body, limits, Digests::new(expected.content_md5.is_some()));
        let mut buffer = BytesMut::with_capacity(STAGING_BYTES.min(self.part_size));

        // Stage the start of the body without a part buffer; only a body that goes on takes
        // one (waiting for it applies back-pressure to the client) and fills the first part.
        // A body that ends first is a single PutObject.
        let mut permit = None;
        let mut more = body.fill(&mut buffer, STAGING_BYTES).await?;
        if more && buffer.len() < self.part_size {
            permit = Some(self.in_flight.part_permit().await);
            // The buffer grows with the body (not to a whole part at once): the permit counts
            // a whole part, the memory is what has arrived.
            more = body.fill(&mut buffer, self.part_size).await?;
        }
        if !more {
            check_integrity(&body.digests, expected)?;
            let sent = checksum::base64(&body.digests.sha256_digest());
            let call = format!("s3:PutObject {}/{}", to.bucket, to.key);
            let output = self
                .s3
                .put_object()
                .bucket(&to.bucket)
                .key(&to.key)
                .body(ByteStream::from(buffer.freeze()))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&sent)
                .sse_kms(&self.kms_key_arn)
                .set_content_type(to.content_type.clone())
                .set_metadata(Some(final_metadata(to, &body.digests)))
                .set_if_match(to.precondition.as_ref().and_then(Precondition::if_match))
                .set_if_none_match(
                    to.precondition
                        .as_ref()
                        .and_then(Precondition::if_none_match),
                )
                .send()
                .await;
            let output = conditional(output, to, call.clone())?;
            drop(permit);
            checksum::confirm(&call, output.checksum_sha256(), &sent)?;
            return Ok(Uploaded::new(
                &body.digests,
                1,
                Stored {
                    etag: output.e_tag(),
                    version_id: output.version_id(),
                    sse: output.server_side_encryption(),
                    kms_key_id: output.ssekms_key_id(),
                },
            ));
        }
        let permit = match permit {
            Some(permit) => permit,
            // A part size below the staging size (not configurable today) still takes one.
            None => self.in_flight.part_permit().await,
        };

        let created = self
            .s3
            .create_multipart_upload()
            .bucket(&to.bucket)
            .key(&to.key)
            .sse_kms(&self.kms_key_arn)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_content_type(to.content_type.clone())
            // With late metadata, all metadata arrives with the final copy: until then the
            // object carries none, so nobody takes a half-described object for a finished one.
            .set_metadata(to.late_metadata.is_none().then(|| to.metadata.clone()))
            .send()
            .await
            .aws_context(format!("s3:CreateMultipartUpload {}/{}", to.bucket, to.key))
            .map_err(UploadError::Aws)?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                UploadError::Aws(anyhow!("CreateMultipartUpload returned no upload id"))
            })?
            .to_string();
        self.in_flight
            .insert(&upload_id, &self.s3, &to.bucket, &to.key);
        // Until the upload is completed, every way out (an error, a dropped request future)
        // drops `guard` armed, which aborts the upload.
        let guard = AbortOnDrop {
            s3: self.s3.clone(),
            bucket: to.bucket.clone(),
            key: to.key.clone(),
            upload_id: upload_id.clone(),
            in_flight: self.in_flight.clone(),
            armed: true,
        };
        let parts = self
            .send_parts(to, &upload_id, (&mut buffer, permit), &mut body)
            .await?;
        check_integrity(&body.digests, expected)?;
        let composite = checksum::composite(&parts)?;
        let output = self
            .s3
            .complete_multipart_upload()
            .bucket(&to.bucket)
            .key(&to.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts.clone()))
                    .build(),
            )
            .set_if_match(to.precondition.as_ref().and_then(Precondition::if_match))
            .set_if_none_match(
                to.precondition
                    .as_ref()
                    .and_then(Precondition::if_none_match),
            )
            .send()
            .await;
        let call = format!("s3:CompleteMultipartUpload {}/{}", to.bucket, to.key);
        let output = conditional(output, to, call.clone())?;
        guard.disarm();
        checksum::confirm(&call, output.checksum_sha256(), &composite)?;
        let mut uploaded = Uploaded::new(
            &body.digests,
            parts.len(),
            Stored {
                etag: output.e_tag(),
                version_id: output.version_id(),
                sse: output.server_side_encryption(),
                kms_key_id: output.ssekms_key_id(),
            },
        );
        if to.late_metadata.is_some() {
            self.copy_with_metadata(to, &body.digests, &composite, &mut uploaded)
                .await?;
        }
        Ok(uploaded)
    }

    /// Copies a completed multipart object onto itself with its full metadata. S3 checksums
    /// the copy: the whole object's SHA-256 (a copy is one operation), or, should it keep the
    /// source's, the composite `completed` confirmed.
    async fn copy_with_metadata(
        &self,
        to: &Destination,
        digests: &Digests,
        completed: &str,
        uploaded: &mut Uploaded,
    ) -> Result<(), UploadError> {
        let source = format!("{}/{}", to.bucket, percent_encode_path(&to.key));
        let copied = self
            .s3
            .copy_object()
            .bucket(&to.bucket)
            .key(&to.key)
            .copy_source(match &uploaded.version_id {
                Some(version) => format!("{source}?versionId={version}"),
                None => source,
            })
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            // The copy's checksum is of the whole object: the digest taken while streaming.
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_content_type(to.content_type.clone())
            .set_metadata(Some(final_metadata(to, digests)))
            .sse_kms(&self.kms_key_arn)
            // Only onto the object just completed: a writer that replaced it since keeps its
            // object, and this one loses.
            .set_if_match(
                to.precondition
                    .is_some()
                    .then(|| Precondition::Etag(uploaded.etag.clone()).if_match())
                    .flatten(),
            )
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_attempt_timeout(aws_clients::S3_COPY_TIMEOUT)
                        .operation_timeout(aws_clients::S3_COPY_TIMEOUT * 2)
                        .build(),
                ),
            )
            .send()
            .await;
        let call = format!("s3:CopyObject {}/{} (metadata)", to.bucket, to.key);
        let copied = conditional(copied, to, call.clone())?;
        let result = copied.copy_object_result();
        let copy_checksum = result.and_then(|r| r.checksum_sha256());
        if copy_checksum != Some(completed) {
            checksum::confirm(
                &call,
                copy_checksum,
                &checksum::base64(&digests.sha256_digest()),
            )?;
        }
        if let Some(result) = result {
            uploaded.etag = result.e_tag().unwrap_or_default().to_string();
        }
        uploaded.version_id = copied.version_id().map(str::to_string);
        Ok(())
    }
}

/// The metadata of a committed object: the fixed part, the late part and the body's SHA-256.
fn final_metadata(to: &Destination, digests: &Digests) -> HashMap<String, String> {
    let mut metadata = to.metadata.clone();
    if let Some(late) = &to.late_metadata {
        metadata.extend(late.lock().unwrap().clone());
    }
    metadata.insert(crate::names::meta::SHA256.into(), digests.sha256_hex());
    metadata
}

fn check_integrity(digests: &Digests, expected: &Expected) -> Result<(), UploadError> {
    use md5::Digest as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    if let (Some(want), Some(md5)) = (&expected.content_md5, &digests.md5) {
        let got = b64.encode(md5.clone().finalize());
        if &got != want {
            return Err(UploadError::Integrity(format!(
                "Content-MD5 is {want}, the body's is {got}"
            )));
        }
    }
    if let Some(want) = &expected.sha256_base64 {
        let got = b64.encode(digests.sha256_digest());
        if &got != want {
            return Err(UploadError::Integrity(format!(
                "x-amz-checksum-sha256 is {want}, the body's is {got}"
            )));
        }
    }
    Ok(())
}
