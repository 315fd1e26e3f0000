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

mod case;
mod clients;

use anyhow::{Context as _, Result, bail, ensure};
use aws_clients::{AwsClients, AwsSettings};
use std::process::ExitCode;

use crate::context::{Context, block_on};
use crate::flags;
use crate::local::emulator;
use crate::measuring;
use case::{Case, Workload, run_case};

pub fn run(cx: &Context, args: flags::Load) -> Result<ExitCode> {
    if !cx.env.is_local() {
        bail!("`load` runs on this machine only, against the emulator; drop --env");
    }
    if cx.dry_run {
        bail!("`load` has no dry run");
    }
    if cfg!(debug_assertions) {
        return measuring::rerun_in_release(cx);
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
    Ok(ExitCode::SUCCESS)
}

fn measure(
    cx: &Context,
    args: &flags::Load,
    settings: &AwsSettings,
    work: &std::path::Path,
) -> Result<Vec<Case>> {
    let clients = block_on(AwsClients::connect(settings))?;
    let kms_key_arn = block_on(measuring::create_key(settings))?;
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
