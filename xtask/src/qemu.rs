//! The QEMU harness: boots an image (or the harness fixture) and gives tests
//! the verbs of the NixOS test driver: `start`, `wait_for_console_text`,
//! `wait_for_ready`, `wait_for_service`, `wait_for_open_port`, `succeed`,
//! `fail`, `shutdown`.
//!
//! QEMU runs as a child process (std::process, so it can be killed on drop).
//! The serial console is QEMU's stdio: a thread copies it into a log file and
//! a buffer that the waits search. The built image is never written: every
//! boot gets a fresh qcow2 overlay backed by it. The network is QEMU's
//! user-mode network with host forwards bound to 127.0.0.1 only. The test
//! agent (docs/interfaces.md, "The test agent") is reached through a
//! virtio-serial port named `org.nodows.agent` on a unix socket.

pub mod file_server;
pub mod fixture;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Default time for one agent command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How many lines of the serial log a failure shows.
const LOG_TAIL_LINES: usize = 80;
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
pub const AGENT_PORT_NAME: &str = "org.nodows.agent";
/// The id of the empty PCIe root port of `VmConfig::hotplug_port`.
pub const HOTPLUG_PORT: &str = "hotplug0";
const AGENT_EXIT_MARKER: &str = "@@nodows-agent-exit=";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Probe KVM with a tiny guest and fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Auto | Accel::Tcg => "tcg",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    /// The image builder's streamOptimized VMDK output.
    Vmdk,
}

impl DiskFormat {
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }

    pub fn of(path: &Path) -> DiskFormat {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("qcow2") => DiskFormat::Qcow2,
            Some("vmdk") => DiskFormat::Vmdk,
            _ => DiskFormat::Raw,
        }
    }
}

/// The disk of a boot.
#[derive(Clone, Debug)]
pub enum Disk {
    /// A fresh qcow2 overlay backed by this image (never written).
    Fresh { image: PathBuf, format: DiskFormat },
    /// An overlay left by an earlier boot (to boot the same disk again).
    Overlay(PathBuf),
}

/// How the machine boots.
#[derive(Clone, Debug)]
pub enum Firmware {
    /// QEMU loads the kernel and initrd itself (fast, no boot loader).
    DirectKernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// OVMF boots the raw GPT disk as a bare-metal machine would.
    Uefi,
    /// OVMF with Secure Boot enforced (`OVMF_CODE_4M.secboot.fd`, SMM):
    /// `vars` is a copy of a variable store with keys enrolled (Debian's
    /// `OVMF_VARS_4M.snakeoil.fd`, or one made by `virt-fw-vars`).
    UefiSecureBoot { vars: PathBuf },
}

/// OVMF's Secure Boot code (SMM required) and Debian's store with the
/// snakeoil test key enrolled as PK, KEK and db.
pub const OVMF_SECURE_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_SNAKEOIL_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// OVMF's empty 4 MiB variable store, for `virt-fw-vars` to enrol keys into.
pub const OVMF_EMPTY_VARS_4M: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A copy of OVMF's empty 4 MiB store with `cert` as PK, KEK and db and
/// Secure Boot on, made by `virt-fw-vars` (PyPI's virt-firmware).
pub fn enrol_secure_boot_key(cert: &Path, output: &Path) -> anyhow::Result<()> {
    /// The owner GUID of the enrolled certificate (any GUID does).
    const OWNER: &str = "6c9b4a4e-32f1-4e26-9a0f-0b7d5a1d3e11";
    let _ = std::fs::remove_file(output);
    let result = Command::new("virt-fw-vars")
        .args(["--input", OVMF_EMPTY_VARS_4M, "--output"])
        .arg(output)
        .args(["--set-pk", OWNER])
        .arg(cert)
        .args(["--add-kek", OWNER])
        .arg(cert)
        .args(["--add-db", OWNER])
        .arg(cert)
        .arg("--secure-boot")
        .output()
        .context("running virt-fw-vars (pip install virt-firmware; .ci/run does)")?;
    if !result.status.success() {
        bail!(
            "virt-fw-vars failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(())
}

/// The certificate of the per-checkout Secure Boot test key (made by the
/// first verified image build).
pub fn secure_boot_test_cert() -> anyhow::Result<PathBuf> {
    let cert = target_dir()?.join("nodows-keys/secureboot-test.crt");
    if !cert.is_file() {
        bail!(
            "{} is missing: build a verified image (e.g. --profile production) with the test key first",
            cert.display()
        );
    }
    Ok(cert)
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Names the work directory (logs, overlay, sockets).
    pub name: String,
    pub disk: Option<Disk>,
    pub firmware: Firmware,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Guest TCP ports forwarded from free host ports on 127.0.0.1.
    pub forward_tcp: Vec<u16>,
    /// Forwards from fixed host ports on 127.0.0.1 (`cargo xtask boot --forward`).
    pub forwards: Vec<Forward>,
    /// Adds the virtio-serial port of the test agent.
    pub agent: bool,
    /// Private links to other machines (a second, third... NIC each).
    pub links: Vec<Link>,
    /// An empty PCIe root port (`HOTPLUG_PORT`) that `Vm::hotplug_nic`
    /// plugs a NIC into (q35 hot-plugs only below a root port).
    pub hotplug_port: bool,
    /// The SMBIOS system serial (`-smbios type=1,serial=`), which an
    /// appliance without `nodows.server=` takes as its server id.
    pub smbios_serial: Option<String>,
    /// Where the work directory is created.
    pub work_root: PathBuf,
    /// QEMU may outlive this process (`Vm::keep_running`): it runs in a
    /// session of its own and writes the serial console to `serial.log`,
    /// which the waits follow; the console takes no input.
    pub detached: bool,
}

/// A forward from a fixed port of the host's 127.0.0.1 to a guest port,
/// TCP or UDP: `[tcp:|udp:]HOST:GUEST` (QEMU's `hostfwd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    pub host: u16,
    pub guest: u16,
}

impl Forward {
    /// `HOST:GUEST`, `tcp:HOST:GUEST` or `udp:HOST:GUEST`; ports 1-65535.
    pub fn parse(text: &str) -> Result<Forward, String> {
        let (udp, ports) = match text.split_once(':') {
            Some(("udp", rest)) => (true, rest),
            Some(("tcp", rest)) => (false, rest),
            _ => (false, text),
        };
        let port = |word: &str| word.parse::<u16>().ok().filter(|port| *port > 0);
        match ports.split_once(':').map(|(host, guest)| (port(host), port(guest))) {
            Some((Some(host), Some(guest))) => Ok(Forward { udp, host, guest }),
            _ => Err(format!(
                "--forward {text}: expected [tcp:|udp:]HOST_PORT:GUEST_PORT, e.g. udp:5353:53 or 8080:80"
            )),
        }
    }

    fn hostfwd(&self) -> String {
        let protocol = if self.udp { "udp" } else { "tcp" };
        format!(
            ",hostfwd={protocol}:127.0.0.1:{}-:{}",
            self.host, self.guest
        )
    }
}

/// One end of a private Ethernet link between two machines: QEMU's `dgram`
/// netdev, a UDP tunnel between two ports of 127.0.0.1, so the link's
/// addresses exist only inside it and either end can die and come back.
/// The guest's NIC reaches the tunnel through a QEMU hub: `cut_link` takes
/// the tunnel down behind the hub (`set_link ID off` on the netdev), so the
/// guest keeps its carrier and sees a network partition, not a pulled cable.
#[derive(Clone, Debug)]
pub struct Link {
    /// The netdev's id, which `Vm::cut_link` and `Vm::restore_link` take.
    pub id: String,
    pub local_port: u16,
    pub remote_port: u16,
    /// The NIC's MAC address (distinct per end: both sides share the segment).
    pub mac: String,
}

impl Link {
    /// The two ends of a new link `id` (ports chosen free on 127.0.0.1);
    /// `number` (0-255) goes into both MAC addresses.
    pub fn pair(id: &str, number: u8) -> anyhow::Result<(Link, Link)> {
        let (first, second) = (free_udp_port()?, free_udp_port()?);
        let end = |local_port, remote_port, side: u8| Link {
            id: id.to_string(),
            local_port,
            remote_port,
            mac: format!("52:54:00:99:{number:02x}:{side:02x}"),
        };
        Ok((end(first, second, 1), end(second, first, 2)))
    }
}

impl VmConfig {
    pub fn new(name: &str, firmware: Firmware, work_root: &Path) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            disk: None,
            firmware,
            accel: Accel::Auto,
            memory_mib: 512,
            cpus: 1,
            forward_tcp: Vec::new(),
            forwards: Vec::new(),
            agent: true,
            links: Vec::new(),
            hotplug_port: false,
            smbios_serial: None,
            work_root: work_root.to_path_buf(),
            detached: false,
        }
    }
}

