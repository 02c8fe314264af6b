//! The output formats, the bmap, the SBOM and `cargo xtask flash`, on one
//! real dev image built with every format (NODOWS_SLOW_TESTS=1), and the
//! first command's errors and fresh-machine behaviour.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::{slow_tests, stderr, workspace, Scratch};

const ALL_FORMATS: &str = "raw,qcow2,vmdk,vhd,vhdx,gce,raw.gz,raw.zst";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn flash(out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["flash", "--profile", "dev", "--out", out.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xtask flash")
}

fn sha256(path: &Path) -> String {
    ok("sha256sum", &[path.to_str().unwrap()])[..64].to_owned()
}

/// Every format of the dev image is written and equals the raw disk; the
/// bmap works with bmaptool; the SBOM validates and names initd's crates;
/// flash writes what the bmap says and refuses every unsafe target.
#[test]
fn every_output_format_the_sbom_and_flash() {
    if !slow_tests() {
        eprintln!("not run: set NODOWS_SLOW_TESTS=1 to build images");
        return;
    }
    let scratch = Scratch::new("outputs");
    let out = scratch.path("out");
    let output = super::xtask(&[
        "--profile",
        "dev",
        "--format",
        ALL_FORMATS,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let dir = out.join("debian-dev");
    let file = |name: &str| dir.join(format!("debian-dev.{name}"));
    let raw = file("raw");
    let raw_str = raw.to_str().unwrap();
    let raw_size = std::fs::metadata(&raw).unwrap().len();

    // The qemu-img formats: info, check where the format has one, compare.
    for (extension, qemu_format, checkable) in [
        ("qcow2", "qcow2", true),
        ("vmdk", "vmdk", true),
        ("vhd", "vpc", false),
        ("vhdx", "vhdx", true),
    ] {
        let path = file(extension);
        let path = path.to_str().unwrap();
        let info: serde_json::Value = serde_json::from_str(&ok(
            "qemu-img",
            &["info", "--output=json", "-f", qemu_format, path],
        ))
        .unwrap();
        assert_eq!(info["format"], qemu_format, "{extension}");
        assert_eq!(info["virtual-size"], raw_size, "{extension}");
        if checkable {
            ok("qemu-img", &["check", "-f", qemu_format, path]);
        }
        ok(
            "qemu-img",
            &["compare", "-f", "raw", "-F", qemu_format, raw_str, path],
        );
    }
    let qcow2_info = ok("qemu-img", &["info", file("qcow2").to_str().unwrap()]);
    assert!(
        qcow2_info.contains("compression type: zstd"),
        "{qcow2_info}"
    );
    let vmdk_info = ok("qemu-img", &["info", file("vmdk").to_str().unwrap()]);
    assert!(vmdk_info.contains("streamOptimized"), "{vmdk_info}");
    // A fixed VHD is the disk and a 512-byte footer (cookie `conectix`).
    let mut footer = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(file("vhd")).unwrap(),
        &mut footer,
        raw_size,
    )
    .unwrap();
    assert_eq!(&footer, b"conectix");
    let vhd_info = ok(
        "qemu-img",
        &["info", "-f", "vpc", file("vhd").to_str().unwrap()],
    );
    assert_eq!(
        std::fs::metadata(file("vhd")).unwrap().len(),
        raw_size + 512,
        "fixed VHD: the disk and a 512-byte footer\n{vhd_info}"
    );

    // gce: exactly disk.raw of the raw's size, equal to it.
    let gce = file("gce.tar.gz");
    let listing = ok("tar", &["-tzvf", gce.to_str().unwrap()]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{listing}");
    assert!(lines[0].ends_with(" disk.raw"), "{listing}");
    assert!(lines[0].contains(&format!(" {raw_size} ")), "{listing}");
    let unpacked = scratch.path("gce");
    std::fs::create_dir_all(&unpacked).unwrap();
    ok(
        "tar",
        &[
            "-xzSf",
            gce.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    ok(
        "cmp",
        &[raw_str, unpacked.join("disk.raw").to_str().unwrap()],
    );

    // raw.gz and raw.zst decompress to the raw disk.
    for (extension, tool) in [("raw.gz", "gzip"), ("raw.zst", "zstd")] {
        let decompressed = scratch.path(extension);
        ok(
            "sh",
            &[
                "-c",
                &format!("{tool} -dc \"$1\" > \"$2\""),
                "sh",
                file(extension).to_str().unwrap(),
                decompressed.to_str().unwrap(),
            ],
        );
        ok("cmp", &[raw_str, decompressed.to_str().unwrap()]);
    }

    // bmaptool maps the same blocks, reads our bmap and reproduces the raw disk.
    let theirs = ok("bmaptool", &["create", raw_str]);
    let ours = std::fs::read_to_string(file("bmap")).unwrap();
    let mapped = |bmap: &str| {
        bmap.lines()
            .find(|line| line.trim_start().starts_with("<MappedBlocksCount>"))
            .map(|line| {
                line.split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned()
            })
    };
    assert_eq!(
        mapped(&ours),
        mapped(&theirs),
        "bmaptool create maps other blocks"
    );

    let copy = scratch.path("bmaptool-copy");
    ok(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            file("bmap").to_str().unwrap(),
            raw_str,
            copy.to_str().unwrap(),
        ],
    );
    ok("cmp", &[raw_str, copy.to_str().unwrap()]);

    // The manifest and SHA256SUMS list every output.
    super::sha256sums_are_right(&dir);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let listed: Vec<&str> = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["file"].as_str().unwrap())
        .collect();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for name in [
        "raw",
        "bmap",
        "qcow2",
        "vmdk",
        "vhd",
        "vhdx",
        "gce.tar.gz",
        "raw.gz",
        "raw.zst",
    ] {
        let name = format!("debian-dev.{name}");
        assert!(listed.contains(&name.as_str()), "manifest lacks {name}");
        assert!(
            sums.contains(&format!("  {name}\n")),
            "SHA256SUMS lacks {name}"
        );
    }

    check_sbom(&dir.join("sbom.spdx.json"), &listed);
    check_flash(&scratch, &out, &raw);
}

/// pyspdxtools validates the SBOM; it names every crate `cargo tree` says
/// goes into initd (normal edges, no proc macros), with a purl, and every output.
fn check_sbom(path: &Path, outputs: &[&str]) {
    ok("pyspdxtools", &["-i", path.to_str().unwrap()]);
    let sbom: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let purls: Vec<String> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["externalRefs"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["referenceLocator"].as_str().map(str::to_owned))
        .collect();
    let manifest = workspace().join("Cargo.toml");
    let tree = ok(
        "cargo",
        &[
            "tree",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--package",
            "initd",
            "--target",
            "x86_64-unknown-linux-musl",
            "--edges",
            "normal,no-proc-macro",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ],
    );
    let mut crates = 0;
    for line in tree.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        let purl = format!("pkg:cargo/{name}@{}", version.trim_start_matches('v'));
        assert!(purls.contains(&purl), "the SBOM lacks {purl}");
        crates += 1;
    }
    assert!(crates >= 3, "cargo tree listed {crates} crates:\n{tree}");
    let names: Vec<&str> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for output in outputs {
        assert!(names.contains(output), "the SBOM lacks the output {output}");
    }
    assert!(names.contains(&"openssh-client") || names.contains(&"base-files"));
}

/// A loop device over a fresh file, detached on drop.
struct LoopDevice {
    device: String,
}

impl LoopDevice {
    fn attach(backing: &Path) -> Option<LoopDevice> {
        let output = run("losetup", &["--find", "--show", backing.to_str().unwrap()]);
        if !output.status.success() {
            return None;
        }
        Some(LoopDevice {
            device: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.device]);
        let _ = run("losetup", &["--detach", &self.device]);
    }
}

fn assert_refused(output: &Output, target: &Path, before: &str, why: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr(output));
    let message = stderr(output);
    assert!(
        message.contains(why) && message.contains("nothing was written"),
        "{message}"
    );
    assert!(!message.contains("backtrace"), "{message}");
    assert_eq!(
        sha256(target),
        before,
        "a refused flash changed {}",
        target.display()
    );
}

fn check_flash(scratch: &Scratch, out: &Path, raw: &Path) {
    let raw_size = std::fs::metadata(raw).unwrap().len();
    // --to-file: a sparse copy equal to the raw disk.
    let copy = scratch.path("flashed.raw");
    let output = flash(out, &["--to-file", copy.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("verified"), "{}", stderr(&output));
    ok("cmp", &[raw.to_str().unwrap(), copy.to_str().unwrap()]);

    // --force-file into an existing file of the right size.
    let disk_file = scratch.path("disk-file");
    ok(
        "truncate",
        &["--size", &raw_size.to_string(), disk_file.to_str().unwrap()],
    );
    let before = sha256(&disk_file);
    let output = flash(out, &["--device", disk_file.to_str().unwrap(), "--yes"]);
    assert_refused(&output, &disk_file, &before, "not a block device");
    let output = flash(
        out,
        &[
            "--device",
            disk_file.to_str().unwrap(),
            "--force-file",
            "--yes",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    ok("cmp", &[raw.to_str().unwrap(), disk_file.to_str().unwrap()]);

    // Too small, missing, unconfirmed.
    let small = scratch.path("small");
    ok("truncate", &["--size", "64M", small.to_str().unwrap()]);
    let before = sha256(&small);
    let output = flash(
        out,
        &["--device", small.to_str().unwrap(), "--force-file", "--yes"],
    );
    assert_refused(&output, &small, &before, "smaller than the image");
    let output = flash(
        out,
        &[
            "--device",
            scratch.path("no-such-disk").to_str().unwrap(),
            "--yes",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no such device"),
        "{}",
        stderr(&output)
    );

    // A loop device, where this machine has them: written, then mounted and refused.
    let backing = scratch.path("loop-backing");
    ok(
        "truncate",
        &[
            "--size",
            &(raw_size + (64 << 20)).to_string(),
            backing.to_str().unwrap(),
        ],
    );
    let Some(loop_device) = LoopDevice::attach(&backing) else {
        eprintln!(
            "skipped: the loop device checks (losetup --find failed: not root, or no loop devices)"
        );
        return;
    };
    let device = loop_device.device.as_str();
    let output = flash(out, &["--device", device]);
    assert!(
        !output.status.success(),
        "flashed without --yes or a confirmation"
    );
    let output = flash(out, &["--device", device, "--yes"]);
    assert!(output.status.success(), "{}", stderr(&output));
    ok(
        "cmp",
        &[
            "--bytes",
            &raw_size.to_string(),
            raw.to_str().unwrap(),
            device,
        ],
    );
    let output = flash(
        out,
        &[
            "--device",
            backing.to_str().unwrap(),
            "--force-file",
            "--yes",
        ],
    );
    assert_refused(
        &output,
        &backing,
        &sha256(&backing),
        "backs the loop device",
    );
    // Read-only, and no lazy initialisation: the mount itself writes nothing.
    ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            device,
        ],
    );
    let mount_point = scratch.path("mnt");
    std::fs::create_dir_all(&mount_point).unwrap();
    ok(
        "mount",
        &["-o", "ro", device, mount_point.to_str().unwrap()],
    );
    let before = sha256(Path::new(device));
    let output = flash(out, &["--device", device, "--yes"]);
    assert_refused(&output, Path::new(device), &before, "is mounted at");
    ok("umount", &[mount_point.to_str().unwrap()]);
}

/// `xtask image --no-install` from `source` with a PATH that has the
/// build's tools except qemu-img (from /usr/bin: /usr/sbin is searched
/// anyway), RUST_BACKTRACE=1 and no SOURCE_DATE_EPOCH.
fn image_without_qemu_img(scratch: &Scratch, source: &str) -> Output {
    let bin = scratch.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "cargo",
        "rustc",
        "rustup",
        "git",
        "mmdebstrap",
        "eatmydata",
        "mcopy",
        "mmd",
        "tar",
        "apt-cache",
    ] {
        let found = ok("sh", &["-c", &format!("command -v {tool} || true")]);
        if !found.trim().is_empty() && !bin.join(tool).exists() {
            std::os::unix::fs::symlink(found.trim(), bin.join(tool)).unwrap();
        }
    }
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "image",
            "--profile",
            "dev",
            "--no-install",
            "--source",
            source,
        ])
        .args(["--out", scratch.path("out").to_str().unwrap()])
        .env("PATH", &bin)
        .env("RUST_BACKTRACE", "1")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

/// A missing tool is a plain error with what to do, never a backtrace,
/// even with RUST_BACKTRACE=1.
#[test]
fn a_missing_tool_is_a_plain_error_without_a_backtrace() {
    let scratch = Scratch::new("missing-tool");
    let output = image_without_qemu_img(&scratch, workspace().to_str().unwrap());
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("qemu-utils") && message.contains("apt-get install"),
        "{message}"
    );
    assert!(!message.to_lowercase().contains("backtrace"), "{message}");
    assert!(message.lines().count() <= 4, "{message}");
}

