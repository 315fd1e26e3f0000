//! Streaming uploads to S3 with bounded memory.
//!
//! A body is read into part-sized buffers. A body that fits in one part becomes a single
//! PutObject; anything larger becomes a multipart upload with at most `parts_in_flight` parts
//! travelling at once, so a transfer holds at most part_size x (parts_in_flight + 1) bytes.
//! Every request names SSE-KMS and the configured key explicitly (the bucket policy denies
//! others). Any failure — the body erroring (client gone), the size cap, an integrity
//! mismatch, an S3 error, or the future being dropped — aborts the multipart upload, so no
//! partial object and no billed orphan parts remain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::aws::{AwsResultExt, Failure, aws_failure};

/// Where and how to store one object.
#[derive(Clone)]
pub struct Target {
    pub s3: S3,
    pub bucket: String,
    pub key: String,
    pub kms_key_arn: String,
    pub metadata: HashMap<String, String>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub max_size: u64,
    /// How long the body may send nothing before the upload is abandoned (a stalled client
    /// must not hold buffers forever).
    pub idle_timeout: Duration,
    /// Bytes per second the body must deliver on average over every [`RATE_WINDOW`] of
    /// waiting for it (0: no minimum). A trickling client is cut off instead of holding a
    /// part buffer for as long as it likes.
    pub min_body_rate: u64,
    /// `Content-Type` of the stored object.
    pub content_type: Option<String>,
    /// Metadata known only once the body has ended (e.g. a line count). Read when the object
    /// is committed; for a multipart upload the object is then copied onto itself with the
    /// full metadata (server-side), since S3 fixes metadata when an upload starts.
    pub late_metadata: Option<LateMetadata>,
}

/// What a body is read into before it takes a part buffer from the shared budget: a body
/// this small is stored with one PutObject and never holds a part buffer, and a body that
/// trickles holds only this much until the minimum rate cuts it off.
pub const STAGING_BYTES: usize = 64 * 1024;

/// The span of waiting for a body over which [`Target::min_body_rate`] is averaged.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

pub type LateMetadata = Arc<Mutex<HashMap<String, String>>>;

/// Integrity values the client sent, checked before the object is committed.
#[derive(Default, Clone)]
pub struct Expected {
    /// `Content-MD5`: base64 of the MD5 digest.
    pub content_md5: Option<String>,
    /// `x-amz-checksum-sha256`: base64 of the SHA-256 digest.
    pub sha256_base64: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
    pub etag: String,
    pub version_id: Option<String>,
    pub sse: String,
    pub kms_key_id: Option<String>,
    pub parts: usize,
}

/// What S3 reported for a committed object (PutObject and CompleteMultipartUpload alike).
struct Stored<'a> {
    etag: Option<&'a str>,
    version_id: Option<&'a str>,
    sse: Option<&'a ServerSideEncryption>,
    kms_key_id: Option<&'a str>,
}

impl Uploaded {
    fn new(digests: &Digests, parts: usize, stored: Stored<'_>) -> Uploaded {
        Uploaded {
            size: digests.size,
            sha256: hex::encode(digests.sha256.clone().finalize()),
            etag: stored.etag.unwrap_or_default().to_string(),
            version_id: stored.version_id.map(str::to_string),
            sse: stored
                .sse
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            kms_key_id: stored.kms_key_id.map(str::to_string),
            parts,
        }
    }
}

