//! The policy documents as Terraform renders them (`terraform/modules/policy-documents`, no
//! provider needed): what each statement admits and denies, for every shape of the inputs
//! (VPC endpoints, a fleet, no queue), most of which the emulator never sees applied. What
//! the applied stack's policies refuse is in `policy_enforcement.rs`.
//!
//! Longer than 400 lines: every statement's tests share the documents rendered once per input
//! shape.

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::isolated_local_context;
use xtask::context::Context;
use xtask::terraform::{Output, Terraform};

/// Renders `modules/policy-documents` with the terraform binary: no provider, no remote
/// state, nothing but templating.
pub fn render(cx: &Context, inputs: Value) -> Result<Value> {
    let dir = cx.state_dir().join("policy-documents");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut module = json!({"source": cx.root.join("terraform/modules/policy-documents")});
    for (key, value) in inputs.as_object().expect("inputs are an object") {
        module[key] = value.clone();
    }
    let config = json!({
        "module": {"documents": module},
        "output": {"documents": {"value": "${module.documents}"}},
    });
    let main = dir.join("main.tf.json");
    std::fs::write(&main, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", main.display()))?;
    let mut tf = Terraform::find(cx, None, &dir)?;
    tf.data_dir = dir.join(".terraform");
    for args in [
        vec!["init".to_string(), "-input=false".into()],
        vec![
            "apply".to_string(),
            "-input=false".into(),
            "-auto-approve".into(),
        ],
    ] {
        let run = tf.run(cx, &args, Output::Quiet)?;
        if run.code != 0 {
            bail!(
                "rendering the policy documents failed (terraform {}):\n{}",
                args[0],
                run.stderr
            );
        }
    }
    let outputs: Value =
        serde_json::from_str(&tf.output_json(cx)?).context("terraform output -json")?;
    Ok(outputs["documents"]["value"].clone())
}

const ACCOUNT: &str = "123456789012";
const ROLE: &str = "arn:aws:iam::123456789012:role/files-service";
const ADMIN: &str = "arn:aws:iam::123456789012:role/terraform";
const KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn inputs() -> Value {
    json!({
        "region": "eu-west-1",
        "partition": "aws",
        "account_id": ACCOUNT,
        "service_role_arn": ROLE,
        "kms_key_arn": KEY,
        "bucket_arns": {
            "initial": "arn:aws:s3:::files-initial",
            "final": "arn:aws:s3:::files-final",
        },
        "allowed_cidrs": ["203.0.113.0/24"],
        "exempt_principal_arns": [ADMIN],
    })
}

fn statement(policy: &Value, sid: &str) -> Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid} in {policy}"))
        .clone()
}

fn document(rendered: &Value, output: &str) -> Value {
    serde_json::from_str(rendered[output].as_str().unwrap()).unwrap()
}

#[test]
fn the_key_policy_splits_s3_use_from_direct_decryption() {
    let cx = isolated_local_context("key-policy");
    let rendered = render(&cx, inputs()).unwrap();
    let policy = document(&rendered, "key_policy_json");

    let via_s3 = statement(&policy, "ServiceRoleUseThroughS3");
    assert_eq!(via_s3["Principal"]["AWS"], ROLE);
    assert_eq!(
        via_s3["Action"],
        json!(["kms:GenerateDataKey", "kms:Decrypt"])
    );
    assert_eq!(
        via_s3["Condition"]["StringEquals"]["kms:ViaService"],
        "s3.eu-west-1.amazonaws.com"
    );
    // Bucket keys: the context is the bucket ARN; without them, the object ARN.
    assert_eq!(
        via_s3["Condition"]["StringLike"]["kms:EncryptionContext:aws:s3:arn"],
        json!([
            "arn:aws:s3:::files-final",
            "arn:aws:s3:::files-final/*",
            "arn:aws:s3:::files-initial",
            "arn:aws:s3:::files-initial/*"
        ])
    );
    let direct = statement(&policy, "ServiceRoleDecryptEnvelopes");
    assert_eq!(direct["Action"], "kms:Decrypt");
    assert_eq!(direct["Condition"]["Null"]["kms:ViaService"], "true");
    assert_eq!(
        statement(&policy, "ServiceRoleDescribeKey")["Action"],
        "kms:DescribeKey"
    );

    // Nothing more for the role than the code calls.
    let mut granted: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Principal"]["AWS"] == ROLE)
        .flat_map(|s| match &s["Action"] {
            Value::Array(actions) => actions.clone(),
            action => vec![action.clone()],
        })
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    granted.sort();
    granted.dedup();
    assert_eq!(
        granted,
        ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"]
    );
}

