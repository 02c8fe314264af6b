//! The binaries an image ships answer no test hook, and the boot menu of a
//! locked image cannot edit the kernel command line.
//!
//! Test hooks exist only in builds with the `test-hooks` cargo feature
//! (`cargo test` turns it on through a dev-dependency); the image builder
//! (`image/assemble.rs`) never does. This check takes `/sbin/initd` and
//! `/usr/bin/nodows` out of the built disk and proves it: neither holds the
//! hooks' names, initd refuses `debug-panic` as a bad request, and the
//! renderer run with the hooks' variables neither sleeps nor aborts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::boot::BuiltImage;
use crate::qemu;

/// Every name a test hook answers to.
const HOOK_NAMES: [&str; 4] = [
    "debug-panic",
    "INITD_TEST_HOOKS",
    "NODOWS_TEST_SYNC_DELAY_MS",
    "NODOWS_FAULT_AFTER_RENAMES",
];

pub fn check_image(image: &BuiltImage, locked: bool, work_dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(work_dir);
    std::fs::create_dir_all(work_dir)?;
    let partitions = Partitions::read(&image.raw, work_dir)?;
    let initd = work_dir.join("initd");
    let nodows = work_dir.join("nodows");
    partitions.root_file("/sbin/initd", &initd)?;
    partitions.root_file("/usr/bin/nodows", &nodows)?;
    for binary in [&initd, &nodows] {
        let bytes = std::fs::read(binary)?;
        for name in HOOK_NAMES {
            ensure!(
                !contains(&bytes, name.as_bytes()),
                "{} of {} contains the test hook name {name}: built with the test-hooks feature",
                binary.file_name().unwrap_or_default().to_string_lossy(),
                image.name
            );
        }
    }
    check_initd_refuses_debug_panic(&initd, work_dir)?;
    check_renderer_ignores_hook_variables(&nodows, work_dir)?;
    let loader = partitions.esp_file("loader/loader.conf")?;
    let editor = loader
        .lines()
        .find_map(|line| line.strip_prefix("editor "))
        .map(str::trim);
    let expected = if locked { "no" } else { "yes" };
    ensure!(
        editor == Some(expected),
        "{}: loader.conf should say `editor {expected}`:\n{loader}",
        image.name
    );
    std::fs::remove_dir_all(work_dir)?;
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The image's initd as a foreground supervisor with no services: its
/// answer to `debug-panic` is the answer to any unknown request.
fn check_initd_refuses_debug_panic(initd: &Path, work_dir: &Path) -> anyhow::Result<()> {
    let services = work_dir.join("services");
    std::fs::create_dir_all(&services)?;
    let socket = work_dir.join("initd.sock");
    let mut child = Command::new(initd)
        .arg("--services")
        .arg(&services)
        .arg("--socket")
        .arg(&socket)
        .arg("--state")
        .arg(work_dir.join("state"))
        .arg("--render-command")
        .arg(work_dir.join("no-renderer"))
        .arg("--no-cgroups")
        .env("INITD_TEST_HOOKS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the image's initd")?;
    let result = (|| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(error) => bail!("{}: initd never listened: {error}", socket.display()),
            }
        };
        use std::io::{Read as _, Write as _};
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"debug-panic\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        ensure!(
            reply.starts_with("exit 2\nbad request \"debug-panic\""),
            "the image's initd answered debug-panic with {reply:?}"
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The image's renderer on the repository's model and services into a
/// scratch root, with a ten-minute sync delay and a fault after the first
/// rename asked for: it must finish, exit 0 and write every file.
fn check_renderer_ignores_hook_variables(nodows: &Path, work_dir: &Path) -> anyhow::Result<()> {
    let source = qemu::workspace_root();
    let root = work_dir.join("render-root");
    std::fs::create_dir_all(&root)?;
    let mut child = Command::new(nodows)
        .arg("render")
        .arg("--model")
        .arg(source.join("models/default.xml"))
        .arg("--services")
        .arg(source.join("services"))
        .arg("--root")
        .arg(&root)
        .args(["--profile", "production", "--json"])
        .env("NODOWS_TEST_SYNC_DELAY_MS", "600000")
        .env("NODOWS_FAULT_AFTER_RENAMES", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the image's nodows")?;
    // Far below the asked-for delay: a sleep would be plain.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the image's nodows slept: NODOWS_TEST_SYNC_DELAY_MS was honoured");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    ensure!(
        status.success(),
        "the image's nodows render exited with {status}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let change_set: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("the image's nodows printed no change set")?;
    let written = change_set["written"].as_array().map_or(0, Vec::len);
    ensure!(
        written >= 2,
        "the image's nodows wrote {written} files; a fault after one rename would stop at 1"
    );
    for target in change_set["written"].as_array().into_iter().flatten() {
        let target = target.as_str().unwrap_or_default();
        let path = root.join(target.trim_start_matches('/'));
        ensure!(path.is_file(), "{}: not written", path.display());
    }
    Ok(())
}

/// The partition table of a raw disk, as `sfdisk --json` prints it.
pub(super) struct PartitionTable {
    sector_size: u64,
    /// (start, size) in sectors, in table order.
    pub partitions: Vec<(u64, u64)>,
}

impl PartitionTable {
    pub fn read(raw: &Path) -> anyhow::Result<PartitionTable> {
        let table = Command::new("sfdisk")
            .arg("--json")
            .arg(raw)
            .output()
            .context("running sfdisk --json")?;
        ensure!(
            table.status.success(),
            "sfdisk --json {}: {}",
            raw.display(),
            String::from_utf8_lossy(&table.stderr)
        );
        let table: serde_json::Value = serde_json::from_slice(&table.stdout)?;
        let sector_size = table["partitiontable"]["sectorsize"]
            .as_u64()
            .unwrap_or(512);
        let partitions: Vec<(u64, u64)> = table["partitiontable"]["partitions"]
            .as_array()
            .context("sfdisk printed no partitions")?
            .iter()
            .filter_map(|partition| {
                Some((partition["start"].as_u64()?, partition["size"].as_u64()?))
            })
            .collect();
        ensure!(
            !partitions.is_empty(),
            "{}: the disk has no partitions",
            raw.display()
        );
        Ok(PartitionTable {
            sector_size,
            partitions,
        })
    }

    /// The root: the largest partition.
    pub fn largest(&self) -> (u64, u64) {
        self.partitions
            .iter()
            .copied()
            .max_by_key(|(_, size)| *size)
            .unwrap_or_default()
    }

    /// Copies one partition out of `raw` (sparse).
    pub fn copy(&self, raw: &Path, (start, size): (u64, u64), to: &Path) -> anyhow::Result<()> {
        let status = Command::new("dd")
            .arg(format!("if={}", raw.display()))
            .arg(format!("of={}", to.display()))
            .arg(format!("bs={}", self.sector_size))
            .arg(format!("skip={start}"))
            .arg(format!("count={size}"))
            .args(["conv=sparse", "status=none"])
            .status()?;
        ensure!(
            status.success(),
            "dd of a partition of {} failed",
            raw.display()
        );
        Ok(())
    }
}

/// The ESP (the first partition) and the root (the largest) of a raw
/// image, copied out.
struct Partitions {
    esp: PathBuf,
    root: PathBuf,
}

impl Partitions {
    fn read(raw: &Path, work_dir: &Path) -> anyhow::Result<Partitions> {
        let table = PartitionTable::read(raw)?;
        let partitions = Partitions {
            esp: work_dir.join("esp.fat"),
            root: work_dir.join("root.ext4"),
        };
        table.copy(raw, table.partitions[0], &partitions.esp)?;
        table.copy(raw, table.largest(), &partitions.root)?;
        Ok(partitions)
    }

    fn root_file(&self, path: &str, to: &Path) -> anyhow::Result<()> {
        let output = Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump {path} {}", to.display()))
            .arg(&self.root)
            .output()
            .context("running debugfs")?;
        ensure!(
            output.status.success() && to.is_file(),
            "debugfs dump {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(())
    }

    fn esp_file(&self, path: &str) -> anyhow::Result<String> {
        let output = Command::new("mtype")
            .arg("-i")
            .arg(&self.esp)
            .arg(format!("::/{path}"))
            .output()
            .context("running mtype")?;
        ensure!(
            output.status.success(),
            "mtype ::/{path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
