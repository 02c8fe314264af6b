//! The base root file system: mmdebstrap minbase plus the kernel and every
//! service's packages, cached under a content-addressed key.
//!
//! The key is the sha256 of everything that shapes the base: the suite, the
//! architecture, the apt source lines, the sorted package set, the sha256 of the mmdebstrap program, every mmdebstrap option and hook (they
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
const BASE_FORMAT: &str = "nodows-base-5";

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

/// The dpkg path-excludes as an extract hook, not as `--dpkgopt`: with a
/// `--dpkgopt=path-exclude`, mmdebstrap pipes every essential package
/// through mmtarfilter (a Python script, one start per package), which took
/// 30 of the 70 s of a cold mmdebstrap here. The hook runs after the plain
/// extraction of the essential packages and before dpkg installs them: it
/// writes the same `/etc/dpkg/dpkg.cfg.d/99mmdebstrap` that `--dpkgopt`
/// would (so dpkg excludes the paths from then on, and the image keeps the
/// file) and deletes what the extraction put under the excluded
/// directories. A directory that resolves outside the root (an absolute
/// symlink on the way) is left alone.
fn dpkg_excludes_hook() -> String {
    let lines: String = DPKG_EXCLUDES
        .iter()
        .map(|exclude| format!(" 'path-exclude={exclude}'"))
        .collect();
    let dirs: String = DPKG_EXCLUDES
        .iter()
        .map(|exclude| {
            format!(
                " {}",
                exclude.trim_end_matches("/*").trim_start_matches('/')
            )
        })
        .collect();
    format!(
        "--extract-hook=mkdir -p \"$1/etc/dpkg/dpkg.cfg.d\" \
         && printf '%s\\n'{lines} > \"$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap\" \
         && root=\"$(realpath \"$1\")\" && for dir in{dirs}; do \
         if [ -d \"$1/$dir\" ]; then case \"$(realpath \"$1/$dir\")\" in \"$root\"/*) find \"$1/$dir\" -mindepth 1 -delete || exit 1 ;; esac; fi; done"
    )
}

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
    options.push(dpkg_excludes_hook());
    // The initrd is nodows' own (written at assembly): update-initramfs is
    // diverted to a stub before the kernel and initramfs-tools come in, so
    // their postinst and trigger build none (two initrds, seconds each).
    options.push(
        "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs \
         && printf '#!/bin/sh\\necho \"update-initramfs: the initrd of a nodows image is written by cargo xtask image\"\\n' > \"$1/usr/sbin/update-initramfs\" \
         && chmod 0755 \"$1/usr/sbin/update-initramfs\""
            .to_owned(),
    );
    if let Some(keep) = &plan.keep_modules {
        options.push(prune_modules_hook(keep));
    }
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

/// `<keep-modules>` as a customize hook: under every
/// `/usr/lib/modules/VERSION/kernel`, keep the listed trees and the
/// directories leading to them, remove everything else, then run the base's
/// own depmod. Pruning in the base (not at every assembly) keeps the cached
/// tar small: every warm build extracts it. The kernel's postinst has built
/// the initrd before this hook runs. The paths are checked by the plan (only
/// `[A-Za-z0-9_.+-/]`), so they need no quoting in the `case` patterns.
fn prune_modules_hook(keep: &[String]) -> String {
    let kept: Vec<String> = keep
        .iter()
        .flat_map(|path| [path.clone(), format!("{path}/*")])
        .collect();
    let mut ancestors = std::collections::BTreeSet::new();
    for path in keep {
        let mut prefix = path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            ancestors.insert(parent.to_owned());
            prefix = parent;
        }
    }
    let ancestors: Vec<String> = ancestors.into_iter().collect();
    let ancestors = if ancestors.is_empty() {
        String::new()
    } else {
        format!(
            "{}) if [ -d \"$entry\" ]; then prune \"$entry/\"; else printf '%s\\0' \"$entry\"; fi ;; ",
            ancestors.join("|")
        )
    };
    format!(
        "--customize-hook=prune() {{ for entry in \"$1\"*; do case \"$entry\" in {kept}) ;; {ancestors}*) printf '%s\\0' \"$entry\" ;; esac; done; }}; \
         for kernel in \"$1\"/usr/lib/modules/*/kernel; do \
         (cd \"$kernel\" && prune \"\" | xargs --null --no-run-if-empty rm --recursive --force) || exit 1; \
         version=\"${{kernel%/kernel}}\"; chroot \"$1\" depmod \"${{version##*/}}\" || exit 1; done",
        kept = kept.join("|"),
    )
}

