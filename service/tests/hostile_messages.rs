//! Encryption SDK messages as an attacker (or a careless producer) would send them, against
//! the real binary: none may stop the service, crash it, or make it call KMS without bound.
//! KMS calls are counted by a proxy between the service and the emulator.
//!
//! Longer than 400 lines: every case shares the message builders and the KMS-counting proxy.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::binary::{http, spawn};
use common::faults::{Fault, FaultProxy, kms_decrypt};
use common::proxy::KmsProxy;
use common::{encryptor, random_bytes, resources, sha256_hex};
use emulator_fixtures::emulator_plain_endpoint;
use service::decrypt::{DEFAULT_MAX_FRAMES, Limits, Settings, inspect};

fn limits() -> Limits {
    Settings::defaults(0).limits
}

/// `message` with its data keys replaced by `keys` (provider info, wrapped key) of `aws-kms`.
fn with_data_keys(message: &[u8], key_arn: &str, keys: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let wide = Limits {
        max_data_keys: u16::MAX,
        max_frames: u32::MAX,
        max_context_pairs: u16::MAX,
    };
    let at = inspect(message, &wide, key_arn).unwrap().data_keys_at;
    let mut forged = message[..at.start].to_vec();
    forged.extend_from_slice(&(keys.len() as u16).to_be_bytes());
    for (info, wrapped) in keys {
        for field in [b"aws-kms".as_slice(), info.as_bytes(), wrapped] {
            forged.extend_from_slice(&(field.len() as u16).to_be_bytes());
            forged.extend_from_slice(field);
        }
    }
    forged.extend_from_slice(&message[at.end..]);
    forged
}

/// The header of `message` followed by `frames` junk frames and a junk final frame.
fn with_junk_frames(message: &[u8], key_arn: &str, frames: u32) -> Vec<u8> {
    let shape = inspect(message, &limits(), key_arn).unwrap();
    let frame_length = shape.frame_length.unwrap() as usize;
    let mut forged = message[..shape.header_len].to_vec();
    for n in 1..=frames {
        forged.extend_from_slice(&n.to_be_bytes());
        forged.extend(random_bytes(12 + frame_length + 16, n as u64));
    }
    forged.extend_from_slice(&u32::MAX.to_be_bytes());
    forged.extend_from_slice(&(frames + 1).to_be_bytes());
    forged.extend(random_bytes(12, 1));
    forged.extend_from_slice(&0u32.to_be_bytes());
    forged.extend(random_bytes(16, 2));
    // The signing suite's footer.
    forged.extend_from_slice(&103u16.to_be_bytes());
    forged.extend(random_bytes(103, 3));
    forged
}

