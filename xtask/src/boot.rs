//! `cargo xtask boot`: boots a built image in QEMU on this terminal's serial console.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::qemu::{self, Accel, Disk, DiskFormat, Firmware, VmConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name (a file in images/).
    #[arg(long, default_value = "debian")]
    pub image: String,
    /// Profile name (a file in profiles/).
    #[arg(long, default_value = "dev")]
    pub profile: String,
    /// Boot the raw GPT disk through OVMF, as a bare-metal machine would.
    #[arg(long)]
    pub uefi: bool,
    /// QEMU accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Extra kernel command line words (direct-kernel boot only), e.g. nodows.server=web2.
    #[arg(long, value_name = "WORDS")]
    pub append: Option<String>,
    /// Instead of an interactive console: boot N times, print the time from
    /// QEMU start to `nodows: ready` of each boot and the median.
    #[arg(long, value_name = "N")]
    pub measure: Option<u32>,
    /// Output directory the image was built into (default: images/out).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A private link to another machine (its eth1): a UDP tunnel from this
    /// port of 127.0.0.1 to that one; the other machine swaps the two.
    #[arg(long, value_name = "LOCAL_PORT:REMOTE_PORT")]
    pub link: Option<String>,
    /// Forward a fixed port of the host's 127.0.0.1 to the guest (repeatable;
    /// guest ports 22 and 80 are always forwarded from free ports):
    /// `[tcp:|udp:]HOST_PORT:GUEST_PORT`, e.g. `udp:5353:53`.
    #[arg(long, value_name = "[tcp:|udp:]HOST:GUEST")]
    pub forward: Vec<String>,
}

/// `LOCAL:REMOTE` of `--link`; the MAC address derives from the local port.
fn parse_link(text: &str) -> Option<qemu::Link> {
    let (local, remote) = text.split_once(':')?;
    let (local_port, remote_port): (u16, u16) = (local.parse().ok()?, remote.parse().ok()?);
    let [high, low] = local_port.to_be_bytes();
    Some(qemu::Link {
        id: "link0".to_string(),
        local_port,
        remote_port,
        mac: format!("52:54:00:98:{high:02x}:{low:02x}"),
    })
}

/// What `cargo xtask image` wrote for one image and profile.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// `IMAGE-PROFILE`.
    pub name: String,
    pub image: String,
    pub profile: String,
    /// The raw GPT disk (what is written to a real disk).
    pub raw: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line of a direct-kernel boot (root= included).
    pub cmdline: String,
}

