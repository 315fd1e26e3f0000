//! `cargo xtask destroy`: empty the data and access-log buckets (if asked), terraform destroy, and optionally
//! delete the state bucket last. Every step tolerates what an earlier, interrupted run already
//! removed, so it is safe to run again.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Result, bail};
use aws_clients::{AwsClients, AwsResultExt};
use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::buckets::empty_bucket;
use crate::context::{Context, block_on, confirm};
use crate::flags;
use crate::outputs::{Outputs, outputs_file};
use crate::private_buckets;
use crate::terraform::{self, Output, Terraform};
use crate::user_data;

pub fn run(cx: &Context, args: flags::Destroy) -> Result<ExitCode> {
    destroy(cx, &args)?;
    if !cx.dry_run {
        println!("environment {} destroyed", cx.env.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn destroy(cx: &Context, args: &flags::Destroy) -> Result<()> {
    if !args.yes && !cx.dry_run {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to destroy without --yes: standard input is not a terminal");
        }
        confirm(
            &format!(
                "This destroys environment `{0}`{1}. Type the environment name to go on: ",
                cx.env.name,
                if args.purge_state {
                    " and its state and artifact buckets"
                } else {
                    ""
                }
            ),
            &cx.env.name,
        )?;
    }
    let root_module = terraform::root_module(cx, args.root_module.as_deref());
    let tf = Terraform::find(cx, args.terraform.as_deref(), &root_module)?;
    let backend = private_buckets::backend_file(cx);
    if !backend.is_file() {
        bail!(
            "{} does not exist: nothing was bootstrapped for `{}` (or run `cargo xtask bootstrap --env {}` to recreate the backend settings)",
            backend.display(),
            cx.env.name,
            cx.env.name
        );
    }
    let clients = block_on(AwsClients::connect(&cx.env.aws))?;

    let outputs = Outputs::load(&outputs_file(cx));
    if args.empty_buckets {
        match outputs {
            Ok(outputs) => {
                // The log bucket last: emptying the others writes access-log records into it.
                let buckets = [
                    Some(outputs.string("initial_bucket_name")?),
                    Some(outputs.string("final_bucket_name")?),
                    outputs.optional_string("access_log_bucket_name"),
                ];
                for bucket in buckets.into_iter().flatten() {
                    cx.step(format!("empty bucket {bucket}"));
                    if cx.aws_call(format!(
                        "s3:ListObjectVersions + s3:DeleteObjects on {bucket}"
                    )) {
                        let deleted = block_on(empty_bucket(&clients.s3, bucket))?;
                        eprintln!("    deleted {deleted} object versions and delete markers");
                    }
                }
            }
            Err(err) => eprintln!(
                "    note: not emptying buckets: {err:#} (already destroyed, or never deployed)"
            ),
        }
    }

    terraform::write_local_override(cx, &root_module)?;
    let var_files = terraform::var_files(cx, crate::artifact::for_evaluation(cx).as_ref())?;
    let mut destroy_args = vec![
        "destroy".to_string(),
        "-input=false".into(),
        "-auto-approve".into(),
    ];
    destroy_args.extend(
        var_files
            .iter()
            .map(|f| format!("-var-file={}", f.display())),
    );
    if cx.dry_run {
        eprintln!("    (dry run) {}", tf.display(&destroy_args));
    } else {
        terraform::init(cx, &tf, &backend, terraform::BackendChange::Refuse)?;
        cx.step("terraform destroy");
        let destroyed = tf.run(cx, &destroy_args, Output::Stream)?;
        if destroyed.code != 0 {
            bail!(
                "terraform destroy failed (exit {}); fix the cause and run destroy again",
                destroyed.code
            );
        }
        // What the xtask made beside Terraform: the token, the published certificate, the
        // rotation request; and the files that pinned or held them here.
        cx.step("delete the SSM parameters of the service's token and certificate");
        block_on(crate::secrets::delete_parameters(cx, &clients))?;
        for generated in [
            outputs_file(cx),
            user_data::default_path(cx),
            crate::secrets::pin_file(cx),
            crate::secrets::header_file(cx),
        ] {
            let _ = std::fs::remove_file(generated);
        }
    }

    if args.purge_state {
        let buckets = block_on(private_buckets::resolve_buckets(cx, &clients))?;
        // The artifact bucket first: the state bucket goes last of all.
        for bucket in [&buckets.artifacts, &buckets.state] {
            cx.step(format!(
                "delete {} bucket {}",
                bucket.purpose.label(),
                bucket.name
            ));
            if cx.aws_call(format!("empty and s3:DeleteBucket {}", bucket.name)) {
                block_on(async {
                    empty_bucket(&clients.s3, &bucket.name).await?;
                    match clients.s3.delete_bucket().bucket(&bucket.name).send().await {
                        Err(err) if err.code() == Some("NoSuchBucket") => Ok(()),
                        other => other
                            .map(drop)
                            .aws_context(format!("s3:DeleteBucket {}", bucket.name)),
                    }
                })?;
            }
        }
        if !cx.dry_run {
            let _ = std::fs::remove_dir_all(cx.state_dir().join("terraform-data"));
            let _ = std::fs::remove_file(cx.state_dir().join("init.stamp"));
            let _ = std::fs::remove_file(&backend);
        }
    }
    Ok(())
}
