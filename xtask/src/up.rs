//! `cargo xtask up`: the whole pipeline on this machine with no AWS account — emulator, state
//! and artifact buckets, the service binary uploaded as `deploy` uploads it, the stack applied
//! by Terraform with the real modules and the real AWS provider (as `deploy` applies it), the
//! user-data installing the downloaded binary as it does on EC2, and a smoke test through it.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use aws_clients::AwsClients;

use crate::artifact::{self, Artifact, Source};
use crate::context::{Context, block_on};
use crate::flags;
use crate::local::{emulator, instance};
use crate::outputs::{Outputs, outputs_file};
use crate::seal::Sealer;
use crate::secrets::{self, Secrets};
use crate::{bootstrap, deploy, smoke};

struct Steps {
    total: usize,
    done: usize,
    started: Instant,
}

impl Steps {
    fn next(&mut self, cx: &Context, title: &str) -> Instant {
        self.done += 1;
        cx.step(format!(
            "[{}/{}] {title} ({:.0}s)",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        ));
        Instant::now()
    }
}

pub fn run(cx: &Context, args: flags::Up) -> Result<ExitCode> {
    if !cx.env.is_local() {
        bail!(
            "`up` runs the local stack only; for `{0}` use `bootstrap --env {0}` and `deploy --env {0}`",
            cx.env.name
        );
    }
    if cx.dry_run {
        bail!("`up` has no dry run; see `cargo xtask deploy --dry-run`");
    }
    let mut steps = Steps {
        total: 6,
        done: 0,
        started: Instant::now(),
    };

    steps.next(cx, "start the emulator");
    let (record, started) =
        emulator::start(cx, emulator::configured_port()?, emulator::iam_wanted())?;
    eprintln!(
        "    emulator {} at {}",
        if started {
            "started"
        } else {
            "already running"
        },
        record.endpoint_url()
    );

    steps.next(cx, "bootstrap the state and artifact buckets");
    block_on(bootstrap::bootstrap(
        cx,
        &crate::flags::Bootstrap { fix: true },
    ))?;

    steps.next(cx, "build the service and upload it to the artifact bucket");
    let artifact = artifact::deliver(cx, &Source::Debug)?;

    steps.next(cx, "provision the stack with Terraform");
    let outputs = provision(cx, &artifact)?;

    // As `deploy` does after Terraform's apply: the token exists before the instance boots
    // far enough to fetch it.
    let operator = block_on(AwsClients::connect(&cx.env.aws))?;
    let secrets = Secrets::new(&outputs, &operator)?;
    block_on(secrets.ensure_token(cx))?;

    steps.next(
        cx,
        "first boot: the user-data installs the service, which starts",
    );
    let services = instance::start(cx, &outputs, args.port, args.instances.into())?;

    steps.next(cx, "smoke test through every instance");
    let pin = std::fs::read_to_string(secrets::pin_file(cx))?;
    let token = block_on(secrets.token())?;
    let sealer = Sealer::for_this_machine(cx, &cx.env.aws)?;
    for (n, service) in services.iter().enumerate() {
        let report = block_on(smoke::smoke(
            &service.url(),
            &crate::flags::Smoke {
                timeout_secs: 120,
                token: Some(token.clone()),
                ..crate::flags::Smoke::default()
            },
            Some(outputs.string("kms_key_arn")?),
            Some(&operator),
            Some(&sealer),
            Some(&pin),
        ))?;
        smoke::print_table(&report);
        if report.failed > 0 {
            bail!(
                "{} smoke check(s) failed through {}; its log is {}",
                report.failed,
                service.url(),
                instance::instance_log_path(cx, n + 1).display()
            );
        }
    }

    let url = services[0].url();
    let others: Vec<String> = services[1..].iter().map(|s| s.url()).collect();
    if !others.is_empty() {
        println!(
            "\nthe other instances: {} (logs service-<n>.log beside the first's)",
            others.join(", ")
        );
    }
    // The certificate pinned, the token from a 0600 file: never on the command line.
    let curl = format!(
        "curl --cacert {} -H @{}",
        secrets::pin_file(cx).display(),
        secrets::header_file(cx).display()
    );
    println!(
        "\nfilepipe is up in {:.0}s: {url} (log: {})\n\n  {curl} -T ./report.csv {url}/v1/files/report.csv\n  {curl} {url}/v1/files/report.csv/status\n  {curl} -o report.out {url}/v1/files/report.csv\n\nStop it with `cargo xtask down`.",
        steps.started.elapsed().as_secs_f64(),
        instance::log_path(cx).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `deploy --yes` of the delivered artifact: the real modules, applied by the real provider
/// against the emulator. Where no provider can be had, the error says how to provide one.
fn provision(cx: &Context, artifact: &Artifact) -> Result<Outputs> {
    let args = crate::flags::Deploy {
        yes: true,
        ..crate::flags::Deploy::default()
    };
    deploy::deploy(cx, &args, Source::Delivered(artifact.clone()))?;
    let outputs = Outputs::load(&outputs_file(cx))?;
    eprintln!(
        "    provisioned with Terraform: the modules in terraform/, hashicorp/aws {}",
        crate::terraform::provider::locked_version(&cx.root.join("terraform"))
            .unwrap_or_else(|| "(version not in the lock file)".into())
    );
    Ok(outputs)
}
