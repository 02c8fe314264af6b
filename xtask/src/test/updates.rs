//! End-to-end tests of A/B updates (issue #14): real boots through OVMF and
//! systemd-boot (boot counting needs the boot loader), artifacts streamed
//! over HTTP from a server on the host's 127.0.0.1, which the guest reaches
//! as 10.0.2.2 through QEMU's user network.
//!   The test profile is verified (`<verified-boot/>`): every boot checks
//!   that the root is a read-only dm-verity device over the running slot.
//!   v1 boots from slot a; `nodows update` writes v2 into slot b; after a
//!   reboot v2 runs, blessed; a broken v3 (its web service's binary is
//!   missing, so the mode never gets ready) uses up its tries and the machine
//!   is back on v2 by itself; a second update after the failed one works;
//!   then power cuts (QEMU killed) at random points during `nodows update`
//!   and during the first boot of the new slot, each followed by a boot that
//!   must be consistent. What lives on the data partition (a marker in
//!   /var/lib/nodows and /var/log/nodows, the ssh host key) must be the same
//!   after every update and every cut.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use super::Runner;
use crate::boot::BuiltImage;
use crate::qemu::file_server::FileServer;
use crate::qemu::{self, Accel, Disk, Pattern, Vm};

const IMAGE: &str = "debian-ab";
const PROFILE: &str = "test";
/// OVMF and systemd-boot under TCG, on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(420);
const UPDATE_TIMEOUT: Duration = Duration::from_secs(900);
/// A trial boot that is not ready reboots after nodows.trial-timeout=60
/// (images/debian-ab.xml); with the firmware, a boot takes a few minutes.
const FAILED_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Power cuts in `cargo xtask test` (NODOWS_FAULT_RUNS overrides; a longer
/// loop: `cargo xtask bench`).
const FAULT_RUNS: usize = 20;

struct Machine {
    image: BuiltImage,
    disk: PathBuf,
    work_root: PathBuf,
    accel: Accel,
    boots: usize,
}

impl Machine {
    fn boot(&mut self) -> anyhow::Result<Vm> {
        self.boots += 1;
        let mut config = self.image.config(
            &format!("updates-boot-{}", self.boots),
            true,
            "",
            &self.work_root,
        );
        config.disk = Some(Disk::Overlay(self.disk.clone()));
        config.accel = self.accel;
        Vm::start(&config)
    }
}

/// What lives on the data partition (mounted on /var/lib/nodows, its
/// log/ on /var/log/nodows) as a booted machine shows it (A/B and verified
/// images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Persistent {
    pub marker: String,
    pub log_marker: String,
    /// `ssh-keygen -l` of the ssh host key.
    pub host_key: String,
}

pub(super) const MARKER: &str = "/var/lib/nodows/e2e-marker";
pub(super) const LOG_MARKER: &str = "/var/log/nodows/e2e-marker";
const HOST_KEY: &str = "/var/lib/nodows/ssh/ssh_host_ed25519_key";

/// Checks that the partition named `data` is mounted on /var/lib/nodows
/// and /var/log/nodows, and reads what lives there.
pub(super) fn persistent(vm: &mut Vm) -> anyhow::Result<Persistent> {
    let device = vm.succeed(
        "sed -n 's/^DEVNAME=//p' $(grep -l '^PARTNAME=data$' /sys/class/block/*/uevent)",
    )?;
    let device = device.trim();
    ensure!(!device.is_empty(), "no partition named data");
    let mounts = vm.succeed("mount")?;
    for path in ["/var/lib/nodows", "/var/log/nodows"] {
        ensure!(
            mounts
                .lines()
                .any(|line| line.starts_with(&format!("/dev/{device} on {path} type ext4 ("))),
            "the data partition /dev/{device} is not mounted on {path}:\n{mounts}"
        );
    }
    let read = |vm: &mut Vm, command: &str| -> anyhow::Result<String> {
        Ok(vm.succeed(command)?.trim().to_string())
    };
    Ok(Persistent {
        marker: read(vm, &format!("cat {MARKER} 2>/dev/null; true"))?,
        log_marker: read(vm, &format!("cat {LOG_MARKER} 2>/dev/null; true"))?,
        host_key: read(vm, &format!("ssh-keygen -l -f {HOST_KEY}.pub"))?,
    })
}

/// What a booted machine says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    slot: String,
    version: String,
    state: String,
    line: String,
}

