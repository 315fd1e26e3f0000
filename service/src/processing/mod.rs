//! initial bucket → decrypt → process → final bucket.
//!
//! A file is processed iff the final bucket has no output (and no failure record) whose
//! recorded source ETag/version matches the current raw object. Work comes from one of two
//! places. With a shared queue (QUEUE_URL), it comes from the initial bucket's events,
//! consumed by any number of instances (consumer.rs). Without one, uploads are queued in
//! this process at once. Either way, a reconciliation scan at start-up and every few minutes
//! catches what was missed. Output writes are conditional on what the key held when the
//! run looked, so racing runs cannot leave a wrong output. Everything is streamed except
//! Encryption SDK messages, which the SDK decrypts in memory (bounded by
//! MAX_ENCRYPTED_SIZE).

mod consumer;
pub mod processors;
pub mod status;
mod waiting;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use futures_util::StreamExt;
use futures_util::stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::aws::Failure;
use crate::config::Config;
use crate::decrypt::{self, Decryptor};
use crate::metrics::Metrics;
use crate::names::{meta, metadata_text, metadata_value};
use crate::queue::WorkQueue;
use crate::store::{OutputState, RawInfo, Reader, Record, Store, now_rfc3339};
use crate::upload::{self, Precondition, UploadError};
use processors::{Processor, Tap, processor};
pub use status::{FileStatus, State};
pub use waiting::TooManyWaiters;

/// `stream`, calling `done` once it has ended (not if it fails or is dropped first); an error
/// `done` returns is the stream's last item, so what consumes the stream fails with it.
fn on_end<S, T, F>(stream: S, done: F) -> impl futures_util::Stream<Item = io::Result<T>>
where
    S: futures_util::Stream<Item = io::Result<T>>,
    F: FnOnce() -> io::Result<()>,
{
    let mut done = Some(done);
    stream.chain(stream::poll_fn(move |_| {
        Poll::Ready(done.take().and_then(|done| done().err()).map(Err))
    }))
}

/// How long an output without its metadata counts as another run's, being finished: its
/// metadata copy may take two attempts of the longest copy.
const UNFINISHED_OUTPUT_GRACE: std::time::Duration =
    std::time::Duration::from_secs(2 * crate::aws::S3_COPY_TIMEOUT.as_secs());

/// A failure that was not the file's: the next scan (or a reprocess) tries again.
fn retryable(record: &Record) -> bool {
    matches!(record.code.as_deref(), Some(TRANSIENT | ACCESS_DENIED))
}

const TRANSIENT: &str = "transient";
const INTEGRITY: &str = "integrity";
const ACCESS_DENIED: &str = "access_denied";

/// Why a run failed, for its record: see [`Record::code`].
fn failure_code(err: &anyhow::Error, source_failed: bool) -> &'static str {
    if err.is::<Quarantined>() {
        return "quarantined";
    }
    if err.is::<IntegrityMismatch>() {
        return INTEGRITY;
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

/// What a reprocess request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reprocessed {
    /// No such file.
    Unknown,
    /// Its failure was forgotten and it was queued again.
    Queued,
    /// Nothing to do: it is in this state.
    Already(State),
}

/// How often one file may be asked to be reprocessed (per instance).
const REPROCESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A reprocess request came within REPROCESS_INTERVAL of the last one for the file.
#[derive(Debug)]
pub struct TooSoon(pub std::time::Duration);

impl std::fmt::Display for TooSoon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this file was asked to be reprocessed less than {} s ago; ask again later",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for TooSoon {}

/// The raw bytes read are not the ones the upload was acknowledged for: their SHA-256 (or
/// size) differs from what the raw object's metadata records. No output is written.
#[derive(Debug)]
struct IntegrityMismatch(String);

impl std::fmt::Display for IntegrityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "integrity: {}", self.0)
    }
}

impl std::error::Error for IntegrityMismatch {}

/// What was read of a raw object against what its upload recorded; `Err` names the
/// difference. An object without a recorded digest (not written by this service) has only
/// its size to agree with.
fn verify_raw(raw: &RawInfo, read: u64, sha256: &str) -> Result<(), String> {
    if read != raw.size as u64 {
        return Err(format!(
            "read {read} bytes of the raw object, whose size is {}",
            raw.size
        ));
    }
    match raw.sha256.as_deref() {
        Some(recorded) if recorded != sha256 => Err(format!(
            "the raw bytes' SHA-256 is {sha256}, the upload recorded {recorded}"
        )),
        _ => Ok(()),
    }
}

