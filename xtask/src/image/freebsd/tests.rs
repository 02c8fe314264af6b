//! Tests of the FreeBSD image path. The fast ones need no build; the
//! pipeline test (NODOWS_SLOW_TESTS=1) builds a SYNTHETIC distribution tree
//! itself (no FreeBSD set can be downloaded here) and runs the whole
//! assembly; the QEMU boot runs only with NODOWS_FREEBSD_DIST=DIR (real sets).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xshell::{cmd, Shell};

use super::*;

fn repo() -> PathBuf {
    super::super::workspace_root()
}

fn slow_tests() -> bool {
    std::env::var_os("NODOWS_SLOW_TESTS").is_some_and(|value| value == "1")
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("nodows-freebsd-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 64-byte ELF header, SYNTHETIC: enough for the architecture check.
fn synthetic_elf_header(machine: u16, osabi: u8) -> Vec<u8> {
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2; // 64-bit
    header[5] = 1; // little endian
    header[6] = 1;
    header[7] = osabi;
    header[16] = 2; // ET_EXEC
    header[18..20].copy_from_slice(&machine.to_le_bytes());
    header
}

/// Writes a SYNTHETIC distribution tree: base.txz (./bin/sh given, a
/// freebsd-version script, a dummy loader.efi, an rc.subr stub, a few base
/// directories) and kernel.txz (a dummy ./boot/kernel/kernel).
fn synthetic_distribution(dir: &Path, sh_binary: &[u8]) -> PathBuf {
    let base = dir.join("synthetic-base");
    for sub in [
        "bin", "boot", "etc", "libexec", "usr/sbin", "var/run", "var/log", "root",
    ] {
        std::fs::create_dir_all(base.join(sub)).unwrap();
    }
    std::fs::write(base.join("bin/sh"), sh_binary).unwrap();
    std::fs::write(
        base.join("bin/freebsd-version"),
        "#!/bin/sh\n# SYNTHETIC freebsd-version for the nodows tests\nUSERLAND_VERSION=\"14.1-RELEASE-p5\"\necho $USERLAND_VERSION\n",
    )
    .unwrap();
    std::fs::write(
        base.join("boot/loader.efi"),
        b"SYNTHETIC loader.efi (not bootable)\n",
    )
    .unwrap();
    std::fs::write(base.join("etc/rc.subr"), "# SYNTHETIC rc.subr stub\n").unwrap();
    std::fs::write(base.join("etc/motd.template"), "SYNTHETIC FreeBSD base\n").unwrap();
    std::fs::write(
        base.join("etc/master.passwd"),
        "# SYNTHETIC master.passwd\nroot::0:0::0:0:Charlie &:/root:/bin/sh\ntoor:*:0:0::0:0:Bourne-again Superuser:/root:\n",
    )
    .unwrap();
    for database in ["pwd.db", "spwd.db"] {
        std::fs::write(base.join("etc").join(database), b"SYNTHETIC db\n").unwrap();
    }
    let kernel = dir.join("synthetic-kernel");
    std::fs::create_dir_all(kernel.join("boot/kernel")).unwrap();
    std::fs::write(kernel.join("boot/kernel/kernel"), b"SYNTHETIC kernel\n").unwrap();
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let sh = Shell::new().unwrap();
    for (tree, set) in [(&base, "base.txz"), (&kernel, "kernel.txz")] {
        let archive = dist.join(set);
        cmd!(sh, "tar --create --xz --file {archive} --directory {tree} --owner=0 --group=0 --numeric-owner --sort=name --mtime=@1700000000 .")
            .quiet()
            .run()
            .unwrap();
    }
    dist
}

#[test]
fn every_profile_resolves_with_freebsd_forms_and_mappings() {
    for profile in ["dev", "test", "production", "failover"] {
        let plan = resolve(&repo(), "freebsd", profile).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["net", "ssh", "web"], "{profile}");
        assert_eq!(plan.packages_to_add(), ["nginx"], "{profile}");
        let net = &plan.services[0];
        assert!(
            net.dir.ends_with("services/net/freebsd"),
            "{}",
            net.dir.display()
        );
        assert!(plan.services[1].dir.ends_with("services/ssh"));
        // The failover profile boots in its backup mode (keepalived, left
        // out here, would switch it).
        let mode = if profile == "failover" {
            "backup"
        } else {
            profile
        };
        assert_eq!(plan.mode, mode);
    }
    let dev = resolve(&repo(), "freebsd", "dev").unwrap();
    assert_eq!(dev.left_out, ["console", "test-agent"]);
    let text = dev.render();
    assert!(text.contains("packages to add: nginx\n"), "{text}");
    assert!(
        text.contains("left out (not available to FreeBSD): console test-agent\n"),
        "{text}"
    );
}

#[test]
fn debian_images_are_not_dispatched_here() {
    assert!(is_freebsd_image(&repo(), "freebsd"));
    assert!(!is_freebsd_image(&repo(), "debian"));
    assert!(!is_freebsd_image(&repo(), "no-such-image"));
}

/// Copies the data of the repo a test source tree needs.
fn source_tree(dir: &Path, image_xml: &str) -> PathBuf {
    let source = dir.join("source");
    for sub in [
        "images", "services", "profiles", "models", "overlays", "freebsd",
    ] {
        std::fs::create_dir_all(source.join(sub)).unwrap();
    }
    let sh = Shell::new().unwrap();
    let repo = repo();
    for sub in ["profiles", "models", "overlays", "freebsd", "services"] {
        let (from, to) = (repo.join(sub), source.clone());
        cmd!(sh, "cp -a {from} {to}").quiet().run().unwrap();
    }
    std::fs::write(source.join("images/freebsd.xml"), image_xml).unwrap();
    source
}

/// A service without `<package os="freebsd">` is not available to FreeBSD
/// images: refused with the image's file and line when the image lists
/// it, left out (and listed) when a profile does.
#[test]
fn service_without_freebsd_package_is_refused_by_the_image_and_left_out_of_a_profile() {
    let dir = scratch("mapping");
    let image = std::fs::read_to_string(repo().join("images/freebsd.xml"))
        .unwrap()
        .replace(
            "<service>web</service>",
            "<service>web</service>\n    <service>unmapped</service>",
        );
    let source = source_tree(&dir, &image);
    std::fs::create_dir_all(source.join("services/unmapped")).unwrap();
    std::fs::write(
        source.join("services/unmapped/service.xml"),
        "<?xml version=\"1.0\"?>\n<service name=\"unmapped\" type=\"service\" package=\"haproxy\">\n  <exec path=\"/usr/sbin/haproxy\"/>\n</service>\n",
    )
    .unwrap();
    let error = resolve(&source, "freebsd", "dev").unwrap_err().0;
    let image_path = source.join("images/freebsd.xml");
    let line = image
        .lines()
        .position(|line| line.contains("<service>unmapped</service>"))
        .unwrap()
        + 1;
    assert_eq!(
        error,
        format!(
            "{}:{line}: service `unmapped` is not available to FreeBSD images: {} has no <package os=\"freebsd\">; add one naming its FreeBSD package (empty if the base system has the program), or remove the service from {}",
            image_path.display(),
            source.join("services/unmapped/service.xml").display(),
            image_path.display()
        )
    );
    // Listed by a profile instead, it is left out.
    let plain = std::fs::read_to_string(repo().join("images/freebsd.xml")).unwrap();
    std::fs::write(&image_path, plain).unwrap();
    let profile = source.join("profiles/dev.xml");
    let text = std::fs::read_to_string(&profile).unwrap().replace(
        "<service>console</service>",
        "<service>console</service>\n    <service>unmapped</service>",
    );
    std::fs::write(&profile, text).unwrap();
    let plan = resolve(&source, "freebsd", "dev").unwrap();
    assert_eq!(plan.left_out, ["console", "unmapped", "test-agent"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn elf_header_check_names_the_architecture() {
    check_elf_amd64(&synthetic_elf_header(62, 9), "sh").unwrap();
    let error = check_elf_amd64(&synthetic_elf_header(183, 9), "base.txz: ./bin/sh")
        .unwrap_err()
        .0;
    assert_eq!(
        error,
        "base.txz: ./bin/sh: the set is for aarch64 (ELF machine 183, class 2), this image is amd64: use the amd64 sets"
    );
    assert_eq!(
        check_elf_amd64(b"#!/bin/sh\n", "x").unwrap_err().0,
        "x: not an ELF file"
    );
}

#[test]
fn linux_binaries_are_not_freebsd_elves() {
    let this = std::env::current_exe().unwrap();
    assert!(!is_freebsd_elf(&this).unwrap());
    assert_eq!(freebsd_abi_note(&std::fs::read(&this).unwrap()), None);
}

/// The rendered rc.d script must at least parse as a POSIX shell script.
#[test]
fn golden_rc_d_scripts_parse_as_shell() {
    let sh = Shell::new().unwrap();
    for case in ["freebsd-rc-dev", "freebsd-rc-production"] {
        let script = repo()
            .join("test_data/render")
            .join(case)
            .join("expected/usr/local/etc/rc.d/nodows");
        cmd!(sh, "sh -n {script}").quiet().run().unwrap();
        let text = std::fs::read_to_string(&script).unwrap();
        for line in [
            "# PROVIDE: nodows\n# REQUIRE: LOGIN NETWORKING\n# KEYWORD: shutdown\n",
            "\n. /etc/rc.subr\n",
            "\nname=\"nodows\"\nrcvar=\"nodows_enable\"\n",
            "\nload_rc_config $name\n",
            "\ncommand=\"/usr/local/sbin/initd\"\n",
            "\nrun_rc_command \"$1\"\n",
        ] {
            assert!(text.contains(line), "{case}: {line:?} missing");
        }
    }
}

#[test]
fn freebsd_version_is_read_from_the_script() {
    let text = "#!/bin/sh\nKERNEL_VERSION=\"x\"\nUSERLAND_VERSION=\"14.1-RELEASE-p5\"\n";
    assert_eq!(
        parse_freebsd_version(text).as_deref(),
        Some("14.1-RELEASE-p5")
    );
    assert_eq!(parse_freebsd_version("echo\n"), None);
}

#[test]
fn missing_set_is_bad_input_naming_the_file() {
    let dir = scratch("missing");
    let error = check_distribution(&dir).unwrap_err();
    let message = error.downcast_ref::<BadInput>().unwrap().0.clone();
    assert!(
        message.starts_with(&format!(
            "{}: cannot read the distribution set:",
            dir.join("base.txz").display()
        )),
        "{message}"
    );
    std::fs::write(dir.join("base.txz"), "not xz").unwrap();
    std::fs::write(dir.join("kernel.txz"), "not xz").unwrap();
    let message = check_distribution(&dir)
        .unwrap_err()
        .downcast::<BadInput>()
        .unwrap()
        .0;
    assert_eq!(
        message,
        format!(
            "{}: not an xz-compressed distribution set",
            dir.join("base.txz").display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression guard: a set for another architecture must fail before any
/// build or unpacking, with the architecture named.
#[test]
fn set_for_another_architecture_is_refused_before_any_slow_step() {
    let dir = scratch("aarch64");
    let dist = synthetic_distribution(&dir, &synthetic_elf_header(183, 9));
    let plan = resolve(&repo(), "freebsd", "dev").unwrap();
    let out = dir.join("out");
    let error = build_with(
        &plan,
        &dist,
        &out,
        false,
        Some(&dir.join("no-target")),
        None,
    )
    .unwrap_err();
    let message = error.downcast_ref::<BadInput>().unwrap().0.clone();
    assert!(
        message.contains("the set is for aarch64 (ELF machine 183"),
        "{message}"
    );
    assert!(
        !out.exists(),
        "nothing may be written before the checks pass"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn amd64_set_passes_the_checks_with_its_version() {
    let dir = scratch("amd64");
    let dist = synthetic_distribution(&dir, &synthetic_elf_header(62, 9));
    let distribution = check_distribution(&dist).unwrap();
    assert_eq!(distribution.version, "14.1-RELEASE-p5");
    assert_eq!(distribution.base_sha256.len(), 64);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn target_dir() -> PathBuf {
    super::super::host::cargo_target_dir(&repo()).unwrap()
}

fn zigbuild_initd() -> PathBuf {
    let sh = Shell::new().unwrap();
    let manifest = repo().join("Cargo.toml");
    cmd!(
        sh,
        "cargo zigbuild --release --manifest-path {manifest} -p initd --target x86_64-unknown-freebsd"
    )
    .run()
    .unwrap();
    target_dir().join("x86_64-unknown-freebsd/release")
}

#[test]
fn initd_cross_builds_to_a_freebsd_elf() {
    if !slow_tests() {
        println!("skipped: the FreeBSD cross build of initd runs with NODOWS_SLOW_TESTS=1");
        return;
    }
    let dir = zigbuild_initd();
    for binary in ["initd", "initctl"] {
        let path = dir.join(binary);
        assert!(is_freebsd_elf(&path).unwrap(), "{}", path.display());
        // lld leaves EI_OSABI at 0 and writes the FreeBSD ABI note (14.0 here).
        let version = freebsd_abi_note(&std::fs::read(&path).unwrap()).unwrap();
        assert!(version >= 1_300_000, "{version}");
        let mut header = [0u8; 64];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact(&mut header)
            .unwrap();
        check_elf_amd64(&header, binary).unwrap();
    }
}

fn file_entry<'a>(manifest: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in the manifest"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The non-zero 4 KiB blocks of a partition, in order (the file system's
/// used blocks; a small text file lies within one of them).
fn used_blocks(raw: &Path, start: usize, size: usize) -> Vec<u8> {
    use std::io::{Seek as _, SeekFrom};
    let mut file = std::fs::File::open(raw).unwrap();
    file.seek(SeekFrom::Start(start as u64)).unwrap();
    let mut used = Vec::new();
    let mut block = vec![0u8; 4096];
    for _ in 0..size / 4096 {
        file.read_exact(&mut block).unwrap();
        if block.iter().any(|&byte| byte != 0) {
            used.extend_from_slice(&block);
        }
    }
    used
}

/// Builds freebsd-PROFILE from a synthetic set whose ./bin/sh is the
/// cross-built initd (a real amd64 FreeBSD ELF), on a 192 MiB disk instead
/// of the image's 2 GiB (faster; the layout code is the same); returns the
/// scratch directory, the output directory and the root partition's used
/// blocks.
fn build_synthetic(profile: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    build_synthetic_in(&format!("pipeline-{profile}"), profile)
}

fn build_synthetic_in(name: &str, profile: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = scratch(name);
    let initd = std::fs::read(zigbuild_initd().join("initd")).unwrap();
    let dist = synthetic_distribution(&dir, &initd);
    let mut plan = resolve(&repo(), "freebsd", profile).unwrap();
    plan.disk_size_mib = 192;
    let out = build_with(
        &plan,
        &dist,
        &dir.join("out"),
        false,
        None,
        Some(1_764_000_000),
    )
    .unwrap();
    let sh = Shell::new().unwrap();
    let raw = out.join(format!("freebsd-{profile}.raw"));
    let table: serde_json::Value =
        serde_json::from_str(&cmd!(sh, "sfdisk --json {raw}").quiet().read().unwrap()).unwrap();
    let root = &table["partitiontable"]["partitions"][1];
    let start = root["start"].as_u64().unwrap() as usize * 512;
    let size = root["size"].as_u64().unwrap() as usize * 512;
    (dir, out, used_blocks(&raw, start, size))
}

/// Regression guard: makefs copies atime and ctime from the staging tree
/// and writes heap pointers into the superblock; two builds must still
/// give the same bytes.
#[test]
fn two_synthetic_builds_are_byte_identical() {
    if !slow_tests() {
        println!("skipped: the FreeBSD image pipeline test runs with NODOWS_SLOW_TESTS=1");
        return;
    }
    let (first_dir, first, _) = build_synthetic_in("reproducible-1", "test");
    std::thread::sleep(Duration::from_secs(2));
    let (second_dir, second, _) = build_synthetic_in("reproducible-2", "test");
    let sums = |dir: &Path| std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums(&first), sums(&second));
    assert!(sums(&first).contains("freebsd-test.raw"));
    std::fs::remove_dir_all(&first_dir).unwrap();
    std::fs::remove_dir_all(&second_dir).unwrap();
}

#[test]
fn synthetic_production_image_locks_root() {
    if !slow_tests() {
        println!("skipped: the FreeBSD image pipeline test runs with NODOWS_SLOW_TESTS=1");
        return;
    }
    let (dir, out, root) = build_synthetic("production");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(file_entry(&manifest, "/etc/master.passwd")["mode"], "0600");
    assert!(contains(
        &root,
        b"root:*:0:0::0:0:Charlie &:/root:/bin/sh\ntoor:*:"
    ));
    assert!(!contains(&root, b"root::0:0::0:0:Charlie"));
    assert!(contains(
        &root,
        b"nodows_mode='production'\n# production: syslogd opens no network socket."
    ));
    assert_eq!(manifest["services_left_out"], serde_json::json!([]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synthetic_distribution_builds_a_complete_image() {
    if !slow_tests() {
        println!("skipped: the FreeBSD image pipeline test runs with NODOWS_SLOW_TESTS=1");
        return;
    }
    let (dir, out, root_bytes) = build_synthetic("dev");
    let sh = Shell::new().unwrap();

    // Outputs and checksums.
    for file in [
        "freebsd-dev.raw",
        "freebsd-dev.qcow2",
        "manifest.json",
        "SHA256SUMS",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    {
        let _in_out = sh.push_dir(&out);
        cmd!(sh, "sha256sum --check --quiet SHA256SUMS")
            .quiet()
            .run()
            .unwrap();
    }

    // The manifest: version, packages to add, placement and modes.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["freebsd_version"], "14.1-RELEASE-p5");
    assert_eq!(manifest["packages_to_add"], serde_json::json!(["nginx"]));
    assert_eq!(
        manifest["services_left_out"],
        serde_json::json!(["console", "test-agent"])
    );
    for (path, mode) in [
        ("/usr/local/sbin/initd", "0555"),
        ("/usr/local/sbin/initctl", "0555"),
        ("/usr/local/etc/rc.d/nodows", "0555"),
        ("/etc/rc.conf", "0644"),
        ("/etc/fstab", "0644"),
        ("/boot/loader.conf", "0644"),
        ("/usr/local/etc/nodows/model.xml", "0644"),
        ("/usr/local/etc/nodows/mode", "0644"),
        ("/usr/local/etc/nodows/services/net/service.xml", "0644"),
        ("/usr/local/etc/nodows/services/web/service.xml", "0644"),
        ("/usr/local/etc/nodows/services/ssh/service.xml", "0644"),
        ("/etc/nginx/nginx.conf", "0644"),
        ("/etc/ssh/sshd_config", "0644"),
        ("/boot/kernel/kernel", "0644"),
        ("/etc/rc.subr", "0644"),
        ("/etc/issue", "0644"),
    ] {
        let entry = file_entry(&manifest, path);
        assert_eq!(entry["mode"], mode, "{path}");
        assert_eq!(entry["uid"], 0, "{path}");
    }
    assert_eq!(file_entry(&manifest, "/run")["type"], "symlink");
    assert!(manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|entry| entry["path"] != "/usr/local/etc/nodows/services/console/service.xml"));
    // The baked glue is the golden file of the dev case (same model keys).
    let golden = repo().join("test_data/render/freebsd-rc-dev/expected");
    for path in ["/etc/rc.conf", "/usr/local/etc/rc.d/nodows"] {
        let expected = super::super::util::sha256_file(&golden.join(&path[1..])).unwrap();
        assert_eq!(
            file_entry(&manifest, path)["sha256"],
            expected.as_str(),
            "{path}"
        );
    }
    let initd_sha = super::super::util::sha256_file(&zigbuild_initd().join("initd")).unwrap();
    assert_eq!(
        file_entry(&manifest, "/usr/local/sbin/initd")["sha256"],
        initd_sha.as_str()
    );

    // The partition table.
    let raw = out.join("freebsd-dev.raw");
    let table: serde_json::Value =
        serde_json::from_str(&cmd!(sh, "sfdisk --json {raw}").quiet().read().unwrap()).unwrap();
    let partitions = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt");
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions[0]["type"], ESP_TYPE);
    assert_eq!(partitions[0]["start"], 2048);
    assert_eq!(partitions[1]["type"], FREEBSD_UFS_TYPE);
    assert_eq!(partitions[1]["name"], ROOT_LABEL);
    assert_eq!(partitions[1]["uuid"], manifest["disk"]["root_partuuid"]);
    assert_eq!(table["partitiontable"]["id"], manifest["disk"]["disk_guid"]);

    // The ESP: the set's loader.efi as the removable-media boot path.
    let sector = |n: &serde_json::Value| n.as_u64().unwrap() as usize * 512;
    let esp = used_blocks(
        &raw,
        sector(&partitions[0]["start"]),
        sector(&partitions[0]["size"]),
    );
    assert!(!esp.is_empty());
    let esp_bytes = {
        use std::io::{Seek as _, SeekFrom};
        let mut file = std::fs::File::open(&raw).unwrap();
        file.seek(SeekFrom::Start(sector(&partitions[0]["start"]) as u64))
            .unwrap();
        let mut bytes = vec![0u8; sector(&partitions[0]["size"])];
        file.read_exact(&mut bytes).unwrap();
        bytes
    };
    let esp_path = dir.join("esp.img");
    std::fs::write(&esp_path, esp_bytes).unwrap();
    let listing = cmd!(sh, "mdir -i {esp_path} -b ::/EFI/BOOT")
        .env("MTOOLS_SKIP_CHECK", "1")
        .quiet()
        .read()
        .unwrap();
    assert_eq!(listing.trim(), "::/EFI/BOOT/BOOTX64.EFI");
    let loader = cmd!(sh, "mtype -i {esp_path} ::/EFI/BOOT/BOOTX64.EFI")
        .env("MTOOLS_SKIP_CHECK", "1")
        .quiet()
        .read()
        .unwrap();
    assert_eq!(loader, "SYNTHETIC loader.efi (not bootable)");

    // The UFS2 root: the superblock (makefs puts it at 8192, where FreeBSD's
    // superblock search accepts a UFS2 whose fs_sblockloc says so) and the
    // glue's bytes inside the file system.
    let root_head = {
        use std::io::{Seek as _, SeekFrom};
        let mut file = std::fs::File::open(&raw).unwrap();
        file.seek(SeekFrom::Start(sector(&partitions[1]["start"]) as u64))
            .unwrap();
        let mut bytes = vec![0u8; 65536 + 8192];
        file.read_exact(&mut bytes).unwrap();
        bytes
    };
    let superblock = ufs2_superblock(&root_head).expect("no UFS2 superblock at 65536 or 8192");
    let sblockloc = i64::from_le_bytes(
        root_head[superblock + 1000..superblock + 1008]
            .try_into()
            .unwrap(),
    );
    assert_eq!(sblockloc as usize, superblock);
    assert!(contains(
        &root_bytes,
        b"nodows_enable=\"YES\"\nnodows_mode='dev'"
    ));
    assert!(contains(
        &root_bytes,
        b"# PROVIDE: nodows\n# REQUIRE: LOGIN NETWORKING\n# KEYWORD: shutdown\n"
    ));
    assert!(contains(
        &root_bytes,
        b"vfs.root.mountfrom=\"ufs:/dev/gpt/rootfs\""
    ));
    // dev keeps the set's empty root password (console login without one).
    assert!(contains(&root_bytes, b"root::0:0::0:0:Charlie"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real boot: only with real distribution sets (none can be downloaded
/// here). rc(8) starts initd through rc.d/nodows; the console shows its
/// service lines; root (dev keeps the set's empty password) runs initctl.
#[test]
fn freebsd_image_boots_in_qemu_with_real_sets() {
    let Some(dist) = std::env::var_os("NODOWS_FREEBSD_DIST") else {
        println!("skipped: the FreeBSD QEMU boot test needs NODOWS_FREEBSD_DIST=DIR with the real base.txz and kernel.txz (none can be downloaded here)");
        return;
    };
    let plan = resolve(&repo(), "freebsd", "dev").unwrap();
    let work = crate::qemu::target_dir().unwrap().join("qemu");
    let out = build_with(
        &plan,
        Path::new(&dist),
        &work.join("freebsd-images"),
        false,
        None,
        None,
    )
    .unwrap();
    let mut config = crate::qemu::VmConfig::new("freebsd-dev", crate::qemu::Firmware::Uefi, &work);
    config.disk = Some(crate::qemu::Disk::Fresh {
        image: out.join("freebsd-dev.raw"),
        format: crate::qemu::DiskFormat::of(&out.join("freebsd-dev.raw")),
    });
    config.accel = crate::qemu::Accel::Tcg;
    config.agent = false;
    config.memory_mib = 1024;
    config.forward_tcp = vec![22];
    let mut vm = crate::qemu::Vm::start(&config).unwrap();
    let minutes = Duration::from_secs(600);
    vm.wait_for_console_text("nodows: service net running", minutes)
        .unwrap();
    vm.wait_for_console_text("nodows: service ssh running", minutes)
        .unwrap();
    let port = vm.host_port(22);
    vm.wait_for_open_port(port, minutes).unwrap();
    vm.wait_for_console_text("login:", minutes).unwrap();
    vm.send_console("root\n").unwrap();
    vm.send_console("/usr/local/sbin/initctl status; echo nodows-initctl-done\n")
        .unwrap();
    let line = vm
        .wait_for_console_text(crate::qemu::Pattern::regex(r"^ssh\s+running"), minutes)
        .unwrap();
    assert!(line.contains("running"), "{line}");
    vm.shutdown(minutes).ok();
}

#[derive(clap::Parser)]
struct ImageCommand {
    #[command(flatten)]
    args: super::super::Args,
}

fn parse_image_args(words: &[&str]) -> super::super::Args {
    use clap::Parser as _;
    ImageCommand::parse_from(std::iter::once("image").chain(words.iter().copied())).args
}

#[test]
fn freebsd_image_without_sets_is_bad_input() {
    let args = parse_image_args(&["--image", "freebsd", "--profile", "dev"]);
    let error = build(&args, &repo()).unwrap_err();
    assert_eq!(
        error.downcast_ref::<BadInput>().unwrap().0,
        "images/freebsd.xml is a FreeBSD image: give the directory of the distribution sets with --freebsd-dist DIR (base.txz, kernel.txz)"
    );
}

#[test]
fn freebsd_plan_is_printed_without_sets() {
    let args = parse_image_args(&["--image", "freebsd", "--profile", "test", "--plan"]);
    build(&args, &repo()).unwrap();
    let text = resolve(&repo(), "freebsd", "test").unwrap().render();
    assert!(
        text.starts_with("image: freebsd (freebsd)\nprofile: test\nmode: test\n"),
        "{text}"
    );
    assert!(
        text.contains("  net (services/net/freebsd)\n  ssh (services/ssh)\n  web (services/web)\n"),
        "{text}"
    );
}