pub fn run(runner: &mut Runner, work_root: &Path, accel: Accel) {
    let dir = match qemu::target_dir() {
        Ok(target) => target.join("e2e-updates"),
        Err(error) => {
            runner.step("e2e updates: target directory", || Err(error));
            return;
        }
    };
    for (version, broken) in [("1", false), ("2", false), ("3", true)] {
        let name =
            format!(
            "cargo xtask image --image {IMAGE} --profile {PROFILE} --release-version {version}{}",
            if broken { " (broken: web's binary missing)" } else { "" }
        );
        runner.step(&name, || build(&dir, version, broken));
    }
    let image =
        |version: &str| BuiltImage::find(Some(&dir.join(format!("v{version}"))), IMAGE, PROFILE);
    let server = match FileServer::start(&dir) {
        Ok(server) => server,
        Err(error) => {
            runner.step("e2e updates: artifact server on 127.0.0.1", || Err(error));
            return;
        }
    };
    let url = |version: &str| {
        format!(
            "http://10.0.2.2:{}/v{version}/{IMAGE}-{PROFILE}/{IMAGE}-{PROFILE}.update",
            server.port
        )
    };

    let mut machine: Option<Machine> = None;
    let mut vm: Option<Vm> = None;
    runner.step(
        "e2e updates 1: v1 (A/B) boots through OVMF from slot a, good",
        || {
            let image = image("1")?;
            let mut config = image.config("updates-v1", true, "", work_root);
            config.accel = accel;
            let mut booted = Vm::start(&config)?;
            let disk = booted.overlay().context("no disk")?.to_path_buf();
            let running = check_consistent(&mut booted)?;
            ensure!(
                running.slot == "a" && running.version == "1" && running.state == "good",
                "expected slot a, version 1, good: {}",
                running.line
            );
            booted
                .wait_for_console_text("(first use: directories made)", Duration::from_secs(5))?;
            machine = Some(Machine {
                image,
                disk,
                work_root: work_root.to_path_buf(),
                accel,
                boots: 0,
            });
            vm = Some(booted);
            Ok(())
        },
    );
    let mut update_seconds = 60.0;
    let mut kept: Option<Persistent> = None;
    runner.step(
        "e2e updates 2: nodows update streams v2 from the host into slot b",
        || {
            let booted = vm.as_mut().context("no machine: an earlier step failed")?;
            let marker = format!(
                "v1 {:?}",
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?
            );
            booted.succeed(&format!(
                "echo '{marker}' > {MARKER} && echo '{marker}' > {LOG_MARKER} && sync"
            ))?;
            let before = persistent(booted)?;
            ensure!(
                before.marker == marker && before.log_marker == marker,
                "markers not written: {before:?}"
            );
            kept = Some(before);
            let started = Instant::now();
            let (code, output) =
                booted.execute(&format!("nodows update {}", url("2")), UPDATE_TIMEOUT)?;
            update_seconds = started.elapsed().as_secs_f64();
            eprintln!("    update: {update_seconds:.1}s: {}", output.trim());
            ensure!(code == 0, "nodows update failed ({code}): {output}");
            ensure!(output.contains("written to slot b"), "{output}");
            let status = booted.succeed("nodows boot-status")?;
            ensure!(
                status.contains("slot=a version=1 state=good"),
                "still v1 until the reboot: {status}"
            );
            Ok(())
        },
    );
    runner.step(
        "e2e updates 3: after a reboot v2 runs from slot b, blessed; initctl status shows it; the data partition kept the marker and the ssh host key",
        || {
            let machine = machine
                .as_mut()
                .context("no machine: an earlier step failed")?;
            let mut booted = vm.take().context("no machine: an earlier step failed")?;
            reboot(&mut booted)?;
            let mut booted = machine.boot()?;
            let running = check_consistent(&mut booted)?;
            ensure!(
                running.slot == "b" && running.version == "2",
                "expected v2 in slot b: {}",
                running.line
            );
            booted.wait_for_console_text(
                "nodows: boot blessed slot=b version=2 state=good",
                Duration::from_secs(60),
            )?;
            let status = booted.succeed("initctl status")?;
            ensure!(
                status
                    .lines()
                    .next()
                    .unwrap_or("")
                    .starts_with("boot slot=b version=2 state=good entry=nodows-2-b"),
                "initctl status: {status}"
            );
            let expected = kept.as_ref().context("no marker: step 2 failed")?;
            let after = persistent(&mut booted)?;
            ensure!(
                &after == expected,
                "the data partition lost state in the update: before {expected:?}, after {after:?}"
            );
            vm = Some(booted);
            Ok(())
        },
    );
    runner.step(
        "e2e updates 4: a broken v3 uses up its tries and the machine is back on v2 by itself",
        || {
            let machine = machine
                .as_mut()
                .context("no machine: an earlier step failed")?;
            let mut booted = vm.take().context("no machine: an earlier step failed")?;
            let (code, output) =
                booted.execute(&format!("nodows update {}", url("3")), UPDATE_TIMEOUT)?;
            ensure!(
                code == 0 && output.contains("written to slot a"),
                "nodows update v3 ({code}): {output}"
            );
            reboot(&mut booted)?;
            // Each try: systemd-boot counts the entry down, v3 never gets ready,
            // initd reboots after the trial timeout. No operator acts here.
            let mut tries = 0;
            let booted = loop {
                let mut booted = machine.boot()?;
                let line = booted.wait_for_console_text(
                    Pattern::regex(r"^nodows: boot slot=\S+ version=\S+ state="),
                    READY_TIMEOUT,
                )?;
                if line.contains("nodows: boot slot=a version=3 state=trial") {
                    tries += 1;
                    ensure!(
                        tries <= 3,
                        "v3 booted a fourth time: its tries did not run out"
                    );
                    booted.wait_for_console_text(
                        "nodows: boot on trial not ready after 60s: rebooting",
                        FAILED_BOOT_TIMEOUT,
                    )?;
                    booted.wait_for_exit(Duration::from_secs(120))?;
                    continue;
                }
                break booted;
            };
            let mut booted = booted;
            ensure!(tries == 3, "v3 was tried {tries} times, not 3");
            let running = check_consistent(&mut booted)?;
            ensure!(
                running.slot == "b" && running.version == "2",
                "expected v2 in slot b: {}",
                running.line
            );
            ensure!(
                running.line.contains("failed=3@a"),
                "the failed version is not reported: {}",
                running.line
            );
            booted.wait_for_console_text(
                "ran out of tries and are not booted again",
                Duration::from_secs(10),
            )?;
            vm = Some(booted);
            Ok(())
        },
    );
    runner.step(
        "e2e updates 5: a second update after the failed one works (v2 into slot a)",
        || {
            let machine = machine
                .as_mut()
                .context("no machine: an earlier step failed")?;
            let mut booted = vm.take().context("no machine: an earlier step failed")?;
            let (code, output) =
                booted.execute(&format!("nodows update {}", url("2")), UPDATE_TIMEOUT)?;
            ensure!(
                code == 0 && output.contains("written to slot a"),
                "nodows update ({code}): {output}"
            );
            reboot(&mut booted)?;
            let mut booted = machine.boot()?;
            let running = check_consistent(&mut booted)?;
            ensure!(
                running.slot == "a" && running.version == "2",
                "expected v2 in slot a: {}",
                running.line
            );
            ensure!(
                !running.line.contains("failed="),
                "the failed entry was replaced: {}",
                running.line
            );
            vm = Some(booted);
            Ok(())
        },
    );
    let runs = std::env::var("NODOWS_FAULT_RUNS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(FAULT_RUNS);
    runner.step(&format!("e2e updates 6: {runs} power cuts during nodows update and the new slot's first boot; every boot after is consistent"), || {
        let machine = machine.as_mut().context("no machine: an earlier step failed")?;
        let mut booted = vm.take().context("no machine: an earlier step failed")?;
        let seed = std::env::var("NODOWS_FAULT_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1);
        eprintln!("    fault injection: seed {seed} (NODOWS_FAULT_SEED={seed} repeats the cut points)");
        let mut random = XorShift(seed);
        let (mut during_update, mut during_first_boot) = (0, 0);
        for run in 0..runs {
            let cut_after;
            if run % 2 == 0 {
                booted.send_command(&format!("nodows update {}", url("2")))?;
                cut_after = random.below(update_seconds.max(5.0) * 1.2);
                std::thread::sleep(Duration::from_secs_f64(cut_after));
                booted.kill();
                during_update += 1;
            } else {
                let (code, output) = booted.execute(&format!("nodows update {}", url("2")), UPDATE_TIMEOUT)?;
                ensure!(code == 0, "run {run}: nodows update ({code}): {output}");
                reboot(&mut booted)?;
                let mut first = machine.boot()?;
                cut_after = random.below(40.0);
                std::thread::sleep(Duration::from_secs_f64(cut_after));
                first.kill();
                during_first_boot += 1;
            }
            drop(booted);
            booted = machine.boot()?;
            let running = check_consistent(&mut booted)
                .with_context(|| format!("run {run}: power cut {cut_after:.1}s into the {}", if run % 2 == 0 { "update" } else { "first boot" }))?;
            if let Some(expected) = &kept {
                let after = persistent(&mut booted)?;
                ensure!(&after == expected, "run {run}: the data partition lost state: before {expected:?}, after {after:?}");
            }
            eprintln!("    cut {run}: {} after {cut_after:.1}s: then {}", if run % 2 == 0 { "update" } else { "first boot" }, running.line);
        }
        eprintln!("    fault injection: {runs} power cuts ({during_update} during nodows update, {during_first_boot} during the first boot of the new slot), every boot after consistent");
        booted.shutdown(Duration::from_secs(30))?;
        Ok(())
    });
}

/// Builds version `version` into `DIR/vVERSION/`; the broken one from a
/// copy of the sources whose web service names a binary that is missing.
fn build(dir: &Path, version: &str, broken: bool) -> anyhow::Result<()> {
    let out = dir.join(format!("v{version}"));
    let out_text = out.to_string_lossy().into_owned();
    let mut args = vec![
        "image",
        "--image",
        IMAGE,
        "--profile",
        PROFILE,
        "--release-version",
        version,
        "--out",
        &out_text,
    ];
    let source_text;
    if broken {
        let source = dir.join(format!("src-v{version}"));
        let _ = std::fs::remove_dir_all(&source);
        std::fs::create_dir_all(&source)?;
        let root = qemu::workspace_root();
        for part in ["images", "profiles", "services", "overlays", "models"] {
            super::run_command(
                std::process::Command::new("cp")
                    .arg("--recursive")
                    .arg(root.join(part))
                    .arg(&source),
            )?;
        }
        let web = source.join("services/web/service.xml");
        let text = std::fs::read_to_string(&web)?;
        ensure!(
            text.contains("/usr/sbin/nginx\""),
            "{}: no nginx exec to break",
            web.display()
        );
        std::fs::write(
            &web,
            text.replace(
                "/usr/sbin/nginx\"",
                "/usr/sbin/nginx-missing-in-this-version\"",
            ),
        )?;
        source_text = source.to_string_lossy().into_owned();
        args.extend(["--source", &source_text]);
    }
    super::run_command(&mut super::cargo_xtask(&args))
}

fn reboot(vm: &mut Vm) -> anyhow::Result<()> {
    vm.send_command("initctl reboot")?;
    // -no-reboot: the guest's reboot ends QEMU.
    vm.wait_for_exit(Duration::from_secs(60))?;
    Ok(())
}

/// Waits for ready and checks that the slot on the kernel command line,
/// the running root's release and the boot entry agree.
fn check_consistent(vm: &mut Vm) -> anyhow::Result<Running> {
    vm.wait_for_ready(READY_TIMEOUT)?;
    let line = vm.succeed("nodows boot-status")?.trim().to_string();
    let word = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let running = Running {
        slot: word("slot"),
        version: word("version"),
        state: word("state"),
        line: line.clone(),
    };
    let cmdline = vm.succeed("cat /proc/cmdline")?;
    ensure!(
        cmdline
            .split_whitespace()
            .any(|w| w == format!("nodows.slot={}", running.slot)),
        "boot-status says slot {} but the kernel command line is {cmdline}",
        running.slot
    );
    let release = vm.succeed("cat /etc/nodows/release")?;
    ensure!(
        release
            .lines()
            .any(|l| l == format!("VERSION={}", running.version)),
        "boot-status says version {} but /etc/nodows/release is {release}",
        running.version
    );
    ensure!(
        word("entry").ends_with(&format!("-{}", running.slot)),
        "no boot entry for the running slot: {line}"
    );
    // The test profile is verified: each slot boots its own UKI, whose
    // root hash maps that slot's partition through dm-verity.
    let beneath = super::verified::verity_root(vm)?;
    ensure!(
        beneath == format!("root-{}", running.slot),
        "slot {} runs on a dm-verity root over {beneath}",
        running.slot
    );
    let fsck = vm.succeed("dmesg")?;
    if let Some(bad) = fsck.lines().find(|l| l.contains("EXT4-fs error")) {
        bail!("the root file system has errors: {bad}");
    }
    Ok(running)
}

/// Cut points from a seed that is printed, so a failing run can be repeated.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, limit: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * limit
    }
}
