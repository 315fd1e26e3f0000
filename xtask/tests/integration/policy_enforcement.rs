//! The stack's policies as the emulator enforces them, which is as AWS evaluates them (the
//! fidelity file's "Policies as AWS evaluates them"). Each refusal is asked for beside the
//! same request allowed, and must come from the statement meant to refuse it (its Sid in the
//! emulator's log): a statement removed from the HCL fails its test here.
//!
//! The whole loopback range is ours: a relay whose upstream socket is bound to 127.0.0.2
//! stands in for a client outside the allowed network (127.0.0.1/32 locally).
//!
//! Longer than 400 lines: its tests share one applied stack (the slowest fixture) and the helpers
//! that ask for each request allowed and refused.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use aws_clients::{AwsClients, AwsSettings, CredentialsSource};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Event, NotificationConfiguration, QueueConfiguration,
    ServerSideEncryption,
};
use emulator_fixtures::{
    create_bucket, create_key, emulator_aws_config, emulator_clients, emulator_endpoint,
    emulator_plain_endpoint, emulator_settings, unique_bucket_name,
};

use super::stack::stack;
use xtask::context::{block_on, workspace_root};

/// Where these tests write in the stack's buckets: outside raw/, so no event reaches the
/// work queue, and away from what other tests read.
const PREFIX: &str = "policy-tests";

const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// An HTTPS endpoint on 127.0.0.1 that reaches the emulator's TLS port from `source`: TLS
/// passes through untouched, the emulator sees `source` as aws:SourceIp.
async fn relay_from(source: IpAddr) -> String {
    let upstream: SocketAddr = emulator_endpoint()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("the emulator's endpoint is https://<ip>:<port>");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                if let Ok(mut upstream) = socket.connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    format!("https://127.0.0.1:{port}")
}

/// The operator's S3 (and everything else) through `endpoint`.
async fn operator_at(endpoint: &str) -> AwsClients {
    AwsClients::connect(&AwsSettings {
        s3_endpoint_url: Some(endpoint.to_string()),
        ..emulator_settings()
    })
    .await
    .expect("building AWS clients")
}

/// The stack's service role, assumed as the instance gets it, with S3 through `s3_endpoint`.
async fn service_role_at(s3_endpoint: &str) -> AwsClients {
    let cx = stack().cx();
    let role_arn = stack().outputs.string("service_role_arn").unwrap();
    let config = cx
        .state_dir()
        .join(format!("aws-config-{}", unique_bucket_name("policy-role")));
    xtask::local::identities::write_aws_config_at(&workspace_root(), &config, Some(role_arn))
        .unwrap();
    AwsClients::connect(&AwsSettings {
        credentials: CredentialsSource::ProfileFile {
            config_file: config,
            profile: xtask::local::emulator::SERVICE_PROFILE.into(),
        },
        s3_endpoint_url: Some(s3_endpoint.to_string()),
        ..emulator_settings()
    })
    .await
    .expect("building AWS clients")
}

/// Asserts that `result` is an AccessDenied, and that the emulator logged it for `resource`
/// with the statement `sid` as its reason.
fn refused_by<T, E: std::fmt::Debug>(result: Result<T, E>, sid: &str, resource: &str) {
    let err = format!(
        "{:?}",
        result
            .err()
            .unwrap_or_else(|| panic!("{resource}: allowed, but {sid} should refuse it"))
    );
    assert!(
        err.contains("AccessDenied") || err.contains("403"),
        "{resource}: not an access denial: {err}"
    );
    let log = std::fs::read_to_string(xtask::local::emulator::log_path(&workspace_root())).unwrap();
    assert!(
        log.lines().any(|line| line.starts_with("denied ")
            && line.contains(&format!(" on {resource} "))
            && line.contains(&format!("({sid})"))),
        "{resource}: refused, but the emulator's log names no denial by {sid}"
    );
}

fn outputs(name: &str) -> String {
    stack().outputs.string(name).unwrap().to_string()
}

fn object_arn(bucket: &str, key: &str) -> String {
    format!("arn:aws:s3:::{bucket}/{key}")
}

