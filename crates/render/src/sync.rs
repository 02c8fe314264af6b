//! The one module that writes to the target root.
//!
//! Staged files are compared with the root (bytes, permission bits, and
//! owner/group when running as root); only files that differ are written.
//! Writing happens in two phases: every changed file is first written to a
//! temporary file in its own directory and fsynced; only when all of them
//! exist are they renamed over their targets, one by one, and the
//! directories fsynced. A crash at any point leaves each target either old
//! or new, never partial.
//!
//! Paths are resolved inside the root as if it were `/`: a symlink in a
//! parent directory (Debian's `/var/run -> /run`) is followed within the
//! root, never out of it. A symlink at the target itself is replaced by a
//! regular file.
//!
//! Concurrent renders of one root are serialized with `flock` on the root
//! directory.
//!
//! The apply is a transaction with a journal, `ROOT/var/lib/nodows/
//! render-journal.json` ([`JOURNAL`]): before the first temporary file it
//! records the temporaries and targets (state `writing`), before the first
//! rename the change set too (state `renaming`). A render that finds a
//! journal first finishes it: `writing` means nothing was renamed, so the
//! temporaries are removed; `renaming` means some targets may be new, so
//! the remaining temporaries are renamed and the journal's change set is
//! reported together with the new one. The journal is removed once the
//! change set is printed ([`finish_journal`]), or by the caller that acts on
//! the change set (`nodows render --keep-journal`, as initd does), so a
//! render killed at any point never loses a reload, and one that succeeded
//! reports it once.
//!
//! Test hooks, compiled only with the `test-hooks` feature (never in an
//! image's binary): `NODOWS_FAULT_AFTER_RENAMES=N` aborts the process after
//! the N-th rename (the crash-consistency test uses it);
//! `NODOWS_TEST_SYNC_DELAY_MS=N` sleeps between writing the temporary files
//! and renaming them (the concurrency test uses it).

use crate::{Error, StagedFile};
use serde::{Deserialize, Serialize};
use servicedef::OnChange;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What a sync did (or, with `dry_run`, would do). Serialized as the
/// change-set JSON of docs/interfaces.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// Targets written, sorted.
    pub written: Vec<String>,
    /// Per service with something to do, sorted by name.
    pub services: Vec<ServiceAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAction {
    pub name: String,
    /// `reload` or `restart`.
    pub action: String,
}

impl ChangeSet {
    /// Both change sets in one: every file written by either, per service
    /// the stronger action (`restart` over `reload`).
    pub fn merge(&self, other: &ChangeSet) -> ChangeSet {
        let written: BTreeSet<&String> = self.written.iter().chain(&other.written).collect();
        let mut actions: BTreeMap<&str, &str> = BTreeMap::new();
        for service in self.services.iter().chain(&other.services) {
            let action = actions.entry(&service.name).or_insert(&service.action);
            if service.action == "restart" {
                *action = "restart";
            }
        }
        ChangeSet {
            written: written.into_iter().cloned().collect(),
            services: actions
                .into_iter()
                .map(|(name, action)| ServiceAction {
                    name: name.to_string(),
                    action: action.to_string(),
                })
                .collect(),
        }
    }

    /// The human-readable form: one line per written file and per action.
    pub fn to_text(&self) -> String {
        if self.written.is_empty() {
            return "no changes\n".to_string();
        }
        let mut out = String::new();
        for path in &self.written {
            out.push_str(&format!("written {path}\n"));
        }
        for service in &self.services {
            out.push_str(&format!("{} {}\n", service.action, service.name));
        }
        out
    }
}

/// User and group names of the target root (`ROOT/etc/passwd`,
/// `ROOT/etc/group`); `root` is 0 even without those files.
struct Accounts {
    users: BTreeMap<String, u32>,
    groups: BTreeMap<String, u32>,
}

