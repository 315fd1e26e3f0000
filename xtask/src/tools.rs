//! Finding external programs, and installing Python ones into project-local virtualenvs
//! under `target/venv/` so a fresh machine needs nothing but `python3`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use xshell::cmd;

use crate::context::Context;

/// A Python tool, pinned by a pip requirement. The project's own copy is always used, never
/// one from PATH: results depend on the version (see emulator.rs and test.rs for why).
pub struct PythonTool {
    /// Its virtualenv: `target/venv/<venv>/`.
    pub venv: &'static str,
    /// The executable to run: one the package installs, or `python` for a library.
    pub executable: &'static str,
    /// pip requirement, pinned at least to a major version.
    pub requirement: &'static str,
}

pub fn find_on_path(executable: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(executable))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl PythonTool {
    fn venv_dir(&self, root: &Path) -> PathBuf {
        root.join("target").join("venv").join(self.venv)
    }

    /// The tool's path, installing it into `target/venv/<venv>` if needed.
    /// `XTASK_<VENV>` (e.g. `XTASK_MOTO_SERVER`) names a copy to use instead.
    pub fn ensure(&self, cx: &Context) -> Result<PathBuf> {
        let override_var = format!("XTASK_{}", self.venv.to_ascii_uppercase());
        if let Some(path) = std::env::var_os(&override_var) {
            let path = PathBuf::from(path);
            if !is_executable(&path) {
                bail!(
                    "{override_var}={} is not an executable file",
                    path.display()
                );
            }
            return Ok(path);
        }
        // Tests that need one tool run at once in one process; without this, each would
        // `venv --clear` the other's half-made virtualenv (seen as both failing).
        static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
        let venv = self.venv_dir(&cx.root);
        let installed = venv.join("bin").join(self.executable);
        let stamp = venv.join("xtask-requirement.txt");
        // A venv made for another pin is rebuilt, so a changed requirement takes effect.
        let current = std::fs::read_to_string(&stamp).unwrap_or_default();
        if is_executable(&installed) && current.trim() == self.requirement {
            return Ok(installed);
        }
        let python = find_on_path("python3").with_context(|| {
            format!(
                "`{}` is not installed and python3 is not on PATH to install it; install Python 3 (with venv and pip)",
                self.executable
            )
        })?;
        let requirement = self.requirement;
        cx.run(
            &format!("create virtualenv {}", venv.display()),
            cmd!(cx.sh, "{python} -m venv --clear {venv}"),
        )
        .context("python3 -m venv failed; on Debian/Ubuntu install the python3-venv package")?;
        let pip = venv.join("bin").join("pip");
        cx.run(
            &format!("pip install {requirement}"),
            cmd!(
                cx.sh,
                "{pip} install --quiet --disable-pip-version-check {requirement}"
            ),
        )?;
        if !cx.dry_run {
            if !is_executable(&installed) {
                bail!(
                    "installed `{requirement}` but {} does not exist",
                    installed.display()
                );
            }
            std::fs::write(&stamp, requirement)
                .with_context(|| format!("writing {}", stamp.display()))?;
        }
        Ok(installed)
    }
}
