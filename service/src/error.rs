//! API errors: one JSON shape, `{"error": {"code", "message", "request_id"}}`, and the
//! conversions that let handlers use `?`. What went wrong inside (an AWS error's code and
//! request id) is logged by the request middleware, never sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::retrieval::RetrievalError;
use crate::upload::UploadError;
use aws_clients::{Failure, aws_call, aws_failure};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the error object (e.g. a processing status).
    pub details: Option<serde_json::Value>,
    /// The cause, for the log only.
    cause: Option<String>,
}

/// An error's cause, handed from the response to the request middleware, which logs it.
#[derive(Clone, Debug)]
pub struct ErrorCause {
    pub code: &'static str,
    pub cause: String,
    /// The deployment's permissions are wrong: logged as an error, not a warning.
    pub denied: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            cause: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }

    fn caused_by(mut self, cause: impl Into<String>) -> ApiError {
        self.cause = Some(cause.into());
        self
    }
}

/// An AWS failure (or any internal one), classified by the SDK's error kind and code:
/// throttling and unavailability are 503 (retry later); a denial is a deployment error; the
/// rest 502.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        let (status, code) = match aws_failure(&err) {
            Some(Failure::Transient) => (StatusCode::SERVICE_UNAVAILABLE, "aws_unavailable"),
            Some(Failure::Denied) => (StatusCode::BAD_GATEWAY, "aws_access_denied"),
            _ => (StatusCode::BAD_GATEWAY, "aws_error"),
        };
        ApiError::new(
            status,
            code,
            "a storage or key service call failed; see the service log for this request id",
        )
        .caused_by(
            match aws_call(&err).and_then(|call| call.request_id.as_deref()) {
                Some(id) => format!("{err:#} (AWS request id {id})"),
                None => format!("{err:#}"),
            },
        )
    }
}

impl From<UploadError> for ApiError {
    fn from(err: UploadError) -> ApiError {
        match err {
            UploadError::TooLarge(limit) => ApiError::too_large(limit),
            UploadError::Body(why) => {
                ApiError::bad_request(format!("reading the request body failed: {why}"))
                    .caused_by("the body ended early; nothing stored")
            }
            UploadError::TooSlow(why) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_too_slow", why)
                    .caused_by("the body was too slow; nothing stored")
            }
            UploadError::Integrity(why) => {
                ApiError::new(StatusCode::BAD_REQUEST, "integrity_mismatch", why)
            }
            UploadError::Aws(err) => err.into(),
            UploadError::NotConfirmed(why) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "storage_integrity",
                "S3 did not confirm that it stored the bytes received; nothing was acknowledged, send the file again",
            )
            .caused_by(why),
            // Raw uploads carry no precondition; only outputs do.
            UploadError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, "conflict", why),
        }
    }
}

impl From<RetrievalError> for ApiError {
    fn from(err: RetrievalError) -> ApiError {
        match err {
            RetrievalError::Refused(why) => {
                ApiError::new(StatusCode::FORBIDDEN, "retrieval_refused", why)
            }
            RetrievalError::Upstream(why) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", why)
            }
            RetrievalError::TooLarge(limit) => ApiError::too_large(limit),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "request_id": crate::request_id::current(),
        });
        if let Some(serde_json::Value::Object(extra)) = self.details {
            for (k, v) in extra {
                error[k] = v;
            }
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        // 503 and 429 mean "try again": say when.
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        // A client told to come back later does not keep a connection slot meanwhile.
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause {
                code: self.code,
                cause,
                denied: self.code == "aws_access_denied",
            });
        }
        response
    }
}

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "5";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_says_when_to_retry_and_other_errors_do_not() {
        let busy = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "aws_unavailable", "later")
            .into_response();
        assert_eq!(busy.headers()["retry-after"], RETRY_AFTER_SECS);
        let missing = ApiError::not_found("no such file").into_response();
        assert!(missing.headers().get("retry-after").is_none());
    }

    #[tokio::test]
    async fn an_internal_cause_is_kept_for_the_log_and_not_sent() {
        let err: ApiError = anyhow::anyhow!("s3:GetObject raw/x: secret detail").into();
        assert_eq!(err.code, "aws_error");
        let response = err.into_response();
        let cause = response.extensions().get::<ErrorCause>().unwrap();
        assert!(cause.cause.contains("secret detail"));
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("secret detail"));
    }
}
