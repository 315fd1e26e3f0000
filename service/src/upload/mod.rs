//! Streaming uploads to S3 with bounded memory.
//!
//! A body is read into part-sized buffers. A body that fits in one part becomes a single
//! PutObject; anything larger becomes a multipart upload with at most `parts_in_flight` parts
//! travelling at once, so a transfer holds at most part_size x (parts_in_flight + 1) bytes.
//! Every write names SSE-KMS and the configured key explicitly (the bucket policy denies
//! others). Any failure — the body erroring (client gone), the size cap, an integrity
//! mismatch, an S3 error, or the future being dropped — aborts the multipart upload, so no
//! partial object and no billed orphan parts remain.

mod body;
pub(crate) mod checksum;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::aws::{AwsResultExt, Failure, aws_failure};
use crate::names::percent_encode_path;
use body::RATE_WINDOW;
use body::{BodyLimits, BodyReader, Digests};

/// What every upload shares: the client, the key, the part geometry, the idle timeout and
/// the budget of part buffers. Built once.
#[derive(Clone)]
pub struct Uploader {
    s3: S3,
    kms_key_arn: String,
    part_size: usize,
    parts_in_flight: usize,
    idle_timeout: Duration,
    in_flight: InFlight,
}

/// One object to write.
pub struct Destination {
    pub bucket: String,
    pub key: String,
    pub metadata: HashMap<String, String>,
    /// `Content-Type` of the stored object.
    pub content_type: Option<String>,
    /// Metadata known only once the body has ended (e.g. a line count). Read when the object
    /// is committed; for a multipart upload the object is then copied onto itself with the
    /// full metadata (server-side), since S3 fixes metadata when an upload starts.
    pub late_metadata: Option<LateMetadata>,
    pub max_size: u64,
    /// Bytes per second the body must deliver on average over every [`RATE_WINDOW`] of
    /// waiting for it (0: no minimum). A trickling client is cut off instead of holding a
    /// part buffer for as long as it likes.
    pub min_body_rate: u64,
    /// What the key must hold for the write to take effect.
    pub precondition: Option<Precondition>,
}

/// What a key must hold for a write to take effect (S3 conditional writes: `If-None-Match:
/// *`, `If-Match: <etag>`, on PutObject, CompleteMultipartUpload and CopyObject). Writers
/// racing on one key then cannot overwrite what another wrote after they looked: the loser
/// gets [`UploadError::Conflict`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No object under the key.
    Absent,
    /// The current object has this ETag (with or without quotes).
    Etag(String),
}

impl Precondition {
    fn if_match(&self) -> Option<String> {
        match self {
            Precondition::Etag(etag) => Some(format!("\"{}\"", etag.trim_matches('"'))),
            Precondition::Absent => None,
        }
    }

    fn if_none_match(&self) -> Option<String> {
        (*self == Precondition::Absent).then(|| "*".to_string())
    }
}

/// An SDK result of a write made under `to`'s precondition (if any), with a failed
/// precondition (412, or 409 for a concurrent conditional write) told apart from other
/// failures.
fn conditional<T, E>(
    result: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    to: &Destination,
    call: String,
) -> Result<T, UploadError>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Err(err)
            if to.precondition.is_some()
                && matches!(
                    err.raw_response().map(|r| r.status().as_u16()),
                    Some(409 | 412)
                ) =>
        {
            Err(UploadError::Conflict(call))
        }
        other => stored(other, &call),
    }
}

/// An SDK result of a write, with S3's refusal of a body changed on its way told apart.
fn stored<T, E>(
    result: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    call: &str,
) -> Result<T, UploadError>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(refused) = result
        .as_ref()
        .err()
        .and_then(|err| err.as_service_error())
        .and_then(|err| checksum::refusal(call, err))
    {
        return Err(refused);
    }
    result.aws_context(call).map_err(UploadError::Aws)
}

