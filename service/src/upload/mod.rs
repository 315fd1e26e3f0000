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
mod conditions;
mod in_flight;
mod operation;
mod parts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client as S3;
use aws_sdk_s3::types::ServerSideEncryption;

use body::Digests;
pub use conditions::Precondition;
pub use in_flight::{InFlight, abort_orphans};

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
    /// Bytes per second the body must deliver on average over every [`body::RATE_WINDOW`] of
    /// waiting for it (0: no minimum). A trickling client is cut off instead of holding a
    /// part buffer for as long as it likes.
    pub min_body_rate: u64,
    /// What the key must hold for the write to take effect.
    pub precondition: Option<Precondition>,
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
}
