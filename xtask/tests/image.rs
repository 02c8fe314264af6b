//! Tests of `cargo xtask image`: plan snapshots and bad input (fast), and,
//! with NODOWS_SLOW_TESTS=1, real builds: byte-identical rebuilds and
//! interrupted builds that leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "image/check.rs"]
mod check;
#[path = "image/outputs.rs"]
mod outputs;

const MIRROR: &str = "http://deb.debian.org/debian";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("image")
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1764000000")
        .output()
        .expect("run xtask")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn slow_tests() -> bool {
    std::env::var("NODOWS_SLOW_TESTS").is_ok_and(|value| value == "1")
}

/// A scratch copy of the data an image is made from, to break on purpose.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("nodows-image-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // images/ without out/: a checkout's built images (gigabytes) are
        // no input of any test.
        std::fs::create_dir_all(dir.join("images")).unwrap();
        for entry in std::fs::read_dir(workspace().join("images")).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "out" {
                std::fs::copy(entry.path(), dir.join("images").join(entry.file_name())).unwrap();
            }
        }
        for part in [
            "profiles",
            "services",
            "overlays",
            "models",
            "freebsd",
            "test_data",
        ] {
            let status = Command::new("cp")
                .arg("-a")
                .arg(workspace().join(part))
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        Scratch(dir)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    fn edit(&self, relative: &str, from: &str, to: &str) {
        let path = self.path(relative);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{relative} has no `{from}`");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    fn source(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every image x profile plan matches its snapshot in tests/snapshots
/// (bless with UPDATE_EXPECT=1), so that a change to what an image holds
/// shows up in review.
#[test]
fn plan_snapshots() {
    let source = workspace();
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(source.join(dir))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".xml")
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    };
    let mut failures = Vec::new();
    for image in names("images") {
        // Other operating systems' images have their own builder and tests.
        let definition =
            std::fs::read_to_string(source.join(format!("images/{image}.xml"))).unwrap();
        if definition.contains("os=\"") && !definition.contains("os=\"debian\"") {
            continue;
        }
        for profile in names("profiles") {
            let output = xtask(&[
                "--plan",
                "--image",
                &image,
                "--profile",
                &profile,
                "--mirror",
                MIRROR,
            ]);
            assert!(
                output.status.success(),
                "{image} {profile}: {}",
                stderr(&output)
            );
            let actual = String::from_utf8(output.stdout).unwrap();
            let snapshot = source.join(format!("xtask/tests/snapshots/plan-{image}-{profile}.txt"));
            if std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") {
                std::fs::write(&snapshot, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{} differs (UPDATE_EXPECT=1 to bless):\n{actual}",
                    snapshot.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn plan_of_dev_has_console_and_production_has_not() {
    let dev = String::from_utf8(xtask(&["--plan", "--profile", "dev", "--mirror", MIRROR]).stdout)
        .unwrap();
    let production =
        String::from_utf8(xtask(&["--plan", "--profile", "production", "--mirror", MIRROR]).stdout)
            .unwrap();
    assert!(dev.contains("\n  console"), "{dev}");
    assert!(dev.contains("root login: autologin"), "{dev}");
    assert!(!production.contains("\n  console"), "{production}");
    assert!(!production.contains("\n  test-agent"), "{production}");
    assert!(production.contains("root login: locked"), "{production}");
    assert!(
        dev.contains("init=/sbin/initd") && dev.contains("console=ttyS0"),
        "{dev}"
    );
}

#[test]
fn list_shows_images_and_profiles() {
    let output = xtask(&["--list"]);
    let text = String::from_utf8(output.stdout).unwrap();
    for name in ["debian", "dev", "test", "production", "failover"] {
        assert!(text.contains(&format!("  {name}\n")), "{text}");
    }
}

#[test]
fn unknown_image_is_bad_input() {
    let output = xtask(&["--plan", "--image", "nope", "--mirror", MIRROR]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown image `nope`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_profile_is_bad_input() {
    let output = xtask(&["--plan", "--profile", "staging", "--mirror", MIRROR]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("unknown profile `staging`") && message.contains("production"),
        "{message}"
    );
}

#[test]
fn missing_overlay_names_profile_file_and_line() {
    let scratch = Scratch::new("overlay");
    scratch.edit(
        "profiles/dev.xml",
        "<overlay>dev</overlay>",
        "<overlay>nowhere</overlay>",
    );
    let output = xtask(&["--plan", "--source", scratch.source(), "--mirror", MIRROR]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("profiles/dev.xml:4: overlay `nowhere` does not exist"),
        "{message}"
    );
}

#[test]
fn invalid_xml_names_file_and_line() {
    let scratch = Scratch::new("xml");
    scratch.edit(
        "images/debian.xml",
        "<hostname>nodows</hostname>",
        "<hostname>nodows</host>",
    );
    let output = xtask(&["--plan", "--source", scratch.source(), "--mirror", MIRROR]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("images/debian.xml:7: invalid xml"),
        "{message}"
    );
}

#[test]
fn unknown_service_and_missing_disk_are_reported_together() {
    let scratch = Scratch::new("service");
    scratch.edit(
        "images/debian.xml",
        "<service>web</service>",
        "<service>gopher</service>",
    );
    scratch.edit(
        "images/debian.xml",
        "<disk size=\"1024MiB\" esp=\"64MiB\"/>",
        "",
    );
    let output = xtask(&["--plan", "--source", scratch.source(), "--mirror", MIRROR]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("unknown service `gopher`"), "{message}");
    assert!(message.contains("needs a <disk size="), "{message}");
}

#[test]
fn a_bad_ab_layout_is_bad_input() {
    let scratch = Scratch::new("ab-layout");
    scratch.edit(
        "images/debian-ab.xml",
        "<disk size=\"2048MiB\" esp=\"64MiB\" layout=\"ab\" data=\"64MiB\"/>",
        "<disk size=\"256MiB\" esp=\"64MiB\" layout=\"abc\" data=\"64MiB\"/>",
    );
    let output = xtask(&[
        "--plan",
        "--image",
        "debian-ab",
        "--source",
        scratch.source(),
        "--mirror",
        MIRROR,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("images/debian-ab.xml:13: <disk layout=\"abc\"> must be `single` or `ab`"),
        "{message}"
    );
}

/// Credentials inside the checkout (where they could be committed), or
/// readable by others, stop the build before anything slow with the file
/// and what to do, never with their content; a `<fleet remote>` with a
/// password in it is refused as bad input naming the profile's line.
#[test]
fn secrets_inside_the_repository_and_passwords_in_a_url_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("secrets");
    let out = scratch.path("out");
    let inside = workspace().join("target/nodows-secrets-test.pgpass");
    std::fs::write(&inside, "*:*:*:nodows_a:s3cret-inside\n").unwrap();
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let readable =
        std::env::temp_dir().join(format!("nodows-secrets-readable-{}", std::process::id()));
    std::fs::write(&readable, "*:*:*:nodows_a:s3cret-readable\n").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (secrets, expected) in [
        (&inside, "lies inside the repository"),
        (&readable, "is readable by group or others; chmod 600 it"),
    ] {
        let output = xtask(&[
            "--source",
            scratch.source(),
            "--profile",
            "production",
            "--out",
            out.to_str().unwrap(),
            "--no-install",
            "--secrets",
            secrets.to_str().unwrap(),
        ]);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert!(!out.join("debian-production").exists());
    }
    std::fs::remove_file(&inside).unwrap();
    std::fs::remove_file(&readable).unwrap();
    scratch.edit(
        "profiles/production.xml",
        "<cmdline>quiet</cmdline>",
        "<cmdline>quiet</cmdline>\n  <fleet remote=\"postgres://nodows_a:pw@db:5432/fleet\"/>",
    );
    let output = xtask(&[
        "--source",
        scratch.source(),
        "--profile",
        "production",
        "--plan",
    ]);
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "profiles/production.xml:9: <fleet remote=\"...\">: the URL holds a password"
        ),
        "{stderr}"
    );
}

/// A service package Debian does not have stops the build before any slow
/// step, naming the service file; nothing is written to the output.
#[test]
fn secure_boot_key_problems_stop_before_building() {
    let scratch = Scratch::new("secure-boot-key");
    let out = scratch.path("out");
    let not_pem = scratch.path("not-a-key.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--secure-boot-key", not_pem.to_str().unwrap()],
            "--secure-boot-key and --secure-boot-cert go together",
        ),
        (
            &[
                "--secure-boot-key",
                not_pem.to_str().unwrap(),
                "--secure-boot-cert",
                not_pem.to_str().unwrap(),
            ],
            "not a PEM file",
        ),
        (
            &[
                "--secure-boot-key",
                "/nonexistent/db.key",
                "--secure-boot-cert",
                not_pem.to_str().unwrap(),
            ],
            "--secure-boot-key /nonexistent/db.key",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "--source",
            scratch.source(),
            "--profile",
            "production",
            "--out",
            out.to_str().unwrap(),
            "--no-install",
        ];
        args.extend_from_slice(extra);
        let output = xtask(&args);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert!(!out.join("debian-production").exists());
        let log = std::fs::read_to_string(out.join("debian-production.log")).unwrap();
        assert!(!log.contains("mmdebstrap"), "{log}");
    }
}

#[test]
fn unknown_debian_package_stops_before_building() {
    let scratch = Scratch::new("package");
    scratch.edit(
        "services/web/service.xml",
        "package=\"nginx-light\"",
        "package=\"nginx-unobtainium\"",
    );
    let out = scratch.path("out");
    let output = xtask(&[
        "--source",
        scratch.source(),
        "--out",
        out.to_str().unwrap(),
        "--no-install",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("services/web/service.xml")
            && message.contains("no package `nginx-unobtainium`"),
        "{message}"
    );
    assert!(!out.join("debian-dev").exists());
    let log = std::fs::read_to_string(out.join("debian-dev.log")).unwrap();
    assert!(!log.contains("mmdebstrap"), "{log}");
}

fn sha256sums_are_right(dir: &Path) {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        let output = Command::new("sha256sum")
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&output.stdout).starts_with(sum),
            "{name}"
        );
    }
}