/// What a body is read into before it takes a part buffer from the shared budget: a body
/// this small is stored with one PutObject and never holds a part buffer, and a body that
/// trickles holds only this much until the minimum rate cuts it off.
pub const STAGING_BYTES: usize = 64 * 1024;

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
            sha256: digests.sha256_hex(),
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
    /// S3 did not confirm that it stored the bytes the service read: it refused them as
    /// changed on the way, or its checksum of what it stored differs. Nothing is
    /// acknowledged.
    NotConfirmed(String),
    /// The write's [`Precondition`] no longer held: another writer changed the key since the
    /// caller looked. Nothing of this write was committed.
    Conflict(String),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::TooLarge(limit) => write!(f, "larger than the limit of {limit} bytes"),
            UploadError::Body(e) => write!(f, "reading the body failed: {e}"),
            UploadError::TooSlow(e) => write!(f, "{e}"),
            UploadError::Integrity(e) => write!(f, "integrity check failed: {e}"),
            UploadError::Aws(e) => write!(f, "{e:#}"),
            UploadError::NotConfirmed(e) => write!(f, "{e}"),
            UploadError::Conflict(call) => {
                write!(
                    f,
                    "{call}: the key changed since it was read (precondition failed)"
                )
            }
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

/// The SSE-KMS settings every write sends: our key, named explicitly, with an S3 Bucket Key.
/// The one place they are spelled.
pub trait SseKms {
    fn sse_kms(self, kms_key_arn: &str) -> Self;
}

macro_rules! sse_kms_for {
    ($($builder:ty),*) => {$(
        impl SseKms for $builder {
            fn sse_kms(self, kms_key_arn: &str) -> Self {
                self.server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(kms_key_arn)
                    .bucket_key_enabled(true)
            }
        }
    )*};
}

sse_kms_for!(
    aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    aws_sdk_s3::operation::copy_object::builders::CopyObjectFluentBuilder
);

