//! The one place AWS clients are built, for the service and for the xtask alike.
//!
//! Real AWS uses the standard credential chain (environment, profile, IMDS on EC2).
//! An explicit endpoint means an emulator or an S3-compatible server: those speak
//! path-style URLs and do not implement the flexible-checksum defaults of aws-sdk-s3 ≥ 1.69,
//! so checksums are only sent when an operation requires them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{
    Credentials, RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
};

/// Where credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsSource {
    /// The SDK's default chain (env vars, shared config/profile, web identity, IMDS), optionally
    /// pinned to a named profile.
    DefaultChain { profile: Option<String> },
    /// A profile of one AWS config file and no other (not `~/.aws`): the local emulator's
    /// operator, or the service role assumed through `role_arn` + `source_profile`, as the
    /// AWS CLI and every SDK read it. Read when credentials are first needed.
    ProfileFile {
        config_file: std::path::PathBuf,
        profile: String,
    },
    /// Fixed credentials, only meaningful against an emulator.
    Static {
        access_key_id: String,
        secret_access_key: String,
    },
}

/// Everything needed to talk to one AWS account/region or to an emulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: String,
    /// `None` for real AWS; e.g. `http://127.0.0.1:4566` for the local emulator.
    pub endpoint_url: Option<String>,
    /// S3 only, overriding `endpoint_url` for S3: an S3-compatible server (the benchmark's
    /// s3s-fs) while KMS and STS stay on the emulator.
    pub s3_endpoint_url: Option<String>,
    pub credentials: CredentialsSource,
    /// The one CA a TLS endpoint must be signed by, instead of the system's roots: the local
    /// emulator's (AWS_CA_BUNDLE, as the AWS CLI and Terraform read it). `None` for AWS.
    pub ca_bundle: Option<PathBuf>,
}

impl AwsSettings {
    /// Settings for the local emulator while it takes unsigned requests (before its operator
    /// exists): any static credentials.
    pub fn emulator(
        endpoint_url: impl Into<String>,
        region: impl Into<String>,
        ca_bundle: Option<PathBuf>,
    ) -> Self {
        AwsSettings {
            region: region.into(),
            endpoint_url: Some(endpoint_url.into()),
            s3_endpoint_url: None,
            ca_bundle,
            credentials: CredentialsSource::Static {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
            },
        }
    }
}

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

/// How an AWS call failed, from the SDK's error kind and the service's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Throttling, 5xx, timeouts, connection and dispatch errors: worth trying again.
    Transient,
    /// The caller may not do this: a deployment error, not the data's.
    Denied,
    /// Anything else (a missing object, an invalid request).
    Other,
}

/// A failed AWS call: which call, how it failed, a one-line account of it (the AWS error
/// code and message, or the SDK's reason for having no answer) and the request id AWS gave.
#[derive(Debug)]
pub struct AwsCallError {
    pub call: String,
    pub failure: Failure,
    pub request_id: Option<String>,
    detail: String,
}

impl std::fmt::Display for AwsCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.detail)
    }
}

impl std::error::Error for AwsCallError {}

/// The first AWS call in an error's chain, if there is one.
pub fn aws_call(err: &anyhow::Error) -> Option<&AwsCallError> {
    err.chain().find_map(|e| e.downcast_ref::<AwsCallError>())
}

/// How the first AWS call in an error's chain failed, if one did.
pub fn aws_failure(err: &anyhow::Error) -> Option<Failure> {
    aws_call(err).map(|e| e.failure)
}

/// Turns an SDK error into an [`AwsCallError`] whose one-line message carries the AWS error
/// code and message (the SDK's own Display says only "service error").
pub trait AwsResultExt<T> {
    fn aws_context(self, call: impl std::fmt::Display) -> anyhow::Result<T>;
}

type SdkError<E> = aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

impl<T, E> AwsResultExt<T> for Result<T, SdkError<E>>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn aws_context(self, call: impl std::fmt::Display) -> anyhow::Result<T> {
        self.map_err(|err| {
            use aws_sdk_s3::operation::RequestId as _;
            let detail = match err.as_service_error() {
                // Not the SDK's context, which for an error it does not model ends in a
                // dump of the error's metadata.
                Some(service) => format!(
                    "{}: {}",
                    service.code().unwrap_or("unknown error"),
                    service.message().unwrap_or("no message")
                ),
                None => aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
            };
            anyhow::Error::new(AwsCallError {
                call: call.to_string(),
                failure: classify(&err),
                request_id: err.request_id().map(str::to_string),
                detail,
            })
        })
    }
}

fn classify<E: aws_sdk_s3::error::ProvideErrorMetadata>(err: &SdkError<E>) -> Failure {
    use aws_sdk_s3::error::SdkError as Kind;
    match err {
        Kind::TimeoutError(_) | Kind::DispatchFailure(_) | Kind::ResponseError(_) => {
            Failure::Transient
        }
        Kind::ServiceError(service) => {
            classify_service_error(service.err().code(), service.raw().status().as_u16())
        }
        _ => Failure::Other,
    }
}

