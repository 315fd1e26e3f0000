//! Static checks of terraform/: the output contract, the variables the xtask passes, the IAM
//! policy, the bucket wiring the applied stack cannot show (its protections are asserted on
//! the applied stack), the checkov skip list, and the user-data template
//! rendered by Terraform itself and linted by bash and shellcheck.
//!
//! Longer than 400 lines: the checks read one tree and share its parsed HCL and rendered template.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use hcl::{Block, Body, Expression};

use super::{require_tool, temp_dir, terraform_in};
use xtask::context::{Context, workspace_root};
use xtask::environment::Environment;
use xtask::outputs::REQUIRED_OUTPUTS;
use xtask::terraform::xtask_variables;

pub(super) fn terraform_dir() -> PathBuf {
    workspace_root().join("terraform")
}

pub(super) fn parse(path: &Path) -> Body {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hcl::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// All `.tf` files of a module, as one body.
fn parse_module(dir: &Path) -> Body {
    let mut structures = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "tf") && !p.ends_with("xtask_local_override.tf")
        })
        .collect();
    files.sort();
    for file in files {
        structures.extend(parse(&file).into_inner());
    }
    Body::from(structures)
}

pub(super) fn blocks<'a>(
    body: &'a Body,
    identifier: &'a str,
) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == identifier)
}

pub(super) fn labels(block: &Block) -> Vec<&str> {
    block.labels().iter().map(|l| l.as_str()).collect()
}

fn block_labels(body: &Body, identifier: &str) -> BTreeSet<String> {
    blocks(body, identifier)
        .map(|b| labels(b)[0].to_string())
        .collect()
}

fn resource<'a>(body: &'a Body, kind: &str, name: &str) -> &'a Block {
    blocks(body, "resource")
        .find(|b| labels(b) == [kind, name])
        .unwrap_or_else(|| panic!("resource {kind}.{name} is missing"))
}

fn attr<'a>(body: &'a Body, key: &str) -> &'a Expression {
    body.attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
        .unwrap_or_else(|| panic!("attribute `{key}` is missing"))
}

fn text(expr: &Expression) -> String {
    expr.to_string()
}

fn strings(expr: &Expression) -> Vec<String> {
    match expr {
        Expression::Array(items) => items
            .iter()
            .map(|e| match e {
                Expression::String(s) => s.clone(),
                other => text(other),
            })
            .collect(),
        Expression::String(s) => vec![s.clone()],
        other => vec![text(other)],
    }
}

#[test]
fn every_contract_output_is_defined_by_the_root_module() {
    let outputs = block_labels(&parse_module(&terraform_dir()), "output");
    for name in REQUIRED_OUTPUTS {
        assert!(outputs.contains(*name), "output `{name}` is missing");
    }
}

#[test]
fn every_variable_the_xtask_passes_is_declared() {
    let declared = block_labels(&parse_module(&terraform_dir()), "variable");
    let root = workspace_root();
    let artifact = xtask::artifact::Artifact {
        bucket: "abc-artifacts".into(),
        key: format!("service/{}/filepipe-service", "0".repeat(64)),
        sha256: "0".repeat(64),
        kms_key_arn: None,
    };
    let local = Context::for_test(
        Environment::local(
            aws_clients::AwsSettings::emulator("https://127.0.0.1:1", "eu-west-1", None),
            "abc",
        ),
        &temp_dir("vars"),
    );
    let example = Context::for_test(
        Environment::load(&root, "example").unwrap(),
        &temp_dir("vars"),
    );
    for cx in [&local, &example] {
        let passed = xtask_variables(cx, Some(&artifact));
        assert!(passed.contains_key("service_artifact"));
        for name in passed.keys() {
            assert!(
                declared.contains(*name),
                "the xtask passes `{name}`, terraform/variables.tf does not declare it"
            );
        }
    }
    // Every value in the committed example environment is a declared variable too.
    let tfvars = parse(&root.join("terraform/environments/example.tfvars"));
    for attribute in tfvars.attributes() {
        assert!(
            declared.contains(attribute.key()),
            "example.tfvars sets undeclared `{}`",
            attribute.key()
        );
    }
}

