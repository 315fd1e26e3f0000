//! initial bucket → decrypt → process → final bucket.
//!
//! A file is processed iff the final bucket has no output (and no failure record) whose
//! recorded source ETag/version matches the current raw object. New uploads are queued
//! at once; a reconciliation scan at start-up and every few minutes queues whatever a
//! restart or a full queue left behind. Everything is streamed except Encryption SDK
//! messages, which the SDK decrypts in memory (bounded by MAX_ENCRYPTED_SIZE).

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow};
use async_compression::tokio::bufread::GzipDecoder;
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

use crate::aws::{AwsResultExt, Failure};
use crate::config::{Config, ProcessorKind};
use crate::decrypt::{self, Decryptor};
use crate::metrics::Metrics;
use crate::names::{self, failed_key, processed_key, raw_key};
use crate::upload::{self, InFlight, Target, UploadError, metadata_text, metadata_value};

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// Read size when streaming: the 4 KiB default costs a chunk (and a hash update and a
/// buffer push) per page.
pub const STREAM_CHUNK: usize = 64 * 1024;
pub type Output = BoxStream<'static, io::Result<Bytes>>;

/// One step between decrypted input and stored output. `stats` receives values recorded in
/// the output's metadata once the stream has ended.
pub trait Processor: Send + Sync {
    fn name(&self) -> &'static str;
    fn process(&self, input: Reader, stats: upload::LateMetadata) -> Output;
    /// The output's `Content-Type`, given the upload's.
    fn content_type(&self, input: Option<&str>) -> Option<String>;
}

pub struct Identity;

/// Checks that every line is JSON, holding at most one line in memory.
pub struct JsonLines {
    /// Longest line (MAX_LINE_BYTES); a longer one fails the file instead of taking memory.
    pub max_line: usize,
}

/// Inflates gzip, bounded: a small bomb must not become an unbounded output.
pub struct Gunzip {
    /// Largest output (MAX_OUTPUT_SIZE).
    pub max_output: u64,
    /// Largest output per compressed input byte (MAX_EXPANSION_RATIO), checked once the
    /// output passes RATIO_FREE_OUTPUT, so small, very repetitive files still pass.
    pub max_ratio: u64,
}

/// Output below which the expansion ratio is not checked.
const RATIO_FREE_OUTPUT: u64 = 16 * 1024 * 1024;

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.count
            .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        result
    }
}

impl Processor for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn process(&self, input: Reader, _stats: upload::LateMetadata) -> Output {
        ReaderStream::with_capacity(input, STREAM_CHUNK).boxed()
    }
    fn content_type(&self, input: Option<&str>) -> Option<String> {
        input.map(str::to_string)
    }
}

impl Processor for Gunzip {
    fn name(&self) -> &'static str {
        "gunzip"
    }
    /// What was compressed is not known.
    fn content_type(&self, _input: Option<&str>) -> Option<String> {
        Some("application/octet-stream".into())
    }
    fn process(&self, input: Reader, _stats: upload::LateMetadata) -> Output {
        let compressed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let input = Counting {
            inner: input,
            count: compressed.clone(),
        };
        let mut decoder = GzipDecoder::new(BufReader::new(input));
        decoder.multiple_members(true);
        let (max_output, max_ratio) = (self.max_output, self.max_ratio);
        let mut produced: u64 = 0;
        let mut failed = false;
        ReaderStream::with_capacity(decoder, STREAM_CHUNK)
            .map(move |chunk| {
                let chunk = chunk?;
                produced += chunk.len() as u64;
                let read = compressed.load(std::sync::atomic::Ordering::Relaxed).max(1);
                if produced > max_output {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the inflated output exceeds MAX_OUTPUT_SIZE ({max_output} bytes)"),
                    ));
                }
                if produced > RATIO_FREE_OUTPUT && produced / read > max_ratio {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{produced} bytes inflated from {read}: more than MAX_EXPANSION_RATIO ({max_ratio}) times the compressed size"
                        ),
                    ));
                }
                Ok(chunk)
            })
            // Nothing after the first error: the upload is aborted on it.
            .take_while(move |chunk| {
                let go = !failed;
                failed |= chunk.is_err();
                std::future::ready(go)
            })
            .boxed()
    }
}

struct LineValidator {
    partial: Vec<u8>,
    line: u64,
    max_line: usize,
}

