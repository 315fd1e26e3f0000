//! The buckets and what is in them: where a file's raw object, output and failure record
//! live, what their metadata says, and every S3 call made for them. The HTTP handlers and
//! the pipeline call this; nothing else names a bucket, a key or a metadata field.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::aws::{AwsClients, AwsResultExt};
use crate::config::Config;
use crate::names::{self, failed_key, meta, metadata_text, metadata_value, processed_key, raw_key};
use crate::retrieval::Validators;
use crate::upload::checksum;
use crate::upload::{
    Destination, Expected, InFlight, LateMetadata, Precondition, SseKms as _, UploadError,
    Uploaded, Uploader,
};

/// A stream of bytes being read from the store.
pub type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

pub struct Store {
    s3: S3,
    kms: aws_sdk_kms::Client,
    config: Arc<Config>,
    uploader: Uploader,
}

/// The raw object of a file, as its HEAD describes it.
#[derive(Debug, Clone, Serialize)]
pub struct RawInfo {
    pub size: i64,
    pub etag: String,
    pub version_id: Option<String>,
    pub sha256: Option<String>,
    pub last_modified: Option<String>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub content_type: Option<String>,
}

impl RawInfo {
    /// Whether an output with this metadata was made from exactly this raw version. An
    /// output whose metadata is not written yet (late metadata: a multipart output gets all
    /// of it with its final copy) was not.
    pub fn made(&self, output_metadata: Option<&HashMap<String, String>>) -> bool {
        let Some(metadata) = output_metadata else {
            return false;
        };
        metadata.get(meta::SOURCE_ETAG) == Some(&self.etag)
            && match &self.version_id {
                Some(version) => metadata.get(meta::SOURCE_VERSION) == Some(version),
                None => true,
            }
    }
}

/// The output of a file, as its HEAD describes it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessedInfo {
    pub size: i64,
    pub etag: String,
    pub sha256: Option<String>,
    pub processor: Option<String>,
    pub processed_at: Option<String>,
    pub lines: Option<u64>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub content_type: Option<String>,
}

/// What the output key holds, for a run that would write it.
#[derive(Debug)]
pub enum OutputState {
    /// An output made from the run's raw version.
    Made(ProcessedInfo),
    /// Something else (or nothing): a new output replaces it if the key still holds what
    /// the precondition says.
    Replaceable(Precondition),
    /// Another run's output, its metadata not written yet.
    BeingWritten,
}

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

/// What comes with a raw file besides its bytes.
pub struct RawUpload {
    pub expected: Expected,
    pub content_type: Option<String>,
    /// Where an upstream retrieval came from, and its validators.
    pub source_url: Option<String>,
    pub upstream: Validators,
}

/// A raw file as a bucket listing names it.
pub struct RawName {
    pub name: String,
    pub last_modified: Option<std::time::SystemTime>,
}

/// One page of raw files.
pub struct Listing {
    pub files: Vec<ListedFile>,
    /// The last name of the page, when more follow.
    pub last: Option<String>,
}

#[derive(Serialize)]
pub struct ListedFile {
    pub name: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a download asks for besides the name: a byte range and the client's validators.
#[derive(Default)]
pub struct Conditions {
    pub range: Option<String>,
    pub if_none_match: Option<String>,
    /// An HTTP date; an unparsable one is ignored, as HTTP says.
    pub if_modified_since: Option<String>,
}

/// The output of a file's current raw version, as a download finds it.
pub enum CurrentOutput {
    /// No raw object: the file is unknown.
    UnknownFile,
    Found(Box<Output>),
    /// The client's copy is the current version's output.
    NotModified {
        etag: Option<String>,
        last_modified: Option<String>,
    },
    /// No output made from the current raw version (none yet, or an older version's).
    NotCurrent,
    /// The range lies outside the output.
    InvalidRange,
}

/// An output being read.
pub struct Output {
    pub body: Reader,
    pub content_type: Option<String>,
    pub content_length: Option<i64>,
    pub content_range: Option<String>,
    pub etag: Option<String>,
    /// An HTTP date.
    pub last_modified: Option<String>,
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

