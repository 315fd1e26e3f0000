//! `cargo xtask load`: many clients at once against the release-built service on the
//! emulator, as it is deployed: `--instances` processes sharing the stack's queue (S3 events
//! to SQS), each serving HTTPS with its own certificate (pinned by the clients) and a bearer
//! token. Each case runs for a bounded time; then every acknowledged file must be processed
//! and no multipart upload may be left open.
//!
//! Each case first measures the same clients putting the same bytes straight into the
//! emulator with aws-sdk-s3 (the baseline), then through the service, and reports the
//! service's throughput, and the files it processed per second, as ratios of the baseline's.
//! The emulator (moto, one Python process) is the bottleneck of both, which is what makes the
//! ratio comparable. Peak RSS and open descriptors are reported per instance; the encrypted
//! case (Encryption SDK messages, decrypted in memory) shows the memory bound holding.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::future::join_all;
use serde::Serialize;
use service::aws::{AwsClients, AwsResultExt, AwsSettings};

use crate::bench::{self, report::percentile, servers};
use crate::buckets;
use crate::context::{Context, block_on};
use crate::local::emulator;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Concurrent clients, one case per value.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 256])]
    clients: Vec<usize>,
    /// File sizes in KiB, one case per value and client count.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 10240])]
    kib: Vec<u64>,
    /// Seconds each client keeps uploading, per case and per side (baseline, service).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Service instances sharing the queue; clients are spread over them.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=8))]
    instances: u64,
    /// Plaintext MiB of the Encryption SDK messages of the encrypted case (0: no such case).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=15))]
    encrypted_mib: u64,
    /// Clients of the encrypted case.
    #[arg(long, default_value_t = 8)]
    encrypted_clients: usize,
}

/// What one instance held at its peak.
#[derive(Serialize, Debug)]
struct Instance {
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    peak_open_fds: usize,
}

/// The file data a service process holds at most with the default settings: the part
/// buffers and the decryption budget (README, "The service").
fn file_data_bound_mib() -> f64 {
    let parts =
        service::config::DEFAULT_MAX_BUFFERED_PARTS as u64 * service::config::DEFAULT_PART_SIZE;
    let decryption = service::decrypt::WEIGHT * 16 * 1024 * 1024;
    (parts + decryption) as f64 / 1048576.0
}

/// What one side (baseline or service) of a case measured.
#[derive(Serialize, Debug, Default)]
struct Side {
    requests: usize,
    /// 503 back-pressure answers (processing queue full), waited out as `Retry-After` asks.
    refused: usize,
    /// Anything else that was not a success.
    errors: usize,
    /// Acknowledged bytes per second over the whole side, its last requests included.
    mib_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize, Debug)]
struct Case {
    clients: usize,
    file_kib: u64,
    encrypted: bool,
    baseline: Side,
    service: Side,
    /// Service throughput over the baseline's.
    ratio: f64,
    /// Files the baseline put per second.
    baseline_files_per_s: f64,
    /// Files processed per second, from the first upload to the last output.
    processed_per_s: f64,
    acknowledged: usize,
    processed: usize,
    failed: usize,
    open_multipart_uploads: usize,
    instances: Vec<Instance>,
    /// What the file data held by one process may reach (the budgets).
    file_data_bound_mib: f64,
    error_kinds: Vec<String>,
}

/// A case's uploads: plain bytes, or one Encryption SDK message sent by every client.
struct Workload {
    kib: u64,
    clients: usize,
    encrypted: bool,
}

