//! The service binary an environment runs: built for x86_64 Linux, refused if it would not
//! start on Amazon Linux 2023, and uploaded to the artifact bucket under its SHA-256
//! (`service/<sha256>/filepipe-service`). Terraform gets bucket, key and digest; the instance
//! role may read exactly that prefix, and the user-data refuses any other content.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt};
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xshell::cmd;

use crate::context::{Context, block_on};
use crate::elf;
use crate::private_buckets::{self, PrivateBucket};

/// The file name of the binary in the bucket and on the instance.
pub const FILE_NAME: &str = "filepipe-service";
/// A static build needs no particular glibc; used where the target is installed.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The uploaded binary, as Terraform's `service_artifact` variable describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    /// The artifact bucket's KMS key; `None` is the AWS-managed `aws/s3` key.
    pub kms_key_arn: Option<String>,
}

impl Artifact {
    pub fn variable(&self) -> Value {
        json!({
            "bucket": self.bucket,
            "key": self.key,
            "sha256": self.sha256,
            "kms_key_arn": self.kms_key_arn,
        })
    }
}

/// Which binary to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `cargo build --release` for x86_64 Linux (what `deploy` ships).
    Release,
    /// The debug build (what `up` ships: already built for the tests, and quicker to build).
    Debug,
    /// A binary built elsewhere (`deploy --binary`).
    Given(PathBuf),
    /// Already delivered by this command (`up` uploads before it knows how it provisions).
    Delivered(Artifact),
}

impl Source {
    /// What `deploy` and `plan` build when `--binary` names nothing: the release build, but
    /// for `local` the debug build `up` ships, so that a plan after `up` compares like with
    /// like (another build is another digest, so new user-data and a replaced instance).
    pub fn built_for(cx: &Context) -> Source {
        if cx.env.is_local() {
            Source::Debug
        } else {
            Source::Release
        }
    }
}

/// Builds (or takes) the binary, checks it will start on the instance, and uploads it.
pub fn deliver(cx: &Context, source: &Source) -> Result<Artifact> {
    let binary = match source {
        Source::Delivered(artifact) => return Ok(artifact.clone()),
        Source::Given(path) => path.clone(),
        Source::Release => build(cx, true)?,
        Source::Debug => build(cx, false)?,
    };
    // Reading the binary changes nothing: checked under --dry-run too, when it exists.
    if !cx.dry_run || binary.exists() {
        elf::check_runs_on_al2023(&binary)?;
    }
    let clients = block_on(AwsClients::connect(&cx.env.aws))?;
    let bucket = block_on(private_buckets::resolve_buckets(cx, &clients))?.artifacts;
    let artifact = block_on(upload(cx, &clients, &bucket, &binary))?;
    if !cx.dry_run {
        std::fs::create_dir_all(cx.state_dir())?;
        std::fs::write(saved_path(cx), serde_json::to_string_pretty(&artifact)?)
            .with_context(|| format!("writing {}", saved_path(cx).display()))?;
    }
    Ok(artifact)
}

/// What the last `deliver` uploaded for this environment.
pub fn saved(cx: &Context) -> Option<Artifact> {
    serde_json::from_str(&std::fs::read_to_string(saved_path(cx)).ok()?).ok()
}

/// For commands that evaluate the configuration without deploying it (`destroy`): the last
/// delivered artifact, or a placeholder, since Terraform needs a value to evaluate the
/// variables but a destroy uses none of it. `None` where the environment names its own URL.
pub fn for_evaluation(cx: &Context) -> Option<Artifact> {
    if cx.env.binary_url {
        return None;
    }
    Some(saved(cx).unwrap_or_else(|| {
        let sha256 = "0".repeat(64);
        Artifact {
            bucket: format!("{}-artifacts", cx.env.name_prefix),
            key: format!("service/{sha256}/{FILE_NAME}"),
            sha256,
            kms_key_arn: None,
        }
    }))
}

