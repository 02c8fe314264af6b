//! The disk: an ext4 root made with `mkfs.ext4 -d`, a FAT32 ESP filled with
//! mtools and holding systemd-boot, and a GPT written by sfdisk into a plain
//! file; no loop devices, no mounts. Every UUID, GUID, serial and seed is
//! derived from the input hash; every timestamp is SOURCE_DATE_EPOCH.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::assemble::{Assembled, Staging};
use super::plan::Plan;
use super::ui::{TempDir, Ui};

const MIB: u64 = 1024 * 1024;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The Discoverable Partitions Specification's x86-64 root type.
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

pub struct Layout {
    pub disk_guid: String,
    pub esp_guid: String,
    pub root_guid: String,
    pub root_fs_uuid: String,
    pub root_hash_seed: String,
    pub esp_volume_id: String,
    pub esp_start_mib: u64,
    pub esp_size_mib: u64,
    pub root_start_mib: u64,
    pub root_size_mib: u64,
    pub disk_size_mib: u64,
    /// `<disk layout="ab">`: root is slot a; slot b follows.
    pub ab: Option<AbPartitions>,
    /// The data partition, last on the disk (A/B and verified disks).
    pub data: Option<DataPartition>,
}

pub struct AbPartitions {
    pub root_b_guid: String,
    pub root_b_start_mib: u64,
}

pub struct DataPartition {
    pub guid: String,
    pub fs_uuid: String,
    pub start_mib: u64,
    pub size_mib: u64,
}

