//! `cargo xtask bootstrap`: the Terraform state bucket, created with the AWS SDK because
//! Terraform cannot create the bucket that holds its own state.
//!
//! The bucket is private (public access block, ACLs disabled), versioned, encrypted with
//! SSE-KMS, TLS-only and cleans up old state versions. Re-running checks every setting and
//! reports drift; `--fix` repairs it.

use anyhow::{Context as _, Result, bail};
use aws_sdk_s3::Client as S3;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{BucketVersioningStatus, ExpirationStatus, LifecycleRule, ObjectOwnership};
use serde_json::{Value, json};
use service::aws::{AwsClients, AwsResultExt, partition};

use crate::buckets::{self, Desired};
use crate::context::{Context, block_on};

/// Old state versions are kept this long, then expire.
pub const NONCURRENT_STATE_DAYS: i32 = 90;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Repair settings that drifted on an existing state bucket (default: only report them).
    #[arg(long)]
    pub fix: bool,
}

/// What bootstrap found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    UpToDate,
    /// Settings that differ from what they should be; fixed if `fixed` is true.
    Drift {
        settings: Vec<String>,
        fixed: bool,
    },
}

/// The state bucket of an environment and how to reach it.
#[derive(Debug, Clone)]
pub struct StateBucket {
    pub name: String,
    pub account_id: String,
    /// `None` means the AWS-managed `aws/s3` key.
    pub kms_key_arn: Option<String>,
}

pub fn run(cx: &Context, args: Args) -> Result<()> {
    let (bucket, outcome) = block_on(bootstrap(cx, &args))?;
    match outcome {
        Outcome::Created => println!("state bucket {} created", bucket.name),
        Outcome::UpToDate => println!("state bucket {} is up to date", bucket.name),
        Outcome::Drift {
            settings,
            fixed: true,
        } => println!(
            "state bucket {}: fixed drift in {}",
            bucket.name,
            settings.join(", ")
        ),
        Outcome::Drift {
            settings,
            fixed: false,
        } => bail!(
            "state bucket {} has drifted ({}); run `cargo xtask bootstrap --env {} --fix` to repair it",
            bucket.name,
            settings.join(", "),
            cx.env.name
        ),
    }
    if !cx.dry_run {
        println!("backend settings written to {}", backend_file(cx).display());
    }
    Ok(())
}

pub async fn bootstrap(cx: &Context, args: &Args) -> Result<(StateBucket, Outcome)> {
    let clients = AwsClients::connect(&cx.env.aws).await;
    let bucket = resolve_state_bucket(cx, &clients).await?;
    let s3 = &clients.s3;
    cx.step(format!("state bucket {}", bucket.name));

    let exists = bucket_exists(s3, &bucket).await?;
    let outcome = if !exists {
        create_bucket(cx, s3, &bucket).await?;
        for setting in Setting::ALL {
            apply(cx, s3, &bucket, setting).await?;
        }
        Outcome::Created
    } else {
        let mut drifted = Vec::new();
        for setting in Setting::ALL {
            if setting == Setting::Policy && cx.env.is_local() {
                continue;
            }
            let found = inspect(s3, &bucket, setting).await?;
            if found.ok {
                eprintln!("    ok     {}: {}", setting.name(), found.current);
            } else {
                eprintln!(
                    "    DRIFT  {}: {} (want {})",
                    setting.name(),
                    found.current,
                    setting.want(&bucket)
                );
                drifted.push(setting);
            }
        }
        if drifted.is_empty() {
            Outcome::UpToDate
        } else {
            if args.fix {
                for &setting in &drifted {
                    apply(cx, s3, &bucket, setting).await?;
                }
            }
            Outcome::Drift {
                settings: drifted.iter().map(|s| s.name().to_string()).collect(),
                fixed: args.fix,
            }
        }
    };
    if cx.env.is_local() {
        write_local_policy(cx, &bucket)?;
    }
    write_backend_file(cx, &bucket)?;
    Ok((bucket, outcome))
}

