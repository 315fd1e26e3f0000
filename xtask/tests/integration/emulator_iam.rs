//! The emulator enforces IAM, and its corrections (xtask/src/moto_server_fidelity.py) make it
//! authorize as AWS does. Each correction has a test here that fails without it.
//!
//! Longer than 400 lines: each correction in the fidelity file has its test here, side by side
//! with the others on the same identities.

use aws_clients::{AwsClients, AwsSettings, CredentialsSource};
use aws_sdk_s3::primitives::ByteStream;
use emulator_fixtures::{
    configure_like_terraform, create_bucket, create_key, emulator_aws_config, emulator_clients,
    emulator_endpoint, emulator_settings, unique_bucket_name,
};

use super::temp_dir;
use xtask::context::block_on;

const EC2_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// A role that trusts `service` and may do `actions` on `resources`; its name and ARN.
async fn role(
    operator: &AwsClients,
    service: &str,
    actions: &[&str],
    resources: &[String],
) -> String {
    let iam = aws_sdk_iam::Client::new(&operator.sdk_config);
    let name = unique_bucket_name("role");
    let trust = EC2_TRUST.replace("ec2.amazonaws.com", service);
    let created = iam
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust)
        // Spaces and an apostrophe: a form body that Python would encode differently.
        .description("the test's role, with spaces & an apostrophe's worth of escaping")
        .send()
        .await
        .unwrap();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resources}],
    });
    iam.put_role_policy()
        .role_name(&name)
        .policy_name("grants")
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap();
    created.role().unwrap().arn().to_string()
}

/// Clients holding `role_arn`'s credentials, assumed through the operator's profile exactly as
/// `up` gives them to the local service.
async fn as_role(role_arn: &str) -> AwsClients {
    let operator_profiles = std::fs::read_to_string(emulator_aws_config()).unwrap();
    let config = temp_dir("profiles").join("aws-config");
    std::fs::write(
        &config,
        format!(
            "{operator_profiles}\n[profile role]\nrole_arn = {role_arn}\nsource_profile = operator\nrole_session_name = test\nendpoint_url = {}\n",
            emulator_endpoint()
        ),
    )
    .unwrap();
    AwsClients::connect(&AwsSettings {
        credentials: CredentialsSource::ProfileFile {
            config_file: config,
            profile: "role".into(),
        },
        ..emulator_settings()
    })
    .await
    .expect("building AWS clients")
}

fn denied<T, E: std::fmt::Debug>(result: Result<T, E>, what: &str) {
    let err = format!(
        "{:?}",
        result.err().unwrap_or_else(|| panic!("{what} was allowed"))
    );
    assert!(
        err.contains("AccessDenied") || err.contains("403"),
        "{what}: not an access denial: {err}"
    );
}

#[test]
fn unsigned_and_unknown_requests_are_refused() {
    block_on(async {
        let unsigned = reqwest::get(format!("{}/", emulator_fixtures::emulator_plain_endpoint()))
            .await
            .unwrap();
        assert_eq!(unsigned.status().as_u16(), 403, "unsigned ListBuckets");
        let unknown = AwsClients::connect(&AwsSettings::emulator(
            emulator_endpoint(),
            emulator_fixtures::TEST_REGION,
            Some(emulator_fixtures::emulator_ca_bundle()),
        ))
        .await
        .expect("building AWS clients");
        let err = format!("{:?}", unknown.s3.list_buckets().send().await.unwrap_err());
        assert!(
            err.contains("InvalidAccessKeyId") || err.contains("403"),
            "{err}"
        );
    });
}

