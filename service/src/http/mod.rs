//! The HTTP API: the router and the state the handlers share. Handlers validate before any
//! AWS call, stream bodies both ways, and reach S3 only through the store.

mod files;
mod middleware;
mod ops;
mod retrievals;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::auth::Tokens;
use crate::config::Config;
use crate::decrypt::Decryptor;
use crate::metrics::Metrics;
use crate::processing::Pipeline;
use crate::queue::WorkQueue;
use crate::retrieval::Upstream;
use crate::store::Store;
use crate::upload::InFlight;
use aws_clients::AwsClients;

pub use middleware::json_errors;
pub use retrievals::poll_once;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    /// The bearer tokens `/v1` and `/metrics` require; `None` only where validate allowed it.
    pub tokens: Option<Arc<Tokens>>,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    pub upstream: Upstream,
    /// The last readiness check and when it ran.
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
        let tokens = config.validate()?.map(Arc::new);
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(&config.instance_id));
        let decryptor = Decryptor::new(
            clients.kms.clone(),
            &config.kms_key_arn,
            config.decrypt_settings(),
        )
        .await?;
        // Two views of the buckets, sharing the part budget and the open uploads: API
        // requests give up on S3 within INTERACTIVE_TIMEOUT_SECS, which a client waits for;
        // background processing keeps the longer S3_ATTEMPT_TIMEOUT_SECS budget.
        let in_flight = InFlight::new(config.max_buffered_parts);
        let background = Arc::new(Store::new(clients, config.clone(), in_flight.clone()));
        let store = Arc::new(Store::new(
            &clients.clone().with_s3_timeouts(
                Duration::from_secs(config.s3_attempt_timeout_secs),
                Duration::from_secs(
                    config
                        .interactive_timeout_secs
                        .min(3 * config.s3_attempt_timeout_secs),
                ),
            ),
            config.clone(),
            in_flight,
        ));
        background
            .abort_orphaned_uploads(config.orphan_upload_age())
            .await;
        let shared = match &config.queue_url {
            Some(url) => Some(Arc::new(
                WorkQueue::connect(clients.sqs.clone(), url)
                    .await
                    .context("QUEUE_URL")?,
            )),
            None => None,
        };
        let pipeline = Pipeline::start(
            background,
            store.clone(),
            config.clone(),
            decryptor,
            metrics.clone(),
            shared,
        );
        let upstream = Upstream::new(
            &config.upstream_allowed_hosts,
            Duration::from_secs(config.upstream_timeout_secs),
            config.max_object_size,
        );
        let state = AppState(Arc::new(Inner {
            config,
            store,
            tokens,
            metrics,
            pipeline,
            upstream,
            ready: Mutex::new(None),
        }));
        if !state.config.upstream_poll_urls.is_empty() {
            tokio::spawn(retrievals::poll_upstream(state.clone()));
        }
        Ok(state)
    }

    /// The multipart uploads not yet completed, for shutdown.
    pub fn in_flight(&self) -> &InFlight {
        self.store.in_flight()
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/files", get(files::list))
        .route(
            "/v1/files/{*name}",
            get(files::get_file_or_status)
                .put(files::put)
                .post(files::reprocess)
                .delete(files::delete)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/retrievals", post(retrievals::retrieve))
        .route("/v1/info", get(ops::info))
        // Metrics tell who does how much: behind the token too.
        .route("/metrics", get(ops::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_token,
        ));
    // Open: liveness, and readiness, which says only whether the buckets and the key answer
    // (load balancers and `cargo xtask smoke` ask before they hold a token).
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ops::readyz))
        .merge(v1)
        .layer(axum::middleware::from_fn(middleware::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .with_state(state)
}
