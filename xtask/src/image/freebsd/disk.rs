//! The disk: a UFS2 root by makefs, an ESP holding the set's loader.efi, a
//! GPT by sfdisk, all in plain files; then qcow2.

use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::super::assemble::Staging;
use super::super::ui::Ui;
use super::super::util;
use super::*;

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
            disk_guid: super::super::disk::derived_uuid(input_hash, "disk"),
            esp_guid: super::super::disk::derived_uuid(input_hash, "esp"),
            root_guid: super::super::disk::derived_uuid(input_hash, "root"),
            esp_volume_id: hex::encode_upper(&volume[..4]),
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

    let (esp_image, files) = super::super::disk::empty_esp(
        ui,
        &sh,
        &work,
        layout.esp_size_mib,
        &layout.esp_volume_id,
        &epoch,
    )?;
    std::fs::copy(
        staging.join("boot/loader.efi"),
        files.join("EFI/BOOT/BOOTX64.EFI"),
    )?;
    for path in [
        files.join("EFI/BOOT/BOOTX64.EFI"),
        files.join("EFI/BOOT"),
        files.join("EFI"),
    ] {
        util::clamp_time(&path, source_date_epoch)?;
    }
    super::super::disk::copy_into_esp(ui, &sh, &esp_image, &[files.join("EFI")], &epoch)?;

    let raw = out.join(format!("{name}.raw"));
    super::super::disk::empty_disk(&raw, layout.disk_size_mib)?;
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
    super::super::disk::copy_sparse(&esp_image, &raw, layout.esp_start_mib * MIB)?;
    super::super::disk::copy_sparse(&root_image, &raw, layout.root_start_mib * MIB)?;
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
