//! Suite `boot`: the dev image from QEMU start to `nodows: ready`, against
//! the same Debian release booted with systemd, and PID 1's footprint in
//! both guests.
//!
//! The systemd reference is built here with mmdebstrap (Debian bookworm,
//! systemd-sysv, udev, dbus, nginx-light, openssh-server, systemd-networkd)
//! into a bare ext4 file system, cached under TARGET/bench/systemd-ref/.
//! Both machines boot the dev image's kernel and initrd directly, with the
//! same QEMU flags; runs alternate between the two.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::boot::BuiltImage;
use crate::qemu::{self, Disk, DiskFormat, Firmware, Pattern, Vm, VmConfig};

/// The serial getty's prompt; kernel messages may follow it on the same line.
const LOGIN_PROMPT: &str = "nodows-ref login: ";

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// The packages of the reference; bump REFERENCE_VERSION when the recipe changes.
const REFERENCE_PACKAGES: &str = "systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,zstd,nginx-light,openssh-server,iproute2,procps,kmod";
const REFERENCE_VERSION: &str = "1";

/// PID 1's memory and the user-space process and thread counts (kernel
/// threads, children of kthreadd, are left out); one line each, `bench: k=v`.
const FOOTPRINT: &str = r#"echo "bench: pid1 rss_kib=$(awk '/^VmRSS:/{print $2}' /proc/1/status) pss_kib=$(awk '/^Pss:/{print $2}' /proc/1/smaps_rollup) threads=$(awk '/^Threads:/{print $2}' /proc/1/status)"; cat /proc/[0-9]*/status 2>/dev/null | awk '/^Pid:/{pid=$2} /^PPid:/{pp=$2} /^Threads:/{if (pid!=2 && pp!=2) {p++; t+=$2}} END{print "bench: processes=" p " threads=" t}'"#;

/// Installed in the reference as a unit after multi-user.target: waits for
/// `systemctl is-system-running` and reports on the serial console.
fn report_script() -> String {
    format!(
        "#!/bin/sh\nstate=$(systemctl is-system-running --wait)\nexec >/dev/ttyS0 2>&1\necho \"bench: state=$state\"\n{FOOTPRINT}\necho \"bench: analyze $(systemd-analyze time | head -n 1)\"\necho \"bench: done\"\n"
    )
}

const REPORT_UNIT: &str = "[Unit]\nDescription=nodows benchmark report on the serial console\nAfter=multi-user.target\n\n[Service]\nType=simple\nExecStart=/usr/local/sbin/nodows-bench-report\n\n[Install]\nWantedBy=multi-user.target\n";

const NETWORK: &str = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n";

fn customize_script() -> String {
    format!(
        "set -e\nroot=\"$1\"\necho nodows-ref > \"$root/etc/hostname\"\n\
         mkdir -p \"$root/etc/systemd/network\" \"$root/usr/local/sbin\"\n\
         printf '%s' '{NETWORK}' > \"$root/etc/systemd/network/20-wired.network\"\n\
         cat > \"$root/usr/local/sbin/nodows-bench-report\" <<'BENCH_EOF'\n{}BENCH_EOF\n\
         chmod 755 \"$root/usr/local/sbin/nodows-bench-report\"\n\
         printf '%s' '{REPORT_UNIT}' > \"$root/etc/systemd/system/nodows-bench-report.service\"\n\
         chroot \"$root\" systemctl enable systemd-networkd.service nodows-bench-report.service\n\
         rm -f \"$root/etc/machine-id\"\n\
         chroot \"$root\" systemd-machine-id-setup\n",
        report_script()
    )
}

/// The host's apt sources (the image builder uses the same mirror).
fn sources() -> PathBuf {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if deb822.is_file() {
        deb822.to_path_buf()
    } else {
        PathBuf::from("/etc/apt/sources.list")
    }
}