    pub async fn head_raw(&self, name: &str) -> Result<Option<RawInfo>> {
        let Some(head) = self.head(self.initial(), &raw_key(name)).await? else {
            return Ok(None);
        };
        Ok(Some(RawInfo {
            size: head.content_length().unwrap_or_default(),
            etag: trim_etag(head.e_tag()),
            version_id: head
                .version_id()
                .filter(|v| *v != "null")
                .map(str::to_string),
            sha256: head.metadata().and_then(|m| m.get(meta::SHA256)).cloned(),
            last_modified: head
                .last_modified()
                .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
            sse: head
                .server_side_encryption()
                .map(|s| s.as_str().to_string()),
            kms_key_id: head.ssekms_key_id().map(str::to_string),
            content_type: head.content_type().map(str::to_string),
        }))
    }

    /// The output, if it was made from exactly this raw version.
    pub async fn head_processed(&self, name: &str, raw: &RawInfo) -> Result<Option<ProcessedInfo>> {
        Ok(match self.output_state(name, raw, None).await? {
            OutputState::Made(processed) => Some(processed),
            _ => None,
        })
    }

    /// What the output key holds for a run of this raw version. An object without its
    /// metadata (a multipart output is completed first, then copied onto itself with it)
    /// written less than `grace` ago is another run's, being finished; replacing it could
    /// leave two outputs of one version. `None`: nobody else writes (one instance), so such
    /// an object was left by a run that died.
    pub async fn output_state(
        &self,
        name: &str,
        raw: &RawInfo,
        grace: Option<std::time::Duration>,
    ) -> Result<OutputState> {
        let Some(head) = self.head(self.final_(), &processed_key(name)).await? else {
            return Ok(OutputState::Replaceable(Precondition::Absent));
        };
        let now = Precondition::Etag(trim_etag(head.e_tag()));
        if !raw.made(head.metadata()) {
            let unfinished = head
                .metadata()
                .is_none_or(|metadata| !metadata.contains_key(meta::SOURCE_ETAG));
            let written = head
                .last_modified()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok());
            let recent = match (grace, written) {
                (Some(grace), Some(written)) => written.elapsed().is_ok_and(|age| age < grace),
                _ => false,
            };
            if unfinished && recent {
                return Ok(OutputState::BeingWritten);
            }
            return Ok(OutputState::Replaceable(now));
        }
        let metadata = head.metadata().cloned().unwrap_or_default();
        let processed = ProcessedInfo {
            size: head.content_length().unwrap_or_default(),
            etag: trim_etag(head.e_tag()),
            sha256: metadata.get(meta::SHA256).cloned(),
            processor: metadata.get(meta::PROCESSOR).cloned(),
            processed_at: metadata.get(meta::PROCESSED_AT).cloned(),
            lines: metadata.get(meta::LINES).and_then(|l| l.parse().ok()),
            sse: head
                .server_side_encryption()
                .map(|s| s.as_str().to_string()),
            kms_key_id: head.ssekms_key_id().map(str::to_string),
            content_type: head.content_type().map(str::to_string),
        };
        Ok(OutputState::Made(processed))
    }

    /// The upstream validators kept with a retrieved raw object (none if there is none).
    pub async fn upstream_validators(&self, name: &str) -> Validators {
        let metadata = self
            .head(self.initial(), &raw_key(name))
            .await
            .ok()
            .flatten()
            .and_then(|head| head.metadata().cloned())
            .unwrap_or_default();
        Validators {
            etag: metadata.get(meta::UPSTREAM_ETAG).map(|v| metadata_text(v)),
            last_modified: metadata
                .get(meta::UPSTREAM_LAST_MODIFIED)
                .map(|v| metadata_text(v)),
        }
    }