#[test]
fn a_role_gets_what_it_is_granted_and_nothing_else() {
    block_on(async {
        let operator = emulator_clients().await;
        let key = create_key(&operator.kms).await;
        let other_key = create_key(&operator.kms).await;
        let (ours, theirs) = (unique_bucket_name("ours"), unique_bucket_name("theirs"));
        for bucket in [&ours, &theirs] {
            create_bucket(&operator.s3, bucket).await;
            configure_like_terraform(&operator.s3, bucket, &key).await;
        }
        let arn = role(
            &operator,
            "ec2.amazonaws.com",
            &[
                "s3:GetObject",
                "s3:GetObjectVersion",
                "s3:PutObject",
                "s3:ListBucket",
                "kms:DescribeKey",
                "kms:GenerateDataKey",
                "kms:Decrypt",
            ],
            &[
                format!("arn:aws:s3:::{ours}"),
                format!("arn:aws:s3:::{ours}/*"),
                key.clone(),
            ],
        )
        .await;
        let service = as_role(&arn).await;

        let identity = service.sts.get_caller_identity().send().await.unwrap();
        let operator_identity = operator.sts.get_caller_identity().send().await.unwrap();
        assert!(
            identity.arn().unwrap().contains(":assumed-role/"),
            "{identity:?}"
        );
        assert_ne!(identity.arn(), operator_identity.arn(), "not the operator");

        let put = service
            .s3
            .put_object()
            .bucket(&ours)
            .key("a")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap();
        let version = put.version_id().unwrap();
        service.s3.head_bucket().bucket(&ours).send().await.unwrap();
        let got = service
            .s3
            .get_object()
            .bucket(&ours)
            .key("a")
            .version_id(version);
        got.send().await.unwrap();
        service
            .kms
            .describe_key()
            .key_id(&key)
            .send()
            .await
            .unwrap();

        denied(
            service
                .s3
                .put_object()
                .bucket(&theirs)
                .key("a")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
            "PutObject outside the stack",
        );
        denied(
            service.s3.head_bucket().bucket(&theirs).send().await,
            "HeadBucket outside the stack",
        );
        denied(
            service
                .s3
                .delete_object()
                .bucket(&ours)
                .key("a")
                .version_id(version)
                .send()
                .await,
            "s3:DeleteObjectVersion",
        );
        denied(
            service.kms.describe_key().key_id(&other_key).send().await,
            "kms:DescribeKey on another key",
        );
    });
}

/// HeadBucket is s3:ListBucket, and a HEAD of a version is s3:GetObjectVersion.
#[test]
fn heads_are_authorized_as_on_aws() {
    block_on(async {
        let operator = emulator_clients().await;
        let bucket = unique_bucket_name("heads");
        create_bucket(&operator.s3, &bucket).await;
        let key = create_key(&operator.kms).await;
        configure_like_terraform(&operator.s3, &bucket, &key).await;
        let put = operator
            .s3
            .put_object()
            .bucket(&bucket)
            .key("dir/a b+c")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap();
        let version = put.version_id().unwrap().to_string();
        let objects = format!("arn:aws:s3:::{bucket}/*");
        let reader = as_role(
            &role(
                &operator,
                "ec2.amazonaws.com",
                &["s3:GetObject"],
                &[objects],
            )
            .await,
        )
        .await;
        denied(
            reader.s3.head_bucket().bucket(&bucket).send().await,
            "HeadBucket without s3:ListBucket",
        );
        reader
            .s3
            .head_object()
            .bucket(&bucket)
            .key("dir/a b+c")
            .send()
            .await
            .unwrap();
        denied(
            reader
                .s3
                .head_object()
                .bucket(&bucket)
                .key("dir/a b+c")
                .version_id(&version)
                .send()
                .await,
            "HEAD of a version without s3:GetObjectVersion",
        );
        let lister = as_role(
            &role(
                &operator,
                "ec2.amazonaws.com",
                &["s3:ListBucket"],
                &[format!("arn:aws:s3:::{bucket}")],
            )
            .await,
        )
        .await;
        lister
            .s3
            .head_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        // A prefix and a key that must be percent-encoded in the signed request.
        let listed = lister
            .s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("dir/a b+")
            .send()
            .await
            .unwrap();
        assert_eq!(listed.key_count(), Some(1));
    });
}

