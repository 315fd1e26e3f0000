//! The processing queue: the SQS queue that receives the initial bucket's object-created
//! events for `raw/`, shared by every instance. This module owns every SQS call and the
//! event format; the pipeline's consumer (processing/consumer.rs) decides what a message
//! leads to.
//!
//! Longer than 400 lines: only with its unit tests of the event format, kept beside the parser.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use aws_sdk_sqs::Client as Sqs;
use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};

use crate::names::{RAW_PREFIX, percent_decode};
use aws_clients::AwsResultExt;

/// Longest long poll SQS allows.
const LONG_POLL_SECS: i32 = 20;
/// Most messages one receive returns.
pub const MAX_BATCH: usize = 10;
/// Marks the messages a scan sends for a file whose event never came.
pub const SCAN_SOURCE: &str = "filepipe:scan";

pub struct WorkQueue {
    sqs: Sqs,
    url: String,
    /// The queue's visibility timeout: how long a received message stays hidden.
    pub visibility: Duration,
    /// The redrive policy's maxReceiveCount: deliveries before the dead-letter queue.
    pub max_receives: Option<u32>,
    /// Receipts of the messages received and not yet let go, so a stopping instance can
    /// hand them back at once instead of leaving them hidden for the visibility timeout.
    held: Mutex<HashSet<String>>,
    stopping: AtomicBool,
}

/// One delivery of a message.
pub struct Delivery {
    pub receipt: String,
    /// ApproximateReceiveCount: 1 on the first delivery.
    pub receives: u32,
    pub body: Body,
}

/// What a message says.
#[derive(Debug, PartialEq)]
pub enum Body {
    /// Files (raw objects) created.
    Files(Vec<FileEvent>),
    /// S3's test event, sent when the notification is configured.
    Test,
    /// Not an event of ours; why.
    Unknown(String),
}

/// One object-created event for a raw file.
#[derive(Debug, PartialEq)]
pub struct FileEvent {
    pub bucket: String,
    pub name: String,
    /// The version the event is about (S3 names it in versioned buckets).
    pub version_id: Option<String>,
    /// When the version was created (S3's eventTime).
    pub event_time: Option<SystemTime>,
}

/// What the queue holds, approximately, as SQS counts.
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl Depth {
    pub fn is_empty(&self) -> bool {
        self.visible == 0 && self.in_flight == 0 && self.delayed == 0
    }
}

impl WorkQueue {
    /// Reads the queue's visibility timeout and redrive policy; fails, naming the queue, if
    /// it cannot be read.
    pub async fn connect(sqs: Sqs, url: &str) -> Result<WorkQueue> {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .aws_context(format!("sqs:GetQueueAttributes {url}"))?;
        let attributes = attributes.attributes().cloned().unwrap_or_default();
        let visibility = attributes
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse::<u64>().ok())
            .context("the queue has no VisibilityTimeout")?;
        if visibility < 6 {
            bail!(
                "the queue's visibility timeout is {visibility} s: at least 6 s are needed to extend it while a file is processed"
            );
        }
        let max_receives = attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .and_then(|policy| match &policy["maxReceiveCount"] {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .map(|n| n as u32);
        Ok(WorkQueue {
            sqs,
            url: url.to_string(),
            visibility: Duration::from_secs(visibility),
            max_receives,
            held: Mutex::default(),
            stopping: AtomicBool::new(false),
        })
    }

    /// The instance is stopping: nothing more is received or kept hidden.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The message of `receipt` is settled (deleted, or hidden for its backoff), or handed
    /// back: it is no longer this instance's.
    pub fn let_go(&self, receipt: &str) {
        self.held.lock().unwrap().remove(receipt);
    }

    /// Stops receiving and makes every message this instance still holds visible again at
    /// once, for another instance to take; returns how many. Called at shutdown: the files
    /// they name are not finished here.
    pub async fn hand_back(&self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let held: Vec<String> = self.held.lock().unwrap().drain().collect();
        for receipt in &held {
            if let Err(err) = self.hide(receipt, Duration::ZERO).await {
                tracing::warn!(error = %format!("{err:#}"), "handing a message back failed; it comes back after its visibility timeout");
            }
        }
        held.len()
    }

    /// Up to `max` messages, waiting up to 20 s for the first.
    pub async fn receive(&self, max: usize) -> Result<Vec<Delivery>> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(LONG_POLL_SECS)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .aws_context("sqs:ReceiveMessage")?;
        let deliveries: Vec<Delivery> = received
            .messages()
            .iter()
            .filter_map(|message| {
                let receives = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Some(Delivery {
                    receipt: message.receipt_handle()?.to_string(),
                    receives,
                    body: parse(message.body().unwrap_or_default()),
                })
            })
            .collect();
        self.held
            .lock()
            .unwrap()
            .extend(deliveries.iter().map(|d| d.receipt.clone()));
        // Received while stopping (a long poll that was under way): handed back at once.
        if self.is_stopping() {
            self.hand_back().await;
            return Ok(Vec::new());
        }
        Ok(deliveries)
    }

