//! Status requests that wait (`status?wait=S`), many at once, against the real binary taking
//! its work from a shared queue (where waiting means looking at S3 again every second).

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::binary::{TOKEN, http, spawn};
use common::faults::{Fault, FaultProxy, s3};
use common::resources;
use emulator_fixtures::{create_queues, emulator_plain_endpoint, unique_bucket_name};

const WAITERS: usize = 600;
const MAX_WAITERS: usize = 64;

/// 600 requests wait on one pending file: 64 wait (MAX_STATUS_WAITERS), the rest are told
/// 429 with Retry-After at once; one look a second serves all of them, so the S3 calls do not
/// grow with the waiters; and health checks and an upload are answered at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_waiters_share_one_look_and_leave_room_for_health_checks_and_uploads() {
    let resources = resources().await;
    // The initial bucket sends this queue no events: a raw object put behind the service's
    // back stays pending (for an hour, RECONCILE_GRACE_SECS) however long it is waited for.
    let queues = create_queues(
        &resources.clients,
        &unique_bucket_name("queue"),
        &resources.key_arn,
        30,
        5,
    )
    .await
    .unwrap();
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    let running = spawn(
        &resources,
        &[
            ("QUEUE_URL", queues.work_url.as_str()),
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("RECONCILE_GRACE_SECS", "3600"),
            ("MAX_STATUS_WAITERS", "64"),
            // All 600 come from one address here.
            ("MAX_CONNECTIONS_PER_ADDRESS", "512"),
        ],
    )
    .await;
    resources
        .clients
        .s3
        .put_object()
        .bucket(&resources.initial)
        .key("raw/pending.bin")
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
        .ssekms_key_id(&resources.key_arn)
        .body(ByteStream::from_static(b"waiting for nobody"))
        .send()
        .await
        .unwrap();
    let http = http();
    let url = format!("{}/v1/files/pending.bin/status?wait=5", running.url);

    proxy.inject(s3("HEAD", "raw/pending.bin"), Fault::Pass, 1);
    let started = Instant::now();
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let response = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
                let code = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: serde_json::Value = response.json().await.unwrap();
                (code, retry_after, body)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    running
        .assert_answers_within(&http, "meanwhile.bin", Duration::from_secs(2))
        .await;
    let asked = Instant::now();
    let ready = http
        .get(format!("{}/readyz", running.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "/readyz took {:?}",
        asked.elapsed()
    );
    let (mut waited, mut refused) = (0, 0);
    for waiter in waiters {
        let (code, retry_after, body) = waiter.await.unwrap();
        match code {
            200 => {
                waited += 1;
                assert_eq!(body["state"], "pending", "{body}");
            }
            429 => {
                refused += 1;
                assert!(retry_after, "429 without Retry-After");
                assert_eq!(body["error"]["code"], "too_many_waiters", "{body}");
            }
            other => panic!("a waiter got {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(waited <= MAX_WAITERS, "{waited} waited");
    assert!(waited >= MAX_WAITERS / 2, "only {waited} waited");
    assert_eq!(waited + refused, WAITERS);
    // About one look a second for the 5 s the waiters waited, whatever their number (each
    // of them looking every second made 64 x 5 and more).
    let looks = proxy.injected();
    eprintln!("{waited} waited, {refused} refused, {looks} looks in {elapsed:?}");
    let bound = 2 * (elapsed.as_secs() as usize + 2);
    assert!(
        looks <= bound,
        "{looks} HEADs of the pending file in {elapsed:?} for {waited} waiters (at most {bound})"
    );
}