/// How an AWS service's error answer failed, from its error code and HTTP status: the one
/// table for S3, KMS (called directly or by the Encryption SDK) and the rest.
pub fn classify_service_error(code: Option<&str>, status: u16) -> Failure {
    match code.unwrap_or_default() {
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidAccessKeyId"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "UnrecognizedClientException" => Failure::Denied,
        // KMSInvalidStateException: the key is disabled, pending deletion or import; the
        // operator's to fix, not the file's, and gone once the key is usable again.
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestTimeout"
        | "RequestLimitExceeded"
        | "InternalError"
        | "ServiceUnavailable"
        | "KMSInternalException"
        | "KMSInvalidStateException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException" => Failure::Transient,
        _ if status == 403 => Failure::Denied,
        _ if status >= 500 || status == 429 => Failure::Transient,
        _ => Failure::Other,
    }
}

/// The AWS partition of a region, for building ARNs.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Environment variables that give a subprocess (Terraform, the AWS CLI) the same credentials
/// and region as these settings.
pub fn subprocess_env(settings: &AwsSettings) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("AWS_REGION", settings.region.clone()),
        ("AWS_DEFAULT_REGION", settings.region.clone()),
    ];
    match &settings.credentials {
        CredentialsSource::DefaultChain {
            profile: Some(name),
        } => {
            vars.push(("AWS_PROFILE", name.clone()));
        }
        CredentialsSource::DefaultChain { profile: None } => {}
        CredentialsSource::ProfileFile {
            config_file,
            profile,
        } => {
            vars.push(("AWS_CONFIG_FILE", config_file.display().to_string()));
            // Only that file: no credentials from ~/.aws/credentials.
            vars.push(("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()));
            vars.push(("AWS_PROFILE", profile.clone()));
        }
        CredentialsSource::Static {
            access_key_id,
            secret_access_key,
        } => {
            vars.push(("AWS_ACCESS_KEY_ID", access_key_id.clone()));
            vars.push(("AWS_SECRET_ACCESS_KEY", secret_access_key.clone()));
        }
    }
    if let Some(ca_bundle) = &settings.ca_bundle {
        vars.push(("AWS_CA_BUNDLE", ca_bundle.display().to_string()));
    }
    vars
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

    #[test]
    fn failures_are_classified_by_kind_and_code() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::error::{ErrorMetadata, SdkError};
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_sdk_s3::primitives::SdkBody;
        let service = |status: u16, code: &str| -> SdkError<GetObjectError, HttpResponse> {
            SdkError::service_error(
                GetObjectError::generic(ErrorMetadata::builder().code(code).build()),
                HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
            )
        };
        for (err, want) in [
            (service(503, "SlowDown"), Failure::Transient),
            (service(500, "InternalError"), Failure::Transient),
            (service(502, "Whatever"), Failure::Transient),
            (service(429, "TooMany"), Failure::Transient),
            (service(400, "ThrottlingException"), Failure::Transient),
            (service(403, "AccessDenied"), Failure::Denied),
            (service(400, "ExpiredToken"), Failure::Denied),
            (service(403, "SomethingElse"), Failure::Denied),
            (service(404, "NoSuchKey"), Failure::Other),
            (service(400, "InvalidRange"), Failure::Other),
            (SdkError::timeout_error("no answer"), Failure::Transient),
        ] {
            let text = format!("{err:?}");
            let wrapped = Err::<(), _>(err).aws_context("s3:GetObject k").unwrap_err();
            assert_eq!(aws_failure(&wrapped), Some(want), "{text}");
            assert!(
                wrapped.to_string().starts_with("s3:GetObject k: "),
                "{wrapped}"
            );
        }
    }

    /// KMS's answers, one per error it gives, as its SDK reports them to the Encryption
    /// SDK's decryptions.
    #[test]
    fn kms_answers_are_classified_by_code() {
        for (code, status, want) in [
            ("KMSInternalException", 500, Failure::Transient),
            ("ServiceUnavailable", 503, Failure::Transient),
            ("ThrottlingException", 400, Failure::Transient),
            ("KMSInvalidStateException", 400, Failure::Transient),
            ("DependencyTimeoutException", 503, Failure::Transient),
            ("KeyUnavailableException", 500, Failure::Transient),
            ("AccessDeniedException", 400, Failure::Denied),
            ("UnrecognizedClientException", 400, Failure::Denied),
            ("InvalidCiphertextException", 400, Failure::Other),
            ("IncorrectKeyException", 400, Failure::Other),
            ("NotFoundException", 400, Failure::Other),
        ] {
            assert_eq!(
                classify_service_error(Some(code), status),
                want,
                "{code} ({status})"
            );
        }
        assert_eq!(classify_service_error(None, 500), Failure::Transient);
        assert_eq!(classify_service_error(None, 400), Failure::Other);
    }

    #[test]
    fn partitions_follow_the_region() {
        assert_eq!(partition("eu-west-1"), "aws");
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
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
