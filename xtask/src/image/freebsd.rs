//! `cargo xtask image --image freebsd --freebsd-dist DIR`: a FreeBSD
//! appliance from the FreeBSD distribution sets (see docs/image-builder.md,
//! "FreeBSD images").
//!
//! Steps: resolve the plan (image, profile, services with their FreeBSD
//! package mappings), check the sets (readable, amd64, version), build initd
//! for x86_64-unknown-freebsd (cargo zigbuild) and the host renderer, unpack
//! base.txz and kernel.txz into a staging directory, add initd, the service
//! definitions, the model, the overlays, loader.conf and fstab, bake the
//! configs and the rc.d glue with the host renderer, then a UFS2 root
//! (`makefs -t ffs`), an ESP holding the set's loader.efi (mtools) and a
//! GPT (sfdisk) in a plain file; raw, qcow2, manifest.json and SHA256SUMS.
//! The Debian path (plan.rs, assemble.rs, disk.rs) is reused for its small
//! helpers only; nothing here runs for a Debian image.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::assemble::{self, FileEntry, Staging};
use super::ui::{TempDir, Ui};
use super::xml::Document;
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

/// True when `images/IMAGE.xml` says `os="freebsd"`.
pub fn is_freebsd_image(source: &Path, image: &str) -> bool {
    let path = source.join("images").join(format!("{image}.xml"));
    Document::load(&path).is_ok_and(|document| document.root.attribute("os") == Some("freebsd"))
}

