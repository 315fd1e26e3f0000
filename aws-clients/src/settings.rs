//! Where AWS is and who calls it: the settings every client is built from, and the same
//! settings handed to a subprocess (Terraform, the AWS CLI) as environment variables.

use std::path::PathBuf;

/// Where credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsSource {
    /// The SDK's default chain (env vars, shared config/profile, web identity, IMDS), optionally
    /// pinned to a named profile.
    DefaultChain { profile: Option<String> },
    /// A profile of one AWS config file and no other (not `~/.aws`): the local emulator's
    /// operator, or the service role assumed through `role_arn` + `source_profile`, as the
    /// AWS CLI and every SDK read it. Read when credentials are first needed.
    ProfileFile {
        config_file: std::path::PathBuf,
        profile: String,
    },
    /// Fixed credentials, only meaningful against an emulator.
    Static {
        access_key_id: String,
        secret_access_key: String,
    },
}

/// Everything needed to talk to one AWS account/region or to an emulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: String,
    /// `None` for real AWS; e.g. `http://127.0.0.1:4566` for the local emulator.
    pub endpoint_url: Option<String>,
    /// S3 only, overriding `endpoint_url` for S3: an S3-compatible server (the benchmark's
    /// s3s-fs) while KMS and STS stay on the emulator.
    pub s3_endpoint_url: Option<String>,
    pub credentials: CredentialsSource,
    /// The one CA a TLS endpoint must be signed by, instead of the system's roots: the local
    /// emulator's (AWS_CA_BUNDLE, as the AWS CLI and Terraform read it). `None` for AWS.
    pub ca_bundle: Option<PathBuf>,
}

impl AwsSettings {
    /// Settings for the local emulator while it takes unsigned requests (before its operator
    /// exists): any static credentials.
    pub fn emulator(
        endpoint_url: impl Into<String>,
        region: impl Into<String>,
        ca_bundle: Option<PathBuf>,
    ) -> Self {
        AwsSettings {
            region: region.into(),
            endpoint_url: Some(endpoint_url.into()),
            s3_endpoint_url: None,
            ca_bundle,
            credentials: CredentialsSource::Static {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
            },
        }
    }
}

/// The AWS partition of a region, for building ARNs.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Environment variables that give a subprocess (Terraform, the AWS CLI) the same credentials
/// and region as these settings.
pub fn subprocess_env(settings: &AwsSettings) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("AWS_REGION", settings.region.clone()),
        ("AWS_DEFAULT_REGION", settings.region.clone()),
    ];
    match &settings.credentials {
        CredentialsSource::DefaultChain {
            profile: Some(name),
        } => {
            vars.push(("AWS_PROFILE", name.clone()));
        }
        CredentialsSource::DefaultChain { profile: None } => {}
        CredentialsSource::ProfileFile {
            config_file,
            profile,
        } => {
            vars.push(("AWS_CONFIG_FILE", config_file.display().to_string()));
            // Only that file: no credentials from ~/.aws/credentials.
            vars.push(("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()));
            vars.push(("AWS_PROFILE", profile.clone()));
        }
        CredentialsSource::Static {
            access_key_id,
            secret_access_key,
        } => {
            vars.push(("AWS_ACCESS_KEY_ID", access_key_id.clone()));
            vars.push(("AWS_SECRET_ACCESS_KEY", secret_access_key.clone()));
        }
    }
    if let Some(ca_bundle) = &settings.ca_bundle {
        vars.push(("AWS_CA_BUNDLE", ca_bundle.display().to_string()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_the_region() {
        assert_eq!(partition("eu-west-1"), "aws");
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
    }
}
