//! The boot entries on the ESP and their try counters, as systemd's boot
//! assessment defines them: `NAME+LEFT[-DONE].conf` (Boot Loader
//! Specification type #1, a text file under `loader/entries`) or
//! `NAME+LEFT[-DONE].efi` (type #2, a unified kernel image under
//! `EFI/Linux`); systemd-boot counts a try down at each boot of the entry,
//! and an entry with no tries left sorts after every other.
//!
//! Ours are `nodows-GEN-SLOT[+LEFT[-DONE]].conf|.efi`: GEN grows with each
//! update, so the newest entry sorts first under `default nodows-*`
//! (systemd-boot compares type #2 entries by their os-release's ID and
//! version first; every nodows UKI carries the same ones, so the id decides
//! there too).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{io_error, Error, Result, Slot};

pub const ENTRIES_DIR: &str = "loader/entries";
/// Where systemd-boot finds unified kernel images by itself.
pub const UKI_DIR: &str = "EFI/Linux";
/// The `.osrel` line of a nodows UKI that names its release version.
pub const UKI_VERSION_KEY: &str = "NODOWS_VERSION";

/// The two kinds of entry systemd-boot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Type #1: a text file naming the kernel, initrd and command line.
    Conf,
    /// Type #2: a signed unified kernel image (verified A/B images).
    Uki,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Conf, Kind::Uki];

    /// The directory on the ESP.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Conf => ENTRIES_DIR,
            Kind::Uki => UKI_DIR,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Kind::Conf => ".conf",
            Kind::Uki => ".efi",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// The file name under the kind's directory.
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

    /// The entry's file on the ESP mounted at `esp`.
    pub fn path(&self, esp: &Path) -> PathBuf {
        esp.join(self.kind.dir()).join(&self.file)
    }

    /// Parses a file name of `kind`; `None` for files that are not ours.
    pub fn parse_name(file: &str, kind: Kind) -> Option<(u64, Slot, Option<u32>, u32)> {
        let stem = file.strip_suffix(kind.suffix())?.strip_prefix("nodows-")?;
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

/// Our entries on the ESP mounted (or unpacked) at `esp`, of both kinds,
/// sorted as systemd-boot sorts them: entries with tries first, then by
/// generation, highest first. The first is the one that boots next.
pub fn list(esp: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for kind in Kind::ALL {
        let dir = esp.join(kind.dir());
        let items = match std::fs::read_dir(&dir) {
            Ok(items) => items,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error(dir.display())(error)),
        };
        for item in items {
            let item = item.map_err(io_error(dir.display()))?;
            let file = item.file_name().to_string_lossy().into_owned();
            let Some((generation, slot, tries_left, tries_done)) = Entry::parse_name(&file, kind)
            else {
                continue;
            };
            entries.push(Entry {
                kind,
                version: entry_version(&item.path(), kind)?,
                file,
                generation,
                slot,
                tries_left,
                tries_done,
            });
        }
    }
    entries.sort_by_key(|entry| (entry.failed(), std::cmp::Reverse(entry.generation)));
    Ok(entries)
}

/// The release version an entry boots: the `version` line of a type #1
/// entry, the `NODOWS_VERSION=` line of a UKI's `.osrel` section.
fn entry_version(path: &Path, kind: Kind) -> Result<String> {
    let (text, prefix) = match kind {
        Kind::Conf => (
            std::fs::read_to_string(path).map_err(io_error(path.display()))?,
            "version ".to_string(),
        ),
        Kind::Uki => (
            crate::pe::section(path, ".osrel")
                .map_err(io_error(path.display()))?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default(),
            format!("{UKI_VERSION_KEY}="),
        ),
    };
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .to_string())
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

/// Removes every entry (and leftover temporary file) of `slot`, of both
/// kinds: done before a byte of the slot is written, so nothing boots a
/// half-written slot.
pub fn remove_slot_entries(esp: &Path, slot: Slot) -> Result<Vec<Entry>> {
    let removed: Vec<Entry> = list(esp)?
        .into_iter()
        .filter(|entry| entry.slot == slot)
        .collect();
    for entry in &removed {
        let path = entry.path(esp);
        std::fs::remove_file(&path).map_err(io_error(path.display()))?;
    }
    for kind in Kind::ALL {
        let dir = esp.join(kind.dir());
        let Ok(items) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in items {
            let item = item.map_err(io_error(dir.display()))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let leftover = name
                .strip_suffix(".new")
                .and_then(|name| Entry::parse_name(name, kind))
                .is_some_and(|(_, of, _, _)| of == slot);
            if leftover {
                std::fs::remove_file(item.path()).map_err(io_error(item.path().display()))?;
            }
        }
        sync_dir(&dir)?;
    }
    Ok(removed)
}

