//! End-to-end tests of verified boot (`<verified-boot/>`): Secure Boot
//! enforced by OVMF, the dm-verity root, configuration in RAM.
//!
//! Boots, fewest first:
//!   boot V1, production through OVMF with the build's own key enrolled by
//!     virt-fw-vars: ready, dm-verity root on the console, the web page
//!   boot V2, the test profile re-signed with Debian's snakeoil key, on a
//!     disk 512 MiB bigger than the image, under the snakeoil firmware
//!     variables: ready; `mount`, Secure Boot on, /usr not writable, the
//!     data partition grown to the disk's end, a live model edit reaches
//!     the service, a runtime change and markers on the data partition
//!     are made; reboot
//!   boot V3, the same disk again: the runtime change is gone, the markers
//!     and the ssh host key are kept
//!   boots V4-V6, refused by the firmware: systemd-boot signed with another
//!     key, an unsigned unified kernel image, one signed with another key
//!   boot V7, the test profile with one byte of a file flipped (direct
//!     kernel): reading the file fails with EIO, initd reports it
//! The test profile is production policy plus the test agent: the checks
//! that need a shell run there; production is checked by its console and
//! its web page.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};

use super::Runner;
use crate::boot::BuiltImage;
use crate::qemu::{self, Accel, Disk, DiskFormat, Firmware, Vm, VmConfig};

const IMAGE: &str = "debian";
/// OVMF with Secure Boot under TCG: firmware, systemd-boot, the UKI.
const UEFI_READY_TIMEOUT: Duration = Duration::from_secs(420);
/// A refusal is printed within seconds of the firmware starting.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(180);
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
/// Debian's snakeoil key pair (package ovmf), enrolled in OVMF_VARS_4M.snakeoil.fd;
/// the key is encrypted with the passphrase `snakeoil` (the package's README).
const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_PASSPHRASE: &str = "pass:snakeoil";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
/// The ESP starts at 1 MiB (mtools' `-i FILE@@OFFSET`).
const ESP_OFFSET: &str = "1M";
const UKI: &str = "::EFI/Linux/nodows.efi";
const BOOT_LOADER: &str = "::EFI/BOOT/BOOTX64.EFI";
/// What the snakeoil copy of the test image gets beyond the image's size.
const GROWN_BY_MIB: u64 = 512;
/// A file no boot reads (zstd is in the image for update artifacts).
const CORRUPTED_FILE: &str = "/usr/bin/zstd";

