//! Tests of the xtask against real tools: the emulator (through the shared client builder),
//! the machine's terraform, shellcheck and checkov. A missing tool fails the test with a
//! message naming it; nothing is skipped.

mod orchestration;
mod sandbox;
mod smoke;
mod terraform_static;

use std::path::{Path, PathBuf};

use crate::context::{Context, workspace_root};
use crate::environment::Environment;
use crate::tools::find_on_path;

/// The path of a tool the test cannot do without.
pub fn require_tool(name: &str, why: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not on PATH but this test needs it ({why}); install it (see README, Prerequisites)")
    })
}

/// A fresh temporary directory under target/ (kept after the run for inspection).
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target")
        .join("xtask-tests")
        .join(format!(
            "{label}-{}",
            service::testing::unique_bucket_name("d")
        ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A local environment with its own name prefix (so its own state bucket and resources) and
/// its own state directory: tests never share state.
pub fn isolated_local_context(label: &str) -> Context {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!(
        "t{:x}",
        (nanos ^ u128::from(std::process::id())) % 0xff_ffff_ffff
    );
    let env = Environment::local(service::testing::emulator_endpoint(), &prefix);
    Context::for_test(env, &temp_dir(label))
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