#[derive(Debug, Clone)]
pub struct FreebsdService {
    pub name: String,
    /// The directory the definition and its templates come from.
    pub dir: PathBuf,
    /// FreeBSD packages to add (`<package os="freebsd">`).
    pub packages: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FreebsdPlan {
    pub source: PathBuf,
    pub image: String,
    pub profile: String,
    pub mode: String,
    pub architecture: String,
    pub disk_size_mib: u64,
    pub esp_size_mib: u64,
    pub model: PathBuf,
    pub services: Vec<FreebsdService>,
    /// Services the profile asks for that are not available to FreeBSD
    /// images (no `<package os="freebsd">`, no FreeBSD form).
    pub left_out: Vec<String>,
    pub overlays: Vec<PathBuf>,
    /// `<root login="locked">` (or no <root>): root gets `*` as its password
    /// in /etc/master.passwd; `autologin` keeps the set's empty password
    /// (FreeBSD has no autologin: root logs in on the console without one).
    pub root_locked: bool,
}

fn size_mib(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Some(number) = value.strip_suffix("GiB") {
        number.trim().parse::<u64>().ok().map(|n| n * 1024)
    } else {
        value.strip_suffix("MiB")?.trim().parse().ok()
    }
}

/// The definition of a service on FreeBSD: its FreeBSD form
/// `services/NAME/freebsd/` when it has one, else the shared `services/NAME`.
fn service_dir(source: &Path, name: &str) -> PathBuf {
    let shared = source.join("services").join(name);
    let freebsd = shared.join("freebsd");
    if freebsd.join("service.xml").is_file() {
        freebsd
    } else {
        shared
    }
}

/// The service `name` on FreeBSD: its FreeBSD form, or the shared
/// definition with its FreeBSD packages; `None` when it has neither (not
/// available to FreeBSD images).
fn freebsd_service(source: &Path, name: &str, at: &str) -> Result<Option<FreebsdService>, String> {
    let dir = service_dir(source, name);
    let path = dir.join("service.xml");
    if !path.is_file() {
        return Err(format!(
            "{at}: unknown service `{name}`: {} does not exist",
            path.display()
        ));
    }
    let definition = servicedef::parse_file(&path).map_err(|errors| errors.to_string())?;
    let form = dir != source.join("services").join(name);
    let packages = match definition.freebsd_packages {
        Some(mut packages) => {
            packages.sort();
            packages.dedup();
            packages
        }
        None if form => Vec::new(),
        None => return Ok(None),
    };
    Ok(Some(FreebsdService {
        name: name.to_owned(),
        dir,
        packages,
    }))
}

/// Resolves and validates the plan; every problem is reported at once.
pub fn resolve(source: &Path, image: &str, profile: &str) -> Result<FreebsdPlan, BadInput> {
    let image_document = Document::load(&source.join("images").join(format!("{image}.xml")))?;
    let profile_path = source.join("profiles").join(format!("{profile}.xml"));
    if !profile_path.is_file() {
        return Err(BadInput(format!(
            "{}: unknown profile `{profile}`: the file does not exist",
            profile_path.display()
        )));
    }
    let profile_document = Document::load(&profile_path)?;
    let mut problems = Vec::new();
    let root = &image_document.root;
    if root.name != "image" || root.attribute("name") != Some(image) {
        problems.push(format!(
            "{}: the root element must be <image name=\"{image}\" os=\"freebsd\">",
            image_document.at(root)
        ));
    }
    let architecture = root
        .children_named("architecture")
        .next()
        .map(|element| element.text().to_owned())
        .unwrap_or_default();
    if architecture != "amd64" {
        problems.push(format!(
            "{}: <architecture> must be amd64 (the only FreeBSD target initd is built for)",
            image_document.at(root)
        ));
    }
    let (mut disk_size_mib, mut esp_size_mib) = (0, 64);
    match root.children_named("disk").next() {
        Some(disk) => {
            match disk.attribute("size").and_then(size_mib) {
                Some(size) => disk_size_mib = size,
                None => problems.push(format!(
                    "{}: <disk size=\"...\"> must be a size such as 2048MiB or 2GiB",
                    image_document.at(disk)
                )),
            }
            match disk.attribute("esp").map(size_mib) {
                None => {}
                Some(Some(size)) if size >= 33 => esp_size_mib = size,
                Some(_) => problems.push(format!(
                    "{}: <disk esp=\"...\"> must be a size of at least 33MiB (FAT32)",
                    image_document.at(disk)
                )),
            }
            if disk_size_mib != 0 && disk_size_mib < esp_size_mib + 64 {
                problems.push(format!(
                    "{}: the disk must be at least 64MiB larger than the ESP",
                    image_document.at(disk)
                ));
            }
        }
        None => problems.push(format!(
            "{}: <image> needs a <disk size=\"...\"/>",
            image_document.at(root)
        )),
    }
    let model = match root
        .children_named("model")
        .next()
        .and_then(|element| element.attribute("path").map(|path| (element, path)))
    {
        Some((element, path)) => {
            if !source.join(path).is_file() {
                problems.push(format!(
                    "{}: the model {} does not exist",
                    image_document.at(element),
                    source.join(path).display()
                ));
            }
            PathBuf::from(path)
        }
        None => {
            problems.push(format!(
                "{}: <image> needs <model path=\"...\"/>",
                image_document.at(root)
            ));
            PathBuf::new()
        }
    };

    let profile_root = &profile_document.root;
    if profile_root.name != "profile" || profile_root.attribute("name") != Some(profile) {
        problems.push(format!(
            "{}: the root element must be <profile name=\"{profile}\" mode=\"...\">",
            profile_document.at(profile_root)
        ));
    }
    let mode = profile_root
        .attribute("mode")
        .unwrap_or_default()
        .to_owned();
    if mode.is_empty() {
        problems.push(format!(
            "{}: <profile> needs mode=\"dev|test|production|failover\"",
            profile_document.at(profile_root)
        ));
    }
    let mut overlays = vec![PathBuf::from("overlays/common")];
    for element in profile_root.children_named("overlay") {
        let overlay = PathBuf::from("overlays").join(element.text());
        if !source.join(&overlay).is_dir() {
            problems.push(format!(
                "{}: overlay `{}` does not exist: create {}",
                profile_document.at(element),
                element.text(),
                source.join(&overlay).display()
            ));
        }
        overlays.push(overlay);
    }

    let root_locked = match profile_root.children_named("root").next() {
        None => true,
        Some(element) => match element.attribute("login") {
            Some("locked") => true,
            Some("autologin") => false,
            _ => {
                problems.push(format!(
                    "{}: <root login=\"...\"> must be autologin or locked",
                    profile_document.at(element)
                ));
                true
            }
        },
    };

    // The image's services, then the profile's.
    let mut named = Vec::new();
    for (document, from_image) in [(&image_document, true), (&profile_document, false)] {
        for list in document.root.children_named("services") {
            for element in list.children_named("service") {
                named.push((element.text().to_owned(), document.at(element), from_image));
            }
        }
    }
    let mut services = Vec::new();
    let mut left_out = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, at, from_image) in named {
        if !seen.insert(name.clone()) {
            continue;
        }
        match freebsd_service(source, &name, &at) {
            Ok(Some(service)) => services.push(service),
            // A profile's Linux-only service (the console, the test agent).
            Ok(None) if !from_image => left_out.push(name),
            Ok(None) => problems.push(format!(
                "{at}: service `{name}` is not available to FreeBSD images: {} has no <package os=\"freebsd\">; add one naming its FreeBSD package (empty if the base system has the program), or remove the service from {}",
                source.join("services").join(&name).join("service.xml").display(),
                image_document.path.display()
            )),
            Err(message) => problems.push(message),
        }
    }
    if !problems.is_empty() {
        return Err(BadInput(problems.join("\n")));
    }
    Ok(FreebsdPlan {
        source: source.to_path_buf(),
        image: image.to_owned(),
        profile: profile.to_owned(),
        mode,
        architecture,
        disk_size_mib,
        esp_size_mib,
        model,
        services,
        left_out,
        overlays,
        root_locked,
    })
}

