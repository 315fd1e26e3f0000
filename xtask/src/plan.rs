//! `cargo xtask plan`: what `deploy` would change, for pipelines that review a plan before
//! applying it with `cargo xtask deploy --plan FILE`. Exit 0: no changes; 2: changes; 1: an
//! error (Terraform's `-detailed-exitcode`).

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::artifact::Source;
use crate::context::Context;
use crate::flags;
use crate::terraform::{self, Prepared, Summary};

#[derive(Serialize)]
struct Report<'a> {
    environment: &'a str,
    changes: bool,
    plan_file: String,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// Exits 0 without changes, 2 with.
pub fn run(cx: &Context, args: flags::Plan) -> Result<ExitCode> {
    let Prepared {
        tf,
        backend,
        var_files,
    } = args.shared.prepare(cx, Source::built_for(cx))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| cx.state_dir().join("plan.tfplan"));
    if cx.dry_run {
        eprintln!(
            "    (dry run) {}",
            tf.display(&[format!("plan -out={}", out.display())])
        );
        return Ok(ExitCode::SUCCESS);
    }
    terraform::init(cx, &tf, &backend, args.shared.backend_change())?;
    let summary = terraform::plan(cx, &tf, &var_files, &out)?;
    if args.json {
        let report = Report {
            environment: &cx.env.name,
            changes: summary.has_changes(),
            plan_file: out.display().to_string(),
            summary: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if summary.has_changes() {
        println!(
            "plan {}: {}; apply it with `cargo xtask deploy --env {} --plan {}`",
            cx.env.name,
            summary.counts(),
            cx.env.name,
            out.display()
        );
    } else {
        println!("plan {}: no changes", cx.env.name);
    }
    Ok(if summary.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
