//! "The whole service": every process a service started, however it forked.
//!
//! Linux with a writable cgroup v2 at /sys/fs/cgroup: one cgroup per service
//! (the child joins it before exec); stop signals go to every member and
//! SIGKILL goes through `cgroup.kill`, as systemd does.
//! Elsewhere: each service runs in its own session and process group, and
//! every process carries `NODOWS_SERVICE=<name>` in its environment; the
//! members are the processes of the service's process groups/sessions plus
//! those carrying the marker (found in /proc on Linux), so processes that
//! called setsid or double-forked are still found.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::PathBuf;

use crate::sys;

/// The environment variable that marks a service's processes.
pub const MARKER: &str = "NODOWS_SERVICE";

pub struct Groups {
    cgroup_base: Option<PathBuf>,
    /// Process groups (= sessions: services start with setsid) per service.
    pgids: BTreeMap<String, BTreeSet<i32>>,
    /// One /proc scan per loop turn, shared by every query of that turn
    /// (stopping 1,000 services must not scan /proc 1,000 times).
    snapshot: std::cell::RefCell<Option<Vec<Process>>>,
}

/// A process as the fallback sees it.
#[derive(Debug, Clone)]
struct Process {
    pid: i32,
    pgid: i32,
    session: i32,
    marker: Option<String>,
}

impl Groups {
    /// `use_cgroups` false forces the process-group fallback (tests).
    pub fn new(use_cgroups: bool) -> Groups {
        let cgroup_base = if use_cgroups { cgroup_base() } else { None };
        Groups {
            cgroup_base,
            pgids: BTreeMap::new(),
            snapshot: std::cell::RefCell::new(None),
        }
    }

    /// A new loop turn: forget the last /proc snapshot.
    pub fn begin_turn(&self) {
        self.snapshot.replace(None);
    }

    pub fn describe(&self) -> String {
        match &self.cgroup_base {
            Some(base) => format!("cgroup v2 under {}", base.display()),
            None => "process groups and tracked descendants".to_string(),
        }
    }

    /// Before a spawn: the `cgroup.procs` file the child writes "0" to.
    pub fn prepare(&self, name: &str) -> Option<CString> {
        let base = self.cgroup_base.as_ref()?;
        let directory = base.join(name);
        if !directory.is_dir() && std::fs::create_dir(&directory).is_err() {
            return None;
        }
        CString::new(directory.join("cgroup.procs").to_string_lossy().as_bytes()).ok()
    }

    /// Before a spawn: the previous instance was killed whole; forget its
    /// process groups (their numbers may be reused by anyone).
    pub fn respawning(&mut self, name: &str) {
        self.pgids.remove(name);
    }

    /// After a spawn: remember the new process group.
    pub fn spawned(&mut self, name: &str, pid: i32) {
        self.pgids.entry(name.to_string()).or_default().insert(pid);
    }

    /// Every live process of the service.
    pub fn members(&self, name: &str) -> Vec<i32> {
        self.members_of(&[name.to_string()])
            .remove(name)
            .unwrap_or_default()
    }

    /// Members of several services with one scan.
    pub fn members_of(&self, names: &[String]) -> BTreeMap<String, Vec<i32>> {
        let mut result = BTreeMap::new();
        if let Some(base) = &self.cgroup_base {
            for name in names {
                let procs = std::fs::read_to_string(base.join(name).join("cgroup.procs"))
                    .unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect();
                result.insert(name.clone(), pids);
            }
            return result;
        }
        for name in names {
            result.insert(name.clone(), Vec::new());
        }
        self.scan(names, &mut result);
        result
    }

    fn scan(&self, names: &[String], result: &mut BTreeMap<String, Vec<i32>>) {
        if self.snapshot.borrow().is_none() {
            // One set of every known group: asking each service's set per
            // process made a scan O(processes x services) (1,000 services:
            // tens of milliseconds in every respawn).
            let all_known: std::collections::HashSet<i32> =
                self.pgids.values().flatten().copied().collect();
            let known =
                |pgid: i32, session: i32| all_known.contains(&pgid) || all_known.contains(&session);
            self.snapshot.replace(Some(processes(&known)));
        }
        // Which of the asked-for services owns each of its known groups.
        let mut owners: std::collections::HashMap<i32, &String> = Default::default();
        for name in names {
            for pgid in self.pgids.get(name).into_iter().flatten() {
                owners.entry(*pgid).or_insert(name);
            }
        }
        let snapshot = self.snapshot.borrow();
        for process in snapshot.iter().flatten() {
            let owner = owners
                .get(&process.pgid)
                .or_else(|| owners.get(&process.session))
                .copied()
                .or_else(|| {
                    let marker = process.marker.as_deref()?;
                    names.iter().find(|name| name.as_str() == marker)
                });
            if let Some(owner) = owner {
                if let Some(pids) = result.get_mut(owner) {
                    pids.push(process.pid);
                }
            }
        }
        // Without /proc, a live process group stands for its members.
        #[cfg(not(target_os = "linux"))]
        for name in names {
            for pgid in self.pgids.get(name).into_iter().flatten() {
                if sys::kill(-pgid, 0).is_ok() {
                    if let Some(pids) = result.get_mut(name) {
                        pids.push(*pgid);
                    }
                }
            }
        }
    }

