//! `cargo xtask bootstrap`: the buckets that exist before Terraform runs, created with the AWS
//! SDK: the Terraform state bucket (Terraform cannot create the bucket that holds its own
//! state) and the artifact bucket `deploy` uploads the service binary to (the instance
//! downloads it from there before the stack's own buckets are of any use).
//!
//! Both are private (public access block, ACLs disabled), versioned, encrypted with SSE-KMS,
//! TLS-only and clean up old versions. Re-running checks every setting and reports drift;
//! `--fix` repairs it.

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt};
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use std::process::ExitCode;

use crate::buckets::{self, BucketSetting, check_tls_only_policy, tls_only_policy};
use crate::context::{Context, block_on};
use crate::flags;
pub use crate::private_buckets::backend_file;
use crate::private_buckets::{PrivateBucket, resolve_buckets};

/// Old state versions are kept this long, then expire.
pub const NONCURRENT_STATE_DAYS: i32 = 90;

/// What bootstrap found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    UpToDate,
    /// Settings that differ from what they should be; fixed if `fixed` is true.
    Drift {
        settings: Vec<String>,
        fixed: bool,
    },
}

pub fn run(cx: &Context, args: flags::Bootstrap) -> Result<ExitCode> {
    let results = block_on(bootstrap(cx, &args))?;
    let mut drifted = Vec::new();
    for (bucket, outcome) in &results {
        let what = format!("{} bucket {}", bucket.purpose.label(), bucket.name);
        match outcome {
            Outcome::Created => println!("{what} created"),
            Outcome::UpToDate => println!("{what} is up to date"),
            Outcome::Drift {
                settings,
                fixed: true,
            } => println!("{what}: fixed drift in {}", settings.join(", ")),
            Outcome::Drift {
                settings,
                fixed: false,
            } => drifted.push(format!("{what} has drifted ({})", settings.join(", "))),
        }
    }
    if !drifted.is_empty() {
        bail!(
            "{}; run `cargo xtask bootstrap --env {} --fix` to repair it",
            drifted.join("; "),
            cx.env.name
        );
    }
    if !cx.dry_run {
        println!("backend settings written to {}", backend_file(cx).display());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn bootstrap(
    cx: &Context,
    args: &flags::Bootstrap,
) -> Result<Vec<(PrivateBucket, Outcome)>> {
    let clients = AwsClients::connect(&cx.env.aws).await?;
    let buckets = resolve_buckets(cx, &clients).await?;
    let mut results = Vec::new();
    for bucket in [&buckets.state, &buckets.artifacts] {
        let outcome = ensure_bucket(cx, &clients.s3, bucket, args.fix).await?;
        if cx.env.is_local() {
            write_local_policy(cx, bucket)?;
        }
        results.push((bucket.clone(), outcome));
    }
    write_backend_file(cx, &buckets.state)?;
    Ok(results)
}

/// Creates the bucket with every setting, or checks (and with `fix` repairs) an existing one.
async fn ensure_bucket(
    cx: &Context,
    s3: &S3,
    bucket: &PrivateBucket,
    fix: bool,
) -> Result<Outcome> {
    cx.step(format!("{} bucket {}", bucket.purpose.label(), bucket.name));
    let exists = bucket_exists(s3, bucket).await?;
    let region = cx.env.region().to_string();
    let settings = settings(bucket, &region);
    if !exists {
        create_bucket(cx, s3, bucket).await?;
        for setting in &settings {
            apply(cx, s3, bucket, setting).await?;
        }
        return Ok(Outcome::Created);
    }
    let mut drifted = Vec::new();
    for setting in settings.iter().filter(|s| attached_here(cx, s)) {
        let found = buckets::inspect(s3, &bucket.name, &bucket.account_id, setting).await?;
        if found.ok {
            eprintln!("    ok     {}: {}", setting.name(), found.current);
        } else {
            eprintln!(
                "    DRIFT  {}: {} (want {})",
                setting.name(),
                found.current,
                setting.want()
            );
            drifted.push(setting);
        }
    }
    if drifted.is_empty() {
        return Ok(Outcome::UpToDate);
    }
    if fix {
        for setting in &drifted {
            apply(cx, s3, bucket, setting).await?;
        }
    }
    Ok(Outcome::Drift {
        settings: drifted.iter().map(|s| s.name().to_string()).collect(),
        fixed: fix,
    })
}

/// True if the bucket exists and is ours; an error if it exists but is not.
pub async fn bucket_exists(s3: &S3, bucket: &PrivateBucket) -> Result<bool> {
    match s3
        .head_bucket()
        .bucket(&bucket.name)
        .expected_bucket_owner(&bucket.account_id)
        .send()
        .await
    {
        // AWS answers 403 to HeadBucket with a foreign ExpectedBucketOwner; emulators may not
        // check it, so ask the other way round too: is it among the caller's own buckets?
        Ok(_) => match owned_by_caller(s3, &bucket.name).await? {
            Some(false) => bail!(
                "{} bucket {} exists but belongs to another account; \
                 choose another name with {} in terraform/environments/<env>.xtask.hcl",
                bucket.purpose.label(),
                bucket.name,
                bucket.purpose.setting()
            ),
            _ => Ok(true),
        },
        Err(err) => match err.raw_response().map(|r| r.status().as_u16()) {
            Some(404) => Ok(false),
            Some(403) => bail!(
                "{} bucket {} exists but belongs to another account (or these credentials may not use it); \
                 choose another name with {} in terraform/environments/<env>.xtask.hcl",
                bucket.purpose.label(),
                bucket.name,
                bucket.purpose.setting()
            ),
            _ => Err(err).aws_context(format!("s3:HeadBucket {}", bucket.name)),
        },
    }
}

/// Whether the caller's account owns the bucket, from ListBuckets; `None` where the caller
/// may not list buckets (then HeadBucket's ExpectedBucketOwner check has to suffice).
async fn owned_by_caller(s3: &S3, name: &str) -> Result<Option<bool>> {
    let mut token: Option<String> = None;
    loop {
        let page = match s3
            .list_buckets()
            .prefix(name)
            .set_continuation_token(token.clone())
            .send()
            .await
        {
            Ok(page) => page,
            Err(err) if err.code() == Some("AccessDenied") => return Ok(None),
            Err(err) => return Err(err).aws_context("s3:ListBuckets"),
        };
        if page.buckets().iter().any(|b| b.name() == Some(name)) {
            return Ok(Some(true));
        }
        match page.continuation_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_string()),
            _ => return Ok(Some(false)),
        }
    }
}

