//! bootstrap, deploy, plan, render-user-data and destroy against the emulator with the
//! machine's terraform and the real AWS provider, deploying (a copy of) terraform/ as
//! `deploy` does: artifact upload, S3 backend, lock, plan, apply, outputs.
//!
//! Longer than 400 lines: its tests drive the real Terraform path end to end and share the applied
//! stack (`stack.rs`), the costliest fixture of the suite.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;

use aws_clients::AwsClients;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    VersioningConfiguration,
};
use serde_json::Value;

use super::stack::{self, modules_copy, stack};
use super::{copy_dir, hardening, isolated_local_context, require_tool, service_binary, temp_dir};
use xtask::artifact::{FILE_NAME, Source};
use xtask::bootstrap::{self, NONCURRENT_STATE_DAYS, Outcome};
use xtask::buckets::empty_bucket;
use xtask::context::{Context, block_on};
use xtask::deploy;
use xtask::destroy;
use xtask::outputs::Outputs;
use xtask::outputs::outputs_file;
use xtask::private_buckets::{PrivateBucket, Purpose};
use xtask::terraform::Terraform;

fn clients(cx: &Context) -> AwsClients {
    block_on(AwsClients::connect(&cx.env.aws)).expect("building AWS clients")
}

/// The state bucket and the outcomes of both buckets (state first).
fn bootstrap(cx: &Context, fix: bool) -> (PrivateBucket, Vec<Outcome>) {
    let results =
        block_on(bootstrap::bootstrap(cx, &xtask::flags::Bootstrap { fix })).expect("bootstrap");
    assert_eq!(
        results.iter().map(|(b, _)| b.purpose).collect::<Vec<_>>(),
        [Purpose::State, Purpose::Artifacts]
    );
    let state = results[0].0.clone();
    (state, results.into_iter().map(|(_, o)| o).collect())
}

#[test]
fn bootstrap_creates_private_versioned_encrypted_buckets_then_reports_and_fixes_drift() {
    let cx = isolated_local_context("bootstrap");
    let (bucket, outcomes) = bootstrap(&cx, false);
    assert_eq!(outcomes, [Outcome::Created, Outcome::Created]);
    assert_eq!(
        bucket.name,
        format!(
            "{}-tfstate-{}-eu-west-1",
            cx.env.name_prefix, bucket.account_id
        )
    );
    let artifacts = format!(
        "{}-artifacts-{}-eu-west-1",
        cx.env.name_prefix, bucket.account_id
    );

    let s3 = clients(&cx).s3;
    block_on(async {
        for name in [&bucket.name, &artifacts] {
            let location = s3.get_bucket_location().bucket(name).send().await.unwrap();
            assert_eq!(
                location.location_constraint().map(|c| c.as_str()),
                Some("eu-west-1")
            );
            let found = hardening(&s3, name).await;
            assert_eq!(found.public_access_blocks, [Some(true); 4], "{name}");
            assert_eq!(found.object_ownership, "BucketOwnerEnforced");
            assert_eq!(found.versioning.as_deref(), Some("Enabled"));
            assert_eq!(found.sse_algorithm, "aws:kms");
            assert_eq!(found.bucket_key, Some(true));
            assert_eq!(found.noncurrent_days, [NONCURRENT_STATE_DAYS]);
            assert_eq!(found.abort_multipart_days, [1]);
            // Locally the TLS-only policy is a checked document, not attached (see bootstrap.rs).
            assert!(!found.policy_attached);
        }
    });
    for (purpose, name) in [("state", &bucket.name), ("artifact", &artifacts)] {
        let policy: Value = serde_json::from_str(
            &std::fs::read_to_string(cx.state_dir().join(format!("{purpose}-bucket-policy.json")))
                .unwrap(),
        )
        .unwrap();
        xtask::buckets::check_tls_only_policy(&policy, name, "eu-west-1").unwrap();
    }
    let backend = std::fs::read_to_string(bootstrap::backend_file(&cx)).unwrap();
    assert!(backend.contains("use_lockfile = true"), "{backend}");
    assert!(
        backend.contains(&format!("bucket       = \"{}\"", bucket.name)),
        "{backend}"
    );

    assert_eq!(
        bootstrap(&cx, false).1,
        [Outcome::UpToDate, Outcome::UpToDate]
    );

    for name in [&bucket.name, &artifacts] {
        block_on(
            s3.put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Suspended)
                        .build(),
                )
                .send(),
        )
        .unwrap();
    }
    let drift = Outcome::Drift {
        settings: vec!["versioning".into()],
        fixed: false,
    };
    assert_eq!(bootstrap(&cx, false).1, [drift.clone(), drift]);
    let still_suspended = block_on(s3.get_bucket_versioning().bucket(&artifacts).send()).unwrap();
    assert_eq!(
        still_suspended.status(),
        Some(&BucketVersioningStatus::Suspended),
        "no --fix, no change"
    );
    let fixed = Outcome::Drift {
        settings: vec!["versioning".into()],
        fixed: true,
    };
    assert_eq!(bootstrap(&cx, true).1, [fixed.clone(), fixed]);
    assert_eq!(
        bootstrap(&cx, false).1,
        [Outcome::UpToDate, Outcome::UpToDate]
    );
}

