//! Service configuration: flags, or environment variables named as in the EC2 user-data
//! (terraform/templates/user-data.sh.tpl writes INITIAL_BUCKET, FINAL_BUCKET, KMS_KEY_ARN,
//! AWS_REGION, LISTEN_ADDR and PROCESSOR to /etc/filepipe/service.env).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

use crate::auth::Tokens;
use crate::decrypt;
use aws_clients::{AwsSettings, CredentialsSource};

const MIB: u64 = 1024 * 1024;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
pub const DEFAULT_MAX_BUFFERED_PARTS: usize = 8;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "service",
    about = "filepipe: encrypted file pipeline service",
    version
)]
pub struct Config {
    /// Bucket for raw files as received or retrieved.
    #[arg(long, env = "INITIAL_BUCKET")]
    pub initial_bucket: String,
    /// Bucket for decrypted and processed files.
    #[arg(long, env = "FINAL_BUCKET")]
    pub final_bucket: String,
    /// Full ARN of the KMS key: sent with every upload, and the only key allowed to unwrap
    /// encrypted payloads.
    #[arg(long, env = "KMS_KEY_ARN")]
    pub kms_key_arn: String,
    #[arg(long, env = "AWS_REGION")]
    pub region: String,
    /// Endpoint of an S3/KMS-compatible emulator; unset for real AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Endpoint of an S3-compatible server used for S3 only (KMS stays on AWS_ENDPOINT_URL).
    #[arg(long, env = "AWS_ENDPOINT_URL_S3")]
    pub aws_endpoint_url_s3: Option<String>,
    /// The CA (PEM) AWS endpoints must be signed by instead of the system's roots: the local
    /// emulator's. Unset on AWS.
    #[arg(long, env = "AWS_CA_BUNDLE")]
    pub aws_ca_bundle: Option<std::path::PathBuf>,
    /// Where to listen. Anything but loopback needs TLS_CERT_FILE and TLS_KEY_FILE (plain
    /// HTTP is served on loopback only) and a bearer token (unless --insecure-no-auth).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// What happens between the initial and the final bucket.
    #[arg(long, env = "PROCESSOR", value_enum, default_value_t = ProcessorKind::Identity)]
    pub processor: ProcessorKind,

