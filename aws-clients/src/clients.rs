//! The clients, built once from the settings: one resolved configuration, the timeouts and
//! retries of each service, and the emulator's differences (path-style, checksums when
//! required, its own CA).

use std::time::Duration;

use anyhow::Context as _;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{
    Credentials, RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
};

use crate::settings::{AwsSettings, CredentialsSource};

/// The clients this project uses, sharing one resolved configuration.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub settings: AwsSettings,
    /// The resolved configuration, for clients of services the service itself never calls
    /// (the xtask builds its IAM client from it).
    pub sdk_config: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub kms: aws_sdk_kms::Client,
    pub sts: aws_sdk_sts::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Fails only on settings that cannot work (an unreadable CA bundle).
    pub async fn connect(settings: &AwsSettings) -> anyhow::Result<AwsClients> {
        let shared = sdk_config(settings).await?;
        Ok(AwsClients {
            settings: settings.clone(),
            s3: aws_sdk_s3::Client::from_conf(s3_config(
                &shared,
                settings,
                S3_ATTEMPT_TIMEOUT,
                S3_ATTEMPT_TIMEOUT * 3,
            )),
            kms: aws_sdk_kms::Client::from_conf(kms_config(&shared)),
            sts: aws_sdk_sts::Client::new(&shared),
            sqs: aws_sdk_sqs::Client::from_conf(sqs_config(&shared)),
            sdk_config: shared,
        })
    }

    /// The same clients with another S3 attempt timeout (the service's S3_ATTEMPT_TIMEOUT_SECS),
    /// a call with its retries getting three times this.
    pub fn with_s3_attempt_timeout(self, attempt: Duration) -> AwsClients {
        self.with_s3_timeouts(attempt, attempt * 3)
    }

    /// The same clients with S3 calls bounded to `call`, retries included, and each attempt
    /// to at most `attempt`: for API requests, which a client waits for.
    pub fn with_s3_timeouts(mut self, attempt: Duration, call: Duration) -> AwsClients {
        self.s3 = aws_sdk_s3::Client::from_conf(s3_config(
            &self.sdk_config,
            &self.settings,
            attempt.min(call),
            call,
        ));
        self
    }
}

/// How long one S3 request may take, a part's upload included; a backend that accepts and
/// never answers then costs a retry, not a hung request.
pub const S3_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Copying an object onto itself runs in S3 at its own pace: up to 5 GiB in one request.
pub const S3_COPY_TIMEOUT: Duration = Duration::from_secs(900);

/// An HTTPS client that trusts exactly the certificates of `ca_bundle` (PEM).
fn https_client_trusting(
    ca_bundle: &std::path::Path,
) -> anyhow::Result<aws_sdk_s3::config::SharedHttpClient> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    let pem = std::fs::read(ca_bundle)
        .with_context(|| format!("reading the CA bundle {}", ca_bundle.display()))?;
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
        .build()
        .with_context(|| format!("loading the CA bundle {}", ca_bundle.display()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

async fn sdk_config(settings: &AwsSettings) -> anyhow::Result<SdkConfig> {
    // Standard retry mode backs off on throttling, 5xx and timeouts; five attempts ride out
    // short KMS/S3 throttling bursts without hiding a real outage.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(5));
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    let http_client = match &settings.ca_bundle {
        Some(ca_bundle) => Some(https_client_trusting(ca_bundle)?),
        None => None,
    };
    if let Some(client) = &http_client {
        loader = loader.http_client(client.clone());
    }
    match &settings.credentials {
        CredentialsSource::DefaultChain {
            profile: Some(name),
        } => {
            loader = loader.profile_name(name);
        }
        CredentialsSource::DefaultChain { profile: None } => {}
        CredentialsSource::ProfileFile {
            config_file,
            profile,
        } => {
            use aws_config::profile::ProfileFileCredentialsProvider;
            use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
            let files = EnvConfigFiles::builder()
                .with_file(EnvConfigFileKind::Config, config_file)
                .build();
            // Explicitly the profile's credentials: the default chain would prefer
            // AWS_ACCESS_KEY_ID from the caller's shell.
            // The role assumption's STS client trusts what the others trust.
            let mut provider_config = aws_config::provider_config::ProviderConfig::default()
                .with_region(Some(Region::new(settings.region.clone())));
            if let Some(client) = http_client {
                provider_config = provider_config.with_http_client(client);
            }
            let credentials = ProfileFileCredentialsProvider::builder()
                .configure(&provider_config)
                .profile_files(files.clone())
                .profile_name(profile)
                .build();
            loader = loader
                .profile_files(files)
                .profile_name(profile)
                .credentials_provider(credentials);
        }
        CredentialsSource::Static {
            access_key_id,
            secret_access_key,
        } => {
            let credentials = Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "filepipe-static",
            );
            loader = loader.credentials_provider(SharedCredentialsProvider::new(credentials));
        }
    }
    Ok(loader.load().await)
}

/// KMS requests and answers are small: a call that has not answered in seconds is stuck, and
/// a stuck call would hold a decryption thread (and its file) indefinitely.
fn kms_config(shared: &SdkConfig) -> aws_sdk_kms::Config {
    aws_sdk_kms::config::Builder::from(shared)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .build()
}

/// SQS timeouts: a receive long-polls for up to 20 s, so an attempt gets 30 s; a queue that
/// accepts and never answers then costs a retry, not a consumer that stops for good.
fn sqs_config(shared: &SdkConfig) -> aws_sdk_sqs::Config {
    aws_sdk_sqs::config::Builder::from(shared)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(90))
                .build(),
        )
        .build()
}

