//! sbom.spdx.json (SPDX 2.3): the image, its outputs, the installed Debian
//! packages, the nodows binaries and every Rust crate compiled into them
//! (`cargo metadata` resolved for the binary's target, normal dependencies
//! only: build scripts and proc macros run at compile time and are left
//! out), with the relationships image -> binaries -> crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};
use xshell::{cmd, Shell};

use super::assemble::FileEntry;
use super::outputs::Format;
use super::plan::Plan;
use super::util::iso8601;

/// A Debian package installed in the image (from its dpkg status).
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source: String,
}

/// One file of the image's outputs, as the manifest and the SBOM list it.
pub struct Output {
    pub format: Format,
    pub file: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes the file system allocated for it (raw disks are sparse).
    pub allocated: u64,
    pub sha256: String,
}

/// A Rust crate compiled into a binary of the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// The SPDX licence expression of Cargo.toml, `None` when it has none.
    pub license: Option<String>,
    /// The sha256 of the .crate file (Cargo.lock); `None` for the workspace's own.
    pub checksum: Option<String>,
    pub from_registry: bool,
}

/// A binary installed into the image and the crates it is built from.
pub struct Binary {
    pub name: &'static str,
    /// Its path inside the image.
    pub path: &'static str,
    pub target: &'static str,
    pub crates: Vec<Crate>,
}

/// The image's nodows binaries: (name, path, cargo package, target).
const BINARIES: &[(&str, &str, &str, &str)] = &[
    ("initd", "/usr/sbin/initd", "initd", crate::toolchain::MUSL),
    (
        "initctl",
        "/usr/sbin/initctl",
        "initd",
        crate::toolchain::MUSL,
    ),
    (
        "nodows",
        "/usr/bin/nodows",
        "render",
        "x86_64-unknown-linux-gnu",
    ),
];

/// The crates of every binary of the image, from `cargo metadata` of the
/// workspace at `manifest` and the checksums of its Cargo.lock.
pub fn binaries(manifest: &Path, files: &[FileEntry]) -> anyhow::Result<Vec<Binary>> {
    let lock_path = manifest.with_file_name("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let checksums = lock_checksums(&lock);
    let mut by_target: BTreeMap<&str, Value> = BTreeMap::new();
    let mut binaries = Vec::new();
    for &(name, path, package, target) in BINARIES {
        if !files.iter().any(|file| file.path == path) {
            continue; // the renderer did not build (the builder said so)
        }
        if !by_target.contains_key(target) {
            let sh = Shell::new()?;
            let text = cmd!(
                sh,
                "cargo metadata --format-version 1 --locked --filter-platform {target} --manifest-path {manifest}"
            )
            .quiet()
            .read()
            .context("cargo metadata failed (for the SBOM's crates)")?;
            let metadata: Value =
                serde_json::from_str(&text).context("cargo metadata printed invalid json")?;
            by_target.insert(target, metadata);
        }
        let crates = crates_of(&by_target[target], package, &checksums)
            .with_context(|| format!("cargo metadata has no workspace package `{package}`"))?;
        binaries.push(Binary {
            name,
            path,
            target,
            crates,
        });
    }
    Ok(binaries)
}

/// `(name, version) -> checksum` of Cargo.lock's registry packages.
fn lock_checksums(lock: &str) -> BTreeMap<(String, String), String> {
    let mut checksums = BTreeMap::new();
    for stanza in lock.split("[[package]]") {
        let field = |key: &str| {
            stanza.lines().find_map(|line| {
                let (name, value) = line.split_once(" = ")?;
                (name.trim() == key).then(|| value.trim().trim_matches('"').to_owned())
            })
        };
        if let (Some(name), Some(version), Some(checksum)) =
            (field("name"), field("version"), field("checksum"))
        {
            checksums.insert((name, version), checksum);
        }
    }
    checksums
}

/// The crates linked into the workspace package `root`: it and everything
/// reachable through normal dependencies, proc macros excluded.
fn crates_of(
    metadata: &Value,
    root: &str,
    checksums: &BTreeMap<(String, String), String>,
) -> Option<Vec<Crate>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()?
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, package)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()?
        .iter()
        .filter_map(|node| Some((node["id"].as_str()?, node)))
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, package)| package["name"] == root && package["source"].is_null())
        .map(|(id, _)| *id)?;
    let is_proc_macro = |package: &Value| {
        package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|target| {
                target["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|kind| kind == "proc-macro")
            })
    };
    let mut seen = BTreeSet::from([root_id]);
    let mut pending = vec![root_id];
    while let Some(id) = pending.pop() {
        let deps = nodes.get(id).and_then(|node| node["deps"].as_array());
        for dep in deps.into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind["kind"].is_null());
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            if normal
                && !packages.get(dep_id).is_some_and(|p| is_proc_macro(p))
                && seen.insert(dep_id)
            {
                pending.push(dep_id);
            }
        }
    }
    let mut crates: Vec<Crate> = seen
        .into_iter()
        .filter_map(|id| packages.get(id))
        .map(|package| {
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            let version = package["version"].as_str().unwrap_or_default().to_owned();
            let from_registry = package["source"]
                .as_str()
                .is_some_and(|source| source.starts_with("registry+"));
            Crate {
                checksum: checksums.get(&(name.clone(), version.clone())).cloned(),
                license: package["license"].as_str().map(spdx_license),
                name,
                version,
                from_registry,
            }
        })
        .collect();
    crates.sort();
    Some(crates)
}

