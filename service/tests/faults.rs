//! Faults between the real binary and the emulator (S3 and KMS, through a fault-injecting
//! proxy) and the binary killed mid-upload: an acknowledged file always ends processed into
//! the right output, a failed upload leaves nothing behind, and nothing waits on a sleep.

mod common;

use std::time::{Duration, Instant};

use common::binary::{Running, TOKEN, http, spawn};
use common::faults::{FAULT_REQUEST_ID, Fault, FaultProxy, kms_decrypt, s3};
use common::proxy::KmsProxy;
use common::{MIB, Resources, random_bytes, resources, sha256_hex};
use emulator_fixtures::emulator_plain_endpoint;
use tokio::io::AsyncWriteExt;

/// The service, talking to S3 and KMS only through `proxy`, with short S3 timeouts and
/// quick retries so that faults play out in seconds.
async fn behind(resources: &Resources, proxy: &FaultProxy) -> Running {
    spawn(
        resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("S3_ATTEMPT_TIMEOUT_SECS", "3"),
            ("TRANSIENT_BACKOFF_MS", "200"),
            ("MAX_TRANSIENT_TRIES", "8"),
            ("PART_SIZE", "5242880"),
        ],
    )
    .await
}

/// Open multipart uploads in both buckets.
async fn open_uploads(resources: &Resources) -> usize {
    common::open_uploads(&resources.clients, &resources.initial).await
        + common::open_uploads(&resources.clients, &resources.final_).await
}

async fn raw_keys(resources: &Resources) -> Vec<String> {
    common::keys(&resources.clients, &resources.initial).await
}

/// Waits until `done` holds, up to `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// S3 unreachable for every `raw/` request (connections closed unanswered): small and
/// multipart uploads answer 503 with Retry-After, leave no object and, once S3 is back, no
/// open multipart upload; then uploads work again.
#[tokio::test]
async fn uploads_while_s3_is_unreachable_answer_503_and_leave_nothing() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = behind(&resources, &proxy).await;
    let http = http();

    // The multipart upload is created, then its parts and the abort find S3 gone.
    proxy.inject(s3("PUT", "raw/"), Fault::Refuse, 1);
    proxy.inject(s3("DELETE", "raw/"), Fault::Refuse, 1);
    for (name, size) in [("small.bin", 1000), ("large.bin", 12 * MIB)] {
        let started = Instant::now();
        let response = http
            .put(running.file_url(name))
            .bearer_auth(TOKEN)
            .body(random_bytes(size, 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 503, "{name}");
        assert!(
            response.headers().contains_key("retry-after"),
            "{name}: no Retry-After"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "aws_unavailable", "{body}");
        eprintln!("{name}: 503 after {:?}", started.elapsed());
    }
    assert!(proxy.injected() > 0);
    assert!(raw_keys(&resources).await.is_empty());
    assert_eq!(
        open_uploads(&resources).await,
        1,
        "the abort of the large upload could not reach S3 yet"
    );

    proxy.heal();
    wait_for(
        "the open multipart upload aborted once S3 is back",
        Duration::from_secs(60),
        || async { open_uploads(&resources).await == 0 },
    )
    .await;
    assert!(raw_keys(&resources).await.is_empty());
    let data = random_bytes(12 * MIB, 2);
    let (code, body) = running.put(&http, "large.bin", data.clone()).await;
    assert_eq!(code, 201, "{body}");
    let status = running.settle(&http, "large.bin").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert_eq!(status["processed"]["sha256"], sha256_hex(&data));
}