pub(super) fn derived_uuid(input_hash: &str, purpose: &str) -> String {
    let digest = Sha256::digest(format!("{input_hash} {purpose}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4 layout
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
    .to_uppercase()
}

impl Layout {
    pub fn new(plan: &Plan, input_hash: &str) -> Layout {
        let volume = Sha256::digest(format!("{input_hash} esp-volume-id").as_bytes());
        let esp_start_mib = 1;
        let root_start_mib = esp_start_mib + plan.esp_size_mib;
        let root_size_mib = plan.slot_size_mib();
        let ab = plan.ab_data_mib.map(|_| AbPartitions {
            root_b_guid: derived_uuid(input_hash, "root-b"),
            root_b_start_mib: root_start_mib + root_size_mib,
        });
        let roots = if ab.is_some() { 2 } else { 1 };
        let data = plan.data_mib.map(|size_mib| DataPartition {
            guid: derived_uuid(input_hash, "data"),
            fs_uuid: derived_uuid(input_hash, "data-fs").to_lowercase(),
            start_mib: root_start_mib + roots * root_size_mib,
            size_mib,
        });
        Layout {
            disk_guid: derived_uuid(input_hash, "disk"),
            esp_guid: derived_uuid(input_hash, "esp"),
            root_guid: derived_uuid(input_hash, "root"),
            root_fs_uuid: derived_uuid(input_hash, "root-fs").to_lowercase(),
            root_hash_seed: derived_uuid(input_hash, "root-hash-seed").to_lowercase(),
            esp_volume_id: volume[..4]
                .iter()
                .map(|byte| format!("{byte:02X}"))
                .collect(),
            esp_start_mib,
            esp_size_mib: plan.esp_size_mib,
            root_start_mib,
            root_size_mib,
            disk_size_mib: plan.disk_size_mib,
            ab,
            data,
        }
    }

    /// The kernel command line of the root (slot a on an A/B disk).
    pub fn cmdline(&self, plan: &Plan) -> String {
        self.slot_cmdline(plan, update::Slot::A)
    }

    /// The kernel command line that boots `slot`: the root by PARTUUID, so
    /// any disk bus works; on a verified A/B disk by GPT name instead
    /// (`root=PARTLABEL=root-b`), because the slot's signed UKI must boot
    /// on every disk an update installs it on.
    pub fn slot_cmdline(&self, plan: &Plan, slot: update::Slot) -> String {
        let root = match (&self.ab, plan.verified_boot, slot) {
            (Some(_), true, _) => format!("PARTLABEL={}", slot.partition_name()),
            (Some(ab), false, update::Slot::B) => {
                format!("PARTUUID={}", ab.root_b_guid.to_lowercase())
            }
            _ => format!("PARTUUID={}", self.root_guid.to_lowercase()),
        };
        let slot_word = match self.ab {
            Some(_) => format!(" nodows.slot={slot}"),
            None => String::new(),
        };
        format!("root={root} {}{slot_word}", plan.cmdline)
    }
}

/// Makes the raw disk and the kernel, initrd and command line beside it.
/// Returns the raw disk's sha256, computed on a thread of `scope` from its
/// parts (the GPT regions of the raw file, the ESP and root images) while
/// they are copied into the raw file; that thread removes the scratch
/// directory when done.
#[allow(clippy::too_many_arguments)]
pub fn build<'scope>(
    ui: &mut Ui,
    scope: &'scope std::thread::Scope<'scope, '_>,
    plan: &Plan,
    layout: &Layout,
    staging: &Staging,
    assembled: &Assembled,
    out: &Path,
    name: &str,
    source_date_epoch: u64,
    update: Option<&super::ab::UpdateSettings>,
    secure_boot: Option<&super::secureboot::SigningKeys>,
    input_hash: &str,
) -> anyhow::Result<std::thread::ScopedJoinHandle<'scope, anyhow::Result<String>>> {
    let sh = Shell::new()?;
    let epoch = source_date_epoch.to_string();
    // The partition images are made on the tmpfs: mke2fs and debugfs fsync
    // their output when they close it, which on a disk waits about a second
    // for 260 MB to be written back; the copy into the raw file does not.
    let scratch = TempDir::create(
        &super::assemble::tmpfs_parent(),
        &format!("nodows-disk-{name}"),
    )?;
    let work = scratch.path().to_path_buf();

    // The ext4 root. The image file is new, so every block mke2fs does not
    // write reads as zero: the journal needs no zeroing (lazy_journal_init;
    // zeroing it would write 16 MiB of zeros on a tmpfs, copied into the raw
    // as data). The inode tables stay lazy as before, pinned rather than
    // taken from the host kernel's /sys/fs/ext4/features so that hosts agree.
    let root_image = work.join("root.ext4");
    // A verified root leaves room for its hash tree at the partition's end.
    let partition_blocks = layout.root_size_mib * MIB / 4096;
    let data_blocks = match secure_boot {
        Some(_) => super::secureboot::data_blocks_for(partition_blocks),
        None => partition_blocks,
    };
    let root_blocks = data_blocks.to_string();
    let (uuid, seed, staging_dir) = (&layout.root_fs_uuid, &layout.root_hash_seed, staging.path());
    ui.run(
        cmd!(
            sh,
            "mkfs.ext4 -q -F -b 4096 -L root -U {uuid} -E hash_seed={seed},root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1 -d {staging_dir} {root_image} {root_blocks}"
        )
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .env("SOURCE_DATE_EPOCH", &epoch),
    )?;
    clamp_ext4_ctimes(ui, &root_image, &epoch)?;
    let verity = match secure_boot {
        Some(_) => Some(super::secureboot::format_verity(
            ui,
            &root_image,
            data_blocks,
            input_hash,
        )?),
        None => None,
    };

    // The kernel, initrd and command line beside the image, for direct boots.
    let mut cmdline = layout.cmdline(plan);
    if let Some(verity) = &verity {
        cmdline.push(' ');
        cmdline.push_str(&verity.cmdline_word());
        ui.note(&format!(
            "    dm-verity: {} data blocks, {} hash blocks ({:.2} % of the root), root hash {}",
            verity.data_blocks,
            verity.hash_blocks,
            verity.hash_blocks as f64 * 100.0 / verity.data_blocks as f64,
            verity.root_hash
        ));
        std::fs::write(
            out.join(format!("{name}.verity")),
            format!(
                "data_blocks={}\nhash_blocks={}\nroot_hash={}\nsalt={}\n",
                verity.data_blocks, verity.hash_blocks, verity.root_hash, verity.salt
            ),
        )?;
    }
    std::fs::copy(&assembled.vmlinuz, out.join(format!("{name}.vmlinuz")))?;
    std::fs::copy(&assembled.initrd, out.join(format!("{name}.initrd")))?;
    std::fs::write(out.join(format!("{name}.cmdline")), format!("{cmdline}\n"))?;

    // The ESP: systemd-boot, its loader entry, the kernel and initrd.
    let (esp_image, files) = empty_esp(
        ui,
        &sh,
        &work,
        layout.esp_size_mib,
        &layout.esp_volume_id,
        &epoch,
    )?;
    let boot_loader = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    match secure_boot {
        Some(keys) => super::secureboot::sign(
            ui,
            keys,
            Path::new(boot_loader),
            &files.join("EFI/BOOT/BOOTX64.EFI"),
            source_date_epoch,
        )?,
        None => drop(std::fs::copy(
            boot_loader,
            files.join("EFI/BOOT/BOOTX64.EFI"),
        )?),
    }
    let mut esp_tops = vec![files.join("EFI")];
    let mut artifact_ukis = None;
    match (update, secure_boot) {
        (None, Some(keys)) => {
            // One signed unified kernel image, found by systemd-boot itself;
            // no loose kernel or entry whose command line could be edited.
            let uki = files.join(super::secureboot::UKI_PATH);
            std::fs::create_dir_all(uki.parent().context("EFI/Linux")?)?;
            super::secureboot::unified_kernel_image(
                ui,
                keys,
                &staging.path().join("usr/lib/os-release"),
                &cmdline,
                &assembled.vmlinuz,
                &assembled.initrd,
                &work,
                &uki,
                source_date_epoch,
            )?;
            std::fs::copy(&uki, out.join(format!("{name}.efi")))?;
            std::fs::create_dir_all(files.join("loader"))?;
            std::fs::write(
                files.join("loader/loader.conf"),
                loader_conf(plan, "nodows.efi"),
            )?;
            esp_tops.push(files.join("loader"));
        }
        (Some(settings), Some(keys)) => {
            let verity = verity
                .as_ref()
                .context("a verified A/B root without its hash tree")?;
            let ukis = super::ab::slot_ukis(
                ui,
                &super::ab::UkiInputs {
                    keys,
                    layout,
                    plan,
                    version: &settings.release.version,
                    verity,
                    os_release: &staging.path().join("usr/lib/os-release"),
                    assembled,
                    work: &work,
                    source_date_epoch,
                },
            )?;
            esp_tops.push(super::ab::esp_files_verified(&files, plan, &ukis)?);
            artifact_ukis = Some(ukis);
        }
        (Some(settings), None) => esp_tops.extend(super::ab::esp_files(
            &files,
            layout,
            plan,
            &settings.release.version,
            &assembled.vmlinuz,
            &assembled.initrd,
        )?),
        (None, None) => {
            std::fs::create_dir_all(files.join("loader/entries"))?;
            std::fs::write(
                files.join("loader/loader.conf"),
                loader_conf(plan, "nodows.conf"),
            )?;
            std::fs::write(
                files.join("loader/entries/nodows.conf"),
                format!(
                    "title nodows {name}\nversion {}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n",
                    assembled.kernel_version
                ),
            )?;
            std::fs::copy(&assembled.vmlinuz, files.join("vmlinuz"))?;
            std::fs::copy(&assembled.initrd, files.join("initrd.img"))?;
            esp_tops.extend([
                files.join("loader"),
                files.join("vmlinuz"),
                files.join("initrd.img"),
            ]);
        }
    }
    let mut entries: Vec<PathBuf> = Vec::new();
    collect(&files, &mut entries)?;
    for path in entries.iter().chain(std::iter::once(&files)) {
        super::util::clamp_time(path, source_date_epoch)?;
    }
    copy_into_esp(ui, &sh, &esp_image, &esp_tops, &epoch)?;

    // The GPT, then the partitions copied in at their offsets (sparse).
    let raw = out.join(format!("{name}.raw"));
    empty_disk(&raw, layout.disk_size_mib)?;
    let mut script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\
         start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"esp\"\n\
         start={}, size={}, type={ROOT_TYPE}, uuid={}, name=\"{}\"\n",
        layout.disk_guid,
        layout.esp_start_mib * 2048,
        layout.esp_size_mib * 2048,
        layout.esp_guid,
        layout.root_start_mib * 2048,
        layout.root_size_mib * 2048,
        layout.root_guid,
        if layout.ab.is_some() {
            "root-a"
        } else {
            "root"
        },
    );
    let mut parts = vec![
        (
            esp_image,
            layout.esp_start_mib * MIB,
            layout.esp_size_mib * MIB,
        ),
        (
            root_image.clone(),
            layout.root_start_mib * MIB,
            layout.root_size_mib * MIB,
        ),
    ];
    if let Some(ab) = &layout.ab {
        // Slot b stays empty (zeros) until the first update.
        script.push_str(&format!(
            "start={}, size={}, type={ROOT_TYPE}, uuid={}, name=\"root-b\"\n",
            ab.root_b_start_mib * 2048,
            layout.root_size_mib * 2048,
            ab.root_b_guid,
        ));
    }
    if let Some(data) = &layout.data {
        // An empty ext4 labelled `data`, last: initd grows it to the end
        // of a bigger disk.
        script.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"data\"\n",
            data.start_mib * 2048,
            data.size_mib * 2048,
            super::ab::DATA_TYPE,
            data.guid,
        ));
        let data_image = work.join("data.ext4");
        let data_blocks = (data.size_mib * MIB / 4096).to_string();
        let data_uuid = &data.fs_uuid;
        ui.run(
            cmd!(
                sh,
                "mkfs.ext4 -q -F -b 4096 -L data -U {data_uuid} -E hash_seed={data_uuid},root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1 {data_image} {data_blocks}"
            )
            .env("E2FSPROGS_FAKE_TIME", &epoch)
            .env("SOURCE_DATE_EPOCH", &epoch),
        )?;
        parts.push((data_image, data.start_mib * MIB, data.size_mib * MIB));
    }
    if let Some(settings) = update {
        let boot = match &artifact_ukis {
            Some([a, b]) => update::artifact::Boot::Ukis { a, b },
            None => update::artifact::Boot::Kernel {
                vmlinuz: &assembled.vmlinuz,
                initrd: &assembled.initrd,
            },
        };
        super::ab::write_artifact(
            settings,
            plan,
            &assembled.kernel_version,
            boot,
            &root_image,
            &out.join(format!("{name}.update")),
            &work,
        )?;
    }
    ui.log(&script);
    ui.run_with_input(
        cmd!(sh, "sfdisk --quiet --no-reread --no-tell-kernel {raw}"),
        &script,
    )?;
    for (image, _, size) in &parts {
        let length = std::fs::metadata(image)?.len();
        if length > *size {
            bail!(
                "{} is {length} bytes, more than its partition's {size}",
                image.display()
            );
        }
    }
    let disk_size = layout.disk_size_mib * MIB;
    let hashed_raw = raw.clone();
    let hashed_parts = parts.clone();
    let raw_sum = scope.spawn(move || -> anyhow::Result<String> {
        // The raw file's bytes in order: what sfdisk wrote between and
        // around the partitions, and each partition's image (zeros past its
        // end, as in the raw file after the sparse copy).
        let mut hasher = Sha256::new();
        let mut position = 0;
        for (image, start, size) in &hashed_parts {
            super::util::hash_range(&mut hasher, &hashed_raw, position, start - position)?;
            super::util::hash_range(&mut hasher, image, 0, *size)?;
            position = start + size;
        }
        super::util::hash_range(&mut hasher, &hashed_raw, position, disk_size - position)?;
        drop(scratch);
        Ok(hex::encode(hasher.finalize()))
    });
    for (image, start, _) in &parts {
        copy_sparse(image, &raw, *start)?;
    }
    Ok(raw_sum)
}

