//! A TCP proxy between the service and the emulator that counts KMS Decrypt requests and can
//! hold each of them back for a while (a slow KMS) or cut their connection (a KMS outage).
//! It forwards bytes untouched, so request signatures stay valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What marks a KMS Decrypt request in its headers.
const DECRYPT: &[u8] = b"TrentService.Decrypt\r\n";

pub struct KmsProxy {
    pub url: String,
    decrypts: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
}

impl KmsProxy {
    pub async fn start(upstream: &str) -> KmsProxy {
        // It reads requests, so it cannot sit inside TLS: it forwards to the emulator's
        // plain-HTTP port, and the service talks plain HTTP to it.
        assert!(
            upstream.starts_with("http://"),
            "the proxy needs the emulator's plain-HTTP endpoint, not {upstream}"
        );
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let decrypts = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let refuse = Arc::new(AtomicBool::new(false));
        let faults = Faults {
            decrypts: decrypts.clone(),
            delay_ms: delay_ms.clone(),
            refuse: refuse.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(forward(client, server, faults.clone()));
            }
        });
        KmsProxy {
            url,
            decrypts,
            delay_ms,
            refuse,
        }
    }

    /// While set, every Decrypt request's connection is cut instead of forwarded.
    pub fn refuse_decrypts(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    /// KMS Decrypt requests seen so far.
    pub fn decrypts(&self) -> usize {
        self.decrypts.load(Ordering::SeqCst)
    }

    /// Holds every later Decrypt request back this long before forwarding it.
    pub fn delay_decrypts(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Faults {
    decrypts: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
}

async fn forward(client: TcpStream, server: TcpStream, faults: Faults) {
    let Faults {
        decrypts,
        delay_ms,
        refuse,
    } = faults;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // The end of the previous read, so a marker split across reads is still seen.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut window = std::mem::take(&mut tail);
            window.extend_from_slice(&buf[..n]);
            let seen = window
                .windows(DECRYPT.len())
                .filter(|w| *w == DECRYPT)
                .count();
            if seen > 0 {
                decrypts.fetch_add(seen, Ordering::SeqCst);
                if refuse.load(Ordering::SeqCst) {
                    return true;
                }
                let delay = delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
            }
            tail = window[window.len().saturating_sub(DECRYPT.len() - 1)..].to_vec();
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
        false
    };
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let cut = upstream.await;
    if cut {
        // Both halves of the client's connection go: it is closed mid-request.
        downstream.abort();
    } else {
        let _ = downstream.await;
    }
}
