//! `cargo xtask flash`: writes a built image to a disk or a USB stick, or
//! to a sparse file. Only the blocks of the image's bmap are written (large
//! aligned writes, fsync at the end), then read back and checked against
//! the bmap's sha256s. Every safety check runs before the first byte is
//! written: the target exists, is a block device (or a regular file with
//! `--force-file`), is not mounted, holds neither the running root nor
//! swap nor a device-mapper/RAID member, and is large enough; then the user
//! confirms what is on it (unless `--yes`).

use std::fs::File;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};

use crate::boot::BuiltImage;
use crate::image::bmap::{self, Bmap};
use crate::image::sparse::CHUNK;
use crate::image::BadInput;

const MIB: f64 = (1 << 20) as f64;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name (a file in images/).
    #[arg(long, default_value = "debian")]
    pub image: String,
    /// Profile name (a file in profiles/).
    #[arg(long, default_value = "dev")]
    pub profile: String,
    /// The disk to write, e.g. /dev/sdX or /dev/disk/by-id/usb-...: everything on it is lost.
    #[arg(long, value_name = "DEVICE", conflicts_with = "to_file")]
    pub device: Option<PathBuf>,
    /// Write a sparse copy to this file instead of a device (for VMs).
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,
    /// Do not ask for confirmation (scripts).
    #[arg(long)]
    pub yes: bool,
    /// Allow --device to be an existing regular file (a VM's disk file).
    #[arg(long)]
    pub force_file: bool,
    /// Output directory the image was built into (default: images/out).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Show the full error chain on failure.
    #[arg(long, short)]
    pub verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let image = BuiltImage::find(args.out.as_deref(), &args.image, &args.profile)
        .map_err(|error| BadInput(format!("{error:#}")))?;
    let bmap_path = image.raw.with_extension("bmap");
    if !bmap_path.is_file() {
        return Err(BadInput(format!(
            "{}: missing; rebuild the image with `cargo xtask image --image {} --profile {}`",
            bmap_path.display(),
            args.image,
            args.profile
        ))
        .into());
    }
    let bmap = Bmap::read(&bmap_path)?;
    bmap::check_image_size(&bmap, &image.raw)?;
    let stats = match (&args.device, &args.to_file) {
        (Some(device), None) => {
            let target = check_device(device, args.force_file, bmap.image_size)?;
            eprintln!(
                "image {} ({:.1} MiB, {:.1} MiB of it mapped)",
                image.raw.display(),
                bmap.image_size as f64 / MIB,
                bmap.mapped_bytes() as f64 / MIB
            );
            eprint!("{}", target.description);
            if !args.yes {
                confirm(&target.path)?;
            }
            let file = open_target(&target)?;
            write_and_verify(&image.raw, &bmap, &file, &target.path, true)?
        }
        (None, Some(path)) => to_file(&image.raw, &bmap, path, args.yes)?,
        _ => {
            return Err(BadInput(
                "give the disk to write with --device /dev/sdX (see `lsblk`), or a file with --to-file PATH".to_owned(),
            )
            .into())
        }
    };
    eprintln!("{}", stats.summary());
    Ok(())
}

/// What a flash did.
pub struct Stats {
    pub bytes_written: u64,
    pub write_time: Duration,
    pub ranges_verified: usize,
    pub bytes_verified: u64,
}

impl Stats {
    pub fn mib_per_second(&self) -> f64 {
        self.bytes_written as f64 / MIB / self.write_time.as_secs_f64().max(1e-9)
    }

    fn summary(&self) -> String {
        format!(
            "wrote {:.1} MiB in {:.1} s ({:.1} MiB/s, fsync included); verified {} ranges ({:.1} MiB) against the bmap",
            self.bytes_written as f64 / MIB,
            self.write_time.as_secs_f64(),
            self.mib_per_second(),
            self.ranges_verified,
            self.bytes_verified as f64 / MIB
        )
    }
}

/// A target that passed every check.
pub struct Target {
    pub path: PathBuf,
    pub is_block_device: bool,
    /// Model, size and partitions, shown before the confirmation.
    pub description: String,
}

fn refuse(path: &Path, why: String) -> anyhow::Error {
    BadInput(format!("{}: {why}; nothing was written", path.display())).into()
}