pub fn run(cx: &Context, args: Args) -> Result<()> {
    if !cx.env.is_local() {
        bail!("`load` runs on this machine only, against the emulator; drop --env");
    }
    if cx.dry_run {
        bail!("`load` has no dry run");
    }
    if cfg!(debug_assertions) {
        return bench::rerun_in_release(cx);
    }
    let work = cx.state_root.join("load");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let (record, started_emulator) =
        emulator::start(cx, emulator::configured_port()?, emulator::iam_wanted())?;
    let settings = AwsSettings {
        endpoint_url: Some(record.endpoint_url()),
        ..cx.env.aws.clone()
    };
    let result = measure(cx, &args, &settings, &work);
    if started_emulator {
        emulator::stop(cx)?;
    }
    let cases = result.with_context(|| format!("the service logs are in {}", work.display()))?;
    let path = work.join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cases)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\n{}", table(&cases));
    println!("report: {}", path.display());
    let broken: Vec<String> = cases
        .iter()
        .filter(|c| c.processed != c.acknowledged || c.failed > 0 || c.open_multipart_uploads > 0)
        .map(|c| format!("{} clients x {} KiB", c.clients, c.file_kib))
        .collect();
    ensure!(
        broken.is_empty(),
        "acknowledged files not all processed, or multipart uploads left open, in: {}",
        broken.join(", ")
    );
    Ok(())
}

fn measure(
    cx: &Context,
    args: &Args,
    settings: &AwsSettings,
    work: &std::path::Path,
) -> Result<Vec<Case>> {
    let clients = block_on(AwsClients::connect(settings))?;
    let kms_key_arn = block_on(bench::create_key(settings))?;
    let mut workloads: Vec<Workload> = args
        .kib
        .iter()
        .flat_map(|&kib| {
            args.clients.iter().map(move |&clients| Workload {
                kib,
                clients,
                encrypted: false,
            })
        })
        .collect();
    if args.encrypted_mib > 0 {
        workloads.push(Workload {
            kib: args.encrypted_mib * 1024,
            clients: args.encrypted_clients,
            encrypted: true,
        });
    }
    let mut cases = Vec::new();
    for workload in &workloads {
        let number = cases.len() + 1;
        cx.step(format!(
            "case {number}: {} clients uploading {}{} KiB files through {} instances for {} s",
            workload.clients,
            if workload.encrypted { "encrypted " } else { "" },
            workload.kib,
            args.instances,
            args.seconds
        ));
        let case = run_case(
            cx,
            &clients,
            settings,
            &kms_key_arn,
            work,
            number,
            workload,
            args,
        )?;
        eprintln!("{}", table(std::slice::from_ref(&case)));
        cases.push(case);
    }
    Ok(cases)
}

/// The instances of a case, as deployed: HTTPS with one certificate they share (pinned by
/// the clients), a bearer token, and the case's queue.
struct Front {
    instances: Vec<servers::Owned>,
    urls: Vec<String>,
    http: reqwest::Client,
    token: String,
    idle_rss: Vec<u64>,
}

