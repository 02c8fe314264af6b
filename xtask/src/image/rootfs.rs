//! The base root file system: mmdebstrap minbase plus the kernel and every
//! service's packages, cached under a content-addressed key.
//!
//! The key is the sha256 of everything that shapes the base: the suite, the
//! architecture, the apt source lines, the sorted package set, the initrd
//! modules, `mmdebstrap --version`, every mmdebstrap option and hook (they
//! are part of the hashed text), and a format version. A changed input is a
//! new entry. The entry is written to `.base-KEY.tar.tmp-PID` and renamed to
//! `base-KEY.tar` only when mmdebstrap succeeded.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::plan::Plan;
use super::ui::Ui;

/// Bump when the builder changes what it puts in the base.
const BASE_FORMAT: &str = "nodows-base-4";

/// The epoch the base's timestamps are clamped to. It is fixed (not the
/// commit time) so that a new commit reuses the cached base; the assembly
/// clamps everything to SOURCE_DATE_EPOCH afterwards.
pub const BASE_EPOCH: u64 = 1_700_000_000;

pub struct Base {
    pub key: String,
    pub tar: PathBuf,
}

const DPKG_EXCLUDES: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
    "/usr/lib/udev/hwdb.d/*",
    "/lib/udev/hwdb.d/*",
];

/// The mmdebstrap arguments except the output path and the sources.
pub fn mmdebstrap_options(plan: &Plan) -> Vec<String> {
    let packages: Vec<&str> = plan.base_packages.iter().map(String::as_str).collect();
    let mut options = vec![
        "--variant=minbase".to_owned(),
        format!("--architectures={}", plan.architecture),
        "--format=tar".to_owned(),
        format!("--include={}", packages.join(",")),
        "--aptopt=APT::Install-Recommends \"false\"".to_owned(),
        "--aptopt=Acquire::Languages \"none\"".to_owned(),
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata".to_owned(),
    ];
    for exclude in DPKG_EXCLUDES {
        options.push(format!("--dpkgopt=path-exclude={exclude}"));
    }
    // The initrd: only the listed modules, zstd; configured before the
    // kernel is installed, so that its postinst builds the right initrd.
    let modules = plan.initrd_modules.join("\\n");
    options.push(format!(
        "--setup-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" \"$1/usr/share/initramfs-tools/modules.d\" \
         && printf 'MODULES=list\\nCOMPRESS=zstd\\n' > \"$1/etc/initramfs-tools/conf.d/nodows.conf\" \
         && printf '{modules}\\n' > \"$1/usr/share/initramfs-tools/modules.d/nodows\""
    ));
    // No host keys, no machine id, no logs or caches in the base.
    options.push(
        "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*_key \"$1\"/etc/ssh/ssh_host_*_key.pub \
         \"$1/etc/machine-id\" \"$1/var/lib/dbus/machine-id\" \"$1/var/cache/ldconfig/aux-cache\" \
         \"$1/var/log/alternatives.log\" \"$1/var/log/dpkg.log\" \"$1\"/var/log/apt/*.log \
         \"$1\"/var/cache/apt/*.bin \"$1\"/etc/*- \
         && rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/archives/*.deb"
            .to_owned(),
    );
    options
}

