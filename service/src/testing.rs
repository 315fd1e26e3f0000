//! Helpers for tests that talk to the local AWS emulator. `cargo xtask test` starts the
//! emulator and exports its endpoint in [`ENDPOINT_VAR`]; a test run without it fails loudly
//! instead of skipping.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_clients::{AwsClients, AwsSettings, CredentialsSource};

/// The one variable that tells tests where the emulator listens.
pub const ENDPOINT_VAR: &str = "FILEPIPE_TEST_ENDPOINT";
/// The CA the emulator's TLS certificate is signed by.
pub const CA_BUNDLE_VAR: &str = "FILEPIPE_TEST_CA_BUNDLE";
/// The emulator's plain-HTTP endpoint, for proxies that read requests (fault injection) and
/// for requests that must be refused for not using TLS.
pub const PLAIN_ENDPOINT_VAR: &str = "FILEPIPE_TEST_PLAIN_ENDPOINT";
/// The AWS config file whose `operator` profile signs the tests' requests: the emulator
/// enforces IAM, so unsigned or unknown requests are refused.
pub const AWS_CONFIG_VAR: &str = "FILEPIPE_TEST_AWS_CONFIG";
/// The operator's profile in that file.
pub const OPERATOR_PROFILE: &str = "operator";
/// Region the tests use against the emulator: outside us-east-1, so every CreateBucket
/// must carry a LocationConstraint as it must on real AWS.
pub const TEST_REGION: &str = "eu-west-1";

/// The emulator endpoint, or a panic that says how to run the tests.
pub fn emulator_endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: this test needs the local AWS emulator. \
             Run the tests with `cargo xtask test`, which starts it and sets {ENDPOINT_VAR}."
        ),
    }
}

/// The emulator's plain-HTTP endpoint, or a panic that says how to run the tests.
pub fn emulator_plain_endpoint() -> String {
    required_var(
        PLAIN_ENDPOINT_VAR,
        "this test needs the emulator's plain-HTTP endpoint",
    )
}

/// The emulator's CA certificate, or a panic that says how to run the tests.
pub fn emulator_ca_bundle() -> std::path::PathBuf {
    required_var(
        CA_BUNDLE_VAR,
        "this test trusts the emulator's TLS certificate by its CA",
    )
    .into()
}

fn required_var(name: &str, why: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: {why}. Run the tests with `cargo xtask test`, which sets it."
        ),
    }
}

/// The AWS config file with the emulator's identities, or a panic that says how to run the
/// tests.
pub fn emulator_aws_config() -> std::path::PathBuf {
    match std::env::var(AWS_CONFIG_VAR) {
        Ok(path) if !path.trim().is_empty() => std::path::PathBuf::from(path),
        _ => panic!(
            "{AWS_CONFIG_VAR} is not set: this test signs its requests as the emulator's operator. \
             Run the tests with `cargo xtask test`, which sets it."
        ),
    }
}

/// The emulator as the operator: endpoint and credentials from `cargo xtask test`.
pub fn emulator_settings() -> AwsSettings {
    let config_file = emulator_aws_config();
    AwsSettings {
        region: TEST_REGION.to_string(),
        endpoint_url: Some(emulator_endpoint()),
        s3_endpoint_url: None,
        credentials: CredentialsSource::ProfileFile {
            config_file,
            profile: OPERATOR_PROFILE.to_string(),
        },
        ca_bundle: Some(emulator_ca_bundle()),
    }
}

/// Clients for the emulator, built by the shared client builder.
pub async fn emulator_clients() -> AwsClients {
    AwsClients::connect(&emulator_settings())
        .await
        .expect("building AWS clients for the emulator")
}

/// A bucket name no other test (or earlier run against the same emulator) uses.
pub fn unique_bucket_name(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "t-{}-{}-{:x}-{n}",
        purpose.to_ascii_lowercase(),
        std::process::id(),
        nanos % 0xffff_ffff
    );
    name.chars().take(63).collect()
}

