//! Suite `failover`: the failover pair (two machines of the failover-test
//! profile on a private link, the e2e test's `Pair`) under a power-off of
//! its MASTER, for keepalived's default advertisement interval (1 s) and
//! for nodows' own default (the declared default of keepalived's
//! `advert_int`).
//!
//! Per run: a client in the BACKUP fetches the VIP every 0.1 s; the MASTER's
//! QEMU is killed; takeover is the time from just before the kill to the
//! client's first answer from the survivor (the client's clock), requests
//! lost are the client's requests in between that got no answer or the
//! standby page, and switch to ready is
//! the survivor's `nodows: ready` t minus its `nodows: mode failover` t.
//! The dead node is booted again (it rejoins as BACKUP) for the next run.

use std::time::Duration;

use anyhow::Context as _;

use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::qemu::Pattern;
use crate::test::e2e::failover::{self, Pair, SERVERS};

const RUNS: usize = 5;

/// nodows' default advertisement interval: keepalived's declaration.
fn tuned_advert_int() -> anyhow::Result<String> {
    let path = crate::qemu::workspace_root().join("services/keepalived/service.xml");
    let definition = servicedef::parse_file(&path).map_err(|error| anyhow::anyhow!("{error}"))?;
    definition
        .keys
        .iter()
        .find(|key| key.name == "advert_int")
        .and_then(|key| key.default.clone())
        .with_context(|| format!("{}: advert_int has no default", path.display()))
}

/// `t=` of the last console line after `mark` that matches `pattern`.
fn console_seconds(text: &str, pattern: &Pattern) -> Option<f64> {
    text.lines()
        .filter(|line| pattern.matches(line.trim_end_matches('\r')))
        .filter_map(|line| {
            line.split("t=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .last()
}

/// The runs of one advertisement interval.
struct Runs {
    advert_int: String,
    /// Seconds.
    takeovers: Vec<f64>,
    lost: Vec<f64>,
    /// Milliseconds.
    switches: Vec<f64>,
}

/// The host's 1-minute load average (TCG guests slow down with it).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    let load_at_start = load_average();
    let image = context.profile_image(failover::PROFILE)?;
    let runs = if context.quick { 1 } else { RUNS };
    let tuned = tuned_advert_int()?;
    let work_root = context.work.join("failover");
    let mut pair = Pair::start(&image, &work_root, context.accel, "bench")?;
    let mut boots = 0;
    let mut figures: Vec<Runs> = Vec::new();
    for advert_int in ["1".to_string(), tuned.clone()] {
        pair.set_keepalived_key("advert_int", &advert_int)?;
        let (mut takeovers, mut lost, mut switches) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            pair.wait_for_one_master(Duration::from_secs(120))?;
            let marks = [
                pair.node(0)?.vm.console_mark(),
                pair.node(1)?.vm.console_mark(),
            ];
            let failover::PowerOff {
                master,
                survivor,
                takeover,
            } = failover::power_off_master(&mut pair)?;
            // The survivor's switch and its ready line, by initd's clock.
            let mark = marks[survivor];
            let node = pair.node(survivor)?;
            node.vm.wait_for_console_text_since(
                mark,
                Pattern::regex(r"^nodows: ready mode=failover( |$)"),
                Duration::from_secs(60),
            )?;
            let console = node.vm.console_text();
            let after = &console[mark.min(console.len())..];
            let switched = console_seconds(after, &Pattern::regex(r"^nodows: mode failover( |$)"));
            let ready =
                console_seconds(after, &Pattern::regex(r"^nodows: ready mode=failover( |$)"));
            if let (Some(switched), Some(ready)) = (switched, ready) {
                switches.push((ready - switched) * 1000.0);
            }
            eprintln!(
                "    advert_int {advert_int} run {}: takeover {:.2} s, {} requests lost",
                run + 1,
                takeover.seconds,
                takeover.failed_requests
            );
            takeovers.push(takeover.seconds);
            lost.push(takeover.failed_requests as f64);
            boots += 1;
            pair.restart(master, &format!("bench-{}-{boots}", SERVERS[master]))?;
            pair.set_keepalived_key("advert_int", &advert_int)?;
        }
        figures.push(Runs {
            advert_int,
            takeovers,
            lost,
            switches,
        });
    }
    let [default, tuned] =
        <[Runs; 2]>::try_from(figures).map_err(|_| anyhow::anyhow!("two intervals measured"))?;
    let peer = format!("keepalived's default, advert_int {} s", default.advert_int);
    let tuned_int = &tuned.advert_int;
    suite.row(
        format!("takeover: power-off of the MASTER to the first answer on the VIP (advert_int {tuned_int} s)"),
        Unit::Seconds,
        Stat::new(tuned.takeovers),
        peer.clone(),
        Stat::new(default.takeovers),
    );
    suite.row(
        format!(
            "requests lost in the takeover, one every 0.1 s, 1 s timeout (advert_int {tuned_int} s)"
        ),
        Unit::Count,
        Stat::new(tuned.lost),
        peer.clone(),
        Stat::new(default.lost),
    );
    suite.row(
        format!("mode switch to every failover service ready (advert_int {tuned_int} s)"),
        Unit::Milliseconds,
        Stat::new(tuned.switches),
        peer,
        Stat::new(default.switches),
    );
    suite.note(format!(
        "Host load average (1 min): {load_at_start} at the start, {} at the end, on {} cores.",
        load_average(),
        std::thread::available_parallelism().map_or(1, usize::from)
    ));
    suite.note(
        "Two QEMU TCG machines on a private link (a UDP tunnel on 127.0.0.1); the MASTER's QEMU is killed as in a power loss. \
         Takeover = 3 advertisement intervals + skew for the BACKUP to declare the master down, then the switch to mode failover (render, stop standby, start web), as the client in the survivor sees it.",
    );
    Ok(())
}
