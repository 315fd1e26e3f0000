//! The xtask binary as a user runs it: help text, and refusals that exit 1 with one line and
//! change nothing (standard input is not a terminal here, as in CI).

use std::process::{Command, Output, Stdio};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xtask")
}

fn one_line_error(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn help_lists_every_subcommand_with_a_description() {
    let output = xtask(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in [
        "bootstrap",
        "deploy",
        "plan",
        "rotate-token",
        "rotate-cert",
        "render-user-data",
        "smoke",
        "destroy",
        "local",
        "test",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("`{command}` missing from --help:\n{help}"));
        assert!(
            line.split_whitespace().count() > 2,
            "`{command}` has no description: {line}"
        );
    }
    for flag in ["--env", "--dry-run", "--verbose"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn deploy_and_destroy_refuse_without_yes_when_not_on_a_terminal() {
    let error = one_line_error(&xtask(&["deploy"]));
    assert!(error.contains("refusing to apply without --yes"), "{error}");
    let error = one_line_error(&xtask(&["destroy", "--purge-state"]));
    assert!(
        error.contains("refusing to destroy without --yes"),
        "{error}"
    );
}

#[test]
fn unknown_environments_and_missing_service_urls_fail_loudly() {
    let error = one_line_error(&xtask(&["--env", "nowhere", "bootstrap"]));
    assert!(error.contains("unknown environment `nowhere`"), "{error}");
    let error = one_line_error(&xtask(&["--env", "example", "smoke"]));
    assert!(error.contains("no service URL"), "{error}");
}

#[test]
fn render_user_data_without_outputs_says_what_to_run() {
    let error = one_line_error(&xtask(&["--env", "example", "render-user-data"]));
    assert!(
        error.contains("outputs.json") && error.contains("cargo xtask deploy"),
        "{error}"
    );
}
