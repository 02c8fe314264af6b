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
use super::util::{clamp_time, copy_service, copy_tree, install, write};
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

/// The base extracted once on the tmpfs (`/dev/shm/nodows-base-ID/root`,
/// ID from the cached tar's path), with the inode, size, mtime and sha256
/// of each of its regular files (`files`) and the identity of the tar it
/// came from (`source`: path, device, inode, size, mtime; another tar at
/// that path is a new tree). A build hard-links the tree into its staging
/// directory (`cp --archive --link`: directories are copied, files and
/// symlinks shared) instead of extracting the tar again, and reuses the
/// hash of every file that is still the base's inode. Nothing may write
/// through those links: the assembly unlinks before it writes, the
/// renderer renames into place, and `finish` fails if a shared inode's
/// size or mtime changed. One tree per cache directory is kept (making one
/// removes the others of that directory and those whose tar is gone).
pub struct BaseTree {
    root: PathBuf,
    device: u64,
    files: std::collections::HashMap<String, BaseFile>,
}

struct BaseFile {
    inode: u64,
    size: u64,
    mtime: (i64, i64),
    sha256: String,
}

/// What identifies a cached tar for its extracted tree.
fn tar_identity(tar: &Path) -> anyhow::Result<String> {
    let metadata =
        std::fs::metadata(tar).with_context(|| format!("cannot read {}", tar.display()))?;
    Ok(format!(
        "{}\n{} {} {} {} {}\n",
        tar.display(),
        metadata.dev(),
        metadata.ino(),
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec()
    ))
}

