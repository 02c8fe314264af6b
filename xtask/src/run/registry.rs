//! The registry of running guests that `cargo xtask run` may reuse: one
//! JSON file per image and profile under `target/qemu-run/guests/`, written
//! by `cargo xtask boot` and `cargo xtask run --keep` once QEMU runs and
//! removed when it exits (a file whose QEMU is gone is stale: ignored and
//! removed by the next lookup).
//!
//! A registered guest is reused only when it is the same build of the same
//! image for the same checkout: its workspace, its raw disk's path, the
//! SHA-256 of the image's `manifest.json` (a rebuild changes it) and its
//! extra kernel command line words all match.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::boot::BuiltImage;
use crate::qemu;

/// What one image and profile boots as: a guest is reused only for an
/// equal request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    /// The checkout whose xtask boots it.
    pub workspace: PathBuf,
    pub image: String,
    pub profile: String,
    /// The raw disk (a guest's overlay is backed by it).
    pub raw: PathBuf,
    /// SHA-256 of the image's `manifest.json`.
    pub manifest_sha256: String,
    /// Extra kernel command line words (`--append`), normalised.
    pub append: String,
}

/// A running guest, as its registry file records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(flatten)]
    pub wanted: Wanted,
    /// QEMU's process id.
    pub pid: u32,
    /// The unix socket of the guest's test agent.
    pub agent_socket: PathBuf,
    /// The guest's work directory (overlay, serial log).
    pub work_dir: PathBuf,
    /// `cargo xtask boot` or `cargo xtask run --keep`.
    pub started_by: String,
}

impl Wanted {
    /// The request to boot `built` with the extra words `append`.
    pub fn of(built: &BuiltImage, append: &str) -> anyhow::Result<Wanted> {
        let manifest = built.raw.with_file_name("manifest.json");
        let bytes = std::fs::read(&manifest)
            .with_context(|| format!("{}: cannot read", manifest.display()))?;
        Ok(Wanted {
            workspace: canonical(&qemu::workspace_root()),
            image: built.image.clone(),
            profile: built.profile.clone(),
            raw: canonical(&built.raw),
            manifest_sha256: hex::encode(Sha256::digest(&bytes)),
            append: append.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }

    /// The registration of this request's guest, now running as `pid`.
    pub fn running(
        &self,
        pid: u32,
        agent_socket: &Path,
        work_dir: &Path,
        started_by: &str,
    ) -> Registration {
        Registration {
            wanted: self.clone(),
            pid,
            agent_socket: agent_socket.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            started_by: started_by.to_string(),
        }
    }

    /// Why a guest booted as `self` is not a boot of `wanted`, if it is not.
    fn mismatch(&self, wanted: &Wanted) -> Option<String> {
        if self.workspace != wanted.workspace {
            Some(format!(
                "it belongs to the checkout {}",
                self.workspace.display()
            ))
        } else if self.raw != wanted.raw {
            Some(format!("it booted another disk, {}", self.raw.display()))
        } else if self.manifest_sha256 != wanted.manifest_sha256 {
            Some("the image was rebuilt since it booted".to_string())
        } else if self.append != wanted.append {
            Some(format!(
                "it booted with other extra kernel words ({:?}, not {:?})",
                self.append, wanted.append
            ))
        } else {
            None
        }
    }
}

/// What a lookup found for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No live guest is registered (a stale file was removed).
    Nothing,
    /// A live guest of the same build, for reuse.
    Reuse(Registration),
    /// A live guest that must not be reused, and why.
    Other {
        registration: Registration,
        why: String,
    },
}

/// The directory of registry files.
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(dir: &Path) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
        }
    }

    /// `target/qemu-run/guests` of this checkout's target directory.
    pub fn open() -> anyhow::Result<Registry> {
        Ok(Registry::new(&qemu::target_dir()?.join("qemu-run/guests")))
    }

    /// `IMAGE-PROFILE-HASH.json`, HASH from the raw disk's path: checkouts
    /// that share a target directory (and so this directory) do not share
    /// a file.
    pub fn file(&self, wanted: &Wanted) -> PathBuf {
        let digest = Sha256::digest(wanted.raw.as_os_str().as_encoded_bytes());
        self.dir.join(format!(
            "{}-{}-{}.json",
            wanted.image,
            wanted.profile,
            &hex::encode(digest)[..12]
        ))
    }

    /// Records a running guest; replaces the file atomically (a reader
    /// sees the old file or the new one, never half of one).
    pub fn register(&self, registration: &Registration) -> anyhow::Result<PathBuf> {
        let file = self.file(&registration.wanted);
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("{}: cannot create", self.dir.display()))?;
        let partial = file.with_extension(format!("json.{}", std::process::id()));
        let text = serde_json::to_string_pretty(registration)? + "\n";
        std::fs::write(&partial, text)
            .with_context(|| format!("{}: cannot write", partial.display()))?;
        std::fs::rename(&partial, &file)
            .with_context(|| format!("{}: cannot write", file.display()))?;
        Ok(file)
    }

    /// Removes the file of `registration` if it still records that guest
    /// (a later guest may have registered in its place).
    pub fn unregister(&self, registration: &Registration) {
        let file = self.file(&registration.wanted);
        if read(&file).ok().flatten().as_ref() == Some(registration) {
            let _ = std::fs::remove_file(&file);
        }
    }

    /// The live registered guest for `wanted`, if there is one; a stale
    /// file (its QEMU gone) or one that cannot be read is removed.
    pub fn lookup(&self, wanted: &Wanted) -> anyhow::Result<Lookup> {
        let file = self.file(wanted);
        let registration = match read(&file) {
            Ok(Some(registration)) => registration,
            Ok(None) => return Ok(Lookup::Nothing),
            Err(error) => {
                eprintln!("nodows: {error:#}; removing it");
                let _ = std::fs::remove_file(&file);
                return Ok(Lookup::Nothing);
            }
        };
        if !registration.is_running() {
            let _ = std::fs::remove_file(&file);
            // A kept guest's work directory (its overlay) has no other owner.
            if registration.started_by == super::STARTED_BY_RUN {
                let _ = std::fs::remove_dir_all(&registration.work_dir);
            }
            return Ok(Lookup::Nothing);
        }
        Ok(match registration.wanted.mismatch(wanted) {
            None => Lookup::Reuse(registration),
            Some(why) => Lookup::Other { registration, why },
        })
    }
}