impl Uploader {
    pub fn new(
        s3: S3,
        kms_key_arn: &str,
        part_size: usize,
        parts_in_flight: usize,
        idle_timeout: Duration,
        in_flight: InFlight,
    ) -> Uploader {
        Uploader {
            s3,
            kms_key_arn: kms_key_arn.to_string(),
            part_size,
            parts_in_flight: parts_in_flight.max(1),
            idle_timeout,
            in_flight,
        }
    }

    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Streams `body` into `to`.
    pub async fn upload<S, E>(
        &self,
        to: &Destination,
        body: S,
        expected: &Expected,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let limits = BodyLimits {
            max_size: to.max_size,
            idle_timeout: self.idle_timeout,
            min_rate: to.min_body_rate,
            window: RATE_WINDOW,
        };
        let body = std::pin::pin!(body);
        let mut body = BodyReader::new(body, limits, Digests::new(expected.content_md5.is_some()));
        let mut buffer = BytesMut::with_capacity(STAGING_BYTES.min(self.part_size));

        // Stage the start of the body without a part buffer; only a body that goes on takes
        // one (waiting for it applies back-pressure to the client) and fills the first part.
        // A body that ends first is a single PutObject.
        let mut permit = None;
        let mut more = body.fill(&mut buffer, STAGING_BYTES).await?;
        if more && buffer.len() < self.part_size {
            permit = Some(self.in_flight.part_permit().await);
            // The buffer grows with the body (not to a whole part at once): the permit counts
            // a whole part, the memory is what has arrived.
            more = body.fill(&mut buffer, self.part_size).await?;
        }
        if !more {
            check_integrity(&body.digests, expected)?;
            let sent = checksum::base64(&body.digests.sha256_digest());
            let call = format!("s3:PutObject {}/{}", to.bucket, to.key);
            let output = self
                .s3
                .put_object()
                .bucket(&to.bucket)
                .key(&to.key)
                .body(ByteStream::from(buffer.freeze()))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&sent)
                .sse_kms(&self.kms_key_arn)
                .set_content_type(to.content_type.clone())
                .set_metadata(Some(final_metadata(to, &body.digests)))
                .set_if_match(to.precondition.as_ref().and_then(Precondition::if_match))
                .set_if_none_match(
                    to.precondition
                        .as_ref()
                        .and_then(Precondition::if_none_match),
                )
                .send()
                .await;
            let output = conditional(output, to, call.clone())?;
            drop(permit);
            checksum::confirm(&call, output.checksum_sha256(), &sent)?;
            return Ok(Uploaded::new(
                &body.digests,
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
            // A part size below the staging size (not configurable today) still takes one.
            None => self.in_flight.part_permit().await,
        };

        let created = self
            .s3
            .create_multipart_upload()
            .bucket(&to.bucket)
            .key(&to.key)
            .sse_kms(&self.kms_key_arn)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_content_type(to.content_type.clone())
            // With late metadata, all metadata arrives with the final copy: until then the
            // object carries none, so nobody takes a half-described object for a finished one.
            .set_metadata(to.late_metadata.is_none().then(|| to.metadata.clone()))
            .send()
            .await
            .aws_context(format!("s3:CreateMultipartUpload {}/{}", to.bucket, to.key))
            .map_err(UploadError::Aws)?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                UploadError::Aws(anyhow!("CreateMultipartUpload returned no upload id"))
            })?
            .to_string();
        self.in_flight
            .insert(&upload_id, &self.s3, &to.bucket, &to.key);
        // Until the upload is completed, every way out (an error, a dropped request future)
        // drops `guard` armed, which aborts the upload.
        let guard = AbortOnDrop {
            s3: self.s3.clone(),
            bucket: to.bucket.clone(),
            key: to.key.clone(),
            upload_id: upload_id.clone(),
            in_flight: self.in_flight.clone(),
            armed: true,
        };
        let parts = self
            .send_parts(to, &upload_id, (&mut buffer, permit), &mut body)
            .await?;
        check_integrity(&body.digests, expected)?;
        let composite = checksum::composite(&parts)?;
        let output = self
            .s3
            .complete_multipart_upload()
            .bucket(&to.bucket)
            .key(&to.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts.clone()))
                    .build(),
            )
            .set_if_match(to.precondition.as_ref().and_then(Precondition::if_match))
            .set_if_none_match(
                to.precondition
                    .as_ref()
                    .and_then(Precondition::if_none_match),
            )
            .send()
            .await;
        let call = format!("s3:CompleteMultipartUpload {}/{}", to.bucket, to.key);
        let output = conditional(output, to, call.clone())?;
        guard.disarm();
        checksum::confirm(&call, output.checksum_sha256(), &composite)?;
        let mut uploaded = Uploaded::new(
            &body.digests,
            parts.len(),
            Stored {
                etag: output.e_tag(),
                version_id: output.version_id(),
                sse: output.server_side_encryption(),
                kms_key_id: output.ssekms_key_id(),
            },
        );
        if to.late_metadata.is_some() {
            self.copy_with_metadata(to, &body.digests, &composite, &mut uploaded)
                .await?;
        }
        Ok(uploaded)
    }

    /// Copies a completed multipart object onto itself with its full metadata. S3 checksums
    /// the copy: the whole object's SHA-256 (a copy is one operation), or, should it keep the
    /// source's, the composite `completed` confirmed.
    async fn copy_with_metadata(
        &self,
        to: &Destination,
        digests: &Digests,
        completed: &str,
        uploaded: &mut Uploaded,
    ) -> Result<(), UploadError> {
        let source = format!("{}/{}", to.bucket, percent_encode_path(&to.key));
        let copied = self
            .s3
            .copy_object()
            .bucket(&to.bucket)
            .key(&to.key)
            .copy_source(match &uploaded.version_id {
                Some(version) => format!("{source}?versionId={version}"),
                None => source,
            })
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            // The copy's checksum is of the whole object: the digest taken while streaming.
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_content_type(to.content_type.clone())
            .set_metadata(Some(final_metadata(to, digests)))
            .sse_kms(&self.kms_key_arn)
            // Only onto the object just completed: a writer that replaced it since keeps its
            // object, and this one loses.
            .set_if_match(
                to.precondition
                    .is_some()
                    .then(|| Precondition::Etag(uploaded.etag.clone()).if_match())
                    .flatten(),
            )
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
            .await;
        let call = format!("s3:CopyObject {}/{} (metadata)", to.bucket, to.key);
        let copied = conditional(copied, to, call.clone())?;
        let result = copied.copy_object_result();
        let copy_checksum = result.and_then(|r| r.checksum_sha256());
        if copy_checksum != Some(completed) {
            checksum::confirm(
                &call,
                copy_checksum,
                &checksum::base64(&digests.sha256_digest()),
            )?;
        }
        if let Some(result) = result {
            uploaded.etag = result.e_tag().unwrap_or_default().to_string();
        }
        uploaded.version_id = copied.version_id().map(str::to_string);
        Ok(())
    }

    /// Uploads the first (already buffered) part and the rest of the body, at most
    /// `parts_in_flight` at a time; returns the completed parts in order. `permit` covers the
    /// buffer being filled; each full buffer takes its permit along to its upload task.
    async fn send_parts<S, E>(
        &self,
        to: &Destination,
        upload_id: &str,
        (buffer, mut permit): (&mut BytesMut, OwnedSemaphorePermit),
        body: &mut BodyReader<'_, S>,
    ) -> Result<Vec<CompletedPart>, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut tasks: JoinSet<Result<CompletedPart, UploadError>> = JoinSet::new();
        let mut completed = Vec::new();
        let mut part_number = 0;
        loop {
            part_number += 1;
            // A free slot of this transfer first. The full buffer then leaves with its
            // permit, and only after that does this transfer wait for a permit for its next
            // buffer: a transfer never waits while holding one, so transfers cannot starve
            // each other.
            if tasks.len() >= self.parts_in_flight
                && let Some(done) = tasks.join_next().await
            {
                completed.push(joined(done)?);
            }
            let data = std::mem::take(buffer).freeze();
            tasks.spawn(self.upload_part(to, upload_id, part_number, data, permit));
            permit = self.in_flight.part_permit().await;
            if !body.fill(buffer, self.part_size).await? {
                break;
            }
        }
        if !buffer.is_empty() {
            part_number += 1;
            let data = std::mem::take(buffer).freeze();
            tasks.spawn(self.upload_part(to, upload_id, part_number, data, permit));
        } else {
            drop(permit);
        }
        while let Some(done) = tasks.join_next().await {
            completed.push(joined(done)?);
        }
        completed.sort_by_key(|p| p.part_number());
        Ok(completed)
    }

    /// One part's upload, as a task; `permit` is released when the part is uploaded and its
    /// buffer dropped. The part's digest is taken in the task, so parts hash in parallel.
    fn upload_part(
        &self,
        to: &Destination,
        upload_id: &str,
        part_number: i32,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = Result<CompletedPart, UploadError>> + use<> {
        let request = self
            .s3
            .upload_part()
            .bucket(&to.bucket)
            .key(&to.key)
            .upload_id(upload_id)
            .part_number(part_number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        let call = format!("s3:UploadPart {}/{} #{part_number}", to.bucket, to.key);
        async move {
            let sent = checksum::sha256(&data);
            let output = request
                .checksum_sha256(&sent)
                .body(ByteStream::from(data))
                .send()
                .await;
            let output = stored(output, &call)?;
            drop(permit);
            checksum::confirm(&call, output.checksum_sha256(), &sent)?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(output.e_tag().map(str::to_string))
                .checksum_sha256(sent)
                .build())
        }
    }
}

fn joined(
    done: Result<Result<CompletedPart, UploadError>, tokio::task::JoinError>,
) -> Result<CompletedPart, UploadError> {
    match done {
        Ok(result) => result,
        Err(join) => Err(UploadError::Aws(anyhow!("part upload task failed: {join}"))),
    }
}

/// The metadata of a committed object: the fixed part, the late part and the body's SHA-256.
fn final_metadata(to: &Destination, digests: &Digests) -> HashMap<String, String> {
    let mut metadata = to.metadata.clone();
    if let Some(late) = &to.late_metadata {
        metadata.extend(late.lock().unwrap().clone());
    }
    metadata.insert(crate::names::meta::SHA256.into(), digests.sha256_hex());
    metadata
}

fn check_integrity(digests: &Digests, expected: &Expected) -> Result<(), UploadError> {
    use md5::Digest as _;
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
        let got = b64.encode(digests.sha256_digest());
        if &got != want {
            return Err(UploadError::Integrity(format!(
                "x-amz-checksum-sha256 is {want}, the body's is {got}"
            )));
        }
    }
    Ok(())
}
