//! `service`: receives or retrieves files, stores them raw, decrypts and processes them,
//! and serves the results. Configuration: `service --help` (flags or environment variables).

use std::io::IsTerminal;

use anyhow::Context as _;
use clap::Parser;
use service::aws::AwsClients;
use service::config::Config;
use service::http::AppState;
use service::serve::serve;
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

fn main() -> std::process::ExitCode {
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
        .await
        .with_s3_attempt_timeout(std::time::Duration::from_secs(
            config.s3_attempt_timeout_secs,
        ));
    let listen = config.listen_addr;
    let state = AppState::start(config, &clients).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, processor = state.config.processor.name(), "listening");
    serve(state, listener).await
}
