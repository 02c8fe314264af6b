//! The host: its tools, its apt configuration (the default mirror), the
//! cargo target directory and SOURCE_DATE_EPOCH.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use xshell::{cmd, Shell};

use super::plan::Plan;
use super::ui::Ui;
use super::BadInput;

/// The commands and files the builder needs, with the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("eatmydata", "eatmydata"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("sfdisk", "fdisk"),
    ("qemu-img", "qemu-utils"),
    ("depmod", "kmod"),
    ("apt-cache", "apt"),
    ("tar", "tar"),
    ("veritysetup", "cryptsetup-bin"),
    ("sbsign", "sbsigntool"),
    ("sbverify", "sbsigntool"),
    ("faketime", "faketime"),
    ("objcopy", "binutils"),
    ("openssl", "openssl"),
    (
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        "systemd-boot-efi",
    ),
    (
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
    ),
];

fn find_tool(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).is_file();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).is_file());
    found
}

/// Checks every tool; as root on Debian, installs the missing ones with
/// apt-get (unless `no_install`), else stops with the command to run.
pub fn check_tools(ui: &mut Ui, no_install: bool) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !find_tool(tool))
        .map(|(_, package)| *package)
        .collect();
    packages.sort();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    let command = format!(
        "apt-get install --yes --no-install-recommends {}",
        packages.join(" ")
    );
    let is_root = unsafe { libc::geteuid() } == 0;
    if no_install || !is_root || !find_tool("apt-get") {
        bail!(
            "missing host tools from the packages {}; install them with:\n    {}{command}",
            packages.join(", "),
            if is_root { "" } else { "sudo " }
        );
    }
    ui.note(&format!("installing missing host tools: {command}"));
    let sh = Shell::new()?;
    ui.run(cmd!(
        sh,
        "apt-get install --yes --no-install-recommends {packages...}"
    ))?;
    Ok(())
}

/// One apt source: its URI, suites and components.
#[derive(Debug, Clone)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AptSources(pub Vec<AptSource>);

impl AptSources {
    /// Reads /etc/apt/sources.list, sources.list.d/*.list and the deb822
    /// sources.list.d/*.sources.
    pub fn from_host() -> AptSources {
        let mut sources = Vec::new();
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        let mut extra: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        extra.sort();
        files.extend(extra);
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if file.extension().is_some_and(|e| e == "sources") {
                sources.extend(parse_deb822(&text));
            } else if file.extension().is_some_and(|e| e == "list") {
                sources.extend(parse_one_line(&text));
            }
        }
        AptSources(sources)
    }

    fn uri_for(&self, suite: &str) -> Option<&AptSource> {
        self.0
            .iter()
            .find(|source| source.suites.iter().any(|s| s == suite))
    }
}

fn parse_one_line(text: &str) -> Vec<AptSource> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next()? != "deb" {
                return None;
            }
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(AptSource {
                uri,
                suites: vec![suite],
            })
        })
        .collect()
}

fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<String> {
            stanza
                .lines()
                .find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(':'))
                })
                .map(|value| value.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") || field("Enabled").iter().any(|e| e == "no")
        {
            continue;
        }
        for uri in field("URIs") {
            sources.push(AptSource {
                uri,
                suites: field("Suites"),
            });
        }
    }
    sources
}

/// The apt source lines for mmdebstrap: `--mirror` (SUITE and
/// SUITE-updates), or the host's mirrors for SUITE, SUITE-updates and
/// SUITE-security.
pub fn source_lines(
    host: &AptSources,
    suite: &str,
    mirror: Option<&str>,
) -> Result<Vec<String>, BadInput> {
    if let Some(mirror) = mirror {
        let mirror = mirror.trim_end_matches('/');
        return Ok(vec![
            format!("deb {mirror} {suite} main"),
            format!("deb {mirror} {suite}-updates main"),
        ]);
    }
    let Some(main) = host.uri_for(suite) else {
        return Err(BadInput(format!(
            "/etc/apt: the host's apt configuration has no mirror for `{suite}`; pass --mirror URL"
        )));
    };
    let mut lines = vec![format!(
        "deb {} {suite} main",
        main.uri.trim_end_matches('/')
    )];
    for extra in [format!("{suite}-updates"), format!("{suite}-security")] {
        if let Some(source) = host.uri_for(&extra) {
            lines.push(format!(
                "deb {} {extra} main",
                source.uri.trim_end_matches('/')
            ));
        }
    }
    Ok(lines)
}

