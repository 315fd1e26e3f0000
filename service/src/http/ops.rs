//! Routes for operators: liveness, readiness, metrics and what this instance runs with.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;

pub(super) async fn info(State(state): State<AppState>) -> Json<Value> {
    let config = &state.config;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "processor": config.processor.name(),
        "part_size": config.part_size,
        "parts_in_flight": config.parts_in_flight,
        "max_buffered_parts": config.max_buffered_parts,
        "max_object_size": config.max_object_size,
        "decryption_memory_budget": config.decryption_memory_budget(),
        "initial_bucket": config.initial_bucket,
        "final_bucket": config.final_bucket,
        "kms_key_arn": config.kms_key_arn,
        "region": config.region,
        "require_encrypted_input": config.require_encrypted_input,
    }))
}

/// Both buckets and the key reachable; cached for a few seconds so probes cost little.
/// How long a readiness check waits for S3 and KMS.
const READY_TIMEOUT: Duration = Duration::from_secs(4);

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
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
            // A load balancer's health check waits seconds, not an S3 call's retries.
            let result = match tokio::time::timeout(READY_TIMEOUT, state.store.check_ready()).await
            {
                Ok(checked) => checked.map_err(|e| format!("{e:#}")),
                Err(_) => Err(format!(
                    "s3:HeadBucket of both buckets and kms:DescribeKey did not all answer within {} s",
                    READY_TIMEOUT.as_secs()
                )),
            };
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

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
