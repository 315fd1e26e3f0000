//! The smoke command against a real service (in this process) on the emulator: a healthy
//! stack passes every check, and a service using another key than the deployed one fails
//! with a message naming the problem.

use super::{service_binary, start_service, temp_dir};
use xtask::context::block_on;
use xtask::flags;
use xtask::seal::Sealer;
use xtask::smoke::smoke;

/// `service seal` as the operator: the test binary's own build of the service.
fn sealer() -> Sealer {
    Sealer::new(
        service_binary(),
        emulator_fixtures::emulator_settings(),
        temp_dir("seal"),
    )
}

#[test]
fn smoke_passes_against_a_healthy_stack_for_each_processor() {
    for processor in ["identity", "gunzip", "jsonl"] {
        let running = start_service(processor);
        let report = block_on(smoke(
            &running.url,
            &flags::Smoke::default_for_tests(),
            Some(&running.key_arn),
            Some(&running.clients),
            Some(&sealer()),
            None,
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
        &flags::Smoke::default_for_tests(),
        Some(deployed),
        Some(&running.clients),
        Some(&sealer()),
        None,
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

#[test]
fn smoke_waits_for_a_booting_service_and_gives_up_on_one_that_never_gets_ready() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use axum::http::StatusCode;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let asked = Arc::new(AtomicU32::new(0));
    let url = runtime.block_on(async {
        let counter = asked.clone();
        // Not ready for its first three checks, as an instance still installing the service.
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    });
    runtime
        .block_on(xtask::smoke::wait_until_ready(
            &url,
            None,
            Duration::from_secs(20),
        ))
        .expect("ready after three 503s");
    assert_eq!(asked.load(Ordering::SeqCst), 4);

    // Nothing listens there: bounded, and the error names the URL and the last answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let started = std::time::Instant::now();
    let err = runtime
        .block_on(xtask::smoke::wait_until_ready(
            &nowhere,
            None,
            Duration::from_secs(2),
        ))
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains(&format!("{nowhere}/readyz did not answer 200 within 2 s")),
        "{err}"
    );
}
