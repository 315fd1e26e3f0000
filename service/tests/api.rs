//! The service end to end against the emulator: uploads of every size class, SSE-KMS on both
//! buckets, processing (identity, gunzip, jsonl, Encryption SDK), refusals that store nothing,
//! aborts that leave no multipart upload, reconciliation after a restart, and auth.
//!
//! Longer than 400 lines: the API's cases share one harness (stack, binary, client); split by
//! route, each file would start it again.

mod common;

use std::io::Write as _;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::{MIB, Stack, random_bytes, resources, sha256_hex};
use serde_json::Value;
use service::decrypt::{Decryptor, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn assert_sse_kms(stack: &Stack, bucket: &str, key: &str) {
    let head = stack
        .clients
        .s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("head");
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("aws:kms"),
        "{key}"
    );
    assert_eq!(head.ssekms_key_id(), Some(stack.key_arn.as_str()), "{key}");
}

#[tokio::test]
async fn round_trips_empty_small_and_multipart_files_with_sse_kms() {
    let stack = Stack::start(&[]).await;
    for (name, data) in [
        ("empty.bin", Vec::new()),
        ("dir/one-kib.txt", random_bytes(1024, 1)),
        ("large/eleven-mib.bin", random_bytes(11 * MIB, 2)),
    ] {
        let (code, body) = stack.put(name, data.clone()).await;
        assert_eq!(code, 201, "{name}: {body}");
        assert_eq!(body["size"], data.len() as u64);
        assert_eq!(body["sha256"], sha256_hex(&data));
        assert_eq!(body["sse"], "aws:kms");
        assert_eq!(body["kms_key_id"], stack.key_arn.as_str());
        let expected_parts = if data.len() > 5 * MIB { 3 } else { 1 };
        assert_eq!(body["parts"], expected_parts, "{name}");

        let status = stack.settle(name).await;
        assert_eq!(status["state"], "processed", "{status}");
        assert_eq!(status["processed"]["sha256"], sha256_hex(&data));
        assert_eq!(status["processed"]["processor"], "identity");
        let (code, got) = stack.get(name).await;
        assert_eq!(code, 200);
        assert_eq!(sha256_hex(&got), sha256_hex(&data), "{name}");

        assert_sse_kms(&stack, &stack.initial, &format!("raw/{name}")).await;
        assert_sse_kms(&stack, &stack.final_, &format!("processed/{name}")).await;
    }

    let data = random_bytes(11 * MIB, 2);
    let response = stack
        .get_range("large/eleven-mib.bin", "bytes=6000000-6000099")
        .await;
    assert_eq!(response.status().as_u16(), 206);
    assert!(
        response.headers()["content-range"]
            .to_str()
            .unwrap()
            .starts_with("bytes 6000000-6000099/")
    );
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &data[6_000_000..6_000_100]
    );

    let listed = stack.get_json("/v1/files?prefix=dir/").await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["files"][0]["name"], "dir/one-kib.txt");
    let page = stack.get_json("/v1/files?limit=2").await;
    assert_eq!(page["files"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a cursor for the rest");
    let rest = stack
        .get_json(&format!("/v1/files?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest["files"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null(), "{rest}");
    // A malformed cursor, or one replayed with another prefix, is refused at once.
    for query in [
        "cursor=not-a-cursor!".to_string(),
        format!("cursor={cursor}&prefix=elsewhere/"),
    ] {
        let asked = std::time::Instant::now();
        let response = stack
            .http
            .get(format!("{}/v1/files?{query}", stack.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query}");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(1),
            "{query}"
        );
    }
}

#[tokio::test]
async fn unknown_files_are_404_and_unprocessed_ones_409() {
    let stack = Stack::start(&["--require-encrypted-input=true"]).await;
    let (code, body) = stack.get("nothing-here").await;
    assert_eq!(code, 404);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["request_id"].is_string());

    let (code, _) = stack.put("plain.txt", b"not encrypted".to_vec()).await;
    assert_eq!(code, 201);
    let status = stack.settle("plain.txt").await;
    assert_eq!(status["state"], "failed");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("REQUIRE_ENCRYPTED_INPUT"),
        "{status}"
    );
    let (code, body) = stack.get("plain.txt").await;
    assert_eq!(code, 409);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["status"]["state"], "failed", "{body}");
    assert!(
        stack
            .keys(&stack.final_)
            .await
            .iter()
            .all(|k| !k.starts_with("processed/"))
    );
}