impl LineValidator {
    fn check(&mut self, line: &[u8]) -> io::Result<()> {
        self.line += 1;
        if line.len() > self.max_line {
            return Err(self.too_long(self.line));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        serde_json::from_slice::<serde::de::IgnoredAny>(line).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {} is not valid JSON: {err}", self.line),
            )
        })?;
        Ok(())
    }

    fn feed(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.check(&rest[..end])?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                self.check(&line)?;
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > self.max_line {
            return Err(self.too_long(self.line + 1));
        }
        Ok(())
    }

    fn too_long(&self, line: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "line {line} is longer than MAX_LINE_BYTES ({} bytes)",
                self.max_line
            ),
        )
    }

    fn finish(&mut self) -> io::Result<()> {
        // A final newline ends the last line; it does not start an empty one.
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check(&line)?;
        }
        Ok(())
    }
}

impl Processor for JsonLines {
    fn name(&self) -> &'static str {
        "jsonl"
    }
    fn content_type(&self, _input: Option<&str>) -> Option<String> {
        Some("application/x-ndjson".into())
    }
    fn process(&self, input: Reader, stats: upload::LateMetadata) -> Output {
        let validator = LineValidator {
            partial: Vec::new(),
            line: 0,
            max_line: self.max_line,
        };
        stream::unfold(
            (
                ReaderStream::with_capacity(input, STREAM_CHUNK),
                validator,
                false,
            ),
            move |(mut chunks, mut validator, done)| {
                let stats = stats.clone();
                async move {
                    if done {
                        return None;
                    }
                    match chunks.next().await {
                        Some(Ok(chunk)) => {
                            let checked = validator.feed(&chunk).map(|()| chunk);
                            let failed = checked.is_err();
                            Some((checked, (chunks, validator, failed)))
                        }
                        Some(Err(err)) => Some((Err(err), (chunks, validator, true))),
                        None => match validator.finish() {
                            Ok(()) => {
                                stats
                                    .lock()
                                    .unwrap()
                                    .insert("lines".into(), validator.line.to_string());
                                None
                            }
                            Err(err) => Some((Err(err), (chunks, validator, true))),
                        },
                    }
                }
            },
        )
        .boxed()
    }
}

pub fn processor(config: &Config) -> Arc<dyn Processor> {
    match config.processor {
        ProcessorKind::Identity => Arc::new(Identity),
        ProcessorKind::Gunzip => Arc::new(Gunzip {
            max_output: config.max_output_size,
            max_ratio: config.max_expansion_ratio,
        }),
        ProcessorKind::Jsonl => Arc::new(JsonLines {
            max_line: config.max_line_bytes,
        }),
    }
}

