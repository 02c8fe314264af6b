//! `cargo xtask image`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask image is not implemented yet")
}
