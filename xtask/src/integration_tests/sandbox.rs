//! The sandbox provisioner agrees with the HCL: every setting that matters, read back from the
//! emulator with Get* calls, equals what terraform/ declares.

use std::collections::BTreeSet;

use serde_json::Value;
use service::aws::AwsClients;

use super::{isolated_local_context, require_tool};
use crate::context::{block_on, workspace_root};
use crate::outputs::Outputs;
use crate::sandbox;

fn hcl_body(path: &str) -> hcl::Body {
    hcl::parse(&std::fs::read_to_string(workspace_root().join("terraform").join(path)).unwrap())
        .unwrap()
}

/// `attribute` of the first block `path[0] > path[1] > ...` of resource `kind`, as HCL text.
fn hcl_setting(body: &hcl::Body, kind: &str, path: &[&str], attribute: &str) -> String {
    let mut block = body
        .blocks()
        .find(|b| b.identifier() == "resource" && b.labels()[0].as_str() == kind)
        .unwrap_or_else(|| panic!("resource {kind}"))
        .body();
    for name in path {
        block = block
            .blocks()
            .find(|b| b.identifier() == *name)
            .unwrap_or_else(|| panic!("{kind} > {name}"))
            .body();
    }
    block
        .attributes()
        .find(|a| a.key() == attribute)
        .unwrap_or_else(|| panic!("{kind} {attribute}"))
        .expr()
        .to_string()
        .trim_matches('"')
        .to_string()
}

