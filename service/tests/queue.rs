//! Several instances of the real binary sharing one queue: the initial bucket's events go to
//! SQS, any instance processes any file, and what they write is exactly one output per raw
//! version however the deliveries fall (duplicates, redeliveries, an instance killed mid-file,
//! poison files).
//!
//! Longer than 400 lines: the cases share the instances, the queue and the fault proxy, started
//! per case.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use common::binary::{self, Running};
use common::faults::{Fault, FaultProxy};
use common::{MIB, Resources, random_bytes, resources, sha256_hex};
use emulator_fixtures::{create_work_queue, emulator_plain_endpoint, unique_bucket_name};
use futures_util::StreamExt as _;

const PART_SIZE: &str = "5242880";

struct Shared {
    resources: Resources,
    queue_url: String,
    dlq_url: String,
}

async fn shared(visibility_secs: u32, max_receives: u32) -> Shared {
    let resources = resources().await;
    let (queue_url, dlq_url) = create_work_queue(
        &resources.clients,
        &unique_bucket_name("queue"),
        &resources.initial,
        &resources.key_arn,
        visibility_secs,
        max_receives,
    )
    .await;
    Shared {
        resources,
        queue_url,
        dlq_url,
    }
}

impl Shared {
    async fn instance(&self, name: &str, extra: &[(&str, &str)]) -> Running {
        let mut env = vec![
            ("QUEUE_URL", self.queue_url.as_str()),
            ("INSTANCE_ID", name),
            ("PART_SIZE", PART_SIZE),
            ("QUEUE_RETRY_BACKOFF_SECS", "1"),
        ];
        env.extend_from_slice(extra);
        binary::spawn(&self.resources, &env).await
    }

