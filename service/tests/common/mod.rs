//! A whole service against the emulator: its own KMS key and buckets, served on a free
//! loopback port, so tests never share state.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use aws_clients::AwsClients;
use clap::Parser;
use emulator_fixtures::{
    TEST_REGION, configure_like_terraform, create_bucket, create_key, emulator_clients,
    unique_bucket_name,
};
use serde_json::Value;
use service::config::Config;
use service::http::{AppState, router};

pub mod binary;
pub mod faults;
pub mod proxy;

pub const MIB: usize = 1024 * 1024;

pub struct Stack {
    pub clients: AwsClients,
    pub key_arn: String,
    pub initial: String,
    pub final_: String,
    pub url: String,
    pub http: reqwest::Client,
    pub state: AppState,
}

pub struct Resources {
    pub clients: AwsClients,
    pub key_arn: String,
    pub initial: String,
    pub final_: String,
}

/// A key and two versioned buckets, as Terraform would create them.
pub async fn resources() -> Resources {
    let clients = emulator_clients().await;
    let key_arn = create_key(&clients.kms).await;
    let initial = unique_bucket_name("initial");
    let final_ = unique_bucket_name("final");
    for bucket in [&initial, &final_] {
        create_bucket(&clients.s3, bucket).await;
        configure_like_terraform(&clients.s3, bucket, &key_arn).await;
    }
    Resources {
        clients,
        key_arn,
        initial,
        final_,
    }
}

impl Stack {
    pub async fn start(extra: &[&str]) -> Stack {
        Stack::start_on(resources().await, extra).await
    }

    pub async fn start_on(resources: Resources, extra: &[&str]) -> Stack {
        let Resources {
            clients,
            key_arn,
            initial,
            final_,
        } = resources;
        let mut args = vec![
            "service".to_string(),
            format!("--initial-bucket={initial}"),
            format!("--final-bucket={final_}"),
            format!("--kms-key-arn={key_arn}"),
            format!("--region={TEST_REGION}"),
            "--part-size=5242880".to_string(),
            "--parts-in-flight=2".to_string(),
            "--reconcile-interval-secs=3600".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from(args).expect("config");
        let state = AppState::start(config, &clients)
            .await
            .expect("start service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Stack {
            clients,
            key_arn,
            initial,
            final_,
            url,
            http: reqwest::Client::new(),
            state,
        }
    }

    pub fn file_url(&self, name: &str) -> String {
        format!("{}/v1/files/{name}", self.url)
    }

    pub async fn put(&self, name: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .put(self.file_url(name))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self, name: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/status", self.file_url(name)))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the status route until the file is processed or failed.
    pub async fn settle(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, status) = self.status(name).await;
            assert_eq!(code, 200, "status of {name}: {status}");
            if status["state"] == "processed" || status["state"] == "failed" {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} did not settle: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` (below the service URL) and parse the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub async fn get(&self, name: &str) -> (u16, Vec<u8>) {
        let response = self.http.get(self.file_url(name)).send().await.unwrap();
        (
            response.status().as_u16(),
            response.bytes().await.unwrap().to_vec(),
        )
    }

    /// GET with a `Range` header (`bytes=...`).
    pub async fn get_range(&self, name: &str, range: &str) -> reqwest::Response {
        self.http
            .get(self.file_url(name))
            .header("range", range)
            .send()
            .await
            .unwrap()
    }

    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        keys(&self.clients, bucket).await
    }

    /// Waits until no multipart upload is open in the initial bucket.
    pub async fn assert_no_multipart_uploads(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let open = open_uploads(&self.clients, &self.initial).await;
            if open == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} dangling multipart uploads"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The keys in a bucket (up to 1,000, which is all any test makes).
pub async fn keys(clients: &AwsClients, bucket: &str) -> Vec<String> {
    let listed = clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// The multipart uploads open in a bucket.
pub async fn open_uploads(clients: &AwsClients, bucket: &str) -> usize {
    let listed = clients
        .s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    listed.uploads().len()
}

/// Encrypts as any Encryption SDK producer would, with the given key; its own limits are
/// wide, so it can also make messages the service must refuse.
pub async fn encryptor(resources: &Resources, key_arn: &str) -> service::decrypt::Decryptor {
    let mut settings = service::decrypt::Settings::defaults(64 << 20);
    settings.limits.max_frames = 20_000;
    service::decrypt::Decryptor::new(resources.clients.kms.clone(), key_arn, settings)
        .await
        .unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