/// The operator stands in for the EC2 service, and only for roles that trust EC2; a role that
/// trusts another service cannot be assumed (and asking does not crash the emulator).
#[test]
fn only_roles_that_trust_ec2_are_assumed_for_the_local_instance() {
    block_on(async {
        let operator = emulator_clients().await;
        let lambda = role(
            &operator,
            "lambda.amazonaws.com",
            &["s3:ListAllMyBuckets"],
            &["*".into()],
        )
        .await;
        let err = operator
            .sts
            .assume_role()
            .role_arn(&lambda)
            .role_session_name("test")
            .send()
            .await
            .unwrap_err();
        let err = format!("{err:?}");
        assert!(err.contains("AccessDenied"), "{err}");
        let ec2 = role(
            &operator,
            "ec2.amazonaws.com",
            &["s3:ListAllMyBuckets"],
            &["*".into()],
        )
        .await;
        operator
            .sts
            .assume_role()
            .role_arn(&ec2)
            .role_session_name("test")
            .send()
            .await
            .unwrap();
    });
}

/// The stack's own role, as Terraform makes it from the real policy documents, holds
/// exactly what the service does: every call the service makes is allowed, and a bucket or
/// key outside the stack, version deletes and kms:Encrypt are refused. It reads its own
/// build from the artifact bucket, and no other object there.
#[test]
fn the_stack_role_allows_the_service_calls_and_refuses_the_rest() {
    let stack = super::stack::stack();
    let outputs = &stack.outputs;
    let artifact: xtask::artifact::Artifact = serde_json::from_str(
        &std::fs::read_to_string(xtask::artifact::saved_path(&stack.cx())).unwrap(),
    )
    .unwrap();
    let role_arn = outputs.string("service_role_arn").unwrap().to_string();
    let key = outputs.string("kms_key_arn").unwrap().to_string();
    let initial = outputs.string("initial_bucket_name").unwrap().to_string();
    let final_ = outputs.string("final_bucket_name").unwrap().to_string();
    block_on(async {
        let operator = emulator_clients().await;
        let outside = unique_bucket_name("outside");
        create_bucket(&operator.s3, &outside).await;
        let other_key = create_key(&operator.kms).await;
        let service = as_role(&role_arn).await;
        let s3 = &service.s3;

        for bucket in [&initial, &final_] {
            s3.head_bucket().bucket(bucket).send().await.unwrap();
            s3.list_objects_v2()
                .bucket(bucket)
                .prefix("raw/")
                .send()
                .await
                .unwrap();
        }
        let put = s3
            .put_object()
            .bucket(&initial)
            .key("raw/a")
            .body(ByteStream::from_static(b"x"))
            .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
            .ssekms_key_id(&key)
            .send()
            .await
            .unwrap();
        let version = put.version_id().unwrap().to_string();
        let read = s3
            .get_object()
            .bucket(&initial)
            .key("raw/a")
            .version_id(&version);
        read.send().await.unwrap();
        let upload = s3
            .create_multipart_upload()
            .bucket(&final_)
            .key("processed/a")
            .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
            .ssekms_key_id(&key)
            .send()
            .await
            .unwrap();
        s3.abort_multipart_upload()
            .bucket(&final_)
            .key("processed/a")
            .upload_id(upload.upload_id().unwrap())
            .send()
            .await
            .unwrap();
        service
            .kms
            .describe_key()
            .key_id(&key)
            .send()
            .await
            .unwrap();

        denied(
            s3.put_object()
                .bucket(&outside)
                .key("a")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
            "PutObject outside the stack",
        );
        denied(
            s3.delete_object()
                .bucket(&initial)
                .key("raw/a")
                .version_id(&version)
                .send()
                .await,
            "s3:DeleteObjectVersion",
        );
        denied(
            service.kms.describe_key().key_id(&other_key).send().await,
            "kms:DescribeKey on another key",
        );
        denied(
            service
                .kms
                .encrypt()
                .key_id(&key)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
                .send()
                .await,
            "kms:Encrypt (the service never encrypts with KMS itself)",
        );
        s3.delete_object()
            .bucket(&initial)
            .key("raw/a")
            .send()
            .await
            .unwrap();

        s3.get_object()
            .bucket(&artifact.bucket)
            .key(&artifact.key)
            .send()
            .await
            .expect("the instance role reads the deployed build");
        let other_build = format!("service/{}/filepipe-service", "1".repeat(64));
        operator
            .s3
            .put_object()
            .bucket(&artifact.bucket)
            .key(&other_build)
            .body(ByteStream::from_static(b"another build"))
            .send()
            .await
            .unwrap();
        denied(
            s3.get_object()
                .bucket(&artifact.bucket)
                .key(&other_build)
                .send()
                .await,
            "another build in the artifact bucket",
        );
        denied(
            s3.put_object()
                .bucket(&artifact.bucket)
                .key(&artifact.key)
                .body(ByteStream::from_static(b"tampered"))
                .send()
                .await,
            "overwriting the deployed build",
        );

        // The work queue: what the consumer does, and nothing on the dead-letter queue.
        let work = outputs.string("queue_url").unwrap();
        let dead = outputs.string("dead_letter_queue_url").unwrap();
        let sqs = &service.sqs;
        sqs.send_message()
            .queue_url(work)
            .message_body("{}")
            .send()
            .await
            .expect("the scan's own messages");
        let received = sqs
            .receive_message()
            .queue_url(work)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for message in received.messages() {
            let receipt = message.receipt_handle().unwrap();
            sqs.change_message_visibility()
                .queue_url(work)
                .receipt_handle(receipt)
                .visibility_timeout(30)
                .send()
                .await
                .expect("keep a message hidden");
            sqs.delete_message()
                .queue_url(work)
                .receipt_handle(receipt)
                .send()
                .await
                .expect("delete a settled message");
        }
        sqs.get_queue_attributes()
            .queue_url(work)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .expect("the queue's depth");
        denied(
            sqs.receive_message().queue_url(dead).send().await,
            "sqs:ReceiveMessage on the dead-letter queue",
        );
        denied(
            sqs.purge_queue().queue_url(work).send().await,
            "sqs:PurgeQueue",
        );
    });
}