/// Text the console is searched for: a substring or a regular expression.
#[derive(Clone, Debug)]
pub enum Pattern {
    Text(String),
    Regex(regex_lite::Regex),
    /// A line that begins with the text, also the unfinished last line (a
    /// prompt such as `host login: `, not the same words inside a message).
    LineStart(String),
}

impl Pattern {
    pub fn regex(pattern: &str) -> Pattern {
        Pattern::Regex(regex_lite::Regex::new(pattern).expect("a valid regular expression"))
    }

    /// Whether one line (without its newline) matches.
    pub fn matches(&self, line: &str) -> bool {
        match self {
            Pattern::Text(needle) => line.contains(needle.as_str()),
            Pattern::Regex(regex) => regex.is_match(line),
            Pattern::LineStart(prefix) => line.starts_with(prefix.as_str()),
        }
    }

    /// The first line that matches. A regex sees complete lines only (so
    /// `$` and captured values are whole); a substring also matches the
    /// unfinished last line (a prompt such as `login: `).
    fn find_line<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n') || !matches!(self, Pattern::Regex(_)))
            .map(|line| line.trim_end_matches('\n').trim_end_matches('\r'))
            .find(|line| self.matches(line))
    }
}

impl From<&str> for Pattern {
    fn from(text: &str) -> Pattern {
        Pattern::Text(text.to_string())
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Text(text) => write!(f, "`{text}`"),
            Pattern::Regex(regex) => write!(f, "/{}/", regex.as_str()),
            Pattern::LineStart(prefix) => write!(f, "a line beginning `{prefix}`"),
        }
    }
}

#[derive(Default)]
struct ConsoleState {
    bytes: Vec<u8>,
    closed: bool,
}

/// The serial console as captured so far.
#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

/// A running QEMU. Killed on drop; its work directory (serial log, QEMU's
/// stderr, overlay) stays for inspection.
pub struct Vm {
    name: String,
    work_dir: PathBuf,
    serial_log: PathBuf,
    qemu_stderr: PathBuf,
    overlay: Option<PathBuf>,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    reader: Option<std::thread::JoinHandle<()>>,
    forwards: Vec<(u16, u16)>,
    agent_socket: Option<PathBuf>,
    agent: Option<UnixStream>,
    detached: Vec<UnixStream>,
    qmp_socket: Option<PathBuf>,
    exit_status: Option<ExitStatus>,
    started: Instant,
    /// Set by `keep_running`: dropping the machine leaves QEMU running.
    kept: bool,
}

/// Fails with the name of the package to install when QEMU is missing.
pub fn require_qemu() -> anyhow::Result<()> {
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ] {
        if find_program(program).is_none() {
            bail!(
                "{program} is not installed: run `apt-get install --yes --no-install-recommends {package}` as root"
            );
        }
    }
    Ok(())
}

/// Installs QEMU with apt when it is missing and we are root; otherwise names it.
pub fn ensure_qemu_installed() -> anyhow::Result<()> {
    if require_qemu().is_ok() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let packages = qemu_packages(&candidate_version("qemu-system-x86"));
        eprintln!(
            "nodows: installing QEMU with apt-get install {}",
            packages.join(" ")
        );
        let status = Command::new("apt-get")
            .args([
                "install",
                "--yes",
                "--no-install-recommends",
                "--allow-downgrades",
            ])
            .args(&packages)
            .status()
            .context("running apt-get install")?;
        if !status.success() {
            bail!("apt-get install {} failed ({status})", packages.join(" "));
        }
    }
    require_qemu()
}

/// apt's candidate version of a package, if it has one.
fn candidate_version(package: &str) -> Option<String> {
    let output = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate: ").map(str::to_owned))
        .filter(|version| version != "(none)")
}

