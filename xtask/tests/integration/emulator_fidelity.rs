//! The emulator corrections that let the real AWS provider apply the stack and re-plan it
//! empty (moto_server_fidelity.py): each asserted as the AWS documentation states it, and
//! failing on an uncorrected moto. The SQS and S3 ones through the SDK; the EC2 ones through
//! the provider itself (the xtask has no EC2 client), with a plan after the apply that must
//! find nothing to change.

use aws_sdk_s3::types::{
    BucketLoggingStatus, LoggingEnabled, PartitionDateSource, PartitionedPrefix,
    TargetObjectKeyFormat,
};
use aws_sdk_sqs::types::QueueAttributeName;
use emulator_fixtures::{create_bucket, emulator_clients, unique_bucket_name};

use super::{isolated_local_context, require_tool, temp_dir};
use xtask::context::block_on;
use xtask::terraform::{Output, Terraform};

async fn queue(sqs: &aws_sdk_sqs::Client, label: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(unique_bucket_name(label))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let arn = attribute(sqs, &url, QueueAttributeName::QueueArn)
        .await
        .unwrap();
    (url, arn)
}

/// One attribute as GetQueueAttributes returns it, asked for by name.
async fn attribute(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    name: QueueAttributeName,
) -> Option<String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .unwrap_or_else(|err| panic!("GetQueueAttributes {name:?}: {err:?}"))
        .attributes()
        .and_then(|found| found.get(&name).cloned())
}

async fn set(sqs: &aws_sdk_sqs::Client, url: &str, name: QueueAttributeName, value: &str) {
    sqs.set_queue_attributes()
        .queue_url(url)
        .attributes(name, value)
        .send()
        .await
        .unwrap();
}

#[test]
fn a_queue_returns_its_redrive_allow_policy_and_the_empty_string_removes_it() {
    block_on(async {
        let sqs = emulator_clients().await.sqs;
        let (dead_letter, _) = queue(&sqs, "dlq").await;
        let (_, source_arn) = queue(&sqs, "src").await;
        let policy =
            format!(r#"{{"redrivePermission":"byQueue","sourceQueueArns":["{source_arn}"]}}"#);
        set(
            &sqs,
            &dead_letter,
            QueueAttributeName::RedriveAllowPolicy,
            &policy,
        )
        .await;
        assert_eq!(
            attribute(&sqs, &dead_letter, QueueAttributeName::RedriveAllowPolicy).await,
            Some(policy)
        );
        set(
            &sqs,
            &dead_letter,
            QueueAttributeName::RedriveAllowPolicy,
            "",
        )
        .await;
        let all = sqs
            .get_queue_attributes()
            .queue_url(&dead_letter)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        assert!(
            !all.attributes()
                .unwrap()
                .contains_key(&QueueAttributeName::RedriveAllowPolicy),
            "{all:?}"
        );
    });
}

#[test]
fn setting_other_queue_attributes_leaves_the_policy_and_an_empty_policy_removes_it() {
    block_on(async {
        let sqs = emulator_clients().await.sqs;
        let (url, arn) = queue(&sqs, "policy").await;
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*","Action":"sqs:*","Resource":"{arn}","Condition":{{"Bool":{{"aws:SecureTransport":"false"}}}}}}]}}"#
        );
        set(&sqs, &url, QueueAttributeName::Policy, &policy).await;
        set(&sqs, &url, QueueAttributeName::VisibilityTimeout, "60").await;
        let kept = attribute(&sqs, &url, QueueAttributeName::Policy)
            .await
            .expect("the policy survives an update that does not name it");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&kept).unwrap(),
            serde_json::from_str::<serde_json::Value>(&policy).unwrap()
        );
        set(&sqs, &url, QueueAttributeName::Policy, "").await;
        assert_eq!(
            attribute(&sqs, &url, QueueAttributeName::Policy).await,
            None
        );
    });
}

