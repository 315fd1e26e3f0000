//! Reads the shape of an AWS Encryption SDK message before the SDK sees it: how many data keys,
//! for which keys, how many frames. The SDK walks frames and keys recursively and calls KMS
//! once per candidate data key, so a message outside the bounds must fail here, with a clear
//! reason and before any KMS call. Nothing is decrypted or authenticated here; the SDK still
//! does all of that.
//!
//! Layout: <https://docs.aws.amazon.com/encryption-sdk/latest/developer-guide/message-format.html>

/// Algorithm suite ids of message format version 2 (key-committing suites); the second one
/// signs, so its message ends with a footer.
const V2_SUITES: [[u8; 2]; 2] = [[0x04, 0x78], [0x05, 0x78]];
const V2_SIGNING_SUITE: [u8; 2] = [0x05, 0x78];
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

/// Marks the final frame of a framed body.
const FINAL_FRAME: u32 = u32::MAX;
/// Every suite uses 12-byte IVs and 16-byte authentication tags.
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The provider id of data keys wrapped by AWS KMS.
const KMS_PROVIDER: &[u8] = b"aws-kms";

/// True if `header` starts an Encryption SDK message (version byte, then the algorithm
/// suite id; version 1 has a type byte 0x80 in between).
pub fn looks_encrypted(header: &[u8]) -> bool {
    match header {
        [0x02, a, b, ..] => V2_SUITES.contains(&[*a, *b]),
        [0x01, 0x80, a, b, ..] => V1_SUITES.contains(&[*a, *b]),
        _ => false,
    }
}

/// What the service accepts of a message's structure.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Encrypted data keys per message (MAX_ENCRYPTED_DATA_KEYS). Each one that names our key
    /// may cost a KMS Decrypt call.
    pub max_data_keys: u16,
    /// Frames per message (MAX_ENCRYPTED_FRAMES), the final frame included.
    pub max_frames: u32,
    /// Encryption context pairs per message.
    pub max_context_pairs: u16,
}

/// The parts of a message's structure that the limits apply to.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    /// Provider information (for KMS: the key ARN) of each encrypted data key.
    pub data_keys: Vec<(String, String)>,
    pub context_pairs: u16,
    /// `None` for a non-framed body.
    pub frame_length: Option<u32>,
    pub frames: u64,
    /// Bytes up to the end of the header (the start of the body).
    pub header_len: usize,
}

/// Why a message is refused before decryption: the file's own fault, said in one sentence.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(why.into()))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Refused> {
        match self.bytes.get(self.at..self.at.saturating_add(n)) {
            Some(taken) if self.at.checked_add(n).is_some() => {
                self.at += n;
                Ok(taken)
            }
            _ => refuse(format!(
                "the message is truncated: it ends in its {what} (at byte {})",
                self.at
            )),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, Refused> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Refused> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Refused> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Refused> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// A field prefixed by its 2-byte length.
    fn short_field(&mut self, what: &str) -> Result<&'a [u8], Refused> {
        let len = self.u16(what)?;
        self.take(len as usize, what)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(200).collect()
}

