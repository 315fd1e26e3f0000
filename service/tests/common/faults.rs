//! An HTTP proxy between the service and the emulator that injects faults into chosen
//! requests: refuse them (the connection closes unanswered, as if the emulator were down),
//! answer 503 SlowDown, cut the answer off mid-body, never answer, or change or shorten the
//! request's body on its way. Requests are matched on their head
//! (`GET /bucket/raw/...`, or `TrentService.Decrypt` for KMS).
//!
//! One request per connection: the proxy asks both sides to close after each exchange, so
//! every request is seen and decided on its own. Headers outside the signature are all it
//! adds, so request signatures stay valid.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the client's connection without an answer.
    Refuse,
    /// Answer `503 SlowDown` (what S3 says when throttling).
    SlowDown,
    /// Answer as KMS does when it fails: this HTTP status and this error code (`__type`).
    KmsError(u16, &'static str),
    /// Forward the answer's head and this many bytes of its body, then cut the connection.
    CutAfter(usize),
    /// Take the request and never answer (until the client gives up).
    Hang,
    /// Forward the request untouched: only counted.
    Pass,
    /// Forward the request with the first byte of its body changed (its length kept).
    AlterBody,
    /// Forward the request without the last byte of its body, then close the way to the
    /// server: the server sees the body end early.
    TruncateBody,
}

/// Which requests a rule applies to: every `every`-th matching one (1: all of them).
struct Rule {
    matches: Box<dyn Fn(&str) -> bool + Send + Sync>,
    fault: Fault,
    every: u64,
    seen: AtomicU64,
}

pub struct FaultProxy {
    pub url: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    injected: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        // It reads requests, so it cannot sit inside TLS: it forwards to the emulator's
        // plain-HTTP port, and the service talks plain HTTP to it.
        assert!(
            upstream.starts_with("http://"),
            "the proxy needs the emulator's plain-HTTP endpoint, not {upstream}"
        );
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let injected = Arc::new(AtomicUsize::new(0));
        let (shared_rules, shared_injected) = (rules.clone(), injected.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(exchange(
                    client,
                    upstream.clone(),
                    shared_rules.clone(),
                    shared_injected.clone(),
                ));
            }
        });
        FaultProxy {
            url,
            rules,
            injected,
        }
    }

    /// From now on, every `every`-th request whose head `matches` gets `fault`.
    pub fn inject(
        &self,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
        fault: Fault,
        every: u64,
    ) {
        self.rules.lock().unwrap().push(Rule {
            matches: Box::new(matches),
            fault,
            every: every.max(1),
            seen: AtomicU64::new(0),
        });
    }

    /// Every request is forwarded untouched again.
    pub fn heal(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }
}

/// Matches S3 requests for `key_prefix` in any bucket with this method, e.g.
/// `s3("GET", "raw/")`.
pub fn s3(method: &'static str, key_prefix: &'static str) -> impl Fn(&str) -> bool {
    move |head: &str| {
        let Some(line) = head.lines().next() else {
            return false;
        };
        let mut parts = line.split(' ');
        let (Some(m), Some(path)) = (parts.next(), parts.next()) else {
            return false;
        };
        // Path style: /<bucket>/<key>.
        m == method
            && path
                .trim_start_matches('/')
                .split_once('/')
                .is_some_and(|(_, key)| key.starts_with(key_prefix))
            && !head.contains("X-Amz-Target")
            && !head.contains("x-amz-target")
    }
}

/// Matches KMS Decrypt requests.
pub fn kms_decrypt(head: &str) -> bool {
    head.contains("TrentService.Decrypt\r\n")
}

fn decide(rules: &Mutex<Vec<Rule>>, head: &str) -> Option<Fault> {
    let rules = rules.lock().unwrap();
    rules.iter().find_map(|rule| {
        if !(rule.matches)(head) {
            return None;
        }
        let n = rule.seen.fetch_add(1, Ordering::SeqCst) + 1;
        (n % rule.every == 0).then_some(rule.fault)
    })
}

/// The request id of every injected 503.
pub const FAULT_REQUEST_ID: &str = "FAULTPROXY0000001";

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

