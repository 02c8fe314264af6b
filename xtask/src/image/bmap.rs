//! The block map of a raw image, in the XML format bmaptool reads (version
//! 2.0): the image's size, its block size, and the ranges of blocks that
//! hold data, each with its sha256. `cargo xtask flash` writes only these
//! ranges and verifies them; everything else of the image is zeros.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};

use super::BadInput;

pub const BLOCK_SIZE: u64 = 4096;

/// One range of mapped blocks, `first..=last` as bmaptool numbers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<Range>,
}

impl Range {
    /// The byte range `[start, end)` of the image (the last block may be short).
    pub fn bytes(&self, bmap: &Bmap) -> (u64, u64) {
        (
            self.first * bmap.block_size,
            ((self.last + 1) * bmap.block_size).min(bmap.image_size),
        )
    }
}

impl Bmap {
    /// The block map of the raw image at `path`: its data extents widened
    /// to whole blocks and merged, each range hashed.
    pub fn of_image(path: &Path) -> anyhow::Result<Bmap> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let image_size = file.metadata()?.len();
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        for (start, end) in super::sparse::data_extents(&file, 0, image_size)? {
            let (first, last) = (start / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
            match blocks.last_mut() {
                Some((_, previous_last)) if first <= *previous_last + 1 => {
                    *previous_last = (*previous_last).max(last)
                }
                _ => blocks.push((first, last)),
            }
        }
        let mut bmap = Bmap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges: Vec::new(),
        };
        for (first, last) in blocks {
            let mut range = Range {
                first,
                last,
                sha256: String::new(),
            };
            let (start, end) = range.bytes(&bmap);
            let mut hasher = Sha256::new();
            super::util::hash_range(&mut hasher, path, start, end - start)?;
            range.sha256 = hex::encode(hasher.finalize());
            bmap.ranges.push(range);
        }
        Ok(bmap)
    }

    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// The bytes the mapped ranges hold.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|range| {
                let (start, end) = range.bytes(self);
                end - start
            })
            .sum()
    }

    /// The XML bmaptool reads; `BmapFileChecksum` is the sha256 of the
    /// text with that field's value as 64 ASCII zeros.
    pub fn to_xml(&self) -> String {
        let mut xml = String::new();
        let _ = write!(
            xml,
            "<?xml version=\"1.0\" ?>\n\
             <!-- The block map of a raw disk image: the blocks that hold data, with\n     their sha256 (bmaptool's format; written by cargo xtask image). -->\n\
             <bmap version=\"2.0\">\n\
             \x20   <ImageSize> {} </ImageSize>\n\
             \x20   <BlockSize> {} </BlockSize>\n\
             \x20   <BlocksCount> {} </BlocksCount>\n\
             \x20   <MappedBlocksCount> {} </MappedBlocksCount>\n\
             \x20   <ChecksumType> sha256 </ChecksumType>\n\
             \x20   <BmapFileChecksum> {} </BmapFileChecksum>\n\
             \x20   <BlockMap>\n",
            self.image_size,
            self.block_size,
            self.blocks_count(),
            self.mapped_blocks(),
            ZEROS,
        );
        for range in &self.ranges {
            let blocks = if range.first == range.last {
                range.first.to_string()
            } else {
                format!("{}-{}", range.first, range.last)
            };
            let _ = writeln!(
                xml,
                "        <Range chksum=\"{}\"> {blocks} </Range>",
                range.sha256
            );
        }
        xml.push_str("    </BlockMap>\n</bmap>\n");
        let checksum = hex::encode(Sha256::digest(xml.as_bytes()));
        xml.replacen(ZEROS, &checksum, 1)
    }

    /// Reads a bmap file and checks its own checksum.
    pub fn read(path: &Path) -> anyhow::Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the block map {}", path.display()))?;
        Bmap::parse(&text).map_err(|message| {
            BadInput(format!(
                "{}: {message}; rebuild the image with `cargo xtask image`",
                path.display()
            ))
            .into()
        })
    }

    fn parse(text: &str) -> Result<Bmap, String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(text);
        let mut element = String::new();
        let mut chksum = None;
        let mut fields = std::collections::BTreeMap::new();
        let mut ranges = Vec::new();
        loop {
            match reader
                .read_event()
                .map_err(|error| format!("invalid xml: {error}"))?
            {
                Event::Start(start) => {
                    element = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    chksum = start
                        .try_get_attribute("chksum")
                        .ok()
                        .flatten()
                        .map(|value| String::from_utf8_lossy(&value.value).into_owned());
                    if element == "bmap" {
                        let version = start
                            .try_get_attribute("version")
                            .ok()
                            .flatten()
                            .map(|value| String::from_utf8_lossy(&value.value).into_owned())
                            .unwrap_or_default();
                        if !version.starts_with("2.") {
                            return Err(format!("bmap version `{version}` is not 2.x"));
                        }
                    }
                }
                Event::Text(value) => {
                    let value = value
                        .unescape()
                        .map_err(|error| format!("invalid xml: {error}"))?
                        .trim()
                        .to_owned();
                    if value.is_empty() {
                        continue;
                    }
                    if element == "Range" {
                        let (first, last) = value.split_once('-').unwrap_or((&value, &value));
                        let number = |text: &str| {
                            text.trim()
                                .parse::<u64>()
                                .map_err(|_| format!("bad range `{value}`"))
                        };
                        let sha256 = chksum
                            .clone()
                            .ok_or_else(|| format!("range `{value}` has no chksum"))?;
                        ranges.push(Range {
                            first: number(first)?,
                            last: number(last)?,
                            sha256,
                        });
                    } else {
                        fields.insert(element.clone(), value);
                    }
                }
                Event::End(_) => element.clear(),
                Event::Eof => break,
                _ => {}
            }
        }
        let field = |name: &str| fields.get(name).ok_or(format!("no <{name}>"));
        let number = |name: &str| {
            field(name)?
                .parse::<u64>()
                .map_err(|_| format!("<{name}> is not a number"))
        };
        if field("ChecksumType")? != "sha256" {
            return Err("only sha256 block maps are read".to_owned());
        }
        let stated = field("BmapFileChecksum")?.clone();
        let zeroed = text.replacen(&stated, ZEROS, 1);
        if hex::encode(Sha256::digest(zeroed.as_bytes())) != stated {
            return Err("the file's BmapFileChecksum does not match its contents".to_owned());
        }
        let bmap = Bmap {
            image_size: number("ImageSize")?,
            block_size: number("BlockSize")?,
            ranges,
        };
        if bmap.block_size == 0 || bmap.blocks_count() != number("BlocksCount")? {
            return Err("<BlocksCount> does not match <ImageSize> and <BlockSize>".to_owned());
        }
        let mut next = 0;
        for range in &bmap.ranges {
            if range.first < next || range.last < range.first || range.last >= bmap.blocks_count() {
                return Err(format!(
                    "range {}-{} is out of order or outside the image",
                    range.first, range.last
                ));
            }
            next = range.last + 1;
        }
        Ok(bmap)
    }
}

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Fails unless the image at `path` has the bmap's size.
pub fn check_image_size(bmap: &Bmap, path: &Path) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .len();
    if size != bmap.image_size {
        bail!(
            "{}: {size} bytes, but its block map says {}; rebuild the image with `cargo xtask image`",
            path.display(),
            bmap.image_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bmap_reads_back_as_written_and_its_checksum_is_checked() {
        let bmap = Bmap {
            image_size: 10 * BLOCK_SIZE + 100,
            block_size: BLOCK_SIZE,
            ranges: vec![
                Range {
                    first: 0,
                    last: 1,
                    sha256: "a".repeat(64),
                },
                Range {
                    first: 10,
                    last: 10,
                    sha256: "b".repeat(64),
                },
            ],
        };
        let xml = bmap.to_xml();
        assert_eq!(Bmap::parse(&xml).unwrap(), bmap);
        assert_eq!(bmap.mapped_bytes(), 2 * BLOCK_SIZE + 100);
        let tampered = xml.replace("> 10 <", "> 9 <");
        assert!(Bmap::parse(&tampered)
            .unwrap_err()
            .contains("BmapFileChecksum"));
    }
}
