//! What the API says about a file, and the query that answers it.

use anyhow::Result;
use serde::Serialize;

use super::Pipeline;
use crate::store::{ProcessedInfo, RawInfo};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Processing,
    Processed,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub name: String,
    pub state: State,
    pub raw: RawInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed: Option<ProcessedInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it failed: `file`, `quarantined`, `integrity` (the raw bytes are not the ones
    /// acknowledged), or `transient` / `access_denied` (tried again by the next scan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Tries of the run that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// The AWS request id of the call that failed it, if AWS answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Deliveries of the file's queue message when it last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receives: Option<u32>,
    /// Deliveries after which the message goes to the dead-letter queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_receives: Option<u32>,
    /// Whether the message has used its deliveries and is (or is being) moved to the
    /// dead-letter queue: nothing processes the file until it is uploaded again or
    /// reprocessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<bool>,
}

impl Pipeline {
    /// Status of a file, or `None` if there is no raw object.
    pub async fn status(&self, name: &str) -> Result<Option<FileStatus>> {
        let Some(raw) = self.lookups.head_raw(name).await? else {
            return Ok(None);
        };
        let processed = self.lookups.head_processed(name, &raw).await?;
        let failure = match processed {
            Some(_) => None,
            None => self
                .lookups
                .record(name)
                .await?
                .filter(|record| record.is_for(&raw) && record.error.is_some()),
        };
        let (state, failure) = if processed.is_some() {
            (State::Processed, None)
        } else if let Some(record) = failure {
            (State::Failed, Some(record))
        } else if self.running.lock().unwrap().contains(name) {
            (State::Processing, None)
        } else {
            (State::Pending, None)
        };
        let tries = failure.as_ref().map(|record| record.tries);
        let (receives, max_receives) = failure
            .as_ref()
            .map(|record| (record.receives, record.max_receives))
            .unwrap_or_default();
        let dead_lettered = match (receives, max_receives) {
            (Some(receives), Some(max)) => Some(receives >= max),
            _ => None,
        };
        let (error, error_code, request_id) = failure
            .map(|record| (record.error, record.code, record.request_id))
            .unwrap_or_default();
        Ok(Some(FileStatus {
            name: name.to_string(),
            state,
            raw,
            processed,
            error,
            error_code,
            tries,
            request_id,
            receives,
            max_receives,
            dead_lettered,
        }))
    }
}
