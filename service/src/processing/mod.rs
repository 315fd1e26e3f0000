//! initial bucket → decrypt → process → final bucket: the pipeline and how work reaches it.
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
mod reconcile;
mod records;
mod reprocess;
mod run;
pub mod status;
mod waiting;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::decrypt::Decryptor;
use crate::metrics::Metrics;
use crate::queue::WorkQueue;
use crate::store::{Record, Store};
use crate::upload;
use processors::{Processor, processor};
pub use reprocess::{Reprocessed, TooSoon};
pub use status::{FileStatus, State};
pub use waiting::TooManyWaiters;

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
}
