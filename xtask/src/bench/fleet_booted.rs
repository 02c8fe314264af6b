//! Suite `fleet-booted`: a commit in PostgreSQL to the owning service's
//! reload on a booted appliance.
//!
//! Boots the test image once (with the test agent), starts the e2e's
//! database and guest watcher (`test::e2e::fleet::GuestWatch`: a real
//! PostgreSQL 15 on 127.0.0.1, `nodows watch` in the guest reaching it
//! through QEMU's user-network gateway, applying with `initctl render`),
//! and commits UPDATEs of web's `worker_processes`, alternating 1 and 2.
//! Each is timed from the commit returning on the host until the guest
//! shows web reloaded: nginx's master (its pid unchanged) runs as many
//! new workers as the value asks for, read through the agent every 100 ms
//! (upper bound), and from the commit to the last poll that did not show
//! it yet (lower bound).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};

use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::qemu::{self, Vm};
use crate::test::e2e::fleet::{web_workers, GuestWatch};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// One change's limit: a watcher that misses the notification falls back
/// to its 60 s poll, which is a broken push, not a figure.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(50);
const KEY: &str = "worker_processes";

/// Between two polls: the guest gets its one vCPU back (polled back to
/// back, the agent's shells slowed the change they watched by a third).
const POLL_GAP: Duration = Duration::from_millis(100);

/// One change's samples: commit to the end of the first poll that showed
/// the reload (an upper bound), commit to the start of the last poll that
/// did not (a lower bound; zero when the first poll showed it), and the
/// agent's round trips.
struct Change {
    reload: Duration,
    not_before: Duration,
    polls: Vec<Duration>,
}

/// Web's main pid from `initctl status --json`.
fn web_pid(vm: &mut Vm) -> anyhow::Result<i64> {
    vm.service_status()?
        .into_iter()
        .find(|status| status.name == "web" && status.state == "running")
        .and_then(|status| status.pid)
        .context("web is not running in the guest")
}

/// Commits `value` and polls until nginx (`pid`) runs `value` workers that
/// are none of `old`; the new workers and the timings.
fn time_change(
    vm: &mut Vm,
    watch: &mut GuestWatch,
    pid: i64,
    old: &[i64],
    value: usize,
) -> anyhow::Result<(Vec<i64>, Change)> {
    watch.update_web_key(KEY, &value.to_string())?;
    let committed = Instant::now();
    let mut polls = Vec::new();
    let mut not_before = Duration::ZERO;
    loop {
        let asked = Instant::now();
        let workers = web_workers(vm, pid)?;
        polls.push(asked.elapsed());
        let new: Vec<i64> = workers
            .into_iter()
            .filter(|worker| !old.contains(worker))
            .collect();
        if new.len() == value {
            let reload = committed.elapsed();
            let change = Change {
                reload,
                not_before,
                polls,
            };
            return Ok((new, change));
        }
        not_before = asked - committed;
        if committed.elapsed() > CHANGE_TIMEOUT {
            let log = vm.succeed("cat /var/log/nodows/fleet-watch.log")?;
            return Err(vm.failure(&format!(
                "web did not reload into {value} new worker(s) within {CHANGE_TIMEOUT:?} of the commit (old {old:?}, new {new:?}); watch log:\n{log}"
            )));
        }
        std::thread::sleep(POLL_GAP);
    }
}

/// `changes` timed changes on a running watcher.
fn measure(vm: &mut Vm, watch: &mut GuestWatch, changes: usize) -> anyhow::Result<Vec<Change>> {
    // The key gets a row in the guest's scope first, so that every timed
    // change is an UPDATE.
    let revision = watch.set_web_key(KEY, "1")?;
    watch
        .database
        .wait_applied(&watch.server, revision, CHANGE_TIMEOUT)?;
    let pid = web_pid(vm)?;
    let mut workers = web_workers(vm, pid)?;
    let mut timed = Vec::new();
    for change in 0..changes {
        let value = if change % 2 == 0 { 2 } else { 1 };
        let (new, sample) = time_change(vm, watch, pid, &workers, value)?;
        eprintln!(
            "    change {}: worker_processes={value}, commit to reload {} to {} ms ({} polls)",
            change + 1,
            sample.not_before.as_millis(),
            sample.reload.as_millis(),
            sample.polls.len()
        );
        timed.push(sample);
        workers = new;
        // The status row closes the change; the next one starts from a
        // watcher that is idle again.
        let revision = watch.database.sql("SELECT 1")?;
        watch
            .database
            .wait_applied(&watch.server, revision, CHANGE_TIMEOUT)?;
    }
    ensure!(
        web_pid(vm)? == pid,
        "web's main process changed: it was restarted, not reloaded"
    );
    Ok(timed)
}

