//! The outputs of a build: every format of the plan, manifest.json (image,
//! profile, input hash, outputs, packages, every file's sha256),
//! sbom.spdx.json (sbom.rs) and SHA256SUMS.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;

use super::assemble::{FileEntry, Staging};
use super::disk::Layout;
use super::outputs::Format;
use super::plan::Plan;
use super::sbom::{Output, Package};
use super::ui::Ui;
use super::util::sha256_file;

/// The hash of every input of the image: the base's cache key, the plan,
/// SOURCE_DATE_EPOCH and every entry of the assembled tree (path, mode,
/// owner, content hash).
pub fn input_hash(
    base_key: &str,
    plan: &Plan,
    source_date_epoch: u64,
    files: &[FileEntry],
) -> String {
    let inputs = format!("base {base_key}\nepoch {source_date_epoch}\n");
    super::assemble::input_hash(&[&inputs, &plan.render_inputs()], files)
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

/// Every output format of the plan, manifest.json, sbom.spdx.json and
/// SHA256SUMS. The raw disk is final when this runs and is being hashed
/// (`raw_sum`, see `disk::build`); every format is written and then hashed
/// on a thread of its own (they only read the raw disk).
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
    let raw_file = Format::Raw.file_name(name);
    let sums = std::thread::scope(|scope| -> anyhow::Result<BTreeMap<String, String>> {
        let writers: Vec<_> = plan
            .outputs
            .iter()
            .map(|format| {
                let (ui, raw_file) = (ui.background(), &raw_file);
                scope.spawn(move || -> anyhow::Result<Vec<(String, String)>> {
                    ui.log(&format!("writing the {format} output"));
                    format.write(&ui, out, name)?;
                    let files = format.files(name).into_iter();
                    files
                        .filter(|file| file != raw_file)
                        .map(|file| Ok((file.clone(), sha256_file(&out.join(&file))?)))
                        .collect()
                })
            })
            .collect();
        // Every thread is joined before an error is returned.
        let mut sums = BTreeMap::new();
        let raw_sum = raw_sum.join().expect("hashing thread");
        let written: Vec<_> = writers
            .into_iter()
            .map(|writer| writer.join().expect("output thread"))
            .collect();
        sums.insert(raw_file.clone(), raw_sum?);
        for files in written {
            sums.extend(files?);
        }
        Ok(sums)
    })?;
    let mut outputs = Vec::new();
    for format in &plan.outputs {
        for file in format.files(name) {
            use std::os::unix::fs::MetadataExt as _;
            let metadata = std::fs::metadata(out.join(&file))?;
            outputs.push(Output {
                format: *format,
                sha256: sums[&file].clone(),
                file,
                size: metadata.len(),
                allocated: metadata.blocks() * 512,
            });
        }
    }
    let binaries = super::sbom::binaries(&super::host::workspace_manifest(&plan.source), files)?;
    write_documents(
        out,
        name,
        plan,
        input_hash,
        source_date_epoch,
        packages,
        files,
        layout,
        &binaries,
        &outputs,
    )?;
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
    binaries: &[super::sbom::Binary],
    outputs: &[Output],
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
        "outputs": outputs.iter().map(|output| json!({
            "format": output.format.name(), "file": output.file, "size": output.size,
            "allocated": output.allocated, "sha256": output.sha256,
        })).collect::<Vec<_>>(),
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
    match (&layout.ab, &layout.data) {
        (Some(ab), Some(data)) => {
            manifest["disk"]["ab"] = json!({
                "root_b_partuuid": ab.root_b_guid,
                "data_partuuid": data.guid,
                "data_fs_uuid": data.fs_uuid,
                "slot_size_mib": layout.root_size_mib,
            });
        }
        (None, Some(data)) => {
            manifest["disk"]["data"] = json!({
                "partuuid": data.guid,
                "fs_uuid": data.fs_uuid,
                "size_mib": data.size_mib,
            });
        }
        _ => {}
    }
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;

    let sbom = super::sbom::document(
        name,
        plan,
        input_hash,
        source_date_epoch,
        packages,
        binaries,
        files,
        outputs,
    );
    std::fs::write(
        out.join("sbom.spdx.json"),
        serde_json::to_string_pretty(&sbom)? + "\n",
    )?;

    Ok(())
}
