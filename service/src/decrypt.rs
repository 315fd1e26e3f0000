//! Envelope-encrypted payloads in the AWS Encryption SDK message format (what
//! `aws-encryption-cli` and every AWS Encryption SDK produce), decrypted with the official
//! Rust ESDK and a strict KMS keyring: only the configured key ARN may unwrap a data key.
//! The client keeps the SDK's default commitment policy (RequireEncryptRequireDecrypt), so
//! only key-committing algorithm suites are accepted.

use anyhow::{Context as _, Result, anyhow};
use aws_esdk::client as esdk_client;
use aws_esdk::material_providers::client as mpl_client;
use aws_esdk::material_providers::types::keyring::KeyringRef;
use aws_esdk::material_providers::types::material_providers_config::MaterialProvidersConfig;
use aws_esdk::types::aws_encryption_sdk_config::AwsEncryptionSdkConfig;
use aws_sdk_s3::primitives::Blob;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Algorithm suite ids of message format version 2 (key-committing suites).
const V2_SUITES: [[u8; 2]; 2] = [[0x04, 0x78], [0x05, 0x78]];
/// Algorithm suite ids of message format version 1.
const V1_SUITES: [[u8; 2]; 9] = [
    [0x00, 0x14],
    [0x00, 0x46],
    [0x00, 0x78],
    [0x01, 0x14],
    [0x01, 0x46],
    [0x01, 0x78],
    [0x02, 0x14],
    [0x03, 0x46],
    [0x03, 0x78],
];

/// Bytes needed to recognise a message.
pub const HEADER_LEN: usize = 4;

/// True if `header` starts an Encryption SDK message (version byte, then the algorithm
/// suite id; version 1 has a type byte 0x80 in between).
pub fn looks_encrypted(header: &[u8]) -> bool {
    match header {
        [0x02, a, b, ..] => V2_SUITES.contains(&[*a, *b]),
        [0x01, 0x80, a, b, ..] => V1_SUITES.contains(&[*a, *b]),
        _ => false,
    }
}

#[derive(Clone)]
pub struct Decryptor {
    client: esdk_client::Client,
    keyring: KeyringRef,
    /// KiB of messages and plaintexts in memory, whatever the number of files processed at
    /// once: twice the largest message allowed (its ciphertext, then its plaintext).
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

/// What a message of `size` bytes weighs in the memory budget, in KiB: its ciphertext, then
/// its plaintext.
fn weight_kib(size: u64) -> u32 {
    u32::try_from(size.saturating_mul(2).div_ceil(1024))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl Decryptor {
    /// `max_message_size`: the largest message ever decrypted (MAX_ENCRYPTED_SIZE).
    pub async fn new(
        kms: aws_sdk_kms::Client,
        key_arn: &str,
        max_message_size: u64,
    ) -> Result<Decryptor> {
        let client = esdk_client::Client::from_conf(
            AwsEncryptionSdkConfig::builder()
                .build()
                .map_err(|e| anyhow!("configuring the Encryption SDK: {e:?}"))?,
        )
        .map_err(|e| anyhow!("creating the Encryption SDK client: {e:?}"))?;
        let materials = mpl_client::Client::from_conf(
            MaterialProvidersConfig::builder()
                .build()
                .map_err(|e| anyhow!("configuring material providers: {e:?}"))?,
        )
        .map_err(|e| anyhow!("creating material providers: {e:?}"))?;
        let keyring = materials
            .create_aws_kms_keyring()
            .kms_key_id(key_arn)
            .kms_client(kms)
            .send()
            .await
            .map_err(|e| anyhow!("creating the KMS keyring for {key_arn}: {e:?}"))?;
        let budget_kib = weight_kib(max_message_size);
        Ok(Decryptor {
            client,
            keyring,
            memory_kib: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
        })
    }

    /// Reads a whole message of `size` bytes (after its already-read `header`) and decrypts
    /// it. Its share of the memory budget is taken before reading and held by the plaintext.
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
        let mut message = header;
        reader
            .read_to_end(&mut message)
            .await
            .context("reading the encrypted object")?;
        Ok(Plaintext {
            bytes: std::io::Cursor::new(self.decrypt_message(message).await?),
            _budget: budget,
        })
    }

    async fn decrypt_message(&self, message: Vec<u8>) -> Result<Vec<u8>> {
        let output = self
            .client
            .decrypt()
            .ciphertext(Blob::new(message))
            .keyring(self.keyring.clone())
            .send()
            .await
            .map_err(|e| anyhow!("{}", first_line(&format!("{e:?}"))))
            .context("decrypting the Encryption SDK message (wrong key, tampered data, or a non-committing suite)")?;
        Ok(output
            .plaintext
            .context("the Encryption SDK returned no plaintext")?
            .into_inner())
    }

    /// Encrypts with the same keyring and default (committing) suite; used by tests and the
    /// smoke checks to produce payloads as any ESDK client would.
    pub async fn encrypt(&self, plaintext: Vec<u8>) -> Result<Vec<u8>> {
        let output = self
            .client
            .encrypt()
            .plaintext(Blob::new(plaintext))
            .keyring(self.keyring.clone())
            .send()
            .await
            .map_err(|e| anyhow!("encrypting: {}", first_line(&format!("{e:?}"))))?;
        Ok(output
            .ciphertext
            .context("the Encryption SDK returned no ciphertext")?
            .into_inner())
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(400)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_message_headers() {
        assert!(looks_encrypted(&[0x02, 0x04, 0x78, 0x00]));
        assert!(looks_encrypted(&[0x02, 0x05, 0x78, 0x12]));
        assert!(looks_encrypted(&[0x01, 0x80, 0x03, 0x78]));
        assert!(!looks_encrypted(b"{\"a\""));
        assert!(
            !looks_encrypted(&[0x1f, 0x8b, 0x08, 0x00]),
            "gzip is not ESDK"
        );
        assert!(!looks_encrypted(&[0x02, 0x00, 0x00, 0x00]));
        assert!(!looks_encrypted(&[0x02]));
        assert!(!looks_encrypted(&[]));
    }
}
