//! The initrd stage: initd as `/init` of the nodows initrd (the image builder
//! writes it: this binary, the storage and file system modules, their
//! index). It mounts /proc, /sys and /dev, loads the modules of the devices
//! present, waits for the root device of `root=`, mounts it, moves the API
//! file systems over and executes the real init there (`init=`, default
//! /sbin/init). It replaces initramfs-tools, udev and busybox, whose scripts
//! take seconds under emulation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the kernel command line says about the root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RootSpec {
    /// `root=`: `PARTUUID=...`, `PARTLABEL=...` (the GPT name), `UUID=...`
    /// (ext4) or `/dev/...`.
    pub root: Option<String>,
    pub fstype: Option<String>,
    pub flags: Option<String>,
    pub read_write: bool,
    pub init: Option<String>,
    /// `rootdelay=`/`rootwait` stretch the wait; seconds.
    pub wait_seconds: u64,
}

pub fn parse_root_spec(command_line: &str) -> RootSpec {
    let mut spec = RootSpec {
        wait_seconds: 30,
        ..RootSpec::default()
    };
    for word in command_line.split_whitespace() {
        if let Some(value) = word.strip_prefix("root=") {
            spec.root = Some(value.to_string());
        } else if let Some(value) = word.strip_prefix("rootfstype=") {
            spec.fstype = Some(value.to_string());
        } else if let Some(value) = word.strip_prefix("rootflags=") {
            spec.flags = Some(value.to_string());
        } else if let Some(value) = word.strip_prefix("init=") {
            spec.init = Some(value.to_string());
        } else if let Some(value) = word.strip_prefix("rootdelay=") {
            if let Ok(seconds) = value.parse::<u64>() {
                spec.wait_seconds = spec.wait_seconds.max(seconds);
            }
        } else if word == "rootwait" {
            spec.wait_seconds = spec.wait_seconds.max(300);
        } else if word == "rw" {
            spec.read_write = true;
        } else if word == "ro" {
            spec.read_write = false;
        }
    }
    spec
}

/// 16 bytes as a lowercase UUID in their order (ext4's superblock UUID).
fn uuid_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(36);
    for (index, byte) in bytes.iter().take(16).enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// A GPT partition's unique GUID in its text form (lowercase), from the 16
/// bytes of a partition entry (the first three fields little-endian).
pub fn guid_text(bytes: &[u8]) -> String {
    if bytes.len() < 16 {
        return String::new();
    }
    let mut ordered = [0u8; 16];
    ordered.copy_from_slice(&bytes[..16]);
    ordered[0..4].reverse();
    ordered[4..6].reverse();
    ordered[6..8].reverse();
    uuid_text(&ordered)
}

/// The unique GUIDs of the GPT partitions of a disk image or device, by
/// partition number (1-based). Empty when there is no GPT.
pub fn gpt_partition_guids(disk: &Path, sector: u64) -> Vec<(u32, String)> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(disk) else {
        return Vec::new();
    };
    let mut header = [0u8; 92];
    if file.seek(SeekFrom::Start(sector)).is_err() || file.read_exact(&mut header).is_err() {
        return Vec::new();
    }
    if &header[0..8] != b"EFI PART" {
        return Vec::new();
    }
    let le64 = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let le32 = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(bytes)
    };
    let (entries_lba, count, size) = (le64(72), le32(80).min(1024), le32(84) as usize);
    if !(128..=4096).contains(&size) {
        return Vec::new();
    }
    let mut table = vec![0u8; count as usize * size];
    if file.seek(SeekFrom::Start(entries_lba * sector)).is_err()
        || file.read_exact(&mut table).is_err()
    {
        return Vec::new();
    }
    let mut guids = Vec::new();
    for number in 0..count {
        let entry = &table[number as usize * size..][..size];
        // An unused entry has a zero type GUID.
        if entry[0..16].iter().all(|byte| *byte == 0) {
            continue;
        }
        guids.push((number + 1, guid_text(&entry[16..32])));
    }
    guids
}