    /// Reads exactly this raw version.
    pub async fn open_raw(&self, name: &str, raw: &RawInfo) -> Result<Reader> {
        let object = self
            .s3
            .get_object()
            .bucket(self.initial())
            .key(raw_key(name))
            .set_version_id(raw.version_id.clone())
            .send()
            .await
            .aws_context(format!("s3:GetObject {}", raw_key(name)))?;
        Ok(Box::new(object.body.into_async_read()))
    }

    /// Streams a body into `raw/<name>`.
    pub async fn put_raw<S, E>(
        &self,
        name: &str,
        body: S,
        raw: RawUpload,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut metadata = HashMap::new();
        if let Some(url) = &raw.source_url {
            metadata.insert(meta::SOURCE_URL.to_string(), metadata_value(url));
        }
        if let Some(etag) = &raw.upstream.etag {
            metadata.insert(meta::UPSTREAM_ETAG.to_string(), metadata_value(etag));
        }
        if let Some(date) = &raw.upstream.last_modified {
            metadata.insert(
                meta::UPSTREAM_LAST_MODIFIED.to_string(),
                metadata_value(date),
            );
        }
        let to = Destination {
            bucket: self.initial().to_string(),
            key: raw_key(name),
            metadata,
            content_type: raw.content_type,
            late_metadata: None,
            max_size: self.config.max_object_size,
            min_body_rate: self.config.min_body_rate,
            precondition: None,
        };
        self.uploader.upload(&to, body, &raw.expected).await
    }

