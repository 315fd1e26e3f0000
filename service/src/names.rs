//! File names, checked before any AWS call.

/// Why a name is refused.
pub fn validate(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 512 {
        return Err("a name is 1 to 512 bytes of UTF-8");
    }
    if name.starts_with('/') {
        return Err("a name must not start with `/`");
    }
    if name.contains('\\') {
        return Err("a name must not contain a backslash");
    }
    if name.chars().any(char::is_control) {
        return Err("a name must not contain control characters");
    }
    if name
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err("a name must not contain `.` or `..` segments");
    }
    if name.split('/').any(str::is_empty) {
        return Err("a name must not contain empty segments (`//` or a trailing `/`)");
    }
    Ok(())
}

/// Where raw files live in the initial bucket.
pub const RAW_PREFIX: &str = "raw/";
/// Where outputs live in the final bucket.
pub const PROCESSED_PREFIX: &str = "processed/";

pub fn raw_key(name: &str) -> String {
    format!("{RAW_PREFIX}{name}")
}

pub fn processed_key(name: &str) -> String {
    format!("{PROCESSED_PREFIX}{name}")
}

pub fn failed_key(name: &str) -> String {
    format!("failed/{name}.json")
}

/// Names of the user metadata on stored objects.
pub mod meta {
    /// SHA-256 (hex) of the object's own content.
    pub const SHA256: &str = "sha256";
    /// On an output: the raw object it was made from, and that object's digest.
    pub const SOURCE_KEY: &str = "source-key";
    pub const SOURCE_ETAG: &str = "source-etag";
    pub const SOURCE_VERSION: &str = "source-version";
    pub const SOURCE_SHA256: &str = "source-sha256";
    pub const PROCESSOR: &str = "processor";
    pub const PROCESSED_AT: &str = "processed-at";
    /// Lines of a `jsonl` output.
    pub const LINES: &str = "lines";
    /// On a raw object retrieved from upstream: where from, and its validators.
    pub const SOURCE_URL: &str = "source-url";
    pub const UPSTREAM_ETAG: &str = "upstream-etag";
    pub const UPSTREAM_LAST_MODIFIED: &str = "upstream-last-modified";
}

/// A key as a URL path (CopySource): percent-encoded except for `/`.
pub fn percent_encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// S3 user metadata travels in HTTP headers, so non-ASCII text is percent-encoded.
pub fn metadata_value(text: &str) -> String {
    percent_encode_path(text)
}

/// Reverses [`metadata_value`].
pub fn metadata_text(value: &str) -> String {
    String::from_utf8_lossy(&percent_decode(value)).into_owned()
}

/// Decodes `%XX` escapes; anything else passes through.
pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator fixtures' queue hears of the objects the service writes raw.
    #[test]
    fn the_fixtures_notify_on_the_raw_prefix() {
        assert_eq!(emulator_fixtures::RAW_PREFIX, RAW_PREFIX);
    }

    #[test]
    fn good_names_pass() {
        for name in [
            "a",
            "report.csv",
            "dir/sub/file.jsonl.gz",
            "ünïcode name.txt",
            &"x".repeat(512),
        ] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn every_bad_class_is_refused() {
        let long = "x".repeat(513);
        for name in [
            "",
            &long,
            "/abs",
            "a/../b",
            "..",
            "a/..",
            "./a",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            "tab\there",
            "a//b",
            "dir/",
            "\u{7f}",
        ] {
            assert!(validate(name).is_err(), "{name:?} should be refused");
        }
    }

    #[test]
    fn metadata_values_are_ascii_and_round_trip() {
        for text in [
            "plain",
            "ünïcode name.txt",
            "a b/c%d",
            "https://h/p?q=1&r=ß",
        ] {
            let value = metadata_value(text);
            assert!(value.is_ascii() && !value.contains(' '), "{value}");
            assert_eq!(metadata_text(&value), text);
        }
        assert_eq!(percent_encode_path("dir/a b.txt"), "dir/a%20b.txt");
        // A stray `%` passes through.
        assert_eq!(percent_decode("100%"), b"100%");
    }
}
