//! The A/B layout of `<disk layout="ab">` (see the `update` crate): ESP,
//! root slot a (filled), root slot b (empty), a data partition; the release
//! file and the update public key in the root; slot a's boot entry; and the
//! signed update artifact of the root beside the disk.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use update::keys::SigningKey;
use update::{Release, Slot};

use super::disk::Layout;
use super::plan::Plan;

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

/// Writes `IMAGE-PROFILE.update` into `out`: the root file system, kernel
/// and initrd, signed. `work` is a scratch directory.
#[allow(clippy::too_many_arguments)]
pub fn write_artifact(
    settings: &UpdateSettings,
    plan: &Plan,
    kernel_version: &str,
    vmlinuz: &Path,
    initrd: &Path,
    rootfs: &Path,
    out: &Path,
    work: &Path,
) -> anyhow::Result<update::artifact::Manifest> {
    update::artifact::write(
        &update::artifact::Source {
            release: &settings.release,
            kernel_version,
            cmdline: &plan.cmdline,
            vmlinuz,
            initrd,
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