fn start_front(
    cx: &Context,
    settings: &AwsSettings,
    mut env: Vec<(String, String)>,
    work: &std::path::Path,
    number: usize,
    instances: u64,
) -> Result<Front> {
    let program = cx.root.join(servers::SERVICE_RELEASE);
    let (cert, key) = (
        work.join(format!("case-{number}.crt")),
        work.join(format!("case-{number}.key")),
    );
    cx.run(
        "service gen-cert (the instances' certificate)",
        xshell::cmd!(
            cx.sh,
            "{program} gen-cert --ip 127.0.0.1 --days 1 --cert-out {cert} --key-out {key}"
        ),
    )?;
    let pem =
        std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
    let token = format!(
        "load-{:032x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    env.extend([
        ("TLS_CERT_FILE".to_string(), cert.display().to_string()),
        ("TLS_KEY_FILE".to_string(), key.display().to_string()),
        ("AUTH_TOKEN".to_string(), token.clone()),
    ]);
    let mut front = Front {
        instances: Vec::new(),
        urls: Vec::new(),
        http: crate::secrets::pinned_client(&pem, Duration::from_secs(300))?,
        token,
        idle_rss: Vec::new(),
    };
    for n in 1..=instances {
        let mut env = env.clone();
        env.push(("INSTANCE_ID".to_string(), format!("load-{number}-{n}")));
        let log = work.join(format!("service-{number}-{n}.log"));
        let (instance, url) = servers::start_pinned(&program, env, settings, &log, Some(&pem))?;
        front.idle_rss.push(servers::current_rss(instance.pid())?);
        front.instances.push(instance);
        front.urls.push(url);
    }
    Ok(front)
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    cx: &Context,
    clients: &AwsClients,
    settings: &AwsSettings,
    kms_key_arn: &str,
    work: &std::path::Path,
    number: usize,
    workload: &Workload,
    args: &Args,
) -> Result<Case> {
    let initial = format!("load-{number}-initial");
    let final_ = format!("load-{number}-final");
    let queue_url = block_on(async {
        for bucket in [&initial, &final_] {
            buckets::create(&clients.s3, bucket, &settings.region).await?;
        }
        let (queue_url, _) = service::testing::create_work_queue(
            clients,
            &format!("load-{number}"),
            &initial,
            kms_key_arn,
            60,
            5,
        )
        .await;
        Ok::<_, anyhow::Error>(queue_url)
    })?;
    let env = vec![
        ("INITIAL_BUCKET".to_string(), initial.clone()),
        ("FINAL_BUCKET".to_string(), final_.clone()),
        ("KMS_KEY_ARN".to_string(), kms_key_arn.to_string()),
        ("PROCESSOR".to_string(), "identity".to_string()),
        ("QUEUE_URL".to_string(), queue_url),
    ];
    let body = if workload.encrypted {
        block_on(encrypted_message(clients, kms_key_arn, workload.kib))?
    } else {
        Bytes::from(vec![b'x'; (workload.kib * 1024) as usize])
    };
    let duration = Duration::from_secs(args.seconds);
    let front = start_front(cx, settings, env, work, number, args.instances)?;
    let count = workload.clients;

    let measured = block_on(async {
        let baseline = baseline(&clients.s3, &initial, count, body.clone(), duration).await;
        // The emulator keeps every byte (in memory, and spilled to disk): gone before the
        // service's side starts. Their events reach the queue too, and name files that are
        // gone by the time an instance looks: they are settled without work.
        buckets::empty_unversioned(&clients.s3, &initial).await?;
        let sampling = Arc::new(AtomicBool::new(true));
        let fds: Vec<_> = front
            .instances
            .iter()
            .map(|instance| tokio::spawn(peak_open_fds(instance.pid(), sampling.clone())))
            .collect();
        let started = Instant::now();
        let (service_side, acknowledged, error_kinds) =
            through_service(&front, count, body.clone(), duration).await?;
        let processed = wait_processed(&clients.s3, &final_, &acknowledged).await?;
        let processing_took = started.elapsed();
        sampling.store(false, Ordering::Relaxed);
        let mut peak_open_fds = Vec::new();
        for sampler in fds {
            peak_open_fds.push(sampler.await.unwrap_or_default());
        }
        let failed = buckets::count_keys(&clients.s3, &final_, "failed/").await?;
        let mut open = 0;
        for bucket in [&initial, &final_] {
            let listed = clients
                .s3
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .aws_context(format!("s3:ListMultipartUploads {bucket}"))?;
            open += listed.uploads().len();
        }
        Ok::<_, anyhow::Error>((
            baseline,
            service_side,
            acknowledged.len(),
            processed,
            processing_took,
            failed,
            open,
            peak_open_fds,
            error_kinds,
        ))
    });
    let peak_rss: Vec<u64> = front
        .instances
        .iter()
        .map(|instance| servers::peak_rss(instance.pid()))
        .collect::<Result<_>>()?;
    let idle_rss = front.idle_rss.clone();
    drop(front);
    block_on(buckets::remove_unversioned(
        &clients.s3,
        &[&initial, &final_],
    ))?;
    let (
        baseline,
        service_side,
        acknowledged,
        processed,
        processing_took,
        failed,
        open,
        peak_open_fds,
        error_kinds,
    ) = measured?;
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    Ok(Case {
        clients: count,
        file_kib: workload.kib,
        encrypted: workload.encrypted,
        ratio: service_side.mib_per_s / baseline.mib_per_s,
        baseline_files_per_s: (baseline.requests - baseline.errors) as f64 / duration.as_secs_f64(),
        processed_per_s: processed as f64 / processing_took.as_secs_f64(),
        baseline,
        service: service_side,
        acknowledged,
        processed,
        failed,
        open_multipart_uploads: open,
        instances: idle_rss
            .iter()
            .zip(&peak_rss)
            .zip(peak_open_fds)
            .map(|((idle, peak), fds)| Instance {
                idle_rss_mib: mib(*idle),
                peak_rss_mib: mib(*peak),
                peak_open_fds: fds,
            })
            .collect(),
        file_data_bound_mib: file_data_bound_mib(),
        error_kinds,
    })
}

