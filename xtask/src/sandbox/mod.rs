//! The sandbox provisioner: on machines that cannot install the AWS provider, `cargo xtask up`
//! creates the stack's resources in the emulator with the AWS SDK instead of Terraform: the
//! key, the role and its instance profile, the data buckets and their access log bucket, and
//! the host (host.rs).
//!
//! Nothing is written twice. The policy documents and the user-data are rendered by the
//! terraform binary from the same HCL (`modules/policy-documents`, `templates/user-data.sh.tpl`,
//! which need no provider). Values come from the variable defaults in `terraform/variables.tf`
//! and the xtask's own variables. Bucket settings go through `buckets.rs`, as bootstrap's do.
//! The result is `outputs.json` in the Terraform output contract, marked
//! `"provisioned_by": "sandbox"`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aws_sdk_iam::error::ProvideErrorMetadata as _;
use serde_json::{Map, Value, json};
use service::aws::{AwsClients, AwsResultExt, partition};

mod host;

use crate::artifact::Artifact;
use crate::buckets::{self, BucketSetting};
use crate::context::{Context, block_on};
use crate::outputs::Outputs;
use crate::outputs::outputs_file;
use crate::terraform::xtask_variables;
use crate::terraform::{Output, Terraform};

/// Marks outputs.json as made by this module rather than Terraform.
pub const PROVISIONED_BY: &str = "sandbox";

