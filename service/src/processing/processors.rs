//! The processors: what happens to a file's bytes between the initial and the final bucket.
//! Pure streams, no AWS: each takes the decrypted input and gives the output.
//!
//! Longer than 400 lines: only with its unit tests, kept beside the streams they pin.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_compression::tokio::bufread::GzipDecoder;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio_util::io::ReaderStream;

use crate::config::{Config, ProcessorKind};
use crate::store::Reader;
use crate::upload;

/// Read size when streaming: the 4 KiB default costs a chunk (and a hash update and a
/// buffer push) per page.
pub const STREAM_CHUNK: usize = 64 * 1024;
pub type Output = BoxStream<'static, io::Result<Bytes>>;

/// One step between decrypted input and stored output. `stats` receives values recorded in
/// the output's metadata once the stream has ended.
pub trait Processor: Send + Sync {
    fn name(&self) -> &'static str;
    fn process(&self, input: Reader, stats: upload::LateMetadata) -> Output;
    /// The output's `Content-Type`, given the upload's.
    fn content_type(&self, input: Option<&str>) -> Option<String>;
}

pub struct Identity;

/// Checks that every line is JSON, holding at most one line in memory.
pub struct JsonLines {
    /// Longest line (MAX_LINE_BYTES); a longer one fails the file instead of taking memory.
    pub max_line: usize,
}

/// Inflates gzip, bounded: a small bomb must not become an unbounded output.
pub struct Gunzip {
    /// Largest output (MAX_OUTPUT_SIZE).
    pub max_output: u64,
    /// Largest output per compressed input byte (MAX_EXPANSION_RATIO), checked once the
    /// output passes RATIO_FREE_OUTPUT, so small, very repetitive files still pass.
    pub max_ratio: u64,
}

/// Output below which the expansion ratio is not checked.
const RATIO_FREE_OUTPUT: u64 = 16 * 1024 * 1024;

/// Passes reads through and shows `observe` what each one gave: the bytes read, or `None`
/// for an error.
pub struct Tap<R, F> {
    pub inner: R,
    pub observe: F,
}

impl<R, F> AsyncRead for Tap<R, F>
where
    R: AsyncRead + Unpin,
    F: FnMut(Option<&[u8]>) + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => (self.observe)(Some(&buf.filled()[before..])),
            Poll::Ready(Err(_)) => (self.observe)(None),
            Poll::Pending => {}
        }
        result
    }
}

impl Processor for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn process(&self, input: Reader, _stats: upload::LateMetadata) -> Output {
        ReaderStream::with_capacity(input, STREAM_CHUNK).boxed()
    }
    fn content_type(&self, input: Option<&str>) -> Option<String> {
        input.map(str::to_string)
    }
}

impl Processor for Gunzip {
    fn name(&self) -> &'static str {
        "gunzip"
    }
    /// What was compressed is not known.
    fn content_type(&self, _input: Option<&str>) -> Option<String> {
        Some("application/octet-stream".into())
    }
    fn process(&self, input: Reader, _stats: upload::LateMetadata) -> Output {
        let compressed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = compressed.clone();
        let input = Tap {
            inner: input,
            observe: move |read: Option<&[u8]>| {
                let read = read.map_or(0, <[u8]>::len) as u64;
                counted.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
            },
        };
        let mut decoder = GzipDecoder::new(BufReader::new(input));
        decoder.multiple_members(true);
        let (max_output, max_ratio) = (self.max_output, self.max_ratio);
        let mut produced: u64 = 0;
        let mut failed = false;
        ReaderStream::with_capacity(decoder, STREAM_CHUNK)
            .map(move |chunk| {
                let chunk = chunk?;
                produced += chunk.len() as u64;
                let read = compressed.load(std::sync::atomic::Ordering::Relaxed).max(1);
                if produced > max_output {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the inflated output exceeds MAX_OUTPUT_SIZE ({max_output} bytes)"),
                    ));
                }
                if produced > RATIO_FREE_OUTPUT && produced / read > max_ratio {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{produced} bytes inflated from {read}: more than MAX_EXPANSION_RATIO ({max_ratio}) times the compressed size"
                        ),
                    ));
                }
                Ok(chunk)
            })
            // Nothing after the first error: the upload is aborted on it.
            .take_while(move |chunk| {
                let go = !failed;
                failed |= chunk.is_err();
                std::future::ready(go)
            })
            .boxed()
    }
}