/// Creates a bucket in [`TEST_REGION`] (with its LocationConstraint, as AWS requires).
pub async fn create_bucket(s3: &aws_sdk_s3::Client, name: &str) {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    s3.create_bucket()
        .bucket(name)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(TEST_REGION))
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
}

/// A new KMS key in the emulator; returns its ARN.
pub async fn create_key(kms: &aws_sdk_kms::Client) -> String {
    let key = kms
        .create_key()
        .description("filepipe test")
        .send()
        .await
        .expect("create key");
    key.key_metadata()
        .and_then(|m| m.arn())
        .expect("key ARN")
        .to_string()
}

/// Versioning and default SSE-KMS with a bucket key, as the Terraform modules configure a
/// data bucket.
pub async fn configure_like_terraform(s3: &aws_sdk_s3::Client, bucket: &str, key_arn: &str) {
    use aws_sdk_s3::types::{
        BucketVersioningStatus, ServerSideEncryption, ServerSideEncryptionByDefault,
        ServerSideEncryptionConfiguration, ServerSideEncryptionRule, VersioningConfiguration,
    };
    s3.put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("versioning");
    s3.put_bucket_encryption()
        .bucket(bucket)
        .server_side_encryption_configuration(
            ServerSideEncryptionConfiguration::builder()
                .rules(
                    ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(
                            ServerSideEncryptionByDefault::builder()
                                .sse_algorithm(ServerSideEncryption::AwsKms)
                                .kms_master_key_id(key_arn)
                                .build()
                                .expect("algorithm set"),
                        )
                        .bucket_key_enabled(true)
                        .build(),
                )
                .build()
                .expect("rules set"),
        )
        .send()
        .await
        .expect("default encryption");
}

/// The processing queue as Terraform's `queue` module makes it: a dead-letter queue, the
/// queue (SSE with `key_arn`, `visibility_secs`, redriven after `max_receives`
/// deliveries), and the initial bucket's notification of `raw/` object creations to it.
/// Returns the queue's and the dead-letter queue's URLs.
pub async fn create_work_queue(
    clients: &AwsClients,
    name: &str,
    initial_bucket: &str,
    key_arn: &str,
    visibility_secs: u32,
    max_receives: u32,
) -> (String, String) {
    let queues = create_queues(clients, name, key_arn, visibility_secs, max_receives)
        .await
        .expect("create the queues");
    notify_queue(clients, initial_bucket, &queues)
        .await
        .expect("the bucket's notification");
    (queues.work_url, queues.dead_letter_url)
}

/// A work queue and its dead-letter queue, encrypted with `key_arn`.
pub struct Queues {
    pub work_url: String,
    pub work_arn: String,
    pub dead_letter_url: String,
    pub key_arn: String,
}

/// The two queues of [`create_work_queue`], without the notification (the sandbox
/// provisioner makes its buckets later).
pub async fn create_queues(
    clients: &AwsClients,
    name: &str,
    key_arn: &str,
    visibility_secs: u32,
    max_receives: u32,
) -> anyhow::Result<Queues> {
    use anyhow::Context as _;
    use aws_clients::AwsResultExt as _;
    use aws_sdk_sqs::types::QueueAttributeName as Attr;
    let sqs = &clients.sqs;
    let create = |queue: String, attributes: Vec<(Attr, String)>| async move {
        let mut request = sqs.create_queue().queue_name(&queue);
        for (name, value) in attributes {
            request = request.attributes(name, value);
        }
        let url = request
            .send()
            .await
            .aws_context(format!("sqs:CreateQueue {queue}"))?
            .queue_url()
            .context("CreateQueue returned no URL")?
            .to_string();
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(Attr::QueueArn)
            .send()
            .await
            .aws_context(format!("sqs:GetQueueAttributes {queue}"))?
            .attributes()
            .and_then(|a| a.get(&Attr::QueueArn).cloned())
            .context("no QueueArn")?;
        anyhow::Ok((url, arn))
    };
    let sse = (Attr::KmsMasterKeyId, key_arn.to_string());
    let (dead_letter_url, dlq_arn) = create(
        format!("{name}-dead-letter"),
        vec![
            sse.clone(),
            (Attr::MessageRetentionPeriod, "1209600".into()),
        ],
    )
    .await?;
    let attributes = vec![
        sse,
        (Attr::VisibilityTimeout, visibility_secs.to_string()),
        (
            Attr::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
                .to_string(),
        ),
    ];
    let (work_url, work_arn) = create(name.to_string(), attributes).await?;
    Ok(Queues {
        work_url,
        work_arn,
        dead_letter_url,
        key_arn: key_arn.to_string(),
    })
}

