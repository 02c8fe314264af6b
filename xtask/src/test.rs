//! `cargo xtask test`: the one test command.
//!
//! Steps, fastest first: formatting, clippy, `cargo xtask check` of every
//! image x profile, the workspace's unit and integration tests, the QEMU harness self-test (a busybox fixture), then
//! (unless `--quick`) the five Debian profile images and the end-to-end
//! tests in `test/e2e.rs`, each a real boot. Every step prints its duration;
//! the last line is `N passed, N failed`.

pub mod e2e;
mod no_test_hooks;
mod updates;
mod verified;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::qemu::{self, Accel};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip the images and the end-to-end tests (and the xtask's slow tests).
    #[arg(long)]
    pub quick: bool,
    /// Run only the steps whose name contains this text (or one of the
    /// texts separated by `|`).
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// QEMU accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
}

/// One step of the run and what became of it.
struct Outcome {
    name: String,
    duration: Duration,
    error: Option<String>,
}

pub struct Runner {
    only: Option<String>,
    outcomes: Vec<Outcome>,
}

impl Runner {
    /// Runs `step` unless filtered out; prints its name, result and duration.
    pub fn step(&mut self, name: &str, step: impl FnOnce() -> anyhow::Result<()>) -> bool {
        if let Some(only) = &self.only {
            if !only.split('|').any(|text| name.contains(text)) {
                return true;
            }
        }
        eprintln!("==> {name}");
        let started = Instant::now();
        let result = step();
        let duration = started.elapsed();
        let error = result.err().map(|error| format!("{error:#}"));
        match &error {
            None => eprintln!("ok {name} ({:.1}s)", duration.as_secs_f64()),
            Some(error) => eprintln!("FAILED {name} ({:.1}s)\n{error}", duration.as_secs_f64()),
        }
        let passed = error.is_none();
        self.outcomes.push(Outcome {
            name: name.to_string(),
            duration,
            error,
        });
        passed
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = qemu::workspace_root();
    let mut runner = Runner {
        only: args.only.clone(),
        outcomes: Vec::new(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // The slow tests cross-build initd for FreeBSD; the images need musl.
    crate::toolchain::ensure_target(crate::toolchain::MUSL)?;
    if !args.quick {
        crate::toolchain::ensure_target(crate::toolchain::FREEBSD)?;
    }

    runner.step("cargo fmt --all --check", || {
        run_command(
            Command::new(&cargo)
                .args(["fmt", "--all", "--check"])
                .current_dir(&root),
        )
    });
    runner.step(
        "cargo clippy --workspace --all-targets -- -D warnings",
        || {
            run_command(
                Command::new(&cargo)
                    .args([
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .current_dir(&root),
            )
        },
    );
    runner.step("cargo xtask check (every image x profile)", || {
        crate::check::check_every_profile(&root)
    });
    let test_name = if args.quick {
        "cargo test --workspace --no-fail-fast".to_string()
    } else {
        "cargo test --workspace --no-fail-fast (NODOWS_SLOW_TESTS=1)".to_string()
    };
    runner.step(&test_name, || {
        let mut command = Command::new(&cargo);
        command
            .args(["test", "--workspace", "--no-fail-fast"])
            .current_dir(&root);
        if !args.quick {
            command.env("NODOWS_SLOW_TESTS", "1");
        }
        run_command(&mut command)
    });

    let target = qemu::target_dir()?;
    let work_root = target.join("qemu");
    // Logs of the previous run go; this run's stay for inspection.
    let _ = std::fs::remove_dir_all(&work_root);
    runner.step("qemu harness self-test (busybox fixture)", || {
        qemu::ensure_qemu_installed()?;
        let fixture = qemu::fixture::build(&target.join("qemu-fixture"), &root)?;
        qemu::fixture::self_test(&fixture, &work_root, args.accel)
    });

    if !args.quick {
        e2e::run(&mut runner, &work_root, args.accel);
        updates::run(&mut runner, &work_root, args.accel);
        verified::run(&mut runner, &work_root, args.accel);
        // The benchmark must keep working; its figures are never checked.
        let output = target.join("bench-quick").join("BENCHMARKS.md");
        runner.step(
            "cargo xtask bench --quick (runs; figures not checked)",
            || {
                let output = output.to_string_lossy().into_owned();
                run_command(&mut cargo_xtask(&["bench", "--quick", "--output", &output]))
            },
        );
    }

    let passed = runner
        .outcomes
        .iter()
        .filter(|outcome| outcome.error.is_none())
        .count();
    let failed = runner.outcomes.len() - passed;
    eprintln!();
    for outcome in &runner.outcomes {
        let verdict = if outcome.error.is_none() {
            "ok"
        } else {
            "FAILED"
        };
        eprintln!(
            "{verdict:>6} {:>7.1}s  {}",
            outcome.duration.as_secs_f64(),
            outcome.name
        );
    }
    eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs a command with inherited output; fails on a non-zero exit.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// `cargo xtask ARGS` (through cargo: `cargo test` may have replaced this
/// very executable on disk by then).
pub fn cargo_xtask(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
    command
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--bin",
            "xtask",
            "--",
        ])
        .args(args)
        .current_dir(qemu::workspace_root());
    command
}