struct LineValidator {
    partial: Vec<u8>,
    line: u64,
    max_line: usize,
}

impl LineValidator {
    fn check(&mut self, line: &[u8]) -> io::Result<()> {
        self.line += 1;
        if line.len() > self.max_line {
            return Err(self.too_long(self.line));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        serde_json::from_slice::<serde::de::IgnoredAny>(line).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {} is not valid JSON: {err}", self.line),
            )
        })?;
        Ok(())
    }

    fn feed(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.check(&rest[..end])?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                self.check(&line)?;
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > self.max_line {
            return Err(self.too_long(self.line + 1));
        }
        Ok(())
    }

    fn too_long(&self, line: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "line {line} is longer than MAX_LINE_BYTES ({} bytes)",
                self.max_line
            ),
        )
    }

    fn finish(&mut self) -> io::Result<()> {
        // A final newline ends the last line; it does not start an empty one.
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check(&line)?;
        }
        Ok(())
    }
}

impl Processor for JsonLines {
    fn name(&self) -> &'static str {
        "jsonl"
    }
    fn content_type(&self, _input: Option<&str>) -> Option<String> {
        Some("application/x-ndjson".into())
    }
    fn process(&self, input: Reader, stats: upload::LateMetadata) -> Output {
        let validator = LineValidator {
            partial: Vec::new(),
            line: 0,
            max_line: self.max_line,
        };
        stream::unfold(
            (
                ReaderStream::with_capacity(input, STREAM_CHUNK),
                validator,
                false,
            ),
            move |(mut chunks, mut validator, done)| {
                let stats = stats.clone();
                async move {
                    if done {
                        return None;
                    }
                    match chunks.next().await {
                        Some(Ok(chunk)) => {
                            let checked = validator.feed(&chunk).map(|()| chunk);
                            let failed = checked.is_err();
                            Some((checked, (chunks, validator, failed)))
                        }
                        Some(Err(err)) => Some((Err(err), (chunks, validator, true))),
                        None => match validator.finish() {
                            Ok(()) => {
                                stats.lock().unwrap().insert(
                                    crate::names::meta::LINES.into(),
                                    validator.line.to_string(),
                                );
                                None
                            }
                            Err(err) => Some((Err(err), (chunks, validator, true))),
                        },
                    }
                }
            },
        )
        .boxed()
    }
}