/// Polls `/healthz` every 100 ms until stopped; returns the slowest answer.
fn watch_health(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let http = http();
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                http.get(format!("{url}/healthz")).send(),
            )
            .await;
            match answer {
                Ok(Ok(response)) => assert!(response.status().is_success()),
                Ok(Err(err)) => panic!("/healthz failed: {err}"),
                Err(_) => panic!("/healthz did not answer within 5 s"),
            }
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_messages_are_all_processed_while_healthz_answers() {
    let resources = resources().await;
    let running = spawn(&resources, &[]).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let mut files = Vec::new();
    for i in 0..32u64 {
        let plaintext = random_bytes(100_000, i);
        let message = producer.encrypt(plaintext.clone(), None).await.unwrap();
        files.push((format!("concurrent/{i}.enc"), plaintext, message));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let health = watch_health(running.url.clone(), stop.clone());
    let http = http();
    let running = Arc::new(running);
    let mut uploads = Vec::new();
    for (name, _, message) in &files {
        let (running, http, name, message) =
            (running.clone(), http.clone(), name.clone(), message.clone());
        uploads.push(tokio::spawn(async move {
            let (code, body) = running.put(&http, &name, message).await;
            assert_eq!(code, 201, "{name}: {body}");
        }));
    }
    for upload in uploads {
        upload.await.unwrap();
    }
    for (name, plaintext, _) in &files {
        let status = running.settle(&http, name).await;
        assert_eq!(status["state"], "processed", "{status}");
        assert_eq!(
            status["processed"]["sha256"],
            sha256_hex(plaintext),
            "{name}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let slowest = health.await.unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?} while 32 messages were decrypted"
    );
}

struct Case {
    name: &'static str,
    message: Vec<u8>,
    /// `None`: must be processed; otherwise the failure must say this.
    fails_with: Option<&'static str>,
    /// KMS Decrypt calls it must cost: one per data key wrapped by our key that the SDK
    /// tries, none for a message refused by its shape.
    kms_calls: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_extreme_messages_fail_alone_with_a_reason_and_survive_a_restart() {
    let resources = resources().await;
    let key = resources.key_arn.as_str();
    let proxy = KmsProxy::start(&emulator_plain_endpoint()).await;
    let through_proxy = [("AWS_ENDPOINT_URL", proxy.url.as_str())];
    let producer = encryptor(&resources, key).await;
    let other_key = emulator_fixtures::create_key(&resources.clients.kms).await;
    let foreign = encryptor(&resources, &other_key).await;

    let valid = producer
        .encrypt(random_bytes(10_000, 1), Some(256))
        .await
        .unwrap();
    let mut flipped = valid.clone();
    let body_byte = inspect(&valid, &limits(), key).unwrap().header_len + 40;
    flipped[body_byte] ^= 0x01;
    let junk_edks = |n: usize| -> Vec<(&str, Vec<u8>)> {
        (0..n).map(|i| (key, random_bytes(150, i as u64))).collect()
    };
    // The reproductions: 256-byte frames over 1 MB, and frames at the limit.
    let at_limit = (DEFAULT_MAX_FRAMES as usize - 1) * 16 + 8;
    let cases = vec![
        Case {
            name: "valid.enc",
            message: valid.clone(),
            fails_with: None,
            kms_calls: 1,
        },
        Case {
            name: "small-frames-1mb.enc",
            message: producer
                .encrypt(random_bytes(1_000_000, 2), Some(256))
                .await
                .unwrap(),
            fails_with: None,
            kms_calls: 1,
        },
        Case {
            name: "tiny-frames-at-the-limit.enc",
            message: producer
                .encrypt(random_bytes(at_limit, 3), Some(16))
                .await
                .unwrap(),
            fails_with: None,
            kms_calls: 1,
        },
        Case {
            name: "one-frame-too-many.enc",
            message: producer
                .encrypt(random_bytes(at_limit + 16, 4), Some(16))
                .await
                .unwrap(),
            fails_with: Some("MAX_ENCRYPTED_FRAMES"),
            kms_calls: 0,
        },
        Case {
            name: "junk-frames.enc",
            message: with_junk_frames(&valid, key, 3_900),
            fails_with: Some("failed authentication"),
            kms_calls: 1,
        },
        Case {
            name: "junk-frames-over-the-limit.enc",
            message: with_junk_frames(&valid, key, 20_000),
            fails_with: Some("MAX_ENCRYPTED_FRAMES"),
            kms_calls: 0,
        },
        Case {
            name: "6000-data-keys.enc",
            message: with_data_keys(&valid, key, &junk_edks(6_000)),
            fails_with: Some("6000 encrypted data keys"),
            kms_calls: 0,
        },
        Case {
            name: "3-junk-data-keys.enc",
            message: with_data_keys(&valid, key, &junk_edks(3)),
            fails_with: Some("KMS could not unwrap the data key"),
            kms_calls: 3,
        },
        Case {
            name: "other-key.enc",
            message: foreign.encrypt(b"hello".to_vec(), None).await.unwrap(),
            fails_with: Some("no data key of the message is wrapped by the configured KMS key"),
            kms_calls: 0,
        },
        Case {
            name: "truncated.enc",
            message: valid[..valid.len() / 2].to_vec(),
            fails_with: Some("truncated"),
            kms_calls: 0,
        },
        Case {
            name: "bit-flipped.enc",
            message: flipped,
            fails_with: Some("failed authentication"),
            kms_calls: 1,
        },
    ];

    let mut running = spawn(&resources, &through_proxy).await;
    let http = http();
    for case in &cases {
        let before = proxy.decrypts();
        let (code, body) = running.put(&http, case.name, case.message.clone()).await;
        assert_eq!(code, 201, "{}: {body}", case.name);
        let status = running.settle(&http, case.name).await;
        let calls = proxy.decrypts() - before;
        assert_eq!(calls, case.kms_calls, "{}: KMS Decrypt calls", case.name);
        match case.fails_with {
            None => assert_eq!(status["state"], "processed", "{}: {status}", case.name),
            Some(reason) => {
                assert_eq!(status["state"], "failed", "{}: {status}", case.name);
                let error = status["error"].as_str().unwrap();
                assert!(error.contains(reason), "{}: {error}", case.name);
            }
        }
        assert!(
            http.get(format!("{}/healthz", running.url))
                .send()
                .await
                .unwrap()
                .status()
                .is_success(),
            "the service stopped answering after {}",
            case.name
        );
    }
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the service exited: {}",
        running.log_text()
    );

    // A restart scans the initial bucket: the failed files stay failed and are not decrypted
    // again, and nothing crashes.
    drop(running);
    let before = proxy.decrypts();
    let mut running = spawn(&resources, &through_proxy).await;
    for case in &cases {
        let status = running.settle(&http, case.name).await;
        let expected = if case.fails_with.is_some() {
            "failed"
        } else {
            "processed"
        };
        assert_eq!(status["state"], expected, "{}: {status}", case.name);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the restarted service exited: {}",
        running.log_text()
    );
    assert_eq!(
        proxy.decrypts(),
        before,
        "a restart decrypted settled files again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decryptions_that_keep_timing_out_end_quarantined() {
    let resources = resources().await;
    let proxy = KmsProxy::start(&emulator_plain_endpoint()).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let message = producer.encrypt(b"slow".to_vec(), None).await.unwrap();
    proxy.delay_decrypts(Duration::from_secs(3));
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("DECRYPT_TIMEOUT_SECS", "1"),
            ("MAX_DECRYPT_ATTEMPTS", "2"),
        ],
    )
    .await;
    let http = http();
    let (code, body) = running.put(&http, "slow.enc", message).await;
    assert_eq!(code, 201, "{body}");
    let status = running.settle(&http, "slow.enc").await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.starts_with("quarantined: 2 decryptions of this version"),
        "{error}"
    );
}

