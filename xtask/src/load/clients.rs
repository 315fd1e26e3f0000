//! The clients of a side: loops that upload for a bounded time, straight into the emulator
//! (the baseline) or through the instances, and what they measured.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::future::join_all;
use serde::Serialize;

use crate::measuring::percentile;
use crate::measuring::servers;

/// What one side (baseline or service) of a case measured.
#[derive(Serialize, Debug, Default)]
pub(super) struct Side {
    pub(super) requests: usize,
    /// 503 back-pressure answers (processing queue full), waited out as `Retry-After` asks.
    pub(super) refused: usize,
    /// Anything else that was not a success.
    pub(super) errors: usize,
    /// Acknowledged bytes per second over the whole side, its last requests included.
    pub(super) mib_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
}

/// The instances of a case, as deployed: HTTPS with one certificate they share (pinned by
/// the clients), a bearer token, and the case's queue.
pub(super) struct Front {
    pub(super) instances: Vec<servers::Owned>,
    pub(super) urls: Vec<String>,
    pub(super) http: reqwest::Client,
    pub(super) token: String,
    pub(super) idle_rss: Vec<u64>,
}

/// How one request went.
enum Attempt<T> {
    Done(T),
    /// 503 with `Retry-After`: the service's back-pressure (its processing queue is full).
    /// The client waits as asked (at most 2 s, so a case stays bounded) and goes on.
    Refused(Duration),
    Failed,
}

/// Most a client waits after a 503, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs `clients` loops of `one` until `duration` has passed (each finishes its request in
/// flight); returns the side's figures and what the successful requests returned.
async fn clients_for<F, Fut, T>(
    clients: usize,
    bytes: usize,
    duration: Duration,
    one: F,
) -> (Side, Vec<T>)
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let started = Instant::now();
    let loops = (0..clients).map(|client| {
        let one = &one;
        async move {
            let (mut latencies, mut done, mut refused, mut failed) = (Vec::new(), Vec::new(), 0, 0);
            let mut seq = 0;
            while started.elapsed() < duration {
                let sent = Instant::now();
                match one(client, seq).await {
                    Attempt::Done(result) => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        done.push(result);
                    }
                    Attempt::Refused(wait) => {
                        refused += 1;
                        tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
                    }
                    Attempt::Failed => failed += 1,
                }
                seq += 1;
            }
            (latencies, done, refused, failed)
        }
    });
    let finished = join_all(loops).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut side = Side::default();
    let mut latencies = Vec::new();
    let mut results = Vec::new();
    for (l, done, refused, failed) in finished {
        latencies.extend(l);
        results.extend(done);
        side.refused += refused;
        side.errors += failed;
    }
    side.requests = latencies.len() + side.refused + side.errors;
    side.mib_per_s = (latencies.len() * bytes) as f64 / 1048576.0 / elapsed;
    side.p50_ms = percentile(&latencies, 50.0);
    side.p99_ms = percentile(&latencies, 99.0);
    (side, results)
}

/// The same bytes straight into the emulator: one PutObject each, SSE-KMS as the service
/// asks for it.
pub(super) async fn baseline(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    clients: usize,
    body: Bytes,
    duration: Duration,
) -> Side {
    let bytes = body.len();
    let (side, _) = clients_for(clients, bytes, duration, |client, seq| {
        let body = body.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(format!("baseline/{client}-{seq}"))
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_or(Attempt::Failed, |_| Attempt::Done(()))
        }
    })
    .await;
    side
}

/// Uploads through the instances (client n to instance n modulo their number), over HTTPS
/// with the token; returns the figures, the acknowledged names and the distinct kinds of
/// error seen.
pub(super) async fn through_service(
    front: &Front,
    clients: usize,
    body: Bytes,
    duration: Duration,
) -> Result<(Side, Vec<String>, Vec<String>)> {
    let kinds = std::sync::Mutex::new(BTreeSet::new());
    let bytes = body.len();
    let (side, names) = clients_for(clients, bytes, duration, |client, seq| {
        let (http, body, kinds) = (&front.http, body.clone(), &kinds);
        let url = &front.urls[client % front.urls.len()];
        async move {
            let name = format!("load/{client}-{seq}");
            let outcome = http
                .put(format!("{url}/v1/files/{name}"))
                .bearer_auth(&front.token)
                .body(body)
                .send()
                .await;
            let kind = match outcome {
                Ok(response) if response.status().as_u16() == 201 => return Attempt::Done(name),
                Ok(response) if response.status().as_u16() == 503 => {
                    if let Some(wait) = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                    {
                        return Attempt::Refused(Duration::from_secs(wait));
                    }
                    "HTTP 503 without Retry-After".to_string()
                }
                Ok(response) => format!("HTTP {}", response.status().as_u16()),
                Err(err) if err.is_timeout() => "client timeout".to_string(),
                Err(err) => format!("transport: {err}"),
            };
            kinds.lock().unwrap().insert(kind);
            Attempt::Failed
        }
    })
    .await;
    let kinds = kinds.into_inner().unwrap().into_iter().collect();
    Ok((side, names, kinds))
}