pub fn processor(config: &Config) -> Arc<dyn Processor> {
    match config.processor {
        ProcessorKind::Identity => Arc::new(Identity),
        ProcessorKind::Gunzip => Arc::new(Gunzip {
            max_output: config.max_output_size,
            max_ratio: config.max_expansion_ratio,
        }),
        ProcessorKind::Jsonl => Arc::new(JsonLines {
            max_line: config.max_line_bytes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    async fn run(
        processor: &dyn Processor,
        input: &[u8],
    ) -> (io::Result<Vec<u8>>, HashMap<String, String>) {
        run_in_chunks(processor, input, usize::MAX).await
    }

    /// Reads of at most `chunk` bytes each.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut TaskContext<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = self
                .data
                .len()
                .min(self.at + buf.remaining().min(self.chunk));
            buf.put_slice(&self.data[self.at..end]);
            self.at = end;
            Poll::Ready(Ok(()))
        }
    }

    async fn run_in_chunks(
        processor: &dyn Processor,
        input: &[u8],
        chunk: usize,
    ) -> (io::Result<Vec<u8>>, HashMap<String, String>) {
        let stats = Arc::new(Mutex::new(HashMap::new()));
        let input = Trickle {
            data: input.to_vec(),
            at: 0,
            chunk,
        };
        let mut output = processor.process(Box::new(input), stats.clone());
        let mut bytes = Vec::new();
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(err) => return (Err(err), stats.lock().unwrap().clone()),
            }
        }
        (Ok(bytes), stats.lock().unwrap().clone())
    }

    const JSON_LINES: JsonLines = JsonLines { max_line: 1024 };

    #[tokio::test]
    async fn jsonl_refuses_a_line_longer_than_the_limit_without_buffering_it() {
        let mut input = b"{\"a\":1}\n\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 4096));
        input.extend_from_slice(b"\"\n");
        // In one chunk (checked whole) and in small ones (refused while accumulating).
        let (out, _) = run(&JSON_LINES, &input).await;
        let err = out.map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "line 2 is longer than MAX_LINE_BYTES (1024 bytes)");
        let (out, _) = run_in_chunks(&JSON_LINES, &input, 100).await;
        let err = out.map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "line 2 is longer than MAX_LINE_BYTES (1024 bytes)");
        let mut fits = b"\"".to_vec();
        fits.extend(std::iter::repeat_n(b'x', 1000));
        fits.extend_from_slice(b"\"\n");
        assert!(run(&JSON_LINES, &fits).await.0.is_ok());
    }

    #[tokio::test]
    async fn jsonl_counts_lines_and_names_the_first_bad_one() {
        let (out, stats) = run(&JSON_LINES, b"{\"a\":1}\n[2]\n\"x\"\n").await;
        assert_eq!(out.unwrap(), b"{\"a\":1}\n[2]\n\"x\"\n");
        assert_eq!(stats["lines"], "3");
        let (out, _) = run(&JSON_LINES, b"{\"a\":1}\r\n{\"b\":2}").await;
        assert!(out.is_ok());
        let (out, stats) = run(&JSON_LINES, b"{\"a\":1}\n{oops}\n{\"c\":3}\n").await;
        let err = out.unwrap_err().to_string();
        assert!(err.starts_with("line 2 is not valid JSON"), "{err}");
        assert!(!stats.contains_key("lines"));
        let (out, _) = run(&JSON_LINES, b"{}\n\n{}\n").await;
        assert!(out.unwrap_err().to_string().starts_with("line 2"));
    }

    #[tokio::test]
    async fn gunzip_inflates_and_rejects_garbage() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&b"hello gzip ".repeat(1000)).unwrap();
        let gz = encoder.finish().unwrap();
        let gunzip = Gunzip {
            max_output: u64::MAX,
            max_ratio: 100,
        };
        let (out, _) = run(&gunzip, &gz).await;
        assert_eq!(out.unwrap(), b"hello gzip ".repeat(1000));
        let (out, _) = run(&gunzip, b"not gzip at all").await;
        assert!(out.is_err());
    }

    #[tokio::test]
    async fn gunzip_refuses_bombs_by_size_and_by_ratio() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 64 * 1024 * 1024]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 100 * 1024, "{} bytes", bomb.len());

        let by_size = Gunzip {
            max_output: 1024 * 1024,
            max_ratio: u64::MAX,
        };
        let err = run(&by_size, &bomb).await.0.unwrap_err().to_string();
        assert!(err.contains("MAX_OUTPUT_SIZE"), "{err}");

        let by_ratio = Gunzip {
            max_output: u64::MAX,
            max_ratio: 100,
        };
        let err = run(&by_ratio, &bomb).await.0.unwrap_err().to_string();
        assert!(err.contains("MAX_EXPANSION_RATIO"), "{err}");

        // Within both bounds, the same bomb inflates.
        let wide = Gunzip {
            max_output: 64 * 1024 * 1024,
            max_ratio: 1_000_000,
        };
        assert_eq!(run(&wide, &bomb).await.0.unwrap().len(), 64 * 1024 * 1024);
    }
}
