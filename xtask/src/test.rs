//! `cargo xtask test`: the one test command, for developers and CI alike. Formatting, lints
//! and static Terraform checks first (seconds), then the test suite against the emulator.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use xshell::cmd;

use crate::context::Context;
use crate::flags;
use crate::local::emulator;
use crate::test_env::{emulator_env, terraform_on_path, tools_env};
use crate::tools::PythonTool;

/// Pinned: a newer checkov can add checks, and the result must not change by itself.
const CHECKOV: PythonTool = PythonTool {
    venv: "checkov",
    executable: "checkov",
    requirement: "checkov==3.3.30",
};

pub fn run(cx: &Context, args: flags::Test) -> Result<ExitCode> {
    let started = Instant::now();
    match &args.filter {
        None => static_checks(cx)?,
        Some(filter) => eprintln!(
            "note: only tests matching `{filter}`; formatting, lints and static checks are skipped (`cargo xtask test` runs everything)"
        ),
    }
    let tools = tools_env(cx)?;

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
    let result = run_tests(cx, args.filter.as_deref(), |mut cmd| {
        for (name, value) in emulator_env(cx, &record).into_iter().chain(tools.clone()) {
            cmd = cmd.env(name, value);
        }
        cmd
    });
    if we_started {
        emulator::stop(cx).context("stopping the emulator this run started")?;
    }
    result?;
    eprintln!(
        "{} passed in {:.0}s",
        if args.filter.is_some() {
            "the selected tests"
        } else {
            "all checks"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Seconds, and no emulator: a tree that fails these is not worth testing further.
fn static_checks(cx: &Context) -> Result<()> {
    let sh = &cx.sh;
    cx.run("cargo fmt --check", cmd!(sh, "cargo fmt --all -- --check"))?;
    let terraform = terraform_on_path()?;
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
    cx.run(
        "cargo clippy",
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --locked -- -D warnings"
        ),
    )
}

/// `cargo test`'s arguments before and after `--` for `filter`: a file of service/tests/ is
/// its own test target, and anything else is the harness's substring filter.
fn selection<'f>(root: &Path, filter: &'f str) -> (Vec<&'f str>, Vec<&'f str>) {
    let file_name = !filter.contains(['/', '.']);
    if file_name
        && root
            .join("service/tests")
            .join(format!("{filter}.rs"))
            .is_file()
    {
        (vec!["-p", "service", "--test", filter], vec![])
    } else {
        (vec!["--workspace"], vec![filter])
    }
}

/// `cargo test`, all of it or the part `filter` selects. A filter that selects nothing is an
/// error: a typo must not pass as a green run of zero tests.
fn run_tests<'a>(
    cx: &'a Context,
    filter: Option<&str>,
    with_env: impl Fn(xshell::Cmd<'a>) -> xshell::Cmd<'a>,
) -> Result<()> {
    let sh = &cx.sh;
    let Some(filter) = filter else {
        return cx.run(
            "cargo test",
            with_env(cmd!(sh, "cargo test --workspace --locked")),
        );
    };
    let shown = |selection: &[&str], filter: &[&str]| {
        let mut words = selection.to_vec();
        if !filter.is_empty() {
            words.push("--");
            words.extend(filter);
        }
        words.join(" ")
    };
    let (selection, harness_filter) = selection(&cx.root, filter);
    if !cx.dry_run {
        cx.step(format!(
            "cargo test --list {}",
            shown(&selection, &harness_filter)
        ));
        let (listed, listed_filter) = (&selection, &harness_filter);
        let listing = cmd!(
            sh,
            "cargo test {listed...} --locked -- --list {listed_filter...}"
        )
        .quiet()
        .read()
        .context("listing the tests (`cargo test -- --list`)")?;
        let selected = listing
            .lines()
            .filter(|line| line.ends_with(": test"))
            .count();
        if selected == 0 {
            bail!(
                "no test matches `{filter}`: give a part of a test's name (`cargo test --workspace -- --list` lists them) or the name of a file in service/tests/"
            );
        }
        eprintln!(
            "    {selected} test{} selected",
            if selected == 1 { "" } else { "s" }
        );
    }
    cx.run(
        &format!("cargo test {}", shown(&selection, &harness_filter)),
        with_env(cmd!(
            sh,
            "cargo test {selection...} --locked -- {harness_filter...}"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_test_file_is_its_own_target_and_anything_else_a_name_filter() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert_eq!(
            selection(root, "queue"),
            (vec!["-p", "service", "--test", "queue"], vec![])
        );
        assert_eq!(
            selection(root, "policy_enforcement"),
            (vec!["--workspace"], vec!["policy_enforcement"])
        );
        // A path is a name filter, never a file outside service/tests/.
        assert_eq!(
            selection(root, "../src/main"),
            (vec!["--workspace"], vec!["../src/main"])
        );
    }
}
