//! PID 1 duties on Linux: early mounts, hostname, loopback, the kernel
//! command line, and the last steps of shutdown. Every step logs its failure
//! and goes on: PID 1 never gives up.

#[cfg(target_os = "linux")]
use std::ffi::CString;

/// Settings read from /proc/cmdline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub mode: Option<String>,
    pub server: Option<String>,
    /// `nodows.slot=a|b`: an A/B image's running slot.
    pub slot: Option<String>,
    /// `nodows.trial-timeout=SECONDS`.
    pub trial_timeout: Option<u64>,
    /// `nodows.fleet=postgres://...`: the fleet's model database, in place
    /// of the image's `/etc/nodows/fleet`.
    pub fleet: Option<String>,
}

pub fn parse_command_line(text: &str) -> CommandLine {
    let mut command_line = CommandLine::default();
    for word in text.split_whitespace() {
        if let Some(mode) = word.strip_prefix("nodows.mode=") {
            command_line.mode = Some(mode.to_string());
        } else if let Some(server) = word.strip_prefix("nodows.server=") {
            command_line.server = Some(server.to_string());
        } else if let Some(slot) = word.strip_prefix("nodows.slot=") {
            command_line.slot = Some(slot.to_string());
        } else if let Some(seconds) = word.strip_prefix("nodows.trial-timeout=") {
            command_line.trial_timeout = seconds.parse().ok();
        } else if let Some(fleet) = word.strip_prefix("nodows.fleet=") {
            command_line.fleet = Some(fleet.to_string());
        }
    }
    command_line
}

/// Where `nodows watch --model postgres://...` keeps the last model that
/// validated and rendered (see crates/render/src/fleet.rs).
pub const LAST_GOOD_MODEL: &str = "/var/lib/nodows/model.xml";

/// The revision recorded in a last-good model's first line
/// (`<!-- nodows last-good revision=N sha256=H -->`).
pub fn last_good_revision(first_line: &str) -> Option<i64> {
    first_line
        .strip_prefix("<!-- nodows last-good revision=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The revision of the last-good model at `path`, if it is one.
pub fn last_good_revision_of(path: &std::path::Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    last_good_revision(text.lines().next()?)
}

/// The SMBIOS system serial number (QEMU: `-smbios type=1,serial=ID`).
pub const SMBIOS_SERIAL: &str = "/sys/class/dmi/id/product_serial";

/// The server id from the SMBIOS system serial, when it is one: a word of
/// letters, digits, `.`, `_` and `-` (at most 64), and not one of the
/// placeholders firmware writes when nobody set it.
pub fn server_from_serial(serial: &str) -> Option<String> {
    let serial = serial.trim();
    let placeholder = [
        "0",
        "0123456789",
        "none",
        "default",
        "not-specified",
        "not_specified",
        "system-serial-number",
    ]
    .iter()
    .any(|p| serial.eq_ignore_ascii_case(p));
    let word = !serial.is_empty()
        && serial.len() <= 64
        && serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (word && !placeholder).then(|| serial.to_string())
}

/// The appliance's server id below `root` (`/` on the appliance):
/// `nodows.server=` on the kernel command line, else the SMBIOS system
/// serial (one image serves many machines), else the image's
/// `/etc/nodows/server-id`. initd and `nodows watch` agree through this.
pub fn server_id(command_line: &CommandLine, root: &std::path::Path) -> Option<String> {
    let under_root = |path: &str| root.join(path.trim_start_matches('/'));
    command_line
        .server
        .clone()
        .or_else(|| {
            std::fs::read_to_string(under_root(SMBIOS_SERIAL))
                .ok()
                .and_then(|serial| server_from_serial(&serial))
        })
        .or_else(|| first_word(&under_root(SERVER_ID_FILE)))
}

/// The image's own server id, when it was built for one machine.
pub const SERVER_ID_FILE: &str = "/etc/nodows/server-id";
/// The profile's mode, written by the image builder.
pub const MODE_FILE: &str = "/etc/nodows/mode";

/// The boot's mode below `root`: `nodows.mode=`, else the image's
/// `/etc/nodows/mode`, else `production`.
pub fn boot_mode(command_line: &CommandLine, root: &std::path::Path) -> String {
    command_line
        .mode
        .clone()
        .or_else(|| first_word(&root.join(MODE_FILE.trim_start_matches('/'))))
        .unwrap_or_else(|| "production".to_string())
}

/// The first whitespace-separated word of a file.
pub fn first_word(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
}

#[cfg(target_os = "linux")]
fn mounted_points() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?.to_string();
            let kind = fields.next()?.to_string();
            Some((target, kind))
        })
        .collect()
}