/// The UUID of the ext2/3/4 file system on `device`, if it has one.
pub fn ext4_uuid(device: &Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(device).ok()?;
    let mut superblock = [0u8; 136];
    file.seek(SeekFrom::Start(1024)).ok()?;
    file.read_exact(&mut superblock).ok()?;
    if superblock[56..58] != [0x53, 0xef] {
        return None;
    }
    Some(uuid_text(&superblock[104..120]))
}

/// The block device that `root` names, among those under `sys_block`
/// (/sys/class/block) with their nodes under `dev` (/dev).
pub fn find_root(root: &str, sys_block: &Path, dev: &Path) -> Option<PathBuf> {
    if let Some(path) = root.strip_prefix("/dev/") {
        let device = dev.join(path);
        return device.exists().then_some(device);
    }
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if let Some(wanted) = root.strip_prefix("PARTUUID=") {
        let wanted = wanted.to_ascii_lowercase();
        for disk in &names {
            // Whole disks only: partitions have a `partition` file.
            if sys_block.join(disk).join("partition").exists() {
                continue;
            }
            let sector =
                std::fs::read_to_string(sys_block.join(disk).join("queue/logical_block_size"))
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .unwrap_or(512);
            let guids = gpt_partition_guids(&dev.join(disk), sector);
            let Some((number, _)) = guids.iter().find(|(_, guid)| *guid == wanted) else {
                continue;
            };
            // The partition of that number on this disk.
            for partition in &names {
                let base = sys_block.join(partition);
                let is_ours = std::fs::canonicalize(&base)
                    .ok()
                    .and_then(|path| path.parent().map(Path::to_path_buf))
                    == std::fs::canonicalize(sys_block.join(disk)).ok();
                let same_number = std::fs::read_to_string(base.join("partition"))
                    .ok()
                    .is_some_and(|text| text.trim() == number.to_string());
                if is_ours && same_number && dev.join(partition).exists() {
                    return Some(dev.join(partition));
                }
            }
        }
        return None;
    }
    if let Some(wanted) = root.strip_prefix("PARTLABEL=") {
        // A verified A/B slot's UKI names its slot by GPT name: the same
        // signed image must boot on every disk it is installed on.
        return crate::partition::list(sys_block, dev)
            .ok()?
            .into_iter()
            .find(|partition| partition.name == wanted && partition.device.exists())
            .map(|partition| partition.device);
    }
    if let Some(wanted) = root.strip_prefix("UUID=") {
        let wanted = wanted.to_ascii_lowercase();
        return names
            .iter()
            .map(|name| dev.join(name))
            .find(|device| ext4_uuid(device).as_deref() == Some(wanted.as_str()));
    }
    None
}

