//! `cargo xtask rotate-cert`: a new TLS key and certificate, made on the instance (the key
//! never leaves it). Asks through the rotation parameter, waits for the instance to publish
//! the new certificate, pins it, and checks the service presents it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use service::aws::AwsClients;

use crate::context::{Context, block_on};
use crate::doors::{self, Doors};
use crate::local_service;
use crate::outputs::{Outputs, outputs_file};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to wait for the instance to publish its new certificate.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

pub fn run(cx: &Context, args: Args) -> Result<()> {
    let outputs = Outputs::load(&outputs_file(cx))?;
    let operator = block_on(AwsClients::connect(&cx.env.aws));
    let doors = Doors::new(&outputs, &operator)?;
    let previous = block_on(doors.certificate())?;
    cx.step(format!(
        "ask for a new certificate ({})",
        doors.rotation_parameter
    ));
    if !cx.aws_call(format!("ssm:PutParameter {}", doors.rotation_parameter)) {
        return Ok(());
    }
    block_on(doors.request_new_certificate())?;
    let url = if cx.env.is_local() {
        local_service::refresh(cx)?;
        local_service::read_record(cx)
            .context("no local service runs")?
            .url()
    } else {
        outputs
            .string("service_url")
            .context("no service_url output: no host of this stack makes a certificate")?
            .to_string()
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let cert = block_on(doors.wait_for_certificate(previous.as_deref(), timeout))?;
    let pin = doors::write_pin(cx, &cert)?;
    // The instance reloads right after it publishes: new connections get the new one.
    let client = doors::pinned_client(&cert, Duration::from_secs(10))?;
    loop {
        if block_on(async { client.get(format!("{url}/healthz")).send().await }).is_ok() {
            break;
        }
        if started.elapsed() > timeout {
            bail!(
                "{url} does not present the new certificate after {} s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "certificate rotated: {url} presents the new one, pinned in {} ({})",
        pin.display(),
        service::tls::fingerprint(&cert)?
    );
    Ok(())
}
