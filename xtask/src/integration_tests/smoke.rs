//! The smoke command against a real service (in this process) on the emulator: a healthy
//! stack passes every check, and a service using another key than the deployed one fails
//! with a message naming the problem.

use super::start_service;
use crate::context::block_on;
use crate::smoke::{Args, smoke};

#[test]
fn smoke_passes_against_a_healthy_stack_for_each_processor() {
    for processor in ["identity", "gunzip", "jsonl"] {
        let running = start_service(processor);
        let report = block_on(smoke(
            &running.url,
            &Args::default_for_tests(),
            Some(&running.key_arn),
            Some(&running.clients),
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
                .any(|c| c.name.contains(".esdk") && c.passed),
            "{processor}: an Encryption SDK message, decrypted: {report:#?}"
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
        Some(&running.clients),
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