/// The root and every directory under modules/.
pub(super) fn module_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![terraform_dir()];
    let mut modules: Vec<PathBuf> = std::fs::read_dir(terraform_dir().join("modules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    modules.sort();
    dirs.extend(modules);
    dirs
}

#[test]
fn every_module_has_the_standard_files_and_every_variable_is_typed_and_described() {
    let dirs = module_dirs();
    assert!(dirs.len() >= 7, "{dirs:?}");
    for dir in &dirs {
        for file in ["main.tf", "variables.tf", "outputs.tf", "versions.tf"] {
            assert!(dir.join(file).is_file(), "{} has no {file}", dir.display());
        }
        if dir != &terraform_dir() {
            assert!(
                dir.join("README.md").is_file(),
                "{} has no README.md",
                dir.display()
            );
        }
        let dir = dir.display();
        let body = parse(&PathBuf::from(format!("{dir}/variables.tf")));
        for variable in blocks(&body, "variable") {
            let name = labels(variable)[0];
            let keys: BTreeSet<&str> = variable.body().attributes().map(|a| a.key()).collect();
            assert!(keys.contains("type"), "{dir}: variable {name} has no type");
            assert!(
                keys.contains("description"),
                "{dir}: variable {name} has no description"
            );
        }
    }
}

fn policy_documents() -> Body {
    parse(&terraform_dir().join("modules/policy-documents/main.tf"))
}

/// The objects with a `Sid` inside an expression, by Sid, with their fields.
fn statement_objects(expr: &Expression) -> BTreeMap<String, BTreeMap<String, Expression>> {
    let mut found = BTreeMap::new();
    walk_statements(expr, &mut found);
    found
}

fn walk_statements(expr: &Expression, found: &mut BTreeMap<String, BTreeMap<String, Expression>>) {
    match expr {
        Expression::Object(object) => {
            let fields: BTreeMap<String, Expression> = object
                .iter()
                .map(|(k, v)| (k.to_string().trim_matches('"').to_string(), v.clone()))
                .collect();
            if let Some(Expression::String(sid)) = fields.get("Sid") {
                found.insert(sid.clone(), fields.clone());
            }
            for value in object.values() {
                walk_statements(value, found);
            }
        }
        Expression::Array(items) => items.iter().for_each(|e| walk_statements(e, found)),
        Expression::FuncCall(call) => call.args.iter().for_each(|e| walk_statements(e, found)),
        Expression::ForExpr(for_expr) => {
            walk_statements(&for_expr.collection_expr, found);
            walk_statements(&for_expr.value_expr, found);
        }
        Expression::Parenthesis(inner) => walk_statements(inner, found),
        _ => {}
    }
}

fn module_call<'a>(root: &'a Body, name: &str) -> &'a Body {
    blocks(root, "module")
        .find(|m| labels(m) == [name])
        .map(Block::body)
        .unwrap_or_else(|| panic!("module {name} is missing"))
}

