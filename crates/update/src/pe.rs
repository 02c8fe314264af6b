//! One section of a PE file (a unified kernel image), read from its
//! section table: the `.osrel` text of a UKI entry tells its version, as
//! systemd-boot reads it. Only the headers and that section are read.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

/// The bytes of the section `name` (at most 8 bytes, e.g. `.osrel`) of the
/// PE file at `path`; `None` when the file is not PE or has no such section.
pub fn section(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = std::fs::File::open(path)?;
    let mut headers = vec![0u8; 4096];
    let length = read_up_to(&mut file, &mut headers)?;
    headers.truncate(length);
    let Some((offset, size)) = locate(&headers, name) else {
        return Ok(None);
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = vec![0u8; size];
    file.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

fn read_up_to(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            count => filled += count,
        }
    }
    Ok(filled)
}

/// The file offset and size of section `name` in the PE headers `headers`
/// (the DOS header's e_lfanew, `PE\0\0`, the COFF header, the section table).
pub fn locate(headers: &[u8], name: &str) -> Option<(u64, usize)> {
    let u16_at = |at: usize| {
        Some(u16::from_le_bytes(
            headers.get(at..at + 2)?.try_into().ok()?,
        ))
    };
    let u32_at = |at: usize| {
        Some(u32::from_le_bytes(
            headers.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    if headers.get(..2) != Some(b"MZ") {
        return None;
    }
    let pe = u32_at(0x3c)? as usize;
    if headers.get(pe..pe + 4) != Some(b"PE\0\0") {
        return None;
    }
    let sections = u16_at(pe + 6)? as usize;
    let optional_header = u16_at(pe + 20)? as usize;
    let table = pe + 24 + optional_header;
    (0..sections).find_map(|index| {
        let entry = table + index * 40;
        let raw_name = headers.get(entry..entry + 8)?;
        let end = raw_name.iter().position(|byte| *byte == 0).unwrap_or(8);
        if &raw_name[..end] != name.as_bytes() {
            return None;
        }
        let virtual_size = u32_at(entry + 8)?;
        let raw_size = u32_at(entry + 16)?;
        let offset = u32_at(entry + 20)?;
        Some((u64::from(offset), virtual_size.min(raw_size) as usize))
    })
}