/// Cargo.toml's licence as an SPDX expression: the old `MIT/Apache-2.0`
/// form means `MIT OR Apache-2.0`.
fn spdx_license(license: &str) -> String {
    license
        .split('/')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn spdx_id(kind: &str, name: &str) -> String {
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
    format!("SPDXRef-{kind}-{cleaned}")
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({"spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to})
}

/// The SPDX document of the image `name`.
#[allow(clippy::too_many_arguments)]
pub fn document(
    name: &str,
    plan: &Plan,
    input_hash: &str,
    source_date_epoch: u64,
    packages: &[Package],
    binaries: &[Binary],
    files: &[FileEntry],
    outputs: &[Output],
) -> Value {
    const IMAGE: &str = "SPDXRef-Image";
    let mut spdx_packages = vec![json!({
        "name": name,
        "SPDXID": IMAGE,
        "versionInfo": input_hash,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("nodows image {} for profile {} (mode {})", plan.image, plan.profile, plan.mode),
    })];
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE)];
    for output in outputs {
        let id = spdx_id("Output", &output.file);
        spdx_packages.push(output_entry(output, &id));
        relationships.push(relationship(&id, "GENERATED_FROM", IMAGE));
    }
    for package in packages {
        let id = spdx_id("Package-deb", &package.name);
        spdx_packages.push(debian_package_entry(package, &id, &plan.suite));
        relationships.push(relationship(IMAGE, "CONTAINS", &id));
    }
    let mut crates_listed = BTreeSet::new();
    for binary in binaries {
        let id = spdx_id("Binary", binary.name);
        let sha256 = files
            .iter()
            .find(|file| file.path == binary.path)
            .map(|file| file.sha256.clone())
            .unwrap_or_default();
        spdx_packages.push(binary_entry(binary, &id, &sha256));
        relationships.push(relationship(IMAGE, "CONTAINS", &id));
        for krate in &binary.crates {
            let crate_id = spdx_id("Crate", &format!("{}-{}", krate.name, krate.version));
            relationships.push(relationship(&id, "STATIC_LINK", &crate_id));
            if !crates_listed.insert(crate_id.clone()) {
                continue;
            }
            spdx_packages.push(crate_entry(krate, &crate_id));
        }
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://nodows.invalid/spdx/{name}-{input_hash}"),
        "creationInfo": {
            "created": iso8601(source_date_epoch),
            "creators": ["Tool: nodows-xtask-image"],
        },
        "packages": spdx_packages,
        "relationships": relationships,
    })
}

/// One output file of the image.
fn output_entry(output: &Output, id: &str) -> Value {
    json!({
        "name": output.file,
        "SPDXID": id,
        "packageFileName": output.file,
        "primaryPackagePurpose": "FILE",
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": output.sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("the image as {} ({} bytes)", output.format, output.size),
    })
}

/// One Debian package of the image, with its purl.
fn debian_package_entry(package: &Package, id: &str, suite: &str) -> Value {
    json!({
        "name": package.name,
        "SPDXID": id,
        "versionInfo": package.version,
        "supplier": "Organization: Debian",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "sourceInfo": format!("built from the Debian source package {}", package.source),
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}&distro=debian-{}", package.name, package.version.replace(':', "%3A"), package.architecture, suite),
        }],
    })
}

/// One of nodows' binaries with its sha256 in the image.
fn binary_entry(binary: &Binary, id: &str, sha256: &str) -> Value {
    json!({
        "name": binary.name,
        "SPDXID": id,
        "packageFileName": binary.path,
        "primaryPackagePurpose": "APPLICATION",
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("built by cargo for {}", binary.target),
    })
}

/// One crate compiled into a binary, with its licence, purl and checksum.
fn crate_entry(krate: &Crate, crate_id: &str) -> Value {
    let license = krate
        .license
        .clone()
        .unwrap_or_else(|| "NOASSERTION".to_owned());
    let mut entry = json!({
        "name": krate.name,
        "SPDXID": crate_id,
        "versionInfo": krate.version,
        "primaryPackagePurpose": "LIBRARY",
        "supplier": "NOASSERTION",
        "downloadLocation": if krate.from_registry {
            format!("https://crates.io/api/v1/crates/{}/{}/download", krate.name, krate.version)
        } else {
            "NOASSERTION".to_owned()
        },
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": license,
        "copyrightText": "NOASSERTION",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!("pkg:cargo/{}@{}", krate.name, krate.version),
        }],
    });
    if let Some(checksum) = &krate.checksum {
        entry["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": checksum}]);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// initd's crates come from the real workspace: its own crate, its
    /// registry dependencies with Cargo.lock's checksums, no proc macro.
    #[test]
    fn initd_crates_are_its_normal_dependencies_with_checksums() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let manifest = root.join("Cargo.toml");
        let sh = Shell::new().unwrap();
        let target = crate::toolchain::MUSL;
        let text = cmd!(
            sh,
            "cargo metadata --format-version 1 --locked --filter-platform {target} --manifest-path {manifest}"
        )
        .quiet()
        .read()
        .unwrap();
        let metadata: Value = serde_json::from_str(&text).unwrap();
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
        let crates = crates_of(&metadata, "initd", &lock_checksums(&lock)).unwrap();
        let names: Vec<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        assert!(
            names.contains(&"initd") && names.contains(&"libc"),
            "{names:?}"
        );
        assert!(
            !names.contains(&"xtask") && !names.contains(&"cc"),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|name| name.ends_with("derive")),
            "{names:?}"
        );
        for krate in crates.iter().filter(|c| c.from_registry) {
            assert_eq!(
                krate.checksum.as_ref().map(String::len),
                Some(64),
                "{krate:?}"
            );
        }
        assert_eq!(spdx_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
    }
}