/// IAM actions for the AWS calls in `service/src`, read from the code itself, so a new call
/// without a grant fails here rather than on a deployed instance. SSE-KMS makes S3 use the
/// key on the caller's behalf: writes need kms:GenerateDataKey (multipart uploads also
/// kms:Decrypt), reads kms:Decrypt. A read with a version id is s3:GetObjectVersion.
/// <https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html>
fn actions_the_service_calls() -> BTreeSet<String> {
    const CALLS: [(&str, &[&str]); 21] = [
        // The work queue (queue.rs); the scan's own messages are sent like S3's.
        ("receive_message", &["sqs:ReceiveMessage"]),
        ("delete_message", &["sqs:DeleteMessage"]),
        (
            "change_message_visibility",
            &["sqs:ChangeMessageVisibility"],
        ),
        ("get_queue_attributes", &["sqs:GetQueueAttributes"]),
        ("send_message", &["sqs:SendMessage"]),
        ("get_object", &["s3:GetObject", "kms:Decrypt"]),
        ("head_object", &["s3:GetObject"]),
        ("put_object", &["s3:PutObject", "kms:GenerateDataKey"]),
        (
            "copy_object",
            &[
                "s3:GetObject",
                "s3:PutObject",
                "kms:Decrypt",
                "kms:GenerateDataKey",
            ],
        ),
        ("delete_object", &["s3:DeleteObject"]),
        ("list_objects_v2", &["s3:ListBucket"]),
        ("head_bucket", &["s3:ListBucket"]),
        ("list_multipart_uploads", &["s3:ListBucketMultipartUploads"]),
        (
            "create_multipart_upload",
            &["s3:PutObject", "kms:GenerateDataKey", "kms:Decrypt"],
        ),
        ("upload_part", &["s3:PutObject"]),
        ("complete_multipart_upload", &["s3:PutObject"]),
        ("abort_multipart_upload", &["s3:AbortMultipartUpload"]),
        ("describe_key", &["kms:DescribeKey"]),
        // The Encryption SDK: its keyring calls KMS Decrypt, or GenerateDataKey to encrypt.
        ("decrypt", &["kms:Decrypt"]),
        ("encrypt", &["kms:GenerateDataKey"]),
        ("create_aws_kms_keyring", &[]),
    ];
    let mut sources = String::new();
    let mut dirs = vec![workspace_root().join("service/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut actions = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (call, granted) in CALLS {
        for (at, _) in sources.match_indices(&format!(".{call}()")) {
            seen.insert(call);
            actions.extend(granted.iter().map(|a| a.to_string()));
            let chain = &sources[at..];
            let chain = &chain[..chain.find(".send()").unwrap_or(chain.len())];
            if chain.contains(".version_id(") || chain.contains("versionId=") {
                actions.insert("s3:GetObjectVersion".to_string());
            }
        }
    }
    assert!(seen.len() >= 12, "the scan found only {seen:?}");
    actions
}

#[test]
fn the_action_map_sees_versioned_reads() {
    let actions = actions_the_service_calls();
    assert!(actions.contains("s3:GetObjectVersion"), "{actions:?}");
    assert!(actions.contains("kms:DescribeKey"), "{actions:?}");
}

#[test]
fn iam_policy_grants_exactly_the_pipeline_actions_and_no_wildcard_resource() {
    let documents = policy_documents();
    let mut statements = statement_objects(local_expr(&documents, "service_role_policy"));
    assert!(text(local_expr(&documents, "service_role_policy")).contains("local.queue_statements"));
    statements.extend(statement_objects(local_expr(
        &documents,
        "queue_statements",
    )));
    assert_eq!(
        statements.keys().collect::<Vec<_>>(),
        [
            "ConsumeWorkQueue",
            "ListPipelineBuckets",
            "ReadWritePipelineObjects",
            "UsePipelineKey"
        ]
    );
    let mut actions = BTreeSet::new();
    for (sid, statement) in &statements {
        assert_eq!(
            statement.get("Effect"),
            Some(&Expression::String("Allow".into())),
            "{sid}"
        );
        assert!(
            !statement.contains_key("NotResource") && !statement.contains_key("NotAction"),
            "NotResource/NotAction widen {sid}"
        );
        actions.extend(strings(&statement["Action"]));
        let resources = text(&statement["Resource"]);
        for wildcard in ["\"*\"", ":*\"", "::*"] {
            assert!(
                !resources.contains(wildcard),
                "wildcard resource in {sid}: {resources}"
            );
        }
    }
    let expected = actions_the_service_calls();
    assert_eq!(actions, expected);
    assert_eq!(
        text(&statements["ListPipelineBuckets"]["Resource"]),
        "values(var.bucket_arns)"
    );
    assert_eq!(
        strings(&statements["UsePipelineKey"]["Resource"]),
        ["var.kms_key_arn"]
    );
    assert_eq!(
        text(&statements["ConsumeWorkQueue"]["Resource"]),
        "local.work_queue_arn"
    );

    let trust = statement_objects(local_expr(&documents, "assume_role_policy"));
    assert!(text(&trust["Ec2AssumeRole"]["Principal"]).contains("\"ec2.amazonaws.com\""));
    let iam = parse(&terraform_dir().join("modules/iam/main.tf"));
    assert_eq!(
        text(attr(
            resource(&iam, "aws_iam_role_policy", "service").body(),
            "policy"
        )),
        "var.policy_json"
    );
    resource(&iam, "aws_iam_instance_profile", "service");
    let root = parse(&terraform_dir().join("main.tf"));
    assert_eq!(
        text(attr(module_call(&root, "iam"), "policy_json")),
        "module.access_policies.service_role_policy_json"
    );
}

/// What the applied stack cannot show. Each bucket's protections (public access blocks,
/// ownership, versioning, SSE-KMS with the stack key and a bucket key, lifecycle) are asserted
/// on the applied stack, as S3 itself reports them (`orchestration.rs`,
/// `the_applied_buckets_are_private_versioned_and_encrypted_with_the_stack_key`), which is
/// more than `terraform show -json` would say. Left here: that there are exactly two data
/// buckets, that deleting a non-empty one is the caller's choice, and the ordering that keeps
/// a bucket policy from ever being put before its public access block.
#[test]
fn two_data_buckets_whose_policy_waits_for_the_public_access_block() {
    let root = parse_module(&terraform_dir());
    let bucket_modules = blocks(&root, "module")
        .filter(|m| text(attr(m.body(), "source")) == "\"./modules/s3\"")
        .count();
    assert_eq!(bucket_modules, 2, "initial and final bucket");
    let s3 = parse(&terraform_dir().join("modules/s3/main.tf"));
    let bucket = resource(&s3, "aws_s3_bucket", "this").body();
    assert_eq!(text(attr(bucket, "force_destroy")), "var.force_destroy");
    let policy = resource(&s3, "aws_s3_bucket_policy", "this").body();
    assert!(
        text(attr(policy, "depends_on")).contains("aws_s3_bucket_public_access_block.this"),
        "the policy waits for the public access block"
    );
}

#[test]
fn bucket_policy_has_every_protective_statement() {
    let documents = policy_documents();
    let statements = statement_objects(local_expr(&documents, "bucket_policies"));
    let expect = [
        ("DenyInsecureTransport", "aws:SecureTransport"),
        ("DenyOutdatedTls", "s3:TlsVersion"),
        (
            "DenyIncorrectEncryptionHeader",
            "s3:x-amz-server-side-encryption",
        ),
        (
            "DenyIncorrectKmsKey",
            "s3:x-amz-server-side-encryption-aws-kms-key-id",
        ),
        (
            "DenyCustomerProvidedKeys",
            "s3:x-amz-server-side-encryption-customer-algorithm",
        ),
        (
            "DenyKmsWithoutKeyId",
            "s3:x-amz-server-side-encryption-aws-kms-key-id",
        ),
        (
            "DenyObjectAccessOutsideAllowedNetworks",
            "local.network_condition",
        ),
    ];
    for (sid, condition_key) in expect {
        let statement = statements
            .get(sid)
            .unwrap_or_else(|| panic!("statement {sid} is missing"));
        assert_eq!(
            statement.get("Effect"),
            Some(&Expression::String("Deny".into())),
            "{sid}"
        );
        let condition = text(&statement["Condition"]);
        assert!(
            condition.contains(condition_key),
            "{sid} conditions on {condition_key}: {condition}"
        );
    }
    // The network statement covers object actions only (the cloudposse #269 lockout) and is
    // left out when no network is given.
    let network = text(&statements["DenyObjectAccessOutsideAllowedNetworks"]["Action"]);
    assert!(
        network.contains("s3:GetObject") && !network.contains("s3:*"),
        "{network}"
    );
    let policies = text(local_expr(&documents, "bucket_policies"));
    assert!(
        policies.contains("if local.network_restricted"),
        "{policies}"
    );
    // Each bucket module gets its own document.
    let root = parse(&terraform_dir().join("main.tf"));
    for purpose in ["initial", "final"] {
        assert_eq!(
            text(attr(
                module_call(&root, &format!("{purpose}_bucket")),
                "policy_json"
            )),
            format!("module.access_policies.bucket_policy_json[\"{purpose}\"]")
        );
    }
}

fn local_expr<'a>(body: &'a Body, name: &str) -> &'a Expression {
    blocks(body, "locals")
        .flat_map(|b| b.body().attributes())
        .find(|a| a.key() == name)
        .map(|a| a.expr())
        .unwrap_or_else(|| panic!("local.{name} is missing"))
}

