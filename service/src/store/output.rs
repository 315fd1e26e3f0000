//! The outputs: what a HEAD says of one, whether a run may write it, writing it, and a
//! download of the current one.

use std::collections::HashMap;

use anyhow::Result;
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

use super::{RawInfo, Reader, Store, http_date, trim_etag};
use crate::names::{meta, metadata_value, processed_key, raw_key};
use crate::upload::{Destination, Expected, LateMetadata, Precondition, UploadError, Uploaded};
use aws_clients::AwsResultExt;

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

impl Store {
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
}
