//! The HTTP API: small handlers, validation before any AWS call, bodies streamed both ways.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::aws::{AwsClients, AwsResultExt};
use crate::config::Config;
use crate::decrypt::Decryptor;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::names::{self, processed_key, raw_key};
use crate::processing::{FileStatus, Pipeline, State as FileState};
use crate::retrieval::{Fetched, RetrievalError, Retrieved, Upstream, Validators, name_from_url};
use crate::upload::{self, Expected, InFlight, Target, UploadError, metadata_text, metadata_value};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id, for error bodies and logs.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub s3: S3,
    pub kms: aws_sdk_kms::Client,
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    pub in_flight: InFlight,
    pub upstream: Upstream,
    ready: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Wires everything and starts the processing workers and scans.
    pub async fn start(config: Config, clients: &AwsClients) -> Result<AppState> {
        let token = config.validate()?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let in_flight = InFlight::new(config.max_buffered_parts);
        let decryptor = Decryptor::new(
            clients.kms.clone(),
            &config.kms_key_arn,
            config.decrypt_settings(),
        )
        .await?;
        abort_orphaned_uploads(&clients.s3, &config).await;
        let pipeline = Pipeline::start(
            clients.s3.clone(),
            config.clone(),
            decryptor,
            metrics.clone(),
            in_flight.clone(),
        );
        let upstream = Upstream::new(
            &config.upstream_allowed_hosts,
            Duration::from_secs(config.upstream_timeout_secs),
            config.max_object_size,
        );
        let state = AppState(Arc::new(Inner {
            config,
            s3: clients.s3.clone(),
            kms: clients.kms.clone(),
            token,
            metrics,
            pipeline,
            in_flight,
            upstream,
            ready: Mutex::new(None),
        }));
        if !state.config.upstream_poll_urls.is_empty() {
            tokio::spawn(poll_upstream(state.clone()));
        }
        Ok(state)
    }
}

