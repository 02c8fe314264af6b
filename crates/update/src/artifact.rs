//! The update artifact: a tar file whose members are, in this order,
//! `manifest.json`, `manifest.json.sig`, then each part zstd-compressed:
//! `vmlinuz.zst`, `initrd.img.zst`, `rootfs.ext4.zst`, or on verified
//! images `uki-a.efi.zst`, `uki-b.efi.zst` (each slot's signed unified
//! kernel image, its command line naming that slot) and `rootfs.ext4.zst`
//! (the root with its dm-verity hash tree). The manifest names
//! the image, profile, version and architecture, and every part's size,
//! compressed size and the sha256 of its compressed bytes; the signature
//! covers the manifest's exact bytes. So a stream can be checked before a
//! byte is written, and every part while it is written.

use std::io::{Read, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::entries;
use crate::keys::{PublicKey, SigningKey};
use crate::{hex, io_error, Error, Release, Result, Slot};

pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
pub const FORMAT: u32 = 1;
/// The try counter of a new entry (`+3`).
pub const DEFAULT_TRIES: u32 = 3;
const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    Vmlinuz,
    Initrd,
    Rootfs,
    #[serde(rename = "uki-a")]
    UkiA,
    #[serde(rename = "uki-b")]
    UkiB,
}

impl PartKind {
    /// The parts of an artifact for type #1 entries (kernel and initrd).
    pub const KERNEL: [PartKind; 3] = [PartKind::Vmlinuz, PartKind::Initrd, PartKind::Rootfs];
    /// The parts of an artifact for verified images (a UKI per slot).
    pub const UKIS: [PartKind; 3] = [PartKind::UkiA, PartKind::UkiB, PartKind::Rootfs];

    /// The member's name in the artifact.
    pub fn file(self) -> &'static str {
        match self {
            PartKind::Vmlinuz => "vmlinuz.zst",
            PartKind::Initrd => "initrd.img.zst",
            PartKind::Rootfs => "rootfs.ext4.zst",
            PartKind::UkiA => "uki-a.efi.zst",
            PartKind::UkiB => "uki-b.efi.zst",
        }
    }

    /// The UKI part of `slot`.
    pub fn uki(slot: Slot) -> PartKind {
        match slot {
            Slot::A => PartKind::UkiA,
            Slot::B => PartKind::UkiB,
        }
    }

    /// Whether an update of `slot` puts this part on the ESP (the other
    /// slot's UKI is only checked against its hash).
    fn goes_to_esp(self, slot: Slot) -> bool {
        match self {
            PartKind::Vmlinuz | PartKind::Initrd => true,
            PartKind::Rootfs => false,
            PartKind::UkiA | PartKind::UkiB => self == PartKind::uki(slot),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub kind: PartKind,
    pub file: String,
    pub compression: String,
    /// Bytes after decompression.
    pub size: u64,
    /// Bytes in the artifact.
    pub stored_size: u64,
    /// sha256 of the stored (compressed) bytes.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub image: String,
    pub profile: String,
    pub version: String,
    pub architecture: String,
    pub kernel_version: String,
    /// The kernel command line without `root=` and `nodows.slot=` (the
    /// update adds both for the slot it writes to a type #1 entry; a UKI
    /// carries its own, signed).
    pub cmdline: String,
    pub parts: Vec<Part>,
}

impl Manifest {
    pub fn part(&self, kind: PartKind) -> Option<&Part> {
        self.parts.iter().find(|part| part.kind == kind)
    }

    /// The artifact boots through unified kernel images.
    pub fn has_ukis(&self) -> bool {
        self.part(PartKind::UkiA).is_some()
    }
}

/// How the image an artifact is made from boots.
pub enum Boot<'a> {
    /// A kernel and an initrd, named by a type #1 entry.
    Kernel { vmlinuz: &'a Path, initrd: &'a Path },
    /// A signed unified kernel image for each slot.
    Ukis { a: &'a Path, b: &'a Path },
}

/// What the build knows about the image an artifact is made from.
pub struct Source<'a> {
    pub release: &'a Release,
    pub kernel_version: &'a str,
    pub cmdline: &'a str,
    pub boot: Boot<'a>,
    pub rootfs: &'a Path,
}

