//! Where the hashicorp/aws provider comes from. Terraform's normal installation first (the
//! registry, and the implied local mirror directories Terraform searches by itself); where
//! the registry cannot be reached, a filesystem mirror found in Terraform's implied mirror
//! directories or in a directory of the mirror layout (`<dir>/registry.terraform.io/hashicorp/aws/<version>/<os>_<arch>/`) one level
//! under the usual install prefixes. A mirror named by `XTASK_TF_PROVIDER_MIRROR` is used
//! at once, registry or not. No machine path is ever written into the project.
//!
//! Every Terraform run gets the project's own CLI configuration (`TF_CLI_CONFIG_FILE`), so a
//! user's or an image's broken one neither warns on every run nor changes where providers
//! come from behind the xtask's back.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Names a filesystem mirror holding hashicorp/aws (the directory that contains
/// `registry.terraform.io/`).
pub const MIRROR_ENV: &str = "XTASK_TF_PROVIDER_MIRROR";
const PROVIDER: &str = "registry.terraform.io/hashicorp/aws";

/// How providers are installed: Terraform's defaults, or hashicorp/aws from a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installation {
    Registry,
    Mirror(PathBuf),
}

impl Installation {
    /// The CLI configuration that says so.
    pub fn cli_config(&self) -> String {
        let header =
            "# Written by `cargo xtask`: the CLI configuration of the project's Terraform runs.\n";
        match self {
            Installation::Registry => {
                format!("{header}# Providers install as Terraform does by default.\n")
            }
            Installation::Mirror(dir) => format!(
                r#"{header}# The registry could not be reached: hashicorp/aws from a filesystem mirror.
provider_installation {{
  filesystem_mirror {{
    path    = "{}"
    include = ["{PROVIDER}"]
  }}
  direct {{
    exclude = ["{PROVIDER}"]
  }}
}}
"#,
                dir.display()
            ),
        }
    }
}

/// Terraform's name of this machine's platform (`linux_amd64`).
fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}_{arch}", std::env::consts::OS)
}

/// Whether `dir` is a filesystem mirror with a hashicorp/aws build for this platform, in
/// either of the layouts Terraform reads (unpacked directory or zip archive).
pub fn holds_provider(dir: &Path) -> bool {
    let platform = platform();
    let Ok(versions) = std::fs::read_dir(dir.join(PROVIDER)) else {
        return false;
    };
    let zip_prefix = "terraform-provider-aws_";
    let zip_suffix = format!("_{platform}.zip");
    versions.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let unpacked = std::fs::read_dir(entry.path().join(&platform))
            .map(|files| {
                files
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with(zip_prefix))
            })
            .unwrap_or(false);
        unpacked || (name.starts_with(zip_prefix) && name.ends_with(&zip_suffix))
    })
}

/// Terraform's implied local mirror directories on Unix ("Implied Local Mirror Directories"
/// in the CLI configuration documentation), then one level under the usual prefixes.
fn candidates() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut dirs = Vec::new();
    if let Some(home) = &home {
        dirs.push(home.join(".terraform.d/plugins"));
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".local/share")));
    dirs.extend(data_home.map(|d| d.join("terraform/plugins")));
    let data_dirs = std::env::var("XDG_DATA_DIRS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/usr/local/share:/usr/share".into());
    dirs.extend(
        data_dirs
            .split(':')
            .map(|d| Path::new(d).join("terraform/plugins")),
    );
    let prefixes = [
        "/opt",
        "/usr/local/share",
        "/usr/local/lib",
        "/usr/share",
        "/usr/lib",
    ];
    for prefix in prefixes.iter().map(PathBuf::from).chain(home) {
        if let Ok(entries) = std::fs::read_dir(&prefix) {
            let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            found.sort();
            dirs.extend(found);
        }
    }
    dirs
}