pub fn run(runner: &mut Runner, work_root: &Path, accel: Accel) {
    let work = work_root.join("verified");
    let image = |profile: &str| BuiltImage::find(None, IMAGE, profile);
    let user_vars = work.join("user-key-vars.fd");

    runner.step(
        "verified 1 production: Secure Boot with the build's key (virt-fw-vars), dm-verity root, ready, web page",
        || {
            std::fs::create_dir_all(&work)?;
            qemu::enrol_secure_boot_key(&qemu::secure_boot_test_cert()?, &user_vars)?;
            let image = image("production")?;
            let mut config = secure_config(&image, "verified-production", &user_vars, &work, accel);
            config.forward_tcp = vec![80];
            let mut vm = Vm::start(&config)?;
            vm.wait_for_console_text("initrd: dm-verity root /dev/dm-", UEFI_READY_TIMEOUT)?;
            let ready = vm.wait_for_ready(UEFI_READY_TIMEOUT)?;
            eprintln!("    {ready} (secure boot, qemu start to ready: {:.1}s)", vm.uptime().as_secs_f64());
            super::e2e::check_web_page(&mut vm, "production", None)?;
            vm.kill();
            Ok(())
        },
    );

    let mut snakeoil_disk: Option<PathBuf> = None;
    runner.step(
        "verified 2 test: re-signed with the snakeoil key, Secure Boot with OVMF's snakeoil variables, ready",
        || {
            std::fs::create_dir_all(&work)?;
            let image = image("test")?;
            let copy = work.join("test-snakeoil.raw");
            sparse_copy(&image.raw, &copy)?;
            for file in [BOOT_LOADER, UKI] {
                resign(&copy, file, &snakeoil_key(&work)?, SNAKEOIL_CERT, &work)?;
            }
            // As if flashed onto a bigger disk: the first boot grows the
            // data partition (last on the disk) to the end.
            let disk = std::fs::OpenOptions::new().write(true).open(&copy)?;
            disk.set_len(disk.metadata()?.len() + (GROWN_BY_MIB << 20))?;
            snakeoil_disk = Some(copy);
            Ok(())
        },
    );
    let mut snakeoil_vm: Option<Vm> = None;
    runner.step(
        "verified 2 test: root read-only on dm-verity, Secure Boot on, /usr not writable",
        || {
            let disk = snakeoil_disk
                .clone()
                .context("no re-signed disk: the step before failed")?;
            let image = image("test")?;
            let mut config = secure_config(
                &image,
                "verified-test",
                Path::new(qemu::OVMF_SNAKEOIL_VARS),
                &work,
                accel,
            );
            config.disk = Some(Disk::Fresh {
                image: disk,
                format: DiskFormat::Raw,
            });
            config.forward_tcp = vec![22, 80];
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(UEFI_READY_TIMEOUT)?;
            let beneath = verity_root(&mut vm)?;
            ensure!(
                beneath == "root",
                "the dm-verity root is over {beneath}, not the partition root"
            );
            let mounts = vm.succeed("cat /proc/self/mounts")?;
            // The kernel reads the firmware's SecureBoot variable at boot.
            let kernel_log = vm.succeed("dmesg")?;
            if !kernel_log.contains("Secure boot enabled") {
                return Err(vm.failure("the kernel log does not say `Secure boot enabled`"));
            }
            let refused = vm.fail("touch /usr/nodows-write-test")?;
            ensure!(
                refused.contains("Read-only file system"),
                "writing to /usr failed otherwise: {refused}"
            );
            let etc = mounts
                .lines()
                .find(|line| line.split_whitespace().nth(1) == Some("/etc"))
                .unwrap_or_default();
            ensure!(
                etc.starts_with("overlay /etc overlay"),
                "/etc is not an overlay in RAM: {etc}"
            );
            snakeoil_vm = Some(vm);
            Ok(())
        },
    );
    runner.step(
        "verified 2 test: the data partition grew to the end of the bigger disk at the first boot, and is mounted",
        || {
            let vm = snakeoil_vm
                .as_mut()
                .context("no machine: an earlier step failed")?;
            check_data_grown(vm)
        },
    );
    runner.step(
        "verified 2 test: a live model edit still reaches the service",
        || {
            let vm = snakeoil_vm
                .as_mut()
                .context("no machine: an earlier step failed")?;
            super::e2e::check_render_reload(vm)
        },
    );
    let mut rebooted_disk: Option<PathBuf> = None;
    runner.step(
        "verified 3 test: a reboot discards runtime changes outside the data partition and keeps what is on it",
        || {
            let mut vm = snakeoil_vm.take().context("no machine: an earlier step failed")?;
            vm.succeed("echo changed > /etc/nodows-runtime-change && echo changed > /var/lib/nodows-runtime-change && echo changed > /root/nodows-runtime-change && sync")?;
            let (marker, log_marker) = (super::updates::MARKER, super::updates::LOG_MARKER);
            vm.succeed(&format!("echo kept > {marker} && echo kept > {log_marker} && sync"))?;
            let kept = super::updates::persistent(&mut vm)?;
            ensure!(kept.marker == "kept" && kept.log_marker == "kept", "markers not written: {kept:?}");
            let overlay = vm.overlay().context("the machine has no disk")?.to_path_buf();
            vm.send_command("initctl reboot")?;
            // -no-reboot: QEMU exits when the guest reboots.
            vm.wait_for_exit(POWEROFF_TIMEOUT)?;
            drop(vm);
            rebooted_disk = Some(overlay.clone());
            let image = image("test")?;
            let mut config = secure_config(&image, "verified-test-reboot", Path::new(qemu::OVMF_SNAKEOIL_VARS), &work, accel);
            config.disk = Some(Disk::Overlay(overlay));
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(UEFI_READY_TIMEOUT)?;
            let left = vm.succeed("ls /etc/nodows-runtime-change /var/lib/nodows-runtime-change /root/nodows-runtime-change 2>/dev/null; true")?;
            if !left.trim().is_empty() {
                return Err(vm.failure(&format!("runtime changes survived the reboot: {left}")));
            }
            // The model edit of the boot before is gone too: the image's model is back.
            let model = vm.succeed("cat /etc/nodows/model.xml")?;
            ensure!(!model.contains("changed by the e2e test"), "the edited model survived the reboot");
            // The data partition kept the markers and the ssh host key.
            let after = super::updates::persistent(&mut vm)?;
            ensure!(after == kept, "the data partition lost state in the reboot: before {kept:?}, after {after:?}");
            check_data_grown(&mut vm)?;
            vm.kill();
            Ok(())
        },
    );
    drop(rebooted_disk);

    runner.step(
        "verified 4 production: systemd-boot signed with another key is refused by the firmware",
        || {
            // The build's key is not in the snakeoil variables.
            let image = image("production")?;
            let config = secure_config(
                &image,
                "verified-refused-loader",
                Path::new(qemu::OVMF_SNAKEOIL_VARS),
                &work,
                accel,
            );
            expect_refusal(&config, "BdsDxe: failed to load Boot0001", "Access Denied")
        },
    );
    runner.step(
        "verified 5 production: an unsigned unified kernel image is refused by the firmware",
        || {
            let image = image("production")?;
            let copy = work.join("production-unsigned.raw");
            sparse_copy(&image.raw, &copy)?;
            unsign(&copy, UKI, &work)?;
            let mut config = secure_config(
                &image,
                "verified-refused-unsigned",
                &user_vars,
                &work,
                accel,
            );
            config.disk = Some(Disk::Fresh {
                image: copy.clone(),
                format: DiskFormat::Raw,
            });
            let result = expect_refusal(
                &config,
                "Error loading \\EFI\\Linux\\nodows.efi",
                "Access Denied",
            );
            let _ = std::fs::remove_file(&copy);
            result
        },
    );
    runner.step(
        "verified 6 production: a unified kernel image re-signed with another key is refused by the firmware",
        || {
            let image = image("production")?;
            let copy = work.join("production-other-key.raw");
            sparse_copy(&image.raw, &copy)?;
            resign(&copy, UKI, &snakeoil_key(&work)?, SNAKEOIL_CERT, &work)?;
            let mut config = secure_config(&image, "verified-refused-other-key", &user_vars, &work, accel);
            config.disk = Some(Disk::Fresh { image: copy.clone(), format: DiskFormat::Raw });
            let result = expect_refusal(&config, "Error loading \\EFI\\Linux\\nodows.efi", "Access Denied");
            let _ = std::fs::remove_file(&copy);
            result
        },
    );

    runner.step(
        "verified 7 test: a flipped byte in a file of the root: reading it fails with EIO, initd reports it; the original reads fine",
        || {
            std::fs::create_dir_all(&work)?;
            let image = image("test")?;
            let copy = work.join("test-corrupted.raw");
            sparse_copy(&image.raw, &copy)?;
            let offset = flip_byte_of(&copy, CORRUPTED_FILE, &work)?;
            eprintln!("    flipped the byte at {offset} of the disk ({CORRUPTED_FILE})");
            let mut config = image.config("verified-corrupted", false, "", &work);
            config.accel = accel;
            config.disk = Some(Disk::Fresh { image: copy.clone(), format: DiskFormat::Raw });
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            let mark = vm.console_mark();
            let (code, output) = vm.execute(&format!("cat {CORRUPTED_FILE} > /dev/null"), Duration::from_secs(60))?;
            if code == 0 || !output.contains("Input/output error") {
                return Err(vm.failure(&format!("reading the corrupted {CORRUPTED_FILE} did not fail with EIO (exit {code}): {output}")));
            }
            vm.wait_for_console_text_since(mark, "nodows: integrity: device-mapper: verity", Duration::from_secs(30))?;
            let log = vm.succeed("cat /run/nodows/integrity.log")?;
            ensure!(log.contains("is corrupted"), "/run/nodows/integrity.log does not name the corruption: {log}");
            let status = vm.succeed("initctl status")?;
            ensure!(
                status.starts_with("integrity: "),
                "initctl status does not report the integrity error:\n{status}"
            );
            vm.kill();
            drop(vm);
            let _ = std::fs::remove_file(&copy);
            // The original image reads the same file fine.
            let mut config = image.config("verified-original", false, "", &work);
            config.accel = accel;
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            vm.succeed(&format!("cat {CORRUPTED_FILE} > /dev/null"))?;
            vm.kill();
            Ok(())
        },
    );
}