/// Writes the signed artifact to `out` (through `out.tmp`, renamed when
/// complete). `work` holds the compressed parts meanwhile.
pub fn write(
    source: &Source,
    key: &SigningKey,
    level: i32,
    out: &Path,
    work: &Path,
) -> Result<Manifest> {
    let mut parts = Vec::new();
    let mut stored = Vec::new();
    let inputs = match source.boot {
        Boot::Kernel { vmlinuz, initrd } => [
            (PartKind::Vmlinuz, vmlinuz),
            (PartKind::Initrd, initrd),
            (PartKind::Rootfs, source.rootfs),
        ],
        Boot::Ukis { a, b } => [
            (PartKind::UkiA, a),
            (PartKind::UkiB, b),
            (PartKind::Rootfs, source.rootfs),
        ],
    };
    for (kind, input) in inputs {
        let compressed = work.join(kind.file());
        let (size, stored_size, sha256) = compress(input, &compressed, level)?;
        parts.push(Part {
            kind,
            file: kind.file().to_string(),
            compression: "zstd".to_string(),
            size,
            stored_size,
            sha256,
        });
        stored.push(compressed);
    }
    let manifest = Manifest {
        format: FORMAT,
        image: source.release.image.clone(),
        profile: source.release.profile.clone(),
        version: source.release.version.clone(),
        architecture: source.release.architecture.clone(),
        kernel_version: source.kernel_version.to_string(),
        cmdline: source.cmdline.to_string(),
        parts,
    };
    let mut manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|error| Error::System(format!("manifest: {error}")))?;
    manifest_bytes.push(b'\n');
    let signature = key.sign(&manifest_bytes);
    let temporary = out.with_extension("tmp");
    let file = std::fs::File::create(&temporary).map_err(io_error(temporary.display()))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |name: &str, size: u64, reader: &mut dyn Read| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, reader)
            .map_err(io_error(temporary.display()))
    };
    add(
        MANIFEST,
        manifest_bytes.len() as u64,
        &mut manifest_bytes.as_slice(),
    )?;
    add(SIGNATURE, signature.len() as u64, &mut signature.as_bytes())?;
    for (part, path) in manifest.parts.iter().zip(&stored) {
        let mut file = std::fs::File::open(path).map_err(io_error(path.display()))?;
        add(&part.file, part.stored_size, &mut file)?;
        std::fs::remove_file(path).map_err(io_error(path.display()))?;
    }
    builder
        .into_inner()
        .and_then(|mut writer| writer.flush())
        .map_err(io_error(temporary.display()))?;
    std::fs::rename(&temporary, out).map_err(io_error(out.display()))?;
    Ok(manifest)
}

/// zstd-compresses `input` into `output`: (input size, output size, sha256 of the output).
fn compress(input: &Path, output: &Path, level: i32) -> Result<(u64, u64, String)> {
    let mut reader = std::fs::File::open(input).map_err(io_error(input.display()))?;
    let file = std::fs::File::create(output).map_err(io_error(output.display()))?;
    let mut hashing = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut encoder =
        zstd::Encoder::new(&mut hashing, level).map_err(io_error(output.display()))?;
    let size = std::io::copy(&mut reader, &mut encoder).map_err(io_error(input.display()))?;
    encoder.finish().map_err(io_error(output.display()))?;
    hashing.inner.flush().map_err(io_error(output.display()))?;
    Ok((size, hashing.count, hex(&hashing.hasher.finalize())))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.count += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..count]);
        self.count += count as u64;
        Ok(count)
    }
}

/// Where an update goes: the inactive slot's block device (or, in tests,
/// a file of the slot's size), its PARTUUID, and the ESP's mount point.
#[derive(Clone, Debug)]
pub struct Target {
    pub slot: Slot,
    pub slot_device: PathBuf,
    pub slot_size: u64,
    pub slot_partuuid: String,
    pub esp: PathBuf,
    /// The running system's release: the artifact must be for the same
    /// image, profile and architecture.
    pub running: Release,
    pub tries: u32,
}

