//! How an AWS call failed: one line naming the call, the AWS error code and message and the
//! request id, and its kind (worth retrying, denied, other) from the SDK's typed error and
//! the one code table every service shares.

/// How an AWS call failed, from the SDK's error kind and the service's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Throttling, 5xx, timeouts, connection and dispatch errors: worth trying again.
    Transient,
    /// The caller may not do this: a deployment error, not the data's.
    Denied,
    /// Anything else (a missing object, an invalid request).
    Other,
}

/// A failed AWS call: which call, how it failed, a one-line account of it (the AWS error
/// code and message, or the SDK's reason for having no answer) and the request id AWS gave.
#[derive(Debug)]
pub struct AwsCallError {
    pub call: String,
    pub failure: Failure,
    pub request_id: Option<String>,
    detail: String,
}

impl std::fmt::Display for AwsCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.detail)
    }
}

impl std::error::Error for AwsCallError {}

/// The first AWS call in an error's chain, if there is one.
pub fn aws_call(err: &anyhow::Error) -> Option<&AwsCallError> {
    err.chain().find_map(|e| e.downcast_ref::<AwsCallError>())
}

/// How the first AWS call in an error's chain failed, if one did.
pub fn aws_failure(err: &anyhow::Error) -> Option<Failure> {
    aws_call(err).map(|e| e.failure)
}

/// Turns an SDK error into an [`AwsCallError`] whose one-line message carries the AWS error
/// code and message (the SDK's own Display says only "service error").
pub trait AwsResultExt<T> {
    fn aws_context(self, call: impl std::fmt::Display) -> anyhow::Result<T>;
}

type SdkError<E> = aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

impl<T, E> AwsResultExt<T> for Result<T, SdkError<E>>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn aws_context(self, call: impl std::fmt::Display) -> anyhow::Result<T> {
        self.map_err(|err| {
            use aws_sdk_s3::operation::RequestId as _;
            let detail = match err.as_service_error() {
                // Not the SDK's context, which for an error it does not model ends in a
                // dump of the error's metadata.
                Some(service) => format!(
                    "{}: {}",
                    service.code().unwrap_or("unknown error"),
                    service.message().unwrap_or("no message")
                ),
                None => aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
            };
            anyhow::Error::new(AwsCallError {
                call: call.to_string(),
                failure: classify(&err),
                request_id: err.request_id().map(str::to_string),
                detail,
            })
        })
    }
}

fn classify<E: aws_sdk_s3::error::ProvideErrorMetadata>(err: &SdkError<E>) -> Failure {
    use aws_sdk_s3::error::SdkError as Kind;
    match err {
        Kind::TimeoutError(_) | Kind::DispatchFailure(_) | Kind::ResponseError(_) => {
            Failure::Transient
        }
        Kind::ServiceError(service) => {
            classify_service_error(service.err().code(), service.raw().status().as_u16())
        }
        _ => Failure::Other,
    }
}

/// How an AWS service's error answer failed, from its error code and HTTP status: the one
/// table for S3, KMS (called directly or by the Encryption SDK) and the rest.
pub fn classify_service_error(code: Option<&str>, status: u16) -> Failure {
    match code.unwrap_or_default() {
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidAccessKeyId"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "UnrecognizedClientException" => Failure::Denied,
        // KMSInvalidStateException: the key is disabled, pending deletion or import; the
        // operator's to fix, not the file's, and gone once the key is usable again.
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestTimeout"
        | "RequestLimitExceeded"
        | "InternalError"
        | "ServiceUnavailable"
        | "KMSInternalException"
        | "KMSInvalidStateException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException" => Failure::Transient,
        _ if status == 403 => Failure::Denied,
        _ if status >= 500 || status == 429 => Failure::Transient,
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_kind_and_code() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::error::{ErrorMetadata, SdkError};
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_sdk_s3::primitives::SdkBody;
        let service = |status: u16, code: &str| -> SdkError<GetObjectError, HttpResponse> {
            SdkError::service_error(
                GetObjectError::generic(ErrorMetadata::builder().code(code).build()),
                HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
            )
        };
        for (err, want) in [
            (service(503, "SlowDown"), Failure::Transient),
            (service(500, "InternalError"), Failure::Transient),
            (service(502, "Whatever"), Failure::Transient),
            (service(429, "TooMany"), Failure::Transient),
            (service(400, "ThrottlingException"), Failure::Transient),
            (service(403, "AccessDenied"), Failure::Denied),
            (service(400, "ExpiredToken"), Failure::Denied),
            (service(403, "SomethingElse"), Failure::Denied),
            (service(404, "NoSuchKey"), Failure::Other),
            (service(400, "InvalidRange"), Failure::Other),
            (SdkError::timeout_error("no answer"), Failure::Transient),
        ] {
            let text = format!("{err:?}");
            let wrapped = Err::<(), _>(err).aws_context("s3:GetObject k").unwrap_err();
            assert_eq!(aws_failure(&wrapped), Some(want), "{text}");
            assert!(
                wrapped.to_string().starts_with("s3:GetObject k: "),
                "{wrapped}"
            );
        }
    }

    /// KMS's answers, one per error it gives, as its SDK reports them to the Encryption
    /// SDK's decryptions.
    #[test]
    fn kms_answers_are_classified_by_code() {
        for (code, status, want) in [
            ("KMSInternalException", 500, Failure::Transient),
            ("ServiceUnavailable", 503, Failure::Transient),
            ("ThrottlingException", 400, Failure::Transient),
            ("KMSInvalidStateException", 400, Failure::Transient),
            ("DependencyTimeoutException", 503, Failure::Transient),
            ("KeyUnavailableException", 500, Failure::Transient),
            ("AccessDeniedException", 400, Failure::Denied),
            ("UnrecognizedClientException", 400, Failure::Denied),
            ("InvalidCiphertextException", 400, Failure::Other),
            ("IncorrectKeyException", 400, Failure::Other),
            ("NotFoundException", 400, Failure::Other),
        ] {
            assert_eq!(
                classify_service_error(Some(code), status),
                want,
                "{code} ({status})"
            );
        }
        assert_eq!(classify_service_error(None, 500), Failure::Transient);
        assert_eq!(classify_service_error(None, 400), Failure::Other);
    }
}
