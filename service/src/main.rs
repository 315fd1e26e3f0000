//! `service`: receives or retrieves files, stores them raw, decrypts and processes them,
//! and serves the results. Configuration: `service --help` (flags or environment variables).

use std::io::IsTerminal;

use anyhow::Context as _;
use clap::Parser;
use service::app::{AppState, serve};
use service::aws::AwsClients;
use service::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
    let clients = AwsClients::connect(&config.aws_settings()).await;
    let listen = config.listen_addr;
    let state = AppState::start(config, &clients).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, processor = state.config.processor.name(), "listening");
    serve(state, listener).await
}
