//! `cargo xtask deploy`: deliver the service binary, terraform init, plan, (confirm), apply,
//! save outputs, render user-data. `--plan FILE` applies a plan made (and reviewed) with
//! `cargo xtask plan --out FILE` instead.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use aws_clients::AwsClients;

use crate::artifact::Source;
use crate::context::{Context, block_on, confirm};
use crate::flags;
use crate::outputs::{Outputs, outputs_file};
use crate::private_buckets;
use crate::secrets::Secrets;
use crate::terraform::{
    self, Output, Prepared, ProviderUnavailable, Summary, Terraform, read_plan,
};
use crate::user_data;

/// What a deploy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deployed {
    pub summary: Summary,
    pub applied: bool,
}

pub fn run(cx: &Context, args: flags::Deploy) -> Result<ExitCode> {
    let started = Instant::now();
    let deployed = deploy(cx, &args, Source::built_for(cx))?;
    if cx.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "deploy {}: {}; outputs in {}, user-data in {} ({:.0}s)",
        cx.env.name,
        if deployed.summary.has_changes() {
            format!(
                "{} added, {} changed, {} destroyed",
                deployed.summary.add, deployed.summary.change, deployed.summary.destroy
            )
        } else {
            "no changes".to_string()
        },
        outputs_file(cx).display(),
        user_data::default_path(cx).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `build`: which binary to ship when `--binary` does not name one.
pub fn deploy(cx: &Context, args: &flags::Deploy, build: Source) -> Result<Deployed> {
    // Refuse before touching anything, not after a long build and plan.
    if !args.yes && !cx.dry_run && !std::io::stdin().is_terminal() {
        bail!("refusing to apply without --yes: standard input is not a terminal");
    }
    if let Some(plan_file) = &args.plan {
        return apply_saved_plan(cx, args, plan_file);
    }
    let Prepared {
        tf,
        backend,
        var_files,
    } = args.shared.prepare(cx, build)?;

    if cx.dry_run {
        dry_run(cx, &tf, &var_files)?;
        return Ok(Deployed::default());
    }

    terraform::init(cx, &tf, &backend, args.shared.backend_change())?;
    let plan_file = cx.state_dir().join("deploy.tfplan");
    let summary = terraform::plan(cx, &tf, &var_files, &plan_file)?;
    let applied = if summary.has_changes() {
        eprintln!("    plan: {}", summary.counts());
        if !args.yes {
            confirm(
                &format!("Apply this plan to `{}`? Type yes: ", cx.env.name),
                "yes",
            )?;
        }
        apply(cx, &tf, &plan_file)?;
        true
    } else {
        eprintln!("    no changes");
        false
    };
    let _ = std::fs::remove_file(&plan_file);
    finish(cx, &tf)?;
    Ok(Deployed { summary, applied })
}

/// `deploy --plan FILE`: exactly the reviewed plan; Terraform refuses it if the state moved on.
fn apply_saved_plan(cx: &Context, args: &flags::Deploy, plan_file: &Path) -> Result<Deployed> {
    if !plan_file.is_file() {
        bail!(
            "{} does not exist (make one with `cargo xtask plan --env {} --out FILE`)",
            plan_file.display(),
            cx.env.name
        );
    }
    let root_module = terraform::root_module(cx, args.shared.root_module.as_deref());
    let tf = Terraform::find(cx, args.shared.terraform.as_deref(), &root_module)?;
    let backend = private_buckets::require_backend_file(cx)?;
    terraform::write_local_override(cx, &root_module)?;
    if cx.dry_run {
        eprintln!(
            "    (dry run) {}",
            tf.display(&[
                "apply".into(),
                "-input=false".into(),
                plan_file.display().to_string()
            ])
        );
        return Ok(Deployed::default());
    }
    terraform::init(cx, &tf, &backend, args.shared.backend_change())?;
    let summary = read_plan(cx, &tf, plan_file)?;
    eprintln!("    plan {}: {}", plan_file.display(), summary.counts());
    if !args.yes {
        confirm(
            &format!("Apply this plan to `{}`? Type yes: ", cx.env.name),
            "yes",
        )?;
    }
    apply(cx, &tf, plan_file)?;
    finish(cx, &tf)?;
    Ok(Deployed {
        applied: true,
        summary,
    })
}

fn apply(cx: &Context, tf: &Terraform, plan_file: &Path) -> Result<()> {
    cx.step("terraform apply");
    let apply_args = vec![
        "apply".to_string(),
        "-input=false".into(),
        plan_file.display().to_string(),
    ];
    let apply = tf.run(cx, &apply_args, Output::Stream)?;
    if apply.code != 0 {
        bail!("terraform apply failed (exit {})", apply.code);
    }
    Ok(())
}

/// Saves the outputs and renders the user-data from them; makes the bearer token at the
/// first deploy (the instance waits for it), with the SDK so that no Terraform state or plan
/// ever holds it.
fn finish(cx: &Context, tf: &Terraform) -> Result<()> {
    let outputs = save_outputs(cx, tf)?;
    user_data::write(cx, &outputs, None)?;
    let operator = block_on(AwsClients::connect(&cx.env.aws))?;
    let secrets = Secrets::new(&outputs, &operator)?;
    if block_on(secrets.ensure_token(cx))? {
        eprintln!(
            "    bearer token made: SSM SecureString {} under the stack's key",
            secrets.token_parameter
        );
    }
    if block_on(secrets.ensure_fleet_certificate(cx))?
        && let Some(fleet) = &secrets.fleet
    {
        eprintln!(
            "    the fleet's TLS key and certificate made for {}: {} (SecureString) and {}",
            fleet.dns_name, fleet.key_parameter, secrets.certificate_parameter
        );
    }
    Ok(())
}

/// `--dry-run`: show the commands, and validate the configuration where the provider can be
/// installed (init without a backend changes nothing remote); elsewhere check it against the
/// provider's schema offline.
fn dry_run(cx: &Context, tf: &Terraform, var_files: &[PathBuf]) -> Result<()> {
    let vars: Vec<String> = var_files
        .iter()
        .map(|f| format!("-var-file={}", f.display()))
        .collect();
    for step in [
        format!(
            "init -input=false -backend-config={}",
            private_buckets::backend_file(cx).display()
        ),
        format!(
            "plan -input=false -out={} {}",
            cx.state_dir().join("deploy.tfplan").display(),
            vars.join(" ")
        ),
        format!(
            "apply -input=false {}",
            cx.state_dir().join("deploy.tfplan").display()
        ),
        "output -json".to_string(),
    ] {
        eprintln!("    (dry run) {}", tf.display(&[step]));
    }
    cx.step("terraform validate");
    let init = match terraform::run_init(
        cx,
        tf,
        &[
            "init".into(),
            "-input=false".into(),
            "-backend=false".into(),
        ],
    ) {
        Err(err) if err.downcast_ref::<ProviderUnavailable>().is_some() => {
            eprintln!(
                "    terraform validate cannot run: {err}; checking against the provider's schema offline instead"
            );
            return offline_validate(cx, &tf.root_module);
        }
        other => other?,
    };
    if init.code != 0 {
        bail!(
            "terraform init -backend=false failed (exit {}):\n{}",
            init.code,
            init.stderr
        );
    }
    let validate = tf.run(cx, &["validate".into()], Output::Stream)?;
    if validate.code != 0 {
        bail!("terraform validate found errors (see above)");
    }
    Ok(())
}

/// What `terraform validate` would say about the AWS blocks, from the provider's schema.
fn offline_validate(cx: &Context, root_module: &Path) -> Result<()> {
    let schema = crate::provider_schema::load(&crate::provider_schema::ensure(cx)?)?;
    let (checked, findings) = crate::terraform::schema_check::check_tree(root_module, &schema)?;
    for finding in &findings {
        eprintln!("    {finding}");
    }
    if !findings.is_empty() {
        bail!(
            "{} problem(s) in {} against the schema of hashicorp/aws {}",
            findings.len(),
            root_module.display(),
            schema.provider_version
        );
    }
    eprintln!(
        "    {checked} resources and data sources match the schema of hashicorp/aws {}",
        schema.provider_version
    );
    Ok(())
}

fn save_outputs(cx: &Context, tf: &Terraform) -> Result<Outputs> {
    cx.step("terraform output -json");
    let text = tf.output_json(cx)?;
    let path = outputs_file(cx);
    // Validate before writing, so a broken contract never replaces good outputs.
    let outputs = Outputs::parse(&text)?;
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok(outputs)
}
