//! The instance's first boot, on this machine: the rendered user-data script runs for real,
//! in a throwaway root (`FILEPIPE_ROOT`), as the instance role. The download from the
//! artifact bucket (the AWS CLI, with the role's credentials from the emulator), the checksum
//! and the files it installs are the script's own. Only what a machine that is not an EC2
//! instance cannot give is stood in for, by programs first on its PATH that record each call:
//! systemd (`systemctl`, `systemd-cat`), user management (`id`, `useradd`, the owners of
//! `chown` and `install`, since the root is not ours to own) and the metadata service
//! (`curl` to 169.254.169.254, which insists on an IMDSv2 token).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsSettings, subprocess_env};

use crate::artifact::FILE_NAME;
use crate::context::Context;
use crate::tools::{PythonTool, find_on_path};

/// The AWS CLI the user-data calls (Amazon Linux 2023 ships v2; PyPI has v1, which takes
/// `aws s3 cp` the same way and honours AWS_ENDPOINT_URL).
pub const AWS_CLI: PythonTool = PythonTool {
    venv: "awscli",
    executable: "aws",
    requirement: "awscli==1.45.11",
};

/// The instance id the metadata stand-in reports.
pub const INSTANCE_ID: &str = "i-0f11e0000000000b0";
/// The session token the metadata stand-in hands out and then requires.
const IMDS_TOKEN: &str = "stand-in-imdsv2-token";

/// Under the root: the stand-ins (`bin/`), the script, its output (`user-data.log`) and every
/// stand-in call, one per line (`calls.log`: `systemctl enable --now filepipe.service`, ...).
pub const STAND_INS_DIR: &str = ".stand-ins";

/// What the user-data installed.
#[derive(Debug)]
pub struct Installed {
    /// `<root>/usr/local/bin/filepipe-service`, checksum-verified by the script.
    pub binary: PathBuf,
    /// `<root>/etc/filepipe/service.env`, as the systemd unit reads it.
    pub environment: Vec<(String, String)>,
}

/// `bash <script>` as the instance runs it: the stand-ins and the AWS CLI first on PATH, the
/// instance role's identity and nothing of the caller's, the throwaway root.
fn instance_command(
    aws: &Path,
    root: &Path,
    instance_role: &AwsSettings,
    script: &Path,
) -> Result<Command> {
    let stand_ins = root.join(STAND_INS_DIR);
    let path = std::env::join_paths(
        [
            stand_ins.join("bin"),
            aws.parent()
                .context("the AWS CLI's directory")?
                .to_path_buf(),
        ]
        .into_iter()
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )?;
    let mut command = Command::new("bash");
    command.arg(script);
    for inherited in crate::local::aws::CALLER_AWS_VARIABLES {
        command.env_remove(inherited);
    }
    command
        .envs(subprocess_env(instance_role))
        .env("PATH", path)
        .env("FILEPIPE_ROOT", root)
        .env("TMPDIR", root.join("tmp"))
        // The root's own home: the AWS CLI caches assumed-role credentials under ~/.aws,
        // and a cache from an earlier emulator holds keys the current one never issued.
        .env("HOME", root.join("root"))
        .env("STAND_INS", &stand_ins)
        .stdin(Stdio::null());
    if let Some(endpoint) = &instance_role.endpoint_url {
        command.env("AWS_ENDPOINT_URL", endpoint);
    }
    Ok(command)
}