/// Provisions (or brings up to date) the local stack, the instance running `artifact`;
/// returns its outputs.
pub fn provision(cx: &Context, artifact: &Artifact) -> Result<Outputs> {
    if !cx.env.is_local() {
        bail!(
            "the sandbox provisioner only targets the local emulator, not `{}`",
            cx.env.name
        );
    }
    let vars = variables(cx, Some(artifact))?;
    let clients = block_on(AwsClients::connect(&cx.env.aws));
    let iam = aws_sdk_iam::Client::new(&clients.sdk_config);
    let ec2 = aws_sdk_ec2::Client::new(&clients.sdk_config);
    let ssm = aws_sdk_ssm::Client::new(&clients.sdk_config);
    let identity =
        block_on(clients.sts.get_caller_identity().send()).aws_context("sts:GetCallerIdentity")?;
    let account = identity.account().context("no account id")?.to_string();
    let region = cx.env.region().to_string();
    let partition = partition(&region);
    let prefix = &cx.env.name_prefix;
    let role_name = format!("{prefix}-service");
    let alias = format!("alias/{prefix}-data");
    let log_bucket = format!("{prefix}-access-logs-{account}");
    let bucket_names = BTreeMap::from([
        ("initial", format!("{prefix}-initial-{account}")),
        ("final", format!("{prefix}-final-{account}")),
    ]);
    let arn_of = |bucket: &str| format!("arn:{partition}:s3:::{bucket}");
    let parameter_names = crate::doors::parameter_names(prefix);
    // One instance (the local stack's shape) makes its own TLS key: no shared one to grant.
    let parameter_arns: Map<String, Value> = parameter_names
        .iter()
        .filter(|(purpose, _)| **purpose != "tls_key")
        .map(|(purpose, name)| {
            (
                purpose.to_string(),
                json!(format!(
                    "arn:{partition}:ssm:{region}:{account}:parameter{name}"
                )),
            )
        })
        .collect();
    // As in terraform/main.tf: known before the queues exist.
    let queue_name = format!("{prefix}-work");
    let queue_arns = json!({
        "work": format!("arn:{partition}:sqs:{region}:{account}:{queue_name}"),
        "dead_letter": format!("arn:{partition}:sqs:{region}:{account}:{queue_name}-dead-letter"),
    });
    let bucket_arns: Map<String, Value> = bucket_names
        .iter()
        .map(|(purpose, name)| (purpose.to_string(), json!(arn_of(name))))
        .collect();

    cx.step("sandbox: IAM role");
    let role_arn = format!("arn:{partition}:iam::{account}:role/{role_name}");
    let first = render(
        cx,
        json!({
            "region": region,
            "partition": partition,
            "account_id": account,
            "service_role_arn": role_arn,
            "bucket_arns": bucket_arns,
            "parameter_arns": parameter_arns,
            "queue_arns": queue_arns,
        }),
        None,
    )?;
    let role_arn = block_on(ensure_role(
        &iam,
        &role_name,
        str_field(&first, "assume_role_policy_json")?,
    ))?;

    cx.step("sandbox: KMS key");
    let key_arn = block_on(ensure_key(
        &clients.kms,
        &alias,
        str_field(&first, "key_policy_json")?,
    ))?;

    cx.step(format!(
        "sandbox: queues {queue_name} and its dead-letter queue"
    ));
    let queue_settings = module_defaults(cx, "modules/queue")?;
    let setting = |name: &str, root: &str| -> Result<u32> {
        vars.get(root)
            .or_else(|| queue_settings.get(name))
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .with_context(|| format!("{root} has no default"))
    };
    let queues = block_on(service::testing::create_queues(
        &clients,
        &queue_name,
        &key_arn,
        setting(
            "visibility_timeout_seconds",
            "queue_visibility_timeout_seconds",
        )?,
        setting("max_receive_count", "queue_max_receive_count")?,
    ))?;

    // Allocated first, as in the HCL: the bucket policies admit its address.
    cx.step("sandbox: Elastic IP");
    let host_vars = module_defaults(cx, "modules/host")?;
    let host_settings = host::HostSettings::from_variables(
        &vars,
        prefix,
        &role_name,
        host_vars["ami_ssm_parameter"]
            .as_str()
            .context("ami_ssm_parameter has no default")?
            .to_string(),
    )?;
    let (allocation_id, public_ip) = block_on(host::elastic_ip(&ec2, &host_settings))?;
    let mut allowed_cidrs: Vec<Value> = vars["allowed_cidrs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    allowed_cidrs.push(json!(format!("{public_ip}/32")));

    let access_inputs = json!({
        "partition": partition,
        "account_id": account,
        "service_role_arn": role_arn,
        "kms_key_arn": key_arn,
        "bucket_arns": bucket_arns,
        "allowed_cidrs": allowed_cidrs,
        "allowed_vpc_endpoint_ids": vars["allowed_vpc_endpoint_ids"],
        "region": region,
        "exempt_principal_arns": vars["admin_principal_arns"],
        "access_log_bucket_arn": arn_of(&log_bucket),
        "parameter_arns": parameter_arns,
        "queue_arns": queue_arns,
        "service_artifact": {
            "bucket_arn": arn_of(&artifact.bucket),
            "key_prefix": format!("service/{}/", artifact.sha256),
            "kms_key_arn": artifact.kms_key_arn,
        },
    });
    let user_data_vars = json!({
        "region": region,
        "initial_bucket": bucket_names["initial"],
        "final_bucket": bucket_names["final"],
        "kms_key_arn": key_arn,
        "listen_address": vars["service_listen_address"],
        "processor": vars["service_processor"],
        "queue_url": queues.work_url,
        "service_binary_s3_uri": format!("s3://{}/{}", artifact.bucket, artifact.key),
        "service_binary_url": "",
        "service_binary_sha256": artifact.sha256,
        "token_parameter": parameter_names["auth_token"],
        "certificate_parameter": parameter_names["tls_certificate"],
        "rotation_parameter": parameter_names["tls_rotation"],
        "tls_key_parameter": "",
        "tls_ip": public_ip,
    });
    let second = render(cx, access_inputs, Some(user_data_vars))?;
    let documents = &second["documents"];
    let noncurrent_days = vars["noncurrent_version_expiration_days"]
        .as_i64()
        .context("noncurrent_version_expiration_days has no default")?
        as i32;

    cx.step(format!("sandbox: access log bucket {log_bucket}"));
    let log_policy = str_field(documents, "access_log_bucket_policy_json")?;
    let retention_days = vars["access_log_retention_days"]
        .as_i64()
        .context("access_log_retention_days has no default")? as i32;
    block_on(async {
        buckets::create(&clients.s3, &log_bucket, &region).await?;
        for desired in [
            BucketSetting::PublicAccessBlock,
            BucketSetting::OwnerEnforced,
            BucketSetting::Versioning,
            BucketSetting::SseS3,
            BucketSetting::Lifecycle {
                noncurrent_days,
                current_days: Some(retention_days),
            },
        ] {
            buckets::put(&clients.s3, &log_bucket, &account, &desired).await?;
        }
        // Attached here too: nothing the local stack does touches log objects, so its
        // conditioned Deny statements block nothing, and the emulator checks it admits log
        // delivery before it accepts the data buckets' logging rules.
        clients
            .s3
            .put_bucket_policy()
            .bucket(&log_bucket)
            .expected_bucket_owner(&account)
            .policy(log_policy)
            .send()
            .await
            .aws_context(format!("s3:PutBucketPolicy {log_bucket}"))?;
        anyhow::Ok(())
    })?;

    for (purpose, name) in &bucket_names {
        cx.step(format!("sandbox: bucket {name}"));
        let policy = documents["bucket_policy_json"][*purpose]
            .as_str()
            .with_context(|| format!("no rendered policy for the {purpose} bucket"))?;
        let current_days = if *purpose == "initial" {
            vars["raw_object_expiration_days"]
                .as_i64()
                .map(|d| d as i32)
        } else {
            None
        };
        block_on(async {
            buckets::create(&clients.s3, name, &region).await?;
            for desired in [
                BucketSetting::PublicAccessBlock,
                BucketSetting::OwnerEnforced,
                BucketSetting::Versioning,
                BucketSetting::SseKms {
                    kms_key_arn: Some(&key_arn),
                },
                BucketSetting::Lifecycle {
                    noncurrent_days,
                    current_days,
                },
                BucketSetting::AccessLogging {
                    target: &log_bucket,
                },
            ] {
                buckets::put(&clients.s3, name, &account, &desired).await?;
            }
            anyhow::Ok(())
        })?;
        // The emulator speaks plain HTTP and treats any conditioned Deny as deny-all, so the
        // policy is kept as a checked document next to outputs.json instead of attached.
        check_bucket_policy(policy, &bucket_arns[*purpose])?;
        let path = cx.state_dir().join(format!("{purpose}-bucket-policy.json"));
        std::fs::write(&path, pretty(policy)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "    note: the data buckets' policies are rendered and checked, not attached: the emulator speaks plain HTTP and ignores policy conditions"
    );

    cx.step("sandbox: queue policies and the initial bucket's events");
    block_on(async {
        for (purpose, url) in [
            ("work", &queues.work_url),
            ("dead_letter", &queues.dead_letter_url),
        ] {
            let policy = documents["queue_policy_json"][purpose]
                .as_str()
                .with_context(|| format!("no rendered policy for the {purpose} queue"))?;
            clients
                .sqs
                .set_queue_attributes()
                .queue_url(url)
                .attributes(aws_sdk_sqs::types::QueueAttributeName::Policy, policy)
                .send()
                .await
                .aws_context(format!("sqs:SetQueueAttributes {url} (policy)"))?;
        }
        service::testing::notify_queue(&clients, &bucket_names["initial"], &queues.work_arn).await
    })?;

    cx.step("sandbox: role policy and instance profile");
    block_on(ensure_role_policy_and_profile(
        &iam,
        &role_name,
        str_field(documents, "service_role_policy_json")?,
    ))?;

    cx.step("sandbox: host (security group, instance, Elastic IP association)");
    let user_data = second["user_data"]
        .as_str()
        .context("no rendered user-data")?;
    let host = block_on(host::provision(
        &ec2,
        &ssm,
        &host_settings,
        user_data,
        &allocation_id,
    ))?;

    let mut outputs = Map::new();
    let mut put = |name: &str, value: Value| {
        outputs.insert(
            name.to_string(),
            json!({"sensitive": false, "type": "string", "value": value}),
        );
    };
    put("region", json!(region));
    for (purpose, name) in &bucket_names {
        put(&format!("{purpose}_bucket_name"), json!(name));
        put(
            &format!("{purpose}_bucket_arn"),
            bucket_arns[*purpose].clone(),
        );
        put(
            &format!("{purpose}_bucket_policy_json"),
            documents["bucket_policy_json"][*purpose].clone(),
        );
    }
    put("kms_key_arn", json!(key_arn));
    put("kms_key_alias", json!(alias));
    put("service_role_arn", json!(role_arn));
    put("instance_profile_name", json!(role_name));
    put("user_data", json!(user_data));
    put("access_log_bucket_name", json!(log_bucket));
    put("access_log_bucket_policy_json", json!(log_policy));
    put(
        "service_url",
        json!(format!(
            "https://{public_ip}:{}",
            host_settings.service_port
        )),
    );
    put("instance_id", json!(host.instance_id));
    put("public_ip", json!(public_ip));
    put("security_group_id", json!(host.security_group_id));
    put("auth_token_parameter", json!(parameter_names["auth_token"]));
    put(
        "tls_certificate_parameter",
        json!(parameter_names["tls_certificate"]),
    );
    put(
        "tls_rotation_parameter",
        json!(parameter_names["tls_rotation"]),
    );
    put("queue_url", json!(queues.work_url));
    put("dead_letter_queue_url", json!(queues.dead_letter_url));
    put("provisioned_by", json!(PROVISIONED_BY));
    let text = serde_json::to_string_pretty(&Value::Object(outputs))?;
    let parsed = Outputs::parse(&text)?;
    let path = outputs_file(cx);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(parsed)
}

fn str_field<'a>(value: &'a Value, name: &str) -> Result<&'a str> {
    value[name]
        .as_str()
        .with_context(|| format!("the rendered documents have no `{name}`"))
}

