//! The cases of one `bench` run, each on a fresh pair of buckets and a fresh service, and the
//! report they make.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use aws_clients::{AwsClients, AwsSettings, subprocess_env};

use super::data::remove_files;
use super::report::{self, Case, Report, Target};
use super::{MIB, Setup, SourceFile, fleet, generate_files, generate_small, large, small};
use crate::buckets;
use crate::context::{Context, block_on};
use crate::flags;
use crate::local::emulator;
use crate::measuring::{create_key, servers};

/// What the issue asks of the service; the benchmark reports them, nothing asserts them.
const LARGE_TARGET: f64 = 0.9;
const SMALL_TARGET: f64 = 0.8;
const RSS_TARGET_BYTES: u64 = 100 * MIB;

pub(super) fn measure(
    cx: &Context,
    args: &flags::Bench,
    work: &Path,
    s3s_fs: &Path,
    python: &Path,
    emulator_url: &str,
) -> Result<Report> {
    // s3s-fs takes the same key as the emulator, so one set of settings signs for both.
    let (_s3s_server, s3s_url) = servers::start_s3s_fs(
        s3s_fs,
        &work.join("s3s-fs"),
        &work.join("s3s-fs.log"),
        &emulator::operator_key(&cx.root)?,
    )?;
    let emulator_settings = AwsSettings {
        endpoint_url: Some(emulator_url.to_string()),
        ..cx.env.aws.clone()
    };
    let kms_key_arn = block_on(create_key(&emulator_settings))?;
    let data = work.join("data");
    std::fs::create_dir_all(&data)?;

    let mut cases = Vec::new();
    let mut transfer = None;
    let mut case_number = 0;
    let mut measure_case = |title: String,
                            server: &str,
                            s3_endpoint: Option<&str>,
                            files: CaseData<'_>|
     -> Result<()> {
        case_number += 1;
        cx.step(format!("case {case_number}: {title} on {server}"));
        let settings = AwsSettings {
            s3_endpoint_url: s3_endpoint.map(str::to_string),
            ..emulator_settings.clone()
        };
        let started = std::time::Instant::now();
        let (case, used) = run_case(
            cx,
            &settings,
            CaseSettings {
                number: case_number,
                title,
                server: server.to_string(),
                kms_key_arn: &kms_key_arn,
                python,
                work,
                repetitions: args.repetitions,
                clients: args.clients as usize,
            },
            files,
        )?;
        transfer = Some(used);
        report::print_case(&case);
        eprintln!(
            "    (case {case_number} took {:.0}s)",
            started.elapsed().as_secs_f64()
        );
        cases.push(case);
        Ok(())
    };

    let large = generate_files(&data, "large", args.large_count, args.large_mib * MIB)?;
    measure_case(
        format!(
            "large objects, {} x {} MiB, upload then download",
            args.large_count, args.large_mib
        ),
        "s3s-fs",
        Some(&s3s_url),
        CaseData::Large(&large),
    )?;
    remove_files(&large);

    let small = generate_small(&data.join("small"), args.small_count, args.small_kib)?;
    measure_case(
        format!(
            "small objects, {} x {} KiB, {} clients, upload -> processed -> download",
            args.small_count, args.small_kib, args.clients
        ),
        "s3s-fs",
        Some(&s3s_url),
        CaseData::Small(&small),
    )?;

    if args.large {
        let gib = generate_files(&data, "gib", args.large_count, 1024 * MIB)?;
        measure_case(
            format!(
                "large objects, {} x 1 GiB, upload then download",
                args.large_count
            ),
            "s3s-fs",
            Some(&s3s_url),
            CaseData::Large(&gib),
        )?;
        remove_files(&gib);
    }

    if args.moto_mib > 0 {
        let moto = generate_files(&data, "moto", args.large_count, args.moto_mib * MIB)?;
        measure_case(
            format!(
                "large objects, {} x {} MiB, upload then download",
                args.large_count, args.moto_mib
            ),
            "moto",
            None,
            CaseData::Large(&moto),
        )?;
        remove_files(&moto);
    }

    let fleet = if args.fleet_files > 0 {
        let started = std::time::Instant::now();
        let fleet = fleet::run(
            cx,
            &fleet::FleetSetup {
                settings: &emulator_settings,
                kms_key_arn: &kms_key_arn,
                program: &cx.root.join(servers::SERVICE_RELEASE),
                work,
                prefix: "bench",
            },
            args.fleet_files as usize,
            args.fleet_kib as usize * 1024,
            args.repetitions,
        )?;
        fleet::print(&fleet);
        eprintln!(
            "    (the fleet case took {:.0}s)",
            started.elapsed().as_secs_f64()
        );
        Some(fleet)
    } else {
        None
    };

    let transfer = transfer.context("no case ran, so no service reported its part size")?;
    Ok(Report {
        fleet,
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        part_size: transfer.part_size,
        parts_in_flight: transfer.parts_in_flight,
        max_buffered_parts: transfer.max_buffered_parts,
        cases,
        notes: vec![
            "s3s-fs ignores SSE headers: on s3s-fs no variant pays for encryption; the moto case sends the same headers".into(),
            "the service, the S3 server, the clients and boto3 share this machine's cores".into(),
            "downloads are written to files; sizes are checked on every run, SHA-256 on the first repetition".into(),
            "small objects: (a) waits for processing with GET .../status?wait=60; latency is PUT start -> processed".into(),
            "fleet: every instance shares this machine's two cores with moto and the writers, so its ratios show that work spreads through the queue without loss, not how separate machines scale".into(),
        ],
    })
}

