//! The Terraform workflow every command shares: the root module, `init` (again only when
//! its inputs changed, and never silently onto a new backend), the variable files, planning
//! and reading a plan, the local provider override, and telling an unreachable provider
//! registry from other failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::provider::{self, Installation};
use super::{Finished, Output, Terraform};
use crate::artifact::{self, Artifact, Source};
use crate::context::{Context, confirm};
use crate::flags;
use crate::private_buckets;

pub const LOCAL_OVERRIDE_FILE: &str = "xtask_local_override.tf";

/// The provider's endpoint names of every AWS service terraform/ creates or reads (a test
/// derives the list from the resource types in the HCL, so a new service cannot be missed).
pub const LOCAL_OVERRIDE_SERVICES: [&str; 9] = [
    "autoscaling",
    "ec2",
    "elbv2",
    "iam",
    "kms",
    "s3",
    "sqs",
    "ssm",
    "sts",
];

/// What a plan needs, ready: Terraform found, the backend bootstrapped, the service binary
/// delivered (unless the environment names its own URL), the variable files written.
pub struct Prepared {
    pub tf: Terraform,
    pub backend: PathBuf,
    pub var_files: Vec<PathBuf>,
}

/// The checks that cost nothing come first, so a long build never precedes a refusal.
pub fn prepare(
    cx: &Context,
    terraform: Option<&str>,
    chosen_root: Option<&Path>,
    binary: &artifact::Source,
) -> Result<Prepared> {
    let root_module = root_module(cx, chosen_root);
    let tf = Terraform::find(cx, terraform, &root_module)?;
    let backend = private_buckets::require_backend_file(cx)?;
    write_local_override(cx, &root_module)?;
    let artifact = if cx.env.binary_url {
        eprintln!(
            "    the service binary comes from service_binary_url in {}: nothing to build or upload",
            cx.env
                .var_file
                .as_deref()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
        None
    } else {
        Some(artifact::deliver(cx, binary)?)
    };
    let var_files = var_files(cx, artifact.as_ref())?;
    Ok(Prepared {
        tf,
        backend,
        var_files,
    })
}

pub fn root_module(cx: &Context, chosen: Option<&Path>) -> PathBuf {
    chosen
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cx.root.join("terraform"))
}

/// What `init` may do when the backend settings differ from the ones the state was last
/// initialised with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChange {
    /// Refuse, naming the flag that migrates (asks first on a terminal).
    #[default]
    Refuse,
    /// `--migrate-state`: copy the state to the new backend.
    Migrate,
}

impl flags::Stack {
    fn source(&self, default: Source) -> Source {
        self.binary.clone().map(Source::Given).unwrap_or(default)
    }

    /// Terraform found, the backend bootstrapped, the binary delivered, the var files written.
    pub fn prepare(&self, cx: &Context, build: Source) -> Result<Prepared> {
        prepare(
            cx,
            self.terraform.as_deref(),
            self.root_module.as_deref(),
            &self.source(build),
        )
    }

    pub fn backend_change(&self) -> BackendChange {
        if self.migrate_state {
            BackendChange::Migrate
        } else {
            BackendChange::Refuse
        }
    }
}

