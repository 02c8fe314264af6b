//! nodows A/B updates (issue #14): signed update artifacts, the inactive
//! root slot written from a stream, systemd-boot entries with boot counting,
//! and blessing.
//!
//! The disk has an ESP, two root slots (`root-a`, `root-b`, GPT partition
//! names) and a data partition. Each slot has one boot entry on the ESP,
//! `loader/entries/nodows-GEN-SLOT[+LEFT[-DONE]].conf`, with its kernel and
//! initrd under `/nodows/SLOT/`; on verified images (`<verified-boot/>`)
//! the entry is the slot's signed unified kernel image instead,
//! `EFI/Linux/nodows-GEN-SLOT[+LEFT[-DONE]].efi`, whose command line
//! carries the slot's dm-verity root hash. `loader.conf` says `default nodows-*`, and
//! systemd-boot sorts entries by id, highest first, with entries that have no
//! tries left last: the newest entry that still has tries (or is blessed)
//! boots.
//!
//! An update (`artifact::apply`) checks the signature and the manifest
//! before it writes a byte, removes the entry of the slot it is about to
//! write, writes and hashes the slot and the slot's kernel and initrd,
//! fsyncs, and only then installs the new entry with a try counter (`+3`)
//! under a temporary name renamed into place. A power cut at any point
//! leaves either no entry for that slot (the old version boots) or a
//! complete one.

pub mod artifact;
pub mod entries;
pub mod http;
pub mod keys;
pub mod pe;
pub mod system;

use std::fmt::Display;

/// Every failure of an update; `Refused` is bad input (exit code 2): the
/// artifact, its signature or its manifest, refused before the boot entries
/// change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refused: {0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    System(String),
}

impl Error {
    /// 2 for a refused artifact or bad usage, 1 for every other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused(_) => 2,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an io::Error with the path (or thing) it happened on.
pub(crate) fn io_error(path: impl Display) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        path: path.to_string(),
        source,
    }
}

/// One of the two root slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn parse(text: &str) -> Option<Slot> {
        match text {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    /// The slot's GPT partition name.
    pub fn partition_name(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }
}

impl Display for Slot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.letter())
    }
}

/// `/etc/nodows/release` of an A/B image: what it is, for the update's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub image: String,
    pub profile: String,
    pub version: String,
    pub architecture: String,
}

impl Release {
    pub const PATH: &'static str = "/etc/nodows/release";

    pub fn to_text(&self) -> String {
        format!(
            "IMAGE={}\nPROFILE={}\nVERSION={}\nARCHITECTURE={}\n",
            self.image, self.profile, self.version, self.architecture
        )
    }

    pub fn parse(text: &str, path: &str) -> Result<Release> {
        let value = |key: &str| -> Result<String> {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(|value| value.trim().to_string())
                .ok_or_else(|| Error::System(format!("{path}: no {key}= line")))
        };
        Ok(Release {
            image: value("IMAGE")?,
            profile: value("PROFILE")?,
            version: value("VERSION")?,
            architecture: value("ARCHITECTURE")?,
        })
    }

    pub fn read(path: &std::path::Path) -> Result<Release> {
        let text = std::fs::read_to_string(path).map_err(io_error(path.display()))?;
        Release::parse(&text, &path.display().to_string())
    }
}

/// Lowercase hex, as every file and message of this crate writes it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}