impl Accounts {
    fn read(root: &Path) -> Accounts {
        let parse = |file: &str| {
            let mut ids = BTreeMap::from([("root".to_string(), 0u32)]);
            if let Ok(text) = std::fs::read_to_string(root.join(file)) {
                for line in text.lines() {
                    let fields: Vec<&str> = line.split(':').collect();
                    if fields.len() >= 3 {
                        if let Ok(id) = fields[2].parse() {
                            ids.insert(fields[0].to_string(), id);
                        }
                    }
                }
            }
            ids
        };
        Accounts {
            users: parse("etc/passwd"),
            groups: parse("etc/group"),
        }
    }
}

/// Resolves `target` (absolute, checked by `check_target`) inside `root`,
/// following symlinks of parent directories as if `root` were `/`.
pub fn resolve_in_root(root: &Path, target: &str) -> Result<PathBuf, String> {
    resolve_components(root, Path::new(target), false, target)
}

/// Walks `path`'s components inside `root`, following every symlink met, or
/// every one but the last when `follow_last` is false. `target` names the
/// file in messages.
fn resolve_components(
    root: &Path,
    path: &Path,
    follow_last: bool,
    target: &str,
) -> Result<PathBuf, String> {
    let mut pending: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .rev()
        .collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        let follow = follow_last || !pending.is_empty();
        match std::fs::symlink_metadata(&candidate) {
            Ok(metadata) if metadata.file_type().is_symlink() && follow => {
                hops += 1;
                if hops > 40 {
                    return Err(format!(
                        "{}: too many levels of symbolic links while resolving {target}",
                        candidate.display()
                    ));
                }
                let link = std::fs::read_link(&candidate)
                    .map_err(|e| format!("{}: {e}", candidate.display()))?;
                if link.is_absolute() {
                    resolved.clear();
                }
                for component in link.components().rev() {
                    match component {
                        Component::Normal(part) => pending.push(part.to_os_string()),
                        Component::ParentDir => pending.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(name),
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(path)
}

/// [`resolve_in_root`] for many targets: each parent directory is resolved
/// once (1,000 files in `/etc/bench` cost one walk of `/etc/bench`, not
/// 1,000). The root does not change while it is locked, so the answers stay
/// true for the whole diff.
pub(crate) struct RootResolver<'r> {
    root: &'r Path,
    parents: HashMap<String, PathBuf>,
    /// How many directories were walked (the tests count them).
    pub(crate) walks: usize,
}

impl<'r> RootResolver<'r> {
    pub(crate) fn new(root: &'r Path) -> RootResolver<'r> {
        RootResolver {
            root,
            parents: HashMap::new(),
            walks: 0,
        }
    }

    /// The same path as `resolve_in_root(root, target)`: the target's name is
    /// never followed, so the answer is its resolved parent plus the name.
    pub(crate) fn resolve(&mut self, target: &str) -> Result<PathBuf, String> {
        let Some((parent, name)) = target.rsplit_once('/') else {
            return resolve_in_root(self.root, target);
        };
        let resolved_parent = match self.parents.get(parent) {
            Some(resolved) => resolved,
            None => {
                self.walks += 1;
                let resolved = resolve_components(self.root, Path::new(parent), true, target)?;
                self.parents.entry(parent.to_string()).or_insert(resolved)
            }
        };
        Ok(resolved_parent.join(name))
    }
}

/// Whether the regular file at `path`, already known to be `len` bytes long,
/// holds exactly `bytes`: one open and one read to the end, no second stat.
fn same_contents(path: &Path, len: u64, bytes: &[u8]) -> std::io::Result<bool> {
    if len != bytes.len() as u64 {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    // One byte more than expected, to see a file that grew since the stat.
    let mut buffer = vec![0u8; bytes.len() + 1];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&buffer[..filled] == bytes)
}

struct Planned<'s> {
    staged: &'s StagedFile,
    path: PathBuf,
    uid: u32,
    gid: u32,
}

/// What the diff found for one staged file.
enum Probe {
    /// Its owner or group is not an account of the root.
    NoAccount,
    /// Its target cannot be resolved inside the root.
    Unresolvable(String),
    /// Reading the target failed (exit 1).
    Failed(PathBuf, std::io::Error),
    /// A directory is where the file goes.
    Directory(PathBuf),
    /// The target already holds these bytes, mode and owner.
    Same,
    /// The target is missing or differs: write it.
    Differs { path: PathBuf, uid: u32, gid: u32 },
}

/// Compares one staged file with the root: bytes, permission bits, and
/// owner/group when running as root.
fn probe(
    resolver: &mut RootResolver,
    file: &StagedFile,
    accounts: &Accounts,
    as_root: bool,
) -> Probe {
    let uid = accounts.users.get(&file.owner).copied();
    let gid = accounts.groups.get(&file.group).copied();
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Probe::NoAccount;
    };
    let path = match resolver.resolve(&file.target) {
        Ok(path) => path,
        Err(problem) => return Probe::Unresolvable(problem),
    };
    let differs = match std::fs::symlink_metadata(&path) {
        // Missing, or a parent is not a directory (the write reports it).
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            true
        }
        Err(e) => return Probe::Failed(path, e),
        Ok(metadata) if metadata.is_dir() => return Probe::Directory(path),
        Ok(metadata) if !metadata.is_file() => true,
        Ok(metadata) => {
            metadata.mode() & 0o7777 != file.mode
                || (as_root && (metadata.uid() != uid || metadata.gid() != gid))
                || match same_contents(&path, metadata.len(), &file.bytes) {
                    Ok(same) => !same,
                    Err(e) => return Probe::Failed(path, e),
                }
        }
    };
    if differs {
        Probe::Differs { path, uid, gid }
    } else {
        Probe::Same
    }
}

fn is_root_user() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Diffs `staged` against `root` and, unless `dry_run`, writes the files that
/// differ. Owner and group are compared and set only when running as root.
pub fn sync(root: &Path, staged: &[StagedFile], dry_run: bool) -> Result<ChangeSet, Error> {
    if !root.is_dir() {
        return Err(Error::BadInput(vec![format!(
            "{}: the target root is not a directory",
            root.display()
        )]));
    }
    // Two renders of the same root (a boot render and a watch-triggered one)
    // take turns: the lock covers the diff and the writes. It is released
    // when `root_lock` is dropped (or the process dies).
    let root_lock = std::fs::File::open(root)
        .map_err(|e| Error::Failed(format!("{}: cannot open the root: {e}", root.display())))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&root_lock), libc::LOCK_EX) } != 0 {
        return Err(Error::Failed(format!(
            "{}: cannot lock the root: {}",
            root.display(),
            std::io::Error::last_os_error()
        )));
    }
    let pending = if dry_run { None } else { recover(root)? };
    let accounts = Accounts::read(root);
    let as_root = is_root_user();
    // The diff's I/O (resolve, lstat, read) runs on every core, each thread
    // with its own resolver; the outcomes are read here in order, so the
    // problems and the first failure are those of a one-thread diff.
    let probes = crate::map_on_threads(
        staged,
        crate::worker_threads(staged.len()),
        || RootResolver::new(root),
        |resolver, file| probe(resolver, file, &accounts, as_root),
    );
    let mut problems = Vec::new();
    let mut changed: Vec<Planned> = Vec::new();
    for (file, probe) in staged.iter().zip(probes) {
        match probe {
            Probe::NoAccount => problems.push(format!(
                "service `{}`: file {}: owner `{}` or group `{}` is not in {}/etc/passwd or /etc/group; create the account in the image or use an existing one",
                file.service,
                file.target,
                file.owner,
                file.group,
                root.display()
            )),
            Probe::Unresolvable(problem) => problems.push(problem),
            Probe::Failed(path, e) => {
                return Err(Error::Failed(format!("{}: {e}", path.display())));
            }
            Probe::Directory(path) => problems.push(format!(
                "{}: is a directory, but service `{}` renders a file there",
                path.display(),
                file.service
            )),
            Probe::Same => {}
            Probe::Differs { path, uid, gid } => changed.push(Planned {
                staged: file,
                path,
                uid,
                gid,
            }),
        }
    }
    if !problems.is_empty() {
        return Err(Error::BadInput(problems));
    }

    let mut actions: BTreeMap<&str, OnChange> = BTreeMap::new();
    for planned in &changed {
        let action = actions
            .entry(&planned.staged.service)
            .or_insert(OnChange::None);
        *action = match (*action, planned.staged.on_change) {
            (OnChange::Restart, _) | (_, OnChange::Restart) => OnChange::Restart,
            (OnChange::Reload, _) | (_, OnChange::Reload) => OnChange::Reload,
            _ => OnChange::None,
        };
    }
    let change_set = ChangeSet {
        written: changed.iter().map(|p| p.staged.target.clone()).collect(),
        services: actions
            .into_iter()
            .filter_map(|(name, action)| {
                let action = match action {
                    OnChange::Reload => "reload",
                    OnChange::Restart => "restart",
                    OnChange::None => return None,
                };
                Some(ServiceAction {
                    name: name.to_string(),
                    action: action.to_string(),
                })
            })
            .collect(),
    };
    let change_set = match &pending {
        Some(pending) => pending.merge(&change_set),
        None => change_set,
    };
    if dry_run || changed.is_empty() {
        return Ok(change_set);
    }
    write_all(root, &changed, &change_set, as_root)?;
    Ok(change_set)
}

