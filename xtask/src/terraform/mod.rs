//! The one Terraform wrapper: finds `terraform` or `tofu`, checks its version, and builds
//! non-interactive commands against a root module.

mod local_override;
mod plan;
pub mod provider;
pub mod references;
pub mod schema_check;
mod workflow;

pub use local_override::*;
pub use plan::*;
pub use workflow::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use aws_clients::subprocess_env;

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
    /// `TF_DATA_DIR`: per environment, so `terraform/` stays clean and environments never
    /// share a `.terraform`.
    pub data_dir: PathBuf,
    /// `TF_CLI_CONFIG_FILE`: the project's own, per environment (see `provider`).
    pub cli_config: PathBuf,
    /// The value of `XTASK_TF_PROVIDER_MIRROR` when found (see `provider::named_mirror`).
    pub named_mirror: Option<std::ffi::OsString>,
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
        let cli_config = cx.state_dir().join("terraform.rc");
        if !cli_config.exists() {
            provider::write_cli_config(&cli_config, &provider::Installation::Registry)?;
        }
        Ok(Terraform {
            binary,
            version,
            root_module: root_module.to_path_buf(),
            data_dir: cx.state_dir().join("terraform-data"),
            cli_config,
            named_mirror: std::env::var_os(provider::MIRROR_ENV),
        })
    }

    /// The command line as the user would type it, for step headers and `--dry-run`.
    pub fn display(&self, args: &[String]) -> String {
        format!(
            "{} -chdir={} {}",
            self.binary
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            self.root_module.display(),
            args.join(" ")
        )
    }

    /// Runs `terraform -chdir=<root module> <args>` non-interactively, with the environment's
    /// credentials and its data directory. Output is streamed live, indented, and the
    /// error stream is also kept for diagnosis.
    pub fn run(&self, cx: &Context, args: &[String], output: Output) -> Result<Finished> {
        let (subcommand, rest) = args.split_first().expect("a terraform subcommand");
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("-chdir={}", self.root_module.display()))
            .arg(subcommand)
            // Output is indented and often captured: colour codes only garble it.
            .arg("-no-color")
            .args(rest)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_INPUT", "0")
            .env("TF_DATA_DIR", &self.data_dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .envs(subprocess_env(&cx.env.aws))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let show_stderr = output != Output::Quiet;
        let show_stdout = output == Output::Stream;
        let stderr_reader = std::thread::spawn(move || {
            let mut kept = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if show_stderr {
                    eprintln!("    {line}");
                }
                kept.push_str(&line);
                kept.push('\n');
            }
            kept
        });
        let mut captured = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if show_stdout {
                eprintln!("    {line}");
            } else {
                captured.push_str(&line);
                captured.push('\n');
            }
        }
        let status = child.wait().context("waiting for terraform")?;
        let stderr = stderr_reader.join().unwrap_or_default();
        Ok(Finished {
            code: status.code().unwrap_or(-1),
            stdout: captured,
            stderr,
        })
    }
}

impl Terraform {
    /// `terraform output -json`, as text.
    pub fn output_json(&self, cx: &Context) -> Result<String> {
        let output = self.run(
            cx,
            &["output".into(), "-json".into()],
            Output::CaptureStdout,
        )?;
        if output.code != 0 {
            bail!(
                "terraform output failed (exit {}):\n{}",
                output.code,
                output.stderr
            );
        }
        Ok(output.stdout)
    }
}

/// What to show of a command's output while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Both streams live.
    Stream,
    /// Standard output captured (for `-json`), errors live.
    CaptureStdout,
    /// Nothing shown; both kept, for commands whose failures are explained in one sentence.
    Quiet,
}

/// A finished Terraform command.
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn parse_version_json(text: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct VersionJson {
        terraform_version: String,
    }
    let parsed: VersionJson =
        serde_json::from_str(text).context("unexpected `version -json` output")?;
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
        assert!(
            err.contains("1.9.8 is too old") && err.contains("use_lockfile"),
            "{err}"
        );
        assert!(check_version("0.15.5").is_err());
        assert!(check_version("garbage").is_err());
    }
}