impl BaseTree {
    pub fn open(ui: &mut Ui, base: &super::rootfs::Base) -> anyhow::Result<BaseTree> {
        let parent = tmpfs_parent();
        let tar = std::path::absolute(&base.tar)?;
        let identity = tar_identity(&tar)?;
        let id = hex::encode(Sha256::digest(tar.as_os_str().as_bytes()));
        let name = format!("nodows-base-{}", &id[..16]);
        let dir = parent.join(&name);
        let current = std::fs::read_to_string(dir.join("source"))
            .is_ok_and(|text| text == identity)
            && dir.join("files").is_file();
        Self::remove_other_trees(ui, &parent, &tar, !current);
        if !current {
            if dir.exists() {
                ui.log(&format!(
                    "{} is of another tar; extracting again",
                    dir.display()
                ));
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
            let partial = TempDir::create(&parent, &name)?;
            let root = partial.path().join("root");
            std::fs::create_dir(&root)?;
            let sh = Shell::new()?;
            ui.run(cmd!(
                sh,
                "tar --extract --file {tar} --directory {root} --numeric-owner --xattrs --xattrs-include=*"
            ))?;
            let mut listing = String::new();
            for (path, entry) in hash_tree(&root, None)? {
                if entry.kind == "file" {
                    let metadata =
                        std::fs::symlink_metadata(root.join(path.trim_start_matches('/')))?;
                    listing.push_str(&format!(
                        "{} {} {} {} {} {}\n",
                        metadata.ino(),
                        metadata.size(),
                        metadata.mtime(),
                        metadata.mtime_nsec(),
                        entry.sha256,
                        path
                    ));
                }
            }
            std::fs::write(partial.path().join("files"), listing)?;
            std::fs::write(partial.path().join("source"), &identity)?;
            // A build beside this one may have made the same tree first:
            // then this one is dropped and that one used.
            partial.persist_unless_exists(&dir)?;
        }
        let listing = std::fs::read_to_string(dir.join("files"))?;
        let mut files = std::collections::HashMap::new();
        for line in listing.lines() {
            let mut fields = line.splitn(6, ' ');
            let mut next = || {
                fields
                    .next()
                    .with_context(|| format!("{}: a short line; remove it", dir.display()))
            };
            let (inode, size, seconds, nanoseconds, sha256, path) =
                (next()?, next()?, next()?, next()?, next()?, next()?);
            files.insert(
                path.to_owned(),
                BaseFile {
                    inode: inode.parse()?,
                    size: size.parse()?,
                    mtime: (seconds.parse()?, nanoseconds.parse()?),
                    sha256: sha256.to_owned(),
                },
            );
        }
        let root = dir.join("root");
        let device = std::fs::symlink_metadata(&root)
            .with_context(|| format!("{} is incomplete; remove it", dir.display()))?
            .dev();
        Ok(BaseTree {
            root,
            device,
            files,
        })
    }

    /// Removes the extracted trees whose tar is gone (a removed cache, such
    /// as the bench's) and, when a new tree is made, those of other tars in
    /// the same cache directory.
    fn remove_other_trees(ui: &Ui, parent: &Path, tar: &Path, making: bool) {
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with("nodows-base-")
            {
                continue;
            }
            let Ok(source) = std::fs::read_to_string(entry.path().join("source")) else {
                continue;
            };
            let other = PathBuf::from(source.lines().next().unwrap_or_default());
            let replaced = making && other.parent() == tar.parent() && other != tar;
            if !other.is_file() || replaced {
                ui.log(&format!(
                    "removing the extracted base {}",
                    entry.path().display()
                ));
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Hard-links the tree into the (empty) staging directory.
    pub fn link_into(&self, ui: &mut Ui, staging: &Staging) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let (from, to) = (self.root.join("."), staging.path());
        ui.run(cmd!(
            sh,
            "cp --archive --link --no-target-directory {from} {to}"
        ))
    }

    /// The base's hash of `path` if the staging entry is still the base's
    /// inode; an error if that inode was written through.
    fn reused_hash(
        &self,
        path: &str,
        metadata: &std::fs::Metadata,
    ) -> anyhow::Result<Option<String>> {
        let Some(file) = self.files.get(path) else {
            return Ok(None);
        };
        if metadata.dev() != self.device || metadata.ino() != file.inode {
            return Ok(None);
        }
        if metadata.size() != file.size || (metadata.mtime(), metadata.mtime_nsec()) != file.mtime {
            bail!(
                "{path} was written through its hard link into the extracted base {}; remove that directory and build again",
                self.root.display()
            );
        }
        Ok(Some(file.sha256.clone()))
    }
}

/// initd, initctl and the renderer into the root.
pub fn place_binaries(binaries: &Binaries, staging: &Staging) -> anyhow::Result<()> {
    // initd, initctl, the renderer.
    install(&binaries.initd, &staging.join("sbin/initd"), 0o755)?;
    install(&binaries.initctl, &staging.join("sbin/initctl"), 0o755)?;
    if let Some(nodows) = &binaries.nodows {
        install(nodows, &staging.join("usr/bin/nodows"), 0o755)?;
    }
    Ok(())
}

/// The services, the model, the mode, the overlays, hostname, hosts,
/// fstab and the users.
pub fn install_files(plan: &Plan, staging: &Staging, source_date_epoch: u64) -> anyhow::Result<()> {
    let root = staging.path();

    // Services, model, mode.
    let services_dir = staging.join("etc/nodows/services");
    std::fs::create_dir_all(&services_dir)?;
    for service in &plan.services {
        copy_service(
            &plan.source.join("services").join(&service.name),
            &services_dir.join(&service.name),
        )?;
    }
    install_model(plan, staging)?;
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
    Ok(())
}

/// The boot files: the base's kernel, and nodows' initrd written over the
/// base's (systemd-boot and the ESP are made with the disk, `disk.rs`).
pub fn install_boot_files(
    plan: &Plan,
    binaries: &Binaries,
    staging: &Staging,
    source_date_epoch: u64,
) -> anyhow::Result<Assembled> {
    let root = staging.path();

    // The kernel of the base (the initrd is written below).
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
    if !vmlinuz.is_file() {
        bail!("the base lacks {}", vmlinuz.display());
    }

    // The nodows initrd (initd's initrd stage); initramfs-tools makes none
    // in the base (rootfs.rs): no udev, no shell scripts at boot.
    let initrd_bytes = super::initrd::build(
        root,
        &kernel_version,
        &binaries.initd,
        &plan.initrd_modules,
        source_date_epoch,
    )?;
    // A new file, never a write through a name the staging tree may share
    // with a cached base.
    let _ = std::fs::remove_file(&initrd);
    std::fs::write(&initrd, initrd_bytes)
        .with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(Assembled {
        kernel_version,
        vmlinuz,
        initrd,
    })
}

/// Whether the image's `<model path>` is an SQLite database (by its name).
pub fn is_sqlite_model(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|extension| extension.to_str()),
        Some("sqlite" | "sqlite3" | "db")
    )
}

