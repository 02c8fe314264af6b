//! Suite `update`: A/B updates of the `debian-ab` test image under TCG.
//! Builds versions 1 and 2 (into the scratch directory), then measures the
//! artifact's size against the raw disk's allocated size and against the
//! raw disk compressed with the same zstd level's command-line tool, and,
//! over a few boots through OVMF, the time of `nodows update` streaming the
//! artifact over HTTP and of the reboot to ready on the new slot.

use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::boot::BuiltImage;
use crate::qemu::file_server::FileServer;
use crate::qemu::{Disk, Vm};

const IMAGE: &str = "debian-ab";
const PROFILE: &str = "test";
const READY_TIMEOUT: Duration = Duration::from_secs(420);

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    let sh = &context.sh;
    let dir = context.work.join("update");
    for version in ["1", "2"] {
        let out = dir.join(format!("v{version}"));
        cmd!(
            sh,
            "cargo xtask image --image {IMAGE} --profile {PROFILE} --release-version {version} --out {out}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("building {IMAGE} version {version}"))?;
    }
    let v1 = BuiltImage::find(Some(&dir.join("v1")), IMAGE, PROFILE)?;
    let relative = format!("v2/{IMAGE}-{PROFILE}/{IMAGE}-{PROFILE}.update");
    let artifact = dir.join(&relative);
    let mib = 1024.0 * 1024.0;
    let artifact_mib = std::fs::metadata(&artifact)?.len() as f64 / mib;
    let raw = &v1.raw;
    let raw_allocated_mib = (std::fs::metadata(raw)?.blocks() * 512) as f64 / mib;
    let compressed = dir.join("raw.zst");
    cmd!(sh, "zstd --quiet -9 --force {raw} -o {compressed}").run()?;
    let compressed_mib = std::fs::metadata(&compressed)?.len() as f64 / mib;
    let _ = std::fs::remove_file(&compressed);
    suite.row(
        "update artifact vs the raw disk's allocated size",
        Unit::MiB,
        Some(Stat::one(artifact_mib)),
        "raw disk, allocated",
        Some(Stat::one(raw_allocated_mib)),
    );
    suite.row(
        "update artifact vs the raw disk compressed (zstd -9)",
        Unit::MiB,
        Some(Stat::one(artifact_mib)),
        "raw.zst",
        Some(Stat::one(compressed_mib)),
    );

    let cycles = if context.quick { 1 } else { 3 };
    let server = FileServer::start(&dir)?;
    let url = format!("http://10.0.2.2:{}/{relative}", server.port);
    let mut config = v1.config("bench-update", true, "", &context.work.join("qemu"));
    config.accel = context.accel;
    let mut vm = Vm::start(&config)?;
    let disk = vm.overlay().context("no disk")?.to_path_buf();
    vm.wait_for_ready(READY_TIMEOUT)?;
    let (mut update_seconds, mut ready_seconds) = (Vec::new(), Vec::new());
    for cycle in 0..cycles {
        let started = Instant::now();
        let (code, output) =
            vm.execute(&format!("nodows update {url}"), Duration::from_secs(900))?;
        ensure!(code == 0, "nodows update ({code}): {output}");
        update_seconds.push(started.elapsed().as_secs_f64());
        vm.send_command("initctl reboot")?;
        vm.wait_for_exit(Duration::from_secs(60))?;
        let mut config = v1.config(
            &format!("bench-update-{cycle}"),
            true,
            "",
            &context.work.join("qemu"),
        );
        config.accel = context.accel;
        config.disk = Some(Disk::Overlay(disk.clone()));
        vm = Vm::start(&config)?;
        vm.wait_for_ready(READY_TIMEOUT)?;
        ready_seconds.push(vm.uptime().as_secs_f64());
        let status = vm.succeed("nodows boot-status")?;
        ensure!(
            status.contains("version=2"),
            "not on version 2 after the update: {status}"
        );
    }
    vm.shutdown(Duration::from_secs(30))?;
    suite.row(
        "nodows update over HTTP: stream, hash, write, fsync",
        Unit::Seconds,
        Stat::new(update_seconds),
        "",
        None,
    );
    suite.row(
        "reboot: QEMU start to ready on the new slot (OVMF, systemd-boot)",
        Unit::Seconds,
        Stat::new(ready_seconds),
        "",
        None,
    );
    suite.note(format!(
        "The artifact is {:.0} % of the raw disk's allocated size (goal: at most 40 %) and {:.0} % of the raw disk compressed with zstd -9; it holds one slot's root file system, kernel and initrd.",
        artifact_mib / raw_allocated_mib * 100.0,
        artifact_mib / compressed_mib * 100.0
    ));
    Ok(())
}
