//! One processing run of one file: read the raw object (decrypting an Encryption SDK
//! message), check the bytes are the ones acknowledged, process them into a conditional
//! write of the output, and retry transient failures within the run.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use anyhow::{Context as _, Result, anyhow};
use futures_util::StreamExt;
use futures_util::stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::processors::Tap;
use super::records::{Failed, IntegrityMismatch, Quarantined, TRANSIENT, failure_code, retryable};
use super::{Delivered, Pipeline, Ran};
use crate::decrypt;
use crate::names::meta;
use crate::store::{OutputState, RawInfo, Reader, now_rfc3339};
use crate::upload::{self, Precondition, UploadError};

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
    std::time::Duration::from_secs(2 * aws_clients::S3_COPY_TIMEOUT.as_secs());

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

impl Pipeline {
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
    pub(super) async fn process_delivered(
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
                request_id: aws_clients::aws_call(&err).and_then(|call| call.request_id.clone()),
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