/// A copy of the sources without git history (a release tarball) takes
/// SOURCE_DATE_EPOCH from its newest file, so that it builds reproducibly
/// without a manual step (the build then stops at the missing tool).
#[test]
fn a_tree_without_git_history_takes_the_newest_source_file_time() {
    let scratch = Scratch::new("no-git");
    let newest = ok(
        "sh",
        &[
            "-c",
            // Not images/out (outputs and logs of this checkout's builds,
            // copied along with images/): the builder leaves it out too.
            "find \"$1\" -path \"$1/images/out\" -prune -o -type f -printf '%T@\\n' | sort -n | tail -1",
            "sh",
            scratch.source(),
        ],
    );
    let newest = newest.trim().split('.').next().unwrap().to_owned();
    let output = image_without_qemu_img(&scratch, scratch.source());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(&format!(
            "SOURCE_DATE_EPOCH={newest}, the time of the newest source file"
        )),
        "{printed}{}",
        stderr(&output)
    );
}

/// The README's first command on a machine whose Rust has no musl target:
/// a scratch RUSTUP_HOME holding the active toolchain without it (hard
/// links, so no 3 GB copy; the files rustup rewrites are real copies), and
/// nothing in the environment but what a login shell has. The build adds
/// the target itself and succeeds.
#[test]
fn the_first_command_installs_a_missing_musl_target() {
    if !slow_tests() {
        eprintln!("not run: set NODOWS_SLOW_TESTS=1 to build images");
        return;
    }
    let scratch = Scratch::new("fresh-rustup");
    let sysroot = ok("rustc", &["--print", "sysroot"]).trim().to_owned();
    let sysroot = std::fs::canonicalize(sysroot).unwrap();
    let rustup_home = scratch.path("rustup");
    let settings = std::fs::read_to_string(
        sysroot
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("settings.toml"),
    )
    .unwrap();
    let toolchain = settings
        .lines()
        .find_map(|line| line.strip_prefix("default_toolchain = "))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap();
    let copy = rustup_home.join("toolchains").join(&toolchain);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::write(rustup_home.join("settings.toml"), &settings).unwrap();
    ok(
        "cp",
        &[
            "--archive",
            "--link",
            sysroot.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    let rustlib = copy.join("lib/rustlib");
    for entry in std::fs::read_dir(&rustlib).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            // A real copy: rustup rewrites these in place.
            let text = std::fs::read(entry.path()).unwrap();
            std::fs::remove_file(entry.path()).unwrap();
            std::fs::write(entry.path(), text).unwrap();
        }
    }
    const MUSL: &str = "x86_64-unknown-linux-musl";
    std::fs::remove_dir_all(rustlib.join(MUSL)).unwrap();
    std::fs::remove_file(rustlib.join(format!("manifest-rust-std-{MUSL}"))).unwrap();
    let components = std::fs::read_to_string(rustlib.join("components")).unwrap();
    let components: String = components
        .lines()
        .filter(|line| !line.contains(MUSL))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(rustlib.join("components"), components).unwrap();
    // rustup's own record of the installed components: one stanza each.
    let config = std::fs::read_to_string(rustlib.join("multirust-config.toml")).unwrap();
    let config: Vec<&str> = config
        .split("\n\n")
        .filter(|stanza| !stanza.contains(MUSL))
        .collect();
    std::fs::write(rustlib.join("multirust-config.toml"), config.join("\n\n")).unwrap();

    let home = std::env::var("HOME").unwrap();
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let path =
        format!("{cargo_home}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .env("RUSTUP_HOME", &rustup_home)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&installed.stdout).contains(MUSL),
        "the scratch toolchain still has musl"
    );
    let out = scratch.path("out");
    let output = Command::new("cargo")
        .args([
            "xtask",
            "image",
            "--image",
            "debian",
            "--profile",
            "dev",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(workspace())
        .env_clear()
        .env("HOME", &home)
        .env("PATH", &path)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTUP_HOME", &rustup_home)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(&format!("rustup target add {MUSL}")),
        "{}",
        stderr(&output)
    );
    assert!(rustlib.join(MUSL).join("lib").is_dir());
    assert!(out.join("debian-dev/debian-dev.raw").is_file());
}

/// An output format nobody knows is bad input naming the file and line
/// (in the image definition) or the option (on the command line).
#[test]
fn an_unknown_output_format_is_bad_input() {
    let scratch = Scratch::new("unknown-format");
    scratch.edit(
        "images/debian.xml",
        "<format>qcow2</format>",
        "<format>iso</format>",
    );
    let output = super::xtask(&["--profile", "dev", "--plan", "--source", scratch.source()]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("debian.xml:") && message.contains("unknown output format `iso`"),
        "{message}"
    );
    let output = super::xtask(&["--profile", "dev", "--plan", "--format", "raw,iso"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("unknown output format `iso`"),
        "{}",
        stderr(&output)
    );
    let output = super::xtask(&["--profile", "dev", "--plan", "--format", "vmdk"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan = String::from_utf8_lossy(&output.stdout);
    assert!(
        plan.contains("outputs: raw vmdk (and a bmap beside the raw disk)"),
        "{plan}"
    );
}
