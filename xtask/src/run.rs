//! `cargo xtask run`: runs one command in a guest through the test agent,
//! prints its output and exits with the command's exit code, so a script can
//! drive an appliance (as `nixos-test-driver`'s `machine.succeed` does).
//! The guest is a running one of the same build when one is registered
//! (`registry.rs`: started by `cargo xtask boot` or `run --keep`), else a
//! fresh boot without a console, powered off afterwards unless `--keep`.

pub mod registry;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::boot::BuiltImage;
use crate::qemu::{self, Accel, Vm};
use registry::{Lookup, Registration, Registry, Wanted};

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
    /// Leave a fresh guest running (registered for reuse by later runs)
    /// instead of powering it off.
    #[arg(long, conflicts_with = "stop")]
    pub keep: bool,
    /// Power off the registered running guest of this image and profile
    /// (instead of running a command).
    #[arg(long)]
    pub stop: bool,
    /// The command: its words joined by spaces and run by `sh -c` in the
    /// guest, as root (so `-- 'initctl status | head -3'` works).
    #[arg(
        trailing_var_arg = true,
        required_unless_present = "stop",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Boot to ready with a direct kernel boot under TCG, at most.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
const STARTED_BY_BOOT: &str = "cargo xtask boot";
const STARTED_BY_RUN: &str = "cargo xtask run --keep";

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
    let registry = Registry::open()?;
    let wanted = Wanted::of(&built, args.append.as_deref().unwrap_or(""))?;
    if args.stop {
        return stop(&registry, &wanted);
    }
    let command = args.command.join(" ");
    if command.contains('\n') {
        bad_input("the command must be one line");
    }
    let timeout = Duration::from_secs(args.timeout);
    let code = match registry.lookup(&wanted)? {
        Lookup::Reuse(registration) => {
            eprintln!(
                "nodows: reusing the running guest of {} (qemu pid {}, started by {})",
                built.name, registration.pid, registration.started_by
            );
            execute_in(&registration, &command, timeout)?
        }
        Lookup::Other { registration, why } if args.keep => bad_input(&format!(
            "a guest of {} runs (qemu pid {}, started by {}) that cannot be reused: {why}; power it off with `cargo xtask run --image {} --profile {} --stop`, or run without --keep",
            built.name, registration.pid, registration.started_by, built.image, built.profile
        )),
        Lookup::Other { registration, why } => {
            eprintln!(
                "nodows: booting a fresh guest of {}: the running one (qemu pid {}) cannot be reused: {why}",
                built.name, registration.pid
            );
            boot_and_execute(&args, &built, None, &command)?
        }
        Lookup::Nothing => {
            let kept = if args.keep { ", kept running" } else { "" };
            eprintln!(
                "nodows: booting a fresh guest of {}{kept} (no running guest of it is registered)",
                built.name
            );
            let keep = args.keep.then_some((&registry, &wanted));
            boot_and_execute(&args, &built, keep, &command)?
        }
    };
    std::process::exit(code)
}

/// Boots `built` to ready, runs `command`, prints its output and returns its
/// exit code. With `keep` the guest is registered and left running,
/// otherwise powered off.
fn boot_and_execute(
    args: &Args,
    built: &BuiltImage,
    keep: Option<(&Registry, &Wanted)>,
    command: &str,
) -> anyhow::Result<i32> {
    let work_root = qemu::target_dir()?.join("qemu-run");
    let name = if keep.is_some() {
        // A fresh directory (`keep-NAME.1` when taken): `--stop` removes it.
        format!("keep-{}", built.name)
    } else {
        let name = format!("run-{}", built.name);
        let _ = std::fs::remove_dir_all(work_root.join(&name));
        name
    };
    let mut config = built.config(
        &name,
        false,
        args.append.as_deref().unwrap_or(""),
        &work_root,
    );
    config.accel = args.accel;
    config.agent = true;
    config.detached = keep.is_some();
    let mut vm = Vm::start(&config)?;
    vm.wait_for_ready(READY_TIMEOUT)?;
    if let Some((registry, wanted)) = keep {
        let socket = vm.agent_socket().context("the guest has no agent port")?;
        let registration = wanted.running(vm.pid(), socket, vm.work_dir(), STARTED_BY_RUN);
        registry.register(&registration)?;
        vm.keep_running();
        eprintln!(
            "nodows: the guest keeps running (qemu pid {}): `cargo xtask run` reuses it, `cargo xtask run --stop` powers it off",
            vm.pid()
        );
    }
    let (code, output) = vm.execute(command, Duration::from_secs(args.timeout))?;
    print!("{output}");
    if keep.is_none() {
        let _ = vm.shutdown(POWEROFF_TIMEOUT);
    }
    Ok(code)
}

