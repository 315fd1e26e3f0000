//! POST .../reprocess: a file's failure forgotten and the file queued again, at most once
//! per file and REPROCESS_INTERVAL.

use anyhow::Result;

use super::{Pipeline, State};

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

impl Pipeline {
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
}
