//! Every `aws_*` resource and data source of a Terraform tree checked against the provider's
//! schema (provider_schema.rs), offline: unknown arguments, missing required ones, an
//! attribute written as a block or a block written as an attribute, and references to
//! attributes a resource does not have. Stands in for `terraform validate` where the provider
//! cannot be installed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use hcl::{Block, Body};

use super::references;
use crate::provider_schema::{BlockSchema, Form, Schema};

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Arguments every resource and data source takes from Terraform itself.
const META_ARGUMENTS: [&str; 4] = ["count", "for_each", "depends_on", "provider"];
const META_BLOCKS: [&str; 3] = ["lifecycle", "provisioner", "connection"];

/// Checks every `.tf` file under `root` (modules included, `.terraform` and hidden
/// directories skipped). Returns how many blocks were checked and what was found.
pub fn check_tree(root: &Path, schema: &Schema) -> Result<(usize, Vec<Finding>)> {
    let mut files = Vec::new();
    collect_tf_files(root, &mut files)?;
    files.sort();
    let mut checked = 0;
    let mut findings = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let body: Body =
            hcl::parse(&text).with_context(|| format!("parsing {}", file.display()))?;
        let mut file_check = FileCheck {
            file: &file,
            text: &text,
            findings: &mut findings,
        };
        checked += file_check.blocks(&body, schema);
        file_check.references(schema);
    }
    Ok((checked, findings))
}

fn collect_tf_files(dir: &Path, into: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_tf_files(&path, into)?;
        } else if path.extension().is_some_and(|x| x == "tf") {
            into.push(path);
        }
    }
    Ok(())
}

struct FileCheck<'a> {
    file: &'a Path,
    text: &'a str,
    findings: &'a mut Vec<Finding>,
}

impl FileCheck<'_> {
    fn report(&mut self, offset: usize, message: String) {
        self.findings.push(Finding {
            file: self.file.to_path_buf(),
            line: references::line_of(self.text, offset),
            message,
        });
    }

    fn blocks(&mut self, body: &Body, schema: &Schema) -> usize {
        let mut checked = 0;
        for block in body.blocks() {
            let labels: Vec<&str> = block.labels().iter().map(|l| l.as_str()).collect();
            let (kinds, what) = match block.identifier() {
                "resource" => (&schema.resources, "resource"),
                "data" => (&schema.data_sources, "data source"),
                _ => continue,
            };
            let [kind, name] = labels[..] else { continue };
            if !kind.starts_with("aws_") {
                continue;
            }
            checked += 1;
            let header = format!("{} \"{kind}\" \"{name}\"", block.identifier());
            let at = self.text.find(&header).unwrap_or(0);
            match kinds.get(kind) {
                None => self.report(at, format!("hashicorp/aws has no {what} `{kind}`")),
                Some(expected) => {
                    let path = format!("{kind}.{name}");
                    self.body(block.body(), expected, &path, at, true);
                }
            }
        }
        checked
    }

    /// Checks one body; `at` is where the search for its items starts in the text.
    fn body(&mut self, body: &Body, expected: &BlockSchema, path: &str, at: usize, top: bool) {
        if expected.unchecked {
            return;
        }
        for attribute in body.attributes() {
            let key = attribute.key();
            if top && META_ARGUMENTS.contains(&key) {
                continue;
            }
            let offset = self.find_item(at, key, "=");
            match expected.arguments.get(key) {
                None => self.report(offset, format!("{path}: unknown argument `{key}`")),
                Some(argument) if argument.form == Form::Block => self.report(
                    offset,
                    format!(
                        "{path}: `{key}` is a block: write `{key} {{ ... }}`, not `{key} = ...`"
                    ),
                ),
                Some(_) => {}
            }
        }
        for block in body.blocks() {
            let (key, inner) = match dynamic_content(block) {
                Some((label, content)) => (label, content),
                None => (block.identifier(), block.body()),
            };
            if top && META_BLOCKS.contains(&key) {
                continue;
            }
            let offset = if block.identifier() == "dynamic" {
                self.find_item(at, &format!("dynamic \"{key}\""), "{")
            } else {
                self.find_item(at, key, "{")
            };
            match expected.arguments.get(key) {
                None => self.report(offset, format!("{path}: unknown block `{key}`")),
                Some(argument) if argument.form == Form::Attribute => self.report(
                    offset,
                    format!("{path}: `{key}` is an argument: write `{key} = ...`, not a block"),
                ),
                Some(argument) => {
                    if let Some(nested) = &argument.nested {
                        self.body(inner, nested, &format!("{path}.{key}"), offset, false);
                    }
                }
            }
        }
        for (name, argument) in &expected.arguments {
            let present = body.attributes().any(|a| a.key() == name)
                || body.blocks().any(|b| {
                    b.identifier() == name || dynamic_content(b).is_some_and(|(l, _)| l == name)
                });
            if argument.required && !present {
                self.report(
                    at,
                    format!("{path}: the required argument `{name}` is missing"),
                );
            }
        }
    }

    /// The offset of `key` followed by `then` (after spaces), searching from `from`.
    fn find_item(&self, from: usize, key: &str, then: &str) -> usize {
        let bytes = self.text.as_bytes();
        let mut search = from;
        while let Some(found) = self.text[search..].find(key) {
            let start = search + found;
            let end = start + key.len();
            let before_ok = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let rest = self.text[end..].trim_start_matches([' ', '\t']);
            if before_ok && rest.starts_with(then) {
                return start;
            }
            search = end;
        }
        from
    }

    fn references(&mut self, schema: &Schema) {
        for reference in references::find(self.text) {
            let kinds = if reference.data {
                &schema.data_sources
            } else {
                &schema.resources
            };
            let Some(expected) = kinds.get(&reference.kind) else {
                let what = if reference.data {
                    "data source"
                } else {
                    "resource"
                };
                self.report(
                    reference.start,
                    format!(
                        "reference to `{}`: hashicorp/aws has no {what} of that type",
                        reference.kind
                    ),
                );
                continue;
            };
            if let Some(attribute) = &reference.attribute
                && !expected.attributes.contains(attribute)
            {
                self.report(
                    reference.start,
                    format!(
                        "`{}.{}` has no attribute `{attribute}`",
                        reference.kind, reference.name
                    ),
                );
            }
        }
    }
}

/// `dynamic "label" { content { ... } }`: the label and the content.
fn dynamic_content(block: &Block) -> Option<(&str, &Body)> {
    if block.identifier() != "dynamic" {
        return None;
    }
    let label = block.labels().first()?.as_str();
    let content = block
        .body()
        .blocks()
        .find(|b| b.identifier() == "content")?;
    Some((label, content.body()))
}