/// Runs that died mid-decryption leave their attempt record behind (a crash cannot clean up);
/// the next start counts them and quarantines a file whose attempts are used up, without
/// decrypting it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_quarantines_files_whose_decryptions_kept_dying() {
    let resources = resources().await;
    let proxy = KmsProxy::start(&emulator_plain_endpoint()).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let s3 = &resources.clients.s3;
    for (name, attempts) in [("died-thrice.enc", 3), ("died-once.enc", 1)] {
        let message = producer
            .encrypt(name.as_bytes().to_vec(), None)
            .await
            .unwrap();
        let put = s3
            .put_object()
            .bucket(&resources.initial)
            .key(format!("raw/{name}"))
            .body(message.into())
            .send()
            .await
            .unwrap();
        let record = serde_json::json!({
            "name": name,
            "source_etag": put.e_tag().unwrap().trim_matches('"'),
            "source_version": put.version_id(),
            "processor": "identity",
            "attempts": attempts,
        });
        s3.put_object()
            .bucket(&resources.final_)
            .key(format!("failed/{name}.json"))
            .body(serde_json::to_vec(&record).unwrap().into())
            .send()
            .await
            .unwrap();
    }
    let running = spawn(&resources, &[("AWS_ENDPOINT_URL", proxy.url.as_str())]).await;
    let http = http();
    let status = running.settle(&http, "died-thrice.enc").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .starts_with("quarantined: 3 decryptions of this version"),
        "{status}"
    );
    let status = running.settle(&http, "died-once.enc").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert_eq!(
        proxy.decrypts(),
        1,
        "only the file with attempts left is decrypted"
    );
    let records = s3
        .list_objects_v2()
        .bucket(&resources.final_)
        .prefix("failed/")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = records.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        ["failed/died-thrice.enc.json"],
        "a success removes its attempt record"
    );

    // Asked to, the quarantined file is tried again (and this time it decrypts).
    let asked = http
        .post(format!("{}/reprocess", running.file_url("died-thrice.enc")))
        .bearer_auth(common::binary::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status().as_u16(), 202);
    let status = running.settle(&http, "died-thrice.enc").await;
    assert_eq!(status["state"], "processed", "{status}");
}

