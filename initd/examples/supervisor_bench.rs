//! Host benchmark: initd against runit (runsvdir), same run, same criteria.
//! A benchmark, not a test: it prints figures and ratios.
//!
//!   cargo build --release -p initd --target x86_64-unknown-linux-musl
//!   cargo run --release -p initd --example supervisor_bench -- TARGET/x86_64-unknown-linux-musl/release [--cgroup2]
//!
//! Criteria (the same for both supervisors, observed from outside in /proc):
//! start = supervisor launched until N `sleep` processes of the run exist;
//! respawn = SIGKILL one until the count is back to N (mean of 10);
//! stop all = stop requested until no `sleep` is left;
//! PSS = all supervisor processes (smaps_rollup), with N services running;
//! idle wake-ups = context switches of all supervisor processes in 10 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sleeps(tag: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let is_sleep = cmdline.starts_with(b"sleep\0") || cmdline.starts_with(b"/bin/sleep\0");
        if is_sleep && cmdline.windows(tag.len()).any(|w| w == tag.as_bytes()) {
            {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rfind(')')
                    .is_some_and(|i| stat[i + 2..].starts_with('Z'));
                if !zombie {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

fn wait_count(tag: &str, count: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    while sleeps(tag).len() != count {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {count} sleeps"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn descendants(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut index = 0;
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if let Some(i) = stat.rfind(')') {
                let parent: i32 = stat[i + 2..]
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0);
                table.push((pid, parent));
            }
        }
    }
    while index < all.len() {
        let parent = all[index];
        for (pid, ppid) in &table {
            if *ppid == parent {
                all.push(*pid);
            }
        }
        index += 1;
    }
    all
}

fn pss_kib(pids: &[i32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|line| {
                    line.strip_prefix("Pss:").map(|v| {
                        v.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .unwrap_or(0)
                    })
                })
                .unwrap_or(0)
        })
        .sum()
}