/// Hashes what passes through, into a hasher shared with whoever needs the digest later.
struct Hashing<R> {
    inner: R,
    hasher: Arc<Mutex<Sha256>>,
    /// Set when reading the source fails (S3 cut the body off): the run failed through no
    /// fault of the file.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                self.hasher.lock().unwrap().update(new);
            }
            Poll::Ready(Err(_)) => self
                .failed
                .store(true, std::sync::atomic::Ordering::Relaxed),
            Poll::Pending => {}
        }
        result
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Processing,
    Processed,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawInfo {
    pub size: i64,
    pub etag: String,
    pub version_id: Option<String>,
    pub sha256: Option<String>,
    pub last_modified: Option<String>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessedInfo {
    pub size: i64,
    pub etag: String,
    pub sha256: Option<String>,
    pub processor: Option<String>,
    pub processed_at: Option<String>,
    pub lines: Option<u64>,
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub content_type: Option<String>,
}

impl RawInfo {
    /// Whether an output with this metadata was made from exactly this raw version. An
    /// output whose metadata is not complete yet (late metadata) was not.
    pub fn made(&self, output_metadata: Option<&HashMap<String, String>>) -> bool {
        let Some(metadata) = output_metadata else {
            return false;
        };
        let same_etag = metadata.get("source-etag") == Some(&self.etag);
        let same_version = match &self.version_id {
            Some(version) => metadata.get("source-version") == Some(version),
            None => true,
        };
        same_etag && same_version
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub name: String,
    pub state: State,
    pub raw: RawInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed: Option<ProcessedInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it failed: `file`, `quarantined`, or `transient` / `access_denied` (tried again
    /// by the next scan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Tries of the run that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// The AWS request id of the call that failed it, if AWS answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What the final bucket records of a file whose current version has no output: the
/// decryptions started for it (`error` unset) or the failure that ended its processing.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Record {
    name: String,
    source_etag: String,
    source_version: Option<String>,
    processor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed_at: Option<String>,
    /// Why: `file` (the file's own: undecryptable, refused, a processor error),
    /// `quarantined`, `transient` (S3 or KMS failed, tries used up) or `access_denied` (the
    /// deployment's permissions). The last two are retried by the next scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    /// Tries of the run that failed (transient errors are retried with backoff).
    #[serde(default)]
    tries: u32,
    /// The AWS request id of the failed call, when an AWS call failed and AWS answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    /// Decryptions of this version that were started. A run that ends deletes or replaces
    /// the record, so a count that is left behind counts runs that were interrupted (the
    /// process died, or the decryption timed out).
    #[serde(default)]
    attempts: u32,
}

impl Record {
    fn is_for(&self, raw: &RawInfo) -> bool {
        self.source_etag == raw.etag
            && (raw.version_id.is_none() || self.source_version == raw.version_id)
    }

    /// A failure that was not the file's: the next scan (or a reprocess) tries again.
    fn retryable(&self) -> bool {
        matches!(self.code.as_deref(), Some(TRANSIENT | ACCESS_DENIED))
    }
}

const TRANSIENT: &str = "transient";
const ACCESS_DENIED: &str = "access_denied";

/// Why a run failed, for its record: see [`Record::code`].
fn failure_code(err: &anyhow::Error, source_failed: bool) -> &'static str {
    if err.is::<Quarantined>() {
        return "quarantined";
    }
    let failure = if source_failed {
        Some(Failure::Transient)
    } else {
        crate::aws::aws_failure(err).or_else(|| {
            err.chain()
                .find_map(|e| e.downcast_ref::<decrypt::KmsFailure>())
                .map(|e| e.failure)
        })
    };
    match failure {
        Some(Failure::Transient) => TRANSIENT,
        Some(Failure::Denied) => ACCESS_DENIED,
        _ => "file",
    }
}

/// The file's decryptions kept dying; it is not decrypted again.
#[derive(Debug)]
struct Quarantined(u32);

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quarantined: {} decryptions of this version were started and never finished \
             (the service stopped, or they timed out); it is not decrypted again. \
             Upload the file again, or POST .../reprocess, to retry",
            self.0
        )
    }
}

impl std::error::Error for Quarantined {}

/// How a run failed, for its record.
struct Failed {
    error: String,
    code: &'static str,
    request_id: Option<String>,
    attempts: u32,
    tries: u32,
}

/// Decryptions started for the version being processed, before this run and by it.
struct Attempts {
    before: u32,
    recorded: bool,
}

/// Decryption did not finish in time; the attempt stays recorded and the file is queued
/// again, until it is quarantined.
#[derive(Debug)]
struct DecryptionTimedOut(std::time::Duration);

impl std::fmt::Display for DecryptionTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decryption did not finish within {} s (DECRYPT_TIMEOUT_SECS)",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for DecryptionTimedOut {}

pub struct Pipeline {
    s3: S3,
    config: Arc<Config>,
    processor: Arc<dyn Processor>,
    decryptor: Decryptor,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    queue: mpsc::Sender<String>,
    /// Names queued or being processed, so nothing is queued twice.
    queued: Mutex<HashSet<String>>,
    /// Accepted files that found the queue full (uploads that raced for its last place, and
    /// re-queued timeouts): moved into the queue as soon as a worker frees a place.
    overflow: Mutex<std::collections::VecDeque<String>>,
    running: Mutex<HashSet<String>>,
    /// Names whose processing run just ended, for status requests that wait for it.
    finished: tokio::sync::broadcast::Sender<String>,
}