/// The QEMU packages to install. qemu-utils is pinned to qemu-system-x86's
/// version: a backported qemu-utils (seen on these machines) breaks the
/// release's qemu-system-common, and apt would rather remove qemu-img.
fn qemu_packages(system_version: &Option<String>) -> Vec<String> {
    let utils = match system_version {
        Some(version) => format!("qemu-utils={version}"),
        None => "qemu-utils".to_owned(),
    };
    vec!["qemu-system-x86".to_owned(), utils, "ovmf".to_owned()]
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Resolves `auto` once per process: KVM when a tiny guest runs under it, TCG otherwise.
/// The probe guest is `kernel` (it must print its banner within seconds) or,
/// without one, a boot sector that writes to the serial port.
pub fn resolve_accel(accel: Accel, kernel: Option<&Path>) -> Accel {
    static PROBED: OnceLock<Accel> = OnceLock::new();
    match accel {
        Accel::Kvm | Accel::Tcg => accel,
        Accel::Auto => *PROBED.get_or_init(|| {
            if std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_err()
            {
                eprintln!("nodows: /dev/kvm is not usable, using tcg (slower)");
                return Accel::Tcg;
            }
            match probe(Accel::Kvm, kernel, Duration::from_secs(5)) {
                Ok(()) => Accel::Kvm,
                Err(error) => {
                    eprintln!("nodows: kvm does not work here ({error}), using tcg (slower)");
                    Accel::Tcg
                }
            }
        }),
    }
}

/// Runs the probe guest under `accel`; Ok when it finished in time.
pub fn probe(accel: Accel, kernel: Option<&Path>, timeout: Duration) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("nodows-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut command = Command::new("qemu-system-x86_64");
    command.args(["-accel", accel.qemu_name(), "-m", "128", "-display", "none"]);
    command.args([
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    let expected = match kernel {
        Some(kernel) => {
            // No root file system: the kernel panics and, with panic=-1 and
            // -no-reboot, QEMU exits.
            command.arg("-kernel").arg(kernel);
            command.args(["-append", "console=ttyS0 panic=-1 loglevel=4"]);
            "Kernel panic"
        }
        None => {
            let boot_sector = dir.join("probe.img");
            std::fs::write(&boot_sector, probe_boot_sector())?;
            command.args([
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-drive",
            ]);
            command.arg(format!(
                "file={},format=raw,if=floppy",
                boot_sector.display()
            ));
            "K"
        }
    };
    let output_path = dir.join("serial");
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output_path)?)
        .stderr(Stdio::null());
    let mut child = command.spawn().context("starting qemu-system-x86_64")?;
    let deadline = Instant::now() + timeout;
    let finished = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read(&output_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    if !finished {
        bail!(
            "the probe guest did not finish within {}s",
            timeout.as_secs()
        );
    }
    if !String::from_utf8_lossy(&output).contains(expected) {
        bail!("the probe guest printed nothing");
    }
    Ok(())
}

/// A boot sector that writes "K\n" to COM1 and exits through isa-debug-exit.
fn probe_boot_sector() -> Vec<u8> {
    let code: [u8; 18] = [
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'K', 0xEE, // mov al, 'K'; out dx, al
        0xB0, b'\n', 0xEE, // mov al, '\n'; out dx, al
        0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xB0, 0x00, 0xEE, // mov al, 0; out dx, al (QEMU exits)
        0xF4, 0xEB, 0xFD, // hlt; jmp hlt
    ];
    let mut sector = code.to_vec();
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xAA]);
    sector
}

/// The workspace root (the xtask lives in `xtask/`).
/// Refuses to run an xtask binary that was built from another checkout.
/// With one CARGO_TARGET_DIR shared by two checkouts, `cargo xtask` in the
/// second may run the first one's binary (cargo does not rebuild a binary
/// another workspace overwrote), which would build the other tree;
/// `cargo run` says which checkout it runs for in CARGO_MANIFEST_DIR.
pub fn check_workspace() -> anyhow::Result<()> {
    let Some(running_for) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return Ok(());
    };
    let built_for = Path::new(env!("CARGO_MANIFEST_DIR"));
    let canonical = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if canonical(Path::new(&running_for)) == canonical(built_for) {
        return Ok(());
    }
    Err(anyhow::Error::new(crate::image::BadInput(format!(
        "this xtask binary was built from {} but cargo runs it for {} (a CARGO_TARGET_DIR shared by two checkouts); rebuild it here with `touch xtask/src/main.rs && cargo xtask ...`, or give each checkout its own CARGO_TARGET_DIR",
        built_for.display(),
        Path::new(&running_for).display()
    ))))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the xtask is one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, as `cargo metadata` says (honours CARGO_TARGET_DIR).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    static TARGET: OnceLock<PathBuf> = OnceLock::new();
    if let Some(target) = TARGET.get() {
        return Ok(target.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let target = PathBuf::from(
        metadata["target_directory"]
            .as_str()
            .context("cargo metadata printed no target_directory")?,
    );
    Ok(TARGET.get_or_init(|| target).clone())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    let socket =
        std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port on 127.0.0.1")?;
    Ok(socket.local_addr()?.port())
}

/// Creates a qcow2 overlay of `image` at `overlay`.
pub fn create_overlay(image: &Path, format: DiskFormat, overlay: &Path) -> anyhow::Result<()> {
    let image = std::fs::canonicalize(image)
        .with_context(|| format!("{}: no such image", image.display()))?;
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&image)
        .args(["-F", format.name()])
        .arg(overlay)
        .output()
        .context("running qemu-img create")?;
    if !output.status.success() {
        bail!(
            "qemu-img create of an overlay of {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The unix sockets of a machine: the test agent's port and QMP.
#[derive(Clone, Copy, Default)]
struct Sockets<'a> {
    agent: Option<&'a Path>,
    qmp: Option<&'a Path>,
}

/// The QEMU arguments of a boot, for tests (`-serial` and the work files included).
fn qemu_args(
    config: &VmConfig,
    accel: Accel,
    work_dir: &Path,
    overlay: Option<&Path>,
    forwards: &[(u16, u16)],
    sockets: Sockets,
    interactive: bool,
) -> anyhow::Result<Vec<String>> {
    let Sockets {
        agent: agent_socket,
        qmp: qmp_socket,
    } = sockets;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|item| item.to_string()));
    push(&[
        "-name",
        &config.name,
        "-machine",
        if matches!(config.firmware, Firmware::UefiSecureBoot { .. }) {
            "q35,smm=on"
        } else {
            "q35"
        },
        "-accel",
        accel.qemu_name(),
    ]);
    push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
    push(&[
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    if interactive {
        // Ctrl-a x quits, Ctrl-a c switches to the monitor.
        push(&["-serial", "mon:stdio"]);
    } else {
        push(&["-serial", "stdio", "-monitor", "none"]);
    }
    if let Some(socket) = qmp_socket {
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", socket.display()),
        ]);
    }
    match &config.firmware {
        Firmware::DirectKernel {
            kernel,
            initrd,
            cmdline,
        } => {
            push(&["-kernel", &kernel.display().to_string()]);
            if let Some(initrd) = initrd {
                push(&["-initrd", &initrd.display().to_string()]);
            }
            push(&["-append", cmdline]);
        }
        Firmware::Uefi => {
            let vars = work_dir.join("OVMF_VARS.fd");
            std::fs::copy(OVMF_VARS, &vars)
                .with_context(|| format!("{OVMF_VARS}: cannot copy (install the ovmf package)"))?;
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            ]);
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        Firmware::UefiSecureBoot { vars: enrolled } => {
            let vars = work_dir.join("OVMF_VARS_4M.fd");
            std::fs::copy(enrolled, &vars)
                .with_context(|| format!("{}: cannot copy", enrolled.display()))?;
            // The variable store is only writable from SMM: enforcement holds.
            push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_SECURE_CODE}"),
            ]);
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
    }
    if let Some(overlay) = overlay {
        push(&[
            "-drive",
            &format!("file={},format=qcow2,if=virtio", overlay.display()),
        ]);
    }
    let mut netdev = "user,id=net0".to_string();
    for (guest, host) in forwards {
        write!(netdev, ",hostfwd=tcp:127.0.0.1:{host}-:{guest}").expect("writing to a String");
    }
    for forward in &config.forwards {
        netdev.push_str(&forward.hostfwd());
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
    if let Some(serial) = &config.smbios_serial {
        push(&["-smbios", &format!("type=1,serial={serial}")]);
    }
    // Each link: tunnel <-> hub <-> NIC (eth1, eth2... in the guest).
    for (hub, link) in config.links.iter().enumerate() {
        let id = &link.id;
        push(&[
            "-netdev",
            &format!(
                "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                link.local_port, link.remote_port
            ),
        ]);
        push(&[
            "-netdev",
            &format!("hubport,id={id}-uplink,hubid={hub},netdev={id}"),
        ]);
        push(&["-netdev", &format!("hubport,id={id}-nic,hubid={hub}")]);
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev={id}-nic,mac={}", link.mac),
        ]);
    }
    if config.hotplug_port {
        push(&[
            "-device",
            &format!("pcie-root-port,id={HOTPLUG_PORT},chassis=1"),
        ]);
    }
    if let Some(socket) = agent_socket {
        push(&["-device", "virtio-serial-pci,id=virtio-serial0"]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=agent,path={},server=on,wait=off",
                socket.display()
            ),
        ]);
        push(&[
            "-device",
            &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
        ]);
    }
    push(&["-device", "virtio-rng-pci"]);
    Ok(args)
}

