//! The verified root: `nodows.verity=DATA_BLOCKS:ROOT_HASH:SALT` on the
//! kernel command line (the image builder writes it, inside the signed
//! kernel image) names a dm-verity hash tree that follows the file system in
//! the root partition (hash offset = DATA_BLOCKS blocks of 4096 bytes, no
//! verity superblock). The initrd creates the read-only device-mapper device
//! `root` over it through the documented ioctls of `linux/dm-ioctl.h`
//! (DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND to resume), then mounts it.

/// The verity parameters of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySpec {
    /// Data blocks (4096 bytes) of the file system; the hash tree starts there.
    pub data_blocks: u64,
    pub root_hash: String,
    pub salt: String,
}

pub const BLOCK_SIZE: u64 = 4096;

/// `nodows.verity=` of a command line: None when absent, Err when malformed.
pub fn parse_verity(command_line: &str) -> Option<Result<VeritySpec, String>> {
    let value = command_line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("nodows.verity="))?;
    let mut fields = value.split(':');
    let parsed = (|| {
        let data_blocks = fields
            .next()
            .and_then(|text| text.parse::<u64>().ok())
            .filter(|blocks| *blocks > 0)?;
        let root_hash = fields.next()?.to_ascii_lowercase();
        let salt = fields.next()?.to_ascii_lowercase();
        let is_hex = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
        if fields.next().is_some() || root_hash.len() != 64 || !is_hex(&root_hash) {
            return None;
        }
        if !is_hex(&salt) || salt.len() % 2 != 0 {
            return None;
        }
        Some(VeritySpec {
            data_blocks,
            root_hash,
            salt,
        })
    })();
    Some(parsed.ok_or_else(|| {
        format!("nodows.verity={value}: expected DATA_BLOCKS:ROOT_HASH(64 hex digits):SALT(hex)")
    }))
}

impl VeritySpec {
    /// The dm-verity table line for `device` (data and hash on the same
    /// partition, hash tree right after the data): format 1, sha256.
    pub fn table(&self, device: &str) -> String {
        format!(
            "1 {device} {device} {BLOCK_SIZE} {BLOCK_SIZE} {blocks} {blocks} sha256 {hash} {salt}",
            blocks = self.data_blocks,
            hash = self.root_hash,
            salt = self.salt,
        )
    }

    /// Length of the mapped device in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / 512)
    }
}

// linux/dm-ioctl.h
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_DEV_CREATE_CMD: u64 = 3;
const DM_DEV_SUSPEND_CMD: u64 = 6;
const DM_TABLE_LOAD_CMD: u64 = 9;

#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

#[repr(C)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}

/// `_IOWR(0xfd, command, struct dm_ioctl)`.
fn dm_request(command: u64) -> u64 {
    (3 << 30) | ((std::mem::size_of::<DmIoctl>() as u64) << 16) | (0xfd << 8) | command
}

