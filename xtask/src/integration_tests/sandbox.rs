//! The sandbox provisioner agrees with the HCL: every setting that matters, read back from the
//! emulator with Get* calls, equals what terraform/ declares.

use std::collections::BTreeSet;

use serde_json::Value;
use service::aws::AwsClients;

use super::{hardening, isolated_local_context, require_tool};
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
    let artifact = super::delivered_artifact(&cx);
    let outputs = sandbox::provision(&cx, &artifact).expect("provision");
    let again = sandbox::provision(&cx, &artifact).expect("provisioning twice is fine");
    for reused in [
        "kms_key_arn",
        "queue_url",
        "instance_id",
        "public_ip",
        "security_group_id",
    ] {
        assert_eq!(
            outputs.string(reused).unwrap(),
            again.string(reused).unwrap(),
            "{reused} is reused"
        );
    }
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(crate::outputs::outputs_file(&cx)).unwrap())
            .unwrap();
    assert_eq!(saved["provisioned_by"]["value"], "sandbox");
    Outputs::load(&crate::outputs::outputs_file(&cx)).expect("the Terraform output contract");

    let s3_hcl = hcl_body("modules/s3/main.tf");
    let kms_hcl = hcl_body("modules/kms/main.tf");
    let vars = sandbox::variables(&cx, Some(&artifact)).unwrap();
    let public_ip = outputs.string("public_ip").unwrap().to_string();
    let key_arn = outputs.string("kms_key_arn").unwrap().to_string();
    let clients = block_on(AwsClients::connect(&cx.env.aws));
    let iam = aws_sdk_iam::Client::new(&clients.sdk_config);

    block_on(async {
        for purpose in ["initial", "final"] {
            let bucket = outputs.string(&format!("{purpose}_bucket_name")).unwrap();
            let s3 = &clients.s3;
            let found = hardening(s3, bucket).await;
            let pab_hcl = |flag| {
                Some(hcl_setting(&s3_hcl, "aws_s3_bucket_public_access_block", &[], flag) == "true")
            };
            assert_eq!(
                found.public_access_blocks,
                [
                    pab_hcl("block_public_acls"),
                    pab_hcl("ignore_public_acls"),
                    pab_hcl("block_public_policy"),
                    pab_hcl("restrict_public_buckets"),
                ],
                "{bucket}"
            );
            assert_eq!(
                found.object_ownership,
                hcl_setting(
                    &s3_hcl,
                    "aws_s3_bucket_ownership_controls",
                    &["rule"],
                    "object_ownership"
                )
            );
            assert_eq!(
                found.versioning,
                Some(hcl_setting(
                    &s3_hcl,
                    "aws_s3_bucket_versioning",
                    &["versioning_configuration"],
                    "status"
                ))
            );
            let sse = "aws_s3_bucket_server_side_encryption_configuration";
            assert_eq!(
                found.sse_algorithm,
                hcl_setting(
                    &s3_hcl,
                    sse,
                    &["rule", "apply_server_side_encryption_by_default"],
                    "sse_algorithm"
                )
            );
            assert_eq!(found.kms_key.as_deref(), Some(key_arn.as_str()));
            assert_eq!(
                found.bucket_key.map(|v| v.to_string()),
                Some(hcl_setting(&s3_hcl, sse, &["rule"], "bucket_key_enabled"))
            );
            let lifecycle = "aws_s3_bucket_lifecycle_configuration";
            assert_eq!(
                found
                    .abort_multipart_days
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>(),
                [hcl_setting(
                    &s3_hcl,
                    lifecycle,
                    &["rule", "abort_incomplete_multipart_upload"],
                    "days_after_initiation",
                )]
            );
            assert_eq!(
                found.noncurrent_days,
                [vars["noncurrent_version_expiration_days"].as_i64().unwrap() as i32]
            );
            assert!(
                found.current_expiry_days.is_empty(),
                "raw_object_expiration_days defaults to null: current objects never expire"
            );
            assert_eq!(
                found
                    .expired_delete_markers
                    .iter()
                    .map(bool::to_string)
                    .collect::<Vec<_>>(),
                [hcl_setting(
                    &s3_hcl,
                    lifecycle,
                    &["rule", "expiration"],
                    "expired_object_delete_marker",
                )],
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
                    "DenyObjectAccessOutsideAllowedNetworks",
                    "DenyOutdatedTls"
                ]
                .into_iter()
                .map(String::from)
                .collect(),
            );
            // No allowed_cidrs locally: the host's Elastic IP is the one network admitted.
            let network = kept["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["Sid"] == "DenyObjectAccessOutsideAllowedNetworks")
                .unwrap();
            assert_eq!(
                network["Condition"]["NotIpAddress"]["aws:SourceIp"],
                serde_json::json!([format!("{public_ip}/32")])
            );
            assert!(!found.policy_attached, "not attached in the emulator");
            let logging = s3.get_bucket_logging().bucket(bucket).send().await.unwrap();
            let logging = logging.logging_enabled().expect("access logging on");
            assert_eq!(
                logging.target_bucket(),
                outputs.string("access_log_bucket_name").unwrap()
            );
            assert_eq!(logging.target_prefix(), format!("{bucket}/"));
            assert_eq!(
                hcl_setting(&s3_hcl, "aws_s3_bucket_logging", &[], "target_prefix"),
                "${var.bucket_name}/"
            );
        }

        // The log bucket: private, versioned, SSE-S3 (what log delivery writes to), logs
        // expiring after the retention, and a policy admitting log delivery, attached.
        let logs_hcl = hcl_body("modules/access-logs/main.tf");
        let log_bucket = outputs.string("access_log_bucket_name").unwrap();
        let found = hardening(&clients.s3, log_bucket).await;
        assert_eq!(found.public_access_blocks, [Some(true); 4]);
        assert_eq!(found.object_ownership, "BucketOwnerEnforced");
        assert_eq!(found.versioning.as_deref(), Some("Enabled"));
        assert_eq!(
            found.sse_algorithm,
            hcl_setting(
                &logs_hcl,
                "aws_s3_bucket_server_side_encryption_configuration",
                &["rule", "apply_server_side_encryption_by_default"],
                "sse_algorithm"
            )
        );
        assert_eq!(
            found.current_expiry_days,
            [vars["access_log_retention_days"].as_i64().unwrap() as i32]
        );
        assert_eq!(found.abort_multipart_days, [1]);
        assert!(found.policy_attached);
        let attached = clients
            .s3
            .get_bucket_policy()
            .bucket(log_bucket)
            .send()
            .await
            .unwrap();
        let attached: Value = serde_json::from_str(attached.policy().unwrap()).unwrap();
        assert_eq!(
            attached,
            serde_json::from_str::<Value>(outputs.string("access_log_bucket_policy_json").unwrap())
                .unwrap()
        );
        assert!(sids(&attached).contains("AllowServerAccessLogDelivery"));

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
                "S3SendsInitialBucketEventsToTheQueue",
                "ServiceRoleDecryptAuthTokenThroughSsm",
                "ServiceRoleDecryptEnvelopes",
                "ServiceRoleDescribeKey",
                "ServiceRoleUseThroughS3",
                "ServiceRoleUseThroughSqs"
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
                "ConsumeWorkQueue",
                "ListPipelineBuckets",
                "PublishCertificate",
                "ReadServiceArtifact",
                "ReadServiceSecrets",
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

        check_host(&clients, &outputs, &vars, role_name).await;
        check_queue(&clients, &outputs, &key_arn).await;
    });
}

