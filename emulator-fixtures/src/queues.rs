//! The processing queue as Terraform's `queue` module makes it, and the initial bucket's
//! notification to it with the grants S3 needs.

use aws_clients::AwsClients;

/// The prefix of raw objects in the initial bucket, whose creations the queue hears of: the
/// service's key layout (`names::RAW_PREFIX`, checked equal by the service's tests) and the
/// queue module's `filter_prefix` default.
pub const RAW_PREFIX: &str = "raw/";

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

/// The two queues of [`create_work_queue`], without the notification (the benchmark's fleet
/// case notifies them of its own bucket).
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
        .value(RAW_PREFIX)
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
