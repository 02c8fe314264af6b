//! Suite `verified`: the production image booted through OVMF with verified
//! boot (dm-verity root, signed unified kernel image, Secure Boot enforced
//! with the build's key enrolled by virt-fw-vars) against the same image
//! built with `--without-verified-boot` and booted by the same firmware
//! with no keys enrolled (Secure Boot off); and the hash tree's share of
//! the root partition.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::boot::BuiltImage;
use crate::qemu::{self, Firmware, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn build(context: &Context, out: &Path, without: bool) -> anyhow::Result<BuiltImage> {
    let sh = &context.sh;
    let flag: &[&str] = if without {
        &["--without-verified-boot"]
    } else {
        &[]
    };
    eprintln!("    building the production image into {}", out.display());
    cmd!(
        sh,
        "cargo xtask image --image debian --profile production --out {out} {flag...}"
    )
    .run()
    .context("cargo xtask image --image debian --profile production")?;
    BuiltImage::find(Some(out), "debian", "production")
}

/// OVMF's empty store with the build's test certificate as PK, KEK and db.
fn enrolled_vars(work: &Path) -> anyhow::Result<PathBuf> {
    let vars = work.join("user-key-vars.fd");
    qemu::enrol_secure_boot_key(&qemu::secure_boot_test_cert()?, &vars)?;
    Ok(vars)
}

fn boot(
    context: &Context,
    image: &BuiltImage,
    vars: &Path,
    name: &str,
    work: &Path,
) -> anyhow::Result<(f64, f64)> {
    let mut config = image.config(name, true, "", work);
    config.firmware = Firmware::UefiSecureBoot {
        vars: vars.to_path_buf(),
    };
    config.accel = context.accel;
    config.agent = false;
    let started = Instant::now();
    let mut vm = Vm::start(&config)?;
    let ready = vm.wait_for_ready(BOOT_TIMEOUT)?;
    let seconds = started.elapsed().as_secs_f64();
    vm.kill();
    // initd's own `t=`: from the root's init to ready, on the guest's clock.
    let guest = ready
        .split_whitespace()
        .find_map(|word| word.strip_prefix("t="))
        .and_then(|value| value.parse::<f64>().ok())
        .context("the ready line has no t=")?;
    Ok((seconds, guest))
}

/// `key=value` of the `.verity` file beside a verified image.
fn verity_value(image: &BuiltImage, key: &str) -> anyhow::Result<f64> {
    let path = image.raw.with_extension("verity");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("{}: no {key}", path.display()))
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    qemu::require_qemu()?;
    let dir = context.bench_dir.join("verified");
    let verified = build(context, &dir.join("with"), false)?;
    let plain = build(context, &dir.join("without"), true)?;
    let work = dir.join("qemu");
    std::fs::create_dir_all(&work)?;
    let vars = enrolled_vars(&work)?;
    let boots = if context.quick { 1 } else { 5 };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut with_guest, mut without_guest) = (Vec::new(), Vec::new());
    for run in 0..boots {
        // Alternating, so that a change in the machine's load hits both.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_verified in order {
            if is_verified {
                let (seconds, guest) = boot(
                    context,
                    &verified,
                    &vars,
                    &format!("bench-verified-{run}"),
                    &work,
                )?;
                with.push(seconds);
                with_guest.push(guest);
            } else {
                let (seconds, guest) = boot(
                    context,
                    &plain,
                    Path::new(qemu::OVMF_EMPTY_VARS_4M),
                    &format!("bench-unverified-{run}"),
                    &work,
                )?;
                without.push(seconds);
                without_guest.push(guest);
            }
        }
        eprintln!(
            "    boot {}: verified {:?} s, without {:?} s",
            run + 1,
            with.last(),
            without.last()
        );
    }
    suite.row(
        "QEMU start to ready through OVMF: dm-verity root + signed UKI, Secure Boot enforced",
        Unit::Seconds,
        Stat::new(with),
        "same image without verity and signatures, Secure Boot off",
        Stat::new(without),
    );
    suite.row(
        "root's init to ready, guest clock (initd `t=`): reads through dm-verity, configuration in RAM",
        Unit::Seconds,
        Stat::new(with_guest),
        "same image without verity and signatures",
        Stat::new(without_guest),
    );
    let data = verity_value(&verified, "data_blocks")?;
    let hash = verity_value(&verified, "hash_blocks")?;
    suite.row(
        "root partition: hash tree blocks / file system blocks",
        Unit::Percent,
        Some(Stat::one(hash * 100.0 / data)),
        "no hash tree",
        Some(Stat::one(0.0)),
    );
    suite.row(
        "root partition: hash tree size",
        Unit::MiB,
        Some(Stat::one(hash * 4096.0 / 1048576.0)),
        "no hash tree",
        Some(Stat::one(0.0)),
    );
    suite.note(format!(
        "{boots} boot(s) of each, alternating: the production image built twice from the same sources (the second with `--without-verified-boot`), both through OVMF_CODE_4M.secboot.fd with SMM, the first with the build's test key enrolled by virt-fw-vars (Secure Boot enforced: the firmware checks systemd-boot and the unified kernel image), the second with OVMF's empty variables (Secure Boot off, systemd-boot's text entry with the plain kernel and initrd); accelerator {}. Timed from QEMU start to `nodows: ready` on the serial console; the guest-clock row is initd's own `t=` (from the root's init to ready), which the host's load disturbs less.",
        super::accel_name(context.accel)
    ));
    suite.note(
        "The hash tree covers every block of the root file system (sha256, 4096-byte blocks, no superblock), used or not: its size follows the partition, not the files.",
    );
    Ok(())
}
