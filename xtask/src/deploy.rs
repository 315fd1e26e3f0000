//! `cargo xtask deploy`: terraform init, plan, (confirm), apply, save outputs, render user-data.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::bootstrap;
use crate::context::{Context, confirm};
use crate::outputs::{Outputs, outputs_file};
use crate::render_user_data;
use crate::terraform::{
    Output, Terraform, init, provider_unavailable, root_module, var_files, write_local_override,
};

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Args {
    /// Apply without asking; required when standard input is not a terminal.
    #[arg(long)]
    pub yes: bool,
    /// Terraform binary: `terraform`, `tofu` or a path [env: XTASK_TERRAFORM].
    #[arg(long)]
    pub terraform: Option<String>,
    /// Root module to deploy instead of terraform/ (the tests deploy a provider-free fixture).
    #[arg(long, hide = true)]
    pub root_module: Option<PathBuf>,
}

/// What a deploy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    pub applied: bool,
}

impl Summary {
    pub fn has_changes(&self) -> bool {
        self.add + self.change + self.destroy > 0
    }
}

/// The generated override file that points the AWS provider at the emulator.
pub fn run(cx: &Context, args: Args) -> Result<()> {
    let started = Instant::now();
    let summary = deploy(cx, &args)?;
    if cx.dry_run {
        return Ok(());
    }
    println!(
        "deploy {}: {}; outputs in {}, user-data in {} ({:.0}s)",
        cx.env.name,
        if summary.has_changes() {
            format!(
                "{} added, {} changed, {} destroyed",
                summary.add, summary.change, summary.destroy
            )
        } else {
            "no changes".to_string()
        },
        outputs_file(cx).display(),
        render_user_data::default_path(cx).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn deploy(cx: &Context, args: &Args) -> Result<Summary> {
    // Refuse before touching anything, not after a long plan.
    if !args.yes && !cx.dry_run && !std::io::stdin().is_terminal() {
        bail!("refusing to apply without --yes: standard input is not a terminal");
    }
    let root_module = root_module(cx, args.root_module.as_deref());
    let tf = Terraform::find(cx, args.terraform.as_deref(), &root_module)?;
    let backend = bootstrap::backend_file(cx);
    if !backend.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask bootstrap --env {}` first",
            backend.display(),
            cx.env.name
        );
    }
    write_local_override(cx, &root_module)?;
    let var_files = var_files(cx)?;

    if cx.dry_run {
        dry_run(cx, &tf, &var_files)?;
        return Ok(Summary::default());
    }

    init(cx, &tf, &backend)?;
    let plan_file = cx.state_dir().join("deploy.tfplan");
    let mut plan_args = vec![
        "plan".to_string(),
        "-input=false".into(),
        "-detailed-exitcode".into(),
        format!("-out={}", plan_file.display()),
    ];
    plan_args.extend(
        var_files
            .iter()
            .map(|f| format!("-var-file={}", f.display())),
    );
    cx.step("terraform plan");
    let plan = tf.run(cx, &plan_args, Output::Stream)?;
    let mut summary = match plan.code {
        0 => Summary::default(),
        2 => plan_summary(cx, &tf, &plan_file)?,
        _ => bail!("terraform plan failed (exit {})", plan.code),
    };
    if summary.has_changes() || plan.code == 2 {
        eprintln!(
            "    plan: {} to add, {} to change, {} to destroy",
            summary.add, summary.change, summary.destroy
        );
        if !args.yes {
            confirm(
                &format!("Apply this plan to `{}`? Type yes: ", cx.env.name),
                "yes",
            )?;
        }
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
        summary.applied = true;
    } else {
        eprintln!("    no changes");
    }
    let _ = std::fs::remove_file(&plan_file);

    let outputs = save_outputs(cx, &tf)?;
    render_user_data::write(cx, &outputs, None)?;
    Ok(summary)
}

/// `--dry-run`: show the commands, and validate the configuration where the provider can be
/// installed (init without a backend changes nothing remote).
fn dry_run(cx: &Context, tf: &Terraform, var_files: &[PathBuf]) -> Result<()> {
    let vars: Vec<String> = var_files
        .iter()
        .map(|f| format!("-var-file={}", f.display()))
        .collect();
    for step in [
        format!(
            "init -input=false -reconfigure -backend-config={}",
            bootstrap::backend_file(cx).display()
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
    let init = tf.run(
        cx,
        &[
            "init".into(),
            "-input=false".into(),
            "-backend=false".into(),
        ],
        Output::Quiet,
    )?;
    if init.code != 0 {
        if provider_unavailable(&init.stderr) {
            eprintln!(
                "    terraform validate skipped: the hashicorp/aws provider cannot be installed on this machine (no registry access)"
            );
            return Ok(());
        }
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

fn plan_summary(cx: &Context, tf: &Terraform, plan_file: &Path) -> Result<Summary> {
    let show = tf.run(
        cx,
        &[
            "show".into(),
            "-json".into(),
            plan_file.display().to_string(),
        ],
        Output::CaptureStdout,
    )?;
    if show.code != 0 {
        bail!("terraform show -json failed (exit {})", show.code);
    }
    let plan: Value = serde_json::from_str(&show.stdout).context("terraform show -json output")?;
    let mut summary = Summary::default();
    for change in plan["resource_changes"].as_array().into_iter().flatten() {
        let actions: Vec<&str> = change["change"]["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match actions.as_slice() {
            ["create"] => summary.add += 1,
            ["update"] => summary.change += 1,
            ["delete"] => summary.destroy += 1,
            [_, _] => {
                // A replacement: delete+create or create+delete.
                summary.add += 1;
                summary.destroy += 1;
            }
            _ => {}
        }
    }
    Ok(summary)
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
