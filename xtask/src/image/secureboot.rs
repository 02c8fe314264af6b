//! Verified boot of `<verified-boot/>` profiles: the dm-verity hash tree of
//! the root (veritysetup, appended to the root partition), the unified
//! kernel image (systemd's stub with the kernel, initrd, os-release and the
//! command line that carries the root hash; objcopy) and the Secure Boot
//! signatures of it and of systemd-boot (sbsign).
//! The signing key is the user's (`--secure-boot-key` and
//! `--secure-boot-cert`) or a per-checkout test key under the target
//! directory, made on first use; no private key goes into the image, the
//! manifest or the log.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::ui::Ui;
use super::BadInput;

/// systemd's EFI stub (Debian's systemd-boot-efi).
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where systemd-boot finds unified kernel images by itself (type 2 entries).
pub const UKI_PATH: &str = "EFI/Linux/nodows.efi";

/// The Secure Boot signing key and its certificate (PEM).
#[derive(Clone, Debug)]
pub struct SigningKeys {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// Made by this build (the per-checkout test key).
    pub created: bool,
}

/// The per-checkout test key pair, made on first use.
pub fn test_key_paths(target_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = target_dir.join("nodows-keys");
    (
        dir.join("secureboot-test.key"),
        dir.join("secureboot-test.crt"),
    )
}

/// The user's key and certificate, or the per-checkout test pair (made with
/// openssl on first use: RSA 2048, self-signed, written to temporary names
/// and renamed, the key 0600).
pub fn signing_keys(
    ui: &mut Ui,
    key: Option<&Path>,
    cert: Option<&Path>,
    target_dir: &Path,
) -> anyhow::Result<SigningKeys> {
    match (key, cert) {
        (Some(key), Some(cert)) => {
            for (path, what) in [(key, "--secure-boot-key"), (cert, "--secure-boot-cert")] {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    BadInput(format!("{what} {}: {error}", path.display()))
                })?;
                if !text.contains("-----BEGIN ") {
                    return Err(BadInput(format!(
                        "{what} {}: not a PEM file (sbsign wants a PEM private key and X.509 certificate)",
                        path.display()
                    ))
                    .into());
                }
            }
            Ok(SigningKeys {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
                created: false,
            })
        }
        (None, None) => {
            let (key, cert) = test_key_paths(target_dir);
            if key.is_file() && cert.is_file() {
                return Ok(SigningKeys {
                    key,
                    cert,
                    created: false,
                });
            }
            let dir = key.parent().context("the key directory")?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let pid = std::process::id();
            let key_tmp = dir.join(format!(".secureboot-test.key.tmp-{pid}"));
            let cert_tmp = dir.join(format!(".secureboot-test.crt.tmp-{pid}"));
            let sh = Shell::new()?;
            let made = ui.run(cmd!(
                sh,
                "openssl req -new -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj /CN=nodows-secure-boot-test-key-of-this-checkout/ -keyout {key_tmp} -out {cert_tmp}"
            ));
            if let Err(error) = made {
                let _ = std::fs::remove_file(&key_tmp);
                let _ = std::fs::remove_file(&cert_tmp);
                return Err(error);
            }
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&cert_tmp, &cert)?;
            std::fs::rename(&key_tmp, &key)?;
            Ok(SigningKeys {
                key,
                cert,
                created: true,
            })
        }
        _ => Err(BadInput(
            "--secure-boot-key and --secure-boot-cert go together (a PEM private key and its X.509 certificate)"
                .to_string(),
        )
        .into()),
    }
}

/// The hash tree of the root, appended to it.
#[derive(Clone, Debug)]
pub struct Verity {
    pub data_blocks: u64,
    pub hash_blocks: u64,
    pub root_hash: String,
    pub salt: String,
}

impl Verity {
    /// The kernel command line word initd's initrd reads.
    pub fn cmdline_word(&self) -> String {
        format!(
            "nodows.verity={}:{}:{}",
            self.data_blocks, self.root_hash, self.salt
        )
    }
}

/// Blocks of a sha256 hash tree (4096-byte blocks, 128 hashes a block) over
/// `data_blocks`, without a superblock.
pub fn hash_tree_blocks(data_blocks: u64) -> u64 {
    let mut level = data_blocks;
    let mut total = 0;
    loop {
        level = level.div_ceil(128);
        total += level;
        if level <= 1 {
            return total;
        }
    }
}

/// The most file system blocks a partition of `partition_blocks` holds with
/// their hash tree behind them.
pub fn data_blocks_for(partition_blocks: u64) -> u64 {
    let mut data = partition_blocks - partition_blocks.div_ceil(127);
    while data + 1 + hash_tree_blocks(data + 1) <= partition_blocks {
        data += 1;
    }
    while data + hash_tree_blocks(data) > partition_blocks {
        data -= 1;
    }
    data
}

