//! The Terraform workflow every command shares: the root module, `init` (again only when
//! its inputs changed), the variable files, the local provider override, and telling an
//! unreachable provider registry from other failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Output, Terraform};
use crate::context::Context;

pub const LOCAL_OVERRIDE_FILE: &str = "xtask_local_override.tf";

pub fn root_module(cx: &Context, chosen: Option<&Path>) -> PathBuf {
    chosen
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cx.root.join("terraform"))
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