/// Account id (STS), bucket name, and the checked KMS key for default encryption.
pub async fn resolve_state_bucket(cx: &Context, clients: &AwsClients) -> Result<StateBucket> {
    let identity = clients
        .sts
        .get_caller_identity()
        .send()
        .await
        .aws_context("sts:GetCallerIdentity (are AWS credentials configured?)")?;
    let account_id = identity
        .account()
        .context("sts:GetCallerIdentity returned no account id")?
        .to_string();
    let kms_key_arn = match &cx.env.state_kms_key_id {
        None => None,
        Some(key_id) => {
            let key = clients
                .kms
                .describe_key()
                .key_id(key_id)
                .send()
                .await
                .aws_context(format!("kms:DescribeKey {key_id}"))?;
            let meta = key
                .key_metadata()
                .with_context(|| format!("kms:DescribeKey {key_id} returned no metadata"))?;
            if !meta.enabled() {
                bail!("KMS key {key_id} for the state bucket is disabled");
            }
            Some(
                meta.arn()
                    .with_context(|| format!("KMS key {key_id} has no ARN"))?
                    .to_string(),
            )
        }
    };
    Ok(StateBucket {
        name: cx.env.state_bucket_name(&account_id),
        account_id,
        kms_key_arn,
    })
}

/// True if the bucket exists and is ours; an error if it exists but is not.
pub async fn bucket_exists(s3: &S3, bucket: &StateBucket) -> Result<bool> {
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
                "state bucket {} exists but belongs to another account; \
                 choose another name with state_bucket in terraform/environments/<env>.xtask.hcl",
                bucket.name
            ),
            _ => Ok(true),
        },
        Err(err) => match err.raw_response().map(|r| r.status().as_u16()) {
            Some(404) => Ok(false),
            Some(403) => bail!(
                "state bucket {} exists but belongs to another account (or these credentials may not use it); \
                 choose another name with state_bucket in terraform/environments/<env>.xtask.hcl",
                bucket.name
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

async fn create_bucket(cx: &Context, s3: &S3, bucket: &StateBucket) -> Result<()> {
    let region = cx.env.region();
    if !cx.aws_call(format!(
        "s3:CreateBucket {} (LocationConstraint {region})",
        bucket.name
    )) {
        return Ok(());
    }
    buckets::create(s3, &bucket.name, region).await.context(
        "choose another state bucket name with state_bucket in terraform/environments/<env>.xtask.hcl",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    PublicAccessBlock,
    Ownership,
    Versioning,
    Encryption,
    Lifecycle,
    Policy,
}

struct Found {
    ok: bool,
    current: String,
}

impl Setting {
    /// Order matters: the public access block goes on before the policy.
    pub const ALL: [Setting; 6] = [
        Setting::PublicAccessBlock,
        Setting::Ownership,
        Setting::Versioning,
        Setting::Encryption,
        Setting::Lifecycle,
        Setting::Policy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Setting::PublicAccessBlock => "public access block",
            Setting::Ownership => "object ownership",
            Setting::Versioning => "versioning",
            Setting::Encryption => "default encryption",
            Setting::Lifecycle => "lifecycle",
            Setting::Policy => "bucket policy",
        }
    }

    fn want(self, bucket: &StateBucket) -> String {
        match self {
            Setting::PublicAccessBlock => "all four blocks on".into(),
            Setting::Ownership => "BucketOwnerEnforced".into(),
            Setting::Versioning => "Enabled".into(),
            Setting::Encryption => format!(
                "aws:kms with {}, bucket key on",
                bucket
                    .kms_key_arn
                    .as_deref()
                    .unwrap_or("the AWS-managed key")
            ),
            Setting::Lifecycle => format!(
                "noncurrent versions expire after {NONCURRENT_STATE_DAYS} days, incomplete uploads aborted after 1 day"
            ),
            Setting::Policy => "deny every request without TLS".into(),
        }
    }
}

/// The state bucket's policy: every request must use TLS.
pub fn tls_only_policy(bucket_name: &str, region: &str) -> Value {
    let arn = format!("arn:{}:s3:::{bucket_name}", partition(region));
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn.clone(), format!("{arn}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}
        }]
    })
}

