//! The boot entries on the ESP (Boot Loader Specification type #1 files
//! read by systemd-boot) and their try counters, as systemd's boot
//! assessment defines them: `NAME+LEFT[-DONE].conf`; systemd-boot counts a
//! try down at each boot of the entry, and an entry with no tries left sorts
//! after every other.
//!
//! Ours are `nodows-GEN-SLOT[+LEFT[-DONE]].conf`: GEN grows with each
//! update, so the newest entry sorts first under `default nodows-*`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{io_error, Error, Result, Slot};

pub const ENTRIES_DIR: &str = "loader/entries";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The file name under loader/entries.
    pub file: String,
    pub generation: u64,
    pub slot: Slot,
    /// `None`: blessed (no counter).
    pub tries_left: Option<u32>,
    pub tries_done: u32,
    /// The entry's `version` line.
    pub version: String,
}

impl Entry {
    /// The id without the counter: `nodows-GEN-SLOT`.
    pub fn id(&self) -> String {
        format!("nodows-{}-{}", self.generation, self.slot)
    }

    /// Out of tries: systemd-boot no longer picks it while another entry has tries.
    pub fn failed(&self) -> bool {
        self.tries_left == Some(0)
    }

    /// Parses a file name; `None` for files that are not ours.
    pub fn parse_name(file: &str) -> Option<(u64, Slot, Option<u32>, u32)> {
        let stem = file.strip_suffix(".conf")?.strip_prefix("nodows-")?;
        let (name, counter) = match stem.split_once('+') {
            Some((name, counter)) => (name, Some(counter)),
            None => (stem, None),
        };
        let (generation, slot) = name.split_once('-')?;
        let generation = generation.parse().ok()?;
        let slot = Slot::parse(slot)?;
        let (left, done) = match counter {
            None => (None, 0),
            Some(counter) => {
                let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
                (Some(left.parse().ok()?), done.parse().ok()?)
            }
        };
        Some((generation, slot, left, done))
    }
}

/// Our entries on the ESP mounted (or unpacked) at `esp`, sorted as
/// systemd-boot sorts them: entries with tries first, then by generation,
/// highest first. The first is the one that boots next.
pub fn list(esp: &Path) -> Result<Vec<Entry>> {
    let dir = esp.join(ENTRIES_DIR);
    let mut entries = Vec::new();
    for item in std::fs::read_dir(&dir).map_err(io_error(dir.display()))? {
        let item = item.map_err(io_error(dir.display()))?;
        let file = item.file_name().to_string_lossy().into_owned();
        let Some((generation, slot, tries_left, tries_done)) = Entry::parse_name(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(item.path()).map_err(io_error(item.path().display()))?;
        let version = text
            .lines()
            .find_map(|line| line.strip_prefix("version "))
            .unwrap_or("")
            .trim()
            .to_string();
        entries.push(Entry {
            file,
            generation,
            slot,
            tries_left,
            tries_done,
            version,
        });
    }
    entries.sort_by_key(|entry| (entry.failed(), std::cmp::Reverse(entry.generation)));
    Ok(entries)
}

/// Makes a directory's entries durable (vfat supports fsync on directories).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error(dir.display()))
}