    /// Send a signal to the whole service.
    pub fn signal(&self, name: &str, signal: i32) {
        // On Linux the members come from initd's own descendants only, so a
        // process group number reused by a stranger is never signalled.
        #[cfg(not(target_os = "linux"))]
        if self.cgroup_base.is_none() {
            for pgid in self.pgids.get(name).into_iter().flatten() {
                let _ = sys::kill(-pgid, signal);
            }
        }
        for pid in self.members(name) {
            let _ = sys::kill(pid, signal);
        }
    }

    /// True when "the whole service" is a cgroup (else process groups and
    /// tracked descendants).
    pub fn uses_cgroups(&self) -> bool {
        self.cgroup_base.is_some()
    }

    /// SIGKILL the processes of `name` that left its process groups and
    /// sessions (setsid, double forks), found by their marker. Processes in
    /// a known group are never among them, so a new instance already
    /// spawned (its own group, known) is safe: this may run after the
    /// respawn, off its critical path.
    pub fn kill_escapees(&self, name: &str) {
        self.snapshot.replace(None);
        let mut result = BTreeMap::new();
        result.insert(name.to_string(), Vec::new());
        self.scan(&[name.to_string()], &mut result);
        let snapshot = self.snapshot.borrow();
        for pid in result.remove(name).unwrap_or_default() {
            let escaped = snapshot
                .iter()
                .flatten()
                .any(|process| process.pid == pid && process.marker.is_some());
            if escaped {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// SIGKILL the whole service.
    pub fn kill(&self, name: &str) {
        if let Some(base) = &self.cgroup_base {
            if std::fs::write(base.join(name).join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        self.signal(name, libc::SIGKILL);
    }

    /// Nothing of the service is left; forget its process groups.
    pub fn forget(&mut self, name: &str) {
        self.pgids.remove(name);
    }

    /// Remove the cgroups (at exit).
    pub fn cleanup(&self) {
        if let Some(base) = &self.cgroup_base {
            if let Ok(entries) = std::fs::read_dir(base) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// Every live descendant of initd (orphans of services are re-parented to
/// initd, the subreaper, so every service process is one): pid, process
/// group, session, and the marker, read from the environment only for
/// processes that left every known process group (setsid).
#[cfg(target_os = "linux")]
fn processes(known: &dyn Fn(i32, i32) -> bool) -> Vec<Process> {
    let own = sys::getpid();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // (pid, parent, pgid, session) of every live process.
    let mut table: Vec<(i32, i32, i32, i32)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may contain spaces and parens).
        let Some(rest) = stat.rfind(')').map(|index| &stat[index + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 4 || fields[0] == "Z" {
            continue;
        }
        table.push((
            pid,
            fields[1].parse().unwrap_or(0),
            fields[2].parse().unwrap_or(0),
            fields[3].parse().unwrap_or(0),
        ));
    }
    let parents: BTreeMap<i32, i32> = table
        .iter()
        .map(|(pid, parent, _, _)| (*pid, *parent))
        .collect();
    let descends_from_initd = |mut pid: i32| {
        for _ in 0..4096 {
            match parents.get(&pid) {
                Some(parent) if *parent == own => return true,
                Some(parent) if *parent > 1 => pid = *parent,
                _ => return false,
            }
        }
        false
    };
    let mut processes = Vec::new();
    for (pid, _, pgid, session) in table {
        if pid == own || !descends_from_initd(pid) {
            continue;
        }
        let mut marker = None;
        if !known(pgid, session) {
            if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
                for variable in environ.split(|byte| *byte == 0) {
                    if let Some(value) = variable
                        .strip_prefix(MARKER.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                    {
                        marker = Some(String::from_utf8_lossy(value).into_owned());
                        break;
                    }
                }
            }
        }
        processes.push(Process {
            pid,
            pgid,
            session,
            marker,
        });
    }
    processes
}

/// Without /proc: the live process groups of the services (kill 0).
#[cfg(not(target_os = "linux"))]
fn processes(_known: &dyn Fn(i32, i32) -> bool) -> Vec<Process> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn cgroup_base() -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let root = c"/sys/fs/cgroup";
    // SAFETY: statfs into a zeroed struct with a valid path.
    let is_cgroup2 = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(root.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
    };
    if !is_cgroup2 {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own_path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .trim();
    let pid = sys::getpid();
    let leaf = if pid == 1 {
        "nodows".to_string()
    } else {
        format!("initd.{pid}")
    };
    let base = PathBuf::from("/sys/fs/cgroup")
        .join(own_path.trim_start_matches('/'))
        .join(leaf);
    if base.is_dir() || std::fs::create_dir(&base).is_ok() {
        Some(base)
    } else {
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn cgroup_base() -> Option<PathBuf> {
    None
}