/// The instance's refresh (what filepipe-refresh.timer runs every minute on EC2), in a root
/// the user-data already ran in.
pub fn refresh(cx: &Context, root: &Path, instance_role: &AwsSettings) -> Result<()> {
    let aws = AWS_CLI.ensure(cx)?;
    let refresher = root.join("usr/local/libexec/filepipe-refresh");
    cx.step(format!("refresh: {}", refresher.display()));
    let output = instance_command(&aws, root, instance_role, &refresher)?
        .output()
        .context("running the refresh with bash")?;
    if !output.status.success() {
        bail!(
            "the refresh failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// Runs `user_data` in a fresh `root` with the identity `instance_role` and the region the
/// metadata stand-in reports.
pub fn run(
    cx: &Context,
    user_data: &str,
    root: &Path,
    instance_role: &AwsSettings,
    region: &str,
) -> Result<Installed> {
    let aws = AWS_CLI.ensure(cx)?;
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let stand_ins = root.join(STAND_INS_DIR);
    let bin = stand_ins.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::create_dir_all(root.join("root"))?;
    write_stand_ins(&bin, &stand_ins, region)?;
    let script = stand_ins.join("user-data.sh");
    std::fs::write(&script, user_data)?;

    let mut command = instance_command(&aws, root, instance_role, &script)?;
    // One try: locally the network is there from the start, and a failure should show now.
    command.env("FILEPIPE_DOWNLOAD_ATTEMPTS", "1");
    cx.step(format!("first boot: the user-data in {}", root.display()));
    let output = command
        .output()
        .context("running the user-data with bash")?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(stand_ins.join("user-data.log"), &log)?;
    if !output.status.success() {
        bail!(
            "the user-data failed ({}); its output ({}):\n{}",
            output.status,
            stand_ins.join("user-data.log").display(),
            log.trim_end()
        );
    }
    let env_file = root.join("etc/filepipe/service.env");
    let environment = std::fs::read_to_string(&env_file)
        .with_context(|| format!("the user-data wrote no {}", env_file.display()))?
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let binary = root.join("usr/local/bin").join(FILE_NAME);
    if !binary.is_file() {
        bail!("the user-data installed no {}", binary.display());
    }
    Ok(Installed {
        binary,
        environment,
    })
}

fn write_stand_ins(bin: &Path, stand_ins: &Path, region: &str) -> Result<()> {
    let real = |name: &str| {
        find_on_path(name)
            .with_context(|| format!("`{name}` is not on PATH; the user-data needs it"))
    };
    let curl = real("curl")?;
    let install = real("install")?;
    let record = r#"printf '%s\n' "$(basename "$0") $*" >> "$STAND_INS/calls.log""#;
    let scripts = [
        (
            "systemctl",
            // Active once enabled with --now, as systemd has it.
            format!(
                "{record}\n\
                 case \"$1\" in\n\
                 \x20 enable) [[ \"$*\" == *--now* ]] && touch \"$STAND_INS/active\" ;;\n\
                 \x20 is-active) [ -e \"$STAND_INS/active\" ] ;;\n\
                 esac\n"
            ),
        ),
        (
            "systemd-cat",
            format!("{record}\ncat >> \"$STAND_INS/journal.log\"\n"),
        ),
        (
            "id",
            format!("{record}\n[ -e \"$STAND_INS/users/${{!#}}\" ]\n"),
        ),
        (
            "useradd",
            format!(
                "{record}\nmkdir -p \"$STAND_INS/users\" && touch \"$STAND_INS/users/${{!#}}\"\n"
            ),
        ),
        ("chown", format!("{record}\n")),
        (
            "install",
            format!(
                "{record}\n\
                 args=()\n\
                 while [ $# -gt 0 ]; do\n\
                 \x20 case \"$1\" in\n\
                 \x20   -o|-g) shift 2 ;;\n\
                 \x20   *) args+=(\"$1\"); shift ;;\n\
                 \x20 esac\n\
                 done\n\
                 exec {} \"${{args[@]}}\"\n",
                install.display()
            ),
        ),
        (
            "curl",
            format!(
                "case \"$*\" in\n\
                 \x20 *169.254.169.254*) ;;\n\
                 \x20 *) exec {} \"$@\" ;;\n\
                 esac\n\
                 {record}\n\
                 for arg in \"$@\"; do case \"$arg\" in http://169.254.169.254/*) url=\"$arg\" ;; esac; done\n\
                 case \"$url\" in\n\
                 \x20 */latest/api/token) [[ \"$*\" == *\"-X PUT\"* ]] && echo {IMDS_TOKEN} && exit 0 ;;\n\
                 esac\n\
                 # IMDSv2 only: without the session token the metadata service answers 401.\n\
                 [[ \"$*\" == *\"X-aws-ec2-metadata-token: {IMDS_TOKEN}\"* ]] || exit 22\n\
                 case \"$url\" in\n\
                 \x20 */latest/meta-data/placement/region) echo {region} ;;\n\
                 \x20 */latest/meta-data/instance-id) echo {INSTANCE_ID} ;;\n\
                 \x20 *) exit 22 ;;\n\
                 esac\n",
                curl.display()
            ),
        ),
    ];
    for (name, body) in scripts {
        let path = bin.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/bash\n# Stand-in written by the xtask (first_boot.rs).\n{body}"),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(stand_ins.join("calls.log"), "")?;
    Ok(())
}