enum CaseData<'a> {
    Large(&'a [SourceFile]),
    Small(&'a small::Objects),
}

struct CaseSettings<'a> {
    number: usize,
    title: String,
    server: String,
    kms_key_arn: &'a str,
    python: &'a Path,
    work: &'a Path,
    repetitions: u32,
    clients: usize,
}

/// How the service moves a large object, as its `/v1/info` says: the direct transfers (b)
/// and (c) use the same part size and concurrency.
#[derive(Clone, Copy)]
struct Transfer {
    part_size: u64,
    parts_in_flight: usize,
    max_buffered_parts: usize,
}

async fn transfer_of(http: &reqwest::Client, service_url: &str) -> Result<Transfer> {
    let info: serde_json::Value = http
        .get(format!("{service_url}/v1/info"))
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .with_context(|| format!("GET {service_url}/v1/info"))?
        .json()
        .await
        .context("/v1/info is not JSON")?;
    let number = |field: &str| {
        info[field]
            .as_u64()
            .with_context(|| format!("/v1/info has no {field}: {info}"))
    };
    Ok(Transfer {
        part_size: number("part_size")?,
        parts_in_flight: number("parts_in_flight")? as usize,
        max_buffered_parts: number("max_buffered_parts")? as usize,
    })
}

/// A fresh pair of buckets and a fresh service for one case, so its peak RSS is the case's;
/// the case's result and the transfer settings the service reported.
fn run_case(
    cx: &Context,
    settings: &AwsSettings,
    case: CaseSettings<'_>,
    data: CaseData<'_>,
) -> Result<(Case, Transfer)> {
    let clients = block_on(AwsClients::connect(settings))?;
    let initial = format!("bench-{}-initial", case.number);
    let final_ = format!("bench-{}-final", case.number);
    block_on(async {
        for bucket in [&initial, &final_] {
            buckets::create(&clients.s3, bucket, &settings.region).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let env: Vec<(String, String)> = vec![
        ("INITIAL_BUCKET".into(), initial.clone()),
        ("FINAL_BUCKET".into(), final_.clone()),
        ("KMS_KEY_ARN".into(), case.kms_key_arn.to_string()),
        ("PROCESSOR".into(), "identity".into()),
    ];
    let log = case.work.join(format!("service-{}.log", case.number));
    let (service, service_url) = servers::start_service(cx, env, settings, &log)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(600))
        .build()
        .context("building an HTTP client")?;
    let transfer = block_on(transfer_of(&http, &service_url))?;
    let setup = Setup {
        http,
        s3: clients.s3.clone(),
        s3_endpoint: settings
            .s3_endpoint_url
            .clone()
            .or(settings.endpoint_url.clone())
            .unwrap_or_default(),
        region: settings.region.clone(),
        aws_env: subprocess_env(settings),
        service_url,
        initial: initial.clone(),
        final_: final_.clone(),
        kms_key_arn: case.kms_key_arn.to_string(),
        part_size: transfer.part_size as usize,
        parts_in_flight: transfer.parts_in_flight,
        max_buffered_parts: transfer.max_buffered_parts,
        python: case.python.to_path_buf(),
        script: cx.root.join("xtask/src/bench/boto3_transfer.py"),
        out_dir: case.work.join("out"),
        repetitions: case.repetitions,
    };
    let measured = block_on(async {
        // Buckets left by an interrupted run may still hold its objects.
        setup.clear_buckets().await?;
        Ok::<_, anyhow::Error>(match data {
            CaseData::Large(files) => (
                large::run(&setup, files, LARGE_TARGET).await?,
                files.len(),
                files[0].size,
            ),
            CaseData::Small(objects) => (
                vec![small::run(&setup, objects, case.clients, SMALL_TARGET).await?],
                objects.payloads.len(),
                objects.payloads[0].len() as u64,
            ),
        })
    });
    let peak = servers::peak_rss(service.pid());
    drop(service);
    block_on(buckets::remove_unversioned(
        &clients.s3,
        &[&initial, &final_],
    ))?;
    let (metrics, objects, object_bytes) = measured?;
    let peak = peak?;
    // The memory target is for 1 GiB uploads; report it where it applies.
    let rss_target = (object_bytes >= 1024 * MIB).then(|| Target {
        description: format!("< {} MiB", RSS_TARGET_BYTES / MIB),
        met: peak < RSS_TARGET_BYTES,
    });
    Ok((
        Case {
            title: case.title,
            s3_server: case.server,
            objects,
            object_bytes,
            repetitions: case.repetitions,
            metrics,
            service_peak_rss_bytes: peak,
            rss_target,
        },
        transfer,
    ))
}