/// How a run failed, for its record.
struct Failed {
    error: String,
    code: &'static str,
    request_id: Option<String>,
    attempts: u32,
    tries: u32,
}

/// The queue delivery a run is for: its count goes into a failure record.
#[derive(Clone, Copy, Default)]
pub struct Delivered {
    pub receives: u32,
    pub max_receives: Option<u32>,
}

/// How a processing run ended, when it did not fail.
pub enum Ran {
    /// This run wrote the output.
    Processed(upload::Uploaded),
    /// Nothing to do: no raw object, or an output of this version.
    Done,
    /// The raw object's current version is not the one asked for (a newer one replaced it).
    Superseded,
    /// A failure of the file's own is recorded for this version: it is not tried again.
    FailedBefore(Record),
    /// Another writer changed the output while this run made its own (a conditional write
    /// failed): nothing of this run was kept.
    LostRace,
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

/// A conditional write of the output failed: another writer got there first.
#[derive(Debug)]
struct LostRace(String);

impl std::fmt::Display for LostRace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: another writer changed the output first", self.0)
    }
}

impl std::error::Error for LostRace {}

pub struct Pipeline {
    /// The shared queue, when this instance takes its work from one (QUEUE_URL).
    shared: Option<Arc<WorkQueue>>,
    /// The buckets, for processing (S3_ATTEMPT_TIMEOUT_SECS per request).
    store: Arc<Store>,
    /// The buckets, for status requests and other calls a client waits for
    /// (INTERACTIVE_TIMEOUT_SECS per call).
    lookups: Arc<Store>,
    config: Arc<Config>,
    processor: Arc<dyn Processor>,
    decryptor: Decryptor,
    metrics: Arc<Metrics>,
    queue: mpsc::Sender<String>,
    /// Names queued or being processed, so nothing is queued twice.
    queued: Mutex<HashSet<String>>,
    /// Accepted files that found the queue full (uploads that raced for its last place, and
    /// re-queued timeouts): moved into the queue as soon as a worker frees a place.
    overflow: Mutex<std::collections::VecDeque<String>>,
    running: Mutex<HashSet<String>>,
    /// Names whose processing run just ended, for status requests that wait for it.
    finished: tokio::sync::broadcast::Sender<String>,
    waiting: waiting::Waiting,
    /// When each file was last asked to be reprocessed.
    reprocess_asked: Mutex<HashMap<String, std::time::Instant>>,
}