/// Runs `terraform init` when the backend settings, override or module changed since the
/// last successful init of this environment.
///
/// A changed backend (another bucket, key or region) is never reconfigured silently: that
/// would start from an empty state, and the next apply would try to create everything again.
/// The state is migrated after confirmation (or `--migrate-state`), or init refuses and says
/// what to run. The emulator is the exception: its state lives and dies with the emulator, so
/// `local` reconfigures.
pub fn init(cx: &Context, tf: &Terraform, backend: &Path, change: BackendChange) -> Result<()> {
    let stamp_file = cx.state_dir().join("init.stamp");
    let stamp = init_fingerprint(tf, backend)?;
    let data_dir = &tf.data_dir;
    if data_dir.is_dir() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        if cx.verbose {
            eprintln!("==> terraform init (skipped: nothing changed since the last init)");
        }
        return Ok(());
    }
    let mut args = vec![
        "init".to_string(),
        "-input=false".into(),
        format!("-backend-config={}", backend.display()),
    ];
    if cx.env.is_local() {
        args.push("-reconfigure".into());
    }
    cx.step("terraform init");
    let mut init = run_init(cx, tf, &args)?;
    if init.code != 0 && backend_changed(&init.stderr) {
        let migrate = match change {
            BackendChange::Migrate => true,
            BackendChange::Refuse if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                eprintln!(
                    "    the backend settings in {} differ from the ones this environment's state was initialised with",
                    backend.display()
                );
                confirm(
                    "Copy the existing state to the new backend? Type yes: ",
                    "yes",
                )?;
                true
            }
            BackendChange::Refuse => false,
        };
        if !migrate {
            bail!(
                "the backend settings of `{env}` changed since the last init ({}): starting over there would forget every resource. \
                 Run `cargo xtask deploy --env {env} --migrate-state` to copy the state to the new backend, \
                 or delete {} if an empty state is really what you want",
                backend.display(),
                tf.data_dir.display(),
                env = cx.env.name
            );
        }
        cx.step("terraform init -migrate-state");
        args.extend(["-migrate-state".into(), "-force-copy".into()]);
        init = run_init(cx, tf, &args)?;
    }
    if init.code != 0 {
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

/// Terraform's words when the backend configuration differs from the initialised one.
fn backend_changed(stderr: &str) -> bool {
    stderr.contains("Backend configuration changed")
}

/// `terraform init` with `args`: hashicorp/aws from the mirror `XTASK_TF_PROVIDER_MIRROR`
/// names; else from the registry, and where it cannot be reached, again from a mirror found
/// on this machine (`provider::discovered_mirror`). Quiet: an offline machine would print a
/// screenful about the registry. `ProviderUnavailable` when nothing works.
pub fn run_init(cx: &Context, tf: &Terraform, args: &[String]) -> Result<Finished> {
    if let Some(mirror) = provider::named_mirror(tf.named_mirror.as_deref())? {
        return init_from_mirror(cx, tf, args, &mirror);
    }
    provider::write_cli_config(&tf.cli_config, &Installation::Registry)?;
    let init = tf.run(cx, args, Output::Quiet)?;
    if init.code == 0 || !provider_unavailable(&init.stderr) {
        return Ok(init);
    }
    let Some(mirror) = provider::discovered_mirror() else {
        return Err(ProviderUnavailable.into());
    };
    eprintln!(
        "    the Terraform registry cannot be reached: hashicorp/aws from the filesystem mirror {}",
        mirror.display()
    );
    init_from_mirror(cx, tf, args, &mirror)
}

fn init_from_mirror(
    cx: &Context,
    tf: &Terraform,
    args: &[String],
    mirror: &Path,
) -> Result<Finished> {
    provider::write_cli_config(&tf.cli_config, &Installation::Mirror(mirror.to_path_buf()))?;
    let init = tf.run(cx, args, Output::Quiet)?;
    if init.code != 0 && provider_unavailable(&init.stderr) {
        bail!(
            "terraform init could not install hashicorp/aws from the mirror {}:\n{}",
            mirror.display(),
            init.stderr
        );
    }
    Ok(init)
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

/// `terraform init` could install the AWS provider neither from the registry nor from a
/// mirror: the message says how to provide one.
#[derive(Debug)]
pub struct ProviderUnavailable;

impl std::fmt::Display for ProviderUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&provider::unavailable_help())
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
pub fn var_files(cx: &Context, artifact: Option<&Artifact>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if let Some(file) = &cx.env.var_file {
        files.push(file.clone());
    }
    let generated = cx.state_dir().join("xtask.tfvars.json");
    let text = serde_json::to_string_pretty(&Value::Object(
        xtask_variables(cx, artifact)
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
/// terraform/variables.tf (checked by a test). For real environments `environment` and the
/// artifact the xtask uploaded: everything else comes from `<env>.tfvars`, so each value
/// lives in one place.
pub fn xtask_variables(cx: &Context, artifact: Option<&Artifact>) -> BTreeMap<&'static str, Value> {
    let mut vars = BTreeMap::from([("environment", json!(cx.env.name))]);
    if let Some(artifact) = artifact {
        vars.insert("service_artifact", artifact.variable());
    }
    if cx.env.is_local() {
        vars.extend([
            ("region", json!(cx.env.region())),
            ("name_prefix", json!(cx.env.name_prefix)),
            // Every policy attached as on AWS, the emulator evaluating it: objects only from
            // the loopback address the local service and the operator use, and the
            // operator exempt as a real deploy's admins are.
            ("allowed_cidrs", json!(["127.0.0.1/32"])),
            (
                "admin_principal_arns",
                json!([crate::local::emulator::operator_arn()]),
            ),
            ("force_destroy", json!(true)),
            ("kms_deletion_window_days", json!(7)),
            // The local service listens on loopback; so does the emulator's stand-in host.
            ("client_cidrs", json!(["127.0.0.1/32"])),
        ]);
    }
    vars
}

/// What a plan would do.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    /// Outputs the plan changes: a plan with only these still has to be applied, or the
    /// state (and so outputs.json) keeps the old ones.
    pub outputs: usize,
    /// Every resource the plan touches, with its actions (`create`, `update`, `delete`, ...).
    pub resources: Vec<(String, Vec<String>)>,
}

impl Summary {
    pub fn has_changes(&self) -> bool {
        self.add + self.change + self.destroy + self.outputs > 0
    }

    pub fn counts(&self) -> String {
        format!(
            "{} to add, {} to change, {} to destroy, {} output(s) changed",
            self.add, self.change, self.destroy, self.outputs
        )
    }
}

/// `terraform plan -out=<file>` with the var files; the summary when there are changes.
pub fn plan(cx: &Context, tf: &Terraform, var_files: &[PathBuf], out: &Path) -> Result<Summary> {
    let mut args = vec![
        "plan".to_string(),
        "-input=false".into(),
        "-detailed-exitcode".into(),
        format!("-out={}", out.display()),
    ];
    args.extend(
        var_files
            .iter()
            .map(|f| format!("-var-file={}", f.display())),
    );
    cx.step("terraform plan");
    let plan = tf.run(cx, &args, Output::Stream)?;
    match plan.code {
        0 => Ok(Summary::default()),
        2 => read_plan(cx, tf, out),
        code => bail!(
            "terraform plan failed (exit {code}): {}",
            first_error(&plan.stderr)
        ),
    }
}

/// Terraform's first error, its summary and explanation in one line, without the source
/// excerpt: what a failed command ends with (the whole output was streamed above it).
pub fn first_error(stderr: &str) -> String {
    let Some(start) = stderr.find("Error:") else {
        return "see Terraform's output above".into();
    };
    let mut words = Vec::new();
    for line in stderr[start..].lines().map(str::trim) {
        if line.starts_with("Error:") && !words.is_empty() {
            break;
        }
        let excerpt = line.starts_with("on ")
            || line.starts_with('│')
            || line.starts_with('├')
            || line.starts_with("This was checked")
            || line.starts_with(|c: char| c.is_ascii_digit())
            || line.starts_with("modules/");
        if !line.is_empty() && !excerpt {
            words.push(line);
        }
    }
    words.join(" ")
}

/// What a saved plan file would do (`terraform show -json`).
pub fn read_plan(cx: &Context, tf: &Terraform, plan_file: &Path) -> Result<Summary> {
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
        bail!(
            "terraform show -json {} failed (exit {})",
            plan_file.display(),
            show.code
        );
    }
    let plan: Value = serde_json::from_str(&show.stdout).context("terraform show -json output")?;
    let mut summary = Summary::default();
    for change in plan["resource_changes"].as_array().into_iter().flatten() {
        let actions: Vec<String> = change["change"]["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        match actions
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["create"] => summary.add += 1,
            ["update"] => summary.change += 1,
            ["delete"] => summary.destroy += 1,
            [_, _] => {
                // A replacement: delete+create or create+delete.
                summary.add += 1;
                summary.destroy += 1;
            }
            _ => continue,
        }
        let address = change["address"].as_str().unwrap_or("?").to_string();
        summary.resources.push((address, actions));
    }
    summary.outputs = plan["output_changes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, change)| change["actions"] != serde_json::json!(["no-op"]))
        .count();
    Ok(summary)
}

/// For `local`: a provider override (tflocal-style) sending every AWS service the stack uses
/// to the emulator. Each service is named, so that none depends on the provider reading the
/// profile's `endpoint_url`. Removed for other environments so a stale one can never redirect a real
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

  # Every service the stack uses (LOCAL_OVERRIDE_SERVICES): none may reach real AWS.
  endpoints {{
{endpoints}  }}
}}
"#,
                env = cx.env.name,
                endpoints = LOCAL_OVERRIDE_SERVICES
                    .iter()
                    .map(|service| format!("    {service:<11} = \"{endpoint}\"\n"))
                    .collect::<String>()
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

#[cfg(test)]
mod tests {
    use super::first_error;

    #[test]
    fn a_failed_plan_ends_with_terraforms_reason_in_one_line() {
        let stderr = "\nError: Invalid value for variable\n\n  on main.tf line 190, in module \"host\":\n 190:   instance_count = var.instance_count\n    ├────────────────\n    │ var.instance_count is 3\n\ninstance_count > 1 needs s3_gateway_endpoint_route_table_ids: a fleet's\ninstances have no fixed addresses.\n\nThis was checked by the validation rule at\nmodules/host/variables.tf:136,3-13.\n\nError: another\n";
        assert_eq!(
            first_error(stderr),
            "Error: Invalid value for variable instance_count > 1 needs s3_gateway_endpoint_route_table_ids: a fleet's instances have no fixed addresses."
        );
        assert_eq!(first_error("nothing"), "see Terraform's output above");
    }
}