#[test]
fn bucket_policies_restrict_every_object_action_by_network_and_refuse_the_aws_managed_key() {
    let cx = isolated_local_context("bucket-policy");
    let rendered = render(&cx, inputs()).unwrap();
    let policy: Value =
        serde_json::from_str(rendered["bucket_policy_json"]["initial"].as_str().unwrap()).unwrap();

    let network = statement(&policy, "DenyObjectAccessOutsideAllowedNetworks");
    // Only the admins are exempt: the service role's credentials work from its network only.
    assert_eq!(
        network["Condition"]["ArnNotEquals"]["aws:PrincipalArn"],
        json!([ADMIN])
    );
    assert!(!network.to_string().contains(ROLE), "{network}");
    assert_eq!(
        network["Condition"]["NotIpAddress"]["aws:SourceIp"],
        json!(["203.0.113.0/24"])
    );
    let actions: Vec<&str> = network["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for action in [
        "s3:GetObject*",
        "s3:PutObject*",
        "s3:DeleteObject*",
        "s3:ListBucket",
        "s3:AbortMultipartUpload",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert_eq!(
        network["Resource"],
        json!(["arn:aws:s3:::files-initial", "arn:aws:s3:::files-initial/*"])
    );

    // aws:kms without a key id would fall to the AWS-managed key: denied. UploadPart sends
    // no SSE header, so StringEquals does not match it.
    let no_key = statement(&policy, "DenyKmsWithoutKeyId");
    assert_eq!(no_key["Effect"], "Deny");
    assert_eq!(no_key["Action"], "s3:PutObject");
    assert_eq!(
        no_key["Condition"],
        json!({
            "StringEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
            "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "true"},
        })
    );
}

#[test]
fn an_assumed_role_arn_is_refused_as_an_exempt_principal() {
    let cx = isolated_local_context("assumed-role");
    let mut inputs = inputs();
    inputs["exempt_principal_arns"] =
        json!(["arn:aws:sts::123456789012:assumed-role/terraform/session"]);
    let err = format!("{:#}", render(&cx, inputs).unwrap_err());
    assert!(err.contains("never matches aws:PrincipalArn"), "{err}");
}

const SHA: &str = "ab12000000000000000000000000000000000000000000000000000000000000";

#[test]
fn the_role_reads_exactly_the_deployed_artifact_prefix_and_its_key_only_through_s3() {
    let cx = isolated_local_context("artifact-policy");
    let mut with_artifact = inputs();
    with_artifact["service_artifact"] = json!({
        "bucket_arn": "arn:aws:s3:::files-artifacts",
        "key_prefix": format!("service/{SHA}/"),
        "kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/00000000-1111-2222-3333-444444444444",
    });
    let rendered = render(&cx, with_artifact).unwrap();
    let policy = document(&rendered, "service_role_policy_json");
    let read = statement(&policy, "ReadServiceArtifact");
    assert_eq!(read["Action"], "s3:GetObject");
    assert_eq!(
        read["Resource"],
        format!("arn:aws:s3:::files-artifacts/service/{SHA}/*")
    );
    let decrypt = statement(&policy, "DecryptServiceArtifact");
    assert_eq!(decrypt["Action"], "kms:Decrypt");
    assert_eq!(
        decrypt["Condition"]["StringEquals"]["kms:ViaService"],
        "s3.eu-west-1.amazonaws.com"
    );

    // The AWS-managed aws/s3 key needs no grant; no artifact, no artifact statements.
    let mut managed_key = inputs();
    managed_key["service_artifact"] = json!({
        "bucket_arn": "arn:aws:s3:::files-artifacts",
        "key_prefix": format!("service/{SHA}/"),
    });
    let policy = document(
        &render(&cx, managed_key).unwrap(),
        "service_role_policy_json",
    );
    let sids: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Sid"].as_str().unwrap())
        .collect();
    assert!(sids.contains(&"ReadServiceArtifact") && !sids.contains(&"DecryptServiceArtifact"));
    let policy = document(&render(&cx, inputs()).unwrap(), "service_role_policy_json");
    assert!(!policy.to_string().contains("Artifact"), "{policy}");

    let mut bad = inputs();
    bad["service_artifact"] =
        json!({"bucket_arn": "arn:aws:s3:::files-artifacts", "key_prefix": "service/"});
    let err = format!("{:#}", render(&cx, bad).unwrap_err());
    assert!(err.contains("service/<sha256>/"), "{err}");
}

#[test]
fn the_log_bucket_admits_only_log_delivery_for_the_data_buckets_and_only_tls() {
    let cx = isolated_local_context("log-policy");
    let mut with_logs = inputs();
    with_logs["access_log_bucket_arn"] = json!("arn:aws:s3:::files-access-logs");
    let rendered = render(&cx, with_logs).unwrap();
    let policy = document(&rendered, "access_log_bucket_policy_json");
    let delivery = statement(&policy, "AllowServerAccessLogDelivery");
    assert_eq!(delivery["Principal"]["Service"], "logging.s3.amazonaws.com");
    assert_eq!(delivery["Action"], "s3:PutObject");
    assert_eq!(delivery["Resource"], "arn:aws:s3:::files-access-logs/*");
    assert_eq!(
        delivery["Condition"]["StringEquals"]["aws:SourceAccount"],
        ACCOUNT
    );
    assert_eq!(
        delivery["Condition"]["ArnLike"]["aws:SourceArn"],
        json!(["arn:aws:s3:::files-final", "arn:aws:s3:::files-initial"])
    );
    let tls = statement(&policy, "DenyInsecureTransport");
    assert_eq!(tls["Condition"]["Bool"]["aws:SecureTransport"], "false");
    statement(&policy, "DenyOutdatedTls");
    assert!(rendered["access_log_bucket_policy_json"].is_string());
    assert!(render(&cx, inputs()).unwrap()["access_log_bucket_policy_json"].is_null());
}

#[test]
fn only_the_initial_bucket_sends_to_the_queue_and_the_role_consumes_only_it() {
    const WORK: &str = "arn:aws:sqs:eu-west-1:123456789012:files-work";
    const DEAD: &str = "arn:aws:sqs:eu-west-1:123456789012:files-work-dead-letter";
    let cx = isolated_local_context("queue-policies");
    let mut with_queues = inputs();
    with_queues["queue_arns"] = json!({"work": WORK, "dead_letter": DEAD});
    let rendered = render(&cx, with_queues).unwrap();

    let work: Value =
        serde_json::from_str(rendered["queue_policy_json"]["work"].as_str().unwrap()).unwrap();
    let sends = statement(&work, "InitialBucketSendsEvents");
    assert_eq!(sends["Principal"], json!({"Service": "s3.amazonaws.com"}));
    assert_eq!(sends["Action"], "sqs:SendMessage");
    assert_eq!(sends["Resource"], WORK);
    assert_eq!(
        sends["Condition"]["ArnEquals"]["aws:SourceArn"],
        "arn:aws:s3:::files-initial"
    );
    assert_eq!(
        sends["Condition"]["StringEquals"]["aws:SourceAccount"],
        ACCOUNT
    );
    let dead: Value = serde_json::from_str(
        rendered["queue_policy_json"]["dead_letter"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for (policy, arn, allows) in [(&work, WORK, 1), (&dead, DEAD, 0)] {
        let tls = statement(policy, "DenyInsecureTransport");
        assert_eq!(tls["Effect"], "Deny");
        assert_eq!(tls["Action"], "sqs:*");
        assert_eq!(tls["Resource"], arn);
        assert_eq!(tls["Condition"]["Bool"]["aws:SecureTransport"], "false");
        let allowing = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .count();
        assert_eq!(allowing, allows, "{policy}");
    }

    let role = document(&rendered, "service_role_policy_json");
    let consume = statement(&role, "ConsumeWorkQueue");
    assert_eq!(consume["Resource"], WORK, "the work queue only");
    assert!(
        !role.to_string().contains(DEAD),
        "nothing on the dead letters"
    );

    let key = document(&rendered, "key_policy_json");
    let s3 = statement(&key, "S3SendsInitialBucketEventsToTheQueue");
    assert_eq!(s3["Principal"], json!({"Service": "s3.amazonaws.com"}));
    assert_eq!(
        s3["Condition"]["ArnEquals"]["aws:SourceArn"],
        "arn:aws:s3:::files-initial"
    );
    assert_eq!(
        s3["Condition"]["StringEquals"]["kms:EncryptionContext:aws:sqs:arn"],
        WORK
    );
    let role_via_sqs = statement(&key, "ServiceRoleUseThroughSqs");
    assert_eq!(role_via_sqs["Principal"]["AWS"], ROLE);
    assert_eq!(
        role_via_sqs["Condition"]["StringEquals"]["kms:ViaService"],
        "sqs.eu-west-1.amazonaws.com"
    );

    // Without queues, none of it.
    let cx = isolated_local_context("no-queue-policies");
    let rendered = render(&cx, inputs()).unwrap();
    assert_eq!(rendered["queue_policy_json"], json!({}));
    assert!(
        !rendered["key_policy_json"]
            .as_str()
            .unwrap()
            .contains("sqs")
    );
    assert!(
        !rendered["service_role_policy_json"]
            .as_str()
            .unwrap()
            .contains("sqs")
    );
}

#[test]
fn a_fleet_reads_the_shared_key_and_certificate_and_publishes_none() {
    const PARAMETER: &str = "arn:aws:ssm:eu-west-1:123456789012:parameter/files";
    let parameters = |fleet: bool| {
        let mut arns = json!({
            "auth_token": format!("{PARAMETER}/auth-token"),
            "tls_certificate": format!("{PARAMETER}/tls-certificate"),
            "tls_rotation": format!("{PARAMETER}/tls-rotation"),
        });
        if fleet {
            arns["tls_key"] = json!(format!("{PARAMETER}/tls-key"));
        }
        arns
    };
    let render_with = |label: &str, fleet: bool| {
        let cx = isolated_local_context(label);
        let mut inputs = inputs();
        inputs["parameter_arns"] = parameters(fleet);
        render(&cx, inputs).unwrap()
    };

    let one = render_with("one-instance-doors", false);
    let role = document(&one, "service_role_policy_json");
    assert_eq!(
        statement(&role, "ReadServiceSecrets")["Resource"],
        json!([
            format!("{PARAMETER}/auth-token"),
            format!("{PARAMETER}/tls-rotation")
        ])
    );
    assert_eq!(
        statement(&role, "PublishCertificate")["Resource"],
        format!("{PARAMETER}/tls-certificate")
    );
    let key = document(&one, "key_policy_json");
    assert_eq!(
        statement(&key, "ServiceRoleDecryptAuthTokenThroughSsm")["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"],
        json!([format!("{PARAMETER}/auth-token")])
    );

    let fleet = render_with("fleet-doors", true);
    let role = document(&fleet, "service_role_policy_json");
    assert_eq!(
        statement(&role, "ReadServiceSecrets")["Resource"],
        json!([
            format!("{PARAMETER}/auth-token"),
            format!("{PARAMETER}/tls-rotation"),
            format!("{PARAMETER}/tls-key"),
            format!("{PARAMETER}/tls-certificate")
        ])
    );
    assert!(
        !role.to_string().contains("PublishCertificate"),
        "a fleet's instances publish nothing: {role}"
    );
    let key = document(&fleet, "key_policy_json");
    assert_eq!(
        statement(&key, "ServiceRoleDecryptAuthTokenThroughSsm")["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"],
        json!([
            format!("{PARAMETER}/auth-token"),
            format!("{PARAMETER}/tls-key")
        ])
    );
}
