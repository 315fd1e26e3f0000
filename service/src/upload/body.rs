//! Reading a request body into part buffers: the one place that sees every byte of an
//! upload, so it hashes them and enforces the size limit, the idle timeout and the minimum
//! rate. No S3 here; the tests feed it made-up streams.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};

use super::UploadError;

/// The span of waiting for a body over which the minimum rate is averaged.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What a body may do.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_size: u64,
    /// How long the body may send nothing.
    pub idle_timeout: Duration,
    /// Bytes per second the body must deliver on average over every `window` of waiting
    /// for it (0: no minimum).
    pub min_rate: u64,
    pub window: Duration,
}

/// The digests of what was read.
pub struct Digests {
    pub sha256: Sha256,
    pub md5: Option<Md5>,
    pub size: u64,
}

impl Digests {
    pub fn new(with_md5: bool) -> Digests {
        Digests {
            sha256: Sha256::new(),
            md5: with_md5.then(Md5::new),
            size: 0,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk);
        }
        self.size += chunk.len() as u64;
    }

    /// The SHA-256 of what was read so far.
    pub fn sha256_digest(&self) -> [u8; 32] {
        self.sha256.clone().finalize().into()
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256_digest())
    }
}

/// A body being read: the stream, the chunk read beyond the last buffer, the pace kept and
/// the digests so far.
pub struct BodyReader<'a, S> {
    stream: std::pin::Pin<&'a mut S>,
    pending: Option<Bytes>,
    pace: Pace,
    /// Time spent waiting since the last chunk.
    silent: Duration,
    limits: BodyLimits,
    pub digests: Digests,
}

/// Bytes delivered and time spent waiting for them in the current window. Only time spent
/// waiting for the client counts: not the time the upload waits for S3 or a buffer.
#[derive(Default)]
struct Pace {
    waited: Duration,
    bytes: u64,
}