    /// The message is done with: nobody receives it again.
    pub async fn delete(&self, receipt: &str) -> Result<()> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .aws_context("sqs:DeleteMessage")?;
        Ok(())
    }

    /// Hides the message for `hidden` from now: to keep it while its file is processed, or to
    /// have it delivered again after a backoff.
    pub async fn hide(&self, receipt: &str, hidden: Duration) -> Result<()> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(hidden.as_secs().min(12 * 3600) as i32)
            .send()
            .await
            .aws_context("sqs:ChangeMessageVisibility")?;
        Ok(())
    }

    /// Sends the message S3 would have sent for this raw version (for a scan that found a
    /// file whose event never came, or a reprocess request).
    pub async fn send(
        &self,
        bucket: &str,
        name: &str,
        version_id: Option<&str>,
        created: SystemTime,
    ) -> Result<()> {
        let body = event_body(bucket, name, version_id, created);
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body.to_string())
            .send()
            .await
            .aws_context("sqs:SendMessage")?;
        Ok(())
    }

    pub async fn depth(&self) -> Result<Depth> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .aws_context("sqs:GetQueueAttributes")?;
        let attributes = attributes.attributes().cloned().unwrap_or_default();
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// An S3 object-created event for `raw/<name>`, in S3's own format (so one parser reads
/// both).
fn event_body(bucket: &str, name: &str, version_id: Option<&str>, created: SystemTime) -> Value {
    let key: String = url_encode_form(&format!("{RAW_PREFIX}{name}"));
    let mut object = json!({ "key": key });
    if let Some(version) = version_id {
        object["versionId"] = json!(version);
    }
    json!({
        "Records": [{
            "eventSource": SCAN_SOURCE,
            "eventName": "ObjectCreated:Scan",
            "eventTime": DateTime::from(created).fmt(DateTimeFormat::DateTime).unwrap_or_default(),
            "s3": { "bucket": { "name": bucket }, "object": object },
        }]
    })
}

