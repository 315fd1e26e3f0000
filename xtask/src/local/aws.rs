//! Where the `local` environment's AWS is: the emulator's recorded port and the config file
//! with its identities, and how a program is started to call AWS as given (`aws_command`).
//! Read by everything that talks to the emulator; knows nothing of how the emulator is
//! started (`emulator.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use aws_clients::{AwsSettings, CredentialsSource, subprocess_env};
use serde::{Deserialize, Serialize};

use crate::paths::state_dir;

/// The environment that runs on this machine against the emulator.
pub const LOCAL: &str = "local";
pub const LOCAL_REGION: &str = "eu-west-1";
pub const DEFAULT_PORT: u16 = 4566;
/// Overrides the port `local start` uses when none is given with `--port`.
pub const PORT_ENV: &str = "XTASK_EMULATOR_PORT";
/// Profiles of the local AWS config file.
pub const OPERATOR_PROFILE: &str = "operator";
pub const SERVICE_PROFILE: &str = "service";
/// An administrator of another account (for tests of what crosses accounts).
pub const OUTSIDER_PROFILE: &str = "outsider";

/// What a process given its own identity and endpoints (the local service, the local
/// instance's user-data) must not take from the caller's shell: credentials, a profile, a
/// config file, endpoints. aws-config and the AWS CLI would read them before what they are
/// given.
pub const CALLER_AWS_VARIABLES: [&str; 13] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_IAM",
    "AWS_CA_BUNDLE",
];

/// A command for a program that calls AWS as the service binary does (the local service,
/// `service seal`): where `aws` says (endpoints, CA, region) and as whom. Credentials the
/// settings name (the emulator's identities) replace everything AWS-related in the caller's
/// shell; the default chain (a real environment) takes the caller's credentials as they are.
pub fn aws_command(program: &Path, aws: &AwsSettings) -> Command {
    let mut command = Command::new(program);
    if !matches!(aws.credentials, CredentialsSource::DefaultChain { .. }) {
        for inherited in CALLER_AWS_VARIABLES {
            command.env_remove(inherited);
        }
    }
    if let Some(url) = &aws.endpoint_url {
        command.env("AWS_ENDPOINT_URL", url);
    }
    if let Some(url) = &aws.s3_endpoint_url {
        command.env("AWS_ENDPOINT_URL_S3", url);
    }
    command.envs(subprocess_env(aws));
    command
}

/// The running emulator, as `local start` recorded it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// The AWS API, over TLS.
    pub port: u16,
    /// The same emulator over plain HTTP: its control API (`/moto-api`, not an AWS API) and
    /// the tests that prove TLS-only policies refuse plain HTTP. 0 in a record written
    /// before it existed, which is then stale.
    #[serde(default)]
    pub http_port: u16,
    /// Whether requests must be signed by a known identity and are checked against its
    /// policies.
    #[serde(default)]
    pub iam: bool,
}

impl Record {
    pub fn endpoint_url(&self) -> String {
        endpoint_for_port(self.port)
    }

    /// The emulator's AWS API over plain HTTP, which no client uses but to be refused.
    pub fn plain_endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

pub fn endpoint_for_port(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

/// The plain-HTTP port beside the TLS port `port`.
pub fn http_port_for(port: u16) -> u16 {
    port.wrapping_add(1)
}

/// The port asked for by the environment, or the default.
pub fn configured_port() -> Result<u16> {
    match std::env::var(PORT_ENV) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{PORT_ENV}={value:?} is not a port number")),
        Err(_) => Ok(DEFAULT_PORT),
    }
}

/// Where the local environment's AWS endpoint is: the running emulator's port if one is
/// recorded, else the configured port.
pub fn endpoint_url(root: &Path) -> String {
    let port = read_record(root)
        .map(|r| r.port)
        .or_else(|| configured_port().ok())
        .unwrap_or(DEFAULT_PORT);
    endpoint_for_port(port)
}

pub(crate) fn record_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("emulator.json")
}

/// The certificate of the CA the emulator signs its TLS certificate with, written by the
/// emulator at start (and only the CA's certificate: its key never leaves the emulator's
/// memory). Every local client trusts it, and nothing else, for the emulator.
pub fn ca_bundle_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("emulator-ca.pem")
}

/// The AWS config file with the operator's and the service's profiles.
pub fn aws_config_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("aws-config")
}

/// How the `local` environment reaches the emulator: as `profile` of the local config file.
pub fn local_settings(root: &Path, profile: &str) -> AwsSettings {
    AwsSettings {
        region: LOCAL_REGION.to_string(),
        endpoint_url: Some(endpoint_url(root)),
        s3_endpoint_url: None,
        credentials: CredentialsSource::ProfileFile {
            config_file: aws_config_path(root),
            profile: profile.to_string(),
        },
        ca_bundle: Some(ca_bundle_path(root)),
    }
}

pub(crate) fn read_record(root: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(root)).ok()?;
    serde_json::from_str(&text).ok()
}
