//! The reconciliation scan: every raw object without a matching output is queued again, so
//! nothing an event or a restart missed stays unprocessed.

use anyhow::Result;

use super::Pipeline;

impl Pipeline {
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
