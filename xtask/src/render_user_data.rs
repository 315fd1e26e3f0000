//! `cargo xtask render-user-data`: the EC2 user-data from the `user_data` output, which
//! Terraform rendered with its own templatefile(); there is no second template engine here.

use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;
use crate::flags;
use crate::outputs::Outputs;
use crate::outputs::outputs_file;
use crate::user_data;

pub fn run(cx: &Context, args: flags::RenderUserData) -> Result<ExitCode> {
    let outputs = Outputs::load(&outputs_file(cx))?;
    let path = user_data::write(cx, &outputs, args.out.as_deref())?;
    println!("user-data written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}
