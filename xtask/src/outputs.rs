//! The Terraform output contract: what `terraform output -json` must provide, saved as
//! `target/xtask/<env>/outputs.json`. terraform/outputs.tf defines these outputs; a test
//! parses that file and checks every name here exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::context::Context;

pub const REQUIRED_OUTPUTS: &[&str] = &[
    "region",
    "initial_bucket_name",
    "initial_bucket_arn",
    "final_bucket_name",
    "final_bucket_arn",
    "kms_key_arn",
    "kms_key_alias",
    "service_role_arn",
    "instance_profile_name",
    "user_data",
    "auth_token_parameter",
    "tls_certificate_parameter",
    "tls_rotation_parameter",
];

/// One entry of `terraform output -json`.
#[derive(Debug, Deserialize)]
struct OutputEntry {
    value: serde_json::Value,
}

/// Parsed outputs, checked against the contract.
#[derive(Debug)]
pub struct Outputs {
    values: BTreeMap<String, serde_json::Value>,
}

impl Outputs {
    /// Parses `terraform output -json` text; every required output must be present.
    pub fn parse(json: &str) -> Result<Outputs> {
        let entries: BTreeMap<String, OutputEntry> =
            serde_json::from_str(json).context("terraform outputs are not valid JSON")?;
        let values: BTreeMap<String, serde_json::Value> = entries
            .into_iter()
            .map(|(name, entry)| (name, entry.value))
            .collect();
        let missing: Vec<&str> = REQUIRED_OUTPUTS
            .iter()
            .copied()
            .filter(|name| values.get(*name).is_none_or(|v| v.is_null()))
            .collect();
        if !missing.is_empty() {
            bail!(
                "Terraform outputs are missing {} required by the xtask: {} (see terraform/outputs.tf)",
                if missing.len() == 1 {
                    "one output"
                } else {
                    "outputs"
                },
                missing.join(", ")
            );
        }
        Ok(Outputs { values })
    }

    pub fn load(path: &Path) -> Result<Outputs> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (run `cargo xtask deploy` first)",
                path.display()
            )
        })?;
        Outputs::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// A string output; the contract guarantees presence, this checks the type.
    pub fn string(&self, name: &str) -> Result<&str> {
        self.values
            .get(name)
            .and_then(|v| v.as_str())
            .with_context(|| format!("Terraform output `{name}` is missing or not a string"))
    }

    /// A string output that may be null or absent (one shape of the stack has it).
    pub fn optional_string(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.as_str())
    }
}

/// Where `deploy` saves `terraform output -json` for an environment.
pub fn outputs_file(cx: &Context) -> PathBuf {
    cx.state_dir().join("outputs.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_outputs() -> serde_json::Map<String, serde_json::Value> {
        REQUIRED_OUTPUTS
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    serde_json::json!({"sensitive": false, "type": "string", "value": format!("v-{name}")}),
                )
            })
            .collect()
    }

    #[test]
    fn complete_outputs_parse() {
        let json = serde_json::Value::Object(full_outputs()).to_string();
        let outputs = Outputs::parse(&json).unwrap();
        assert_eq!(outputs.string("user_data").unwrap(), "v-user_data");
    }

    #[test]
    fn missing_outputs_are_listed_in_one_line() {
        let mut map = full_outputs();
        map.remove("kms_key_arn");
        map.remove("user_data");
        let err = Outputs::parse(&serde_json::Value::Object(map).to_string()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("kms_key_arn, user_data"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
