//! The seam between the one build pipeline (`image.rs`, `build_image`) and
//! an operating system. The pipeline owns the order of the steps, the build
//! log, the staging directory, the clamp-and-hash step and the output
//! directory; a back end (`debian.rs`, `freebsd.rs`) says how its OS
//! fetches a base, places nodows' binaries and files, boots, wires its
//! services and becomes a disk. The pipeline never asks which OS it builds.

use std::path::{Path, PathBuf};

use super::assemble::{FileEntry, Staging};
use super::ui::Ui;

/// What every step of one build knows.
pub struct Build {
    /// The directory holding images/, profiles/, services/, overlays/ and models/.
    pub source: PathBuf,
    /// IMAGE-PROFILE: the name of the output directory, its files and the log.
    pub name: String,
    /// Where `NAME/` and `NAME.log` are written.
    pub out_parent: PathBuf,
    /// cargo's target directory: the binaries, the test keys, the cached bases.
    pub target_dir: PathBuf,
    pub source_date_epoch: u64,
}

/// One operating system's way through the pipeline, in the order the
/// pipeline calls it. Each method that runs a tool names its own step(s)
/// in the build log; the associated types carry what one step hands to a
/// later one.
pub trait OsBackend: Sync {
    /// What the host checks learnt (signing keys, the cache), for later steps.
    type Host: Sync;
    /// The compiled initd, initctl and renderer.
    type Binaries: Send;
    /// The base system in the staging tree and what identifies it.
    type Base;
    /// The boot files in the root (kernel, initrd), for the disk step.
    type Boot;
    /// Partition sizes, GUIDs and volume ids, derived from the input hash.
    type Layout;

    /// IMAGE-PROFILE.
    fn name(&self) -> String;
    /// The plan as `--plan` prints it.
    fn render_plan(&self) -> String;
    /// Where the base comes from, for the build's first line (`from ...`),
    /// when the plan does not say it.
    fn origin(&self) -> Option<String> {
        None
    }
    /// Host tools, packages and signing keys: every bad input found before
    /// anything slow runs.
    fn check_host(&self, ui: &mut Ui, build: &Build) -> anyhow::Result<Self::Host>;
    /// Compiles initd, initctl and the renderer; runs on a thread of its own
    /// beside `fetch_base`.
    fn build_binaries(&self, ui: &mut Ui, build: &Build) -> anyhow::Result<Self::Binaries>;
    /// Puts the base system, with the packages of the plan's services, into
    /// the empty staging tree.
    fn fetch_base(
        &self,
        ui: &mut Ui,
        build: &Build,
        host: &Self::Host,
        staging: &Staging,
    ) -> anyhow::Result<Self::Base>;
    /// Installs initd, initctl (and the renderer where the image runs it).
    fn place_binaries(&self, binaries: &Self::Binaries, staging: &Staging) -> anyhow::Result<()>;
    /// The services, the model, the mode, the overlays, identity, mounts,
    /// users and root's login policy.
    fn install_files(
        &self,
        build: &Build,
        host: &Self::Host,
        staging: &Staging,
    ) -> anyhow::Result<()>;
    /// What the bootloader needs inside the root (Debian: the kernel and
    /// nodows' initrd; FreeBSD: loader.conf).
    fn install_boot_files(
        &self,
        build: &Build,
        binaries: &Self::Binaries,
        staging: &Staging,
    ) -> anyhow::Result<Self::Boot>;
    /// Service wiring: bakes every service's configs (and the OS's glue)
    /// into the root with the host's renderer.
    fn wire_services(
        &self,
        ui: &mut Ui,
        binaries: &Self::Binaries,
        staging: &Staging,
    ) -> anyhow::Result<()>;
    /// Clamps every time to SOURCE_DATE_EPOCH and hashes every entry,
    /// sorted by path.
    fn hash_root(
        &self,
        staging: &Staging,
        base: &Self::Base,
        source_date_epoch: u64,
    ) -> anyhow::Result<Vec<FileEntry>>;
    /// The hash of every input: the base's identity, the plan, the epoch
    /// and every file; every id of the disk derives from it.
    fn input_hash(&self, build: &Build, base: &Self::Base, files: &[FileEntry]) -> String;
    /// The disk layout of the plan with ids derived from `input_hash`.
    fn disk_layout(&self, input_hash: &str) -> Self::Layout;
    /// The file systems, the ESP with the bootloader, the GPT disk, the
    /// other output formats, the manifest and SHA256SUMS, all into `out`.
    /// Takes the staging tree, to remove it as soon as the disk holds it.
    #[allow(clippy::too_many_arguments)]
    fn write_disk(
        &self,
        ui: &mut Ui,
        build: &Build,
        host: &Self::Host,
        staging: Staging,
        boot: &Self::Boot,
        files: &[FileEntry],
        input_hash: &str,
        layout: &Self::Layout,
        out: &Path,
    ) -> anyhow::Result<()>;
}
