//! Suite `fleet`: the model in PostgreSQL, on the host.
//!
//! Runs the renderer's example `fleet` (crates/render/examples/fleet.rs),
//! which starts its own PostgreSQL 15 and measures: a commit to one
//! appliance's applied render (through a `nodows render` process, and
//! applied in process), the same change put into etcd (Debian's
//! etcd-server, installed when missing) with `etcdctl watch` driving the
//! render, N appliances (watcher processes) converging on a defaults
//! change and the database's CPU time for it, and one server of a
//! 1,000 x 10 model rendered from PostgreSQL against XML.

use std::collections::BTreeMap;

use anyhow::Context as _;
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    let sh = &context.sh;
    cmd!(
        sh,
        "cargo build --quiet --release --package render --bin nodows --example fleet"
    )
    .run()
    .context("building the fleet benchmark (cargo build --release -p render --example fleet)")?;
    let example = crate::qemu::target_dir()?.join("release/examples/fleet");
    super::supervisor::find_or_install("etcd", "etcd-server", context)?;
    super::supervisor::find_or_install("etcdctl", "etcd-client", context)?;
    let appliances = if context.quick { "20" } else { "200" };
    let work = context.work.join("fleet");
    let output = cmd!(sh, "{example} {appliances} {work}")
        .quiet()
        .read()
        .context("running the fleet benchmark")?;
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut figures: BTreeMap<&str, f64> = BTreeMap::new();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["samples", name, values, ..] => {
                samples.insert(
                    name,
                    values.split(',').filter_map(|v| v.parse().ok()).collect(),
                );
            }
            [name, value, ..] => {
                if let Ok(value) = value.parse() {
                    figures.insert(name, value);
                }
            }
            _ => {}
        }
    }
    let sample = |name: &str| {
        samples
            .get(name)
            .cloned()
            .with_context(|| format!("the fleet benchmark printed no samples of {name}:\n{output}"))
    };
    let figure = |name: &str| {
        figures
            .get(name)
            .copied()
            .with_context(|| format!("the fleet benchmark printed no {name}:\n{output}"))
    };
    suite.note(format!(
        "A real PostgreSQL 15 on 127.0.0.1 started for the run; every appliance is a `nodows watch --model postgres://...` process with its own role (row-level security), passfile, last-good file and root; {appliances} appliances."
    ));
    suite.note("etcd: Debian's etcd-server 3.4 on 127.0.0.1, started for the run; the appliance's model (the same cut to its server as PostgreSQL hands out) is one key, put through etcd's JSON gateway over one HTTP request, and `etcdctl watch KEY -- sh -c 'etcdctl get ... > model.xml && nodows render ...'` renders it (the event's value is Go-quoted, so the command reads the key); applied = the rendered page shows the new value.");
    suite.note("The latency on a booted appliance under QEMU is the `fleet-booted` suite's.");
    suite.row(
        "commit in PostgreSQL to the appliance's applied render (LISTEN/NOTIFY, fetch, validate and render in memory, last-good written, `nodows render` run)",
        Unit::Milliseconds,
        Stat::new(sample("commit_to_applied")?),
        "confd's default poll interval",
        Some(Stat::one(600_000.0)),
    );
    suite.row(
        "commit in PostgreSQL to applied, the watcher applying in process (`--apply-root`: only the changed templates, journaled sync, then `nodows journal` as for `initctl render --applied`)",
        Unit::Milliseconds,
        Stat::new(sample("commit_to_applied_in_process")?),
        "the same change put into etcd, `etcdctl watch` running `nodows render` (a confd user's path)",
        match samples.get("etcd_put_to_applied") {
            Some(values) => Stat::new(values.clone()),
            None => None,
        },
    );
    if let Some(why) = output
        .lines()
        .find_map(|line| line.strip_prefix("etcd_unavailable "))
    {
        suite.note(format!("etcd could not be measured: {why}"));
    }
    suite.row(
        format!("{appliances} appliances converged on one defaults change (until the last status row shows the revision; 10 changes)"),
        Unit::Seconds,
        Stat::new(sample("fleet_converged")?),
        "no peer",
        None,
    );
    suite.row(
        "database CPU time per defaults change, all appliances (mean of 10)",
        Unit::Milliseconds,
        Some(Stat::one(figure("fleet_database_cpu_per_change")?)),
        "no peer",
        None,
    );
    suite.row(
        "render of one server of 1,000 servers x 10 values, from PostgreSQL with the appliance's role",
        Unit::Milliseconds,
        Stat::new(sample("render_one_server_of_1000x10_postgres_appliance_role")?),
        "the same model from XML",
        Stat::new(sample("render_one_server_of_1000x10_xml")?),
    );
    Ok(())
}
