//! `service`: receives or retrieves files, stores them raw, decrypts and processes them,
//! and serves the results. Configuration: `service --help` (flags or environment variables).

use std::io::IsTerminal;

use anyhow::Context as _;
use aws_clients::AwsClients;
use clap::Parser;
use service::config::Config;
use service::decrypt::{self, Decryptor};
use service::http::AppState;
use service::serve::serve;
use service::tls::Tls;
use tracing_subscriber::EnvFilter;

/// Part buffers are 5 MiB and more. glibc's dynamic mmap threshold would soon serve them from
/// per-thread heaps that keep freed memory (measured: 144 MiB peak RSS instead of 112 MiB in
/// the memory test); a fixed 1 MiB threshold maps and unmaps every buffer.
fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// `service gen-cert`: what the instance runs once at first boot, so its private key is made
/// where it is used and never leaves it.
#[derive(Parser, Debug)]
#[command(
    name = "service gen-cert",
    about = "Make a key pair and a self-signed certificate for HTTPS"
)]
struct GenCert {
    /// An IP address the certificate names (repeatable).
    #[arg(long = "ip")]
    ips: Vec<std::net::IpAddr>,
    /// A DNS name the certificate names (repeatable).
    #[arg(long = "dns")]
    names: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// Where to write the certificate (PEM).
    #[arg(long)]
    cert_out: std::path::PathBuf,
    /// Where to write the private key (PEM, mode 0600).
    #[arg(long)]
    key_out: std::path::PathBuf,
}

fn gen_cert(args: GenCert) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (cert, key) = certificates::generate(&args.ips, &args.names, args.days)?;
    let mut key_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&args.key_out)
        .with_context(|| format!("writing {}", args.key_out.display()))?;
    key_file.write_all(key.as_bytes())?;
    std::fs::write(&args.cert_out, &cert)
        .with_context(|| format!("writing {}", args.cert_out.display()))?;
    println!("{}", certificates::fingerprint(&cert)?);
    Ok(())
}

/// `service seal`: an AWS Encryption SDK message of a file under the KMS key, with the suite
/// and frame size any Encryption SDK producer uses by default: what the smoke test and `load`
/// send as encrypted input, made by the same SDK the service decrypts with.
#[derive(Parser, Debug)]
#[command(
    name = "service seal",
    about = "Encrypt a file into an AWS Encryption SDK message under a KMS key"
)]
struct Seal {
    /// Full ARN of the KMS key.
    #[arg(long, env = "KMS_KEY_ARN")]
    kms_key_arn: String,
    #[arg(long, env = "AWS_REGION")]
    region: String,
    /// Endpoint of a KMS-compatible emulator; unset for real AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// The CA (PEM) the endpoint must be signed by instead of the system's roots.
    #[arg(long, env = "AWS_CA_BUNDLE")]
    aws_ca_bundle: Option<std::path::PathBuf>,
    /// The plaintext.
    #[arg(long = "in")]
    input: std::path::PathBuf,
    /// Where to write the message.
    #[arg(long = "out")]
    output: std::path::PathBuf,
}

fn seal(args: Seal) -> anyhow::Result<()> {
    let plaintext =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let settings = aws_clients::AwsSettings {
        region: args.region,
        endpoint_url: args.aws_endpoint_url,
        s3_endpoint_url: None,
        credentials: aws_clients::CredentialsSource::DefaultChain { profile: None },
        ca_bundle: args.aws_ca_bundle,
    };
    let message = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(async {
            let clients = AwsClients::connect(&settings).await?;
            // The budget bounds decryptions only; one encryption of this file needs no more.
            let size = plaintext.len() as u64;
            let producer = Decryptor::new(
                clients.kms,
                &args.kms_key_arn,
                decrypt::Settings::defaults(size.max(1)),
            )
            .await?;
            producer.encrypt(plaintext, None).await
        })?;
    std::fs::write(&args.output, message)
        .with_context(|| format!("writing {}", args.output.display()))
}

/// A one-shot subcommand's result as the process's exit status.
fn exit_status(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("gen-cert") => {
            return exit_status(gen_cert(GenCert::parse_from(std::env::args().skip(1))));
        }
        Some("seal") => return exit_status(seal(Seal::parse_from(std::env::args().skip(1)))),
        _ => {}
    }
    return_large_buffers_to_the_os();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
        .block_on(async_main())
}

async fn async_main() -> std::process::ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // JSON for journald and log shippers; readable text on a terminal.
    if std::io::stderr().is_terminal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match run(Config::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "service stopped");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let clients = AwsClients::connect(&config.aws_settings())
        .await?
        .with_s3_attempt_timeout(std::time::Duration::from_secs(
            config.s3_attempt_timeout_secs,
        ));
    let listen = config.listen_addr;
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(Tls::load(cert, key)?)),
        _ => None,
    };
    let state = AppState::start(config, &clients).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(
        %listen,
        https = tls.is_some(),
        auth = state.tokens.is_some(),
        processor = state.config.processor.name(),
        "listening"
    );
    serve(state, listener, tls).await
}