/// Checks every package of the base against the host's apt cache, when the
/// host's apt knows the image's suite (otherwise mmdebstrap is the judge).
pub fn check_packages(ui: &mut Ui, host: &AptSources, plan: &Plan) -> anyhow::Result<()> {
    if host.uri_for(&plan.suite).is_none() {
        ui.note(&format!(
            "    the host's apt does not track {}; mmdebstrap will check the packages",
            plan.suite
        ));
        return Ok(());
    }
    let sh = Shell::new()?;
    let packages: Vec<&String> = plan.base_packages.iter().collect();
    let package_args = packages.clone();
    let output = cmd!(sh, "apt-cache policy {package_args...}")
        .env("LC_ALL", "C")
        .quiet()
        .ignore_status()
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut with_candidate = std::collections::BTreeSet::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':'));
        } else if let (Some(name), Some(candidate)) =
            (current, line.trim().strip_prefix("Candidate:"))
        {
            if candidate.trim() != "(none)" {
                with_candidate.insert(name.to_owned());
            }
        }
    }
    let unknown: Vec<&str> = packages
        .iter()
        .filter(|package| !with_candidate.contains(package.as_str()))
        .map(|package| package.as_str())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    for package in unknown {
        let origin = plan
            .services
            .iter()
            .find(|service| service.packages.iter().any(|p| p == package))
            .map(|service| {
                plan.source
                    .join("services")
                    .join(&service.name)
                    .join("service.xml")
            })
            .unwrap_or_else(|| {
                plan.source
                    .join("images")
                    .join(format!("{}.xml", plan.image))
            });
        problems.push(format!(
            "{}: Debian {} has no package `{package}` (apt-cache policy shows no candidate); fix the name",
            origin.display(),
            plan.suite
        ));
    }
    Err(BadInput(problems.join("\n")).into())
}

/// SOURCE_DATE_EPOCH from the environment, else the last commit's time,
/// else (a release tarball, a vendored copy: no git history) the newest
/// modification time of the source files, as reproducible-builds.org
/// suggests: a copy that keeps mtimes builds the same bytes.
pub fn source_date_epoch(ui: &Ui, source: &Path) -> anyhow::Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value.trim().parse().map_err(|_| {
            BadInput(format!(
                "SOURCE_DATE_EPOCH=`{value}` is not a number of seconds"
            ))
            .into()
        });
    }
    let sh = Shell::new()?;
    let output = cmd!(sh, "git -C {source} log -1 --format=%ct")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if let Ok(epoch) = text.trim().parse() {
        return Ok(epoch);
    }
    match newest_source_file(source) {
        Some((epoch, path)) => {
            ui.note(&format!(
                "no git history in {}: SOURCE_DATE_EPOCH={epoch}, the time of the newest source file {} (set SOURCE_DATE_EPOCH to choose another)",
                source.display(),
                path.display()
            ));
            Ok(epoch)
        }
        None => bail!(
            "{}: no git history and no source files to take SOURCE_DATE_EPOCH from; set SOURCE_DATE_EPOCH=SECONDS",
            source.display()
        ),
    }
}

/// What the newest-file epoch looks at: the image sources and the
/// workspace's code (never outputs, logs or `target`).
const SOURCE_PARTS: &[&str] = &[
    "images",
    "profiles",
    "services",
    "overlays",
    "models",
    "freebsd",
    "initd",
    "crates",
    "xtask",
    "Cargo.toml",
    "Cargo.lock",
];

/// The newest mtime (and its file) of the SOURCE_PARTS, leaving out
/// `images/out`.
fn newest_source_file(source: &Path) -> Option<(u64, PathBuf)> {
    let mut newest: Option<(u64, PathBuf)> = None;
    let mut pending: Vec<PathBuf> = Vec::new();
    for part in SOURCE_PARTS {
        let path = source.join(part);
        let mtime = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok());
        match mtime.and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok()) {
            Some(duration)
                if newest
                    .as_ref()
                    .is_none_or(|(best, _)| duration.as_secs() > *best) =>
            {
                newest = Some((duration.as_secs(), path))
            }
            _ if path.is_dir() => pending.push(path),
            _ => {}
        }
    }
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skip = name == ".git" || name == "target" || path == source.join("images/out");
                if !skip {
                    pending.push(path);
                }
            } else if kind.is_file() {
                let mtime = entry
                    .metadata()
                    .ok()
                    .and_then(|metadata| metadata.modified().ok())
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|duration| duration.as_secs());
                if let Some(mtime) = mtime {
                    if newest.as_ref().is_none_or(|(best, _)| mtime > *best) {
                        newest = Some((mtime, path));
                    }
                }
            }
        }
    }
    newest
}

/// The cargo target directory, from `cargo metadata` (honours CARGO_TARGET_DIR).
pub fn cargo_target_dir(source: &Path) -> anyhow::Result<PathBuf> {
    let sh = Shell::new()?;
    let manifest = workspace_manifest(source);
    let output = cmd!(
        sh,
        "cargo metadata --format-version 1 --no-deps --manifest-path {manifest}"
    )
    .quiet()
    .read()
    .context("cargo metadata failed")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&output).context("cargo metadata printed invalid json")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The workspace's Cargo.toml: the source's when it has one, else the xtask's own workspace.
pub fn workspace_manifest(source: &Path) -> PathBuf {
    let candidate = source.join("Cargo.toml");
    if candidate.is_file() {
        candidate
    } else {
        super::workspace_root().join("Cargo.toml")
    }
}
