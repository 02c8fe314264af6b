//! The Debian back end: a base from mmdebstrap with every service's
//! packages (cached, `rootfs.rs`), hard-linked into the staging tree;
//! initd and initctl for musl; nodows' own initrd (`initrd.rs`); an ext4
//! root, systemd-boot on the ESP, A/B slots and verified boot (`disk.rs`,
//! `ab.rs`, `secureboot.rs`); every output format, the manifest and the
//! SBOM (`manifest.rs`, `outputs.rs`, `sbom.rs`).

use std::path::{Path, PathBuf};

use super::ab::{self, UpdateSettings};
use super::assemble::{self, Assembled, BaseTree, Binaries, FileEntry, Staging};
use super::backend::{Build, OsBackend};
use super::disk::{self, Layout};
use super::fleet::{self, Secrets};
use super::host::{self, AptSources};
use super::plan::{self, Plan};
use super::secureboot::{self, SigningKeys};
use super::ui::Ui;
use super::{manifest, rootfs, workspace_root, Args};

/// A Debian image of one profile: its plan and the options of the command line.
pub struct Debian {
    plan: Plan,
    apt_sources: AptSources,
    no_install: bool,
    cache: Option<PathBuf>,
    release_version: Option<String>,
    signing_key: Option<PathBuf>,
    secure_boot_key: Option<PathBuf>,
    secure_boot_cert: Option<PathBuf>,
    /// `--secrets`: the fleet's credentials, read and checked at once.
    secrets: Option<Secrets>,
}

/// What the host checks found.
pub struct DebianHost {
    cache_dir: PathBuf,
    mmdebstrap_identity: String,
    secure_boot: Option<SigningKeys>,
    update: Option<UpdateSettings>,
}

/// The cached base and its extracted tree, linked into the staging tree.
pub struct DebianBase {
    base: rootfs::Base,
    tree: BaseTree,
}

impl Debian {
    /// Resolves the plan: once to learn the suite, then with its apt
    /// source lines (the host's, or `--mirror`).
    pub fn resolve(args: &Args, source: &Path) -> anyhow::Result<Debian> {
        let apt_sources = AptSources::from_host();
        let plan = plan::resolve_with(
            source,
            &args.image,
            &args.profile,
            Vec::new(),
            !args.without_verified_boot,
        )?;
        let sources = host::source_lines(&apt_sources, &plan.suite, args.mirror.as_deref())?;
        let mut plan = Plan { sources, ..plan };
        if !args.format.is_empty() {
            plan.outputs = plan::normalize_outputs(&args.format);
        }
        let secrets = match &args.secrets {
            Some(path) => Some(fleet::read_secrets(path, &[&workspace_root(), source])?),
            None => None,
        };
        Ok(Debian {
            secrets,
            plan,
            apt_sources,
            no_install: args.no_install,
            cache: args.cache.clone(),
            release_version: args.release_version.clone(),
            signing_key: args.signing_key.clone(),
            secure_boot_key: args.secure_boot_key.clone(),
            secure_boot_cert: args.secure_boot_cert.clone(),
        })
    }

    /// The signing key is bad input found before anything slow runs.
    fn secure_boot_keys(&self, ui: &mut Ui, build: &Build) -> anyhow::Result<Option<SigningKeys>> {
        if !self.plan.verified_boot {
            return Ok(None);
        }
        ui.step("verified boot: Secure Boot signing key", |ui| {
            let keys = secureboot::signing_keys(
                ui,
                self.secure_boot_key.as_deref(),
                self.secure_boot_cert.as_deref(),
                &build.target_dir,
            )?;
            if keys.created {
                ui.note(&format!(
                    "made the per-checkout Secure Boot test key {} (certificate {}; give --secure-boot-key and --secure-boot-cert for your own)",
                    keys.key.display(),
                    keys.cert.display()
                ));
            }
            Ok(Some(keys))
        })
    }

    /// A/B images: the release version and the key that signs the update
    /// artifact (`--signing-key` is bad input found here, before anything slow).
    fn update_settings(
        &self,
        ui: &mut Ui,
        build: &Build,
    ) -> anyhow::Result<Option<UpdateSettings>> {
        if self.plan.ab_data_mib.is_none() {
            return Ok(None);
        }
        ui.step("A/B: release and update key", |ui| {
            let version = match &self.release_version {
                Some(version) => version.clone(),
                None => build.source_date_epoch.to_string(),
            };
            let settings = ab::settings(
                &self.plan,
                &version,
                self.signing_key.as_deref(),
                &build.target_dir,
            )?;
            if settings.key_created {
                ui.note(&format!(
                    "made the per-checkout test signing key {} (give --signing-key for a real one)",
                    settings.key_path.display()
                ));
            }
            Ok(Some(settings))
        })
    }
}

impl OsBackend for Debian {
    type Host = DebianHost;
    type Binaries = Binaries;
    type Base = DebianBase;
    type Boot = Assembled;
    type Layout = Layout;

    fn name(&self) -> String {
        format!("{}-{}", self.plan.image, self.plan.profile)
    }

    fn render_plan(&self) -> String {
        self.plan.render()
    }