#[test]
fn object_access_from_outside_the_allowed_network_is_refused_even_to_the_service_role() {
    const SID: &str = "DenyObjectAccessOutsideAllowedNetworks";
    // Applied (or waited for) here: the first use blocks on its own runtime.
    stack();
    block_on(async {
        let outside = relay_from(OUTSIDE).await;
        let inside = service_role_at(&emulator_endpoint()).await;
        let stolen = service_role_at(&outside).await;
        let operator_outside = operator_at(&outside).await;
        for bucket in [outputs("initial_bucket_name"), outputs("final_bucket_name")] {
            let key = format!("{PREFIX}/{}", unique_bucket_name("network"));
            let arn = object_arn(&bucket, &key);
            let bucket_arn = format!("arn:aws:s3:::{bucket}");
            inside
                .s3
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .body(ByteStream::from_static(b"inside"))
                .send()
                .await
                .expect("the role writes from the allowed network");
            inside
                .s3
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .expect("and reads");

            let s3 = &stolen.s3;
            let put = s3.put_object().bucket(&bucket).key(&key);
            refused_by(
                put.body(ByteStream::from_static(b"outside")).send().await,
                SID,
                &arn,
            );
            refused_by(
                s3.get_object().bucket(&bucket).key(&key).send().await,
                SID,
                &arn,
            );
            refused_by(
                s3.head_object().bucket(&bucket).key(&key).send().await,
                SID,
                &arn,
            );
            refused_by(
                s3.delete_object().bucket(&bucket).key(&key).send().await,
                SID,
                &arn,
            );
            refused_by(
                s3.list_objects_v2().bucket(&bucket).send().await,
                SID,
                &bucket_arn,
            );
            refused_by(
                s3.list_multipart_uploads().bucket(&bucket).send().await,
                SID,
                &bucket_arn,
            );
            // HeadBucket is authorized as s3:ListBucket.
            refused_by(
                s3.head_bucket().bucket(&bucket).send().await,
                SID,
                &bucket_arn,
            );

            // The exempt operator empties and inspects the buckets from anywhere.
            let operator = &operator_outside.s3;
            operator
                .list_objects_v2()
                .bucket(&bucket)
                .send()
                .await
                .expect("the operator lists from outside");
            operator
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .expect("the operator deletes from outside");
        }
    });
}

