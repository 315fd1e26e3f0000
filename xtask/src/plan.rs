//! `cargo xtask plan`: what `deploy` would change, for pipelines that review a plan before
//! applying it with `cargo xtask deploy --plan FILE`. Exit 0: no changes; 2: changes; 1: an
//! error (Terraform's `-detailed-exitcode`).

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::artifact::Source;
use crate::context::Context;
use crate::deploy::SharedArgs;
use crate::terraform::{self, Prepared, Summary};

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Args {
    /// Save the plan here, for `cargo xtask deploy --plan FILE` [default: target/xtask/<env>/plan.tfplan].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print a JSON summary on standard output (Terraform's own output goes to standard error).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub shared: SharedArgs,
}

#[derive(Serialize)]
struct Report<'a> {
    environment: &'a str,
    changes: bool,
    plan_file: String,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// Returns the exit code: 0 without changes, 2 with.
pub fn run(cx: &Context, args: Args) -> Result<u8> {
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
        return Ok(0);
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
    Ok(if summary.has_changes() { 2 } else { 0 })
}
