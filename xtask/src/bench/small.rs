//! Many small objects: concurrent clients each take the next object and carry it through the
//! whole pipeline — upload, processed, download — three ways.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use aws_clients::AwsResultExt;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::Bytes;
use futures_util::future::try_join_all;

use super::Setup;
use super::report::{Metric, Percentiles, Variant, percentiles};

pub struct Objects {
    /// Where the payloads are, one file each, for boto3.
    pub dir: std::path::PathBuf,
    pub payloads: Vec<Bytes>,
}

pub async fn run(
    setup: &Setup,
    objects: &Objects,
    clients: usize,
    target_a_over_b: f64,
) -> Result<Metric> {
    let count = objects.payloads.len();
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut latencies: [Vec<f64>; 3] = Default::default();
    for rep in 0..setup.repetitions {
        for (slot, variant) in Variant::ALL.into_iter().enumerate() {
            let prefix = format!("small-{}-{rep}-", variant.letter());
            let (seconds, mut times) = match variant {
                Variant::Service => {
                    with_clients(count, clients, |i| {
                        service_one(setup, format!("{prefix}{i}"), objects.payloads[i].clone())
                    })
                    .await?
                }
                Variant::Sdk => {
                    with_clients(count, clients, |i| {
                        sdk_one(setup, format!("{prefix}{i}"), objects.payloads[i].clone())
                    })
                    .await?
                }
                Variant::Boto3 => {
                    let result = setup.boto3(&[
                        "small".to_string(),
                        format!("--bucket={}", setup.initial),
                        format!("--final-bucket={}", setup.final_),
                        format!("--prefix={prefix}"),
                        format!("--concurrency={clients}"),
                        format!("--dir={}", objects.dir.display()),
                    ])?;
                    (result.seconds, result.latencies_ms)
                }
            };
            ensure!(
                times.len() == count,
                "{}: {} of {count} objects reported",
                variant.label(),
                times.len()
            );
            setup.clear_buckets().await?;
            let rate = count as f64 / seconds;
            eprintln!(
                "    rep {}/{} {}: {rate:.0} objects/s",
                rep + 1,
                setup.repetitions,
                variant.label()
            );
            rates[slot].push(rate);
            latencies[slot].append(&mut times);
        }
    }
    let latency_ms: [Percentiles; 3] = [
        percentiles(&latencies[0]),
        percentiles(&latencies[1]),
        percentiles(&latencies[2]),
    ];
    let mut metric = Metric::new("end to end", "objects/s", rates);
    metric.latency_ms = Some(latency_ms);
    Ok(metric.with_target_a_over_b(target_a_over_b))
}

/// `clients` concurrent loops, each taking the next object index until all are done.
/// Returns the wall time and every object's latency in milliseconds.
async fn with_clients<F, Fut>(count: usize, clients: usize, one: F) -> Result<(f64, Vec<f64>)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<f64>>,
{
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let loops = (0..clients).map(|_| async {
        let mut latencies = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= count {
                return Ok::<_, anyhow::Error>(latencies);
            }
            latencies.push(one(index).await?);
        }
    });
    let latencies = try_join_all(loops).await?.concat();
    Ok((started.elapsed().as_secs_f64(), latencies))
}

/// PUT, wait until processed (the latency), GET and compare.
async fn service_one(setup: &Setup, name: String, body: Bytes) -> Result<f64> {
    let started = Instant::now();
    let response = setup
        .http
        .put(setup.file_url(&name))
        .body(body.clone())
        .send()
        .await
        .with_context(|| format!("PUT {name} to the service"))?;
    ensure!(
        response.status().as_u16() == 201,
        "PUT {name}: HTTP {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    setup.wait_processed(&name).await?;
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    let got = setup
        .http
        .get(setup.file_url(&name))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("GET {name} from the service"))?
        .bytes()
        .await?;
    ensure!(got == body, "{name} came back different");
    Ok(latency)
}

/// The pipeline's S3 calls, made directly: PUT raw, GET raw, PUT processed (the latency),
/// GET processed and compare.
async fn sdk_one(setup: &Setup, name: String, body: Bytes) -> Result<f64> {
    let started = Instant::now();
    let raw = format!("raw/{name}");
    let processed = format!("processed/{name}");
    put(setup, &setup.initial, &raw, body.clone()).await?;
    let stored = get(setup, &setup.initial, &raw).await?;
    put(setup, &setup.final_, &processed, stored).await?;
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    let got = get(setup, &setup.final_, &processed).await?;
    ensure!(got == body, "{name} came back different");
    Ok(latency)
}

async fn put(setup: &Setup, bucket: &str, key: &str, body: Bytes) -> Result<()> {
    setup
        .s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&setup.kms_key_arn)
        .send()
        .await
        .aws_context(format!("s3:PutObject {key}"))?;
    Ok(())
}

async fn get(setup: &Setup, bucket: &str, key: &str) -> Result<Bytes> {
    let object = setup
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .aws_context(format!("s3:GetObject {key}"))?;
    Ok(object
        .body
        .collect()
        .await
        .with_context(|| format!("reading {key}"))?
        .into_bytes())
}
