//! Suite `image`: cold and warm builds of the dev image, its size, and the
//! floor: a bare mmdebstrap of the same package set in the same run.
//!
//! The builds use a copy of the sources (so a template can be changed
//! without touching the repository), their own cache directory (so the
//! other caches survive) and their own output directory.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _};
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;

const WARM_BUILDS: usize = 3;

/// The `base packages:` and `apt sources:` sections of `cargo xtask image --plan`.
fn plan_lists(plan: &str) -> (Vec<String>, Vec<String>) {
    let mut packages = Vec::new();
    let mut sources = Vec::new();
    let mut section = "";
    for line in plan.lines() {
        if !line.starts_with(' ') {
            section = line.trim_end_matches(':');
            continue;
        }
        let item = line.trim().to_owned();
        match section {
            "base packages" => packages.push(item),
            "apt sources" => sources.push(item),
            _ => {}
        }
    }
    (packages, sources)
}

fn sizes_mib(raw: &Path) -> anyhow::Result<(f64, f64)> {
    let metadata = std::fs::metadata(raw).with_context(|| format!("{}: missing", raw.display()))?;
    let mib = 1024.0 * 1024.0;
    Ok((
        metadata.len() as f64 / mib,
        (metadata.blocks() * 512) as f64 / mib,
    ))
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    let sh = &context.sh;
    let root = crate::qemu::workspace_root();
    let dir = context.work.join("image");
    let source = dir.join("source");
    let cache = dir.join("cache");
    let out = dir.join("out");
    std::fs::create_dir_all(&source)?;
    std::fs::create_dir_all(&cache)?;
    for part in ["images", "profiles", "services", "overlays", "models"] {
        let from = root.join(part);
        cmd!(sh, "cp --archive {from} {source}").run()?;
    }

    // The copy has no git history to take the build date from.
    let epoch = cmd!(sh, "git log -1 --format=%ct").quiet().read()?;
    let plan = cmd!(
        sh,
        "cargo xtask image --image debian --profile dev --plan --source {source}"
    )
    .quiet()
    .read()
    .context("cargo xtask image --plan")?;
    let (packages, sources) = plan_lists(&plan);
    if packages.is_empty() || sources.is_empty() {
        bail!("cargo xtask image --plan printed no base packages or apt sources");
    }

    // The floor: mmdebstrap alone, no tuning.
    let include = format!("--include={}", packages.join(","));
    let floor_tar = dir.join("floor.tar");
    eprintln!("    bare mmdebstrap of {} packages", packages.len());
    let started = Instant::now();
    cmd!(
        sh,
        "mmdebstrap --quiet --variant=minbase {include} bookworm {floor_tar} {sources...}"
    )
    .ignore_stdout()
    .run()
    .context("the bare mmdebstrap")?;
    let floor = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&floor_tar);

    let build = |what: &str| -> anyhow::Result<f64> {
        eprintln!("    {what} build of the dev image");
        let started = Instant::now();
        let output = cmd!(
            sh,
            "cargo xtask image --image debian --profile dev --source {source} --cache {cache} --out {out}"
        )
        .env("SOURCE_DATE_EPOCH", &epoch)
        .quiet()
        .ignore_status()
        .output()?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr
                .lines()
                .filter(|line| line.starts_with("Error") || line.starts_with("error"))
                .take(3)
                .collect();
            bail!(
                "the {what} build (cargo xtask image --image debian --profile dev) failed: {}",
                tail.join(" ")
            );
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let cold = build("cold")?;
    let raw = out.join("debian-dev").join("debian-dev.raw");
    let (apparent, allocated) = sizes_mib(&raw)?;

    let template = source.join("services/web/etc/nginx/sites-enabled/default.xsl");
    if !template.is_file() {
        bail!(
            "{}: missing; the warm build changes this template",
            template.display()
        );
    }
    let mut warm = Vec::new();
    for round in 0..WARM_BUILDS {
        let mut text = std::fs::read_to_string(&template)?;
        text.push_str(&format!("<!-- bench warm build {round} -->\n"));
        std::fs::write(&template, text)?;
        warm.push(build("warm")?);
    }

    suite.row(
        "cold build (empty cache)",
        Unit::Seconds,
        Some(Stat::one(cold)),
        "bare mmdebstrap of the same packages",
        Some(Stat::one(floor)),
    );
    suite.row(
        "warm build (one template changed)",
        Unit::Seconds,
        Stat::new(warm),
        "bare mmdebstrap of the same packages",
        Some(Stat::one(floor)),
    );
    suite.row(
        "raw image, apparent size",
        Unit::MiB,
        Some(Stat::one(apparent)),
        "mkosi v26, measured once on this machine kind (not run here)",
        Some(Stat::one(1002.0)),
    );
    suite.row(
        "raw image, allocated (du)",
        Unit::MiB,
        Some(Stat::one(allocated)),
        "mkosi v26, measured once on this machine kind (not run here)",
        Some(Stat::one(577.0)),
    );
    suite.note(format!(
        "Builds run `cargo xtask image --image debian --profile dev` on a copy of the sources with a cache directory of their own (empty for the cold build); the warm builds each append a comment to services/web/etc/nginx/sites-enabled/default.xsl, median of {WARM_BUILDS}. Both include cargo checking that initd and the renderer are up to date."
    ));
    suite.note(format!(
        "The floor is `mmdebstrap --variant=minbase --include=<the plan's {} base packages>` to a tar with the same apt sources and no tuning, run in the same benchmark run; the package downloads are part of both.",
        packages.len()
    ));
    suite.note(
        "mkosi cannot be installed from the registries here; its figures (cold 68 to 75 s, incremental 27 s, 1002 MiB apparent, 577 MiB allocated) were measured once on this machine kind and are quoted for scale, not measured in this run.",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lists_reads_packages_and_sources() {
        let plan = "image: debian\napt sources:\n  deb http://x bookworm main\nbase packages:\n  dash\n  zstd\nservices:\n  web\n";
        let (packages, sources) = plan_lists(plan);
        assert_eq!(packages, ["dash", "zstd"]);
        assert_eq!(sources, ["deb http://x bookworm main"]);
    }
}