/// Reads a whole message's structure and checks it against `limits` and the one key ARN
/// allowed to unwrap its data key.
pub fn inspect(message: &[u8], limits: &Limits, key_arn: &str) -> Result<Shape, Refused> {
    let mut c = Cursor {
        bytes: message,
        at: 0,
    };
    let version = c.u8("version")?;
    match version {
        0x02 => {}
        0x01 => {
            return refuse(
                "message format version 1 (a non-committing algorithm suite) is not accepted; \
                 encrypt with a key-committing suite (the Encryption SDK's default since 2.0)",
            );
        }
        other => return refuse(format!("unknown message format version {other:#04x}")),
    }
    let suite: [u8; 2] = c.take(2, "algorithm suite")?.try_into().expect("2 bytes");
    if !V2_SUITES.contains(&suite) {
        return refuse(format!(
            "algorithm suite {:#06x} is not a key-committing suite",
            u16::from_be_bytes(suite)
        ));
    }
    c.take(32, "message id")?;

    let aad_len = c.u16("encryption context length")? as usize;
    let mut context_pairs = 0;
    if aad_len > 0 {
        let aad_start = c.at;
        context_pairs = c.u16("encryption context")?;
        if context_pairs > limits.max_context_pairs {
            return refuse(format!(
                "the encryption context has {context_pairs} pairs; at most {} are accepted",
                limits.max_context_pairs
            ));
        }
        for _ in 0..context_pairs {
            c.short_field("encryption context")?;
            c.short_field("encryption context")?;
        }
        if c.at - aad_start != aad_len {
            return refuse("the encryption context's length does not match its pairs");
        }
    }

    let count = c.u16("encrypted data key count")?;
    if count == 0 {
        return refuse("the message has no encrypted data key");
    }
    if count > limits.max_data_keys {
        return refuse(format!(
            "the message has {count} encrypted data keys; at most {} are accepted \
             (MAX_ENCRYPTED_DATA_KEYS)",
            limits.max_data_keys
        ));
    }
    let mut data_keys = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let provider = lossy(c.short_field("encrypted data key")?);
        let info = lossy(c.short_field("encrypted data key")?);
        c.short_field("encrypted data key")?;
        data_keys.push((provider, info));
    }
    let ours = |(provider, info): &(String, String)| {
        provider.as_bytes() == KMS_PROVIDER && info == key_arn
    };
    if !data_keys.iter().any(ours) {
        let named: Vec<String> = data_keys
            .iter()
            .map(|(provider, info)| format!("{provider} {info}"))
            .collect();
        return refuse(format!(
            "no data key of the message is wrapped by the configured KMS key ({key_arn}); it names: {}",
            named.join(", ")
        ));
    }

    let content_type = c.u8("content type")?;
    let frame_length = c.u32("frame length")?;
    c.take(32, "algorithm suite data")?;
    c.take(TAG_LEN, "header authentication tag")?;
    let header_len = c.at;

    let (frame_length, frames) = match content_type {
        0x01 => {
            c.take(IV_LEN, "body IV")?;
            let len = c.u64("body length")?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            c.take(len, "body")?;
            c.take(TAG_LEN, "body authentication tag")?;
            (None, 1)
        }
        0x02 => {
            if frame_length == 0 {
                return refuse("the frame length is 0");
            }
            (
                Some(frame_length),
                count_frames(&mut c, frame_length, limits)?,
            )
        }
        other => return refuse(format!("unknown content type {other:#04x}")),
    };
    if suite == V2_SIGNING_SUITE {
        c.short_field("signature")?;
    }
    if c.remaining() != 0 {
        return refuse(format!(
            "{} bytes follow the end of the message",
            c.remaining()
        ));
    }
    Ok(Shape {
        data_keys,
        context_pairs,
        frame_length,
        frames,
        header_len,
    })
}

/// Walks the frames of a framed body up to the final one; stops at the first frame past the
/// limit, so a forged body of millions of tiny frames costs no more than the limit.
fn count_frames(c: &mut Cursor, frame_length: u32, limits: &Limits) -> Result<u64, Refused> {
    let mut frames: u64 = 0;
    loop {
        frames += 1;
        if frames > limits.max_frames as u64 {
            return refuse(format!(
                "the message has more than {} frames (frame length {frame_length} bytes); \
                 at most {} are accepted (MAX_ENCRYPTED_FRAMES): encrypt with a larger frame length",
                limits.max_frames, limits.max_frames
            ));
        }
        let sequence = c.u32("frame")?;
        if sequence == FINAL_FRAME {
            c.take(4 + IV_LEN, "final frame")?;
            let len = c.u32("final frame")?;
            if len > frame_length {
                return refuse("the final frame is longer than the frame length");
            }
            c.take(len as usize + TAG_LEN, "final frame")?;
            return Ok(frames);
        }
        c.take(IV_LEN + frame_length as usize + TAG_LEN, "frame")?;
    }
}
