//! The raw objects: what a HEAD says of one, reading it, writing it, and the validators an
//! upstream retrieval sends.

use std::collections::HashMap;

use anyhow::Result;
use aws_sdk_s3::primitives::DateTimeFormat;
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

use super::{Reader, Store, trim_etag};
use crate::names::{meta, metadata_text, metadata_value, raw_key};
use crate::retrieval::Validators;
use crate::upload::{Destination, Expected, UploadError, Uploaded};
use aws_clients::AwsResultExt;

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

/// What comes with a raw file besides its bytes.
pub struct RawUpload {
    pub expected: Expected,
    pub content_type: Option<String>,
    /// Where an upstream retrieval came from, and its validators.
    pub source_url: Option<String>,
    pub upstream: Validators,
}

impl Store {
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
