//! The running appliance: its slots, found by GPT partition name in
//! /sys/class/block (the kernel's uevent `PARTNAME`), the running slot
//! (`nodows.slot=` on the kernel command line, checked against the device
//! of `/`), and the ESP, mounted at /run/nodows/esp while an operation runs.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::artifact::{self, Applied, Target};
use crate::entries::{self, Blessing, Entry};
use crate::keys::PublicKey;
use crate::{io_error, Error, Release, Result, Slot};

pub const ESP_MOUNT: &str = "/run/nodows/esp";

pub use initd::partition::Partition;

/// Partitions by GPT name, from /sys/class/block/*/uevent.
pub fn partitions() -> Result<Vec<Partition>> {
    initd::partition::list(Path::new("/sys/class/block"), Path::new("/dev"))
        .map_err(io_error("/sys/class/block"))
}

/// The slot named by `nodows.slot=` on the kernel command line.
pub fn running_slot() -> Result<Slot> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(io_error("/proc/cmdline"))?;
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("nodows.slot="))
        .and_then(Slot::parse)
        .ok_or_else(|| {
            Error::System(
                "this system has no A/B layout: no nodows.slot=a|b on the kernel command line"
                    .to_string(),
            )
        })
}

fn find(partitions: &[Partition], name: &str) -> Result<Partition> {
    partitions
        .iter()
        .find(|partition| partition.name == name)
        .cloned()
        .ok_or_else(|| {
            Error::System(format!(
                "no partition named `{name}` in /sys/class/block (is this an A/B image?)"
            ))
        })
}

/// The ESP mounted at /run/nodows/esp; unmounted on drop (a clean FAT).
/// One process at a time (`/run/nodows/esp.lock`): initd's `bless` and an
/// operator's `update` or `boot-status` wait for each other.
pub struct MountedEsp {
    pub path: PathBuf,
    _lock: std::fs::File,
}