async fn create_bucket(cx: &Context, s3: &S3, bucket: &PrivateBucket) -> Result<()> {
    let region = cx.env.region();
    if !cx.aws_call(format!(
        "s3:CreateBucket {} (LocationConstraint {region})",
        bucket.name
    )) {
        return Ok(());
    }
    buckets::create(s3, &bucket.name, region)
        .await
        .with_context(|| {
            format!(
                "choose another {} bucket name with {} in terraform/environments/<env>.xtask.hcl",
                bucket.purpose.label(),
                bucket.purpose.setting()
            )
        })
}

/// The settings of both buckets, in the order they are put: the public access block goes on
/// before the policy.
fn settings<'a>(bucket: &'a PrivateBucket, region: &'a str) -> [BucketSetting<'a>; 6] {
    [
        BucketSetting::PublicAccessBlock,
        BucketSetting::OwnerEnforced,
        BucketSetting::Versioning,
        BucketSetting::SseKms {
            kms_key_arn: bucket.kms_key_arn.as_deref(),
        },
        BucketSetting::Lifecycle {
            noncurrent_days: NONCURRENT_STATE_DAYS,
            current_days: None,
        },
        BucketSetting::TlsOnlyPolicy {
            bucket: &bucket.name,
            region,
        },
    ]
}

/// In the emulator the TLS-only policy would deny every (plain HTTP) request, and moto
/// treats any conditioned Deny as deny-all: there it is checked and saved as a document by
/// write_local_policy instead of attached.
fn attached_here(cx: &Context, setting: &BucketSetting<'_>) -> bool {
    !(cx.env.is_local() && matches!(setting, BucketSetting::TlsOnlyPolicy { .. }))
}

async fn apply(
    cx: &Context,
    s3: &S3,
    bucket: &PrivateBucket,
    setting: &BucketSetting<'_>,
) -> Result<()> {
    if !attached_here(cx, setting) {
        return Ok(());
    }
    if !cx.aws_call(format!(
        "{} on {}: {}",
        setting.name(),
        bucket.name,
        setting.want()
    )) {
        return Ok(());
    }
    buckets::put(s3, &bucket.name, &bucket.account_id, setting).await
}

/// In the emulator the TLS-only policy would deny every (plain HTTP) request, and moto
/// treats any conditioned Deny as deny-all: render it, check it, keep it, do not attach it.
fn write_local_policy(cx: &Context, bucket: &PrivateBucket) -> Result<()> {
    let policy = tls_only_policy(&bucket.name, cx.env.region());
    check_tls_only_policy(&policy, &bucket.name, cx.env.region())?;
    let path = cx
        .state_dir()
        .join(format!("{}-bucket-policy.json", bucket.purpose.label()));
    if !cx.dry_run {
        std::fs::create_dir_all(cx.state_dir())?;
        std::fs::write(&path, serde_json::to_string_pretty(&policy)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "    note: local emulator: the TLS-only bucket policy is checked and saved to {}, not attached (plain HTTP; moto ignores policy conditions)",
        path.display()
    );
    Ok(())
}

/// The S3 backend settings `deploy` passes to `terraform init -backend-config=`.
pub fn backend_settings(cx: &Context, bucket: &PrivateBucket) -> String {
    let mut lines = vec![
        format!("bucket       = {:?}", bucket.name),
        format!(
            "key          = {:?}",
            format!("{}/terraform.tfstate", cx.env.name)
        ),
        format!("region       = {:?}", cx.env.region()),
        // S3-native locking (Terraform >= 1.10): a .tflock object next to the state.
        "use_lockfile = true".to_string(),
    ];
    // Without kms_key_id, `encrypt = true` would send SSE-S3 (AES256) and override the
    // bucket's SSE-KMS default, so it is only set together with the key.
    if let Some(key) = &bucket.kms_key_arn {
        lines.push("encrypt      = true".into());
        lines.push(format!("kms_key_id   = {key:?}"));
    }
    if let Some(endpoint) = &cx.env.aws.endpoint_url {
        lines.push(format!(
            "endpoints    = {{ s3 = {endpoint:?}, sts = {endpoint:?}, iam = {endpoint:?} }}"
        ));
        lines.push("use_path_style              = true".into());
        lines.push("skip_credentials_validation = true".into());
        lines.push("skip_requesting_account_id  = true".into());
        lines.push("skip_region_validation      = true".into());
        lines.push("skip_metadata_api_check     = true".into());
    }
    lines.join("\n") + "\n"
}

fn write_backend_file(cx: &Context, bucket: &PrivateBucket) -> Result<()> {
    let path = backend_file(cx);
    let text = backend_settings(cx, bucket);
    if cx.dry_run {
        eprintln!("    (dry run) would write {}:\n{text}", path.display());
        return Ok(());
    }
    std::fs::create_dir_all(cx.state_dir())
        .with_context(|| format!("creating {}", cx.state_dir().display()))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