#[tokio::test]
async fn status_waits_until_processing_ends() {
    let stack = Stack::start(&[]).await;
    // Large enough that processing takes several S3 round trips after the PUT returns.
    let data = random_bytes(12 * MIB, 7);
    let (code, _) = stack.put("waited.bin", data.clone()).await;
    assert_eq!(code, 201);
    let status = stack.get_json("/v1/files/waited.bin/status?wait=30").await;
    assert_eq!(status["state"], "processed", "one waiting call: {status}");
    assert_eq!(status["processed"]["sha256"], sha256_hex(&data));

    for (path, why) in [
        ("/v1/files/waited.bin/status?wait=61", "at most 60"),
        ("/v1/files/waited.bin?wait=1", "status only"),
    ] {
        let response = stack
            .http
            .get(format!("{}{path}", stack.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn encryption_sdk_messages_are_decrypted_with_the_configured_key() {
    let stack = Stack::start(&["--require-encrypted-input=true"]).await;
    let producer = Decryptor::new(
        stack.clients.kms.clone(),
        &stack.key_arn,
        Settings::defaults(MIB as u64),
    )
    .await
    .unwrap();
    let plaintext = b"{\"secret\": \"payload\"}\n".repeat(1000);
    let message = producer.encrypt(plaintext.clone(), None).await.unwrap();
    assert_eq!(
        message[0], 0x02,
        "message format version 2 (committing suite)"
    );
    assert_ne!(message, plaintext);

    let (code, body) = stack.put("sealed.jsonl.enc", message).await;
    assert_eq!(code, 201, "{body}");
    let status = stack.settle("sealed.jsonl.enc").await;
    assert_eq!(status["state"], "processed", "{status}");
    let (_, got) = stack.get("sealed.jsonl.enc").await;
    assert_eq!(got, plaintext);

    // A message whose data key is wrapped by another KMS key is refused: the keyring only
    // unwraps with the configured key ARN.
    let other = stack.clients.kms.create_key().send().await.unwrap();
    let other_arn = other.key_metadata().unwrap().arn().unwrap().to_string();
    let foreign = Decryptor::new(
        stack.clients.kms.clone(),
        &other_arn,
        Settings::defaults(MIB as u64),
    )
    .await
    .unwrap();
    stack
        .put(
            "other-key.enc",
            foreign.encrypt(b"hello".to_vec(), None).await.unwrap(),
        )
        .await;
    let status = stack.settle("other-key.enc").await;
    assert_eq!(status["state"], "failed", "{status}");

    // A tampered message is a recorded failure, not garbage output.
    let mut tampered = producer.encrypt(b"hello".to_vec(), None).await.unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    stack.put("tampered.enc", tampered).await;
    let status = stack.settle("tampered.enc").await;
    assert_eq!(status["state"], "failed", "{status}");
}

#[tokio::test]
async fn decrypted_payloads_hold_their_memory_share_until_consumed() {
    let stack = Stack::start(&[]).await;
    // Budget: twice 1 MiB. Each 600 KiB message weighs 1.2 MiB, so two cannot be in memory
    // at once.
    let decryptor = Decryptor::new(
        stack.clients.kms.clone(),
        &stack.key_arn,
        Settings::defaults(MIB as u64),
    )
    .await
    .unwrap();
    let message = decryptor
        .encrypt(random_bytes(600 * 1024, 9), None)
        .await
        .unwrap();
    let size = message.len() as u64;
    let (mut first_reader, mut second_reader) = (message.as_slice(), message.as_slice());
    let first = decryptor
        .decrypt_from(Vec::new(), &mut first_reader, size)
        .await
        .unwrap();
    let second = decryptor.decrypt_from(Vec::new(), &mut second_reader, size);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "a second plaintext while the first is still held"
    );
    drop(first);
    let mut plaintext = Vec::new();
    let mut second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second decrypts once the first is dropped")
        .unwrap();
    second.read_to_end(&mut plaintext).await.unwrap();
    assert_eq!(plaintext, random_bytes(600 * 1024, 9));
}

#[tokio::test]
async fn gunzip_processor_inflates() {
    let stack = Stack::start(&["--processor=gunzip"]).await;
    let plain = b"line of text\n".repeat(50_000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    stack.put("logs.txt.gz", gz.finish().unwrap()).await;
    let status = stack.settle("logs.txt.gz").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert_eq!(status["processed"]["processor"], "gunzip");
    assert_eq!(stack.get("logs.txt.gz").await.1, plain);

    stack.put("not-gzip.gz", b"plain text".to_vec()).await;
    assert_eq!(stack.settle("not-gzip.gz").await["state"], "failed");
}

#[tokio::test]
async fn a_gzip_bomb_fails_and_leaves_no_output() {
    // 24 MiB of zeros gzip to about 24 KiB: past 16 MiB of output the ratio is over 200.
    let stack = Stack::start(&["--processor=gunzip"]).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 24 * MIB]).unwrap();
    stack.put("bomb.gz", gz.finish().unwrap()).await;
    let status = stack.settle("bomb.gz").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("MAX_EXPANSION_RATIO"),
        "{status}"
    );
    let outputs = stack.keys(&stack.final_).await;
    assert!(
        !outputs.iter().any(|k| k.starts_with("processed/")),
        "no partial output: {outputs:?}"
    );
    assert_eq!(
        common::open_uploads(&stack.clients, &stack.final_).await,
        0,
        "the output's upload was aborted"
    );
}

#[tokio::test]
async fn jsonl_processor_counts_lines_and_rejects_the_first_bad_one() {
    let stack = Stack::start(&["--processor=jsonl"]).await;
    stack
        .put("good.jsonl", b"{\"a\":1}\n{\"b\":[2]}\n\"c\"\n".to_vec())
        .await;
    let status = stack.settle("good.jsonl").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert_eq!(status["processed"]["lines"], 3);

    stack
        .put("bad.jsonl", b"{\"a\":1}\n{\"b\":\n{\"c\":3}\n".to_vec())
        .await;
    let status = stack.settle("bad.jsonl").await;
    assert_eq!(status["state"], "failed");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("line 2 is not valid JSON"),
        "{status}"
    );
    assert_eq!(stack.get("bad.jsonl").await.0, 409);

    // Fixing the file clears the failure.
    stack.put("bad.jsonl", b"{\"fixed\":true}\n".to_vec()).await;
    let status = stack.settle("bad.jsonl").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert!(
        !stack
            .keys(&stack.final_)
            .await
            .contains(&"failed/bad.jsonl.json".to_string())
    );
}

