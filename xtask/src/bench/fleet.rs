//! The fleet case: the same batch of files written to raw/ and processed by 1, 2 and 4
//! service instances sharing one queue, on the emulator (S3 events to SQS are the
//! emulator's; s3s-fs sends none). All instances share this machine's cores, so the figure
//! is a ratio against one instance measured in the same run, not a promise of scale-out on
//! separate machines. Lag is from a file's upload returning to its output's `processed-at`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt, AwsSettings};
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use futures_util::StreamExt as _;

use super::report::{Fleet, FleetRun, median, percentiles};
use crate::buckets;
use crate::context::{Context, block_on};
use crate::measuring::servers;

pub const INSTANCES: [usize; 3] = [1, 2, 4];
/// Writers of the batch at once.
const WRITERS: usize = 32;

/// What one fleet measurement needs besides its size.
pub struct FleetSetup<'a> {
    pub settings: &'a AwsSettings,
    pub kms_key_arn: &'a str,
    /// The service build the instances run.
    pub program: &'a std::path::Path,
    pub work: &'a std::path::Path,
    /// Names the buckets and queues of each measurement.
    pub prefix: &'a str,
}

pub fn run(
    cx: &Context,
    setup: &FleetSetup<'_>,
    files: usize,
    file_bytes: usize,
    repetitions: u32,
) -> Result<Fleet> {
    let clients = block_on(AwsClients::connect(setup.settings))?;
    let mut runs: Vec<FleetRun> = Vec::new();
    // Interleaved (1, 2, 4, 1, 2, 4, ...) so drift on the machine hits every size alike.
    let mut rates: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut lags: HashMap<usize, Vec<f64>> = HashMap::new();
    let payload: Vec<u8> = (0..file_bytes).map(|i| (i * 31 % 251) as u8).collect();
    for repetition in 0..repetitions {
        for instances in INSTANCES {
            cx.step(format!(
                "fleet: {files} files x {file_bytes} bytes, {instances} instance(s), repetition {}",
                repetition + 1
            ));
            let tag = format!("{}-fleet-{instances}-{repetition}", setup.prefix);
            let (rate, lag) = block_on(measure(&clients, setup, &tag, instances, &payload, files))?;
            eprintln!("    {rate:.1} files/s");
            rates.entry(instances).or_default().push(rate);
            lags.entry(instances).or_default().extend(lag);
        }
    }
    let one = median(&rates[&1]);
    for instances in INSTANCES {
        let median_rate = median(&rates[&instances]);
        runs.push(FleetRun {
            instances,
            files_per_second: rates[&instances].clone(),
            median_files_per_second: median_rate,
            over_one_instance: median_rate / one,
            lag_ms: percentiles(&lags[&instances]),
        });
    }
    Ok(Fleet {
        files,
        file_bytes,
        runs,
    })
}

async fn measure(
    clients: &AwsClients,
    setup: &FleetSetup<'_>,
    tag: &str,
    instances: usize,
    payload: &[u8],
    files: usize,
) -> Result<(f64, Vec<f64>)> {
    let initial = format!("{tag}-initial");
    let final_ = format!("{tag}-final");
    for bucket in [&initial, &final_] {
        buckets::create(&clients.s3, bucket, &setup.settings.region).await?;
    }
    let kms_key_arn = setup.kms_key_arn;
    let queues = emulator_fixtures::create_queues(clients, tag, kms_key_arn, 60, 5).await?;
    emulator_fixtures::notify_queue(clients, &initial, &queues).await?;
    let mut services = Vec::new();
    for n in 0..instances {
        let env = vec![
            ("INITIAL_BUCKET".into(), initial.clone()),
            ("FINAL_BUCKET".into(), final_.clone()),
            ("KMS_KEY_ARN".into(), kms_key_arn.to_string()),
            ("PROCESSOR".into(), "identity".into()),
            ("QUEUE_URL".into(), queues.work_url.clone()),
            ("INSTANCE_ID".into(), format!("bench-{n}")),
        ];
        let log = setup.work.join(format!("service-{tag}-{n}.log"));
        let started = tokio::task::block_in_place(|| {
            servers::start_program(setup.program, env, setup.settings, &log)
        })?;
        services.push(started);
    }

    let started = Instant::now();
    let s3 = &clients.s3;
    let uploaded: Vec<Result<(String, SystemTime)>> = futures_util::stream::iter(0..files)
        .map(|i| {
            let name = format!("f-{i:05}.bin");
            let body = payload.to_vec();
            let initial = &initial;
            async move {
                s3.put_object()
                    .bucket(initial)
                    .key(format!("raw/{name}"))
                    .body(body.into())
                    .send()
                    .await
                    .aws_context(format!("s3:PutObject raw/{name}"))?;
                Ok((name, SystemTime::now()))
            }
        })
        .buffer_unordered(WRITERS)
        .collect()
        .await;
    let uploaded: HashMap<String, SystemTime> = uploaded.into_iter().collect::<Result<_>>()?;

    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let outputs = buckets::count_keys(s3, &final_, "processed/").await?;
        if outputs >= files {
            break;
        }
        if Instant::now() > deadline {
            bail!("{outputs} of {files} outputs after 10 minutes ({instances} instances)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(services);

    let lags: Vec<Result<f64>> = futures_util::stream::iter(uploaded)
        .map(|(name, at)| {
            let final_ = &final_;
            async move {
                let head = s3
                    .head_object()
                    .bucket(final_)
                    .key(format!("processed/{name}"))
                    .send()
                    .await
                    .aws_context(format!("s3:HeadObject processed/{name}"))?;
                let processed = head
                    .metadata()
                    .and_then(|m| m.get("processed-at"))
                    .context("an output without processed-at")?;
                let processed: SystemTime =
                    DateTime::from_str(processed, DateTimeFormat::DateTime)?.try_into()?;
                Ok(processed
                    .duration_since(at)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0)
            }
        })
        .buffer_unordered(WRITERS)
        .collect()
        .await;
    let lags = lags.into_iter().collect::<Result<Vec<f64>>>()?;
    buckets::remove_unversioned(s3, &[&initial, &final_]).await?;
    for url in [&queues.work_url, &queues.dead_letter_url] {
        clients
            .sqs
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .aws_context(format!("sqs:DeleteQueue {url}"))?;
    }
    Ok((files as f64 / elapsed, lags))
}

pub fn print(fleet: &Fleet) {
    println!(
        "\nfleet: {} files x {} bytes written to raw/, processed through the queue (moto)",
        fleet.files, fleet.file_bytes
    );
    println!(
        "{:>9} {:>12} {:>14} {:>12} {:>12}",
        "instances", "files/s", "vs 1 instance", "lag p50 ms", "lag p99 ms"
    );
    for run in &fleet.runs {
        println!(
            "{:>9} {:>12.1} {:>14.2} {:>12.0} {:>12.0}",
            run.instances,
            run.median_files_per_second,
            run.over_one_instance,
            run.lag_ms.p50,
            run.lag_ms.p99
        );
    }
}
