//! Suite `supervisor`: initd against runit (runsvdir) and s6 (s6-svscan) on
//! the host, with 100 and 1,000 trivial services.
//!
//! Every service runs a copy of `/bin/sleep` under a name unique to this run,
//! so the benchmark can tell its services from every other process by
//! `/proc/PID/stat` alone; the same scan measures every supervisor.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::{Stat, Suite, Unit};
use super::Context as BenchContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Initd,
    Runit,
    S6,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Initd => "initd",
            Kind::Runit => "runit (runsvdir)",
            Kind::S6 => "s6 (s6-svscan)",
        }
    }
}

const SIZES: [usize; 2] = [100, 1000];
const RESPAWNS: usize = 5;
const IDLE: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Figures {
    start_ms: Vec<f64>,
    respawn_ms: Vec<f64>,
    stop_ms: Vec<f64>,
    pss_kib: Vec<f64>,
    processes: Vec<f64>,
    wakeups: Vec<f64>,
}

pub fn run(context: &BenchContext, suite: &mut Suite) -> anyhow::Result<()> {
    let initd = context.initd_binary()?;
    let runsvdir = find_or_install("runsvdir", "runit", context)?;
    let svscan = find_or_install("s6-svscan", "s6", context)?;
    suite.note(
        "Debian bookworm has no dinit package, so the peers are runit (`runsvdir`, Debian package runit) and s6 (`s6-svscan`, Debian package s6), installed by the benchmark with apt-get and run from a temporary directory.",
    );
    suite.note(
        "Each service is a copy of /bin/sleep under a name unique to the run; initd execs it directly, runit and s6 run it through a `run` script (`#!/bin/sh` + `exec`), as their users write them.",
    );
    suite.note(
        "start: from spawning the supervisor until every service process has exec'd the sleep (a /proc scan every millisecond, the same for all). respawn: SIGKILL to one service until its replacement has exec'd, median of 5 different services, each killed after it ran for more than a second (runit and s6 delay a restart within a second of the last start; s6-supervise also waits a second between two launches). stop: from the stop signal (initd SIGTERM, runsvdir SIGHUP, s6-svscan SIGTERM) until no service process is left.",
    );
    suite.note(
        "PSS: the sum of /proc/PID/smaps_rollup Pss over the supervision processes (initd: one; runit: runsvdir and one runsv per service; s6: s6-svscan and one s6-supervise per service). Wake-ups: voluntary plus involuntary context switches of those processes over 10 s of idleness.",
    );
    let runs = if context.quick { 1 } else { 3 };
    let sleep_copy = context.work.join("supervisor-bin");
    std::fs::create_dir_all(&sleep_copy)?;
    let comm = format!("nbs{}", std::process::id());
    let sleep = sleep_copy.join(&comm);
    std::fs::copy("/bin/sleep", &sleep).context("copying /bin/sleep")?;

    // --quick keeps to 100 services: stopping 1,000 takes minutes with some supervisors.
    let sizes: &[usize] = if context.quick { &SIZES[..1] } else { &SIZES };
    for &size in sizes {
        let mut figures: HashMap<&'static str, Figures> = HashMap::new();
        for run in 0..runs {
            // Alternate the order between runs.
            let mut kinds = vec![Kind::Initd, Kind::Runit, Kind::S6];
            if run % 2 == 1 {
                kinds.reverse();
            }
            for kind in kinds {
                let dir = context
                    .work
                    .join(format!("supervisor-{size}-{run}-{:?}", kind));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let binaries = Binaries {
                    initd: &initd,
                    runsvdir: &runsvdir,
                    svscan: &svscan,
                    sleep: &sleep,
                };
                let measured = measure(kind, size, &dir, &binaries, &comm, run == 0)
                    .with_context(|| format!("{} with {size} services", kind.name()))?;
                eprintln!(
                    "    {} {size}: start {:.1} ms, respawn {:.1} ms, stop {:.1} ms",
                    kind.name(),
                    measured.start_ms[0],
                    Stat::new(measured.respawn_ms.clone())
                        .map(|s| s.median())
                        .unwrap_or(f64::NAN),
                    measured.stop_ms[0]
                );
                let entry = figures.entry(kind.name()).or_default();
                entry.start_ms.extend(measured.start_ms);
                entry.respawn_ms.extend(measured.respawn_ms);
                entry.stop_ms.extend(measured.stop_ms);
                entry.pss_kib.extend(measured.pss_kib);
                entry.processes.extend(measured.processes);
                entry.wakeups.extend(measured.wakeups);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let nodows = figures.remove("initd").unwrap_or_default();
        for peer in [Kind::Runit, Kind::S6] {
            let peer_figures = figures.remove(peer.name()).unwrap_or_default();
            let rows: [(&str, Unit, &Vec<f64>, &Vec<f64>); 6] = [
                (
                    "start to all running",
                    Unit::Milliseconds,
                    &nodows.start_ms,
                    &peer_figures.start_ms,
                ),
                (
                    "respawn latency",
                    Unit::Milliseconds,
                    &nodows.respawn_ms,
                    &peer_figures.respawn_ms,
                ),
                (
                    "stop all",
                    Unit::Milliseconds,
                    &nodows.stop_ms,
                    &peer_figures.stop_ms,
                ),
                (
                    "PSS of the supervision processes",
                    Unit::KiB,
                    &nodows.pss_kib,
                    &peer_figures.pss_kib,
                ),
                (
                    "supervision processes",
                    Unit::Count,
                    &nodows.processes,
                    &peer_figures.processes,
                ),
                (
                    "idle wake-ups in 10 s",
                    Unit::Count,
                    &nodows.wakeups,
                    &peer_figures.wakeups,
                ),
            ];
            for (figure, unit, ours, theirs) in rows {
                suite.row(
                    format!("{size} services: {figure}"),
                    unit,
                    Stat::new(ours.clone()),
                    peer.name(),
                    Stat::new(theirs.clone()),
                );
            }
        }
    }
    // The goal for initd is a static binary under 3 MiB.
    let size_kib = |paths: &[&Path]| -> Option<Stat> {
        let bytes: u64 = paths
            .iter()
            .map(|path| std::fs::metadata(path).map(|metadata| metadata.len()))
            .sum::<std::io::Result<u64>>()
            .ok()?;
        Some(Stat::one(bytes as f64 / 1024.0))
    };
    let runsv = runsvdir.with_file_name("runsv");
    let supervise = svscan.with_file_name("s6-supervise");
    for (peer, paths) in [
        (Kind::Runit, [runsvdir.as_path(), runsv.as_path()]),
        (Kind::S6, [svscan.as_path(), supervise.as_path()]),
    ] {
        suite.row(
            "supervisor binaries on disk (initd: static musl; peers: dynamic, without their libraries)",
            Unit::KiB,
            size_kib(&[initd.as_path()]),
            peer.name(),
            size_kib(&paths),
        );
    }
    Ok(())
}

struct Binaries<'a> {
    initd: &'a Path,
    runsvdir: &'a Path,
    svscan: &'a Path,
    sleep: &'a Path,
}

/// `program`'s path, installing Debian's `package` first when it is missing.
pub(super) fn find_or_install(
    program: &str,
    package: &str,
    context: &BenchContext,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = which(program) {
        return Ok(path);
    }
    context.apt_install(&[package])?;
    which(program).with_context(|| format!("{program} is missing after apt-get install {package}"))
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// One process as /proc/PID/stat says.
struct ProcStat {
    comm: String,
    ppid: i32,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let mut rest = text[close + 1..].split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat { comm, ppid })
}

fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Tracks the processes running the renamed sleep.
struct Scanner {
    comm: String,
    /// Processes that existed before the supervisor started, or are known not to be ours.
    ignored: HashSet<i32>,
    services: HashSet<i32>,
}

impl Scanner {
    fn new(comm: &str) -> Scanner {
        Scanner {
            comm: comm.to_owned(),
            ignored: pids().into_iter().collect(),
            services: HashSet::new(),
        }
    }

    /// Adds the new service processes; returns how many are alive.
    fn scan(&mut self) -> usize {
        let mut alive = HashSet::new();
        for pid in pids() {
            if self.services.contains(&pid) {
                alive.insert(pid);
                continue;
            }
            if self.ignored.contains(&pid) {
                continue;
            }
            if let Some(stat) = proc_stat(pid) {
                if stat.comm == self.comm {
                    alive.insert(pid);
                }
            }
        }
        self.services = alive;
        self.services.len()
    }
}

/// The supervisor's process tree, without the services.
fn supervision_tree(root: i32, comm: &str) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut comms = HashMap::new();
    for pid in pids() {
        if let Some(stat) = proc_stat(pid) {
            children.entry(stat.ppid).or_default().push(pid);
            comms.insert(pid, stat.comm);
        }
    }
    let mut tree = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if comms.get(&pid).map(String::as_str) == Some(comm) {
            continue;
        }
        tree.push(pid);
        if let Some(kids) = children.get(&pid) {
            queue.extend(kids);
        }
    }
    tree
}