    /// Multipart part size in bytes (at least 5 MiB).
    #[arg(long, env = "PART_SIZE", default_value_t = DEFAULT_PART_SIZE)]
    pub part_size: u64,
    /// Parts uploaded concurrently per transfer.
    #[arg(long, env = "PARTS_IN_FLIGHT", default_value_t = DEFAULT_PARTS_IN_FLIGHT)]
    pub parts_in_flight: usize,
    /// Part buffers in memory across all transfers (uploads and processing): file data held
    /// by the process is at most this x PART_SIZE (default 8 x 8 MiB = 64 MiB).
    #[arg(long, env = "MAX_BUFFERED_PARTS", default_value_t = DEFAULT_MAX_BUFFERED_PARTS)]
    pub max_buffered_parts: usize,
    /// Seconds a request body may send nothing before the upload is abandoned.
    #[arg(long, env = "BODY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub body_idle_timeout_secs: u64,
    /// Bytes per second a request body must average over every 10 s of waiting for it (0:
    /// no minimum). A client that trickles is answered 408 instead of holding memory; a part
    /// buffer is held at most PART_SIZE / MIN_BODY_RATE seconds (8 MiB at 64 KiB/s: 128 s).
    #[arg(long, env = "MIN_BODY_RATE", default_value_t = 64 * 1024)]
    pub min_body_rate: u64,
    /// Connections served at once; beyond them, new connections wait in the kernel's accept
    /// queue. Each costs a file descriptor and, outside the part budget, at most about
    /// 192 KiB: 64 KiB of staged body, one 64 KiB chunk read ahead, the parser's 64 KiB buffer
    /// (96 MiB for all 512 at worst).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Connections one source address may hold at once (MAX_CONNECTIONS if that is lower);
    /// more from it are closed at once, so one client cannot take the slots every other
    /// client needs.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,
    /// Status requests that may wait (`?wait=`) at once; past them a request is answered 429
    /// with Retry-After, so waiters never hold the connections health checks and uploads need.
    #[arg(long, env = "MAX_STATUS_WAITERS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_status_waiters: u32,
    /// Seconds a client has to send a request's headers, and that an idle keep-alive
    /// connection stays open.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Largest accepted file in bytes (default 5 GiB).
    #[arg(long, env = "MAX_OBJECT_SIZE", default_value_t = 5 * 1024 * MIB)]
    pub max_object_size: u64,
    /// Largest processor output in bytes (default 5 GiB, as MAX_OBJECT_SIZE): a gzip file
    /// that inflates beyond it fails.
    #[arg(long, env = "MAX_OUTPUT_SIZE", default_value_t = 5 * 1024 * MIB)]
    pub max_output_size: u64,
    /// Largest ratio of inflated to compressed bytes, checked past 16 MiB of output (text
    /// compresses 3 to 20 times; a decompression bomb, 1000 times and more).
    #[arg(long, env = "MAX_EXPANSION_RATIO", default_value_t = 200)]
    pub max_expansion_ratio: u64,
    /// Longest line the `jsonl` processor accepts. Each file being processed holds at most
    /// one line, so lines take at most PROCESSING_CONCURRENCY x this (default 16 MiB).
    #[arg(long, env = "MAX_LINE_BYTES", default_value_t = MIB as usize)]
    pub max_line_bytes: usize,
    /// Largest envelope-encrypted payload. The Encryption SDK decrypts in memory, taking about
    /// 6.3 times the message's size at its peak (its copies of message and plaintext); every
    /// decryption, waiting or running, and every plaintext not yet consumed counts against one
    /// budget of 7 times this (112 MiB by default), whatever the concurrency.
    #[arg(long, env = "MAX_ENCRYPTED_SIZE", default_value_t = 16 * MIB)]
    pub max_encrypted_size: u64,
    /// Encrypted data keys an Encryption SDK message may carry. Each one wrapped by our key
    /// may cost a KMS Decrypt call, so this bounds the KMS calls per message.
    #[arg(long, env = "MAX_ENCRYPTED_DATA_KEYS", default_value_t = decrypt::DEFAULT_MAX_DATA_KEYS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_encrypted_data_keys: u16,
    /// Frames an Encryption SDK message may have (the SDK walks them recursively; the
    /// decryption threads' stacks are sized for this many). The default admits a 16 MiB
    /// message with the SDK's default 4 KiB frames.
    #[arg(long, env = "MAX_ENCRYPTED_FRAMES", default_value_t = decrypt::DEFAULT_MAX_FRAMES, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_encrypted_frames: u32,
    /// Threads that run the Encryption SDK (CPU-bound; their own pool, off the async workers).
    #[arg(long, env = "DECRYPT_THREADS", default_value_t = decrypt::DEFAULT_THREADS)]
    pub decrypt_threads: usize,
    /// Seconds one decryption may take (queueing for a decryption thread included). A
    /// decryption that times out counts as interrupted, and the file is queued again.
    #[arg(long, env = "DECRYPT_TIMEOUT_SECS", default_value_t = 120)]
    pub decrypt_timeout_secs: u64,
    /// Decryptions of one file version that may be started without finishing (the process
    /// died, or the decryption timed out) before the file is quarantined: marked failed and
    /// not decrypted again, so a message that kills the process cannot do so at every start.
    #[arg(long, env = "MAX_DECRYPT_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_decrypt_attempts: u32,
    /// Tries of one processing run when S3 or KMS fails transiently (throttling, 5xx,
    /// timeouts, connections); between them a capped exponential backoff with jitter. After
    /// the last, the file is recorded failed (`transient`) and the next scan tries again.
    #[arg(long, env = "MAX_TRANSIENT_TRIES", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_transient_tries: u32,
    /// First backoff in milliseconds; it doubles per try, up to 16 times this.
    #[arg(long, env = "TRANSIENT_BACKOFF_MS", default_value_t = 1000)]
    pub transient_backoff_ms: u64,
    /// Seconds one S3 request may take (a part's upload included) before it is retried.
    #[arg(long, env = "S3_ATTEMPT_TIMEOUT_SECS", default_value_t = aws_clients::S3_ATTEMPT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub s3_attempt_timeout_secs: u64,
    /// The longest an API request waits for one S3 call, its retries included: a client
    /// gets 503 within this when S3 does not answer, while background processing keeps the
    /// longer S3_ATTEMPT_TIMEOUT_SECS budget.
    #[arg(long, env = "INTERACTIVE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub interactive_timeout_secs: u64,
    /// Reject raw payloads that are not AWS Encryption SDK messages.
    #[arg(long, env = "REQUIRE_ENCRYPTED_INPUT", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_encrypted_input: bool,

