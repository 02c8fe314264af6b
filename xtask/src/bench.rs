//! `cargo xtask bench`: nodows side by side with the systems people would
//! pick instead, measured in the same run on the same machine.
//!
//! Suites: `boot` (QEMU start to ready, nodows vs Debian with systemd, plus
//! PID 1's footprint in the guest), `kernel` (the dev image with Debian's
//! cloud kernel against the generic one), `supervisor` (initd vs runit and s6 on
//! the host), `image` (cold and warm builds of the dev image vs a bare
//! mmdebstrap), `flash` (every output format's size; flashing against dd
//! and bmaptool), `render` (one key changed among 1,000 services),
//! `failover` (takeover of a failover pair after a power-off, two QEMU
//! machines), `fleet` (the model in PostgreSQL: commit to applied, N
//! appliances converging), `fleet-booted` (a commit in PostgreSQL to the
//! owning service's reload on a booted test appliance), `update` (A/B update artifact size, update and
//! reboot times), `verified` (boot with dm-verity and Secure Boot against
//! the same image without).
//! Writes BENCHMARKS.md and TARGET/bench/results.json.

mod boot;
mod failover;
mod flash;
mod fleet;
mod fleet_booted;
mod image;
mod kernel;
mod render;
mod report;
mod supervisor;
mod update;
mod verified;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use xshell::{cmd, Shell};

use crate::qemu;
use report::{Machine, Suite};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// CI-friendly: the supervisor and render suites and one boot of each kind (no image builds).
    #[arg(long)]
    pub quick: bool,
    /// Run one suite only: boot, kernel, supervisor, image, flash, render, failover, fleet,
    /// fleet-booted, update or verified.
    #[arg(long, value_name = "NAME")]
    pub only: Option<String>,
    /// QEMU accelerator for the boot suite.
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: qemu::Accel,
    /// Where BENCHMARKS.md is written (default: the workspace root).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

const SUITES: [&str; 11] = [
    "boot",
    "kernel",
    "supervisor",
    "image",
    "flash",
    "render",
    "failover",
    "fleet",
    "fleet-booted",
    "update",
    "verified",
];

/// What every suite needs: where to work and how much to run.
pub struct Context {
    pub quick: bool,
    pub accel: qemu::Accel,
    /// TARGET/bench: caches (the systemd reference image) and results.
    pub bench_dir: PathBuf,
    /// TARGET/bench/work: scratch, emptied at the start of a run.
    pub work: PathBuf,
    pub sh: Shell,
}

impl Context {
    /// Installs Debian packages the benchmark needs (peers, tools).
    pub fn apt_install(&self, packages: &[&str]) -> anyhow::Result<()> {
        let sh = &self.sh;
        eprintln!("    installing {} from Debian", packages.join(" "));
        cmd!(
            sh,
            "apt-get install --yes --no-install-recommends --quiet {packages...}"
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("apt-get install {}", packages.join(" ")))?;
        Ok(())
    }

    /// `profile`'s image of the sources as they are, built into
    /// TARGET/bench/images (a warm build when the base is cached: seconds;
    /// never a stale image).
    pub fn profile_image(&self, profile: &str) -> anyhow::Result<crate::boot::BuiltImage> {
        self.image_of("debian", profile)
    }

    /// `profile` of `image` (`debian`, `debian-cloud`) from the sources as
    /// they are, built into TARGET/bench/images (a warm build when the base
    /// is cached: seconds; never a stale image).
    pub fn image_of(&self, image: &str, profile: &str) -> anyhow::Result<crate::boot::BuiltImage> {
        let out = self.bench_dir.join("images");
        let sh = &self.sh;
        eprintln!("    building {image}-{profile} into {}", out.display());
        cmd!(
            sh,
            "cargo xtask image --image {image} --profile {profile} --out {out}"
        )
        .run()
        .with_context(|| format!("cargo xtask image --image {image} --profile {profile}"))?;
        crate::boot::BuiltImage::find(Some(&out), image, profile)
    }