fn pretty(json_text: &str) -> Result<String> {
    Ok(serde_json::to_string_pretty(
        &serde_json::from_str::<Value>(json_text)?,
    )?)
}

/// Root-module variables as Terraform would see them for `local`: the defaults in
/// terraform/variables.tf, overridden by what the xtask passes.
pub fn variables(cx: &Context, artifact: Option<&Artifact>) -> Result<Map<String, Value>> {
    let mut vars = module_defaults(cx, "")?;
    for (name, value) in xtask_variables(cx, artifact) {
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

/// The defaults of a module's variables (`terraform/<dir>/variables.tf`).
pub fn module_defaults(cx: &Context, dir: &str) -> Result<Map<String, Value>> {
    let path = cx.root.join("terraform").join(dir).join("variables.tf");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let body = hcl::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut vars = Map::new();
    for block in body.blocks().filter(|b| b.identifier() == "variable") {
        let name = block.labels()[0].as_str().to_string();
        if let Some(default) = block.body().attributes().find(|a| a.key() == "default") {
            let value: hcl::Value = default.expr().clone().into();
            vars.insert(name, serde_json::to_value(value)?);
        }
    }
    Ok(vars)
}

/// Renders `modules/policy-documents` (and, with `user_data_vars`, the user-data template)
/// with the terraform binary: no provider, no remote state, nothing but templating.
pub fn render(cx: &Context, inputs: Value, user_data_vars: Option<Value>) -> Result<Value> {
    let dir = cx.state_dir().join("sandbox-render");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let terraform_dir = cx.root.join("terraform");
    let mut module = json!({"source": terraform_dir.join("modules/policy-documents")});
    for (key, value) in inputs.as_object().expect("inputs are an object") {
        module[key] = value.clone();
    }
    let mut config = json!({
        "module": {"documents": module},
        "output": {"documents": {"value": "${module.documents}"}},
    });
    if let Some(vars) = &user_data_vars {
        let template = terraform_dir.join("templates/user-data.sh.tpl");
        config["variable"] = json!({"user_data_vars": {"type": "map(string)"}});
        config["output"]["user_data"] = json!({"value": format!("${{templatefile({:?}, var.user_data_vars)}}", template.display().to_string())});
        write_json(
            &dir.join("terraform.tfvars.json"),
            &json!({"user_data_vars": vars}),
        )?;
    } else {
        let _ = std::fs::remove_file(dir.join("terraform.tfvars.json"));
    }
    write_json(&dir.join("main.tf.json"), &config)?;
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
    let mut rendered = outputs["documents"]["value"].clone();
    if user_data_vars.is_some() {
        rendered = json!({"documents": rendered, "user_data": outputs["user_data"]["value"]});
    }
    Ok(rendered)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The bucket policy denies plain HTTP on the bucket and its objects (sanity check of the
/// rendered document before it is kept).
fn check_bucket_policy(policy: &str, bucket_arn: &Value) -> Result<()> {
    let document: Value = serde_json::from_str(policy).context("bucket policy is not JSON")?;
    let tls = document["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["Sid"] == "DenyInsecureTransport")
        .context("bucket policy has no DenyInsecureTransport statement")?;
    if !tls["Resource"]
        .as_array()
        .is_some_and(|r| r.contains(bucket_arn))
    {
        bail!("bucket policy does not cover {bucket_arn}");
    }
    Ok(())
}

async fn ensure_role(iam: &aws_sdk_iam::Client, name: &str, trust: &str) -> Result<String> {
    match iam.get_role().role_name(name).send().await {
        Ok(found) => {
            iam.update_assume_role_policy()
                .role_name(name)
                .policy_document(trust)
                .send()
                .await
                .aws_context(format!("iam:UpdateAssumeRolePolicy {name}"))?;
            Ok(found.role().context("no role")?.arn().to_string())
        }
        Err(err) if err.code() == Some("NoSuchEntity") => {
            let created = iam
                .create_role()
                .role_name(name)
                .assume_role_policy_document(trust)
                .description("Role of the file-pipeline service's EC2 instance")
                .max_session_duration(3600)
                .send()
                .await
                .aws_context(format!("iam:CreateRole {name}"))?;
            Ok(created.role().context("no role")?.arn().to_string())
        }
        Err(err) => Err(err).aws_context(format!("iam:GetRole {name}")),
    }
}

async fn ensure_role_policy_and_profile(
    iam: &aws_sdk_iam::Client,
    role: &str,
    policy: &str,
) -> Result<()> {
    iam.put_role_policy()
        .role_name(role)
        .policy_name(format!("{role}-pipeline"))
        .policy_document(policy)
        .send()
        .await
        .aws_context(format!("iam:PutRolePolicy {role}"))?;
    let profile = match iam
        .get_instance_profile()
        .instance_profile_name(role)
        .send()
        .await
    {
        Ok(found) => found.instance_profile,
        Err(err) if err.code() == Some("NoSuchEntity") => {
            iam.create_instance_profile()
                .instance_profile_name(role)
                .send()
                .await
                .aws_context(format!("iam:CreateInstanceProfile {role}"))?
                .instance_profile
        }
        Err(err) => return Err(err).aws_context(format!("iam:GetInstanceProfile {role}")),
    };
    let has_role = profile.is_some_and(|p| p.roles().iter().any(|r| r.role_name() == role));
    if !has_role {
        iam.add_role_to_instance_profile()
            .instance_profile_name(role)
            .role_name(role)
            .send()
            .await
            .aws_context(format!("iam:AddRoleToInstanceProfile {role}"))?;
    }
    Ok(())
}

async fn ensure_key(kms: &aws_sdk_kms::Client, alias: &str, policy: &str) -> Result<String> {
    let aliases = kms
        .list_aliases()
        .send()
        .await
        .aws_context("kms:ListAliases")?;
    let existing = aliases
        .aliases()
        .iter()
        .find(|a| a.alias_name() == Some(alias))
        .and_then(|a| a.target_key_id().map(str::to_string));
    let key_id = match existing {
        Some(key_id) => {
            kms.put_key_policy()
                .key_id(&key_id)
                .policy_name("default")
                .policy(policy)
                .send()
                .await
                .aws_context("kms:PutKeyPolicy")?;
            key_id
        }
        None => {
            let created = kms
                .create_key()
                .description(format!(
                    "{}: encrypts the initial and final buckets",
                    alias.trim_start_matches("alias/")
                ))
                .policy(policy)
                .send()
                .await
                .aws_context("kms:CreateKey")?;
            let key_id = created
                .key_metadata()
                .context("no key metadata")?
                .key_id()
                .to_string();
            kms.create_alias()
                .alias_name(alias)
                .target_key_id(&key_id)
                .send()
                .await
                .aws_context(format!("kms:CreateAlias {alias}"))?;
            key_id
        }
    };
    kms.enable_key_rotation()
        .key_id(&key_id)
        .send()
        .await
        .aws_context("kms:EnableKeyRotation")?;
    let described = kms
        .describe_key()
        .key_id(&key_id)
        .send()
        .await
        .aws_context("kms:DescribeKey")?;
    Ok(described
        .key_metadata()
        .and_then(|m| m.arn())
        .context("the key has no ARN")?
        .to_string())
}