pub fn saved_path(cx: &Context) -> PathBuf {
    cx.state_dir().join("artifact.json")
}

fn build(cx: &Context, release: bool) -> Result<PathBuf> {
    let sh = &cx.sh;
    let musl = installed_targets(cx).iter().any(|t| t == MUSL_TARGET);
    if !musl && !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!(
            "the instance runs x86_64 Linux and this machine is not one: `rustup target add {MUSL_TARGET}` (with a linker for it) to build there, or pass --binary"
        );
    }
    let mut args: Vec<String> = vec!["build".into(), "--locked".into()];
    if release {
        args.extend(["--release".into(), "-p".into(), "service".into()]);
    } else {
        // The debug build with the workspace's feature set, as `cargo test --workspace`
        // builds it: after the tests nothing is rebuilt (`-p service` alone unifies features
        // differently and rebuilt 40 crates: 1 min 50 s on 2 cores, measured).
        args.push("--workspace".into());
    }
    args.extend(["--bin".into(), "service".into()]);
    let mut dir = cx.root.join("target");
    if musl {
        args.extend(["--target".into(), MUSL_TARGET.into()]);
        dir.push(MUSL_TARGET);
    }
    dir.push(if release { "release" } else { "debug" });
    cx.run(
        &format!(
            "cargo build{} --bin service ({})",
            if release { " --release" } else { "" },
            if musl {
                MUSL_TARGET
            } else {
                "x86_64 Linux, glibc"
            }
        ),
        cmd!(sh, "cargo {args...}"),
    )?;
    Ok(dir.join("service"))
}

fn installed_targets(cx: &Context) -> Vec<String> {
    cmd!(cx.sh, "rustup target list --installed")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Metadata naming the digest, so an object already there is recognised without a download.
const DIGEST_METADATA: &str = "sha256";

async fn upload(
    cx: &Context,
    clients: &AwsClients,
    bucket: &PrivateBucket,
    binary: &Path,
) -> Result<Artifact> {
    let sha256 = if cx.dry_run && !binary.exists() {
        "0".repeat(64)
    } else {
        sha256_file(binary)?
    };
    let key = format!("service/{sha256}/{FILE_NAME}");
    let artifact = Artifact {
        bucket: bucket.name.clone(),
        key: key.clone(),
        sha256: sha256.clone(),
        kms_key_arn: bucket.kms_key_arn.clone(),
    };
    cx.step(format!(
        "upload {} to s3://{}/{key}",
        binary.display(),
        bucket.name
    ));
    if !cx.aws_call(format!("s3:PutObject {}/{key}", bucket.name)) {
        return Ok(artifact);
    }
    let existing = clients
        .s3
        .head_object()
        .bucket(&bucket.name)
        .key(&key)
        .expected_bucket_owner(&bucket.account_id)
        .send()
        .await;
    match existing {
        Ok(head)
            if head
                .metadata()
                .and_then(|m| m.get(DIGEST_METADATA))
                .is_some_and(|d| *d == sha256) =>
        {
            eprintln!("    already there (content-addressed): not uploaded again");
            return Ok(artifact);
        }
        Ok(_) => {}
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404) => {}
        Err(err) => {
            return Err(err).aws_context(format!(
                "s3:HeadObject {}/{key} (run `cargo xtask bootstrap --env {}` first?)",
                bucket.name, cx.env.name
            ));
        }
    }
    let body = ByteStream::from_path(binary)
        .await
        .with_context(|| format!("reading {}", binary.display()))?;
    clients
        .s3
        .put_object()
        .bucket(&bucket.name)
        .key(&key)
        .expected_bucket_owner(&bucket.account_id)
        .content_type("application/octet-stream")
        .metadata(DIGEST_METADATA, &sha256)
        .body(body)
        .send()
        .await
        .aws_context(format!(
            "s3:PutObject {}/{key} (run `cargo xtask bootstrap --env {}` first?)",
            bucket.name, cx.env.name
        ))?;
    Ok(artifact)
}