/// Two builds from the same inputs and cached base give byte-identical
/// raw images (fixed GUIDs, seeds, serials, clamped times).
#[test]
fn two_builds_give_identical_raw_images() {
    if !slow_tests() {
        eprintln!("not run: set NODOWS_SLOW_TESTS=1 to build images");
        return;
    }
    let scratch = Scratch::new("reproducible");
    let mut raws = Vec::new();
    for run in ["first", "second"] {
        let out = scratch.path(run);
        let output = xtask(&["--profile", "test", "--out", out.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        let dir = out.join("debian-test");
        sha256sums_are_right(&dir);
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["profile"], "test");
        assert!(
            manifest["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["path"] == "/usr/sbin/initd"),
            "initd missing (/sbin is /usr/sbin)"
        );
        assert!(manifest["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "openssh-server"));
        let sbom: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("sbom.spdx.json")).unwrap())
                .unwrap();
        assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
        raws.push(std::fs::read(dir.join("debian-test.raw")).unwrap());
    }
    assert!(raws[0] == raws[1], "the two raw images differ");
}

fn wait_for_line(log: &Path, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::fs::read_to_string(log).is_ok_and(|text| text.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never showed `{needle}`", log.display());
}

fn interrupt_at(args: &[&str], log: &Path, needle: &str, delay: Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("image")
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1764000000")
        .spawn()
        .unwrap();
    wait_for_line(log, needle, Duration::from_secs(600));
    std::thread::sleep(delay);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "the build was not interrupted: {status}"
    );
}

/// Ctrl-C while the disk is made: no image at the final path, no
/// temporary directories left.
#[test]
fn interrupted_build_leaves_no_output() {
    if !slow_tests() {
        eprintln!("not run: set NODOWS_SLOW_TESTS=1 to build images");
        return;
    }
    let scratch = Scratch::new("interrupt-output");
    let out = scratch.path("out");
    let args = ["--profile", "production", "--out", out.to_str().unwrap()];
    interrupt_at(
        &args,
        &out.join("debian-production.log"),
        "$ cd",
        Duration::ZERO,
    );
    let log = out.join("debian-production.log");
    // Once more, later: in the disk step.
    interrupt_at(&args, &log, "==> disk image", Duration::from_millis(300));
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["debian-production.log".to_owned()],
        "left behind: {left:?}"
    );
    let stale: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .contains("nodows-stage-debian-production")
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(stale.is_empty(), "staging left in /dev/shm");
}

/// Ctrl-C while mmdebstrap runs: no cache entry, complete or partial.
#[test]
fn interrupted_base_leaves_no_cache_entry() {
    if !slow_tests() {
        eprintln!("not run: set NODOWS_SLOW_TESTS=1 to build images");
        return;
    }
    let scratch = Scratch::new("interrupt-cache");
    let out = scratch.path("out");
    let cache = scratch.path("cache");
    let args = [
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ];
    interrupt_at(
        &args,
        &out.join("debian-dev.log"),
        "running mmdebstrap",
        Duration::from_secs(3),
    );
    let entries: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.is_empty(), "cache holds {entries:?}");
    assert!(!out.join("debian-dev").exists());
}

/// Guards a CARGO_TARGET_DIR shared by two checkouts: an xtask binary built
/// from one checkout refuses to run for another (it would build the other
/// tree) and says how to rebuild it.
#[test]
fn a_binary_built_for_another_checkout_refuses_to_run() {
    let other = std::env::temp_dir().join(format!("nodows-other-checkout-{}", std::process::id()));
    std::fs::create_dir_all(other.join("xtask")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--image", "debian", "--profile", "dev", "--plan"])
        .env("CARGO_MANIFEST_DIR", other.join("xtask"))
        .output()
        .expect("run xtask");
    let _ = std::fs::remove_dir_all(&other);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("this xtask binary was built from")
            && stderr(&output).contains("give each checkout its own CARGO_TARGET_DIR"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("backtrace"));
}