    /// Messages in a queue, visible or in flight.
    async fn messages(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as Attr;
        let attributes = self
            .resources
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(Attr::ApproximateNumberOfMessages)
            .attribute_names(Attr::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attributes = attributes.attributes().unwrap();
        [
            Attr::ApproximateNumberOfMessages,
            Attr::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| attributes[a].parse::<u64>().unwrap())
        .sum()
    }

    /// Every version of every output: name → [(source version, sha256 of the content)].
    /// A multipart output is completed without metadata and then copied onto itself with it
    /// (S3 fixes metadata when an upload starts); the metadata-less version is never served
    /// and is not an output.
    async fn output_versions(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let s3 = &self.resources.clients.s3;
        let mut versions = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = s3
                .list_object_versions()
                .bucket(&self.resources.final_)
                .prefix("processed/")
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .unwrap();
            for version in page.versions() {
                versions.push((
                    version.key().unwrap().to_string(),
                    version.version_id().unwrap().to_string(),
                ));
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
        let heads = futures_util::stream::iter(versions)
            .map(|(key, version)| async move {
                let head = s3
                    .head_object()
                    .bucket(&self.resources.final_)
                    .key(&key)
                    .version_id(&version)
                    .send()
                    .await
                    .unwrap();
                let metadata = head.metadata().cloned().unwrap_or_default();
                (
                    key.strip_prefix("processed/").unwrap().to_string(),
                    (
                        metadata.get("source-version").cloned().unwrap_or_default(),
                        metadata.get("sha256").cloned().unwrap_or_default(),
                    ),
                )
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let mut outputs: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (name, version) in heads
            .into_iter()
            .filter(|(_, (source, _))| !source.is_empty())
        {
            outputs.entry(name).or_default().push(version);
        }
        outputs
    }

    async fn raw_version(&self, name: &str) -> String {
        self.resources
            .clients
            .s3
            .head_object()
            .bucket(&self.resources.initial)
            .key(format!("raw/{name}"))
            .send()
            .await
            .unwrap()
            .version_id()
            .unwrap()
            .to_string()
    }

    /// Waits until the queue holds no message, visible or in flight.
    async fn drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.messages(&self.queue_url).await > 0 {
            assert!(Instant::now() < deadline, "the queue did not drain");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The value of one sample in Prometheus text, 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn messages(metrics: &str, outcome: &str) -> f64 {
    sample(
        metrics,
        &format!("filepipe_queue_messages_total{{outcome=\"{outcome}\"}}"),
    )
}

/// A size from a mix: mostly small files, some of a MiB, a few multipart ones.
fn size_of(i: usize) -> usize {
    match i % 100 {
        0 => 6 * MIB + i,
        1..=4 => MIB + i * 7,
        _ => 1 + (i * 7919) % (64 * 1024),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_process_a_thousand_files_exactly_once() {
    let shared = shared(30, 5).await;
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push(shared.instance(name, &[]).await);
    }
    let http = binary::http();
    const FILES: usize = 1000;
    // Uploaded through the instances in turn; 20 names get a second version right away, so
    // events of replaced versions are delivered too.
    let mut expected = HashMap::new();
    let uploads = (0..FILES + 20).map(|i| {
        let n = if i < FILES { i } else { (i - FILES) * 37 };
        let name = format!("batch/file-{n:04}.bin");
        let body = random_bytes(size_of(n), i as u64);
        (i, name, body)
    });
    let results = futures_util::stream::iter(uploads)
        .map(|(i, name, body)| {
            let (http, instance) = (&http, &instances[i % 3]);
            async move {
                let sha = sha256_hex(&body);
                let (code, answer) = instance.put(http, &name, body).await;
                assert_eq!(code, 201, "{name}: {answer}");
                (i, name, sha)
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
    for (_, name, sha) in results {
        // The later upload of a name is its current version.
        expected.insert(name, sha);
    }

    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let outputs = shared.output_versions().await;
        let current = outputs.len();
        if current == FILES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{current} of {FILES} outputs after 10 minutes"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    shared.drained(Duration::from_secs(120)).await;

    let outputs = shared.output_versions().await;
    let mut twice = 0;
    for (name, sha) in &expected {
        let versions = &outputs[name];
        let raw_version = shared.raw_version(name).await;
        let of_current: Vec<_> = versions.iter().filter(|(v, _)| *v == raw_version).collect();
        if of_current.len() != 1 {
            let listed = shared
                .resources
                .clients
                .s3
                .list_object_versions()
                .bucket(&shared.resources.final_)
                .prefix(format!("processed/{name}"))
                .send()
                .await
                .unwrap();
            for v in listed.versions() {
                eprintln!(
                    "version {:?} etag {:?} modified {:?} latest {:?}",
                    v.version_id(),
                    v.e_tag(),
                    v.last_modified(),
                    v.is_latest()
                );
            }
            for instance in &instances {
                for line in instance
                    .log_text()
                    .lines()
                    .filter(|l| l.contains(name.as_str()))
                {
                    eprintln!("{line}");
                }
            }
        }
        assert_eq!(
            of_current.len(),
            1,
            "{name}: outputs of its current raw version: {versions:?}"
        );
        assert_eq!(&of_current[0].1, sha, "{name}: content");
        // One output per raw version at most; a replaced version may have had its own.
        let mut sources: Vec<_> = versions.iter().map(|(v, _)| v.clone()).collect();
        sources.sort();
        sources.dedup();
        assert_eq!(sources.len(), versions.len(), "{name}: {versions:?}");
        if versions.len() > 1 {
            twice += 1;
        }
    }
    assert_eq!(shared.messages(&shared.dlq_url).await, 0, "dead letters");
    for bucket in [&shared.resources.initial, &shared.resources.final_] {
        assert_eq!(
            common::open_uploads(&shared.resources.clients, bucket).await,
            0,
            "open uploads in {bucket}"
        );
    }
    let mut processed_by = Vec::new();
    for instance in &instances {
        let metrics = instance.metrics(&http).await;
        processed_by.push(sample(
            &metrics,
            "filepipe_processing_total{result=\"success\"}",
        ));
        assert!(metrics.contains("filepipe_processing_lag_seconds_count"));
    }
    let total: f64 = processed_by.iter().sum();
    eprintln!(
        "outputs written per instance: {processed_by:?}; names with an output of a replaced version too: {twice}"
    );
    assert!(
        processed_by.iter().all(|n| *n > 0.0),
        "every instance took work: {processed_by:?}"
    );
    assert!(
        total >= FILES as f64 && total <= (FILES + 20) as f64,
        "outputs written: {total}"
    );
}

/// Matches the second part of a multipart output upload.
fn second_output_part(head: &str) -> bool {
    let line = head.lines().next().unwrap_or_default();
    line.starts_with("PUT ") && line.contains("/processed/") && line.contains("partNumber=2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_mid_file_loses_nothing_and_leaves_no_partial_output() {
    let shared = shared(6, 5).await;
    // A writes through a proxy that holds its second output part: it is mid-file for as long
    // as the test likes, extending the message's visibility meanwhile.
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    proxy.inject(second_output_part, Fault::Hang, 1);
    let mut a = shared
        .instance(
            "a",
            &[
                ("AWS_ENDPOINT_URL_S3", proxy.url.as_str()),
                ("S3_ATTEMPT_TIMEOUT_SECS", "300"),
            ],
        )
        .await;
    let http = binary::http();
    let body = random_bytes(12 * MIB, 7);
    shared
        .resources
        .clients
        .s3
        .put_object()
        .bucket(&shared.resources.initial)
        .key("raw/large.bin")
        .body(body.clone().into())
        .send()
        .await
        .unwrap();
    // B starts once A has the message, and asks for work all the while A holds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages(&a.metrics(&http).await, "received") < 1.0 {
        assert!(Instant::now() < deadline, "A received nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = shared.instance("b", &[]).await;

    // Held past two visibility timeouts without B receiving it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = a.metrics(&http).await;
        if messages(&metrics, "visibility_extended") >= 6.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A did not keep the message: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let b_metrics = b.metrics(&http).await;
    assert_eq!(
        messages(&b_metrics, "received"),
        0.0,
        "B got the message while A held it"
    );
    assert!(proxy.injected() >= 1, "A is not mid-file");
    assert_eq!(
        common::open_uploads(&shared.resources.clients, &shared.resources.final_).await,
        1
    );

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // Killed with an output half written: nothing of it is an object.
    assert!(shared.output_versions().await.is_empty());

    let status = b.settle(&http, "large.bin").await;
    assert_eq!(status["state"], "processed", "{status}");
    let outputs = shared.output_versions().await;
    assert_eq!(
        outputs["large.bin"],
        vec![(shared.raw_version("large.bin").await, sha256_hex(&body))],
        "one output, of the raw version, with its content"
    );
    let b_metrics = b.metrics(&http).await;
    assert!(
        messages(&b_metrics, "redelivered") >= 1.0,
        "B processed a redelivery: {b_metrics}"
    );
    shared.drained(Duration::from_secs(30)).await;

    // A's upload is an orphan: an instance that takes uploads of that age for orphans
    // aborts it when it starts.
    assert_eq!(
        common::open_uploads(&shared.resources.clients, &shared.resources.final_).await,
        1
    );
    let _c = shared
        .instance("c", &[("ORPHAN_UPLOAD_AGE_SECS", "1")])
        .await;
    assert_eq!(
        common::open_uploads(&shared.resources.clients, &shared.resources.final_).await,
        0,
        "A's orphaned upload is aborted"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_file_ends_failed_and_in_the_dead_letter_queue_without_blocking_others() {
    let shared = shared(10, 3).await;
    let gunzip = [("PROCESSOR", "gunzip")];
    let a = shared.instance("a", &gunzip).await;
    let b = shared.instance("b", &gunzip).await;
    let http = binary::http();
    let (code, answer) = a
        .put(&http, "poison.gz", b"this is not gzip at all".to_vec())
        .await;
    assert_eq!(code, 201, "{answer}");
    let mut good = Vec::new();
    for i in 0..20 {
        let plain = random_bytes(1000 + i * 100, i as u64);
        let name = format!("good-{i}.gz");
        let (code, answer) = b.put(&http, &name, gzip(&plain)).await;
        assert_eq!(code, 201, "{answer}");
        good.push((name, sha256_hex(&plain)));
    }
    for (name, sha) in &good {
        let status = a.settle(&http, name).await;
        assert_eq!(status["state"], "processed", "{status}");
        assert_eq!(status["processed"]["sha256"], *sha, "{name}");
    }

    // Delivered three times (backoffs of 1, 2 s), then moved to the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(90);
    let dead = loop {
        let received = shared
            .resources
            .clients
            .sqs
            .receive_message()
            .queue_url(&shared.dlq_url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(message) = received.messages().first() {
            break message.body().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter; logs:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        // Some instance must receive it once more for the queue to move it.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    match service::queue::parse(&dead) {
        service::queue::Body::Files(files) => assert_eq!(files[0].name, "poison.gz"),
        other => panic!("{other:?}"),
    }
    let status = a.get_json(&http, "/v1/files/poison.gz/status").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error_code"], "file", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("gunzip"),
        "{status}"
    );
    assert_eq!(status["receives"], 3, "{status}");
    assert_eq!(status["max_receives"], 3, "{status}");
    assert_eq!(status["dead_lettered"], true, "{status}");
    shared.drained(Duration::from_secs(30)).await;
    let outputs = shared.output_versions().await;
    assert_eq!(outputs.len(), good.len(), "no output of the poison file");
}

/// Two writers of one output: the one that looked before the other wrote loses, for a
/// single-request output and a multipart one, so an old version's run never overwrites a
/// newer version's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_cannot_overwrite_a_newer_output() {
    use service::upload::{Precondition, UploadError};
    let stack = common::Stack::start(&[]).await;
    let store = &stack.state.store;
    let (code, _) = stack.put("race.bin", b"version one".to_vec()).await;
    assert_eq!(code, 201);
    stack.settle("race.bin").await;
    let v1 = store.head_raw("race.bin").await.unwrap().unwrap();
    // What a run of version one saw before it wrote.
    let seen = match store.output_state("race.bin", &v1, None).await.unwrap() {
        service::store::OutputState::Made(output) => Precondition::Etag(output.etag),
        other => panic!("{other:?}"),
    };

    let (code, _) = stack.put("race.bin", b"version two".to_vec()).await;
    assert_eq!(code, 201);
    stack.settle("race.bin").await;
    let v2 = store.head_raw("race.bin").await.unwrap().unwrap();
    let newer = store
        .head_processed("race.bin", &v2)
        .await
        .unwrap()
        .unwrap();

    for (size, precondition) in [
        (100, seen.clone()),
        (12 * MIB, seen.clone()),
        (100, Precondition::Absent),
        (12 * MIB, Precondition::Absent),
    ] {
        let late = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let body = futures_util::stream::iter(
            random_bytes(size, 3)
                .chunks(MIB)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<std::io::Result<bytes::Bytes>>>(),
        );
        let written = store
            .put_output(
                "race.bin",
                &v1,
                precondition.clone(),
                "identity",
                None,
                late,
                body,
            )
            .await;
        assert!(
            matches!(written, Err(UploadError::Conflict(_))),
            "{size} bytes under {precondition:?}: {:?}",
            written.map(|u| u.etag)
        );
        let current = store.head_processed("race.bin", &v2).await.unwrap();
        assert_eq!(
            current.map(|c| c.etag),
            Some(newer.etag.clone()),
            "the newer output stays"
        );
    }
    let (code, body) = stack.get("race.bin").await;
    assert_eq!((code, body), (200, b"version two".to_vec()));
    stack.assert_no_multipart_uploads().await;
    assert_eq!(
        common::open_uploads(&stack.clients, &stack.final_).await,
        0,
        "the losers' uploads are aborted"
    );
}

/// An output completed but not yet given its metadata is another run's, being finished:
/// where several instances write, a run of the same version waits for it instead of
/// replacing it (two outputs of one version); alone, it replaces what a dead run left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_output_is_left_to_its_writer_where_others_write() {
    use service::store::OutputState;
    use service::upload::Precondition;
    let stack = common::Stack::start(&[]).await;
    let store = &stack.state.store;
    let (code, _) = stack.put("late.bin", b"raw".to_vec()).await;
    assert_eq!(code, 201);
    stack.settle("late.bin").await;
    let raw = store.head_raw("late.bin").await.unwrap().unwrap();
    // What a writer leaves between CompleteMultipartUpload and its metadata copy.
    stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.final_)
        .key("processed/late.bin")
        .body(b"raw".to_vec().into())
        .send()
        .await
        .unwrap();
    let grace = Some(Duration::from_secs(60));
    assert!(matches!(
        store.output_state("late.bin", &raw, grace).await.unwrap(),
        OutputState::BeingWritten
    ));
    assert!(matches!(
        store.output_state("late.bin", &raw, None).await.unwrap(),
        OutputState::Replaceable(Precondition::Etag(_))
    ));
    // Past the grace, a dead writer's: replaced.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        store
            .output_state("late.bin", &raw, Some(Duration::from_secs(1)))
            .await
            .unwrap(),
        OutputState::Replaceable(Precondition::Etag(_))
    ));
}

/// Conditional writes are atomic, as on AWS (the emulator is corrected for it in
/// moto_server_fidelity.py): of writers racing with `If-None-Match: *` on one key, exactly
/// one wins, for single requests and multipart completions alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_racing_conditional_writes_exactly_one_wins() {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let resources = resources().await;
    let s3 = &resources.clients.s3;
    let bucket = &resources.final_;
    const WRITERS: usize = 12;
    for round in 0..3 {
        let key = format!("race-put-{round}");
        let puts = futures_util::future::join_all((0..WRITERS).map(|i| {
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(format!("writer {i}").into_bytes().into())
                .if_none_match("*")
                .send()
        }))
        .await;
        let won = puts.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "PutObject round {round}: {won} writers won");

        let key = format!("race-multipart-{round}");
        let mut uploads = Vec::new();
        for i in 0..WRITERS {
            let upload = s3
                .create_multipart_upload()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
            let id = upload.upload_id().unwrap().to_string();
            let part = s3
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(1)
                .body(format!("writer {i}").into_bytes().into())
                .send()
                .await
                .unwrap();
            uploads.push((id, part.e_tag().unwrap().to_string()));
        }
        let completes = futures_util::future::join_all(uploads.iter().map(|(id, etag)| {
            s3.complete_multipart_upload()
                .bucket(bucket)
                .key(&key)
                .upload_id(id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(CompletedPart::builder().part_number(1).e_tag(etag).build())
                        .build(),
                )
                .if_none_match("*")
                .send()
        }))
        .await;
        let won = completes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "CompleteMultipartUpload round {round}: {won} won");
    }
}

/// An instance that stops (SIGTERM) hands the messages it holds back at once: another
/// instance processes their files within seconds, not after the visibility timeout (60 s
/// here), which the stopped instance's message would otherwise wait out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_instance_hands_its_messages_back() {
    let shared = shared(60, 5).await;
    let proxy = FaultProxy::start(&emulator_plain_endpoint()).await;
    // A receives the file's message and then never gets its raw bytes.
    proxy.inject(common::faults::s3("GET", "raw/"), Fault::Hang, 1);
    let mut a = shared
        .instance("a", &[("AWS_ENDPOINT_URL", proxy.url.as_str())])
        .await;
    let http = binary::http();
    let data = random_bytes(10_000, 11);
    let (code, body) = a.put(&http, "held.bin", data.clone()).await;
    assert_eq!(code, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.injected() == 0 {
        assert!(Instant::now() < deadline, "A never read the file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = a.child.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let stopped = Instant::now();
    while a.child.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "A did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.log_text()
            .contains("handed unfinished queue messages back"),
        "{}",
        a.log_text()
    );

    let b = shared.instance("b", &[]).await;
    let status = b.settle(&http, "held.bin").await;
    assert_eq!(status["state"], "processed", "{status}");
    assert_eq!(status["processed"]["sha256"], sha256_hex(&data));
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "processed {:?} after A stopped: the message waited for its visibility timeout",
        stopped.elapsed()
    );
}
