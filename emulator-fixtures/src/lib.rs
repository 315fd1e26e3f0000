//! What tests and local measurements set up on the local AWS emulator: where it is and who
//! calls it (`cargo xtask test` starts it and exports [`ENDPOINT_VAR`] and the rest; a run
//! without them fails loudly instead of skipping), and buckets, keys and queues made as the
//! Terraform modules make them. A dev-dependency of the service: none of it ships in it.

mod queues;
mod resources;

pub use queues::{Queues, RAW_PREFIX, create_queues, create_work_queue, notify_queue};
pub use resources::{configure_like_terraform, create_bucket, create_key};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_clients::{AwsClients, AwsSettings, CredentialsSource};

/// The one variable that tells tests where the emulator listens.
pub const ENDPOINT_VAR: &str = "FILEPIPE_TEST_ENDPOINT";
/// The CA the emulator's TLS certificate is signed by.
pub const CA_BUNDLE_VAR: &str = "FILEPIPE_TEST_CA_BUNDLE";
/// The emulator's plain-HTTP endpoint, for proxies that read requests (fault injection) and
/// for requests that must be refused for not using TLS.
pub const PLAIN_ENDPOINT_VAR: &str = "FILEPIPE_TEST_PLAIN_ENDPOINT";
/// The AWS config file whose `operator` profile signs the tests' requests: the emulator
/// enforces IAM, so unsigned or unknown requests are refused.
pub const AWS_CONFIG_VAR: &str = "FILEPIPE_TEST_AWS_CONFIG";
/// The operator's profile in that file.
pub const OPERATOR_PROFILE: &str = "operator";
/// Region the tests use against the emulator: outside us-east-1, so every CreateBucket
/// must carry a LocationConstraint as it must on real AWS.
pub const TEST_REGION: &str = "eu-west-1";

/// The emulator endpoint, or a panic that says how to run the tests.
pub fn emulator_endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: this test needs the local AWS emulator. \
             Run the tests with `cargo xtask test`, which starts it and sets {ENDPOINT_VAR}."
        ),
    }
}

/// The emulator's plain-HTTP endpoint, or a panic that says how to run the tests.
pub fn emulator_plain_endpoint() -> String {
    required_var(
        PLAIN_ENDPOINT_VAR,
        "this test needs the emulator's plain-HTTP endpoint",
    )
}

/// The emulator's CA certificate, or a panic that says how to run the tests.
pub fn emulator_ca_bundle() -> std::path::PathBuf {
    required_var(
        CA_BUNDLE_VAR,
        "this test trusts the emulator's TLS certificate by its CA",
    )
    .into()
}

fn required_var(name: &str, why: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: {why}. Run the tests with `cargo xtask test`, which sets it."
        ),
    }
}

/// The AWS config file with the emulator's identities, or a panic that says how to run the
/// tests.
pub fn emulator_aws_config() -> std::path::PathBuf {
    match std::env::var(AWS_CONFIG_VAR) {
        Ok(path) if !path.trim().is_empty() => std::path::PathBuf::from(path),
        _ => panic!(
            "{AWS_CONFIG_VAR} is not set: this test signs its requests as the emulator's operator. \
             Run the tests with `cargo xtask test`, which sets it."
        ),
    }
}

/// The emulator as the operator: endpoint and credentials from `cargo xtask test`.
pub fn emulator_settings() -> AwsSettings {
    let config_file = emulator_aws_config();
    AwsSettings {
        region: TEST_REGION.to_string(),
        endpoint_url: Some(emulator_endpoint()),
        s3_endpoint_url: None,
        credentials: CredentialsSource::ProfileFile {
            config_file,
            profile: OPERATOR_PROFILE.to_string(),
        },
        ca_bundle: Some(emulator_ca_bundle()),
    }
}

/// Clients for the emulator, built by the shared client builder.
pub async fn emulator_clients() -> AwsClients {
    AwsClients::connect(&emulator_settings())
        .await
        .expect("building AWS clients for the emulator")
}

/// A bucket name no other test (or earlier run against the same emulator) uses.
pub fn unique_bucket_name(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "t-{}-{}-{:x}-{n}",
        purpose.to_ascii_lowercase(),
        std::process::id(),
        nanos % 0xffff_ffff
    );
    name.chars().take(63).collect()
}