#[test]
fn kms_key_rotates_and_keeps_the_lockout_check() {
    let kms = parse(&terraform_dir().join("modules/kms/main.tf"));
    let key = resource(&kms, "aws_kms_key", "this").body();
    assert_eq!(attr(key, "enable_key_rotation"), &Expression::Bool(true));
    assert_eq!(
        attr(key, "bypass_policy_lockout_safety_check"),
        &Expression::Bool(false)
    );
    assert_eq!(
        text(attr(key, "deletion_window_in_days")),
        "var.deletion_window_days"
    );
    assert_eq!(text(attr(key, "policy")), "var.policy_json");
    let documents = policy_documents();
    let policy = text(local_expr(&documents, "key_policy"));
    let statements = statement_objects(local_expr(&documents, "key_policy"));
    assert_eq!(
        statements.keys().collect::<Vec<_>>(),
        [
            "AccountRootFullAccess",
            "ServiceRoleDecryptAuthTokenThroughSsm",
            "ServiceRoleDecryptEnvelopes",
            "ServiceRoleDescribeKey",
            "ServiceRoleUseThroughS3"
        ]
    );
    assert!(
        !policy.contains("aws:SourceIp"),
        "S3 calls KMS from AWS's network"
    );
    let root = parse(&terraform_dir().join("main.tf"));
    assert_eq!(
        text(attr(module_call(&root, "kms"), "policy_json")),
        "module.key_policies.key_policy_json"
    );
    let alias = resource(&kms, "aws_kms_alias", "this").body();
    assert_eq!(
        text(attr(alias, "name")),
        "\"alias/${var.name_prefix}-data\""
    );
}