impl BuiltImage {
    /// Finds the outputs of `cargo xtask image --image IMAGE --profile PROFILE`.
    pub fn find(out: Option<&Path>, image: &str, profile: &str) -> anyhow::Result<BuiltImage> {
        let out = out
            .map(Path::to_path_buf)
            .unwrap_or_else(|| qemu::workspace_root().join("images/out"));
        let name = format!("{image}-{profile}");
        let dir = out.join(&name);
        let build = format!("cargo xtask image --image {image} --profile {profile}");
        if !dir.is_dir() {
            bail!(
                "{}: image {name} is not built yet: run `{build}`",
                dir.display()
            );
        }
        // The builder writes NAME.raw, NAME.vmlinuz, NAME.initrd and NAME.cmdline.
        let output = |extension: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{name}.{extension}"));
            if !path.is_file() {
                bail!("{}: missing; rebuild with `{build}`", path.display());
            }
            Ok(path)
        };
        let raw = output("raw")?;
        let kernel = output("vmlinuz")?;
        let initrd = Some(output("initrd")?);
        let cmdline_path = output("cmdline")?;
        let cmdline = std::fs::read_to_string(&cmdline_path)
            .with_context(|| format!("{}: cannot read", cmdline_path.display()))?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(BuiltImage {
            name,
            image: image.to_string(),
            profile: profile.to_string(),
            raw,
            kernel,
            initrd,
            cmdline,
        })
    }

    /// A machine that boots this image: direct-kernel or through OVMF.
    pub fn config(
        &self,
        name: &str,
        uefi: bool,
        extra_cmdline: &str,
        work_root: &Path,
    ) -> VmConfig {
        let firmware = if uefi {
            Firmware::Uefi
        } else {
            let mut cmdline = self.cmdline.clone();
            if !cmdline
                .split_whitespace()
                .any(|word| word.starts_with("console="))
            {
                cmdline.push_str(" console=ttyS0");
            }
            if !extra_cmdline.trim().is_empty() {
                cmdline.push(' ');
                cmdline.push_str(extra_cmdline.trim());
            }
            Firmware::DirectKernel {
                kernel: self.kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline,
            }
        };
        let mut config = VmConfig::new(name, firmware, work_root);
        config.disk = Some(Disk::Fresh {
            image: self.raw.clone(),
            format: DiskFormat::of(&self.raw),
        });
        config.memory_mib = 1024;
        config
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    qemu::ensure_qemu_installed()?;
    // A missing image or a contradictory request is bad input: exit code 2.
    let built = match BuiltImage::find(args.out.as_deref(), &args.image, &args.profile) {
        Ok(built) => built,
        Err(error) => bad_input(&format!("{error:#}")),
    };
    if args.uefi && args.append.is_some() {
        bad_input("--append needs a direct-kernel boot: under --uefi the boot loader on the disk decides the command line");
    }
    let work_root = qemu::target_dir()?.join("qemu-boot");
    // Two nodes of one image (a failover pair) get a work directory each.
    let name = match args
        .append
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .find_map(|word| word.strip_prefix("nodows.server="))
    {
        Some(server) => format!("{}-{server}", built.name),
        None => built.name.clone(),
    };
    let append = args.append.as_deref().unwrap_or("");
    // A guest registered for `cargo xtask run` may still run in it.
    if !crate::run::guest_runs_in(&built, append, &work_root.join(&name))? {
        let _ = std::fs::remove_dir_all(work_root.join(&name));
    }
    let mut config = built.config(
        &name,
        args.uefi,
        args.append.as_deref().unwrap_or(""),
        &work_root,
    );
    config.accel = args.accel;
    config.forward_tcp = vec![22, 80];
    for text in &args.forward {
        match qemu::Forward::parse(text) {
            Ok(forward) => config.forwards.push(forward),
            Err(problem) => bad_input(&problem),
        }
    }
    if let Some(link) = &args.link {
        match parse_link(link) {
            Some(link) => config.links = vec![link],
            None => bad_input(&format!(
                "--link {link}: expected LOCAL_PORT:REMOTE_PORT, e.g. 7101:7102"
            )),
        }
    }
    // The probe uses the image's kernel even under --uefi.
    qemu::resolve_accel(args.accel, Some(&built.kernel));
    if let Some(count) = args.measure {
        return measure(&config, count);
    }
    let mut registered = None;
    // A registry problem costs `cargo xtask run` its reuse, not the boot.
    let status = qemu::run_interactive(
        &config,
        &mut |pid, work_dir| match crate::run::register_boot(&built, append, pid, work_dir) {
            Ok(registration) => registered = registration,
            Err(error) => eprintln!("nodows: not registered for `cargo xtask run`: {error:#}"),
        },
    )?;
    if let Some((registry, registration)) = registered {
        registry.unregister(&registration);
    }
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(())
}

fn bad_input(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

/// Boots `count` times to the ready line; prints each time and the median.
fn measure(config: &VmConfig, count: u32) -> anyhow::Result<()> {
    let mut seconds = Vec::new();
    for boot in 1..=count.max(1) {
        let mut config = config.clone();
        config.name = format!("{}-measure-{boot}", config.name);
        let _ = std::fs::remove_dir_all(config.work_root.join(&config.name));
        let mut vm = qemu::Vm::start(&config)?;
        let ready = vm.wait_for_ready(std::time::Duration::from_secs(600))?;
        let elapsed = vm.uptime().as_secs_f64();
        println!("boot {boot}: {elapsed:.2}s from qemu start to `{ready}`");
        seconds.push(elapsed);
        vm.kill();
    }
    seconds.sort_by(f64::total_cmp);
    println!(
        "median of {}: {:.2}s ({})",
        seconds.len(),
        seconds[seconds.len() / 2],
        config.name
    );
    Ok(())
}
