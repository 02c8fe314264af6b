//! The input hash, manifest.json and SHA256SUMS of a FreeBSD image.

use std::path::Path;

use serde_json::json;

use super::super::assemble::FileEntry;
use super::super::util;
use super::*;

/// The hash of every input: the sets, the plan, the epoch and every entry
/// of the assembled tree.
pub fn input_hash(
    plan: &FreebsdPlan,
    distribution: &Distribution,
    source_date_epoch: u64,
    files: &[FileEntry],
) -> String {
    let inputs = format!(
        "base {}\nkernel {}\nepoch {source_date_epoch}\n",
        distribution.base_sha256, distribution.kernel_sha256
    );
    super::super::assemble::input_hash(&[&inputs, &plan.render()], files)
}

/// manifest.json and SHA256SUMS.
pub fn write_manifest(
    out: &Path,
    plan: &FreebsdPlan,
    distribution: &Distribution,
    input_hash: &str,
    source_date_epoch: u64,
    files: &[FileEntry],
    layout: &FreebsdLayout,
) -> anyhow::Result<()> {
    let manifest = json!({
        "image": plan.image,
        "os": "freebsd",
        "profile": plan.profile,
        "mode": plan.mode,
        "input_hash": input_hash,
        "source_date_epoch": source_date_epoch,
        "architecture": plan.architecture,
        "freebsd_version": distribution.version,
        "distribution_sets": {
            "base.txz": distribution.base_sha256,
            "kernel.txz": distribution.kernel_sha256,
        },
        "disk": {
            "size_mib": layout.disk_size_mib,
            "disk_guid": layout.disk_guid,
            "esp_partuuid": layout.esp_guid,
            "root_partuuid": layout.root_guid,
            "root_label": format!("gpt/{ROOT_LABEL}"),
            "root_fs": "ufs2",
        },
        "services": plan.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "services_left_out": plan.left_out,
        "packages_to_add": plan.packages_to_add(),
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
    let mut names: Vec<String> = std::fs::read_dir(out)?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|file| file != "SHA256SUMS")
        .collect();
    names.sort();
    let mut sums = String::new();
    for file in names {
        sums.push_str(&format!(
            "{}  {file}\n",
            util::sha256_file(&out.join(&file))?
        ));
    }
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(())
}
