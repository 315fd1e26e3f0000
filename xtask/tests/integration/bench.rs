//! The benchmark's measuring code on the emulator with tiny data: every variant, the
//! service's included, moves the same bytes and is timed, and the buckets are left empty.
//! (Timings themselves are never asserted.)

use std::time::Duration;

use super::{isolated_local_context, start_service, temp_dir};
use xtask::bench::{BOTO3, Setup, generate_files, generate_small, large, small};

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
        s3_endpoint: emulator_fixtures::emulator_endpoint(),
        region: emulator_fixtures::TEST_REGION.to_string(),
        aws_env: aws_clients::subprocess_env(&emulator_fixtures::emulator_settings()),
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

#[test]
fn the_fleet_case_measures_one_two_and_four_instances_on_the_queue() {
    let cx = isolated_local_context("fleet");
    let work = temp_dir("fleet");
    let settings = emulator_fixtures::emulator_settings();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key_arn = runtime
        .block_on(xtask::measuring::create_key(&settings))
        .unwrap();
    let program = super::service_binary();
    let prefix = cx.env.name_prefix.clone();
    let fleet = xtask::bench::fleet::run(
        &cx,
        &xtask::bench::fleet::FleetSetup {
            settings: &settings,
            kms_key_arn: &key_arn,
            program: &program,
            work: &work,
            prefix: &prefix,
        },
        12,
        2048,
        1,
    )
    .expect("the fleet case runs");
    let sizes: Vec<usize> = fleet.runs.iter().map(|r| r.instances).collect();
    assert_eq!(sizes, [1, 2, 4]);
    for run in &fleet.runs {
        assert_eq!(run.files_per_second.len(), 1);
        assert!(run.median_files_per_second > 0.0 && run.median_files_per_second.is_finite());
        assert!(
            run.lag_ms.p50 >= 0.0 && run.lag_ms.p99 >= run.lag_ms.p50,
            "{run:?}"
        );
    }
    assert_eq!(fleet.runs[0].over_one_instance, 1.0);
    // The buckets are gone.
    let clients = runtime.block_on(emulator_fixtures::emulator_clients());
    let listed = runtime.block_on(clients.s3.list_buckets().send()).unwrap();
    assert!(
        !listed
            .buckets()
            .iter()
            .any(|b| b.name().unwrap_or_default().starts_with(&prefix)),
        "buckets left behind"
    );
}
