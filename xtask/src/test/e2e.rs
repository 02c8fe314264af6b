//! End-to-end tests: each boots a real Debian image in QEMU.
//!
//! Boots are few (TCG is slow): the checks that share a boot are steps that
//! share one machine, in the order of the issue's list.
//!   boot 1, test profile: ready, services, web page, render, a commit in
//!     the host's PostgreSQL through nodows watch, respawn, a hot-plugged
//!     NIC, mode, poweroff
//!   boot 2, the same disk again with another server id: clean file system, web page
//!   boot 3, dev from its vmdk output; boot 4, failover alone, from the copy `cargo xtask
//!   flash --to-file` wrote; boot 5, production (no agent: console lines);
//!   boot 5b, two production appliances against the host's PostgreSQL (`fleet.rs`)
//!   boot 6, test profile through OVMF (`--uefi`)
//!   boot 7, the failover pair (two machines on a private link, `failover.rs`)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

mod cloud;
pub mod failover;
pub mod fleet;
mod hotplug;

use super::Runner;
use crate::boot::BuiltImage;
use crate::qemu::{self, Accel, Disk, Link, ServiceStatus, Vm};

const IMAGE: &str = "debian";
const PROFILES: [&str; 5] = ["dev", "test", "production", "failover", failover::PROFILE];
/// From QEMU start to `nodows: ready`, generous for TCG on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// OVMF under TCG adds firmware and boot loader time.
const UEFI_READY_TIMEOUT: Duration = Duration::from_secs(420);
const SERVICE_TIMEOUT: Duration = Duration::from_secs(60);
/// The issue: `initctl poweroff` ends QEMU by itself within 15 s.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15);

struct Boots {
    work_root: PathBuf,
    accel: Accel,
}

