//! What an environment is, defined once.
//!
//! `local` is built in: the emulator started by `cargo xtask local start`, its operator's
//! profile (see emulator.rs), region eu-west-1. Every other environment `<name>` is declared by
//! `terraform/environments/<name>.tfvars` (Terraform variables; the xtask reads `region` and
//! `name_prefix` from it, so the region is written once) and an optional
//! `terraform/environments/<name>.xtask.hcl` holding settings only the xtask uses.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use aws_clients::{AwsSettings, CredentialsSource};
use serde::Deserialize;

use crate::local::aws;

pub use crate::local::aws::LOCAL;
pub const LOCAL_NAME_PREFIX: &str = "filepipe-local";

#[derive(Clone, Debug)]
pub struct Environment {
    pub name: String,
    pub aws: AwsSettings,
    /// Prefix of every resource name (buckets, key alias, role).
    pub name_prefix: String,
    /// Explicit state bucket name; by default `<prefix>-tfstate-<account-id>-<region>`.
    pub state_bucket: Option<String>,
    /// Explicit artifact bucket name; by default `<prefix>-artifacts-<account-id>-<region>`.
    pub artifact_bucket: Option<String>,
    /// KMS key for the state and artifact buckets' default encryption; the AWS-managed
    /// `aws/s3` key if unset.
    pub state_kms_key_id: Option<String>,
    /// The Terraform var-file; `None` for `local`, whose variables the xtask generates.
    pub var_file: Option<PathBuf>,
    /// `<env>.tfvars` sets `service_binary_url`: the binary is published elsewhere, and
    /// `deploy` builds and uploads nothing.
    pub binary_url: bool,
}

/// The Terraform variables the xtask itself reads from `<env>.tfvars`.
#[derive(Deserialize)]
struct TfvarsHead {
    region: Option<String>,
    name_prefix: Option<String>,
    service_binary_url: Option<String>,
}

/// `<env>.xtask.hcl`: settings Terraform does not need. All optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct XtaskSettings {
    aws_profile: Option<String>,
    state_bucket: Option<String>,
    artifact_bucket: Option<String>,
    state_kms_key_id: Option<String>,
}

impl Environment {
    pub fn load(root: &Path, name: &str) -> Result<Environment> {
        validate_env_name(name)?;
        if name == LOCAL {
            return Ok(Environment::local(
                aws::local_settings(root, aws::OPERATOR_PROFILE),
                LOCAL_NAME_PREFIX,
            ));
        }
        let dir = environments_dir(root);
        let var_file = dir.join(format!("{name}.tfvars"));
        ensure!(
            var_file.is_file(),
            "unknown environment `{name}`: {} does not exist (environments: local{})",
            var_file.display(),
            list_environments(root)
                .iter()
                .map(|e| format!(", {e}"))
                .collect::<String>()
        );
        let text = std::fs::read_to_string(&var_file)
            .with_context(|| format!("reading {}", var_file.display()))?;
        let head: TfvarsHead =
            hcl::from_str(&text).with_context(|| format!("parsing {}", var_file.display()))?;
        let region = head
            .region
            .with_context(|| format!("{} must set `region`", var_file.display()))?;
        let name_prefix = head
            .name_prefix
            .with_context(|| format!("{} must set `name_prefix`", var_file.display()))?;
        validate_name_prefix(&name_prefix).with_context(|| format!("in {}", var_file.display()))?;

        let settings_file = dir.join(format!("{name}.xtask.hcl"));
        let settings: XtaskSettings = if settings_file.is_file() {
            let text = std::fs::read_to_string(&settings_file)
                .with_context(|| format!("reading {}", settings_file.display()))?;
            hcl::from_str(&text).with_context(|| format!("parsing {}", settings_file.display()))?
        } else {
            XtaskSettings::default()
        };

        Ok(Environment {
            name: name.to_string(),
            aws: AwsSettings {
                region,
                endpoint_url: None,
                s3_endpoint_url: None,
                credentials: CredentialsSource::DefaultChain {
                    profile: settings.aws_profile,
                },
                ca_bundle: None,
            },
            name_prefix,
            state_bucket: settings.state_bucket,
            artifact_bucket: settings.artifact_bucket,
            state_kms_key_id: settings.state_kms_key_id,
            var_file: Some(var_file),
            binary_url: head.service_binary_url.is_some(),
        })
    }

    /// The built-in emulator environment; tests give each their own name prefix so their
    /// state buckets and resources never collide.
    pub fn local(aws: AwsSettings, name_prefix: &str) -> Environment {
        Environment {
            name: LOCAL.to_string(),
            aws,
            name_prefix: name_prefix.to_string(),
            state_bucket: None,
            artifact_bucket: None,
            state_kms_key_id: None,
            var_file: None,
            binary_url: false,
        }
    }

    pub fn is_local(&self) -> bool {
        self.name == LOCAL
    }

    pub fn region(&self) -> &str {
        &self.aws.region
    }

    /// The state bucket's name; the default embeds account and region so it is globally unique.
    pub fn state_bucket_name(&self, account_id: &str) -> String {
        self.state_bucket
            .clone()
            .unwrap_or_else(|| self.account_bucket_name("tfstate", account_id))
    }