    fn check_host(&self, ui: &mut Ui, build: &Build) -> anyhow::Result<DebianHost> {
        // Fast checks first: host tools, then the packages against apt.
        ui.step("check host tools", |ui| {
            host::check_tools(ui, self.no_install)
        })?;
        crate::toolchain::ensure_target(crate::toolchain::MUSL)?;
        let cache_dir = self
            .cache
            .clone()
            .unwrap_or_else(|| build.target_dir.join("nodows-cache"));
        let mmdebstrap_identity = rootfs::mmdebstrap_identity()?;
        // A cached base proves its package set (mmdebstrap installed it).
        if !rootfs::is_cached(&self.plan, &mmdebstrap_identity, &cache_dir) {
            ui.step("check packages against apt-cache", |ui| {
                host::check_packages(ui, &self.apt_sources, &self.plan)
            })?;
        }
        let secure_boot = self.secure_boot_keys(ui, build)?;
        let update = self.update_settings(ui, build)?;
        ui.cleanup_stale(&cache_dir);
        Ok(DebianHost {
            cache_dir,
            mmdebstrap_identity,
            secure_boot,
            update,
        })
    }

    fn build_binaries(&self, ui: &mut Ui, build: &Build) -> anyhow::Result<Binaries> {
        ui.step("build initd, initctl and nodows", |ui| {
            assemble::build_binaries(ui, &build.source, &build.target_dir)
        })
    }

    fn fetch_base(
        &self,
        ui: &mut Ui,
        _build: &Build,
        host: &DebianHost,
        staging: &Staging,
    ) -> anyhow::Result<DebianBase> {
        let base = ui.step("root file system base (mmdebstrap, cached)", |ui| {
            rootfs::base(ui, &self.plan, &host.mmdebstrap_identity, &host.cache_dir)
        })?;
        let tree = ui.step("stage the base (hard links to its extracted tree)", |ui| {
            let tree = BaseTree::open(ui, &base)?;
            tree.link_into(ui, staging)?;
            Ok(tree)
        })?;
        Ok(DebianBase { base, tree })
    }

    fn place_binaries(&self, binaries: &Binaries, staging: &Staging) -> anyhow::Result<()> {
        assemble::place_binaries(binaries, staging)
    }

    fn install_files(
        &self,
        build: &Build,
        host: &DebianHost,
        staging: &Staging,
    ) -> anyhow::Result<()> {
        assemble::install_files(&self.plan, staging, build.source_date_epoch)?;
        match &host.update {
            Some(settings) => ab::install(settings, staging.path()),
            None => Ok(()),
        }
    }

    fn install_boot_files(
        &self,
        build: &Build,
        binaries: &Binaries,
        staging: &Staging,
    ) -> anyhow::Result<Assembled> {
        assemble::install_boot_files(&self.plan, binaries, staging, build.source_date_epoch)
    }

    fn wire_services(
        &self,
        ui: &mut Ui,
        binaries: &Binaries,
        staging: &Staging,
    ) -> anyhow::Result<()> {
        ui.step("bake configs (nodows render)", |ui| {
            assemble::bake(ui, &self.plan, binaries, staging)
        })?;
        if self.plan.fleet.is_none() && self.secrets.is_none() {
            return Ok(());
        }
        ui.step("fleet: remote and credentials", |_| {
            fleet::install(
                staging.path(),
                self.plan.fleet.as_ref(),
                self.secrets.as_ref(),
            )
        })
    }

    fn hash_root(
        &self,
        staging: &Staging,
        base: &DebianBase,
        source_date_epoch: u64,
    ) -> anyhow::Result<Vec<FileEntry>> {
        // The fleet's credentials are in the root but in no list of files.
        assemble::finish(staging, Some(&base.tree), source_date_epoch).map(fleet::without_secrets)
    }

    fn input_hash(&self, build: &Build, base: &DebianBase, files: &[FileEntry]) -> String {
        manifest::input_hash(&base.base.key, &self.plan, build.source_date_epoch, files)
    }

    fn disk_layout(&self, input_hash: &str) -> Layout {
        Layout::new(&self.plan, input_hash)
    }

    /// The raw disk is hashed on a thread from the moment its parts are
    /// final until after the other formats are made; the staging tree is
    /// removed on another once the root file system holds it.
    fn write_disk(
        &self,
        ui: &mut Ui,
        build: &Build,
        host: &DebianHost,
        staging: Staging,
        boot: &Assembled,
        files: &[FileEntry],
        input_hash: &str,
        layout: &Layout,
        out: &Path,
    ) -> anyhow::Result<()> {
        let packages = manifest::installed_packages(&staging)?;
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let raw_sum = ui.step("disk image (ext4 root, ESP, GPT)", |ui| {
                disk::build(
                    ui,
                    scope,
                    &self.plan,
                    layout,
                    &staging,
                    boot,
                    out,
                    &build.name,
                    build.source_date_epoch,
                    host.update.as_ref(),
                    host.secure_boot.as_ref(),
                    input_hash,
                )
            })?;
            scope.spawn(move || drop(staging));
            ui.step("outputs, manifest, SBOM and checksums", |ui| {
                manifest::write(
                    ui,
                    raw_sum,
                    out,
                    &build.name,
                    &self.plan,
                    input_hash,
                    build.source_date_epoch,
                    &packages,
                    files,
                    layout,
                )
            })
        })
    }
}

/// `cargo xtask image` for a Debian image: `--plan` prints the plan, else
/// the pipeline builds it.
pub fn build(args: &Args, source: &Path) -> anyhow::Result<()> {
    let debian = Debian::resolve(args, source)?;
    if args.plan {
        print!("{}", debian.render_plan());
        return Ok(());
    }
    let out_parent = args.out_parent(source);
    super::build_image(
        &debian,
        &super::Pipeline {
            source: source.to_path_buf(),
            out_parent,
            verbose: args.verbose,
            target_dir: None,
            source_date_epoch: None,
        },
    )?;
    Ok(())
}
