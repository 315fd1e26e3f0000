//! What the final bucket records of a file's runs: a failure (with why, for the status and
//! for whether the next scan tries again), and the decryptions started for a version.

use anyhow::Result;

use super::{Delivered, Pipeline};
use crate::decrypt;
use crate::names::{metadata_text, metadata_value};
use crate::store::{RawInfo, Record, now_rfc3339};
use aws_clients::Failure;

/// A failure that was not the file's: the next scan (or a reprocess) tries again.
pub(super) fn retryable(record: &Record) -> bool {
    matches!(record.code.as_deref(), Some(TRANSIENT | ACCESS_DENIED))
}

pub(super) const TRANSIENT: &str = "transient";
const INTEGRITY: &str = "integrity";
const ACCESS_DENIED: &str = "access_denied";

/// Why a run failed, for its record: see [`Record::code`].
pub(super) fn failure_code(err: &anyhow::Error, source_failed: bool) -> &'static str {
    if err.is::<Quarantined>() {
        return "quarantined";
    }
    if err.is::<IntegrityMismatch>() {
        return INTEGRITY;
    }
    let failure = if source_failed {
        Some(Failure::Transient)
    } else {
        aws_clients::aws_failure(err).or_else(|| {
            err.chain()
                .find_map(|e| e.downcast_ref::<decrypt::KmsFailure>())
                .map(|e| e.failure)
        })
    };
    match failure {
        Some(Failure::Transient) => TRANSIENT,
        Some(Failure::Denied) => ACCESS_DENIED,
        _ => "file",
    }
}

/// The file's decryptions kept dying; it is not decrypted again.
#[derive(Debug)]
pub(super) struct Quarantined(pub(super) u32);

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quarantined: {} decryptions of this version were started and never finished \
             (the service stopped, or they timed out); it is not decrypted again. \
             Upload the file again, or POST .../reprocess, to retry",
            self.0
        )
    }
}

impl std::error::Error for Quarantined {}

/// The raw bytes read are not the ones the upload was acknowledged for: their SHA-256 (or
/// size) differs from what the raw object's metadata records. No output is written.
#[derive(Debug)]
pub(super) struct IntegrityMismatch(pub(super) String);

impl std::fmt::Display for IntegrityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "integrity: {}", self.0)
    }
}

impl std::error::Error for IntegrityMismatch {}

/// How a run failed, for its record.
pub(super) struct Failed {
    pub(super) error: String,
    pub(super) code: &'static str,
    pub(super) request_id: Option<String>,
    pub(super) attempts: u32,
    pub(super) tries: u32,
}

impl Pipeline {
    /// The failure recorded for exactly this raw version, if its processing failed.
    pub(super) async fn failure(&self, name: &str, raw: &RawInfo) -> Result<Option<Record>> {
        Ok(self
            .store
            .record(name)
            .await?
            .filter(|record| record.is_for(raw) && record.error.is_some()))
    }

    /// Whether this version is settled: processed, or failed for a reason of its own (a
    /// transient or access failure is tried again).
    pub(super) async fn output_matches(&self, name: &str, raw: &RawInfo) -> Result<bool> {
        if self.store.head_processed(name, raw).await?.is_some() {
            return Ok(true);
        }
        Ok(self
            .failure(name, raw)
            .await?
            .is_some_and(|record| !retryable(&record)))
    }

    pub(super) async fn record_failure(
        &self,
        name: &str,
        raw: &RawInfo,
        failed: Failed,
        delivered: Option<Delivered>,
    ) -> Result<()> {
        self.metrics.failed_with(failed.code);
        self.store
            .put_record(
                name,
                &Record {
                    error: Some(failed.error),
                    failed_at: Some(now_rfc3339()),
                    code: Some(failed.code.to_string()),
                    tries: failed.tries,
                    request_id: failed.request_id,
                    receives: delivered.map(|d| d.receives),
                    max_receives: delivered.and_then(|d| d.max_receives),
                    ..self.new_record(name, raw, failed.attempts)
                },
            )
            .await
    }

    /// Counts a decryption of this version as started, before it starts.
    pub(super) async fn record_attempt(
        &self,
        name: &str,
        raw: &RawInfo,
        attempts: u32,
    ) -> Result<()> {
        self.store
            .put_record(name, &self.new_record(name, raw, attempts))
            .await
    }

    pub(super) fn new_record(&self, name: &str, raw: &RawInfo, attempts: u32) -> Record {
        Record {
            name: metadata_text(&metadata_value(name)),
            source_etag: raw.etag.clone(),
            source_version: raw.version_id.clone(),
            processor: self.processor.name().to_string(),
            error: None,
            failed_at: None,
            code: None,
            tries: 0,
            request_id: None,
            attempts,
            receives: None,
            max_receives: None,
        }
    }
}