#[derive(Debug)]
pub enum UploadError {
    TooLarge(u64),
    /// The body stream failed: the client went away or sent garbage.
    Body(String),
    /// The body came slower than the minimum rate, or not at all for the idle timeout.
    TooSlow(String),
    Integrity(String),
    Aws(anyhow::Error),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::TooLarge(limit) => write!(f, "larger than the limit of {limit} bytes"),
            UploadError::Body(e) => write!(f, "reading the body failed: {e}"),
            UploadError::TooSlow(e) => write!(f, "{e}"),
            UploadError::Integrity(e) => write!(f, "integrity check failed: {e}"),
            UploadError::Aws(e) => write!(f, "{e:#}"),
        }
    }
}

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

    async fn part_permit(&self) -> OwnedSemaphorePermit {
        self.budget
            .clone()
            .acquire_owned()
            .await
            .expect("the part budget is never closed")
    }

    fn insert(&self, upload_id: &str, s3: &S3, bucket: &str, key: &str) {
        self.open.lock().unwrap().insert(
            upload_id.to_string(),
            (s3.clone(), bucket.to_string(), key.to_string()),
        );
    }

    fn remove(&self, upload_id: &str) {
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
    fn abort_soon(&self, s3: &S3, bucket: &str, key: &str, upload_id: &str) {
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
/// (it was killed mid-upload). Called at start-up, before this run opens any: one instance
/// writes these keys, so every open upload is an orphan. Returns how many were aborted.
pub async fn abort_orphans(s3: &S3, bucket: &str, prefix: &str) -> anyhow::Result<usize> {
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
struct AbortOnDrop {
    s3: S3,
    bucket: String,
    key: String,
    upload_id: String,
    in_flight: InFlight,
    armed: bool,
}

impl AbortOnDrop {
    /// The upload was completed.
    fn disarm(mut self) {
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

struct Digests {
    sha256: Sha256,
    md5: Option<Md5>,
    size: u64,
}

impl Digests {
    fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk);
        }
        self.size += chunk.len() as u64;
    }
}

/// Streams `body` into `target`.
pub async fn upload<S, E>(
    target: &Target,
    body: S,
    expected: &Expected,
    in_flight: &InFlight,
) -> Result<Uploaded, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let body = std::pin::pin!(body);
    let mut digests = Digests {
        sha256: Sha256::new(),
        md5: expected.content_md5.as_ref().map(|_| Md5::new()),
        size: 0,
    };
    let mut body = Body {
        stream: body,
        pending: None,
        pace: Pace::default(),
    };
    let mut buffer = BytesMut::with_capacity(STAGING_BYTES.min(target.part_size));

    // Stage the start of the body without a part buffer; only a body that goes on takes one
    // (waiting for it applies back-pressure to the client) and fills the first part. A body
    // that ends first is a single PutObject.
    let mut permit = None;
    let mut more = fill(&mut body, &mut buffer, STAGING_BYTES, &mut digests, target).await?;
    if more && buffer.len() < target.part_size {
        permit = Some(in_flight.part_permit().await);
        buffer.reserve(target.part_size - buffer.len());
        more = fill(
            &mut body,
            &mut buffer,
            target.part_size,
            &mut digests,
            target,
        )
        .await?;
    }
    if !more {
        check_integrity(&digests, expected)?;
        let output = target
            .s3
            .put_object()
            .bucket(&target.bucket)
            .key(&target.key)
            .body(ByteStream::from(buffer.freeze()))
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&target.kms_key_arn)
            .bucket_key_enabled(true)
            .set_content_type(target.content_type.clone())
            .set_metadata(Some(final_metadata(target, &digests)))
            .send()
            .await
            .aws_context(format!("s3:PutObject {}/{}", target.bucket, target.key))
            .map_err(UploadError::Aws)?;
        drop(permit);
        return Ok(Uploaded::new(
            &digests,
            1,
            Stored {
                etag: output.e_tag(),
                version_id: output.version_id(),
                sse: output.server_side_encryption(),
                kms_key_id: output.ssekms_key_id(),
            },
        ));
    }
    let permit = match permit {
        Some(permit) => permit,
        // A part size below the staging size (not configurable today) still takes a buffer.
        None => in_flight.part_permit().await,
    };

    let created = target
        .s3
        .create_multipart_upload()
        .bucket(&target.bucket)
        .key(&target.key)
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&target.kms_key_arn)
        .bucket_key_enabled(true)
        .set_content_type(target.content_type.clone())
        // With late metadata, all metadata arrives with the final copy: until then the object
        // carries none, so nobody takes a half-described object for a finished one.
        .set_metadata(
            target
                .late_metadata
                .is_none()
                .then(|| target.metadata.clone()),
        )
        .send()
        .await
        .aws_context(format!(
            "s3:CreateMultipartUpload {}/{}",
            target.bucket, target.key
        ))
        .map_err(UploadError::Aws)?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| UploadError::Aws(anyhow!("CreateMultipartUpload returned no upload id")))?
        .to_string();
    in_flight.insert(&upload_id, &target.s3, &target.bucket, &target.key);
    let guard = AbortOnDrop {
        s3: target.s3.clone(),
        bucket: target.bucket.clone(),
        key: target.key.clone(),
        upload_id: upload_id.clone(),
        in_flight: in_flight.clone(),
        armed: true,
    };

    // Until the upload is completed, every way out (an error, a dropped request future)
    // drops `guard` armed, which aborts the upload.
    let sent = send_parts(
        target,
        &upload_id,
        in_flight,
        (&mut buffer, permit),
        &mut body,
        &mut digests,
        expected,
    )
    .await;
    let parts = match sent {
        Ok(parts) => parts,
        // The guard, dropped armed, aborts the upload in the background.
        Err(err) => return Err(err),
    };
    let output = match target
        .s3
        .complete_multipart_upload()
        .bucket(&target.bucket)
        .key(&target.key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts.clone()))
                .build(),
        )
        .send()
        .await
        .aws_context(format!(
            "s3:CompleteMultipartUpload {}/{}",
            target.bucket, target.key
        )) {
        Ok(output) => output,
        Err(err) => return Err(UploadError::Aws(err)),
    };
    let parts = parts.len();
    guard.disarm();
    let mut uploaded = Uploaded::new(
        &digests,
        parts,
        Stored {
            etag: output.e_tag(),
            version_id: output.version_id(),
            sse: output.server_side_encryption(),
            kms_key_id: output.ssekms_key_id(),
        },
    );
    if target.late_metadata.is_some() {
        let source = format!("{}/{}", target.bucket, percent_encode_key(&target.key));
        let copied = target
            .s3
            .copy_object()
            .bucket(&target.bucket)
            .key(&target.key)
            .copy_source(match &uploaded.version_id {
                Some(version) => format!("{source}?versionId={version}"),
                None => source,
            })
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .set_content_type(target.content_type.clone())
            .set_metadata(Some(final_metadata(target, &digests)))
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&target.kms_key_arn)
            .bucket_key_enabled(true)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_attempt_timeout(crate::aws::S3_COPY_TIMEOUT)
                        .operation_timeout(crate::aws::S3_COPY_TIMEOUT * 2)
                        .build(),
                ),
            )
            .send()
            .await
            .aws_context(format!(
                "s3:CopyObject {}/{} (metadata)",
                target.bucket, target.key
            ))
            .map_err(UploadError::Aws)?;
        if let Some(result) = copied.copy_object_result() {
            uploaded.etag = result.e_tag().unwrap_or_default().to_string();
        }
        uploaded.version_id = copied.version_id().map(str::to_string);
    }
    Ok(uploaded)
}