#[test]
fn a_redrive_policy_is_returned_as_compact_json() {
    block_on(async {
        let sqs = emulator_clients().await.sqs;
        let (_, dead_letter_arn) = queue(&sqs, "dlq").await;
        let (url, _) = queue(&sqs, "work").await;
        let policy =
            format!(r#"{{"deadLetterTargetArn":"{dead_letter_arn}","maxReceiveCount":5}}"#);
        set(&sqs, &url, QueueAttributeName::RedrivePolicy, &policy).await;
        assert_eq!(
            attribute(&sqs, &url, QueueAttributeName::RedrivePolicy).await,
            Some(policy)
        );
    });
}

#[test]
fn bucket_logging_returns_the_target_object_key_format_it_was_given() {
    block_on(async {
        let s3 = emulator_clients().await.s3;
        let (bucket, logs) = (unique_bucket_name("logged"), unique_bucket_name("logs"));
        create_bucket(&s3, &bucket).await;
        create_bucket(&s3, &logs).await;
        // S3 accepts a logging rule only into a bucket that admits log delivery.
        s3.put_bucket_policy()
            .bucket(&logs)
            .policy(format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"Service":"logging.s3.amazonaws.com"}},"Action":"s3:PutObject","Resource":"arn:aws:s3:::{logs}/*"}}]}}"#
            ))
            .send()
            .await
            .unwrap();
        s3.put_bucket_logging()
            .bucket(&bucket)
            .bucket_logging_status(
                BucketLoggingStatus::builder()
                    .logging_enabled(
                        LoggingEnabled::builder()
                            .target_bucket(&logs)
                            .target_prefix(format!("{bucket}/"))
                            .target_object_key_format(
                                TargetObjectKeyFormat::builder()
                                    .partitioned_prefix(
                                        PartitionedPrefix::builder()
                                            .partition_date_source(PartitionDateSource::EventTime)
                                            .build(),
                                    )
                                    .build(),
                            )
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let found = s3
            .get_bucket_logging()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        let format = found
            .logging_enabled()
            .and_then(|l| l.target_object_key_format())
            .unwrap_or_else(|| panic!("no TargetObjectKeyFormat in {found:?}"));
        assert_eq!(
            format
                .partitioned_prefix()
                .and_then(|p| p.partition_date_source()),
            Some(&PartitionDateSource::EventTime)
        );
    });
}

/// An instance with detailed monitoring, and a launch template whose own tags (the provider's
/// default_tags) are not its instances': applied by the real provider, then planned again.
const EC2_CONFIG: &str = r#"
terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 7.0"
    }
  }
}

provider "aws" {
  region = "eu-west-1"
  # A refusal fails the apply at once instead of being retried for minutes.
  max_retries = 1
  default_tags {
    tags = { Project = "fidelity" }
  }
}

data "aws_ssm_parameter" "ami" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

resource "aws_instance" "monitored" {
  ami           = data.aws_ssm_parameter.ami.insecure_value
  instance_type = "t3.micro"
  monitoring    = true
}

resource "aws_launch_template" "tagged" {
  name_prefix   = "fidelity-"
  image_id      = data.aws_ssm_parameter.ami.insecure_value
  instance_type = "t3.micro"

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "fidelity" }
  }
}
"#;

#[test]
fn the_provider_applies_detailed_monitoring_and_a_tagged_launch_template_then_plans_nothing() {
    require_tool(
        "terraform",
        "the real AWS provider applies the EC2 resources",
    );
    let cx = isolated_local_context("fidelity-ec2");
    let dir = temp_dir("fidelity-ec2-root");
    std::fs::write(dir.join("providers.tf"), EC2_CONFIG).unwrap();
    xtask::terraform::write_local_override(&cx, &dir).unwrap();
    let mut tf = Terraform::find(&cx, None, &dir).unwrap();
    tf.data_dir = dir.join(".terraform");
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let finished = if args[0] == "init" {
            xtask::terraform::run_init(&cx, &tf, &args).unwrap()
        } else {
            tf.run(&cx, &args, Output::Quiet).unwrap()
        };
        (
            finished.code,
            format!("{}{}", finished.stdout, finished.stderr),
        )
    };
    let (code, out) = run(&["init", "-input=false"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["apply", "-input=false", "-auto-approve"]);
    assert_eq!(code, 0, "MonitorInstances must answer: {out}");
    let (code, out) = run(&["plan", "-input=false", "-detailed-exitcode"]);
    assert_eq!(
        code, 0,
        "monitoring read back as enabled, the template's data without its own tags: {out}"
    );
    let (code, out) = run(&["destroy", "-input=false", "-auto-approve"]);
    assert_eq!(code, 0, "{out}");
}
