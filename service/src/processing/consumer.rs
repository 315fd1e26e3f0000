//! Work from the shared queue: any number of instances receive the initial bucket's events
//! and process the files they name. A message is deleted only once its file version is
//! settled (its output and metadata written, or it was superseded or deleted); while a file
//! is processed its message is kept hidden, so an instance that dies mid-file loses nothing:
//! the message comes back after the visibility timeout, to whichever instance asks next.
//! A failed file's message is hidden for a backoff and delivered again, until the queue's
//! redrive policy moves it to the dead-letter queue.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use tokio::sync::Semaphore;

use super::{Delivered, Pipeline, Ran};
use crate::metrics::MessageOutcome;
use crate::queue::{Body, Delivery, FileEvent, MAX_BATCH, WorkQueue};
use crate::store::Record;

/// How often the queue's depth is read for the metrics.
const DEPTH_EVERY: Duration = Duration::from_secs(15);
/// The pause after a failed receive (SQS unreachable, or access denied).
const RECEIVE_PAUSE: Duration = Duration::from_secs(5);
/// How soon a message whose output write lost a race is delivered again.
const RACE_PAUSE: Duration = Duration::from_secs(5);

/// What becomes of a message.
#[derive(Debug, PartialEq)]
enum Verdict {
    Delete,
    /// Delivered again after this long.
    Release(Duration),
}

/// Receives messages while fewer than PROCESSING_CONCURRENCY are being handled; runs for
/// the life of the process.
pub(super) async fn consume(pipeline: Arc<Pipeline>, queue: Arc<WorkQueue>) {
    let slots = Arc::new(Semaphore::new(pipeline.config.processing_concurrency));
    let mut depth_read: Option<Instant> = None;
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        if queue.is_stopping() {
            return;
        }
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        if depth_read.is_none_or(|at| at.elapsed() >= DEPTH_EVERY) {
            depth_read = Some(Instant::now());
            match queue.depth().await {
                Ok(depth) => pipeline.metrics.queue_seen(depth.visible, depth.in_flight),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "reading the queue's depth failed")
                }
            }
        }
        let deliveries = match queue.receive(permits.len()).await {
            Ok(deliveries) => deliveries,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "receiving from the queue failed; trying again");
                tokio::time::sleep(RECEIVE_PAUSE).await;
                continue;
            }
        };
        for delivery in deliveries {
            let Some(permit) = permits.pop() else {
                break;
            };
            let (pipeline, queue) = (pipeline.clone(), queue.clone());
            tokio::spawn(async move {
                handle(&pipeline, &queue, delivery).await;
                drop(permit);
            });
        }
    }
}

async fn handle(pipeline: &Pipeline, queue: &Arc<WorkQueue>, delivery: Delivery) {
    let metrics = &pipeline.metrics;
    metrics.message(MessageOutcome::Received);
    if delivery.receives > 1 {
        metrics.message(MessageOutcome::Redelivered);
    }
    let delivered = Delivered {
        receives: delivery.receives,
        max_receives: queue.max_receives,
    };
    let backoff = pipeline.config.queue_retry_backoff(delivery.receives);
    let verdict = match delivery.body {
        Body::Test => Verdict::Delete,
        Body::Unknown(why) => {
            tracing::warn!(
                why,
                receives = delivery.receives,
                "a message that is not an event of the initial bucket's raw files; it goes to the dead-letter queue"
            );
            Verdict::Release(backoff)
        }
        Body::Files(files) => {
            let keeper = keep_hidden(pipeline, queue.clone(), delivery.receipt.clone());
            let mut verdict = Verdict::Delete;
            for file in &files {
                if let Verdict::Release(pause) = pipeline.settle(file, delivered, backoff).await {
                    verdict = Verdict::Release(pause);
                }
            }
            keeper.abort();
            verdict
        }
    };
    let result = match verdict {
        Verdict::Delete => {
            metrics.message(MessageOutcome::Deleted);
            queue.delete(&delivery.receipt).await
        }
        Verdict::Release(pause) => {
            metrics.message(MessageOutcome::Released);
            queue.hide(&delivery.receipt, pause).await
        }
    };
    queue.let_go(&delivery.receipt);
    if let Err(err) = result {
        // The message comes back after its visibility timeout; its file is settled by then
        // or tried again.
        tracing::warn!(error = %format!("{err:#}"), "settling a queue message failed");
    }
}