    /// Streams a processor's output into `processed/<name>`, recording the raw version it
    /// was made from; `late` is filled in while the output is made. Written only if the key
    /// still holds what `precondition` says (see [`Store::output_state`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_output<S>(
        &self,
        name: &str,
        raw: &RawInfo,
        precondition: Precondition,
        processor: &str,
        content_type: Option<String>,
        late: LateMetadata,
        output: S,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let to = Destination {
            bucket: self.final_().to_string(),
            key: processed_key(name),
            metadata: HashMap::from([
                (meta::SOURCE_KEY.to_string(), metadata_value(&raw_key(name))),
                (meta::SOURCE_ETAG.to_string(), raw.etag.clone()),
                (
                    meta::SOURCE_VERSION.to_string(),
                    raw.version_id.clone().unwrap_or_default(),
                ),
                (meta::PROCESSOR.to_string(), processor.to_string()),
            ]),
            content_type,
            late_metadata: Some(late),
            max_size: u64::MAX,
            // The output comes as fast as the raw object is read; a stall there is the
            // idle timeout's.
            min_body_rate: 0,
            precondition: Some(precondition),
        };
        self.uploader
            .upload(&to, output, &Expected::default())
            .await
    }

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

    /// One page of raw files whose names start with `prefix`, after the name `after`.
    pub async fn list(&self, prefix: &str, limit: i32, after: Option<&str>) -> Result<Listing> {
        let page = self
            .s3
            .list_objects_v2()
            .bucket(self.initial())
            .prefix(raw_key(prefix))
            .max_keys(limit)
            .set_start_after(after.map(raw_key))
            .send()
            .await
            .aws_context("s3:ListObjectsV2")?;
        let files = page
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ListedFile {
                    name: object.key()?.strip_prefix(names::RAW_PREFIX)?.to_string(),
                    size: object.size(),
                    etag: object.e_tag().map(|e| e.trim_matches('"').to_string()),
                    last_modified: object
                        .last_modified()
                        .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
                })
            })
            .collect::<Vec<ListedFile>>();
        let more = page.is_truncated().unwrap_or(false);
        Ok(Listing {
            last: files.last().filter(|_| more).map(|f| f.name.clone()),
            files,
        })
    }

    /// The names of all raw files with their last modification, a page at a time: the page
    /// after `cursor`, and the cursor of the next one.
    pub async fn raw_names(
        &self,
        cursor: Option<String>,
    ) -> Result<(Vec<RawName>, Option<String>)> {
        let page = self
            .s3
            .list_objects_v2()
            .bucket(self.initial())
            .prefix(names::RAW_PREFIX)
            .set_continuation_token(cursor)
            .send()
            .await
            .aws_context(format!("s3:ListObjectsV2 {}", self.initial()))?;
        let names = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(RawName {
                    name: o.key()?.strip_prefix(names::RAW_PREFIX)?.to_string(),
                    last_modified: o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        Ok((names, page.next_continuation_token().map(str::to_string)))
    }

    /// The output of the current raw version of `name`. The output and the raw object's
    /// identity are fetched together (one round trip). The client's validators go to S3,
    /// which compares them; a 304 is only passed on for the current version's output.
    pub async fn current_output(
        &self,
        name: &str,
        conditions: &Conditions,
    ) -> Result<CurrentOutput> {
        let since = conditions
            .if_modified_since
            .as_deref()
            .and_then(|text| DateTime::from_str(text, DateTimeFormat::HttpDate).ok());
        let request = self
            .s3
            .get_object()
            .bucket(self.final_())
            .key(processed_key(name))
            .set_range(conditions.range.clone())
            .set_if_none_match(conditions.if_none_match.clone())
            .set_if_modified_since(since);
        let (raw, object) = tokio::join!(self.head_raw(name), request.send());
        let Some(raw) = raw? else {
            return Ok(CurrentOutput::UnknownFile);
        };
        match object {
            Ok(object) if raw.made(object.metadata()) => {
                Ok(CurrentOutput::Found(Box::new(Output {
                    content_type: object.content_type().map(str::to_string),
                    content_length: object.content_length(),
                    content_range: object.content_range().map(str::to_string),
                    etag: object.e_tag().map(str::to_string),
                    last_modified: http_date(object.last_modified()),
                    body: Box::new(object.body.into_async_read()),
                })))
            }
            Ok(_) => Ok(CurrentOutput::NotCurrent),
            Err(err) if err.raw_response().map(|r| r.status().as_u16()) == Some(304) => {
                // The client's copy is S3's current object; is that the current version's?
                let head = self.head(self.final_(), &processed_key(name)).await?;
                Ok(match head {
                    Some(head) if raw.made(head.metadata()) => CurrentOutput::NotModified {
                        etag: head.e_tag().map(str::to_string),
                        last_modified: http_date(head.last_modified()),
                    },
                    _ => CurrentOutput::NotCurrent,
                })
            }
            Err(err) if err.code() == Some("NoSuchKey") => Ok(CurrentOutput::NotCurrent),
            Err(err) if err.code() == Some("InvalidRange") => Ok(CurrentOutput::InvalidRange),
            Err(err) => Err(err).aws_context(format!("s3:GetObject {}", processed_key(name))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(version: Option<&str>) -> RawInfo {
        RawInfo {
            size: 1,
            etag: "e1".into(),
            version_id: version.map(str::to_string),
            sha256: None,
            last_modified: None,
            sse: None,
            kms_key_id: None,
            content_type: None,
        }
    }

    #[test]
    fn an_output_was_made_from_a_raw_version_only_with_complete_matching_metadata() {
        let complete = HashMap::from([
            (meta::SOURCE_ETAG.to_string(), "e1".to_string()),
            (meta::SOURCE_VERSION.to_string(), "v1".to_string()),
            (meta::SHA256.to_string(), "abc".to_string()),
        ]);
        assert!(raw(Some("v1")).made(Some(&complete)));
        assert!(raw(None).made(Some(&complete)));
        assert!(!raw(Some("v2")).made(Some(&complete)));
        assert!(!raw(Some("v1")).made(None));
        assert!(
            !raw(Some("v1")).made(Some(&HashMap::new())),
            "late metadata not written yet"
        );
        let mut other = complete;
        other.insert(meta::SOURCE_ETAG.into(), "e2".into());
        assert!(!raw(Some("v1")).made(Some(&other)));
    }
}
