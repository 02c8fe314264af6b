//! Sparse files: where a file's data is (SEEK_DATA and SEEK_HOLE), and
//! reading a range with its holes produced from a zero buffer instead of
//! being read. The raw disk is 1 GiB of mostly holes; hashing, compressing
//! and flashing it only ever read its data.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::io::AsRawFd as _;
use std::path::Path;

use anyhow::Context as _;

/// The chunk every reader works in.
pub const CHUNK: usize = 4 << 20;

/// The data extents `[start, end)` of `file` within `[from, to)`, in order.
/// A file system without SEEK_DATA reports the whole file as data.
pub fn data_extents(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let file_end = file.metadata()?.len();
    let to = to.min(file_end);
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut position = from;
    while position < to {
        let data = unsafe { libc::lseek(fd, position as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        let data = data as u64;
        if data >= to {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 { file_end } else { hole as u64 }.min(to);
        extents.push((data, hole));
        position = hole;
    }
    Ok(extents)
}

/// Feeds the `length` bytes of `path` from `start` to `consume` in chunks
/// of at most CHUNK bytes; holes and bytes past the file's end are zeros
/// from a buffer.
pub fn read_range(
    path: &Path,
    start: u64,
    length: u64,
    mut consume: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let end = start + length;
    let extents = data_extents(&file, start, end)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut buffer = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let feed_zeros = |consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>, mut count: u64| {
        while count > 0 {
            let run = count.min(CHUNK as u64) as usize;
            consume(&zeros[..run])?;
            count -= run as u64;
        }
        anyhow::Ok(())
    };
    let mut position = start;
    for (data, hole) in extents {
        super::ui::check_interrupted()?;
        feed_zeros(&mut consume, data - position)?;
        file.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            file.read_exact(&mut buffer[..want])
                .with_context(|| format!("cannot read {}", path.display()))?;
            consume(&buffer[..want])?;
            left -= want as u64;
        }
        position = hole;
    }
    feed_zeros(&mut consume, end - position)
}
