//! One case of `load`: its buckets and queue, its instances (the front), the clients' two
//! sides, and what was processed, left open and held at the peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aws_clients::{AwsClients, AwsResultExt, AwsSettings};
use bytes::Bytes;
use serde::Serialize;

use super::clients::{Front, Side, baseline, through_service};
use crate::buckets;
use crate::context::{Context, block_on};
use crate::flags;
use crate::measuring::servers;
use crate::seal::Sealer;

/// What one instance held at its peak.
#[derive(Serialize, Debug)]
pub(super) struct Instance {
    pub(super) idle_rss_mib: f64,
    pub(super) peak_rss_mib: f64,
    pub(super) peak_open_fds: usize,
}

/// The file data a service process holds at most, as the first instance's `/v1/info` gives
/// its settings: the part buffers and the decryption budget (README, "The service").
async fn file_data_bound_mib(front: &Front) -> Result<f64> {
    let url = format!("{}/v1/info", front.urls[0]);
    let info: serde_json::Value = front
        .http
        .get(&url)
        .bearer_auth(&front.token)
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} is not JSON"))?;
    let number = |field: &str| {
        info[field]
            .as_u64()
            .with_context(|| format!("{url} has no {field}: {info}"))
    };
    let parts = number("max_buffered_parts")? * number("part_size")?;
    let decryption = number("decryption_memory_budget")?;
    Ok((parts + decryption) as f64 / 1048576.0)
}

#[derive(Serialize, Debug)]
pub(super) struct Case {
    pub(super) clients: usize,
    pub(super) file_kib: u64,
    pub(super) encrypted: bool,
    pub(super) baseline: Side,
    pub(super) service: Side,
    /// Service throughput over the baseline's.
    pub(super) ratio: f64,
    /// Files the baseline put per second.
    pub(super) baseline_files_per_s: f64,
    /// Files processed per second, from the first upload to the last output.
    pub(super) processed_per_s: f64,
    pub(super) acknowledged: usize,
    pub(super) processed: usize,
    pub(super) failed: usize,
    pub(super) open_multipart_uploads: usize,
    pub(super) instances: Vec<Instance>,
    /// What the file data held by one process may reach (the budgets).
    pub(super) file_data_bound_mib: f64,
    pub(super) error_kinds: Vec<String>,
}

/// A case's uploads: plain bytes, or one Encryption SDK message sent by every client.
pub(super) struct Workload {
    pub(super) kib: u64,
    pub(super) clients: usize,
    pub(super) encrypted: bool,
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
pub(super) fn run_case(
    cx: &Context,
    clients: &AwsClients,
    settings: &AwsSettings,
    kms_key_arn: &str,
    work: &std::path::Path,
    number: usize,
    workload: &Workload,
    args: &flags::Load,
) -> Result<Case> {
    let initial = format!("load-{number}-initial");
    let final_ = format!("load-{number}-final");
    let queue_url = block_on(async {
        for bucket in [&initial, &final_] {
            buckets::create(&clients.s3, bucket, &settings.region).await?;
        }
        let (queue_url, _) = emulator_fixtures::create_work_queue(
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
        let sealer = Sealer::new(
            cx.root.join(servers::SERVICE_RELEASE),
            settings.clone(),
            work.to_path_buf(),
        );
        block_on(encrypted_message(&sealer, kms_key_arn, workload.kib))?
    } else {
        Bytes::from(vec![b'x'; (workload.kib * 1024) as usize])
    };
    let duration = Duration::from_secs(args.seconds);
    let front = start_front(cx, settings, env, work, number, args.instances)?;
    let file_data_bound_mib = block_on(file_data_bound_mib(&front))?;
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
        file_data_bound_mib,
        error_kinds,
    })
}

/// One Encryption SDK message of `kib` KiB of plaintext, made with the stack's key as any
/// producer holding it would.
async fn encrypted_message(sealer: &Sealer, key_arn: &str, kib: u64) -> Result<Bytes> {
    let plaintext: Vec<u8> = (0..kib * 1024).map(|i| (i % 251) as u8).collect();
    Ok(Bytes::from(sealer.seal(key_arn, plaintext).await?))
}

/// Waits until an output exists for every acknowledged name, as long as their number keeps
/// growing (it gives up after 2 minutes without one more); returns how many do.
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