fn decode(document: &str) -> Value {
    // IAM returns policy documents URL-encoded.
    let text = if document.starts_with('%') {
        let bytes = document.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&document[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    } else {
        document.to_string()
    };
    serde_json::from_str(&text).unwrap()
}

fn sids(document: &Value) -> BTreeSet<String> {
    document["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Sid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sandbox_creates_what_the_hcl_declares() {
    require_tool(
        "terraform",
        "the sandbox renders the policy documents with it",
    );
    let cx = isolated_local_context("sandbox");
    std::fs::create_dir_all(cx.state_dir()).unwrap();
    let outputs = sandbox::provision(&cx).expect("provision");
    let again = sandbox::provision(&cx).expect("provisioning twice is fine");
    assert_eq!(
        outputs.string("kms_key_arn").unwrap(),
        again.string("kms_key_arn").unwrap(),
        "the key is reused"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(crate::outputs::outputs_file(&cx)).unwrap())
            .unwrap();
    assert_eq!(saved["provisioned_by"]["value"], "sandbox");
    Outputs::load(&crate::outputs::outputs_file(&cx)).expect("the Terraform output contract");

    let s3_hcl = hcl_body("modules/s3/main.tf");
    let kms_hcl = hcl_body("modules/kms/main.tf");
    let vars = sandbox::variables(&cx).unwrap();
    let key_arn = outputs.string("kms_key_arn").unwrap().to_string();
    let clients = block_on(AwsClients::connect(&cx.env.aws));
    let iam = aws_sdk_iam::Client::new(&clients.sdk_config);

    block_on(async {
        for purpose in ["initial", "final"] {
            let bucket = outputs.string(&format!("{purpose}_bucket_name")).unwrap();
            let s3 = &clients.s3;
            let pab = s3
                .get_public_access_block()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let pab = pab.public_access_block_configuration().unwrap();
            for (flag, value) in [
                ("block_public_acls", pab.block_public_acls()),
                ("block_public_policy", pab.block_public_policy()),
                ("ignore_public_acls", pab.ignore_public_acls()),
                ("restrict_public_buckets", pab.restrict_public_buckets()),
            ] {
                let declared = hcl_setting(&s3_hcl, "aws_s3_bucket_public_access_block", &[], flag);
                assert_eq!(
                    value.map(|v| v.to_string()),
                    Some(declared),
                    "{bucket} {flag}"
                );
            }
            let ownership = s3
                .get_bucket_ownership_controls()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            assert_eq!(
                ownership.ownership_controls().unwrap().rules()[0]
                    .object_ownership()
                    .as_str(),
                hcl_setting(
                    &s3_hcl,
                    "aws_s3_bucket_ownership_controls",
                    &["rule"],
                    "object_ownership"
                )
            );
            let versioning = s3
                .get_bucket_versioning()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            assert_eq!(
                versioning.status().map(|s| s.as_str()),
                Some(
                    hcl_setting(
                        &s3_hcl,
                        "aws_s3_bucket_versioning",
                        &["versioning_configuration"],
                        "status"
                    )
                    .as_str()
                )
            );
            let encryption = s3
                .get_bucket_encryption()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let rule = &encryption
                .server_side_encryption_configuration()
                .unwrap()
                .rules()[0];
            let default = rule.apply_server_side_encryption_by_default().unwrap();
            let sse = "aws_s3_bucket_server_side_encryption_configuration";
            assert_eq!(
                default.sse_algorithm().as_str(),
                hcl_setting(
                    &s3_hcl,
                    sse,
                    &["rule", "apply_server_side_encryption_by_default"],
                    "sse_algorithm"
                )
            );
            assert_eq!(default.kms_master_key_id(), Some(key_arn.as_str()));
            assert_eq!(
                rule.bucket_key_enabled().map(|v| v.to_string()),
                Some(hcl_setting(&s3_hcl, sse, &["rule"], "bucket_key_enabled"))
            );
            let lifecycle = s3
                .get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let abort: Vec<String> = lifecycle
                .rules()
                .iter()
                .filter_map(|r| {
                    r.abort_incomplete_multipart_upload()?
                        .days_after_initiation()
                })
                .map(|d| d.to_string())
                .collect();
            let declared_abort = hcl_setting(
                &s3_hcl,
                "aws_s3_bucket_lifecycle_configuration",
                &["rule", "abort_incomplete_multipart_upload"],
                "days_after_initiation",
            );
            assert_eq!(abort, [declared_abort]);
            let noncurrent: Vec<i64> = lifecycle
                .rules()
                .iter()
                .filter_map(|r| r.noncurrent_version_expiration()?.noncurrent_days())
                .map(i64::from)
                .collect();
            assert_eq!(
                noncurrent,
                [vars["noncurrent_version_expiration_days"].as_i64().unwrap()]
            );
            assert!(
                lifecycle
                    .rules()
                    .iter()
                    .all(|r| r.expiration().and_then(|e| e.days()).is_none()),
                "raw_object_expiration_days defaults to null: current objects never expire"
            );
            let declared_markers = hcl_setting(
                &s3_hcl,
                "aws_s3_bucket_lifecycle_configuration",
                &["rule", "expiration"],
                "expired_object_delete_marker",
            );
            let markers: Vec<String> = lifecycle
                .rules()
                .iter()
                .filter_map(|r| r.expiration()?.expired_object_delete_marker())
                .map(|b| b.to_string())
                .collect();
            assert_eq!(
                markers,
                [declared_markers],
                "expired delete markers removed"
            );

            // Rendered from modules/policy-documents, checked, kept, and not attached locally.
            let kept: Value = serde_json::from_str(
                &std::fs::read_to_string(
                    cx.state_dir().join(format!("{purpose}-bucket-policy.json")),
                )
                .unwrap(),
            )
            .unwrap();
            let output: Value = serde_json::from_str(
                outputs
                    .string(&format!("{purpose}_bucket_policy_json"))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(kept, output);
            assert_eq!(
                sids(&kept),
                [
                    "DenyCustomerProvidedKeys",
                    "DenyIncorrectEncryptionHeader",
                    "DenyIncorrectKmsKey",
                    "DenyInsecureTransport",
                    "DenyKmsWithoutKeyId",
                    "DenyOutdatedTls"
                ]
                .into_iter()
                .map(String::from)
                .collect(),
                "no network statement without allowed networks"
            );
            assert!(
                s3.get_bucket_policy().bucket(bucket).send().await.is_err(),
                "not attached in the emulator"
            );
        }

        let rotation = clients
            .kms
            .get_key_rotation_status()
            .key_id(&key_arn)
            .send()
            .await
            .unwrap();
        assert_eq!(
            rotation.key_rotation_enabled().to_string(),
            hcl_setting(&kms_hcl, "aws_kms_key", &[], "enable_key_rotation")
        );
        let aliases = clients.kms.list_aliases().send().await.unwrap();
        let alias = outputs.string("kms_key_alias").unwrap();
        assert!(
            aliases
                .aliases()
                .iter()
                .any(|a| a.alias_name() == Some(alias)),
            "{alias}"
        );
        let key_policy = clients
            .kms
            .get_key_policy()
            .key_id(&key_arn)
            .policy_name("default")
            .send()
            .await
            .unwrap();
        let key_policy: Value = serde_json::from_str(key_policy.policy().unwrap()).unwrap();
        assert_eq!(
            sids(&key_policy),
            [
                "AccountRootFullAccess",
                "ServiceRoleDecryptEnvelopes",
                "ServiceRoleDescribeKey",
                "ServiceRoleUseThroughS3"
            ]
            .into_iter()
            .map(String::from)
            .collect()
        );

        let role_name = outputs.string("instance_profile_name").unwrap();
        let role = iam.get_role().role_name(role_name).send().await.unwrap();
        assert_eq!(
            role.role().unwrap().arn(),
            outputs.string("service_role_arn").unwrap()
        );
        let trust = decode(role.role().unwrap().assume_role_policy_document().unwrap());
        assert_eq!(
            trust["Statement"][0]["Principal"]["Service"],
            "ec2.amazonaws.com"
        );
        let policy = iam
            .get_role_policy()
            .role_name(role_name)
            .policy_name(format!("{role_name}-pipeline"))
            .send()
            .await
            .unwrap();
        let policy = decode(policy.policy_document());
        assert_eq!(
            sids(&policy),
            [
                "ListPipelineBuckets",
                "ReadWritePipelineObjects",
                "UsePipelineKey"
            ]
            .into_iter()
            .map(String::from)
            .collect()
        );
        assert_eq!(policy["Statement"][2]["Resource"][0], key_arn.as_str());
        let profile = iam
            .get_instance_profile()
            .instance_profile_name(role_name)
            .send()
            .await
            .unwrap();
        assert_eq!(
            profile.instance_profile().unwrap().roles()[0].role_name(),
            role_name
        );
    });
}

/// The sandbox names resources as terraform/ does; this keeps the two patterns together.
#[test]
fn sandbox_names_resources_like_the_hcl() {
    let main = std::fs::read_to_string(workspace_root().join("terraform/main.tf")).unwrap();
    let kms =
        std::fs::read_to_string(workspace_root().join("terraform/modules/kms/main.tf")).unwrap();
    let sandbox = include_str!("../sandbox.rs");
    for (hcl, rust, file) in [
        (
            "\"${var.name_prefix}-initial-${local.account_id}\"",
            "\"{prefix}-initial-{account}\"",
            &main,
        ),
        (
            "\"${var.name_prefix}-final-${local.account_id}\"",
            "\"{prefix}-final-{account}\"",
            &main,
        ),
        (
            "role_name               = \"${var.name_prefix}-service\"",
            "\"{prefix}-service\"",
            &main,
        ),
        (
            "\"alias/${var.name_prefix}-data\"",
            "\"alias/{prefix}-data\"",
            &kms,
        ),
    ] {
        assert!(
            file.contains(hcl),
            "terraform/ no longer names a resource {hcl}"
        );
        assert!(
            sandbox.contains(rust),
            "sandbox.rs no longer names a resource {rust}"
        );
    }
}
