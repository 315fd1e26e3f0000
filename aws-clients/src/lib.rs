//! The one place AWS clients are built, for the service and for the xtask alike.
//!
//! Real AWS uses the standard credential chain (environment, profile, IMDS on EC2).
//! An explicit endpoint means an emulator or an S3-compatible server: those speak
//! path-style URLs and do not implement the flexible-checksum defaults of aws-sdk-s3 ≥ 1.69,
//! so checksums are only sent when an operation requires them.

mod clients;
mod errors;
mod settings;

pub use clients::{AwsClients, S3_ATTEMPT_TIMEOUT, S3_COPY_TIMEOUT};
pub use errors::{
    AwsCallError, AwsResultExt, Failure, aws_call, aws_failure, classify_service_error,
};
pub use settings::{AwsSettings, CredentialsSource, partition, subprocess_env};
