//! `/v1/files`: upload, download, status, reprocess, delete and list.
//!
//! Longer than 400 lines: only with its test; the handlers of one route family stay together.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::names;
use base64::Engine as _;

use crate::processing::processors::STREAM_CHUNK;
use crate::processing::{FileStatus, Reprocessed, State as FileState, TooManyWaiters, TooSoon};
use crate::store::{Conditions, CurrentOutput, RawUpload};
use crate::upload::{Expected, Uploaded};

/// Longest a status request may wait for processing to end.
const MAX_STATUS_WAIT_SECS: u64 = 60;

/// Every name is checked before any AWS call.
pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    names::validate(name).map_err(ApiError::bad_request)?;
    if name == "status" || name.ends_with("/status") {
        return Err(ApiError::bad_request(
            "a name's last segment must not be `status` (GET /v1/files/{name}/status is the status route)",
        ));
    }
    Ok(())
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A `Content-Type` kept with a file and served with its output: `type/subtype` and
/// parameters, printable ASCII, at most 255 bytes.
pub(super) fn media_type(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let essence = text.split(';').next()?.trim();
    let valid_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let (kind, subtype) = essence.split_once('/')?;
    (text.len() <= 255 && valid_token(kind) && valid_token(subtype)).then(|| text.to_string())
}

/// A full processing queue refuses new work (503, nothing stored) rather than accepting files
/// that would wait for the next scan.
pub(super) fn queue_has_room(state: &AppState) -> Result<(), ApiError> {
    if state.pipeline.has_room() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backlog_full",
        "the processing queue is full (QUEUE_CAPACITY); nothing was stored, retry later",
    ))
}

/// Streams a body into the store as `name`'s raw file and queues it for processing.
pub(super) async fn store_raw<S, E>(
    state: &AppState,
    name: &str,
    body: S,
    raw: RawUpload,
) -> Result<Uploaded, ApiError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Send,
    E: std::fmt::Display,
{
    queue_has_room(state)?;
    let metrics = state.metrics.clone();
    let body = body.inspect_ok(move |chunk| metrics.bytes_in(chunk.len() as u64));
    let uploaded = state.store.put_raw(name, body, raw).await?;
    state.pipeline.accepted(name);
    Ok(uploaded)
}

pub(super) fn upload_json(name: &str, uploaded: &Uploaded) -> Value {
    json!({
        "name": name,
        "size": uploaded.size,
        "sha256": uploaded.sha256,
        "etag": uploaded.etag.trim_matches('"'),
        "version_id": uploaded.version_id,
        "sse": uploaded.sse,
        "kms_key_id": uploaded.kms_key_id,
        "parts": uploaded.parts,
    })
}

/// `PUT /v1/files/{name}`.
pub(super) async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name(&name)?;
    let limit = state.config.max_object_size;
    if let Some(length) =
        header_text(&headers, "content-length").and_then(|v| v.parse::<u64>().ok())
        && length > limit
    {
        return Err(ApiError::too_large(limit));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(value) => Some(media_type(value).ok_or_else(|| {
            ApiError::bad_request("Content-Type must be a media type such as text/csv")
        })?),
    };
    let raw = RawUpload {
        expected: Expected {
            content_md5: header_text(&headers, "content-md5"),
            sha256_base64: header_text(&headers, "x-amz-checksum-sha256"),
        },
        content_type,
        source_url: None,
        upstream: Default::default(),
    };
    let uploaded = store_raw(&state, &name, body.into_data_stream(), raw).await?;
    Ok((StatusCode::CREATED, Json(upload_json(&name, &uploaded))))
}

/// `DELETE /v1/files/{name}`: the raw object, the output and any failure record.
/// Idempotent: 204 whether or not anything existed.
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    state.store.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct StatusQuery {
    /// Seconds to wait while the file is pending or processing.
    wait: Option<u64>,
}

/// `GET /v1/files/{name}` and `GET /v1/files/{name}/status`.
pub(super) async fn get_file_or_status(
    State(state): State<AppState>,
    Path(path): Path<String>,
    Query(query): Query<StatusQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(name) = path.strip_suffix("/status") {
        check_name(name)?;
        let wait = match query.wait {
            Some(secs) if secs > MAX_STATUS_WAIT_SECS => {
                return Err(ApiError::bad_request(format!(
                    "wait must be at most {MAX_STATUS_WAIT_SECS} seconds"
                )));
            }
            secs => Duration::from_secs(secs.unwrap_or(0)),
        };
        let status = file_status(&state, name, wait).await?;
        return Ok(Json(status).into_response());
    }
    check_name(&path)?;
    if query.wait.is_some() {
        return Err(ApiError::bad_request(
            "`wait` applies to GET /v1/files/{name}/status only",
        ));
    }
    download(&state, &path, &headers).await
}

/// `POST /v1/files/{name}/reprocess`: forgets the file's failure or quarantine and queues it
/// again (202, `queued: true`); a file processed, or queued or processing here, is left alone
/// (202 with its state, `queued: false`); 429 within 5 s of the last request for the file.
pub(super) async fn reprocess(
    State(state): State<AppState>,
    Path(path): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(name) = path.strip_suffix("/reprocess") else {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST applies to /v1/files/{name}/reprocess only",
        ));
    };
    check_name(name)?;
    queue_has_room(&state)?;
    let (state, queued) = match state.pipeline.reprocess(name).await {
        Ok(Reprocessed::Unknown) => {
            return Err(ApiError::not_found(format!("no file named `{name}`")));
        }
        Ok(Reprocessed::Queued) => (FileState::Pending, true),
        Ok(Reprocessed::Already(state)) => (state, false),
        Err(err) if err.is::<TooSoon>() => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_soon",
                err.to_string(),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"name": name, "state": state, "queued": queued})),
    ))
}