pub fn cache_key(plan: &Plan, mmdebstrap_version: &str) -> String {
    let mut text = String::new();
    text.push_str(BASE_FORMAT);
    text.push('\n');
    text.push_str(&format!(
        "suite {}\narchitecture {}\n",
        plan.suite, plan.architecture
    ));
    for line in &plan.sources {
        text.push_str(&format!("source {line}\n"));
    }
    for package in &plan.base_packages {
        text.push_str(&format!("package {package}\n"));
    }
    text.push_str(&format!("mmdebstrap {}\n", mmdebstrap_version.trim()));
    text.push_str(&format!("epoch {BASE_EPOCH}\n"));
    for option in mmdebstrap_options(plan) {
        text.push_str(&format!("option {option}\n"));
    }
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether the base of this plan is in the cache.
pub fn is_cached(plan: &Plan, cache_dir: &Path) -> anyhow::Result<bool> {
    let sh = Shell::new()?;
    let version = cmd!(sh, "mmdebstrap --version").quiet().read()?;
    let key = cache_key(plan, &version);
    Ok(cache_dir.join(format!("base-{key}.tar")).is_file())
}

pub fn base(ui: &mut Ui, plan: &Plan, cache_dir: &Path) -> anyhow::Result<Base> {
    let sh = Shell::new()?;
    let version = cmd!(sh, "mmdebstrap --version").quiet().read()?;
    let key = cache_key(plan, &version);
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let tar = cache_dir.join(format!("base-{key}.tar"));
    if tar.is_file() {
        ui.note(&format!("    cached base {}", tar.display()));
        return Ok(Base { key, tar });
    }
    ui.note(&format!(
        "    no cached base {key:.16}; running mmdebstrap (about a minute)"
    ));
    let partial = cache_dir.join(format!(".base-{key}.tar.tmp-{}", std::process::id()));
    let result = (|| {
        let options = mmdebstrap_options(plan);
        let suite = &plan.suite;
        let sources = &plan.sources;
        let command = cmd!(sh, "mmdebstrap {options...} {suite} {partial} {sources...}")
            .env("SOURCE_DATE_EPOCH", BASE_EPOCH.to_string())
            .env("LC_ALL", "C.UTF-8");
        ui.run(command)?;
        std::fs::rename(&partial, &tar)
            .with_context(|| format!("cannot rename to {}", tar.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    Ok(Base { key, tar })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let sources = vec!["deb http://deb.debian.org/debian bookworm main".to_owned()];
        super::super::plan::resolve(source, "debian", "dev", sources).unwrap()
    }

    /// A changed input is a new cache entry, never a stale hit (the mkosi
    /// tracker's lesson): every input that shapes the base changes the key.
    #[test]
    fn cache_key_covers_every_input() {
        let base = plan();
        let key = cache_key(&base, "mmdebstrap 1.3.5");
        assert_eq!(
            key,
            cache_key(&base, "mmdebstrap 1.3.5"),
            "the key is stable"
        );
        let mut changed = Vec::new();
        let mut with = |name: &str, plan: Plan, version: &str| {
            changed.push((name.to_owned(), cache_key(&plan, version)));
        };
        with("mmdebstrap version", base.clone(), "mmdebstrap 1.4.0");
        let mut p = base.clone();
        p.suite = "trixie".to_owned();
        with("suite", p, "mmdebstrap 1.3.5");
        let mut p = base.clone();
        p.architecture = "arm64".to_owned();
        with("architecture", p, "mmdebstrap 1.3.5");
        let mut p = base.clone();
        p.sources = vec!["deb http://mirror.example/debian bookworm main".to_owned()];
        with("mirror", p, "mmdebstrap 1.3.5");
        let mut p = base.clone();
        p.base_packages.insert("curl".to_owned());
        with("package set", p, "mmdebstrap 1.3.5");
        let mut p = base.clone();
        p.initrd_modules.push("xfs".to_owned());
        with("initrd modules (an mmdebstrap hook)", p, "mmdebstrap 1.3.5");
        for (name, other) in changed {
            assert_ne!(key, other, "changing the {name} must change the key");
        }
    }

    /// Pruning and the profile are applied at assembly: all profiles of an
    /// image share one base.
    #[test]
    fn profiles_share_one_base() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let sources = vec!["deb http://deb.debian.org/debian bookworm main".to_owned()];
        let keys: std::collections::BTreeSet<String> = ["dev", "test", "production", "failover"]
            .iter()
            .map(|profile| {
                let plan = super::super::plan::resolve(source, "debian", profile, sources.clone())
                    .unwrap();
                cache_key(&plan, "mmdebstrap 1.3.5")
            })
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
    }
}