/// Runs `command` in a registered guest through its agent socket; prints
/// its output and returns its exit code.
fn execute_in(
    registration: &Registration,
    command: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let mut agent = None;
    let mut check_running = || guest_is_running(registration);
    let (code, output) = qemu::agent_exchange(
        &mut agent,
        &registration.agent_socket,
        command,
        Instant::now() + timeout,
        &mut check_running,
    )
    .with_context(|| {
        format!(
            "agent command `{command}` in the guest of qemu pid {} (its work directory {})",
            registration.pid,
            registration.work_dir.display()
        )
    })?;
    print!("{output}");
    Ok(code)
}

fn guest_is_running(registration: &Registration) -> anyhow::Result<()> {
    if !registration.is_running() {
        bail!("qemu (pid {}) exited", registration.pid);
    }
    Ok(())
}

/// `--stop`: powers the registered guest off through its agent (killing
/// QEMU if it does not exit in time) and removes its registration.
fn stop(registry: &Registry, wanted: &Wanted) -> anyhow::Result<()> {
    let name = format!("{}-{}", wanted.image, wanted.profile);
    let registration = match registry.lookup(wanted)? {
        Lookup::Nothing => {
            eprintln!("nodows: no running guest of {name} is registered");
            return Ok(());
        }
        Lookup::Reuse(registration) => registration,
        Lookup::Other { registration, why } => {
            if registration.wanted.workspace != wanted.workspace {
                bad_input(&format!(
                    "the registered guest of {name} (qemu pid {}) is not this checkout's: {why}",
                    registration.pid
                ));
            }
            registration
        }
    };
    eprintln!(
        "nodows: powering off the guest of {name} (qemu pid {}, started by {})",
        registration.pid, registration.started_by
    );
    power_off(&registration)?;
    registry.unregister(&registration);
    if registration.started_by == STARTED_BY_RUN {
        let _ = std::fs::remove_dir_all(&registration.work_dir);
    }
    Ok(())
}

/// `initctl poweroff` through the agent (its reply never comes); QEMU is
/// killed when it has not exited after `POWEROFF_TIMEOUT`.
fn power_off(registration: &Registration) -> anyhow::Result<()> {
    use std::io::Write as _;
    let sent = std::os::unix::net::UnixStream::connect(&registration.agent_socket)
        .and_then(|mut stream| stream.write_all(b"initctl poweroff\n").map(|()| stream));
    let deadline = Instant::now() + POWEROFF_TIMEOUT;
    while registration.is_running() && Instant::now() < deadline && sent.is_ok() {
        std::thread::sleep(Duration::from_millis(200));
    }
    if registration.is_running() {
        eprintln!(
            "nodows: the guest did not power off ({}); killing qemu",
            match &sent {
                Ok(_) => format!("within {}s", POWEROFF_TIMEOUT.as_secs()),
                Err(error) => format!("the agent socket: {error}"),
            }
        );
        // SAFETY: kill has no memory preconditions; the pid is this
        // registration's QEMU (`is_running` checked its command line).
        if unsafe { libc::kill(registration.pid as libc::pid_t, libc::SIGKILL) } != 0 {
            bail!(
                "cannot kill qemu (pid {}): {}",
                registration.pid,
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Whether a live registered guest of `built` runs in `work_dir` (which
/// must then stay: it holds the guest's agent socket and overlay).
pub fn guest_runs_in(built: &BuiltImage, append: &str, work_dir: &Path) -> anyhow::Result<bool> {
    if !carries_the_agent(built)? {
        return Ok(false);
    }
    Ok(
        match Registry::open()?.lookup(&Wanted::of(built, append)?)? {
            Lookup::Nothing => false,
            Lookup::Reuse(registration) | Lookup::Other { registration, .. } => {
                registration.work_dir == work_dir
            }
        },
    )
}

/// Registers a guest that `cargo xtask boot` started (QEMU `pid`, its work
/// directory `work_dir`) for reuse by `cargo xtask run`, if its image has
/// the test agent and no other live guest of it is registered; returns what
/// to unregister when QEMU exits.
pub fn register_boot(
    built: &BuiltImage,
    append: &str,
    pid: u32,
    work_dir: &Path,
) -> anyhow::Result<Option<(Registry, Registration)>> {
    if !carries_the_agent(built)? {
        return Ok(None);
    }
    let registry = Registry::open()?;
    let wanted = Wanted::of(built, append)?;
    if let Lookup::Reuse(other)
    | Lookup::Other {
        registration: other,
        ..
    } = registry.lookup(&wanted)?
    {
        // This guest works in another directory (`NAME.1`): the other one's stayed.
        eprintln!(
            "nodows: `cargo xtask run` will not use this guest: it uses the guest of qemu pid {} (started by {})",
            other.pid, other.started_by
        );
        return Ok(None);
    }
    let registration = wanted.running(pid, &work_dir.join("agent.sock"), work_dir, STARTED_BY_BOOT);
    registry.register(&registration)?;
    eprintln!(
        "nodows: `cargo xtask run --image {} --profile {} -- COMMAND` runs commands in this guest",
        built.image, built.profile
    );
    Ok(Some((registry, registration)))
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
