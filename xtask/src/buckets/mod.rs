//! Bucket operations shared by bootstrap (state and artifact buckets), destroy and the tests:
//! create a bucket, put each protective setting and read it back, and empty a bucket.

mod contents;
mod inspect;
mod put;
mod settings;

pub use contents::{count_keys, empty_bucket, empty_unversioned, list_keys, remove_unversioned};
pub use inspect::inspect;
pub use put::{create, put};
pub use settings::{BucketSetting, check_tls_only_policy, tls_only_policy};