#[test]
fn bootstrap_refuses_a_state_bucket_owned_by_another_account() {
    let mut cx = isolated_local_context("foreign");
    let foreign = block_on(async {
        // The emulator's outsider administers another account (see emulator.rs).
        let outsider = aws_clients::AwsSettings {
            credentials: aws_clients::CredentialsSource::ProfileFile {
                config_file: emulator_fixtures::emulator_aws_config(),
                profile: xtask::local::aws::OUTSIDER_PROFILE.to_string(),
            },
            ..cx.env.aws.clone()
        };
        let other = AwsClients::connect(&outsider)
            .await
            .expect("building AWS clients")
            .s3;
        let name = emulator_fixtures::unique_bucket_name("foreign");
        other
            .create_bucket()
            .bucket(&name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        name
    });
    cx.env.state_bucket = Some(foreign.clone());
    let err = block_on(bootstrap::bootstrap(
        &cx,
        &xtask::flags::Bootstrap { fix: true },
    ))
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains(&foreign) && message.contains("another account"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(!bootstrap::backend_file(&cx).exists(), "nothing written");
}

fn state_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Value {
    let body = block_on(async {
        s3.get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
    });
    serde_json::from_slice(&body.into_bytes()).unwrap()
}

fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    block_on(s3.list_objects_v2().bucket(bucket).send())
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// Resource instances Terraform manages in a state (data sources are read, not made).
fn managed_instances(state: &Value) -> usize {
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mode"] == "managed")
        .map(|r| r["instances"].as_array().unwrap().len())
        .sum()
}

#[test]
fn the_real_modules_deploy_redeploy_and_destroy_everything_and_destroy_again_is_a_no_op() {
    require_tool(
        "terraform",
        "it deploys the real modules with the S3 backend",
    );
    let cx = isolated_local_context("deploy");
    let (bucket, _) = bootstrap(&cx, false);
    let root = modules_copy("deploy-root");
    let args = stack::args(&root);

    let first = deploy::deploy(&cx, &args, Source::Debug).expect("first deploy");
    assert!(first.applied);
    assert!(first.summary.add >= 30, "{first:?}");
    assert_eq!((first.summary.change, first.summary.destroy), (0, 0));

    let s3 = clients(&cx).s3;
    let objects = keys(&s3, &bucket.name);
    assert!(
        objects.contains(&"local/terraform.tfstate".to_string()),
        "{objects:?}"
    );
    assert!(
        !objects.iter().any(|k| k.ends_with(".tflock")),
        "lock released: {objects:?}"
    );
    let state = state_object(&s3, &bucket.name, "local/terraform.tfstate");
    assert_eq!(managed_instances(&state), first.summary.add);

    // The binary went to the artifact bucket under its digest, and Terraform was told so.
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(service_binary()).unwrap(),
    ));
    let artifacts = format!("{}-artifacts-123456789012-eu-west-1", cx.env.name_prefix);
    let key = format!("service/{sha256}/{FILE_NAME}");
    assert!(
        keys(&s3, &artifacts).contains(&key),
        "{:?}",
        keys(&s3, &artifacts)
    );

    let outputs = Outputs::load(&outputs_file(&cx)).unwrap();
    let prefix = &cx.env.name_prefix;
    assert_eq!(
        outputs.string("initial_bucket_name").unwrap(),
        format!("{prefix}-initial-123456789012")
    );
    assert_eq!(outputs.string("region").unwrap(), "eu-west-1");
    assert_eq!(
        outputs.string("kms_key_alias").unwrap(),
        format!("alias/{prefix}-data")
    );
    let public_ip = outputs.string("public_ip").unwrap();
    assert_eq!(
        outputs.string("service_url").unwrap(),
        format!("https://{public_ip}:8080"),
        "the Elastic IP the emulator allocated"
    );

    let user_data = xtask::user_data::default_path(&cx);
    let script = std::fs::read_to_string(&user_data).unwrap();
    assert!(script.starts_with("#!/bin/bash"));
    assert!(script.contains(&format!("INITIAL_BUCKET={prefix}-initial-123456789012")));
    assert!(script.contains(&format!("BINARY_S3_URI='s3://{artifacts}/{key}'")));
    assert!(script.contains(&format!("BINARY_SHA256='{sha256}'")));
    assert_eq!(
        std::fs::metadata(&user_data).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Every service the stack uses goes to the emulator, none to AWS.
    let override_text =
        std::fs::read_to_string(root.join(xtask::terraform::LOCAL_OVERRIDE_FILE)).unwrap();
    let endpoint = cx.env.aws.endpoint_url.clone().unwrap();
    for service in xtask::terraform::LOCAL_OVERRIDE_SERVICES {
        assert!(
            override_text.contains(&format!("{service:<11} = \"{endpoint}\"")),
            "{service} not pointed at {endpoint}:\n{override_text}"
        );
    }

    // The first deploy made the bearer token; a second deploy keeps it.
    let operator = clients(&cx);
    let secrets = xtask::secrets::Secrets::new(&outputs, &operator).unwrap();
    let token = block_on(secrets.token()).expect("deploy made the token");

    let second = deploy::deploy(&cx, &args, Source::Debug).expect("second deploy");
    assert_eq!(block_on(secrets.token()).unwrap(), token, "kept");

    // A plan that changes only an output (a new one, as an upgrade adds) is applied too, or
    // outputs.json would miss it.
    let mut outputs_tf = std::fs::read_to_string(root.join("outputs.tf")).unwrap();
    outputs_tf.push_str("\noutput \"added_later\" {\n  value = \"later\"\n}\n");
    std::fs::write(root.join("outputs.tf"), outputs_tf).unwrap();
    let third = deploy::deploy(&cx, &args, Source::Debug).expect("third deploy");
    assert!(third.applied, "{third:?}");
    assert_eq!(
        (
            third.summary.add,
            third.summary.change,
            third.summary.destroy,
            third.summary.outputs
        ),
        (0, 0, 0, 1)
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(outputs_file(&cx)).unwrap()).unwrap();
    assert_eq!(saved["added_later"]["value"], "later");
    assert!(
        !second.summary.has_changes() && !second.applied,
        "{second:?}"
    );

    // Data in every bucket, as a running stack has: a file, its processed copy, and the
    // access logs of the requests so far (the emulator delivers them at once; the log
    // bucket's policy admits only log delivery's writes).
    let made_buckets = [
        outputs.string("initial_bucket_name").unwrap().to_string(),
        outputs.string("final_bucket_name").unwrap().to_string(),
        outputs
            .string("access_log_bucket_name")
            .unwrap()
            .to_string(),
    ];
    for name in &made_buckets[..2] {
        block_on(
            s3.put_object()
                .bucket(name)
                .key("left/behind")
                .body(ByteStream::from_static(b"data"))
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id(outputs.string("kms_key_arn").unwrap())
                .send(),
        )
        .unwrap();
    }
    let logs = block_on(s3.list_object_versions().bucket(&made_buckets[2]).send()).unwrap();
    assert!(!logs.versions().is_empty(), "access logs delivered");
    let destroy_args = xtask::flags::Destroy {
        yes: true,
        empty_buckets: true,
        purge_state: false,
        terraform: None,
        root_module: Some(root.clone()),
    };
    destroy::destroy(&cx, &destroy_args).expect("destroy");
    let state = state_object(&s3, &bucket.name, "local/terraform.tfstate");
    assert_eq!(managed_instances(&state), 0, "destroy leaves no resources");
    for name in &made_buckets {
        assert!(
            block_on(s3.head_bucket().bucket(name).send()).is_err(),
            "{name} deleted"
        );
    }
    assert!(!outputs_file(&cx).exists());
    assert!(
        !keys(&s3, &bucket.name)
            .iter()
            .any(|k| k.ends_with(".tflock"))
    );
    assert!(
        block_on(secrets.token()).is_err(),
        "destroy deleted the token Terraform does not manage"
    );

    // Again: nothing left to destroy, and that is not an error.
    destroy::destroy(&cx, &destroy_args).expect("destroy again");
    let state = state_object(&s3, &bucket.name, "local/terraform.tfstate");
    assert_eq!(managed_instances(&state), 0);

    // --purge-state removes the artifact bucket, then the state bucket.
    destroy::destroy(
        &cx,
        &xtask::flags::Destroy {
            purge_state: true,
            ..destroy_args
        },
    )
    .expect("destroy with --purge-state");
    for name in [&bucket.name, &artifacts] {
        let gone = block_on(s3.head_bucket().bucket(name).send());
        assert!(gone.is_err(), "{name} deleted");
    }
}

#[test]
fn a_reviewed_plan_is_applied_as_saved_then_re_plans_empty_and_a_moved_backend_is_never_reconfigured_silently()
 {
    let stack = stack();
    let cx = stack.cx();
    let args = stack.args();
    assert_eq!(
        stack.first_plan,
        ExitCode::from(2),
        "changes before the first apply"
    );
    assert!(
        stack.applied.applied && stack.applied.summary.add >= 30,
        "{:?}",
        stack.applied
    );
    assert_eq!(
        stack.replan,
        ExitCode::SUCCESS,
        "a plan right after the apply has no changes: the emulator answers as AWS does"
    );

    // The token deploy made after the apply is in SSM, and in nothing Terraform keeps: not the
    // state, not the plan, not the outputs, not the user-data.
    let operator = clients(&cx);
    let secrets = xtask::secrets::Secrets::new(&stack.outputs, &operator).unwrap();
    let token = block_on(secrets.token()).expect("deploy made the token");
    assert!(token.len() >= 32);
    let tf = Terraform::find(&cx, None, &stack.root).unwrap();
    let shown = tf
        .run(
            &cx,
            &[
                "show".into(),
                "-json".into(),
                stack.plan_file.display().to_string(),
            ],
            xtask::terraform::Output::CaptureStdout,
        )
        .unwrap();
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let state = state_object(
        &clients(&cx).s3,
        &stack.state_bucket,
        "local/terraform.tfstate",
    );
    for (what, text) in [
        ("the plan", shown.stdout),
        ("the state", state.to_string()),
        (
            "outputs.json",
            std::fs::read_to_string(outputs_file(&cx)).unwrap(),
        ),
        (
            "the user-data",
            std::fs::read_to_string(xtask::user_data::default_path(&cx)).unwrap(),
        ),
    ] {
        assert!(!text.contains(&token), "the token is in {what}");
    }
    // Applied once; Terraform refuses the same plan again, the state having moved on.
    let again = deploy::deploy(
        &cx,
        &xtask::flags::Deploy {
            plan: Some(stack.plan_file.clone()),
            ..args.clone()
        },
        Source::Debug,
    );
    assert!(again.is_err());

    // The state bucket renamed (state_bucket in <env>.xtask.hcl) and bootstrapped: the next
    // deploy must refuse rather than start from an empty state. Bootstrapped as `local` (the
    // emulator cannot take the TLS-only policy a real environment attaches), then run as a
    // real environment, `staging`, with its Terraform directory as initialised before and the
    // variables `local` gets in a var-file: `local` itself reconfigures, its state living in
    // the emulator.
    let mut moved = Context::for_test(cx.env.clone(), &cx.state_root);
    moved.env.state_bucket = Some(emulator_fixtures::unique_bucket_name("moved-state"));
    bootstrap(&moved, false);
    let vars: serde_json::Map<String, Value> = xtask::terraform::xtask_variables(&cx, None)
        .into_iter()
        .filter(|(name, _)| *name != "environment")
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    let var_file = temp_dir("staging-vars").join("staging.tfvars.json");
    std::fs::write(&var_file, Value::Object(vars).to_string()).unwrap();
    moved.env.var_file = Some(var_file);
    moved.env.name = "staging".into();
    copy_dir(&cx.state_dir(), &moved.state_dir());
    let err = format!(
        "{:#}",
        deploy::deploy(&moved, &args, Source::Debug).unwrap_err()
    );
    assert!(
        err.contains("backend settings of `staging` changed") && err.contains("--migrate-state"),
        "{err}"
    );
    // Planned, not applied: `staging` tags the stack otherwise (default_tags), and this stack
    // is shared. Were the state not copied, the plan would create everything again.
    let prepared = args
        .shared
        .prepare(&moved, Source::Debug)
        .expect("prepare staging");
    xtask::terraform::init(
        &moved,
        &prepared.tf,
        &prepared.backend,
        xtask::terraform::BackendChange::Migrate,
    )
    .expect("init with --migrate-state");
    let migrated = xtask::terraform::plan(
        &moved,
        &prepared.tf,
        &prepared.var_files,
        &moved.state_dir().join("migrated.tfplan"),
    )
    .expect("plan after the migration");
    assert_eq!(
        (migrated.add, migrated.destroy),
        (0, 0),
        "the state came along: {migrated:?}"
    );
    let s3 = clients(&cx).s3;
    let new_bucket = moved.env.state_bucket.clone().unwrap();
    assert!(
        keys(&s3, &new_bucket).contains(&"local/terraform.tfstate".to_string()),
        "{:?} (old: {})",
        keys(&s3, &new_bucket),
        stack.state_bucket
    );
}

/// The buckets as S3 reports them after the real apply: nothing public, ACLs off, versioned,
/// the data encrypted with the stack's key, old versions and stale uploads cleaned up, and the
/// log bucket's SSE-S3 (all log delivery writes to) with its retention and policy attached.
#[test]
fn the_applied_buckets_are_private_versioned_and_encrypted_with_the_stack_key() {
    let stack = stack();
    let cx = stack.cx();
    let s3 = clients(&cx).s3;
    let key_arn = stack.outputs.string("kms_key_arn").unwrap();
    block_on(async {
        for output in ["initial_bucket_name", "final_bucket_name"] {
            let bucket = stack.outputs.string(output).unwrap();
            let found = hardening(&s3, bucket).await;
            assert_eq!(found.public_access_blocks, [Some(true); 4], "{bucket}");
            assert_eq!(found.object_ownership, "BucketOwnerEnforced");
            assert_eq!(found.versioning.as_deref(), Some("Enabled"));
            assert_eq!(found.sse_algorithm, "aws:kms");
            assert_eq!(found.kms_key.as_deref(), Some(key_arn), "{bucket}");
            assert_eq!(found.bucket_key, Some(true));
            assert_eq!(found.abort_multipart_days, [1]);
            assert_eq!(found.noncurrent_days.len(), 1, "{found:?}");
            assert!(found.current_expiry_days.is_empty(), "{found:?}");
            assert_eq!(found.expired_delete_markers, [true]);
        }
        let logs = stack.outputs.string("access_log_bucket_name").unwrap();
        let found = hardening(&s3, logs).await;
        assert_eq!(found.public_access_blocks, [Some(true); 4]);
        assert_eq!(found.object_ownership, "BucketOwnerEnforced");
        assert_eq!(found.versioning.as_deref(), Some("Enabled"));
        assert_eq!(found.sse_algorithm, "AES256");
        assert_eq!(found.current_expiry_days, [365], "the default retention");
        assert!(found.policy_attached, "log delivery's policy");
    });
}

/// The main route table of the emulator's default VPC, asked with the AWS CLI as the operator
/// (the xtask itself has no EC2 client).
fn main_route_table(cx: &Context) -> String {
    let aws = xtask::local::first_boot::AWS_CLI
        .ensure(cx)
        .expect("the AWS CLI");
    let out = std::process::Command::new(aws)
        .args([
            "ec2",
            "describe-route-tables",
            "--filters",
            "Name=association.main,Values=true",
            "--query",
            "RouteTables[0].RouteTableId",
            "--output",
            "text",
        ])
        .envs(aws_clients::subprocess_env(&cx.env.aws))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.starts_with("rtb-"), "{id}");
    id
}

