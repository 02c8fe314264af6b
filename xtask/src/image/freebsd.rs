//! `cargo xtask image --image freebsd --freebsd-dist DIR`: a FreeBSD
//! appliance from the FreeBSD distribution sets (see docs/image-builder.md,
//! "FreeBSD images").
//!
//! The FreeBSD back end of the one pipeline (`super::build_image`), the
//! `OsBackend` impl at the end of this file: the plan (`plan.rs`: services
//! with their FreeBSD forms and package mappings), the distribution sets
//! checked before anything slow (`sets.rs`: readable, amd64, version),
//! initd cross-built with cargo zigbuild (`binaries.rs`), the sets unpacked
//! as the base with initd, the services, the model, the overlays, fstab and
//! loader.conf added and the configs and rc.d glue baked by the host
//! renderer (`root.rs`), a UFS2 root by makefs, an ESP holding the set's
//! loader.efi and a GPT in plain files (`disk.rs`), then qcow2,
//! manifest.json and SHA256SUMS (`manifest.rs`).

use std::path::{Path, PathBuf};

use super::assemble::{FileEntry, Staging};
use super::backend::{Build, OsBackend};
use super::ui::Ui;
use super::BadInput;

const MIB: u64 = 1024 * 1024;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of a freebsd-ufs partition.
pub const FREEBSD_UFS_TYPE: &str = "516E7CB6-6ECF-11D6-8FF8-00022D09712B";
/// The GPT partition name of the root: FreeBSD shows it as /dev/gpt/rootfs.
pub const ROOT_LABEL: &str = "rootfs";
/// Where the image keeps nodows' own files (FreeBSD's place for local software).
pub const NODOWS_ETC: &str = "usr/local/etc/nodows";
/// ELF e_machine of x86-64.
const EM_X86_64: u16 = 62;
/// ELF EI_OSABI of FreeBSD.
pub const ELFOSABI_FREEBSD: u8 = 9;
/// The glue rendered from freebsd/services/nodows-rc.
pub const GLUE_SERVICE: &str = "nodows-rc";

mod binaries;
mod disk;
mod manifest;
mod plan;
mod root;
mod sets;

pub use binaries::*;
pub use disk::*;
pub use manifest::*;
pub use plan::*;
pub use root::*;
pub use sets::*;

/// `cargo xtask image` for an os="freebsd" image: `--plan` prints the
/// plan, else the sets are checked and the pipeline builds it.
pub fn build(args: &super::Args, source: &Path) -> anyhow::Result<()> {
    if !args.format.is_empty() {
        return Err(BadInput(format!(
            "--format: FreeBSD images ({}) write raw and qcow2 only; leave the option out",
            source
                .join("images")
                .join(format!("{}.xml", args.image))
                .display()
        ))
        .into());
    }
    let plan = resolve(source, &args.image, &args.profile)?;
    if args.plan {
        print!("{}", plan.render());
        return Ok(());
    }
    let Some(dist) = &args.freebsd_dist else {
        return Err(BadInput(format!(
            "images/{}.xml is a FreeBSD image: give the directory of the distribution sets with --freebsd-dist DIR (base.txz, kernel.txz)",
            args.image
        ))
        .into());
    };
    let out_parent = args.out_parent(source);
    build_with(&plan, dist, &out_parent, args.verbose, None, None)?;
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

/// Builds the image of `plan` from the sets in `dist` through the pipeline
/// (`super::build_image`); returns the output directory. `target_dir`
/// defaults to cargo metadata's, `source_date_epoch` to SOURCE_DATE_EPOCH
/// or the last commit's time.
pub fn build_with(
    plan: &FreebsdPlan,
    dist: &Path,
    out_parent: &Path,
    verbose: bool,
    target_dir: Option<&Path>,
    source_date_epoch: Option<u64>,
) -> anyhow::Result<PathBuf> {
    // Every check that needs no build or unpacking first.
    let freebsd = Freebsd {
        plan: plan.clone(),
        distribution: check_distribution(dist)?,
    };
    super::build_image(
        &freebsd,
        &super::Pipeline {
            source: plan.source.clone(),
            out_parent: out_parent.to_path_buf(),
            verbose,
            target_dir: target_dir.map(Path::to_path_buf),
            source_date_epoch,
        },
    )
}

/// A FreeBSD image of one profile: its plan and the checked sets.
pub struct Freebsd {
    plan: FreebsdPlan,
    distribution: Distribution,
}

/// The host tools the FreeBSD disk needs, with their Debian packages;
/// an error naming the apt-get command when one is missing.
fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("makefs", "makefs"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
        ("qemu-img", "qemu-utils"),
        ("xz", "xz-utils"),
        ("fallocate", "util-linux"),
        ("setarch", "util-linux"),
    ]
    .into_iter()
    .filter(|(tool, _)| !on_path(tool))
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        return Err(BadInput(format!(
            "missing host tools: apt-get install --no-install-recommends {}",
            missing.join(" ")
        ))
        .into());
    }
    Ok(())
}

