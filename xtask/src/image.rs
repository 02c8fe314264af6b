//! `cargo xtask image`: builds a bootable Debian appliance image for one
//! image x profile (see docs/image-builder.md).
//!
//! Steps: resolve and validate the plan, check host tools, build initd and
//! the renderer, make or reuse the cached base (mmdebstrap), assemble the
//! root in a tmpfs staging directory, bake configs, make the ext4 root, the
//! ESP and the GPT disk, then write the outputs to a temporary directory and
//! rename it into place.

mod ab;
mod assemble;
pub mod bmap;
mod disk;
mod fleet;
mod freebsd;
mod host;
mod initrd;
mod manifest;
pub mod outputs;
mod plan;
mod rootfs;
mod sbom;
mod secureboot;
pub mod sparse;
pub mod ui;
mod xml;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Bad input (unknown image or profile, invalid XML, missing overlay,
/// unknown package): reported as `error: ...` with exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image definition to build: images/IMAGE.xml.
    #[arg(long, default_value = "debian")]
    pub image: String,
    /// The profile to build it for: profiles/PROFILE.xml (dev, test, production, failover).
    #[arg(long, default_value = "dev")]
    pub profile: String,
    /// List the images and profiles, then exit.
    #[arg(long)]
    pub list: bool,
    /// Print the resolved plan of the image and profile without building.
    #[arg(long)]
    pub plan: bool,
    /// Debian mirror URL (default: the host's apt configuration).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Never install missing host tools; print the apt-get command and stop.
    #[arg(long)]
    pub no_install: bool,
    /// Output directory; the build writes OUT/IMAGE-PROFILE/ (default: images/out).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Stream the tools' output to the terminal (it always goes to the build log).
    #[arg(long, short)]
    pub verbose: bool,
    /// The directory holding images/, profiles/, services/, overlays/ and models/ (default: the workspace root).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Where cached bases live (default: TARGET/nodows-cache, TARGET from cargo metadata).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// The output formats, comma-separated, instead of the image's or the profile's <outputs>:
    /// raw, qcow2, vmdk, vhd, vhdx, gce, raw.gz, raw.zst (raw is always written).
    #[arg(long, value_name = "FORMATS", value_delimiter = ',')]
    pub format: Vec<outputs::Format>,
    /// FreeBSD images only: the directory holding the distribution sets base.txz and kernel.txz.
    #[arg(long, value_name = "DIR")]
    pub freebsd_dist: Option<PathBuf>,
    /// A/B images: the version written into /etc/nodows/release and the update artifact (default: SOURCE_DATE_EPOCH).
    #[arg(long = "release-version", value_name = "VERSION")]
    pub release_version: Option<String>,
    /// A/B images: the ed25519 private key (64 hex digits) that signs the update artifact (default: a per-checkout test key, TARGET/nodows-keys/update-test.key, made on first use).
    #[arg(long, value_name = "PATH")]
    pub signing_key: Option<PathBuf>,
    /// Verified-boot profiles: the PEM private key that signs systemd-boot and the unified kernel image (with --secure-boot-cert; default: a per-checkout test key, TARGET/nodows-keys/secureboot-test.key, made on first use).
    #[arg(long, value_name = "PATH")]
    pub secure_boot_key: Option<PathBuf>,
    /// The X.509 certificate (PEM) of --secure-boot-key; enrol it in the firmware's db.
    #[arg(long, value_name = "PATH")]
    pub secure_boot_cert: Option<PathBuf>,
    /// Build a <verified-boot/> profile without dm-verity, the RAM layers and signatures (the benchmark's baseline).
    #[arg(long)]
    pub without_verified_boot: bool,
    /// The fleet's credentials: a pgpass file (host:port:database:role:password lines, mode 0600) outside the repository, installed as /etc/nodows/fleet.pgpass (mode 0600) and recorded nowhere else (not in manifest.json, the SBOM or the log).
    #[arg(long, value_name = "PATH")]
    pub secrets: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ui::install_interrupt_handler();
    build(args)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn build(args: Args) -> anyhow::Result<()> {
    let source = args.source.clone().unwrap_or_else(workspace_root);
    if args.list {
        println!("images:");
        for name in plan::list_names(&source.join("images")) {
            println!("  {name}");
        }
        println!("profiles:");
        for name in plan::list_names(&source.join("profiles")) {
            println!("  {name}");
        }
        return Ok(());
    }
    if freebsd::is_freebsd_image(&source, &args.image) {
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
        if args.secrets.is_some() {
            return Err(BadInput(
                "--secrets: FreeBSD images run no fleet watcher; leave the option out".to_owned(),
            )
            .into());
        }
        return freebsd::build(&args, &source);
    }
    let apt_sources = host::AptSources::from_host();
    let mirror_sources =
        |suite: &str| host::source_lines(&apt_sources, suite, args.mirror.as_deref());
    // Resolve once to learn the suite, then with its apt source lines.
    let plan = plan::resolve_with(
        &source,
        &args.image,
        &args.profile,
        Vec::new(),
        !args.without_verified_boot,
    )?;
    let sources = mirror_sources(&plan.suite)?;
    let mut plan = plan::Plan { sources, ..plan };
    if !args.format.is_empty() {
        plan.outputs = plan::normalize_outputs(&args.format);
    }
    if args.plan {
        print!("{}", plan.render());
        return Ok(());
    }
    let secrets = match &args.secrets {
        Some(path) => Some(fleet::read_secrets(path, &[&workspace_root(), &source])?),
        None => None,
    };

    let out_parent = args
        .out
        .clone()
        .unwrap_or_else(|| source.join("images/out"));
    std::fs::create_dir_all(&out_parent)
        .with_context(|| format!("cannot create {}", out_parent.display()))?;
    let name = format!("{}-{}", plan.image, plan.profile);
    let mut ui = ui::Ui::new(&out_parent.join(format!("{name}.log")), args.verbose)?;
    ui.note(&format!(
        "building {name} (log: {})",
        out_parent.join(format!("{name}.log")).display()
    ));

    let source_date_epoch = host::source_date_epoch(&ui, &source)?;
    // Fast checks first: host tools, then the packages against apt.
    ui.step("check host tools", |ui| {
        host::check_tools(ui, args.no_install)
    })?;
    crate::toolchain::ensure_target(crate::toolchain::MUSL)?;
    let target_dir = host::cargo_target_dir(&source)?;
    let cache_dir = args
        .cache
        .clone()
        .unwrap_or_else(|| target_dir.join("nodows-cache"));
    let mmdebstrap_identity = rootfs::mmdebstrap_identity()?;
    // A cached base proves its package set (mmdebstrap installed it).
    if !rootfs::is_cached(&plan, &mmdebstrap_identity, &cache_dir) {
        ui.step("check packages against apt-cache", |ui| {
            host::check_packages(ui, &apt_sources, &plan)
        })?;
    }
    // The signing key is bad input found before anything slow runs.
    let secure_boot = match plan.verified_boot {
        false => None,
        true => Some(ui.step("verified boot: Secure Boot signing key", |ui| {
            let keys = secureboot::signing_keys(
                ui,
                args.secure_boot_key.as_deref(),
                args.secure_boot_cert.as_deref(),
                &target_dir,
            )?;
            if keys.created {
                ui.note(&format!(
                    "made the per-checkout Secure Boot test key {} (certificate {}; give --secure-boot-key and --secure-boot-cert for your own)",
                    keys.key.display(),
                    keys.cert.display()
                ));
            }
            Ok(keys)
        })?),
    };
    ui.cleanup_stale(&out_parent);
    ui.cleanup_stale(&cache_dir);
    ui.cleanup_stale_named(&assemble::tmpfs_parent(), ".nodows-");

    // cargo builds the binaries (a freshness check when warm, minutes when
    // cold) while the base is made or found and extracted.
    let staging = assemble::Staging::create(&name)?;
    let (binaries, (base, base_tree)) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let mut builder = ui.background();
        let (source, target_dir) = (&source, &target_dir);
        let binaries = scope.spawn(move || {
            builder.step("build initd, initctl and nodows", |ui| {
                assemble::build_binaries(ui, source, target_dir)
            })
        });
        let base = ui
            .step("root file system base (mmdebstrap, cached)", |ui| {
                rootfs::base(ui, &plan, &mmdebstrap_identity, &cache_dir)
            })
            .and_then(|base| {
                let base_tree =
                    ui.step("stage the base (hard links to its extracted tree)", |ui| {
                        let base_tree = assemble::BaseTree::open(ui, &base)?;
                        base_tree.link_into(ui, &staging)?;
                        Ok(base_tree)
                    })?;
                Ok((base, base_tree))
            });
        let binaries = binaries.join().expect("the build thread");
        Ok((binaries?, base?))
    })?;
    let assembled = ui.step("assemble the root", |_| {
        assemble::assemble(&plan, &binaries, &staging, source_date_epoch)
    })?;
    let update_settings = match plan.ab_data_mib {
        None => None,
        Some(_) => Some(ui.step("A/B: release and update key", |ui| {
            let version = match &args.release_version {
                Some(version) => version.clone(),
                None => source_date_epoch.to_string(),
            };
            let settings = ab::settings(&plan, &version, args.signing_key.as_deref(), &target_dir)?;
            if settings.key_created {
                ui.note(&format!(
                    "made the per-checkout test signing key {} (give --signing-key for a real one)",
                    settings.key_path.display()
                ));
            }
            ab::install(&settings, staging.path())?;
            Ok(settings)
        })?),
    };
    ui.step("bake configs (nodows render)", |ui| {
        assemble::bake(ui, &plan, &binaries, &staging)
    })?;
    if plan.fleet.is_some() || secrets.is_some() {
        ui.step("fleet: remote and credentials", |_| {
            fleet::install(staging.path(), plan.fleet.as_ref(), secrets.as_ref())
        })?;
    }
    let files = ui.step("clamp timestamps and hash every file", |_| {
        assemble::finish(&staging, Some(&base_tree), source_date_epoch)
    })?;
    let files = fleet::without_secrets(files);
    let input_hash = manifest::input_hash(&base.key, &plan, source_date_epoch, &files);
    let output = ui::TempDir::create(&out_parent, &name)?;
    let layout = disk::Layout::new(&plan, &input_hash);
    let packages = manifest::installed_packages(&staging)?;
    // The raw disk is hashed on a thread from the moment its parts are
    // final until after the qcow2 is made; the staging tree is removed on
    // another once the root file system holds it.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let raw_sum = ui.step("disk image (ext4 root, ESP, GPT)", |ui| {
            disk::build(
                ui,
                scope,
                &plan,
                &layout,
                &staging,
                &assembled,
                output.path(),
                &name,
                source_date_epoch,
                update_settings.as_ref(),
                secure_boot.as_ref(),
                &input_hash,
            )
        })?;
        scope.spawn(move || drop(staging));
        ui.step("outputs, manifest, SBOM and checksums", |ui| {
            manifest::write(
                ui,
                raw_sum,
                output.path(),
                &name,
                &plan,
                &input_hash,
                source_date_epoch,
                &packages,
                &files,
                &layout,
            )
        })
    })?;
    let final_path = out_parent.join(&name);
    output.persist(&final_path)?;
    ui.note(&format!(
        "done in {:.1}s: {}",
        ui.elapsed().as_secs_f64(),
        final_path.display()
    ));
    Ok(())
}