/// Checks a policy document denies non-TLS access to the whole bucket.
pub fn check_tls_only_policy(policy: &Value, bucket_name: &str, region: &str) -> Result<()> {
    let arn = format!("arn:{}:s3:::{bucket_name}", partition(region));
    let statements = policy["Statement"]
        .as_array()
        .context("policy has no Statement list")?;
    let denies_plain_http = statements.iter().any(|s| {
        s["Effect"] == "Deny"
            && s["Principal"] == "*"
            && s["Action"] == "s3:*"
            && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
            && s["Resource"]
                .as_array()
                .is_some_and(|r| r.contains(&json!(arn)) && r.contains(&json!(format!("{arn}/*"))))
    });
    if !denies_plain_http {
        bail!("policy does not deny non-TLS requests to {arn} and its objects");
    }
    Ok(())
}

async fn inspect(s3: &S3, bucket: &StateBucket, setting: Setting) -> Result<Found> {
    let name = &bucket.name;
    let owner = &bucket.account_id;
    let found = match setting {
        Setting::PublicAccessBlock => {
            let result = s3
                .get_public_access_block()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("NoSuchPublicAccessBlockConfiguration") => Found {
                    ok: false,
                    current: "none".into(),
                },
                other => {
                    let config = other.aws_context(format!("s3:GetPublicAccessBlock {name}"))?;
                    let c = config.public_access_block_configuration();
                    let flags = c.map(|c| {
                        [
                            c.block_public_acls(),
                            c.ignore_public_acls(),
                            c.block_public_policy(),
                            c.restrict_public_buckets(),
                        ]
                    });
                    let on = flags
                        .map(|f| f.iter().filter(|f| **f == Some(true)).count())
                        .unwrap_or(0);
                    Found {
                        ok: on == 4,
                        current: format!("{on} of 4 blocks on"),
                    }
                }
            }
        }
        Setting::Ownership => {
            let result = s3
                .get_bucket_ownership_controls()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("OwnershipControlsNotFoundError") => Found {
                    ok: false,
                    current: "none".into(),
                },
                other => {
                    let controls =
                        other.aws_context(format!("s3:GetBucketOwnershipControls {name}"))?;
                    let ownership = controls
                        .ownership_controls()
                        .and_then(|c| c.rules().first())
                        .map(|r| r.object_ownership().as_str().to_string())
                        .unwrap_or_else(|| "none".into());
                    Found {
                        ok: ownership == ObjectOwnership::BucketOwnerEnforced.as_str(),
                        current: ownership,
                    }
                }
            }
        }
        Setting::Versioning => {
            let versioning = s3
                .get_bucket_versioning()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await
                .aws_context(format!("s3:GetBucketVersioning {name}"))?;
            let status = versioning
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "never enabled".into());
            Found {
                ok: versioning.status() == Some(&BucketVersioningStatus::Enabled),
                current: status,
            }
        }
        Setting::Encryption => {
            let result = s3
                .get_bucket_encryption()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err)
                    if err.code() == Some("ServerSideEncryptionConfigurationNotFoundError") =>
                {
                    Found {
                        ok: false,
                        current: "none".into(),
                    }
                }
                other => {
                    let encryption = other.aws_context(format!("s3:GetBucketEncryption {name}"))?;
                    let rule = encryption
                        .server_side_encryption_configuration()
                        .and_then(|c| c.rules().first());
                    let default = rule.and_then(|r| r.apply_server_side_encryption_by_default());
                    let algorithm = default.map(|d| d.sse_algorithm().as_str().to_string());
                    let key = default
                        .and_then(|d| d.kms_master_key_id())
                        .map(str::to_string);
                    let bucket_key = rule.and_then(|r| r.bucket_key_enabled()) == Some(true);
                    let key_ok = match &bucket.kms_key_arn {
                        Some(want) => key.as_deref() == Some(want),
                        // The AWS-managed key: no key id, or the aws/s3 alias.
                        None => key.as_deref().is_none_or(|k| k.ends_with("alias/aws/s3")),
                    };
                    Found {
                        ok: algorithm.as_deref() == Some("aws:kms") && key_ok && bucket_key,
                        current: format!(
                            "{} with {}, bucket key {}",
                            algorithm.as_deref().unwrap_or("none"),
                            key.as_deref().unwrap_or("the AWS-managed key"),
                            if bucket_key { "on" } else { "off" }
                        ),
                    }
                }
            }
        }
        Setting::Lifecycle => {
            let result = s3
                .get_bucket_lifecycle_configuration()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("NoSuchLifecycleConfiguration") => Found {
                    ok: false,
                    current: "none".into(),
                },
                other => {
                    let lifecycle =
                        other.aws_context(format!("s3:GetBucketLifecycleConfiguration {name}"))?;
                    let enabled = |r: &&LifecycleRule| r.status() == &ExpirationStatus::Enabled;
                    let noncurrent = lifecycle.rules().iter().filter(enabled).any(|r| {
                        r.noncurrent_version_expiration()
                            .and_then(|e| e.noncurrent_days())
                            == Some(NONCURRENT_STATE_DAYS)
                    });
                    let abort = lifecycle.rules().iter().filter(enabled).any(|r| {
                        r.abort_incomplete_multipart_upload()
                            .and_then(|a| a.days_after_initiation())
                            == Some(1)
                    });
                    Found {
                        ok: noncurrent && abort,
                        current: format!(
                            "{} rule(s), noncurrent expiry {}, multipart abort {}",
                            lifecycle.rules().len(),
                            if noncurrent { "ok" } else { "missing" },
                            if abort { "ok" } else { "missing" }
                        ),
                    }
                }
            }
        }
        Setting::Policy => {
            let result = s3
                .get_bucket_policy()
                .bucket(name)
                .expected_bucket_owner(owner)
                .send()
                .await;
            match result {
                Err(err) if err.code() == Some("NoSuchBucketPolicy") => Found {
                    ok: false,
                    current: "none".into(),
                },
                other => {
                    let policy = other.aws_context(format!("s3:GetBucketPolicy {name}"))?;
                    let document: Value = serde_json::from_str(policy.policy().unwrap_or("{}"))
                        .context("bucket policy is not JSON")?;
                    match check_tls_only_policy(&document, name, &bucket_region(s3)) {
                        Ok(()) => Found {
                            ok: true,
                            current: "denies non-TLS requests".into(),
                        },
                        Err(err) => Found {
                            ok: false,
                            current: err.to_string(),
                        },
                    }
                }
            }
        }
    };
    Ok(found)
}

