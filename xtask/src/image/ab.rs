//! The A/B layout of `<disk layout="ab">` (see the `update` crate): ESP,
//! root slot a (filled), root slot b (empty), a data partition; the release
//! file and the update public key in the root; slot a's boot entry (with
//! `<verified-boot/>` its signed UKI, and one for slot b in the artifact);
//! and the signed update artifact of the root beside the disk.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use update::keys::SigningKey;
use update::{Release, Slot};

use super::assemble::Assembled;
use super::disk::Layout;
use super::plan::Plan;
use super::secureboot::{SigningKeys, Verity};
use super::ui::Ui;

/// The GPT type of the data partition (Linux filesystem data).
pub const DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// What an A/B build needs besides the plan: the release and the signing key.
pub struct UpdateSettings {
    pub release: Release,
    pub key: SigningKey,
    pub key_path: PathBuf,
    /// The key was made by this build (a per-checkout test key).
    pub key_created: bool,
}

/// The per-checkout test key, made on first use.
pub fn test_key_path(target_dir: &Path) -> PathBuf {
    target_dir.join("nodows-keys/update-test.key")
}

/// Loads the signing key (`--signing-key PATH`, or the test key under the
/// target directory, made on first use) and the release of this build.
pub fn settings(
    plan: &Plan,
    version: &str,
    signing_key: Option<&Path>,
    target_dir: &Path,
) -> anyhow::Result<UpdateSettings> {
    let (key_path, key, key_created) = match signing_key {
        Some(path) => (
            path.to_path_buf(),
            SigningKey::read(path)
                .map_err(|error| super::BadInput(format!("--signing-key: {error}")))?,
            false,
        ),
        None => {
            let path = test_key_path(target_dir);
            if path.is_file() {
                (path.clone(), SigningKey::read(&path)?, false)
            } else {
                (path.clone(), SigningKey::generate(&path)?, true)
            }
        }
    };
    Ok(UpdateSettings {
        release: Release {
            image: plan.image.clone(),
            profile: plan.profile.clone(),
            version: version.to_string(),
            architecture: plan.architecture.clone(),
        },
        key,
        key_path,
        key_created,
    })
}

/// `/etc/nodows/release` and `/etc/nodows/update.pub` in the staging tree.
pub fn install(settings: &UpdateSettings, staging: &Path) -> anyhow::Result<()> {
    super::util::write(
        &staging.join(Release::PATH.trim_start_matches('/')),
        &settings.release.to_text(),
        0o644,
    )?;
    super::util::write(
        &staging.join(update::keys::PublicKey::PATH.trim_start_matches('/')),
        &settings.key.public().to_text(),
        0o644,
    )
}

/// The ESP's loader files of an A/B disk, under `files`: `loader.conf`
/// (`default nodows-*`), slot a's blessed entry, its kernel and initrd.
/// Returns the top-level paths to copy onto the ESP.
pub fn esp_files(
    files: &Path,
    layout: &Layout,
    plan: &Plan,
    version: &str,
    vmlinuz: &Path,
    initrd: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(files.join("loader/entries"))?;
    std::fs::create_dir_all(files.join("nodows/a"))?;
    std::fs::write(
        files.join("loader/loader.conf"),
        super::disk::loader_conf(plan, "nodows-*"),
    )?;
    std::fs::write(
        files.join("loader/entries/nodows-1-a.conf"),
        update::entries::entry_text(
            &format!("nodows {} {version} (slot a)", plan.image),
            version,
            Slot::A,
            &layout.cmdline(plan),
        ),
    )?;
    std::fs::copy(vmlinuz, files.join("nodows/a/vmlinuz"))?;
    std::fs::copy(initrd, files.join("nodows/a/initrd.img"))?;
    Ok(vec![files.join("loader"), files.join("nodows")])
}

/// What the signed unified kernel images of a verified A/B disk are made of.
pub struct UkiInputs<'a> {
    pub keys: &'a SigningKeys,
    pub layout: &'a Layout,
    pub plan: &'a Plan,
    pub version: &'a str,
    pub verity: &'a Verity,
    /// The root's os-release: the UKI's `.osrel`, with NODOWS_VERSION added.
    pub os_release: &'a Path,
    pub assembled: &'a Assembled,
    pub work: &'a Path,
    pub source_date_epoch: u64,
}

/// The signed UKIs of slots a and b (under `work`): the same kernel,
/// initrd and root hash, each with its slot's command line
/// (`root=PARTLABEL=root-SLOT ... nodows.slot=SLOT nodows.verity=...`).
pub fn slot_ukis(ui: &mut Ui, inputs: &UkiInputs) -> anyhow::Result<[PathBuf; 2]> {
    let os_release = inputs.work.join("os-release-nodows");
    let mut text = std::fs::read_to_string(inputs.os_release)
        .with_context(|| format!("cannot read {}", inputs.os_release.display()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "{}={}\n",
        update::entries::UKI_VERSION_KEY,
        inputs.version
    ));
    std::fs::write(&os_release, text)?;
    let mut ukis = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let uki = inputs.work.join(format!("uki-{slot}.efi"));
        let cmdline = format!(
            "{} {}",
            inputs.layout.slot_cmdline(inputs.plan, slot),
            inputs.verity.cmdline_word()
        );
        super::secureboot::unified_kernel_image(
            ui,
            inputs.keys,
            &os_release,
            &cmdline,
            &inputs.assembled.vmlinuz,
            &inputs.assembled.initrd,
            inputs.work,
            &uki,
            inputs.source_date_epoch,
        )?;
        ukis.push(uki);
    }
    let [a, b]: [PathBuf; 2] = ukis.try_into().map_err(|_| anyhow::anyhow!("two UKIs"))?;
    Ok([a, b])
}

/// The ESP's loader files of a verified A/B disk, under `files`:
/// `loader.conf` (`default nodows-*`) and slot a's blessed UKI entry
/// `EFI/Linux/nodows-1-a.efi`; no loose kernel or type #1 entry whose
/// command line could be edited. Returns `loader` (EFI/ is copied anyway).
pub fn esp_files_verified(
    files: &Path,
    plan: &Plan,
    ukis: &[PathBuf; 2],
) -> anyhow::Result<PathBuf> {
    let linux = files.join(update::entries::UKI_DIR);
    std::fs::create_dir_all(&linux)?;
    std::fs::copy(&ukis[0], linux.join("nodows-1-a.efi"))?;
    std::fs::create_dir_all(files.join("loader"))?;
    std::fs::write(
        files.join("loader/loader.conf"),
        super::disk::loader_conf(plan, "nodows-*"),
    )?;
    Ok(files.join("loader"))
}

/// Writes `IMAGE-PROFILE.update` into `out`: the root file system (with its
/// hash tree on verified images) and `boot` (kernel and initrd, or each
/// slot's UKI), signed. `work` is a scratch directory.
#[allow(clippy::too_many_arguments)]
pub fn write_artifact(
    settings: &UpdateSettings,
    plan: &Plan,
    kernel_version: &str,
    boot: update::artifact::Boot,
    rootfs: &Path,
    out: &Path,
    work: &Path,
) -> anyhow::Result<update::artifact::Manifest> {
    update::artifact::write(
        &update::artifact::Source {
            release: &settings.release,
            kernel_version,
            cmdline: &plan.cmdline,
            boot,
            rootfs,
        },
        &settings.key,
        ZSTD_LEVEL,
        out,
        work,
    )
    .with_context(|| format!("cannot write the update artifact {}", out.display()))
}

/// zstd's level for the artifact: 19 would save about a tenth more and take
/// ten times as long to build.
const ZSTD_LEVEL: i32 = 9;