/// systemd-boot's `loader/loader.conf`: no menu, and no command-line
/// editor unless root already has a console shell (`Plan::boot_menu_editor`).
pub(super) fn loader_conf(plan: &Plan, default: &str) -> String {
    let editor = if plan.boot_menu_editor() { "yes" } else { "no" };
    format!("default {default}\ntimeout 0\nconsole-mode keep\neditor {editor}\n")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        }
        out.push(path);
    }
    Ok(())
}

/// mkfs.ext4 -d copies each inode's ctime and atime from the staging tree,
/// where the kernel set them at extraction and on reads; debugfs sets both
/// to SOURCE_DATE_EPOCH in every used inode (mtimes are clamped before).
fn clamp_ext4_ctimes(ui: &mut Ui, image: &Path, epoch: &str) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let dump = cmd!(sh, "dumpe2fs {image}")
        .quiet()
        .ignore_stderr()
        .read()?;
    let inodes_per_group: u64 = dump
        .lines()
        .find_map(|line| line.strip_prefix("Inodes per group:"))
        .and_then(|value| value.trim().parse().ok())
        .context("dumpe2fs shows no inodes per group")?;
    let mut used = Vec::new();
    let mut group: Option<u64> = None;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("Group ") {
            group = rest.split(':').next().and_then(|g| g.trim().parse().ok());
        } else if let (Some(g), Some(free)) = (group, line.trim().strip_prefix("Free inodes:")) {
            let first = g * inodes_per_group + 1;
            let last = (g + 1) * inodes_per_group;
            let mut free_ranges = Vec::new();
            for range in free.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                free_ranges.push((a.trim().parse::<u64>()?, b.trim().parse::<u64>()?));
            }
            // Uninitialised inode tables hold no used inodes.
            if line.contains("Free inodes:")
                && free_ranges.iter().any(|&(a, b)| a == first && b == last)
            {
                continue;
            }
            let mut inode = first;
            while inode <= last {
                if let Some(&(_, b)) = free_ranges.iter().find(|&&(a, b)| a <= inode && inode <= b)
                {
                    inode = b + 1;
                } else {
                    used.push(inode);
                    inode += 1;
                }
            }
        }
    }
    if used.is_empty() {
        bail!("dumpe2fs shows no used inodes in {}", image.display());
    }
    let script: String = used
        .iter()
        .map(|inode| format!("set_inode_field <{inode}> ctime @{epoch}\nset_inode_field <{inode}> atime @{epoch}\n"))
        .collect();
    let script_path = image.with_extension("debugfs");
    std::fs::write(&script_path, script)?;
    ui.run(
        cmd!(sh, "debugfs -w -f {script_path} {image}")
            .env("E2FSPROGS_FAKE_TIME", epoch)
            .ignore_stdout(),
    )?;
    std::fs::remove_file(&script_path)?;
    Ok(())
}