/// Builds (or reuses) the systemd reference: a bare ext4 file system.
fn reference_image(context: &Context) -> anyhow::Result<PathBuf> {
    let sh = &context.sh;
    let version = cmd!(sh, "mmdebstrap --version").quiet().read()?;
    let sources = sources();
    let sources_text = std::fs::read_to_string(&sources)
        .with_context(|| format!("{}: cannot read", sources.display()))?;
    let customize = customize_script();
    let mut hasher = Sha256::new();
    for part in [
        REFERENCE_VERSION,
        REFERENCE_PACKAGES,
        &version,
        &sources_text,
        &customize,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let key = hex::encode(&hasher.finalize()[..8]);
    let dir = context.bench_dir.join("systemd-ref").join(&key);
    let raw = dir.join("systemd-ref.raw");
    if raw.is_file() {
        eprintln!("    systemd reference: cached {}", raw.display());
        return Ok(raw);
    }
    eprintln!("    systemd reference: building with mmdebstrap (a few minutes)");
    let partial = context
        .bench_dir
        .join("systemd-ref")
        .join(format!("{key}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let script = partial.join("customize.sh");
    std::fs::write(&script, &customize)?;
    let rootfs = partial.join("rootfs");
    let options = vec![
        "--variant=minbase".to_owned(),
        "--architectures=amd64".to_owned(),
        format!("--include={REFERENCE_PACKAGES}"),
        "--aptopt=APT::Install-Recommends \"false\"".to_owned(),
        "--aptopt=Acquire::Languages \"none\"".to_owned(),
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/doc/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/man/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".to_owned(),
        format!("--customize-hook=sh {} \"$1\"", script.display()),
    ];
    cmd!(sh, "mmdebstrap {options...} bookworm {rootfs} {sources}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("mmdebstrap of the systemd reference")?;
    let partial_raw = partial.join("systemd-ref.raw");
    cmd!(sh, "truncate --size=2G {partial_raw}").run()?;
    cmd!(sh, "mkfs.ext4 -q -F -L root -d {rootfs} {partial_raw}")
        .run()
        .context("mkfs.ext4 of the systemd reference")?;
    std::fs::remove_dir_all(&rootfs)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir)?;
    Ok(raw)
}

/// `k=v` pairs of every `bench:` line.
fn report_values(text: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for line in text.lines() {
        // The getty's prompt may share the line: `nodows-ref login: bench: ...`.
        let line = line.trim_end_matches('\r');
        let Some(rest) = line.find("bench: ").map(|at| &line[at + "bench: ".len()..]) else {
            continue;
        };
        let rest = rest.strip_prefix("pid1 ").map_or(rest.to_owned(), |words| {
            words
                .split_whitespace()
                .map(|word| format!("pid1_{word}"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        if let Some(analyze) = rest.strip_prefix("analyze ") {
            values.insert("analyze".to_owned(), analyze.to_owned());
            continue;
        }
        for word in rest.split_whitespace() {
            if let Some((key, value)) = word.split_once('=') {
                values.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    values
}

/// Seconds of a systemd timespan such as `1min 2.345s`, `12.5s` or `845ms`.
fn systemd_seconds(span: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for word in span.split_whitespace() {
        let split = word.find(|c: char| c.is_ascii_alphabetic())?;
        let (number, unit) = word.split_at(split);
        let number: f64 = number.parse().ok()?;
        total += number
            * match unit {
                "us" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "min" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        any = true;
    }
    any.then_some(total)
}

/// The userspace part of `systemd-analyze time`.
fn userspace_seconds(analyze: &str) -> Option<f64> {
    let end = analyze.find(" (userspace)")?;
    let start = analyze[..end].rfind("+ ").map_or(0, |i| i + 2);
    systemd_seconds(&analyze[start..end])
}

fn number(values: &HashMap<String, String>, key: &str) -> Option<f64> {
    values.get(key)?.parse().ok()
}

/// What the serial console says about the stages before init: the
/// kernel's printk time of `Run /init as init process` (kernel start to the
/// initrd's /init, guest clock) and initd's initrd line (`root ... mounted
/// after S s, modules: A B ...`: the stage's seconds and modules loaded).
fn early_stages(console: &str) -> (Option<f64>, Option<(f64, usize)>) {
    let kernel = console.lines().find_map(|line| {
        let (stamp, rest) = line.trim_start().strip_prefix('[')?.split_once(']')?;
        rest.trim_start()
            .starts_with("Run /init as init process")
            .then(|| stamp.trim().parse().ok())?
    });
    let initrd = console.lines().find_map(|line| {
        let rest = line.split_once(" mounted after ")?.1;
        let (seconds, modules) = rest.split_once("s, modules:")?;
        Some((seconds.parse().ok()?, modules.split_whitespace().count()))
    });
    (kernel, initrd)
}

#[derive(Default)]
pub(super) struct Samples {
    /// QEMU start to ready (nodows) or the login prompt (systemd).
    pub ready: Vec<f64>,
    /// systemd only: QEMU start to `is-system-running` answering.
    running: Vec<f64>,
    /// Init start to ready, from the guest's clock.
    pub guest: Vec<f64>,
    /// nodows: kernel start to the initrd's /init (guest clock).
    pub kernel: Vec<f64>,
    /// nodows: the initrd stage, /init to the root mounted (guest clock).
    pub initrd: Vec<f64>,
    /// nodows: modules the initrd stage loaded.
    pub initrd_modules: Vec<f64>,
    rss: Vec<f64>,
    pss: Vec<f64>,
    processes: Vec<f64>,
    threads: Vec<f64>,
    states: Vec<String>,
}

impl Samples {
    fn footprint(&mut self, values: &HashMap<String, String>) {
        let pairs = [
            ("pid1_rss_kib", &mut self.rss),
            ("pid1_pss_kib", &mut self.pss),
            ("processes", &mut self.processes),
            ("threads", &mut self.threads),
        ];
        for (key, samples) in pairs {
            if let Some(value) = number(values, key) {
                samples.push(value);
            }
        }
    }
}

pub(super) fn boot_nodows(
    context: &Context,
    built: &BuiltImage,
    work_root: &Path,
    run: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let mut config = built.config(&format!("bench-nodows-{run}"), false, "", work_root);
    config.accel = context.accel;
    let started = Instant::now();
    let mut vm = Vm::start(&config)?;
    vm.wait_for_ready(BOOT_TIMEOUT)?;
    samples.ready.push(started.elapsed().as_secs_f64());
    // The console is matched as it streams: wait for the whole line (t= has two decimals).
    let line = vm.wait_for_console_text(
        Pattern::regex(r"^nodows: ready .*t=[0-9]+\.[0-9]{2}"),
        Duration::from_secs(60),
    )?;
    if let Some(t) = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
    {
        samples.guest.push(t);
    }
    let (kernel, initrd) = early_stages(&vm.console_text());
    samples.kernel.extend(kernel);
    if let Some((seconds, modules)) = initrd {
        samples.initrd.push(seconds);
        samples.initrd_modules.push(modules as f64);
    }
    let (status, output) = vm.execute(FOOTPRINT, Duration::from_secs(120))?;
    if status != 0 {
        bail!("the footprint command failed in the nodows guest ({status}): {output}");
    }
    samples.footprint(&report_values(&output));
    vm.kill();
    Ok(())
}

fn boot_systemd(
    context: &Context,
    built: &BuiltImage,
    raw: &Path,
    work_root: &Path,
    run: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    // The dev image's command line without its root, init and nodows words.
    let mut words: Vec<&str> = built
        .cmdline
        .split_whitespace()
        .filter(|word| {
            !word.starts_with("root=") && !word.starts_with("init=") && !word.starts_with("nodows.")
        })
        .collect();
    words.insert(0, "root=/dev/vda");
    if !words.iter().any(|word| word.starts_with("console=")) {
        words.push("console=ttyS0");
    }
    let firmware = Firmware::DirectKernel {
        kernel: built.kernel.clone(),
        initrd: built.initrd.clone(),
        cmdline: words.join(" "),
    };
    let mut config = VmConfig::new(&format!("bench-systemd-{run}"), firmware, work_root);
    config.disk = Some(Disk::Fresh {
        image: raw.to_path_buf(),
        format: DiskFormat::Raw,
    });
    config.memory_mib = 1024;
    config.accel = context.accel;
    let started = Instant::now();
    let mut vm = Vm::start(&config)?;
    // The prompt is the unfinished last line until something else prints.
    vm.wait_for_console_text(Pattern::LineStart(LOGIN_PROMPT.to_owned()), BOOT_TIMEOUT)?;
    samples.ready.push(started.elapsed().as_secs_f64());
    // Not anchored: the line may begin with the login prompt.
    vm.wait_for_console_text(Pattern::regex(r"bench: state="), BOOT_TIMEOUT)?;
    samples.running.push(started.elapsed().as_secs_f64());
    vm.wait_for_console_text(Pattern::regex(r"bench: done"), Duration::from_secs(120))?;
    let values = report_values(&vm.console_text());
    if let Some(state) = values.get("state") {
        samples.states.push(state.clone());
    }
    if let Some(seconds) = values
        .get("analyze")
        .and_then(|text| userspace_seconds(text))
    {
        samples.guest.push(seconds);
    }
    samples.footprint(&values);
    vm.kill();
    Ok(())
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    qemu::require_qemu()?;
    let built = context.profile_image("dev").context("the dev image")?;
    let raw = reference_image(context).context("the systemd reference image")?;
    let work_root = context.bench_dir.join("qemu");
    let boots = if context.quick { 1 } else { 5 };
    let mut nodows = Samples::default();
    let mut systemd = Samples::default();
    for run in 0..boots {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_nodows in order {
            let result = if is_nodows {
                boot_nodows(context, &built, &work_root, run, &mut nodows)
            } else {
                boot_systemd(context, &built, &raw, &work_root, run, &mut systemd)
            };
            result.with_context(|| {
                format!(
                    "boot {} of {}",
                    run + 1,
                    if is_nodows { "nodows" } else { "systemd" }
                )
            })?;
            eprintln!(
                "    boot {}: nodows {:?} s, systemd {:?} s",
                run + 1,
                nodows.ready.last(),
                systemd.ready.last()
            );
        }
    }
    let nodows_ready = || Stat::new(nodows.ready.clone());
    suite.row(
        "QEMU start to ready (nodows) / serial login prompt (systemd)",
        Unit::Seconds,
        nodows_ready(),
        "Debian bookworm, systemd",
        Stat::new(systemd.ready.clone()),
    );
    suite.row(
        "QEMU start to ready (nodows) / `systemctl is-system-running` answers (systemd)",
        Unit::Seconds,
        nodows_ready(),
        "Debian bookworm, systemd",
        Stat::new(systemd.running.clone()),
    );
    suite.row(
        "init start to ready, guest clock (initd `t=` / systemd-analyze userspace)",
        Unit::Seconds,
        Stat::new(nodows.guest.clone()),
        "Debian bookworm, systemd",
        Stat::new(systemd.guest.clone()),
    );
    suite.row(
        "PID 1 RSS (VmRSS) at ready",
        Unit::KiB,
        Stat::new(nodows.rss.clone()),
        "systemd",
        Stat::new(systemd.rss.clone()),
    );
    suite.row(
        "PID 1 PSS (smaps_rollup) at ready",
        Unit::KiB,
        Stat::new(nodows.pss.clone()),
        "systemd",
        Stat::new(systemd.pss.clone()),
    );
    suite.row(
        "user-space processes at ready",
        Unit::Count,
        Stat::new(nodows.processes.clone()),
        "systemd",
        Stat::new(systemd.processes.clone()),
    );
    suite.row(
        "user-space threads at ready",
        Unit::Count,
        Stat::new(nodows.threads.clone()),
        "systemd",
        Stat::new(systemd.threads.clone()),
    );
    let mut states = systemd.states.clone();
    states.sort();
    states.dedup();
    suite.note(format!(
        "{boots} boot(s) of each, alternating, with the same QEMU flags (q35, 1 vCPU, 1 GiB, virtio disk on a fresh qcow2 overlay, accelerator {}) and the dev image's kernel, initrd and command line (for systemd without `init=` and the `nodows.*` words, root=/dev/vda). The initrd is nodows' own, so systemd gains from it too: with Debian's initramfs-tools initrd (udev and shell scripts) the same stage took about 4 s more of guest time under TCG (measured on the dev image before nodows had its own initrd).",
        super::accel_name(context.accel)
    ));
    suite.note(format!(
        "The systemd reference is built by the benchmark with mmdebstrap (minbase + {REFERENCE_PACKAGES}; systemd-networkd with DHCP, nginx and ssh enabled as Debian ships them, serial getty on ttyS0) into a bare ext4 file system; `systemctl is-system-running --wait` said: {}.",
        if states.is_empty() { "nothing".to_owned() } else { states.join(", ") }
    ));
    suite.note(
        "Footprint: nodows is measured through the test agent right after the ready line; systemd by a unit ordered after multi-user.target that waits for `is-system-running` and prints to ttyS0. Process and thread counts leave out kernel threads and include the few processes of the measuring command itself (the agent's on nodows, the report unit's on systemd).",
    );
    suite.note(
        "Not like for like: the reference's ssh host keys are made at build time by Debian's openssh-server postinst, while nodows makes its one ed25519 key at first boot (`ssh-keygen -t ed25519` in the ssh service, whose readiness is port 22); nodows' ready waits for it, systemd's login prompt and `running` do not.",
    );
    suite.note(
        "Guest clock: initd's `t=` counts from initd's start; systemd-analyze's userspace counts from systemd's start (after the initrd) to default.target.",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_timespans_and_userspace() {
        assert_eq!(systemd_seconds("845ms"), Some(0.845));
        assert_eq!(systemd_seconds("1min 2.5s"), Some(62.5));
        let analyze = "Startup finished in 2.101s (kernel) + 1.5s (initrd) + 1min 3.25s (userspace) = 1min 6.851s";
        assert_eq!(userspace_seconds(analyze), Some(63.25));
    }

    #[test]
    fn the_console_gives_the_kernel_and_initrd_stages() {
        let console = "[    0.000000] Linux version 6.1.0-57-cloud-amd64\r\n\
                       [    1.254301] Run /init as init process\r\n\
                       [    1.254302]   with arguments:\r\n\
                       initrd: root /dev/vda2 (ext4) mounted after 0.41s, modules: virtio_pci_modern_dev virtio_pci virtio_blk\r\n";
        assert_eq!(early_stages(console), (Some(1.254301), Some((0.41, 3))));
        assert_eq!(
            early_stages("nodows: ready mode=dev t=1.00\n"),
            (None, None)
        );
    }

    /// The state line may follow the getty's prompt on the same line (a
    /// boot once waited out its whole timeout for want of a match).
    #[test]
    fn report_lines_become_values() {
        let values = report_values(
            "noise\nnodows-ref login: bench: state=running\r\nbench: pid1 rss_kib=1200 pss_kib=900 threads=1\nbench: processes=12 threads=14\nbench: analyze Startup finished in 1s (kernel) + 2s (userspace) = 3s\n",
        );
        assert_eq!(values["state"], "running");
        assert_eq!(values["pid1_rss_kib"], "1200");
        assert_eq!(values["pid1_pss_kib"], "900");
        assert_eq!(values["processes"], "12");
        assert_eq!(values["threads"], "14");
        assert_eq!(userspace_seconds(&values["analyze"]), Some(2.0));
    }
}