impl FreebsdPlan {
    /// FreeBSD packages to add, from every service's mapping.
    pub fn packages_to_add(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .services
            .iter()
            .flat_map(|service| service.packages.iter().cloned())
            .collect();
        set.into_iter().collect()
    }

    /// The plan as printed by `--plan`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "image: {} (freebsd)", self.image);
        let _ = writeln!(out, "profile: {}", self.profile);
        let _ = writeln!(out, "mode: {}", self.mode);
        let _ = writeln!(out, "architecture: {}", self.architecture);
        let _ = writeln!(
            out,
            "disk: {} MiB (esp {} MiB with loader.efi, ufs2 root the rest)",
            self.disk_size_mib, self.esp_size_mib
        );
        let _ = writeln!(out, "services:");
        for service in &self.services {
            let _ = writeln!(
                out,
                "  {} ({})",
                service.name,
                service
                    .dir
                    .strip_prefix(&self.source)
                    .unwrap_or(&service.dir)
                    .display()
            );
        }
        let _ = writeln!(
            out,
            "root login: {}",
            if self.root_locked {
                "locked (no password login)"
            } else {
                "no password on the console (dev)"
            }
        );
        let _ = writeln!(
            out,
            "left out (not available to FreeBSD): {}",
            self.left_out.join(" ")
        );
        let _ = writeln!(out, "packages to add: {}", self.packages_to_add().join(" "));
        let _ = writeln!(out, "overlays:");
        for overlay in &self.overlays {
            let _ = writeln!(out, "  {}", overlay.display());
        }
        let _ = writeln!(out, "model: {}", self.model.display());
        out
    }
}

/// What the distribution sets are, learnt before anything slow runs.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub base: PathBuf,
    pub kernel: PathBuf,
    /// USERLAND_VERSION of the set's /bin/freebsd-version, e.g. 14.1-RELEASE.
    pub version: String,
    pub base_sha256: String,
    pub kernel_sha256: String,
}

/// The x86-64 check of an ELF header: Ok(()) for amd64, else what it is.
pub fn check_elf_amd64(header: &[u8], what: &str) -> Result<(), BadInput> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return Err(BadInput(format!("{what}: not an ELF file")));
    }
    let machine = if header[5] == 2 {
        u16::from_be_bytes([header[18], header[19]])
    } else {
        u16::from_le_bytes([header[18], header[19]])
    };
    if header[4] != 2 || machine != EM_X86_64 {
        let name = match machine {
            3 => "i386",
            40 => "arm",
            183 => "aarch64",
            243 => "riscv",
            20 | 21 => "powerpc",
            _ => "unknown",
        };
        return Err(BadInput(format!(
            "{what}: the set is for {name} (ELF machine {machine}, class {}), this image is amd64: use the amd64 sets",
            header[4]
        )));
    }
    Ok(())
}

/// USERLAND_VERSION="14.1-RELEASE" from /bin/freebsd-version.
pub fn parse_freebsd_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("USERLAND_VERSION=")?;
        let value = value.trim_matches('"').trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    super::manifest::sha256_file(path)
}

