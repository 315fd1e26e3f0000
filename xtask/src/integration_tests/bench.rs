//! The benchmark's measuring code on the emulator with tiny data: every variant, the
//! service's included, moves the same bytes and is timed, and the buckets are left empty.
//! (Timings themselves are never asserted.)

use std::time::Duration;

use super::{isolated_local_context, start_service, temp_dir};
use crate::bench::{BOTO3, Setup, generate_files, generate_small, large, small};

#[test]
fn every_variant_moves_the_same_bytes_and_is_measured() {
    let running = start_service("identity");
    let cx = isolated_local_context("bench");
    let work = temp_dir("bench");
    std::fs::create_dir_all(work.join("out")).unwrap();
    let setup = Setup {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        s3: running.s3.clone(),
        s3_endpoint: service::testing::emulator_endpoint(),
        region: service::testing::TEST_REGION.to_string(),
        aws_env: service::aws::subprocess_env(&service::testing::emulator_settings()),
        service_url: running.url.clone(),
        initial: running.initial.clone(),
        final_: running.final_.clone(),
        kms_key_arn: running.key_arn.clone(),
        part_size: 5 * 1024 * 1024,
        parts_in_flight: 2,
        // Fewer buffers than files x parts in flight: transfers must wait for each other's
        // parts, which deadlocked once.
        max_buffered_parts: 2,
        python: BOTO3.ensure(&cx).unwrap(),
        script: cx.root.join("xtask/src/bench/boto3_transfer.py"),
        out_dir: work.join("out"),
        repetitions: 1,
    };
    // Two parts each, so every variant takes its multipart path.
    let files = generate_files(&work, "large", 2, 6 * 1024 * 1024).unwrap();
    let objects = generate_small(&work.join("small"), 12, 2).unwrap();

    let (transfers, end_to_end) = running.runtime.block_on(async {
        let measured = async {
            let transfers = large::run(&setup, &files, 0.9).await.unwrap();
            let end_to_end = small::run(&setup, &objects, 4, 0.8).await.unwrap();
            (transfers, end_to_end)
        };
        tokio::time::timeout(Duration::from_secs(120), measured)
            .await
            .expect("the measurements finish (a hang is a bug)")
    });

    let names: Vec<&str> = transfers.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["upload", "download"]);
    for metric in transfers.iter().chain([&end_to_end]) {
        for (variant, runs) in metric.runs.iter().enumerate() {
            assert_eq!(runs.len(), 1, "{}: variant {variant}", metric.name);
            assert!(
                runs[0].is_finite() && runs[0] > 0.0,
                "{}: variant {variant}: {runs:?}",
                metric.name
            );
        }
        assert!(metric.target.is_some());
    }
    for latency in end_to_end.latency_ms.unwrap() {
        assert!(
            latency.p50 > 0.0 && latency.p50 <= latency.p99,
            "{latency:?}"
        );
    }
    let left: usize = running.runtime.block_on(async {
        let mut left = 0;
        for bucket in [&running.initial, &running.final_] {
            let listed = running
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            left += listed.contents().len();
        }
        left
    });
    assert_eq!(left, 0, "every run clears the buckets after itself");
}