/// Boots interactively: the serial console on this terminal until QEMU
/// exits. `on_started` gets QEMU's process id and the work directory once
/// QEMU runs.
pub fn run_interactive(
    config: &VmConfig,
    on_started: &mut dyn FnMut(u32, &Path),
) -> anyhow::Result<ExitStatus> {
    let accel = resolve_accel(config.accel, kernel_of(&config.firmware));
    let work_dir = make_work_dir(&config.work_root, &config.name)?;
    let overlay = prepare_disk(config, &work_dir)?;
    let forwards = config
        .forward_tcp
        .iter()
        .map(|guest| Ok((*guest, free_port()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let agent_socket = config.agent.then(|| work_dir.join("agent.sock"));
    let args = qemu_args(
        config,
        accel,
        &work_dir,
        overlay.as_deref(),
        &forwards,
        Sockets {
            agent: agent_socket.as_deref(),
            qmp: None,
        },
        true,
    )?;
    for (guest, host) in &forwards {
        eprintln!("nodows: guest port {guest} is 127.0.0.1:{host}");
    }
    for Forward { udp, host, guest } in &config.forwards {
        let protocol = if *udp { "udp" } else { "tcp" };
        eprintln!("nodows: guest {protocol} port {guest} is 127.0.0.1:{host}");
    }
    eprintln!(
        "nodows: booting {} with {} (Ctrl-a x quits)",
        config.name,
        accel.qemu_name()
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    on_started(child.id(), &work_dir);
    child.wait().context("waiting for qemu-system-x86_64")
}

fn kernel_of(firmware: &Firmware) -> Option<&Path> {
    match firmware {
        Firmware::DirectKernel { kernel, .. } => Some(kernel),
        Firmware::Uefi | Firmware::UefiSecureBoot { .. } => None,
    }
}

fn make_work_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("{}: cannot create", root.display()))?;
    for attempt in 0.. {
        let candidate = if attempt == 0 {
            root.join(name)
        } else {
            root.join(format!("{name}.{attempt}"))
        };
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("{}: cannot create", candidate.display()))
            }
        }
    }
    unreachable!("the loop returns")
}

fn prepare_disk(config: &VmConfig, work_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    match &config.disk {
        None => Ok(None),
        Some(Disk::Overlay(path)) => Ok(Some(path.clone())),
        Some(Disk::Fresh { image, format }) => {
            let overlay = work_dir.join("disk.qcow2");
            create_overlay(image, *format, &overlay)?;
            Ok(Some(overlay))
        }
    }
}