#[test]
fn every_skipped_checkov_check_has_a_reason() {
    let config = std::fs::read_to_string(terraform_dir().join(".checkov.yaml")).unwrap();
    let skips: Vec<&str> = config
        .lines()
        .skip_while(|l| !l.starts_with("skip-check:"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- "))
        .collect();
    assert!(!skips.is_empty(), "skip-check list not found");
    for line in skips {
        let (id, reason) = line.split_once('#').unwrap_or((line, ""));
        assert!(id.contains("CKV"), "{line}");
        assert!(
            reason.trim().len() > 20,
            "skipped check without a reason: {line}"
        );
    }
    // Skips on one resource: `#checkov:skip=<id>:<reason>`.
    let mut inline = 0;
    for dir in module_dirs() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "tf") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let Some(skip) = line.trim().strip_prefix("#checkov:skip=") else {
                    continue;
                };
                inline += 1;
                let (id, reason) = skip.split_once(':').unwrap_or((skip, ""));
                assert!(id.starts_with("CKV"), "{}: {line}", path.display());
                assert!(
                    reason.trim().len() > 20,
                    "{}: skipped check without a reason: {line}",
                    path.display()
                );
            }
        }
    }
    assert!(inline >= 2, "the log bucket's two skips");
}

/// The keys main.tf passes to templatefile() for the user-data, so the rendering below uses
/// exactly those.
fn user_data_template_keys() -> Vec<String> {
    let main = parse(&terraform_dir().join("main.tf"));
    let Expression::FuncCall(call) = local_expr(&main, "user_data") else {
        panic!("local.user_data is not a templatefile() call");
    };
    assert_eq!(call.name.to_string(), "templatefile");
    let Expression::Object(vars) = &call.args[1] else {
        panic!("templatefile() variables are not an object");
    };
    vars.keys().map(|k| k.to_string()).collect()
}