/// Checks the sets: both readable, xz-compressed tars, base holds
/// ./bin/freebsd-version and an amd64 ./bin/sh. Reads only the start of
/// base.txz (`--occurrence` stops tar once both are found).
pub fn check_distribution(dir: &Path) -> anyhow::Result<Distribution> {
    let base = dir.join("base.txz");
    let kernel = dir.join("kernel.txz");
    for set in [&base, &kernel] {
        let mut file = std::fs::File::open(set).map_err(|error| {
            BadInput(format!(
                "{}: cannot read the distribution set: {error}",
                set.display()
            ))
        })?;
        let mut magic = [0u8; 6];
        if file.read_exact(&mut magic).is_err() || magic != *b"\xfd7zXZ\x00" {
            return Err(BadInput(format!(
                "{}: not an xz-compressed distribution set",
                set.display()
            ))
            .into());
        }
    }
    let sh = Shell::new()?;
    let probe = tempdir("nodows-freebsd-probe")?;
    let probe_dir = probe.path();
    let output = cmd!(
        sh,
        "tar --extract --xz --file {base} --directory {probe_dir} --occurrence=1 --warning=no-unknown-keyword ./bin/freebsd-version ./bin/sh"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let version_path = probe_dir.join("bin/freebsd-version");
    let sh_path = probe_dir.join("bin/sh");
    if !version_path.is_file() || !sh_path.is_file() {
        return Err(BadInput(format!(
            "{}: no ./bin/freebsd-version or ./bin/sh in the set (is it a FreeBSD base.txz?){}",
            base.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .map(|line| format!(": {line}"))
                .unwrap_or_default()
        ))
        .into());
    }
    let mut header = [0u8; 64];
    let read = std::fs::File::open(&sh_path)?.read(&mut header)?;
    check_elf_amd64(&header[..read], &format!("{}: ./bin/sh", base.display()))?;
    let version =
        parse_freebsd_version(&std::fs::read_to_string(&version_path)?).ok_or_else(|| {
            BadInput(format!(
                "{}: ./bin/freebsd-version has no USERLAND_VERSION=\"...\" line",
                base.display()
            ))
        })?;
    Ok(Distribution {
        base_sha256: sha256_of(&base)?,
        kernel_sha256: sha256_of(&kernel)?,
        base,
        kernel,
        version,
    })
}

/// A scratch directory under the system's temporary directory.
fn tempdir(name: &str) -> anyhow::Result<TempDir> {
    TempDir::create(&std::env::temp_dir(), name)
}

pub struct FreebsdBinaries {
    pub initd: PathBuf,
    pub initctl: PathBuf,
    pub nodows: PathBuf,
}

/// initd and initctl for x86_64-unknown-freebsd (cargo zigbuild: zig links
/// against its bundled FreeBSD libc stubs), and the host renderer.
pub fn build_binaries(
    ui: &mut Ui,
    source: &Path,
    target_dir: &Path,
) -> anyhow::Result<FreebsdBinaries> {
    let sh = Shell::new()?;
    let manifest = super::host::workspace_manifest(source);
    if cmd!(sh, "cargo-zigbuild --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        bail!("cargo zigbuild is missing: install it with `pip install ziglang cargo-zigbuild`");
    }
    crate::toolchain::ensure_target(crate::toolchain::FREEBSD)?;
    ui.run(
        cmd!(
            sh,
            "cargo zigbuild --release --manifest-path {manifest} -p initd --target x86_64-unknown-freebsd"
        )
        .env("CARGO_TARGET_DIR", target_dir),
    )?;
    ui.run(
        cmd!(
            sh,
            "cargo build --release --manifest-path {manifest} -p render --bin nodows"
        )
        .env("CARGO_TARGET_DIR", target_dir),
    )?;
    let freebsd = target_dir.join("x86_64-unknown-freebsd/release");
    let binaries = FreebsdBinaries {
        initd: freebsd.join("initd"),
        initctl: freebsd.join("initctl"),
        nodows: target_dir.join("release/nodows"),
    };
    for binary in [&binaries.initd, &binaries.initctl, &binaries.nodows] {
        if !binary.is_file() {
            bail!("{} was not built", binary.display());
        }
    }
    for binary in [&binaries.initd, &binaries.initctl] {
        if !is_freebsd_elf(binary)? {
            bail!(
                "{} is not a FreeBSD ELF (neither EI_OSABI 9 nor a FreeBSD ABI note)",
                binary.display()
            );
        }
    }
    Ok(binaries)
}

/// The ELF header's EI_OSABI byte of a file.
pub fn elf_osabi(path: &Path) -> anyhow::Result<u8> {
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .with_context(|| format!("cannot read the ELF header of {}", path.display()))?;
    if &header[..4] != b"\x7fELF" {
        bail!("{} is not an ELF file", path.display());
    }
    Ok(header[7])
}

/// True for a FreeBSD ELF: EI_OSABI is 9, or a PT_NOTE segment holds the
/// FreeBSD ABI tag note (name `FreeBSD`, type 1), which is what lld writes.
pub fn is_freebsd_elf(path: &Path) -> anyhow::Result<bool> {
    if elf_osabi(path)? == ELFOSABI_FREEBSD {
        return Ok(true);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(freebsd_abi_note(&bytes).is_some())
}

/// The FreeBSD version in the ABI tag note of a little-endian ELF64, e.g. 1400500.
pub fn freebsd_abi_note(bytes: &[u8]) -> Option<u32> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(32)? as usize, u16_at(54)? as usize, u16_at(56)?);
    for index in 0..phnum as usize {
        let header = phoff + index * phentsize;
        if u32_at(header)? != 4 {
            continue; // not PT_NOTE
        }
        let (offset, size) = (u64_at(header + 8)? as usize, u64_at(header + 32)? as usize);
        let mut at = offset;
        while at + 12 <= offset + size {
            let (namesz, descsz, kind) = (
                u32_at(at)? as usize,
                u32_at(at + 4)? as usize,
                u32_at(at + 8)?,
            );
            let name = bytes.get(at + 12..at + 12 + namesz)?;
            let desc = at + 12 + namesz.div_ceil(4) * 4;
            if name == b"FreeBSD\0" && kind == 1 && descsz == 4 {
                return u32_at(desc);
            }
            at = desc + descsz.div_ceil(4) * 4;
        }
    }
    None
}

