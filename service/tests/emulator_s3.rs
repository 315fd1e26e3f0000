//! The shared client builder against the real emulator: the calls every later feature relies on.

use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
    CreateBucketConfiguration,
};
use emulator_fixtures::{TEST_REGION, emulator_clients, unique_bucket_name};

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

/// Fidelity (xtask/src/moto_server_fidelity.py): an object's body is its bytes whatever its
/// Content-Type. moto stored an empty object for a form-typed PutObject or UploadPart.
#[tokio::test]
async fn object_bodies_are_stored_whatever_their_content_type() {
    let clients = emulator_clients().await;
    let bucket = unique_bucket_name("typed");
    emulator_fixtures::create_bucket(&clients.s3, &bucket).await;
    let body = |seed: u8| -> Vec<u8> {
        let mut body = b"key=a&file=b&\r\n--x\r\n".to_vec();
        body.extend((0..6 * 1024 * 1024).map(|i: u32| (i as u8).wrapping_mul(seed)));
        body
    };
    for (i, content_type) in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("put/{i}");
        clients
            .s3
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .content_type(content_type)
            .body(ByteStream::from(body(3)))
            .send()
            .await
            .unwrap();
        assert!(
            read(&clients, &bucket, &key).await == body(3),
            "PutObject as {content_type}"
        );

        let key = format!("parts/{i}");
        let upload = clients
            .s3
            .create_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        let upload_id = upload.upload_id().unwrap();
        let mut parts = Vec::new();
        for (number, seed) in [(1, 5u8), (2, 7)] {
            let typed = content_type.to_string();
            let part = clients
                .s3
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body(seed)))
                .customize()
                .mutate_request(move |request| {
                    request.headers_mut().insert("content-type", typed.clone());
                })
                .send()
                .await
                .unwrap();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
        }
        clients
            .s3
            .complete_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut both = body(5);
        both.extend(body(7));
        assert!(
            read(&clients, &bucket, &key).await == both,
            "UploadPart as {content_type}"
        );
    }
}

/// Fidelity: a checksum sent with a body is verified (BadDigest, nothing stored, when it
/// differs), one the emulator cannot compute is refused, and a multipart upload's SHA-256 is
/// composite, answered by CompleteMultipartUpload. moto stored any body and echoed the value.
#[tokio::test]
async fn object_checksums_are_verified_and_multipart_ones_are_composite() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let sha256 = |data: &[u8]| sha2::Sha256::digest(data).to_vec();
    let clients = emulator_clients().await;
    let bucket = unique_bucket_name("checksums");
    emulator_fixtures::create_bucket(&clients.s3, &bucket).await;
    let put = |key: &'static str, body: &'static [u8], checksum: String| {
        clients
            .s3
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from_static(body))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .send()
    };
    let err = put("bad", b"body", b64(&sha256(b"other")))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_service_error().and_then(|e| e.code()),
        Some("BadDigest"),
        "{err:?}"
    );
    assert_eq!(
        clients
            .s3
            .list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .unwrap()
            .key_count(),
        Some(0)
    );
    let good = put("good", b"body", b64(&sha256(b"body"))).await.unwrap();
    assert_eq!(good.checksum_sha256(), Some(b64(&sha256(b"body")).as_str()));
    let unverifiable = clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key("crc32c")
        .body(ByteStream::from_static(b"body"))
        .checksum_crc32_c("AAAAAA==")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        unverifiable.as_service_error().and_then(|e| e.code()),
        Some("NotImplemented"),
        "{unverifiable:?}"
    );

    let upload = clients
        .s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("parts")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let part_of = |byte: u8| vec![byte; 5 * 1024 * 1024];
    let send_part = |number: i32, body: Vec<u8>, checksum: String| {
        clients
            .s3
            .upload_part()
            .bucket(&bucket)
            .key("parts")
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .body(ByteStream::from(body))
            .send()
    };
    let err = send_part(1, part_of(1), b64(&sha256(&part_of(2))))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_service_error().and_then(|e| e.code()),
        Some("BadDigest"),
        "{err:?}"
    );
    let mut parts = Vec::new();
    let mut digests = Vec::new();
    for (number, byte) in [(1, 1u8), (2, 2)] {
        let checksum = b64(&sha256(&part_of(byte)));
        let part = send_part(number, part_of(byte), checksum.clone())
            .await
            .unwrap();
        assert_eq!(part.checksum_sha256(), Some(checksum.as_str()));
        digests.extend(sha256(&part_of(byte)));
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_string))
                .checksum_sha256(checksum)
                .build(),
        );
    }
    let completed = clients
        .s3
        .complete_multipart_upload()
        .bucket(&bucket)
        .key("parts")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        completed.checksum_sha256(),
        Some(format!("{}-2", b64(&sha256(&digests))).as_str())
    );
}

async fn read(clients: &aws_clients::AwsClients, bucket: &str, key: &str) -> Vec<u8> {
    clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .to_vec()
}

/// The fidelity file's correction: moto answered 2010-11-10 for every upload, so a rule on
/// their age (the reconciler's abort of abandoned uploads) saw each one as ancient.
#[tokio::test]
async fn multipart_uploads_report_when_they_were_initiated() {
    let clients = emulator_clients().await;
    let bucket = unique_bucket_name("initiated");
    emulator_fixtures::create_bucket(&clients.s3, &bucket).await;
    let before = std::time::SystemTime::now();
    let upload = clients
        .s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("a")
        .send()
        .await
        .expect("create multipart upload");
    let listed = clients
        .s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("list multipart uploads");
    let initiated = listed.uploads()[0].initiated().expect("Initiated");
    let initiated = std::time::UNIX_EPOCH + std::time::Duration::from_secs(initiated.secs() as u64);
    let slack = std::time::Duration::from_secs(5);
    assert!(
        initiated + slack >= before && initiated <= std::time::SystemTime::now() + slack,
        "initiated {initiated:?}, created at {before:?}"
    );
    clients
        .s3
        .abort_multipart_upload()
        .bucket(&bucket)
        .key("a")
        .upload_id(upload.upload_id().unwrap())
        .send()
        .await
        .unwrap();
}