/// A machine booting `image`'s raw disk through OVMF with Secure Boot
/// enforced and the variable store `vars`.
fn secure_config(
    image: &BuiltImage,
    name: &str,
    vars: &Path,
    work: &Path,
    accel: Accel,
) -> VmConfig {
    let mut config = image.config(name, true, "", work);
    config.firmware = Firmware::UefiSecureBoot {
        vars: vars.to_path_buf(),
    };
    config.accel = accel;
    config
}

/// Boots and waits for the firmware's refusal (both texts on one line);
/// fails if the machine gets as far as the kernel.
fn expect_refusal(config: &VmConfig, first: &str, second: &str) -> anyhow::Result<()> {
    let mut vm = Vm::start(config)?;
    let pattern = qemu::Pattern::regex(&format!(
        "{}.*{}",
        regex_lite::escape(first),
        regex_lite::escape(second)
    ));
    let line = vm.wait_for_console_text(pattern, REFUSAL_TIMEOUT)?;
    let console = vm.console_text();
    if console.contains("initrd:") || console.contains("nodows: ready") {
        return Err(vm.failure("the refused image booted anyway"));
    }
    eprintln!("    refused: {}", line.trim());
    vm.kill();
    Ok(())
}

fn tool(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The snakeoil key without its passphrase (sbsign cannot be given one), in
/// the tests' work directory: a public test key, never a build's.
fn snakeoil_key(work: &Path) -> anyhow::Result<String> {
    let key = work.join("snakeoil.key");
    if !key.is_file() {
        tool(
            Command::new("openssl")
                .args([
                    "pkey",
                    "-in",
                    SNAKEOIL_KEY,
                    "-passin",
                    SNAKEOIL_PASSPHRASE,
                    "-out",
                ])
                .arg(&key),
        )?;
    }
    Ok(key.to_string_lossy().into_owned())
}

fn sparse_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    tool(Command::new("cp").arg("--sparse=always").arg(from).arg(to))?;
    Ok(())
}