    /// The artifact bucket's name, made like the state bucket's.
    pub fn artifact_bucket_name(&self, account_id: &str) -> String {
        self.artifact_bucket
            .clone()
            .unwrap_or_else(|| self.account_bucket_name("artifacts", account_id))
    }

    /// `<prefix>-<purpose>-<account id>-<region>`: at most 20 + 10 + 12 + 14 + 3 = 59 characters.
    fn account_bucket_name(&self, purpose: &str, account_id: &str) -> String {
        format!(
            "{}-{purpose}-{account_id}-{}",
            self.name_prefix,
            self.region()
        )
    }
}

pub fn environments_dir(root: &Path) -> PathBuf {
    root.join("terraform").join("environments")
}

fn list_environments(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(environments_dir(root))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name().into_string().ok()?;
            file_name.strip_suffix(".tfvars").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

fn validate_env_name(name: &str) -> Result<()> {
    let ok = (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if !ok {
        bail!(
            "invalid environment name `{name}`: use 1-32 characters of a-z, 0-9 and `-`, not starting with `-`"
        );
    }
    Ok(())
}

/// Same rule as `var.name_prefix` in terraform/variables.tf: bucket names derived from it must
/// stay valid and within 63 characters.
pub fn validate_name_prefix(prefix: &str) -> Result<()> {
    let bytes = prefix.as_bytes();
    let ok = (3..=20).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!(
            "invalid name_prefix `{prefix}`: 3-20 characters of a-z, 0-9 and `-`, starting with a letter, not ending with `-`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "xtask-env-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(environments_dir(&root)).unwrap();
        for (name, text) in files {
            std::fs::write(environments_dir(&root).join(name), text).unwrap();
        }
        root
    }

    #[test]
    fn local_is_built_in() {
        let root = temp_root(&[]);
        let env = Environment::load(&root, "local").unwrap();
        assert!(env.is_local());
        assert_eq!(env.region(), crate::local::aws::LOCAL_REGION);
        assert!(
            env.aws
                .endpoint_url
                .as_deref()
                .unwrap()
                .starts_with("https://127.0.0.1:")
        );
        assert_eq!(
            env.state_bucket_name("123456789012"),
            "filepipe-local-tfstate-123456789012-eu-west-1"
        );
    }

    #[test]
    fn file_environment_reads_region_prefix_and_xtask_settings() {
        let root = temp_root(&[
            (
                "prod.tfvars",
                "region = \"us-east-1\"\nname_prefix = \"acme-files\"\nallowed_cidrs = [\"203.0.113.0/24\"]\n",
            ),
            (
                "prod.xtask.hcl",
                "aws_profile = \"prod-admin\"\nstate_bucket = \"acme-state\"\n",
            ),
        ]);
        let env = Environment::load(&root, "prod").unwrap();
        assert_eq!(env.region(), "us-east-1");
        assert_eq!(env.name_prefix, "acme-files");
        assert_eq!(env.aws.endpoint_url, None);
        assert_eq!(
            env.aws.credentials,
            CredentialsSource::DefaultChain {
                profile: Some("prod-admin".into())
            }
        );
        assert_eq!(env.state_bucket_name("111122223333"), "acme-state");
        assert_eq!(
            env.var_file,
            Some(environments_dir(&root).join("prod.tfvars"))
        );
    }

    #[test]
    fn default_state_bucket_embeds_account_and_region() {
        let root = temp_root(&[(
            "dev.tfvars",
            "region = \"eu-central-1\"\nname_prefix = \"dev-files\"\n",
        )]);
        let env = Environment::load(&root, "dev").unwrap();
        assert_eq!(
            env.state_bucket_name("111122223333"),
            "dev-files-tfstate-111122223333-eu-central-1"
        );
    }

    #[test]
    fn unknown_environment_names_the_missing_file_and_the_known_ones() {
        let root = temp_root(&[(
            "dev.tfvars",
            "region = \"eu-central-1\"\nname_prefix = \"dev-files\"\n",
        )]);
        let err = format!("{:#}", Environment::load(&root, "prod").unwrap_err());
        assert!(err.contains("prod.tfvars does not exist"), "{err}");
        assert!(err.contains("local, dev"), "{err}");
    }

    #[test]
    fn missing_region_and_bad_names_are_refused() {
        let root = temp_root(&[
            ("noregion.tfvars", "name_prefix = \"abc\"\n"),
            (
                "badprefix.tfvars",
                "region = \"eu-west-1\"\nname_prefix = \"Bad_Prefix\"\n",
            ),
            (
                "typo.tfvars",
                "region = \"eu-west-1\"\nname_prefix = \"abc\"\n",
            ),
            ("typo.xtask.hcl", "aws_profil = \"x\"\n"),
        ]);
        let err = format!("{:#}", Environment::load(&root, "noregion").unwrap_err());
        assert!(err.contains("must set `region`"), "{err}");
        let err = format!("{:#}", Environment::load(&root, "badprefix").unwrap_err());
        assert!(err.contains("invalid name_prefix"), "{err}");
        let err = format!("{:#}", Environment::load(&root, "typo").unwrap_err());
        assert!(err.contains("aws_profil"), "{err}");
        let err = format!("{:#}", Environment::load(&root, "../etc").unwrap_err());
        assert!(err.contains("invalid environment name"), "{err}");
    }
}