/// `veritysetup format` of `image` (the ext4 root of `data_blocks` blocks),
/// the tree appended at the end; the salt derives from the input hash.
pub fn format_verity(
    ui: &mut Ui,
    image: &Path,
    data_blocks: u64,
    input_hash: &str,
) -> anyhow::Result<Verity> {
    let salt = hex::encode(Sha256::digest(
        format!("{input_hash} verity-salt").as_bytes(),
    ));
    let length = std::fs::metadata(image)?.len();
    if length != data_blocks * 4096 {
        bail!(
            "{} is {length} bytes, not the {data_blocks} blocks of the verity data area",
            image.display()
        );
    }
    let sh = Shell::new()?;
    let (blocks, offset) = (data_blocks.to_string(), (data_blocks * 4096).to_string());
    let output = ui.run_output(cmd!(
        sh,
        "veritysetup format --no-superblock --hash=sha256 --data-block-size=4096 --hash-block-size=4096 --data-blocks={blocks} --hash-offset={offset} --salt={salt} {image} {image}"
    ))?;
    let root_hash = output
        .lines()
        .find_map(|line| line.strip_prefix("Root hash:"))
        .map(|hash| hash.trim().to_string())
        .filter(|hash| hash.len() == 64)
        .with_context(|| format!("veritysetup printed no root hash:\n{output}"))?;
    let hash_blocks = (std::fs::metadata(image)?.len() / 4096).saturating_sub(data_blocks);
    Ok(Verity {
        data_blocks,
        hash_blocks,
        root_hash,
        salt,
    })
}

/// The unified kernel image: systemd's stub with .osrel, .cmdline, .linux
/// and .initrd at the section addresses systemd's documentation gives for
/// objcopy, then signed. The kernel must fit below the initrd's address.
#[allow(clippy::too_many_arguments)]
pub fn unified_kernel_image(
    ui: &mut Ui,
    keys: &SigningKeys,
    os_release: &Path,
    cmdline: &str,
    vmlinuz: &Path,
    initrd: &Path,
    work: &Path,
    output: &Path,
    source_date_epoch: u64,
) -> anyhow::Result<()> {
    let kernel_size = std::fs::metadata(vmlinuz)?.len();
    if kernel_size >= 0x100_0000 {
        bail!(
            "{} is {kernel_size} bytes: the unified kernel image leaves 16 MiB for the kernel",
            vmlinuz.display()
        );
    }
    let cmdline_file = work.join("uki-cmdline.txt");
    std::fs::write(&cmdline_file, cmdline)?;
    let unsigned = work.join("nodows-unsigned.efi");
    let sh = Shell::new()?;
    let osrel = format!(".osrel={}", os_release.display());
    let cmdline_section = format!(".cmdline={}", cmdline_file.display());
    let linux = format!(".linux={}", vmlinuz.display());
    let initrd_section = format!(".initrd={}", initrd.display());
    // objcopy stamps the PE header with the clock's time: stopped at
    // SOURCE_DATE_EPOCH, as for sbsign.
    let frozen = faketime_absolute(source_date_epoch);
    ui.run(
        cmd!(
            sh,
            "faketime -f {frozen} objcopy --add-section {osrel} --change-section-vma .osrel=0x20000 --add-section {cmdline_section} --change-section-vma .cmdline=0x30000 --add-section {linux} --change-section-vma .linux=0x2000000 --add-section {initrd_section} --change-section-vma .initrd=0x3000000 {STUB} {unsigned}"
        )
        .env("TZ", "UTC"),
    )?;
    sign(ui, keys, &unsigned, output, source_date_epoch)?;
    std::fs::remove_file(&unsigned)?;
    Ok(())
}

/// `sbsign` of a PE file; the key's path is on the command line, never its bytes.
/// sbsign puts the clock's time into the signature (PKCS#7 signingTime), so
/// it runs under libfaketime with the clock stopped at SOURCE_DATE_EPOCH: the
/// signature, and so the image, is the same for the same inputs and key.
pub fn sign(
    ui: &mut Ui,
    keys: &SigningKeys,
    input: &Path,
    output: &Path,
    source_date_epoch: u64,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let (key, cert) = (&keys.key, &keys.cert);
    let frozen = faketime_absolute(source_date_epoch);
    ui.run(
        cmd!(
            sh,
            "faketime -f {frozen} sbsign --key {key} --cert {cert} --output {output} {input}"
        )
        .env("TZ", "UTC"),
    )?;
    ui.run(cmd!(sh, "sbverify --cert {cert} {output}"))?;
    Ok(())
}

/// libfaketime's absolute time (`YYYY-MM-DD hh:mm:ss`, no `@`: the clock
/// stands still) of a Unix time, read in TZ=UTC.
fn faketime_absolute(epoch: u64) -> String {
    super::util::iso8601(epoch)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_clock_is_source_date_epoch_in_utc() {
        assert_eq!(faketime_absolute(0), "1970-01-01 00:00:00");
        assert_eq!(faketime_absolute(1_764_547_200), "2025-12-01 00:00:00");
    }

    #[test]
    fn the_hash_tree_and_the_data_fill_the_partition() {
        // 128 data blocks: one hash block (which is the root).
        assert_eq!(hash_tree_blocks(128), 1);
        assert_eq!(hash_tree_blocks(129), 3);
        assert_eq!(hash_tree_blocks(128 * 128), 129);
        for partition in [1000u64, 16_384, 245_760, 262_144] {
            let data = data_blocks_for(partition);
            assert!(data + hash_tree_blocks(data) <= partition);
            assert!(data + 1 + hash_tree_blocks(data + 1) > partition);
        }
    }
}
