//! manifest.json (image, profile, input hash, packages, every file's
//! sha256), sbom.spdx.json (SPDX 2.3, the installed Debian packages) and
//! SHA256SUMS.

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::assemble::{FileEntry, Staging};
use super::disk::Layout;
use super::plan::Plan;

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

pub(super) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

#[allow(clippy::too_many_arguments)]
pub fn write(
    out: &Path,
    name: &str,
    plan: &Plan,
    input_hash: &str,
    source_date_epoch: u64,
    staging: &Staging,
    files: &[FileEntry],
    layout: &Layout,
) -> anyhow::Result<()> {
    let packages = installed_packages(staging)?;
    let manifest = json!({
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

    // SHA256SUMS of every output, hashed on two threads.
    let mut names: Vec<String> = std::fs::read_dir(out)?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|file| file != "SHA256SUMS")
        .collect();
    names.sort();
    let sums = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|file| {
                scope.spawn(move || {
                    sha256_file(&out.join(file)).map(|sum| format!("{sum}  {file}\n"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("hashing thread"))
            .collect::<anyhow::Result<String>>()
    })?;
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(())
}