/// What an applied update did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub manifest: Manifest,
    pub slot: Slot,
    pub entry: String,
    pub bytes_read: u64,
}

/// Applies an artifact read from `reader` to `target`. Nothing is written
/// until the signature and the manifest are checked; then the slot's old
/// entry is removed, the parts are written while hashed, and the new entry
/// is installed only once every part matched and is on disk.
pub fn apply(reader: impl Read, key: &PublicKey, target: &Target) -> Result<Applied> {
    let mut counted = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        count: 0,
    };
    let (manifest, entry) = apply_archive(&mut counted, key, target)?;
    Ok(Applied {
        manifest,
        slot: target.slot,
        entry,
        bytes_read: counted.count,
    })
}

fn apply_archive<R: Read>(
    reader: &mut HashingReader<R>,
    key: &PublicKey,
    target: &Target,
) -> Result<(Manifest, String)> {
    let mut archive = tar::Archive::new(reader);
    let mut members = archive
        .entries()
        .map_err(|error| Error::Refused(format!("not a tar archive: {error}")))?;
    let manifest_bytes = read_small_member(&mut members, MANIFEST, 1 << 20)?.ok_or_else(|| {
        Error::Refused(format!(
            "not a nodows update artifact: it does not start with {MANIFEST}"
        ))
    })?;
    let signature = read_small_member(&mut members, SIGNATURE, 4096)?.ok_or_else(|| {
        Error::Refused(format!(
            "the artifact is unsigned: no {SIGNATURE} after {MANIFEST}"
        ))
    })?;
    key.verify(&manifest_bytes, &String::from_utf8_lossy(&signature))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|error| Error::Refused(format!("{MANIFEST}: {error}")))?;
    check(&manifest, target)?;

    // From here on the slot is written: first make sure nothing boots it.
    entries::remove_slot_entries(&target.esp, target.slot)?;
    let boot_dir = target.esp.join("nodows").join(target.slot.letter());
    // A UKI entry is its file: written under FILE.new, renamed last.
    let uki_entry = match manifest.has_ukis() {
        true => {
            let dir = target.esp.join(entries::UKI_DIR);
            std::fs::create_dir_all(&dir).map_err(io_error(dir.display()))?;
            let file =
                entries::next_name(&target.esp, target.slot, target.tries, entries::Kind::Uki)?;
            Some((entries::temporary_path(&dir.join(&file)), file))
        }
        false => {
            std::fs::create_dir_all(&boot_dir).map_err(io_error(boot_dir.display()))?;
            None
        }
    };
    for part in &manifest.parts {
        let member = members
            .next()
            .ok_or_else(|| truncated(&part.file, "missing"))?
            .map_err(|error| truncated(&part.file, &error.to_string()))?;
        let name = member
            .path()
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != part.file {
            return Err(Error::Refused(format!(
                "member `{name}` where the manifest says `{}` comes next",
                part.file
            )));
        }
        if member.header().size().ok() != Some(part.stored_size) {
            return Err(Error::Refused(format!(
                "{}: its size in the archive is not the manifest's {}",
                part.file, part.stored_size
            )));
        }
        let mut hashing = HashingReader {
            inner: member,
            hasher: Sha256::new(),
            count: 0,
        };
        match part.kind {
            PartKind::Rootfs => {
                let device = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&target.slot_device)
                    .map_err(io_error(target.slot_device.display()))?;
                let written = decompress_into(&mut hashing, part, &device, &target.slot_device)?;
                finish_part(&mut hashing, part, written)?;
                device
                    .sync_all()
                    .map_err(io_error(target.slot_device.display()))?;
            }
            PartKind::Vmlinuz | PartKind::Initrd => {
                let path = boot_dir.join(match part.kind {
                    PartKind::Vmlinuz => "vmlinuz",
                    _ => "initrd.img",
                });
                let temporary = entries::temporary_path(&path);
                write_esp_file(&mut hashing, part, &temporary)?;
                std::fs::rename(&temporary, &path).map_err(io_error(path.display()))?;
                entries::sync_dir(&boot_dir)?;
            }
            PartKind::UkiA | PartKind::UkiB => match &uki_entry {
                Some((temporary, _)) if part.kind.goes_to_esp(target.slot) => {
                    write_esp_file(&mut hashing, part, temporary)?;
                }
                // The other slot's UKI: checked, not kept.
                _ => finish_part(&mut hashing, part, part.size)?,
            },
        }
    }
    let entry = match uki_entry {
        Some((temporary, file)) => entries::install_uki(&target.esp, &temporary, &file)?,
        None => {
            let options = format!(
                "root=PARTUUID={} {} nodows.slot={}",
                target.slot_partuuid, manifest.cmdline, target.slot
            );
            let text = entries::entry_text(
                &format!(
                    "nodows {} {} (slot {})",
                    manifest.image, manifest.version, target.slot
                ),
                &manifest.version,
                target.slot,
                &options,
            );
            entries::install(&target.esp, target.slot, target.tries, &text)?
        }
    };
    Ok((manifest, entry))
}