#[test]
fn user_data_renders_through_terraform_to_clean_bash() {
    let shellcheck = require_tool("shellcheck", "it lints the rendered user-data");
    let samples = BTreeMap::from([
        ("region", "eu-west-1"),
        ("initial_bucket", "acme-initial-111122223333"),
        ("final_bucket", "acme-final-111122223333"),
        (
            "kms_key_arn",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ),
        ("listen_address", "0.0.0.0:8080"),
        ("processor", "jsonl"),
        (
            "queue_url",
            "https://sqs.eu-west-1.amazonaws.com/111122223333/acme-work",
        ),
        (
            "service_binary_s3_uri",
            "s3://acme-artifacts-111122223333-eu-west-1/service/ab12000000000000000000000000000000000000000000000000000000000000/filepipe-service",
        ),
        ("service_binary_url", ""),
        ("token_parameter", "/acme/auth-token"),
        ("certificate_parameter", "/acme/tls-certificate"),
        ("rotation_parameter", "/acme/tls-rotation"),
        ("tls_key_parameter", ""),
        ("tls_ip", "198.51.100.10"),
        (
            "service_binary_sha256",
            "ab12000000000000000000000000000000000000000000000000000000000000",
        ),
    ]);
    let keys = user_data_template_keys();
    let vars: Vec<String> = keys
        .iter()
        .map(|k| {
            let value = samples
                .get(k.as_str())
                .unwrap_or_else(|| panic!("add a sample value for `{k}`"));
            format!("    {k} = \"{value}\"")
        })
        .collect();
    let dir = temp_dir("user-data");
    let template = terraform_dir().join("templates/user-data.sh.tpl");
    std::fs::write(
        dir.join("main.tf"),
        format!(
            "output \"user_data\" {{\n  value = templatefile(\"{}\", {{\n{}\n  }})\n}}\n",
            template.display(),
            vars.join("\n")
        ),
    )
    .unwrap();
    let run = terraform_in(
        &dir,
        "it renders the user-data template with templatefile()",
    );
    run(&["init", "-input=false", "-no-color"]);
    run(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let script = run(&["output", "-raw", "user_data"]);
    let script_path = dir.join("user-data.sh");
    std::fs::write(&script_path, &script).unwrap();

    let bash = Command::new("bash")
        .arg("-n")
        .arg(&script_path)
        .output()
        .unwrap();
    assert!(
        bash.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&bash.stderr)
    );
    let lint = Command::new(&shellcheck)
        .arg(&script_path)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "shellcheck found problems:\n{}",
        String::from_utf8_lossy(&lint.stdout)
    );

    // The refresh script the user-data writes for the timer, linted on its own.
    let refresh = script
        .split("<<'REFRESH'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nREFRESH\n").next())
        .expect("the user-data writes the refresh script");
    let refresh_path = dir.join("filepipe-refresh");
    std::fs::write(&refresh_path, refresh).unwrap();
    for (tool, args) in [("bash", vec!["-n"]), (shellcheck.to_str().unwrap(), vec![])] {
        let out = Command::new(tool)
            .args(args)
            .arg(&refresh_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} on the refresh script:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(refresh.contains("--with-decryption") && refresh.contains("gen-cert"));

    assert!(script.starts_with("#!/bin/bash\n"));
    for expected in [
        "INITIAL_BUCKET=acme-initial-111122223333",
        "FINAL_BUCKET=acme-final-111122223333",
        "KMS_KEY_ARN=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "AWS_REGION=eu-west-1",
        "LISTEN_ADDR=0.0.0.0:8080",
        "PROCESSOR=jsonl",
        "X-aws-ec2-metadata-token",
        "aws s3 cp --only-show-errors --region 'eu-west-1' \"$BINARY_S3_URI\"",
        "sha256sum --check",
        "TOKEN_PARAMETER=/acme/auth-token",
        "AUTH_TOKEN_FILE=$CONFIG_DIR/auth-token",
        "TLS_CERT_FILE=$CONFIG_DIR/tls/cert.pem",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "systemctl enable --now filepipe.service filepipe-refresh.timer",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "User=filepipe",
    ] {
        assert!(
            script.contains(expected),
            "rendered user-data lacks `{expected}`"
        );
    }
    assert!(
        !script.contains("latest/meta-data/iam"),
        "the script reads no credentials from IMDS"
    );
}