/// The queues, their policies and the initial bucket's notification, read back from the
/// emulator, against modules/queue and the root's defaults.
async fn check_queue(clients: &AwsClients, outputs: &Outputs, key_arn: &str) {
    use aws_sdk_sqs::types::QueueAttributeName as Attr;
    let root = hcl_body("variables.tf");
    let default = |name: &str| {
        root.blocks()
            .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == name)
            .and_then(|b| b.body().attributes().find(|a| a.key() == "default"))
            .map(|a| a.expr().to_string())
            .unwrap_or_else(|| panic!("no default for {name}"))
    };
    let read = |url: String| async move {
        clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(Attr::All)
            .send()
            .await
            .unwrap()
            .attributes()
            .cloned()
            .unwrap()
    };
    let work = read(outputs.string("queue_url").unwrap().to_string()).await;
    let dead = read(outputs.string("dead_letter_queue_url").unwrap().to_string()).await;
    assert_eq!(work[&Attr::KmsMasterKeyId], key_arn);
    assert_eq!(dead[&Attr::KmsMasterKeyId], key_arn);
    assert_eq!(
        work[&Attr::VisibilityTimeout],
        default("queue_visibility_timeout_seconds")
    );
    let redrive: Value = serde_json::from_str(&work[&Attr::RedrivePolicy]).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        default("queue_max_receive_count")
    );
    assert_eq!(
        redrive["deadLetterTargetArn"],
        dead[&Attr::QueueArn].as_str()
    );
    let work_policy: Value = serde_json::from_str(&work[&Attr::Policy]).unwrap();
    assert_eq!(
        sids(&work_policy),
        ["DenyInsecureTransport", "InitialBucketSendsEvents"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let dead_policy: Value = serde_json::from_str(&dead[&Attr::Policy]).unwrap();
    assert_eq!(
        sids(&dead_policy),
        ["DenyInsecureTransport"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let notification = clients
        .s3
        .get_bucket_notification_configuration()
        .bucket(outputs.string("initial_bucket_name").unwrap())
        .send()
        .await
        .unwrap();
    let queue = &notification.queue_configurations()[0];
    assert_eq!(queue.queue_arn(), work[&Attr::QueueArn].as_str());
    assert_eq!(queue.events()[0].as_str(), "s3:ObjectCreated:*");
    let rule = &queue.filter().unwrap().key().unwrap().filter_rules()[0];
    assert_eq!(rule.value(), Some("raw/"));
}

/// The instance, its security group and Elastic IP, read back from the emulator's EC2,
/// against modules/host.
async fn check_host(
    clients: &AwsClients,
    outputs: &Outputs,
    vars: &serde_json::Map<String, Value>,
    profile_name: &str,
) {
    let host_hcl = hcl_body("modules/host/main.tf");
    let ec2 = aws_sdk_ec2::Client::new(&clients.sdk_config);
    let instance_id = outputs.string("instance_id").unwrap();
    let described = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .unwrap();
    let instance = &described.reservations()[0].instances()[0];
    assert_eq!(
        instance.instance_type().unwrap().as_str(),
        vars["instance_type"].as_str().unwrap()
    );
    let ami = aws_sdk_ssm::Client::new(&clients.sdk_config)
        .get_parameter()
        .name("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
        .send()
        .await
        .unwrap();
    assert_eq!(instance.image_id(), ami.parameter().unwrap().value());
    let metadata = instance.metadata_options().unwrap();
    let metadata_hcl =
        |attribute| hcl_setting(&host_hcl, "aws_instance", &["metadata_options"], attribute);
    assert_eq!(
        metadata.http_tokens().unwrap().as_str(),
        metadata_hcl("http_tokens")
    );
    assert_eq!(
        metadata.http_put_response_hop_limit().unwrap().to_string(),
        metadata_hcl("http_put_response_hop_limit")
    );
    assert_eq!(
        metadata.http_endpoint().unwrap().as_str(),
        metadata_hcl("http_endpoint")
    );
    assert!(
        instance
            .iam_instance_profile()
            .unwrap()
            .arn()
            .unwrap()
            .ends_with(&format!("instance-profile/{profile_name}")),
        "{:?}",
        instance.iam_instance_profile()
    );
    assert_eq!(instance.ebs_optimized(), Some(true));
    assert_eq!(
        instance.monitoring().unwrap().state().unwrap().as_str(),
        "enabled",
        "detailed_monitoring defaults to true"
    );
    let user_data = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    use base64::Engine as _;
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(user_data.user_data().unwrap().value().unwrap())
        .unwrap();
    assert_eq!(user_data, outputs.string("user_data").unwrap().as_bytes());
    let root = instance.block_device_mappings()[0]
        .ebs()
        .and_then(|e| e.volume_id())
        .unwrap();
    let volume = ec2
        .describe_volumes()
        .volume_ids(root)
        .send()
        .await
        .unwrap();
    let volume = &volume.volumes()[0];
    let root_hcl =
        |attribute| hcl_setting(&host_hcl, "aws_instance", &["root_block_device"], attribute);
    assert_eq!(
        volume.encrypted().unwrap().to_string(),
        root_hcl("encrypted")
    );
    assert_eq!(
        volume.volume_type().unwrap().as_str(),
        root_hcl("volume_type")
    );
    assert_eq!(
        volume.size(),
        Some(vars["root_volume_size_gib"].as_i64().unwrap() as i32)
    );

    let group = ec2
        .describe_security_groups()
        .group_ids(outputs.string("security_group_id").unwrap())
        .send()
        .await
        .unwrap();
    let group = &group.security_groups()[0];
    assert_eq!(
        group.description().unwrap(),
        hcl_setting(&host_hcl, "aws_security_group", &[], "description")
    );
    assert_eq!(
        instance.security_groups()[0].group_id(),
        group.group_id(),
        "the instance is in the group"
    );
    let rules = |permissions: &[aws_sdk_ec2::types::IpPermission]| -> Vec<String> {
        permissions
            .iter()
            .flat_map(|p| {
                p.ip_ranges().iter().map(move |r| {
                    format!(
                        "{} {}-{} {}",
                        p.ip_protocol().unwrap_or("?"),
                        p.from_port().unwrap_or(-1),
                        p.to_port().unwrap_or(-1),
                        r.cidr_ip().unwrap_or("?")
                    )
                })
            })
            .collect()
    };
    let port = vars["service_listen_address"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1;
    assert_eq!(
        rules(group.ip_permissions()),
        vars["client_cidrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("tcp {port}-{port} {}", c.as_str().unwrap()))
            .collect::<Vec<_>>(),
        "only the service port, only from the client CIDRs"
    );
    assert_eq!(
        hcl_setting(
            &host_hcl,
            "aws_vpc_security_group_egress_rule",
            &[],
            "from_port"
        ),
        "443"
    );
    assert_eq!(
        rules(group.ip_permissions_egress()),
        ["tcp 443-443 0.0.0.0/0"],
        "only HTTPS out"
    );

    let address = ec2
        .describe_addresses()
        .public_ips(outputs.string("public_ip").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(address.addresses()[0].instance_id(), Some(instance_id));
    assert_eq!(
        hcl_setting(&host_hcl, "aws_eip", &[], "domain"),
        address.addresses()[0].domain().unwrap().as_str()
    );
}

/// The sandbox names resources as terraform/ does; this keeps the two patterns together.
#[test]
fn sandbox_names_resources_like_the_hcl() {
    let main = std::fs::read_to_string(workspace_root().join("terraform/main.tf")).unwrap();
    let kms =
        std::fs::read_to_string(workspace_root().join("terraform/modules/kms/main.tf")).unwrap();
    let sandbox = include_str!("../sandbox/mod.rs");
    let doors = include_str!("../doors.rs");
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
        (
            "\"${var.name_prefix}-access-logs-${local.account_id}\"",
            "\"{prefix}-access-logs-{account}\"",
            &main,
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
    // The parameters Terraform names and the xtask makes, reads and deletes (doors.rs).
    for (hcl, rust) in [
        (
            "\"/${var.name_prefix}/auth-token\"",
            "\"/{prefix}/auth-token\"",
        ),
        (
            "\"/${var.name_prefix}/tls-certificate\"",
            "\"/{prefix}/tls-certificate\"",
        ),
        (
            "\"/${var.name_prefix}/tls-rotation\"",
            "\"/{prefix}/tls-rotation\"",
        ),
    ] {
        assert!(
            main.contains(hcl),
            "terraform/main.tf no longer names {hcl}"
        );
        assert!(doors.contains(rust), "doors.rs no longer names {rust}");
    }
}
