//! The layering the README's tables promise, read from the sources: no import circle in
//! any crate, and the AWS SDK only where the service's layers allow it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use xtask::context::workspace_root;

/// Every module of a crate (`a::b` for `src/a/b.rs` or `src/a/b/mod.rs`) and its source
/// outside `#[cfg(test)]`.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "main" | "lib")
            ) {
                parts.pop();
            }
            let name = parts.join("::");
            if name.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_string();
            found.insert(name, code);
        }
    }
    found
}

/// The modules each module names with `crate::…` or `super::…` (its own children and
/// parents aside).
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |from: &str, path: &str| -> Option<String> {
        let segments: Vec<&str> = path.split("::").collect();
        (1..=segments.len().min(2))
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|candidate| modules.contains_key(candidate))
            .filter(|to| {
                to != from
                    && !from.starts_with(&format!("{to}::"))
                    && !to.starts_with(&format!("{from}::"))
            })
    };
    let mut graph = BTreeMap::new();
    for (name, code) in modules {
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        let mut targets = BTreeSet::new();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_string())] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let items: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                    group[..group.find('}').unwrap_or(0)]
                        .split(',')
                        .map(|item| item.trim().to_string())
                        .collect()
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .unwrap_or(rest.len());
                    vec![rest[..end].to_string()]
                };
                for item in items {
                    let path = if base.is_empty() {
                        item
                    } else {
                        format!("{base}::{item}")
                    };
                    if let Some(to) = resolve(name, path.trim_end_matches("::")) {
                        targets.insert(to);
                    }
                }
            }
        }
        graph.insert(name.clone(), targets);
    }
    graph
}

/// The circles of a graph, each as its sorted members.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                let mut circle = path.clone();
                circle.sort();
                found.insert(circle);
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found
}

#[test]
fn the_circle_finder_finds_circles() {
    let modules: BTreeMap<String, String> = [
        ("a", "use crate::b::thing;"),
        ("b", "use crate::{c, d::e};"),
        ("c", "fn f() { crate::a::g() }"),
        ("d", ""),
        ("d::e", "use super::super::d;"),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_string(), c.to_string()))
    .collect();
    let graph = edges(&modules);
    assert_eq!(
        graph["b"],
        BTreeSet::from(["c".to_string(), "d::e".to_string()])
    );
    let found = circles(&graph);
    assert_eq!(
        found,
        BTreeSet::from([vec!["a".to_string(), "b".to_string(), "c".to_string()]])
    );
}

#[test]
fn no_crate_has_an_import_circle() {
    for (krate, at_least) in [
        ("service/src", 10),
        ("xtask/src", 10),
        ("aws-clients/src", 2),
        ("emulator-fixtures/src", 1),
    ] {
        let graph = edges(&modules(&workspace_root().join(krate)));
        assert!(
            graph.len() > at_least,
            "{krate}: only {} modules found",
            graph.len()
        );
        let found = circles(&graph);
        assert!(found.is_empty(), "{krate} has import circles: {found:?}");
    }
}

#[test]
fn only_the_store_and_the_uploader_call_s3_and_only_the_queue_calls_sqs_in_the_service() {
    let modules = modules(&workspace_root().join("service/src"));
    for (name, code) in &modules {
        let allowed = matches!(name.as_str(), "store" | "upload")
            || name.starts_with("store::")
            || name.starts_with("upload::");
        if !allowed {
            assert!(
                !code.contains("aws_sdk_s3"),
                "service module `{name}` uses the S3 SDK; S3 calls belong in the store"
            );
        }
        if name != "queue" {
            assert!(
                !code.contains("aws_sdk_sqs"),
                "service module `{name}` uses the SQS SDK; SQS calls belong in the queue"
            );
        }
    }
}

/// The names of a manifest's `[dependencies]` table (not its dev-dependencies).
fn normal_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut in_table = false;
    let mut names = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[dependencies]";
        } else if in_table && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['.', '=', ' ']).next().unwrap_or_default();
            names.insert(name.to_string());
        }
    }
    names
}

#[test]
fn the_xtask_builds_without_the_service() {
    let manifest = std::fs::read_to_string(workspace_root().join("xtask/Cargo.toml")).unwrap();
    let dependencies = normal_dependencies(&manifest);
    assert!(
        dependencies.contains("aws-clients"),
        "the manifest reader found no dependencies: {dependencies:?}"
    );
    for heavy in ["service", "aws-esdk"] {
        assert!(
            !dependencies.contains(heavy),
            "xtask depends on `{heavy}`: a cold `cargo xtask --help` would build the service and the Encryption SDK; use aws-clients, certificates or emulator-fixtures, or `service seal`"
        );
    }
    assert_eq!(
        normal_dependencies(
            "[dependencies]\nservice.workspace = true\n[dev-dependencies]\naxum = \"1\"\n"
        ),
        BTreeSet::from(["service".to_string()])
    );
}