/// Multipart uploads left open by a run that was killed are aborted before this run opens
/// any (they would otherwise be billed until the buckets' one-day lifecycle rule). A failure
/// here is logged, not fatal: the lifecycle rule remains.
async fn abort_orphaned_uploads(s3: &S3, config: &Config) {
    let places = [
        (&config.initial_bucket, names::RAW_PREFIX),
        (&config.final_bucket, names::PROCESSED_PREFIX),
    ];
    for (bucket, prefix) in places {
        match upload::abort_orphans(s3, bucket, prefix).await {
            Ok(0) => {}
            Ok(aborted) => {
                tracing::warn!(
                    bucket,
                    aborted,
                    "aborted multipart uploads a previous run left open"
                )
            }
            Err(err) => {
                tracing::error!(bucket, error = %format!("{err:#}"), "could not list multipart uploads left open; the lifecycle rule removes them within a day")
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/files", get(list_files))
        .route(
            "/v1/files/{*name}",
            get(get_file_or_status)
                .put(put_file)
                .post(reprocess_file)
                .delete(delete_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/retrievals", post(retrieve))
        .route("/v1/info", get(info))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}",
        nanos.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

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
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span.clone()),
        )
        .await;
    let status = response.status().as_u16();
    state
        .metrics
        .request(method.as_str(), &route, status, started.elapsed());
    span.in_scope(|| {
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

/// Bearer token on every /v1 route when one is configured, compared in constant time.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
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

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= x ^ y;
    }
    difference == 0
}

fn check_name(name: &str) -> Result<(), ApiError> {
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

async fn put_file(
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
    let expected = Expected {
        content_md5: header_text(&headers, "content-md5"),
        sha256_base64: header_text(&headers, "x-amz-checksum-sha256"),
    };
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(value) => Some(media_type(value).ok_or_else(|| {
            ApiError::bad_request("Content-Type must be a media type such as text/csv")
        })?),
    };
    let metrics = state.metrics.clone();
    let stream = body
        .into_data_stream()
        .inspect_ok(move |chunk| metrics.bytes_in(chunk.len() as u64));
    let raw = RawUpload {
        expected,
        metadata: HashMap::new(),
        content_type,
    };
    let uploaded = store_raw(&state, &name, stream, raw).await?;
    Ok((StatusCode::CREATED, Json(upload_json(&name, &uploaded))))
}

fn upload_json(name: &str, uploaded: &upload::Uploaded) -> Value {
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

/// A `Content-Type` kept with a file and served with its output: `type/subtype` and
/// parameters, printable ASCII, at most 255 bytes.
fn media_type(value: &HeaderValue) -> Option<String> {
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

/// What comes with a raw file besides its bytes.
struct RawUpload {
    expected: Expected,
    metadata: HashMap<String, String>,
    content_type: Option<String>,
}

/// Streams a body into `raw/<name>` and queues it for processing.
async fn store_raw<S, E>(
    state: &AppState,
    name: &str,
    body: S,
    raw: RawUpload,
) -> Result<upload::Uploaded, ApiError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Send,
    E: std::fmt::Display,
{
    queue_has_room(state)?;
    let target = Target {
        s3: state.s3.clone(),
        bucket: state.config.initial_bucket.clone(),
        key: raw_key(name),
        kms_key_arn: state.config.kms_key_arn.clone(),
        metadata: raw.metadata,
        part_size: state.config.part_size as usize,
        parts_in_flight: state.config.parts_in_flight,
        max_size: state.config.max_object_size,
        idle_timeout: state.config.body_idle_timeout(),
        min_body_rate: state.config.min_body_rate,
        content_type: raw.content_type,
        late_metadata: None,
    };
    let uploaded = upload::upload(&target, body, &raw.expected, &state.in_flight)
        .await
        .map_err(|err| match err {
            UploadError::TooLarge(limit) => ApiError::too_large(limit),
            UploadError::Body(why) => {
                tracing::warn!(name, error = %why, "body ended early; nothing stored");
                ApiError::bad_request(format!("reading the request body failed: {why}"))
            }
            UploadError::TooSlow(why) => {
                tracing::warn!(name, error = %why, "body too slow; nothing stored");
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_too_slow", why)
            }
            UploadError::Integrity(why) => {
                ApiError::new(StatusCode::BAD_REQUEST, "integrity_mismatch", why)
            }
            UploadError::Aws(err) => ApiError::upstream_aws(&err),
        })?;
    state.pipeline.enqueue(name);
    Ok(uploaded)
}

/// Deletes the raw object, the processed output and any failure record. Idempotent: 204
/// whether or not anything existed. In versioned buckets this adds delete markers; old
/// versions expire through the buckets' lifecycle rules.
async fn delete_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    let targets = [
        (&state.config.initial_bucket, raw_key(&name)),
        (&state.config.final_bucket, processed_key(&name)),
        (&state.config.final_bucket, names::failed_key(&name)),
    ];
    for (bucket, key) in targets {
        state
            .s3
            .delete_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .aws_context(format!("s3:DeleteObject {key}"))
            .map_err(|e| ApiError::upstream_aws(&e))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Longest a status request may wait for processing to end.
const MAX_STATUS_WAIT_SECS: u64 = 60;

#[derive(Deserialize)]
struct StatusQuery {
    /// Seconds to wait while the file is pending or processing.
    wait: Option<u64>,
}

async fn get_file_or_status(
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

/// A full processing queue refuses new work (503, nothing stored) rather than accepting files
/// that would wait for the next scan.
fn queue_has_room(state: &AppState) -> Result<(), ApiError> {
    if state.pipeline.has_room() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backlog_full",
        "the processing queue is full (QUEUE_CAPACITY); nothing was stored, retry later",
    ))
}

/// `POST /v1/files/{name}/reprocess`: forgets the file's failure or quarantine and queues it
/// again (202).
async fn reprocess_file(
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
    let found = state
        .pipeline
        .reprocess(name)
        .await
        .map_err(|e| ApiError::upstream_aws(&e))?;
    if !found {
        return Err(ApiError::not_found(format!("no file named `{name}`")));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"name": name, "state": "pending"})),
    ))
}

async fn file_status(state: &AppState, name: &str, wait: Duration) -> Result<FileStatus, ApiError> {
    state
        .pipeline
        .wait_for_status(name, wait)
        .await
        .map_err(|e| ApiError::upstream_aws(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no file named `{name}`")))
}

/// What a GET of a processed file answers: the output, or 304 for a client whose copy is
/// the current output.
enum Served {
    Output(Box<GetObjectOutput>),
    NotModified {
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

fn http_date(time: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<String> {
    time.and_then(|t| t.fmt(aws_sdk_s3::primitives::DateTimeFormat::HttpDate).ok())
}

async fn download(state: &AppState, name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let object = match current_output(state, name, headers).await? {
        Served::Output(object) => *object,
        Served::NotModified {
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
            return response.body(Body::empty()).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            });
        }
    };
    let content_type = object
        .content_type()
        .unwrap_or("application/octet-stream")
        .to_string();
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // A browser must not guess a different type from the content (e.g. HTML).
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(date) = http_date(object.last_modified()) {
        response = response.header(header::LAST_MODIFIED, date);
    }
    if let Some(length) = object.content_length() {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    if let Some(etag) = object.e_tag() {
        response = response.header(header::ETAG, etag);
    }
    let status_code = match object.content_range() {
        Some(range) => {
            response = response.header(header::CONTENT_RANGE, range);
            StatusCode::PARTIAL_CONTENT
        }
        None => StatusCode::OK,
    };
    let metrics = state.metrics.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(
        object.body.into_async_read(),
        crate::processing::STREAM_CHUNK,
    )
    .inspect_ok(move |chunk| metrics.bytes_out(chunk.len() as u64));
    response
        .status(status_code)
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// The processed output of `name`, if it was made from the current raw version. The output
/// and the raw object's identity are fetched together (one round trip, not a status lookup
/// and then a GET). `If-None-Match` and `If-Modified-Since` go to S3, which compares them;
/// a 304 is only passed on for the current version's output. Otherwise: 404 for an unknown
/// file, 409 with its status, or 416.
async fn current_output(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
) -> Result<Served, ApiError> {
    let mut request = state
        .s3
        .get_object()
        .bucket(&state.config.final_bucket)
        .key(processed_key(name));
    if let Some(range) = header_text(headers, "range") {
        request = request.range(range);
    }
    if let Some(etags) = header_text(headers, "if-none-match") {
        request = request.if_none_match(etags);
    }
    // An unparsable date is ignored, as HTTP says.
    if let Some(since) = header_text(headers, "if-modified-since").and_then(|text| {
        aws_sdk_s3::primitives::DateTime::from_str(
            &text,
            aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
        )
        .ok()
    }) {
        request = request.if_modified_since(since);
    }
    let (raw, object) = tokio::join!(state.pipeline.head_raw(name), request.send());
    let raw = raw
        .map_err(|e| ApiError::upstream_aws(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no file named `{name}`")))?;
    let invalid_range = match object {
        Ok(object) if raw.made(object.metadata()) => return Ok(Served::Output(Box::new(object))),
        Err(err) if err.raw_response().map(|r| r.status().as_u16()) == Some(304) => {
            // The client's copy is S3's current object; is that the current version's output?
            let head = state
                .s3
                .head_object()
                .bucket(&state.config.final_bucket)
                .key(processed_key(name))
                .send()
                .await
                .aws_context(format!("s3:HeadObject {}", processed_key(name)))
                .map_err(|e| ApiError::upstream_aws(&e))?;
            if raw.made(head.metadata()) {
                return Ok(Served::NotModified {
                    etag: head.e_tag().map(str::to_string),
                    last_modified: http_date(head.last_modified()),
                });
            }
            false
        }
        Ok(_) => false,
        Err(err) if err.code() == Some("NoSuchKey") => false,
        Err(err) if err.code() == Some("InvalidRange") => true,
        Err(err) => {
            return Err(ApiError::upstream_aws(
                &Err::<(), _>(err)
                    .aws_context(format!("s3:GetObject {}", processed_key(name)))
                    .unwrap_err(),
            ));
        }
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

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<i32>,
    cursor: Option<String>,
}

async fn list_files(
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
    let page = state
        .s3
        .list_objects_v2()
        .bucket(&state.config.initial_bucket)
        .prefix(raw_key(&prefix))
        .max_keys(limit)
        .set_continuation_token(query.cursor)
        .send()
        .await
        .aws_context("s3:ListObjectsV2")
        .map_err(|e| ApiError::upstream_aws(&e))?;
    let files: Vec<Value> = page
        .contents()
        .iter()
        .filter_map(|object| {
            let name = object.key()?.strip_prefix(names::RAW_PREFIX)?;
            Some(json!({
                "name": name,
                "size": object.size(),
                "etag": object.e_tag().map(|e| e.trim_matches('"')),
                "last_modified": object.last_modified().and_then(|t| t.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime).ok()),
            }))
        })
        .collect();
    Ok(Json(json!({
        "files": files,
        "next_cursor": page.next_continuation_token(),
    })))
}

#[derive(Deserialize)]
struct RetrievalRequest {
    url: String,
    name: Option<String>,
}

async fn retrieve(
    State(state): State<AppState>,
    Json(request): Json<RetrievalRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = match request.name {
        Some(name) => name,
        None => name_from_url(&request.url)
            .ok_or_else(|| ApiError::bad_request("no name given and the URL's path has none"))?,
    };
    check_name(&name)?;
    let (uploaded, url) =
        match retrieve_into(&state, &request.url, &name, &Validators::default()).await? {
            Some(done) => done,
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "unexpected 304 from upstream",
                ));
            }
        };
    let mut body = upload_json(&name, &uploaded);
    body["source_url"] = json!(url);
    Ok((StatusCode::CREATED, Json(body)))
}

/// Fetches `url` and stores it raw as `name`; `None` when the upstream says not modified.
async fn retrieve_into(
    state: &AppState,
    url: &str,
    name: &str,
    validators: &Validators,
) -> Result<Option<(upload::Uploaded, String)>, ApiError> {
    let fetched = state
        .upstream
        .fetch(url, validators)
        .await
        .map_err(|err| match err {
            RetrievalError::Refused(why) => {
                ApiError::new(StatusCode::FORBIDDEN, "retrieval_refused", why)
            }
            RetrievalError::Upstream(why) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", why)
            }
            RetrievalError::TooLarge(limit) => ApiError::too_large(limit),
        })?;
    let Fetched::Body(retrieved) = fetched else {
        return Ok(None);
    };
    let Retrieved {
        response,
        validators,
        url,
    } = *retrieved;
    let mut metadata = HashMap::from([("source-url".to_string(), metadata_value(url.as_str()))]);
    if let Some(etag) = &validators.etag {
        metadata.insert("upstream-etag".into(), metadata_value(etag));
    }
    if let Some(date) = &validators.last_modified {
        metadata.insert("upstream-last-modified".into(), metadata_value(date));
    }
    // An upstream's malformed Content-Type is not the caller's fault: it is dropped.
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(media_type);
    let metrics = state.metrics.clone();
    let stream = response
        .bytes_stream()
        .inspect_ok(move |chunk| metrics.bytes_in(chunk.len() as u64));
    let raw = RawUpload {
        expected: Expected::default(),
        metadata,
        content_type,
    };
    let uploaded = store_raw(state, name, stream, raw).await?;
    Ok(Some((uploaded, url.to_string())))
}

/// Polls UPSTREAM_POLL_URLS with conditional GETs; stores a new raw object only when the
/// upstream reports new content (validators are kept in the raw object's metadata).
async fn poll_upstream(state: AppState) {
    let mut ticker = tokio::time::interval(Duration::from_secs(
        state.config.upstream_poll_interval_secs.max(1),
    ));
    loop {
        ticker.tick().await;
        for url in state.config.upstream_poll_urls.clone() {
            if let Err(err) = poll_once(&state, &url).await {
                tracing::warn!(url, error = %err.message, "scheduled retrieval failed");
            }
        }
    }
}

/// One conditional retrieval of `url`; returns whether a new raw object was stored.
pub async fn poll_once(state: &AppState, url: &str) -> Result<bool, ApiError> {
    let name = name_from_url(url)
        .ok_or_else(|| ApiError::bad_request(format!("{url} has no file name")))?;
    check_name(&name)?;
    let previous = state
        .s3
        .head_object()
        .bucket(&state.config.initial_bucket)
        .key(raw_key(&name))
        .send()
        .await
        .ok()
        .and_then(|head| head.metadata().cloned())
        .unwrap_or_default();
    let validators = Validators {
        etag: previous.get("upstream-etag").map(|v| metadata_text(v)),
        last_modified: previous
            .get("upstream-last-modified")
            .map(|v| metadata_text(v)),
    };
    Ok(retrieve_into(state, url, &name, &validators)
        .await?
        .is_some())
}

async fn info(State(state): State<AppState>) -> Json<Value> {
    let config = &state.config;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "processor": config.processor.name(),
        "part_size": config.part_size,
        "parts_in_flight": config.parts_in_flight,
        "max_buffered_parts": config.max_buffered_parts,
        "max_object_size": config.max_object_size,
        "initial_bucket": config.initial_bucket,
        "final_bucket": config.final_bucket,
        "kms_key_arn": config.kms_key_arn,
        "region": config.region,
        "require_encrypted_input": config.require_encrypted_input,
    }))
}

/// Both buckets and the key reachable; cached for a few seconds so probes cost little.
async fn readyz(State(state): State<AppState>) -> Response {
    const TTL: Duration = Duration::from_secs(5);
    let cached = state
        .ready
        .lock()
        .unwrap()
        .as_ref()
        .filter(|(at, _)| at.elapsed() < TTL)
        .map(|(_, result)| result.clone());
    let result = match cached {
        Some(result) => result,
        None => {
            let result = check_ready(&state).await.map_err(|e| format!("{e:#}"));
            *state.ready.lock().unwrap() = Some((Instant::now(), result.clone()));
            result
        }
    };
    match result {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "error": error})),
        )
            .into_response(),
    }
}

async fn check_ready(state: &AppState) -> Result<()> {
    for bucket in [&state.config.initial_bucket, &state.config.final_bucket] {
        state
            .s3
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .aws_context(format!("s3:HeadBucket {bucket}"))?;
    }
    state
        .kms
        .describe_key()
        .key_id(&state.config.kms_key_arn)
        .send()
        .await
        .aws_context("kms:DescribeKey")?;
    Ok(())
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