/// The bucket's notification of `raw/` object creations to the work queue. S3 refuses it
/// unless the queue's policy lets the bucket send and the queue's key policy lets S3 use the
/// key, so both are granted first, as Terraform's policy-documents module grants them.
pub async fn notify_queue(
    clients: &AwsClients,
    bucket: &str,
    queues: &Queues,
) -> anyhow::Result<()> {
    use aws_clients::AwsResultExt as _;
    let queue_arn = queues.work_arn.as_str();
    let account = queue_arn.split(':').nth(4).unwrap_or_default();
    // Only the allow: these tests' services reach the emulator through a plain-HTTP fault
    // proxy, which Terraform's TLS-only statement would refuse.
    let queue_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "InitialBucketSendsEvents",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnEquals": {"aws:SourceArn": format!("arn:aws:s3:::{bucket}")},
                "StringEquals": {"aws:SourceAccount": account},
            },
        }],
    });
    clients
        .sqs
        .set_queue_attributes()
        .queue_url(&queues.work_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::Policy,
            queue_policy.to_string(),
        )
        .send()
        .await
        .aws_context(format!("sqs:SetQueueAttributes Policy {queue_arn}"))?;
    let_s3_use_key(clients, &queues.key_arn, account).await?;
    use aws_sdk_s3::types::{
        Event, FilterRule, FilterRuleName, NotificationConfiguration,
        NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
    };
    let prefix = FilterRule::builder()
        .name(FilterRuleName::Prefix)
        .value(crate::names::RAW_PREFIX)
        .build();
    let queue = QueueConfiguration::builder()
        .queue_arn(queue_arn)
        .events(Event::from("s3:ObjectCreated:*"))
        .filter(
            NotificationConfigurationFilter::builder()
                .key(S3KeyFilter::builder().filter_rules(prefix).build())
                .build(),
        )
        .build()?;
    clients
        .s3
        .put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(queue)
                .build(),
        )
        .send()
        .await
        .aws_context(format!("s3:PutBucketNotificationConfiguration {bucket}"))?;
    Ok(())
}

/// Adds to the key's policy a statement that lets S3 encrypt this account's bucket events
/// into queues the key protects; idempotent, so queues sharing a key share the statement.
async fn let_s3_use_key(clients: &AwsClients, key_arn: &str, account: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use aws_clients::AwsResultExt as _;
    const SID: &str = "S3SendsBucketEventsToQueues";
    let current = clients
        .kms
        .get_key_policy()
        .key_id(key_arn)
        .policy_name("default")
        .send()
        .await
        .aws_context(format!("kms:GetKeyPolicy {key_arn}"))?;
    let mut policy: serde_json::Value = serde_json::from_str(
        current
            .policy()
            .context("GetKeyPolicy returned no policy")?,
    )
    .context("the key policy is not JSON")?;
    let statements = policy["Statement"]
        .as_array_mut()
        .context("the key policy has no Statement list")?;
    if statements.iter().any(|statement| statement["Sid"] == SID) {
        return Ok(());
    }
    statements.push(serde_json::json!({
        "Sid": SID,
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    }));
    clients
        .kms
        .put_key_policy()
        .key_id(key_arn)
        .policy_name("default")
        .policy(policy.to_string())
        .send()
        .await
        .aws_context(format!("kms:PutKeyPolicy {key_arn}"))?;
    Ok(())
}
