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

#[cfg(test)]
mod tests {
    use super::*;

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
}
