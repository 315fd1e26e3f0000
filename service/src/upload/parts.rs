//! A multipart upload's parts: at most `parts_in_flight` travelling at once, each with its
//! SHA-256, each holding a buffer of the shared budget until S3 has it.

use anyhow::anyhow;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::body::BodyReader;
use super::conditions::stored;
use super::{Destination, UploadError, Uploader, checksum};

impl Uploader {
    /// Uploads the first (already buffered) part and the rest of the body, at most
    /// `parts_in_flight` at a time; returns the completed parts in order. `permit` covers the
    /// buffer being filled; each full buffer takes its permit along to its upload task.
    pub(super) async fn send_parts<S, E>(
        &self,
        to: &Destination,
        upload_id: &str,
        (buffer, mut permit): (&mut BytesMut, OwnedSemaphorePermit),
        body: &mut BodyReader<'_, S>,
    ) -> Result<Vec<CompletedPart>, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut tasks: JoinSet<Result<CompletedPart, UploadError>> = JoinSet::new();
        let mut completed = Vec::new();
        let mut part_number = 0;
        loop {
            part_number += 1;
            // A free slot of this transfer first. The full buffer then leaves with its
            // permit, and only after that does this transfer wait for a permit for its next
            // buffer: a transfer never waits while holding one, so transfers cannot starve
            // each other.
            if tasks.len() >= self.parts_in_flight
                && let Some(done) = tasks.join_next().await
            {
                completed.push(joined(done)?);
            }
            let data = std::mem::take(buffer).freeze();
            tasks.spawn(self.upload_part(to, upload_id, part_number, data, permit));
            permit = self.in_flight.part_permit().await;
            if !body.fill(buffer, self.part_size).await? {
                break;
            }
        }
        if !buffer.is_empty() {
            part_number += 1;
            let data = std::mem::take(buffer).freeze();
            tasks.spawn(self.upload_part(to, upload_id, part_number, data, permit));
        } else {
            drop(permit);
        }
        while let Some(done) = tasks.join_next().await {
            completed.push(joined(done)?);
        }
        completed.sort_by_key(|p| p.part_number());
        Ok(completed)
    }

    /// One part's upload, as a task; `permit` is released when the part is uploaded and its
    /// buffer dropped. The part's digest is taken in the task, so parts hash in parallel.
    fn upload_part(
        &self,
        to: &Destination,
        upload_id: &str,
        part_number: i32,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = Result<CompletedPart, UploadError>> + use<> {
        let request = self
            .s3
            .upload_part()
            .bucket(&to.bucket)
            .key(&to.key)
            .upload_id(upload_id)
            .part_number(part_number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        let call = format!("s3:UploadPart {}/{} #{part_number}", to.bucket, to.key);
        async move {
            let sent = checksum::sha256(&data);
            let output = request
                .checksum_sha256(&sent)
                .body(ByteStream::from(data))
                .send()
                .await;
            let output = stored(output, &call)?;
            drop(permit);
            checksum::confirm(&call, output.checksum_sha256(), &sent)?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(output.e_tag().map(str::to_string))
                .checksum_sha256(sent)
                .build())
        }
    }
}

fn joined(
    done: Result<Result<CompletedPart, UploadError>, tokio::task::JoinError>,
) -> Result<CompletedPart, UploadError> {
    match done {
        Ok(result) => result,
        Err(join) => Err(UploadError::Aws(anyhow!("part upload task failed: {join}"))),
    }
}