fn trim_etag(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

fn now_rfc3339() -> String {
    DateTime::from(SystemTime::now())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

impl Pipeline {
    /// Starts the workers and the periodic reconciliation scan.
    pub fn start(
        s3: S3,
        config: Arc<Config>,
        decryptor: Decryptor,
        metrics: Arc<Metrics>,
        in_flight: InFlight,
    ) -> Arc<Pipeline> {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let pipeline = Arc::new(Pipeline {
            s3,
            processor: processor(&config),
            config: config.clone(),
            decryptor,
            metrics,
            in_flight,
            queue: tx,
            queued: Mutex::new(HashSet::new()),
            overflow: Mutex::new(std::collections::VecDeque::new()),
            running: Mutex::new(HashSet::new()),
            finished: tokio::sync::broadcast::channel(1024).0,
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..config.processing_concurrency {
            let pipeline = pipeline.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(name) = next else { break };
                    pipeline.metrics.queue_changed(-1);
                    pipeline.refill();
                    pipeline.run(&name).await;
                }
            });
        }
        let scanner = pipeline.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(scanner.config.reconcile_interval());
            loop {
                ticker.tick().await;
                match scanner.reconcile().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(queued = n, "reconciliation queued unprocessed files"),
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), "reconciliation scan failed")
                    }
                }
            }
        });
        pipeline
    }

    /// Whether an upload may be accepted: its file would be queued at once. Uploads are
    /// refused (503) rather than acknowledged and left to a scan minutes later.
    pub fn has_room(&self) -> bool {
        self.queue.capacity() > 0 && self.overflow.lock().unwrap().is_empty()
    }

    /// Queues an accepted file: in the queue, or (if it just filled) in the overflow that
    /// workers drain as soon as they free a place.
    pub fn enqueue(&self, name: &str) {
        if !self.queued.lock().unwrap().insert(name.to_string()) {
            return;
        }
        match self.queue.try_send(name.to_string()) {
            Ok(()) => self.metrics.queue_changed(1),
            Err(_) => self.overflow.lock().unwrap().push_back(name.to_string()),
        }
    }

    /// Queues a file the scan found, if there is room; false leaves it for the next scan
    /// (a backlog of unprocessed raw objects is not copied into memory whole).
    fn enqueue_if_room(&self, name: &str) -> bool {
        if !self.has_room() {
            return false;
        }
        self.enqueue(name);
        true
    }

    /// Moves overflowed files into the queue while it has room.
    fn refill(&self) {
        let mut overflow = self.overflow.lock().unwrap();
        while let Some(name) = overflow.pop_front() {
            if let Err(err) = self.queue.try_send(name) {
                overflow.push_front(err.into_inner());
                break;
            }
            self.metrics.queue_changed(1);
        }
    }

    async fn run(&self, name: &str) {
        self.running.lock().unwrap().insert(name.to_string());
        self.queued.lock().unwrap().remove(name);
        let started = Instant::now();
        let result = self.process(name).await;
        self.running.lock().unwrap().remove(name);
        // No receiver is the normal case: nobody waits.
        let _ = self.finished.send(name.to_string());
        match result {
            Ok(Some(_)) => {
                self.metrics.processing_done(true, started.elapsed());
                tracing::info!(
                    name,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "processed"
                );
            }
            Ok(None) => {}
            Err(err) => {
                self.metrics.processing_done(false, started.elapsed());
                tracing::warn!(name, error = %format!("{err:#}"), "processing failed");
            }
        }
    }

    /// Processes one file if its current raw version has no output yet. `Ok(None)`: nothing
    /// to do. A processing failure is recorded in the final bucket and also returned.
    pub async fn process(&self, name: &str) -> Result<Option<upload::Uploaded>> {
        let Some(raw) = self.head_raw(name).await? else {
            return Ok(None);
        };
        if self.head_processed(name, &raw).await?.is_some() {
            return Ok(None);
        }
        let record = self.record(name).await?;
        let before = match &record {
            Some(record) if record.is_for(&raw) => {
                if record.error.is_some() && !record.retryable() {
                    return Ok(None);
                }
                record.attempts
            }
            _ => 0,
        };
        let mut attempts = Attempts {
            before,
            recorded: false,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let source_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let err = match self
                .transform(name, &raw, &mut attempts, &source_failed)
                .await
            {
                Ok(uploaded) => {
                    // An attempt record, or an earlier failure, is stale now; with no record
                    // there is nothing to delete (saves a request per file).
                    if record.is_some() || attempts.recorded {
                        self.clear_record(name).await?;
                    }
                    return Ok(Some(uploaded));
                }
                Err(err) => err,
            };
            if err.is::<DecryptionTimedOut>() {
                // The attempt stays counted; the next run quarantines the file once they
                // are used up.
                self.enqueue(name);
                return Err(err);
            }
            let source_failed = source_failed.load(std::sync::atomic::Ordering::Relaxed);
            let code = failure_code(&err, source_failed);
            if code == TRANSIENT && tries < self.config.max_transient_tries {
                let pause = self.config.transient_backoff(tries);
                self.metrics.retried();
                tracing::info!(
                    name,
                    tries,
                    pause_ms = pause.as_millis() as u64,
                    error = %format!("{err:#}"),
                    "transient failure; trying again"
                );
                tokio::time::sleep(pause).await;
                continue;
            }
            let failed = Failed {
                error: format!("{err:#}"),
                code,
                request_id: crate::aws::aws_call(&err).and_then(|call| call.request_id.clone()),
                attempts: attempts.before + u32::from(attempts.recorded),
                tries,
            };
            self.record_failure(name, &raw, failed).await?;
            return Err(err);
        }
    }

    async fn transform(
        &self,
        name: &str,
        raw: &RawInfo,
        attempts: &mut Attempts,
        source_failed: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<upload::Uploaded> {
        let mut request = self
            .s3
            .get_object()
            .bucket(&self.config.initial_bucket)
            .key(raw_key(name));
        if let Some(version) = &raw.version_id {
            request = request.version_id(version);
        }
        let object = request
            .send()
            .await
            .aws_context(format!("s3:GetObject {}", raw_key(name)))?;
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        let mut reader = Hashing {
            inner: object.body.into_async_read(),
            hasher: hasher.clone(),
            failed: source_failed.clone(),
        };
        let mut header = [0u8; decrypt::HEADER_LEN];
        let mut filled = 0;
        while filled < header.len() {
            let n = reader
                .read(&mut header[filled..])
                .await
                .context("reading the raw object")?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let header = header[..filled].to_vec();
        let plaintext: Reader = if decrypt::looks_encrypted(&header) {
            if raw.size as u64 > self.config.max_encrypted_size {
                return Err(anyhow!(
                    "encrypted payload of {} bytes exceeds MAX_ENCRYPTED_SIZE ({} bytes)",
                    raw.size,
                    self.config.max_encrypted_size
                ));
            }
            // Decryption is where a hostile message could take the process down; a message
            // whose decryption never finishes is not decrypted again and again.
            if attempts.before >= self.config.max_decrypt_attempts {
                return Err(Quarantined(attempts.before).into());
            }
            // One attempt per run, whatever its tries.
            if !attempts.recorded {
                self.record_attempt(name, raw, attempts.before + 1).await?;
                attempts.recorded = true;
            }
            let limit = self.config.decrypt_timeout();
            let plaintext = tokio::time::timeout(
                limit,
                self.decryptor
                    .decrypt_from(header, &mut reader, raw.size as u64),
            )
            .await
            .map_err(|_| DecryptionTimedOut(limit))??;
            Box::new(plaintext)
        } else if self.config.require_encrypted_input {
            return Err(anyhow!(
                "the payload is not an AWS Encryption SDK message and REQUIRE_ENCRYPTED_INPUT is set"
            ));
        } else {
            Box::new(io::Cursor::new(header).chain(reader))
        };

        let late = Arc::new(Mutex::new(HashMap::new()));
        let output = self.processor.process(plaintext, late.clone());
        // Record the raw digest and completion time once the stream has ended.
        let finish = {
            let late = late.clone();
            let hasher = hasher.clone();
            stream::once(async move {
                let digest = hex::encode(hasher.lock().unwrap().clone().finalize());
                let mut late = late.lock().unwrap();
                late.insert("source-sha256".into(), digest);
                late.insert("processed-at".into(), now_rfc3339());
                Ok::<Bytes, io::Error>(Bytes::new())
            })
        };
        let output = output
            .chain(finish)
            .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())));

        let target = Target {
            s3: self.s3.clone(),
            bucket: self.config.final_bucket.clone(),
            key: processed_key(name),
            kms_key_arn: self.config.kms_key_arn.clone(),
            metadata: HashMap::from([
                ("source-key".to_string(), metadata_value(&raw_key(name))),
                ("source-etag".to_string(), raw.etag.clone()),
                (
                    "source-version".to_string(),
                    raw.version_id.clone().unwrap_or_default(),
                ),
                ("processor".to_string(), self.processor.name().to_string()),
            ]),
            part_size: self.config.part_size as usize,
            parts_in_flight: self.config.parts_in_flight,
            max_size: u64::MAX,
            idle_timeout: self.config.body_idle_timeout(),
            min_body_rate: 0,
            content_type: self.processor.content_type(raw.content_type.as_deref()),
            late_metadata: Some(late),
        };
        upload::upload(&target, output, &Default::default(), &self.in_flight)
            .await
            .map_err(|err| match err {
                UploadError::Body(message) => {
                    anyhow!("{} processor: {message}", self.processor.name())
                }
                // The output stalls only when reading the raw object does.
                UploadError::TooSlow(message) => {
                    source_failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    anyhow!("reading the raw object stalled: {message}")
                }
                UploadError::Aws(err) => err,
                other => anyhow!("{other}"),
            })
    }

    /// HeadObject; `None` for a missing object.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<HeadObjectOutput>> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(head) => Ok(Some(head)),
            Err(err) if err.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(None),
            Err(err) => Err(err).aws_context(format!("s3:HeadObject {bucket}/{key}")),
        }
    }

    pub async fn head_raw(&self, name: &str) -> Result<Option<RawInfo>> {
        let Some(head) = self
            .head(&self.config.initial_bucket, &raw_key(name))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(RawInfo {
            size: head.content_length().unwrap_or_default(),
            etag: trim_etag(head.e_tag()),
            version_id: head
                .version_id()
                .filter(|v| *v != "null")
                .map(str::to_string),
            sha256: head.metadata().and_then(|m| m.get("sha256")).cloned(),
            last_modified: head
                .last_modified()
                .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
            sse: head
                .server_side_encryption()
                .map(|s| s.as_str().to_string()),
            kms_key_id: head.ssekms_key_id().map(str::to_string),
            content_type: head.content_type().map(str::to_string),
        }))
    }

    /// The processed object, if it was made from exactly this raw version.
    async fn head_processed(&self, name: &str, raw: &RawInfo) -> Result<Option<ProcessedInfo>> {
        let Some(head) = self
            .head(&self.config.final_bucket, &processed_key(name))
            .await?
        else {
            return Ok(None);
        };
        if !raw.made(head.metadata()) {
            return Ok(None);
        }
        let metadata = head.metadata().cloned().unwrap_or_default();
        Ok(Some(ProcessedInfo {
            size: head.content_length().unwrap_or_default(),
            etag: trim_etag(head.e_tag()),
            sha256: metadata.get("sha256").cloned(),
            processor: metadata.get("processor").cloned(),
            processed_at: metadata.get("processed-at").cloned(),
            lines: metadata.get("lines").and_then(|l| l.parse().ok()),
            sse: head
                .server_side_encryption()
                .map(|s| s.as_str().to_string()),
            kms_key_id: head.ssekms_key_id().map(str::to_string),
            content_type: head.content_type().map(str::to_string),
        }))
    }

    /// The record of `name`, whichever raw version it was written for.
    async fn record(&self, name: &str) -> Result<Option<Record>> {
        let object = self
            .s3
            .get_object()
            .bucket(&self.config.final_bucket)
            .key(failed_key(name))
            .send()
            .await;
        let object = match object {
            Ok(object) => object,
            Err(err) if err.code() == Some("NoSuchKey") => return Ok(None),
            Err(err) => return Err(err).aws_context(format!("s3:GetObject {}", failed_key(name))),
        };
        let body = object
            .body
            .collect()
            .await
            .context("reading a failure record")?
            .into_bytes();
        Ok(Some(
            serde_json::from_slice(&body).context("parsing a failure record")?,
        ))
    }

    /// The failure recorded for exactly this raw version, if its processing failed.
    async fn failure(&self, name: &str, raw: &RawInfo) -> Result<Option<Record>> {
        Ok(self
            .record(name)
            .await?
            .filter(|record| record.is_for(raw) && record.error.is_some()))
    }

    /// Whether this version is settled: processed, or failed for a reason of its own (a
    /// transient or access failure is tried again).
    async fn output_matches(&self, name: &str, raw: &RawInfo) -> Result<bool> {
        if self.head_processed(name, raw).await?.is_some() {
            return Ok(true);
        }
        Ok(self
            .failure(name, raw)
            .await?
            .is_some_and(|record| !record.retryable()))
    }

    /// Forgets the record of `name` (its failure, its quarantine) and queues it again.
    /// `false` if there is no such file.
    pub async fn reprocess(&self, name: &str) -> Result<bool> {
        if self.head_raw(name).await?.is_none() {
            return Ok(false);
        }
        if self.record(name).await?.is_some() {
            self.clear_record(name).await?;
        }
        self.enqueue(name);
        Ok(true)
    }

    async fn record_failure(&self, name: &str, raw: &RawInfo, failed: Failed) -> Result<()> {
        self.metrics.failed_with(failed.code);
        self.put_record(
            name,
            Record {
                error: Some(failed.error),
                failed_at: Some(now_rfc3339()),
                code: Some(failed.code.to_string()),
                tries: failed.tries,
                request_id: failed.request_id,
                ..self.new_record(name, raw, failed.attempts)
            },
        )
        .await
    }

    /// Counts a decryption of this version as started, before it starts.
    async fn record_attempt(&self, name: &str, raw: &RawInfo, attempts: u32) -> Result<()> {
        self.put_record(name, self.new_record(name, raw, attempts))
            .await
    }

    fn new_record(&self, name: &str, raw: &RawInfo, attempts: u32) -> Record {
        Record {
            name: metadata_text(&metadata_value(name)),
            source_etag: raw.etag.clone(),
            source_version: raw.version_id.clone(),
            processor: self.processor.name().to_string(),
            error: None,
            failed_at: None,
            code: None,
            tries: 0,
            request_id: None,
            attempts,
        }
    }

    async fn put_record(&self, name: &str, record: Record) -> Result<()> {
        self.s3
            .put_object()
            .bucket(&self.config.final_bucket)
            .key(failed_key(name))
            .content_type("application/json")
            .body(ByteStream::from(serde_json::to_vec_pretty(&record)?))
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&self.config.kms_key_arn)
            .bucket_key_enabled(true)
            .send()
            .await
            .aws_context(format!("s3:PutObject {}", failed_key(name)))?;
        Ok(())
    }

    async fn clear_record(&self, name: &str) -> Result<()> {
        self.s3
            .delete_object()
            .bucket(&self.config.final_bucket)
            .key(failed_key(name))
            .send()
            .await
            .aws_context(format!("s3:DeleteObject {}", failed_key(name)))?;
        Ok(())
    }

    /// Status of a file, or `None` if there is no raw object.
    pub async fn status(&self, name: &str) -> Result<Option<FileStatus>> {
        let Some(raw) = self.head_raw(name).await? else {
            return Ok(None);
        };
        let processed = self.head_processed(name, &raw).await?;
        let (state, failure) = if processed.is_some() {
            (State::Processed, None)
        } else if let Some(record) = self.failure(name, &raw).await? {
            (State::Failed, Some(record))
        } else if self.running.lock().unwrap().contains(name) {
            (State::Processing, None)
        } else {
            (State::Pending, None)
        };
        let tries = failure.as_ref().map(|record| record.tries);
        let (error, error_code, request_id) = failure
            .map(|record| (record.error, record.code, record.request_id))
            .unwrap_or_default();
        Ok(Some(FileStatus {
            name: name.to_string(),
            state,
            raw,
            processed,
            error,
            error_code,
            tries,
            request_id,
        }))
    }

    /// Status of a file, waiting up to `wait` while it is pending or processing. Wakes
    /// when a processing run of this name ends, so waiting costs no polling.
    pub async fn wait_for_status(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<Option<FileStatus>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Subscribe before looking, so a run that ends in between is not missed.
            let mut finished = self.finished.subscribe();
            // Queued or running here: its run will announce its end, so the S3 lookups of
            // a status can wait until then (right after an upload, the usual case).
            let announced = !wait.is_zero() && self.is_queued_or_running(name);
            let status = if announced {
                None
            } else {
                let status = self.status(name).await?;
                let unsettled = matches!(
                    status.as_ref().map(|s| s.state),
                    Some(State::Pending | State::Processing)
                );
                if !unsettled {
                    return Ok(status);
                }
                status
            };
            let ended = async {
                loop {
                    match finished.recv().await {
                        Ok(done) if done == name => return,
                        Ok(_) => {}
                        // Missed some names (or shutting down): look again.
                        Err(_) => return,
                    }
                }
            };
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return match status {
                    Some(status) => Ok(Some(status)),
                    None => self.status(name).await,
                };
            }
        }
    }

    fn is_queued_or_running(&self, name: &str) -> bool {
        self.queued.lock().unwrap().contains(name) || self.running.lock().unwrap().contains(name)
    }

    /// Queues every raw object without a matching output; returns how many were queued.
    pub async fn reconcile(&self) -> Result<usize> {
        let mut queued = 0;
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.config.initial_bucket)
            .prefix(names::RAW_PREFIX)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.aws_context(format!("s3:ListObjectsV2 {}", self.config.initial_bucket))?;
            for object in page.contents() {
                let Some(name) = object.key().and_then(|k| k.strip_prefix(names::RAW_PREFIX))
                else {
                    continue;
                };
                if self.queued.lock().unwrap().contains(name)
                    || self.running.lock().unwrap().contains(name)
                {
                    continue;
                }
                let Some(raw) = self.head_raw(name).await? else {
                    continue;
                };
                if !self.output_matches(name, &raw).await? && self.enqueue_if_room(name) {
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        processor: &dyn Processor,
        input: &[u8],
    ) -> (io::Result<Vec<u8>>, HashMap<String, String>) {
        run_in_chunks(processor, input, usize::MAX).await
    }

    /// Reads of at most `chunk` bytes each.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut TaskContext<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = self
                .data
                .len()
                .min(self.at + buf.remaining().min(self.chunk));
            buf.put_slice(&self.data[self.at..end]);
            self.at = end;
            Poll::Ready(Ok(()))
        }
    }

    async fn run_in_chunks(
        processor: &dyn Processor,
        input: &[u8],
        chunk: usize,
    ) -> (io::Result<Vec<u8>>, HashMap<String, String>) {
        let stats = Arc::new(Mutex::new(HashMap::new()));
        let input = Trickle {
            data: input.to_vec(),
            at: 0,
            chunk,
        };
        let mut output = processor.process(Box::new(input), stats.clone());
        let mut bytes = Vec::new();
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(err) => return (Err(err), stats.lock().unwrap().clone()),
            }
        }
        (Ok(bytes), stats.lock().unwrap().clone())
    }

    const JSON_LINES: JsonLines = JsonLines { max_line: 1024 };

    #[tokio::test]
    async fn jsonl_refuses_a_line_longer_than_the_limit_without_buffering_it() {
        let mut input = b"{\"a\":1}\n\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 4096));
        input.extend_from_slice(b"\"\n");
        // In one chunk (checked whole) and in small ones (refused while accumulating).
        let (out, _) = run(&JSON_LINES, &input).await;
        let err = out.map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "line 2 is longer than MAX_LINE_BYTES (1024 bytes)");
        let (out, _) = run_in_chunks(&JSON_LINES, &input, 100).await;
        let err = out.map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "line 2 is longer than MAX_LINE_BYTES (1024 bytes)");
        let mut fits = b"\"".to_vec();
        fits.extend(std::iter::repeat_n(b'x', 1000));
        fits.extend_from_slice(b"\"\n");
        assert!(run(&JSON_LINES, &fits).await.0.is_ok());
    }

    #[tokio::test]
    async fn jsonl_counts_lines_and_names_the_first_bad_one() {
        let (out, stats) = run(&JSON_LINES, b"{\"a\":1}\n[2]\n\"x\"\n").await;
        assert_eq!(out.unwrap(), b"{\"a\":1}\n[2]\n\"x\"\n");
        assert_eq!(stats["lines"], "3");
        let (out, _) = run(&JSON_LINES, b"{\"a\":1}\r\n{\"b\":2}").await;
        assert!(out.is_ok());
        let (out, stats) = run(&JSON_LINES, b"{\"a\":1}\n{oops}\n{\"c\":3}\n").await;
        let err = out.unwrap_err().to_string();
        assert!(err.starts_with("line 2 is not valid JSON"), "{err}");
        assert!(!stats.contains_key("lines"));
        let (out, _) = run(&JSON_LINES, b"{}\n\n{}\n").await;
        assert!(out.unwrap_err().to_string().starts_with("line 2"));
    }

    #[tokio::test]
    async fn gunzip_inflates_and_rejects_garbage() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&b"hello gzip ".repeat(1000)).unwrap();
        let gz = encoder.finish().unwrap();
        let gunzip = Gunzip {
            max_output: u64::MAX,
            max_ratio: 100,
        };
        let (out, _) = run(&gunzip, &gz).await;
        assert_eq!(out.unwrap(), b"hello gzip ".repeat(1000));
        let (out, _) = run(&gunzip, b"not gzip at all").await;
        assert!(out.is_err());
    }

    #[tokio::test]
    async fn gunzip_refuses_bombs_by_size_and_by_ratio() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 64 * 1024 * 1024]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 100 * 1024, "{} bytes", bomb.len());

        let by_size = Gunzip {
            max_output: 1024 * 1024,
            max_ratio: u64::MAX,
        };
        let err = run(&by_size, &bomb).await.0.unwrap_err().to_string();
        assert!(err.contains("MAX_OUTPUT_SIZE"), "{err}");

        let by_ratio = Gunzip {
            max_output: u64::MAX,
            max_ratio: 100,
        };
        let err = run(&by_ratio, &bomb).await.0.unwrap_err().to_string();
        assert!(err.contains("MAX_EXPANSION_RATIO"), "{err}");

        // Within both bounds, the same bomb inflates.
        let wide = Gunzip {
            max_output: 64 * 1024 * 1024,
            max_ratio: 1_000_000,
        };
        assert_eq!(run(&wide, &bomb).await.0.unwrap().len(), 64 * 1024 * 1024);
    }
}
