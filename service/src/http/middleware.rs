//! What every request passes through: its id, log span and metrics; bearer-token
//! authentication; and errors rewritten into the one JSON shape.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::{ApiError, ErrorCause};
use crate::request_id;

/// Every error answers in the one JSON shape: a handler that panics gets a 500 (not a dropped
/// connection), and axum's own answers (unknown route, wrong method, a query or header it
/// cannot parse) are rewritten from plain text.
pub async fn json_errors(request: Request, next: Next) -> Response {
    use futures_util::FutureExt as _;
    let response = match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("a request handler panicked");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed inside the service; see the service log for this request id",
            )
            .into_response();
        }
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_string(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let mut json = ApiError::new(status, code, message).into_response();
    // Keep what axum said beyond the body (Allow on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

/// Request id, a log span, metrics by method, route and status.
pub(super) async fn observe(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id::from_client_or_new(
        request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
    );
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let mut response = request_id::scope(
        id.clone(),
        tracing::Instrument::instrument(next.run(request), span.clone()),
    )
    .await;
    let status = response.status().as_u16();
    state
        .metrics
        .request(method.as_str(), &route, status, started.elapsed());
    span.in_scope(|| {
        if let Some(error) = response.extensions().get::<ErrorCause>() {
            if error.denied {
                tracing::error!(code = error.code, cause = %error.cause, "AWS denied a call: the deployment's permissions are wrong");
            } else {
                tracing::warn!(code = error.code, cause = %error.cause, "request failed");
            }
        }
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The credentials of a `Bearer` authorization; the scheme's name is case-insensitive
/// (RFC 9110, section 11.1), and spaces may separate it from the token.
fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
}

/// Bearer token on every /v1 route and /metrics when one is configured (compared in
/// constant time, the replaced token too during its overlap: auth.rs).
pub(super) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(tokens) = &state.tokens {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .unwrap_or("");
        if !tokens.accepts(presented) {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "Bearer   t0k"] {
            assert_eq!(bearer_credentials(header), Some("t0k"), "{header}");
        }
        for header in ["Basic t0k", "Bearert0k", "t0k", ""] {
            assert_eq!(bearer_credentials(header), None, "{header}");
        }
    }
}
