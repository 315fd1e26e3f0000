//! The Terraform workflow every command shares: the root module, `init` (again only when
//! its inputs changed, and never silently onto a new backend), the variable files, planning
//! and reading a plan, the local provider override, and telling an unreachable provider
//! registry from other failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::local_override::{LOCAL_OVERRIDE_FILE, write_local_override};
use super::provider::{self, Installation};
use super::{Finished, Output, Terraform};
use crate::artifact::{self, Artifact, Source};
use crate::context::{Context, confirm};
use crate::flags;
use crate::private_buckets;

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