/// S3 timeouts: `attempt` per request, and `call` for a call with its retries.
fn s3_config(
    shared: &SdkConfig,
    settings: &AwsSettings,
    attempt: Duration,
    call: Duration,
) -> aws_sdk_s3::Config {
    let mut builder = aws_sdk_s3::config::Builder::from(shared).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(attempt)
            .operation_timeout(call)
            .build(),
    );
    if let Some(endpoint) = &settings.s3_endpoint_url {
        builder = builder.endpoint_url(endpoint);
    }
    if settings.endpoint_url.is_some() || settings.s3_endpoint_url.is_some() {
        builder = builder
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    // Path-style addressing has no getter; the emulator integration tests prove it (a
    // virtual-hosted request to `<bucket>.127.0.0.1` could not resolve).
    async fn emulator_settings_relax_checksums() {
        let settings = AwsSettings::emulator("http://127.0.0.1:1", "eu-west-1", None);
        let clients = AwsClients::connect(&settings).await.unwrap();
        let config = clients.s3.config();
        assert_eq!(
            config.request_checksum_calculation(),
            Some(&RequestChecksumCalculation::WhenRequired)
        );
        assert_eq!(
            config.response_checksum_validation(),
            Some(&ResponseChecksumValidation::WhenRequired)
        );
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
    }

    /// The first request line a listener receives, or an empty string if none arrives.
    async fn first_request_line(listener: tokio::net::TcpListener) -> String {
        use tokio::io::AsyncReadExt;
        let accept = async {
            let (mut socket, _) = listener.accept().await.ok()?;
            let mut head = vec![0u8; 512];
            let n = socket.read(&mut head).await.ok()?;
            let text = String::from_utf8_lossy(&head[..n]).to_string();
            text.lines().next().map(str::to_string)
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), accept)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn s3_endpoint_overrides_only_s3() {
        let emulator = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s3_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = AwsSettings {
            s3_endpoint_url: Some(format!("http://{}", s3_server.local_addr().unwrap())),
            ..AwsSettings::emulator(
                format!("http://{}", emulator.local_addr().unwrap()),
                "eu-west-1",
                None,
            )
        };
        let clients = AwsClients::connect(&settings).await.unwrap();
        let s3_seen = tokio::spawn(first_request_line(s3_server));
        let emulator_seen = tokio::spawn(first_request_line(emulator));
        // The servers never answer: only where each request went matters.
        let short = std::time::Duration::from_millis(500);
        let _ = tokio::time::timeout(short, clients.s3.list_objects_v2().bucket("b").send()).await;
        let _ = tokio::time::timeout(short, clients.kms.list_keys().send()).await;
        let s3_line = s3_seen.await.unwrap();
        let emulator_line = emulator_seen.await.unwrap();
        assert!(
            s3_line.starts_with("GET /b"),
            "S3 request went elsewhere: {s3_line:?}"
        );
        assert!(
            emulator_line.starts_with("POST /"),
            "KMS request went elsewhere: {emulator_line:?}"
        );
    }

    #[tokio::test]
    async fn real_aws_keeps_sdk_defaults() {
        let settings = AwsSettings {
            region: "us-east-1".into(),
            endpoint_url: None,
            s3_endpoint_url: None,
            credentials: CredentialsSource::DefaultChain { profile: None },
            ca_bundle: None,
        };
        let clients = AwsClients::connect(&settings).await.unwrap();
        let config = clients.s3.config();
        assert_ne!(
            config.request_checksum_calculation(),
            Some(&RequestChecksumCalculation::WhenRequired)
        );
    }
}