/// The mirror `XTASK_TF_PROVIDER_MIRROR` names (`setting`, its value), which must hold the
/// provider; `None` when it names none.
pub fn named_mirror(setting: Option<&std::ffi::OsStr>) -> Result<Option<PathBuf>> {
    let Some(dir) = setting.filter(|v| !v.is_empty()).map(PathBuf::from) else {
        return Ok(None);
    };
    if !holds_provider(&dir) {
        bail!(
            "{MIRROR_ENV}={} holds no hashicorp/aws provider for {}: expected {}/{PROVIDER}/<version>/{}/terraform-provider-aws_*",
            dir.display(),
            platform(),
            dir.display(),
            platform()
        );
    }
    Ok(Some(dir))
}

/// The first mirror holding the provider in the implied and usual locations.
pub fn discovered_mirror() -> Option<PathBuf> {
    candidates().into_iter().find(|dir| holds_provider(dir))
}

/// The one sentence for a machine where no provider can be had.
pub fn unavailable_help() -> String {
    format!(
        "terraform could not install the hashicorp/aws provider: the registry cannot be reached and no filesystem mirror of it was found. \
         Give Terraform registry access, or set {MIRROR_ENV} to a directory holding {PROVIDER}/<version>/{}/ \
         (as `terraform providers mirror` writes it; any version >= 5.100, < 7.0)",
        platform()
    )
}

/// The hashicorp/aws version `init` selected, from the root module's dependency lock file.
pub fn locked_version(root_module: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(root_module.join(".terraform.lock.hcl")).ok()?;
    let block = &lock[lock.find(&format!("provider \"{PROVIDER}\""))?..];
    let line = block
        .lines()
        .find(|l| l.trim_start().starts_with("version"))?;
    Some(line.split('"').nth(1)?.to_string())
}

pub fn write_cli_config(path: &Path, installation: &Installation) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, installation.cli_config())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror_with(files: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-mirror-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for file in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        dir
    }

    #[test]
    fn a_mirror_holds_the_provider_only_for_this_platform() {
        let p = platform();
        let unpacked = mirror_with(&[&format!(
            "{PROVIDER}/5.100.0/{p}/terraform-provider-aws_v5.100.0_x5"
        )]);
        assert!(holds_provider(&unpacked));
        let packed = mirror_with(&[
            "x",
            &format!("{PROVIDER}/terraform-provider-aws_6.2.0_{p}.zip"),
        ]);
        assert!(holds_provider(&packed));
        let other = mirror_with(&[
            "a",
            "b",
            &format!("{PROVIDER}/5.100.0/plan9_mips/terraform-provider-aws_v5.100.0_x5"),
        ]);
        assert!(!holds_provider(&other));
        assert!(!holds_provider(Path::new("/nonexistent")));
    }

    #[test]
    fn a_named_mirror_must_hold_the_provider_and_says_what_it_lacks_in_one_line() {
        assert_eq!(named_mirror(None).unwrap(), None);
        assert_eq!(named_mirror(Some("".as_ref())).unwrap(), None);
        let p = platform();
        let good = mirror_with(&[
            "n1",
            "n2",
            "n3",
            &format!("{PROVIDER}/5.100.0/{p}/terraform-provider-aws_v5.100.0_x5"),
        ]);
        assert_eq!(named_mirror(Some(good.as_os_str())).unwrap(), Some(good));
        let empty = mirror_with(&["n1", "n2", "n3", "n4", "n5"]);
        let err = named_mirror(Some(empty.as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{MIRROR_ENV}={}", empty.display())),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn without_any_provider_the_help_is_one_sentence_naming_the_setting() {
        let help = unavailable_help();
        assert!(!help.contains('\n') && help.contains(MIRROR_ENV), "{help}");
        assert!(help.contains(">= 5.100, < 7.0"), "{help}");
    }

    #[test]
    fn the_mirror_configuration_takes_only_the_aws_provider_from_the_mirror() {
        let text = Installation::Mirror("/m".into()).cli_config();
        assert!(text.contains("path    = \"/m\""), "{text}");
        assert!(
            text.contains(&format!("include = [\"{PROVIDER}\"]"))
                && text.contains(&format!("exclude = [\"{PROVIDER}\"]")),
            "{text}"
        );
        assert!(
            !Installation::Registry
                .cli_config()
                .contains("provider_installation")
        );
    }
}
