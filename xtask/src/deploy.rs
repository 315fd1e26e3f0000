//! `cargo xtask deploy`: terraform init, plan, (confirm), apply, save outputs, render user-data.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::bootstrap;
use crate::context::Context;
use crate::outputs::Outputs;
use crate::render_user_data;
use crate::terraform::{Output, Terraform};

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
pub const LOCAL_OVERRIDE_FILE: &str = "xtask_local_override.tf";

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

pub fn root_module(cx: &Context, chosen: Option<&Path>) -> PathBuf {
    chosen
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cx.root.join("terraform"))
}

pub fn outputs_file(cx: &Context) -> PathBuf {
    cx.state_dir().join("outputs.json")
}

/// Runs `terraform init` when the backend settings, override or module changed since the
/// last successful init of this environment.
pub fn init(cx: &Context, tf: &Terraform, backend: &Path) -> Result<()> {
    let stamp_file = cx.state_dir().join("init.stamp");
    let stamp = init_fingerprint(tf, backend)?;
    let data_dir = &tf.data_dir;
    if data_dir.is_dir() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        if cx.verbose {
            eprintln!("==> terraform init (skipped: nothing changed since the last init)");
        }
        return Ok(());
    }
    cx.step("terraform init");
    let args = vec![
        "init".to_string(),
        "-input=false".into(),
        // The backend settings are ours, not state to migrate: a changed bucket is a new start.
        "-reconfigure".into(),
        format!("-backend-config={}", backend.display()),
    ];
    // Quiet: an offline machine would print a screenful about the registry.
    let init = tf.run(cx, &args, Output::Quiet)?;
    if init.code != 0 {
        if provider_unavailable(&init.stderr) {
            return Err(ProviderUnavailable.into());
        }
        bail!(
            "terraform init failed (exit {}):\n{}{}",
            init.code,
            init.stdout,
            init.stderr
        );
    }
    if cx.verbose {
        eprint!("{}", init.stdout);
    }
    std::fs::write(&stamp_file, stamp).with_context(|| format!("writing {}", stamp_file.display()))
}

fn init_fingerprint(tf: &Terraform, backend: &Path) -> Result<String> {
    let backend_text = std::fs::read_to_string(backend)
        .with_context(|| format!("reading {}", backend.display()))?;
    let override_text =
        std::fs::read_to_string(tf.root_module.join(LOCAL_OVERRIDE_FILE)).unwrap_or_default();
    Ok(format!(
        "{}\n{}\n{}\n{}\n",
        tf.version,
        tf.root_module.display(),
        backend_text,
        override_text
    ))
}

/// `terraform init` could not install the AWS provider (an offline machine); `up` then
/// provisions with its sandbox instead.
#[derive(Debug)]
pub struct ProviderUnavailable;

impl std::fmt::Display for ProviderUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "terraform init could not install the hashicorp/aws provider: this machine cannot reach the Terraform registry (offline?), so the real modules cannot be deployed here",
        )
    }
}

impl std::error::Error for ProviderUnavailable {}

/// Terraform's words when it cannot reach a registry or install a provider.
pub fn provider_unavailable(stderr: &str) -> bool {
    [
        "Failed to query available provider packages",
        "Failed to install provider",
        "could not connect to registry",
        "Failed to resolve provider packages",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

/// `-var-file`s: the environment's own (real AWS) and the variables the xtask sets itself.
pub fn var_files(cx: &Context) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if let Some(file) = &cx.env.var_file {
        files.push(file.clone());
    }
    let generated = cx.state_dir().join("xtask.tfvars.json");
    let text = serde_json::to_string_pretty(&Value::Object(
        xtask_variables(cx)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    ))?;
    if !cx.dry_run {
        std::fs::create_dir_all(cx.state_dir())?;
        std::fs::write(&generated, text)
            .with_context(|| format!("writing {}", generated.display()))?;
    }
    files.push(generated);
    Ok(files)
}

/// Variables the xtask passes to the root module. Every name must be declared in
/// terraform/variables.tf (checked by a test). For real environments only `environment`:
/// everything else comes from `<env>.tfvars`, so each value lives in one place.
pub fn xtask_variables(cx: &Context) -> BTreeMap<&'static str, Value> {
    let mut vars = BTreeMap::from([("environment", json!(cx.env.name))]);
    if cx.env.is_local() {
        vars.extend([
            ("region", json!(cx.env.region())),
            ("name_prefix", json!(cx.env.name_prefix)),
            // Plain HTTP and no condition evaluation in the emulator: rendered, not attached.
            ("attach_bucket_policies", json!(false)),
            ("force_destroy", json!(true)),
            ("kms_deletion_window_days", json!(7)),
            // No EC2 instance runs locally; the user-data is rendered for inspection only.
            (
                "service_binary_url",
                json!("https://artifacts.invalid/filepipe-service"),
            ),
            ("service_binary_sha256", json!("0".repeat(64))),
        ]);
    }
    vars
}

/// For `local`: a provider override (tflocal-style) sending every AWS service the stack uses
/// to the emulator. Removed for other environments so a stale one can never redirect a real
/// deploy. Written only where the root module configures the AWS provider.
pub fn write_local_override(cx: &Context, root_module: &Path) -> Result<()> {
    let path = root_module.join(LOCAL_OVERRIDE_FILE);
    let uses_aws_provider = std::fs::read_to_string(root_module.join("providers.tf"))
        .map(|text| text.contains("provider \"aws\""))
        .unwrap_or(false);
    let endpoint = cx.env.aws.endpoint_url.as_deref();
    match endpoint {
        Some(endpoint) if uses_aws_provider => {
            let text = format!(
                r#"# Generated by `cargo xtask deploy --env {env}`; gitignored, rewritten on every deploy.
# Points the AWS provider at the local emulator. Never committed, never used for real AWS.
# Credentials: the operator's profile, from the environment the xtask gives Terraform.
provider "aws" {{
  s3_use_path_style           = true
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  skip_region_validation      = true

  endpoints {{
    iam = "{endpoint}"
    kms = "{endpoint}"
    s3  = "{endpoint}"
    sts = "{endpoint}"
  }}
}}
"#,
                env = cx.env.name
            );
            if cx.dry_run {
                eprintln!("    (dry run) would write {}", path.display());
            } else {
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        _ => {
            if path.exists() && !cx.dry_run {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing stale {}", path.display()))?;
            }
        }
    }
    Ok(())
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

/// Asks on the terminal; anything but the expected answer aborts.
pub fn confirm(prompt: &str, expected: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to continue without --yes: standard input is not a terminal");
    }
    eprint!("{prompt}");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    if answer.trim() != expected {
        bail!("aborted: the answer was not `{expected}`");
    }
    Ok(())
}