/// One Encryption SDK message of `kib` KiB of plaintext, made with the stack's key as any
/// producer holding it would.
async fn encrypted_message(clients: &AwsClients, key_arn: &str, kib: u64) -> Result<Bytes> {
    let producer = service::decrypt::Decryptor::new(
        clients.kms.clone(),
        key_arn,
        service::decrypt::Settings::defaults(64 << 20),
    )
    .await?;
    let plaintext: Vec<u8> = (0..kib * 1024).map(|i| (i % 251) as u8).collect();
    Ok(Bytes::from(producer.encrypt(plaintext, None).await?))
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
async fn baseline(
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
async fn through_service(
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

/// Waits until an output exists for every acknowledged name (up to 10 minutes, while the
/// count grows); returns how many do.
async fn wait_processed(s3: &aws_sdk_s3::Client, bucket: &str, names: &[String]) -> Result<usize> {
    let mut last = (0, Instant::now());
    loop {
        let outputs = buckets::list_keys(s3, bucket, "processed/load/").await?;
        let processed = names
            .iter()
            .filter(|name| outputs.contains(&format!("processed/{name}")))
            .count();
        if processed == names.len() {
            return Ok(processed);
        }
        if processed > last.0 {
            last = (processed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            return Ok(processed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The most file descriptors the process had open while `sampling` was set.
async fn peak_open_fds(pid: u32, sampling: Arc<AtomicBool>) -> usize {
    let mut peak = 0;
    while sampling.load(Ordering::Relaxed) {
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            peak = peak.max(entries.count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// A Markdown table, as the README shows it.
fn table(cases: &[Case]) -> String {
    let mut out = String::from(
        "| clients | file | baseline MiB/s | service MiB/s | ratio | baseline files/s | processed files/s | p50 ms | p99 ms | 503 back-pressure | errors | acknowledged | processed | failed | open uploads | RSS MiB idle → peak, per instance | peak fds | file-data bound MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
    );
    for c in cases {
        let size = if c.file_kib >= 1024 {
            format!("{} MiB", c.file_kib / 1024)
        } else {
            format!("{} KiB", c.file_kib)
        };
        let size = if c.encrypted {
            format!("{size} encrypted")
        } else {
            size
        };
        let rss: Vec<String> = c
            .instances
            .iter()
            .map(|i| format!("{:.0} → {:.0}", i.idle_rss_mib, i.peak_rss_mib))
            .collect();
        let fds: Vec<String> = c
            .instances
            .iter()
            .map(|i| i.peak_open_fds.to_string())
            .collect();
        out.push_str(&format!(
            "| {} | {size} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            c.clients,
            c.baseline.mib_per_s,
            c.service.mib_per_s,
            c.ratio,
            c.baseline_files_per_s,
            c.processed_per_s,
            c.service.p50_ms,
            c.service.p99_ms,
            c.service.refused,
            c.service.errors,
            c.acknowledged,
            c.processed,
            c.failed,
            c.open_multipart_uploads,
            rss.join(", "),
            fds.join(", "),
            c.file_data_bound_mib,
        ));
        if !c.error_kinds.is_empty() {
            out.push_str(&format!("\nerrors: {}\n", c.error_kinds.join("; ")));
        }
    }
    out
}
