//! initd as real PID 1 inside `unshare --pid --fork --mount-proc`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn as_pid1_in_a_pid_namespace_it_reaps_orphans_and_shuts_down_on_sigterm() {
    let probe = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--uts",
            "--mount",
            "true",
        ])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        println!("skipped: unshare --pid --fork --mount-proc --uts --mount is not permitted here (needs root or user namespaces)");
        return;
    }
    let initd = Initd::prepare(
        "pid1",
        &[
            ("forker", shell_service("forker", "( sleep 3 & echo $! > \"$TEST_DIR/orphan.pid\" ) ; echo $$ > \"$TEST_DIR/forker.pid\"; exec sleep 1000", "")),
            ("plain", shell_service("plain", "exec sleep 1000", "<needs>forker</needs>")),
        ],
    );
    let console = std::fs::File::create(&initd.console).unwrap();
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--uts", "--mount", "--"])
        .arg(initd_binary())
        .args(initd.arguments())
        // The kernel passes unknown command-line words to init: never fatal.
        .arg("single")
        .env("TEST_DIR", &initd.dir.path)
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .spawn()
        .unwrap();
    // initd's pid as seen from here: the child of unshare.
    let deadline = Instant::now() + WAIT;
    let host_pid = loop {
        if let Some((pid, _)) = children_of(unshare.id() as i32).first() {
            if cmdline(*pid).contains("initd") {
                break *pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "initd did not start\n{}",
            initd.console_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _guard = KillOnDrop(host_pid);
    initd.wait_until("ready line", || {
        initd
            .console_text()
            .contains("nodows: ready mode=production services=2")
    });
    assert_eq!(initd.state("plain"), "running");
    assert!(initd
        .console_text()
        .contains("initd: ignoring argument single"));
    initd.wait_until("orphan pid", || {
        !read_pids(&initd.path("orphan.pid")).is_empty()
    });
    // Its parent subshell exited at once: the orphan (`sleep 3`) is adopted
    // by PID 1, then reaped when it exits.
    let mut adopted = false;
    initd.wait_until("the orphan adopted by PID 1, then reaped", || {
        let present = children_of(host_pid)
            .iter()
            .any(|(pid, _)| cmdline(*pid).starts_with("sleep 3"));
        adopted |= present;
        adopted && !present
    });
    // A child is a zombie for the moment between its exit and initd's
    // wait; one that stays is a child PID 1 never reaps.
    initd.wait_until("no zombie under PID 1", || {
        children_of(host_pid).iter().all(|(_, state)| *state != 'Z')
    });
    let service_pids: Vec<i32> = children_of(host_pid).iter().map(|(pid, _)| *pid).collect();
    assert!(!service_pids.is_empty());
    // SIGTERM to PID 1: orderly poweroff.
    assert!(Command::new("kill")
        .args(["-TERM", &host_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + WAIT;
    loop {
        if unshare.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PID 1 did not shut down\n{}",
            initd.console_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = initd.console_text();
    let plain_stopped = console
        .find("nodows: service plain stopped")
        .unwrap_or(usize::MAX);
    let forker_stopped = console
        .find("nodows: service forker stopped")
        .unwrap_or(usize::MAX);
    assert!(
        plain_stopped < forker_stopped && forker_stopped != usize::MAX,
        "{console}"
    );
    assert!(console.contains("nodows: poweroff"), "{console}");
    for pid in service_pids {
        assert!(!alive(pid), "pid {pid} survived PID 1's shutdown");
    }
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill; harmless when the process is gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
