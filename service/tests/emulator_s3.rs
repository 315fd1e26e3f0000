//! The shared client builder against the real emulator: the calls every later feature relies on.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use service::testing::{TEST_REGION, emulator_clients, unique_bucket_name};

#[tokio::test]
async fn create_put_get_delete_through_the_shared_builder() {
    let clients = emulator_clients().await;
    let bucket = unique_bucket_name("roundtrip");

    clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(TEST_REGION))
                .build(),
        )
        .send()
        .await
        .expect("create bucket with LocationConstraint");

    let location = clients
        .s3
        .get_bucket_location()
        .bucket(&bucket)
        .send()
        .await
        .expect("get bucket location");
    assert_eq!(
        location.location_constraint().map(|c| c.as_str()),
        Some(TEST_REGION)
    );

    let body = b"hello, pipeline".to_vec();
    clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key("dir/hello.txt")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put object");

    let got = clients
        .s3
        .get_object()
        .bucket(&bucket)
        .key("dir/hello.txt")
        .send()
        .await
        .expect("get object")
        .body
        .collect()
        .await
        .expect("read body")
        .into_bytes();
    assert_eq!(got.as_ref(), body.as_slice());

    clients
        .s3
        .delete_object()
        .bucket(&bucket)
        .key("dir/hello.txt")
        .send()
        .await
        .expect("delete object");
    let listed = clients
        .s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list objects");
    assert_eq!(listed.key_count(), Some(0));

    clients
        .s3
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("delete bucket");
}

#[tokio::test]
async fn sts_reports_an_account_through_the_shared_builder() {
    let clients = emulator_clients().await;
    let identity = clients
        .sts
        .get_caller_identity()
        .send()
        .await
        .expect("get caller identity");
    let account = identity.account().expect("account id");
    assert_eq!(account.len(), 12, "account id {account:?} is 12 digits");
    assert!(account.chars().all(|c| c.is_ascii_digit()));
}