/// Unpacks the sets and adds everything nodows puts into the image.
pub fn assemble(
    ui: &mut Ui,
    plan: &FreebsdPlan,
    distribution: &Distribution,
    binaries: &FreebsdBinaries,
    staging: &Staging,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = staging.path();
    for set in [&distribution.base, &distribution.kernel] {
        ui.run(cmd!(
            sh,
            "tar --extract --xz --file {set} --directory {root} --preserve-permissions --same-owner --numeric-owner --warning=no-unknown-keyword"
        ))?;
    }
    for required in ["boot/loader.efi", "boot/kernel/kernel", "etc/rc.subr"] {
        if !staging.join(required).is_file() {
            return Err(BadInput(format!(
                "{}: the sets have no ./{required}",
                distribution
                    .base
                    .parent()
                    .unwrap_or(Path::new("."))
                    .display()
            ))
            .into());
        }
    }
    assemble::install(
        &binaries.initd,
        &staging.join("usr/local/sbin/initd"),
        0o555,
    )?;
    assemble::install(
        &binaries.initctl,
        &staging.join("usr/local/sbin/initctl"),
        0o555,
    )?;
    let services = staging.join(&format!("{NODOWS_ETC}/services"));
    std::fs::create_dir_all(&services)?;
    for service in &plan.services {
        assemble::copy_service(&service.dir, &services.join(&service.name))?;
    }
    assemble::install(
        &plan.source.join(&plan.model),
        &staging.join(&format!("{NODOWS_ETC}/model.xml")),
        0o644,
    )?;
    assemble::write(
        &staging.join(&format!("{NODOWS_ETC}/mode")),
        &format!("{}\n", plan.mode),
        0o644,
    )?;
    for overlay in &plan.overlays {
        assemble::copy_tree(&plan.source.join(overlay), root)?;
    }
    if plan.root_locked {
        lock_root(staging)?;
    }
    // /run is Linux's; a link keeps initctl's default socket path working.
    if !staging.join("run").exists() {
        std::os::unix::fs::symlink("var/run", staging.join("run"))?;
    }
    assemble::write(
        &staging.join("etc/fstab"),
        &format!("# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n/dev/gpt/{ROOT_LABEL}\t/\tufs\trw\t1\t1\n"),
        0o644,
    )?;
    assemble::write(
        &staging.join("boot/loader.conf"),
        &format!(
            "# written by nodows: serial console, root by GPT label\n\
             autoboot_delay=\"1\"\n\
             console=\"comconsole,efi\"\n\
             comconsole_speed=\"115200\"\n\
             vfs.root.mountfrom=\"ufs:/dev/gpt/{ROOT_LABEL}\"\n"
        ),
        0o644,
    )?;
    Ok(())
}

/// Sets root's password field in /etc/master.passwd to `*`. The password
/// databases (pwd.db, spwd.db) cannot be rebuilt on Linux: their mtime is
/// set to 1970 so that rc.d/nodows runs `pwd_mkdb -p /etc/master.passwd`
/// before anyone can log in (it does so whenever master.passwd is newer).
fn lock_root(staging: &Staging) -> anyhow::Result<()> {
    let path = staging.join("etc/master.passwd");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(()); // a set without password files: nothing to lock
    };
    let locked: String = text
        .lines()
        .map(|line| match line.split_once(':') {
            Some(("root", rest)) => match rest.split_once(':') {
                Some((_, after)) => format!("root:*:{after}\n"),
                None => format!("{line}\n"),
            },
            _ => format!("{line}\n"),
        })
        .collect();
    assemble::write(&path, &locked, 0o600)?;
    for database in ["etc/pwd.db", "etc/spwd.db"] {
        let database = staging.join(database);
        if database.exists() {
            assemble::clamp_time(&database, 0)?;
        }
    }
    Ok(())
}

