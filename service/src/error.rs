//! API errors: one JSON shape, `{"error": {"code", "message", "request_id"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::aws::Failure;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the error object (e.g. a processing status).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
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

    /// An AWS failure, classified by the SDK's error kind and code: throttling and
    /// unavailability are 503 (retry later); a denial is a deployment error, said loudly;
    /// the rest 502.
    pub fn upstream_aws(err: &anyhow::Error) -> ApiError {
        let text = format!("{err:#}");
        let (status, code) = match crate::aws::aws_failure(err) {
            Some(Failure::Transient) => (StatusCode::SERVICE_UNAVAILABLE, "aws_unavailable"),
            Some(Failure::Denied) => {
                tracing::error!(error = %text, "AWS denied a call: the deployment's permissions are wrong");
                (StatusCode::BAD_GATEWAY, "aws_access_denied")
            }
            _ => (StatusCode::BAD_GATEWAY, "aws_error"),
        };
        tracing::warn!(error = %text, "AWS call failed");
        ApiError::new(
            status,
            code,
            "a storage or key service call failed; see the service log for this request id",
        )
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "request_id": crate::app::request_id(),
        });
        if let Some(serde_json::Value::Object(extra)) = self.details {
            for (k, v) in extra {
                error[k] = v;
            }
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        // 503 means "try again": say when.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
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
}
