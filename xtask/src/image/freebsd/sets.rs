//! The distribution sets: base.txz and kernel.txz checked (readable, xz,
//! amd64, their version) before anything slow runs.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use xshell::{cmd, Shell};

use super::super::ui::TempDir;
use super::super::util;
use super::super::BadInput;
use super::*;

/// What the distribution sets are, learnt before anything slow runs.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub base: PathBuf,
    pub kernel: PathBuf,
    /// USERLAND_VERSION of the set's /bin/freebsd-version, e.g. 14.1-RELEASE.
    pub version: String,
    pub base_sha256: String,
    pub kernel_sha256: String,
}

/// The x86-64 check of an ELF header: Ok(()) for amd64, else what it is.
pub fn check_elf_amd64(header: &[u8], what: &str) -> Result<(), BadInput> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return Err(BadInput(format!("{what}: not an ELF file")));
    }
    let machine = if header[5] == 2 {
        u16::from_be_bytes([header[18], header[19]])
    } else {
        u16::from_le_bytes([header[18], header[19]])
    };
    if header[4] != 2 || machine != EM_X86_64 {
        let name = match machine {
            3 => "i386",
            40 => "arm",
            183 => "aarch64",
            243 => "riscv",
            20 | 21 => "powerpc",
            _ => "unknown",
        };
        return Err(BadInput(format!(
            "{what}: the set is for {name} (ELF machine {machine}, class {}), this image is amd64: use the amd64 sets",
            header[4]
        )));
    }
    Ok(())
}

/// USERLAND_VERSION="14.1-RELEASE" from /bin/freebsd-version.
pub fn parse_freebsd_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("USERLAND_VERSION=")?;
        let value = value.trim_matches('"').trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    util::sha256_file(path)
}

/// Checks the sets: both readable, xz-compressed tars, base holds
/// ./bin/freebsd-version and an amd64 ./bin/sh. Reads only the start of
/// base.txz (`--occurrence` stops tar once both are found).
pub fn check_distribution(dir: &Path) -> anyhow::Result<Distribution> {
    let base = dir.join("base.txz");
    let kernel = dir.join("kernel.txz");
    for set in [&base, &kernel] {
        let mut file = std::fs::File::open(set).map_err(|error| {
            BadInput(format!(
                "{}: cannot read the distribution set: {error}",
                set.display()
            ))
        })?;
        let mut magic = [0u8; 6];
        if file.read_exact(&mut magic).is_err() || magic != *b"\xfd7zXZ\x00" {
            return Err(BadInput(format!(
                "{}: not an xz-compressed distribution set",
                set.display()
            ))
            .into());
        }
    }
    let sh = Shell::new()?;
    let probe = tempdir("nodows-freebsd-probe")?;
    let probe_dir = probe.path();
    let output = cmd!(
        sh,
        "tar --extract --xz --file {base} --directory {probe_dir} --occurrence=1 --warning=no-unknown-keyword ./bin/freebsd-version ./bin/sh"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let version_path = probe_dir.join("bin/freebsd-version");
    let sh_path = probe_dir.join("bin/sh");
    if !version_path.is_file() || !sh_path.is_file() {
        return Err(BadInput(format!(
            "{}: no ./bin/freebsd-version or ./bin/sh in the set (is it a FreeBSD base.txz?){}",
            base.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .map(|line| format!(": {line}"))
                .unwrap_or_default()
        ))
        .into());
    }
    let mut header = [0u8; 64];
    let read = std::fs::File::open(&sh_path)?.read(&mut header)?;
    check_elf_amd64(&header[..read], &format!("{}: ./bin/sh", base.display()))?;
    let version =
        parse_freebsd_version(&std::fs::read_to_string(&version_path)?).ok_or_else(|| {
            BadInput(format!(
                "{}: ./bin/freebsd-version has no USERLAND_VERSION=\"...\" line",
                base.display()
            ))
        })?;
    Ok(Distribution {
        base_sha256: sha256_of(&base)?,
        kernel_sha256: sha256_of(&kernel)?,
        base,
        kernel,
        version,
    })
}

/// A scratch directory under the system's temporary directory.
pub(super) fn tempdir(name: &str) -> anyhow::Result<TempDir> {
    TempDir::create(&std::env::temp_dir(), name)
}
