//! Buckets and keys as the Terraform modules make them.

use crate::TEST_REGION;

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