/// The fleet shape, as a real environment runs it: three instances in an Auto Scaling group
/// behind a network load balancer, reaching S3 through a gateway endpoint that replaces the
/// Elastic IP in the bucket policies. Refused without the endpoint; applied by the real
/// provider, re-planned empty, destroyed. (`up --instances N` runs the single shape.)
#[test]
fn the_fleet_shape_is_refused_without_an_endpoint_and_applies_re_plans_empty_and_destroys() {
    require_tool(
        "terraform",
        "it applies the real modules in the fleet shape",
    );
    let mut cx = isolated_local_context("fleet");
    bootstrap(&cx, false);
    let root = modules_copy("fleet-root");
    let args = stack::args(&root);
    let vars = temp_dir("fleet-vars");
    let with_vars = |cx: &mut Context, name: &str, value: Value| {
        let file = vars.join(name);
        std::fs::write(&file, value.to_string()).unwrap();
        cx.env.var_file = Some(file);
    };
    let plan_args = |cx: &Context, out: &str| xtask::flags::Plan {
        out: Some(cx.state_dir().join(out)),
        json: true,
        shared: args.shared.clone(),
    };

    with_vars(
        &mut cx,
        "no-endpoint.tfvars.json",
        serde_json::json!({"instance_count": 3}),
    );
    let refused = format!(
        "{:#}",
        xtask::plan::run(&cx, plan_args(&cx, "refused.tfplan")).unwrap_err()
    );
    assert!(
        refused.contains("instance_count > 1 needs s3_gateway_endpoint_route_table_ids"),
        "{refused}"
    );

    let route_table = main_route_table(&cx);
    with_vars(
        &mut cx,
        "fleet.tfvars.json",
        serde_json::json!({
            "instance_count": 3,
            "s3_gateway_endpoint_route_table_ids": [route_table],
        }),
    );
    let applied = deploy::deploy(&cx, &args, Source::Debug).expect("deploy the fleet");
    assert!(applied.applied, "{applied:?}");
    let addresses: Vec<&str> = applied
        .summary
        .resources
        .iter()
        .map(|(address, _)| address.as_str())
        .collect();
    for kind in [
        "aws_launch_template.service",
        "aws_autoscaling_group.service",
        "aws_lb.service",
        "aws_lb_target_group.service",
        "aws_lb_listener.service",
        "aws_vpc_endpoint.s3",
    ] {
        assert!(
            addresses.iter().any(|a| a.contains(kind)),
            "{kind} not in {addresses:#?}"
        );
    }
    assert!(
        !addresses
            .iter()
            .any(|a| a.contains("aws_instance.") || a.contains("aws_eip.")),
        "a fleet has no lone instance or Elastic IP: {addresses:#?}"
    );
    let outputs = Outputs::load(&outputs_file(&cx)).unwrap();
    let dns_name = outputs.string("load_balancer_dns_name").unwrap();
    assert!(
        outputs
            .string("service_url")
            .unwrap()
            .starts_with(&format!("https://{dns_name}:")),
        "{:?}",
        outputs.string("service_url")
    );
    assert!(outputs.optional_string("instance_id").is_none());
    let key_parameter = outputs.string("tls_key_parameter").unwrap();
    assert!(
        outputs
            .string("user_data")
            .unwrap()
            .contains(&format!("TLS_KEY_PARAMETER={key_parameter}")),
        "the instances read the shared key"
    );
    let policy = outputs.string("initial_bucket_policy_json").unwrap();
    assert!(
        policy.contains("aws:SourceVpce") && policy.contains("vpce-"),
        "{policy}"
    );

    assert_eq!(
        xtask::plan::run(&cx, plan_args(&cx, "replan.tfplan")).unwrap(),
        ExitCode::SUCCESS,
        "a plan right after the fleet's apply has no changes"
    );

    destroy::destroy(
        &cx,
        &xtask::flags::Destroy {
            yes: true,
            empty_buckets: true,
            purge_state: true,
            terraform: None,
            root_module: Some(root.clone()),
        },
    )
    .expect("destroy the fleet");
    let s3 = clients(&cx).s3;
    for output in [
        "initial_bucket_name",
        "final_bucket_name",
        "access_log_bucket_name",
    ] {
        let name = outputs.string(output).unwrap();
        assert!(
            block_on(s3.head_bucket().bucket(name).send()).is_err(),
            "{name} deleted"
        );
    }
}