/// Extends the message's visibility every third of the timeout until aborted, so a file
/// that takes longer than the timeout is not delivered to another instance meanwhile.
fn keep_hidden(
    pipeline: &Pipeline,
    queue: Arc<WorkQueue>,
    receipt: String,
) -> tokio::task::JoinHandle<()> {
    let metrics = pipeline.metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(queue.visibility / 3).await;
            // Handed back at shutdown: hiding it again would undo that.
            if queue.is_stopping() {
                return;
            }
            match queue.hide(&receipt, queue.visibility).await {
                Ok(()) => metrics.message(MessageOutcome::Extended),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "extending a message's visibility failed")
                }
            }
        }
    })
}

impl Pipeline {
    /// Settles one file event: processes the version it names unless that is done,
    /// superseded or failed for good. Errors (S3 unreachable) release the message.
    async fn settle(&self, file: &FileEvent, delivered: Delivered, backoff: Duration) -> Verdict {
        if file.bucket != self.config.initial_bucket {
            tracing::warn!(
                bucket = file.bucket,
                "an event of another bucket; it goes to the dead-letter queue"
            );
            return Verdict::Release(backoff);
        }
        match self.try_settle(file, delivered, backoff).await {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::warn!(
                    name = file.name,
                    receives = delivered.receives,
                    error = %format!("{err:#}"),
                    "processing a queued file failed; its message is delivered again"
                );
                Verdict::Release(backoff)
            }
        }
    }

    async fn try_settle(
        &self,
        file: &FileEvent,
        delivered: Delivered,
        backoff: Duration,
    ) -> Result<Verdict> {
        let name = file.name.as_str();
        self.running.lock().unwrap().insert(name.to_string());
        let started = Instant::now();
        let ran = self
            .process_delivered(name, file.version_id.as_deref(), Some(delivered))
            .await;
        self.running.lock().unwrap().remove(name);
        // No receiver is the normal case: nobody waits.
        let _ = self.finished.send(name.to_string());
        let metrics = &self.metrics;
        match ran {
            Ok(Ran::Processed(_)) => {
                metrics.processing_done(true, started.elapsed());
                if let Some(lag) = file
                    .event_time
                    .and_then(|at| SystemTime::now().duration_since(at).ok())
                {
                    metrics.lag(lag);
                }
                tracing::info!(
                    name,
                    receives = delivered.receives,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "processed"
                );
                Ok(Verdict::Delete)
            }
            Ok(Ran::Done) => {
                metrics.message(MessageOutcome::Duplicate);
                Ok(Verdict::Delete)
            }
            Ok(Ran::Superseded) => {
                metrics.message(MessageOutcome::Superseded);
                Ok(Verdict::Delete)
            }
            Ok(Ran::FailedBefore(record)) => {
                // Not tried again: the message is only counted on towards the dead-letter
                // queue, and the record says how far it got.
                self.note_delivery(name, record, delivered).await?;
                Ok(Verdict::Release(backoff))
            }
            Ok(Ran::LostRace) => {
                // Another writer's output is there: this version's (a duplicate run), or
                // another version's, whose own message settles it; the next delivery says.
                Ok(Verdict::Release(RACE_PAUSE))
            }
            Err(err) => {
                metrics.processing_done(false, started.elapsed());
                tracing::warn!(
                    name,
                    receives = delivered.receives,
                    error = %format!("{err:#}"),
                    "processing failed; its message is delivered again after a backoff"
                );
                Ok(Verdict::Release(backoff))
            }
        }
    }

    /// Records this delivery in a failure record.
    async fn note_delivery(&self, name: &str, record: Record, delivered: Delivered) -> Result<()> {
        let record = Record {
            receives: Some(delivered.receives),
            max_receives: delivered.max_receives,
            ..record
        };
        self.store.put_record(name, &record).await
    }
}