/// Every Rust file of the workspace under `dirs`, recursively.
fn rust_files(dirs: &[&str]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending: Vec<_> = dirs.iter().map(|d| workspace_root().join(d)).collect();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// A file's reason for its length, in its leading `//!` lines.
fn says_why_it_is_long(text: &str) -> bool {
    text.lines()
        .take_while(|line| line.starts_with("//!"))
        .any(|line| line.contains("Longer than 400 lines:"))
}

#[test]
fn no_file_is_over_400_lines_without_saying_why() {
    let files = rust_files(&[
        "aws-clients/src",
        "certificates/src",
        "emulator-fixtures/src",
        "service/src",
        "service/tests",
        "xtask/src",
        "xtask/tests",
    ]);
    assert!(files.len() > 100, "only {} files found", files.len());
    let unexplained: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let lines = text.lines().count();
            (lines > 400 && !says_why_it_is_long(&text)).then(|| {
                format!(
                    "{} ({lines} lines)",
                    path.strip_prefix(workspace_root()).unwrap().display()
                )
            })
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "split these by concern, or say at the top why they are long (`//! Longer than 400 lines: ...`): {unexplained:?}"
    );
    assert!(says_why_it_is_long(
        "//! A module.\n//!\n//! Longer than 400 lines: its tests.\n"
    ));
    assert!(!says_why_it_is_long(
        "//! A module.\n\n// Longer than 400 lines: not in its doc.\n"
    ));
}

/// The xtask's commands, as modules (`local`'s command is `local::command`, the rest of
/// `local/` are leaves).
const COMMANDS: [&str; 13] = [
    "bench",
    "bootstrap",
    "deploy",
    "destroy",
    "down",
    "load",
    "local::command",
    "plan",
    "render_user_data",
    "rotate",
    "smoke",
    "test",
    "up",
];

/// The command a module belongs to, if it is one or inside one.
fn command_of(module: &str) -> Option<&'static str> {
    COMMANDS
        .into_iter()
        .find(|command| module == *command || module.starts_with(&format!("{command}::")))
}

#[test]
fn commands_use_leaves_and_only_up_runs_other_commands() {
    let graph = edges(&modules(&workspace_root().join("xtask/src")));
    let mut crossings = BTreeSet::new();
    for (from, targets) in &graph {
        let Some(command) = command_of(from) else {
            continue;
        };
        for to in targets {
            if let Some(other) = command_of(to).filter(|other| *other != command) {
                crossings.insert(format!("{command} -> {other}"));
            }
        }
    }
    // `up` is the local pipeline: bootstrap, deploy and smoke are its steps.
    let steps = BTreeSet::from([
        "up -> bootstrap".to_string(),
        "up -> deploy".to_string(),
        "up -> smoke".to_string(),
    ]);
    let unexpected: Vec<&String> = crossings.difference(&steps).collect();
    assert!(
        unexpected.is_empty(),
        "a command reaches into another; move what they share into a leaf: {unexpected:?}"
    );
    assert!(
        crossings.contains("up -> deploy"),
        "the edge finder sees up's steps: {crossings:?}"
    );
    assert_eq!(command_of("smoke::checks"), Some("smoke"));
    assert_eq!(command_of("local::emulator"), None);
}

/// Whether `readme` names the file `path` (workspace-relative) in backticks: by its name, or
/// by a path ending in it.
fn readme_names(readme: &str, path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    readme
        .split('`')
        .skip(1)
        .step_by(2)
        .any(|quoted| quoted == name || quoted == path || quoted.ends_with(&format!("/{name}")))
}

#[test]
fn the_readme_names_every_source_file() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let root = workspace_root();
    let mut files = rust_files(&[
        "aws-clients/src",
        "certificates/src",
        "emulator-fixtures/src",
        "service/src",
        "service/tests",
        "xtask/src",
        "xtask/tests",
    ]);
    files.push(root.join("xtask/src/moto_server_fidelity.py"));
    files.push(root.join("xtask/src/bench/boto3_transfer.py"));
    let unnamed: Vec<String> = files
        .iter()
        .map(|path| path.strip_prefix(&root).unwrap().display().to_string())
        .filter(|path| !readme_names(&readme, path))
        .collect();
    assert!(
        unnamed.is_empty(),
        "README.md's layout does not name: {unnamed:?}"
    );
    assert!(readme_names(
        "see `store/raw.rs`",
        "service/src/store/raw.rs"
    ));
    assert!(!readme_names("see raw.rs", "service/src/store/raw.rs"));
}