/// SSM authorizes against the parameter's ARN, as AWS does (moto_server_fidelity.py): a role
/// granted one parameter reads and writes that one, and no other.
#[test]
fn ssm_parameters_are_authorized_by_their_arn() {
    block_on(async {
        let operator = emulator_clients().await;
        let ssm = aws_sdk_ssm::Client::new(&operator.sdk_config);
        let (mine, other) = (
            format!("/{}/granted", unique_bucket_name("ssm")),
            format!("/{}/other", unique_bucket_name("ssm")),
        );
        for name in [&mine, &other] {
            ssm.put_parameter()
                .name(name)
                .value("value")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send()
                .await
                .unwrap();
        }
        let arn = |name: &str| format!("arn:aws:ssm:eu-west-1:123456789012:parameter{name}");
        let role_arn = role(
            &operator,
            "ec2.amazonaws.com",
            &["ssm:GetParameter", "ssm:PutParameter"],
            &[arn(&mine)],
        )
        .await;
        let service = as_role(&role_arn).await;
        let ssm = aws_sdk_ssm::Client::new(&service.sdk_config);
        ssm.get_parameter()
            .name(&mine)
            .send()
            .await
            .expect("granted");
        ssm.put_parameter()
            .name(&mine)
            .value("new")
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("granted");
        denied(
            ssm.get_parameter().name(&other).send().await,
            "ssm:GetParameter on another parameter",
        );
        denied(
            ssm.put_parameter()
                .name(&other)
                .value("x")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .overwrite(true)
                .send()
                .await,
            "ssm:PutParameter on another parameter",
        );
    });
}

/// A blob that names no key of the account is corrupt, and KMS says so; moto authorized it
/// against "*" and answered AccessDenied, which a caller takes for a deployment error.
#[test]
fn a_corrupted_ciphertext_is_invalid_not_denied() {
    use aws_sdk_kms::primitives::Blob;
    block_on(async {
        let operator = emulator_clients().await;
        let key = create_key(&operator.kms).await;
        let sealed = operator
            .kms
            .encrypt()
            .key_id(&key)
            .plaintext(Blob::new(b"secret".to_vec()))
            .send()
            .await
            .unwrap();
        let blob = sealed.ciphertext_blob().unwrap().as_ref().to_vec();
        let opened = operator
            .kms
            .decrypt()
            .ciphertext_blob(Blob::new(blob.clone()))
            .send()
            .await
            .expect("the blob as KMS made it");
        assert_eq!(opened.plaintext().unwrap().as_ref(), b"secret");

        let corrupted: Vec<u8> = blob.iter().map(|byte| byte ^ 0x5a).collect();
        let err = operator
            .kms
            .decrypt()
            .ciphertext_blob(Blob::new(corrupted))
            .send()
            .await
            .unwrap_err();
        let err = format!("{:?}", err.into_service_error());
        assert!(err.contains("InvalidCiphertextException"), "{err}");
    });
}

