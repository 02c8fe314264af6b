//! Suite `render`: 1,000 services with one file each, one key changed.
//!
//! nodows renders, diffs and writes only the changed file; the baseline is
//! the confd-style full rewrite (every file written again, each through a
//! temporary file, fsync and rename). Then the latency from a model save to
//! the owning service's reload under `nodows watch`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;

const SERVICES: usize = 1000;
const ROUNDS: usize = 5;
const DEBOUNCE_MS: u64 = 200;

const TEMPLATE: &str = r#"<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text># </xsl:text><xsl:value-of select="$service"/><xsl:text> on </xsl:text><xsl:value-of select="$server"/><xsl:text> (</xsl:text><xsl:value-of select="$mode"/><xsl:text>)
port = </xsl:text><xsl:value-of select="$self/key[@name = 'port']"/><xsl:text>
value = </xsl:text><xsl:value-of select="$self/key[@name = 'value']"/><xsl:text>
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
"#;

fn model_xml(changed: Option<(usize, &str)>) -> String {
    let mut out = String::from("<model>\n  <defaults>\n");
    for index in 0..SERVICES {
        let value = match changed {
            Some((which, value)) if which == index => value.to_owned(),
            _ => format!("value-{index}"),
        };
        let _ = writeln!(
            out,
            "    <service name=\"svc{index:04}\"><key name=\"port\">{}</key><key name=\"value\">{value}</key></service>",
            10000 + index
        );
    }
    out.push_str(
        "  </defaults>\n  <profile name=\"production\"/>\n  <server id=\"bench01\"/>\n</model>\n",
    );
    out
}

fn write_services(dir: &Path) -> anyhow::Result<()> {
    for index in 0..SERVICES {
        let name = format!("svc{index:04}");
        let service = dir.join(&name);
        std::fs::create_dir_all(&service)?;
        std::fs::write(
            service.join("service.xml"),
            format!(
                "<service name=\"{name}\" type=\"service\">\n  <exec path=\"/bin/true\"/>\n  <reload signal=\"HUP\"/>\n  <file target=\"/etc/bench/{name}.conf\" template=\"{name}.conf.xsl\" on-change=\"reload\"/>\n  <key name=\"port\" type=\"port\">the port</key>\n  <key name=\"value\" type=\"string\">the value</key>\n</service>\n"
            ),
        )?;
        std::fs::write(service.join(format!("{name}.conf.xsl")), TEMPLATE)?;
    }
    Ok(())
}

struct Setup {
    nodows: PathBuf,
    model: PathBuf,
    services: PathBuf,
}

impl Setup {
    /// Runs `nodows render --json` into `root`; returns the time and the change set.
    fn render(&self, context: &Context, root: &Path) -> anyhow::Result<(f64, serde_json::Value)> {
        let sh = &context.sh;
        let (nodows, model, services) = (&self.nodows, &self.model, &self.services);
        let started = Instant::now();
        let output = cmd!(
            sh,
            "{nodows} render --model {model} --services {services} --root {root} --profile production --server bench01 --json"
        )
        .quiet()
        .read()?;
        let seconds = started.elapsed().as_secs_f64();
        let change_set: serde_json::Value = serde_json::from_str(&output)
            .with_context(|| format!("nodows render --json printed no change set: {output}"))?;
        Ok((seconds * 1000.0, change_set))
    }
}

/// The `name=N.NNNms` figure of a `nodows render --timings` line.
/// The in-process re-render of one changed key (crates/render/examples/
/// rerender.rs) on the setup's services and a copy of its model: its
/// samples in ms, and the median of each phase (load, render, sync).
fn rerender_in_process(
    context: &Context,
    setup: &Setup,
    dir: &Path,
) -> anyhow::Result<(Vec<f64>, [f64; 3])> {
    let sh = &context.sh;
    let example = crate::qemu::target_dir()?.join("release/examples/rerender");
    let model = dir.join("model-in-process.xml");
    std::fs::copy(&setup.model, &model)?;
    let root = dir.join("in-process");
    let services = &setup.services;
    let rounds = if context.quick { ROUNDS } else { 4 * ROUNDS }.to_string();
    let output = cmd!(
        sh,
        "{example} {model} {services} {root} bench01 production value {rounds}"
    )
    .quiet()
    .read()
    .context("running the in-process re-render benchmark")?;
    let samples = |name: &str| -> anyhow::Result<Vec<f64>> {
        output
            .lines()
            .find_map(|line| line.strip_prefix(&format!("samples {name} ")))
            .map(|values| values.split(',').filter_map(|v| v.parse().ok()).collect())
            .with_context(|| format!("the in-process benchmark printed no {name}:\n{output}"))
    };
    let median = |name: &str| -> anyhow::Result<f64> {
        Ok(Stat::new(samples(name)?).map_or(0.0, |stat| stat.median()))
    };
    let phases = [
        median("rerender_load")?,
        median("rerender_render")?,
        median("rerender_sync")?,
    ];
    Ok((samples("rerender_one_key")?, phases))
}