/// The baked base model, `/etc/nodows/model.xml`: the image's XML model
/// as it is, or its SQLite model exported to XML by the freshly built
/// renderer (`nodows model export`, the image's own `/usr/bin/nodows`,
/// placed before the files), so that the appliance reads one form.
fn install_model(plan: &Plan, staging: &Staging) -> anyhow::Result<()> {
    let from = plan.source.join(&plan.model);
    let to = staging.join("etc/nodows/model.xml");
    if !is_sqlite_model(&plan.model) {
        return install(&from, &to, 0o644);
    }
    let nodows = staging.join("usr/bin/nodows");
    anyhow::ensure!(
        nodows.is_file(),
        "an SQLite model needs the renderer to export it, and {} is missing",
        nodows.display()
    );
    let sh = Shell::new()?;
    let source = format!("sqlite:{}", from.display());
    cmd!(sh, "{nodows} model export --model {source} --to {to}")
        .quiet()
        .run()
        .with_context(|| format!("{}: cannot export the SQLite model", from.display()))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Appends a line as a new file with the old one's mode and owner (never
/// through a hard link into the extracted base, see `write`).
fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    write(path, &format!("{text}{line}\n"), metadata.mode() & 0o7777)?;
    std::os::unix::fs::chown(path, Some(metadata.uid()), Some(metadata.gid()))?;
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

/// The hash of every input of an image, in hex: `inputs` (what identifies
/// the base, the plan, SOURCE_DATE_EPOCH), then every entry of the tree
/// (path, kind, mode, owner, content hash); every id of the disk derives
/// from it.
pub fn input_hash(inputs: &[&str], files: &[FileEntry]) -> String {
    let mut hasher = Sha256::new();
    for input in inputs {
        hasher.update(input.as_bytes());
    }
    for file in files {
        hasher.update(
            format!(
                "{} {} {:o} {}:{} {}\n",
                file.path, file.kind, file.mode, file.uid, file.gid, file.sha256
            )
            .as_bytes(),
        );
    }
    hex::encode(hasher.finalize())
}

/// Clamps every timestamp newer than SOURCE_DATE_EPOCH and hashes every
/// entry (two threads), sorted by path. Setting a file's times does not
/// change its directory's, so the order of the clamps does not matter.
/// With the Debian base tree, the hashes of files still shared with it are
/// reused and only mtimes are clamped (an atime clamp would touch every
/// shared inode; debugfs sets atimes and ctimes in the image anyway).
pub fn finish(
    staging: &Staging,
    base_tree: Option<&BaseTree>,
    source_date_epoch: u64,
) -> anyhow::Result<Vec<FileEntry>> {
    let root = staging.path();
    let clamp = |path: &Path, metadata: &std::fs::Metadata| -> anyhow::Result<()> {
        let atime_too = base_tree.is_none() && metadata.atime() as u64 > source_date_epoch;
        if metadata.mtime() as u64 > source_date_epoch || atime_too {
            clamp_time(path, source_date_epoch.min(metadata.mtime().max(0) as u64))?;
        }
        Ok(())
    };
    clamp(root, &std::fs::symlink_metadata(root)?)?;
    Ok(hash_tree(root, Some((base_tree, &clamp)))?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect())
}

type Clamp<'a> = &'a (dyn Fn(&Path, &std::fs::Metadata) -> anyhow::Result<()> + Sync);

/// Every entry under `root` with its hash, sorted by path, on two threads;
/// with `reuse`, each entry is clamped first and the base tree's hashes
/// are reused.
fn hash_tree(
    root: &Path,
    reuse: Option<(Option<&BaseTree>, Clamp<'_>)>,
) -> anyhow::Result<Vec<(String, FileEntry)>> {
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
    let hash_one = |path: &PathBuf| -> anyhow::Result<(String, FileEntry)> {
        let metadata = std::fs::symlink_metadata(path)?;
        let relative = format!("/{}", path.strip_prefix(root)?.to_string_lossy());
        let mut reused = None;
        if let Some((base_tree, clamp)) = reuse {
            clamp(path, &metadata)?;
            if let (Some(base_tree), true) = (base_tree, metadata.is_file()) {
                reused = base_tree.reused_hash(&relative, &metadata)?;
            }
        }
        let file_type = metadata.file_type();
        let (kind, sha256) = if file_type.is_symlink() {
            (
                "symlink",
                hex::encode(Sha256::digest(
                    std::fs::read_link(path)?.as_os_str().as_bytes(),
                )),
            )
        } else if file_type.is_file() {
            let sha256 = match reused {
                Some(sha256) => sha256,
                None => {
                    let mut hasher = Sha256::new();
                    let mut file = std::fs::File::open(path)?;
                    std::io::copy(&mut file, &mut hasher)?;
                    hex::encode(hasher.finalize())
                }
            };
            ("file", sha256)
        } else if file_type.is_dir() {
            ("directory", String::new())
        } else {
            ("special", String::new())
        };
        let entry = FileEntry {
            path: relative.clone(),
            kind,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            size: if kind == "file" { metadata.len() } else { 0 },
            sha256,
        };
        Ok((relative, entry))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose `<model path>` is an SQLite database carries the
    /// same model as XML: the renderer exports it at build time.
    #[test]
    fn an_sqlite_model_is_baked_as_xml() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", "render", "--bin", "nodows"])
            .current_dir(workspace)
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p render --bin nodows");
        let nodows = super::super::host::cargo_target_dir(workspace)
            .unwrap()
            .join("debug/nodows");
        let dir = std::env::temp_dir().join(format!("nodows-sqlite-model-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let database = dir.join("model.db");
        let status = std::process::Command::new(&nodows)
            .args(["model", "import", "--model"])
            .arg(format!("sqlite:{}", database.display()))
            .arg("--from")
            .arg(workspace.join("models/default.xml"))
            .status()
            .unwrap();
        assert!(status.success());
        let mut plan = super::super::plan::resolve(workspace, "debian", "dev", Vec::new()).unwrap();
        plan.model = database.clone();
        let staging = Staging::create("sqlite-model-test").unwrap();
        std::fs::create_dir_all(staging.join("etc/nodows")).unwrap();
        // The renderer is placed before the files, as place_binaries does.
        install(&nodows, &staging.join("usr/bin/nodows"), 0o755).unwrap();
        install_model(&plan, &staging).unwrap();
        let baked = std::fs::read_to_string(staging.join("etc/nodows/model.xml")).unwrap();
        assert!(
            baked.starts_with("<?xml") || baked.starts_with("<model"),
            "{baked}"
        );
        assert!(baked.contains("<server id=\"web01\">"), "{baked}");
        assert!(
            baked.contains("<key name=\"gateway\">10.0.2.2</key>"),
            "{baked}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The staging tree shares the extracted base's inodes: a file written
    /// through its link would change the base for every later build, so the
    /// hash pass refuses it; a file replaced by a new inode is just hashed.
    #[test]
    fn writing_through_a_base_link_is_refused() {
        let dir = std::env::temp_dir().join(format!("nodows-link-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("base/etc")).unwrap();
        std::fs::create_dir_all(dir.join("stage/etc")).unwrap();
        for name in ["passwd", "hostname"] {
            std::fs::write(dir.join("base/etc").join(name), "base\n").unwrap();
            std::fs::hard_link(
                dir.join("base/etc").join(name),
                dir.join("stage/etc").join(name),
            )
            .unwrap();
        }
        let record = |name: &str| {
            let metadata = std::fs::metadata(dir.join("base/etc").join(name)).unwrap();
            BaseFile {
                inode: metadata.ino(),
                size: metadata.size(),
                mtime: (metadata.mtime(), metadata.mtime_nsec()),
                sha256: "recorded".to_owned(),
            }
        };
        let base_tree = BaseTree {
            root: dir.join("base"),
            device: std::fs::metadata(dir.join("base")).unwrap().dev(),
            files: [
                ("/etc/passwd".to_owned(), record("passwd")),
                ("/etc/hostname".to_owned(), record("hostname")),
            ]
            .into_iter()
            .collect(),
        };
        let reused = |name: &str| {
            let path = dir.join("stage/etc").join(name);
            base_tree.reused_hash(
                &format!("/etc/{name}"),
                &std::fs::symlink_metadata(path).unwrap(),
            )
        };
        assert_eq!(reused("passwd").unwrap().as_deref(), Some("recorded"));
        write(&dir.join("stage/etc/hostname"), "appliance\n", 0o644).unwrap();
        assert_eq!(reused("hostname").unwrap(), None, "a new inode is hashed");
        assert_eq!(
            std::fs::read_to_string(dir.join("base/etc/hostname")).unwrap(),
            "base\n"
        );
        append(
            &dir.join("stage/etc/passwd"),
            "nodows:x:1000:1000::/home/nodows:/bin/sh",
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("base/etc/passwd")).unwrap(),
            "base\n"
        );
        assert_eq!(reused("passwd").unwrap(), None);
        std::fs::remove_file(dir.join("stage/etc/passwd")).unwrap();
        std::fs::hard_link(dir.join("base/etc/passwd"), dir.join("stage/etc/passwd")).unwrap();
        std::fs::write(dir.join("stage/etc/passwd"), "written through\n").unwrap();
        let error = reused("passwd").unwrap_err().to_string();
        assert!(error.contains("written through its hard link"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