pub fn cache_key(plan: &Plan, mmdebstrap_identity: &str) -> String {
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
    text.push_str(&format!("mmdebstrap {mmdebstrap_identity}\n"));
    text.push_str(&format!("epoch {BASE_EPOCH}\n"));
    for option in mmdebstrap_options(plan) {
        text.push_str(&format!("option {option}\n"));
    }
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What the cache key says of mmdebstrap: the sha256 of the program found
/// on PATH (a perl script). `mmdebstrap --version` would say less and cost
/// more: a perl start, two apt-config runs and dpkg, 0.25 s of every build.
pub fn mmdebstrap_identity() -> anyhow::Result<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let program = std::env::split_paths(&path)
        .map(|dir| dir.join("mmdebstrap"))
        .find(|candidate| candidate.is_file())
        .context("mmdebstrap is not on PATH (apt-get install mmdebstrap)")?;
    Ok(format!("sha256 {}", super::util::sha256_file(&program)?))
}

/// Whether the base of this plan is in the cache.
pub fn is_cached(plan: &Plan, mmdebstrap_identity: &str, cache_dir: &Path) -> bool {
    let key = cache_key(plan, mmdebstrap_identity);
    cache_dir.join(format!("base-{key}.tar")).is_file()
}

pub fn base(
    ui: &mut Ui,
    plan: &Plan,
    mmdebstrap_identity: &str,
    cache_dir: &Path,
) -> anyhow::Result<Base> {
    let sh = Shell::new()?;
    let key = cache_key(plan, mmdebstrap_identity);
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
        let mut command = cmd!(sh, "mmdebstrap {options...} {suite} {partial} {sources...}")
            .env("SOURCE_DATE_EPOCH", BASE_EPOCH.to_string())
            .env("LC_ALL", "C.UTF-8");
        // mmdebstrap fills a temporary directory and then packs the tar:
        // on a tmpfs, dpkg's unpacking and the packing never wait for the disk.
        if Path::new("/dev/shm").is_dir() {
            command = command.env("TMPDIR", "/dev/shm");
        }
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
        let key = cache_key(&base, "sha256 1111");
        assert_eq!(key, cache_key(&base, "sha256 1111"), "the key is stable");
        let mut changed = Vec::new();
        let mut with = |name: &str, plan: Plan, version: &str| {
            changed.push((name.to_owned(), cache_key(&plan, version)));
        };
        with("mmdebstrap program", base.clone(), "sha256 2222");
        let mut p = base.clone();
        p.suite = "trixie".to_owned();
        with("suite", p, "sha256 1111");
        let mut p = base.clone();
        p.architecture = "arm64".to_owned();
        with("architecture", p, "sha256 1111");
        let mut p = base.clone();
        p.sources = vec!["deb http://mirror.example/debian bookworm main".to_owned()];
        with("mirror", p, "sha256 1111");
        let mut p = base.clone();
        p.base_packages.insert("curl".to_owned());
        with("package set", p, "sha256 1111");
        let mut p = base.clone();
        p.keep_modules
            .get_or_insert_with(Vec::new)
            .push("fs/xfs".to_owned());
        with("kept kernel modules (an mmdebstrap hook)", p, "sha256 1111");
        let mut p = base.clone();
        p.keep_modules = None;
        with("no module pruning", p, "sha256 1111");
        for (name, other) in changed {
            assert_ne!(key, other, "changing the {name} must change the key");
        }
    }

    /// The pruning hook keeps exactly what assembly used to keep: the listed
    /// trees and the directories leading to them (files there go), and runs
    /// the base's depmod for each kernel.
    #[test]
    fn prune_hook_keeps_listed_trees_only() {
        let dir = std::env::temp_dir().join(format!("nodows-prune-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kernel = dir.join("root/usr/lib/modules/6.1.0-test/kernel");
        for file in [
            "fs/ext4/ext4.ko",
            "fs/mbcache.ko",
            "fs/xfs/xfs.ko",
            "fs/binfmt_misc.ko",
            "drivers/net/virtio_net.ko",
            "drivers/net/dummy.ko",
            "drivers/net/ethernet/intel/e1000/e1000.ko",
            "drivers/net/ethernet/realtek/r8169.ko",
            "sound/core/snd.ko",
        ] {
            std::fs::create_dir_all(kernel.join(file).parent().unwrap()).unwrap();
            std::fs::write(kernel.join(file), "").unwrap();
        }
        // A chroot that records the depmod it was asked to run.
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("chroot.log");
        std::fs::write(
            bin.join("chroot"),
            format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            bin.join("chroot"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let keep: Vec<String> = [
            "fs/ext4",
            "fs/mbcache.ko",
            "drivers/net/virtio_net.ko",
            "drivers/net/ethernet/intel/e1000",
        ]
        .iter()
        .map(|path| path.to_string())
        .collect();
        let hook = prune_modules_hook(&keep);
        let hook = hook.strip_prefix("--customize-hook=").unwrap();
        let sh = Shell::new().unwrap();
        let root = dir.join("root");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd!(sh, "sh -c {hook} exec {root}")
            .env("PATH", path)
            .run()
            .unwrap();
        let mut left = Vec::new();
        let mut stack = vec![kernel.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path.clone());
                }
                left.push(
                    path.strip_prefix(&kernel)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        left.sort();
        assert_eq!(
            left,
            [
                "drivers",
                "drivers/net",
                "drivers/net/ethernet",
                "drivers/net/ethernet/intel",
                "drivers/net/ethernet/intel/e1000",
                "drivers/net/ethernet/intel/e1000/e1000.ko",
                "drivers/net/virtio_net.ko",
                "fs",
                "fs/ext4",
                "fs/ext4/ext4.ko",
                "fs/mbcache.ko",
            ]
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("{} depmod 6.1.0-test\n", root.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The excludes hook leaves what the old `--dpkgopt` excludes left: the
    /// excluded directories emptied (dot files too), everything else kept,
    /// dpkg's 99mmdebstrap written; and it never follows a path out of the
    /// root.
    #[test]
    fn excludes_hook_empties_excluded_directories_inside_the_root_only() {
        let dir = std::env::temp_dir().join(format!("nodows-excludes-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let outside = dir.join("outside");
        for file in [
            "usr/share/doc/bash/README",
            "usr/share/doc/.hidden",
            "usr/share/man/man1/sh.1",
            "usr/lib/udev/hwdb.d/20-usb.hwdb",
            "usr/share/zoneinfo/UTC",
        ] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), "").unwrap();
        }
        std::fs::create_dir_all(outside.join("kept")).unwrap();
        std::fs::write(outside.join("kept/file"), "").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("usr/share/info")).unwrap();
        let hook = dpkg_excludes_hook();
        let hook = hook.strip_prefix("--extract-hook=").unwrap();
        let sh = Shell::new().unwrap();
        cmd!(sh, "sh -c {hook} exec {root}").run().unwrap();
        for emptied in ["usr/share/doc", "usr/share/man", "usr/lib/udev/hwdb.d"] {
            assert_eq!(
                std::fs::read_dir(root.join(emptied)).unwrap().count(),
                0,
                "{emptied}"
            );
        }
        assert!(root.join("usr/share/zoneinfo/UTC").is_file());
        assert!(
            outside.join("kept/file").is_file(),
            "followed a symlink out of the root"
        );
        let expected: String = DPKG_EXCLUDES
            .iter()
            .map(|exclude| format!("path-exclude={exclude}\n"))
            .collect();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/dpkg/dpkg.cfg.d/99mmdebstrap")).unwrap(),
            expected
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The profile is applied at assembly (module pruning is the image's):
    /// all profiles of an image share one base.
    #[test]
    fn profiles_share_one_base() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let sources = vec!["deb http://deb.debian.org/debian bookworm main".to_owned()];
        let keys: std::collections::BTreeSet<String> = ["dev", "test", "production", "failover"]
            .iter()
            .map(|profile| {
                let plan = super::super::plan::resolve(source, "debian", profile, sources.clone())
                    .unwrap();
                cache_key(&plan, "sha256 1111")
            })
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
    }
}
