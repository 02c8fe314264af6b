//! Small helpers every step shares: files written without writing through
//! a hard link, trees copied with their modes, times clamped, sparse-aware
//! sha256, ISO 8601 dates. A leaf: it uses no pipeline step's module.

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};

/// Writes a new file at `path` (a file there is unlinked first: the staging
/// tree's base files are hard links into the extracted base, which must
/// never be written through).
pub fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies a file to `to` with `mode` (a file there is unlinked first, as in `write`).
pub fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies a tree with its modes (owner root), in sorted order.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy_tree_except(from, to, &[])
}

/// What a service's directory holds for its author only, never copied
/// into an image: its golden cases and its FreeBSD form.
const AUTHORING_DIRS: [&str; 2] = ["tests", "freebsd"];

/// Copies a service's directory into an image, without [`AUTHORING_DIRS`].
pub fn copy_service(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy_tree_except(from, to, &AUTHORING_DIRS)
}

/// [`copy_tree`] without the top-level directories named in `skip`.
fn copy_tree_except(from: &Path, to: &Path, skip: &[&str]) -> anyhow::Result<()> {
    let metadata = std::fs::symlink_metadata(from)?;
    if metadata.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(target, to)
            .with_context(|| format!("cannot create {}", to.display()))?;
    } else if metadata.is_dir() {
        if !to.exists() {
            std::fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
            std::fs::set_permissions(
                to,
                std::fs::Permissions::from_mode(metadata.mode() & 0o7777),
            )?;
        }
        let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let skipped =
                skip.iter().any(|name| entry.file_name() == *name) && entry.file_type()?.is_dir();
            if !skipped {
                copy_tree(&entry.path(), &to.join(entry.file_name()))?;
            }
        }
    } else {
        install(from, to, metadata.mode() & 0o7777)?;
    }
    Ok(())
}

pub fn clamp_time(path: &Path, epoch: u64) -> anyhow::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let time = libc::timespec {
        tv_sec: epoch as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result != 0 {
        bail!(
            "cannot set the times of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (Howard Hinnant's civil_from_days).
pub fn iso8601(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let seconds = epoch % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The sha256 of a file, sparse-aware: holes (SEEK_HOLE) are hashed from a
/// zero buffer instead of being read, data is read in 1 MiB chunks. The raw
/// disk is 1 GiB of mostly holes; SHA-256 must still see every zero byte,
/// but the kernel need not copy them.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let length = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .len();
    let mut hasher = Sha256::new();
    hash_range(&mut hasher, path, 0, length)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds `length` bytes of `path` from `start` to `hasher`, sparse-aware
/// (see `sha256_file`); bytes past the file's end count as zeros.
pub fn hash_range(hasher: &mut Sha256, path: &Path, start: u64, length: u64) -> anyhow::Result<()> {
    super::sparse::read_range(path, start, length, |bytes| {
        hasher.update(bytes);
        Ok(())
    })
}