/// The metadata of a committed object: the fixed part, the late part and the body's SHA-256.
fn final_metadata(target: &Target, digests: &Digests) -> HashMap<String, String> {
    let mut metadata = target.metadata.clone();
    if let Some(late) = &target.late_metadata {
        metadata.extend(late.lock().unwrap().clone());
    }
    metadata.insert(
        "sha256".into(),
        hex::encode(digests.sha256.clone().finalize()),
    );
    metadata
}

/// Uploads the first (already buffered) part and the rest of the body, at most
/// `parts_in_flight` at a time; returns the completed parts in order. `permit` covers the
/// buffer being filled; each full buffer takes its permit along to its upload task.
async fn send_parts<S, E>(
    target: &Target,
    upload_id: &str,
    in_flight: &InFlight,
    (buffer, mut permit): (&mut BytesMut, OwnedSemaphorePermit),
    body: &mut Body<'_, S>,
    digests: &mut Digests,
    expected: &Expected,
) -> Result<Vec<CompletedPart>, UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut tasks: JoinSet<Result<CompletedPart, anyhow::Error>> = JoinSet::new();
    let mut completed = Vec::new();
    let mut part_number = 0;
    loop {
        part_number += 1;
        // A free slot of this transfer first. The full buffer then leaves with its permit,
        // and only after that does this transfer wait for a permit for its next buffer: a
        // transfer never waits while holding one, so transfers cannot starve each other.
        if tasks.len() >= target.parts_in_flight
            && let Some(done) = tasks.join_next().await
        {
            completed.push(joined(done)?);
        }
        let data = std::mem::take(buffer).freeze();
        tasks.spawn(upload_part(
            target.clone(),
            upload_id.to_string(),
            part_number,
            data,
            permit,
        ));
        permit = in_flight.part_permit().await;
        buffer.reserve(target.part_size);
        if !fill(body, buffer, target.part_size, digests, target).await? {
            break;
        }
    }
    if !buffer.is_empty() {
        part_number += 1;
        let data = std::mem::take(buffer).freeze();
        tasks.spawn(upload_part(
            target.clone(),
            upload_id.to_string(),
            part_number,
            data,
            permit,
        ));
    } else {
        drop(permit);
    }
    while let Some(done) = tasks.join_next().await {
        completed.push(joined(done)?);
    }
    check_integrity(digests, expected)?;
    completed.sort_by_key(|p| p.part_number());
    Ok(completed)
}