fn milliseconds(durations: impl Iterator<Item = Duration>) -> Vec<f64> {
    durations.map(|each| each.as_secs_f64() * 1000.0).collect()
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    qemu::require_qemu()?;
    let image = context.profile_image("test")?;
    let work = context.work.join("fleet-booted");
    std::fs::create_dir_all(&work)?;
    let mut config = image.config("bench-fleet-booted", false, "", &work);
    config.accel = context.accel;
    let mut vm = Vm::start(&config)?;
    vm.wait_for_ready(READY_TIMEOUT)?;
    let changes = if context.quick { 3 } else { 20 };
    let mut watch = GuestWatch::start(&mut vm, &work.join("db"))?;
    let result = measure(&mut vm, &mut watch, changes);
    watch.stop(&mut vm);
    vm.kill();
    let timed = result?;
    let reloads = Stat::new(milliseconds(timed.iter().map(|change| change.reload)))
        .context("no change was timed")?;
    let not_before = Stat::new(milliseconds(timed.iter().map(|change| change.not_before)))
        .context("no change was timed")?;
    let polls = Stat::new(milliseconds(
        timed.iter().flat_map(|change| change.polls.iter().copied()),
    ))
    .context("no poll was timed")?;
    let confd = Some(Stat::one(600_000.0));
    suite.row(
        "commit in PostgreSQL to web's reload on the booted test appliance (`nodows watch` in the guest: LISTEN/NOTIFY, fetch, render, `initctl render`, SIGHUP, nginx's new workers up), median",
        Unit::Milliseconds,
        Some(reloads.clone()),
        "confd's default poll interval",
        confd.clone(),
    );
    suite.row(
        format!("the same, 95th percentile (nearest rank of {changes})"),
        Unit::Milliseconds,
        Some(Stat::one(reloads.percentile(95.0))),
        "confd's default poll interval",
        confd,
    );
    suite.row(
        "lower bound: commit to the start of the last poll that did not show the reload yet",
        Unit::Milliseconds,
        Some(not_before),
        "no peer",
        None,
    );
    suite.row(
        "one agent poll of the guest (round trip; polls are 100 ms apart)",
        Unit::Milliseconds,
        Some(polls),
        "no peer",
        None,
    );
    suite.note(format!(
        "The test image booted once under {}; a real PostgreSQL 15 on the host's 127.0.0.1, reached by the guest through QEMU's user-network gateway 10.0.2.2; `nodows watch --model postgres://... --command '/sbin/initctl render'` started in the guest over the agent (the e2e step's set-up). {changes} changes, each a committed UPDATE of web's `worker_processes` (alternating 2 and 1) in the guest's scope, the next one after the status row showed the previous revision.",
        super::accel_name(context.accel)
    ));
    suite.note("Timed from the host's `sql` call returning (the COMMIT and a read of the revision done) to the end of the first agent poll that shows nginx's master, same pid, running as many workers not seen before as the value asks for (`cat /proc/PID/task/*/children`, 100 ms between polls: polled back to back, the agent's shells on the guest's one vCPU made the median 841 ms instead of 640 ms): the first two rows are upper bounds, late by at most a gap and two round trips; the reload happened after the lower bound of the third row.");
    suite.note("The same change through etcd (`etcdctl watch` running `nodows render`, the path a confd user would build) is measured on the host in the `fleet` suite; the guest image carries no etcd client.");
    Ok(())
}
