//! `cargo xtask check` and `cargo xtask bless` on scratch copies of the
//! tree: a new service is one directory (the dnsmasq of README's worked
//! example, xtask/tests/fixtures/dnsmasq), its check and golden case pass
//! without touching any other file, a new template changes only its own
//! service's golden files, and blessing keeps the executable bit.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use super::{stderr, workspace, Scratch, MIRROR};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file below `root`: its bytes and permission bits.
fn files(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let bytes = std::fs::read(&path).unwrap_or_default();
                files.insert(relative, (bytes, metadata.permissions().mode() & 0o7777));
            }
        }
    }
    files
}

/// The paths whose bytes or modes differ between two listings.
fn changed(
    before: &BTreeMap<String, (Vec<u8>, u32)>,
    after: &BTreeMap<String, (Vec<u8>, u32)>,
) -> Vec<String> {
    let mut paths: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Exit code 2 and `message` on stderr.
fn assert_bad_input(output: &Output, message: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr(output));
    assert!(stderr(output).contains(message), "{}", stderr(output));
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A scratch tree with the dnsmasq fixture added as services/dnsmasq.
fn with_dnsmasq(name: &str) -> Scratch {
    let scratch = Scratch::new(name);
    copy_dir(
        &workspace().join("xtask/tests/fixtures/dnsmasq"),
        &scratch.path("services/dnsmasq"),
    );
    scratch
}

fn check(scratch: &Scratch, more: &[&str]) -> Output {
    let mut args = vec!["check", "--source", scratch.source()];
    args.extend(more);
    xtask(&args)
}

#[test]
fn a_new_service_directory_checks_and_blesses_without_touching_any_other_file() {
    let scratch = Scratch::new("new-service");
    let before = files(Path::new(scratch.source()));
    copy_dir(
        &workspace().join("xtask/tests/fixtures/dnsmasq"),
        &scratch.path("services/dnsmasq"),
    );
    let added = files(Path::new(scratch.source()));
    let output = check(&scratch, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("golden cases: ok"),
        "{}",
        stdout(&output)
    );
    // Its golden case ran: without its expected files the check fails
    // naming them, and bless writes them back byte for byte.
    let expected = scratch.path("services/dnsmasq/tests/local/expected");
    std::fs::remove_dir_all(&expected).unwrap();
    assert_bad_input(
        &check(&scratch, &[]),
        &format!(
            "{}: rendered but not expected",
            expected.join("etc/dnsmasq.hosts").display()
        ),
    );
    let output = xtask(&["bless", "--source", scratch.source(), "dnsmasq"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "dnsmasq/local: wrote etc/dnsmasq.conf etc/dnsmasq.hosts\n"
    );
    let output = check(&scratch, &["--profile", "production"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let after = files(Path::new(scratch.source()));
    assert_eq!(changed(&added, &after), Vec::<String>::new());
    let outside: Vec<String> = changed(&before, &after)
        .into_iter()
        .filter(|path| !path.starts_with("services/dnsmasq/"))
        .collect();
    assert_eq!(outside, Vec::<String>::new());
}

#[test]
fn a_template_added_to_one_service_changes_no_other_services_golden_files() {
    let scratch = with_dnsmasq("new-template");
    let definition = scratch.path("services/dnsmasq/service.xml");
    let text = std::fs::read_to_string(&definition).unwrap().replace(
        "  <key name=\"domain\"",
        "  <file target=\"/etc/dnsmasq.d/domain.conf\" template=\"etc/domain.xsl\"/>\n  <key name=\"domain\"",
    );
    std::fs::write(&definition, text).unwrap();
    std::fs::write(
        scratch.path("services/dnsmasq/etc/domain.xsl"),
        "<xsl:stylesheet version=\"1.0\" xmlns:xsl=\"http://www.w3.org/1999/XSL/Transform\">\n  <xsl:output method=\"text\"/>\n  <xsl:param name=\"self\"/>\n  <xsl:template match=\"/\">domain=<xsl:value-of select=\"$self/key[@name = 'domain']\"/><xsl:text>&#10;</xsl:text></xsl:template>\n</xsl:stylesheet>\n",
    )
    .unwrap();
    let before = files(Path::new(scratch.source()));
    let output = check(&scratch, &[]);
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    let problems: Vec<&str> = error
        .lines()
        .filter(|line| line.contains("expected"))
        .collect();
    assert_eq!(problems.len(), 1, "{}", stderr(&output));
    assert!(
        problems[0].contains("services/dnsmasq/tests/local/expected/etc/dnsmasq.d/domain.conf: rendered but not expected"),
        "{}",
        problems[0]
    );
    // Blessing every case writes that one file.
    let output = xtask(&["bless", "--source", scratch.source()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let after = files(Path::new(scratch.source()));
    assert_eq!(
        changed(&before, &after),
        ["services/dnsmasq/tests/local/expected/etc/dnsmasq.d/domain.conf"]
    );
    assert_eq!(
        after["services/dnsmasq/tests/local/expected/etc/dnsmasq.d/domain.conf"],
        (b"domain=lan\n".to_vec(), 0o644)
    );
    assert!(check(&scratch, &[]).status.success());
}

#[test]
fn bless_keeps_the_executable_bit_and_leaves_other_cases_alone() {
    let scratch = Scratch::new("bless-modes");
    let cases = [
        "test_data/render/freebsd-rc-dev/expected",
        "services/keepalived/tests/fo1/expected",
    ];
    let blessed = files(Path::new(scratch.source()));
    for case in cases {
        std::fs::remove_dir_all(scratch.path(case)).unwrap();
    }
    // Another case's file, changed by hand: bless of other cases keeps it.
    let other = "test_data/render/dev-web01/expected/etc/nodows/net.sh";
    std::fs::write(scratch.path(other), "edited by hand\n").unwrap();
    let output = xtask(&[
        "bless",
        "--source",
        scratch.source(),
        "freebsd-rc-dev",
        "keepalived/fo1",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let after = files(Path::new(scratch.source()));
    assert_eq!(changed(&blessed, &after), [other]);
    assert_eq!(after[other].0, b"edited by hand\n");
    for (path, mode) in [
        (
            "test_data/render/freebsd-rc-dev/expected/usr/local/etc/rc.d/nodows",
            0o755,
        ),
        (
            "test_data/render/freebsd-rc-dev/expected/etc/rc.conf",
            0o644,
        ),
        (
            "services/keepalived/tests/fo1/expected/etc/keepalived/nodows-keepalived.sh",
            0o755,
        ),
        (
            "services/keepalived/tests/fo1/expected/etc/keepalived/keepalived.conf",
            0o644,
        ),
    ] {
        assert_eq!(after[path].1, mode, "{path}");
    }
    assert_bad_input(
        &xtask(&["bless", "--source", scratch.source(), "no-such-case"]),
        "no golden case or service with cases named no-such-case",
    );
}

/// A profile's <packages> and the services it lists change its own plan
/// only: every other profile keeps its base and its plan.
#[test]
fn a_profiles_packages_and_services_change_only_its_own_plan() {
    let scratch = with_dnsmasq("profile-packages");
    let plan = |profile: &str| {
        let output = super::xtask(&[
            "--plan",
            "--source",
            scratch.source(),
            "--profile",
            profile,
            "--mirror",
            MIRROR,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let production = plan("production");
    let dev_before = plan("dev");
    assert!(dev_before.contains("\n  dnsmasq-base\n"), "{dev_before}");
    scratch.edit(
        "profiles/dev.xml",
        "  <services>\n",
        "  <packages>\n    <package>dnsutils</package>\n  </packages>\n  <services>\n    <service>dnsmasq</service>\n",
    );
    let dev = plan("dev");
    assert!(
        dev.contains("profile packages (a base of its own): dnsutils\n"),
        "{dev}"
    );
    assert!(
        dev.contains("\n  dnsutils\n") && dev.contains("\n  dnsmasq (packages: dnsmasq-base)\n"),
        "{dev}"
    );
    assert_eq!(plan("production"), production);
    // A package name that is not one: the profile's file and line.
    scratch.edit(
        "profiles/dev.xml",
        "<package>dnsutils</package>",
        "<package>dns utils</package>",
    );
    assert_bad_input(
        &super::xtask(&["--plan", "--source", scratch.source(), "--mirror", MIRROR]),
        &format!(
            "{}:8: <package> needs a name, found `dns utils`",
            scratch.path("profiles/dev.xml").display()
        ),
    );
}