impl Pipeline {
    /// Starts the workers (or, with a shared queue, its consumer) and the periodic
    /// reconciliation scan.
    pub fn start(
        store: Arc<Store>,
        lookups: Arc<Store>,
        config: Arc<Config>,
        decryptor: Decryptor,
        metrics: Arc<Metrics>,
        shared: Option<Arc<WorkQueue>>,
    ) -> Arc<Pipeline> {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let pipeline = Arc::new(Pipeline {
            shared: shared.clone(),
            store,
            lookups,
            processor: processor(&config),
            config: config.clone(),
            decryptor,
            metrics,
            queue: tx,
            queued: Mutex::new(HashSet::new()),
            overflow: Mutex::new(std::collections::VecDeque::new()),
            running: Mutex::new(HashSet::new()),
            finished: tokio::sync::broadcast::channel(1024).0,
            waiting: waiting::Waiting::new(config.max_status_waiters as usize),
            reprocess_asked: Mutex::default(),
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let workers = if shared.is_some() {
            0
        } else {
            config.processing_concurrency
        };
        if let Some(queue) = shared {
            tokio::spawn(consumer::consume(pipeline.clone(), queue));
        }
        for _ in 0..workers {
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
    /// refused (503) rather than acknowledged and left to a scan minutes later. A shared
    /// queue always has room.
    pub fn has_room(&self) -> bool {
        self.shared.is_some()
            || (self.queue.capacity() > 0 && self.overflow.lock().unwrap().is_empty())
    }

    /// A raw file was stored: queued here, or, with a shared queue, left to the event S3
    /// sends it (whichever instance receives it processes the file).
    pub fn accepted(&self, name: &str) {
        if self.shared.is_none() {
            self.enqueue(name);
        }
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
        Ok(match self.process_delivered(name, None, None).await? {
            Ran::Processed(uploaded) => Some(uploaded),
            _ => None,
        })
    }

    /// [`Pipeline::process`], for a queue delivery when `delivered` is set, and for raw
    /// version `version` when one is named.
    async fn process_delivered(
        &self,
        name: &str,
        version: Option<&str>,
        delivered: Option<Delivered>,
    ) -> Result<Ran> {
        let Some(raw) = self.store.head_raw(name).await? else {
            return Ok(Ran::Done);
        };
        if let (Some(wanted), Some(current)) = (version, raw.version_id.as_deref())
            && wanted != current
        {
            return Ok(Ran::Superseded);
        }
        // With other writers, an unfinished output may be another run's: its message comes
        // back after a pause, and finds it done.
        let grace = self.shared.as_ref().map(|_| UNFINISHED_OUTPUT_GRACE);
        let precondition = match self.store.output_state(name, &raw, grace).await? {
            OutputState::Made(_) => return Ok(Ran::Done),
            OutputState::BeingWritten => return Ok(Ran::LostRace),
            OutputState::Replaceable(precondition) => precondition,
        };
        let record = self.store.record(name).await?;
        let before = match record {
            Some(record) if record.is_for(&raw) => {
                if record.error.is_some() && !retryable(&record) {
                    return Ok(Ran::FailedBefore(record));
                }
                Some(record.attempts)
            }
            Some(_) => Some(0),
            None => None,
        };
        let had_record = before.is_some();
        let before = before.unwrap_or(0);
        let mut attempts = Attempts {
            before,
            recorded: false,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let source_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let err = match self
                .transform(name, &raw, &precondition, &mut attempts, &source_failed)
                .await
            {
                Ok(uploaded) => {
                    // An attempt record, or an earlier failure, is stale now; with no record
                    // there is nothing to delete (saves a request per file).
                    if had_record || attempts.recorded {
                        self.store.clear_record(name).await?;
                    }
                    return Ok(Ran::Processed(uploaded));
                }
                Err(err) => err,
            };
            if err.is::<LostRace>() {
                return Ok(Ran::LostRace);
            }
            if err.is::<DecryptionTimedOut>() {
                // The attempt stays counted; the next run quarantines the file once they
                // are used up. A queue delivers the message again by itself.
                if self.shared.is_none() {
                    self.enqueue(name);
                }
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
            self.record_failure(name, &raw, failed, delivered).await?;
            return Err(err);
        }
    }

    async fn transform(
        &self,
        name: &str,
        raw: &RawInfo,
        precondition: &Precondition,
        attempts: &mut Attempts,
        source_failed: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<upload::Uploaded> {
        let source = self.store.open_raw(name, raw).await?;
        let hasher = Arc::new(Mutex::new((Sha256::new(), 0u64)));
        // Hashes and counts what is read, and marks a failed read (S3 cut the body off): such
        // a run fails through no fault of the file.
        let mut reader = Tap {
            inner: source,
            observe: {
                let (hasher, failed) = (hasher.clone(), source_failed.clone());
                move |read: Option<&[u8]>| match read {
                    Some(bytes) => {
                        let mut hasher = hasher.lock().unwrap();
                        hasher.0.update(bytes);
                        hasher.1 += bytes.len() as u64;
                    }
                    None => failed.store(true, std::sync::atomic::Ordering::Relaxed),
                }
            },
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
        // Once the output has ended, and before it is committed: the raw bytes read must be
        // the ones acknowledged, else the output fails (and nothing is written). Then the raw
        // digest and the completion time.
        let mismatch = Arc::new(Mutex::new(None));
        let output = on_end(output, {
            let (late, hasher, mismatch) = (late.clone(), hasher.clone(), mismatch.clone());
            let raw = raw.clone();
            move || {
                let (digest, read) = {
                    let hasher = hasher.lock().unwrap();
                    (hex::encode(hasher.0.clone().finalize()), hasher.1)
                };
                if let Err(why) = verify_raw(&raw, read, &digest) {
                    *mismatch.lock().unwrap() = Some(why.clone());
                    return Err(io::Error::other(why));
                }
                let mut late = late.lock().unwrap();
                late.insert(meta::SOURCE_SHA256.into(), digest);
                late.insert(meta::PROCESSED_AT.into(), now_rfc3339());
                Ok(())
            }
        });

        self.store
            .put_output(
                name,
                raw,
                precondition.clone(),
                self.processor.name(),
                self.processor.content_type(raw.content_type.as_deref()),
                late,
                output,
            )
            .await
            .map_err(|err| {
                if let Some(why) = mismatch.lock().unwrap().take() {
                    return IntegrityMismatch(why).into();
                }
                match err {
                    UploadError::Body(message) => {
                        anyhow!("{} processor: {message}", self.processor.name())
                    }
                    // The output stalls only when reading the raw object does.
                    UploadError::TooSlow(message) => {
                        source_failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        anyhow!("reading the raw object stalled: {message}")
                    }
                    UploadError::Aws(err) => err,
                    UploadError::Conflict(call) => LostRace(call).into(),
                    other => anyhow!("{other}"),
                }
            })
    }

    /// The failure recorded for exactly this raw version, if its processing failed.
    async fn failure(&self, name: &str, raw: &RawInfo) -> Result<Option<Record>> {
        Ok(self
            .store
            .record(name)
            .await?
            .filter(|record| record.is_for(raw) && record.error.is_some()))
    }

    /// Whether this version is settled: processed, or failed for a reason of its own (a
    /// transient or access failure is tried again).
    async fn output_matches(&self, name: &str, raw: &RawInfo) -> Result<bool> {
        if self.store.head_processed(name, raw).await?.is_some() {
            return Ok(true);
        }
        Ok(self
            .failure(name, raw)
            .await?
            .is_some_and(|record| !retryable(&record)))
    }

    /// Forgets a file's failure (or quarantine, or its count of unfinished decryptions) and
    /// queues it again. A file that is processed, or queued or being processed here, is left
    /// alone: asking again costs no second run. At most one request per file and
    /// REPROCESS_INTERVAL is taken, so requests cannot pile up runs where another instance
    /// has the file.
    pub async fn reprocess(&self, name: &str) -> Result<Reprocessed> {
        {
            let now = std::time::Instant::now();
            let mut asked = self.reprocess_asked.lock().unwrap();
            if asked
                .get(name)
                .is_some_and(|at| now.duration_since(*at) < REPROCESS_INTERVAL)
            {
                return Err(TooSoon(REPROCESS_INTERVAL).into());
            }
            if asked.len() >= 10_000 {
                asked.retain(|_, at| now.duration_since(*at) < REPROCESS_INTERVAL);
            }
            asked.insert(name.to_string(), now);
        }
        if self.running.lock().unwrap().contains(name) {
            return Ok(Reprocessed::Already(State::Processing));
        }
        if self.queued.lock().unwrap().contains(name) {
            return Ok(Reprocessed::Already(State::Pending));
        }
        let Some(status) = self.status(name).await? else {
            return Ok(Reprocessed::Unknown);
        };
        if status.state == State::Processed {
            return Ok(Reprocessed::Already(status.state));
        }
        self.lookups.clear_record(name).await?;
        match &self.shared {
            Some(queue) => {
                queue
                    .send(
                        &self.config.initial_bucket,
                        name,
                        status.raw.version_id.as_deref(),
                        std::time::SystemTime::now(),
                    )
                    .await?
            }
            None => self.enqueue(name),
        }
        Ok(Reprocessed::Queued)
    }

    async fn record_failure(
        &self,
        name: &str,
        raw: &RawInfo,
        failed: Failed,
        delivered: Option<Delivered>,
    ) -> Result<()> {
        self.metrics.failed_with(failed.code);
        self.store
            .put_record(
                name,
                &Record {
                    error: Some(failed.error),
                    failed_at: Some(now_rfc3339()),
                    code: Some(failed.code.to_string()),
                    tries: failed.tries,
                    request_id: failed.request_id,
                    receives: delivered.map(|d| d.receives),
                    max_receives: delivered.and_then(|d| d.max_receives),
                    ..self.new_record(name, raw, failed.attempts)
                },
            )
            .await
    }

    /// Counts a decryption of this version as started, before it starts.
    async fn record_attempt(&self, name: &str, raw: &RawInfo, attempts: u32) -> Result<()> {
        self.store
            .put_record(name, &self.new_record(name, raw, attempts))
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
            receives: None,
            max_receives: None,
        }
    }

    /// Status of a file, or `None` if there is no raw object.
    pub async fn status(&self, name: &str) -> Result<Option<FileStatus>> {
        let Some(raw) = self.lookups.head_raw(name).await? else {
            return Ok(None);
        };
        let processed = self.lookups.head_processed(name, &raw).await?;
        let failure = match processed {
            Some(_) => None,
            None => self
                .lookups
                .record(name)
                .await?
                .filter(|record| record.is_for(&raw) && record.error.is_some()),
        };
        let (state, failure) = if processed.is_some() {
            (State::Processed, None)
        } else if let Some(record) = failure {
            (State::Failed, Some(record))
        } else if self.running.lock().unwrap().contains(name) {
            (State::Processing, None)
        } else {
            (State::Pending, None)
        };
        let tries = failure.as_ref().map(|record| record.tries);
        let (receives, max_receives) = failure
            .as_ref()
            .map(|record| (record.receives, record.max_receives))
            .unwrap_or_default();
        let dead_lettered = match (receives, max_receives) {
            (Some(receives), Some(max)) => Some(receives >= max),
            _ => None,
        };
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
            receives,
            max_receives,
            dead_lettered,
        }))
    }

    /// At shutdown: the shared queue's messages this instance still holds become visible
    /// again at once, for another instance (their files are not finished here).
    pub async fn hand_back_messages(&self) {
        if let Some(queue) = &self.shared {
            let handed = queue.hand_back().await;
            if handed > 0 {
                tracing::info!(
                    messages = handed,
                    "handed unfinished queue messages back for another instance"
                );
            }
        }
    }

    fn is_queued_or_running(&self, name: &str) -> bool {
        self.queued.lock().unwrap().contains(name) || self.running.lock().unwrap().contains(name)
    }

    /// Queues every raw object without a matching output; returns how many were queued.
    /// With a shared queue, a file is sent to it only once it has waited RECONCILE_GRACE_SECS
    /// for its output, and only while the queue is empty: a message for it could then still
    /// be on its way or in flight, and two deliveries of one file would be double work.
    pub async fn reconcile(&self) -> Result<usize> {
        let now = std::time::SystemTime::now();
        let cutoff = now - std::time::Duration::from_secs(self.config.reconcile_grace_secs);
        if let Some(queue) = &self.shared {
            self.store
                .abort_orphaned_uploads(self.config.orphan_upload_age())
                .await;
            if !queue.depth().await?.is_empty() {
                return Ok(0);
            }
        }
        let mut queued = 0;
        let mut cursor = None;
        loop {
            let (names, next) = self.store.raw_names(cursor).await?;
            for listed in &names {
                let name = &listed.name;
                if self.is_queued_or_running(name) {
                    continue;
                }
                let young = listed.last_modified.is_some_and(|t| t > cutoff);
                if self.shared.is_some() && young {
                    continue;
                }
                let Some(raw) = self.store.head_raw(name).await? else {
                    continue;
                };
                if self.output_matches(name, &raw).await? {
                    continue;
                }
                match &self.shared {
                    Some(queue) => {
                        let created = listed.last_modified.unwrap_or(now);
                        queue
                            .send(
                                &self.config.initial_bucket,
                                name,
                                raw.version_id.as_deref(),
                                created,
                            )
                            .await?;
                        queued += 1;
                    }
                    None => {
                        if self.enqueue_if_room(name) {
                            queued += 1;
                        }
                    }
                }
            }
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(queued)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn the_end_hook_runs_once_after_the_last_item_and_not_before() {
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let items = stream::iter([Ok(1), Ok(2)]);
        let mut hooked = std::pin::pin!(on_end(items, move || {
            assert!(!flag.swap(true, Ordering::SeqCst), "called twice");
            Ok(())
        }));
        assert_eq!(hooked.next().await.unwrap().unwrap(), 1);
        assert_eq!(hooked.next().await.unwrap().unwrap(), 2);
        assert!(!ended.load(Ordering::SeqCst));
        assert!(hooked.next().await.is_none());
        assert!(ended.load(Ordering::SeqCst));
        assert!(hooked.next().await.is_none());
    }

    #[tokio::test]
    async fn an_end_hook_that_fails_ends_the_stream_with_its_error() {
        let items = stream::iter([Ok::<_, io::Error>(1)]);
        let mut hooked = std::pin::pin!(on_end(items, || Err(io::Error::other("differs"))));
        assert_eq!(hooked.next().await.unwrap().unwrap(), 1);
        let err = hooked.next().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "differs");
        assert!(hooked.next().await.is_none());
    }

    fn raw_of(size: i64, sha256: Option<&str>) -> RawInfo {
        RawInfo {
            size,
            etag: "e".into(),
            version_id: None,
            sha256: sha256.map(str::to_string),
            last_modified: None,
            sse: None,
            kms_key_id: None,
            content_type: None,
        }
    }

    #[test]
    fn raw_bytes_must_have_the_recorded_size_and_digest() {
        assert!(verify_raw(&raw_of(3, Some("abc")), 3, "abc").is_ok());
        let other = verify_raw(&raw_of(3, Some("abc")), 3, "def").unwrap_err();
        assert!(other.contains("def") && other.contains("abc"), "{other}");
        let short = verify_raw(&raw_of(3, Some("abc")), 2, "abc").unwrap_err();
        assert!(short.contains("read 2 bytes"), "{short}");
        // Not written by this service: only the size can be checked.
        assert!(verify_raw(&raw_of(3, None), 3, "anything").is_ok());
        assert!(verify_raw(&raw_of(3, None), 0, "anything").is_err());
    }
}
