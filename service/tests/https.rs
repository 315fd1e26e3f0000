//! The real binary's doors: off loopback it needs TLS and a token (or says why it will not
//! start); over HTTPS only a client that pins its certificate gets in, and only with the
//! token; a token replaced in AUTH_TOKEN_FILE is taken on SIGHUP while the old one keeps
//! working for the overlap, so a client switching over sees no failed request; a renewed
//! certificate is served to new connections; and neither token nor key ever reaches the log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Resources, resources};

const FIRST: &str = "first-token-for-the-https-test";
const SECOND: &str = "second-token-for-the-https-test";

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "https-{label}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `service gen-cert` into `dir` (cert.pem, key.pem); the certificate's PEM.
fn gen_cert(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_service"))
        .args([
            "gen-cert",
            "--ip",
            "127.0.0.1",
            "--dns",
            "localhost",
            "--days",
            "30",
        ])
        .arg("--cert-out")
        .arg(dir.join("cert.pem"))
        .arg("--key-out")
        .arg(dir.join("key.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    std::fs::read_to_string(dir.join("cert.pem")).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(resources: &Resources, listen: &str, env: &[(&str, &Path)]) -> Command {
    let mut command = common::binary::command(resources, listen);
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null());
    command
}

/// A client that trusts exactly `cert_pem`.
fn pinned(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn off_loopback_the_service_needs_tls_and_a_token_or_says_why() {
    let resources = resources().await;
    let dir = temp_dir("refusals");
    gen_cert(&dir);
    let listen = format!("0.0.0.0:{}", free_port());
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let refused = |env: &[(&str, &Path)]| {
        let out = command(&resources, &listen, env).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&[]);
    assert!(
        err.contains("plain HTTP is served on loopback only: set TLS_CERT_FILE and TLS_KEY_FILE"),
        "{err}"
    );
    let err = refused(&[("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &key)]);
    assert!(
        err.contains("no bearer token is set") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    let token_file = dir.join("token");
    std::fs::write(&token_file, "short").unwrap();
    let err = refused(&[
        ("TLS_CERT_FILE", &cert),
        ("TLS_KEY_FILE", &key),
        ("AUTH_TOKEN_FILE", &token_file),
    ]);
    assert!(err.contains("at least 16 characters"), "{err}");

    // Told explicitly, it serves without a token (over TLS all the same).
    let port = listen.rsplit_once(':').unwrap().1;
    let mut child = command(
        &resources,
        &listen,
        &[("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &key)],
    )
    .env("INSECURE_NO_AUTH", "true")
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let client = pinned(&std::fs::read_to_string(&cert).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match client
            .get(format!("https://127.0.0.1:{port}/v1/info"))
            .send()
            .await
        {
            Ok(response) => break response.status().as_u16(),
            Err(err) if Instant::now() > deadline => panic!("never answered: {err:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn only_a_pinned_client_with_the_token_gets_in_and_rotations_fail_no_request() {
    let resources = resources().await;
    let dir = temp_dir("rotation");
    let cert = gen_cert(&dir);
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{FIRST}\n")).unwrap();
    let port = free_port();
    let log = dir.join("service.log");
    let mut child = command(
        &resources,
        &format!("127.0.0.1:{port}"),
        &[
            ("TLS_CERT_FILE", &dir.join("cert.pem")),
            ("TLS_KEY_FILE", &dir.join("key.pem")),
            ("AUTH_TOKEN_FILE", &token_file),
        ],
    )
    .env("AUTH_TOKEN_OVERLAP_SECS", "3")
    // Only SIGHUP reloads here, so the test knows when.
    .env("RELOAD_INTERVAL_SECS", "3600")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let client = pinned(&cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = |client: reqwest::Client, path: &'static str, token: Option<&'static str>| {
        let url = format!("{url}{path}");
        async move {
            let request = client.get(url);
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            request.send().await.map(|r| r.status().as_u16())
        }
    };

    // TLS: plain HTTP, the machine's roots and another certificate are all refused.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 200);
    let unpinned = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .send()
        .await;
    assert!(
        unpinned.is_err(),
        "a client without the certificate is refused"
    );
    let other = pinned(&gen_cert(&temp_dir("other")));
    assert!(other.get(format!("{url}/healthz")).send().await.is_err());

    // The token: missing or wrong is refused on /v1 and /metrics; probes stay open.
    for path in ["/v1/info", "/metrics", "/v1/files"] {
        assert_eq!(
            status(client.clone(), path, None).await.unwrap(),
            401,
            "{path}"
        );
        assert_eq!(
            status(client.clone(), path, Some(SECOND)).await.unwrap(),
            401,
            "{path}"
        );
        assert_eq!(
            status(client.clone(), path, Some(FIRST)).await.unwrap(),
            200,
            "{path}"
        );
    }
    assert_eq!(status(client.clone(), "/readyz", None).await.unwrap(), 200);

    // Rotation: a client keeps asking with the token it has, and switches once it sees the
    // new one; the service takes the new token on SIGHUP and keeps the old one for 3 s.
    let (switch, switched) = tokio::sync::watch::channel(false);
    let asking = {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                let token = if *switched.borrow() { SECOND } else { FIRST };
                match client
                    .get(format!("{url}/v1/info"))
                    .bearer_auth(token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replacement = dir.join("token.new");
    std::fs::write(&replacement, SECOND).unwrap();
    std::fs::rename(&replacement, &token_file).unwrap();
    hangup(child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(client.clone(), "/v1/info", Some(SECOND))
        .await
        .unwrap()
        != 200
    {
        assert!(Instant::now() < deadline, "the new token never took");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = switch.send(true);
    let (ok, failed) = asking.await.unwrap();
    assert_eq!(failed, 0, "{ok} requests answered, {failed} failed");
    assert!(ok > 10, "{ok}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status(client.clone(), "/v1/info", Some(FIRST))
            .await
            .unwrap(),
        401,
        "the old token after its overlap"
    );
    assert_eq!(
        status(client.clone(), "/v1/info", Some(SECOND))
            .await
            .unwrap(),
        200
    );
    let metrics = client
        .get(format!("{url}/metrics"))
        .bearer_auth(SECOND)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("filepipe_http_requests_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(FIRST) && !metrics.contains(SECOND),
        "no token in the metrics"
    );

    // A renewed certificate: new connections get it on SIGHUP, pinned to the new one.
    let renewed = temp_dir("renewed");
    let new_cert = gen_cert(&renewed);
    std::fs::copy(renewed.join("key.pem"), dir.join("key.pem")).unwrap();
    std::fs::copy(renewed.join("cert.pem"), dir.join("cert.pem")).unwrap();
    hangup(child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned(&new_cert)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pinned(&cert)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err(),
        "a client pinned to the old certificate is refused now"
    );

    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("bearer token replaced"), "{text}");
    assert!(text.contains("TLS certificate replaced"), "{text}");
    let key = std::fs::read_to_string(renewed.join("key.pem")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    for secret in [FIRST, SECOND, key_body] {
        assert!(!text.contains(secret), "the log holds a secret");
    }
}

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
