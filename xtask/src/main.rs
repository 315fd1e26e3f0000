//! `cargo xtask`: the workflow tool of this repository. See README.md.

use std::process::ExitCode;

use clap::Parser as _;

use xtask::flags::Cli;

fn main() -> ExitCode {
    forget_cargo_run_variables();
    let cli = Cli::parse();
    match xtask::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo run` gives the xtask its package's variables (CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
/// ...). Some build scripts (ring's) declare `rerun-if-env-changed` on them, so nested cargo
/// commands inheriting them would rebuild those crates, and the next direct `cargo build`
/// would rebuild them again (measured: about a minute each way).
fn forget_cargo_run_variables() {
    let keys: Vec<_> = std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| {
            key.starts_with("CARGO_PKG_")
                || matches!(
                    key.as_str(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                )
        })
        .collect();
    for key in keys {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::remove_var(key) };
    }
}
