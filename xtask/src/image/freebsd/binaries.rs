//! initd and initctl cross-built for x86_64-unknown-freebsd (cargo zigbuild)
//! and checked to be FreeBSD ELF files; the host renderer.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use xshell::{cmd, Shell};

use super::super::ui::Ui;
use super::*;

pub struct FreebsdBinaries {
    pub initd: PathBuf,
    pub initctl: PathBuf,
    pub nodows: PathBuf,
}

/// initd and initctl for x86_64-unknown-freebsd (cargo zigbuild: zig links
/// against its bundled FreeBSD libc stubs), and the host renderer.
pub fn build_binaries(
    ui: &mut Ui,
    source: &Path,
    target_dir: &Path,
) -> anyhow::Result<FreebsdBinaries> {
    let sh = Shell::new()?;
    let manifest = super::super::host::workspace_manifest(source);
    if cmd!(sh, "cargo-zigbuild --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        bail!("cargo zigbuild is missing: install it with `pip install ziglang cargo-zigbuild`");
    }
    crate::toolchain::ensure_target(crate::toolchain::FREEBSD)?;
    ui.run(
        cmd!(
            sh,
            "cargo zigbuild --release --manifest-path {manifest} -p initd --target x86_64-unknown-freebsd"
        )
        .env("CARGO_TARGET_DIR", target_dir),
    )?;
    ui.run(
        cmd!(
            sh,
            "cargo build --release --manifest-path {manifest} -p render --bin nodows"
        )
        .env("CARGO_TARGET_DIR", target_dir),
    )?;
    let freebsd = target_dir.join("x86_64-unknown-freebsd/release");
    let binaries = FreebsdBinaries {
        initd: freebsd.join("initd"),
        initctl: freebsd.join("initctl"),
        nodows: target_dir.join("release/nodows"),
    };
    for binary in [&binaries.initd, &binaries.initctl, &binaries.nodows] {
        if !binary.is_file() {
            bail!("{} was not built", binary.display());
        }
    }
    for binary in [&binaries.initd, &binaries.initctl] {
        if !is_freebsd_elf(binary)? {
            bail!(
                "{} is not a FreeBSD ELF (neither EI_OSABI 9 nor a FreeBSD ABI note)",
                binary.display()
            );
        }
    }
    Ok(binaries)
}

/// The ELF header's EI_OSABI byte of a file.
pub fn elf_osabi(path: &Path) -> anyhow::Result<u8> {
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .with_context(|| format!("cannot read the ELF header of {}", path.display()))?;
    if &header[..4] != b"\x7fELF" {
        bail!("{} is not an ELF file", path.display());
    }
    Ok(header[7])
}

/// True for a FreeBSD ELF: EI_OSABI is 9, or a PT_NOTE segment holds the
/// FreeBSD ABI tag note (name `FreeBSD`, type 1), which is what lld writes.
pub fn is_freebsd_elf(path: &Path) -> anyhow::Result<bool> {
    if elf_osabi(path)? == ELFOSABI_FREEBSD {
        return Ok(true);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(freebsd_abi_note(&bytes).is_some())
}

/// The FreeBSD version in the ABI tag note of a little-endian ELF64, e.g. 1400500.
pub fn freebsd_abi_note(bytes: &[u8]) -> Option<u32> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(32)? as usize, u16_at(54)? as usize, u16_at(56)?);
    for index in 0..phnum as usize {
        let header = phoff + index * phentsize;
        if u32_at(header)? != 4 {
            continue; // not PT_NOTE
        }
        let (offset, size) = (u64_at(header + 8)? as usize, u64_at(header + 32)? as usize);
        let mut at = offset;
        while at + 12 <= offset + size {
            let (namesz, descsz, kind) = (
                u32_at(at)? as usize,
                u32_at(at + 4)? as usize,
                u32_at(at + 8)?,
            );
            let name = bytes.get(at + 12..at + 12 + namesz)?;
            let desc = at + 12 + namesz.div_ceil(4) * 4;
            if name == b"FreeBSD\0" && kind == 1 && descsz == 4 {
                return u32_at(desc);
            }
            at = desc + descsz.div_ceil(4) * 4;
        }
    }
    None
}
