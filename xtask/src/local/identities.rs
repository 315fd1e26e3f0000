//! The emulator's identities: the operator (an IAM user with an admin policy and an access
//! key) and an outsider in another account, made once IAM is enforced, and the AWS config
//! file whose profiles name them (and the service role, once the stack exists).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use aws_clients::{AwsClients, AwsSettings};

use super::aws::{
    LOCAL, LOCAL_REGION, OPERATOR_PROFILE, OUTSIDER_PROFILE, Record, SERVICE_PROFILE,
    aws_config_path, ca_bundle_path, endpoint_url,
};
use super::control::post;
use crate::context::block_on;
use crate::paths::{state_dir, write_private};

const OUTSIDER_ACCOUNT: &str = "111111111111";
const OPERATOR_USER: &str = "filepipe-operator";
/// The account moto puts everything in.
const EMULATOR_ACCOUNT: &str = "123456789012";

/// The operator's IAM user: Terraform's identity locally, as an admin role is on AWS.
pub fn operator_arn() -> String {
    format!("arn:aws:iam::{EMULATOR_ACCOUNT}:user/{OPERATOR_USER}")
}

/// The operator's access key.
#[derive(Serialize, Deserialize)]
struct OperatorKey {
    access_key_id: String,
    secret_access_key: String,
}

fn operator_key_path(root: &Path) -> PathBuf {
    state_dir(root, LOCAL).join("operator.json")
}

fn read_keys(root: &Path) -> Result<[OperatorKey; 2]> {
    let path = operator_key_path(root);
    serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (start the emulator first)", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))
}

/// The operator's access key id and secret.
pub fn operator_key(root: &Path) -> Result<(String, String)> {
    let [operator, _] = read_keys(root)?;
    Ok((operator.access_key_id, operator.secret_access_key))
}

/// (Re)writes the local AWS config file: the operator, and the service role assumed through
/// the operator once the stack exists.
pub fn write_aws_config(root: &Path, service_role_arn: Option<&str>) -> Result<()> {
    write_aws_config_at(root, &aws_config_path(root), service_role_arn)
}

/// The same identities in a config file at `path` (tests keep their own service role there).
pub fn write_aws_config_at(root: &Path, path: &Path, service_role_arn: Option<&str>) -> Result<()> {
    let [operator, outsider] = read_keys(root)?;
    let mut text =
        "# Written by `cargo xtask local start` and `up`: identities of the local emulator.\n"
            .to_string();
    // endpoint_url: every AWS call a profile leads to goes to the emulator, the role
    // assumption included (the SDK's STS client for it reads only the profile and the
    // environment).
    // ca_bundle: the AWS CLI and the Go SDK under Terraform trust the emulator's CA.
    let endpoint = endpoint_url(root);
    let ca_bundle = ca_bundle_path(root);
    let ca_bundle = ca_bundle.display();
    for (profile, key) in [(OPERATOR_PROFILE, operator), (OUTSIDER_PROFILE, outsider)] {
        text.push_str(&format!(
            "\n[profile {profile}]\n\
             aws_access_key_id = {}\n\
             aws_secret_access_key = {}\n\
             region = {LOCAL_REGION}\n\
             endpoint_url = {endpoint}\n\
             ca_bundle = {ca_bundle}\n",
            key.access_key_id, key.secret_access_key
        ));
    }
    if let Some(role) = service_role_arn {
        // As the instance profile gives it on EC2: temporary credentials of the role, which
        // the SDK renews by itself.
        text.push_str(&format!(
            "\n[profile {SERVICE_PROFILE}]\n\
             role_arn = {role}\n\
             source_profile = {OPERATOR_PROFILE}\n\
             role_session_name = filepipe-local-service\n\
             region = {LOCAL_REGION}\n\
             endpoint_url = {endpoint}\n\
             ca_bundle = {ca_bundle}\n"
        ));
    }
    write_private(path, &text)
}

/// Makes the operator with the emulator's free requests, then (with `record.iam`) turns
/// enforcement on: from then on every request must be signed by a known identity. Also makes
/// an `outsider`, an administrator of another account, for tests of what crosses accounts.
pub(super) fn make_operator(root: &Path, record: Record) -> Result<()> {
    expect_ok(
        post(record.http_port, "/moto-api/reset-auth", "inf")?,
        "reset-auth",
    )?;
    let endpoint = record.endpoint_url();
    let ca_bundle = ca_bundle_path(root);
    let (operator, outsider) = block_on(async move {
        let clients = AwsClients::connect(&AwsSettings::emulator(
            endpoint,
            LOCAL_REGION,
            Some(ca_bundle),
        ))
        .await?;
        let iam = aws_sdk_iam::Client::new(&clients.sdk_config);
        anyhow::Ok((
            make_admin(&iam, EMULATOR_ACCOUNT).await?,
            make_admin(&iam, OUTSIDER_ACCOUNT).await?,
        ))
    })?;
    write_private(
        &operator_key_path(root),
        &serde_json::to_string(&[operator, outsider])?,
    )?;
    write_aws_config(root, None)?;
    if record.iam {
        expect_ok(
            post(record.http_port, "/moto-api/reset-auth", "0")?,
            "reset-auth",
        )?;
    }
    Ok(())
}

/// An IAM user with an admin policy and an access key, in `account` (moto's
/// `x-moto-account-id` header picks the account of an unsigned request).
async fn make_admin(iam: &aws_sdk_iam::Client, account: &'static str) -> Result<OperatorKey> {
    let in_account = move |request: &mut aws_sdk_iam::config::http::HttpRequest| {
        request.headers_mut().insert("x-moto-account-id", account);
    };
    iam.create_user()
        .user_name(OPERATOR_USER)
        .customize()
        .mutate_request(in_account)
        .send()
        .await
        .context("iam:CreateUser for the operator")?;
    iam.put_user_policy()
        .user_name(OPERATOR_USER)
        .policy_name("administrator")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .customize()
        .mutate_request(in_account)
        .send()
        .await
        .context("iam:PutUserPolicy for the operator")?;
    let created = iam
        .create_access_key()
        .user_name(OPERATOR_USER)
        .customize()
        .mutate_request(in_account)
        .send()
        .await
        .context("iam:CreateAccessKey for the operator")?;
    let key = created.access_key().context("no access key returned")?;
    Ok(OperatorKey {
        access_key_id: key.access_key_id().to_string(),
        secret_access_key: key.secret_access_key().to_string(),
    })
}

pub(super) fn expect_ok(status: u16, what: &str) -> Result<()> {
    if status != 200 {
        bail!("the emulator's {what} API answered HTTP {status}");
    }
    Ok(())
}