/// The services a FreeBSD bake sees, by name: every service of
/// `services/` in its FreeBSD form (see [`service_dir`]), and the rc.d glue
/// of `freebsd/services/`.
pub fn definition_dirs(source: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    for (parent, forms) in [
        (source.join("services"), true),
        (source.join("freebsd/services"), false),
    ] {
        for entry in std::fs::read_dir(&parent)
            .with_context(|| format!("cannot read {}", parent.display()))?
        {
            let path = entry?.path();
            let name = entry_name(&path);
            if path.join("service.xml").is_file() {
                let dir = if forms {
                    service_dir(source, &name)
                } else {
                    path
                };
                dirs.push((name, dir));
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn entry_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Renders the services' configs and the rc.d glue into the staging root
/// with the host renderer. The renderer sees every shared service with the
/// FreeBSD forms and the glue on top (the model may name services the
/// image leaves out); only the image's services and the glue are rendered.
pub fn bake(
    ui: &mut Ui,
    plan: &FreebsdPlan,
    nodows: &Path,
    staging: &Staging,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let render_services = tempdir("nodows-freebsd-services")?;
    let services_dir = render_services.path();
    for (name, path) in definition_dirs(&plan.source)? {
        let target = services_dir.join(name);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        assemble::copy_service(&path, &target)?;
    }
    let model = staging.join(&format!("{NODOWS_ETC}/model.xml"));
    let root = staging.path();
    let mode = &plan.mode;
    let mut service_args = Vec::new();
    for name in plan
        .services
        .iter()
        .map(|service| service.name.as_str())
        .chain(std::iter::once(GLUE_SERVICE))
    {
        service_args.push("--service".to_owned());
        service_args.push(name.to_owned());
    }
    ui.run(cmd!(
        sh,
        "{nodows} render --model {model} --services {services_dir} --root {root} --profile {mode} {service_args...}"
    ))
}

/// GUIDs of the disk, derived from the input hash.
pub struct FreebsdLayout {
    pub disk_guid: String,
    pub esp_guid: String,
    pub root_guid: String,
    pub esp_volume_id: String,
    pub esp_start_mib: u64,
    pub esp_size_mib: u64,
    pub root_start_mib: u64,
    pub root_size_mib: u64,
    pub disk_size_mib: u64,
}

impl FreebsdLayout {
    pub fn new(plan: &FreebsdPlan, input_hash: &str) -> FreebsdLayout {
        let volume = Sha256::digest(format!("{input_hash} esp-volume-id").as_bytes());
        let esp_start_mib = 1;
        let root_start_mib = esp_start_mib + plan.esp_size_mib;
        FreebsdLayout {
            disk_guid: super::disk::derived_uuid(input_hash, "disk"),
            esp_guid: super::disk::derived_uuid(input_hash, "esp"),
            root_guid: super::disk::derived_uuid(input_hash, "root"),
            esp_volume_id: volume[..4].iter().map(|b| format!("{b:02X}")).collect(),
            esp_start_mib,
            esp_size_mib: plan.esp_size_mib,
            root_start_mib,
            root_size_mib: plan.disk_size_mib - root_start_mib - 1,
            disk_size_mib: plan.disk_size_mib,
        }
    }
}

/// The UFS2 root (makefs), the ESP (mtools) and the GPT (sfdisk), then qcow2.
pub fn build_disk(
    ui: &mut Ui,
    layout: &FreebsdLayout,
    staging: &Staging,
    out: &Path,
    name: &str,
    source_date_epoch: u64,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let epoch = source_date_epoch.to_string();
    let work = out.join("work");
    std::fs::create_dir_all(&work)?;

    let root_image = work.join("root.ufs");
    let root_size = format!("{}m", layout.root_size_mib);
    let staging_dir = staging.path();
    // makefs writes a few in-memory pointers into the superblock; without
    // address randomisation they are the same on every run, so two builds
    // give byte-identical images.
    ui.run(cmd!(
        sh,
        "setarch --addr-no-randomize makefs -t ffs -B little -o version=2 -s {root_size} -T {epoch} {root_image} {staging_dir}"
    ))?;

    clamp_ufs2_inode_times(&root_image, source_date_epoch)?;

    let esp_image = work.join("esp.fat");
    let esp_kib = (layout.esp_size_mib * 1024).to_string();
    let volume_id = &layout.esp_volume_id;
    ui.run(
        cmd!(
            sh,
            "mkfs.vfat -F 32 -n ESP -i {volume_id} --invariant -C {esp_image} {esp_kib}"
        )
        .env("SOURCE_DATE_EPOCH", &epoch),
    )?;
    let files = work.join("esp");
    std::fs::create_dir_all(files.join("EFI/BOOT"))?;
    std::fs::copy(
        staging.join("boot/loader.efi"),
        files.join("EFI/BOOT/BOOTX64.EFI"),
    )?;
    for path in [
        files.join("EFI/BOOT/BOOTX64.EFI"),
        files.join("EFI/BOOT"),
        files.join("EFI"),
    ] {
        assemble::clamp_time(&path, source_date_epoch)?;
    }
    let efi = files.join("EFI");
    ui.run(
        cmd!(sh, "mcopy -i {esp_image} -s -m -Q {efi} ::/")
            .env("SOURCE_DATE_EPOCH", &epoch)
            .env("MTOOLS_SKIP_CHECK", "1"),
    )?;

    let raw = out.join(format!("{name}.raw"));
    let file = std::fs::File::create(&raw)?;
    file.set_len(layout.disk_size_mib * MIB)?;
    drop(file);
    let script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\
         start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"efiboot\"\n\
         start={}, size={}, type={FREEBSD_UFS_TYPE}, uuid={}, name=\"{ROOT_LABEL}\"\n",
        layout.disk_guid,
        layout.esp_start_mib * 2048,
        layout.esp_size_mib * 2048,
        layout.esp_guid,
        layout.root_start_mib * 2048,
        layout.root_size_mib * 2048,
        layout.root_guid,
    );
    ui.log(&script);
    ui.run_with_input(
        cmd!(sh, "sfdisk --quiet --no-reread --no-tell-kernel {raw}"),
        &script,
    )?;
    // makefs and mkfs.vfat write their zeros: punch them out, so that the
    // sparse copy (SEEK_DATA) keeps the raw image sparse.
    ui.run(cmd!(sh, "fallocate --dig-holes {root_image}"))?;
    ui.run(cmd!(sh, "fallocate --dig-holes {esp_image}"))?;
    super::disk::copy_sparse(&esp_image, &raw, layout.esp_start_mib * MIB)?;
    super::disk::copy_sparse(&root_image, &raw, layout.root_start_mib * MIB)?;
    std::fs::remove_dir_all(&work)?;
    let qcow2 = out.join(format!("{name}.qcow2"));
    ui.run(cmd!(sh, "qemu-img convert -f raw -O qcow2 {raw} {qcow2}"))?;
    Ok(())
}

/// Where the UFS2 superblock of `image` is: 65536, or 8192 where Debian's
/// makefs puts it (fs_sblockloc says which; FreeBSD accepts both).
pub fn ufs2_superblock(image: &[u8]) -> Option<usize> {
    [65536usize, 8192].into_iter().find(|&offset| {
        image.get(offset + 1372..offset + 1376) == Some(&0x1954_0119u32.to_le_bytes()[..])
            && image
                .get(offset + 1000..offset + 1008)
                .and_then(|bytes| bytes.try_into().ok())
                .map(i64::from_le_bytes)
                == Some(offset as i64)
    })
}

/// makefs -T clamps mtimes but copies atime and ctime from the staging
/// tree (the kernel's clock): set both to SOURCE_DATE_EPOCH in every used
/// inode, reading the layout from the superblock (fs_iblkno, fs_ncg,
/// fs_fsize, fs_ipg, fs_fpg) and writing only the inode tables.
pub fn clamp_ufs2_inode_times(image: &Path, epoch: u64) -> anyhow::Result<()> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("cannot open {}", image.display()))?;
    let mut head = vec![0u8; 65536 + 8192];
    file.read_exact(&mut head)?;
    let superblock = ufs2_superblock(&head)
        .with_context(|| format!("{}: no UFS2 superblock", image.display()))?;
    let field = |offset: usize| {
        i32::from_le_bytes(
            head[superblock + offset..superblock + offset + 4]
                .try_into()
                .unwrap_or_default(),
        ) as u64
    };
    let (iblkno, ncg, fsize, ipg, fpg) =
        (field(16), field(44), field(52), field(0xb8), field(0xbc));
    if fsize == 0 || ipg == 0 || fpg == 0 {
        bail!("{}: implausible UFS2 superblock", image.display());
    }
    const INODE_SIZE: usize = 256;
    let mut table = vec![0u8; ipg as usize * INODE_SIZE];
    for group in 0..ncg {
        let offset = (group * fpg + iblkno) * fsize;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut table)?;
        let mut changed = false;
        for inode in table.chunks_mut(INODE_SIZE) {
            if inode[0] == 0 && inode[1] == 0 {
                continue; // di_mode 0: unused
            }
            for (time, nanoseconds) in [(32, 68), (48, 72)] {
                inode[time..time + 8].copy_from_slice(&(epoch as i64).to_le_bytes());
                inode[nanoseconds..nanoseconds + 4].copy_from_slice(&0i32.to_le_bytes());
            }
            changed = true;
        }
        if changed {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&table)?;
        }
    }
    file.flush()?;
    Ok(())
}