fn timing(line: &str, name: &str) -> anyhow::Result<f64> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .and_then(|value| value.strip_suffix("ms"))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no {name}= in the timings line: {line}"))
}

/// Validation against the key declarations, and the whole render it is part
/// of, from `nodows render --dry-run --timings` (milliseconds, one run each).
fn validation_share(
    context: &Context,
    setup: &Setup,
    root: &Path,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let sh = &context.sh;
    let (nodows, model, services) = (&setup.nodows, &setup.model, &setup.services);
    let mut validate = Vec::new();
    let mut total = Vec::new();
    for _ in 0..ROUNDS {
        let output = cmd!(
            sh,
            "{nodows} render --model {model} --services {services} --root {root} --profile production --server bench01 --dry-run --timings"
        )
        .quiet()
        .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr
            .lines()
            .find(|line| line.starts_with("nodows: timings"))
            .with_context(|| format!("nodows render --timings printed no timings: {stderr}"))?;
        validate.push(timing(line, "validate")?);
        total.push(timing(line, "total")?);
    }
    Ok((validate, total))
}

fn counts(change_set: &serde_json::Value) -> (usize, usize) {
    let length = |key: &str| change_set[key].as_array().map_or(0, Vec::len);
    (length("written"), length("services"))
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    let sh = &context.sh;
    cmd!(
        sh,
        "cargo build --quiet --release --package render --bin nodows --example rerender"
    )
    .run()
    .context(
        "building the renderer (cargo build --release -p render --bin nodows --example rerender)",
    )?;
    let nodows = crate::qemu::target_dir()?.join("release/nodows");
    let dir = context.work.join("render");
    let _ = std::fs::remove_dir_all(&dir);
    let services = dir.join("services");
    write_services(&services)?;
    let model = dir.join("model.xml");
    std::fs::write(&model, model_xml(None))?;
    let setup = Setup {
        nodows,
        model,
        services,
    };
    suite.note(format!(
        "{SERVICES} services with one template and one file each (the renderer's own benchmark fixture); times are the wall time of one `nodows render --json` process (load the model and definitions, compile and apply every template, diff, write), median of {ROUNDS}."
    ));
    suite.note(
        "The baseline is a confd-style full rewrite: the same render, but every file is written (into an empty root, each through a temporary file, fsync and rename), as a template tool without a diff does on every change.",
    );

    // The baseline: every file written.
    let mut full = Vec::new();
    for round in 0..ROUNDS {
        let root = dir.join(format!("full-{round}"));
        std::fs::create_dir_all(&root)?;
        let (milliseconds, change_set) = setup.render(context, &root)?;
        if counts(&change_set).0 != SERVICES {
            bail!(
                "a full render wrote {} files, not {SERVICES}",
                counts(&change_set).0
            );
        }
        full.push(milliseconds);
        if round > 0 {
            std::fs::remove_dir_all(&root)?;
        }
    }
    let root = dir.join("full-0");

    // One key changed, then changed back: each render writes one file.
    let mut one_key = Vec::new();
    for round in 0..ROUNDS {
        let changed = (round * 197 + 500) % SERVICES;
        std::fs::write(
            &setup.model,
            model_xml(Some((changed, &format!("changed-{round}")))),
        )?;
        let (milliseconds, change_set) = setup.render(context, &root)?;
        let (written, reloaded) = counts(&change_set);
        if (written, reloaded) != (1, 1) {
            bail!("one key changed but {written} files were written and {reloaded} services reloaded: {change_set}");
        }
        one_key.push(milliseconds);
        std::fs::write(&setup.model, model_xml(None))?;
        setup.render(context, &root)?;
    }
    suite.row(
        "one key changed: render + diff + sync (1 file written)",
        Unit::Milliseconds,
        Stat::new(one_key.clone()),
        "confd-style full rewrite (1,000 files written)",
        Stat::new(full),
    );

    let (in_process, [load, render, sync]) = rerender_in_process(context, &setup, &dir)?;
    suite.row(
        "one key changed, in the long-running watcher: templates kept compiled, only those whose inputs changed applied (load + validate + render + diff + sync)",
        Unit::Milliseconds,
        Stat::new(in_process),
        "a `nodows render` process on the same model (the row above)",
        Stat::new(one_key),
    );
    suite.note(
        "In-process: the renderer's example `rerender` keeps a `render::incremental::Renderer` (the fleet watcher's) over the same services; per change it loads the model file, validates it whole, applies the one template whose service changed, and syncs that file through the journal; each round's staged files are checked byte for byte against a full render.",
    );
    suite.note(format!(
        "In-process phases (medians): load the model {load:.2} ms, validate and apply the changed template {render:.2} ms, diff and journaled sync {sync:.2} ms."
    ));

    let (validate, total) = validation_share(context, &setup, &root)?;
    suite.row(
        "validation of the model against the key declarations (before any template runs)",
        Unit::Milliseconds,
        Stat::new(validate),
        "the whole render it belongs to (load, validate, every template, diff)",
        Stat::new(total),
    );

    match watch_latency(context, &setup, &root, &dir) {
        Ok(latencies) => {
            let beyond: Vec<f64> = latencies
                .iter()
                .map(|latency| latency - DEBOUNCE_MS as f64)
                .collect();
            suite.row(
                format!("model save to service reload under `nodows watch` (debounce {DEBOUNCE_MS} ms included)"),
                Unit::Milliseconds,
                Stat::new(latencies),
                "no peer",
                None,
            );
            suite.row(
                "the same, beyond the debounce",
                Unit::Milliseconds,
                Stat::new(beyond),
                "no peer",
                None,
            );
            suite.note(format!(
                "Watch: `nodows watch --debounce {DEBOUNCE_MS}ms` runs a script that calls `nodows render --json` and sends SIGHUP to the services its change set reloads; the service records when the signal arrived; the latency runs from just before the model file is written until then."
            ));
        }
        Err(error) => suite.note(format!("The watch latency is not available: {error:#}")),
    }
    Ok(())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_nanos())
}