pub fn run(runner: &mut Runner, work_root: &Path, accel: Accel) {
    let context = Boots {
        work_root: work_root.to_path_buf(),
        accel,
    };
    let mut built: BTreeMap<&str, BuiltImage> = BTreeMap::new();
    for profile in PROFILES {
        let name = format!("cargo xtask image --image {IMAGE} --profile {profile}");
        // The dev image also writes the vmdk its boot below uses.
        let formats = if profile == "dev" {
            "raw,qcow2,vmdk"
        } else {
            "raw,qcow2"
        };
        runner.step(&name, || {
            let mut args = vec![
                "image".to_string(),
                "--image".to_string(),
                IMAGE.to_string(),
                "--profile".to_string(),
                profile.to_string(),
                "--format".to_string(),
                formats.to_string(),
            ];
            // The production image carries the fleet pair's credentials
            // (e2e/fleet.rs), from a secrets file outside the repository.
            if profile == "production" {
                args.push("--secrets".to_string());
                args.push(fleet::secrets_file()?.display().to_string());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            super::run_command(&mut super::cargo_xtask(&args))?;
            built.insert(profile, BuiltImage::find(None, IMAGE, profile)?);
            Ok(())
        });
    }
    let image = |profile: &str| -> anyhow::Result<BuiltImage> {
        match built.get(profile) {
            Some(image) => Ok(image.clone()),
            None => BuiltImage::find(None, IMAGE, profile).context("the image build failed"),
        }
    };

    // No boot: each image's own binaries answer no test hook, and only
    // the dev image (root already has a console shell) has a boot editor.
    for profile in PROFILES {
        runner.step(
            &format!("e2e 0 {profile}: the image's binaries answer no test hook; boot editor"),
            || {
                let work_dir = context.work_root.join(format!("{profile}-no-test-hooks"));
                // The profile's `<root login="autologin"/>` keeps the editor.
                let profile_xml = qemu::workspace_root().join(format!("profiles/{profile}.xml"));
                let autologin = std::fs::read_to_string(&profile_xml)
                    .with_context(|| profile_xml.display().to_string())?
                    .contains("login=\"autologin\"");
                super::no_test_hooks::check_image(&image(profile)?, !autologin, &work_dir)
            },
        );
    }

    // `cargo xtask run`, as a script would use it: its own boot of the test
    // image, one command through the agent, its output and exit code; the
    // guest kept running and reused by a second run.
    runner.step(
        "e2e 0 test: cargo xtask run prints a guest command's output and exits with its code; a second run reuses the kept guest",
        || check_xtask_run(context.accel),
    );

    // The image with Debian's cloud kernel: its own build and boot.
    cloud::run(runner, &context);

    // Boot 1: the test profile.
    let mut test_vm: Option<Vm> = None;
    runner.step(
        "e2e 1 test: boots to ready, the mode's services are running",
        || {
            let image = image("test")?;
            let mut vm = context.start(&image, "test", "")?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            check_mode_services(&mut vm, "test")?;
            test_vm = Some(vm);
            Ok(())
        },
    );
    runner.step(
        "e2e 1 test: initctl blame and critical-chain say where boot time went",
        || check_blame(booted(&mut test_vm)?),
    );
    runner.step("e2e 2 test: the web page has the model's values", || {
        let vm = booted(&mut test_vm)?;
        check_web_page(vm, "test", None)
    });
    runner.step(
        "e2e 3 test: initctl render reloads only web and the page changes",
        || check_render_reload(booted(&mut test_vm)?),
    );
    runner.step(
        "e2e 3 test: a live model value outside its type is refused, nothing changes",
        || check_bad_value_refused(booted(&mut test_vm)?),
    );
    runner.step(
        "e2e 3 test: the model's key enabled set to no stops exactly web, back to yes starts it",
        || check_enabled_flip(booted(&mut test_vm)?),
    );
    runner.step(
        "e2e 3 test: a crash-looping sd_notify service is respawned, then failed; nothing else moves",
        || check_notify_crash_loop(booted(&mut test_vm)?),
    );
    runner.step(
        "e2e 3 test: an operator key added to the live model logs in as root over SSH",
        || check_operator_key_login(booted(&mut test_vm)?),
    );
    runner.step(
        "e2e 3 test: a commit in PostgreSQL reaches the appliance through nodows watch (fleet)",
        || check_fleet_push(booted(&mut test_vm)?, &context.work_root),
    );
    runner.step("e2e 4 test: a killed service is respawned", || {
        check_respawn(booted(&mut test_vm)?, "web")
    });
    runner.step(
        "e2e 4 test: a hot-plugged NIC is configured from the model (device event, render, net), then unplugged",
        || hotplug::check_nic_hotplug(booted(&mut test_vm)?, "test"),
    );
    runner.step(
        "e2e 5 test: a mode the model cannot render is refused, the node stays in its mode",
        || {
            let vm = booted(&mut test_vm)?;
            let before = running_pids(vm)?;
            let output = vm.fail("initctl mode nosuchmode")?;
            ensure!(
                output.contains("mode nosuchmode refused, still in mode test"),
                "initctl mode nosuchmode said: {output}"
            );
            ensure!(
                vm.succeed("initctl mode")?.trim() == "test",
                "the mode changed after a refused switch"
            );
            let after = running_pids(vm)?;
            if before != after {
                return Err(vm.failure(&format!(
                    "a refused mode switch changed services: before {before:?}, after {after:?}"
                )));
            }
            Ok(())
        },
    );
    runner.step(
        "e2e 5 test: initctl mode backup stops web and starts standby; keepalived, with no VRRP link here, says so and never takes the address",
        || {
            let vm = booted(&mut test_vm)?;
            let mark = vm.console_mark();
            vm.succeed("initctl mode backup")?;
            vm.wait_for_console_text_since(mark, "nodows: mode backup", SERVICE_TIMEOUT)?;
            vm.wait_for_service("standby", SERVICE_TIMEOUT)?;
            let web = vm
                .service_status()?
                .into_iter()
                .find(|status| status.name == "web")
                .context("initd does not know web")?;
            ensure!(web.state == "stopped", "web is {} in mode backup", web.state);
            // standby now answers on port 80 instead of web.
            let server = guest_server(vm)?;
            check_web_page(vm, "backup", server.as_deref())?;
            vm.wait_until_succeeds(
                "grep -q 'no interface' /var/log/nodows/keepalived.log",
                SERVICE_TIMEOUT,
            )?;
            let vip = failover::model_vip()?;
            vm.succeed(&format!("! ip -o address | grep -q ' {vip}/'"))?;
            ensure!(
                vm.succeed("initctl mode")?.trim() == "backup",
                "the node left mode backup"
            );
            Ok(())
        },
    );
    let mut overlay: Option<PathBuf> = None;
    runner.step(
        "e2e 7 test: initctl poweroff stops everything in order, qemu exits within 15s",
        || {
            let mut vm = test_vm
                .take()
                .context("no machine: an earlier step failed")?;
            let disk = vm
                .overlay()
                .context("the machine has no disk")?
                .to_path_buf();
            // The second boot runs even when these checks fail: it tells more.
            overlay = Some(disk.clone());
            check_poweroff(&mut vm)?;
            check_clean_file_system(&disk, vm.work_dir())
        },
    );
    drop(test_vm);
    runner.step(
        "e2e 7 test: a second boot of the same disk finds a clean file system",
        || {
            let image = image("test")?;
            let disk = overlay.clone().context("no disk: the first boot failed")?;
            let server = other_server(&image)?;
            let mut config = image.config(
                "test-second-boot",
                false,
                &format!("nodows.server={server}"),
                &context.work_root,
            );
            config.disk = Some(Disk::Overlay(disk));
            config.accel = context.accel;
            config.forward_tcp = vec![22, 80];
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            let kernel_log = vm.succeed("dmesg")?;
            let bad: Vec<&str> = kernel_log
                .lines()
                .filter(|line| {
                    [
                        "recovery complete",
                        "orphan",
                        "EXT4-fs error",
                        "needs_recovery",
                    ]
                    .iter()
                    .any(|bad| line.contains(bad))
                })
                .collect();
            if !bad.is_empty() {
                return Err(vm.failure(&format!(
                    "the second boot found an unclean root file system:\n{}",
                    bad.join("\n")
                )));
            }
            check_mode_services(&mut vm, "test")?;
            check_web_page(&mut vm, "test", Some(&server))?;
            vm.shutdown(POWEROFF_TIMEOUT)?;
            Ok(())
        },
    );

    runner.step(
        "e2e 1 dev: boots from its vmdk output to ready, services running, web page",
        || {
            // QEMU reads the streamOptimized VMDK as VMware would.
            let image = image("dev")?;
            let image = BuiltImage {
                raw: image.raw.with_extension("vmdk"),
                ..image
            };
            let mut vm = context.start(&image, "dev", "")?;
            let ready = vm.wait_for_ready(READY_TIMEOUT)?;
            eprintln!(
                "    {ready} (qemu start to ready: {:.1}s)",
                vm.uptime().as_secs_f64()
            );
            check_mode_services(&mut vm, "dev")?;
            check_web_page(&mut vm, "dev", None)?;
            vm.shutdown(POWEROFF_TIMEOUT)?;
            Ok(())
        },
    );
    runner.step(
        "e2e 1 failover: flashed to a file (cargo xtask flash --to-file), a lone node boots in backup mode, becomes MASTER and switches to failover",
        || {
            // The copy `cargo xtask flash` writes is what boots.
            let image = image("failover")?;
            let flashed = context.work_root.join("flashed-debian-failover.raw");
            std::fs::create_dir_all(&context.work_root)?;
            let flashed_text = flashed.to_string_lossy().into_owned();
            super::run_command(&mut super::cargo_xtask(&[
                "flash", "--image", IMAGE, "--profile", "failover", "--to-file", &flashed_text, "--yes",
            ]))?;
            let image = BuiltImage {
                raw: flashed,
                ..image
            };
            let mut config = image.config("failover", false, "", &context.work_root);
            config.accel = context.accel;
            config.forward_tcp = vec![22, 80];
            // A link with no peer at its other end.
            config.links = vec![Link::pair("link0", 0)?.0];
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            vm.wait_for_console_text("nodows: vrrp web MASTER", SERVICE_TIMEOUT)?;
            // The ready line of the new mode comes after the switch.
            vm.wait_for_console_text(
                qemu::Pattern::regex(r"^nodows: ready mode=failover( |$)"),
                SERVICE_TIMEOUT,
            )?;
            check_console_services(&mut vm, &image, "failover")?;
            check_web_page(&mut vm, "failover", None)
        },
    );
    failover::run(
        runner,
        image(failover::PROFILE),
        &context.work_root,
        context.accel,
    );

    let mut production_vm: Option<Vm> = None;
    runner.step(
        "e2e 1 production: boots to ready, the mode's services are running",
        || {
            let image = image("production")?;
            let mut vm = context.start(&image, "production", "")?;
            vm.wait_for_ready(READY_TIMEOUT)?;
            check_console_services(&mut vm, &image, "production")?;
            production_vm = Some(vm);
            Ok(())
        },
    );
    runner.step("e2e 6 production: no shell on the console", || {
        check_no_console_shell(booted(&mut production_vm)?)
    });
    runner.step("e2e 6 production: root is locked", || {
        check_root_locked(&image("production")?, &context.work_root)
    });
    runner.step("e2e 6 production: SSH refuses passwords", || {
        check_ssh_refuses_passwords(booted(&mut production_vm)?)
    });
    runner.step(
        "e2e 2 production: the web page has the model's values",
        || check_web_page(booted(&mut production_vm)?, "production", None),
    );
    drop(production_vm);
    fleet::run(
        runner,
        &|| image("production"),
        &context.work_root,
        context.accel,
    );

    runner.step(
        "e2e 8 test: the raw image boots through OVMF (--uefi) to ready",
        || {
            let image = image("test")?;
            let mut config = image.config("test-uefi", true, "", &context.work_root);
            config.accel = context.accel;
            let mut vm = Vm::start(&config)?;
            vm.wait_for_ready(UEFI_READY_TIMEOUT)?;
            eprintln!(
                "    uefi: qemu start to ready {:.1}s",
                vm.uptime().as_secs_f64()
            );
            check_mode_services(&mut vm, "test")?;
            vm.shutdown(POWEROFF_TIMEOUT)?;
            Ok(())
        },
    );
}

impl Boots {
    fn start(&self, image: &BuiltImage, name: &str, extra_cmdline: &str) -> anyhow::Result<Vm> {
        let mut config = image.config(name, false, extra_cmdline, &self.work_root);
        config.accel = self.accel;
        config.forward_tcp = vec![22, 80];
        config.hotplug_port = true;
        Vm::start(&config)
    }
}

fn booted(vm: &mut Option<Vm>) -> anyhow::Result<&mut Vm> {
    vm.as_mut().context("no machine: an earlier step failed")
}

/// The service definitions of the repository (the image carries the same files).
fn definitions() -> anyhow::Result<BTreeMap<String, servicedef::ServiceDefinition>> {
    let dir = qemu::workspace_root().join("services");
    let definitions = servicedef::load_dir(&dir).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    Ok(definitions
        .into_iter()
        .map(|definition| (definition.name.clone(), definition))
        .collect())
}

fn in_mode(definition: &servicedef::ServiceDefinition, mode: &str) -> bool {
    definition.modes.is_empty() || definition.modes.iter().any(|each| each == mode)
}

fn is_oneshot(definition: &servicedef::ServiceDefinition) -> bool {
    definition.ready == servicedef::Readiness::Exit
}

/// Started by an event other than boot (notify-crash): not by the mode.
fn starts_on_event(definition: &servicedef::ServiceDefinition) -> bool {
    !definition.start_on.is_empty() && !definition.start_on.contains(&servicedef::Event::Boot)
}

/// Every service of `mode` is up (a oneshot: done, not failed); every other is stopped.
fn check_expected_states(
    states: &BTreeMap<String, String>,
    mode: &str,
    definitions: &BTreeMap<String, servicedef::ServiceDefinition>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (name, state) in states {
        let Some(definition) = definitions.get(name) else {
            problems.push(format!(
                "{name}: no services/{name}/service.xml in the repository"
            ));
            continue;
        };
        let good = if !in_mode(definition, mode) {
            state == "stopped"
        } else if is_oneshot(definition) || starts_on_event(definition) {
            state == "running" || state == "stopped"
        } else {
            state == "running"
        };
        if !good {
            problems.push(format!("{name} is {state} in mode {mode}"));
        }
    }
    if states.is_empty() {
        problems.push("initd reports no services".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

pub(super) fn check_mode_services(vm: &mut Vm, mode: &str) -> anyhow::Result<()> {
    let definitions = definitions()?;
    // Services may still be settling right after a mode switch.
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        let statuses = vm.service_status()?;
        let states: BTreeMap<String, String> = statuses
            .iter()
            .map(|status| (status.name.clone(), status.state.clone()))
            .collect();
        match check_expected_states(&states, mode, &definitions) {
            Ok(()) => return Ok(()),
            Err(problems) if Instant::now() >= deadline => {
                return Err(vm.failure(&format!("initctl status --json: {problems}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Without an agent: the last `nodows: service NAME STATE` line of each service.
fn console_states(console: &str) -> BTreeMap<String, String> {
    let mut states = BTreeMap::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        let Some(rest) = line
            .find("nodows: service ")
            .map(|at| &line[at + "nodows: service ".len()..])
        else {
            continue;
        };
        let mut words = rest.split_whitespace();
        if let (Some(name), Some(state)) = (words.next(), words.next()) {
            states.insert(name.to_string(), state.to_string());
        }
    }
    states
}

fn check_console_services(vm: &mut Vm, image: &BuiltImage, mode: &str) -> anyhow::Result<()> {
    let definitions = definitions()?;
    let mut states = console_states(&vm.console_text());
    // A service of another mode that never started prints nothing: it is stopped.
    for name in image_services(image, vm.work_dir())? {
        states.entry(name).or_insert_with(|| "stopped".to_string());
    }
    check_expected_states(&states, mode, &definitions)
        .map_err(|problems| vm.failure(&format!("console: {problems}")))
}

/// The services in the image (`/etc/nodows/services/*`), read from its root file system.
fn image_services(image: &BuiltImage, work_dir: &Path) -> anyhow::Result<Vec<String>> {
    let root = RootFs::extract(&image.raw, work_dir)?;
    let listing = root.debugfs("ls -p /etc/nodows/services")?;
    // debugfs -p prints /inode/mode/uid/gid/name/size/ per entry.
    Ok(listing
        .lines()
        .filter_map(|line| line.split('/').nth(5))
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
        .map(str::to_string)
        .collect())
}

/// The ext4 root partition of a disk, copied out for e2fsprogs.
struct RootFs {
    path: PathBuf,
}

impl RootFs {
    /// Copies the root partition (the largest Linux one) of `disk` (raw or qcow2).
    fn extract(disk: &Path, work_dir: &Path) -> anyhow::Result<RootFs> {
        let raw = work_dir.join("disk-copy.raw");
        let _ = std::fs::remove_file(&raw);
        let output = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(disk)
            .arg(&raw)
            .output()
            .context("running qemu-img convert")?;
        ensure!(
            output.status.success(),
            "qemu-img convert {}: {}",
            disk.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let table = super::no_test_hooks::PartitionTable::read(&raw)?;
        let path = work_dir.join("root.ext4");
        table.copy(&raw, table.largest(), &path)?;
        std::fs::remove_file(&raw)?;
        Ok(RootFs { path })
    }

    fn debugfs(&self, request: &str) -> anyhow::Result<String> {
        let output = Command::new("debugfs")
            .args(["-R", request])
            .arg(&self.path)
            .output()
            .context("running debugfs")?;
        ensure!(
            output.status.success(),
            "debugfs -R '{request}': {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn check_clean_file_system(disk: &Path, work_dir: &Path) -> anyhow::Result<()> {
    let root = RootFs::extract(disk, work_dir)?;
    let output = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&root.path)
        .output()
        .context("running e2fsck")?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "e2fsck -fn of the root after poweroff found problems:\n{report}"
    );
    let header = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&root.path)
        .output()?;
    let header = String::from_utf8_lossy(&header.stdout);
    let state = header
        .lines()
        .find(|line| line.starts_with("Filesystem state:"))
        .unwrap_or("");
    ensure!(
        state.contains("clean"),
        "the root was not unmounted cleanly ({state})"
    );
    ensure!(
        !header.contains("needs_recovery"),
        "the root's journal needs recovery after poweroff"
    );
    std::fs::remove_file(&root.path)?;
    Ok(())
}

fn check_poweroff(vm: &mut Vm) -> anyhow::Result<()> {
    let definitions = definitions()?;
    let running: Vec<ServiceStatus> = vm
        .service_status()?
        .into_iter()
        .filter(|status| status.state == "running")
        .collect();
    let mark = vm.console_mark();
    let asked = Instant::now();
    vm.send_command("initctl poweroff")?;
    let status = vm.wait_for_exit(POWEROFF_TIMEOUT)?;
    eprintln!(
        "    qemu exited {:.1}s after initctl poweroff ({status})",
        asked.elapsed().as_secs_f64()
    );
    let console = vm.console_text();
    let after = &console[mark.min(console.len())..];
    ensure!(
        after.contains("nodows: poweroff"),
        "{}",
        vm.failure("no `nodows: poweroff` line")
    );
    // Stop order: each service stops before the services it needs.
    let stopped_at = |name: &str| {
        after.lines().position(|line| {
            let line = line.trim_end_matches('\r');
            line.contains(&format!("nodows: service {name} stopped"))
                || line.contains(&format!("nodows: service {name} failed"))
        })
    };
    let mut problems = Vec::new();
    for service in &running {
        let Some(position) = stopped_at(&service.name) else {
            problems.push(format!("{} has no `stopped` line", service.name));
            continue;
        };
        let needs = definitions
            .get(&service.name)
            .map(|definition| definition.needs.clone())
            .unwrap_or_default();
        for need in needs {
            if let Some(need_position) = stopped_at(&need) {
                if need_position < position {
                    problems.push(format!(
                        "{need} stopped before {}, which needs it",
                        service.name
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(vm.failure(&format!("poweroff: {}", problems.join("; "))));
    }
    Ok(())
}

fn check_respawn(vm: &mut Vm, name: &str) -> anyhow::Result<()> {
    let before = vm.wait_for_service(name, SERVICE_TIMEOUT)?;
    let pid = before.pid.context("the running service has no pid")?;
    vm.succeed(&format!("kill -KILL {pid}"))?;
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        let now = vm.wait_for_service(name, SERVICE_TIMEOUT)?;
        if now.pid.is_some_and(|new| new != pid) {
            ensure!(
                now.restarts > before.restarts,
                "{name} has a new pid but restarts stayed {}",
                now.restarts
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(vm.failure(&format!("{name} (pid {pid}) was killed and not respawned")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check_no_console_shell(vm: &mut Vm) -> anyhow::Result<()> {
    let mark = vm.console_mark();
    // A shell or getty would answer these; a console without one stays silent.
    vm.send_console("\r\n")?;
    vm.send_console("root\r\n")?;
    vm.send_console("echo console-shell-$((6*7))\r\n")?;
    std::thread::sleep(Duration::from_secs(5));
    let console = vm.console_text();
    let after = &console[mark.min(console.len())..];
    for bad in ["console-shell-42", "login:", "Password:", "# ", "$ "] {
        if after.contains(bad) {
            return Err(vm.failure(&format!(
                "the console answered with `{bad}`: a shell or login is on it"
            )));
        }
    }
    let states = console_states(&console);
    if states
        .get("console")
        .is_some_and(|state| state != "stopped")
    {
        return Err(vm.failure("the console (autologin) service runs in production"));
    }
    Ok(())
}

/// Every running service of the boot is in the blame (a line each); the
/// chain ends at a service; the top five are printed for the note.
fn check_blame(vm: &mut Vm) -> anyhow::Result<()> {
    let blame = vm.succeed("initctl blame")?;
    let chain = vm.succeed("initctl critical-chain")?;
    for status in vm.service_status()? {
        if status.state == "running" {
            let name = status.name.as_str();
            ensure!(
                blame
                    .lines()
                    .any(|line| line.split_whitespace().nth(1) == Some(name)),
                "{name} is running but not in initctl blame:\n{blame}"
            );
        }
    }
    ensure!(
        !chain.trim().is_empty(),
        "initctl critical-chain printed nothing"
    );
    eprintln!("    blame (top five):");
    for line in blame.lines().take(5) {
        eprintln!("      {line}");
    }
    eprintln!("    critical chain:");
    for line in chain.lines() {
        eprintln!("      {line}");
    }
    Ok(())
}

fn check_root_locked(image: &BuiltImage, work_root: &Path) -> anyhow::Result<()> {
    let work_dir = work_root.join("production-root-locked");
    std::fs::create_dir_all(&work_dir)?;
    let root = RootFs::extract(&image.raw, &work_dir)?;
    let shadow = root.debugfs("cat /etc/shadow")?;
    let line = shadow
        .lines()
        .find(|line| line.starts_with("root:"))
        .context("/etc/shadow has no root line")?;
    let password = line.split(':').nth(1).unwrap_or("");
    ensure!(
        password.starts_with('*') || password.starts_with('!'),
        "root can log in with a password: /etc/shadow has `root:{password}:...`"
    );
    std::fs::remove_file(&root.path)?;
    Ok(())
}

pub(super) fn check_ssh_refuses_passwords(vm: &mut Vm) -> anyhow::Result<()> {
    vm.wait_for_open_port(vm.host_port(22), SERVICE_TIMEOUT)?;
    let output = ssh_as_root(
        vm,
        &[
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "true",
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return Err(vm.failure("ssh with a password logged in"));
    }
    // `Permission denied (publickey).`: the server offers public keys only.
    if !stderr.contains("Permission denied (publickey)") {
        return Err(vm.failure(&format!(
            "ssh did not say that only publickey is offered: {stderr}"
        )));
    }
    Ok(())
}

/// The image's model (the same file the image carries as /etc/nodows/model.xml).
fn model_text() -> anyhow::Result<String> {
    let path = qemu::workspace_root().join("models/default.xml");
    std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))
}

/// The content of the element `<TAG ATTRIBUTE="VALUE">...</TAG>` in `text`.
fn element<'a>(text: &'a str, tag: &str, attribute: &str, value: &str) -> Option<&'a str> {
    let open = format!("<{tag} {attribute}=\"{value}\">");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(&text[start..end])
}

/// A key of a service as layered by the renderer: its declared default, the
/// model's defaults, then the profile, then the server.
fn model_value(
    model: &str,
    service: &str,
    key: &str,
    mode: &str,
    server: Option<&str>,
) -> Option<String> {
    let defaults = model.find("<defaults>").and_then(|at| {
        let start = at + "<defaults>".len();
        Some(&model[start..start + model[start..].find("</defaults>")?])
    });
    let layers = [
        defaults,
        element(model, "profile", "name", mode),
        server.and_then(|server| element(model, "server", "id", server)),
    ];
    // Under the model's layers: the service's declared default.
    let mut value = servicedef::parse_file(
        &qemu::workspace_root().join(format!("services/{service}/service.xml")),
    )
    .ok()
    .and_then(|definition| {
        definition
            .keys
            .into_iter()
            .find(|declaration| declaration.name == key)
            .and_then(|declaration| declaration.default)
    });
    for layer in layers.into_iter().flatten() {
        if let Some(keys) = element(layer, "service", "name", service) {
            if let Some(found) = element(keys, "key", "name", key) {
                value = Some(found.to_string());
            }
        }
    }
    value
}

/// The server id the guest runs as (`nodows.server=` or /etc/nodows/server-id), if any.
fn guest_server(vm: &mut Vm) -> anyhow::Result<Option<String>> {
    let output = vm.succeed(
        "for word in $(cat /proc/cmdline); do case $word in nodows.server=*) echo ${word#nodows.server=}; exit;; esac; done; cat /etc/nodows/server-id 2>/dev/null || true",
    )?;
    let server = output.trim();
    Ok((!server.is_empty()).then(|| server.to_string()))
}

/// A server id of the model that the image does not run as by default.
fn other_server(_image: &BuiltImage) -> anyhow::Result<String> {
    let model = model_text()?;
    let default_server = std::fs::read_to_string(
        qemu::workspace_root().join("overlays/common/etc/nodows/server-id"),
    )
    .unwrap_or_default();
    model
        .match_indices("<server id=\"")
        .filter_map(|(at, open)| {
            let rest = &model[at + open.len()..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .filter(|id| id != default_server.trim())
        .last()
        .context("the model has no <server id=\"...\"> to boot as")
}

/// The page on port 80 shows the model's title, server and mode (the
/// standby page and message in backup mode).
pub(super) fn check_web_page(vm: &mut Vm, mode: &str, server: Option<&str>) -> anyhow::Result<()> {
    let model = model_text()?;
    let port = vm.host_port(80);
    vm.wait_for_open_port(port, SERVICE_TIMEOUT)?;
    let (status, body) = vm.http_get(port, "/")?;
    let (service, key) = if mode == "backup" {
        ("standby", "message")
    } else {
        ("web", "title")
    };
    // Without a server id to expect, the page's own `server=` names the layer.
    let page_server = body
        .split("server=")
        .nth(1)
        .and_then(|rest| rest.split(" mode=").next())
        .map(str::to_string);
    let server = match server {
        Some(server) => Some(server.to_string()),
        None => page_server.filter(|server| !server.is_empty()),
    };
    let server = server.as_deref();
    let expected = model_value(&model, service, key, mode, server)
        .with_context(|| format!("models/default.xml has no {service} {key} for mode {mode}"))?;
    let server_line = format!("server={} mode={mode}", server.unwrap_or(""));
    if status != 200 || !body.contains(&expected) || !body.contains(&server_line) {
        return Err(vm.failure(&format!(
            "GET / answered {status} without the model's {service} {key} `{expected}` and `{server_line}`:\n{body}"
        )));
    }
    Ok(())
}

/// The pids of the running services.
fn running_pids(vm: &mut Vm) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(vm
        .service_status()?
        .into_iter()
        .filter(|status| status.state == "running")
        .filter_map(|status| Some((status.name, status.pid?)))
        .collect())
}

/// The child processes of `pid` (nginx's workers).
fn children(vm: &mut Vm, pid: i64) -> anyhow::Result<Vec<String>> {
    let output = vm.succeed(&format!("cat /proc/{pid}/task/*/children"))?;
    let mut pids: Vec<String> = output.split_whitespace().map(str::to_string).collect();
    pids.sort();
    Ok(pids)
}

/// Sets web's port to `80; evil` in every layer of the guest's model that
/// sets a title and runs `initctl render`: it fails, the renderer says why
/// on the console (the model's line and the key), no file changes and no
/// service restarts; the good model renders again afterwards.
fn check_bad_value_refused(vm: &mut Vm) -> anyhow::Result<()> {
    let before = running_pids(vm)?;
    let config_before = vm.succeed("cat /etc/nginx/sites-enabled/default")?;
    let mark = vm.console_mark();
    vm.succeed(
        "cp /etc/nodows/model.xml /run/model.good && \
         sed -i 's|\\(<key name=\"title\">[^<]*</key>\\)|\\1<key name=\"port\">80; evil</key>|' /etc/nodows/model.xml && \
         grep -c '80; evil' /etc/nodows/model.xml",
    )?;
    let reply = vm.fail("initctl render")?;
    vm.wait_for_console_text_since(
        mark,
        "key `port` of service `web` is \"80; evil\": expected a port number 1-65535",
        SERVICE_TIMEOUT,
    )?;
    let config_after = vm.succeed("cat /etc/nginx/sites-enabled/default")?;
    ensure!(
        config_before == config_after,
        "a refused model changed the nginx site:\n{config_after}"
    );
    let after = running_pids(vm)?;
    if before != after {
        return Err(vm.failure(&format!(
            "a refused model changed service pids ({reply}): before {before:?}, after {after:?}"
        )));
    }
    vm.succeed("cp /run/model.good /etc/nodows/model.xml && initctl render")?;
    Ok(())
}

/// The running services' pids, but `name`'s.
fn pids_but(vm: &mut Vm, name: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut pids = running_pids(vm)?;
    pids.remove(name);
    Ok(pids)
}

/// Waits until initd reports `name` in `state`.
fn wait_for_state(vm: &mut Vm, name: &str, state: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        let now = vm.service_status()?;
        if now
            .iter()
            .any(|status| status.name == name && status.state == state)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(vm.failure(&format!("{name} is not {state}: {now:?}")));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The model's key `enabled`: set to no for web beside every title in the
/// guest's model, a render (model-watch's, and `initctl render`) stops web
/// and nothing else, and `initctl start web` is refused; the old model back,
/// web starts again and serves its page, the other pids still unchanged.
fn check_enabled_flip(vm: &mut Vm) -> anyhow::Result<()> {
    let others = pids_but(vm, "web")?;
    vm.succeed(
        "cp /etc/nodows/model.xml /run/model.enabled && \
         sed -i 's|\\(<key name=\"title\">[^<]*</key>\\)|\\1<key name=\"enabled\">no</key>|' /etc/nodows/model.xml && \
         grep -c '<key name=\"enabled\">no</key>' /etc/nodows/model.xml && initctl render",
    )?;
    wait_for_state(vm, "web", "stopped")?;
    let refused = vm.fail("initctl start web")?;
    ensure!(
        refused.contains("disabled by the model"),
        "initctl start web of a disabled web said: {refused}"
    );
    let stopped = pids_but(vm, "web")?;
    if stopped != others {
        return Err(vm.failure(&format!(
            "enabled=no for web moved other services: before {others:?}, after {stopped:?}"
        )));
    }
    vm.succeed("cp /run/model.enabled /etc/nodows/model.xml && initctl render")?;
    vm.wait_for_service("web", SERVICE_TIMEOUT)?;
    let (status, _) = vm.http_get(vm.host_port(80), "/")?;
    ensure!(status == 200, "web answers {status} after enabled=yes");
    let started = pids_but(vm, "web")?;
    if started != others {
        return Err(vm.failure(&format!(
            "enabled=yes for web moved other services: before {others:?}, after {started:?}"
        )));
    }
    Ok(())
}

/// notify-crash (test profile, started by `initctl emit crash-loop`) says
/// READY=1 through $NOTIFY_SOCKET and exits 1: every instance becomes
/// running through sd_notify, initd respawns it with backoff and fails it
/// past `max="3"` restarts; no other service's pid changes; then `initctl
/// stop` acknowledges the failure.
fn check_notify_crash_loop(vm: &mut Vm) -> anyhow::Result<()> {
    let before = running_pids(vm)?;
    let mark = vm.console_mark();
    vm.succeed("initctl emit crash-loop")?;
    vm.wait_for_console_text_since(mark, "nodows: service notify-crash failed", SERVICE_TIMEOUT)?;
    let console = vm
        .console_text()
        .get(mark..)
        .unwrap_or_default()
        .to_string();
    let ready = console
        .matches("nodows: service notify-crash running")
        .count();
    ensure!(
        ready == 4,
        "notify-crash became running {ready} times through sd_notify (expected 4: the start and 3 restarts)"
    );
    let status = vm.succeed("initctl status")?;
    ensure!(
        status.contains("3 restarts within 60000ms, last exit 1"),
        "initctl status does not say why notify-crash failed:\n{status}"
    );
    let after = running_pids(vm)?;
    if before != after {
        return Err(vm.failure(&format!(
            "a crash-looping service moved others: before {before:?}, after {after:?}"
        )));
    }
    vm.succeed("initctl stop notify-crash")?;
    wait_for_state(vm, "notify-crash", "stopped")
}

/// `cargo xtask run --profile test --keep -- 'cat /etc/nodows/mode; ...; exit 3'`:
/// stdout is the guest's output, the exit code the command's, and the guest
/// keeps running; a second `run` reuses it (the same kernel boot id, says so
/// on stderr) and `run --stop` powers it off.
fn check_xtask_run(accel: Accel) -> anyhow::Result<()> {
    use clap::ValueEnum as _;
    let accel = accel
        .to_possible_value()
        .context("accelerator name")?
        .get_name()
        .to_string();
    let run = |args: &[&str]| -> anyhow::Result<(Option<i32>, String, String)> {
        let words = [&["run", "--profile", "test", "--accel", &accel], args].concat();
        let output = super::cargo_xtask(&words)
            .output()
            .with_context(|| format!("running cargo xtask {}", words.join(" ")))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        Ok((output.status.code(), stdout, stderr))
    };
    // A guest kept by an earlier, interrupted test run goes first.
    run(&["--stop"])?;
    const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";
    let first = run(&[
        "--keep",
        "--",
        &format!("cat /etc/nodows/mode; {BOOT_ID}; exit 3"),
    ])?;
    let result = (|| {
        let (code, stdout, stderr) = &first;
        let lines: Vec<&str> = stdout.lines().collect();
        ensure!(
            *code == Some(3) && lines.len() == 2 && lines[0] == "test",
            "cargo xtask run --keep: exit {code:?}, stdout {stdout:?}, stderr:\n{stderr}"
        );
        let (code, stdout, stderr) = run(&["--", BOOT_ID])?;
        ensure!(
            code == Some(0)
                && stdout.trim() == lines[1]
                && stderr.contains("reusing the running guest of debian-test"),
            "the second cargo xtask run did not reuse the kept guest (boot id {:?} first): exit {code:?}, stdout {stdout:?}, stderr:\n{stderr}",
            lines[1]
        );
        Ok(())
    })();
    let (code, _, stderr) = run(&["--stop"])?;
    result?;
    ensure!(
        code == Some(0) && stderr.contains("powering off the guest of debian-test"),
        "cargo xtask run --stop: exit {code:?}, stderr:\n{stderr}"
    );
    Ok(())
}

/// `ssh` from the host to the guest's port 22 as root with `key` only; the
/// command's output, or ssh's error.
pub(super) fn ssh_with_key(
    vm: &Vm,
    key: &Path,
    command: &str,
) -> anyhow::Result<Result<String, String>> {
    let key = key.to_str().context("the key's path is not UTF-8")?;
    let output = ssh_as_root(vm, &["-o", "IdentitiesOnly=yes", "-i", key], command)?;
    Ok(if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    })
}

/// `ssh` from the host to the guest's port 22 as root, non-interactive,
/// without a known-hosts file, with `options` before the destination.
fn ssh_as_root(vm: &Vm, options: &[&str], command: &str) -> anyhow::Result<std::process::Output> {
    Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=30",
        ])
        .args(options)
        .args([
            "-p",
            &vm.host_port(22).to_string(),
            "root@127.0.0.1",
            command,
        ])
        .output()
        .context("running ssh (install openssh-client)")
}

/// Access is by keys from the model: a key pair made on the host now is
/// refused, then its public key goes into the guest's model
/// (`authorized_key.e2e` of service ssh) and `initctl render` writes
/// /etc/ssh/authorized_keys/root; the same ssh logs in as root.
fn check_operator_key_login(vm: &mut Vm) -> anyhow::Result<()> {
    let dir = qemu::target_dir()?.join("e2e-operator-key");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    super::run_command(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e-operator", "-f"])
            .arg(&key),
    )?;
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub"))?;
    let public = public.trim();
    vm.wait_for_open_port(vm.host_port(22), SERVICE_TIMEOUT)?;
    if let Ok(output) = ssh_with_key(vm, &key, "true")? {
        return Err(vm.failure(&format!(
            "a key the model does not name logged in: {output}"
        )));
    }
    vm.succeed(&format!(
        "cp /etc/nodows/model.xml /run/model.good && \
         sed -i 's|<defaults>|<defaults><service name=\"ssh\"><key name=\"authorized_key.e2e\">{public}</key></service>|' /etc/nodows/model.xml && \
         initctl render && grep -c e2e-operator /etc/ssh/authorized_keys/root"
    ))?;
    let result = ssh_with_key(vm, &key, "cat /etc/nodows/mode");
    vm.succeed("cp /run/model.good /etc/nodows/model.xml && initctl render")?;
    match result? {
        Ok(mode) if mode.trim() == "test" => Ok(()),
        Ok(other) => Err(vm.failure(&format!("ssh as root ran, but printed {other:?}"))),
        Err(error) => Err(vm.failure(&format!(
            "the operator key from the model did not log in: {error}"
        ))),
    }
}

/// The fleet on a booted appliance: `nodows watch` in the guest against
/// the host's PostgreSQL (QEMU's user-network gateway 10.0.2.2 is the
/// host's 127.0.0.1) applies the model, and an UPDATE of the guest's
/// server's title reaches its web page; afterwards the guest goes back to
/// its baked model.
fn check_fleet_push(vm: &mut Vm, work_root: &Path) -> anyhow::Result<()> {
    let mut watch = fleet::GuestWatch::start(vm, &work_root.join("fleet-db"))?;
    let result = fleet_push_checks(vm, &mut watch);
    // Back to the baked model for the next steps, whatever happened.
    watch.stop(vm);
    result
}

/// The checks of `check_fleet_push` on a running guest watcher.
fn fleet_push_checks(vm: &mut Vm, watch: &mut fleet::GuestWatch) -> anyhow::Result<()> {
    let (server, role, password, url) = (
        watch.server.clone(),
        watch.role.clone(),
        watch.password.clone(),
        watch.url.clone(),
    );
    let title = "nodows from PostgreSQL";
    let started = Instant::now();
    let revision = watch.update_web_key("title", title)?;
    wait_for_page(vm, title)?;
    eprintln!(
        "    commit in PostgreSQL to the page on the appliance: {} ms",
        started.elapsed().as_millis()
    );
    watch
        .database
        .wait_applied(&server, revision, SERVICE_TIMEOUT)?;
    let status = vm.succeed("initctl status")?;
    ensure!(
        status.contains(&format!(
            "fleet {url} server {server}: connected; running last-good revision {revision}"
        )),
        "initctl status does not show the fleet watcher's state:\n{status}"
    );

    // A model that fails validation (net's required address deleted)
    // is refused whole: the page and the last-good model stay, the
    // refusal is in the status row and in initctl status.
    let last_good = vm.succeed("cat /var/lib/nodows/model.xml")?;
    let refused = watch.database.sql(
        "DELETE FROM nodows.value WHERE server IS NULL AND profile IS NULL AND service = 'net' AND key = 'address'",
    )?;
    watch
        .database
        .wait_status(&server, refused, "refused", SERVICE_TIMEOUT)?;
    ensure!(
        vm.succeed("cat /var/lib/nodows/model.xml")? == last_good,
        "the refused model replaced the last-good one"
    );
    wait_for_page(vm, title)?;
    let status = vm.succeed("initctl status")?;
    ensure!(
        status.contains("; last refused: "),
        "initctl status does not show the refusal:\n{status}"
    );
    let restored = watch.database.sql(
        "INSERT INTO nodows.value (service, key, value) VALUES ('net', 'address', '10.0.2.15/24')",
    )?;
    watch
        .database
        .wait_applied(&server, restored, SERVICE_TIMEOUT)?;

    // A change made while the appliance cannot reach the database
    // arrives after it reconnects (the poll is 60 s: the reconnect
    // brings it).
    watch.database.sql(&format!(
        "ALTER ROLE {role} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))?;
    let away = "nodows changed while away";
    let changed = watch.update_web_key("title", away)?;
    std::thread::sleep(Duration::from_secs(3));
    let (_, body) = vm.http_get(vm.host_port(80), "/")?;
    ensure!(
        !body.contains(away),
        "the page changed while the appliance could not log in"
    );
    let status = vm.succeed("initctl status")?;
    ensure!(
        status.contains("database unreachable; running last-good revision"),
        "initctl status does not say the database is unreachable:\n{status}"
    );
    watch.database.sql(&format!("ALTER ROLE {role} LOGIN"))?;
    wait_for_page(vm, away)?;
    watch
        .database
        .wait_applied(&server, changed, SERVICE_TIMEOUT)?;

    let log = vm.succeed("cat /var/log/nodows/fleet-watch.log")?;
    ensure!(
        !log.contains(&password),
        "the watcher's log holds the password:\n{log}"
    );
    Ok(())
}

/// Waits until the page on port 80 shows `text`.
fn wait_for_page(vm: &mut Vm, text: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        let (status, body) = vm.http_get(vm.host_port(80), "/")?;
        if status == 200 && body.contains(text) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log = vm.succeed("cat /var/log/nodows/fleet-watch.log")?;
            return Err(vm.failure(&format!(
                "the page did not show {text:?}:\n{body}\nwatch log:\n{log}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Changes the web service's values in the guest's model and runs
/// `initctl render`: web reloads (nginx's master keeps its pid, its workers
/// are new), every other service keeps its pid, the page changes.
pub(super) fn check_render_reload(vm: &mut Vm) -> anyhow::Result<()> {
    let model = model_text()?;
    let server = guest_server(vm)?;
    let title =
        model_value(&model, "web", "title", "test", server.as_deref()).context("no web title")?;
    let level = model_value(&model, "web", "error_log_level", "test", server.as_deref())
        .context("no web error_log_level")?;
    let new_title = "nodows changed by the e2e test";
    let new_level = if level == "error" { "crit" } else { "error" };
    let before = running_pids(vm)?;
    let web_pid = *before.get("web").context("web is not running")?;
    let workers_before = children(vm, web_pid)?;
    // The title is shown on the page (its file needs no reload); the log
    // level is in nginx.conf (on-change reload).
    // The level may be the declared default (not in the model): then it is
    // set beside the title, in the layer that sets the title.
    let level_edit = if model.contains(&format!("<key name=\"error_log_level\">{level}</key>")) {
        format!("-e 's|<key name=\"error_log_level\">{level}</key>|<key name=\"error_log_level\">{new_level}</key>|'")
    } else {
        format!("-e 's|<key name=\"title\">{new_title}</key>|&<key name=\"error_log_level\">{new_level}</key>|'")
    };
    vm.succeed(&format!(
        "sed -i -e 's|<key name=\"title\">{title}</key>|<key name=\"title\">{new_title}</key>|' {level_edit} \
         /etc/nodows/model.xml && grep -c '{new_title}' /etc/nodows/model.xml"
    ))?;
    let rendered = vm.succeed("initctl render")?;
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        let (status, body) = vm.http_get(vm.host_port(80), "/")?;
        if status == 200 && body.contains(new_title) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(vm.failure(&format!(
                "the page did not change after initctl render ({rendered}):\n{body}"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let config = vm.succeed("cat /etc/nginx/nginx.conf")?;
    ensure!(
        config.contains(new_level),
        "nginx.conf was not re-rendered with error_log level {new_level}:\n{config}"
    );
    // nginx starts new workers on SIGHUP; wait for the old ones to go.
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        let workers_after = children(vm, web_pid)?;
        if !workers_after.is_empty()
            && workers_after
                .iter()
                .all(|worker| !workers_before.contains(worker))
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err(vm.failure(&format!(
                "web was not reloaded: nginx workers before {workers_before:?}, after {workers_after:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = running_pids(vm)?;
    if before != after {
        return Err(vm.failure(&format!(
            "initctl render changed service pids: before {before:?}, after {after:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_values_layer_defaults_profile_server() {
        let model = r#"<model><defaults><service name="web"><key name="title">d</key><key name="port">80</key></service></defaults>
            <profile name="test"><service name="web"><key name="title">t</key></service></profile>
            <server id="web02"><service name="web"><key name="title">s</key></service></server></model>"#;
        assert_eq!(
            model_value(model, "web", "title", "dev", None).as_deref(),
            Some("d")
        );
        assert_eq!(
            model_value(model, "web", "title", "test", None).as_deref(),
            Some("t")
        );
        assert_eq!(
            model_value(model, "web", "title", "test", Some("web02")).as_deref(),
            Some("s")
        );
        assert_eq!(
            model_value(model, "web", "port", "test", Some("web02")).as_deref(),
            Some("80")
        );
        // Not in the model: the declared default of services/ssh/service.xml.
        assert_eq!(
            model_value(model, "ssh", "port", "test", None).as_deref(),
            Some("22")
        );
        assert_eq!(model_value(model, "ssh", "no_such_key", "test", None), None);
    }

    #[test]
    fn console_states_keep_the_last_state_of_each_service() {
        let console = "[ 1.0] x\r\nnodows: service web starting\r\nnodows: service web running pid=12\r\n\
                       nodows: service ssh backoff\r\nnodows: ready mode=test services=2 t=1.00\r\n";
        let states = console_states(console);
        assert_eq!(states.get("web").map(String::as_str), Some("running"));
        assert_eq!(states.get("ssh").map(String::as_str), Some("backoff"));
        assert_eq!(states.len(), 2);
    }
}
