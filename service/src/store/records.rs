//! The final bucket's record of a file whose current version has no output: the
//! decryptions started for it, or the failure that ended its processing.

use anyhow::{Context as _, Result};
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use super::{RawInfo, Store};
use crate::names::failed_key;
use crate::upload::SseKms as _;
use crate::upload::checksum;
use aws_clients::AwsResultExt;

/// What the final bucket records of a file whose current version has no output: the
/// decryptions started for it (`error` unset) or the failure that ended its processing.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub source_etag: String,
    pub source_version: Option<String>,
    pub processor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// Why: `file` (the file's own: undecryptable, refused, a processor error),
    /// `quarantined`, `integrity` (the raw bytes read are not the ones acknowledged),
    /// `transient` (S3 or KMS failed, tries used up) or `access_denied` (the
    /// deployment's permissions). The last two are retried by the next scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Tries of the run that failed (transient errors are retried with backoff).
    #[serde(default)]
    pub tries: u32,
    /// The AWS request id of the failed call, when an AWS call failed and AWS answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Decryptions of this version that were started. A run that ends deletes or replaces
    /// the record, so a count that is left behind counts runs that were interrupted (the
    /// process died, or the decryption timed out).
    #[serde(default)]
    pub attempts: u32,
    /// Deliveries of the file's queue message so far, when it came from the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receives: Option<u32>,
    /// Deliveries after which the queue moves the message to its dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_receives: Option<u32>,
}

impl Record {
    pub fn is_for(&self, raw: &RawInfo) -> bool {
        self.source_etag == raw.etag
            && (raw.version_id.is_none() || self.source_version == raw.version_id)
    }
}

impl Store {
    /// The record of `name`, whichever raw version it was written for.
    pub async fn record(&self, name: &str) -> Result<Option<Record>> {
        let object = self
            .s3
            .get_object()
            .bucket(self.final_())
            .key(failed_key(name))
            .send()
            .await;
        let object = match object {
            Ok(object) => object,
            Err(err) if err.code() == Some("NoSuchKey") => return Ok(None),
            Err(err) => return Err(err).aws_context(format!("s3:GetObject {}", failed_key(name))),
        };
        let body = object
            .body
            .collect()
            .await
            .context("reading a failure record")?
            .into_bytes();
        Ok(Some(
            serde_json::from_slice(&body).context("parsing a failure record")?,
        ))
    }

    pub async fn put_record(&self, name: &str, record: &Record) -> Result<()> {
        let body = serde_json::to_vec_pretty(record)?;
        let sent = checksum::sha256(&body);
        let call = format!("s3:PutObject {}", failed_key(name));
        let output = self
            .s3
            .put_object()
            .bucket(self.final_())
            .key(failed_key(name))
            .content_type("application/json")
            .body(ByteStream::from(body))
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(&sent)
            .sse_kms(&self.config.kms_key_arn)
            .send()
            .await
            .aws_context(&call)?;
        checksum::confirm(&call, output.checksum_sha256(), &sent)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub async fn clear_record(&self, name: &str) -> Result<()> {
        self.s3
            .delete_object()
            .bucket(self.final_())
            .key(failed_key(name))
            .send()
            .await
            .aws_context(format!("s3:DeleteObject {}", failed_key(name)))?;
        Ok(())
    }
}