struct Killed(Vec<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn watch_latency(
    context: &Context,
    setup: &Setup,
    root: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<f64>> {
    let _ = context;
    let reloaded = dir.join("reloaded");
    let pid_file = dir.join("service.pid");
    // The service: records the time of every SIGHUP.
    let service = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "trap 'date +%s%N >> {}' HUP; echo $$ > {}.tmp && mv {}.tmp {}; while :; do sleep 1 & wait $!; done",
            reloaded.display(),
            pid_file.display(),
            pid_file.display(),
            pid_file.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .context("starting the reloadable service")?;
    let mut children = Killed(vec![service]);
    let script = dir.join("reload.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nout=$({} render --model {} --services {} --root {} --profile production --server bench01 --json)\ncase \"$out\" in *reload*) kill -HUP \"$(cat {})\" ;; esac\n",
            setup.nodows.display(),
            setup.model.display(),
            setup.services.display(),
            root.display(),
            pid_file.display()
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid_file.exists() {
        if Instant::now() > deadline {
            bail!("the reloadable service did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let watch = Command::new(&setup.nodows)
        .arg("watch")
        .arg("--model")
        .arg(&setup.model)
        .arg("--command")
        .arg(format!("/bin/sh {}", script.display()))
        .arg("--debounce")
        .arg(format!("{DEBOUNCE_MS}ms"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("watch.log"))?)
        .spawn()
        .context("starting nodows watch")?;
    children.0.push(watch);
    std::thread::sleep(Duration::from_millis(1000));
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let lines_before = std::fs::read_to_string(&reloaded)
            .unwrap_or_default()
            .lines()
            .count();
        let changed = (round * 331 + 7) % SERVICES;
        let text = model_xml(Some((changed, &format!("watched-{round}"))));
        let saved = now_nanos();
        std::fs::write(&setup.model, text)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let reloaded_at = loop {
            let text = std::fs::read_to_string(&reloaded).unwrap_or_default();
            if let Some(line) = text.lines().nth(lines_before) {
                if let Ok(nanos) = line.trim().parse::<u128>() {
                    break nanos;
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("watch.log")).unwrap_or_default();
                bail!(
                    "no reload within 20 s of a model save; nodows watch said: {}",
                    log.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(reloaded_at.saturating_sub(saved) as f64 / 1e6);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(latencies)
}
