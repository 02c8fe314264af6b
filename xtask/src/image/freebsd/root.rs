//! The root: the sets unpacked, nodows' binaries and files placed, root
//! locked, loader.conf, and the configs and rc.d glue baked by the host renderer.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use xshell::{cmd, Shell};

use super::super::assemble::Staging;
use super::super::ui::Ui;
use super::super::util;
use super::super::BadInput;
use super::*;

/// Unpacks both sets into the staging tree (owners and modes kept) and
/// checks that they hold what the image boots with.
pub fn unpack_sets(
    ui: &mut Ui,
    distribution: &Distribution,
    staging: &Staging,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = staging.path();
    for set in [&distribution.base, &distribution.kernel] {
        ui.run(cmd!(
            sh,
            "tar --extract --xz --file {set} --directory {root} --preserve-permissions --same-owner --numeric-owner --warning=no-unknown-keyword"
        ))?;
    }
    for required in ["boot/loader.efi", "boot/kernel/kernel", "etc/rc.subr"] {
        if !staging.join(required).is_file() {
            return Err(BadInput(format!(
                "{}: the sets have no ./{required}",
                distribution
                    .base
                    .parent()
                    .unwrap_or(Path::new("."))
                    .display()
            ))
            .into());
        }
    }
    Ok(())
}

/// initd and initctl into /usr/local/sbin (the renderer runs on the host only).
pub fn place_binaries(binaries: &FreebsdBinaries, staging: &Staging) -> anyhow::Result<()> {
    util::install(
        &binaries.initd,
        &staging.join("usr/local/sbin/initd"),
        0o555,
    )?;
    util::install(
        &binaries.initctl,
        &staging.join("usr/local/sbin/initctl"),
        0o555,
    )?;
    Ok(())
}

/// The services, the model, the mode, the overlays, root's password and fstab.
pub fn install_files(plan: &FreebsdPlan, staging: &Staging) -> anyhow::Result<()> {
    let root = staging.path();
    let services = staging.join(&format!("{NODOWS_ETC}/services"));
    std::fs::create_dir_all(&services)?;
    for service in &plan.services {
        util::copy_service(&service.dir, &services.join(&service.name))?;
    }
    util::install(
        &plan.source.join(&plan.model),
        &staging.join(&format!("{NODOWS_ETC}/model.xml")),
        0o644,
    )?;
    util::write(
        &staging.join(&format!("{NODOWS_ETC}/mode")),
        &format!("{}\n", plan.mode),
        0o644,
    )?;
    for overlay in &plan.overlays {
        util::copy_tree(&plan.source.join(overlay), root)?;
    }
    if plan.root_locked {
        lock_root(staging)?;
    }
    // /run is Linux's; a link keeps initctl's default socket path working.
    if !staging.join("run").exists() {
        std::os::unix::fs::symlink("var/run", staging.join("run"))?;
    }
    util::write(
        &staging.join("etc/fstab"),
        &format!("# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n/dev/gpt/{ROOT_LABEL}\t/\tufs\trw\t1\t1\n"),
        0o644,
    )?;
    Ok(())
}

/// loader.conf: the serial console and the root by its GPT label.
pub fn install_boot_files(staging: &Staging) -> anyhow::Result<()> {
    util::write(
        &staging.join("boot/loader.conf"),
        &format!(
            "# written by nodows: serial console, root by GPT label\n\
             autoboot_delay=\"1\"\n\
             console=\"comconsole,efi\"\n\
             comconsole_speed=\"115200\"\n\
             vfs.root.mountfrom=\"ufs:/dev/gpt/{ROOT_LABEL}\"\n"
        ),
        0o644,
    )?;
    Ok(())
}

/// Sets root's password field in /etc/master.passwd to `*`. The password
/// databases (pwd.db, spwd.db) cannot be rebuilt on Linux: their mtime is
/// set to 1970 so that rc.d/nodows runs `pwd_mkdb -p /etc/master.passwd`
/// before anyone can log in (it does so whenever master.passwd is newer).
fn lock_root(staging: &Staging) -> anyhow::Result<()> {
    let path = staging.join("etc/master.passwd");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(()); // a set without password files: nothing to lock
    };
    let locked: String = text
        .lines()
        .map(|line| match line.split_once(':') {
            Some(("root", rest)) => match rest.split_once(':') {
                Some((_, after)) => format!("root:*:{after}\n"),
                None => format!("{line}\n"),
            },
            _ => format!("{line}\n"),
        })
        .collect();
    util::write(&path, &locked, 0o600)?;
    for database in ["etc/pwd.db", "etc/spwd.db"] {
        let database = staging.join(database);
        if database.exists() {
            util::clamp_time(&database, 0)?;
        }
    }
    Ok(())
}

/// The services a FreeBSD bake sees, by name: every service of
/// `services/` in its FreeBSD form (see [`service_dir`]), and the rc.d glue
/// of `freebsd/services/`.
pub fn definition_dirs(source: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    for (parent, forms) in [
        (source.join("services"), true),
        (source.join("freebsd/services"), false),
    ] {
        for entry in std::fs::read_dir(&parent)
            .with_context(|| format!("cannot read {}", parent.display()))?
        {
            let path = entry?.path();
            let name = entry_name(&path);
            if path.join("service.xml").is_file() {
                let dir = if forms {
                    service_dir(source, &name)
                } else {
                    path
                };
                dirs.push((name, dir));
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn entry_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Renders the services' configs and the rc.d glue into the staging root
/// with the host renderer. The renderer sees every shared service with the
/// FreeBSD forms and the glue on top (the model may name services the
/// image leaves out); only the image's services and the glue are rendered.
pub fn bake(
    ui: &mut Ui,
    plan: &FreebsdPlan,
    nodows: &Path,
    staging: &Staging,
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let render_services = tempdir("nodows-freebsd-services")?;
    let services_dir = render_services.path();
    for (name, path) in definition_dirs(&plan.source)? {
        let target = services_dir.join(name);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        util::copy_service(&path, &target)?;
    }
    let model = staging.join(&format!("{NODOWS_ETC}/model.xml"));
    let root = staging.path();
    let mode = &plan.mode;
    let mut service_args = Vec::new();
    for name in plan
        .services
        .iter()
        .map(|service| service.name.as_str())
        .chain(std::iter::once(GLUE_SERVICE))
    {
        service_args.push("--service".to_owned());
        service_args.push(name.to_owned());
    }
    ui.run(cmd!(
        sh,
        "{nodows} render --model {model} --services {services_dir} --root {root} --profile {mode} {service_args...}"
    ))
}
