//! Status requests that wait for a file's processing to end (`status?wait=S`).
//!
//! Waiting is bounded twice. At most MAX_STATUS_WAITERS requests wait at once; past that a
//! request is answered 429 at once, so waiters never hold more than that many of the
//! connection slots that health checks and uploads need. And however many wait on one name,
//! one task looks at it: every waiter watches that task's latest look, so the S3 calls of
//! waiting do not grow with the number of waiters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{Semaphore, watch};

use super::{FileStatus, Pipeline, State};

/// How often a name's look is taken again when other instances may process the file (only
/// this instance's runs announce their end).
const SHARED_STATUS_POLL: Duration = Duration::from_secs(1);

/// Every waiting place is taken: the client should ask again later.
#[derive(Debug)]
pub struct TooManyWaiters(pub usize);

impl std::fmt::Display for TooManyWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} status requests are waiting already (MAX_STATUS_WAITERS); ask again later, or without `wait`",
            self.0
        )
    }
}

impl std::error::Error for TooManyWaiters {}

/// A name's latest look, shared by its waiters: `None` before the first, `Err` when looking
/// failed (each waiter then looks itself, to answer with the reason).
type Look = Option<Result<Option<FileStatus>, ()>>;

/// The task looking at a name: its id (a later task may take the name over) and its looks.
type Looking = (u64, Arc<watch::Sender<Look>>);

/// The places for waiting requests, and the looks being taken.
pub(super) struct Waiting {
    places: Arc<Semaphore>,
    limit: usize,
    looks: Mutex<HashMap<String, Looking>>,
    next_id: AtomicU64,
}

impl Waiting {
    pub(super) fn new(limit: usize) -> Waiting {
        Waiting {
            places: Arc::new(Semaphore::new(limit)),
            limit,
            looks: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }
}

/// Whether a status is final for a waiter: the file is unknown, processed or failed.
fn settled(status: &Option<FileStatus>) -> bool {
    !matches!(
        status.as_ref().map(|s| s.state),
        Some(State::Pending | State::Processing)
    )
}

impl Pipeline {
    /// Status of a file, waiting up to `wait` while it is pending or processing.
    pub async fn wait_for_status(
        self: &Arc<Self>,
        name: &str,
        wait: Duration,
    ) -> Result<Option<FileStatus>> {
        if wait.is_zero() {
            return self.status(name).await;
        }
        let Ok(_place) = self.waiting.places.clone().try_acquire_owned() else {
            return Err(TooManyWaiters(self.waiting.limit).into());
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut looks = self.looks_at(name);
        loop {
            let look = looks.borrow_and_update().clone();
            match &look {
                Some(Ok(status)) if settled(status) => return Ok(status.clone()),
                Some(Err(())) => return self.status(name).await,
                _ => {}
            }
            match tokio::time::timeout_at(deadline, looks.changed()).await {
                Ok(Ok(())) => {}
                // That look ended unsettled (its waiters had all gone as this one came).
                Ok(Err(_)) => looks = self.looks_at(name),
                Err(_) => {
                    return match look {
                        Some(Ok(status)) => Ok(status),
                        _ => self.status(name).await,
                    };
                }
            }
        }
    }

    /// The looks at `name`: those of the task already looking, or of one started now.
    fn looks_at(self: &Arc<Self>, name: &str) -> watch::Receiver<Look> {
        let mut looks = self.waiting.looks.lock().unwrap();
        if let Some((_, sender)) = looks.get(name)
            && !sender.is_closed()
        {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(None);
        let sender = Arc::new(sender);
        let id = self.waiting.next_id.fetch_add(1, Ordering::Relaxed);
        looks.insert(name.to_string(), (id, sender.clone()));
        tokio::spawn(self.clone().keep_looking(name.to_string(), id, sender));
        receiver
    }

    /// Looks at `name` until its status is settled or nobody waits for it: again when a run
    /// of it here ends, and (with a shared queue) every second.
    async fn keep_looking(self: Arc<Self>, name: String, id: u64, looks: Arc<watch::Sender<Look>>) {
        loop {
            // Subscribe before looking, so a run that ends in between is not missed.
            let mut finished = self.finished.subscribe();
            // A run of it here announces its end: there is nothing new to see until then.
            if !self.is_queued_or_running(&name) {
                let look = self.status(&name).await.map_err(|_| ());
                let last = match &look {
                    Ok(status) => settled(status),
                    Err(()) => true,
                };
                looks.send_replace(Some(look));
                if last {
                    break;
                }
            }
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
            let next_poll = async {
                match self.shared {
                    Some(_) => tokio::time::sleep(SHARED_STATUS_POLL).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ended => {}
                _ = next_poll => {}
                _ = looks.closed() => break,
            }
        }
        let mut all = self.waiting.looks.lock().unwrap();
        if all.get(&name).is_some_and(|(current, _)| *current == id) {
            all.remove(&name);
        }
    }
}
