//! References to AWS resources and data sources in HCL text (`aws_s3_bucket.this.arn`,
//! `data.aws_partition.current.partition`, `aws_vpc_endpoint.s3[*].id`), found the same way
//! inside expressions and string templates. The schema check reads them, and the
//! provider-free replica rewrites them.

/// One reference, by byte range in the text it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub start: usize,
    pub end: usize,
    /// `data.aws_...` rather than `aws_...`.
    pub data: bool,
    /// The resource or data source type, `aws_...`.
    pub kind: String,
    pub name: String,
    /// The index or splat right after the name (`[0]`, `[*]`, `[each.key]`), as written.
    pub index: Option<String>,
    /// The attribute read, if any (`depends_on` lists name resources without one).
    pub attribute: Option<String>,
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn ident_at(text: &[u8], at: usize) -> usize {
    let mut end = at;
    while end < text.len() && is_ident(text[end]) && !(end == at && text[end] == b'-') {
        end += 1;
    }
    end
}

/// Every reference in `text`, outside whole-line comments.
pub fn find(text: &str) -> Vec<Reference> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if !(trimmed.starts_with('#') || trimmed.starts_with("//")) {
            let mut at = line_start;
            let end_of_line = line_start + line.len();
            while at < end_of_line {
                match parse_at(bytes, at, end_of_line) {
                    Some(reference) => {
                        at = reference.end;
                        found.push(reference);
                    }
                    None => at += 1,
                }
            }
        }
        line_start += line.len();
    }
    found
}

fn parse_at(bytes: &[u8], start: usize, limit: usize) -> Option<Reference> {
    if start > 0 && (is_ident(bytes[start - 1]) || bytes[start - 1] == b'.') {
        return None;
    }
    let mut at = start;
    let data = bytes[at..limit].starts_with(b"data.aws_");
    if data {
        at += "data.".len();
    }
    if !bytes[at..limit].starts_with(b"aws_") {
        return None;
    }
    let kind_end = ident_at(bytes, at);
    let kind = std::str::from_utf8(&bytes[at..kind_end]).ok()?.to_string();
    if kind_end >= limit || bytes[kind_end] != b'.' {
        return None;
    }
    let name_start = kind_end + 1;
    let name_end = ident_at(bytes, name_start);
    if name_end == name_start || bytes[name_start].is_ascii_digit() {
        return None;
    }
    let name = std::str::from_utf8(&bytes[name_start..name_end])
        .ok()?
        .to_string();
    let mut end = name_end;
    let mut index = None;
    if end < limit && bytes[end] == b'[' {
        let mut depth = 0;
        let mut close = end;
        while close < limit {
            match bytes[close] {
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            close += 1;
        }
        if close >= limit {
            return None;
        }
        index = Some(std::str::from_utf8(&bytes[end..=close]).ok()?.to_string());
        end = close + 1;
    }
    let mut attribute = None;
    if end + 1 < limit && bytes[end] == b'.' && bytes[end + 1].is_ascii_alphabetic() {
        let attribute_end = ident_at(bytes, end + 1);
        attribute = Some(
            std::str::from_utf8(&bytes[end + 1..attribute_end])
                .ok()?
                .to_string(),
        );
        end = attribute_end;
    }
    Some(Reference {
        start,
        end,
        data,
        kind,
        name,
        index,
        attribute,
    })
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references_in_expressions_templates_and_lists() {
        let text = r#"
resource "aws_s3_bucket_policy" "this" {
  # aws_s3_bucket.commented.out is not a reference
  bucket = aws_s3_bucket.this.id
  policy = "arn:${data.aws_partition.current.partition}:s3:::x"
  ids    = aws_vpc_endpoint.s3[*].id
  one    = aws_instance.web[0].private_ip
  depends_on = [aws_s3_bucket_public_access_block.this]
  action = "s3:x-amz-server-side-encryption-aws-kms-key-id"
}
"#;
        let found: Vec<String> = find(text)
            .iter()
            .map(|r| {
                format!(
                    "{}{}.{}{}{}",
                    if r.data { "data." } else { "" },
                    r.kind,
                    r.name,
                    r.index.as_deref().unwrap_or(""),
                    r.attribute
                        .as_deref()
                        .map(|a| format!(" -> {a}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                "aws_s3_bucket.this -> id",
                "data.aws_partition.current -> partition",
                "aws_vpc_endpoint.s3[*] -> id",
                "aws_instance.web[0] -> private_ip",
                "aws_s3_bucket_public_access_block.this",
            ]
        );
        let first = &find(text)[0];
        assert_eq!(&text[first.start..first.end], "aws_s3_bucket.this.id");
        assert_eq!(line_of(text, first.start), 4);
    }
}
