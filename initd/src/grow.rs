//! Growing the data partition at boot when the image was written to a
//! bigger disk: the GPT (read and written with the `gptman` crate) gets its
//! backup header at the disk's new end and the data partition, which must
//! be the last one, extends to the last whole MiB before it; the kernel
//! learns the new size with BLKPG (the disk is busy: its root is mounted),
//! and once the partition is mounted its ext4 grows online
//! (EXT4_IOC_RESIZE_FS). Each step checks the state it leaves, so a power
//! cut between them is finished at the next boot.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use gptman::{GPTHeader, GPT};

/// Partitions end on whole MiB, as the image builder lays them out.
const ALIGN_BYTES: u64 = 1 << 20;

/// Grows GPT partition `number` of `disk` (a block device or an image
/// file) to the end of the disk. Returns the partition's new `(start,
/// length)` in bytes, or `None` when there was nothing to do (the disk is
/// not bigger than the table says). Refuses when the partition is not the
/// last one on the disk.
pub fn grow_gpt<D: Read + Write + Seek>(
    disk: &mut D,
    number: u32,
) -> Result<Option<(u64, u64)>, String> {
    let mut gpt = GPT::find_from(disk).map_err(|error| format!("GPT: {error}"))?;
    let sector = gpt.sector_size;
    let last = gpt
        .iter()
        .filter(|(_, entry)| entry.is_used())
        .max_by_key(|(_, entry)| entry.ending_lba)
        .map(|(index, _)| index);
    if last != Some(number) {
        return Err(format!(
            "partition {number} is not the last on the disk: it cannot grow"
        ));
    }
    let before = gpt.header.clone();
    gpt.header
        .update_from(disk, sector)
        .map_err(|error| format!("disk size: {error}"))?;
    let align = ALIGN_BYTES / sector;
    let end = (gpt.header.last_usable_lba + 1) / align * align - 1;
    let entry = &gpt[number];
    let (start, old_end) = (entry.starting_lba, entry.ending_lba);
    let moved = gpt.header.backup_lba != before.backup_lba;
    if end <= old_end && !moved && backup_is_valid(disk, &gpt.header, sector) {
        return Ok(None);
    }
    let new_end = end.max(old_end);
    gpt[number].ending_lba = new_end;
    gpt.write_into(disk)
        .map_err(|error| format!("write the GPT: {error}"))?;
    GPT::write_protective_mbr_into(disk, sector)
        .map_err(|error| format!("write the protective MBR: {error}"))?;
    disk.flush().map_err(|error| format!("flush: {error}"))?;
    Ok(Some((start * sector, (new_end - start + 1) * sector)))
}

/// The backup header where the primary says it is, readable.
fn backup_is_valid<D: Read + Seek>(disk: &mut D, primary: &GPTHeader, sector: u64) -> bool {
    disk.seek(SeekFrom::Start(primary.backup_lba * sector))
        .is_ok()
        && GPTHeader::read_from(disk).is_ok_and(|backup| backup.backup_lba == primary.primary_lba)
}

/// The block count and block size of the ext2/3/4 file system on `device`
/// (its superblock: `s_blocks_count_lo`, `_hi` with the 64bit feature,
/// `s_log_block_size`).
pub fn ext4_size(device: &Path) -> Option<(u64, u64)> {
    let mut file = std::fs::File::open(device).ok()?;
    let mut superblock = [0u8; 0x158];
    file.seek(SeekFrom::Start(1024)).ok()?;
    file.read_exact(&mut superblock).ok()?;
    parse_ext4_size(&superblock)
}

fn parse_ext4_size(superblock: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            superblock.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    if superblock.get(56..58) != Some(&[0x53, 0xef]) {
        return None;
    }
    let block_size = 1024u64 << u32_at(0x18)?;
    let incompat_64bit = u32_at(0x60)? & 0x80 != 0;
    let high = if incompat_64bit { u32_at(0x150)? } else { 0 };
    Some((u64::from(high) << 32 | u64::from(u32_at(0x04)?), block_size))
}

/// Grows the data partition `partition` to the end of its disk, in the
/// GPT and in the kernel. Returns the new size in bytes when it grew.
#[cfg(target_os = "linux")]
pub fn grow_partition(partition: &crate::partition::Partition) -> Result<Option<u64>, String> {
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&partition.disk)
        .map_err(|error| format!("open {}: {error}", partition.disk.display()))?;
    let Some((start, length)) = grow_gpt(&mut disk, partition.number)? else {
        return Ok(None);
    };
    disk.sync_all()
        .map_err(|error| format!("sync {}: {error}", partition.disk.display()))?;
    if length != partition.size {
        resize_in_kernel(&disk, partition.number, start, length)?;
    }
    Ok(Some(length))
}