fn esp(disk: &Path) -> String {
    format!("{}@@{ESP_OFFSET}", disk.display())
}

/// Takes `file` out of the disk's ESP, lets `change` alter it, puts it back.
fn edit_esp_file(
    disk: &Path,
    file: &str,
    work: &Path,
    change: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let local = work.join("esp-file.efi");
    let _ = std::fs::remove_file(&local);
    tool(
        Command::new("mcopy")
            .args(["-n", "-i", &esp(disk), file])
            .arg(&local),
    )?;
    change(&local)?;
    tool(
        Command::new("mcopy")
            .args(["-o", "-i", &esp(disk)])
            .arg(&local)
            .arg(file),
    )?;
    std::fs::remove_file(&local)?;
    Ok(())
}

/// Replaces the signature of `file` in the disk's ESP with one by `key`.
fn resign(disk: &Path, file: &str, key: &str, cert: &str, work: &Path) -> anyhow::Result<()> {
    edit_esp_file(disk, file, work, |local| {
        let signed = local.with_extension("signed");
        tool(Command::new("sbattach").arg("--remove").arg(local))?;
        tool(
            Command::new("sbsign")
                .args(["--key", key, "--cert", cert, "--output"])
                .arg(&signed)
                .arg(local),
        )?;
        std::fs::rename(&signed, local)?;
        Ok(())
    })
}

/// Removes every signature of `file` in the disk's ESP.
fn unsign(disk: &Path, file: &str, work: &Path) -> anyhow::Result<()> {
    edit_esp_file(disk, file, work, |local| {
        tool(Command::new("sbattach").arg("--remove").arg(local))?;
        Ok(())
    })
}

