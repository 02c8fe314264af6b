//! `cargo xtask run`: boots a built image in QEMU without a console, runs one
//! command in the guest through the test agent, prints its output, powers
//! the guest off and exits with the command's exit code, so a script can
//! drive an appliance (as `nixos-test-driver`'s `machine.succeed` does).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::boot::BuiltImage;
use crate::qemu::{self, Accel, Vm};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name (a file in images/).
    #[arg(long, default_value = "debian")]
    pub image: String,
    /// Profile name; it must carry the test agent (dev and test do).
    #[arg(long, default_value = "test")]
    pub profile: String,
    /// QEMU accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Extra kernel command line words, e.g. nodows.server=web02.
    #[arg(long, value_name = "WORDS")]
    pub append: Option<String>,
    /// Output directory the image was built into (default: images/out).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seconds the command may run.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// The command: its words joined by spaces and run by `sh -c` in the
    /// guest, as root (so `-- 'initctl status | head -3'` works).
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Boot to ready with a direct kernel boot under TCG, at most.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: Args) -> anyhow::Result<()> {
    qemu::ensure_qemu_installed()?;
    let built = match BuiltImage::find(args.out.as_deref(), &args.image, &args.profile) {
        Ok(built) => built,
        Err(error) => bad_input(&format!("{error:#}")),
    };
    if !carries_the_agent(&built)? {
        bad_input(&format!(
            "image {} has no test agent (only profiles that list the service test-agent have one, such as dev and test): reach it over SSH with an operator key from the model (README, \"Operators' access\")",
            built.name
        ));
    }
    let command = args.command.join(" ");
    if command.contains('\n') {
        bad_input("the command must be one line");
    }
    let work_root = qemu::target_dir()?.join("qemu-run");
    let name = format!("run-{}", built.name);
    let _ = std::fs::remove_dir_all(work_root.join(&name));
    let mut config = built.config(
        &name,
        false,
        args.append.as_deref().unwrap_or(""),
        &work_root,
    );
    config.accel = args.accel;
    config.agent = true;
    let mut vm = Vm::start(&config)?;
    vm.wait_for_ready(READY_TIMEOUT)?;
    let (code, output) = vm.execute(&command, Duration::from_secs(args.timeout))?;
    print!("{output}");
    let _ = vm.shutdown(POWEROFF_TIMEOUT);
    std::process::exit(code)
}

/// The image's manifest lists the test agent's service definition.
fn carries_the_agent(built: &BuiltImage) -> anyhow::Result<bool> {
    let manifest = built.raw.with_file_name("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("{}: cannot read", manifest.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", manifest.display()))?;
    Ok(value["files"].as_array().is_some_and(|files| {
        files.iter().any(|file| {
            file["path"]
                .as_str()
                .is_some_and(|path| path == "/etc/nodows/services/test-agent/service.xml")
        })
    }))
}

fn bad_input(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}
