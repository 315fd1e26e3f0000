//! A flood of idle connections from one address against the real binary. In a file of its
//! own: its thousand client tasks would load the machine under other tests' timings.

mod common;

use std::time::Duration;

use common::binary::{http, spawn};
use common::resources;
use tokio::io::AsyncReadExt;

/// 1,000 idle connections from one address (127.0.0.2, standing in for a client elsewhere),
/// each opened again as soon as it is closed: the address holds at most its share
/// (MAX_CONNECTIONS_PER_ADDRESS), so `/healthz` and an authenticated 4 KiB upload from
/// 127.0.0.1 are answered within a second throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_idle_connections_from_one_address_leaves_room_for_others() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let resources = resources().await;
    let running = spawn(&resources, &[]).await;
    let address: std::net::SocketAddr = running.url.trim_start_matches("http://").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..1000)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Bounded: at most 40 connections per task, and only while the test measures.
                for _ in 0..40 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                    if let Ok(Ok(mut stream)) =
                        tokio::time::timeout(Duration::from_secs(2), socket.connect(address)).await
                    {
                        // Idle until the server closes it.
                        let mut byte = [0u8; 1];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(15), stream.read(&mut byte))
                                .await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let http = http();
    for round in 0..5 {
        running
            .assert_answers_within(
                &http,
                &format!("during-{round}.bin"),
                Duration::from_secs(1),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.abort();
    }
}