/// S3 takes requests and never answers: an upload and `/readyz` answer 503 within the S3
/// timeouts instead of hanging, and all is well again once S3 answers.
#[tokio::test]
async fn an_s3_that_never_answers_costs_a_bounded_wait_not_a_hung_request() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("S3_ATTEMPT_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    proxy.inject(s3("PUT", "raw/"), Fault::Hang, 1);
    proxy.inject(|head: &str| head.starts_with("HEAD /"), Fault::Hang, 1);
    let http = http();
    let started = Instant::now();
    let (code, body) = running.put(&http, "hung.txt", b"x".to_vec()).await;
    let waited = started.elapsed();
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "aws_unavailable", "{body}");
    // Attempts of 2 s, and 6 s for the call with its retries.
    assert!(
        waited < Duration::from_secs(10),
        "the upload took {waited:?}"
    );

    let started = Instant::now();
    let ready = http
        .get(format!("{}/readyz", running.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = ready.text().await.unwrap();
    assert!(text.contains("s3:HeadBucket"), "{text}");

    proxy.heal();
    let (code, body) = running.put(&http, "hung.txt", b"x".to_vec()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        running.settle(&http, "hung.txt").await["state"],
        "processed"
    );
    // The readiness answer is cached for 5 s.
    wait_for("/readyz ready again", Duration::from_secs(15), || async {
        http.get(format!("{}/readyz", running.url))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
}

/// While every third read of a raw object is throttled, every fourth is cut off mid-body,
/// every third output write is throttled and every second KMS Decrypt is refused, plaintext
/// and encrypted files, small and multipart, all end processed into exactly their content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_survives_s3_and_kms_faults() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = behind(&resources, &proxy).await;
    let producer = common::encryptor(&resources, &resources.key_arn).await;
    let mut files = Vec::new();
    for i in 0..6u64 {
        let plaintext = random_bytes(50_000 + i as usize, i);
        files.push((format!("plain/{i}.bin"), plaintext.clone(), plaintext));
    }
    for i in 0..2u64 {
        let plaintext = random_bytes(6 * MIB, 10 + i);
        files.push((format!("large/{i}.bin"), plaintext.clone(), plaintext));
    }
    for i in 0..4u64 {
        let plaintext = random_bytes(100_000, 20 + i);
        let message = producer.encrypt(plaintext.clone(), None).await.unwrap();
        files.push((format!("sealed/{i}.enc"), message, plaintext));
    }

    proxy.inject(s3("GET", "raw/"), Fault::SlowDown, 3);
    proxy.inject(s3("GET", "raw/"), Fault::CutAfter(20_000), 4);
    proxy.inject(s3("PUT", "processed/"), Fault::SlowDown, 3);
    proxy.inject(kms_decrypt, Fault::Refuse, 2);
    let http = http();
    for (name, upload, _) in &files {
        let (code, body) = running.put(&http, name, upload.clone()).await;
        assert_eq!(code, 201, "{name}: {body}");
    }
    for (name, _, plaintext) in &files {
        let status = running.settle(&http, name).await;
        assert_eq!(status["state"], "processed", "{name}: {status}");
        let output = http
            .get(running.file_url(name))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha256_hex(&output), sha256_hex(plaintext), "{name}");
    }
    let injected = proxy.injected();
    assert!(injected >= 10, "only {injected} faults were injected");
    let metrics = running.metrics(&http).await;
    eprintln!("{injected} faults injected; retries in /metrics:");
    for line in metrics.lines().filter(|l| l.contains("retr")) {
        eprintln!("  {line}");
    }
}

/// A file whose reads stay throttled past its tries fails `transient`, and its status
/// names the AWS error in one line with the request id AWS gave: no dump of the SDK's
/// error, no response headers.
#[tokio::test]
async fn a_failure_names_the_aws_error_and_its_request_id() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("TRANSIENT_BACKOFF_MS", "100"),
            ("MAX_TRANSIENT_TRIES", "1"),
        ],
    )
    .await;
    proxy.inject(s3("GET", "raw/"), Fault::SlowDown, 1);
    let http = http();
    assert_eq!(
        running.put(&http, "throttled.txt", b"x".to_vec()).await.0,
        201
    );
    let status = running.settle(&http, "throttled.txt").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error_code"], "transient", "{status}");
    assert_eq!(status["request_id"], FAULT_REQUEST_ID, "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.ends_with("SlowDown: Please reduce your request rate."),
        "{error}"
    );
    for dump in ["Error {", "headers", "HeaderMap", "Response {"] {
        assert!(!error.contains(dump), "{error}");
    }
}

