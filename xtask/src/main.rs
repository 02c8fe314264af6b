//! `cargo xtask`: the nodows image builder and test harness.

mod bench;
mod boot;
mod check;
mod flash;

mod image;
mod qemu;
mod run;
mod test;
mod toolchain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "nodows: build, boot, flash, test and benchmark appliance images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bootable image (Debian or FreeBSD) for a profile.
    Image(image::Args),
    /// Check every service, template and golden case and the profile's model, in memory (about a second).
    Check(check::Args),
    /// Re-write golden cases' expected files from the current templates (modes kept).
    Bless(check::BlessArgs),
    /// Boot a built image in QEMU on the serial console.
    Boot(boot::Args),
    /// Boot a built image, run one command in it (test agent), print its output, exit with its code.
    Run(run::Args),
    /// Write a built image to a disk or a USB stick (bmap: mapped blocks only, verified).
    Flash(flash::Args),
    /// The one test command: fmt, clippy, unit tests, images and QEMU end-to-end tests.
    Test(test::Args),
    /// Benchmarks against the systems people would pick instead; writes BENCHMARKS.md.
    Bench(bench::Args),
}

/// Exit codes (docs/interfaces.md): 0 success, 1 failure, 2 bad input or
/// usage, 130 interrupted.
fn main() -> ExitCode {
    // rustup must never download a whole toolchain behind the user's back;
    // the targets the build needs are added explicitly (toolchain.rs).
    std::env::set_var("RUSTUP_AUTO_INSTALL", "0");
    let cli = Cli::parse();
    if let Err(error) = qemu::check_workspace() {
        return report(&error, false);
    }
    let verbose = match &cli.command {
        Command::Image(args) => args.verbose,
        Command::Flash(args) => args.verbose,
        _ => false,
    };
    let result = match cli.command {
        Command::Image(args) => image::run(args),
        Command::Check(args) => check::run(args),
        Command::Bless(args) => check::bless(args),
        Command::Boot(args) => boot::run(args),
        Command::Run(args) => run::run(args),
        Command::Flash(args) => flash::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error, verbose),
    }
}

/// Prints an error as the user should see it: the message and its causes,
/// one per line, never a stack backtrace (`--verbose` shows anyhow's full
/// report, with a backtrace when RUST_BACKTRACE asks for one).
fn report(error: &anyhow::Error, verbose: bool) -> ExitCode {
    if image::ui::interrupted() {
        eprintln!("error: interrupted; nothing was written to the output or the cache");
        return ExitCode::from(130);
    }
    if verbose {
        eprintln!("error: {error:?}");
    } else {
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  because: {cause}");
        }
    }
    if error.chain().any(|cause| cause.is::<image::BadInput>()) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}
