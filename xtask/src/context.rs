//! What every command gets: a shell rooted at the workspace, the chosen environment, and the
//! global flags. Subprocesses and AWS calls go through here so `--dry-run` and step headers
//! behave the same everywhere.

use std::future::Future;
use std::path::PathBuf;

use std::io::IsTerminal as _;

use anyhow::{Context as _, Result, bail};
use xshell::{Cmd, Shell};

use crate::environment::Environment;
pub use crate::paths::workspace_root;

pub struct Context {
    pub sh: Shell,
    pub root: PathBuf,
    pub env: Environment,
    pub dry_run: bool,
    pub verbose: bool,
    /// Parent of the per-environment state directories: `target/xtask/` (tests use a temp dir).
    pub state_root: PathBuf,
}

impl Context {
    pub fn new(env_name: &str, dry_run: bool, verbose: bool) -> Result<Context> {
        let root = workspace_root();
        let sh = Shell::new().context("creating a shell")?;
        sh.change_dir(&root);
        let env = Environment::load(&root, env_name)?;
        Ok(Context {
            sh,
            state_root: root.join("target").join("xtask"),
            root,
            env,
            dry_run,
            verbose,
        })
    }

    /// A context for tests: its own environment and state directory, no dry run.
    pub fn for_test(env: Environment, state_root: &std::path::Path) -> Context {
        let root = workspace_root();
        let sh = Shell::new().expect("shell");
        sh.change_dir(&root);
        Context {
            sh,
            root,
            env,
            dry_run: false,
            verbose: true,
            state_root: state_root.to_path_buf(),
        }
    }

    /// `target/xtask/<env>/`: generated, gitignored files of the current environment.
    pub fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.env.name)
    }

    /// Prints a step header; every subprocess and phase of a command starts with one.
    pub fn step(&self, title: impl std::fmt::Display) {
        eprintln!("==> {title}");
    }

    /// Runs a command with its output streamed live, or only prints it under `--dry-run`.
    pub fn run(&self, title: &str, cmd: Cmd<'_>) -> Result<()> {
        self.step(title);
        if self.dry_run {
            eprintln!("    (dry run) {cmd}");
            return Ok(());
        }
        if self.verbose {
            eprintln!("    $ {cmd}");
        }
        let shown = cmd.to_string();
        cmd.quiet()
            .run()
            .with_context(|| format!("`{shown}` failed"))
    }

    /// Describes an AWS API call; returns true when it should really be made.
    pub fn aws_call(&self, description: impl std::fmt::Display) -> bool {
        if self.dry_run {
            eprintln!("    (dry run) would call {description}");
            return false;
        }
        if self.verbose {
            eprintln!("    aws: {description}");
        }
        true
    }
}

/// The one tokio runtime of a command. Its AWS clients keep connection pools that belong to
/// the runtime they were made in, so every async call of the command runs here.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("building the tokio runtime")
    })
}

/// Runs async AWS SDK code from the synchronous command functions.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// Asks on the terminal; anything but the expected answer aborts.
pub fn confirm(prompt: &str, expected: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to continue without --yes: standard input is not a terminal");
    }
    eprint!("{prompt}");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    if answer.trim() != expected {
        bail!("aborted: the answer was not `{expected}`");
    }
    Ok(())
}