/// The journal's path inside the root.
pub const JOURNAL: &str = "/var/lib/nodows/render-journal.json";

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// `writing` (temporaries being written, no target renamed) or
    /// `renaming` (every temporary written; renames under way or done).
    state: String,
    /// (temporary, target), relative to the root.
    files: Vec<(String, String)>,
    /// What the renames change, with what an earlier unfinished journal
    /// changed.
    change_set: ChangeSet,
}

fn journal_path(root: &Path) -> Result<PathBuf, Error> {
    resolve_in_root(root, JOURNAL).map_err(Error::Failed)
}

fn write_journal(root: &Path, journal: &Journal) -> Result<(), Error> {
    let path = journal_path(root)?;
    let failed = |e: std::io::Error| {
        Error::Failed(format!(
            "{}: cannot write the render journal: {e}; no target was changed",
            path.display()
        ))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let json = serde_json::to_vec(journal).map_err(|e| Error::Failed(e.to_string()))?;
    model::write_atomically(&path, &json).map_err(failed)
}

/// Finishes what a killed render left (see the module): `Some(change set)`
/// when it had begun renaming.
fn recover(root: &Path) -> Result<Option<ChangeSet>, Error> {
    let path = journal_path(root)?;
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Failed(format!("{}: {e}", path.display()))),
    };
    let journal: Journal = serde_json::from_slice(&text).map_err(|e| {
        Error::Failed(format!(
            "{}: not a render journal ({e}); check the services named in it, then remove it",
            path.display()
        ))
    })?;
    let mut directories: BTreeSet<PathBuf> = BTreeSet::new();
    for (temporary, target) in &journal.files {
        let temporary = root.join(temporary);
        let exists = std::fs::symlink_metadata(&temporary).is_ok();
        if !exists {
            continue;
        }
        let result = if journal.state == "renaming" {
            let target = root.join(target);
            if let Some(parent) = target.parent() {
                directories.insert(parent.to_path_buf());
            }
            std::fs::rename(&temporary, &target)
        } else {
            std::fs::remove_file(&temporary)
        };
        result.map_err(|e| {
            Error::Failed(format!(
                "{}: cannot finish the interrupted render: {e}",
                temporary.display()
            ))
        })?;
    }
    sync_directories(directories)?;
    if journal.state == "renaming" {
        Ok(Some(journal.change_set))
    } else {
        std::fs::remove_file(&path)
            .map_err(|e| Error::Failed(format!("{}: {e}", path.display())))?;
        Ok(None)
    }
}

