//! End-to-end integrity against the real binary: an acknowledged upload is what S3 stores,
//! whatever the request's Content-Type; a body changed or cut between the service and S3 is
//! refused, never acknowledged, and leaves nothing; and raw bytes that differ from what was
//! acknowledged are never processed into an output.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::binary::{Running, TOKEN, http, spawn};
use common::faults::{Fault, FaultProxy, s3};
use common::{MIB, Resources, random_bytes, resources, sha256_hex};
use emulator_fixtures::emulator_plain_endpoint;

/// The raw object's bytes, read straight from S3.
async fn stored(resources: &Resources, name: &str) -> Vec<u8> {
    resources
        .clients
        .s3
        .get_object()
        .bucket(&resources.initial)
        .key(format!("raw/{name}"))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .to_vec()
}

async fn put_typed(
    running: &Running,
    http: &reqwest::Client,
    name: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = http
        .put(running.file_url(name))
        .bearer_auth(TOKEN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or_default())
}

/// A body that a form parser would take apart: fields, a boundary, and binary bytes.
fn form_like(len: usize, seed: u64) -> Vec<u8> {
    let mut body =
        b"key=raw%2Fx&file=y&\r\n--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
            .to_vec();
    body.extend(random_bytes(len - body.len(), seed));
    body
}

/// Form-typed uploads (curl's default for --data-binary) are stored and served byte for byte,
/// as single PutObjects and as multipart uploads, and so are the other types.
#[tokio::test]
async fn uploads_of_every_content_type_round_trip_byte_for_byte() {
    let resources = resources().await;
    let running = spawn(&resources, &[("PART_SIZE", "5242880")]).await;
    let http = http();
    let types = [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "text/plain",
    ];
    for (i, content_type) in types.into_iter().enumerate() {
        for size in [3_000, 7 * MIB] {
            let name = format!("typed-{i}-{size}.bin");
            let data = form_like(size, i as u64 + size as u64);
            let (code, body) = put_typed(&running, &http, &name, content_type, data.clone()).await;
            assert_eq!(code, 201, "{content_type}, {size} bytes: {body}");
            assert_eq!(body["sha256"], sha256_hex(&data), "{content_type}");
            assert!(
                stored(&resources, &name).await == data,
                "{content_type}, {size} bytes: S3 holds other bytes than were acknowledged"
            );
            let status = running.settle(&http, &name).await;
            assert_eq!(status["state"], "processed", "{content_type}: {status}");
            let served = http
                .get(running.file_url(&name))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert!(
                served == data,
                "{content_type}, {size} bytes: served other bytes"
            );
        }
    }
}

async fn wait_until_no_open_uploads(resources: &Resources) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::open_uploads(&resources.clients, &resources.initial).await > 0 {
        assert!(
            Instant::now() < deadline,
            "an open multipart upload was left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A PutObject or UploadPart body changed (same length) or cut short between the service and
/// S3: S3 refuses it by its checksum, the client is told so (never 201), and neither an
/// object nor an open multipart upload is left.
#[tokio::test]
async fn a_body_changed_or_cut_on_its_way_to_s3_is_refused_and_leaves_nothing() {
    let resources = resources().await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = spawn(
        &resources,
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("PART_SIZE", "5242880"),
            ("S3_ATTEMPT_TIMEOUT_SECS", "5"),
        ],
    )
    .await;
    let http = http();
    for fault in [Fault::AlterBody, Fault::TruncateBody] {
        proxy.heal();
        proxy.inject(s3("PUT", "raw/"), fault, 1);
        for size in [3_000, 12 * MIB] {
            let name = format!("{fault:?}-{size}.bin");
            let injected = proxy.injected();
            let (code, body) = running.put(&http, &name, random_bytes(size, 7)).await;
            assert!(proxy.injected() > injected, "{name}: the fault was not met");
            assert_ne!(code, 201, "{name}: acknowledged: {body}");
            assert!(code == 502 || code == 503, "{name}: {code} {body}");
            if fault == Fault::AlterBody {
                assert_eq!(body["error"]["code"], "storage_integrity", "{name}: {body}");
            }
            wait_until_no_open_uploads(&resources).await;
            assert!(
                common::keys(&resources.clients, &resources.initial)
                    .await
                    .is_empty(),
                "{name}: an object was stored"
            );
        }
    }
    proxy.heal();
    let data = random_bytes(12 * MIB, 8);
    let (code, body) = running.put(&http, "healed.bin", data.clone()).await;
    assert_eq!(code, 201, "{body}");
    assert!(stored(&resources, "healed.bin").await == data);
}

/// A raw object replaced behind the service's back, with other bytes under the same metadata:
/// processing it fails with `integrity`, writes no output of it, and is counted.
#[tokio::test]
async fn raw_bytes_that_differ_from_the_acknowledged_ones_fail_with_integrity() {
    let resources = resources().await;
    let running = spawn(&resources, &[]).await;
    let http = http();
    let data = random_bytes(20_000, 3);
    let (code, body) = running.put(&http, "swapped.bin", data.clone()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        running.settle(&http, "swapped.bin").await["state"],
        "processed"
    );

    let raw = resources
        .clients
        .s3
        .head_object()
        .bucket(&resources.initial)
        .key("raw/swapped.bin")
        .send()
        .await
        .unwrap();
    let mut other = data.clone();
    other[10_000] ^= 1;
    let replaced = resources
        .clients
        .s3
        .put_object()
        .bucket(&resources.initial)
        .key("raw/swapped.bin")
        .set_metadata(raw.metadata().cloned())
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
        .ssekms_key_id(&resources.key_arn)
        .body(ByteStream::from(other))
        .send()
        .await
        .unwrap();
    let response = http
        .post(format!("{}/reprocess", running.file_url("swapped.bin")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    let status = running.settle(&http, "swapped.bin").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error_code"], "integrity", "{status}");
    assert_eq!(
        status["raw"]["version_id"].as_str(),
        replaced.version_id(),
        "{status}"
    );
    // The output is still the one made from the acknowledged bytes.
    let output = resources
        .clients
        .s3
        .head_object()
        .bucket(&resources.final_)
        .key("processed/swapped.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        output.metadata().unwrap().get("source-sha256"),
        Some(&sha256_hex(&data)),
    );
    assert!(
        running
            .metrics(&http)
            .await
            .contains("filepipe_processing_failures_total{reason=\"integrity\"} 1"),
        "{}",
        running.metrics(&http).await
    );
}