/// One ioctl buffer: the header, then (for a table load) one target spec
/// and its NUL-terminated parameters, 8-byte aligned.
fn request_buffer(name: &str, flags: u32, target: Option<(&str, u64, &str)>) -> Vec<u8> {
    let header_size = std::mem::size_of::<DmIoctl>();
    let spec_size = std::mem::size_of::<DmTargetSpec>();
    let extra = match target {
        Some((_, _, params)) => (spec_size + params.len() + 1).div_ceil(8) * 8,
        None => 0,
    };
    // Room for what the kernel writes back (DM_DEV_CREATE fills nothing
    // past the header, but a spare KiB costs nothing).
    let mut buffer = vec![0u8; header_size + extra + 1024];
    let mut header = DmIoctl {
        version: [4, 0, 0],
        data_size: buffer.len() as u32,
        data_start: header_size as u32,
        target_count: u32::from(target.is_some()),
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    for (slot, byte) in header
        .name
        .iter_mut()
        .zip(name.bytes().take(DM_NAME_LEN - 1))
    {
        *slot = byte;
    }
    // SAFETY: DmIoctl is plain old data of exactly header_size bytes.
    let header_bytes = unsafe {
        std::slice::from_raw_parts((&header as *const DmIoctl).cast::<u8>(), header_size)
    };
    buffer[..header_size].copy_from_slice(header_bytes);
    if let Some((kind, length, params)) = target {
        let mut spec = DmTargetSpec {
            sector_start: 0,
            length,
            status: 0,
            next: 0,
            target_type: [0; 16],
        };
        for (slot, byte) in spec.target_type.iter_mut().zip(kind.bytes().take(15)) {
            *slot = byte;
        }
        // SAFETY: DmTargetSpec is plain old data of exactly spec_size bytes.
        let spec_bytes = unsafe {
            std::slice::from_raw_parts((&spec as *const DmTargetSpec).cast::<u8>(), spec_size)
        };
        buffer[header_size..header_size + spec_size].copy_from_slice(spec_bytes);
        let start = header_size + spec_size;
        buffer[start..start + params.len()].copy_from_slice(params.as_bytes());
    }
    buffer
}

#[cfg(target_os = "linux")]
fn dm_ioctl(control: &std::fs::File, command: u64, buffer: &mut [u8]) -> Result<DmIoctl, String> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the buffer starts with a dm_ioctl whose data_size is the
    // buffer's length; the kernel reads and writes within it.
    let result = unsafe {
        libc::ioctl(
            control.as_raw_fd(),
            dm_request(command) as _,
            buffer.as_mut_ptr(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: the buffer holds at least one DmIoctl; read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(buffer.as_ptr().cast::<DmIoctl>()) })
}

/// Creates the read-only verity device `name` over `device` and returns the
/// path of its block device node (`/dev/dm-N`, made by devtmpfs).
#[cfg(target_os = "linux")]
pub fn create_device(name: &str, device: &str, spec: &VeritySpec) -> Result<String, String> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|error| format!("open /dev/mapper/control (is dm-mod loaded?): {error}"))?;
    let mut create = request_buffer(name, DM_READONLY_FLAG, None);
    let created = dm_ioctl(&control, DM_DEV_CREATE_CMD, &mut create)
        .map_err(|error| format!("DM_DEV_CREATE {name}: {error}"))?;
    let table = spec.table(device);
    let mut load = request_buffer(
        name,
        DM_READONLY_FLAG,
        Some(("verity", spec.sectors(), &table)),
    );
    dm_ioctl(&control, DM_TABLE_LOAD_CMD, &mut load)
        .map_err(|error| format!("DM_TABLE_LOAD {name} (verity {table}): {error}"))?;
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the table goes live.
    let mut resume = request_buffer(name, 0, None);
    dm_ioctl(&control, DM_DEV_SUSPEND_CMD, &mut resume)
        .map_err(|error| format!("DM_DEV_SUSPEND (resume) {name}: {error}"))?;
    // huge_encode_dev: minor's low byte, major, then the minor's high bits.
    let minor = (created.dev & 0xff) | ((created.dev >> 12) & 0xfff00);
    Ok(format!("/dev/dm-{minor}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const HASH: &str = "4b7ec2d8a6f5e4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a29180f7e6d5c4b3";

    #[test]
    fn the_verity_words_are_read_from_the_command_line() {
        let spec = parse_verity(&format!(
            "root=PARTUUID=x ro nodows.verity=1000:{}:00ff quiet",
            HASH.to_uppercase()
        ))
        .unwrap()
        .unwrap();
        assert_eq!(spec.data_blocks, 1000);
        assert_eq!(spec.root_hash, HASH);
        assert_eq!(spec.salt, "00ff");
        assert_eq!(spec.sectors(), 8000);
        assert_eq!(
            spec.table("/dev/vda2"),
            format!("1 /dev/vda2 /dev/vda2 4096 4096 1000 1000 sha256 {HASH} 00ff")
        );
        assert!(parse_verity("root=/dev/vda2 rw").is_none());
    }

    /// Guards against booting a root whose hash the command line does not
    /// really give: every malformed value is an error, never "no verity".
    #[test]
    fn a_malformed_verity_word_is_an_error() {
        for bad in [
            "nodows.verity=".to_string(),
            format!("nodows.verity=0:{HASH}:00"),
            format!("nodows.verity=x:{HASH}:00"),
            "nodows.verity=10:abcd:00".to_string(),
            format!("nodows.verity=10:{HASH}:0"),
            format!("nodows.verity=10:{HASH}:zz"),
            format!("nodows.verity=10:{HASH}:00:extra"),
        ] {
            assert!(parse_verity(&bad).unwrap().is_err(), "{bad}");
        }
    }

    /// The structures have the sizes of linux/dm-ioctl.h on x86-64.
    #[test]
    fn the_ioctl_structures_match_the_kernel_header() {
        assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
        assert_eq!(std::mem::size_of::<DmTargetSpec>(), 40);
        // DM_DEV_CREATE as strace prints it.
        assert_eq!(dm_request(DM_DEV_CREATE_CMD), 0xc138_fd03);
        let buffer = request_buffer("root", DM_READONLY_FLAG, Some(("verity", 8, "1 a b")));
        assert_eq!(&buffer[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&buffer[48..52], b"root");
        assert_eq!(&buffer[312 + 24..312 + 30], b"verity");
        assert_eq!(&buffer[312 + 40..312 + 46], b"1 a b\0");
    }
}