async fn exchange(
    mut client: TcpStream,
    upstream: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    injected: Arc<AtomicUsize>,
) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let fault = decide(&rules, &head);
    if fault.is_some() {
        injected.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::Refuse) => return,
        Some(Fault::Hang) => {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        Some(fault @ (Fault::SlowDown | Fault::KmsError(..))) => {
            let answer = match fault {
                Fault::KmsError(status, code) => {
                    let body = format!("{{\"__type\":\"{code}\",\"message\":\"injected\"}}");
                    format!(
                        "HTTP/1.1 {status} Injected\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nx-amzn-requestid: {FAULT_REQUEST_ID}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: {FAULT_REQUEST_ID}\r\nConnection: close\r\n\r\n{SLOW_DOWN}",
                    SLOW_DOWN.len()
                ),
            };
            let _ = client.write_all(answer.as_bytes()).await;
            let _ = client.shutdown().await;
            // Let the client finish sending (or give up) before the socket goes, so it
            // reads the answer instead of a reset.
            let mut sink = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            return;
        }
        _ => {}
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    if server
        .write_all(with_connection_close(&head).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = match fault {
        Some(Fault::AlterBody) => tokio::spawn(async move {
            send_altered(rest, &mut client_read, &mut server_write).await;
        }),
        Some(Fault::TruncateBody) => {
            let length = content_length(&head);
            tokio::spawn(async move {
                send_truncated(rest, length, &mut client_read, &mut server_write).await;
            })
        }
        _ => tokio::spawn(async move {
            if server_write.write_all(&rest).await.is_ok() {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            }
        }),
    };
    let Some((mut answer_head, mut body_start)) = read_head(&mut server_read).await else {
        upload.abort();
        return;
    };
    // An interim answer (Expect: 100-continue) passes as it is; the final one follows.
    if answer_head.starts_with("HTTP/1.1 100") {
        if client_write
            .write_all(answer_head.as_bytes())
            .await
            .is_err()
        {
            upload.abort();
            return;
        }
        let Some(final_answer) = read_head_after(&mut server_read, body_start).await else {
            upload.abort();
            return;
        };
        (answer_head, body_start) = final_answer;
    }
    let mut forward_limit = match fault {
        Some(Fault::CutAfter(bytes)) => Some(bytes),
        _ => None,
    };
    let first = take(&mut forward_limit, &body_start);
    if client_write
        .write_all(with_connection_close(&answer_head).as_bytes())
        .await
        .is_err()
        || client_write.write_all(first).await.is_err()
    {
        upload.abort();
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    // A cut: the client sees its connection end mid-body.
    while forward_limit != Some(0) {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = take(&mut forward_limit, &buf[..n]);
        if client_write.write_all(data).await.is_err() {
            break;
        }
    }
    upload.abort();
    let _ = client_write.shutdown().await;
}

/// The request body from `rest` (read with the head) and `client` on, its first byte flipped.
async fn send_altered(
    mut rest: Vec<u8>,
    client: &mut (impl AsyncReadExt + Unpin),
    server: &mut (impl AsyncWriteExt + Unpin),
) {
    if rest.is_empty() {
        // The body follows an interim 100 Continue.
        let mut first = vec![0u8; 64 * 1024];
        match client.read(&mut first).await {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = first[..n].to_vec(),
        }
    }
    rest[0] ^= 0xff;
    if server.write_all(&rest).await.is_ok() {
        let _ = tokio::io::copy(client, server).await;
    }
}

/// The request body, all but its last byte, then the end of the stream to the server.
async fn send_truncated(
    rest: Vec<u8>,
    length: usize,
    client: &mut (impl AsyncReadExt + Unpin),
    server: &mut (impl AsyncWriteExt + Unpin),
) {
    let mut left = Some(length.saturating_sub(1));
    let mut data = rest;
    loop {
        let part = take(&mut left, &data);
        if server.write_all(part).await.is_err() || left == Some(0) {
            break;
        }
        let mut buf = vec![0u8; 64 * 1024];
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => data = buf[..n].to_vec(),
        }
    }
    let _ = server.shutdown().await;
    // Keep reading what the client still sends, so it sees an answer rather than a reset.
    let mut sink = vec![0u8; 64 * 1024];
    while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// The `Content-Length` of a head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// What of `data` may still be forwarded, counted against `limit` if there is one.
fn take<'a>(limit: &mut Option<usize>, data: &'a [u8]) -> &'a [u8] {
    match limit {
        Some(left) => {
            let n = data.len().min(*left);
            *left -= n;
            &data[..n]
        }
        None => data,
    }
}

/// Reads up to the end of an HTTP head; returns it and whatever followed it.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<(String, Vec<u8>)> {
    read_head_after(stream, Vec::new()).await
}

/// As [`read_head`], with `data` already read.
async fn read_head_after(
    stream: &mut (impl AsyncReadExt + Unpin),
    mut data: Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(split) = split_head(&mut data) {
            return Some(split);
        }
        if data.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// A complete head at the start of `data`, and what follows it.
fn split_head(data: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let rest = data.split_off(end + 4);
    Some((String::from_utf8_lossy(data).into_owned(), rest))
}

/// The head with `Connection: close` instead of any connection header it had.
fn with_connection_close(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}