impl OsBackend for Freebsd {
    type Host = ();
    type Binaries = FreebsdBinaries;
    type Base = ();
    type Boot = ();
    type Layout = FreebsdLayout;

    fn name(&self) -> String {
        format!("{}-{}", self.plan.image, self.plan.profile)
    }

    fn render_plan(&self) -> String {
        self.plan.render()
    }

    fn origin(&self) -> Option<String> {
        Some(format!("FreeBSD {}", self.distribution.version))
    }

    fn check_host(&self, ui: &mut Ui, _build: &Build) -> anyhow::Result<()> {
        ui.step("check host tools", |_| check_tools())
    }

    fn build_binaries(&self, ui: &mut Ui, build: &Build) -> anyhow::Result<FreebsdBinaries> {
        ui.step("build initd (x86_64-unknown-freebsd) and nodows", |ui| {
            build_binaries(ui, &build.source, &build.target_dir)
        })
    }

    fn fetch_base(
        &self,
        ui: &mut Ui,
        _build: &Build,
        _host: &(),
        staging: &Staging,
    ) -> anyhow::Result<()> {
        ui.step("unpack the distribution sets", |ui| {
            unpack_sets(ui, &self.distribution, staging)
        })
    }

    fn place_binaries(&self, binaries: &FreebsdBinaries, staging: &Staging) -> anyhow::Result<()> {
        place_binaries(binaries, staging)
    }

    fn install_files(&self, _build: &Build, _host: &(), staging: &Staging) -> anyhow::Result<()> {
        install_files(&self.plan, staging)
    }

    fn install_boot_files(
        &self,
        _build: &Build,
        _binaries: &FreebsdBinaries,
        staging: &Staging,
    ) -> anyhow::Result<()> {
        install_boot_files(staging)
    }

    fn wire_services(
        &self,
        ui: &mut Ui,
        binaries: &FreebsdBinaries,
        staging: &Staging,
    ) -> anyhow::Result<()> {
        ui.step("bake configs and the rc.d glue (nodows render)", |ui| {
            bake(ui, &self.plan, &binaries.nodows, staging)
        })
    }

    fn hash_root(
        &self,
        staging: &Staging,
        _base: &(),
        source_date_epoch: u64,
    ) -> anyhow::Result<Vec<FileEntry>> {
        super::assemble::finish(staging, None, source_date_epoch)
    }

    fn input_hash(&self, build: &Build, _base: &(), files: &[FileEntry]) -> String {
        input_hash(
            &self.plan,
            &self.distribution,
            build.source_date_epoch,
            files,
        )
    }

    fn disk_layout(&self, input_hash: &str) -> FreebsdLayout {
        FreebsdLayout::new(&self.plan, input_hash)
    }

    fn write_disk(
        &self,
        ui: &mut Ui,
        build: &Build,
        _host: &(),
        staging: Staging,
        _boot: &(),
        files: &[FileEntry],
        input_hash: &str,
        layout: &FreebsdLayout,
        out: &Path,
    ) -> anyhow::Result<()> {
        ui.step("disk image (ufs2 root, ESP with loader.efi, GPT)", |ui| {
            build_disk(
                ui,
                layout,
                &staging,
                out,
                &build.name,
                build.source_date_epoch,
            )
        })?;
        ui.step("manifest and checksums", |_| {
            write_manifest(
                out,
                &self.plan,
                &self.distribution,
                input_hash,
                build.source_date_epoch,
                files,
                layout,
            )
        })?;
        drop(staging);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
