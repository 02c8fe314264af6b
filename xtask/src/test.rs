//! `cargo xtask test`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask test is not implemented yet")
}
