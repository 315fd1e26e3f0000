use anyhow::{Result, bail};

use crate::context::Context;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_cx: &Context, _args: Args) -> Result<()> {
    bail!("`bootstrap` is not implemented yet")
}
