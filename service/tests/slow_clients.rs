//! Slow and idle clients against the real binary: they are cut off, and while they last they
//! neither hold the shared part buffers nor the connection slots that real clients need.

mod common;

use std::time::{Duration, Instant};

use common::binary::{TOKEN, http, spawn};
use common::{MIB, random_bytes, resources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes the connection; `None` if it is still open
/// after `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// Eight uploads trickling one byte every 500 ms, against a budget of only two part
/// buffers: a 12 MiB multipart upload still goes through at once, and each trickle is
/// answered 408 once a rate window has passed, leaving nothing behind.
#[tokio::test]
async fn trickling_uploads_hold_no_part_buffer_and_are_cut_off() {
    let resources = resources().await;
    let running = spawn(
        &resources,
        &[
            ("MAX_BUFFERED_PARTS", "2"),
            ("PART_SIZE", "5242880"),
            ("MIN_BODY_RATE", "4096"),
        ],
    )
    .await;
    let address = running.url.trim_start_matches("http://").to_string();
    let mut trickles = Vec::new();
    for i in 0..8 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "PUT /v1/files/trickle-{i}.bin HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
            20 * MIB
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        trickles.push(tokio::spawn(async move {
            let started = Instant::now();
            let (mut read, mut write) = stream.into_split();
            let feeding = tokio::spawn(async move {
                while write.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(40), read.read_to_end(&mut answer)).await;
            feeding.abort();
            (
                started.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let data = random_bytes(12 * MIB, 7);
    let (code, body) = running.put(&http(), "real.bin", data).await;
    assert_eq!(code, 201, "{body}");
    assert!(body["parts"].as_u64().unwrap() >= 2, "{body}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "a real upload waited {took:?} behind trickling ones"
    );

    for trickle in trickles {
        let (lasted, answer) = trickle.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a trickling upload was answered: {answer:?}"
        );
        assert!(answer.contains("body_too_slow"), "{answer}");
        assert!(
            lasted < Duration::from_secs(20),
            "a trickling upload lasted {lasted:?}"
        );
    }
    assert_eq!(
        common::keys(&resources.clients, &resources.initial).await,
        ["raw/real.bin"],
        "only the real upload was stored"
    );
    assert_eq!(
        common::open_uploads(&resources.clients, &resources.initial).await,
        0
    );
}

/// With room for four connections: four clients that send their headers one byte at a
/// time and one that sends nothing are closed after the header timeout, and meanwhile a
/// real request waits in the accept queue instead of failing, then is served.
#[tokio::test]
async fn half_sent_headers_and_idle_connections_are_closed_and_capped() {
    let resources = resources().await;
    let running = spawn(
        &resources,
        &[
            ("MAX_CONNECTIONS", "4"),
            ("MAX_STATUS_WAITERS", "2"),
            ("HEADER_READ_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let address = running.url.trim_start_matches("http://").to_string();
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let stream = TcpStream::connect(&address).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let feeding = tokio::spawn(async move {
            for byte in b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        slow.push(tokio::spawn(async move {
            let mut answer = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(15), read.read_to_end(&mut answer))
                    .await
                    .is_ok();
            feeding.abort();
            closed.then(|| opened.elapsed())
        }));
    }
    let mut silent = TcpStream::connect(&address).await.unwrap();

    // The four slow connections fill every slot: this request waits until one is closed,
    // which is sooner than the 2 s header timeout for the last two: past half the slots, a
    // connection's deadline shrinks (to 1 s at the last slots). Served at once, it would
    // answer right after this 300 ms pause.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = http()
        .get(format!("{}/healthz", running.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let served_after = opened.elapsed();
    assert!(
        served_after >= Duration::from_millis(600),
        "served after {served_after:?}: the connection cap did not hold"
    );

    for connection in slow {
        let closed_after = connection
            .await
            .unwrap()
            .expect("a connection sending its headers slowly stayed open");
        assert!(
            closed_after < Duration::from_secs(6),
            "closed only after {closed_after:?}"
        );
    }
    // The silent one was accepted once a slot freed, and is closed after its own timeout.
    assert!(
        until_closed(&mut silent, Duration::from_secs(10))
            .await
            .is_some(),
        "an idle connection stayed open"
    );

    // A keep-alive connection that goes idle after a request is closed too.
    let mut kept = TcpStream::connect(&address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answered = until_closed(&mut kept, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}