    /// Files processed at the same time. Memory does not grow with it (part buffers and
    /// decrypted payloads have budgets of their own); it hides S3 round trips, so it should
    /// cover the clients uploading at once (measured with `cargo xtask bench`: 4 workers
    /// held 16 clients of small files to 0.46 of direct S3, 16 to 0.70).
    #[arg(long, env = "PROCESSING_CONCURRENCY", default_value_t = 16)]
    pub processing_concurrency: usize,
    /// Processing jobs waiting at most; beyond that, reconciliation picks files up later.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Seconds between reconciliation scans of the initial bucket.
    #[arg(long, env = "RECONCILE_INTERVAL_SECS", default_value_t = 300)]
    pub reconcile_interval_secs: u64,

    /// URL of the SQS queue that receives the initial bucket's `raw/` object-created events.
    /// Set, this instance takes its work from the queue, as any number of others may; unset,
    /// from its own uploads and the scans, which suits one instance only.
    #[arg(long, env = "QUEUE_URL")]
    pub queue_url: Option<String>,
    /// Seconds a failed file's message stays hidden before its next delivery; doubled per
    /// delivery, up to 15 minutes. After the queue's maxReceiveCount deliveries the message
    /// goes to the dead-letter queue.
    #[arg(long, env = "QUEUE_RETRY_BACKOFF_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=900))]
    pub queue_retry_backoff_secs: u64,
    /// With a queue: seconds a raw file waits for its output before a scan sends its message
    /// itself (its event was lost). Scans send only while the queue is empty, so they never
    /// add a message for a file the queue still carries.
    #[arg(long, env = "RECONCILE_GRACE_SECS", default_value_t = 600)]
    pub reconcile_grace_secs: u64,
    /// With a queue: seconds after which an open multipart upload counts as orphaned (its
    /// writer died) and is aborted by a scan; younger ones may be another instance's.
    #[arg(long, env = "ORPHAN_UPLOAD_AGE_SECS", default_value_t = 6 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub orphan_upload_age_secs: u64,
    /// Name of this instance in metrics and logs (the EC2 instance id on AWS).
    #[arg(long, env = "INSTANCE_ID", default_value = "")]
    pub instance_id: String,

    /// Hosts the service may retrieve from (comma-separated, `host` or `host:port`).
    #[arg(long, env = "UPSTREAM_ALLOWED_HOSTS", value_delimiter = ',')]
    pub upstream_allowed_hosts: Vec<String>,
    /// Upstream URLs polled on a schedule (comma-separated); new content is stored raw.
    #[arg(long, env = "UPSTREAM_POLL_URLS", value_delimiter = ',')]
    pub upstream_poll_urls: Vec<String>,
    /// Seconds between polls of UPSTREAM_POLL_URLS.
    #[arg(long, env = "UPSTREAM_POLL_INTERVAL_SECS", default_value_t = 300)]
    pub upstream_poll_interval_secs: u64,
    /// Seconds one upstream retrieval may take in total.
    #[arg(long, env = "UPSTREAM_TIMEOUT_SECS", default_value_t = 300)]
    pub upstream_timeout_secs: u64,

    /// File holding the bearer token every /v1 route and /metrics require (preferred over
    /// AUTH_TOKEN); read again on SIGHUP and every RELOAD_INTERVAL_SECS.
    #[arg(long, env = "AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Bearer token every /v1 route and /metrics require (fixed for the process's life).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Seconds a token replaced in AUTH_TOKEN_FILE is still accepted, so clients switch
    /// over without a failed request.
    #[arg(long, env = "AUTH_TOKEN_OVERLAP_SECS", default_value_t = 300)]
    pub auth_token_overlap_secs: u64,
    /// Serve without a bearer token on a non-loopback address. Anyone who reaches the port
    /// can then read, write and delete files.
    #[arg(long, env = "INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// PEM certificate (chain) for HTTPS, with TLS_KEY_FILE.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Seconds between re-reads of AUTH_TOKEN_FILE and the TLS files (SIGHUP reads them at once).
    #[arg(long, env = "RELOAD_INTERVAL_SECS", default_value_t = 30)]
    pub reload_interval_secs: u64,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    Identity,
    Gunzip,
    Jsonl,
}

impl ProcessorKind {
    pub fn name(self) -> &'static str {
        match self {
            ProcessorKind::Identity => "identity",
            ProcessorKind::Gunzip => "gunzip",
            ProcessorKind::Jsonl => "jsonl",
        }
    }
}