/// Decompresses a part into the ESP file `temporary`, checks its hash and
/// fsyncs it; removes the file when the part does not match.
fn write_esp_file<R: Read>(
    hashing: &mut HashingReader<R>,
    part: &Part,
    temporary: &Path,
) -> Result<()> {
    let file = std::fs::File::create(temporary).map_err(io_error(temporary.display()))?;
    let checked = decompress_into(hashing, part, &file, temporary)
        .and_then(|written| finish_part(hashing, part, written));
    if let Err(error) = checked {
        let _ = std::fs::remove_file(temporary);
        return Err(error);
    }
    file.sync_all().map_err(io_error(temporary.display()))
}

fn truncated(file: &str, why: &str) -> Error {
    Error::Refused(format!(
        "the artifact is truncated or damaged at {file}: {why}"
    ))
}

/// Checks a verified manifest against the running system and the target,
/// before anything is written.
fn check(manifest: &Manifest, target: &Target) -> Result<()> {
    if manifest.format != FORMAT {
        return Err(Error::Refused(format!(
            "{MANIFEST}: format {} is not {FORMAT}; update nodows first",
            manifest.format
        )));
    }
    let running = &target.running;
    for (what, theirs, ours) in [
        ("image", &manifest.image, &running.image),
        (
            "architecture",
            &manifest.architecture,
            &running.architecture,
        ),
        ("profile", &manifest.profile, &running.profile),
    ] {
        if theirs != ours {
            return Err(Error::Refused(format!(
                "the artifact is for {what} `{theirs}`; this appliance runs {what} `{ours}`"
            )));
        }
    }
    let kinds: Vec<PartKind> = manifest.parts.iter().map(|part| part.kind).collect();
    if kinds != PartKind::KERNEL && kinds != PartKind::UKIS {
        return Err(Error::Refused(format!(
            "{MANIFEST}: the parts must be vmlinuz, initrd, rootfs or uki-a, uki-b, rootfs in this order"
        )));
    }
    for part in &manifest.parts {
        if part.compression != "zstd" || part.file != part.kind.file() {
            return Err(Error::Refused(format!(
                "{MANIFEST}: part {} must be `{}`, zstd",
                part.file,
                part.kind.file()
            )));
        }
    }
    // systemd-boot sorts UKI entries (they carry an os-release) before
    // every type #1 entry: a kernel-and-initrd version would never boot
    // while a UKI entry is there.
    if !manifest.has_ukis()
        && entries::list(&target.esp)?
            .iter()
            .any(|entry| entry.kind == entries::Kind::Uki && entry.slot != target.slot)
    {
        return Err(Error::Refused(
            "this appliance boots signed unified kernel images (a <verified-boot/> profile); the artifact has a plain kernel and initrd, which systemd-boot would sort after them".to_string(),
        ));
    }
    if let Some(rootfs) = manifest.part(PartKind::Rootfs) {
        if rootfs.size > target.slot_size {
            return Err(Error::Refused(format!(
                "the root file system is {} bytes; slot {} ({}) has only {}",
                rootfs.size,
                target.slot,
                target.slot_device.display(),
                target.slot_size
            )));
        }
    }
    let boot_bytes: u64 = manifest
        .parts
        .iter()
        .filter(|part| part.kind.goes_to_esp(target.slot))
        .map(|part| part.size)
        .sum();
    let free = free_bytes(&target.esp)?;
    // The slot's old kernel and initrd are replaced through temporary files.
    if boot_bytes > free {
        return Err(Error::Refused(format!(
            "the boot files (kernel and initrd, or the UKI) need {boot_bytes} bytes; the ESP {} has {free} free",
            target.esp.display()
        )));
    }
    if target.tries == 0 {
        return Err(Error::Refused("--tries must be at least 1".to_string()));
    }
    Ok(())
}