fn joined(
    done: Result<Result<CompletedPart, anyhow::Error>, tokio::task::JoinError>,
) -> Result<CompletedPart, UploadError> {
    match done {
        Ok(Ok(part)) => Ok(part),
        Ok(Err(err)) => Err(UploadError::Aws(err)),
        Err(join) => Err(UploadError::Aws(anyhow!("part upload task failed: {join}"))),
    }
}

async fn upload_part(
    target: Target,
    upload_id: String,
    part_number: i32,
    data: Bytes,
    // Released when this part is uploaded and its buffer dropped.
    _permit: OwnedSemaphorePermit,
) -> Result<CompletedPart, anyhow::Error> {
    let output = target
        .s3
        .upload_part()
        .bucket(&target.bucket)
        .key(&target.key)
        .upload_id(upload_id)
        .part_number(part_number)
        .body(ByteStream::from(data))
        .send()
        .await
        .aws_context(format!(
            "s3:UploadPart {}/{} #{part_number}",
            target.bucket, target.key
        ))?;
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(output.e_tag().map(str::to_string))
        .build())
}

/// The request body being read, with the chunk read ahead and the pace it keeps.
struct Body<'a, S> {
    stream: std::pin::Pin<&'a mut S>,
    /// What was read beyond the last buffer's end.
    pending: Option<Bytes>,
    pace: Pace,
}

/// Bytes delivered and time spent waiting for them in the current [`RATE_WINDOW`]. Only time
/// spent waiting for the client counts: not the time the upload waits for S3 or a buffer.
#[derive(Default)]
struct Pace {
    waited: Duration,
    bytes: u64,
}