#[test]
fn plain_http_is_refused_by_every_bucket_and_queue() {
    const SID: &str = "DenyInsecureTransport";
    // Applied (or waited for) here: the first use blocks on its own runtime.
    stack();
    block_on(async {
        let tls = emulator_clients().await;
        let plain = AwsClients::connect(&AwsSettings {
            endpoint_url: Some(emulator_plain_endpoint()),
            ..emulator_settings()
        })
        .await
        .expect("building AWS clients");
        for bucket in [
            outputs("initial_bucket_name"),
            outputs("final_bucket_name"),
            outputs("access_log_bucket_name"),
        ] {
            tls.s3
                .list_objects_v2()
                .bucket(&bucket)
                .max_keys(1)
                .send()
                .await
                .expect("over TLS");
            refused_by(
                plain
                    .s3
                    .list_objects_v2()
                    .bucket(&bucket)
                    .max_keys(1)
                    .send()
                    .await,
                SID,
                &format!("arn:aws:s3:::{bucket}"),
            );
        }
        for queue_url in [outputs("queue_url"), outputs("dead_letter_queue_url")] {
            let attributes = |clients: &AwsClients| {
                clients
                    .sqs
                    .get_queue_attributes()
                    .queue_url(&queue_url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            };
            let arn = attributes(&tls).send().await.expect("over TLS");
            let arn = arn
                .attributes()
                .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                .unwrap()
                .clone();
            refused_by(attributes(&plain).send().await, SID, &arn);
        }
    });
}

#[test]
fn objects_are_written_only_with_the_stack_key() {
    // Applied (or waited for) here: the first use blocks on its own runtime.
    stack();
    block_on(async {
        let operator = emulator_clients().await;
        let s3 = &operator.s3;
        let key_arn = outputs("kms_key_arn");
        let other_key = create_key(&operator.kms).await;
        for bucket in [outputs("initial_bucket_name"), outputs("final_bucket_name")] {
            let key = format!("{PREFIX}/{}", unique_bucket_name("sse"));
            let arn = object_arn(&bucket, &key);
            let put = || {
                s3.put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(ByteStream::from_static(b"x"))
            };
            refused_by(
                put()
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(&other_key)
                    .send()
                    .await,
                "DenyIncorrectKmsKey",
                &arn,
            );
            refused_by(
                put()
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .send()
                    .await,
                "DenyKmsWithoutKeyId",
                &arn,
            );
            refused_by(
                put()
                    .server_side_encryption(ServerSideEncryption::Aes256)
                    .send()
                    .await,
                "DenyIncorrectEncryptionHeader",
                &arn,
            );
            let (customer_key, customer_key_md5) = {
                use base64::Engine as _;
                let engine = base64::engine::general_purpose::STANDARD;
                let key = [7u8; 32];
                let md5 = <md5::Md5 as md5::Digest>::digest(key);
                (engine.encode(key), engine.encode(md5))
            };
            refused_by(
                put()
                    .sse_customer_algorithm("AES256")
                    .sse_customer_key(&customer_key)
                    .sse_customer_key_md5(&customer_key_md5)
                    .send()
                    .await,
                "DenyCustomerProvidedKeys",
                &arn,
            );

            let with_key = put()
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(&key_arn)
                .send()
                .await
                .expect("the stack's key, named");
            assert_eq!(with_key.ssekms_key_id(), Some(key_arn.as_str()));
            let by_default = put().send().await.expect("no header: the bucket's default");
            assert_eq!(by_default.ssekms_key_id(), Some(key_arn.as_str()));

            // Multipart: the header on CreateMultipartUpload, none on UploadPart.
            let upload = s3
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(&key_arn)
                .send()
                .await
                .expect("a multipart upload with the stack's key");
            let upload_id = upload.upload_id().unwrap();
            let part = s3
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(1)
                .body(ByteStream::from_static(b"a part"))
                .send()
                .await
                .expect("UploadPart carries no SSE header and is not denied");
            s3.complete_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(
                            CompletedPart::builder()
                                .part_number(1)
                                .e_tag(part.e_tag().unwrap())
                                .build(),
                        )
                        .build(),
                )
                .send()
                .await
                .expect("completed");
            s3.delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
        }
    });
}

/// The queue configuration S3 is asked to accept: `bucket`'s object creations to `queue_arn`.
async fn notify(s3: &aws_sdk_s3::Client, bucket: &str, queue_arn: &str) -> Result<(), String> {
    let queue = QueueConfiguration::builder()
        .queue_arn(queue_arn)
        .events(Event::from("s3:ObjectCreated:*"))
        .build()
        .unwrap();
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(queue)
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|err| format!("{err:?}"))
}

fn invalid_destination(result: Result<(), String>, what: &str) {
    let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
    assert!(
        err.contains("InvalidArgument") && err.contains("Unable to validate"),
        "{what}: {err}"
    );
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName::QueueArn;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueArn)
        .send()
        .await
        .unwrap();
    attributes.attributes().unwrap()[&QueueArn].clone()
}