/// The provider endpoint each resource and data source type of terraform/ is served by; a
/// type not listed here fails the test below, so a new service cannot miss the override.
fn endpoint_of(resource_type: &str) -> Option<&'static str> {
    const BY_PREFIX: [(&str, Option<&str>); 15] = [
        ("aws_autoscaling_", Some("autoscaling")),
        ("aws_caller_identity", Some("sts")),
        ("aws_eip", Some("ec2")),
        ("aws_iam_", Some("iam")),
        ("aws_instance", Some("ec2")),
        ("aws_kms_", Some("kms")),
        ("aws_launch_template", Some("ec2")),
        ("aws_lb", Some("elbv2")),
        ("aws_partition", None),
        ("aws_s3_", Some("s3")),
        ("aws_security_group", Some("ec2")),
        ("aws_sqs_", Some("sqs")),
        ("aws_ssm_", Some("ssm")),
        ("aws_subnet", Some("ec2")),
        ("aws_vpc", Some("ec2")),
    ];
    BY_PREFIX
        .iter()
        .find(|(prefix, _)| resource_type.starts_with(prefix))
        .unwrap_or_else(|| panic!("{resource_type}: which endpoint serves it? Add it here"))
        .1
}

#[test]
fn the_local_override_names_every_service_the_stack_uses_and_exists_for_local_only() {
    let mut used = BTreeSet::new();
    let mut dirs = vec![terraform_dir()];
    for entry in std::fs::read_dir(terraform_dir().join("modules")).unwrap() {
        dirs.push(entry.unwrap().path());
    }
    for dir in dirs {
        let body = parse_module(&dir);
        for block in blocks(&body, "resource").chain(blocks(&body, "data")) {
            used.extend(endpoint_of(labels(block)[0]));
        }
    }
    let named: BTreeSet<&str> = xtask::terraform::LOCAL_OVERRIDE_SERVICES.into();
    assert_eq!(used, named);

    // Written for local, with each service at the emulator; removed for any other environment.
    let copy = temp_dir("override-root");
    std::fs::copy(
        terraform_dir().join("providers.tf"),
        copy.join("providers.tf"),
    )
    .unwrap();
    let override_file = copy.join(xtask::terraform::LOCAL_OVERRIDE_FILE);
    let local = Context::for_test(
        Environment::local(
            aws_clients::AwsSettings::emulator("https://127.0.0.1:1", "eu-west-1", None),
            "override",
        ),
        &temp_dir("override-state"),
    );
    xtask::terraform::write_local_override(&local, &copy).unwrap();
    let text = std::fs::read_to_string(&override_file).unwrap();
    for service in &named {
        let line = format!("{service:<11} = \"https://127.0.0.1:1\"");
        assert!(text.contains(&line), "{text}");
    }
    let example = Context::for_test(
        Environment::load(&workspace_root(), "example").unwrap(),
        &temp_dir("override-state-example"),
    );
    assert!(example.env.aws.endpoint_url.is_none());
    xtask::terraform::write_local_override(&example, &copy).unwrap();
    assert!(
        !override_file.exists(),
        "a real environment gets no override"
    );
}
