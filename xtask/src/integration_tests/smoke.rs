//! The smoke command against a real service (in this process) on the emulator: a healthy
//! stack passes every check, and a service using another key than the deployed one fails
//! with a message naming the problem.

use clap::Parser;
use service::app::{AppState, router};
use service::config::Config;
use service::testing::{
    TEST_REGION, configure_like_terraform, create_bucket, create_key, emulator_clients,
    unique_bucket_name,
};

use crate::context::block_on;
use crate::smoke::{Args, smoke};

struct Running {
    url: String,
    key_arn: String,
    s3: aws_sdk_s3::Client,
    // Keeps the server's runtime alive for the test.
    _runtime: tokio::runtime::Runtime,
}

fn start_service(processor: &str) -> Running {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, key_arn, s3) = runtime.block_on(async {
        let clients = emulator_clients().await;
        let key_arn = create_key(&clients.kms).await;
        let (initial, final_) = (
            unique_bucket_name("smoke-in"),
            unique_bucket_name("smoke-out"),
        );
        for bucket in [&initial, &final_] {
            create_bucket(&clients.s3, bucket).await;
            configure_like_terraform(&clients.s3, bucket, &key_arn).await;
        }
        let config = Config::try_parse_from([
            "service".to_string(),
            format!("--initial-bucket={initial}"),
            format!("--final-bucket={final_}"),
            format!("--kms-key-arn={key_arn}"),
            format!("--region={TEST_REGION}"),
            format!("--processor={processor}"),
            "--part-size=5242880".to_string(),
        ])
        .unwrap();
        let state = AppState::start(config, &clients).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
        (url, key_arn, clients.s3.clone())
    });
    Running {
        url,
        key_arn,
        s3,
        _runtime: runtime,
    }
}

#[test]
fn smoke_passes_against_a_healthy_stack_for_each_processor() {
    for processor in ["identity", "gunzip", "jsonl"] {
        let running = start_service(processor);
        let report = block_on(smoke(
            &running.url,
            &Args::default_for_tests(),
            Some(&running.key_arn),
            Some(&running.s3),
        ))
        .unwrap();
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{processor}: {failed:#?}");
        assert_eq!(report.failed, 0);
        assert!(
            report.checks.iter().any(|c| c.name.contains("3-parts")),
            "{processor}: a multipart case"
        );
        assert!(
            report
                .checks
                .iter()
                .any(|c| c.name == "clean up" && c.passed)
        );
    }
}

#[test]
fn smoke_names_a_service_that_encrypts_with_the_wrong_key() {
    let running = start_service("identity");
    let deployed = "arn:aws:kms:eu-west-1:123456789012:key/00000000-1111-2222-3333-444444444444";
    let report = block_on(smoke(
        &running.url,
        &Args::default_for_tests(),
        Some(deployed),
        Some(&running.s3),
    ))
    .unwrap();
    assert!(report.failed >= 3, "{report:#?}");
    let round_trip = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("round trip"))
        .unwrap();
    assert!(!round_trip.passed);
    assert!(
        round_trip.detail.contains("instead of the deployed key"),
        "{}",
        round_trip.detail
    );
    assert!(
        round_trip.detail.contains(deployed),
        "{}",
        round_trip.detail
    );
}