/// The text of an entry that boots `slot`.
pub fn entry_text(title: &str, version: &str, slot: Slot, options: &str) -> String {
    format!(
        "title {title}\nversion {version}\nlinux /nodows/{slot}/vmlinuz\ninitrd /nodows/{slot}/initrd.img\noptions {options}\n"
    )
}

/// The file name of the next entry for `slot`: `nodows-GEN-SLOT+TRIES`
/// and the kind's suffix, its generation one more than every other entry's,
/// so it is the default.
pub fn next_name(esp: &Path, slot: Slot, tries: u32, kind: Kind) -> Result<String> {
    let generation = list(esp)?
        .iter()
        .map(|entry| entry.generation)
        .max()
        .unwrap_or(0)
        + 1;
    Ok(format!(
        "nodows-{generation}-{slot}+{tries}{}",
        kind.suffix()
    ))
}

/// Installs a new type #1 entry for `slot` with `tries` tries (`+N`):
/// written under a temporary name, fsynced, then renamed to `.conf`.
/// Returns its file name.
pub fn install(esp: &Path, slot: Slot, tries: u32, text: &str) -> Result<String> {
    let file = next_name(esp, slot, tries, Kind::Conf)?;
    write_durably(&esp.join(ENTRIES_DIR).join(&file), text.as_bytes())?;
    Ok(file)
}

/// Installs a UKI entry: its complete, fsynced `temporary` file (a sibling
/// named `FILE.new`) renamed to `file` under EFI/Linux.
pub fn install_uki(esp: &Path, temporary: &Path, file: &str) -> Result<String> {
    let dir = esp.join(UKI_DIR);
    std::fs::rename(temporary, dir.join(file)).map_err(io_error(dir.join(file).display()))?;
    sync_dir(&dir)?;
    Ok(file.to_string())
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
    let mine: Vec<Entry> = list(esp)?
        .into_iter()
        .filter(|entry| entry.slot == slot)
        .collect();
    // A cut during an earlier rename on FAT can leave two names for one
    // entry: keep the blessed one.
    if let Some(good) = mine.iter().find(|entry| entry.tries_left.is_none()) {
        for other in mine.iter().filter(|entry| *entry != good) {
            let path = other.path(esp);
            std::fs::remove_file(&path).map_err(io_error(path.display()))?;
        }
        return Ok(Blessing::AlreadyGood(good.clone()));
    }
    let Some(entry) = mine.into_iter().max_by_key(|entry| entry.generation) else {
        return Err(Error::System(format!(
            "{}: no boot entry for the running slot {slot} (in {ENTRIES_DIR} or {UKI_DIR})",
            esp.display()
        )));
    };
    let dir = esp.join(entry.kind.dir());
    let blessed = format!("{}{}", entry.id(), entry.kind.suffix());
    std::fs::rename(entry.path(esp), dir.join(&blessed))
        .map_err(io_error(entry.path(esp).display()))?;
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
            Entry::parse_name("nodows-1-a.conf", Kind::Conf),
            Some((1, Slot::A, None, 0))
        );
        assert_eq!(
            Entry::parse_name("nodows-12-b+3.conf", Kind::Conf),
            Some((12, Slot::B, Some(3), 0))
        );
        assert_eq!(
            Entry::parse_name("nodows-2-b+0-3.conf", Kind::Conf),
            Some((2, Slot::B, Some(0), 3))
        );
        assert_eq!(Entry::parse_name("nodows-2-c.conf", Kind::Conf), None);
        assert_eq!(Entry::parse_name("other.conf", Kind::Conf), None);
        assert_eq!(Entry::parse_name("nodows-2-b.conf.new", Kind::Conf), None);
        assert_eq!(
            Entry::parse_name("nodows-3-a+2-1.efi", Kind::Uki),
            Some((3, Slot::A, Some(2), 1))
        );
        assert_eq!(Entry::parse_name("nodows-3-a.efi", Kind::Conf), None);
        assert_eq!(Entry::parse_name("nodows-3-a.conf", Kind::Uki), None);
    }
}
