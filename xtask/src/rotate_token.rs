//! `cargo xtask rotate-token`: a new bearer token, as a new version of its SSM parameter. The
//! instance takes it within a minute (filepipe-refresh.timer, then a reload); the token it
//! replaces is accepted `AUTH_TOKEN_OVERLAP_SECS` longer, so clients that fetch the new one
//! meanwhile see no failed request. Waits until the service accepts the new token.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use service::aws::AwsClients;

use crate::context::{Context, block_on};
use crate::doors::{self, Doors};
use crate::local_service;
use crate::outputs::{Outputs, outputs_file};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to wait for the service to accept the new token.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

pub fn run(cx: &Context, args: Args) -> Result<()> {
    let outputs = Outputs::load(&outputs_file(cx))?;
    let operator = block_on(AwsClients::connect(&cx.env.aws));
    let doors = Doors::new(&outputs, &operator)?;
    cx.step(format!("new version of {}", doors.token_parameter));
    if !cx.aws_call(format!(
        "ssm:PutParameter {} (SecureString)",
        doors.token_parameter
    )) {
        return Ok(());
    }
    block_on(doors.rotate_token())?;
    let token = block_on(doors.token())?;
    let url = if cx.env.is_local() {
        // No timer runs the local instance's refresh: run it now, as the timer would.
        local_service::refresh(cx)?;
        doors::write_header(cx, &token)?;
        local_service::read_record(cx)
            .context("no local service runs")?
            .url()
    } else {
        outputs
            .string("service_url")
            .context(
                "no service_url output: the token is rotated, but no host of this stack takes it",
            )?
            .to_string()
    };
    let cert = block_on(doors.certificate())?.context("no published certificate")?;
    let client = doors::pinned_client(&cert, Duration::from_secs(10))?;
    let started = Instant::now();
    cx.step(format!("wait for {url} to accept the new token"));
    loop {
        let answered = block_on(async {
            client
                .get(format!("{url}/v1/info"))
                .bearer_auth(&token)
                .send()
                .await
        });
        if matches!(&answered, Ok(r) if r.status().as_u16() == 200) {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.timeout_secs) {
            bail!(
                "{url} did not accept the new token within {} s (the instance refreshes every minute: `journalctl -u filepipe-refresh` tells why not); the old one stops working AUTH_TOKEN_OVERLAP_SECS after the instance takes the new one",
                args.timeout_secs
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    println!(
        "bearer token rotated: {} accepts the new version of {} ({:.0} s)",
        url,
        doors.token_parameter,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
