//! Where this checkout keeps things: the workspace root and each environment's state.

use std::path::{Path, PathBuf};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// State directory of an environment in the default state root.
pub fn state_dir(root: &Path, env_name: &str) -> PathBuf {
    root.join("target").join("xtask").join(env_name)
}
