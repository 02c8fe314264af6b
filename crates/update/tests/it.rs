//! Host tests of the update path on real files: an artifact built and
//! signed by `artifact::write`, applied to a slot file and an ESP directory
//! by `artifact::apply`, the same code the appliance runs on its block
//! devices. Bad input must be refused before the boot entries change.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use update::artifact::{self, Boot, Source, Target};
use update::entries;
use update::keys::SigningKey;
use update::{Error, Release, Slot};

const SLOT_SIZE: u64 = 8 << 20;

struct Fixture {
    dir: PathBuf,
    key: SigningKey,
    release: Release,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("nodows-update-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("esp/loader/entries")).unwrap();
        std::fs::create_dir_all(dir.join("esp/nodows/a")).unwrap();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        std::fs::write(
            dir.join("esp/loader/entries/nodows-1-a.conf"),
            entries::entry_text("nodows 1", "1", Slot::A, "root=PARTUUID=aaaa nodows.slot=a"),
        )
        .unwrap();
        // The slot holds the old version's bytes: an update must replace all of them.
        std::fs::write(dir.join("slot-b"), vec![0x5a; SLOT_SIZE as usize]).unwrap();
        let release = Release {
            image: "debian-ab".into(),
            profile: "test".into(),
            version: "2".into(),
            architecture: "amd64".into(),
        };
        Fixture {
            dir,
            key: SigningKey::from_seed([7; 32]),
            release,
        }
    }