/// SIGKILL with files acknowledged but not yet processed, one of them mid-decryption (KMS
/// held back by a proxy), and one upload half sent: the next start aborts the multipart
/// upload left open and processes every acknowledged file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_and_mid_processing_loses_nothing_and_leaves_no_open_upload() {
    let resources = resources().await;
    let slow_kms = KmsProxy::start(&emulator_plain_endpoint()).await;
    slow_kms.delay_decrypts(Duration::from_secs(60));
    let settings = [
        ("AWS_ENDPOINT_URL", slow_kms.url.as_str()),
        ("PART_SIZE", "5242880"),
    ];
    let mut running = spawn(&resources, &settings).await;
    let http = http();
    let mut acknowledged = Vec::new();
    for i in 0..8u64 {
        let data = random_bytes(20_000, i);
        let name = format!("acked/{i}.bin");
        let (code, body) = running.put(&http, &name, data.clone()).await;
        assert_eq!(code, 201, "{body}");
        acknowledged.push((name, data));
    }
    let producer = common::encryptor(&resources, &resources.key_arn).await;
    let plaintext = random_bytes(50_000, 99);
    let message = producer.encrypt(plaintext.clone(), None).await.unwrap();
    let (code, body) = running.put(&http, "acked/sealed.enc", message).await;
    assert_eq!(code, 201, "{body}");
    acknowledged.push(("acked/sealed.enc".to_string(), plaintext));
    wait_for(
        "the decryption waiting on KMS",
        Duration::from_secs(20),
        || async { slow_kms.decrypts() >= 1 },
    )
    .await;

    let address = running.url.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PUT /v1/files/stalled.bin HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        20 * MIB
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&vec![7u8; 12 * MIB]).await.unwrap();
    wait_for(
        "the multipart upload started",
        Duration::from_secs(20),
        || async { open_uploads(&resources).await == 1 },
    )
    .await;
    let status = running
        .get_json(&http, "/v1/files/acked/sealed.enc/status")
        .await;
    assert_eq!(status["state"], "processing", "{status}");

    running.child.kill().unwrap();
    running.child.wait().unwrap();
    drop(stalled);
    assert_eq!(
        open_uploads(&resources).await,
        1,
        "the killed run left its upload open"
    );

    slow_kms.delay_decrypts(Duration::ZERO);
    let restarted = spawn(&resources, &settings).await;
    // The sweep runs before the service listens: nothing to wait for.
    assert_eq!(open_uploads(&resources).await, 0, "the orphan was aborted");
    assert!(
        restarted
            .log_text()
            .contains("aborted multipart uploads a previous run left open"),
        "{}",
        restarted.log_text()
    );
    for (name, data) in &acknowledged {
        let status = restarted.settle(&http, name).await;
        assert_eq!(status["state"], "processed", "{name}: {status}");
        assert_eq!(status["processed"]["sha256"], sha256_hex(data), "{name}");
    }
    assert!(
        !raw_keys(&resources)
            .await
            .contains(&"raw/stalled.bin".to_string())
    );
}

/// S3 (and KMS) take requests and never answer, with the default 60 s S3 attempts: uploads,
/// downloads, listings and status requests answer 503 within INTERACTIVE_TIMEOUT_SECS, and
/// `/readyz` within its own few seconds, instead of after three 60 s attempts.
#[tokio::test]
async fn api_requests_give_up_on_a_silent_s3_within_their_bound() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("INTERACTIVE_TIMEOUT_SECS", "5"),
        ],
    )
    .await;
    let http = http();
    proxy.inject(|_: &str| true, Fault::Hang, 1);
    let bound = Duration::from_secs(12);
    let requests = [
        ("PUT", running.file_url("silent.bin")),
        ("GET", running.file_url("silent.bin")),
        ("GET", format!("{}/status", running.file_url("silent.bin"))),
        ("GET", format!("{}/v1/files?prefix=s", running.url)),
    ];
    for (method, url) in requests {
        let started = Instant::now();
        let response = http
            .request(method.parse().unwrap(), &url)
            .bearer_auth(TOKEN)
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {url}: no answer within 30 s: {err}"));
        let waited = started.elapsed();
        assert_eq!(response.status().as_u16(), 503, "{method} {url}");
        assert!(waited < bound, "{method} {url} answered after {waited:?}");
    }
    let started = Instant::now();
    let ready = http
        .get(format!("{}/readyz", running.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "/readyz answered after {:?}",
        started.elapsed()
    );
}