/// Writes `path` durably: a temporary sibling, fsync, rename, fsync of the
/// directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = temporary_path(path);
    let mut file = std::fs::File::create(&temporary).map_err(io_error(temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(temporary.display()))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io_error(path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// `DIR/NAME.new`: not `.conf`, so systemd-boot never reads a half-written entry.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// Removes every entry (and leftover temporary file) of `slot`: done before
/// a byte of the slot is written, so nothing boots a half-written slot.
pub fn remove_slot_entries(esp: &Path, slot: Slot) -> Result<Vec<Entry>> {
    let dir = esp.join(ENTRIES_DIR);
    let removed: Vec<Entry> = list(esp)?
        .into_iter()
        .filter(|entry| entry.slot == slot)
        .collect();
    for entry in &removed {
        let path = dir.join(&entry.file);
        std::fs::remove_file(&path).map_err(io_error(path.display()))?;
    }
    for item in std::fs::read_dir(&dir).map_err(io_error(dir.display()))? {
        let item = item.map_err(io_error(dir.display()))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let leftover = name
            .strip_suffix(".new")
            .and_then(Entry::parse_name)
            .is_some_and(|(_, of, _, _)| of == slot);
        if leftover {
            std::fs::remove_file(item.path()).map_err(io_error(item.path().display()))?;
        }
    }
    sync_dir(&dir)?;
    Ok(removed)
}

/// The text of an entry that boots `slot`.
pub fn entry_text(title: &str, version: &str, slot: Slot, options: &str) -> String {
    format!(
        "title {title}\nversion {version}\nlinux /nodows/{slot}/vmlinuz\ninitrd /nodows/{slot}/initrd.img\noptions {options}\n"
    )
}

/// Installs a new entry for `slot` with `tries` tries (`+N`): written under
/// a temporary name, fsynced, then renamed to `.conf`. Its generation is one
/// more than every other entry's, so it is the default. Returns its file name.
pub fn install(esp: &Path, slot: Slot, tries: u32, text: &str) -> Result<String> {
    let dir = esp.join(ENTRIES_DIR);
    let generation = list(esp)?
        .iter()
        .map(|entry| entry.generation)
        .max()
        .unwrap_or(0)
        + 1;
    let file = format!("nodows-{generation}-{slot}+{tries}.conf");
    write_durably(&dir.join(&file), text.as_bytes())?;
    Ok(file)
}

/// What `bless` found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blessing {
    /// The entry had a counter; it is now renamed without it.
    Blessed(Entry),
    /// The entry had no counter.
    AlreadyGood(Entry),
}

/// Marks the entry of the running slot good, as systemd-bless-boot does:
/// renames `nodows-GEN-SLOT+LEFT-DONE.conf` to `nodows-GEN-SLOT.conf`.
pub fn bless(esp: &Path, slot: Slot) -> Result<Blessing> {
    let dir = esp.join(ENTRIES_DIR);
    let mine: Vec<Entry> = list(esp)?
        .into_iter()
        .filter(|entry| entry.slot == slot)
        .collect();
    // A cut during an earlier rename on FAT can leave two names for one
    // entry: keep the blessed one.
    if let Some(good) = mine.iter().find(|entry| entry.tries_left.is_none()) {
        for other in mine.iter().filter(|entry| *entry != good) {
            let path = dir.join(&other.file);
            std::fs::remove_file(&path).map_err(io_error(path.display()))?;
        }
        return Ok(Blessing::AlreadyGood(good.clone()));
    }
    let Some(entry) = mine.into_iter().max_by_key(|entry| entry.generation) else {
        return Err(Error::System(format!(
            "{}: no boot entry for the running slot {slot}",
            dir.display()
        )));
    };
    let blessed = format!("{}.conf", entry.id());
    std::fs::rename(dir.join(&entry.file), dir.join(&blessed))
        .map_err(io_error(dir.join(&entry.file).display()))?;
    sync_dir(&dir)?;
    Ok(Blessing::Blessed(Entry {
        file: blessed,
        tries_left: None,
        tries_done: 0,
        ..entry
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_names_with_and_without_counters() {
        assert_eq!(
            Entry::parse_name("nodows-1-a.conf"),
            Some((1, Slot::A, None, 0))
        );
        assert_eq!(
            Entry::parse_name("nodows-12-b+3.conf"),
            Some((12, Slot::B, Some(3), 0))
        );
        assert_eq!(
            Entry::parse_name("nodows-2-b+0-3.conf"),
            Some((2, Slot::B, Some(0), 3))
        );
        assert_eq!(Entry::parse_name("nodows-2-c.conf"), None);
        assert_eq!(Entry::parse_name("other.conf"), None);
        assert_eq!(Entry::parse_name("nodows-2-b.conf.new"), None);
    }
}
