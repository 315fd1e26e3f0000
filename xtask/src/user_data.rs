//! The EC2 user-data script as the operator saves it: the `user_data` output, which Terraform
//! rendered with its own templatefile() (there is no second template engine here), written
//! executable where `render-user-data`, `deploy` and `destroy` look for it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::context::Context;
use crate::outputs::Outputs;

/// Where the script is saved by default.
pub fn default_path(cx: &Context) -> PathBuf {
    cx.state_dir().join("user-data.sh")
}

/// Writes the script with mode 0755; returns where.
pub fn write(cx: &Context, outputs: &Outputs, out: Option<&Path>) -> Result<PathBuf> {
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_path(cx));
    let script = outputs.string("user_data")?;
    if cx.dry_run {
        eprintln!("    (dry run) would write {}", path.display());
        return Ok(path);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))?;
    Ok(path)
}
