//! Conditional writes (`If-None-Match`, `If-Match`), and how a write's SDK result is read:
//! a failed precondition, a body S3 refused as changed on its way, or another error.

use super::{Destination, UploadError, checksum};
use aws_clients::AwsResultExt;

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
    pub(super) fn if_match(&self) -> Option<String> {
        match self {
            Precondition::Etag(etag) => Some(format!("\"{}\"", etag.trim_matches('"'))),
            Precondition::Absent => None,
        }
    }

    pub(super) fn if_none_match(&self) -> Option<String> {
        (*self == Precondition::Absent).then(|| "*".to_string())
    }
}

/// An SDK result of a write made under `to`'s precondition (if any), with a failed
/// precondition (412, or 409 for a concurrent conditional write) told apart from other
/// failures.
pub(super) fn conditional<T, E>(
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
pub(super) fn stored<T, E>(
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
