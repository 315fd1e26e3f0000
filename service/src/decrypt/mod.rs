//! Envelope-encrypted payloads in the AWS Encryption SDK message format (what
//! `aws-encryption-cli` and every AWS Encryption SDK produce), decrypted with the official
//! Rust ESDK and a strict KMS keyring: only the configured key ARN may unwrap a data key.
//! The client keeps the SDK's default commitment policy (RequireEncryptRequireDecrypt), so
//! only key-committing algorithm suites are accepted.
//!
//! The SDK is synchronous code that bridges to async KMS calls by blocking its thread
//! (`block_in_place` + `block_on`), holding its keyring's mutex meanwhile, and it walks
//! frames and data keys recursively. So it never runs on the service's async workers:
//! a pool of its own threads (see [`pool`]) runs it, each thread with its own keyring and a
//! stack sized for the largest message [`message::Limits`] admits, and every message is
//! checked against those limits before the SDK sees it.

mod kms_outcome;
mod message;
mod pool;

use anyhow::{Context as _, Result, anyhow};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use message::{HEADER_LEN, Limits, Refused, Shape, inspect, looks_encrypted};
pub use pool::{KmsFailure, stack_size};

#[derive(Clone)]
pub struct Decryptor {
    pool: Arc<pool::Pool>,
    key_arn: Arc<str>,
    limits: Limits,
    /// KiB a decryption may take (read, waiting for a thread, decrypting, its plaintext not
    /// yet consumed), whatever the number of files processed at once: [`WEIGHT`] times the
    /// largest message allowed.
    memory_kib: Arc<Semaphore>,
    budget_kib: u32,
}

/// A decrypted payload. Its share of the memory budget returns when it is dropped, that is
/// once the processor has consumed it, not when decryption ends.
pub struct Plaintext {
    bytes: std::io::Cursor<Vec<u8>>,
    _budget: OwnedSemaphorePermit,
}

impl AsyncRead for Plaintext {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.bytes).poll_read(cx, buf)
    }
}

/// What a decryption holds at its peak, in multiples of its message's size: the ciphertext
/// read, the Encryption SDK's own copies (its Dafny-generated code converts the message and
/// the plaintext between representations) and the plaintext. Measured at 6.2 to 6.3 times
/// for 4 and 15 MiB messages (peak resident memory, debug and release builds alike); 7
/// leaves a margin.
pub const WEIGHT: u64 = 7;

/// What a message of `size` bytes weighs in the memory budget, in KiB.
fn weight_kib(size: u64) -> u32 {
    u32::try_from(size.saturating_mul(WEIGHT).div_ceil(1024))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// How the decryption pool is sized.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The largest message ever decrypted (MAX_ENCRYPTED_SIZE).
    pub max_message_size: u64,
    /// Threads decrypting at once (DECRYPT_THREADS).
    pub threads: usize,
    pub limits: Limits,
}

impl Decryptor {
    pub async fn new(
        kms: aws_sdk_kms::Client,
        key_arn: &str,
        settings: Settings,
    ) -> Result<Decryptor> {
        let pool = pool::Pool::start(kms, key_arn, settings.threads, &settings.limits).await?;
        let budget_kib = weight_kib(settings.max_message_size);
        Ok(Decryptor {
            pool: Arc::new(pool),
            key_arn: key_arn.into(),
            limits: settings.limits,
            memory_kib: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
        })
    }

    /// Reads a whole message of `size` bytes (after its already-read `header`) and decrypts
    /// it. Its share of the memory budget is taken before reading and held by the plaintext.
    /// A message outside the limits is refused before any KMS call.
    pub async fn decrypt_from<R>(
        &self,
        header: Vec<u8>,
        reader: &mut R,
        size: u64,
    ) -> Result<Plaintext>
    where
        R: AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt as _;
        let kib = weight_kib(size).min(self.budget_kib);
        let budget = self.memory_kib.clone().acquire_many_owned(kib).await?;
        // Read into exactly its size: a growing buffer would briefly hold twice the message.
        let mut message = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        message.extend_from_slice(&header);
        reader
            .read_to_end(&mut message)
            .await
            .context("reading the encrypted object")?;
        inspect(&message, &self.limits, &self.key_arn)?;
        let plaintext = self
            .pool
            .run(pool::Work::Decrypt(message))
            .await
            .context("decrypting the Encryption SDK message")?;
        Ok(Plaintext {
            bytes: std::io::Cursor::new(plaintext),
            _budget: budget,
        })
    }

    /// Encrypts with the same keyring and default (committing) suite; used by tests and the
    /// smoke checks to produce payloads as any ESDK client would. `frame_length`: the SDK's
    /// default (4096 bytes) if `None`.
    pub async fn encrypt(&self, plaintext: Vec<u8>, frame_length: Option<u32>) -> Result<Vec<u8>> {
        self.pool
            .run(pool::Work::Encrypt {
                plaintext,
                frame_length,
            })
            .await
            .map_err(|e| anyhow!("encrypting: {e:#}"))
    }
}

/// Defaults of the limits (see `Config`).
pub const DEFAULT_MAX_DATA_KEYS: u16 = 3;
pub const DEFAULT_MAX_FRAMES: u32 = 4200;
pub const DEFAULT_THREADS: usize = 2;
/// Encryption context pairs accepted; not configurable (the SDK and CLI add one or two).
pub const MAX_CONTEXT_PAIRS: u16 = 64;

impl Settings {
    /// The service's defaults for messages of at most `max_message_size` bytes.
    pub fn defaults(max_message_size: u64) -> Settings {
        Settings {
            max_message_size,
            threads: DEFAULT_THREADS,
            limits: Limits {
                max_data_keys: DEFAULT_MAX_DATA_KEYS,
                max_frames: DEFAULT_MAX_FRAMES,
                max_context_pairs: MAX_CONTEXT_PAIRS,
            },
        }
    }
}
