//! `cargo xtask rotate-token` and `rotate-cert`: new secrets for the service's secrets, each
//! waited for until the service uses it.
//!
//! - A new bearer token, as a new version of its SSM parameter. The instance takes it within
//!   a minute (filepipe-refresh.timer, then a reload); the token it replaces is accepted
//!   `AUTH_TOKEN_OVERLAP_SECS` longer, so clients that fetch the new one meanwhile see no
//!   failed request.
//! - A new TLS key and certificate, made on the instance (the key never leaves it): asked
//!   through the rotation parameter, published by the instance, then pinned here.
//!
//! Locally no timer runs the instance's refresh: it runs at once, as the timer would.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aws_clients::AwsClients;

use crate::context::{Context, block_on};
use crate::flags;
use crate::local::instance;
use crate::outputs::{Outputs, outputs_file};
use crate::secrets::{self, Secrets};

/// The environment's secrets, and where its service answers.
struct Target {
    secrets: Secrets,
    url: String,
}

fn target(cx: &Context) -> Result<Target> {
    let outputs = Outputs::load(&outputs_file(cx))?;
    let operator = block_on(AwsClients::connect(&cx.env.aws))?;
    let secrets = Secrets::new(&outputs, &operator)?;
    let url = if cx.env.is_local() {
        instance::read_record(cx)
            .context("no local service runs: `cargo xtask up` starts it")?
            .url()
    } else {
        outputs
            .string("service_url")
            .context("no service_url output: no host of this stack serves the secrets")?
            .to_string()
    };
    Ok(Target { secrets, url })
}

/// Calls `done` every few seconds until it is true or `timeout` has passed.
fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > timeout {
            bail!("not done within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(started.elapsed())
}

pub fn token(cx: &Context, args: flags::Rotate) -> Result<ExitCode> {
    let Target { secrets, url } = target(cx)?;
    cx.step(format!("new version of {}", secrets.token_parameter));
    if !cx.aws_call(format!(
        "ssm:PutParameter {} (SecureString)",
        secrets.token_parameter
    )) {
        return Ok(ExitCode::SUCCESS);
    }
    block_on(secrets.rotate_token())?;
    let token = block_on(secrets.token())?;
    if cx.env.is_local() {
        instance::refresh(cx)?;
        secrets::write_header(cx, &token)?;
    }
    let cert = block_on(secrets.certificate())?.context("no published certificate")?;
    let client = secrets::pinned_client(&cert, Duration::from_secs(10))?;
    cx.step(format!("wait for {url} to accept the new token"));
    let took = wait(Duration::from_secs(args.timeout_secs), || {
        block_on(async {
            client
                .get(format!("{url}/v1/info"))
                .bearer_auth(&token)
                .send()
                .await
        })
        .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .with_context(|| {
        format!(
            "{url} did not accept the new token (the instance refreshes every minute: `journalctl -u filepipe-refresh` tells why not); the old one stops working AUTH_TOKEN_OVERLAP_SECS after the instance takes the new one"
        )
    })?;
    println!(
        "bearer token rotated: {url} accepts the new version of {} ({:.0} s)",
        secrets.token_parameter,
        took.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn cert(cx: &Context, args: flags::Rotate) -> Result<ExitCode> {
    let Target { secrets, url } = target(cx)?;
    let previous = block_on(secrets.certificate())?;
    cx.step(format!(
        "ask for a new certificate ({})",
        secrets.rotation_parameter
    ));
    if !cx.aws_call(format!("ssm:PutParameter {}", secrets.rotation_parameter)) {
        return Ok(ExitCode::SUCCESS);
    }
    block_on(secrets.request_new_certificate())?;
    if cx.env.is_local() {
        instance::refresh(cx)?;
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let cert = block_on(secrets.wait_for_certificate(previous.as_deref(), timeout))?;
    let pin = secrets::write_pin(cx, &cert)?;
    // The instance reloads right after it publishes: new connections get the new one.
    let client = secrets::pinned_client(&cert, Duration::from_secs(10))?;
    wait(timeout, || {
        block_on(async { client.get(format!("{url}/healthz")).send().await }).is_ok()
    })
    .with_context(|| format!("{url} does not present the new certificate"))?;
    println!(
        "certificate rotated: {url} presents the new one, pinned in {} ({})",
        pin.display(),
        certificates::fingerprint(&cert)?
    );
    Ok(ExitCode::SUCCESS)
}
