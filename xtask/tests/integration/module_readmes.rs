//! Each Terraform module's README documents exactly its inputs and outputs: every variable
//! and output appears in its README's `input` / `output` table, nothing else does, and the
//! type and default columns say what variables.tf says (required ones as "—").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hcl::{Body, Expression};

use super::terraform_static::{blocks, labels, module_dirs, parse};

/// One row of a README table: the names in its first cell, and its other cells by header.
struct Row {
    names: Vec<String>,
    cells: BTreeMap<String, String>,
}

/// The rows of every table whose first header cell is `kind` (`input` or `output`).
fn documented(readme: &str, kind: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in readme.lines() {
        let Some(inner) = line.trim().strip_prefix('|') else {
            header = None;
            continue;
        };
        let cells: Vec<String> = inner
            .trim_end_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_string())
            .collect();
        match &header {
            None => header = Some(cells),
            Some(_)
                if cells
                    .iter()
                    .all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) => {}
            Some(head) if head[0] == kind => rows.push(Row {
                names: backticked(&cells[0]),
                cells: head.iter().cloned().zip(cells).skip(1).collect(),
            }),
            Some(_) => {}
        }
    }
    rows
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A cell's value for each of `count` names: "a, b" gives one part each when the counts
/// match, otherwise the whole cell holds for all.
fn per_name(cell: &str, count: usize) -> Vec<String> {
    let parts: Vec<&str> = cell.split(", ").collect();
    if parts.len() == count {
        parts.iter().map(|p| p.to_string()).collect()
    } else {
        vec![cell.to_string(); count]
    }
}

fn squeeze(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '`')
        .collect()
}

/// What the README says of one variable, against what variables.tf declares.
fn check_variable(
    module: &str,
    name: &str,
    body: &Body,
    documented_type: Option<&str>,
    documented_default: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let attr = |key: &str| body.attributes().find(|a| a.key() == key).map(|a| a.expr());
    if let (Some(documented), Some(declared)) = (documented_type, attr("type")) {
        let declared = squeeze(&declared.to_string());
        let documented = squeeze(documented);
        let agrees = if declared.starts_with("object(") {
            documented.starts_with("object")
        } else {
            documented == declared
        };
        if !agrees {
            problems.push(format!(
                "{module}: `{name}` is documented as {documented}, declared {declared}"
            ));
        }
    }
    if let Some(documented) = documented_default {
        let documented = documented.trim_start_matches('`');
        let says_required = documented.starts_with('—');
        match attr("default") {
            None if !says_required => problems.push(format!(
                "{module}: `{name}` is required, but its default is documented as {documented:?}"
            )),
            Some(_) if says_required => problems.push(format!(
                "{module}: `{name}` has a default, but is documented as required"
            )),
            Some(default @ (Expression::Number(_) | Expression::Bool(_))) => {
                let literal = default.to_string();
                if !documented.starts_with(&literal) {
                    problems.push(format!(
                        "{module}: `{name}` defaults to {literal}, documented as {documented:?}"
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

fn check_module(dir: &Path) -> Vec<String> {
    let module = dir
        .strip_prefix(super::terraform_static::terraform_dir().parent().unwrap())
        .unwrap()
        .display()
        .to_string();
    let readme_path = dir.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", readme_path.display()));
    let mut problems = Vec::new();

    let variables = parse(&dir.join("variables.tf"));
    let declared: BTreeMap<&str, &Body> = blocks(&variables, "variable")
        .map(|b| (labels(b)[0], b.body()))
        .collect();
    let mut inputs = BTreeSet::new();
    for row in documented(&readme, "input") {
        let count = row.names.len();
        let types = row.cells.get("type").map(|c| per_name(c, count));
        let defaults = row.cells.get("default").map(|c| per_name(c, count));
        for (i, name) in row.names.iter().enumerate() {
            inputs.insert(name.clone());
            if let Some(body) = declared.get(name.as_str()) {
                problems.extend(check_variable(
                    &module,
                    name,
                    body,
                    types.as_ref().map(|t| t[i].as_str()),
                    defaults.as_ref().map(|d| d[i].as_str()),
                ));
            }
        }
    }
    let declared_names: BTreeSet<String> = declared.keys().map(|k| k.to_string()).collect();
    for missing in declared_names.difference(&inputs) {
        problems.push(format!("{module}: input `{missing}` is not in README.md"));
    }
    for extra in inputs.difference(&declared_names) {
        problems.push(format!(
            "{module}: README.md documents input `{extra}`, which variables.tf does not declare"
        ));
    }

    let outputs: BTreeSet<String> = blocks(&parse(&dir.join("outputs.tf")), "output")
        .map(|b| labels(b)[0].to_string())
        .collect();
    let documented_outputs: BTreeSet<String> = documented(&readme, "output")
        .into_iter()
        .flat_map(|row| row.names)
        .collect();
    for missing in outputs.difference(&documented_outputs) {
        problems.push(format!("{module}: output `{missing}` is not in README.md"));
    }
    for extra in documented_outputs.difference(&outputs) {
        problems.push(format!(
            "{module}: README.md documents output `{extra}`, which outputs.tf does not define"
        ));
    }
    problems
}

#[test]
fn every_module_readme_documents_exactly_its_inputs_and_outputs() {
    let dirs = module_dirs();
    assert!(dirs.len() >= 8, "the root and seven modules: {dirs:?}");
    let problems: Vec<String> = dirs.iter().flat_map(|dir| check_module(dir)).collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_readme_check_finds_what_is_missing_extra_or_wrong() {
    let dir = super::temp_dir("readme-check");
    std::fs::write(
        dir.join("variables.tf"),
        r#"
variable "documented" {
  type        = number
  default     = 5
  description = "x"
}
variable "undocumented" {
  type        = string
  description = "x"
}
variable "required" {
  type        = list(string)
  description = "x"
}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("outputs.tf"),
        "output \"shown\" {\n  value = 1\n}\noutput \"hidden\" {\n  value = 2\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("README.md"),
        "| input | type | default |\n|---|---|---|\n\
         | `documented` | number | 7 |\n\
         | `required` | map(string) | [] |\n\
         | `gone` | string | — |\n\n\
         | output | description |\n|---|---|\n| `shown`, `stale` | x |\n",
    )
    .unwrap();
    let problems = check_module(&dir).join("\n");
    for expected in [
        "`documented` defaults to 5, documented as \"7\"",
        "`required` is documented as map(string), declared list(string)",
        "`required` is required, but its default is documented as \"[]\"",
        "input `undocumented` is not in README.md",
        "documents input `gone`",
        "output `hidden` is not in README.md",
        "documents output `stale`",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not found in:\n{problems}"
        );
    }
    assert_eq!(problems.lines().count(), 7, "{problems}");
}