fn named(pids: &[i32]) -> Vec<(i32, String)> {
    pids.iter()
        .filter_map(|pid| Some((*pid, proc_stat(*pid)?.comm)))
        .collect()
}

fn status_field(pid: i32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(field)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn pss_kib(pid: i32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix("Pss:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn context_switches(pid: i32) -> f64 {
    status_field(pid, "voluntary_ctxt_switches:").unwrap_or(0.0)
        + status_field(pid, "nonvoluntary_ctxt_switches:").unwrap_or(0.0)
}

struct Running {
    child: Child,
    kind: Kind,
    /// The supervision processes with their names, checked again before a kill.
    tree: Vec<(i32, String)>,
}

impl Running {
    fn stop_signal(&self) -> i32 {
        match self.kind {
            // runsvdir exits at once on TERM; HUP makes it TERM every runsv first.
            Kind::Runit => libc::SIGHUP,
            Kind::Initd | Kind::S6 => libc::SIGTERM,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only what this benchmark started: the supervisor and its tree.
        for (pid, comm) in &self.tree {
            if proc_stat(*pid).is_some_and(|stat| &stat.comm == comm) {
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prepare(kind: Kind, size: usize, dir: &Path, sleep: &Path) -> anyhow::Result<PathBuf> {
    let services = dir.join("services");
    for index in 0..size {
        let name = format!("s{index:04}");
        let service = services.join(&name);
        std::fs::create_dir_all(&service)?;
        match kind {
            Kind::Initd => std::fs::write(
                service.join("service.xml"),
                format!(
                    "<service name=\"{name}\" type=\"service\">\n  <exec path=\"{}\"><arg>100000</arg></exec>\n</service>\n",
                    sleep.display()
                ),
            )?,
            Kind::Runit | Kind::S6 => {
                use std::os::unix::fs::PermissionsExt;
                let run = service.join("run");
                std::fs::write(
                    &run,
                    format!("#!/bin/sh\nexec {} 100000\n", sleep.display()),
                )?;
                std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    Ok(services)
}

fn spawn(
    kind: Kind,
    size: usize,
    dir: &Path,
    services: &Path,
    binaries: &Binaries,
) -> anyhow::Result<Child> {
    let console = std::fs::File::create(dir.join("console.log"))?;
    let mut command = match kind {
        Kind::Initd => {
            let mut command = Command::new(binaries.initd);
            command
                .arg("--services")
                .arg(services)
                .arg("--socket")
                .arg(dir.join("initd.sock"))
                .arg("--state")
                .arg(dir.join("state"))
                .arg("--log-dir")
                .arg(dir.join("log"));
            command
        }
        Kind::Runit => {
            let mut command = Command::new(binaries.runsvdir);
            command.arg("-P").arg(services);
            command
        }
        Kind::S6 => {
            let mut command = Command::new(binaries.svscan);
            // The default limit is 500 services.
            command.arg("-c").arg(size.to_string()).arg(services);
            command
        }
    };
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    command
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))
}

fn wait_until(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > deadline {
            bail!(
                "timed out after {} s waiting for {what}",
                deadline.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn measure(
    kind: Kind,
    size: usize,
    dir: &Path,
    binaries: &Binaries,
    comm: &str,
    first_run: bool,
) -> anyhow::Result<Figures> {
    let services = prepare(kind, size, dir, binaries.sleep)?;
    let mut figures = Figures::default();
    let mut scanner = Scanner::new(comm);
    let started = Instant::now();
    let child = spawn(kind, size, dir, &services, binaries)?;
    let mut running = Running {
        tree: Vec::new(),
        child,
        kind,
    };
    let console = dir.join("console.log");
    let result = wait_until(&format!("{size} services to run"), WAIT, || {
        scanner.scan() >= size
    });
    if let Err(error) = result {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        bail!(
            "{error}; {} running; console tail:\n{}",
            scanner.services.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    figures
        .start_ms
        .push(started.elapsed().as_secs_f64() * 1000.0);
    let root = running.child.id() as i32;
    running.tree = named(&supervision_tree(root, comm));

    // Respawn: services must have run for more than a second (runit and s6
    // hold back a restart of a service that died within a second of starting).
    std::thread::sleep(Duration::from_millis(1500));
    let mut victims: Vec<i32> = scanner.services.iter().copied().collect();
    victims.sort_unstable();
    for victim in victims
        .iter()
        .step_by((size / RESPAWNS).max(1))
        .take(RESPAWNS)
    {
        scanner.scan();
        let before: HashSet<i32> = scanner.services.clone();
        let killed = Instant::now();
        unsafe {
            libc::kill(*victim, libc::SIGKILL);
        }
        wait_until("a respawn", WAIT, || {
            scanner.scan();
            scanner.services.iter().any(|pid| !before.contains(pid))
        })?;
        figures
            .respawn_ms
            .push(killed.elapsed().as_secs_f64() * 1000.0);
    }
    running.tree = named(&supervision_tree(root, comm));

    if first_run {
        std::thread::sleep(Duration::from_secs(1));
        let tree = supervision_tree(root, comm);
        let pss: f64 = tree.iter().filter_map(|pid| pss_kib(*pid)).sum();
        figures.pss_kib.push(pss);
        figures.processes.push(tree.len() as f64);
        let before: f64 = tree.iter().map(|pid| context_switches(*pid)).sum();
        std::thread::sleep(IDLE);
        let after: f64 = tree.iter().map(|pid| context_switches(*pid)).sum();
        figures.wakeups.push(after - before);
    }

    scanner.scan();
    let service_pids: Vec<i32> = scanner.services.iter().copied().collect();
    let stopping = Instant::now();
    unsafe {
        libc::kill(root, running.stop_signal());
    }
    wait_until("every service to stop", WAIT, || {
        service_pids
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    })?;
    figures
        .stop_ms
        .push(stopping.elapsed().as_secs_f64() * 1000.0);
    // Let the supervisor finish on its own before the drop kills what is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if running.child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(figures)
}
