//! The harness fixture: Debian's kernel plus a busybox initramfs that runs the
//! real test agent (`services/test-agent/test-agent.sh`) on the virtio port
//! and a web server on port 80. It boots in seconds, so `cargo xtask test
//! --quick` proves the harness itself without any image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use xshell::{cmd, Shell};

use super::{Disk, DiskFormat, Firmware, Vm, VmConfig};

/// Kernel modules the fixture loads, in dependency order (path under `kernel/`).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "drivers/char/virtio_console",
    "drivers/block/virtio_blk",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /etc/modules); do
    insmod "/lib/modules/$module.ko" || echo "fixture: insmod $module failed"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p /www
echo "nodows fixture page" > /www/index.html
httpd -p 80 -h /www
sh /etc/nodows/services/test-agent/test-agent.sh &
echo "nodows: service test-agent running pid=$!"
echo "nodows: ready mode=fixture services=1 t=0.00"
while :; do sleep 3600; done
"#;

pub struct Fixture {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds (or reuses) the fixture under `dir`. Needs apt-get (for Debian's
/// kernel package), busybox-static and cpio.
pub fn build(dir: &Path, workspace: &Path) -> anyhow::Result<Fixture> {
    let sh = Shell::new()?;
    std::fs::create_dir_all(dir)?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: run `apt-get install --yes --no-install-recommends busybox-static` as root");
    }
    let extracted = dir.join("kernel-package");
    let kernel = dir.join("vmlinuz");
    if !kernel.is_file() {
        let depends = cmd!(sh, "apt-cache depends linux-image-amd64").read()?;
        let package = depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with("linux-image-"))
            .context("apt-cache depends linux-image-amd64 names no linux-image package (run apt-get update)")?
            .to_string();
        let downloads = dir.join("download");
        let _ = std::fs::remove_dir_all(&downloads);
        std::fs::create_dir_all(&downloads)?;
        let download_sh = Shell::new()?;
        download_sh.change_dir(&downloads);
        cmd!(download_sh, "apt-get download {package}")
            .quiet()
            .ignore_stderr()
            .run()?;
        let deb = std::fs::read_dir(&downloads)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
            .context("apt-get download left no .deb")?;
        let _ = std::fs::remove_dir_all(&extracted);
        cmd!(sh, "dpkg-deb --extract {deb} {extracted}")
            .quiet()
            .run()?;
        let vmlinuz = std::fs::read_dir(extracted.join("boot"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
            })
            .context("the kernel package has no /boot/vmlinuz-*")?;
        std::fs::remove_dir_all(&downloads)?;
        std::fs::copy(vmlinuz, &kernel)?;
    }
    let modules_root = std::fs::read_dir(extracted.join("lib/modules"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .next()
        .context("the kernel package has no /lib/modules/VERSION")?
        .join("kernel");

    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for sub in [
        "bin",
        "proc",
        "sys",
        "dev",
        "lib/modules",
        "etc/nodows/services/test-agent",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let mut names = Vec::new();
    for module in MODULES {
        let source = modules_root.join(format!("{module}.ko"));
        let name = module.rsplit('/').next().expect("rsplit yields one item");
        std::fs::copy(&source, root.join(format!("lib/modules/{name}.ko")))
            .with_context(|| format!("{}: cannot copy", source.display()))?;
        names.push(name);
    }
    std::fs::write(root.join("etc/modules"), names.join("\n") + "\n")?;
    std::fs::copy(
        workspace.join("services/test-agent/test-agent.sh"),
        root.join("etc/nodows/services/test-agent/test-agent.sh"),
    )?;
    std::fs::write(root.join("init"), INIT)?;
    cmd!(sh, "chmod 0755 {root}/init").quiet().run()?;
    let initrd = dir.join("initrd.cpio");
    let root_sh = Shell::new()?;
    root_sh.change_dir(&root);
    let list = cmd!(root_sh, "find .").read()?;
    let archive = cmd!(root_sh, "cpio --create --format=newc --quiet")
        .stdin(list)
        .output()?;
    std::fs::write(&initrd, archive.stdout)?;
    Ok(Fixture { kernel, initrd })
}

impl Fixture {
    pub fn config(&self, name: &str, work_root: &Path) -> VmConfig {
        let mut config = VmConfig::new(
            name,
            Firmware::DirectKernel {
                kernel: self.kernel.clone(),
                initrd: Some(self.initrd.clone()),
                cmdline: "console=ttyS0 panic=-1 quiet".to_string(),
            },
            work_root,
        );
        config.memory_mib = 256;
        config.forward_tcp = vec![80, 81];
        config
    }
}

/// The harness self-test: every verb against the fixture, one boot.
pub fn self_test(fixture: &Fixture, work_root: &Path, accel: super::Accel) -> anyhow::Result<()> {
    let backing = work_root.join("fixture-backing.raw");
    std::fs::create_dir_all(work_root)?;
    let mut bytes = b"nodows-backing\n".to_vec();
    bytes.resize(1 << 20, 0);
    std::fs::write(&backing, &bytes)?;

    let mut config = fixture.config("harness-self-test", work_root);
    config.accel = accel;
    config.disk = Some(Disk::Fresh {
        image: backing.clone(),
        format: DiskFormat::Raw,
    });
    let mut vm = Vm::start(&config)?;
    let ready = vm.wait_for_ready(Duration::from_secs(90))?;
    ensure!(
        ready.contains("mode=fixture"),
        "unexpected ready line {ready:?}"
    );
    vm.wait_for_console_text("nodows: service test-agent running", Duration::from_secs(5))?;

    // The agent: output, exit status, stderr, quoting.
    ensure!(
        vm.succeed("echo hello; echo world")? == "hello\nworld",
        "agent output differs"
    );
    ensure!(
        vm.succeed("printf 'no newline'")? == "no newline",
        "agent output without newline differs"
    );
    let (status, output) = vm.execute("echo oops >&2; exit 3", super::COMMAND_TIMEOUT)?;
    ensure!(
        status == 3 && output == "oops",
        "got status {status} output {output:?}"
    );
    ensure!(vm.fail("false")?.is_empty(), "false printed something");
    ensure!(
        vm.succeed("false").is_err(),
        "succeed accepted a failing command"
    );
    ensure!(
        vm.fail("true").is_err(),
        "fail accepted a succeeding command"
    );
    let quoted = vm.succeed(r#"echo "a 'b'" $((1+2)) '$HOME'"#)?;
    ensure!(
        quoted == "a 'b' 3 $HOME",
        "agent quoting differs: {quoted:?}"
    );

    // The disk is an overlay: the guest sees the image and writes to it, the image is untouched.
    ensure!(
        vm.succeed("head -c 14 /dev/vda")? == "nodows-backing",
        "the guest does not see the backing image"
    );
    vm.succeed("echo changed-in-guest | dd of=/dev/vda conv=fsync 2>/dev/null")?;
    ensure!(
        vm.succeed("head -c 16 /dev/vda")? == "changed-in-guest",
        "the guest write was lost"
    );
    ensure!(
        std::fs::read(&backing)? == bytes,
        "the backing image was modified"
    );

    // Forwarded ports: an open one, a closed one, HTTP.
    let web = vm.host_port(80);
    vm.wait_for_open_port(web, Duration::from_secs(10))?;
    ensure!(
        !super::port_is_open(vm.host_port(81)),
        "closed guest port 81 looks open"
    );
    let (status, body) = vm.http_get(web, "/index.html")?;
    ensure!(
        status == 200 && body.contains("nodows fixture page"),
        "http {status} {body:?}"
    );

    // The console can be written to and is captured.
    let mark = vm.console_mark();
    vm.succeed("echo console-sentinel > /dev/console")?;
    vm.wait_for_console_text_since(mark, "console-sentinel", Duration::from_secs(10))?;

    // A timeout fails with the serial log tail, not a hang.
    let error = vm
        .wait_for_console_text("text that never appears", Duration::from_millis(300))
        .expect_err("a wait for absent text must fail");
    let message = format!("{error:#}");
    ensure!(
        message.contains("timed out")
            && message.contains("serial.log")
            && message.contains("nodows: ready"),
        "timeout message lacks the log tail: {message}"
    );

    // Power off from the guest: QEMU exits by itself.
    vm.send_command("poweroff -f")?;
    let status = vm.wait_for_exit(Duration::from_secs(30))?;
    ensure!(status.success(), "qemu exited with {status}");
    Ok(())
}