impl Config {
    /// Checks what clap cannot; returns the bearer tokens, if any.
    pub fn validate(&self) -> Result<Option<Tokens>> {
        if self.part_size < MIN_PART_SIZE {
            bail!("PART_SIZE must be at least 5 MiB (S3's minimum part size)");
        }
        if self.parts_in_flight == 0
            || self.processing_concurrency == 0
            || self.max_buffered_parts == 0
            || self.decrypt_threads == 0
        {
            bail!(
                "PARTS_IN_FLIGHT, PROCESSING_CONCURRENCY, MAX_BUFFERED_PARTS and DECRYPT_THREADS must be at least 1"
            );
        }
        if self.max_status_waiters >= self.max_connections {
            bail!(
                "MAX_STATUS_WAITERS ({}) must be below MAX_CONNECTIONS ({}): waiting status requests must leave connections for health checks and uploads",
                self.max_status_waiters,
                self.max_connections
            );
        }
        if !self.kms_key_arn.starts_with("arn:") || !self.kms_key_arn.contains(":key/") {
            bail!("KMS_KEY_ARN must be a full key ARN (arn:aws:kms:<region>:<account>:key/<id>)");
        }
        let tokens = Tokens::load(
            self.auth_token_file.clone(),
            self.auth_token.as_deref(),
            Duration::from_secs(self.auth_token_overlap_secs),
        )?;
        if !self.listen_addr.ip().is_loopback() {
            if self.tls_cert_file.is_none() {
                bail!(
                    "LISTEN_ADDR {} is not a loopback address, and plain HTTP is served on loopback only: set TLS_CERT_FILE and TLS_KEY_FILE",
                    self.listen_addr
                );
            }
            if tokens.is_none() && !self.insecure_no_auth {
                bail!(
                    "LISTEN_ADDR {} is not a loopback address and no bearer token is set: set AUTH_TOKEN_FILE, or pass --insecure-no-auth to let anyone who reaches the port read, write and delete files",
                    self.listen_addr
                );
            }
        }
        Ok(tokens)
    }

    pub fn aws_settings(&self) -> AwsSettings {
        AwsSettings {
            region: self.region.clone(),
            endpoint_url: self.aws_endpoint_url.clone(),
            s3_endpoint_url: self.aws_endpoint_url_s3.clone(),
            credentials: CredentialsSource::DefaultChain { profile: None },
            ca_bundle: self.aws_ca_bundle.clone(),
        }
    }

    /// The bytes decryptions may hold at once, whatever the number of files (`decrypt::WEIGHT`
    /// times the largest message allowed).
    pub fn decryption_memory_budget(&self) -> u64 {
        decrypt::WEIGHT * self.max_encrypted_size
    }

    pub fn decrypt_settings(&self) -> decrypt::Settings {
        decrypt::Settings {
            max_message_size: self.max_encrypted_size,
            threads: self.decrypt_threads,
            limits: decrypt::Limits {
                max_data_keys: self.max_encrypted_data_keys,
                max_frames: self.max_encrypted_frames,
                max_context_pairs: decrypt::MAX_CONTEXT_PAIRS,
            },
        }
    }

    /// The pause after the `tries`-th failed try: doubling, capped, with up to half of it as
    /// jitter so that files failing together do not retry together.
    pub fn transient_backoff(&self, tries: u32) -> Duration {
        let base = self.transient_backoff_ms.max(1);
        let pause = base.saturating_mul(1 << tries.saturating_sub(1).min(4));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or_default();
        Duration::from_millis(pause / 2 + nanos % (pause / 2 + 1))
    }

    pub fn decrypt_timeout(&self) -> Duration {
        Duration::from_secs(self.decrypt_timeout_secs.max(1))
    }

    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.body_idle_timeout_secs.max(1))
    }

    /// How long a failed file's message stays hidden after its `receives`-th delivery.
    pub fn queue_retry_backoff(&self, receives: u32) -> Duration {
        let pause = self
            .queue_retry_backoff_secs
            .saturating_mul(1 << receives.saturating_sub(1).min(10));
        Duration::from_secs(pause.min(900))
    }

    /// With a queue, the age at which an open multipart upload is an orphan; without, every
    /// open upload is one (this instance is the only writer).
    pub fn orphan_upload_age(&self) -> Option<Duration> {
        self.queue_url
            .as_ref()
            .map(|_| Duration::from_secs(self.orphan_upload_age_secs))
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_secs.max(1))
    }
}