    /// A root file system of `size` bytes: data, then zeros.
    fn rootfs(&self, size: usize) -> PathBuf {
        let mut bytes: Vec<u8> = (0..size / 2).map(|i| (i * 31 % 251) as u8).collect();
        bytes.resize(size, 0);
        let path = self.dir.join("rootfs.ext4");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn artifact(&self, release: &Release, rootfs_size: usize, key: &SigningKey) -> PathBuf {
        std::fs::write(self.dir.join("vmlinuz"), b"kernel bytes").unwrap();
        std::fs::write(self.dir.join("initrd"), vec![3u8; 100_000]).unwrap();
        self.write_artifact(
            release,
            rootfs_size,
            key,
            Boot::Kernel {
                vmlinuz: &self.dir.join("vmlinuz"),
                initrd: &self.dir.join("initrd"),
            },
        )
    }

    /// An artifact of a verified image: a UKI for each slot, whose
    /// `.osrel` names `release`'s version and whose command line names the slot.
    fn uki_artifact(&self, release: &Release, rootfs_size: usize) -> PathBuf {
        for slot in [Slot::A, Slot::B] {
            std::fs::write(
                self.dir.join(format!("uki-{slot}.efi")),
                tiny_uki(&release.version, slot),
            )
            .unwrap();
        }
        self.write_artifact(
            release,
            rootfs_size,
            &self.key,
            Boot::Ukis {
                a: &self.dir.join("uki-a.efi"),
                b: &self.dir.join("uki-b.efi"),
            },
        )
    }

    fn write_artifact(
        &self,
        release: &Release,
        rootfs_size: usize,
        key: &SigningKey,
        boot: Boot,
    ) -> PathBuf {
        let rootfs = self.rootfs(rootfs_size);
        let out = self.dir.join("update.nodows");
        artifact::write(
            &Source {
                release,
                kernel_version: "6.1.0-test",
                cmdline: "console=ttyS0,115200 init=/sbin/initd rw",
                boot,
                rootfs: &rootfs,
            },
            key,
            3,
            &out,
            &self.dir.join("work"),
        )
        .unwrap();
        out
    }

    fn target(&self) -> Target {
        Target {
            slot: Slot::B,
            slot_device: self.dir.join("slot-b"),
            slot_size: SLOT_SIZE,
            slot_partuuid: "bbbb".into(),
            esp: self.dir.join("esp"),
            running: Release {
                version: "1".into(),
                ..self.release.clone()
            },
            tries: 3,
        }
    }

    fn apply(&self, artifact: &Path) -> Result<artifact::Applied, Error> {
        let file = std::fs::File::open(artifact).unwrap();
        artifact::apply(file, &self.key.public(), &self.target())
    }

    fn entry_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("esp/loader/entries"))
            .unwrap()
            .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Refused, and neither the entries nor the slot changed.
    fn assert_refused_untouched(&self, result: Result<artifact::Applied, Error>, expected: &str) {
        match result {
            Err(Error::Refused(message)) => assert!(
                message.contains(expected),
                "expected `{expected}` in: {message}"
            ),
            other => panic!("expected a refusal containing `{expected}`, got {other:?}"),
        }
        assert_eq!(self.entry_files(), ["nodows-1-a.conf"]);
        let slot = std::fs::read(self.dir.join("slot-b")).unwrap();
        assert!(
            slot.iter().all(|byte| *byte == 0x5a),
            "the slot was written"
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Rewrites an artifact's members through `edit(name, bytes)`.
fn rewrite(artifact: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut members = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(artifact).unwrap());
    for member in archive.entries().unwrap() {
        let mut member = member.unwrap();
        let name = member.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).unwrap();
        if let Some(bytes) = edit(&name, bytes) {
            members.push((name, bytes));
        }
    }
    let mut builder = tar::Builder::new(std::fs::File::create(artifact).unwrap());
    for (name, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

#[test]
fn an_update_writes_the_inactive_slot_and_a_counted_default_entry() {
    let fixture = Fixture::new("good");
    let artifact = fixture.artifact(&fixture.release, 4 << 20, &fixture.key);
    let applied = fixture.apply(&artifact).unwrap();
    assert_eq!(applied.entry, "nodows-2-b+3.conf");
    assert_eq!(
        fixture.entry_files(),
        ["nodows-1-a.conf", "nodows-2-b+3.conf"]
    );
    let slot = std::fs::read(fixture.dir.join("slot-b")).unwrap();
    let rootfs = std::fs::read(fixture.dir.join("rootfs.ext4")).unwrap();
    assert_eq!(
        &slot[..rootfs.len()],
        &rootfs[..],
        "the zero ranges must read as zeros too"
    );
    assert_eq!(
        std::fs::read(fixture.dir.join("esp/nodows/b/vmlinuz")).unwrap(),
        b"kernel bytes"
    );
    let entry =
        std::fs::read_to_string(fixture.dir.join("esp/loader/entries/nodows-2-b+3.conf")).unwrap();
    assert!(
        entry.contains(
            "options root=PARTUUID=bbbb console=ttyS0,115200 init=/sbin/initd rw nodows.slot=b\n"
        ),
        "{entry}"
    );
    assert!(entry.contains("linux /nodows/b/vmlinuz\n"), "{entry}");
    // The new entry boots first; the old one stays.
    let listed = entries::list(&fixture.dir.join("esp")).unwrap();
    assert_eq!(listed[0].file, "nodows-2-b+3.conf");
    assert_eq!(listed[1].file, "nodows-1-a.conf");
}

#[test]
fn a_truncated_artifact_is_refused_and_leaves_no_entry_for_the_slot() {
    let fixture = Fixture::new("truncated");
    let artifact = fixture.artifact(&fixture.release, 4 << 20, &fixture.key);
    let bytes = std::fs::read(&artifact).unwrap();
    std::fs::write(&artifact, &bytes[..bytes.len() * 3 / 4]).unwrap();
    match fixture.apply(&artifact) {
        Err(Error::Refused(message)) => assert!(message.contains("truncated"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fixture.entry_files(), ["nodows-1-a.conf"]);
}

#[test]
fn a_part_with_a_wrong_hash_is_refused_and_leaves_no_entry_for_the_slot() {
    let fixture = Fixture::new("hash");
    let artifact = fixture.artifact(&fixture.release, 4 << 20, &fixture.key);
    // Another valid zstd stream of the same length would be needed to pass
    // the size check: recompress with a different byte, keep the manifest.
    let manifest: artifact::Manifest = {
        let mut archive = tar::Archive::new(std::fs::File::open(&artifact).unwrap());
        let mut first = archive.entries().unwrap().next().unwrap().unwrap();
        let mut text = String::new();
        first.read_to_string(&mut text).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let stored = manifest
        .part(artifact::PartKind::Vmlinuz)
        .unwrap()
        .stored_size as usize;
    rewrite(&artifact, |name, bytes| {
        if name == "vmlinuz.zst" {
            let other = zstd_same_length(b"kernel bytez", stored);
            Some(other)
        } else {
            Some(bytes)
        }
    });
    match fixture.apply(&artifact) {
        Err(Error::Refused(message)) => {
            assert!(message.contains("vmlinuz.zst: sha256"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fixture.entry_files(), ["nodows-1-a.conf"]);
    assert!(!fixture.dir.join("esp/nodows/b/vmlinuz").exists());
}

fn zstd_same_length(data: &[u8], length: usize) -> Vec<u8> {
    let mut encoded = Vec::new();
    {
        let mut encoder = zstd_encoder(&mut encoded);
        std::io::Write::write_all(&mut encoder, data).unwrap();
    }
    assert_eq!(
        encoded.len(),
        length,
        "test assumption: same compressed length"
    );
    encoded
}

fn zstd_encoder(out: &mut Vec<u8>) -> impl std::io::Write + '_ {
    struct Finish<'a>(Option<zstd_enc::Encoder<'a>>);
    mod zstd_enc {
        pub type Encoder<'a> = ::zstd::Encoder<'static, &'a mut Vec<u8>>;
    }
    impl std::io::Write for Finish<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.as_mut().unwrap().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.0.take().unwrap().finish().unwrap();
        }
    }
    Finish(Some(zstd::Encoder::new(out, 3).unwrap()))
}

#[test]
fn an_unsigned_artifact_is_refused_before_anything_is_written() {
    let fixture = Fixture::new("unsigned");
    let artifact = fixture.artifact(&fixture.release, 4 << 20, &fixture.key);
    rewrite(&artifact, |name, bytes| {
        (name != "manifest.json.sig").then_some(bytes)
    });
    fixture.assert_refused_untouched(fixture.apply(&artifact), "unsigned");
}

#[test]
fn an_artifact_signed_by_another_key_is_refused_before_anything_is_written() {
    let fixture = Fixture::new("other-key");
    let artifact = fixture.artifact(&fixture.release, 4 << 20, &SigningKey::from_seed([9; 32]));
    fixture.assert_refused_untouched(
        fixture.apply(&artifact),
        "not by this appliance's update key",
    );
}

#[test]
fn an_altered_manifest_is_refused_before_anything_is_written() {
    let fixture = Fixture::new("altered");
    let artifact = fixture.artifact(&fixture.release, 4 << 20, &fixture.key);
    rewrite(&artifact, |name, bytes| {
        if name == "manifest.json" {
            Some(
                String::from_utf8(bytes)
                    .unwrap()
                    .replace("\"version\": \"2\"", "\"version\": \"9\"")
                    .into_bytes(),
            )
        } else {
            Some(bytes)
        }
    });
    fixture.assert_refused_untouched(fixture.apply(&artifact), "does not verify");
}

#[test]
fn an_artifact_for_another_image_or_architecture_is_refused_before_anything_is_written() {
    let fixture = Fixture::new("other-image");
    let other_image = Release {
        image: "debian-web".into(),
        ..fixture.release.clone()
    };
    let artifact = fixture.artifact(&other_image, 4 << 20, &fixture.key);
    fixture.assert_refused_untouched(fixture.apply(&artifact), "for image `debian-web`");
    let other_architecture = Release {
        architecture: "arm64".into(),
        ..fixture.release.clone()
    };
    let artifact = fixture.artifact(&other_architecture, 4 << 20, &fixture.key);
    fixture.assert_refused_untouched(fixture.apply(&artifact), "for architecture `arm64`");
}

#[test]
fn a_root_file_system_larger_than_the_slot_is_refused_before_anything_is_written() {
    let fixture = Fixture::new("too-big");
    let artifact = fixture.artifact(&fixture.release, (SLOT_SIZE + 4096) as usize, &fixture.key);
    fixture.assert_refused_untouched(fixture.apply(&artifact), "slot b");
}

#[test]
fn blessing_drops_the_counter_and_a_failed_entry_sorts_last() {
    let fixture = Fixture::new("bless");
    let esp = fixture.dir.join("esp");
    let artifact = fixture.artifact(&fixture.release, 1 << 20, &fixture.key);
    fixture.apply(&artifact).unwrap();
    // systemd-boot counted one try down; then initd blessed the boot.
    let dir = esp.join(entries::ENTRIES_DIR);
    std::fs::rename(
        dir.join("nodows-2-b+3.conf"),
        dir.join("nodows-2-b+2-1.conf"),
    )
    .unwrap();
    match entries::bless(&esp, Slot::B).unwrap() {
        entries::Blessing::Blessed(entry) => assert_eq!(entry.file, "nodows-2-b.conf"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fixture.entry_files(),
        ["nodows-1-a.conf", "nodows-2-b.conf"]
    );
    assert!(matches!(
        entries::bless(&esp, Slot::B).unwrap(),
        entries::Blessing::AlreadyGood(_)
    ));
    // An entry with no tries left sorts after the good ones.
    std::fs::write(dir.join("nodows-3-a+0-3.conf"), "version 3\n").unwrap();
    std::fs::remove_file(dir.join("nodows-1-a.conf")).unwrap();
    let listed = entries::list(&esp).unwrap();
    assert_eq!(listed[0].file, "nodows-2-b.conf");
    assert!(listed[1].failed());
    let state = update::system::BootState::read(&esp, Slot::B, "2").unwrap();
    assert_eq!(
        state.to_line(),
        "slot=b version=2 state=good entry=nodows-2-b failed=3@a"
    );
}

#[test]
fn a_second_update_after_a_failed_one_replaces_the_failed_entry() {
    let fixture = Fixture::new("second");
    let dir = fixture.dir.join("esp").join(entries::ENTRIES_DIR);
    std::fs::write(dir.join("nodows-2-b+0-3.conf"), "version 2\n").unwrap();
    let artifact = fixture.artifact(&fixture.release, 1 << 20, &fixture.key);
    let applied = fixture.apply(&artifact).unwrap();
    assert_eq!(applied.entry, "nodows-2-b+3.conf");
    assert_eq!(
        fixture.entry_files(),
        ["nodows-1-a.conf", "nodows-2-b+3.conf"]
    );
}

/// Guards the cut between writing a new entry's temporary file and its
/// rename: the leftover is removed by the next update of that slot.
#[test]
fn a_leftover_temporary_entry_is_removed_by_the_next_update() {
    let fixture = Fixture::new("leftover");
    let dir = fixture.dir.join("esp").join(entries::ENTRIES_DIR);
    std::fs::write(dir.join("nodows-2-b+3.conf.new"), "half").unwrap();
    let artifact = fixture.artifact(&fixture.release, 1 << 20, &fixture.key);
    fixture.apply(&artifact).unwrap();
    assert_eq!(
        fixture.entry_files(),
        ["nodows-1-a.conf", "nodows-2-b+3.conf"]
    );
}

/// A PE file like a unified kernel image as far as the update reads one:
/// an `.osrel` section (with NODOWS_VERSION) and a `.cmdline` section.
fn tiny_uki(version: &str, slot: Slot) -> Vec<u8> {
    let osrel = format!("ID=debian\nVERSION_ID=\"12\"\nNODOWS_VERSION={version}\n");
    let cmdline = format!("root=PARTLABEL=root-{slot} nodows.slot={slot}");
    let mut bytes = vec![0u8; 0x200];
    bytes[..2].copy_from_slice(b"MZ");
    bytes[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    bytes[0x80..0x84].copy_from_slice(b"PE\0\0");
    bytes[0x86..0x88].copy_from_slice(&2u16.to_le_bytes());
    // No optional header: the section table follows the COFF header.
    let mut entry = 0x98;
    let mut offset = 0x200u32;
    for (name, text) in [(".cmdline", &cmdline), (".osrel", &osrel)] {
        let size = text.len() as u32;
        bytes[entry..entry + name.len()].copy_from_slice(name.as_bytes());
        bytes[entry + 8..entry + 12].copy_from_slice(&size.to_le_bytes());
        // Raw data is padded; the virtual size bounds the text.
        bytes[entry + 16..entry + 20].copy_from_slice(&(size + 16).to_le_bytes());
        bytes[entry + 20..entry + 24].copy_from_slice(&offset.to_le_bytes());
        entry += 40;
        offset += size + 16;
    }
    for text in [&cmdline, &osrel] {
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
    }
    bytes
}

fn uki_files(esp: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(esp.join(entries::UKI_DIR))
        .map(|items| {
            items
                .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_pe_section_is_found_by_name_and_bounded_by_its_virtual_size() {
    let pe = tiny_uki("7", Slot::B);
    let (offset, size) = update::pe::locate(&pe, ".osrel").unwrap();
    assert_eq!(
        &pe[offset as usize..offset as usize + size],
        b"ID=debian\nVERSION_ID=\"12\"\nNODOWS_VERSION=7\n"
    );
    assert!(update::pe::locate(&pe, ".linux").is_none());
    assert!(update::pe::locate(b"MZ but nothing else", ".osrel").is_none());
    let mut broken = pe.clone();
    broken[0x80] = b'X';
    assert!(update::pe::locate(&broken, ".osrel").is_none());
}

/// Verified A/B images: the update installs the target slot's UKI as a
/// counted type #2 entry (and only that one), bless drops its counter, and
/// a failed UKI entry sorts last and is reported with its version.
#[test]
fn a_verified_update_installs_the_slots_uki_with_tries_and_bless_blesses_it() {
    let fixture = Fixture::new("uki");
    let esp = fixture.dir.join("esp");
    // The image as built: slot a's blessed UKI, no type #1 entries.
    std::fs::remove_file(esp.join("loader/entries/nodows-1-a.conf")).unwrap();
    std::fs::create_dir_all(esp.join(entries::UKI_DIR)).unwrap();
    std::fs::write(
        esp.join(entries::UKI_DIR).join("nodows-1-a.efi"),
        tiny_uki("1", Slot::A),
    )
    .unwrap();
    let artifact = fixture.uki_artifact(&fixture.release, 1 << 20);
    let applied = fixture.apply(&artifact).unwrap();
    assert_eq!(applied.entry, "nodows-2-b+3.efi");
    assert_eq!(uki_files(&esp), ["nodows-1-a.efi", "nodows-2-b+3.efi"]);
    assert_eq!(
        std::fs::read(esp.join(entries::UKI_DIR).join("nodows-2-b+3.efi")).unwrap(),
        tiny_uki("2", Slot::B),
        "slot b's UKI, not slot a's"
    );
    assert!(
        !esp.join("nodows/b").exists(),
        "no loose kernel for a UKI entry"
    );
    let rootfs = std::fs::read(fixture.dir.join("rootfs.ext4")).unwrap();
    assert_eq!(
        &std::fs::read(fixture.dir.join("slot-b")).unwrap()[..rootfs.len()],
        &rootfs[..]
    );
    let listed = entries::list(&esp).unwrap();
    assert_eq!(listed[0].file, "nodows-2-b+3.efi");
    assert_eq!(listed[0].version, "2");
    assert_eq!(listed[1].version, "1");

    // systemd-boot counted one try down; initd blessed the boot.
    let dir = esp.join(entries::UKI_DIR);
    std::fs::rename(dir.join("nodows-2-b+3.efi"), dir.join("nodows-2-b+2-1.efi")).unwrap();
    match entries::bless(&esp, Slot::B).unwrap() {
        entries::Blessing::Blessed(entry) => assert_eq!(entry.file, "nodows-2-b.efi"),
        other => panic!("{other:?}"),
    }
    assert_eq!(uki_files(&esp), ["nodows-1-a.efi", "nodows-2-b.efi"]);

    // A next version into slot a that runs out of tries: reported, sorted last.
    std::fs::remove_file(dir.join("nodows-1-a.efi")).unwrap();
    std::fs::write(dir.join("nodows-3-a+0-3.efi"), tiny_uki("3", Slot::A)).unwrap();
    let state = update::system::BootState::read(&esp, Slot::B, "2").unwrap();
    assert_eq!(
        state.to_line(),
        "slot=b version=2 state=good entry=nodows-2-b failed=3@a"
    );
}

/// A cut between writing the UKI and its rename leaves `FILE.efi.new`,
/// which systemd-boot does not read and the next update removes.
#[test]
fn a_leftover_temporary_uki_is_removed_by_the_next_update() {
    let fixture = Fixture::new("uki-leftover");
    let esp = fixture.dir.join("esp");
    std::fs::create_dir_all(esp.join(entries::UKI_DIR)).unwrap();
    std::fs::write(
        esp.join(entries::UKI_DIR).join("nodows-2-b+3.efi.new"),
        "half",
    )
    .unwrap();
    let artifact = fixture.uki_artifact(&fixture.release, 1 << 20);
    fixture.apply(&artifact).unwrap();
    assert_eq!(uki_files(&esp), ["nodows-2-b+3.efi"]);
}

/// Once the appliance boots UKIs, an artifact with a plain kernel is
/// refused: systemd-boot would sort its type #1 entry after the UKIs.
#[test]
fn a_kernel_artifact_is_refused_on_an_appliance_that_boots_ukis() {
    let fixture = Fixture::new("uki-then-kernel");
    let esp = fixture.dir.join("esp");
    std::fs::create_dir_all(esp.join(entries::UKI_DIR)).unwrap();
    std::fs::write(
        esp.join(entries::UKI_DIR).join("nodows-1-a.efi"),
        tiny_uki("1", Slot::A),
    )
    .unwrap();
    let artifact = fixture.artifact(&fixture.release, 1 << 20, &fixture.key);
    fixture.assert_refused_untouched(fixture.apply(&artifact), "signed unified kernel images");
}

/// A verified root is a device-mapper device: the running slot is the one
/// partition beneath it.
#[test]
fn the_partition_beneath_a_device_mapper_root_is_found_in_sysfs() {
    let fixture = Fixture::new("slaves");
    let sys = fixture.dir.join("sys-dev-block");
    std::fs::create_dir_all(sys.join("254:0/slaves/vda3")).unwrap();
    std::fs::write(sys.join("254:0/slaves/vda3/dev"), "253:3\n").unwrap();
    std::fs::create_dir_all(sys.join("253:3")).unwrap();
    assert_eq!(
        update::system::backing_device(&sys, libc::makedev(254, 0)),
        Some(libc::makedev(253, 3))
    );
    assert_eq!(
        update::system::backing_device(&sys, libc::makedev(253, 3)),
        None
    );
}
