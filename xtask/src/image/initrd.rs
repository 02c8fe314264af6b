//! The nodows initrd: an uncompressed cpio (newc) archive with the static
//! initd as `/init` (its initrd stage, initd/src/initrd.rs), the kernel
//! modules the image names with `<initrd-module>` plus everything they need
//! (from the root's modules.dep), and their slice of the module index.
//! Written in Rust, byte for byte the same for the same inputs: sorted
//! entries, inode numbers counted from 1, every time SOURCE_DATE_EPOCH.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;

use initd::kmod::{module_name, normalize, parse_softdeps, ModuleIndex};

use super::BadInput;

/// One archive member.
enum Member {
    Directory,
    File { mode: u32, data: Vec<u8> },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// Writes newc cpio members in the order given.
struct CpioWriter {
    out: Vec<u8>,
    inode: u32,
    mtime: u64,
}

impl CpioWriter {
    fn new(mtime: u64) -> CpioWriter {
        CpioWriter {
            out: Vec::new(),
            inode: 0,
            mtime,
        }
    }

    fn add(&mut self, name: &str, member: &Member) {
        self.inode += 1;
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match member {
            Member::Directory => (0o040755, &[], (0, 0)),
            Member::File { mode, data } => (0o100000 | mode, data, (0, 0)),
            Member::CharDevice { mode, major, minor } => (0o020000 | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(member, Member::Directory) {
            2
        } else {
            1
        };
        self.header(self.inode, mode, nlink, data.len(), rdev, name);
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn header(
        &mut self,
        inode: u32,
        mode: u32,
        nlink: u32,
        size: usize,
        rdev: (u32, u32),
        name: &str,
    ) {
        let fields = [
            inode,
            mode,
            0,
            0,
            nlink,
            self.mtime as u32,
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!");
        self.out
    }
}

/// The module index files of one kernel, as text.
struct IndexTexts {
    dep: String,
    alias: String,
    softdep: String,
    /// `modules.builtin`: the modules compiled into the kernel image.
    builtin: String,
}

impl IndexTexts {
    fn read(module_dir: &Path) -> anyhow::Result<IndexTexts> {
        let dep_path = module_dir.join("modules.dep");
        let optional =
            |name: &str| std::fs::read_to_string(module_dir.join(name)).unwrap_or_default();
        Ok(IndexTexts {
            dep: std::fs::read_to_string(&dep_path)
                .with_context(|| format!("cannot read {}", dep_path.display()))?,
            alias: optional("modules.alias"),
            softdep: optional("modules.softdep"),
            builtin: optional("modules.builtin"),
        })
    }
}

/// The names of the modules built into the kernel (one path a line in
/// modules.builtin: `kernel/fs/ext4/ext4.ko`).
fn builtin_names(builtin: &str) -> BTreeSet<String> {
    builtin
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(module_name)
        .collect()
}

/// The modules.dep lines (file, dependencies) of `wanted` and of all they
/// need (dependencies and soft `pre:` dependencies), in modules.dep's order.
/// A wanted module that is built into the kernel (Debian's cloud kernel has
/// ext4 and nvme built in) needs no file: it is left out, not an error.
fn closure<'a>(
    texts: &'a IndexTexts,
    wanted: &[String],
    module_dir: &Path,
) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    let mut index = ModuleIndex::parse(&texts.dep, &texts.alias);
    index.set_pre_softdeps(parse_softdeps(&texts.softdep));
    let builtin = builtin_names(&texts.builtin);
    let mut names: BTreeSet<String> = BTreeSet::new();
    for name in wanted {
        if builtin.contains(&normalize(name)) {
            continue;
        }
        if !index.contains(name) {
            return Err(BadInput(format!(
                "initrd module {name} is neither in {} nor built into the kernel (modules.builtin): a typo, pruned by <keep-modules>, or a driver this kernel package lacks; remove its <initrd-module>",
                module_dir.join("modules.dep").display()
            ))
            .into());
        }
        names.extend(index.load_order(name));
    }
    Ok(texts
        .dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(file, dependencies)| (file.trim(), dependencies.trim()))
        .filter(|(file, _)| names.contains(&module_name(file)))
        .collect())
}

/// Builds the initrd for the root in `root` (its modules of `kernel_version`)
/// and returns its bytes.
pub fn build(
    root: &Path,
    kernel_version: &str,
    initd: &Path,
    modules: &[String],
    mtime: u64,
) -> anyhow::Result<Vec<u8>> {
    let module_dir = root.join("usr/lib/modules").join(kernel_version);
    let texts = IndexTexts::read(&module_dir)?;
    let (alias, softdep) = (&texts.alias, &texts.softdep);
    let included = closure(&texts, modules, &module_dir)?;
    let names: BTreeSet<String> = included.iter().map(|(file, _)| module_name(file)).collect();

    // Every member by path; BTreeMap order puts parents before children.
    let mut members: std::collections::BTreeMap<String, Member> = Default::default();
    let directory = |members: &mut std::collections::BTreeMap<String, Member>, path: &str| {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            members.entry(prefix.clone()).or_insert(Member::Directory);
        }
    };
    for point in ["dev", "proc", "sys", "root"] {
        directory(&mut members, point);
    }
    members.insert(
        "dev/console".to_string(),
        Member::CharDevice {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    let initd_bytes =
        std::fs::read(initd).with_context(|| format!("cannot read {}", initd.display()))?;
    members.insert(
        "init".to_string(),
        Member::File {
            mode: 0o755,
            data: initd_bytes,
        },
    );
    let target = format!("lib/modules/{kernel_version}");
    let mut dep_text = String::new();
    for (file, dependencies) in &included {
        let path = format!("{target}/{file}");
        if let Some((parent, _)) = path.rsplit_once('/') {
            directory(&mut members, parent);
        }
        let data = std::fs::read(module_dir.join(file))
            .with_context(|| format!("cannot read {}", module_dir.join(file).display()))?;
        members.insert(path, Member::File { mode: 0o644, data });
        dep_text.push_str(&format!("{file}: {dependencies}\n").replace(": \n", ":\n"));
    }
    let alias_text: String = alias
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(2)
                .is_some_and(|module| names.contains(&normalize(module)))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let softdep_text: String = softdep
        .lines()
        .filter(|line| {
            line.starts_with("softdep ")
                && line
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|module| names.contains(&normalize(module)))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    directory(&mut members, &target);
    for (name, text) in [
        ("modules.dep", dep_text),
        ("modules.alias", alias_text),
        ("modules.softdep", softdep_text),
    ] {
        members.insert(
            format!("{target}/{name}"),
            Member::File {
                mode: 0o644,
                data: text.into_bytes(),
            },
        );
    }
    let mut writer = CpioWriter::new(mtime);
    writer.add(".", &Member::Directory);
    for (path, member) in &members {
        writer.add(path, member);
    }
    Ok(writer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n\
                       kernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\nkernel/fs/xfs/xfs.ko:\n\
                       kernel/crypto/crc32c_generic.ko:\nkernel/drivers/block/virtio_blk.ko:\n";

    fn texts(dep: &str, builtin: &str) -> IndexTexts {
        IndexTexts {
            dep: dep.to_string(),
            alias: "alias crypto-crc32c crc32c_generic\n".to_string(),
            softdep: "softdep ext4 pre: crypto-crc32c\n".to_string(),
            builtin: builtin.to_string(),
        }
    }

    fn files<'a>(texts: &'a IndexTexts, wanted: &[&str]) -> anyhow::Result<Vec<&'a str>> {
        let wanted: Vec<String> = wanted.iter().map(|name| name.to_string()).collect();
        Ok(closure(texts, &wanted, Path::new("/lib/modules/V"))?
            .into_iter()
            .map(|(file, _)| file)
            .collect())
    }

    #[test]
    fn the_closure_takes_every_dependency_and_nothing_else() {
        let texts = texts(DEP, "");
        assert_eq!(
            files(&texts, &["ext4"]).unwrap(),
            vec![
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/lib/crc16.ko",
                "kernel/crypto/crc32c_generic.ko"
            ]
        );
        let error = files(&texts, &["ext5"]).unwrap_err().to_string();
        assert!(
            error.contains("initrd module ext5 is neither in /lib/modules/V/modules.dep nor built into the kernel"),
            "{error}"
        );
    }

    /// Guards the cloud kernel option: a named module that the kernel has
    /// built in (ext4, nvme in linux-image-cloud-amd64) is satisfied, with
    /// no file in the initrd; one it has in neither form is still an error.
    #[test]
    fn a_built_in_module_is_satisfied_without_a_file() {
        // The cloud kernel's index: ext4 and what it needs are built in.
        let dep = "kernel/drivers/block/virtio_blk.ko:\nkernel/fs/xfs/xfs.ko:\n";
        let builtin = "kernel/fs/mbcache.ko\nkernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n\
                       kernel/drivers/nvme/host/nvme-core.ko\nkernel/drivers/nvme/host/nvme.ko\n";
        let texts = texts(dep, builtin);
        assert_eq!(
            files(&texts, &["virtio_blk", "ext4", "nvme", "nvme-core"]).unwrap(),
            vec!["kernel/drivers/block/virtio_blk.ko"]
        );
        let error = files(&texts, &["virtio_blk", "ahci"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("initrd module ahci is neither"), "{error}");
    }

    /// Guards the archive format: the kernel and cpio(1) must read it.
    #[test]
    fn the_archive_is_a_newc_cpio_that_cpio_lists() {
        let mut writer = CpioWriter::new(1_700_000_000);
        writer.add(".", &Member::Directory);
        writer.add("dev", &Member::Directory);
        writer.add(
            "dev/console",
            &Member::CharDevice {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        writer.add(
            "init",
            &Member::File {
                mode: 0o755,
                data: b"#!/bin/sh\n".to_vec(),
            },
        );
        let bytes = writer.finish();
        let dir = std::env::temp_dir().join(format!("nodows-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("initrd.cpio");
        std::fs::write(&archive, &bytes).unwrap();
        let output = std::process::Command::new("cpio")
            .args(["--list", "--verbose", "--numeric-uid-gid", "--file"])
            .arg(&archive)
            .output()
            .expect("cpio (Debian package cpio) must be installed");
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(
            listing.lines().last().unwrap().ends_with("init"),
            "{listing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