/// Flips one byte in the first block of `path` inside the root partition
/// (the GPT's partition 2) of a raw disk; returns the byte's disk offset.
fn flip_byte_of(disk: &Path, path: &str, work: &Path) -> anyhow::Result<u64> {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let table: serde_json::Value =
        serde_json::from_str(&tool(Command::new("sfdisk").arg("--json").arg(disk))?)?;
    let root = &table["partitiontable"]["partitions"][1];
    let start = root["start"].as_u64().context("no root partition")? * 512;
    let size = root["size"].as_u64().context("no root partition")? * 512;
    // debugfs reads the file system from a copy of the partition's bytes.
    let partition = work.join("root-partition.ext4");
    let _ = std::fs::remove_file(&partition);
    tool(
        Command::new("dd")
            .arg(format!("if={}", disk.display()))
            .arg(format!("of={}", partition.display()))
            .args(["bs=1M", "conv=sparse", "status=none"])
            .arg(format!("skip={}", start / (1024 * 1024)))
            .arg(format!("count={}", size / (1024 * 1024))),
    )?;
    let blocks = tool(
        Command::new("debugfs")
            .args(["-R", &format!("bmap {path} 0")])
            .arg(&partition),
    );
    std::fs::remove_file(&partition)?;
    let block: u64 = blocks?
        .trim()
        .parse()
        .with_context(|| format!("debugfs found no first block of {path}"))?;
    ensure!(block > 0, "{path} has no data block");
    let offset = start + block * 4096 + 100;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0xff;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&byte)?;
    file.sync_all()?;
    Ok(offset)
}

/// Checks that `/` is mounted read-only from the device-mapper device
/// `root` that initd's initrd made from the root hash on the kernel
/// command line; returns the GPT name of the one partition beneath it.
pub(super) fn verity_root(vm: &mut Vm) -> anyhow::Result<String> {
    let mounts = vm.succeed("cat /proc/self/mounts")?;
    let root = mounts
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some("/"))
        .context("no / in /proc/self/mounts")?
        .to_string();
    let fields: Vec<&str> = root.split_whitespace().collect();
    if !fields[0].starts_with("/dev/dm-") || !fields[3].split(',').any(|option| option == "ro") {
        return Err(vm.failure(&format!(
            "/ is not a read-only device-mapper device: {root}"
        )));
    }
    let dm = fields[0].trim_start_matches("/dev/");
    let name = vm.succeed(&format!("cat /sys/block/{dm}/dm/name"))?;
    ensure!(name.trim() == "root", "{dm} is named {name}, not root");
    let command_line = vm.succeed("cat /proc/cmdline")?;
    ensure!(
        command_line.contains("nodows.verity="),
        "no root hash on the command line: {command_line}"
    );
    let beneath = vm.succeed(&format!(
        "for d in /sys/block/{dm}/slaves/*; do sed -n 's/^PARTNAME=//p' $d/uevent; done"
    ))?;
    let names: Vec<&str> = beneath.split_whitespace().collect();
    match names.as_slice() {
        [only] => Ok(only.to_string()),
        _ => bail!("{dm} is not on exactly one named partition: {beneath:?}"),
    }
}

/// The data partition fills the disk that was made GROWN_BY_MIB bigger
/// than the image (it ends at the last whole MiB before the backup GPT),
/// and its mounted ext4 fills the partition.
fn check_data_grown(vm: &mut Vm) -> anyhow::Result<()> {
    let sizes = vm.succeed(
        "d=$(grep -l '^PARTNAME=data$' /sys/class/block/*/uevent); d=${d%/uevent}; \
         echo $(cat $d/start) $(cat $d/size) $(cat $d/../size) $(stat -f -c '%b %S' /var/lib/nodows)",
    )?;
    let numbers: Vec<u64> = sizes
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("sizes: {sizes}"))?;
    let [start, size, disk, blocks, block_size] = numbers[..] else {
        bail!("sizes: {sizes}");
    };
    let (mib, sector) = (1u64 << 20, 512);
    // Partitions end on whole MiB; the last MiB holds the backup GPT.
    ensure!(
        (start + size) * sector == disk * sector - mib,
        "the data partition ends at sector {} of a disk of {disk}: it did not grow to the end",
        start + size
    );
    ensure!(
        size * sector > GROWN_BY_MIB * mib,
        "the data partition is {size} sectors, not grown by {GROWN_BY_MIB} MiB"
    );
    // statfs leaves out ext4's own metadata: within 5 % of the partition.
    ensure!(
        blocks * block_size > size * sector / 100 * 95,
        "the ext4 on the data partition has {blocks} blocks of {block_size}: not grown to its {size} sectors"
    );
    Ok(())
}
