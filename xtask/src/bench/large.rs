//! Large objects: all files uploaded concurrently, then downloaded concurrently, three ways.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use aws_clients::AwsResultExt;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use futures_util::future::try_join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::data::sha256_file;
use super::report::{Metric, Variant};
use super::{Setup, SourceFile};

pub async fn run(setup: &Setup, files: &[SourceFile], target_a_over_b: f64) -> Result<Vec<Metric>> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let mb_per_s = |seconds: f64| total as f64 / 1e6 / seconds;
    let mut uploads: [Vec<f64>; 3] = Default::default();
    let mut downloads: [Vec<f64>; 3] = Default::default();
    for rep in 0..setup.repetitions {
        for (slot, variant) in Variant::ALL.into_iter().enumerate() {
            let keys: Vec<String> = (0..files.len())
                .map(|i| format!("large-{}-{rep}-{i}", variant.letter()))
                .collect();
            let up = match variant {
                Variant::Service => service_upload(setup, files, &keys).await?,
                Variant::Sdk => sdk_upload(setup, files, &keys).await?,
                Variant::Boto3 => boto3(setup, files, rep, "upload")?,
            };
            if variant == Variant::Service {
                // Not timed: downloads serve processed files, so processing must end first.
                for key in &keys {
                    setup.wait_processed(key).await?;
                }
            }
            let outputs: Vec<PathBuf> = (0..files.len())
                .map(|i| setup.out_dir.join(format!("{}-{i}", variant.letter())))
                .collect();
            // An earlier repetition's file must not pass for this one's download.
            for output in &outputs {
                let _ = std::fs::remove_file(output);
            }
            let down = match variant {
                Variant::Service => service_download(setup, &keys, &outputs).await?,
                Variant::Sdk => sdk_download(setup, &keys, &outputs).await?,
                Variant::Boto3 => boto3(setup, files, rep, "download")?,
            };
            // Sizes always; content on the first repetition (hashing is slow, and untimed).
            for (file, output) in files.iter().zip(&outputs) {
                verify(file, output, rep == 0)
                    .with_context(|| format!("{} download", variant.label()))?;
            }
            setup.clear_buckets().await?;
            uploads[slot].push(mb_per_s(up));
            downloads[slot].push(mb_per_s(down));
            eprintln!(
                "    rep {}/{} {}: upload {:.0} MB/s, download {:.0} MB/s",
                rep + 1,
                setup.repetitions,
                variant.label(),
                mb_per_s(up),
                mb_per_s(down)
            );
        }
    }
    Ok(vec![
        Metric::new("upload", "MB/s", uploads).with_target_a_over_b(target_a_over_b),
        Metric::new("download", "MB/s", downloads).with_target_a_over_b(target_a_over_b),
    ])
}

fn verify(file: &SourceFile, output: &Path, content: bool) -> Result<()> {
    let size = std::fs::metadata(output)
        .with_context(|| format!("reading {}", output.display()))?
        .len();
    ensure!(
        size == file.size,
        "{} has {size} bytes, expected {}",
        output.display(),
        file.size
    );
    if content {
        let got = sha256_file(output)?;
        ensure!(
            got == file.sha256,
            "{} differs from its source",
            output.display()
        );
    }
    Ok(())
}

