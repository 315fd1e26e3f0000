//! The real `service` binary as a child process, configured only through the environment
//! variables the EC2 user-data writes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_clients::subprocess_env;
use emulator_fixtures::{TEST_REGION, emulator_endpoint, emulator_settings};
use serde_json::Value;

use super::Resources;

pub const TOKEN: &str = "binary-test-token-0123456789";

pub struct Running {
    pub child: Child,
    pub url: String,
    pub log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with exactly the settings the user-data writes for these resources (and the
/// emulator), listening on `listen`, and nothing of the caller's environment but PATH.
pub fn command(resources: &Resources, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_service"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("INITIAL_BUCKET", &resources.initial)
        .env("FINAL_BUCKET", &resources.final_)
        .env("KMS_KEY_ARN", &resources.key_arn)
        .env("AWS_REGION", TEST_REGION)
        .env("LISTEN_ADDR", listen)
        .env("AWS_ENDPOINT_URL", emulator_endpoint())
        .envs(subprocess_env(&emulator_settings()));
    command
}

pub async fn spawn(resources: &Resources, extra: &[(&str, &str)]) -> Running {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!("service-{}-{port}.log", std::process::id()));
    let mut command = command(resources, &format!("127.0.0.1:{port}"));
    command
        .env("PROCESSOR", "identity")
        .env("AUTH_TOKEN", TOKEN)
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = command.spawn().expect("start the service binary");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(format!("{url}/healthz")).await
            && response.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not start: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running { child, url, log }
}

/// A client whose every request ends within 30 s, so a service that stops answering fails
/// the test instead of hanging it.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Running {
    pub fn file_url(&self, name: &str) -> String {
        format!("{}/v1/files/{name}", self.url)
    }

    /// PUT with the bearer token; the status code and the JSON body.
    pub async fn put(&self, http: &reqwest::Client, name: &str, body: Vec<u8>) -> (u16, Value) {
        let response = http
            .put(self.file_url(name))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap_or(Value::Null))
    }

    /// GET `path` (below the service URL) with the bearer token, and parse the JSON body.
    pub async fn get_json(&self, http: &reqwest::Client, path: &str) -> Value {
        http.get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (long-polling the status route) until the file is processed or failed.
    pub async fn settle(&self, http: &reqwest::Client, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self
                .get_json(http, &format!("/v1/files/{name}/status?wait=10"))
                .await;
            if status["state"] == "processed" || status["state"] == "failed" {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} did not settle: {status}");
        }
    }

    /// The Prometheus text of `/metrics` (behind the token, as /v1 is).
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("{}/metrics", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `/healthz` and an authenticated 4 KiB upload (as `name`) each answer within `bound`.
    pub async fn assert_answers_within(&self, http: &reqwest::Client, name: &str, bound: Duration) {
        let asked = Instant::now();
        let health = http
            .get(format!("{}/healthz", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
        assert!(
            asked.elapsed() < bound,
            "/healthz took {:?}",
            asked.elapsed()
        );
        let asked = Instant::now();
        let (code, body) = self.put(http, name, vec![7u8; 4096]).await;
        assert_eq!(code, 201, "{body}");
        assert!(
            asked.elapsed() < bound,
            "a 4 KiB upload took {:?}",
            asked.elapsed()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
