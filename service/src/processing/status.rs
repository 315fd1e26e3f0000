//! What the API says about a file.

use serde::Serialize;

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