async fn service_upload(setup: &Setup, files: &[SourceFile], names: &[String]) -> Result<f64> {
    let started = Instant::now();
    let uploads = files.iter().zip(names).map(|(file, name)| async move {
        let source = tokio::fs::File::open(&file.path)
            .await
            .with_context(|| format!("opening {}", file.path.display()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            source,
            1 << 20,
        ));
        let response = setup
            .http
            .put(setup.file_url(name))
            .header(reqwest::header::CONTENT_LENGTH, file.size)
            .body(body)
            .send()
            .await
            .with_context(|| format!("PUT {name} to the service"))?;
        let status = response.status();
        let reply: serde_json::Value = response.json().await.unwrap_or_default();
        ensure!(status.as_u16() == 201, "PUT {name}: HTTP {status}: {reply}");
        ensure!(
            reply["sha256"] == file.sha256.as_str(),
            "PUT {name}: the service stored other bytes: {reply}"
        );
        Ok(())
    });
    try_join_all(uploads).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn service_download(setup: &Setup, names: &[String], outputs: &[PathBuf]) -> Result<f64> {
    let started = Instant::now();
    let downloads = names.iter().zip(outputs).map(|(name, output)| async move {
        let response = setup
            .http
            .get(setup.file_url(name))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("GET {name} from the service"))?;
        write_stream(output, response.bytes_stream()).await
    });
    try_join_all(downloads).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Multipart uploads with the service's part size, parts per transfer, and part buffers
/// across all transfers.
async fn sdk_upload(setup: &Setup, files: &[SourceFile], keys: &[String]) -> Result<f64> {
    let buffers = Arc::new(Semaphore::new(setup.max_buffered_parts));
    let started = Instant::now();
    let uploads = files
        .iter()
        .zip(keys)
        .map(|(file, key)| sdk_upload_one(setup, &file.path, key, buffers.clone()));
    try_join_all(uploads).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn sdk_upload_one(
    setup: &Setup,
    path: &Path,
    key: &str,
    buffers: Arc<Semaphore>,
) -> Result<()> {
    let s3 = &setup.s3;
    let bucket = &setup.initial;
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&setup.kms_key_arn)
        .send()
        .await
        .aws_context(format!("s3:CreateMultipartUpload {key}"))?;
    let upload_id = created.upload_id().context("no upload id")?.to_string();
    let mut source = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    // Parts upload in tasks of their own, so they progress while this loop waits for a
    // buffer (polled only from here, they would hold their buffers and deadlock).
    let mut in_flight = FuturesUnordered::new();
    let mut completed = Vec::new();
    for number in 1.. {
        while in_flight.len() >= setup.parts_in_flight {
            completed.push(in_flight.next().await.expect("not empty")??);
        }
        let permit = buffers.clone().acquire_owned().await?;
        let mut part = vec![0u8; setup.part_size];
        let filled = read_full(&mut source, &mut part).await?;
        if filled == 0 {
            break;
        }
        part.truncate(filled);
        let request = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(part));
        let key = key.to_string();
        in_flight.push(tokio::spawn(async move {
            let output = request
                .send()
                .await
                .aws_context(format!("s3:UploadPart {key} #{number}"))?;
            drop(permit);
            Ok::<_, anyhow::Error>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(output.e_tag().map(str::to_string))
                    .build(),
            )
        }));
    }
    while let Some(part) = in_flight.next().await {
        completed.push(part??);
    }
    completed.sort_by_key(|p| p.part_number());
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .aws_context(format!("s3:CompleteMultipartUpload {key}"))?;
    Ok(())
}

async fn read_full(source: &mut tokio::fs::File, buffer: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = source.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// One streamed GetObject per file, as the service does.
async fn sdk_download(setup: &Setup, keys: &[String], outputs: &[PathBuf]) -> Result<f64> {
    let started = Instant::now();
    let downloads = keys.iter().zip(outputs).map(|(key, output)| async move {
        let object = setup
            .s3
            .get_object()
            .bucket(&setup.initial)
            .key(key)
            .send()
            .await
            .aws_context(format!("s3:GetObject {key}"))?;
        let mut body = object.body;
        let mut file = tokio::fs::File::create(output)
            .await
            .with_context(|| format!("creating {}", output.display()))?;
        while let Some(chunk) = body.try_next().await.context("reading a download")? {
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok::<_, anyhow::Error>(())
    });
    try_join_all(downloads).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn write_stream<S, E>(output: &Path, mut chunks: S) -> Result<()>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut file = tokio::fs::File::create(output)
        .await
        .with_context(|| format!("creating {}", output.display()))?;
    while let Some(chunk) = chunks.next().await {
        file.write_all(&chunk.context("reading a download")?)
            .await?;
    }
    file.flush().await?;
    Ok(())
}

fn boto3(setup: &Setup, files: &[SourceFile], rep: u32, direction: &str) -> Result<f64> {
    let mut args = vec![
        "large".to_string(),
        format!("--bucket={}", setup.initial),
        format!("--prefix=large-c-{rep}-"),
        format!("--concurrency={}", setup.parts_in_flight),
        format!("--part-size={}", setup.part_size),
        format!("--direction={direction}"),
        format!("--out-dir={}", setup.out_dir.display()),
    ];
    args.extend(files.iter().map(|f| f.path.display().to_string()));
    let result = setup.boto3(&args)?;
    if result.seconds <= 0.0 {
        bail!("boto3 reported no time");
    }
    Ok(result.seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_with_other_bytes_or_length_fails_verification() {
        let dir = std::env::temp_dir().join(format!("bench-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let output = dir.join("out");
        std::fs::write(&output, b"abc").unwrap();
        let expected = |size, sha256: &str| SourceFile {
            path: dir.join("source"),
            size,
            sha256: sha256.to_string(),
        };
        let right = sha256_file(&output).unwrap();
        assert!(verify(&expected(3, &right), &output, true).is_ok());
        assert!(verify(&expected(4, &right), &output, false).is_err());
        let wrong = "0".repeat(64);
        assert!(verify(&expected(3, &wrong), &output, true).is_err());
        // Content is only compared when asked (the first repetition).
        assert!(verify(&expected(3, &wrong), &output, false).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