/// Removes the journal once its change set has been reported (printed, or
/// acted on by the caller). No journal is fine.
pub fn finish_journal(root: &Path) -> Result<(), Error> {
    let path = journal_path(root)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Failed(format!("{}: {e}", path.display()))),
    }
    if let Some(parent) = path.parent() {
        sync_directories([parent.to_path_buf()])?;
    }
    Ok(())
}

fn sync_directories(directories: impl IntoIterator<Item = PathBuf>) -> Result<(), Error> {
    for directory in directories {
        std::fs::File::open(&directory)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::Failed(format!("{}: cannot fsync: {e}", directory.display())))?;
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.nodows-tmp"))
}

fn write_temp(planned: &Planned, temp: &Path, as_root: bool) -> std::io::Result<()> {
    if let Some(parent) = temp.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temp)?;
    file.write_all(&planned.staged.bytes)?;
    if as_root {
        std::os::unix::fs::fchown(&file, Some(planned.uid), Some(planned.gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(planned.staged.mode))?;
    file.sync_all()?;
    Ok(())
}

fn write_all(
    root: &Path,
    changed: &[Planned],
    change_set: &ChangeSet,
    as_root: bool,
) -> Result<(), Error> {
    let relative = |path: &Path| {
        path.strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    };
    let mut journal = Journal {
        state: "writing".to_string(),
        files: changed
            .iter()
            .map(|planned| (relative(&temp_path(&planned.path)), relative(&planned.path)))
            .collect(),
        change_set: change_set.clone(),
    };
    write_journal(root, &journal)?;
    // Phase 1: every new file as a temporary file next to its target.
    let mut temps: Vec<PathBuf> = Vec::with_capacity(changed.len());
    for planned in changed {
        let temp = temp_path(&planned.path);
        if let Err(e) = write_temp(planned, &temp, as_root) {
            let _ = std::fs::remove_file(&temp);
            for written in &temps {
                let _ = std::fs::remove_file(written);
            }
            let _ = finish_journal(root);
            return Err(Error::Failed(format!(
                "{}: cannot write: {e}; no target was changed",
                temp.display()
            )));
        }
        temps.push(temp);
    }
    // Test hook: widen the window between the phases (concurrency test).
    #[cfg(feature = "test-hooks")]
    if let Some(delay) = std::env::var("NODOWS_TEST_SYNC_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(delay));
    }
    // The commit point: from here on the next render finishes the renames.
    journal.state = "renaming".to_string();
    if let Err(e) = write_journal(root, &journal) {
        for temp in &temps {
            let _ = std::fs::remove_file(temp);
        }
        let _ = finish_journal(root);
        return Err(e);
    }
    // Phase 2: renames, then the directories' fsync.
    #[cfg(feature = "test-hooks")]
    let fault_after: Option<usize> = std::env::var("NODOWS_FAULT_AFTER_RENAMES")
        .ok()
        .and_then(|n| n.parse().ok());
    let mut directories: BTreeSet<PathBuf> = BTreeSet::new();
    for (index, (planned, temp)) in changed.iter().zip(&temps).enumerate() {
        if let Err(e) = std::fs::rename(temp, &planned.path) {
            for left in &temps[index..] {
                let _ = std::fs::remove_file(left);
            }
            return Err(Error::Failed(format!(
                "{}: cannot rename into place: {e}; {index} of {} files were updated",
                planned.path.display(),
                changed.len()
            )));
        }
        #[cfg(feature = "test-hooks")]
        if fault_after == Some(index + 1) {
            eprintln!("nodows: fault injected after {} renames", index + 1);
            std::process::abort();
        }
        if let Some(parent) = planned.path.parent() {
            directories.insert(parent.to_path_buf());
        }
    }
    sync_directories(directories)
}
