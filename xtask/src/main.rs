//! `cargo xtask`: the nodows image builder and test harness.

mod bench;
mod boot;
mod image;
mod qemu;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "nodows: build, boot, test and benchmark appliance images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bootable image (Debian or FreeBSD) for a profile.
    Image(image::Args),
    /// Boot a built image in QEMU on the serial console.
    Boot(boot::Args),
    /// The one test command: fmt, clippy, unit tests, images and QEMU end-to-end tests.
    Test(test::Args),
    /// Benchmarks against the systems people would pick instead; writes BENCHMARKS.md.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Image(args) => image::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
