//! The cloud kernel (`images/debian-cloud.xml`, linux-image-cloud-amd64):
//! its dev image builds (an `<initrd-module>` the kernel has built in is no
//! error) and boots to ready with every service of the mode, on that
//! kernel, with ext4 built in rather than loaded. A warm build and one TCG
//! boot: about 20 s (the first run builds its base, about 30 s more).

use anyhow::ensure;

use super::{check_mode_services, Boots, Runner, POWEROFF_TIMEOUT, READY_TIMEOUT};
use crate::boot::BuiltImage;

const IMAGE: &str = "debian-cloud";

pub(super) fn run(runner: &mut Runner, context: &Boots) {
    let mut built: Option<BuiltImage> = None;
    runner.step(
        &format!("cargo xtask image --image {IMAGE} --profile dev"),
        || {
            crate::test::run_command(&mut crate::test::cargo_xtask(&[
                "image",
                "--image",
                IMAGE,
                "--profile",
                "dev",
            ]))?;
            built = Some(BuiltImage::find(None, IMAGE, "dev")?);
            Ok(())
        },
    );
    runner.step(
        "e2e cloud kernel: debian-cloud boots to ready on linux-image-cloud-amd64, ext4 built in",
        || {
            let image = match &built {
                Some(image) => image.clone(),
                None => BuiltImage::find(None, IMAGE, "dev")?,
            };
            let mut vm = context.start(&image, "cloud-dev", "")?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            check_mode_services(&mut vm, "dev")?;
            let release = vm.succeed("uname -r")?;
            ensure!(
                release.trim().ends_with("-cloud-amd64"),
                "uname -r says {release}: not the cloud kernel"
            );
            // Built in: the kernel knows ext4, no module of that name is loaded.
            vm.succeed("grep -qw ext4 /proc/filesystems && ! grep -q '^ext4 ' /proc/modules")?;
            vm.shutdown(POWEROFF_TIMEOUT)?;
            Ok(())
        },
    );
}