/// Keys in S3 events are URL-encoded as in a form: `+` for a space.
fn url_encode_form(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn url_decode_form(text: &str) -> Option<String> {
    String::from_utf8(percent_decode(&text.replace('+', " "))).ok()
}

/// S3 writes `2026-12-01T11:22:41.776Z`; the emulator leaves out the zone (it means UTC).
fn event_time(text: &str) -> Option<SystemTime> {
    let text = if text.ends_with('Z') || text.contains('+') {
        text.to_string()
    } else {
        format!("{text}Z")
    };
    DateTime::from_str(&text, DateTimeFormat::DateTime)
        .ok()
        .and_then(|t| SystemTime::try_from(t).ok())
}

/// Reads a message body: S3's event notification format
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html>).
pub fn parse(body: &str) -> Body {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Body::Unknown("the message is not JSON".into());
    };
    if value["Event"] == "s3:TestEvent" {
        return Body::Test;
    }
    let Some(records) = value["Records"].as_array() else {
        return Body::Unknown("the message has no Records".into());
    };
    let mut files = Vec::new();
    for record in records {
        let event = record["eventName"].as_str().unwrap_or_default();
        if !event.starts_with("ObjectCreated:") {
            return Body::Unknown(format!("event `{event}` is not an object creation"));
        }
        let object = &record["s3"]["object"];
        let Some(key) = object["key"].as_str().and_then(url_decode_form) else {
            return Body::Unknown("an event without a readable object key".into());
        };
        let Some(name) = key.strip_prefix(RAW_PREFIX) else {
            return Body::Unknown(format!("key `{key}` is not under {RAW_PREFIX}"));
        };
        files.push(FileEvent {
            bucket: record["s3"]["bucket"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            name: name.to_string(),
            version_id: object["versionId"].as_str().map(str::to_string),
            event_time: record["eventTime"].as_str().and_then(event_time),
        });
    }
    if files.is_empty() {
        return Body::Unknown("the message has no records".into());
    }
    Body::Files(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_s3s_event_with_a_form_encoded_key_and_its_version() {
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"eu-west-1",
            "eventTime":"2026-12-01T11:22:41.776Z","eventName":"ObjectCreated:CompleteMultipartUpload",
            "s3":{"bucket":{"name":"b-initial","arn":"arn:aws:s3:::b-initial"},
            "object":{"key":"raw/reports/a+b%2Bc%C3%A9.csv","size":1,"eTag":"9dd4","versionId":"v1","sequencer":"0A"}}}]}"#;
        let Body::Files(files) = parse(body) else {
            panic!("not read: {:?}", parse(body))
        };
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].bucket, "b-initial");
        assert_eq!(files[0].name, "reports/a b+cé.csv");
        assert_eq!(files[0].version_id.as_deref(), Some("v1"));
        let time = files[0].event_time.expect("event time");
        assert_eq!(
            DateTime::from(time).fmt(DateTimeFormat::DateTime).unwrap(),
            "2026-12-01T11:22:41.776Z"
        );
    }

    #[test]
    fn the_emulators_zone_less_time_and_missing_version_are_read() {
        let body = r#"{"Records":[{"eventTime":"2026-12-01T11:22:41.776876","eventName":"ObjectCreated:Put",
            "s3":{"bucket":{"name":"b"},"object":{"key":"raw%2Fa+b","size":1}}}]}"#;
        let Body::Files(files) = parse(body) else {
            panic!("not read")
        };
        assert_eq!(files[0].name, "a b");
        assert_eq!(files[0].version_id, None);
        assert!(files[0].event_time.is_some());
    }

    #[test]
    fn a_scan_message_reads_back_as_the_event_it_stands_for() {
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let body = event_body("b", "dir/ü x+y.csv", Some("v7"), created).to_string();
        assert_eq!(
            parse(&body),
            Body::Files(vec![FileEvent {
                bucket: "b".into(),
                name: "dir/ü x+y.csv".into(),
                version_id: Some("v7".into()),
                event_time: Some(created),
            }])
        );
    }

    #[test]
    fn test_events_and_foreign_messages_are_told_apart() {
        assert_eq!(
            parse(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#),
            Body::Test
        );
        for (body, why) in [
            ("not json", "not JSON"),
            (r#"{"hello":1}"#, "no Records"),
            (
                r#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{"object":{"key":"raw/a"}}}]}"#,
                "not an object creation",
            ),
            (
                r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"object":{"key":"other/a"}}}]}"#,
                "not under raw/",
            ),
        ] {
            match parse(body) {
                Body::Unknown(reason) => assert!(reason.contains(why), "{body}: {reason}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