/// mount(2) of `source` on `target` (created when missing); an empty `data`
/// passes no options.
#[cfg(target_os = "linux")]
pub fn mount(
    source: &str,
    target: &str,
    kind: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let to_c = |text: &str| CString::new(text).map_err(|_| "NUL in mount argument".to_string());
    let (source_c, target_c, kind_c, data_c) =
        (to_c(source)?, to_c(target)?, to_c(kind)?, to_c(data)?);
    let _ = std::fs::create_dir_all(target);
    // SAFETY: valid NUL-terminated strings.
    let result = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            kind_c.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if result < 0 {
        Err(format!(
            "mount {kind} on {target}: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(())
    }
}

/// Mount the API file systems (each only if nothing is mounted there yet),
/// remount / read-write, mount the data partition of an A/B or verified boot, set the
/// hostname, bring up lo. Returns lines for the console.
#[cfg(target_os = "linux")]
pub fn early_setup(machine: bool) -> Vec<String> {
    let mut messages = Vec::new();
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if !std::path::Path::new("/proc/self").exists() {
        if let Err(error) = mount("proc", "/proc", "proc", nosuid_nodev_noexec, "") {
            messages.push(error);
        }
    }
    let table: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=0620,ptmxmode=0666",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            "",
        ),
    ];
    for (source, target, kind, flags, data) in table {
        let already = mounted_points().iter().any(|(point, _)| point == target);
        if already {
            continue;
        }
        if let Err(error) = mount(source, target, kind, flags, data) {
            messages.push(error);
        }
    }
    // Inside a container the root file system is the host's: leave it alone.
    // A verified root stays read-only (its writable layers are in RAM).
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let verified = crate::verity::parse_verity(&cmdline).is_some();
    // SAFETY: remount of / with valid strings.
    let remount = if machine && !verified {
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT,
                std::ptr::null(),
            )
        }
    } else {
        0
    };
    if remount < 0 {
        messages.push(format!(
            "remount / read-write: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Before anything writes /var/lib/nodows or /var/log/nodows: on A/B
    // images and on verified ones (whose root is read-only).
    let data = (machine && (parse_command_line(&cmdline).slot.is_some() || verified)).then(|| {
        mount_data().unwrap_or_else(|(subject, error)| {
            format!("nodows: data partition {subject}: {error}; state is not persistent this boot")
        })
    });
    for directory in ["/run/nodows", DATA_DIR, LOG_DIR] {
        if let Err(error) = std::fs::create_dir_all(directory) {
            messages.push(format!("create {directory}: {error}"));
        }
    }
    if let Ok(hostname) = std::fs::read_to_string("/etc/hostname") {
        let hostname = hostname.trim();
        if !hostname.is_empty() {
            // SAFETY: pointer and length of a valid buffer.
            let result = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
            if result < 0 {
                messages.push(format!(
                    "set hostname {hostname}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    if let Err(error) = loopback_up() {
        messages.push(format!("bring up lo: {error}"));
    }
    let mut lines: Vec<String> = data.into_iter().collect();
    lines.extend(messages.iter().map(|message| format!("initd: {message}")));
    lines
}

/// Where the data partition of an A/B or verified image (GPT name `data`,
/// ext4) is mounted: what must survive an update or a reboot lives there
/// (the last-good model, the render journal, `ssh/` with the ssh host key,
/// `log/`). On other images it is a directory of the root with the same
/// contents.
pub const DATA_DIR: &str = "/var/lib/nodows";
/// The services' logs; a bind mount of DATA_DIR/log when the data
/// partition is mounted.
pub const LOG_DIR: &str = "/var/log/nodows";
/// The directories of the data partition, made when it is first used
/// (it is empty after the build).
#[cfg(target_os = "linux")]
const DATA_DIRECTORIES: [(&str, u32); 2] = [("log", 0o755), ("ssh", 0o700)];

#[cfg(target_os = "linux")]
fn is_mount_point(mounts: &str, path: &str) -> bool {
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(path))
}

/// Mounts the partition named `data` on DATA_DIR (nosuid, nodev, noexec),
/// grown first to the end of a bigger disk (`grow.rs`), makes its
/// directories on first use and binds its `log/` on LOG_DIR.
/// Returns the console line, or what failed and why (then nothing of it
/// stays mounted, and the boot goes on with the root's directories).
#[cfg(target_os = "linux")]
fn mount_data() -> Result<String, (String, String)> {
    let partition = match crate::partition::find("data") {
        Ok(Some(partition)) => partition,
        Ok(None) => {
            return Err((
                "(GPT name data)".to_string(),
                "not found in /sys/class/block".to_string(),
            ))
        }
        Err(error) => {
            return Err((
                "(GPT name data)".to_string(),
                format!("/sys/class/block: {error}"),
            ))
        }
    };
    let device = partition.device.to_string_lossy().into_owned();
    let fail = |error: String| (device.clone(), error);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if is_mount_point(&mounts, DATA_DIR) {
        return Ok(format!(
            "initd: data partition {device}: {DATA_DIR} is mounted already"
        ));
    }
    // A partition that cannot grow is used at its size.
    let grown = crate::grow::grow_partition(&partition)
        .map(|grown| {
            grown
                .map(|bytes| format!(", grown to {} MiB", bytes >> 20))
                .unwrap_or_default()
        })
        .unwrap_or_else(|error| format!(", not grown: {error}"));
    let partition_bytes = crate::partition::find("data")
        .ok()
        .flatten()
        .map_or(partition.size, |partition| partition.size);
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(&device, DATA_DIR, "ext4", flags, "").map_err(fail)?;
    let data = std::path::Path::new(DATA_DIR);
    let resized = match crate::grow::grow_ext4(&partition.device, data, partition_bytes) {
        Ok(Some(blocks)) => format!(", its ext4 grown to {blocks} blocks"),
        Ok(None) => String::new(),
        Err(error) => format!(", its ext4 not grown: {error}"),
    };
    let first_use = !data.join(DATA_DIRECTORIES[0].0).exists();
    let prepared = DATA_DIRECTORIES.iter().try_for_each(|(name, mode)| {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = data.join(name);
        match std::fs::DirBuilder::new().mode(*mode).create(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(format!("create {}: {error}", path.display()))
            }
            _ => Ok(()),
        }
    });
    let log = format!("{DATA_DIR}/log");
    let bound = prepared.and_then(|()| {
        mount(&log, LOG_DIR, "", libc::MS_BIND, "")?;
        // A bind mount takes its own flags only from a remount.
        mount(
            "",
            LOG_DIR,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | flags,
            "",
        )
        .inspect_err(|_| unmount(LOG_DIR))
    });
    if let Err(error) = bound {
        unmount(DATA_DIR);
        return Err(fail(error));
    }
    Ok(format!(
        "initd: data partition {device} on {DATA_DIR}, its log/ on {LOG_DIR}{}{grown}{resized}",
        if first_use {
            " (first use: directories made)"
        } else {
            ""
        }
    ))
}

#[cfg(target_os = "linux")]
fn unmount(path: &str) {
    if let Ok(path) = CString::new(path) {
        // SAFETY: umount2 on a NUL-terminated string.
        unsafe { libc::umount2(path.as_ptr(), 0) };
    }
}

/// At shutdown, after every process is gone and initd closed its logs:
/// unmount the data partition (or, if that fails, make it read-only), so
/// that it is clean at the next boot.
#[cfg(target_os = "linux")]
fn unmount_data(say: &mut impl FnMut(String)) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for path in [LOG_DIR, DATA_DIR] {
        if !is_mount_point(&mounts, path) {
            continue;
        }
        let Ok(path_c) = CString::new(path) else {
            continue;
        };
        // SAFETY: umount2 and mount on NUL-terminated strings.
        unsafe {
            if libc::umount2(path_c.as_ptr(), 0) == 0 {
                continue;
            }
            let error = std::io::Error::last_os_error();
            let result = libc::mount(
                std::ptr::null(),
                path_c.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            );
            if result < 0 {
                say(format!(
                    "unmount {path}: {error}; remount read-only: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a datagram socket, ioctls on a zeroed ifreq with the name set.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (index, byte) in b"lo".iter().enumerate() {
            request.ifr_name[index] = *byte as libc::c_char;
        }
        let mut result = libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request);
        if result >= 0 {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            result = libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request);
        }
        let error = std::io::Error::last_os_error();
        libc::close(socket);
        if result < 0 {
            Err(error)
        } else {
            Ok(())
        }
    }
}

/// The kernel's dm-verity messages (a block whose hash does not match: the
/// read fails with EIO) from a `/dev/kmsg` record, if it is one.
pub fn integrity_message(record: &str) -> Option<&str> {
    let message = record.split_once(';')?.1.trim_end();
    let is_error = ["corrupt", "error", "fail"]
        .iter()
        .any(|word| message.contains(word));
    (message.starts_with("device-mapper: verity") && is_error).then_some(message)
}

/// Where integrity errors are kept for `cat` and the tests (status).
pub const INTEGRITY_LOG: &str = "/run/nodows/integrity.log";

/// The line `initctl status` starts with when INTEGRITY_LOG has errors:
/// their count and the last one. Empty when there are none.
pub fn integrity_status(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    match lines.last() {
        None => String::new(),
        Some(last) => format!(
            "integrity: {} dm-verity error(s) (reads failed with EIO), last: {last}\n",
            lines.len()
        ),
    }
}

/// A thread that follows the kernel log and reports every dm-verity error
/// on the console (`nodows: integrity: ...`) and in INTEGRITY_LOG. It never
/// stops PID 1: when /dev/kmsg cannot be read it ends quietly.
#[cfg(target_os = "linux")]
pub fn watch_integrity(report: impl Fn(&str) + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("integrity".into())
        .spawn(move || {
            use std::io::{Read as _, Write as _};
            let Ok(mut kmsg) = std::fs::File::open("/dev/kmsg") else {
                return;
            };
            let mut record = vec![0u8; 8192];
            loop {
                let length = match kmsg.read(&mut record) {
                    Ok(0) => return,
                    Ok(length) => length,
                    // EPIPE: records were overwritten before we read them.
                    Err(error) if error.raw_os_error() == Some(libc::EPIPE) => continue,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let text = String::from_utf8_lossy(&record[..length]);
                if let Some(message) = integrity_message(&text) {
                    report(&format!("nodows: integrity: {message}"));
                    if let Ok(mut log) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(INTEGRITY_LOG)
                    {
                        let _ = writeln!(log, "{message}");
                    }
                }
            }
        });
    drop(spawned);
}

#[cfg(not(target_os = "linux"))]
pub fn early_setup(_machine: bool) -> Vec<String> {
    Vec::new()
}

/// The end of shutdown, after the services stopped: SIGTERM everything,
/// wait, SIGKILL everything, then `before_remount` (initd closes its own
/// log files there: an open file for writing makes the remount fail with
/// EBUSY), sync, remount read-only. `machine` is false inside a PID
/// namespace (a container): then / is only made read-only for this mount
/// namespace, never for the host's file system.
pub fn final_kill_and_sync(
    machine: bool,
    before_remount: impl FnOnce(),
    mut say: impl FnMut(String),
) {
    let _ = crate::sys::kill(-1, libc::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        while crate::sys::reap_one().is_some() {}
        // ECHILD: nothing left.
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let result = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if result < 0 || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = crate::sys::kill(-1, libc::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let result = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if result < 0 || std::time::Instant::now() >= deadline {
            break;
        }
        if result == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    before_remount();
    crate::sys::sync();
    #[cfg(target_os = "linux")]
    {
        if machine {
            unmount_data(&mut say);
        }
        let flags = if machine {
            libc::MS_REMOUNT | libc::MS_RDONLY
        } else {
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_BIND
        };
        // SAFETY: remount of / with valid strings.
        let result = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if result < 0 {
            say(format!(
                "remount / read-only: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = machine;
        let _ = &mut say;
    }
    crate::sys::sync();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn verity_errors_are_picked_from_the_kernel_log() {
        assert_eq!(
            integrity_message(
                "3,812,5123456,-;device-mapper: verity: 254:0: data block 1234 is corrupted\n"
            ),
            Some("device-mapper: verity: 254:0: data block 1234 is corrupted")
        );
        assert_eq!(integrity_message("6,1,2,-;EXT4-fs (dm-0): mounted"), None);
        assert_eq!(
            integrity_message(
                "6,3,4,-;device-mapper: verity: sha256 using implementation \"sha256-generic\""
            ),
            None
        );
        assert_eq!(integrity_message("no separator"), None);
    }

    #[test]
    fn integrity_errors_head_the_status() {
        assert_eq!(integrity_status(""), "");
        assert_eq!(
            integrity_status("device-mapper: verity: 254:0: data block 7 is corrupted\ndevice-mapper: verity: 254:0: data block 9 is corrupted\n"),
            "integrity: 2 dm-verity error(s) (reads failed with EIO), last: device-mapper: verity: 254:0: data block 9 is corrupted\n"
        );
    }

    #[test]
    fn a_last_good_model_names_its_revision_in_its_first_line() {
        assert_eq!(
            last_good_revision("<!-- nodows last-good revision=41 sha256=ab -->"),
            Some(41)
        );
        assert_eq!(last_good_revision("<model>"), None);
        assert_eq!(
            last_good_revision("<!-- nodows last-good revision=x -->"),
            None
        );
    }

    #[test]
    fn the_smbios_serial_is_a_server_id_unless_it_is_a_placeholder() {
        for (serial, server) in [
            ("web01\n", Some("web01")),
            ("a.b_c-9", Some("a.b_c-9")),
            ("", None),
            ("\n", None),
            ("Not Specified", None),
            ("To be filled by O.E.M.", None),
            ("0", None),
            ("None", None),
            ("has/slash", None),
        ] {
            assert_eq!(server_from_serial(serial).as_deref(), server, "{serial:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn mount_points_are_read_from_the_mount_table() {
        let mounts = "/dev/vda2 / ext4 rw,relatime 0 0\n\
                      /dev/vda4 /var/lib/nodows ext4 rw,nosuid,nodev,noexec,relatime 0 0\n\
                      /dev/vda4 /var/log/nodows ext4 rw,nosuid,nodev,noexec,relatime 0 0\n";
        assert!(is_mount_point(mounts, DATA_DIR));
        assert!(is_mount_point(mounts, LOG_DIR));
        assert!(!is_mount_point(mounts, "/var/lib"));
        assert!(!is_mount_point(mounts, "/dev/vda4"));
        assert!(!is_mount_point("", DATA_DIR));
    }

    #[test]
    fn command_line_mode_and_server() {
        let parsed = parse_command_line(
            "root=/dev/vda2 console=ttyS0 nodows.mode=failover nodows.server=web-2 quiet",
        );
        assert_eq!(parsed.mode.as_deref(), Some("failover"));
        assert_eq!(parsed.server.as_deref(), Some("web-2"));
        assert_eq!(parsed.slot, None);
        let parsed = parse_command_line("root=PARTUUID=x nodows.slot=b nodows.trial-timeout=60");
        assert_eq!(parsed.slot.as_deref(), Some("b"));
        assert_eq!(parsed.trial_timeout, Some(60));
        assert_eq!(parse_command_line("quiet"), CommandLine::default());
        let parsed =
            parse_command_line("quiet nodows.fleet=postgres://r@10.0.2.2:5432/f?sslmode=disable");
        assert_eq!(
            parsed.fleet.as_deref(),
            Some("postgres://r@10.0.2.2:5432/f?sslmode=disable")
        );
    }

    #[test]
    fn server_id_comes_from_the_command_line_then_the_serial_then_the_image() {
        let root = std::env::temp_dir().join(format!("initd-server-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dmi = root.join(SMBIOS_SERIAL.trim_start_matches('/'));
        std::fs::create_dir_all(dmi.parent().unwrap()).unwrap();
        std::fs::create_dir_all(root.join("etc/nodows")).unwrap();
        std::fs::write(root.join("etc/nodows/server-id"), "web01\n").unwrap();
        let none = CommandLine::default();
        assert_eq!(server_id(&none, &root).as_deref(), Some("web01"));
        std::fs::write(&dmi, "Not Specified\n").unwrap();
        assert_eq!(server_id(&none, &root).as_deref(), Some("web01"));
        std::fs::write(&dmi, "a\n").unwrap();
        assert_eq!(server_id(&none, &root).as_deref(), Some("a"));
        let given = parse_command_line("nodows.server=b");
        assert_eq!(server_id(&given, &root).as_deref(), Some("b"));
        assert_eq!(boot_mode(&none, &root), "production");
        std::fs::write(root.join("etc/nodows/mode"), "test\n").unwrap();
        assert_eq!(boot_mode(&none, &root), "test");
        assert_eq!(
            boot_mode(&parse_command_line("nodows.mode=dev"), &root),
            "dev"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
