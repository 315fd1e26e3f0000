//! `service`: receives or retrieves files, stores them raw, decrypts and processes them,
//! and serves the results. Configuration: `service --help` (flags or environment variables).

use std::io::IsTerminal;

use anyhow::Context as _;
use aws_clients::AwsClients;
use clap::Parser;
use service::config::Config;
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

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("gen-cert") {
        let args = GenCert::parse_from(std::env::args().skip(1));
        return match gen_cert(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
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
