//! Tests of the xtask against real tools: the emulator (through the shared client builder),
//! the machine's terraform, shellcheck and checkov. A missing tool fails the test with a
//! message naming it; nothing is skipped.

mod bench;
mod emulator_fidelity;
mod emulator_iam;
mod first_boot;
mod layers;
mod module_readmes;
mod orchestration;
mod policy_documents;
mod policy_enforcement;
mod provider_schema;
mod smoke;
mod stack;
mod terraform_static;

use std::path::{Path, PathBuf};

use clap::Parser;
use emulator_fixtures::{
    TEST_REGION, configure_like_terraform, create_bucket, create_key, emulator_clients,
    unique_bucket_name,
};
use service::config::Config;
use service::http::{AppState, router};

use xtask::context::{Context, workspace_root};
use xtask::environment::Environment;
use xtask::tools::find_on_path;

/// The path of a tool the test cannot do without.
pub fn require_tool(name: &str, why: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not on PATH but this test needs it ({why}); install it (see README, Prerequisites)")
    })
}

/// `terraform -chdir=<dir> <args>` with the machine's terraform, non-interactively; a
/// failure fails the test with Terraform's output. Returns standard output.
pub fn terraform_in(dir: &Path, why: &str) -> impl Fn(&[&str]) -> String {
    let run = terraform_output_in(dir, why);
    let dir = dir.to_path_buf();
    move |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "terraform {args:?} in {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// [`terraform_in`] that returns what Terraform did, for tests that expect a refusal.
pub fn terraform_output_in(dir: &Path, why: &str) -> impl Fn(&[&str]) -> std::process::Output {
    let terraform = require_tool("terraform", why);
    let dir = dir.to_path_buf();
    move |args: &[&str]| {
        std::process::Command::new(&terraform)
            .arg(format!("-chdir={}", dir.display()))
            .args(args)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .unwrap()
    }
}

/// A fresh temporary directory under target/ (kept after the run for inspection).
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target")
        .join("xtask-tests")
        .join(format!(
            "{label}-{}",
            emulator_fixtures::unique_bucket_name("d")
        ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A local environment with its own name prefix (so its own state bucket and resources) and
/// its own state directory: tests never share state.
pub fn isolated_local_context(label: &str) -> Context {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!(
        "t{:x}",
        (nanos ^ u128::from(std::process::id())) % 0xff_ffff_ffff
    );
    let env = Environment::local(emulator_fixtures::emulator_settings(), &prefix);
    Context::for_test(env, &temp_dir(label))
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_symlink() {
            // Terraform links a provider installed from a filesystem mirror.
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), target).unwrap();
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The debug service binary, which `cargo test --workspace` builds before any test runs
/// (the service's own tests run it).
pub fn service_binary() -> PathBuf {
    let binary = workspace_root().join("target/debug/service");
    assert!(
        binary.is_file(),
        "{} does not exist: run the tests with `cargo xtask test` (or `cargo build --bin service` first)",
        binary.display()
    );
    binary
}

/// The service, in this process, on fresh buckets configured like Terraform's.
pub struct Running {
    pub url: String,
    pub key_arn: String,
    pub initial: String,
    pub final_: String,
    pub s3: aws_sdk_s3::Client,
    pub clients: aws_clients::AwsClients,
    // Keeps the server's runtime alive for the test.
    pub runtime: tokio::runtime::Runtime,
}

pub fn start_service(processor: &str) -> Running {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (initial, final_) = (unique_bucket_name("svc-in"), unique_bucket_name("svc-out"));
    let (url, key_arn, clients) = runtime.block_on(async {
        let clients = emulator_clients().await;
        let key_arn = create_key(&clients.kms).await;
        for bucket in [&initial, &final_] {
            create_bucket(&clients.s3, bucket).await;
            configure_like_terraform(&clients.s3, bucket, &key_arn).await;
        }
        let config = Config::try_parse_from([
            "service".to_string(),
            format!("--initial-bucket={initial}"),
            format!("--final-bucket={final_}"),
            format!("--kms-key-arn={key_arn}"),
            format!("--region={TEST_REGION}"),
            format!("--processor={processor}"),
            "--part-size=5242880".to_string(),
        ])
        .unwrap();
        let state = AppState::start(config, &clients).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
        (url, key_arn, clients)
    });
    Running {
        url,
        key_arn,
        initial,
        final_,
        s3: clients.s3.clone(),
        clients,
        runtime,
    }
}

/// A bucket's protective settings as S3 reports them, read with the SDK directly (not with
/// `buckets::inspect`, which is under test): what the bucket-hardening tests assert on.
#[derive(Debug)]
pub struct Hardening {
    /// block_public_acls, ignore_public_acls, block_public_policy, restrict_public_buckets.
    pub public_access_blocks: [Option<bool>; 4],
    pub object_ownership: String,
    pub versioning: Option<String>,
    pub sse_algorithm: String,
    pub kms_key: Option<String>,
    pub bucket_key: Option<bool>,
    /// Per enabled lifecycle rule that has them.
    pub abort_multipart_days: Vec<i32>,
    pub noncurrent_days: Vec<i32>,
    pub current_expiry_days: Vec<i32>,
    pub expired_delete_markers: Vec<bool>,
    pub policy_attached: bool,
}

pub async fn hardening(s3: &aws_sdk_s3::Client, bucket: &str) -> Hardening {
    let pab = s3
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let pab = pab.public_access_block_configuration().unwrap();
    let ownership = s3
        .get_bucket_ownership_controls()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let versioning = s3
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let encryption = s3
        .get_bucket_encryption()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let rule = &encryption
        .server_side_encryption_configuration()
        .unwrap()
        .rules()[0];
    let default = rule.apply_server_side_encryption_by_default().unwrap();
    let lifecycle = s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let rules = lifecycle.rules();
    Hardening {
        public_access_blocks: [
            pab.block_public_acls(),
            pab.ignore_public_acls(),
            pab.block_public_policy(),
            pab.restrict_public_buckets(),
        ],
        object_ownership: ownership.ownership_controls().unwrap().rules()[0]
            .object_ownership()
            .as_str()
            .to_string(),
        versioning: versioning.status().map(|s| s.as_str().to_string()),
        sse_algorithm: default.sse_algorithm().as_str().to_string(),
        kms_key: default.kms_master_key_id().map(str::to_string),
        bucket_key: rule.bucket_key_enabled(),
        abort_multipart_days: rules
            .iter()
            .filter_map(|r| {
                r.abort_incomplete_multipart_upload()?
                    .days_after_initiation()
            })
            .collect(),
        noncurrent_days: rules
            .iter()
            .filter_map(|r| r.noncurrent_version_expiration()?.noncurrent_days())
            .collect(),
        current_expiry_days: rules
            .iter()
            .filter_map(|r| r.expiration()?.days())
            .collect(),
        expired_delete_markers: rules
            .iter()
            .filter_map(|r| r.expiration()?.expired_object_delete_marker())
            .collect(),
        policy_attached: s3.get_bucket_policy().bucket(bucket).send().await.is_ok(),
    }
}