impl Vm {
    /// Starts QEMU (the NixOS driver's `start`).
    pub fn start(config: &VmConfig) -> anyhow::Result<Vm> {
        require_qemu()?;
        let accel = resolve_accel(config.accel, kernel_of(&config.firmware));
        let work_dir = make_work_dir(&config.work_root, &config.name)?;
        let overlay = prepare_disk(config, &work_dir)?;
        let forwards = config
            .forward_tcp
            .iter()
            .map(|guest| Ok((*guest, free_port()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let agent_socket = config.agent.then(|| work_dir.join("agent.sock"));
        let qmp_socket = work_dir.join("qmp.sock");
        let args = qemu_args(
            config,
            accel,
            &work_dir,
            overlay.as_deref(),
            &forwards,
            Sockets {
                agent: agent_socket.as_deref(),
                qmp: Some(&qmp_socket),
            },
            false,
        )?;
        let serial_log = work_dir.join("serial.log");
        let qemu_stderr = work_dir.join("qemu.stderr");
        std::fs::write(work_dir.join("qemu.args"), args.join("\n") + "\n")?;
        let log = std::fs::File::create(&serial_log)
            .with_context(|| format!("{}: cannot create", serial_log.display()))?;
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(&args)
            .stderr(std::fs::File::create(&qemu_stderr)?);
        // A detached QEMU's console is read back from the log it writes.
        let mut log_reader = None;
        if config.detached {
            log_reader = Some(
                std::fs::File::open(&serial_log)
                    .with_context(|| format!("{}: cannot open", serial_log.display()))?,
            );
            command.stdin(Stdio::null()).stdout(log.try_clone()?);
            // A session of its own: no Ctrl-C or hangup of this terminal reaches it.
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                command.pre_exec(|| match libc::setsid() {
                    -1 => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                });
            }
        } else {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
        }
        let started = Instant::now();
        let mut child = command.spawn().context("starting qemu-system-x86_64")?;
        let stdin = child.stdin.take();
        let console = Arc::new(Console::default());
        let reader = match log_reader {
            Some(log_reader) => {
                copy_console(log_reader, Arc::clone(&console), None, Some(child.id()))
            }
            None => {
                let stdout = child.stdout.take().expect("stdout is piped");
                copy_console(stdout, Arc::clone(&console), Some(log), None)
            }
        };
        Ok(Vm {
            name: config.name.clone(),
            work_dir,
            serial_log,
            qemu_stderr,
            overlay,
            child,
            stdin,
            console,
            reader: Some(reader),
            forwards,
            agent_socket,
            agent: None,
            detached: Vec::new(),
            qmp_socket: Some(qmp_socket),
            exit_status: None,
            started,
            kept: false,
        })
    }

    /// The unix socket of the test agent's port, if the machine has one.
    pub fn agent_socket(&self) -> Option<&Path> {
        self.agent_socket.as_deref()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets QEMU run on after this machine is dropped (and this process
    /// exits); only for a `VmConfig::detached` machine, whose console does
    /// not depend on this process.
    pub fn keep_running(&mut self) {
        self.kept = true;
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The qcow2 overlay of this boot, to boot the same disk again.
    pub fn overlay(&self) -> Option<&Path> {
        self.overlay.as_deref()
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The host port (on 127.0.0.1) that forwards to `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> u16 {
        self.forwards
            .iter()
            .find(|(guest, _)| *guest == guest_port)
            .map(|(_, host)| *host)
            .unwrap_or_else(|| panic!("guest port {guest_port} is not forwarded"))
    }

    /// Everything the serial console printed so far.
    pub fn console_text(&self) -> String {
        let state = self.console.state.lock().expect("console lock");
        String::from_utf8_lossy(&state.bytes).into_owned()
    }

    /// A position in the console output, for `wait_for_console_text_since`.
    pub fn console_mark(&self) -> usize {
        self.console.state.lock().expect("console lock").bytes.len()
    }

    /// Writes to the serial console (as typed on it).
    pub fn send_console(&mut self, text: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the serial console is closed")?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for a console line matching `pattern` anywhere in the output; returns the line.
    pub fn wait_for_console_text(
        &mut self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.wait_for_console_text_since(0, pattern, timeout)
    }

    /// Waits for a console line matching `pattern` printed after `mark`.
    pub fn wait_for_console_text_since(
        &mut self,
        mark: usize,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let pattern = pattern.into();
        let deadline = Instant::now() + timeout;
        let outcome = {
            let mut state = self.console.state.lock().expect("console lock");
            loop {
                let start = mark.min(state.bytes.len());
                // Start at a line boundary so that a whole line is matched.
                let start = state.bytes[..start]
                    .iter()
                    .rposition(|byte| *byte == b'\n')
                    .map_or(0, |i| i + 1);
                let text = String::from_utf8_lossy(&state.bytes[start..]);
                if let Some(line) = pattern.find_line(&text) {
                    break Ok(line.to_string());
                }
                if state.closed {
                    break Err("qemu exited");
                }
                let now = Instant::now();
                if now >= deadline {
                    break Err("timed out");
                }
                state = self
                    .console
                    .changed
                    .wait_timeout(state, deadline - now)
                    .expect("console lock")
                    .0;
            }
        };
        match outcome {
            Ok(line) => Ok(line),
            Err(why) => Err(self.failure(&format!(
                "{why} after {:.1}s waiting for console text {pattern}",
                self.started.elapsed().as_secs_f64()
            ))),
        }
    }

    /// Waits for `nodows: ready` (initd: every service of the mode is up); returns the line.
    pub fn wait_for_ready(&mut self, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_console_text(Pattern::regex(r"^nodows: ready( |$)"), timeout)
    }

    /// Runs `command` in the guest through the agent; returns (exit status, output).
    pub fn execute(&mut self, command: &str, timeout: Duration) -> anyhow::Result<(i32, String)> {
        if command.contains('\n') {
            bail!("agent commands are one line: {command:?}");
        }
        let deadline = Instant::now() + timeout;
        let result = self.execute_until(command, deadline);
        if result.is_err() {
            // Output that arrives later must not be taken for the next command's.
            self.agent = None;
        }
        result.map_err(|error| self.failure(&format!("agent command `{command}`: {error:#}")))
    }

    fn execute_until(&mut self, command: &str, deadline: Instant) -> anyhow::Result<(i32, String)> {
        let socket = self
            .agent_socket
            .clone()
            .context("this machine has no agent port")?;
        let Vm {
            agent,
            child,
            exit_status,
            ..
        } = self;
        let mut check_running = || -> anyhow::Result<()> {
            if let Some(status) = child.try_wait()? {
                *exit_status = Some(status);
                bail!("qemu exited ({status})");
            }
            Ok(())
        };
        agent_exchange(agent, &socket, command, deadline, &mut check_running)
    }

    /// Runs `command` in the guest; fails unless it exits 0. Returns its output.
    pub fn succeed(&mut self, command: &str) -> anyhow::Result<String> {
        let (status, output) = self.execute(command, COMMAND_TIMEOUT)?;
        if status != 0 {
            return Err(self.failure(&format!(
                "`{command}` exited {status}, expected 0; output:\n{output}"
            )));
        }
        Ok(output)
    }

    /// Runs `command` in the guest; fails if it exits 0. Returns its output.
    pub fn fail(&mut self, command: &str) -> anyhow::Result<String> {
        let (status, output) = self.execute(command, COMMAND_TIMEOUT)?;
        if status == 0 {
            return Err(self.failure(&format!(
                "`{command}` exited 0, expected a failure; output:\n{output}"
            )));
        }
        Ok(output)
    }

    /// `initctl status --json` in the guest.
    pub fn service_status(&mut self) -> anyhow::Result<Vec<ServiceStatus>> {
        let output = self.succeed("initctl status --json")?;
        parse_status(&output).map_err(|error| self.failure(&format!("{error:#}")))
    }

    /// Waits until `initctl status --json` says `name` is running; returns its status.
    pub fn wait_for_service(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<ServiceStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (status, output) = self.execute(
                "initctl status --json",
                remaining.max(Duration::from_secs(1)),
            )?;
            let mut last = format!("initctl exited {status}: {output}");
            if status == 0 {
                let services =
                    parse_status(&output).map_err(|error| self.failure(&format!("{error:#}")))?;
                match services.into_iter().find(|service| service.name == name) {
                    Some(service) if service.state == "running" => return Ok(service),
                    Some(service) => last = format!("state {}", service.state),
                    None => last = "not known to initd".to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "timed out after {}s waiting for service {name} to be running (last: {last})",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until something in the guest accepts connections on `host_port`
    /// (a host port of this machine on 127.0.0.1).
    pub fn wait_for_open_port(&mut self, host_port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if port_is_open(host_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "timed out after {}s waiting for 127.0.0.1:{host_port} to open",
                    timeout.as_secs()
                )));
            }
            self.check_running()
                .map_err(|error| self.failure(&format!("{error:#}")))?;
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// An HTTP GET of `path` on the forwarded `host_port`; returns (status code, body).
    pub fn http_get(&mut self, host_port: u16, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(host_port, path).map_err(|error| {
            self.failure(&format!(
                "GET http://127.0.0.1:{host_port}{path}: {error:#}"
            ))
        })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exit_status = Some(status);
            bail!("qemu exited ({status})");
        }
        Ok(())
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exit_status = Some(status);
                self.agent = None;
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(
                    self.failure(&format!("qemu did not exit within {}s", timeout.as_secs()))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Powers the guest off through the agent (`initctl poweroff`) and waits
    /// for QEMU to exit; without an agent QEMU is killed.
    pub fn shutdown(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.exit_status.is_some() {
            return self.wait_for_exit(timeout);
        }
        if self.agent_socket.is_some() {
            self.send_command("initctl poweroff")?;
            self.wait_for_exit(timeout)
        } else {
            self.kill();
            self.wait_for_exit(timeout)
        }
    }

    /// Sends `command` to the agent without waiting for its reply (for
    /// commands that end the guest, such as `initctl poweroff`).
    pub fn send_command(&mut self, command: &str) -> anyhow::Result<()> {
        if command.contains('\n') {
            bail!("agent commands are one line: {command:?}");
        }
        let mut stream = match self.agent.take() {
            Some(stream) => stream,
            None => {
                let socket = self
                    .agent_socket
                    .clone()
                    .context("this machine has no agent port")?;
                UnixStream::connect(&socket)
                    .with_context(|| format!("connecting to {}", socket.display()))?
            }
        };
        stream.write_all(format!("{command}\n").as_bytes())?;
        // The reply is never read: the next command gets a fresh connection;
        // this one stays open until the machine is dropped.
        self.detached.push(stream);
        Ok(())
    }

    /// Runs `command` until it exits 0 (the NixOS driver's
    /// `wait_until_succeeds`); returns its output.
    pub fn wait_until_succeeds(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (status, output) = self.execute(command, remaining.max(Duration::from_secs(5)))?;
            if status == 0 {
                return Ok(output);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "`{command}` did not succeed within {}s; last exit {status}, output:\n{output}",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Powers the machine off abruptly, as a power loss (the NixOS driver's
    /// `crash`): QEMU is killed, the guest gets no chance to shut down.
    pub fn crash(&mut self) {
        self.kill();
    }

    /// Takes the link `id` down between this machine and the rest of it (a
    /// network partition; the guest keeps its carrier, see `Link`).
    pub fn cut_link(&mut self, id: &str) -> anyhow::Result<()> {
        self.set_link(id, false)
    }

    /// Brings the link `id` back up.
    pub fn restore_link(&mut self, id: &str) -> anyhow::Result<()> {
        self.set_link(id, true)
    }

    fn set_link(&mut self, id: &str, up: bool) -> anyhow::Result<()> {
        let command = serde_json::json!({
            "execute": "set_link",
            "arguments": {"name": id, "up": up},
        });
        self.qmp(&command)
            .map(|_| ())
            .map_err(|error| self.failure(&format!("qmp set_link {id} {up}: {error:#}")))
    }

    /// Hot-plugs a virtio NIC (QMP `netdev_add`, `device_add`) into the
    /// machine's hotplug port, on a network of its own: user-mode `net`
    /// (like 10.0.3.0/24) with `restrict=on`, so it reaches nothing outside.
    pub fn hotplug_nic(&mut self, id: &str, mac: &str, net: &str) -> anyhow::Result<()> {
        let netdev = serde_json::json!({
            "execute": "netdev_add",
            "arguments": {"type": "user", "id": id, "net": net, "restrict": true},
        });
        let device = serde_json::json!({
            "execute": "device_add",
            "arguments": {
                "driver": "virtio-net-pci",
                "id": format!("{id}-nic"),
                "netdev": id,
                "bus": HOTPLUG_PORT,
                "mac": mac,
            },
        });
        for command in [netdev, device] {
            self.qmp(&command).map_err(|error| {
                self.failure(&format!("qmp {command}: {error:#} (is hotplug_port set?)"))
            })?;
        }
        Ok(())
    }

    /// Unplugs the NIC `hotplug_nic(id, ..)` plugged (QMP `device_del`; the
    /// guest completes it asynchronously) and removes its network.
    pub fn unplug_nic(&mut self, id: &str) -> anyhow::Result<()> {
        let device =
            serde_json::json!({"execute": "device_del", "arguments": {"id": format!("{id}-nic")}});
        let netdev = serde_json::json!({"execute": "netdev_del", "arguments": {"id": id}});
        for command in [device, netdev] {
            self.qmp(&command)
                .map_err(|error| self.failure(&format!("qmp {command}: {error:#}")))?;
        }
        Ok(())
    }

    /// One QMP command on the machine's QMP socket; returns its `return`.
    pub fn qmp(&mut self, command: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let socket = self
            .qmp_socket
            .clone()
            .context("this machine has no QMP socket")?;
        let stream = UnixStream::connect(&socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = std::io::BufReader::new(stream);
        // The greeting, then capabilities negotiation, then the command.
        let reply =
            |reader: &mut std::io::BufReader<UnixStream>| -> anyhow::Result<serde_json::Value> {
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 {
                        bail!("the QMP socket closed");
                    }
                    let value: serde_json::Value = serde_json::from_str(line.trim())
                        .with_context(|| format!("QMP sent invalid json: {line}"))?;
                    if let Some(result) = value.get("return") {
                        return Ok(result.clone());
                    }
                    if let Some(error) = value.get("error") {
                        bail!("QMP error: {error}");
                    }
                    if value.get("QMP").is_some() {
                        return Ok(value);
                    }
                    // Asynchronous events are skipped.
                }
            };
        reply(&mut reader)?;
        writeln!(
            writer,
            "{}",
            serde_json::json!({"execute": "qmp_capabilities"})
        )?;
        reply(&mut reader)?;
        writeln!(writer, "{command}")?;
        reply(&mut reader)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit_status = Some(status);
        }
        self.agent = None;
        self.stdin = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// An error that says what failed, with the tail of the serial log and its path.
    pub fn failure(&self, what: &str) -> anyhow::Error {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        let stderr = std::fs::read_to_string(&self.qemu_stderr).unwrap_or_default();
        let mut message = format!("{}: {what}\n", self.name);
        let _ = writeln!(
            message,
            "--- last {} lines of the serial log {} ---",
            tail.len(),
            self.serial_log.display()
        );
        for line in tail {
            let _ = writeln!(message, "{}", line.trim_end_matches('\r'));
        }
        let _ = writeln!(
            message,
            "--- end of the serial log {} ---",
            self.serial_log.display()
        );
        if !stderr.trim().is_empty() {
            let _ = writeln!(
                message,
                "qemu stderr ({}):\n{}",
                self.qemu_stderr.display(),
                stderr.trim_end()
            );
        }
        anyhow::anyhow!(message)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit_status.is_none() && !self.kept {
            self.kill();
        }
    }
}

/// One entry of `initctl status --json`.
#[derive(Clone, Debug)]
pub struct ServiceStatus {
    pub name: String,
    pub state: String,
    pub pid: Option<i64>,
    pub restarts: u64,
}

pub fn parse_status(output: &str) -> anyhow::Result<Vec<ServiceStatus>> {
    let value: serde_json::Value = serde_json::from_str(output.trim())
        .with_context(|| format!("initctl status --json printed invalid json: {output}"))?;
    let entries = value
        .as_array()
        .with_context(|| format!("initctl status --json printed no array: {output}"))?;
    entries
        .iter()
        .map(|entry| {
            let name = entry["name"]
                .as_str()
                .context("a status entry has no name")?;
            Ok(ServiceStatus {
                name: name.to_string(),
                state: entry["state"].as_str().unwrap_or_default().to_string(),
                pid: entry["pid"].as_i64(),
                restarts: entry["restarts"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// Copies the serial console from `source` into `console` (and `copy`)
/// until end of file; with `follow`, `source` is a log file that QEMU
/// (that process id) still writes, read on until the process is gone.
fn copy_console(
    mut source: impl Read + Send + 'static,
    console: Arc<Console>,
    mut copy: Option<std::fs::File>,
    follow: Option<u32>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        let mut exited = false;
        loop {
            let count = match source.read(&mut buffer) {
                Ok(0) => match follow {
                    // One more read after the exit takes its last words.
                    Some(pid) if !exited => {
                        exited = !process_is_running(pid);
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    _ => break,
                },
                Err(_) => break,
                Ok(count) => count,
            };
            if let Some(copy) = copy.as_mut() {
                let _ = copy.write_all(&buffer[..count]);
                let _ = copy.flush();
            }
            let mut state = console.state.lock().expect("console lock");
            state.bytes.extend_from_slice(&buffer[..count]);
            console.changed.notify_all();
        }
        let mut state = console.state.lock().expect("console lock");
        state.closed = true;
        console.changed.notify_all();
    })
}

/// The process exists and has not exited (a zombie, exited but not yet
/// reaped by its parent, has not the state `Z` in `/proc/PID/stat`).
pub fn process_is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X"))
}

/// Runs `command` through the test agent's socket: connects when `agent`
/// holds no connection yet (retrying until `deadline` while the port is not
/// there), writes the line and reads up to the exit line. `check_running`
/// fails when the machine is gone. On success the connection stays in
/// `agent` for the next command.
pub fn agent_exchange(
    agent: &mut Option<UnixStream>,
    socket: &Path,
    command: &str,
    deadline: Instant,
    check_running: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(i32, String)> {
    let mut stream = match agent.take() {
        Some(stream) => stream,
        None => loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(error) => {
                    if Instant::now() >= deadline {
                        return Err(error).context(format!("connecting to {}", socket.display()));
                    }
                    check_running()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        },
    };
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut received: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some((status, output)) = parse_agent_reply(&received) {
            *agent = Some(stream);
            return Ok((status, output));
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "timed out; received so far: {:?}",
                String::from_utf8_lossy(&received)
            );
        }
        stream.set_read_timeout(Some((deadline - now).min(Duration::from_millis(500))))?;
        match stream.read(&mut buffer) {
            Ok(0) => bail!("the agent connection closed (qemu exited?)"),
            Ok(count) => received.extend_from_slice(&buffer[..count]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                check_running()?
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// (exit status, output) once the reply is complete.
fn parse_agent_reply(received: &[u8]) -> Option<(i32, String)> {
    let text = String::from_utf8_lossy(received);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        if let Some(rest) = line.trim_end().strip_prefix(AGENT_EXIT_MARKER) {
            if let Some(number) = rest.strip_suffix("@@") {
                if let Ok(status) = number.parse() {
                    let output = text[..offset].strip_suffix('\n').unwrap_or(&text[..offset]);
                    return Some((status, output.replace('\r', "")));
                }
            }
        }
        offset += line.len();
    }
    None
}

/// Open: QEMU's user network accepts every connection on a forwarded port
/// and closes it at once when nothing listens in the guest; an open port
/// keeps the connection (or sends a banner).
fn port_is_open(host_port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", host_port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(700)));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(error) => matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A minimal HTTP/1.0 GET; returns (status code, body).
pub fn http_get(host_port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", host_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no complete http response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad http status line: {head}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    /// Guards the systemd reference's boots: its login prompt is the
    /// unfinished last line until something else prints (a regex on whole
    /// lines waited out its whole timeout), or kernel messages follow it.
    #[test]
    fn a_line_start_pattern_sees_the_unfinished_prompt_but_not_words_inside_a_line() {
        let prompt = super::Pattern::LineStart("nodows-ref login: ".to_owned());
        assert!(prompt.find_line("boot\nnodows-ref login: ").is_some());
        assert!(prompt
            .find_line("nodows-ref login: [   73.1] kvm: Nested Virtualization\n")
            .is_some());
        assert!(prompt.find_line("say nodows-ref login: \n").is_none());
    }

    /// Guards the install on machines with a backported qemu-utils: both
    /// QEMU packages must come from one release.
    #[test]
    fn qemu_utils_is_pinned_to_the_system_emulators_version() {
        assert_eq!(
            super::qemu_packages(&Some("1:7.2+dfsg-7+deb12u18+b3".to_owned())),
            [
                "qemu-system-x86",
                "qemu-utils=1:7.2+dfsg-7+deb12u18+b3",
                "ovmf"
            ]
        );
        assert_eq!(
            super::qemu_packages(&None),
            ["qemu-system-x86", "qemu-utils", "ovmf"]
        );
    }

    use super::*;

    #[test]
    fn agent_reply_is_complete_only_with_the_exit_line() {
        assert_eq!(parse_agent_reply(b"hello\n@@nodows-agent-exit=3@@"), None);
        assert_eq!(
            parse_agent_reply(b"hello\n@@nodows-agent-exit=3@@\n"),
            Some((3, "hello".to_string()))
        );
        assert_eq!(
            parse_agent_reply(b"@@nodows-agent-exit=0@@\n"),
            Some((0, String::new()))
        );
        assert_eq!(
            parse_agent_reply(b"a\nb @@nodows-agent-exit=1@@\n@@nodows-agent-exit=0@@\n"),
            Some((0, "a\nb @@nodows-agent-exit=1@@".to_string()))
        );
    }

    #[test]
    fn status_json_is_parsed() {
        let services =
            parse_status(r#"[{"name":"web","state":"running","pid":42,"restarts":1}]"#).unwrap();
        assert_eq!(services[0].name, "web");
        assert_eq!(services[0].pid, Some(42));
        assert_eq!(services[0].restarts, 1);
        assert!(parse_status("not json").is_err());
    }

    #[test]
    fn patterns_match_whole_lines() {
        let text = "booting\r\nnodows: ready mode=test services=5 t=1.84s\r\n";
        assert_eq!(
            Pattern::regex(r"^nodows: ready( |$)").find_line(text),
            Some("nodows: ready mode=test services=5 t=1.84s")
        );
        assert_eq!(Pattern::from("ready").find_line("no\n"), None);
        // An unfinished line is not the ready line yet (regex), but can be a prompt (text).
        assert_eq!(
            Pattern::regex(r"^nodows: ready( |$)").find_line("nodows: ready mode=d"),
            None
        );
        assert_eq!(
            Pattern::from("login: ").find_line("x\nnodows login: "),
            Some("nodows login: ")
        );
    }

    /// Guards the partition verb: the tunnel sits behind a hub, so that
    /// `set_link` on it leaves the guest's NIC (and its carrier) alone; the
    /// two ends cross their ports and differ in MAC address.
    #[test]
    fn a_link_is_a_crossed_udp_tunnel_behind_a_hub() {
        let (first, second) = Link::pair("link0", 7).unwrap();
        assert_eq!(first.local_port, second.remote_port);
        assert_eq!(first.remote_port, second.local_port);
        assert_ne!(first.mac, second.mac);
        let firmware = Firmware::DirectKernel {
            kernel: PathBuf::from("/k"),
            initrd: None,
            cmdline: "console=ttyS0".to_string(),
        };
        let mut config = VmConfig::new("t", firmware, Path::new("/tmp"));
        config.links = vec![first.clone()];
        let args = qemu_args(
            &config,
            Accel::Tcg,
            Path::new("/tmp"),
            None,
            &[],
            Sockets::default(),
            false,
        )
        .unwrap()
        .join(" ");
        assert!(args.contains(&format!(
            "-netdev dgram,id=link0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            first.local_port, first.remote_port
        )), "{args}");
        assert!(
            args.contains("-netdev hubport,id=link0-uplink,hubid=0,netdev=link0"),
            "{args}"
        );
        assert!(
            args.contains("-netdev hubport,id=link0-nic,hubid=0"),
            "{args}"
        );
        assert!(
            args.contains(&format!(
                "-device virtio-net-pci,netdev=link0-nic,mac={}",
                first.mac
            )),
            "{args}"
        );
    }

    /// `--forward`: TCP by default, UDP on request, always on 127.0.0.1;
    /// anything else is refused with an example.
    #[test]
    fn forwards_parse_and_bind_to_loopback_only() {
        assert_eq!(
            Forward::parse("8080:80"),
            Ok(Forward {
                udp: false,
                host: 8080,
                guest: 80
            })
        );
        assert_eq!(
            Forward::parse("udp:5353:53"),
            Ok(Forward {
                udp: true,
                host: 5353,
                guest: 53
            })
        );
        assert!(Forward::parse("tcp:2222:22").is_ok_and(|forward| !forward.udp));
        for bad in ["80", "sctp:1:2", "udp:0:53", "udp:5353:70000", "a:b", ""] {
            let problem = Forward::parse(bad).unwrap_err();
            assert!(problem.contains("e.g. udp:5353:53"), "{bad}: {problem}");
        }
        let firmware = Firmware::DirectKernel {
            kernel: PathBuf::from("/k"),
            initrd: None,
            cmdline: "console=ttyS0".to_string(),
        };
        let mut config = VmConfig::new("t", firmware, Path::new("/tmp"));
        config.forwards = vec![
            Forward::parse("udp:5353:53").unwrap(),
            Forward::parse("8080:80").unwrap(),
        ];
        let args = qemu_args(
            &config,
            Accel::Tcg,
            Path::new("/tmp"),
            None,
            &[(22, 40022)],
            Sockets::default(),
            false,
        )
        .unwrap()
        .join(" ");
        assert!(
            args.contains("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:127.0.0.1:8080-:80 "),
            "{args}"
        );
    }

    #[test]
    fn probe_boot_sector_is_a_boot_sector() {
        let sector = probe_boot_sector();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[510..], &[0x55, 0xAA]);
    }
}
