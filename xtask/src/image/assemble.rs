//! Assembly of the root in a tmpfs staging directory: the cached base,
//! initd and the renderer, the services, the model, the mode, the overlays,
//! hostname, fstab and users; then the baked configs and clamped times.

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use super::plan::{Plan, RootLogin};
use super::ui::{TempDir, Ui};
use super::BadInput;

pub struct Binaries {
    pub initd: PathBuf,
    pub initctl: PathBuf,
    pub nodows: Option<PathBuf>,
}

/// Builds the static musl initd/initctl and the glibc renderer. A renderer
/// that does not build yet is a loud warning (the image is then not baked);
/// initd is required.
pub fn build_binaries(ui: &mut Ui, source: &Path, target_dir: &Path) -> anyhow::Result<Binaries> {
    let sh = Shell::new()?;
    // cc passes SOURCE_DATE_EPOCH to the compiler, so cargo rebuilds the
    // renderer whenever it changes (a new commit, or the bench setting it);
    // the shim uses no __DATE__, and without it the binaries do not depend
    // on the commit time at all.
    let manifest = super::host::workspace_manifest(source);
    ui.run(
        cmd!(
            sh,
            "cargo build --release --manifest-path {manifest} -p initd --target x86_64-unknown-linux-musl"
        )
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("SOURCE_DATE_EPOCH"),
    )?;
    let nodows = match ui.run(
        cmd!(
            sh,
            "cargo build --release --manifest-path {manifest} -p render --bin nodows"
        )
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("SOURCE_DATE_EPOCH"),
    ) {
        Ok(()) => Some(target_dir.join("release/nodows")),
        Err(error) => {
            super::ui::check_interrupted()?;
            ui.note(&format!(
                "warning: the renderer does not build; the image gets no /usr/bin/nodows and no baked configs: {error:#}"
            ));
            None
        }
    };
    let musl = target_dir.join("x86_64-unknown-linux-musl/release");
    let binaries = Binaries {
        initd: musl.join("initd"),
        initctl: musl.join("initctl"),
        nodows,
    };
    for binary in [&binaries.initd, &binaries.initctl]
        .into_iter()
        .chain(binaries.nodows.as_ref())
    {
        if !binary.is_file() {
            bail!("{} was not built", binary.display());
        }
    }
    Ok(binaries)
}

/// The staging directory, on /dev/shm when it exists (a tmpfs: fast, and
/// readdir returns entries in creation order, so mkfs.ext4 -d is
/// deterministic). Removed on drop.
pub struct Staging {
    dir: TempDir,
}

/// Where the staging tree and the disk's scratch files live: /dev/shm when
/// it exists, else the temporary directory.
pub fn tmpfs_parent() -> PathBuf {
    if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

impl Staging {
    pub fn create(name: &str) -> anyhow::Result<Staging> {
        Ok(Staging {
            dir: TempDir::create(&tmpfs_parent(), &format!("nodows-stage-{name}"))?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative.trim_start_matches('/'))
    }
}

pub struct Assembled {
    pub kernel_version: String,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

pub(super) fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(super) fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies a tree with its modes (owner root), in sorted order.
pub(super) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let metadata = std::fs::symlink_metadata(from)?;
    if metadata.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(target, to)
            .with_context(|| format!("cannot create {}", to.display()))?;
    } else if metadata.is_dir() {
        if !to.exists() {
            std::fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
            std::fs::set_permissions(
                to,
                std::fs::Permissions::from_mode(metadata.mode() & 0o7777),
            )?;
        }
        let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        install(from, to, metadata.mode() & 0o7777)?;
    }
    Ok(())
}

/// Extracts the cached base into the (empty) staging directory.
pub fn extract(ui: &mut Ui, base: &super::rootfs::Base, staging: &Staging) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let (tar, root) = (&base.tar, staging.path());
    ui.run(cmd!(
        sh,
        "tar --extract --file {tar} --directory {root} --numeric-owner --xattrs --xattrs-include=*"
    ))
}

