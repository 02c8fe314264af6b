//! manifest.json (image, profile, input hash, packages, every file's
//! sha256), sbom.spdx.json (SPDX 2.3, the installed Debian packages) and
//! SHA256SUMS.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::assemble::{FileEntry, Staging};
use super::disk::Layout;
use super::plan::Plan;
use super::ui::Ui;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The hash of every input of the image: the base's cache key, the plan,
/// SOURCE_DATE_EPOCH and every entry of the assembled tree (path, mode,
/// owner, content hash).
pub fn input_hash(
    base_key: &str,
    plan: &Plan,
    source_date_epoch: u64,
    files: &[FileEntry],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("base {base_key}\nepoch {source_date_epoch}\n").as_bytes());
    hasher.update(plan.render().as_bytes());
    for file in files {
        hasher.update(
            format!(
                "{} {} {:o} {}:{} {}\n",
                file.path, file.kind, file.mode, file.uid, file.gid, file.sha256
            )
            .as_bytes(),
        );
    }
    hex(&hasher.finalize())
}

pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source: String,
}

/// Installed packages from the image's /var/lib/dpkg/status.
pub fn installed_packages(staging: &Staging) -> anyhow::Result<Vec<Package>> {
    let path = staging.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut packages = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(": "))
                })
                .map(str::to_owned)
        };
        let (Some(name), Some(version), Some(status)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if !status.ends_with(" installed") {
            continue;
        }
        let source = field("Source")
            .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| name.clone());
        packages.push(Package {
            name,
            version,
            architecture: field("Architecture").unwrap_or_default(),
            source,
        });
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (Howard Hinnant's civil_from_days).
pub fn iso8601(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let seconds = epoch % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn spdx_id(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-deb-{cleaned}")
}

/// The sha256 of a file, sparse-aware: holes (SEEK_HOLE) are hashed from a
/// zero buffer instead of being read, data is read in 1 MiB chunks. The raw
/// disk is 1 GiB of mostly holes; SHA-256 must still see every zero byte,
/// but the kernel need not copy them.
pub(super) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let length = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .len();
    let mut hasher = Sha256::new();
    hash_range(&mut hasher, path, 0, length)?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds `length` bytes of `path` from `start` to `hasher`, sparse-aware
/// (see `sha256_file`); bytes past the file's end count as zeros.
pub(super) fn hash_range(
    hasher: &mut Sha256,
    path: &Path,
    start: u64,
    length: u64,
) -> anyhow::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    use std::os::unix::io::AsRawFd as _;
    const CHUNK: usize = 1 << 20;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_end = file.metadata()?.len();
    let end = start + length;
    let fd = file.as_raw_fd();
    let mut buffer = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let hash_zeros = |hasher: &mut Sha256, mut count: u64| {
        while count > 0 {
            let run = count.min(CHUNK as u64) as usize;
            hasher.update(&zeros[..run]);
            count -= run as u64;
        }
    };
    let mut position = start;
    while position < end {
        super::ui::check_interrupted()?;
        // The next data at or after `position`; ENXIO: only a hole is left.
        // A file system without SEEK_DATA reports everything as data.
        let data = if position < file_end {
            unsafe { libc::lseek(fd, position as libc::off_t, libc::SEEK_DATA) }
        } else {
            -1
        };
        let data = if data < 0 {
            end
        } else {
            (data as u64).min(end)
        };
        hash_zeros(hasher, data - position);
        if data >= end {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 { file_end } else { hole as u64 }.min(end);
        file.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let read = file
                .read(&mut buffer[..want])
                .with_context(|| format!("cannot read {}", path.display()))?;
            if read == 0 {
                anyhow::bail!("{}: shorter than its length while hashing", path.display());
            }
            hasher.update(&buffer[..read]);
            left -= read as u64;
        }
        position = hole;
    }
    Ok(())
}

/// The qcow2, manifest.json, sbom.spdx.json and SHA256SUMS. The raw disk
/// is final when this runs and is being hashed (`raw_sum`, see
/// `disk::build`); qemu-img converts it to qcow2 (another process) and the
/// JSON is written meanwhile, the qcow2 is hashed as soon as it exists.
#[allow(clippy::too_many_arguments)]
pub fn write(
    ui: &Ui,
    raw_sum: std::thread::ScopedJoinHandle<'_, anyhow::Result<String>>,
    out: &Path,
    name: &str,
    plan: &Plan,
    input_hash: &str,
    source_date_epoch: u64,
    packages: &[Package],
    files: &[FileEntry],
    layout: &Layout,
) -> anyhow::Result<()> {
    let raw = out.join(format!("{name}.raw"));
    let qcow2 = out.join(format!("{name}.qcow2"));
    let sums = std::thread::scope(|scope| -> anyhow::Result<BTreeMap<String, String>> {
        let converted = (|| -> anyhow::Result<_> {
            let sh = Shell::new()?;
            ui.run(cmd!(sh, "qemu-img convert -f raw -O qcow2 {raw} {qcow2}"))?;
            let qcow2_sum = scope.spawn(|| sha256_file(&qcow2));
            write_documents(
                out,
                name,
                plan,
                input_hash,
                source_date_epoch,
                packages,
                files,
                layout,
            )?;
            Ok(qcow2_sum)
        })();
        // Always join the raw's thread before returning an error.
        let raw_sum = raw_sum.join().expect("hashing thread");
        let qcow2_sum = converted?.join().expect("hashing thread");
        let mut sums = BTreeMap::new();
        sums.insert(format!("{name}.raw"), raw_sum?);
        sums.insert(format!("{name}.qcow2"), qcow2_sum?);
        Ok(sums)
    })?;
    write_sha256sums(out, sums)
}

/// SHA256SUMS of every output: the given sums, the other files hashed here.
fn write_sha256sums(out: &Path, mut sums: BTreeMap<String, String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(out)? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        if file != "SHA256SUMS" && !sums.contains_key(&file) {
            let sum = sha256_file(&out.join(&file))?;
            sums.insert(file, sum);
        }
    }
    let text: String = sums
        .iter()
        .map(|(file, sum)| format!("{sum}  {file}\n"))
        .collect();
    std::fs::write(out.join("SHA256SUMS"), text)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_documents(
    out: &Path,
    name: &str,
    plan: &Plan,
    input_hash: &str,
    source_date_epoch: u64,
    packages: &[Package],
    files: &[FileEntry],
    layout: &Layout,
) -> anyhow::Result<()> {
    let mut manifest = json!({
        "image": plan.image,
        "profile": plan.profile,
        "mode": plan.mode,
        "input_hash": input_hash,
        "source_date_epoch": source_date_epoch,
        "suite": plan.suite,
        "architecture": plan.architecture,
        "kernel_cmdline": layout.cmdline(plan),
        "disk": {
            "size_mib": layout.disk_size_mib,
            "disk_guid": layout.disk_guid,
            "esp_partuuid": layout.esp_guid,
            "root_partuuid": layout.root_guid,
            "root_fs_uuid": layout.root_fs_uuid,
        },
        "services": plan.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "packages": packages.iter().map(|p| json!({
            "name": p.name, "version": p.version, "architecture": p.architecture, "source": p.source,
        })).collect::<Vec<_>>(),
        "files": files.iter().map(|f| {
            let mut entry = json!({"path": f.path, "type": f.kind, "mode": format!("{:04o}", f.mode), "uid": f.uid, "gid": f.gid});
            if f.kind == "file" {
                entry["size"] = json!(f.size);
            }
            if !f.sha256.is_empty() {
                entry["sha256"] = json!(f.sha256);
            }
            entry
        }).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;

    if let Some(ab) = &layout.ab {
        manifest["disk"]["ab"] = json!({
            "root_b_partuuid": ab.root_b_guid,
            "data_partuuid": ab.data_guid,
            "data_fs_uuid": ab.data_fs_uuid,
            "slot_size_mib": layout.root_size_mib,
        });
    }
    let sbom = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://nodows.invalid/spdx/{name}-{input_hash}"),
        "creationInfo": {
            "created": iso8601(source_date_epoch),
            "creators": ["Tool: nodows-xtask-image"],
        },
        "packages": packages.iter().map(|p| json!({
            "name": p.name,
            "SPDXID": spdx_id(&p.name),
            "versionInfo": p.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("built from the Debian source package {}", p.source),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}&distro=debian-{}", p.name, p.version.replace(':', "%3A"), p.architecture, plan.suite),
            }],
        })).collect::<Vec<_>>(),
        "relationships": packages.iter().map(|p| json!({
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": spdx_id(&p.name),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("sbom.spdx.json"),
        serde_json::to_string_pretty(&sbom)? + "\n",
    )?;

    Ok(())
}
