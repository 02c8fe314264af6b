//! Suite `kernel`: the dev image with Debian's cloud kernel
//! (`images/debian-cloud.xml`, linux-image-cloud-amd64) against the same
//! image with the generic kernel (`images/debian.xml`, linux-image-amd64),
//! booted alternately in the same run with the same QEMU flags: QEMU start
//! to ready, and on the guest's clock the kernel, the initrd stage and
//! init to ready; the sizes of kernel and initrd.

use std::path::Path;

use anyhow::Context as _;

use super::boot::{boot_nodows, Samples};
use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::boot::BuiltImage;
use crate::qemu;

/// The generic kernel's image, the peer of every row.
const GENERIC: &str = "generic kernel (images/debian.xml)";

fn kib(path: &Path) -> anyhow::Result<Stat> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    Ok(Stat::one(bytes as f64 / 1024.0))
}

fn initrd_kib(image: &BuiltImage) -> anyhow::Result<Option<Stat>> {
    image.initrd.as_deref().map(kib).transpose()
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    qemu::require_qemu()?;
    let generic = context.image_of("debian", "dev").context("the dev image")?;
    let cloud = context
        .image_of("debian-cloud", "dev")
        .context("the dev image, cloud kernel")?;
    let work_root = context.bench_dir.join("qemu-kernel");
    let boots = if context.quick { 1 } else { 5 };
    let mut generic_samples = Samples::default();
    let mut cloud_samples = Samples::default();
    for run in 0..boots {
        // Alternate which kernel boots first, as the boot suite does.
        let cloud_first = run % 2 == 0;
        for is_cloud in [cloud_first, !cloud_first] {
            let (image, samples, label) = if is_cloud {
                (&cloud, &mut cloud_samples, "cloud")
            } else {
                (&generic, &mut generic_samples, "generic")
            };
            boot_nodows(context, image, &work_root.join(label), run, samples)
                .with_context(|| format!("boot {} of the {label} kernel", run + 1))?;
            eprintln!(
                "    boot {} ({label}): ready after {:?} s",
                run + 1,
                samples.ready.last()
            );
        }
    }
    type Figure = fn(&Samples) -> &Vec<f64>;
    let timed: [(&str, Unit, Figure); 5] = [
        ("QEMU start to ready", Unit::Seconds, |s| &s.ready),
        ("kernel to /init, guest clock", Unit::Seconds, |s| &s.kernel),
        ("initrd stage, guest clock", Unit::Seconds, |s| &s.initrd),
        ("init to ready, guest clock (`t=`)", Unit::Seconds, |s| {
            &s.guest
        }),
        ("modules the initrd loaded", Unit::Count, |s| {
            &s.initrd_modules
        }),
    ];
    for (figure, unit, samples) in timed {
        suite.row(
            figure,
            unit,
            Stat::new(samples(&cloud_samples).clone()),
            GENERIC,
            Stat::new(samples(&generic_samples).clone()),
        );
    }
    suite.row(
        "kernel image (vmlinuz)",
        Unit::KiB,
        Some(kib(&cloud.kernel)?),
        GENERIC,
        Some(kib(&generic.kernel)?),
    );
    suite.row(
        "initrd (nodows' own, uncompressed cpio)",
        Unit::KiB,
        initrd_kib(&cloud)?,
        GENERIC,
        initrd_kib(&generic)?,
    );
    suite.note(format!(
        "{boots} boot(s) of each dev image, alternating, direct kernel boot with the same QEMU flags (q35, 1 vCPU, virtio disk on a fresh qcow2 overlay, virtio-net, accelerator {}) and the same services and command line (`loglevel=7`: the kernel's messages go to the serial console). The cloud image is images/debian-cloud.xml: linux-image-cloud-amd64, which has ext4, jbd2, mbcache, crc32c and nvme built in and no AHCI or e1000 driver, so its initrd lists neither ahci nor (as files) ext4 and nvme.",
        super::accel_name(context.accel)
    ));
    suite.note(
        "Before the kernel's clock starts, the firmware loads vmlinuz and initrd and the kernel decompresses itself: the cloud kernel is LZ4-compressed (a larger file that unpacks fast), the generic one XZ, which under TCG is most of the difference from QEMU start that the guest-clock rows do not show.",
    );
    suite.note(
        "Guest clock: kernel to /init is the kernel's printk time stamp of `Run /init as init process`; the initrd stage is initd's `mounted after` count from /init's start to the root mounted (modules loaded, root device found); `t=` counts from PID 1's start in the root to the ready line.",
    );
    Ok(())
}