#[test]
fn only_the_initial_bucket_may_send_events_to_the_work_queue() {
    // Applied (or waited for) here: the first use blocks on its own runtime.
    stack();
    block_on(async {
        let operator = emulator_clients().await;
        let work_queue = queue_arn(&operator.sqs, &outputs("queue_url")).await;
        let initial = outputs("initial_bucket_name");
        let configured = operator
            .s3
            .get_bucket_notification_configuration()
            .bucket(&initial)
            .send()
            .await
            .unwrap();
        assert_eq!(
            configured.queue_configurations()[0].queue_arn(),
            work_queue,
            "Terraform's notification of the initial bucket was accepted"
        );

        let scratch = unique_bucket_name("notify");
        create_bucket(&operator.s3, &scratch).await;
        invalid_destination(
            notify(&operator.s3, &scratch, &work_queue).await,
            "another bucket of the account",
        );
        let outsider = AwsClients::connect(&AwsSettings {
            credentials: CredentialsSource::ProfileFile {
                config_file: emulator_aws_config(),
                profile: xtask::local::aws::OUTSIDER_PROFILE.into(),
            },
            ..emulator_settings()
        })
        .await
        .expect("building AWS clients");
        let foreign = unique_bucket_name("foreign");
        create_bucket(&outsider.s3, &foreign).await;
        invalid_destination(
            notify(&outsider.s3, &foreign, &work_queue).await,
            "another account's bucket",
        );

        // A queue whose policy names the scratch bucket: accepted unencrypted; encrypted with
        // the stack's key, refused, as that key lets S3 encrypt only the work queue's events.
        let allow = |queue_arn: &str| {
            serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": format!("arn:aws:s3:::{scratch}")}},
                }],
            })
            .to_string()
        };
        for encrypted in [false, true] {
            let mut create = operator
                .sqs
                .create_queue()
                .queue_name(unique_bucket_name("notify-queue"));
            if encrypted {
                create = create.attributes(
                    aws_sdk_sqs::types::QueueAttributeName::KmsMasterKeyId,
                    outputs("kms_key_arn"),
                );
            }
            let url = create
                .send()
                .await
                .unwrap()
                .queue_url()
                .unwrap()
                .to_string();
            let arn = queue_arn(&operator.sqs, &url).await;
            operator
                .sqs
                .set_queue_attributes()
                .queue_url(&url)
                .attributes(aws_sdk_sqs::types::QueueAttributeName::Policy, allow(&arn))
                .send()
                .await
                .unwrap();
            let result = notify(&operator.s3, &scratch, &arn).await;
            if encrypted {
                invalid_destination(result, "a queue under the stack's key");
            } else {
                result.expect("a queue whose policy admits the bucket");
            }
            operator
                .sqs
                .delete_queue()
                .queue_url(&url)
                .send()
                .await
                .unwrap();
        }
    });
}

#[test]
fn the_network_statement_cannot_lock_the_operator_out() {
    // Applied (or waited for) here: the first use blocks on its own runtime.
    stack();
    block_on(async {
        let operator = emulator_clients().await;
        let outside = operator_at(&relay_from(OUTSIDE).await).await;
        let initial_arn = format!("arn:aws:s3:::{}", outputs("initial_bucket_name"));
        let policy_of = |bucket: &str, exempt_operator: bool| {
            let mut policy: serde_json::Value =
                serde_json::from_str(&outputs("initial_bucket_policy_json")).unwrap();
            for statement in policy["Statement"].as_array_mut().unwrap() {
                if statement["Sid"] == "DenyObjectAccessOutsideAllowedNetworks" && !exempt_operator
                {
                    let condition = statement["Condition"].as_object_mut().unwrap();
                    assert!(condition.remove("ArnNotEquals").is_some(), "{condition:?}");
                }
            }
            serde_json::from_str::<serde_json::Value>(
                &policy
                    .to_string()
                    .replace(&initial_arn, &format!("arn:aws:s3:::{bucket}")),
            )
            .unwrap()
            .to_string()
        };
        for exempt_operator in [true, false] {
            let scratch = unique_bucket_name("lockout");
            create_bucket(&operator.s3, &scratch).await;
            operator
                .s3
                .put_bucket_policy()
                .bucket(&scratch)
                .policy(policy_of(&scratch, exempt_operator))
                .send()
                .await
                .unwrap();
            let listed = outside.s3.list_objects_v2().bucket(&scratch).send().await;
            if exempt_operator {
                listed.expect("the exempt operator lists from outside the network");
            } else {
                refused_by(
                    listed,
                    "DenyObjectAccessOutsideAllowedNetworks",
                    &format!("arn:aws:s3:::{scratch}"),
                );
            }
            // Either way the bucket's configuration stays the operator's, from anywhere.
            outside
                .s3
                .delete_bucket_policy()
                .bucket(&scratch)
                .send()
                .await
                .expect("the operator lifts the policy from outside");
            outside
                .s3
                .list_objects_v2()
                .bucket(&scratch)
                .send()
                .await
                .expect("and lists again");
            operator
                .s3
                .delete_bucket()
                .bucket(&scratch)
                .send()
                .await
                .unwrap();
        }
    });
}