/// A full processing queue refuses uploads with 503 and stores nothing, instead of
/// acknowledging files that would wait for the next bucket scan; acknowledged files are all
/// processed without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_uploads_rather_than_leaving_them_to_the_scan() {
    let resources = resources().await;
    let proxy = KmsProxy::start(&emulator_plain_endpoint()).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let mut messages = Vec::new();
    for i in 0..3u64 {
        messages.push(producer.encrypt(random_bytes(1000, i), None).await.unwrap());
    }
    // One worker, one queue place, and a KMS that takes 2 s per decryption.
    proxy.delay_decrypts(Duration::from_secs(2));
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("PROCESSING_CONCURRENCY", "1"),
            ("QUEUE_CAPACITY", "1"),
            ("RECONCILE_INTERVAL_SECS", "3600"),
        ],
    )
    .await;
    let http = http();
    assert_eq!(
        running.put(&http, "a.enc", messages[0].clone()).await.0,
        201
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.get_json(&http, "/v1/files/a.enc/status").await["state"] != "processing" {
        assert!(Instant::now() < deadline, "a.enc never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        running.put(&http, "b.enc", messages[1].clone()).await.0,
        201
    );
    let refused = http
        .put(running.file_url("c.enc"))
        .bearer_auth(common::binary::TOKEN)
        .body(messages[2].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backlog_full", "{body}");
    let stored = resources
        .clients
        .s3
        .head_object()
        .bucket(&resources.initial)
        .key("raw/c.enc")
        .send()
        .await;
    assert!(stored.is_err(), "a refused upload stores nothing");

    for name in ["a.enc", "b.enc"] {
        assert_eq!(running.settle(&http, name).await["state"], "processed");
    }
    assert_eq!(
        running.put(&http, "c.enc", messages[2].clone()).await.0,
        201
    );
    assert_eq!(running.settle(&http, "c.enc").await["state"], "processed");
}

/// KMS unreachable for a while: the file's processing is tried again with backoff and ends
/// processed once KMS is back, not failed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_outage_is_ridden_out() {
    let resources = resources().await;
    let proxy = KmsProxy::start(&emulator_plain_endpoint()).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let message = producer
        .encrypt(b"during an outage".to_vec(), None)
        .await
        .unwrap();
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("TRANSIENT_BACKOFF_MS", "200"),
            ("MAX_TRANSIENT_TRIES", "30"),
        ],
    )
    .await;
    let http = http();
    proxy.refuse_decrypts(true);
    assert_eq!(running.put(&http, "outage.enc", message).await.0, 201);
    // More Decrypt calls than the SDK's own 5 attempts: the service itself tried again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.decrypts() < 6 {
        assert!(Instant::now() < deadline, "no decryption was tried again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = running.get_json(&http, "/v1/files/outage.enc/status").await;
    assert_ne!(during["state"], "failed", "{during}");
    proxy.refuse_decrypts(false);
    let status = running.settle(&http, "outage.enc").await;
    assert_eq!(status["state"], "processed", "{status}");
    let metrics = running.metrics(&http).await;
    let retries: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("filepipe_processing_retries_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(retries >= 1, "{metrics}");
}

/// KMS answering errors of its own (500 KMSInternalException, 503, throttling, a key in an
/// invalid state) fails no file: each is transient, tried again until KMS answers, and the
/// file ends processed. Before, the Encryption SDK's text was searched for `KMSInternalException`
/// (it spells it `KmsInternalException`), and such files failed for good on their first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_error_answers_are_ridden_out() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("TRANSIENT_BACKOFF_MS", "200"),
            ("MAX_TRANSIENT_TRIES", "30"),
        ],
    )
    .await;
    let http = http();
    for (status, code) in [
        (500, "KMSInternalException"),
        (503, "ServiceUnavailable"),
        (400, "ThrottlingException"),
        (400, "KMSInvalidStateException"),
    ] {
        let name = format!("{code}.enc");
        let message = producer
            .encrypt(code.as_bytes().to_vec(), None)
            .await
            .unwrap();
        proxy.inject(kms_decrypt, Fault::KmsError(status, code), 1);
        let before = proxy.injected();
        assert_eq!(running.put(&http, &name, message).await.0, 201);
        // Answered more often than the KMS SDK's own attempts: the service tried again.
        let deadline = Instant::now() + Duration::from_secs(60);
        while proxy.injected() < before + 4 {
            assert!(
                Instant::now() < deadline,
                "{code}: no decryption was tried again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let during = running
            .get_json(&http, &format!("/v1/files/{name}/status"))
            .await;
        assert_ne!(during["state"], "failed", "{code}: {during}");
        proxy.heal();
        let settled = running.settle(&http, &name).await;
        assert_eq!(settled["state"], "processed", "{code}: {settled}");
    }
}

/// A transient failure that outlasts the tries is recorded as such, and the next scan
/// processes the file once KMS is back; a reprocess request does the same on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_tried_again_by_the_scan_and_on_demand() {
    let resources = resources().await;
    let proxy = KmsProxy::start(&emulator_plain_endpoint()).await;
    let producer = encryptor(&resources, &resources.key_arn).await;
    let first = producer.encrypt(b"one".to_vec(), None).await.unwrap();
    let second = producer.encrypt(b"two".to_vec(), None).await.unwrap();
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("TRANSIENT_BACKOFF_MS", "100"),
            ("MAX_TRANSIENT_TRIES", "2"),
            ("RECONCILE_INTERVAL_SECS", "3"),
        ],
    )
    .await;
    let http = http();
    proxy.refuse_decrypts(true);
    for (name, message) in [("scan.enc", first), ("asked.enc", second)] {
        assert_eq!(running.put(&http, name, message).await.0, 201);
        let status = running.settle(&http, name).await;
        assert_eq!(status["state"], "failed", "{status}");
        assert_eq!(status["error_code"], "transient", "{status}");
        assert_eq!(status["tries"], 2, "{status}");
    }
    proxy.refuse_decrypts(false);
    let asked = http
        .post(format!("{}/reprocess", running.file_url("asked.enc")))
        .bearer_auth(common::binary::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status().as_u16(), 202);
    for name in ["asked.enc", "scan.enc"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = running
                .get_json(&http, &format!("/v1/files/{name}/status?wait=5"))
                .await;
            if status["state"] == "processed" {
                break;
            }
            assert!(Instant::now() < deadline, "{name} stayed {status}");
        }
    }
}