#[test]
fn deploy_refuses_missing_or_old_terraform_and_changes_nothing() {
    let cx = isolated_local_context("bad-terraform");
    bootstrap(&cx, false);
    let root = modules_copy("bad-terraform-root");
    let before: Vec<_> = std::fs::read_dir(cx.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let with_terraform = |terraform: &str| {
        let mut args = stack::args(&root);
        args.shared.terraform = Some(terraform.into());
        args
    };
    let missing = with_terraform("/nonexistent/terraform");
    let err = format!(
        "{:#}",
        deploy::deploy(&cx, &missing, Source::Debug).unwrap_err()
    );
    assert!(
        err.contains("/nonexistent/terraform") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains('\n'));

    let not_on_path = with_terraform("terraform-that-is-not-installed");
    let err = format!(
        "{:#}",
        deploy::deploy(&cx, &not_on_path, Source::Debug).unwrap_err()
    );
    assert!(err.contains("is not on PATH"), "{err}");

    let old = temp_dir("old-terraform").join("terraform");
    std::fs::write(
        &old,
        "#!/bin/sh\necho '{\"terraform_version\":\"1.9.8\",\"platform\":\"linux_amd64\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let too_old = with_terraform(&old.display().to_string());
    let err = format!(
        "{:#}",
        deploy::deploy(&cx, &too_old, Source::Debug).unwrap_err()
    );
    assert!(
        err.contains("1.9.8 is too old") && err.contains("use_lockfile"),
        "{err}"
    );
    assert!(!err.contains('\n'));

    let after: Vec<_> = std::fs::read_dir(cx.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "no state files written");
    assert!(!outputs_file(&cx).exists());
}

#[test]
fn deploy_without_bootstrap_says_so() {
    require_tool("terraform", "deploy looks for it before anything else");
    let cx = isolated_local_context("no-bootstrap");
    let args = stack::args(&modules_copy("no-bootstrap-root"));
    let err = format!(
        "{:#}",
        deploy::deploy(&cx, &args, Source::Debug).unwrap_err()
    );
    assert!(
        err.contains("run `cargo xtask bootstrap --env local` first"),
        "{err}"
    );
}

#[test]
fn a_named_provider_mirror_without_the_provider_stops_init_in_one_sentence() {
    let terraform = require_tool("terraform", "it runs terraform init on the real modules");
    let cx = isolated_local_context("no-provider");
    let (_, _) = bootstrap(&cx, false);
    let root = modules_copy("no-provider-root");
    let mut tf = Terraform::find(&cx, Some(terraform.to_str().unwrap()), &root).unwrap();
    let empty = temp_dir("empty-mirror");
    tf.named_mirror = Some(empty.clone().into_os_string());
    let err = xtask::terraform::init(
        &cx,
        &tf,
        &bootstrap::backend_file(&cx),
        xtask::terraform::BackendChange::Refuse,
    )
    .expect_err("no provider in the named mirror");
    let message = format!("{err:#}");
    assert!(
        message.starts_with(&format!(
            "{}={}",
            xtask::terraform::provider::MIRROR_ENV,
            empty.display()
        )) && message.contains("holds no hashicorp/aws provider"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one sentence: {message}");
    assert!(!tf.data_dir.join("providers").exists(), "nothing installed");
}

#[test]
fn emptying_a_bucket_removes_more_than_a_thousand_versions_and_delete_markers() {
    let cx = isolated_local_context("empty");
    let s3 = clients(&cx).s3;
    let bucket = emulator_fixtures::unique_bucket_name("versions");
    block_on(async {
        emulator_fixtures::create_bucket(&s3, &bucket).await;
        s3.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        // 40 keys x 27 versions = 1,080 versions, plus one delete marker per key.
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..40 {
            let s3 = s3.clone();
            let bucket = bucket.clone();
            tasks.spawn(async move {
                for v in 0..27 {
                    s3.put_object()
                        .bucket(&bucket)
                        .key(format!("k{k}"))
                        .body(ByteStream::from(format!("{k}-{v}").into_bytes()))
                        .send()
                        .await
                        .unwrap();
                }
                s3.delete_object()
                    .bucket(&bucket)
                    .key(format!("k{k}"))
                    .send()
                    .await
                    .unwrap();
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let deleted = empty_bucket(&s3, &bucket).await.unwrap();
        assert_eq!(deleted, 40 * 27 + 40);
        let left = s3
            .list_object_versions()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        assert!(left.versions().is_empty() && left.delete_markers().is_empty());
        s3.delete_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("an empty bucket can be deleted");
        assert_eq!(
            empty_bucket(&s3, &bucket).await.unwrap(),
            0,
            "a missing bucket is empty"
        );
    });
}