impl MountedEsp {
    pub fn mount() -> Result<MountedEsp> {
        let esp = find(&partitions()?, "esp")?;
        let path = PathBuf::from(ESP_MOUNT);
        std::fs::create_dir_all(&path).map_err(io_error(path.display()))?;
        let lock_path = "/run/nodows/esp.lock";
        let lock = std::fs::File::create(lock_path).map_err(io_error(lock_path))?;
        // SAFETY: flock on an open descriptor; released when the file closes.
        if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0
        {
            return Err(io_error(lock_path)(std::io::Error::last_os_error()));
        }
        repair_fat(&esp.device);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if mounts
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(ESP_MOUNT))
        {
            // SAFETY: umount2 on a NUL-terminated constant path.
            unsafe { libc::umount2(c"/run/nodows/esp".as_ptr(), 0) };
        }
        let device = std::ffi::CString::new(esp.device.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::System("device path with a NUL byte".to_string()))?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let status = unsafe {
            libc::mount(
                device.as_ptr(),
                c"/run/nodows/esp".as_ptr(),
                c"vfat".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if status != 0 {
            return Err(Error::System(format!(
                "cannot mount the ESP {} on {ESP_MOUNT}: {}",
                esp.device.display(),
                std::io::Error::last_os_error()
            )));
        }
        remove_salvaged(&path);
        Ok(MountedEsp { path, _lock: lock })
    }
}

/// `fsck.fat -a` on the unmounted ESP: a power cut during a FAT write
/// (ours, or systemd-boot's counter rename) can leave a broken cluster
/// chain, which makes Linux's vfat remount read-only when the file is next
/// touched. Without dosfstools the ESP is used as it is.
fn repair_fat(device: &Path) {
    let status = std::process::Command::new("fsck.fat")
        .args(["-a", "-w"])
        .arg(device)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Ok(status) = status {
        if status.code() == Some(1) {
            eprintln!(
                "nodows: repaired the file system of the ESP {}",
                device.display()
            );
        }
    }
}

/// fsck.fat -a saves lost cluster chains (half-written files of a cut) as
/// FSCKnnnn.REC in the root: they are never wanted.
fn remove_salvaged(esp: &Path) {
    let Ok(items) = std::fs::read_dir(esp) else {
        return;
    };
    for item in items.flatten() {
        let name = item.file_name().to_string_lossy().to_uppercase();
        if name.starts_with("FSCK") && name.ends_with(".REC") {
            let _ = std::fs::remove_file(item.path());
        }
    }
}

impl Drop for MountedEsp {
    fn drop(&mut self) {
        // SAFETY: sync and umount2 on a NUL-terminated constant path.
        unsafe {
            libc::sync();
            libc::umount2(c"/run/nodows/esp".as_ptr(), 0);
        }
    }
}

/// Applies an artifact to the slot that is not running.
pub fn update(reader: impl std::io::Read, tries: u32) -> Result<Applied> {
    let running = running_slot()?;
    let key = PublicKey::read(Path::new(PublicKey::PATH))?;
    let release = Release::read(Path::new(Release::PATH))?;
    let partitions = partitions()?;
    let target_slot = running.other();
    let target = find(&partitions, target_slot.partition_name())?;
    let root_dev = root_device()?;
    if target.dev == root_dev {
        return Err(Error::System(format!(
            "refusing to write {}: it is the running root (the kernel command line says slot {running})",
            target.device.display()
        )));
    }
    let mine = find(&partitions, running.partition_name())?;
    if mine.dev != root_dev {
        return Err(Error::System(format!(
            "the kernel command line says slot {running}, but / is not {}",
            mine.device.display()
        )));
    }
    let partuuid = gpt_partuuid(&target)?;
    let esp = MountedEsp::mount()?;
    artifact::apply(
        reader,
        &key,
        &Target {
            slot: target_slot,
            slot_device: target.device.clone(),
            slot_size: target.size,
            slot_partuuid: partuuid,
            esp: esp.path.clone(),
            running: release,
            tries,
        },
    )
}

/// The block device under `/`: the root's own, or on a verified root the
/// one partition beneath its device-mapper device (`slaves/` in sysfs).
pub fn root_device() -> Result<libc::dev_t> {
    let dev = std::fs::metadata("/").map_err(io_error("/"))?.dev();
    Ok(backing_device(Path::new("/sys/dev/block"), dev).unwrap_or(dev))
}

/// The device beneath `dev` when it is stacked on exactly one
/// (`SYS_DEV_BLOCK/MAJOR:MINOR/slaves/NAME/dev`).
pub fn backing_device(sys_dev_block: &Path, dev: libc::dev_t) -> Option<libc::dev_t> {
    let slaves = sys_dev_block
        .join(format!("{}:{}", libc::major(dev), libc::minor(dev)))
        .join("slaves");
    let names: Vec<PathBuf> = std::fs::read_dir(slaves)
        .ok()?
        .flatten()
        .map(|item| item.path())
        .collect();
    let [only] = names.as_slice() else {
        return None;
    };
    let text = std::fs::read_to_string(only.join("dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

fn gpt_partuuid(partition: &Partition) -> Result<String> {
    let disk_name = partition
        .disk
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sector =
        std::fs::read_to_string(format!("/sys/block/{disk_name}/queue/logical_block_size"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(512);
    initd::initrd::gpt_partition_guids(&partition.disk, sector)
        .into_iter()
        .find(|(number, _)| *number == partition.number)
        .map(|(_, guid)| guid)
        .ok_or_else(|| {
            Error::System(format!(
                "{}: no GPT entry {} for {}",
                partition.disk.display(),
                partition.number,
                partition.device.display()
            ))
        })
}

/// The boot's state, as `initctl status` shows it.
#[derive(Clone, Debug)]
pub struct BootState {
    pub slot: Slot,
    pub version: String,
    pub entry: Option<Entry>,
    /// Entries that ran out of tries (failed versions), newest first.
    pub failed: Vec<Entry>,
}

impl BootState {
    pub fn read(esp: &Path, slot: Slot, version: &str) -> Result<BootState> {
        let all = entries::list(esp)?;
        Ok(BootState {
            slot,
            version: version.to_string(),
            entry: all.iter().find(|entry| entry.slot == slot).cloned(),
            failed: all
                .iter()
                .filter(|entry| entry.failed() && entry.slot != slot)
                .cloned()
                .collect(),
        })
    }

    pub fn trial(&self) -> bool {
        self.entry
            .as_ref()
            .is_some_and(|entry| entry.tries_left.is_some())
    }

    /// One line of `key=value` words (initd reads it).
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "slot={} version={} state={}",
            self.slot,
            self.version,
            if self.trial() { "trial" } else { "good" }
        );
        if let Some(entry) = &self.entry {
            line.push_str(&format!(" entry={}", entry.id()));
            if let Some(left) = entry.tries_left {
                line.push_str(&format!(" tries-left={left}"));
            }
        }
        if !self.failed.is_empty() {
            let failed: Vec<String> = self
                .failed
                .iter()
                .map(|entry| format!("{}@{}", entry.version, entry.slot))
                .collect();
            line.push_str(&format!(" failed={}", failed.join(",")));
        }
        line
    }
}

fn running_release_version() -> String {
    Release::read(Path::new(Release::PATH))
        .map(|release| release.version)
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The running boot's state.
pub fn boot_state() -> Result<BootState> {
    let slot = running_slot()?;
    let esp = MountedEsp::mount()?;
    BootState::read(&esp.path, slot, &running_release_version())
}

/// Blesses the running slot's entry; returns the state after.
pub fn bless() -> Result<(Blessing, BootState)> {
    let slot = running_slot()?;
    let esp = MountedEsp::mount()?;
    let blessing = entries::bless(&esp.path, slot)?;
    let state = BootState::read(&esp.path, slot, &running_release_version())?;
    Ok((blessing, state))
}
