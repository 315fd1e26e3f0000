//! The buckets and what is in them: where a file's raw object, output and failure record
//! live, what their metadata says, and every S3 call made for them. The HTTP handlers and
//! the pipeline call this; nothing else names a bucket, a key or a metadata field.
//! `raw.rs` the raw objects, `output.rs` the outputs and downloads, `records.rs` the failure
//! and attempt records, `listing.rs` the listings; here the store itself, deleting a file
//! and readiness.

use std::sync::Arc;

use anyhow::Result;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};

use crate::config::Config;
use crate::names::{self, failed_key, processed_key, raw_key};
use crate::upload::{InFlight, Uploader};
use aws_clients::{AwsClients, AwsResultExt};

mod listing;
mod output;
mod raw;
mod records;

pub use listing::{ListedFile, Listing, RawName};
pub use output::{Conditions, CurrentOutput, Output, OutputState, ProcessedInfo};
pub use raw::{RawInfo, RawUpload};
pub use records::Record;

/// A stream of bytes being read from the store.
pub type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

pub struct Store {
    s3: S3,
    kms: aws_sdk_kms::Client,
    config: Arc<Config>,
    uploader: Uploader,
}

fn trim_etag(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

fn http_date(time: Option<&DateTime>) -> Option<String> {
    time.and_then(|t| t.fmt(DateTimeFormat::HttpDate).ok())
}

pub fn now_rfc3339() -> String {
    DateTime::from(std::time::SystemTime::now())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

fn is_not_found<E: ProvideErrorMetadata>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    err.raw_response().map(|r| r.status().as_u16()) == Some(404)
}

impl Store {
    pub fn new(clients: &AwsClients, config: Arc<Config>, in_flight: InFlight) -> Store {
        let uploader = Uploader::new(
            clients.s3.clone(),
            &config.kms_key_arn,
            config.part_size as usize,
            config.parts_in_flight,
            config.body_idle_timeout(),
            in_flight,
        );
        Store {
            s3: clients.s3.clone(),
            kms: clients.kms.clone(),
            config,
            uploader,
        }
    }

    pub fn in_flight(&self) -> &InFlight {
        self.uploader.in_flight()
    }

    fn initial(&self) -> &str {
        &self.config.initial_bucket
    }

    fn final_(&self) -> &str {
        &self.config.final_bucket
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<HeadObjectOutput>> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(head) => Ok(Some(head)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err).aws_context(format!("s3:HeadObject {bucket}/{key}")),
        }
    }
    /// Deletes the raw object, the output and any failure record. In versioned buckets this
    /// adds delete markers; old versions expire through the buckets' lifecycle rules.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let targets = [
            (self.initial(), raw_key(name)),
            (self.final_(), processed_key(name)),
            (self.final_(), failed_key(name)),
        ];
        for (bucket, key) in targets {
            self.s3
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .aws_context(format!("s3:DeleteObject {key}"))?;
        }
        Ok(())
    }
    /// Both buckets and the key reachable with this identity.
    pub async fn check_ready(&self) -> Result<()> {
        for bucket in [self.initial(), self.final_()] {
            self.s3
                .head_bucket()
                .bucket(bucket)
                .send()
                .await
                .aws_context(format!("s3:HeadBucket {bucket}"))?;
        }
        self.kms
            .describe_key()
            .key_id(&self.config.kms_key_arn)
            .send()
            .await
            .aws_context("kms:DescribeKey")?;
        Ok(())
    }

    /// Multipart uploads left open by a run that was killed are aborted (they would
    /// otherwise be billed until the buckets' one-day lifecycle rule): all of them before
    /// this run opens any when it is the only writer, those older than `older_than` when
    /// other instances write too (see [`crate::upload::abort_orphans`]). A failure here is
    /// logged, not fatal: the lifecycle rule remains.
    pub async fn abort_orphaned_uploads(&self, older_than: Option<std::time::Duration>) {
        let places = [
            (self.initial(), names::RAW_PREFIX),
            (self.final_(), names::PROCESSED_PREFIX),
        ];
        for (bucket, prefix) in places {
            match crate::upload::abort_orphans(&self.s3, bucket, prefix, older_than).await {
                Ok(0) => {}
                Ok(aborted) => {
                    tracing::warn!(
                        bucket,
                        aborted,
                        "aborted multipart uploads a previous run left open"
                    )
                }
                Err(err) => {
                    tracing::error!(bucket, error = %format!("{err:#}"), "could not list multipart uploads left open; the lifecycle rule removes them within a day")
                }
            }
        }
    }
}
