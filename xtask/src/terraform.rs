//! The one Terraform wrapper: finds `terraform` or `tofu`, checks its version, and builds
//! non-interactive commands against a root module.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use xshell::{Cmd, cmd};

use crate::context::Context;
use crate::tools::find_on_path;

/// Chooses the binary: a name on PATH (`terraform`, `tofu`) or a path.
pub const BINARY_ENV: &str = "XTASK_TERRAFORM";
/// S3-native state locking (`use_lockfile`) arrived in Terraform 1.10 (OpenTofu 1.10 too).
pub const MIN_VERSION: (u64, u64) = (1, 10);

pub struct Terraform {
    pub binary: PathBuf,
    pub version: String,
    /// The root module every command runs in (`-chdir`).
    pub root_module: PathBuf,
}

impl Terraform {
    pub fn find(cx: &Context, choice: Option<&str>, root_module: &Path) -> Result<Terraform> {
        let env_choice = std::env::var(BINARY_ENV).ok();
        let choice = choice.or(env_choice.as_deref());
        let binary = match choice {
            Some(name) if name.contains('/') => {
                let path = PathBuf::from(name);
                if !path.is_file() {
                    bail!("{name} (from --terraform or {BINARY_ENV}) does not exist");
                }
                path
            }
            Some(name) => find_on_path(name).with_context(|| {
                format!("`{name}` (from --terraform or {BINARY_ENV}) is not on PATH")
            })?,
            None => find_on_path("terraform")
                .or_else(|| find_on_path("tofu"))
                .context(
                    "neither terraform nor tofu is on PATH: install Terraform >= 1.10 or OpenTofu >= 1.10, \
                     or point XTASK_TERRAFORM at one",
                )?,
        };
        let output = std::process::Command::new(&binary)
            .args(["version", "-json"])
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .with_context(|| format!("running {} version", binary.display()))?;
        if !output.status.success() {
            bail!(
                "`{} version -json` failed; is it Terraform or OpenTofu?",
                binary.display()
            );
        }
        let version = parse_version_json(&String::from_utf8_lossy(&output.stdout))
            .with_context(|| format!("reading the version of {}", binary.display()))?;
        check_version(&version).with_context(|| binary.display().to_string())?;
        if cx.verbose {
            eprintln!("    using {} {version}", binary.display());
        }
        Ok(Terraform {
            binary,
            version,
            root_module: root_module.to_path_buf(),
        })
    }

    /// `terraform -chdir=<root module> <args>` with automation settings.
    pub fn cmd<'a>(&self, cx: &'a Context, args: &[&str]) -> Cmd<'a> {
        let binary = &self.binary;
        let chdir = format!("-chdir={}", self.root_module.display());
        cmd!(cx.sh, "{binary} {chdir} {args...}")
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_INPUT", "0")
    }
}

fn parse_version_json(text: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct VersionJson {
        terraform_version: String,
    }
    let parsed: VersionJson = serde_json::from_str(text).context("unexpected `version -json` output")?;
    Ok(parsed.terraform_version)
}

fn check_version(version: &str) -> Result<()> {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        bail!("cannot read version `{version}`");
    };
    if (major, minor) < MIN_VERSION {
        bail!(
            "version {version} is too old: {}.{} or newer is needed for S3-native state locking (use_lockfile)",
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_terraform_and_tofu_version_json() {
        let tf = r#"{"terraform_version":"1.11.4","platform":"linux_amd64","provider_selections":{},"terraform_outdated":false}"#;
        assert_eq!(parse_version_json(tf).unwrap(), "1.11.4");
        let tofu = r#"{"terraform_version":"1.10.0-rc1","platform":"linux_amd64"}"#;
        assert_eq!(parse_version_json(tofu).unwrap(), "1.10.0-rc1");
        assert!(parse_version_json("Terraform v1.11.4").is_err());
    }

    #[test]
    fn versions_before_1_10_are_refused_with_the_reason() {
        assert!(check_version("1.10.0").is_ok());
        assert!(check_version("1.11.4").is_ok());
        assert!(check_version("2.0.0").is_ok());
        let err = check_version("1.9.8").unwrap_err().to_string();
        assert!(err.contains("1.9.8 is too old") && err.contains("use_lockfile"), "{err}");
        assert!(check_version("0.15.5").is_err());
        assert!(check_version("garbage").is_err());
    }
}