/// Every check of a `--device` target; nothing is opened for writing.
pub fn check_device(path: &Path, force_file: bool, image_size: u64) -> anyhow::Result<Target> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(_) => {
            return Err(refuse(
                path,
                "no such device; list the disks with `lsblk` and check the name".to_owned(),
            ))
        }
    };
    let file_type = metadata.file_type();
    if file_type.is_file() {
        if !force_file {
            return Err(refuse(path, "not a block device; pass --force-file to write into this regular file, or use --to-file for a new sparse copy".to_owned()));
        }
        let canonical = std::fs::canonicalize(path)?;
        if let Some(loop_device) = loop_backed_by(&canonical) {
            return Err(refuse(
                path,
                format!("backs the loop device {loop_device}; detach it first (`losetup --detach {loop_device}`)"),
            ));
        }
        if metadata.len() < image_size {
            return Err(refuse(
                path,
                format!(
                    "{} bytes is smaller than the image ({image_size} bytes)",
                    metadata.len()
                ),
            ));
        }
        return Ok(Target {
            path: path.to_path_buf(),
            is_block_device: false,
            description: format!(
                "target {}: a regular file of {:.1} MiB\n",
                path.display(),
                metadata.len() as f64 / MIB
            ),
        });
    }
    if !file_type.is_block_device() {
        return Err(refuse(path, "not a block device".to_owned()));
    }
    let rdev = metadata.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .with_context(|| format!("{}: no /sys/dev/block/{major}:{minor}", path.display()))?;
    let name = sys
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The device and its partitions: none of them may be in use.
    let mut members = vec![(name.clone(), sys.clone(), format!("{major}:{minor}"))];
    let mut partitions = Vec::new();
    for entry in std::fs::read_dir(&sys).into_iter().flatten().flatten() {
        let part = entry.path();
        if part.join("partition").is_file() {
            let dev = read_trimmed(&part.join("dev")).unwrap_or_default();
            let part_name = entry.file_name().to_string_lossy().into_owned();
            let size = read_trimmed(&part.join("size"))
                .and_then(|sectors| sectors.parse::<u64>().ok())
                .unwrap_or(0)
                * 512;
            partitions.push(format!("  {part_name}: {:.1} MiB\n", size as f64 / MIB));
            members.push((part_name, part, dev));
        }
    }
    partitions.sort();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        // The device number, or (btrfs and others report an anonymous
        // one) the device the mount source names.
        let source = fields
            .iter()
            .skip_while(|field| **field != "-")
            .nth(2)
            .and_then(|source| block_device_number(source));
        if let Some((member, _, _)) = members
            .iter()
            .find(|(_, _, number)| number == dev || source.as_ref() == Some(number))
        {
            if *mount_point == "/" {
                return Err(refuse(
                    path,
                    format!("{member} holds the running root file system"),
                ));
            }
            return Err(refuse(
                path,
                format!("{member} is mounted at {mount_point}; unmount it first (`umount {mount_point}`)"),
            ));
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for swap in swaps
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
    {
        let number = block_device_number(swap);
        if let Some((member, _, _)) = members.iter().find(|(_, _, n)| number.as_ref() == Some(n)) {
            return Err(refuse(
                path,
                format!("{member} is in use as swap; `swapoff {swap}` first"),
            ));
        }
    }
    for (member, member_sys, _) in &members {
        let holders: Vec<String> = std::fs::read_dir(member_sys.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        if !holders.is_empty() {
            return Err(refuse(
                path,
                format!(
                    "{member} is in use by {} (device-mapper, LVM or RAID); stop that first",
                    holders.join(", ")
                ),
            ));
        }
    }
    let size = read_trimmed(&sys.join("size"))
        .and_then(|sectors| sectors.parse::<u64>().ok())
        .unwrap_or(0)
        * 512;
    if size < image_size {
        return Err(refuse(
            path,
            format!(
                "{:.1} MiB is smaller than the image ({:.1} MiB)",
                size as f64 / MIB,
                image_size as f64 / MIB
            ),
        ));
    }
    let model = [sys.join("device/vendor"), sys.join("device/model")]
        .iter()
        .filter_map(|file| read_trimmed(file))
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let backing = read_trimmed(&sys.join("loop/backing_file"))
        .map(|file| format!("loop device backed by {file}"));
    let model = if model.is_empty() {
        backing.unwrap_or_else(|| "unknown model".to_owned())
    } else {
        model
    };
    let mut description = format!(
        "target {} ({name}): {model}, {:.1} MiB, {} partition(s)\n",
        path.display(),
        size as f64 / MIB,
        partitions.len()
    );
    description.extend(partitions);
    Ok(Target {
        path: path.to_path_buf(),
        is_block_device: true,
        description,
    })
}

/// `MAJ:MIN` of the block device at `path`, if it is one.
fn block_device_number(path: &str) -> Option<String> {
    let metadata = std::fs::metadata(path).ok()?;
    metadata.file_type().is_block_device().then(|| {
        format!(
            "{}:{}",
            libc::major(metadata.rdev()),
            libc::minor(metadata.rdev())
        )
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
}

/// The loop device whose backing file is `file`, if any.
fn loop_backed_by(file: &Path) -> Option<String> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let backing = read_trimmed(&entry.path().join("loop/backing_file"))?;
            (Path::new(&backing) == file)
                .then(|| format!("/dev/{}", entry.file_name().to_string_lossy()))
        })
}

