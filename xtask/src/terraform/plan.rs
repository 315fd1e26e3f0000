//! Planning and reading a plan: what it would add, change and destroy, and Terraform's reason
//! in one line when it fails.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::{Output, Terraform};
use crate::context::Context;

/// What a plan would do.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    /// Outputs the plan changes: a plan with only these still has to be applied, or the
    /// state (and so outputs.json) keeps the old ones.
    pub outputs: usize,
    /// Every resource the plan touches, with its actions (`create`, `update`, `delete`, ...).
    pub resources: Vec<(String, Vec<String>)>,
}

impl Summary {
    pub fn has_changes(&self) -> bool {
        self.add + self.change + self.destroy + self.outputs > 0
    }

    pub fn counts(&self) -> String {
        format!(
            "{} to add, {} to change, {} to destroy, {} output(s) changed",
            self.add, self.change, self.destroy, self.outputs
        )
    }
}

/// `terraform plan -out=<file>` with the var files; the summary when there are changes.
pub fn plan(cx: &Context, tf: &Terraform, var_files: &[PathBuf], out: &Path) -> Result<Summary> {
    let mut args = vec![
        "plan".to_string(),
        "-input=false".into(),
        "-detailed-exitcode".into(),
        format!("-out={}", out.display()),
    ];
    args.extend(
        var_files
            .iter()
            .map(|f| format!("-var-file={}", f.display())),
    );
    cx.step("terraform plan");
    let plan = tf.run(cx, &args, Output::Stream)?;
    match plan.code {
        0 => Ok(Summary::default()),
        2 => read_plan(cx, tf, out),
        code => bail!(
            "terraform plan failed (exit {code}): {}",
            first_error(&plan.stderr)
        ),
    }
}

/// Terraform's first error, its summary and explanation in one line, without the source
/// excerpt: what a failed command ends with (the whole output was streamed above it).
pub fn first_error(stderr: &str) -> String {
    let Some(start) = stderr.find("Error:") else {
        return "see Terraform's output above".into();
    };
    let mut words = Vec::new();
    for line in stderr[start..].lines().map(str::trim) {
        if line.starts_with("Error:") && !words.is_empty() {
            break;
        }
        let excerpt = line.starts_with("on ")
            || line.starts_with('│')
            || line.starts_with('├')
            || line.starts_with("This was checked")
            || line.starts_with(|c: char| c.is_ascii_digit())
            || line.starts_with("modules/");
        if !line.is_empty() && !excerpt {
            words.push(line);
        }
    }
    words.join(" ")
}

/// What a saved plan file would do (`terraform show -json`).
pub fn read_plan(cx: &Context, tf: &Terraform, plan_file: &Path) -> Result<Summary> {
    let show = tf.run(
        cx,
        &[
            "show".into(),
            "-json".into(),
            plan_file.display().to_string(),
        ],
        Output::CaptureStdout,
    )?;
    if show.code != 0 {
        bail!(
            "terraform show -json {} failed (exit {})",
            plan_file.display(),
            show.code
        );
    }
    let plan: Value = serde_json::from_str(&show.stdout).context("terraform show -json output")?;
    let mut summary = Summary::default();
    for change in plan["resource_changes"].as_array().into_iter().flatten() {
        let actions: Vec<String> = change["change"]["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        match actions
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["create"] => summary.add += 1,
            ["update"] => summary.change += 1,
            ["delete"] => summary.destroy += 1,
            [_, _] => {
                // A replacement: delete+create or create+delete.
                summary.add += 1;
                summary.destroy += 1;
            }
            _ => continue,
        }
        let address = change["address"].as_str().unwrap_or("?").to_string();
        summary.resources.push((address, actions));
    }
    summary.outputs = plan["output_changes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, change)| change["actions"] != serde_json::json!(["no-op"]))
        .count();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::first_error;

    #[test]
    fn a_failed_plan_ends_with_terraforms_reason_in_one_line() {
        let stderr = "\nError: Invalid value for variable\n\n  on main.tf line 190, in module \"host\":\n 190:   instance_count = var.instance_count\n    ├────────────────\n    │ var.instance_count is 3\n\ninstance_count > 1 needs s3_gateway_endpoint_route_table_ids: a fleet's\ninstances have no fixed addresses.\n\nThis was checked by the validation rule at\nmodules/host/variables.tf:136,3-13.\n\nError: another\n";
        assert_eq!(
            first_error(stderr),
            "Error: Invalid value for variable instance_count > 1 needs s3_gateway_endpoint_route_table_ids: a fleet's instances have no fixed addresses."
        );
        assert_eq!(first_error("nothing"), "see Terraform's output above");
    }
}
