//! `POST /v1/retrievals` and the scheduled polls of UPSTREAM_POLL_URLS: the service fetches
//! a file from an allowed upstream and stores it raw, like a PUT.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::files::{check_name, media_type, store_raw, upload_json};
use crate::error::ApiError;
use crate::retrieval::{Fetched, Retrieved, Validators, name_from_url};
use crate::store::RawUpload;
use crate::upload::{Expected, Uploaded};

#[derive(Deserialize)]
pub(super) struct RetrievalRequest {
    url: String,
    name: Option<String>,
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    Json(request): Json<RetrievalRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = match request.name {
        Some(name) => name,
        None => name_from_url(&request.url)
            .ok_or_else(|| ApiError::bad_request("no name given and the URL's path has none"))?,
    };
    check_name(&name)?;
    let Some((uploaded, url)) =
        retrieve_into(&state, &request.url, &name, &Validators::default()).await?
    else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "unexpected 304 from upstream",
        ));
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
) -> Result<Option<(Uploaded, String)>, ApiError> {
    let Fetched::Body(retrieved) = state.upstream.fetch(url, validators).await? else {
        return Ok(None);
    };
    let Retrieved {
        response,
        validators,
        url,
    } = *retrieved;
    // An upstream's malformed Content-Type is not the caller's fault: it is dropped.
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(media_type);
    let raw = RawUpload {
        expected: Expected::default(),
        content_type,
        source_url: Some(url.to_string()),
        upstream: validators,
    };
    let uploaded = store_raw(state, name, response.bytes_stream(), raw).await?;
    Ok(Some((uploaded, url.to_string())))
}

/// Polls UPSTREAM_POLL_URLS with conditional GETs; stores a new raw object only when the
/// upstream reports new content (validators are kept in the raw object's metadata).
pub(super) async fn poll_upstream(state: AppState) {
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
    let validators = state.store.upstream_validators(&name).await;
    Ok(retrieve_into(state, url, &name, &validators)
        .await?
        .is_some())
}