fn confirm(path: &Path) -> anyhow::Result<()> {
    eprint!(
        "everything on {} will be overwritten; type yes to write the image: ",
        path.display()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was written (pass --yes to skip the question)");
    }
    Ok(())
}

/// Opens a checked target for writing; a block device exclusively (the
/// kernel refuses with EBUSY if anything mounted it since the checks).
pub fn open_target(target: &Target) -> anyhow::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if target.is_block_device {
        options.custom_flags(libc::O_EXCL);
    }
    options.open(&target.path).with_context(|| {
        format!(
            "{}: cannot open for writing (run as root?)",
            target.path.display()
        )
    })
}

/// `--to-file`: a new sparse file of the image's size, written under a
/// temporary name and renamed when it is verified.
pub fn to_file(raw: &Path, bmap: &Bmap, path: &Path, yes: bool) -> anyhow::Result<Stats> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.is_file() {
            return Err(refuse(
                path,
                "exists and is not a regular file (a device takes --device)".to_owned(),
            ));
        }
        if !yes {
            return Err(refuse(path, "exists; pass --yes to replace it".to_owned()));
        }
    }
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let temporary = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        file.set_len(bmap.image_size)?;
        let stats = write_and_verify(raw, bmap, &file, path, std::io::stderr().is_terminal())?;
        std::fs::rename(&temporary, path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                temporary.display(),
                path.display()
            )
        })?;
        Ok(stats)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Writes every mapped range of `raw` to `target` at the same offset in
/// chunks of up to 4 MiB (block-aligned: ranges start on 4 KiB blocks);
/// fsyncs, drops the target's cached pages, reads every range back and
/// checks its sha256 against the bmap. One hash pass covers both a changed
/// image and a bad medium.
pub fn write_and_verify(
    raw: &Path,
    bmap: &Bmap,
    target: &File,
    target_path: &Path,
    progress: bool,
) -> anyhow::Result<Stats> {
    let image = File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(bmap.mapped_bytes());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message("write");
    let mut buffer = vec![0u8; CHUNK];
    let started = Instant::now();
    let mut written = 0;
    for range in &bmap.ranges {
        crate::image::ui::check_interrupted()?;
        let (start, end) = range.bytes(bmap);
        let mut offset = start;
        while offset < end {
            let length = (end - offset).min(CHUNK as u64) as usize;
            image
                .read_exact_at(&mut buffer[..length], offset)
                .with_context(|| format!("cannot read {}", raw.display()))?;
            target
                .write_all_at(&buffer[..length], offset)
                .with_context(|| {
                    format!("{}: write failed at byte {offset}", target_path.display())
                })?;
            offset += length as u64;
            written += length as u64;
            bar.set_position(written);
        }
    }
    target
        .sync_all()
        .with_context(|| format!("{}: fsync failed", target_path.display()))?;
    let write_time = started.elapsed();
    // Read back from the medium, not from the page cache.
    unsafe {
        libc::posix_fadvise(target.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    bar.set_message("verify");
    bar.set_position(0);
    let mut verified = 0;
    for range in &bmap.ranges {
        crate::image::ui::check_interrupted()?;
        let (start, end) = range.bytes(bmap);
        let mut hasher = Sha256::new();
        let mut offset = start;
        while offset < end {
            let length = (end - offset).min(CHUNK as u64) as usize;
            target
                .read_exact_at(&mut buffer[..length], offset)
                .with_context(|| {
                    format!(
                        "{}: read back failed at byte {offset}",
                        target_path.display()
                    )
                })?;
            hasher.update(&buffer[..length]);
            offset += length as u64;
            verified += length as u64;
            bar.set_position(verified);
        }
        if hex::encode(hasher.finalize()) != range.sha256 {
            bail!(
                "{}: blocks {}-{} read back differ from the bmap: the image changed after it was built (rebuild it), or the medium is faulty or was written meanwhile",
                target_path.display(),
                range.first,
                range.last
            );
        }
    }
    bar.finish_and_clear();
    Ok(Stats {
        bytes_written: written,
        write_time,
        ranges_verified: bmap.ranges.len(),
        bytes_verified: verified,
    })
}
