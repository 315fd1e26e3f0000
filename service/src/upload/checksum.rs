//! What S3 must confirm of every write: the SHA-256 of what it stored.
//!
//! Every PutObject and UploadPart carries `x-amz-checksum-sha256`, the digest of the bytes the
//! service read, so S3 refuses a body that changed on the way (`BadDigest`) instead of storing
//! it. SHA-256 rather than CRC64NVME: a single PutObject's digest is the object's, computed
//! while streaming anyway (it is also the `sha256` metadata that processing checks), and the
//! emulator can verify SHA-256 (moto knows no CRC64NVME). A multipart upload's checksum is
//! then COMPOSITE (the only type S3 offers for SHA-256): the SHA-256 of the parts' digests,
//! then `-<parts>`. Each answer is compared with what was sent: an upload is acknowledged only
//! for an object whose stored checksum is the one computed here.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::CompletedPart;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::UploadError;

/// Base64 of a digest, as S3's checksum headers carry it.
pub fn base64(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The checksum header value of `data`.
pub fn sha256(data: &[u8]) -> String {
    base64(&Sha256::digest(data))
}

/// The composite checksum S3 gives a multipart object whose parts (in order) carry these
/// SHA-256 checksums.
pub fn composite(parts: &[CompletedPart]) -> Result<String, UploadError> {
    let mut of_parts = Sha256::new();
    for part in parts {
        let digest = part
            .checksum_sha256()
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .ok_or_else(|| {
                UploadError::NotConfirmed(format!(
                    "part {} has no SHA-256 checksum",
                    part.part_number().unwrap_or_default()
                ))
            })?;
        of_parts.update(digest);
    }
    Ok(format!("{}-{}", base64(&of_parts.finalize()), parts.len()))
}

/// S3's answer to a write names the checksum that was sent.
pub fn confirm(call: &str, stored: Option<&str>, sent: &str) -> Result<(), UploadError> {
    match stored {
        Some(stored) if stored == sent => Ok(()),
        Some(stored) => Err(UploadError::NotConfirmed(format!(
            "{call}: S3 stored SHA-256 {stored}, the service sent {sent}"
        ))),
        None => Err(UploadError::NotConfirmed(format!(
            "{call}: S3 confirmed no SHA-256 checksum (the service sent {sent})"
        ))),
    }
}

/// S3's refusal of a body that does not match its checksum (the bytes changed between the
/// service and S3), as the upload's error; `None` for any other error.
pub fn refusal<E: ProvideErrorMetadata>(call: &str, err: &E) -> Option<UploadError> {
    matches!(err.code(), Some("BadDigest" | "InvalidDigest")).then(|| {
        UploadError::NotConfirmed(format!(
            "{call}: S3 refused the body as not matching its SHA-256 ({})",
            err.message().unwrap_or("BadDigest")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_composite_is_the_digest_of_the_part_digests_and_their_count() {
        let parts: Vec<CompletedPart> = [b"one".as_slice(), b"two"]
            .iter()
            .enumerate()
            .map(|(i, data)| {
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .checksum_sha256(sha256(data))
                    .build()
            })
            .collect();
        let mut digests = Sha256::digest(b"one").to_vec();
        digests.extend_from_slice(&Sha256::digest(b"two"));
        assert_eq!(
            composite(&parts).unwrap(),
            format!("{}-2", base64(&Sha256::digest(&digests)))
        );
        let without = [CompletedPart::builder().part_number(1).build()];
        assert!(matches!(
            composite(&without),
            Err(UploadError::NotConfirmed(_))
        ));
    }

    #[test]
    fn only_the_checksum_sent_confirms_a_write() {
        let sent = sha256(b"body");
        assert!(confirm("put", Some(&sent), &sent).is_ok());
        assert!(matches!(
            confirm("put", Some(&sha256(b"")), &sent),
            Err(UploadError::NotConfirmed(m)) if m.contains("stored SHA-256")
        ));
        assert!(matches!(
            confirm("put", None, &sent),
            Err(UploadError::NotConfirmed(m)) if m.contains("no SHA-256")
        ));
    }
}