/// Reads from the body until `buffer` holds `limit` bytes with more to come (true) or the
/// body ends (false).
async fn fill<S, E>(
    body: &mut Body<'_, S>,
    buffer: &mut BytesMut,
    limit: usize,
    digests: &mut Digests,
    target: &Target,
) -> Result<bool, UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    loop {
        let mut chunk = match body.pending.take() {
            Some(chunk) => chunk,
            None => match next_chunk(body, digests, target).await? {
                None => return Ok(false),
                Some(chunk) => chunk,
            },
        };
        let room = limit - buffer.len();
        if chunk.len() > room {
            body.pending = Some(chunk.split_off(room));
        }
        buffer.extend_from_slice(&chunk);
        if buffer.len() == limit {
            // Whether the body goes on decides between PutObject and a multipart upload, so
            // a buffer filled exactly looks one chunk ahead.
            while body.pending.is_none() {
                match next_chunk(body, digests, target).await? {
                    None => return Ok(false),
                    Some(next) if next.is_empty() => continue,
                    Some(next) => body.pending = Some(next),
                }
            }
            return Ok(true);
        }
    }
}

/// The next chunk of the body, counted, hashed and checked against the size limit, the idle
/// timeout and the minimum rate.
async fn next_chunk<S, E>(
    body: &mut Body<'_, S>,
    digests: &mut Digests,
    target: &Target,
) -> Result<Option<Bytes>, UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let quota = target.min_body_rate.saturating_mul(RATE_WINDOW.as_secs());
    let behind = body.pace.bytes < quota;
    let wait = if behind {
        target
            .idle_timeout
            .min(RATE_WINDOW.saturating_sub(body.pace.waited))
    } else {
        target.idle_timeout
    };
    let started = Instant::now();
    let next = tokio::time::timeout(wait, body.stream.next()).await;
    body.pace.waited += started.elapsed();
    let chunk = match next {
        Err(_) if behind && wait < target.idle_timeout => {
            return Err(too_slow(&body.pace, target));
        }
        Err(_) => {
            return Err(UploadError::TooSlow(format!(
                "no data for {} s; giving up",
                target.idle_timeout.as_secs()
            )));
        }
        Ok(None) => return Ok(None),
        Ok(Some(Err(err))) => return Err(UploadError::Body(err.to_string())),
        Ok(Some(Ok(chunk))) => chunk,
    };
    body.pace.bytes += chunk.len() as u64;
    if body.pace.waited >= RATE_WINDOW {
        if body.pace.bytes < quota {
            return Err(too_slow(&body.pace, target));
        }
        body.pace = Pace::default();
    }
    digests.update(&chunk);
    if digests.size > target.max_size {
        return Err(UploadError::TooLarge(target.max_size));
    }
    Ok(Some(chunk))
}

fn too_slow(pace: &Pace, target: &Target) -> UploadError {
    UploadError::TooSlow(format!(
        "the body sent {} bytes in {} s, below the minimum of {} bytes/s",
        pace.bytes,
        pace.waited.as_secs(),
        target.min_body_rate
    ))
}

fn check_integrity(digests: &Digests, expected: &Expected) -> Result<(), UploadError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let (Some(want), Some(md5)) = (&expected.content_md5, &digests.md5) {
        let got = b64.encode(md5.clone().finalize());
        if &got != want {
            return Err(UploadError::Integrity(format!(
                "Content-MD5 is {want}, the body's is {got}"
            )));
        }
    }
    if let Some(want) = &expected.sha256_base64 {
        let got = b64.encode(digests.sha256.clone().finalize());
        if &got != want {
            return Err(UploadError::Integrity(format!(
                "x-amz-checksum-sha256 is {want}, the body's is {got}"
            )));
        }
    }
    Ok(())
}

/// CopySource is a URL path: keys are percent-encoded except for `/`.
fn percent_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// S3 user metadata travels in HTTP headers, so non-ASCII names are percent-encoded.
pub fn metadata_value(text: &str) -> String {
    percent_encode_key(text)
}

/// Reverses [`metadata_value`].
pub fn metadata_text(value: &str) -> String {
    String::from_utf8_lossy(&percent_decode(value)).into_owned()
}

/// Decodes `%XX` escapes; anything else passes through.
pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}