/// Sends a raw HTTP request (so paths reach the server unnormalised); returns the status.
async fn raw_request(stack: &Stack, head: &str, body: &[u8]) -> u16 {
    let address = stack.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn every_bad_name_is_refused_before_any_aws_call() {
    let stack = Stack::start(&[]).await;
    let long = "x".repeat(513);
    for path in [
        "a/../b", "..", "./a", "a/./b", "a//b", "dir/", "%2Fabs", "a%5Cb", "a%01b", "a%0Ab",
        "a%7Fb", &long, "x/status",
    ] {
        let head = format!(
            "PUT /v1/files/{path} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        );
        let code = raw_request(&stack, &head, b"data").await;
        assert_eq!(code, 400, "{path:?}");
    }
    assert!(
        stack.keys(&stack.initial).await.is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn oversize_bodies_are_413_and_leave_nothing() {
    let stack = Stack::start(&["--max-object-size=7340032"]).await;
    // Declared too large: refused before reading.
    let (code, body) = stack
        .put("big-declared.bin", random_bytes(8 * MIB, 3))
        .await;
    assert_eq!(code, 413, "{body}");
    // Streamed without a length: refused once the limit is crossed, mid multipart upload.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..12).map(|i| Ok(random_bytes(MIB, i))).collect();
    let response = stack
        .http
        .put(stack.file_url("big-streamed.bin"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert!(stack.keys(&stack.initial).await.is_empty());
    stack.assert_no_multipart_uploads().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let stack = Stack::start(&[]).await;
    let address = stack.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PUT /v1/files/cut-off.bin HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        20 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&random_bytes(12 * MIB, 4)).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    // The multipart upload had started (12 MiB > two 5 MiB parts); it must be aborted.
    stack.assert_no_multipart_uploads().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stack.keys(&stack.initial).await.is_empty());
}

#[tokio::test]
async fn integrity_headers_are_verified() {
    use base64::Engine as _;
    let stack = Stack::start(&[]).await;
    let data = b"checked payload".to_vec();
    let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Digest::finalize(
        <sha2::Sha256 as sha2::Digest>::new_with_prefix(&data),
    ));
    let ok = stack
        .http
        .put(stack.file_url("ok.txt"))
        .header("x-amz-checksum-sha256", sha)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    let bad = stack
        .http
        .put(stack.file_url("bad.txt"))
        .header("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(
        stack.keys(&stack.initial).await,
        vec!["raw/ok.txt".to_string()]
    );
}

#[tokio::test]
async fn raw_files_left_by_a_crash_are_processed_at_start_up() {
    let resources = resources().await;
    // As if the service had stored these and died before processing them.
    for (name, body) in [("left/one.txt", "first"), ("left/two.txt", "second")] {
        resources
            .clients
            .s3
            .put_object()
            .bucket(&resources.initial)
            .key(format!("raw/{name}"))
            .body(ByteStream::from(body.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
    }
    let stack = Stack::start_on(resources, &[]).await;
    for (name, body) in [("left/one.txt", "first"), ("left/two.txt", "second")] {
        let status = stack.settle(name).await;
        assert_eq!(status["state"], "processed", "{status}");
        assert_eq!(stack.get(name).await.1, body.as_bytes());
    }
    // A second scan finds nothing left to do.
    assert_eq!(stack.state.pipeline.reconcile().await.unwrap(), 0);
}

#[tokio::test]
async fn an_output_of_an_older_raw_version_is_never_served() {
    let stack = Stack::start(&[]).await;
    stack.put("versions.txt", b"version one".to_vec()).await;
    assert_eq!(stack.settle("versions.txt").await["state"], "processed");
    assert_eq!(stack.get("versions.txt").await.1, b"version one");
    // A new raw version written behind the service's back: nothing queues it.
    stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.initial)
        .key("raw/versions.txt")
        .body(ByteStream::from(b"version two".to_vec()))
        .send()
        .await
        .unwrap();
    let (code, body) = stack.get("versions.txt").await;
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["status"]["state"], "pending", "{body}");
    let response = stack.get_range("versions.txt", "bytes=0-3").await;
    assert_eq!(response.status().as_u16(), 409, "a range of the old output");

    // Once processed, the new version is served, and a range beyond it is 416.
    stack.state.pipeline.reconcile().await.unwrap();
    assert_eq!(stack.settle("versions.txt").await["state"], "processed");
    assert_eq!(stack.get("versions.txt").await.1, b"version two");
    let response = stack.get_range("versions.txt", "bytes=100-200").await;
    assert_eq!(response.status().as_u16(), 416);
}

#[tokio::test]
async fn auth_on_and_off() {
    let open = Stack::start(&[]).await;
    assert_eq!(
        open.http
            .get(format!("{}/v1/info", open.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    let token = "s3cr3t-token-with-enough-length";
    let guarded = Stack::start(&[&format!("--auth-token={token}")]).await;
    let info = format!("{}/v1/info", guarded.url);
    let none = guarded.http.get(&info).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = guarded
        .http
        .get(&info)
        .bearer_auth("s3cr3t-token-with-enough-lengtX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = guarded
        .http
        .get(&info)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
    let info: Value = right.json().await.unwrap();
    assert_eq!(info["kms_key_arn"], guarded.key_arn.as_str());
    assert_eq!(info["processor"], "identity");
    let put = guarded
        .http
        .put(guarded.file_url("x.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 401);
    assert!(guarded.keys(&guarded.initial).await.is_empty());
    // Probes stay open for load balancers; metrics are behind the token.
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 401)] {
        assert_eq!(
            guarded
                .http
                .get(format!("{}{path}", guarded.url))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            want,
            "{path}"
        );
    }
}

#[tokio::test]
async fn readiness_and_metrics() {
    let stack = Stack::start(&[]).await;
    let ready = stack
        .http
        .get(format!("{}/readyz", stack.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    stack.put("m.txt", b"metrics".to_vec()).await;
    stack.settle("m.txt").await;
    let text = stack
        .http
        .get(format!("{}/metrics", stack.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "filepipe_http_requests_total{method=\"PUT\",route=\"/v1/files/{*name}\",status=\"201\"} 1"
        ),
        "{text}"
    );
    for family in [
        "filepipe_http_requests_total",
        "filepipe_processing_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    let rss: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss > 1024 * 1024, "{rss}");
    assert!(
        text.contains("filepipe_processing_total{result=\"success\"} 1"),
        "{text}"
    );
    assert!(text.contains("filepipe_bytes_in_total 7"), "{text}");
    assert!(text.contains("filepipe_queue_depth 0"), "{text}");

    // A missing bucket makes the service unready.
    let resources = resources().await;
    let broken = Stack::start_on(
        common::Resources {
            initial: "no-such-bucket-anywhere-xyz".into(),
            ..resources
        },
        &[],
    )
    .await;
    let ready = broken
        .http
        .get(format!("{}/readyz", broken.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
}

#[tokio::test]
async fn delete_removes_raw_and_processed_and_is_idempotent() {
    let stack = Stack::start(&[]).await;
    stack.put("gone.txt", b"bye".to_vec()).await;
    assert_eq!(stack.settle("gone.txt").await["state"], "processed");
    for _ in 0..2 {
        let response = stack
            .http
            .delete(stack.file_url("gone.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204);
    }
    assert_eq!(stack.status("gone.txt").await.0, 404);
    assert_eq!(stack.get("gone.txt").await.0, 404);
    assert!(stack.keys(&stack.initial).await.is_empty());
    assert!(stack.keys(&stack.final_).await.is_empty());
    let bad = stack
        .http
        .delete(stack.file_url("a%5Cb"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test]
async fn every_error_answers_in_the_one_json_shape() {
    let stack = Stack::start(&[]).await;
    let cases = [
        (reqwest::Method::GET, "/nowhere", 404, "not_found"),
        (
            reqwest::Method::POST,
            "/v1/files/a.txt",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::GET,
            "/v1/files?limit=many",
            400,
            "bad_request",
        ),
    ];
    for (method, path, status, code) in cases {
        let response = stack
            .http
            .request(method.clone(), format!("{}{path}", stack.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert_eq!(body["error"]["request_id"], id.as_str(), "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_500_in_json_and_the_server_goes_on() {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/boom",
            get(|| async {
                if std::env::var_os("PATH").is_some() {
                    panic!("a bug");
                }
                "unreachable"
            }),
        )
        .route("/fine", get(|| async { "fine" }))
        .layer(axum::middleware::from_fn(service::http::json_errors));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let response = http.get(format!("{url}/boom")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let fine = http.get(format!("{url}/fine")).send().await.unwrap();
    assert_eq!(fine.text().await.unwrap(), "fine");
}

#[tokio::test]
async fn downloads_carry_validators_and_answer_304_to_a_current_copy() {
    let stack = Stack::start(&[]).await;
    stack.put("cond.txt", b"first".to_vec()).await;
    stack.settle("cond.txt").await;
    let first = stack
        .http
        .get(stack.file_url("cond.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let modified = first.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();

    let conditional = |header: &'static str, value: String| {
        stack
            .http
            .get(stack.file_url("cond.txt"))
            .header(header, value)
            .send()
    };
    let same = conditional("if-none-match", etag.clone()).await.unwrap();
    assert_eq!(same.status().as_u16(), 304);
    assert_eq!(same.headers()["etag"].to_str().unwrap(), etag);
    assert!(same.bytes().await.unwrap().is_empty());
    let since = conditional("if-modified-since", modified).await.unwrap();
    assert_eq!(since.status().as_u16(), 304);
    let other = conditional("if-none-match", "\"something-else\"".into())
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 200);
    assert_eq!(other.bytes().await.unwrap().as_ref(), b"first");

    // A new version: the old copy is not current any more.
    stack.put("cond.txt", b"second, longer".to_vec()).await;
    stack.settle("cond.txt").await;
    let changed = conditional("if-none-match", etag).await.unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    assert_eq!(changed.bytes().await.unwrap().as_ref(), b"second, longer");
}

#[tokio::test]
async fn downloads_carry_the_uploaded_content_type_or_the_processors() {
    let stack = Stack::start(&[]).await;
    let put = |name: &'static str, content_type: Option<&'static str>| {
        let mut request = stack.http.put(stack.file_url(name)).body("a,b\n1,2\n");
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        request.send()
    };
    let typed = put("typed.csv", Some("text/csv; charset=utf-8"))
        .await
        .unwrap();
    assert_eq!(typed.status().as_u16(), 201);
    let untyped = put("untyped.bin", None).await.unwrap();
    assert_eq!(untyped.status().as_u16(), 201);
    for bad in ["text", "text/c\"sv", "/csv", "a b/c"] {
        let refused = stack
            .http
            .put(stack.file_url("bad.csv"))
            .header(
                "content-type",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 400, "{bad:?}");
    }
    assert!(
        stack
            .keys(&stack.initial)
            .await
            .iter()
            .all(|k| k != "raw/bad.csv")
    );

    for (name, expected) in [
        ("typed.csv", "text/csv; charset=utf-8"),
        ("untyped.bin", "application/octet-stream"),
    ] {
        stack.settle(name).await;
        let got = stack.http.get(stack.file_url(name)).send().await.unwrap();
        assert_eq!(got.status().as_u16(), 200);
        assert_eq!(got.headers()["content-type"], expected, "{name}");
        assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    }

    let jsonl = Stack::start(&["--processor=jsonl"]).await;
    let put = jsonl
        .http
        .put(jsonl.file_url("lines.jsonl"))
        .header("content-type", "text/plain")
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    jsonl.settle("lines.jsonl").await;
    let got = jsonl
        .http
        .get(jsonl.file_url("lines.jsonl"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "application/x-ndjson");
}

/// 200 reprocess requests at once on one failed file make one more run, not 200: the first
/// queues it, the others within 5 s are told 429; asking while it is queued or processed
/// queues nothing.
#[tokio::test]
async fn reprocess_requests_cannot_pile_up_runs() {
    let stack = Stack::start(&["--require-encrypted-input=true"]).await;
    let (code, _) = stack.put("plain.txt", b"not encrypted".to_vec()).await;
    assert_eq!(code, 201);
    assert_eq!(stack.settle("plain.txt").await["state"], "failed");
    let runs = || {
        let metrics = stack.state.metrics.render();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("filepipe_processing_total{result=\"failure\"} "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(runs(), 1);
    let url = format!("{}/reprocess", stack.file_url("plain.txt"));
    let answers = futures_util::future::join_all((0..200).map(|_| async {
        let response = stack.http.post(&url).send().await.unwrap();
        let code = response.status().as_u16();
        let retry = response.headers().contains_key("retry-after");
        (code, retry, response.json::<Value>().await.unwrap())
    }))
    .await;
    let queued = answers
        .iter()
        .filter(|(code, _, body)| *code == 202 && body["queued"] == true)
        .count();
    let refused = answers
        .iter()
        .filter(|(code, retry, body)| *code == 429 && *retry && body["error"]["code"] == "too_soon")
        .count();
    assert_eq!((queued, refused), (1, 199), "{answers:?}");
    assert_eq!(stack.settle("plain.txt").await["state"], "failed");
    assert_eq!(runs(), 2, "one more run");

    // A processed file is left alone.
    let stack = Stack::start(&[]).await;
    let (code, _) = stack.put("done.txt", b"fine".to_vec()).await;
    assert_eq!(code, 201);
    assert_eq!(stack.settle("done.txt").await["state"], "processed");
    let response = stack
        .http
        .post(format!("{}/reprocess", stack.file_url("done.txt")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["queued"].as_bool(), body["state"].as_str()),
        (Some(false), Some("processed")),
        "{body}"
    );
}