fn free_bytes(path: &Path) -> Result<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::System(format!("{}: path has a NUL byte", path.display())))?;
    // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io_error(path.display())(std::io::Error::last_os_error()));
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Reads the next member if it is `name` and at most `limit` bytes.
fn read_small_member<R: Read>(
    members: &mut tar::Entries<'_, R>,
    name: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let Some(member) = members.next() else {
        return Ok(None);
    };
    let mut member = member.map_err(|error| truncated(name, &error.to_string()))?;
    let path = member
        .path()
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_default();
    if path != name {
        return Ok(None);
    }
    if member.header().size().unwrap_or(u64::MAX) > limit {
        return Err(Error::Refused(format!(
            "{name} is larger than {limit} bytes"
        )));
    }
    let mut bytes = Vec::new();
    member
        .read_to_end(&mut bytes)
        .map_err(|error| truncated(name, &error.to_string()))?;
    Ok(Some(bytes))
}

/// Decompresses a part into `file` at offset 0, in 1 MiB chunks; a chunk of
/// zeros is written as a zeroed range (fallocate), which costs no data
/// transfer on a virtual disk. Returns the bytes written.
fn decompress_into<R: Read>(
    compressed: &mut R,
    part: &Part,
    file: &std::fs::File,
    path: &Path,
) -> Result<u64> {
    let mut decoder = zstd::Decoder::new(compressed)
        .map_err(|error| truncated(&part.file, &error.to_string()))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(truncated(&part.file, &error.to_string())),
            }
        }
        if filled == 0 {
            break;
        }
        if offset + filled as u64 > part.size {
            return Err(Error::Refused(format!(
                "{} decompresses to more than the manifest's {} bytes",
                part.file, part.size
            )));
        }
        let chunk = &buffer[..filled];
        if !(chunk.iter().all(|byte| *byte == 0) && zero_range(file, offset, filled as u64)) {
            file.write_all_at(chunk, offset)
                .map_err(io_error(path.display()))?;
        }
        offset += filled as u64;
    }
    // Drain the compressed stream to its end, for the hash.
    let mut rest = decoder.finish();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|error| truncated(&part.file, &error.to_string()))?;
    if offset != part.size {
        return Err(truncated(
            &part.file,
            &format!(
                "{offset} bytes decompressed, the manifest says {}",
                part.size
            ),
        ));
    }
    Ok(offset)
}

/// Zeroes a range without writing data (FALLOC_FL_ZERO_RANGE on files,
/// BLKZEROOUT's path on block devices); false when unsupported.
fn zero_range(file: &std::fs::File, offset: u64, length: u64) -> bool {
    use std::os::unix::io::AsRawFd as _;
    // SAFETY: fallocate on an open descriptor with a valid range.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            length as libc::off_t,
        ) == 0
    }
}

fn finish_part<R: Read>(hashing: &mut HashingReader<R>, part: &Part, written: u64) -> Result<()> {
    std::io::copy(hashing, &mut std::io::sink())
        .map_err(|error| truncated(&part.file, &error.to_string()))?;
    if hashing.count != part.stored_size {
        return Err(truncated(
            &part.file,
            &format!("{} of {} bytes", hashing.count, part.stored_size),
        ));
    }
    let sha256 = hex(&hashing.hasher.clone().finalize());
    if sha256 != part.sha256 {
        return Err(Error::Refused(format!(
            "{}: sha256 {sha256} is not the manifest's {}; the artifact is damaged or altered (slot left without a boot entry)",
            part.file, part.sha256
        )));
    }
    debug_assert_eq!(written, part.size);
    Ok(())
}
