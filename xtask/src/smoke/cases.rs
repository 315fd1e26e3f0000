//! The files a smoke run pushes through the service, and what must come back for each: chosen
//! by the service's processor, one of them form-typed, one sealed with the deployed key.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::seal::Sealer;

/// A file to push through the pipeline and what must come back.
#[derive(Clone)]
pub(super) struct Case {
    pub(super) label: String,
    pub(super) body: Vec<u8>,
    pub(super) expected: Vec<u8>,
    /// The upload's Content-Type, when not the client's default.
    pub(super) content_type: Option<&'static str>,
}

/// curl's Content-Type for `--data-binary`: a body once stored empty by the emulator, so every
/// smoke run sends one file with it.
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

impl Case {
    fn form_typed(mut self) -> Case {
        self.label = format!("form-typed-{}", self.label);
        self.content_type = Some(FORM_TYPE);
        self
    }
}

pub(super) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

pub(super) fn cases(info: &Value, run_seed: u64) -> Vec<Case> {
    let part_size = info["part_size"].as_u64().unwrap_or(8 * 1024 * 1024) as usize;
    let processor = info["processor"].as_str().unwrap_or("identity");
    let jsonl: Vec<u8> = (0..2000)
        .map(|i| format!("{{\"n\":{i},\"smoke\":true}}\n"))
        .collect::<String>()
        .into_bytes();
    let text = b"filepipe smoke test\n"
        .iter()
        .copied()
        .cycle()
        .take(1024)
        .collect::<Vec<u8>>();
    let large = pseudo_random(3 * part_size + 1024, run_seed);
    let as_is = |label: &str, body: Vec<u8>| Case {
        label: label.to_string(),
        expected: body.clone(),
        body,
        content_type: None,
    };
    match processor {
        "gunzip" => {
            let gzip = |data: &[u8]| {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(data).expect("gzip in memory");
                encoder.finish().expect("gzip in memory")
            };
            let text = Case {
                label: "text-1kib.txt.gz".into(),
                body: gzip(&text),
                expected: text,
                content_type: None,
            };
            vec![
                Case {
                    label: "empty.gz".into(),
                    body: gzip(b""),
                    expected: Vec::new(),
                    content_type: None,
                },
                text.clone(),
                text.form_typed(),
                Case {
                    label: "large-3-parts.bin.gz".into(),
                    body: gzip(&large),
                    expected: large,
                    content_type: None,
                },
                Case {
                    label: "lines.jsonl.gz".into(),
                    body: gzip(&jsonl),
                    expected: jsonl,
                    content_type: None,
                },
            ]
        }
        "jsonl" => vec![
            as_is("empty.jsonl", Vec::new()),
            as_is("lines.jsonl", jsonl.clone()),
            as_is("lines.jsonl", jsonl).form_typed(),
            as_is("large-3-parts.jsonl", {
                let line = b"{\"pad\":\"0123456789abcdef0123456789abcdef0123456789abcdef\"}\n";
                line.iter()
                    .copied()
                    .cycle()
                    .take((3 * part_size + 1024) / line.len() * line.len())
                    .collect()
            }),
        ],
        _ => vec![
            as_is("empty.bin", Vec::new()),
            as_is("text-1kib.txt", text.clone()),
            as_is("text-1kib.txt", text).form_typed(),
            as_is("large-3-parts.bin", large),
        ],
    }
}

/// An Encryption SDK message of the second case's input, as a producer holding the key would
/// send it: the service must decrypt it before processing.
pub(super) async fn sealed_case(cases: &[Case], key_arn: &str, sealer: &Sealer) -> Result<Case> {
    let template = &cases[1];
    Ok(Case {
        label: format!("sealed-{}.esdk", template.label),
        body: sealer
            .seal(key_arn, template.body.clone())
            .await
            .context("encrypting with the deployed key")?,
        expected: template.expected.clone(),
        content_type: None,
    })
}
