//! One stack, applied as `deploy` applies it: the real modules (a copy of terraform/) and the
//! real AWS provider against the emulator, as the operator, with the S3 backend, from a
//! reviewed plan. Applying takes a minute or two, so the tests that need a deployed stack
//! share this one, and none of them changes what Terraform manages.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Result, ensure};

use super::{copy_dir, isolated_local_context, service_binary, temp_dir};
use xtask::artifact::Source;
use xtask::context::{Context, block_on, workspace_root};
use xtask::deploy::{self, Deployed};
use xtask::environment::Environment;
use xtask::outputs::{Outputs, outputs_file};

pub struct Stack {
    env: Environment,
    state_root: PathBuf,
    /// The copy of terraform/ it was applied from.
    pub root: PathBuf,
    pub state_bucket: String,
    pub outputs: Outputs,
    /// The plan applied, as `plan --out` saved it.
    pub plan_file: PathBuf,
    /// `plan`'s exit code before the apply, and after it (0: no changes).
    pub first_plan: std::process::ExitCode,
    pub replan: std::process::ExitCode,
    pub applied: Deployed,
}

impl Stack {
    /// A context of the stack's environment (a `Context` holds a shell, which is not `Sync`).
    pub fn cx(&self) -> Context {
        Context::for_test(self.env.clone(), &self.state_root)
    }

    /// The arguments it was deployed with: the real debug service as the binary.
    pub fn args(&self) -> xtask::flags::Deploy {
        args(&self.root)
    }
}

pub fn args(root: &std::path::Path) -> xtask::flags::Deploy {
    xtask::flags::Deploy {
        yes: true,
        plan: None,
        shared: xtask::flags::Stack {
            binary: Some(service_binary()),
            root_module: Some(root.to_path_buf()),
            ..xtask::flags::Stack::default()
        },
    }
}

/// A copy of terraform/ (so no test writes into the real one), without anything generated.
pub fn modules_copy(label: &str) -> PathBuf {
    let root = temp_dir(label);
    copy_dir(&workspace_root().join("terraform"), &root);
    for generated in [xtask::terraform::LOCAL_OVERRIDE_FILE, ".terraform.lock.hcl"] {
        let _ = std::fs::remove_file(root.join(generated));
    }
    let _ = std::fs::remove_dir_all(root.join(".terraform"));
    root
}

/// The shared stack, applied on first use; every test using it fails if it could not be.
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Result<Stack, String>> = OnceLock::new();
    STACK
        .get_or_init(|| apply().map_err(|err| format!("{err:#}")))
        .as_ref()
        .unwrap_or_else(|err| panic!("the shared stack could not be applied: {err}"))
}

fn apply() -> Result<Stack> {
    super::require_tool("terraform", "the stack is applied with it");
    let cx = isolated_local_context("stack");
    let bootstrapped = block_on(xtask::bootstrap::bootstrap(
        &cx,
        &xtask::flags::Bootstrap { fix: false },
    ))?;
    let state_bucket = bootstrapped[0].0.name.clone();
    let root = modules_copy("stack-root");
    let args = args(&root);
    let plan_file = cx.state_dir().join("reviewed.tfplan");
    let plan_args = |out: &std::path::Path| xtask::flags::Plan {
        out: Some(out.to_path_buf()),
        json: true,
        shared: args.shared.clone(),
    };
    let first_plan = xtask::plan::run(&cx, plan_args(&plan_file))?;
    ensure!(
        !outputs_file(&cx).exists(),
        "a plan applied something: {} exists",
        outputs_file(&cx).display()
    );
    let applied = deploy::deploy(
        &cx,
        &xtask::flags::Deploy {
            plan: Some(plan_file.clone()),
            ..args.clone()
        },
        Source::Debug,
    )?;
    let replan = xtask::plan::run(&cx, plan_args(&cx.state_dir().join("replan.tfplan")))?;
    let outputs = Outputs::load(&outputs_file(&cx))?;
    Ok(Stack {
        env: cx.env.clone(),
        state_root: cx.state_root.clone(),
        root,
        state_bucket,
        outputs,
        plan_file,
        first_plan,
        replan,
        applied,
    })
}
