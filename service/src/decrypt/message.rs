//! Reads the shape of an AWS Encryption SDK message before the SDK sees it: how many data keys,
//! for which keys, how many frames. The SDK walks frames and keys recursively and calls KMS
//! once per candidate data key, so a message outside the bounds must fail here, with a clear
//! reason and before any KMS call. Nothing is decrypted or authenticated here; the SDK still
//! does all of that.
//!
//! Layout: <https://docs.aws.amazon.com/encryption-sdk/latest/developer-guide/message-format.html>
//!
//! Longer than 400 lines: with its unit tests (about 200 lines of hand-built messages), kept
//! beside the parser they pin; the format is read in one pass and reads best in one file.

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
    /// Where the data key count and the data keys are, in the message's bytes.
    pub data_keys_at: std::ops::Range<usize>,
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

    let data_keys_start = c.at;
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
    let data_keys_at = data_keys_start..c.at;
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
        data_keys_at,
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

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:123456789012:key/ours";
    const LIMITS: Limits = Limits {
        max_data_keys: 3,
        max_frames: 10,
        max_context_pairs: 4,
    };

    fn short(field: &[u8]) -> Vec<u8> {
        let mut out = (field.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(field);
        out
    }

    /// A message of the right shape (its cryptography is junk, which `inspect` never looks at).
    struct Forge {
        suite: [u8; 2],
        pairs: u16,
        keys: Vec<&'static str>,
        frame_length: u32,
        /// Regular frames before the final one; `None`: a non-framed body.
        frames: Option<u32>,
    }

    impl Forge {
        fn new() -> Forge {
            Forge {
                suite: V2_SIGNING_SUITE,
                pairs: 1,
                keys: vec![ARN],
                frame_length: 64,
                frames: Some(2),
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut m = vec![0x02, self.suite[0], self.suite[1]];
            m.extend_from_slice(&[0xaa; 32]);
            let mut aad = Vec::new();
            if self.pairs > 0 {
                aad.extend_from_slice(&self.pairs.to_be_bytes());
                for i in 0..self.pairs {
                    aad.extend(short(format!("k{i}").as_bytes()));
                    aad.extend(short(b"v"));
                }
            }
            m.extend_from_slice(&(aad.len() as u16).to_be_bytes());
            m.extend(aad);
            m.extend_from_slice(&(self.keys.len() as u16).to_be_bytes());
            for key in &self.keys {
                m.extend(short(KMS_PROVIDER));
                m.extend(short(key.as_bytes()));
                m.extend(short(&[0x55; 40]));
            }
            m.push(if self.frames.is_some() { 0x02 } else { 0x01 });
            m.extend_from_slice(&self.frame_length.to_be_bytes());
            m.extend_from_slice(&[0xbb; 32 + TAG_LEN]);
            match self.frames {
                Some(frames) => {
                    for n in 1..=frames {
                        m.extend_from_slice(&n.to_be_bytes());
                        m.extend(vec![0xcc; IV_LEN + self.frame_length as usize + TAG_LEN]);
                    }
                    m.extend_from_slice(&FINAL_FRAME.to_be_bytes());
                    m.extend_from_slice(&(frames + 1).to_be_bytes());
                    m.extend_from_slice(&[0xdd; IV_LEN]);
                    m.extend_from_slice(&5u32.to_be_bytes());
                    m.extend_from_slice(&[0xee; 5 + TAG_LEN]);
                }
                None => {
                    m.extend_from_slice(&[0xdd; IV_LEN]);
                    m.extend_from_slice(&100u64.to_be_bytes());
                    m.extend_from_slice(&[0xee; 100 + TAG_LEN]);
                }
            }
            if self.suite == V2_SIGNING_SUITE {
                m.extend(short(&[0x99; 103]));
            }
            m
        }

        fn inspect(&self) -> Result<Shape, Refused> {
            inspect(&self.bytes(), &LIMITS, ARN)
        }
    }

    #[test]
    fn reads_the_shape_of_well_formed_messages() {
        let shape = Forge::new().inspect().unwrap();
        assert_eq!(shape.frames, 3);
        assert_eq!(shape.frame_length, Some(64));
        assert_eq!(shape.context_pairs, 1);
        assert_eq!(
            shape.data_keys,
            vec![("aws-kms".to_string(), ARN.to_string())]
        );
        let bytes = Forge::new().bytes();
        assert_eq!(&bytes[shape.data_keys_at.clone()][..2], &[0, 1]);

        let unsigned = Forge {
            suite: V2_SUITES[0],
            pairs: 0,
            ..Forge::new()
        };
        assert_eq!(unsigned.inspect().unwrap().context_pairs, 0);
        let whole = Forge {
            frames: None,
            ..Forge::new()
        };
        assert_eq!(whole.inspect().unwrap().frames, 1);
        let at_the_limits = Forge {
            frames: Some(LIMITS.max_frames - 1),
            pairs: LIMITS.max_context_pairs,
            keys: vec!["arn:other", "arn:other", ARN],
            ..Forge::new()
        };
        assert_eq!(at_the_limits.inspect().unwrap().frames, 10);
    }

    fn refusal(forge: Forge) -> String {
        forge.inspect().expect_err("refused").0
    }

    #[test]
    fn refuses_what_is_outside_the_limits_with_the_reason() {
        let why = refusal(Forge {
            frames: Some(LIMITS.max_frames),
            ..Forge::new()
        });
        assert!(why.contains("more than 10 frames"), "{why}");
        let why = refusal(Forge {
            keys: vec![ARN; 4],
            ..Forge::new()
        });
        assert!(why.contains("4 encrypted data keys; at most 3"), "{why}");
        let why = refusal(Forge {
            keys: vec!["arn:aws:kms:eu-west-1:123456789012:key/theirs"],
            ..Forge::new()
        });
        assert!(
            why.contains("no data key") && why.contains("key/theirs"),
            "{why}"
        );
        let why = refusal(Forge {
            pairs: 5,
            ..Forge::new()
        });
        assert!(why.contains("5 pairs"), "{why}");
        let why = refusal(Forge {
            keys: vec![],
            ..Forge::new()
        });
        assert!(why.contains("no encrypted data key"), "{why}");
        let why = refusal(Forge {
            frame_length: 0,
            ..Forge::new()
        });
        assert!(why.contains("frame length is 0"), "{why}");
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused_without_panicking() {
        let bytes = Forge::new().bytes();
        for len in 0..bytes.len() {
            let why = inspect(&bytes[..len], &LIMITS, ARN)
                .expect_err("truncated")
                .0;
            assert!(why.contains("truncated"), "{len}: {why}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            inspect(&longer, &LIMITS, ARN)
                .unwrap_err()
                .0
                .contains("1 bytes follow")
        );
    }

    #[test]
    fn refuses_other_versions_and_suites() {
        let mut v1 = Forge::new().bytes();
        v1[0] = 0x01;
        assert!(
            inspect(&v1, &LIMITS, ARN)
                .unwrap_err()
                .0
                .contains("version 1")
        );
        let mut suite = Forge::new().bytes();
        suite[1] = 0x03;
        assert!(
            inspect(&suite, &LIMITS, ARN)
                .unwrap_err()
                .0
                .contains("not a key-committing")
        );
    }

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