    /// Builds the static initd and returns its path.
    pub fn initd_binary(&self) -> anyhow::Result<PathBuf> {
        let sh = &self.sh;
        let target = crate::toolchain::MUSL;
        crate::toolchain::ensure_target(target)?;
        cmd!(
            sh,
            "cargo build --quiet --release --package initd --target {target}"
        )
        .run()
        .context(
            "building initd (cargo build --release -p initd --target x86_64-unknown-linux-musl)",
        )?;
        let path = qemu::target_dir()?.join(target).join("release/initd");
        if !path.is_file() {
            anyhow::bail!("{}: missing after the build", path.display());
        }
        Ok(path)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(only) = &args.only {
        if !SUITES.contains(&only.as_str()) {
            eprintln!(
                "error: --only {only}: unknown suite; the suites are {}",
                SUITES.join(", ")
            );
            std::process::exit(2);
        }
    }
    let root = qemu::workspace_root();
    let bench_dir = qemu::target_dir()?.join("bench");
    let work = bench_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;
    let sh = Shell::new()?;
    sh.change_dir(&root);
    let context = Context {
        quick: args.quick,
        accel: args.accel,
        bench_dir: bench_dir.clone(),
        work,
        sh,
    };

    // With --only, the other suites keep their last results: from
    // results.json, or in a fresh checkout from the copy in BENCHMARKS.md.
    let markdown_path = args
        .output
        .clone()
        .unwrap_or_else(|| root.join("BENCHMARKS.md"));
    let previous: Vec<Suite> = if args.only.is_some() {
        std::fs::read_to_string(results_path(&bench_dir, &args.output))
            .ok()
            .or_else(|| {
                std::fs::read_to_string(&markdown_path)
                    .ok()
                    .and_then(|text| report::embedded_json(&text).map(str::to_owned))
            })
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|value| value["suites"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(report::suite_from_json)
            .collect()
    } else {
        Vec::new()
    };
    let sh = &context.sh;
    let mut suites = Vec::new();
    let mut broken_suites = Vec::new();
    for name in SUITES {
        let mut broken = false;
        if args.only.as_deref().is_some_and(|only| only != name) {
            if let Some(old) = previous.iter().find(|suite| suite.name == name) {
                suites.push(old.clone());
            }
            continue;
        }
        let started = Instant::now();
        eprintln!("==> bench {name}");
        let mut suite = match name {
            "boot" => {
                let mut suite = Suite::new("boot", "Boot to ready and PID 1 footprint (QEMU)");
                let result = boot::run(&context, &mut suite);
                broken |= finish(&mut suite, result);
                suite
            }
            "kernel" => {
                let mut suite = Suite::new(
                    "kernel",
                    "Debian's cloud kernel (the nodows column: images/debian-cloud.xml) against the generic kernel, dev image (QEMU)",
                );
                if context.quick {
                    suite.not_available = Some(
                        "skipped under --quick (it builds a second Debian base: minutes when cold)"
                            .to_owned(),
                    );
                } else {
                    let result = kernel::run(&context, &mut suite);
                    broken |= finish(&mut suite, result);
                }
                suite
            }
            "supervisor" => {
                let mut suite = Suite::new("supervisor", "Supervisor on the host");
                let result = supervisor::run(&context, &mut suite);
                broken |= finish(&mut suite, result);
                suite
            }
            "image" => {
                let mut suite = Suite::new("image", "Image build");
                if context.quick {
                    suite.not_available =
                        Some("skipped under --quick (it takes minutes)".to_owned());
                } else {
                    let result = image::run(&context, &mut suite);
                    broken |= finish(&mut suite, result);
                }
                suite
            }
            "failover" => {
                let mut suite = Suite::new(
                    "failover",
                    "Failover pair: takeover after a power-off (QEMU, keepalived)",
                );
                let result = failover::run(&context, &mut suite);
                broken |= finish(&mut suite, result);
                suite
            }
            "fleet" => {
                let mut suite = Suite::new("fleet", "The fleet: the model in PostgreSQL (host)");
                let result = fleet::run(&context, &mut suite);
                broken |= finish(&mut suite, result);
                suite
            }
            "fleet-booted" => {
                let mut suite = Suite::new(
                    "fleet-booted",
                    "The fleet on a booted appliance: commit in PostgreSQL to the service's reload (QEMU)",
                );
                let result = fleet_booted::run(&context, &mut suite);
                broken |= finish(&mut suite, result);
                suite
            }
            "verified" => {
                let mut suite = Suite::new(
                    "verified",
                    "Verified boot: dm-verity and Secure Boot against the same image without (OVMF)",
                );
                if context.quick {
                    suite.not_available =
                        Some("skipped under --quick (it builds two images)".to_owned());
                } else {
                    let result = verified::run(&context, &mut suite);
                    broken |= finish(&mut suite, result);
                }
                suite
            }
            "update" => {
                let mut suite = Suite::new("update", "A/B update (debian-ab, TCG)");
                if context.quick {
                    suite.not_available =
                        Some("skipped under --quick (it builds two images)".to_owned());
                } else {
                    let result = update::run(&context, &mut suite);
                    broken |= finish(&mut suite, result);
                }
                suite
            }
            "flash" => {
                let mut suite = Suite::new(
                    "flash",
                    "Output formats and flashing (cargo xtask flash against dd and bmaptool)",
                );
                if context.quick {
                    suite.not_available =
                        Some("skipped under --quick (it builds every format)".to_owned());
                } else {
                    let result = flash::run(&context, &mut suite);
                    broken |= finish(&mut suite, result);
                }
                suite
            }
            _ => {
                let mut suite = Suite::new("render", "Re-render: 1,000 services, one key changed");
                let result = render::run(&context, &mut suite);
                broken |= finish(&mut suite, result);
                suite
            }
        };
        if broken {
            broken_suites.push(name);
        }
        suite.seconds = started.elapsed().as_secs_f64();
        suite.date = cmd!(sh, "date --utc +%Y-%m-%dT%H:%MZ").quiet().read()?;
        eprintln!("    {name}: {:.0} s", suite.seconds);
        suites.push(suite);
        // After every suite, so that a long run interrupted later keeps its figures.
        write_results(&context, &args.output, args.accel, &args.only, &suites)?;
    }

    let markdown = write_results(&context, &args.output, args.accel, &args.only, &suites)?;
    print!("{markdown}");
    let _ = std::fs::remove_dir_all(&context.work);
    // A figure never fails the run; a benchmark that broke does.
    if !broken_suites.is_empty() {
        bail!(
            "the benchmark broke in suite(s) {}: the reason is in the suite's section",
            broken_suites.join(", ")
        );
    }
    Ok(())
}

/// results.json: in TARGET/bench for BENCHMARKS.md at the root, beside any
/// other --output (CI's quick run), never over the last full run's.
fn results_path(bench_dir: &std::path::Path, output: &Option<PathBuf>) -> PathBuf {
    match output {
        Some(path) if *path != qemu::workspace_root().join("BENCHMARKS.md") => {
            path.with_file_name("results.json")
        }
        _ => bench_dir.join("results.json"),
    }
}

/// A suite that failed keeps the rows it measured and says why it stopped;
/// true when it failed.
fn finish(suite: &mut Suite, result: anyhow::Result<()>) -> bool {
    match result {
        Ok(()) => false,
        Err(error) => {
            let reason = format!("{error:#}").replace('\n', " ");
            eprintln!("    {}: not available: {reason}", suite.name);
            suite.not_available = Some(reason);
            true
        }
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("{}: cannot write", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

pub fn accel_name(accel: qemu::Accel) -> &'static str {
    match accel {
        qemu::Accel::Kvm => "kvm",
        qemu::Accel::Tcg => "tcg",
        qemu::Accel::Auto => "auto (KVM if it works, else TCG)",
    }
}

/// Writes BENCHMARKS.md and results.json; returns the Markdown.
fn write_results(
    context: &Context,
    output: &Option<PathBuf>,
    accel: qemu::Accel,
    only: &Option<String>,
    suites: &[Suite],
) -> anyhow::Result<String> {
    let sh = &context.sh;
    let machine = Machine {
        date: cmd!(sh, "date --utc +%Y-%m-%dT%H:%MZ").quiet().read()?,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        accel: accel_name(accel).to_owned(),
        kernel: cmd!(sh, "uname --kernel-release").quiet().read()?,
        quick: context.quick,
        only: only.clone(),
    };
    let json = report::json(&machine, suites);
    let markdown = report::markdown(&machine, suites);
    let output = output
        .clone()
        .unwrap_or_else(|| qemu::workspace_root().join("BENCHMARKS.md"));
    // The file carries the results.json copy; the terminal gets the tables.
    let file = report::with_embedded_json(markdown.clone(), &json)?;
    write_atomically(&output, file.as_bytes())?;
    let results = results_path(&context.bench_dir, &Some(output.clone()));
    write_atomically(&results, serde_json::to_string_pretty(&json)?.as_bytes())?;
    eprintln!("    wrote {} and {}", output.display(), results.display());
    Ok(markdown)
}
