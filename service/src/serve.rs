//! Serving the router: connections accepted up to a cap, and up to a smaller cap per source
//! address, over TLS where configured, each with a deadline for its handshake and request
//! headers (which also closes idle keep-alive connections) that shrinks as the slots fill;
//! the token and certificate read again on SIGHUP and on a timer; and a graceful shutdown.
//!
//! axum::serve sets no header timeout and accepts without limit: idle or half-sent
//! connections would pile up until the process runs out of file descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::http::{AppState, router};
use crate::tls::Tls;

/// The parser's buffer per connection: request headers must fit (they do by far), and a
/// body is read at most this much at a time.
const READ_BUFFER: usize = 64 * 1024;

/// Serves until SIGTERM/SIGINT, then lets in-flight requests finish for the grace period and
/// aborts whatever multipart uploads are still open.
pub async fn serve(state: AppState, listener: TcpListener, tls: Option<Arc<Tls>>) -> Result<()> {
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    let header_timeout = Duration::from_secs(state.config.header_read_timeout_secs);
    let max_connections = state.config.max_connections as usize;
    let per_address_cap = (state.config.max_connections_per_address as usize).min(max_connections);
    let connections = Arc::new(Semaphore::new(max_connections));
    let per_address = PerAddress::default();
    let app = router(state.clone());
    // Flipped once at shutdown: every connection finishes its request and closes.
    let (closing, closing_rx) = watch::channel(false);
    let mut served = JoinSet::new();
    let reloading = tokio::spawn(reload(state.clone(), tls.clone()));
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        let accepted = tokio::select! {
            _ = &mut signal => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let (stream, address, permit) = accepted;
        // Over its address's share: closed at once, so one client cannot take every slot.
        let Some(address_slot) = per_address.admit(address, per_address_cap) else {
            tracing::debug!(%address, "connection refused: MAX_CONNECTIONS_PER_ADDRESS reached");
            continue;
        };
        let in_use = max_connections - connections.available_permits();
        let header_timeout = header_deadline(header_timeout, in_use, max_connections);
        let service = TowerToHyperService::new(app.clone());
        let closing_rx = closing_rx.clone();
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        served.spawn(async move {
            // Tuple fields drop in order: the address slot goes before the global permit,
            // so a connection accepted on that permit never finds its address still full
            // (seen as spurious refusals of one busy address at the global cap).
            let _slots = (address_slot, permit);
            match acceptor {
                None => serve_connection(stream, service, header_timeout, closing_rx).await,
                Some(acceptor) => {
                    // The handshake gets the headers' deadline: a client that opens a
                    // connection and sends nothing holds it no longer than that.
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, service, header_timeout, closing_rx).await
                        }
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
        // Reap finished connections so the set does not grow with every one served.
        while served.try_join_next().is_some() {}
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    reloading.abort();
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
    state.pipeline.hand_back_messages().await;
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

/// One connection's requests, until it closes or the shutdown asks it to.
async fn serve_connection<Io, S>(
    io: Io,
    service: S,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Reads (and so body chunks) of at most 64 KiB: what a connection holds while it
        // waits for a part buffer stays small, however many connections wait.
        .max_buf_size(READ_BUFFER);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            return;
        }
        _ = closing.wait_for(|closing| *closing) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Reads the token file and the TLS files again on SIGHUP and every RELOAD_INTERVAL_SECS.
/// What changed is logged, never what it is; a file that cannot be used is reported and the
/// current token or certificate stays in service.
async fn reload(state: AppState, tls: Option<Arc<Tls>>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGHUP handler; reloading on the timer only");
            None
        }
    };
    let mut timer = tokio::time::interval(Duration::from_secs(
        state.config.reload_interval_secs.max(1),
    ));
    timer.tick().await;
    loop {
        let asked = tokio::select! {
            _ = timer.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if let Some(tokens) = &state.tokens {
            match tokens.reload() {
                Ok(true) => tracing::info!(
                    overlap_secs = state.config.auth_token_overlap_secs,
                    "bearer token replaced; the previous one is accepted for the overlap"
                ),
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "bearer token not reloaded; the current one stays")
                }
            }
        }
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(true) => tracing::info!("TLS certificate replaced for new connections"),
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "TLS certificate not reloaded; the current one stays")
                }
            }
        }
        if asked {
            tracing::info!("reloaded on SIGHUP");
        }
    }
}

/// How long a new connection may take for its handshake and each request's headers (and may
/// stay idle between requests): the configured time while at most half the slots are in
/// use, then less in proportion to the slots left, down to one second, so idle connections
/// make room sooner the fuller the server is.
fn header_deadline(configured: Duration, in_use: usize, slots: usize) -> Duration {
    let half = (slots / 2).max(1);
    let left = slots.saturating_sub(in_use);
    if left >= half {
        return configured;
    }
    (configured * left as u32 / half as u32).max(Duration::from_secs(1))
}

/// Open connections by source address.
#[derive(Clone, Default)]
struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in its address's count; given back when dropped.
struct AddressSlot {
    address: IpAddr,
    counts: PerAddress,
}

impl PerAddress {
    fn admit(&self, address: IpAddr, cap: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().unwrap();
        let count = counts.entry(address).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            address,
            counts: self.clone(),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap();
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The next connection and its source address, once fewer than MAX_CONNECTIONS are open.
/// Until then, new connections wait in the kernel's accept queue and cost this process
/// nothing.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> (
    tokio::net::TcpStream,
    IpAddr,
    tokio::sync::OwnedSemaphorePermit,
) {
    let permit = connections
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer.ip(), permit);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_deadline_shrinks_once_half_the_slots_are_taken() {
        let ten = Duration::from_secs(10);
        assert_eq!(header_deadline(ten, 0, 512), ten);
        assert_eq!(header_deadline(ten, 256, 512), ten);
        assert_eq!(header_deadline(ten, 384, 512), Duration::from_secs(5));
        assert_eq!(header_deadline(ten, 500, 512), Duration::from_secs(1));
        assert_eq!(header_deadline(ten, 512, 512), Duration::from_secs(1));
        assert_eq!(header_deadline(ten, 1, 1), Duration::from_secs(1));
    }

    #[test]
    fn each_address_gets_its_share_and_gives_it_back() {
        let counts = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let first = counts.admit(a, 2).unwrap();
        let _second = counts.admit(a, 2).unwrap();
        assert!(counts.admit(a, 2).is_none());
        assert!(counts.admit(b, 2).is_some());
        drop(first);
        assert!(counts.admit(a, 2).is_some());
    }
}