/// S3 uses an SSE-KMS object's key as its requester: a write needs kms:GenerateDataKey and a
/// read kms:Decrypt (a HEAD neither), allowed by the caller's policy where the key policy
/// delegates to the account, or by the key policy itself. moto never asked the key.
#[test]
fn sse_kms_objects_need_the_key_through_s3() {
    block_on(async {
        let operator = emulator_clients().await;
        let key = create_key(&operator.kms).await;
        let bucket = unique_bucket_name("sse-kms");
        create_bucket(&operator.s3, &bucket).await;
        configure_like_terraform(&operator.s3, &bucket, &key).await;
        let s3_grants = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"];
        let objects = vec![
            format!("arn:aws:s3:::{bucket}"),
            format!("arn:aws:s3:::{bucket}/*"),
        ];
        let put = |clients: &AwsClients, name: &str| {
            clients
                .s3
                .put_object()
                .bucket(&bucket)
                .key(name)
                .body(ByteStream::from_static(b"x"))
        };
        put(&operator, "a").send().await.unwrap();

        let s3_only =
            as_role(&role(&operator, "ec2.amazonaws.com", &s3_grants, &objects).await).await;
        denied(
            put(&s3_only, "b").send().await,
            "PutObject without kms:GenerateDataKey",
        );
        denied(
            s3_only
                .s3
                .get_object()
                .bucket(&bucket)
                .key("a")
                .send()
                .await,
            "GetObject without kms:Decrypt",
        );
        s3_only
            .s3
            .head_object()
            .bucket(&bucket)
            .key("a")
            .send()
            .await
            .expect("HeadObject needs s3:GetObject alone");

        let with_key = {
            let mut grants = s3_grants.to_vec();
            grants.extend(["kms:GenerateDataKey", "kms:Decrypt"]);
            let mut resources = objects.clone();
            resources.push(key.clone());
            as_role(&role(&operator, "ec2.amazonaws.com", &grants, &resources).await).await
        };
        put(&with_key, "b")
            .send()
            .await
            .expect("with the key's grants");
        with_key
            .s3
            .get_object()
            .bucket(&bucket)
            .key("a")
            .send()
            .await
            .expect("with the key's grants");

        // A key policy that does not delegate to the account: the role's own grants on that
        // key are not enough.
        let closed_policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": xtask::local::emulator::operator_arn()},
                "Action": "kms:*",
                "Resource": "*",
            }],
        });
        let closed_key = operator
            .kms
            .create_key()
            .policy(closed_policy.to_string())
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .to_string();
        let closed_bucket = unique_bucket_name("sse-closed");
        create_bucket(&operator.s3, &closed_bucket).await;
        configure_like_terraform(&operator.s3, &closed_bucket, &closed_key).await;
        let granted_on_closed = as_role(
            &role(
                &operator,
                "ec2.amazonaws.com",
                &["s3:PutObject", "kms:GenerateDataKey"],
                &[
                    format!("arn:aws:s3:::{closed_bucket}/*"),
                    closed_key.clone(),
                ],
            )
            .await,
        )
        .await;
        let write = granted_on_closed
            .s3
            .put_object()
            .bucket(&closed_bucket)
            .key("a")
            .body(ByteStream::from_static(b"x"));
        denied(
            write.send().await,
            "a key policy that admits only the operator",
        );
        operator
            .s3
            .put_object()
            .bucket(&closed_bucket)
            .key("a")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .expect("the operator, whom that key policy names");
    });
}