async fn file_status(state: &AppState, name: &str, wait: Duration) -> Result<FileStatus, ApiError> {
    match state.pipeline.wait_for_status(name, wait).await {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(ApiError::not_found(format!("no file named `{name}`"))),
        Err(err) if err.is::<TooManyWaiters>() => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_waiters",
            err.to_string(),
        )),
        Err(err) => Err(err.into()),
    }
}

/// The output of `name`'s current raw version, streamed; 304 for a client whose copy is
/// current. Otherwise: 404 for an unknown file, 409 with its status, or 416.
async fn download(state: &AppState, name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let conditions = Conditions {
        range: header_text(headers, "range"),
        if_none_match: header_text(headers, "if-none-match"),
        if_modified_since: header_text(headers, "if-modified-since"),
    };
    let invalid_range = match state.store.current_output(name, &conditions).await? {
        CurrentOutput::Found(output) => return Ok(serve_output(state, *output)),
        CurrentOutput::NotModified {
            etag,
            last_modified,
        } => {
            let mut response = Response::builder().status(StatusCode::NOT_MODIFIED);
            if let Some(etag) = etag {
                response = response.header(header::ETAG, etag);
            }
            if let Some(date) = last_modified {
                response = response.header(header::LAST_MODIFIED, date);
            }
            return response.body(Body::empty()).map_err(internal);
        }
        CurrentOutput::UnknownFile => {
            return Err(ApiError::not_found(format!("no file named `{name}`")));
        }
        CurrentOutput::NotCurrent => false,
        CurrentOutput::InvalidRange => true,
    };
    // Not served: the status says why (and catches a file processed a moment ago).
    let status = file_status(state, name, Duration::ZERO).await?;
    if status.state == FileState::Processed && invalid_range {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalid_range",
            "the requested range is outside the file",
        ));
    }
    if status.state == FileState::Processed {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "processed_meanwhile",
            format!("`{name}` was processed while it was being read; retry"),
        ));
    }
    let state_name = serde_json::to_value(status.state).unwrap_or(Value::Null);
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "not_processed",
        format!(
            "`{name}` is not processed yet (state: {})",
            state_name.as_str().unwrap_or("?")
        ),
    )
    .with_details(json!({"status": status})))
}

fn internal(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        err.to_string(),
    )
}

fn serve_output(state: &AppState, output: crate::store::Output) -> Response {
    let mut response = Response::builder()
        .header(
            header::CONTENT_TYPE,
            output
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        )
        // A browser must not guess a different type from the content (e.g. HTML).
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(date) = output.last_modified {
        response = response.header(header::LAST_MODIFIED, date);
    }
    if let Some(length) = output.content_length {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    if let Some(etag) = output.etag {
        response = response.header(header::ETAG, etag);
    }
    let status = match output.content_range {
        Some(range) => {
            response = response.header(header::CONTENT_RANGE, range);
            StatusCode::PARTIAL_CONTENT
        }
        None => StatusCode::OK,
    };
    let metrics = state.metrics.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(output.body, STREAM_CHUNK)
        .inspect_ok(move |chunk| metrics.bytes_out(chunk.len() as u64));
    response
        .status(status)
        .body(Body::from_stream(body))
        .unwrap_or_else(|err| internal(err).into_response())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    prefix: Option<String>,
    limit: Option<i32>,
    cursor: Option<String>,
}

/// `GET /v1/files?prefix=&limit=&cursor=`.
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 1000"));
    }
    let prefix = query.prefix.unwrap_or_default();
    if prefix.chars().any(char::is_control) || prefix.len() > 512 {
        return Err(ApiError::bad_request(
            "prefix must be at most 512 bytes without control characters",
        ));
    }
    let after = match &query.cursor {
        Some(cursor) => Some(cursor_name(cursor, &prefix)?),
        None => None,
    };
    let page = state.store.list(&prefix, limit, after.as_deref()).await?;
    Ok(Json(json!({
        "files": page.files,
        "next_cursor": page.last.as_deref().map(cursor_of),
    })))
}

/// A listing's cursor: the last name of its page, base64url-encoded. The listing goes on
/// after it, so a cursor is checked here, at once, without asking S3.
fn cursor_of(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

/// The name a cursor goes on after; 400 for a cursor this service did not give for `prefix`.
fn cursor_name(cursor: &str, prefix: &str) -> Result<String, ApiError> {
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::bad_request("cursor is malformed: pass next_cursor as it came"))?;
    if !name.starts_with(prefix) || check_name(&name).is_err() {
        return Err(ApiError::bad_request(
            "cursor does not belong to this prefix: pass next_cursor with the prefix it came with",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_goes_on_after_its_name_within_its_prefix_only() {
        let cursor = cursor_of("reports/2026/b.csv");
        assert_eq!(
            cursor_name(&cursor, "reports/").unwrap(),
            "reports/2026/b.csv"
        );
        assert_eq!(cursor_name(&cursor, "").unwrap(), "reports/2026/b.csv");
        for (cursor, prefix) in [
            (cursor.as_str(), "other/"),
            ("not base64!", ""),
            ("_w", ""),
            ("", ""),
        ] {
            let err = cursor_name(cursor, prefix).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{cursor:?} {prefix:?}");
        }
    }
}
