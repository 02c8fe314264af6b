//! Partitions by GPT name, from the kernel's uevent files under
//! /sys/class/block (`PARTNAME=`): there is no udev and no /dev/disk/by-*
//! in the images. initd finds the data partition with it at boot, the
//! update crate the ESP and the root slots.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The GPT partition name (`PARTNAME`).
    pub name: String,
    /// `/dev/DEVNAME`.
    pub device: PathBuf,
    /// The whole disk's device.
    pub disk: PathBuf,
    /// The partition number (`PARTN`, 1-based).
    pub number: u32,
    pub dev: libc::dev_t,
    /// Bytes.
    pub size: u64,
}

/// The fields of a partition's uevent file that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    pub name: String,
    pub devname: String,
    pub number: u32,
    pub major: u32,
    pub minor: u32,
}

/// Parses a block device's uevent text (`KEY=VALUE` lines); `None` unless
/// it is a partition with a GPT name.
pub fn parse_uevent(text: &str) -> Option<Uevent> {
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    };
    let name = value("PARTNAME").filter(|name| !name.is_empty())?;
    let devname = value("DEVNAME").filter(|name| !name.is_empty() && !name.contains(".."))?;
    Some(Uevent {
        name: name.to_string(),
        devname: devname.to_string(),
        number: value("PARTN")?.parse().ok()?,
        major: value("MAJOR")?.parse().ok()?,
        minor: value("MINOR")?.parse().ok()?,
    })
}

/// Every named partition under `sys_block` (/sys/class/block), with its
/// node under `dev` (/dev).
pub fn list(sys_block: &Path, dev: &Path) -> std::io::Result<Vec<Partition>> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(sys_block)? {
        let Ok(item) = item else { continue };
        let Some(uevent) = std::fs::read_to_string(item.path().join("uevent"))
            .ok()
            .as_deref()
            .and_then(parse_uevent)
        else {
            continue;
        };
        let sectors: u64 = std::fs::read_to_string(item.path().join("size"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        // /sys/class/block/vda4 -> ../../devices/.../block/vda/vda4
        let disk = std::fs::canonicalize(item.path())
            .ok()
            .and_then(|path| Some(path.parent()?.file_name()?.to_owned()))
            .map(|disk| dev.join(disk))
            .unwrap_or_default();
        found.push(Partition {
            name: uevent.name,
            device: dev.join(uevent.devname),
            disk,
            number: uevent.number,
            dev: libc::makedev(uevent.major, uevent.minor),
            size: sectors * 512,
        });
    }
    found.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(found)
}

/// The partition named `name` in /sys/class/block, if there is one.
pub fn find(name: &str) -> std::io::Result<Option<Partition>> {
    Ok(list(Path::new("/sys/class/block"), Path::new("/dev"))?
        .into_iter()
        .find(|partition| partition.name == name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const DATA: &str =
        "MAJOR=254\nMINOR=4\nDEVNAME=vda4\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=4\nPARTNAME=data\n";

    #[test]
    fn a_named_partition_is_read_from_its_uevent() {
        assert_eq!(
            parse_uevent(DATA),
            Some(Uevent {
                name: "data".to_string(),
                devname: "vda4".to_string(),
                number: 4,
                major: 254,
                minor: 4,
            })
        );
        // A whole disk, an unnamed partition (MBR), a broken number.
        assert_eq!(
            parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n"),
            None
        );
        assert_eq!(
            parse_uevent("MAJOR=8\nMINOR=1\nDEVNAME=sda1\nDEVTYPE=partition\nPARTN=1\n"),
            None
        );
        assert_eq!(parse_uevent(&DATA.replace("PARTN=4", "PARTN=x")), None);
        assert_eq!(
            parse_uevent(&DATA.replace("PARTNAME=data", "PARTNAME=")),
            None
        );
        assert_eq!(parse_uevent(&DATA.replace("vda4", "../x")), None);
        // A key that only starts like another one is not it.
        assert_eq!(
            parse_uevent(&DATA.replace("PARTNAME=data", "PARTNAMEX=data")),
            None
        );
    }

    #[test]
    fn partitions_are_listed_with_their_disk() {
        let root = std::env::temp_dir().join(format!("initd-partition-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devices = root.join("devices/pci0/virtio1/block/vda");
        let sys_block = root.join("class/block");
        std::fs::create_dir_all(&sys_block).unwrap();
        std::fs::create_dir_all(devices.join("vda4")).unwrap();
        std::fs::write(devices.join("uevent"), "MAJOR=254\nMINOR=0\nDEVNAME=vda\n").unwrap();
        std::fs::write(devices.join("vda4/uevent"), DATA).unwrap();
        std::fs::write(devices.join("vda4/size"), "131072\n").unwrap();
        std::os::unix::fs::symlink(&devices, sys_block.join("vda")).unwrap();
        std::os::unix::fs::symlink(devices.join("vda4"), sys_block.join("vda4")).unwrap();
        let found = list(&sys_block, Path::new("/dev")).unwrap();
        // root=PARTLABEL= finds the node of the partition of that name.
        let dev = root.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vda4"), "").unwrap();
        let by_label = crate::initrd::find_root("PARTLABEL=data", &sys_block, &dev);
        let missing = crate::initrd::find_root("PARTLABEL=root-b", &sys_block, &dev);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(by_label, Some(dev.join("vda4")));
        assert_eq!(missing, None);
        assert_eq!(
            found,
            vec![Partition {
                name: "data".to_string(),
                device: PathBuf::from("/dev/vda4"),
                disk: PathBuf::from("/dev/vda"),
                number: 4,
                dev: libc::makedev(254, 4),
                size: 64 << 20,
            }]
        );
    }
}
