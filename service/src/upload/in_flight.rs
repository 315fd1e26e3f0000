//! The multipart uploads not yet completed or aborted, the shared budget of part buffers,
//! and every way an upload is aborted: at once, in the background, at shutdown, on drop,
//! and the orphans a killed run left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use aws_clients::{AwsResultExt, Failure, aws_failure};

/// What all transfers share: the multipart uploads not yet completed or aborted (so shutdown
/// can abort what is left), and the budget of part buffers. Every part buffer, filling or
/// uploading, holds a permit, so the whole process buffers at most
/// `max_buffered_parts x part_size` bytes of file data, however many transfers run.
#[derive(Clone)]
pub struct InFlight {
    open: Arc<Mutex<HashMap<String, OpenUpload>>>,
    budget: Arc<Semaphore>,
}

/// Client, bucket and key of an open multipart upload.
type OpenUpload = (S3, String, String);

impl InFlight {
    pub fn new(max_buffered_parts: usize) -> InFlight {
        InFlight {
            open: Arc::default(),
            budget: Arc::new(Semaphore::new(max_buffered_parts.max(1))),
        }
    }

    pub(super) async fn part_permit(&self) -> OwnedSemaphorePermit {
        self.budget
            .clone()
            .acquire_owned()
            .await
            .expect("the part budget is never closed")
    }

    pub(super) fn insert(&self, upload_id: &str, s3: &S3, bucket: &str, key: &str) {
        self.open.lock().unwrap().insert(
            upload_id.to_string(),
            (s3.clone(), bucket.to_string(), key.to_string()),
        );
    }

    pub(super) fn remove(&self, upload_id: &str) {
        self.open.lock().unwrap().remove(upload_id);
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Aborts every unfinished multipart upload (used at shutdown).
    pub async fn abort_all(&self) {
        let entries: Vec<_> = self.open.lock().unwrap().drain().collect();
        for (upload_id, (s3, bucket, key)) in entries {
            abort(&s3, &bucket, &key, &upload_id).await;
        }
    }

    /// Aborts an upload in the background: a request that failed because S3 is unreachable
    /// answers at once, and the abort is tried again until S3 is back. The upload stays
    /// listed until then, so a shutdown meanwhile aborts it too.
    pub(super) fn abort_soon(&self, s3: &S3, bucket: &str, key: &str, upload_id: &str) {
        let (in_flight, s3, bucket, key, upload_id) = (
            self.clone(),
            s3.clone(),
            bucket.to_string(),
            key.to_string(),
            upload_id.to_string(),
        );
        // Dropped during the runtime's shutdown, the task never runs: abort_all has run.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                abort(&s3, &bucket, &key, &upload_id).await;
                in_flight.remove(&upload_id);
            });
        }
    }
}

/// Tries of one abort while S3 fails transiently, each after the SDK's own retries.
const ABORT_TRIES: u32 = 6;

async fn abort(s3: &S3, bucket: &str, key: &str, upload_id: &str) {
    for attempt in 1..=ABORT_TRIES {
        let result = s3
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        let err = match result {
            Ok(_) => {
                tracing::info!(bucket, key, "multipart upload aborted");
                return;
            }
            // Aborted already (by shutdown, or an earlier try whose answer was lost).
            Err(err) if err.as_service_error().and_then(|e| e.code()) == Some("NoSuchUpload") => {
                return;
            }
            Err(err) => Err::<(), _>(err)
                .aws_context(format!("s3:AbortMultipartUpload {bucket}/{key}"))
                .unwrap_err(),
        };
        if attempt < ABORT_TRIES && aws_failure(&err) == Some(Failure::Transient) {
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            continue;
        }
        tracing::error!(bucket, key, upload_id, error = %err, "aborting a multipart upload failed; the service's next start or the bucket's lifecycle rule removes it");
        return;
    }
}

/// Aborts the multipart uploads under `prefix` of `bucket` that a previous run left open
/// (it was killed mid-upload); returns how many were aborted. With one writer (called at
/// start-up, before this run opens any) every open upload is an orphan: `older_than` is
/// `None`. Where several instances write, only uploads started at least `older_than` ago
/// are taken for orphans, since a younger one may be another instance's, still going.
pub async fn abort_orphans(
    s3: &S3,
    bucket: &str,
    prefix: &str,
    older_than: Option<Duration>,
) -> anyhow::Result<usize> {
    let cutoff = older_than.map(|age| std::time::SystemTime::now() - age);
    let mut aborted = 0;
    let (mut key_marker, mut upload_id_marker) = (None, None);
    loop {
        let listed = s3
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_upload_id_marker(upload_id_marker)
            .send()
            .await
            .aws_context(format!("s3:ListMultipartUploads {bucket}/{prefix}"))?;
        for upload in listed.uploads() {
            let started = upload
                .initiated()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok());
            if let (Some(cutoff), Some(started)) = (cutoff, started)
                && started > cutoff
            {
                continue;
            }
            if let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) {
                abort(s3, bucket, key, upload_id).await;
                aborted += 1;
            }
        }
        if !listed.is_truncated().unwrap_or(false) {
            return Ok(aborted);
        }
        key_marker = listed.next_key_marker().map(str::to_string);
        upload_id_marker = listed.next_upload_id_marker().map(str::to_string);
    }
}

/// Aborts the multipart upload if dropped before `disarm` (cancelled request, panic).
pub(super) struct AbortOnDrop {
    pub(super) s3: S3,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) in_flight: InFlight,
    pub(super) armed: bool,
}

impl AbortOnDrop {
    /// The upload was completed.
    pub(super) fn disarm(mut self) {
        self.armed = false;
        self.in_flight.remove(&self.upload_id);
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.in_flight
                .abort_soon(&self.s3, &self.bucket, &self.key, &self.upload_id);
        }
    }
}
