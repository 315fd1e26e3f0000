//! Serving the router: connections accepted up to a cap, each with a deadline for its
//! request headers (which also closes idle keep-alive connections), and a graceful shutdown.
//!
//! axum::serve sets no header timeout and accepts without limit: idle or half-sent
//! connections would pile up until the process runs out of file descriptors.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::http::{AppState, router};

/// The parser's buffer per connection: request headers must fit (they do by far), and a
/// body is read at most this much at a time.
const READ_BUFFER: usize = 64 * 1024;

/// Serves until SIGTERM/SIGINT, then lets in-flight requests finish for the grace period and
/// aborts whatever multipart uploads are still open.
pub async fn serve(state: AppState, listener: TcpListener) -> Result<()> {
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    let header_timeout = Duration::from_secs(state.config.header_read_timeout_secs);
    let connections = Arc::new(Semaphore::new(state.config.max_connections as usize));
    let app = router(state.clone());
    // Flipped once at shutdown: every connection finishes its request and closes.
    let (closing, closing_rx) = watch::channel(false);
    let mut served = JoinSet::new();
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        let accepted = tokio::select! {
            _ = &mut signal => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let (stream, permit) = accepted;
        let service = TowerToHyperService::new(app.clone());
        let mut closing_rx = closing_rx.clone();
        served.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                // Reads (and so body chunks) of at most 64 KiB: what a connection holds while
                // it waits for a part buffer stays small, however many connections wait.
                .max_buf_size(READ_BUFFER);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                _ = closing_rx.wait_for(|closing| *closing) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
        // Reap finished connections so the set does not grow with every one served.
        while served.try_join_next().is_some() {}
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    drop(listener);
    let _ = closing.send(true);
    if tokio::time::timeout(grace, async { while served.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over; cancelling what is left"
        );
    }
    // While the connections still run: cancelling them first would leave each upload's
    // abort to a task that the runtime's shutdown may never run.
    if !state.in_flight().is_empty() {
        tracing::warn!(
            uploads = state.in_flight().len(),
            "aborting unfinished multipart uploads"
        );
    }
    state.in_flight().abort_all().await;
    drop(served);
    Ok(())
}

/// The next connection, once fewer than MAX_CONNECTIONS are open. Until then, new
/// connections wait in the kernel's accept queue and cost this process nothing.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> (tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit) {
    let permit = connections
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return (stream, permit);
            }
            // Out of file descriptors or a connection reset before it was accepted: pause
            // instead of spinning on the error.
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