/// The hash of every input: the sets, the plan, the epoch and every entry
/// of the assembled tree.
pub fn input_hash(
    plan: &FreebsdPlan,
    distribution: &Distribution,
    source_date_epoch: u64,
    files: &[FileEntry],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(
        format!(
            "base {}\nkernel {}\nepoch {source_date_epoch}\n",
            distribution.base_sha256, distribution.kernel_sha256
        )
        .as_bytes(),
    );
    hasher.update(plan.render().as_bytes());
    for file in files {
        hasher.update(
            format!(
                "{} {} {:o} {}:{} {}\n",
                file.path, file.kind, file.mode, file.uid, file.gid, file.sha256
            )
            .as_bytes(),
        );
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// manifest.json and SHA256SUMS.
pub fn write_manifest(
    out: &Path,
    plan: &FreebsdPlan,
    distribution: &Distribution,
    input_hash: &str,
    source_date_epoch: u64,
    files: &[FileEntry],
    layout: &FreebsdLayout,
) -> anyhow::Result<()> {
    let manifest = json!({
        "image": plan.image,
        "os": "freebsd",
        "profile": plan.profile,
        "mode": plan.mode,
        "input_hash": input_hash,
        "source_date_epoch": source_date_epoch,
        "architecture": plan.architecture,
        "freebsd_version": distribution.version,
        "distribution_sets": {
            "base.txz": distribution.base_sha256,
            "kernel.txz": distribution.kernel_sha256,
        },
        "disk": {
            "size_mib": layout.disk_size_mib,
            "disk_guid": layout.disk_guid,
            "esp_partuuid": layout.esp_guid,
            "root_partuuid": layout.root_guid,
            "root_label": format!("gpt/{ROOT_LABEL}"),
            "root_fs": "ufs2",
        },
        "services": plan.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "services_left_out": plan.left_out,
        "packages_to_add": plan.packages_to_add(),
        "files": files.iter().map(|f| {
            let mut entry = json!({"path": f.path, "type": f.kind, "mode": format!("{:04o}", f.mode), "uid": f.uid, "gid": f.gid});
            if f.kind == "file" {
                entry["size"] = json!(f.size);
            }
            if !f.sha256.is_empty() {
                entry["sha256"] = json!(f.sha256);
            }
            entry
        }).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    let mut names: Vec<String> = std::fs::read_dir(out)?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|file| file != "SHA256SUMS")
        .collect();
    names.sort();
    let mut sums = String::new();
    for file in names {
        sums.push_str(&format!(
            "{}  {file}\n",
            super::manifest::sha256_file(&out.join(&file))?
        ));
    }
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(())
}

/// `cargo xtask image` for an os="freebsd" image.
pub fn build(args: &super::Args, source: &Path) -> anyhow::Result<()> {
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
    let out_parent = args
        .out
        .clone()
        .unwrap_or_else(|| source.join("images/out"));
    build_with(&plan, dist, &out_parent, args.verbose, None, None)?;
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

/// The whole pipeline; returns the output directory. `target_dir` defaults
/// to cargo metadata's, `source_date_epoch` to SOURCE_DATE_EPOCH or the
/// last commit's time.
pub fn build_with(
    plan: &FreebsdPlan,
    dist: &Path,
    out_parent: &Path,
    verbose: bool,
    target_dir: Option<&Path>,
    source_date_epoch: Option<u64>,
) -> anyhow::Result<PathBuf> {
    // Every check that needs no build or unpacking first.
    let distribution = check_distribution(dist)?;
    std::fs::create_dir_all(out_parent)
        .with_context(|| format!("cannot create {}", out_parent.display()))?;
    let name = format!("{}-{}", plan.image, plan.profile);
    let log = out_parent.join(format!("{name}.log"));
    let mut ui = Ui::new(&log, verbose)?;
    ui.note(&format!(
        "building {name} from FreeBSD {} (log: {})",
        distribution.version,
        log.display()
    ));
    ui.step("check host tools", |_| {
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
    })?;
    let source_date_epoch = match source_date_epoch {
        Some(epoch) => epoch,
        None => super::host::source_date_epoch(&ui, &plan.source)?,
    };
    let target_dir = match target_dir {
        Some(dir) => dir.to_path_buf(),
        None => super::host::cargo_target_dir(&plan.source)?,
    };
    ui.cleanup_stale(out_parent);
    let binaries = ui.step("build initd (x86_64-unknown-freebsd) and nodows", |ui| {
        build_binaries(ui, &plan.source, &target_dir)
    })?;
    let staging = Staging::create(&name)?;
    ui.step("unpack the sets and assemble the root", |ui| {
        assemble(ui, plan, &distribution, &binaries, &staging)
    })?;
    ui.step("bake configs and the rc.d glue (nodows render)", |ui| {
        bake(ui, plan, &binaries.nodows, &staging)
    })?;
    let files = ui.step("clamp timestamps and hash every file", |_| {
        assemble::finish(&staging, None, source_date_epoch)
    })?;
    let input_hash = input_hash(plan, &distribution, source_date_epoch, &files);
    let layout = FreebsdLayout::new(plan, &input_hash);
    let output = TempDir::create(out_parent, &name)?;
    ui.step("disk image (ufs2 root, ESP with loader.efi, GPT)", |ui| {
        build_disk(
            ui,
            &layout,
            &staging,
            output.path(),
            &name,
            source_date_epoch,
        )
    })?;
    ui.step("manifest and checksums", |_| {
        write_manifest(
            output.path(),
            plan,
            &distribution,
            &input_hash,
            source_date_epoch,
            &files,
            &layout,
        )
    })?;
    drop(staging);
    let final_path = out_parent.join(&name);
    output.persist(&final_path)?;
    ui.note(&format!(
        "done in {:.1}s: {}",
        ui.elapsed().as_secs_f64(),
        final_path.display()
    ));
    Ok(final_path)
}

#[cfg(test)]
mod tests;
