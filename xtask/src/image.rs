//! `cargo xtask image`: builds a bootable appliance image for one image x
//! profile (see docs/image-builder.md).
//!
//! One pipeline for every OS (`build_image`): resolve the plan, check the
//! host, build initd and the renderer while the base is fetched into a
//! tmpfs staging directory, place the binaries, files and boot files, wire
//! the services (bake configs), clamp and hash every file, make the disk
//! and its outputs in a temporary directory and rename it into place. The
//! image's `os` picks the back end once (`Os`): `debian.rs` or
//! `freebsd.rs`, behind the `OsBackend` trait of `backend.rs`.

mod ab;
mod assemble;
mod backend;
pub mod bmap;
mod debian;
mod disk;
mod fleet;
mod freebsd;
mod host;
mod initrd;
mod manifest;
mod modelcheck;
pub mod outputs;
mod plan;
mod rootfs;
mod sbom;
mod secureboot;
pub mod sparse;
pub mod ui;
mod util;
mod xml;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use backend::{Build, OsBackend};

pub use plan::list_names;

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

/// `modelcheck::check` for `cargo xtask check`: how many renders ran and
/// every problem.
pub fn model_check(
    source: &Path,
    image: &str,
    profile: &str,
) -> Result<(usize, Vec<String>), BadInput> {
    modelcheck::check(source, image, profile)
}

impl Args {
    /// `--out`, else `images/out` of the source tree.
    fn out_parent(&self, source: &Path) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| source.join("images/out"))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ui::install_interrupt_handler();
    build(args)
}

/// The workspace root (the xtask checks at start that it is the one it runs in).
pub fn workspace_root() -> PathBuf {
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
    // Before anything slow: every template compiles and the profile's model
    // renders; --plan also checks the golden cases (cargo xtask check).
    crate::check::check(&source, &args.image, &args.profile, args.plan)?;
    match Os::of(&source, &args.image) {
        Os::Debian => debian::build(&args, &source),
        Os::Freebsd if args.secrets.is_some() => Err(BadInput(
            "--secrets: FreeBSD images run no fleet watcher; leave the option out".to_owned(),
        )
        .into()),
        Os::Freebsd => freebsd::build(&args, &source),
    }
}

/// The operating system of an image (`<image os="...">`), which picks its
/// back end once.
enum Os {
    Debian,
    Freebsd,
}

impl Os {
    fn of(source: &Path, image: &str) -> Os {
        if freebsd::is_freebsd_image(source, image) {
            Os::Freebsd
        } else {
            Os::Debian
        }
    }
}

/// Where a build writes and what it may take from the host.
pub struct Pipeline {
    pub source: PathBuf,
    pub out_parent: PathBuf,
    pub verbose: bool,
    /// cargo's target directory; default: cargo metadata's.
    pub target_dir: Option<PathBuf>,
    /// Default: SOURCE_DATE_EPOCH, else the last commit's time.
    pub source_date_epoch: Option<u64>,
}

/// The one build pipeline: every image goes through these steps in this
/// order; `backend` says how its OS does each. Returns the output directory.
pub fn build_image<B: OsBackend>(backend: &B, pipeline: &Pipeline) -> anyhow::Result<PathBuf> {
    let (mut ui, build) = start_build(backend, pipeline)?;
    let host = backend.check_host(&mut ui, &build)?;
    ui.cleanup_stale(&build.out_parent);
    ui.cleanup_stale_named(&assemble::tmpfs_parent(), ".nodows-");
    let staging = assemble::Staging::create(&build.name)?;
    let (binaries, base) = binaries_beside_base(backend, &mut ui, &build, &host, &staging)?;
    let boot = ui.step("assemble the root", |_| {
        backend.place_binaries(&binaries, &staging)?;
        backend.install_files(&build, &host, &staging)?;
        backend.install_boot_files(&build, &binaries, &staging)
    })?;
    backend.wire_services(&mut ui, &binaries, &staging)?;
    let files = ui.step("clamp timestamps and hash every file", |_| {
        backend.hash_root(&staging, &base, build.source_date_epoch)
    })?;
    let input_hash = backend.input_hash(&build, &base, &files);
    let layout = backend.disk_layout(&input_hash);
    let output = ui::TempDir::create(&build.out_parent, &build.name)?;
    backend.write_disk(
        &mut ui,
        &build,
        &host,
        staging,
        &boot,
        &files,
        &input_hash,
        &layout,
        output.path(),
    )?;
    let final_path = build.out_parent.join(&build.name);
    output.persist(&final_path)?;
    ui.note(&format!(
        "done in {:.1}s: {}",
        ui.elapsed().as_secs_f64(),
        final_path.display()
    ));
    Ok(final_path)
}

/// The output directory, the build log and its first line, the epoch and
/// the target directory.
fn start_build<B: OsBackend>(backend: &B, pipeline: &Pipeline) -> anyhow::Result<(ui::Ui, Build)> {
    let out_parent = &pipeline.out_parent;
    std::fs::create_dir_all(out_parent)
        .with_context(|| format!("cannot create {}", out_parent.display()))?;
    let name = backend.name();
    let log = out_parent.join(format!("{name}.log"));
    let ui = ui::Ui::new(&log, pipeline.verbose)?;
    let origin = match backend.origin() {
        Some(origin) => format!(" from {origin}"),
        None => String::new(),
    };
    ui.note(&format!("building {name}{origin} (log: {})", log.display()));
    let source_date_epoch = match pipeline.source_date_epoch {
        Some(epoch) => epoch,
        None => host::source_date_epoch(&ui, &pipeline.source)?,
    };
    let target_dir = match &pipeline.target_dir {
        Some(dir) => dir.clone(),
        None => host::cargo_target_dir(&pipeline.source)?,
    };
    let build = Build {
        source: pipeline.source.clone(),
        name,
        out_parent: out_parent.clone(),
        target_dir,
        source_date_epoch,
    };
    Ok((ui, build))
}

/// cargo builds the binaries (a freshness check when warm, minutes when
/// cold) on a thread while the base is fetched into the staging tree.
fn binaries_beside_base<B: OsBackend>(
    backend: &B,
    ui: &mut ui::Ui,
    build: &Build,
    host: &B::Host,
    staging: &assemble::Staging,
) -> anyhow::Result<(B::Binaries, B::Base)> {
    std::thread::scope(|scope| {
        let mut builder = ui.background();
        let binaries = scope.spawn(move || backend.build_binaries(&mut builder, build));
        let base = backend.fetch_base(ui, build, host, staging);
        let binaries = binaries.join().expect("the build thread");
        Ok((binaries?, base?))
    })
}