fn bucket_region(s3: &S3) -> String {
    s3.config()
        .region()
        .map(|r| r.as_ref().to_string())
        .unwrap_or_default()
}

async fn apply(cx: &Context, s3: &S3, bucket: &StateBucket, setting: Setting) -> Result<()> {
    let name = &bucket.name;
    if setting == Setting::Policy && cx.env.is_local() {
        // Written and checked as a document by write_local_policy instead.
        return Ok(());
    }
    if !cx.aws_call(format!(
        "{} on {name}: {}",
        setting.name(),
        setting.want(bucket)
    )) {
        return Ok(());
    }
    let policy = tls_only_policy(name, &bucket_region(s3)).to_string();
    let desired = match setting {
        Setting::PublicAccessBlock => Desired::PublicAccessBlock,
        Setting::Ownership => Desired::OwnerEnforced,
        Setting::Versioning => Desired::Versioning,
        Setting::Encryption => Desired::SseKms {
            kms_key_arn: bucket.kms_key_arn.as_deref(),
        },
        Setting::Lifecycle => Desired::Lifecycle {
            noncurrent_days: NONCURRENT_STATE_DAYS,
            current_days: None,
        },
        Setting::Policy => Desired::Policy(&policy),
    };
    buckets::put(s3, name, &bucket.account_id, &desired).await
}

/// In the emulator the TLS-only policy would deny every (plain HTTP) request, and moto
/// treats any conditioned Deny as deny-all: render it, check it, keep it, do not attach it.
fn write_local_policy(cx: &Context, bucket: &StateBucket) -> Result<()> {
    let policy = tls_only_policy(&bucket.name, cx.env.region());
    check_tls_only_policy(&policy, &bucket.name, cx.env.region())?;
    let path = cx.state_dir().join("state-bucket-policy.json");
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

pub fn backend_file(cx: &Context) -> std::path::PathBuf {
    cx.state_dir().join("backend.hcl")
}

/// The S3 backend settings `deploy` passes to `terraform init -backend-config=`.
pub fn backend_settings(cx: &Context, bucket: &StateBucket) -> String {
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

fn write_backend_file(cx: &Context, bucket: &StateBucket) -> Result<()> {
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