/// BLKPG_RESIZE_PARTITION: the kernel's idea of a partition's size, for a
/// disk whose other partitions are in use (BLKRRPART would be refused).
#[cfg(target_os = "linux")]
fn resize_in_kernel(
    disk: &std::fs::File,
    number: u32,
    start: u64,
    length: u64,
) -> Result<(), String> {
    use std::os::unix::io::AsRawFd as _;
    #[repr(C)]
    struct BlkpgPartition {
        start: i64,
        length: i64,
        pno: libc::c_int,
        devname: [libc::c_char; 64],
        volname: [libc::c_char; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: libc::c_int,
        flags: libc::c_int,
        datalen: libc::c_int,
        data: *mut libc::c_void,
    }
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
    let mut partition = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut argument = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut partition as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG on an open disk with a valid argument that outlives the call.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut argument) } != 0 {
        return Err(format!(
            "BLKPG resize of partition {number}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Grows the ext4 mounted on `mount_point` (from `device`) to fill its
/// partition of `partition_bytes`, online. Returns the new block count
/// when it grew.
#[cfg(target_os = "linux")]
pub fn grow_ext4(
    device: &Path,
    mount_point: &Path,
    partition_bytes: u64,
) -> Result<Option<u64>, String> {
    use std::os::unix::io::AsRawFd as _;
    let (blocks, block_size) =
        ext4_size(device).ok_or_else(|| format!("{}: no ext4 superblock", device.display()))?;
    let wanted = partition_bytes / block_size;
    if wanted <= blocks {
        return Ok(None);
    }
    let directory = std::fs::File::open(mount_point)
        .map_err(|error| format!("open {}: {error}", mount_point.display()))?;
    // _IOW('f', 16, __u64)
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let mut count: u64 = wanted;
    // SAFETY: the ioctl reads one u64 that outlives the call.
    if unsafe { libc::ioctl(directory.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &mut count) } != 0 {
        return Err(format!(
            "grow the ext4 on {} to {wanted} blocks: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Some(wanted))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// `sfdisk FLAG DISK` (`--dump`, `--verify`): the table as another tool
    /// reads it; its output, and its errors after them.
    fn sfdisk_report(flag: &str, disk: &Path) -> String {
        let run = std::process::Command::new("sfdisk")
            .arg(flag)
            .arg(disk)
            .output()
            .unwrap();
        let report = [run.stdout, run.stderr].concat();
        let report = String::from_utf8_lossy(&report).into_owned();
        assert!(run.status.success(), "sfdisk {flag}: {report}");
        report
    }

    /// The image's layout (ESP, root, data last) on a 64 MiB disk image,
    /// then the disk made bigger, as when an image is flashed onto a bigger
    /// disk: the data partition grows to the last whole MiB, the backup GPT
    /// moves to the end, the other partitions stay; a second run changes
    /// nothing; a lost backup header is written again.
    #[test]
    fn the_last_partition_grows_to_the_end_of_a_bigger_disk() {
        let dir = std::env::temp_dir().join(format!("initd-grow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.raw");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        crate::initrd::tests::sfdisk(
            &path,
            "label: gpt\nstart=2048, size=16384, name=esp\nstart=18432, size=65536, name=root\nstart=83968, size=45056, name=data\n",
        );
        let before = sfdisk_report("--dump", &path);
        let mut disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Same size: nothing to do.
        assert_eq!(grow_gpt(&mut disk, 3).unwrap(), None);
        assert_eq!(
            grow_gpt(&mut disk, 2).unwrap_err(),
            "partition 2 is not the last on the disk: it cannot grow"
        );

        disk.set_len(200 * MIB).unwrap();
        let grown = grow_gpt(&mut disk, 3).unwrap();
        // 200 MiB less the backup GPT's 33 sectors: the last whole MiB ends at 199 MiB.
        assert_eq!(grown, Some((41 * MIB, 158 * MIB)));
        let after = sfdisk_report("--dump", &path);
        assert!(after.contains("last-lba: 409566"), "{after}");
        assert!(
            after.contains("start=       83968, size=      323584"),
            "{after}"
        );
        let unchanged = |table: &str| -> Vec<String> {
            table
                .lines()
                .filter(|line| line.contains("name=\"esp\"") || line.contains("name=\"root\""))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(unchanged(&before), unchanged(&after));
        assert_eq!(grow_gpt(&mut disk, 3).unwrap(), None);

        // A cut after the primary table: the backup header is missing.
        disk.seek(SeekFrom::Start(200 * MIB - 512)).unwrap();
        disk.write_all(&[0u8; 512]).unwrap();
        assert_eq!(grow_gpt(&mut disk, 3).unwrap(), Some((41 * MIB, 158 * MIB)));
        let report = sfdisk_report("--verify", &path);
        assert!(report.contains("No errors detected"), "{report}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_block_count_comes_from_the_superblock() {
        let mut superblock = vec![0u8; 0x158];
        superblock[56..58].copy_from_slice(&[0x53, 0xef]);
        superblock[0x04..0x08].copy_from_slice(&16384u32.to_le_bytes());
        superblock[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse_ext4_size(&superblock), Some((16384, 4096)));
        // The high half counts only with the 64bit feature.
        superblock[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse_ext4_size(&superblock), Some((16384, 4096)));
        superblock[0x60] = 0x80;
        assert_eq!(
            parse_ext4_size(&superblock),
            Some(((1 << 32) + 16384, 4096))
        );
        superblock[56] = 0;
        assert_eq!(parse_ext4_size(&superblock), None);
    }
}
