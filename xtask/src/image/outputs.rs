//! The output formats of an image: one variant of `Format` each, with one
//! function that writes it from the finished raw disk. The image definition
//! (or the profile) lists them under `<outputs>`, `--format` overrides.
//! Every format is written into the build's temporary output directory, so
//! nothing reaches a final path before the whole image is done.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use xshell::{cmd, Shell};

use super::bmap::Bmap;
use super::ui::Ui;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// The GPT disk itself, with its block map (`NAME.bmap`) beside it.
    Raw,
    /// QEMU/KVM, OpenStack: qcow2 with zstd-compressed clusters.
    Qcow2,
    /// VMware and VirtualBox: a streamOptimized VMDK.
    Vmdk,
    /// Azure and Hyper-V: a fixed VHD, its size a whole number of MiB.
    Vhd,
    /// Hyper-V: a dynamic VHDX.
    Vhdx,
    /// Google Compute Engine: `disk.raw` in a gzip'd (sparse, GNU) tar.
    Gce,
    /// The raw disk gzip'd, for downloads.
    RawGz,
    /// The raw disk compressed with zstd, for downloads.
    RawZst,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Gce,
        Format::RawGz,
        Format::RawZst,
    ];

    /// The name users write (`<format>`, `--format`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Gce => "gce",
            Format::RawGz => "raw.gz",
            Format::RawZst => "raw.zst",
        }
    }

    /// The file the format writes for the image `name` (`debian-dev`).
    pub fn file_name(self, name: &str) -> String {
        match self {
            Format::Gce => format!("{name}.gce.tar.gz"),
            other => format!("{name}.{}", other.name()),
        }
    }

    /// The files it writes, the main one first.
    pub fn files(self, name: &str) -> Vec<String> {
        match self {
            Format::Raw => vec![self.file_name(name), format!("{name}.bmap")],
            other => vec![other.file_name(name)],
        }
    }

    /// Writes this format of the raw disk `OUT/NAME.raw` into `out`.
    pub fn write(self, ui: &Ui, out: &Path, name: &str) -> anyhow::Result<()> {
        let raw = out.join(Format::Raw.file_name(name));
        let target = out.join(self.file_name(name));
        match self {
            Format::Raw => write_bmap(&raw, &out.join(format!("{name}.bmap"))),
            Format::Qcow2 => write_qcow2(ui, &raw, &target),
            Format::Vmdk => write_vmdk(ui, &raw, &target),
            Format::Vhd => write_vhd(ui, &raw, &target),
            Format::Vhdx => write_vhdx(ui, &raw, &target),
            Format::Gce => write_gce(&raw, &target),
            Format::RawGz => write_raw_gz(&raw, &target),
            Format::RawZst => write_raw_zst(&raw, &target),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown output format `{text}` (known: {})",
                    Format::ALL.map(Format::name).join(", ")
                )
            })
    }
}

fn write_bmap(raw: &Path, bmap_path: &Path) -> anyhow::Result<()> {
    let bmap = Bmap::of_image(raw)?;
    std::fs::write(bmap_path, bmap.to_xml())
        .with_context(|| format!("cannot write {}", bmap_path.display()))
}

/// Compressed clusters, zstd rather than zlib: a sixth of the time (1.6 s
/// against 10 s for the dev image on 2 busy cores) and smaller; QEMU 5.1
/// and later read them.
fn write_qcow2(ui: &Ui, raw: &Path, target: &Path) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    ui.run(cmd!(
        sh,
        "qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd {raw} {target}"
    ))
}

fn write_vmdk(ui: &Ui, raw: &Path, target: &Path) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    ui.run(cmd!(
        sh,
        "qemu-img convert -f raw -O vmdk -o subformat=streamOptimized {raw} {target}"
    ))
}

/// Azure takes a fixed VHD whose virtual size is a whole number of MiB;
/// `force_size` keeps qemu-img from rounding it to a CHS geometry.
fn write_vhd(ui: &Ui, raw: &Path, target: &Path) -> anyhow::Result<()> {
    let size = std::fs::metadata(raw)?.len();
    if size % MIB != 0 {
        bail!(
            "{}: {size} bytes is not a whole number of MiB, which a VHD for Azure needs; give <disk size> in MiB",
            raw.display()
        );
    }
    let sh = Shell::new()?;
    ui.run(cmd!(
        sh,
        "qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on {raw} {target}"
    ))
}

fn write_vhdx(ui: &Ui, raw: &Path, target: &Path) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    ui.run(cmd!(
        sh,
        "qemu-img convert -f raw -O vhdx -o subformat=dynamic {raw} {target}"
    ))
}

/// GCE imports a gzip'd tar holding exactly `disk.raw`; the tar is GNU
/// sparse (only the data of the raw disk is stored), its header
/// deterministic.
fn write_gce(raw: &Path, target: &Path) -> anyhow::Result<()> {
    let output = std::fs::File::create(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let gzip = flate2::write::GzEncoder::new(
        std::io::BufWriter::with_capacity(super::sparse::CHUNK, output),
        flate2::Compression::default(),
    );
    let mut archive = tar::Builder::new(gzip);
    archive.mode(tar::HeaderMode::Deterministic);
    archive.sparse(true);
    let mut disk =
        std::fs::File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    archive
        .append_file("disk.raw", &mut disk)
        .with_context(|| format!("cannot write {}", target.display()))?;
    let gzip = archive.into_inner()?;
    gzip.finish()?.flush()?;
    Ok(())
}

fn write_raw_gz(raw: &Path, target: &Path) -> anyhow::Result<()> {
    let output = std::fs::File::create(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut gzip = flate2::write::GzEncoder::new(
        std::io::BufWriter::with_capacity(super::sparse::CHUNK, output),
        flate2::Compression::default(),
    );
    compress(raw, &mut gzip)?;
    gzip.finish()?.flush()?;
    Ok(())
}

fn write_raw_zst(raw: &Path, target: &Path) -> anyhow::Result<()> {
    let output = std::fs::File::create(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut zstd = zstd::Encoder::new(
        std::io::BufWriter::with_capacity(super::sparse::CHUNK, output),
        zstd::DEFAULT_COMPRESSION_LEVEL,
    )?;
    compress(raw, &mut zstd)?;
    zstd.finish()?.flush()?;
    Ok(())
}

/// The whole raw disk into a compressor; its holes come from a zero buffer.
fn compress(raw: &Path, compressor: &mut impl std::io::Write) -> anyhow::Result<()> {
    let length = std::fs::metadata(raw)?.len();
    super::sparse::read_range(raw, 0, length, |bytes| {
        compressor.write_all(bytes)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_name_parses_back_and_unknown_names_list_the_known_ones() {
        for format in Format::ALL {
            assert_eq!(format.name().parse::<Format>(), Ok(format));
        }
        let error = "iso".parse::<Format>().unwrap_err();
        assert!(error.contains("raw.zst"), "{error}");
        assert_eq!(Format::Gce.file_name("debian-dev"), "debian-dev.gce.tar.gz");
    }
}