fn switches(pids: &[i32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .filter(|line| {
                    line.starts_with("voluntary_ctxt_switches")
                        || line.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .sum::<u64>()
        })
        .sum()
}

#[derive(Debug, Default, Clone)]
struct Figures {
    start_ms: f64,
    respawn_ms: f64,
    stop_ms: f64,
    pss_kib: u64,
    wakeups: u64,
}

trait Supervisor {
    fn name(&self) -> &'static str;
    fn start(&mut self, dir: &Path, count: usize, tag: &str) -> Child;
    fn supervisor_pids(&self, child: &Child) -> Vec<i32>;
    fn stop_all(&mut self, child: &mut Child);
}

struct Initd {
    binaries: PathBuf,
    socket: PathBuf,
    /// Run in a private mount namespace with cgroup2 on /sys/fs/cgroup (the
    /// path PID 1 takes in an image), whatever the host has there.
    cgroup2: bool,
}

impl Supervisor for Initd {
    fn name(&self) -> &'static str {
        if self.cgroup2 {
            "initd-cgroup2"
        } else {
            "initd"
        }
    }
    fn start(&mut self, dir: &Path, count: usize, tag: &str) -> Child {
        let services = dir.join("services");
        for index in 0..count {
            let name = format!("s{index}");
            std::fs::create_dir_all(services.join(&name)).unwrap();
            std::fs::write(
                services.join(&name).join("service.xml"),
                format!("<service name=\"{name}\"><exec path=\"/bin/sleep\"><arg>{tag}</arg></exec><restart backoff-min=\"0ms\" max=\"1000\"/></service>"),
            )
            .unwrap();
        }
        self.socket = dir.join("initd.sock");
        let mut command = if self.cgroup2 {
            let mut command = Command::new("unshare");
            command
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg("mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"")
                .arg(self.binaries.join("initd"));
            command
        } else {
            Command::new(self.binaries.join("initd"))
        };
        command
            .arg("--services")
            .arg(&services)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--render-command")
            .arg("/nonexistent")
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    fn supervisor_pids(&self, child: &Child) -> Vec<i32> {
        vec![child.id() as i32]
    }
    fn stop_all(&mut self, child: &mut Child) {
        Command::new(self.binaries.join("initctl"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("poweroff")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let _ = child;
    }
}

struct Runit;

impl Supervisor for Runit {
    fn name(&self) -> &'static str {
        "runit"
    }
    fn start(&mut self, dir: &Path, count: usize, tag: &str) -> Child {
        use std::os::unix::fs::PermissionsExt;
        let services = dir.join("sv");
        for index in 0..count {
            let service = services.join(format!("s{index}"));
            std::fs::create_dir_all(&service).unwrap();
            let run = service.join("run");
            std::fs::write(&run, format!("#!/bin/sh\nexec /bin/sleep {tag}\n")).unwrap();
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Command::new("runsvdir")
            .arg(&services)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    fn supervisor_pids(&self, child: &Child) -> Vec<i32> {
        // runsvdir and its runsv processes (not the services).
        descendants(child.id() as i32)
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cmdline.starts_with(b"runsv")
            })
            .collect()
    }
    fn stop_all(&mut self, child: &mut Child) {
        // SIGHUP: runsvdir sends TERM to every runsv, which stop their service.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    }
}

fn measure(supervisor: &mut dyn Supervisor, count: usize, full: bool) -> Figures {
    let dir = std::env::temp_dir().join(format!(
        "initd-bench-{}-{}-{count}",
        supervisor.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tag = format!(
        "{}",
        900_000 + count + if supervisor.name() == "runit" { 1 } else { 0 }
    );
    let started = Instant::now();
    let mut child = supervisor.start(&dir, count, &tag);
    wait_count(&tag, count, Duration::from_secs(300));
    let mut figures = Figures {
        start_ms: started.elapsed().as_secs_f64() * 1000.0,
        ..Figures::default()
    };
    if full {
        std::thread::sleep(Duration::from_secs(1));
        let mut total = Duration::ZERO;
        for _ in 0..10 {
            let victim = sleeps(&tag)[0];
            let killed = Instant::now();
            unsafe { libc::kill(victim, libc::SIGKILL) };
            while sleeps(&tag).contains(&victim) || sleeps(&tag).len() != count {
                std::thread::sleep(Duration::from_micros(200));
            }
            total += killed.elapsed();
            // runit waits 1 s between respawns of the same service; pick
            // another victim next time and let things settle.
            std::thread::sleep(Duration::from_millis(1200));
        }
        figures.respawn_ms = total.as_secs_f64() * 100.0;
        let pids = supervisor.supervisor_pids(&child);
        figures.pss_kib = pss_kib(&pids);
        let before = switches(&pids);
        std::thread::sleep(Duration::from_secs(10));
        figures.wakeups = switches(&pids) - before;
    }
    let stopping = Instant::now();
    supervisor.stop_all(&mut child);
    wait_count(&tag, 0, Duration::from_secs(300));
    figures.stop_ms = stopping.elapsed().as_secs_f64() * 1000.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    // runsv processes may linger after runsvdir: clean up.
    let _ = Command::new("pkill")
        .arg("-P")
        .arg(child.id().to_string())
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

fn main() {
    let binaries = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: bench DIR-WITH-initd-AND-initctl"),
    );
    let cgroup2 = std::env::args().nth(2).as_deref() == Some("--cgroup2");
    let mut initd = Initd {
        binaries,
        socket: PathBuf::new(),
        cgroup2,
    };
    let mut runit = Runit;
    for (count, full) in [(100, true), (1000, false)] {
        let a = measure(&mut initd, count, full);
        let b = measure(&mut runit, count, full);
        println!("{count} services ({} against runit):", initd.name());
        println!(
            "  start to running   initd {:8.1} ms   runit {:8.1} ms   ratio {:.2}",
            a.start_ms,
            b.start_ms,
            a.start_ms / b.start_ms
        );
        println!(
            "  stop all           initd {:8.1} ms   runit {:8.1} ms   ratio {:.2}",
            a.stop_ms,
            b.stop_ms,
            a.stop_ms / b.stop_ms
        );
        if full {
            println!(
                "  respawn (mean 10)  initd {:8.1} ms   runit {:8.1} ms   ratio {:.2}",
                a.respawn_ms,
                b.respawn_ms,
                a.respawn_ms / b.respawn_ms
            );
            println!(
                "  PSS                initd {:8} KiB  runit {:8} KiB  ratio {:.3}",
                a.pss_kib,
                b.pss_kib,
                a.pss_kib as f64 / b.pss_kib as f64
            );
            println!(
                "  idle wake-ups/10 s initd {:8}      runit {:8}",
                a.wakeups, b.wakeups
            );
        }
    }
}