impl Registration {
    /// Its QEMU still runs: the process exists, has not exited and is the
    /// one that serves this agent socket (a process id can be reused).
    pub fn is_running(&self) -> bool {
        if !qemu::process_is_running(self.pid) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let socket = self.agent_socket.as_os_str().as_encoded_bytes();
        cmdline
            .split(|byte| *byte == 0)
            .any(|argument| argument.windows(socket.len()).any(|part| part == socket))
    }
}

/// The registration in `file`; None when there is no file.
fn read(file: &Path) -> anyhow::Result<Option<Registration>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("{}: cannot read", file.display()))
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{}: not a guest registration", file.display()))
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;
    use crate::image::ui::TempDir;

    /// A built image in `dir`: its raw disk and a manifest with `content`.
    fn built_image(dir: &Path, profile: &str, content: &str) -> BuiltImage {
        let out = dir.join(format!("debian-{profile}"));
        std::fs::create_dir_all(&out).unwrap();
        let raw = out.join(format!("debian-{profile}.raw"));
        std::fs::write(&raw, b"disk").unwrap();
        std::fs::write(out.join("manifest.json"), content).unwrap();
        BuiltImage {
            name: format!("debian-{profile}"),
            image: "debian".to_string(),
            profile: profile.to_string(),
            kernel: out.join("vmlinuz"),
            initrd: None,
            cmdline: String::new(),
            raw,
        }
    }

    /// A real process whose command line names `socket`, as QEMU's names
    /// its agent socket; killed on drop.
    struct StandIn(Child);

    impl StandIn {
        /// Started once its command line is the shell's (after exec).
        fn naming(socket: &Path) -> StandIn {
            let child = Command::new("sh")
                .args(["-c", "while :; do sleep 1; done", "qemu-stand-in"])
                .arg(socket)
                .spawn()
                .unwrap();
            let cmdline = format!("/proc/{}/cmdline", child.id());
            let named = || std::fs::read(&cmdline).is_ok_and(|text| text.starts_with(b"sh\0"));
            while !named() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            StandIn(child)
        }

        fn id(&self) -> u32 {
            self.0.id()
        }

        fn end(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.end();
        }
    }

    /// A scratch directory with a registry and a built debian-test image.
    struct Scratch {
        dir: TempDir,
        registry: Registry,
        built: BuiltImage,
        wanted: Wanted,
        socket: PathBuf,
    }

    impl Scratch {
        /// The lookup finds no guest to use, and the file is gone.
        fn assert_found_stale_and_removed(&self) {
            assert_eq!(self.registry.lookup(&self.wanted).unwrap(), Lookup::Nothing);
            assert!(!self.registry.file(&self.wanted).exists());
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = TempDir::create(&std::env::temp_dir(), name).unwrap();
        let registry = Registry::new(&dir.path().join("guests"));
        let built = built_image(dir.path(), "test", r#"{"files":[]}"#);
        let wanted = Wanted::of(&built, "").unwrap();
        let socket = dir.path().join("agent.sock");
        Scratch {
            dir,
            registry,
            built,
            wanted,
            socket,
        }
    }

    fn registered(registry: &Registry, wanted: &Wanted, pid: u32, socket: &Path) -> Registration {
        let registration =
            wanted.running(pid, socket, socket.parent().unwrap(), "cargo xtask boot");
        registry.register(&registration).unwrap();
        registration
    }

    /// A live guest of the same build is reused; once its process is gone
    /// the file is stale: not reused, and removed.
    #[test]
    fn a_live_guest_is_reused_and_a_dead_ones_file_is_removed() {
        let guest = scratch("registry-live");
        let mut qemu = StandIn::naming(&guest.socket);
        let registration = registered(&guest.registry, &guest.wanted, qemu.id(), &guest.socket);
        assert_eq!(
            guest.registry.lookup(&guest.wanted).unwrap(),
            Lookup::Reuse(registration)
        );
        qemu.end();
        guest.assert_found_stale_and_removed();
    }

    /// Guards against a reused process id: a running process that is not
    /// the registered QEMU (its command line names no agent socket) makes
    /// the file stale.
    #[test]
    fn a_process_id_taken_by_another_program_is_stale() {
        let guest = scratch("registry-pid-reuse");
        registered(
            &guest.registry,
            &guest.wanted,
            std::process::id(),
            &guest.socket,
        );
        guest.assert_found_stale_and_removed();
    }

    /// Another profile's guest is not found; a rebuilt image's, another
    /// checkout's or another command line's guest is found but not reused,
    /// and its file stays (the guest still runs).
    #[test]
    fn a_guest_of_another_image_build_checkout_or_command_line_is_not_reused() {
        let Scratch {
            dir,
            registry,
            built,
            wanted,
            socket,
        } = scratch("registry-other");
        let qemu = StandIn::naming(&socket);
        registered(&registry, &wanted, qemu.id(), &socket);

        let dev = Wanted::of(&built_image(dir.path(), "dev", "{}"), "").unwrap();
        assert_eq!(registry.lookup(&dev).unwrap(), Lookup::Nothing);

        let why = |wanted: &Wanted| match registry.lookup(wanted).unwrap() {
            Lookup::Other { why, .. } => why,
            other => panic!("expected a guest that is not reused, got {other:?}"),
        };
        std::fs::write(
            built.raw.with_file_name("manifest.json"),
            r#"{"files":[1]}"#,
        )
        .unwrap();
        let rebuilt = Wanted::of(&built, "").unwrap();
        assert_eq!(why(&rebuilt), "the image was rebuilt since it booted");
        let other_checkout = Wanted {
            workspace: dir.path().join("other-checkout"),
            ..wanted.clone()
        };
        assert!(why(&other_checkout).contains("belongs to the checkout"));
        let other_words = Wanted {
            append: "nodows.server=web02".to_string(),
            ..wanted.clone()
        };
        assert!(why(&other_words).contains("other extra kernel words"));
        assert!(registry.file(&wanted).exists());
    }

    /// A guest that exits removes only its own registration, not one that
    /// took its place; an unreadable file is removed.
    #[test]
    fn unregistering_leaves_a_later_guests_file_and_a_broken_file_goes() {
        let Scratch {
            dir,
            registry,
            wanted,
            socket,
            ..
        } = scratch("registry-unregister");
        let first = wanted.running(1, &socket, dir.path(), "cargo xtask boot");
        let second = registered(&registry, &wanted, 2, &socket);
        registry.unregister(&first);
        assert!(registry.file(&wanted).exists());
        registry.unregister(&second);
        assert!(!registry.file(&wanted).exists());

        std::fs::write(registry.file(&wanted), "{").unwrap();
        assert_eq!(registry.lookup(&wanted).unwrap(), Lookup::Nothing);
        assert!(!registry.file(&wanted).exists());
    }
}