/// Copies `from` into `to` at `offset`: only the data ranges of the sparse
/// source (SEEK_DATA/SEEK_HOLE), with copy_file_range, so holes stay holes.
pub(super) fn copy_sparse(from: &Path, to: &Path, offset: u64) -> anyhow::Result<()> {
    let input =
        std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .with_context(|| format!("cannot open {}", to.display()))?;
    let length = input.metadata()?.len();
    for (data, end) in super::sparse::data_extents(&input, 0, length)? {
        let mut source = &input;
        source.seek(SeekFrom::Start(data))?;
        output.seek(SeekFrom::Start(offset + data))?;
        let copied = std::io::copy(&mut source.take(end - data), &mut output)?;
        if copied != end - data {
            bail!("short copy from {}", from.display());
        }
    }
    output.flush()?;
    Ok(())
}

/// Copies the directories `tops` into the root of the ESP image (times
/// kept: they were clamped to the epoch).
pub(super) fn copy_into_esp(
    ui: &mut Ui,
    sh: &Shell,
    esp_image: &Path,
    tops: &[PathBuf],
    epoch: &str,
) -> anyhow::Result<()> {
    ui.run(
        cmd!(sh, "mcopy -i {esp_image} -s -m -Q {tops...} ::/")
            .env("SOURCE_DATE_EPOCH", epoch)
            .env("MTOOLS_SKIP_CHECK", "1"),
    )?;
    Ok(())
}

/// A new raw disk file of `size_mib`, all holes.
pub(super) fn empty_disk(raw: &Path, size_mib: u64) -> anyhow::Result<()> {
    std::fs::File::create(raw)?.set_len(size_mib * MIB)?;
    Ok(())
}

/// An empty FAT32 ESP image of `size_mib` in `work` (`esp.fat`, the same
/// bytes for the same volume id and epoch), and the directory `work/esp`
/// (with `EFI/BOOT`) where its files are gathered before `mcopy`.
pub(super) fn empty_esp(
    ui: &mut Ui,
    sh: &Shell,
    work: &Path,
    size_mib: u64,
    volume_id: &str,
    epoch: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let esp_image = work.join("esp.fat");
    let esp_kib = (size_mib * 1024).to_string();
    ui.run(
        cmd!(
            sh,
            "mkfs.vfat -F 32 -n ESP -i {volume_id} --invariant -C {esp_image} {esp_kib}"
        )
        .env("SOURCE_DATE_EPOCH", epoch),
    )?;
    let files = work.join("esp");
    std::fs::create_dir_all(files.join("EFI/BOOT"))?;
    Ok((esp_image, files))
}