impl<'a, S, E> BodyReader<'a, S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    pub fn new(stream: std::pin::Pin<&'a mut S>, limits: BodyLimits, digests: Digests) -> Self {
        BodyReader {
            stream,
            pending: None,
            pace: Pace::default(),
            silent: Duration::ZERO,
            limits,
            digests,
        }
    }

    /// Reads until `buffer` holds `limit` bytes with more to come (true) or the body ends
    /// (false). Whether the body goes on decides between PutObject and a multipart upload,
    /// so a buffer filled exactly looks one chunk ahead.
    pub async fn fill(&mut self, buffer: &mut BytesMut, limit: usize) -> Result<bool, UploadError> {
        loop {
            let mut chunk = match self.pending.take() {
                Some(chunk) => chunk,
                None => match self.next_chunk().await? {
                    None => return Ok(false),
                    Some(chunk) => chunk,
                },
            };
            let room = limit - buffer.len();
            if chunk.len() > room {
                self.pending = Some(chunk.split_off(room));
            }
            buffer.extend_from_slice(&chunk);
            if buffer.len() == limit {
                while self.pending.is_none() {
                    match self.next_chunk().await? {
                        None => return Ok(false),
                        Some(next) if next.is_empty() => continue,
                        Some(next) => self.pending = Some(next),
                    }
                }
                return Ok(true);
            }
        }
    }

    /// The next chunk, counted, hashed and checked against the limits. Every window of
    /// waiting must deliver its quota (`min_rate` x `window`), so a body that sends a window's
    /// quota at once and then stalls is cut off at the end of the next window.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, UploadError> {
        let limits = self.limits;
        let quota = limits
            .min_rate
            .saturating_mul(limits.window.as_millis() as u64)
            / 1000;
        loop {
            let idle_left = limits.idle_timeout.saturating_sub(self.silent);
            let wait = if limits.min_rate > 0 {
                idle_left.min(limits.window.saturating_sub(self.pace.waited))
            } else {
                idle_left
            };
            let started = Instant::now();
            let next = tokio::time::timeout(wait, self.stream.next()).await;
            self.pace.waited += started.elapsed();
            self.silent += started.elapsed();
            let chunk = match next {
                Err(_) if self.silent >= limits.idle_timeout => {
                    return Err(UploadError::TooSlow(format!(
                        "no data for {} s; giving up",
                        limits.idle_timeout.as_secs()
                    )));
                }
                // A window ended while waiting: it passes if it delivered its quota.
                Err(_) => {
                    self.end_window(quota)?;
                    continue;
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) => return Err(UploadError::Body(err.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            self.silent = Duration::ZERO;
            self.pace.bytes += chunk.len() as u64;
            if self.pace.waited >= limits.window {
                self.end_window(quota)?;
            }
            self.digests.update(&chunk);
            if self.digests.size > limits.max_size {
                return Err(UploadError::TooLarge(limits.max_size));
            }
            return Ok(Some(chunk));
        }
    }

    fn end_window(&mut self, quota: u64) -> Result<(), UploadError> {
        if self.pace.bytes < quota {
            return Err(self.too_slow());
        }
        self.pace = Pace::default();
        Ok(())
    }

    fn too_slow(&self) -> UploadError {
        UploadError::TooSlow(format!(
            "the body sent {} bytes in {:.0} s, below the minimum of {} bytes/s",
            self.pace.bytes,
            self.pace.waited.as_secs_f64(),
            self.limits.min_rate
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: BodyLimits = BodyLimits {
        max_size: u64::MAX,
        idle_timeout: Duration::from_secs(5),
        min_rate: 0,
        window: RATE_WINDOW,
    };

    type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, String>>>;

    fn chunks(sizes: &[usize]) -> Chunks {
        let items: Vec<Result<Bytes, String>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(Bytes::from(vec![i as u8; *n])))
            .collect();
        futures_util::stream::iter(items)
    }

    /// Fills buffers of `part` bytes until the body ends; the buffers' sizes and whether
    /// each had more to come.
    async fn parts(sizes: &[usize], part: usize) -> Vec<(usize, bool)> {
        let stream = std::pin::pin!(chunks(sizes));
        let mut reader = BodyReader::new(stream, WIDE, Digests::new(false));
        let mut out = Vec::new();
        loop {
            let mut buffer = BytesMut::new();
            let more = reader.fill(&mut buffer, part).await.unwrap();
            out.push((buffer.len(), more));
            if !more {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn parts_are_full_but_the_last_and_an_exact_fit_ends_the_body() {
        assert_eq!(parts(&[], 10).await, [(0, false)]);
        assert_eq!(parts(&[3, 4], 10).await, [(7, false)]);
        // Exactly one part: the look-ahead finds the end, so no second (empty) part.
        assert_eq!(parts(&[4, 6], 10).await, [(10, false)]);
        assert_eq!(parts(&[4, 6, 0, 0], 10).await, [(10, false)]);
        assert_eq!(parts(&[25], 10).await, [(10, true), (10, true), (5, false)]);
        assert_eq!(parts(&[10, 10], 10).await, [(10, true), (10, false)]);
        assert_eq!(
            parts(&[1; 21], 10).await,
            [(10, true), (10, true), (1, false)]
        );
    }

    #[tokio::test]
    async fn every_byte_is_hashed_once_and_the_size_limit_holds() {
        let sizes = [7, 0, 13, 64, 1];
        let stream = std::pin::pin!(chunks(&sizes));
        let mut reader = BodyReader::new(stream, WIDE, Digests::new(true));
        let mut all = Vec::new();
        loop {
            let mut buffer = BytesMut::new();
            let more = reader.fill(&mut buffer, 16).await.unwrap();
            all.extend_from_slice(&buffer);
            if !more {
                break;
            }
        }
        assert_eq!(all.len(), 85);
        assert_eq!(reader.digests.size, 85);
        assert_eq!(
            reader.digests.sha256_hex(),
            hex::encode(Sha256::digest(&all))
        );

        let stream = std::pin::pin!(chunks(&[60, 60]));
        let limits = BodyLimits {
            max_size: 100,
            ..WIDE
        };
        let mut reader = BodyReader::new(stream, limits, Digests::new(false));
        let mut buffer = BytesMut::new();
        let err = reader.fill(&mut buffer, 1000).await.unwrap_err();
        assert!(matches!(err, UploadError::TooLarge(100)), "{err}");
    }

    #[tokio::test]
    async fn a_stream_error_is_a_body_error() {
        let items: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err("connection reset".into()),
        ];
        let stream = std::pin::pin!(futures_util::stream::iter(items));
        let mut reader = BodyReader::new(stream, WIDE, Digests::new(false));
        let err = reader.fill(&mut BytesMut::new(), 100).await.unwrap_err();
        assert!(
            matches!(&err, UploadError::Body(m) if m == "connection reset"),
            "{err}"
        );
    }

    /// A chunk every `every`, `count` times.
    fn paced(
        size: usize,
        every: Duration,
        count: usize,
    ) -> impl Stream<Item = Result<Bytes, String>> {
        futures_util::stream::unfold(0, move |sent| async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![1u8; size])), sent + 1))
        })
    }

    #[tokio::test]
    async fn a_body_below_the_minimum_rate_is_cut_off_within_a_window_and_a_fast_one_is_not() {
        let limits = BodyLimits {
            max_size: u64::MAX,
            idle_timeout: Duration::from_secs(5),
            min_rate: 1000,
            window: Duration::from_millis(300),
        };
        // 10 bytes every 20 ms: 500 bytes/s, half the minimum.
        let mut slow = std::pin::pin!(paced(10, Duration::from_millis(20), 1000));
        let mut reader = BodyReader::new(slow.as_mut(), limits, Digests::new(false));
        let started = Instant::now();
        let err = reader
            .fill(&mut BytesMut::new(), 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::TooSlow(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        // 100 bytes every 20 ms: 5,000 bytes/s, for 1.2 s (four windows).
        let mut fast = std::pin::pin!(paced(100, Duration::from_millis(20), 60));
        let mut reader = BodyReader::new(fast.as_mut(), limits, Digests::new(false));
        let mut buffer = BytesMut::new();
        assert!(!reader.fill(&mut buffer, 1 << 20).await.unwrap());
        assert_eq!(buffer.len(), 6000);
    }

    #[tokio::test]
    async fn a_body_that_sends_a_windows_quota_at_once_and_stalls_is_cut_off_in_the_next() {
        let limits = BodyLimits {
            max_size: u64::MAX,
            idle_timeout: Duration::from_secs(30),
            min_rate: 1000,
            window: Duration::from_millis(300),
        };
        // 400 bytes (more than a window's 300) at once, then nothing for 5 s.
        let burst_then_stall =
            futures_util::stream::once(async { Ok::<_, String>(Bytes::from(vec![1u8; 400])) })
                .chain(paced(1, Duration::from_secs(5), 1));
        let mut stream = std::pin::pin!(burst_then_stall);
        let mut reader = BodyReader::new(stream.as_mut(), limits, Digests::new(false));
        let started = Instant::now();
        let err = reader
            .fill(&mut BytesMut::new(), 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::TooSlow(_)), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_secs(2),
            "cut off after {took:?}: the second window, not the first or the idle timeout"
        );
    }

    #[tokio::test]
    async fn silence_is_cut_off_after_the_idle_timeout() {
        let limits = BodyLimits {
            idle_timeout: Duration::from_millis(100),
            ..WIDE
        };
        let mut silent = std::pin::pin!(futures_util::stream::pending::<Result<Bytes, String>>());
        let mut reader = BodyReader::new(silent.as_mut(), limits, Digests::new(false));
        let err = reader.fill(&mut BytesMut::new(), 10).await.unwrap_err();
        assert!(matches!(err, UploadError::TooSlow(_)), "{err}");
    }
}