/// Runs the initrd stage; returns only when it failed (with the reason).
#[cfg(target_os = "linux")]
pub fn run(console: &dyn Fn(&str)) -> String {
    use crate::kmod::{kernel_release, Loader, ModuleIndex};
    let started = Instant::now();
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (source, target, kind, flags, data) in [
        ("proc", "/proc", "proc", flags, ""),
        ("sysfs", "/sys", "sysfs", flags, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    ] {
        if let Err(error) = crate::pid1::mount(source, target, kind, flags, data) {
            console(&format!("initrd: {error}"));
        }
    }
    let command_line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let spec = parse_root_spec(&command_line);
    let Some(root) = spec.root.clone() else {
        return "no root= on the kernel command line".to_string();
    };
    let fstype = spec.fstype.clone().unwrap_or_else(|| "ext4".to_string());
    let release = kernel_release().unwrap_or_default();
    let index = match ModuleIndex::load(&Path::new("/lib/modules").join(&release)) {
        Ok(index) => index,
        Err(error) => {
            console(&format!("initrd: {error}: loading no modules"));
            ModuleIndex::default()
        }
    };
    let mut loader = Loader::new(&index);
    loader.coldplug(Path::new("/sys/devices"), false);
    loader.load(&fstype);
    for error in &loader.errors {
        console(&format!("initrd: module {error}"));
    }
    let deadline = started + Duration::from_secs(spec.wait_seconds);
    let device = loop {
        if let Some(device) = find_root(&root, Path::new("/sys/class/block"), Path::new("/dev")) {
            break device;
        }
        if Instant::now() >= deadline {
            return format!(
                "root device {root} did not appear within {}s (modules loaded: {})",
                spec.wait_seconds,
                loader.loaded.join(" ")
            );
        }
        // Devices that probe asynchronously: try their modules again.
        loader.coldplug(Path::new("/sys/devices"), false);
        std::thread::sleep(Duration::from_millis(10));
    };
    let verity = match crate::verity::parse_verity(&command_line) {
        None => None,
        Some(Ok(verity)) => Some(verity),
        Some(Err(error)) => return error,
    };
    let mut device_text = device.to_string_lossy().into_owned();
    let mut mount_flags = if spec.read_write { 0 } else { libc::MS_RDONLY };
    if let Some(verity) = &verity {
        // The root is only ever read through its hash tree.
        // The CPU's fastest sha256 first (the crypto API cannot ask for it:
        // there is no modprobe here); a CPU without SSSE3 keeps the generic one.
        loader.load("sha256_ssse3");
        let reported = loader.errors.len();
        loader.load("dm_verity");
        loader.load("overlay");
        for error in &loader.errors[reported..] {
            console(&format!("initrd: module {error}"));
        }
        let mapped = match crate::verity::create_device("root", &device_text, verity) {
            Ok(mapped) => mapped,
            Err(error) => return format!("verified root {device_text}: {error}"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Path::new(&mapped).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        console(&format!(
            "initrd: dm-verity root {mapped} over {device_text}, root hash {}",
            verity.root_hash
        ));
        device_text = mapped;
        mount_flags = libc::MS_RDONLY;
    }
    if let Err(error) = crate::pid1::mount(
        &device_text,
        "/root",
        &fstype,
        mount_flags,
        spec.flags.as_deref().unwrap_or(""),
    ) {
        if verity.is_some() {
            return format!(
                "{error} (root={root} through dm-verity: an I/O error means blocks of the partition do not match the root hash on the command line)"
            );
        }
        return format!("{error} (root={root})");
    }
    if verity.is_some() {
        if let Err(error) = ram_layers(Path::new("/root")) {
            return format!("verified root: {error}");
        }
    }
    let init = spec
        .init
        .clone()
        .unwrap_or_else(|| "/sbin/init".to_string());
    // Not exists(): init is often an absolute symlink (/sbin/init ->
    // /lib/systemd/systemd), which only resolves once /root is the root.
    if std::fs::symlink_metadata(Path::new("/root").join(init.trim_start_matches('/'))).is_err() {
        return format!("{init} is not on the root file system {device_text}");
    }
    console(&format!(
        "initrd: root {device_text} ({fstype}) mounted after {:.2}s, modules: {}",
        started.elapsed().as_secs_f64(),
        loader.loaded.join(" ")
    ));
    switch_root(&init)
}

/// The writable layers of a read-only root, all in RAM: a tmpfs on /run
/// holds the upper directories of overlays on /etc (the renderer's output),
/// /var and /root; /tmp is a tmpfs. Everything written at run time outside
/// the data partition is gone at the next boot.
#[cfg(target_os = "linux")]
pub fn ram_layers(root: &Path) -> Result<(), String> {
    let at = |path: &str| root.join(path).to_string_lossy().into_owned();
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    crate::pid1::mount("tmpfs", &at("run"), "tmpfs", nosuid_nodev, "mode=0755")?;
    crate::pid1::mount("tmpfs", &at("tmp"), "tmpfs", nosuid_nodev, "mode=1777")?;
    let layers = root.join("run/nodows/layers");
    for directory in ["etc", "var", "root"] {
        let upper = layers.join(directory).join("upper");
        let work = layers.join(directory).join("work");
        for path in [&upper, &work] {
            std::fs::create_dir_all(path)
                .map_err(|error| format!("create {}: {error}", path.display()))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            at(directory),
            upper.display(),
            work.display()
        );
        crate::pid1::mount("overlay", &at(directory), "overlay", 0, &options)?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(&layers, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

/// Moves the API mounts into /root, frees the initramfs, makes /root the
/// root and executes `init` there. Returns only on failure.
#[cfg(target_os = "linux")]
fn switch_root(init: &str) -> String {
    use std::ffi::CString;
    for point in ["/dev", "/proc", "/sys"] {
        let target = format!("/root{point}");
        let _ = std::fs::create_dir_all(&target);
        if let Err(error) = crate::pid1::mount(point, &target, "", libc::MS_MOVE, "") {
            return error;
        }
    }
    // The initramfs holds only what the image builder put there; free it.
    for entry in ["/init", "/lib", "/etc"] {
        let path = Path::new(entry);
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
    let Ok(init_c) = CString::new(init) else {
        return format!("init={init} has a NUL byte");
    };
    // SAFETY: valid NUL-terminated strings; execv gets a NULL-ended argv.
    unsafe {
        if libc::chdir(c"/root".as_ptr()) < 0 {
            return format!("chdir /root: {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ) < 0
        {
            return format!("move /root to /: {}", std::io::Error::last_os_error());
        }
        if libc::chroot(c".".as_ptr()) < 0 {
            return format!("chroot: {}", std::io::Error::last_os_error());
        }
        if libc::chdir(c"/".as_ptr()) < 0 {
            return format!("chdir /: {}", std::io::Error::last_os_error());
        }
        let argv = [init_c.as_ptr(), std::ptr::null()];
        libc::execv(init_c.as_ptr(), argv.as_ptr());
    }
    format!("exec {init}: {}", std::io::Error::last_os_error())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_root_spec_comes_from_the_command_line() {
        let spec = parse_root_spec(
            "root=PARTUUID=D9136F07-dc8d console=ttyS0 init=/sbin/initd rw rootfstype=ext4 nodows.verbose=1",
        );
        assert_eq!(spec.root.as_deref(), Some("PARTUUID=D9136F07-dc8d"));
        assert_eq!(spec.init.as_deref(), Some("/sbin/initd"));
        assert_eq!(spec.fstype.as_deref(), Some("ext4"));
        assert!(spec.read_write);
        assert_eq!(spec.wait_seconds, 30);
        assert!(!parse_root_spec("root=/dev/vda2 rw ro").read_write);
    }

    /// Writes a partition table with sfdisk, as the image builder does.
    pub(crate) fn sfdisk(disk: &Path, script: &str) {
        let mut child = std::process::Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(disk)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (Debian package fdisk) must be installed");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// Guards the PARTUUID lookup against a partition table written by a
    /// real tool (sfdisk, as the image builder uses).
    #[test]
    fn partition_guids_are_read_from_a_gpt_made_by_sfdisk() {
        let dir = std::env::temp_dir().join(format!("initd-gpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        sfdisk(&disk, "label: gpt\nstart=2048, size=4096, uuid=0D1B2C3A-4E5F-4A6B-8C7D-9E0F1A2B3C4D\nstart=6144, size=4096, uuid=11111111-2222-4333-8444-555555555555\n");
        assert_eq!(
            gpt_partition_guids(&disk, 512),
            vec![
                (1, "0d1b2c3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d".to_string()),
                (2, "11111111-2222-4333-8444-555555555555".to_string())
            ]
        );
        assert!(gpt_partition_guids(&dir.join("missing"), 512).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Guards `root=UUID=`: the UUID as mkfs.ext4 wrote it.
    #[test]
    fn the_ext4_uuid_is_read_from_the_superblock() {
        let dir = std::env::temp_dir().join(format!("initd-ext4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("root.ext4");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-U", "3f0e5b1c-7a2d-4e8f-9b6a-1c2d3e4f5a6b"])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 (Debian package e2fsprogs) must be installed");
        assert!(status.success());
        assert_eq!(
            ext4_uuid(&image).as_deref(),
            Some("3f0e5b1c-7a2d-4e8f-9b6a-1c2d3e4f5a6b")
        );
        assert_eq!(ext4_uuid(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guids_are_mixed_endian() {
        let bytes = [
            0x07, 0x6f, 0x13, 0xd9, 0x8d, 0xdc, 0x93, 0x4d, 0xb8, 0x27, 0x8d, 0xf2, 0xba, 0xf3,
            0x0e, 0x9c,
        ];
        assert_eq!(guid_text(&bytes), "d9136f07-dc8d-4d93-b827-8df2baf30e9c");
    }
}
