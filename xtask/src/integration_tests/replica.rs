//! A provider-free replica of terraform/, generated from the real HCL, so Terraform itself can
//! plan and apply the whole root module (host included) on a machine that cannot download the
//! AWS provider: every `aws_*` resource and data source becomes a `terraform_data` whose input
//! holds the same arguments (so the same references, dependencies, counts and for_each) plus a
//! stand-in value for each attribute the configuration reads; provider requirements and
//! provider blocks are dropped; variables, validations, locals, modules, checks and outputs
//! are kept as they are. What the replica proves: the graph has no cycle, every validation
//! passes with realistic values, and every output is computed. What it cannot: anything the
//! provider or AWS would say.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use hcl::{Block, Body, Structure};

use crate::terraform::references;

/// Values for attributes that are not arguments, by `type.attribute`. `$name` stands for the
/// resource's own argument `name` (as written), so references flow through as they would.
const STAND_INS: &[(&str, &str)] = &[
    ("aws_caller_identity.account_id", r#""123456789012""#),
    ("aws_partition.partition", r#""aws""#),
    ("aws_vpc.id", r#""vpc-0123456789abcdef0""#),
    ("aws_subnets.ids", r#"["subnet-0123456789abcdef0"]"#),
    ("aws_subnet.vpc_id", r#""vpc-0123456789abcdef0""#),
    (
        "aws_ssm_parameter.insecure_value",
        r#""ami-0123456789abcdef0""#,
    ),
    (
        "aws_iam_role.arn",
        r#""arn:aws:iam::123456789012:role/${$name}""#,
    ),
    ("aws_iam_role.id", "$name"),
    (
        "aws_kms_key.arn",
        r#""arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab""#,
    ),
    (
        "aws_kms_key.key_id",
        r#""1234abcd-12ab-34cd-56ef-1234567890ab""#,
    ),
    ("aws_s3_bucket.id", "$bucket"),
    ("aws_s3_bucket.arn", r#""arn:aws:s3:::${$bucket}""#),
    ("aws_security_group.id", r#""sg-0123456789abcdef0""#),
    ("aws_instance.id", r#""i-0123456789abcdef0""#),
    ("aws_eip.id", r#""eipalloc-0123456789abcdef0""#),
    ("aws_eip.public_ip", r#""198.51.100.10""#),
    ("aws_vpc_endpoint.id", r#""vpce-0123456789abcdef0""#),
    ("aws_vpc.cidr_block", r#""172.31.0.0/16""#),
    ("aws_launch_template.id", r#""lt-0123456789abcdef0""#),
    ("aws_launch_template.latest_version", "1"),
    (
        "aws_lb.arn",
        r#""arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/${$name}/0123456789abcdef""#,
    ),
    (
        "aws_lb.dns_name",
        r#""${$name}-0123456789abcdef.elb.eu-west-1.amazonaws.com""#,
    ),
    (
        "aws_lb_target_group.arn",
        r#""arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/${$name}/0123456789abcdef""#,
    ),
    ("aws_autoscaling_group.name", r#""${$name_prefix}0001""#),
    (
        "aws_sqs_queue.id",
        r#""https://sqs.eu-west-1.amazonaws.com/123456789012/${$name}""#,
    ),
    (
        "aws_sqs_queue.arn",
        r#""arn:aws:sqs:eu-west-1:123456789012:${$name}""#,
    ),
];

/// Writes the replica of the module tree at `source` into `dest` (same layout; non-`.tf`
/// files such as templates copied as they are).
pub fn write(source: &Path, dest: &Path) -> Result<()> {
    let mut read = BTreeMap::new();
    collect_reads(source, &mut read)?;
    replicate_dir(source, dest, &read)
}

/// Which attributes of which resources the whole tree reads, by (data?, type, name).
type Reads = BTreeMap<(bool, String, String), Vec<String>>;

fn collect_reads(dir: &Path, reads: &mut Reads) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_reads(&path, reads)?;
        } else if path.extension().is_some_and(|x| x == "tf") {
            let text = std::fs::read_to_string(&path)?;
            for reference in references::find(&text) {
                let attributes = reads
                    .entry((reference.data, reference.kind, reference.name))
                    .or_default();
                if let Some(attribute) = reference.attribute
                    && !attributes.contains(&attribute)
                {
                    attributes.push(attribute);
                }
            }
        }
    }
    Ok(())
}

fn replicate_dir(source: &Path, dest: &Path, reads: &Reads) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') || name == crate::terraform::LOCAL_OVERRIDE_FILE {
            continue;
        }
        let target = dest.join(&name);
        if path.is_dir() {
            replicate_dir(&path, &target, reads)?;
        } else if name.ends_with(".tf") {
            let text = std::fs::read_to_string(&path)?;
            let body = hcl::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
            let replica = replicate(&body, reads)
                .with_context(|| format!("replicating {}", path.display()))?;
            std::fs::write(&target, replica)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

fn replicate(body: &Body, reads: &Reads) -> Result<String> {
    let mut out = String::new();
    for structure in body.iter() {
        let block = match structure {
            Structure::Attribute(attribute) => bail!("top-level attribute `{}`", attribute.key()),
            Structure::Block(block) => block,
        };
        let labels: Vec<&str> = block.labels().iter().map(|l| l.as_str()).collect();
        match (block.identifier(), labels.as_slice()) {
            ("provider", _) => {}
            ("terraform", _) => {
                // Terraform's version and the backend stay; the provider requirements go.
                let kept: Vec<Structure> = block
                    .body()
                    .iter()
                    .filter(|s| match s {
                        Structure::Attribute(a) => a.key() == "required_version",
                        Structure::Block(b) => b.identifier() == "backend",
                    })
                    .cloned()
                    .collect();
                let terraform = Block::builder("terraform").add_structures(kept).build();
                out.push_str(&format_block(terraform)?);
            }
            (kind @ ("resource" | "data"), [resource_type, name])
                if resource_type.starts_with("aws_") =>
            {
                let data = kind == "data";
                let read = reads
                    .get(&(data, resource_type.to_string(), name.to_string()))
                    .cloned()
                    .unwrap_or_default();
                out.push_str(&stand_in(block, data, resource_type, name, &read)?);
            }
            ("module", _) => {
                let kept: Vec<Structure> = block
                    .body()
                    .iter()
                    .filter(|s| !matches!(s, Structure::Attribute(a) if a.key() == "providers"))
                    .cloned()
                    .collect();
                let module = Block::builder("module")
                    .add_labels(labels.iter().copied())
                    .add_structures(kept)
                    .build();
                out.push_str(&format_block(module)?);
            }
            _ => out.push_str(&format_block(block.clone())?),
        }
        out.push('\n');
    }
    Ok(rewrite_references(&out))
}

fn format_block(block: Block) -> Result<String> {
    Ok(hcl::format::to_string(
        &Body::builder().add_block(block).build(),
    )?)
}

/// The replacement of one resource or data source.
fn stand_in(block: &Block, data: bool, kind: &str, name: &str, read: &[String]) -> Result<String> {
    let body = block.body();
    let mut text = format!(
        "resource \"terraform_data\" \"{}\" {{\n",
        replica_name(data, kind, name)
    );
    for meta in ["count", "for_each", "depends_on"] {
        if let Some(attribute) = body.attributes().find(|a| a.key() == meta) {
            writeln!(text, "  {meta} = {}", attribute.expr())?;
        }
    }
    text.push_str("  input = {\n    arguments = ");
    text.push_str(&object_of(body, 4, true)?);
    text.push('\n');
    for attribute in read {
        let value = match body.attributes().find(|a| a.key() == attribute.as_str()) {
            Some(argument) => argument.expr().to_string(),
            None => stand_in_value(body, kind, attribute)?,
        };
        writeln!(text, "    {attribute} = {value}")?;
    }
    text.push_str("  }\n");
    // Only the lifecycle settings that mean something for any resource.
    if let Some(lifecycle) = body.blocks().find(|b| b.identifier() == "lifecycle") {
        let kept: Vec<_> = lifecycle
            .body()
            .attributes()
            .filter(|a| matches!(a.key(), "create_before_destroy" | "prevent_destroy"))
            .collect();
        if !kept.is_empty() {
            text.push_str("  lifecycle {\n");
            for attribute in kept {
                writeln!(text, "    {} = {}", attribute.key(), attribute.expr())?;
            }
            text.push_str("  }\n");
        }
    }
    text.push_str("}\n");
    Ok(text)
}

fn stand_in_value(body: &Body, kind: &str, attribute: &str) -> Result<String> {
    let key = format!("{kind}.{attribute}");
    let Some((_, template)) = STAND_INS.iter().find(|(k, _)| *k == key) else {
        bail!("the configuration reads `{key}`: add a stand-in value for it to STAND_INS");
    };
    let mut value = template.to_string();
    while let Some(at) = value.find('$') {
        let rest = &value[at + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let argument = &rest[..end];
        if argument.is_empty() {
            // A template's own `${`: skip over it.
            value.replace_range(at..at + 1, "\u{0}");
            continue;
        }
        let expr = body
            .attributes()
            .find(|a| a.key() == argument)
            .with_context(|| format!("the stand-in for {key} needs the argument `{argument}`"))?
            .expr()
            .to_string();
        value.replace_range(at..at + 1 + end, &format!("({expr})"));
    }
    Ok(value.replace('\u{0}', "$"))
}

/// A body as an HCL object: attributes as they are, blocks as lists of objects, dynamic
/// blocks as `for` expressions over their `for_each`.
fn object_of(body: &Body, indent: usize, top: bool) -> Result<String> {
    let pad = " ".repeat(indent + 2);
    let mut text = String::from("{\n");
    for attribute in body.attributes() {
        if top
            && matches!(
                attribute.key(),
                "count" | "for_each" | "depends_on" | "provider"
            )
        {
            continue;
        }
        writeln!(text, "{pad}{} = {}", attribute.key(), attribute.expr())?;
    }
    let mut blocks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for block in body.blocks() {
        if top
            && matches!(
                block.identifier(),
                "lifecycle" | "provisioner" | "connection"
            )
        {
            continue;
        }
        if block.identifier() == "dynamic" {
            let label = block.labels()[0].as_str().to_string();
            let iterator = block
                .body()
                .attributes()
                .find(|a| a.key() == "iterator")
                .map(|a| a.expr().to_string())
                .unwrap_or_else(|| label.clone());
            let for_each = block
                .body()
                .attributes()
                .find(|a| a.key() == "for_each")
                .context("a dynamic block without for_each")?
                .expr()
                .to_string();
            let content = block
                .body()
                .blocks()
                .find(|b| b.identifier() == "content")
                .context("a dynamic block without content")?;
            blocks.entry(label).or_default().push(format!(
                "[for {iterator} in [for k, v in {for_each} : {{ key = k, value = v }}] : {}]",
                object_of(content.body(), indent + 2, false)?
            ));
        } else {
            blocks
                .entry(block.identifier().to_string())
                .or_default()
                .push(format!("[{}]", object_of(block.body(), indent + 2, false)?));
        }
    }
    for (name, parts) in blocks {
        writeln!(text, "{pad}{name} = concat({})", parts.join(", "))?;
    }
    text.push_str(&" ".repeat(indent));
    text.push('}');
    Ok(text)
}

fn replica_name(data: bool, kind: &str, name: &str) -> String {
    format!("{}{kind}__{name}", if data { "data__" } else { "" })
}

/// `aws_x.name[i].attr` -> `terraform_data.aws_x__name[i].output.attr`, and a bare
/// `aws_x.name` (depends_on) -> `terraform_data.aws_x__name`.
fn rewrite_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for reference in references::find(text) {
        out.push_str(&text[last..reference.start]);
        write!(
            out,
            "terraform_data.{}{}",
            replica_name(reference.data, &reference.kind, &reference.name),
            reference.index.as_deref().unwrap_or("")
        )
        .unwrap();
        if let Some(attribute) = &reference.attribute {
            write!(out, ".output.{attribute}").unwrap();
        }
        last = reference.end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::context::workspace_root;
    use crate::integration_tests::{temp_dir, terraform_in, terraform_output_in};
    use crate::outputs::REQUIRED_OUTPUTS;

    const SHA: &str = "ab12000000000000000000000000000000000000000000000000000000000000";

    /// A fresh replica with `vars`, keeping its state in its directory.
    fn prepared(label: &str, vars: &Value) -> std::path::PathBuf {
        let dir = temp_dir(label);
        write(&workspace_root().join("terraform"), &dir).unwrap();
        // The replica keeps the S3 backend; these runs keep their state in the directory.
        std::fs::write(
            dir.join("backend_override.tf"),
            "terraform {\n  backend \"local\" {}\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("test.auto.tfvars.json"),
            serde_json::to_string_pretty(vars).unwrap(),
        )
        .unwrap();
        dir
    }

    /// A fresh replica, applied with `vars` on local state; returns `terraform output -json`
    /// and `terraform state list`.
    fn apply(label: &str, vars: Value) -> (Value, Vec<String>) {
        let dir = prepared(label, &vars);
        let run = terraform_in(&dir, "it applies the provider-free replica");
        run(&["init", "-input=false", "-no-color"]);
        run(&["apply", "-auto-approve", "-input=false", "-no-color"]);
        let outputs: Value = serde_json::from_str(&run(&["output", "-json"])).unwrap();
        let state = run(&["state", "list"])
            .lines()
            .map(str::to_string)
            .collect();
        (outputs, state)
    }

    fn base_vars() -> Value {
        json!({
            "environment": "prod",
            "region": "eu-west-1",
            "name_prefix": "acme-files",
            "allowed_cidrs": ["203.0.113.0/24"],
            "admin_principal_arns": ["arn:aws:iam::123456789012:role/platform-terraform"],
            "client_cidrs": ["192.0.2.0/24"],
            "service_artifact": {
                "bucket": "acme-files-artifacts-123456789012-eu-west-1",
                "key": format!("service/{SHA}/filepipe-service"),
                "sha256": SHA,
            },
        })
    }

    fn output(outputs: &Value, name: &str) -> Value {
        outputs[name]["value"].clone()
    }

    fn network_statement(outputs: &Value) -> Value {
        let policy: Value = serde_json::from_str(
            output(outputs, "initial_bucket_policy_json")
                .as_str()
                .unwrap(),
        )
        .unwrap();
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "DenyObjectAccessOutsideAllowedNetworks")
            .cloned()
            .expect("a network statement")
    }

    #[test]
    fn the_root_module_with_its_host_applies_and_the_elastic_ip_joins_the_bucket_policy() {
        let (outputs, state) = apply("replica-host", base_vars());
        for name in REQUIRED_OUTPUTS.iter().chain(&[
            "service_url",
            "instance_id",
            "public_ip",
            "access_log_bucket_name",
        ]) {
            assert!(
                !output(&outputs, name).is_null(),
                "output `{name}` is not computed: {outputs:#}"
            );
        }
        assert_eq!(
            output(&outputs, "service_url"),
            "https://198.51.100.10:8080"
        );
        // The certificate names the Elastic IP, which the template gets before the instance.
        assert!(
            output(&outputs, "user_data")
                .as_str()
                .unwrap()
                .contains("readonly TLS_IP='198.51.100.10'")
        );
        // The host's address is admitted without anyone editing allowed_cidrs.
        assert_eq!(
            network_statement(&outputs)["Condition"]["NotIpAddress"]["aws:SourceIp"],
            json!(["203.0.113.0/24", "198.51.100.10/32"])
        );
        for resource in [
            "module.host[0].terraform_data.aws_instance__service[0]",
            "module.host[0].terraform_data.aws_eip__service[0]",
            "module.host[0].terraform_data.aws_eip_association__service[0]",
            "module.host[0].terraform_data.aws_security_group__service",
            "module.host[0].terraform_data.aws_vpc_security_group_ingress_rule__service_port[\"192.0.2.0/24\"]",
            "module.host[0].terraform_data.aws_vpc_security_group_egress_rule__https",
            "module.initial_bucket.terraform_data.aws_s3_bucket_logging__this[0]",
            "module.access_logs.terraform_data.aws_s3_bucket__this",
        ] {
            assert!(
                state.iter().any(|s| s == resource),
                "{resource} not in {state:#?}"
            );
        }
        assert!(
            !state.iter().any(|s| s.contains("aws_vpc_endpoint")),
            "no endpoint unless asked"
        );
        assert!(
            !state
                .iter()
                .any(|s| s.contains("aws_lb") || s.contains("aws_autoscaling_group")),
            "one instance has no load balancer"
        );
        assert!(output(&outputs, "tls_key_parameter").is_null());
        assert!(output(&outputs, "queue_url").as_str().is_some());

        let user_data = output(&outputs, "user_data");
        let user_data = user_data.as_str().unwrap();
        assert!(
            user_data.contains(&format!(
                "BINARY_S3_URI='s3://acme-files-artifacts-123456789012-eu-west-1/service/{SHA}/filepipe-service'"
            )),
            "{user_data}"
        );
        assert!(user_data.contains(&format!("BINARY_SHA256='{SHA}'")));
        assert!(user_data.contains("BINARY_URL=''"));
    }

    #[test]
    fn a_gateway_endpoint_replaces_the_elastic_ip_and_no_host_leaves_no_service_url() {
        let mut vars = base_vars();
        vars["s3_gateway_endpoint_route_table_ids"] = json!(["rtb-0123456789abcdef0"]);
        let (outputs, state) = apply("replica-endpoint", vars);
        let network = network_statement(&outputs);
        assert_eq!(
            network["Condition"]["StringNotEquals"]["aws:SourceVpce"],
            json!(["vpce-0123456789abcdef0"])
        );
        assert_eq!(
            network["Condition"]["NotIpAddress"]["aws:SourceIp"],
            json!(["203.0.113.0/24"]),
            "the endpoint, not the Elastic IP"
        );
        assert!(state.iter().any(|s| s.contains("aws_vpc_endpoint__s3[0]")));

        let mut vars = base_vars();
        vars["enable_host"] = json!(false);
        vars["client_cidrs"] = json!([]);
        let (outputs, state) = apply("replica-no-host", vars);
        assert!(output(&outputs, "service_url").is_null());
        assert!(
            !state.iter().any(|s| s.starts_with("module.host")),
            "{state:#?}"
        );
        assert!(!output(&outputs, "user_data").is_null());
    }

    /// `apply` of a replica that Terraform must refuse; returns what it said.
    fn refused(label: &str, vars: Value) -> String {
        let dir = prepared(label, &vars);
        let run = terraform_output_in(&dir, "it plans the provider-free replica");
        assert!(run(&["init", "-input=false", "-no-color"]).status.success());
        let out = run(&["plan", "-input=false", "-no-color"]);
        assert!(!out.status.success(), "the plan was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[test]
    fn a_fleet_runs_behind_a_load_balancer_and_reaches_s3_through_its_endpoint() {
        let mut vars = base_vars();
        vars["instance_count"] = json!(3);
        vars["instance_count_max"] = json!(6);
        let said = refused("replica-fleet-no-endpoint", vars.clone());
        assert!(
            said.contains("instance_count > 1 needs s3_gateway_endpoint_route_table_ids"),
            "{said}"
        );

        vars["s3_gateway_endpoint_route_table_ids"] = json!(["rtb-0123456789abcdef0"]);
        let (outputs, state) = apply("replica-fleet", vars);
        for resource in [
            "module.host[0].terraform_data.aws_launch_template__service[0]",
            "module.host[0].terraform_data.aws_autoscaling_group__service[0]",
            "module.host[0].terraform_data.aws_lb__service[0]",
            "module.host[0].terraform_data.aws_lb_target_group__service[0]",
            "module.host[0].terraform_data.aws_lb_listener__service[0]",
            "module.host[0].terraform_data.aws_vpc_security_group_ingress_rule__health_checks[0]",
            "module.host[0].terraform_data.aws_vpc_endpoint__s3[0]",
            "module.queue.terraform_data.aws_s3_bucket_notification__raw_files",
        ] {
            assert!(
                state.iter().any(|s| s == resource),
                "{resource} not in {state:#?}"
            );
        }
        assert!(
            !state
                .iter()
                .any(|s| s.contains("aws_instance") || s.contains("aws_eip")),
            "a fleet has no lone instance or Elastic IP: {state:#?}"
        );
        assert_eq!(
            output(&outputs, "service_url"),
            "https://acme-files-service-0123456789abcdef.elb.eu-west-1.amazonaws.com:8080"
        );
        assert!(output(&outputs, "instance_id").is_null());
        assert_eq!(output(&outputs, "tls_key_parameter"), "/acme-files/tls-key");
        let network = network_statement(&outputs);
        assert_eq!(
            network["Condition"]["StringNotEquals"]["aws:SourceVpce"],
            json!(["vpce-0123456789abcdef0"])
        );
        assert_eq!(
            network["Condition"]["NotIpAddress"]["aws:SourceIp"],
            json!(["203.0.113.0/24"]),
            "no instance address"
        );
        let user_data = output(&outputs, "user_data");
        let user_data = user_data.as_str().unwrap();
        assert!(user_data.contains("TLS_KEY_PARAMETER=/acme-files/tls-key"));
        assert!(user_data.contains("readonly TLS_IP=''"));
        assert!(
            user_data.contains(
                "QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/acme-files-work"
            ),
            "{user_data}"
        );
    }
}