pub fn assemble(
    plan: &Plan,
    binaries: &Binaries,
    staging: &Staging,
    source_date_epoch: u64,
) -> anyhow::Result<Assembled> {
    let root = staging.path();

    // The kernel and initrd of the base.
    let modules_dir = staging.join("usr/lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&modules_dir)
        .with_context(|| format!("{} has no kernel", modules_dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    let kernel_version = versions
        .pop()
        .context("the base has no kernel in /usr/lib/modules")?;
    let vmlinuz = staging.join(&format!("boot/vmlinuz-{kernel_version}"));
    let initrd = staging.join(&format!("boot/initrd.img-{kernel_version}"));
    if !vmlinuz.is_file() || !initrd.is_file() {
        bail!(
            "the base lacks {} or {}",
            vmlinuz.display(),
            initrd.display()
        );
    }

    // initd, initctl, the renderer.
    install(&binaries.initd, &staging.join("sbin/initd"), 0o755)?;
    install(&binaries.initctl, &staging.join("sbin/initctl"), 0o755)?;
    if let Some(nodows) = &binaries.nodows {
        install(nodows, &staging.join("usr/bin/nodows"), 0o755)?;
    }

    // Services, model, mode.
    let services_dir = staging.join("etc/nodows/services");
    std::fs::create_dir_all(&services_dir)?;
    for service in &plan.services {
        copy_tree(
            &plan.source.join("services").join(&service.name),
            &services_dir.join(&service.name),
        )?;
    }
    install(
        &plan.source.join(&plan.model),
        &staging.join("etc/nodows/model.xml"),
        0o644,
    )?;
    write(
        &staging.join("etc/nodows/mode"),
        &format!("{}\n", plan.mode),
        0o644,
    )?;

    // Overlays: common, then the profile's, in order.
    for overlay in &plan.overlays {
        let from = plan.source.join(overlay);
        if !from.is_dir() {
            return Err(BadInput(format!(
                "{}: overlay directory does not exist",
                from.display()
            ))
            .into());
        }
        copy_tree(&from, root)?;
    }

    // Identity and mounts.
    write(
        &staging.join("etc/hostname"),
        &format!("{}\n", plan.hostname),
        0o644,
    )?;
    write(
        &staging.join("etc/hosts"),
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
            plan.hostname
        ),
        0o644,
    )?;
    write(
        &staging.join("etc/fstab"),
        "# the root is mounted read-write by the kernel (root=PARTUUID=... rw)\n/dev/root\t/\text4\trw,relatime\t0\t1\n",
        0o644,
    )?;
    // No machine id: nothing in the image needs one, and a fixed one would be shared by every appliance.
    let _ = std::fs::remove_file(staging.join("etc/machine-id"));

    // Users: the image's accounts (password locked), root's password field
    // by policy, the change day clamped.
    add_users(staging, &plan.users)?;
    set_shadow(
        &staging.join("etc/shadow"),
        plan.root_login,
        source_date_epoch,
    )?;
    for trap in [
        "var/log/alternatives.log",
        "var/cache/ldconfig/aux-cache",
        "var/log/dpkg.log",
        "etc/passwd-",
        "etc/shadow-",
        "etc/group-",
        "etc/gshadow-",
    ] {
        let _ = std::fs::remove_file(staging.join(trap));
    }
    Ok(Assembled {
        kernel_version,
        vmlinuz,
        initrd,
    })
}

fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{line}")?;
    Ok(())
}

/// Adds each user to passwd, group, shadow and gshadow (own group, same id,
/// password `*`) with a home directory of mode 0750.
fn add_users(staging: &Staging, users: &[super::plan::User]) -> anyhow::Result<()> {
    let passwd = std::fs::read_to_string(staging.join("etc/passwd"))?
        + &std::fs::read_to_string(staging.join("etc/group"))?;
    for user in users {
        let taken = passwd.lines().any(|line| {
            let mut fields = line.split(':');
            let name = fields.next();
            let uid = fields.nth(1);
            name == Some(user.name.as_str()) || uid == Some(user.uid.to_string().as_str())
        });
        if taken {
            return Err(BadInput(format!(
                "user or group `{}` or id {} already exists in the base; pick another",
                user.name, user.uid
            ))
            .into());
        }
        let (name, uid, shell) = (&user.name, user.uid, &user.shell);
        append(
            &staging.join("etc/passwd"),
            &format!("{name}:x:{uid}:{uid}::/home/{name}:{shell}"),
        )?;
        append(&staging.join("etc/group"), &format!("{name}:x:{uid}:"))?;
        append(
            &staging.join("etc/shadow"),
            &format!("{name}:*:0:0:99999:7:::"),
        )?;
        append(&staging.join("etc/gshadow"), &format!("{name}:!::"))?;
        let home = staging.join(&format!("home/{name}"));
        std::fs::create_dir_all(&home)?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750))?;
        std::os::unix::fs::chown(&home, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Sets root's password field (`*` locked, empty for autologin) and every
/// account's last-change day to SOURCE_DATE_EPOCH's day. No salted hashes
/// are ever written (they would differ on every build).
fn set_shadow(path: &Path, root_login: RootLogin, source_date_epoch: u64) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let day = (source_date_epoch / 86400).to_string();
    let mut out = String::new();
    for line in text.lines() {
        let mut fields: Vec<String> = line.split(':').map(str::to_owned).collect();
        if fields.len() >= 3 {
            if fields[0] == "root" {
                fields[1] = match root_login {
                    RootLogin::Autologin => String::new(),
                    RootLogin::Locked => "*".to_owned(),
                };
            }
            if !fields[2].is_empty() {
                fields[2] = day.clone();
            }
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    write(path, &out, 0o640)?;
    std::os::unix::fs::chown(path, Some(0), Some(42)).ok();
    Ok(())
}

/// Bakes the configs of the chosen profile with the freshly built renderer,
/// run on the host against the staging root.
pub fn bake(
    ui: &mut Ui,
    plan: &Plan,
    binaries: &Binaries,
    staging: &Staging,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let Some(nodows) = &binaries.nodows else {
        ui.note("warning: no renderer, configs not baked");
        return Ok(());
    };
    let model = staging.join("etc/nodows/model.xml");
    let services = staging.join("etc/nodows/services");
    let root = staging.path();
    let mode = &plan.mode;
    let mut service_args = Vec::new();
    for service in &plan.services {
        service_args.push("--service".to_owned());
        service_args.push(service.name.clone());
    }
    ui.run(cmd!(
        sh,
        "{nodows} render --model {model} --services {services} --root {root} --profile {mode} {service_args...}"
    ))
}

/// One entry of the image's tree, for the manifest.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Absolute path inside the image.
    pub path: String,
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// sha256 of a regular file's bytes, or of a symlink's target.
    pub sha256: String,
}

/// Lowercase hex; called for every file of the image, so no `format!`
/// per byte (the xtask is a debug build).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

pub fn clamp_time(path: &Path, epoch: u64) -> anyhow::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let time = libc::timespec {
        tv_sec: epoch as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result != 0 {
        bail!(
            "cannot set the times of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Clamps every timestamp newer than SOURCE_DATE_EPOCH and hashes every
/// entry (two threads), sorted by path. Setting a file's times does not
/// change its directory's, so the order of the clamps does not matter.
pub fn finish(staging: &Staging, source_date_epoch: u64) -> anyhow::Result<Vec<FileEntry>> {
    let root = staging.path();
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
            paths.push(entry.path());
        }
    }
    paths.sort();
    let clamp = |path: &Path, metadata: &std::fs::Metadata| -> anyhow::Result<()> {
        if metadata.mtime() as u64 > source_date_epoch
            || metadata.atime() as u64 > source_date_epoch
        {
            clamp_time(path, source_date_epoch.min(metadata.mtime().max(0) as u64))?;
        }
        Ok(())
    };
    clamp(root, &std::fs::symlink_metadata(root)?)?;
    let hash_one = |path: &PathBuf| -> anyhow::Result<FileEntry> {
        let metadata = std::fs::symlink_metadata(path)?;
        clamp(path, &metadata)?;
        let file_type = metadata.file_type();
        let (kind, sha256) = if file_type.is_symlink() {
            (
                "symlink",
                hex(&Sha256::digest(
                    std::fs::read_link(path)?.as_os_str().as_bytes(),
                )),
            )
        } else if file_type.is_file() {
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(path)?;
            std::io::copy(&mut file, &mut hasher)?;
            ("file", hex(&hasher.finalize()))
        } else if file_type.is_dir() {
            ("directory", String::new())
        } else {
            ("special", String::new())
        };
        Ok(FileEntry {
            path: format!("/{}", path.strip_prefix(root)?.to_string_lossy()),
            kind,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            size: if kind == "file" { metadata.len() } else { 0 },
            sha256,
        })
    };
    let half = paths.len() / 2;
    let (first, second) = paths.split_at(half);
    let (first, second) = std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            second
                .iter()
                .map(hash_one)
                .collect::<anyhow::Result<Vec<_>>>()
        });
        let mine = first
            .iter()
            .map(hash_one)
            .collect::<anyhow::Result<Vec<_>>>();
        (mine, other.join().expect("hashing thread"))
    });
    let mut entries = first?;
    entries.extend(second?);
    Ok(entries)
}
