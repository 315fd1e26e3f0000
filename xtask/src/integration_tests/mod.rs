//! Tests of the xtask against real tools: the emulator (through the shared client builder),
//! the machine's terraform, shellcheck and checkov. A missing tool fails the test with a
//! message naming it; nothing is skipped.

mod bench;
mod emulator_iam;
mod layers;
mod orchestration;
mod policy_documents;
mod sandbox;
mod smoke;
mod terraform_static;

use std::path::{Path, PathBuf};

use clap::Parser;
use service::config::Config;
use service::http::{AppState, router};
use service::testing::{
    TEST_REGION, configure_like_terraform, create_bucket, create_key, emulator_clients,
    unique_bucket_name,
};

use crate::context::{Context, workspace_root};
use crate::environment::Environment;
use crate::tools::find_on_path;

/// The path of a tool the test cannot do without.
pub fn require_tool(name: &str, why: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not on PATH but this test needs it ({why}); install it (see README, Prerequisites)")
    })
}

/// A fresh temporary directory under target/ (kept after the run for inspection).
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target")
        .join("xtask-tests")
        .join(format!(
            "{label}-{}",
            service::testing::unique_bucket_name("d")
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
    let env = Environment::local(service::testing::emulator_settings(), &prefix);
    Context::for_test(env, &temp_dir(label))
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The service, in this process, on fresh buckets configured like Terraform's.
pub struct Running {
    pub url: String,
    pub key_arn: String,
    pub initial: String,
    pub final_: String,
    pub s3: aws_sdk_s3::Client,
    pub clients: service::aws::AwsClients,
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
