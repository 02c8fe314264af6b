//! The driver: one poll loop that feeds the supervisor (signals, reaped
//! children, readiness, control requests, time) and carries out its actions.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use servicedef::{Readiness, ServiceDefinition};

use crate::assess::{Assessment, Job, Step};
use crate::group::Groups;
use crate::logfile::ServiceLog;
use crate::protocol::{self, Request};
use crate::supervisor::{Action, Exit, State, Supervisor};
use crate::sys::{self, Shutdown};

mod control;
mod daemonized;
mod events;
mod render;
use control::reply_to;
pub use control::MAX_REQUEST;

/// Command-line settings of `initd`.
#[derive(Debug, Clone)]
pub struct Options {
    pub services: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub mode: Option<String>,
    pub log_dir: Option<PathBuf>,
    pub render_command: PathBuf,
    pub model: PathBuf,
    pub root: PathBuf,
    pub server: Option<String>,
    pub log_max_bytes: u64,
    pub use_cgroups: bool,
    pub pid1: bool,
    /// Variables of initd's environment its children get (`--pass-env`);
    /// otherwise they start from `spawn::defined_environment` alone.
    pub pass_env: Vec<String>,
    /// A/B images: the running slot (`nodows.slot=`) and the time a trial
    /// boot has to get ready (`nodows.trial-timeout=`); see `assess`.
    pub boot_slot: Option<String>,
    pub trial_timeout: Duration,
    /// A render still running after this long is killed (and reported).
    pub render_timeout: Duration,
    /// The fleet watcher's last-good model: rendered from instead of
    /// `model` whenever it exists (PID 1 without --model:
    /// /var/lib/nodows/model.xml).
    pub last_good: Option<PathBuf>,
}

impl Options {
    /// The defaults of docs/interfaces.md (PID 1 in an image).
    pub fn image_defaults() -> Options {
        Options {
            services: PathBuf::from("/etc/nodows/services"),
            socket: PathBuf::from("/run/initd.sock"),
            state: PathBuf::from("/run/nodows"),
            mode: None,
            log_dir: Some(PathBuf::from("/var/log/nodows")),
            render_command: PathBuf::from("/usr/bin/nodows"),
            model: PathBuf::from("/etc/nodows/model.xml"),
            root: PathBuf::from("/"),
            server: None,
            log_max_bytes: 1024 * 1024,
            use_cgroups: true,
            pid1: false,
            pass_env: Vec::new(),
            boot_slot: None,
            trial_timeout: crate::assess::DEFAULT_TRIAL_TIMEOUT,
            render_timeout: Duration::from_secs(120),
            last_good: None,
        }
    }
}

/// Where console lines go: /dev/console (PID 1) or stderr.
pub struct Console {
    fd: RawFd,
}

impl Console {
    pub fn new(pid1: bool) -> Console {
        if pid1 && !sys::fd_is_open(2) {
            // SAFETY: open with a static path.
            let fd = unsafe {
                libc::open(
                    c"/dev/console".as_ptr(),
                    libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                return Console { fd };
            }
        }
        Console { fd: 2 }
    }

    pub fn line(&self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        let _ = sys::write_all(self.fd, line.as_bytes());
    }
}

/// Why a render produced no change set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RenderFailure {
    /// It rendered.
    None,
    /// No renderer to run (configs are baked only, as on FreeBSD).
    NoRenderer,
    /// The renderer ran and failed (bad model for that profile, I/O).
    Refused,
}

enum AfterRender {
    Nothing,
    Boot,
    SwitchMode(String),
    /// A device or timer event whose services' files were rendered first.
    Emit(servicedef::Event),
}

struct RenderJob {
    pid: i32,
    started: Instant,
    /// Killed by initd after `render_timeout`.
    timed_out: bool,
    /// This render is the one initd started to finish a failed render's
    /// journal (it is not retried again).
    retry: bool,
    profile: String,
    stdout: RawFd,
    output: Vec<u8>,
    eof: bool,
    exit: Option<Exit>,
    after: AfterRender,
    client: Option<UnixStream>,
}

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    since: Instant,
}

/// Why a service could not be forked; `transient` for the machine's
/// weather (`spawn::is_transient`), retried after a backoff.
struct SpawnFailure {
    message: String,
    transient: bool,
}

impl SpawnFailure {
    fn new(context: String, error: &std::io::Error) -> SpawnFailure {
        SpawnFailure {
            message: format!("{context}: {error}"),
            transient: crate::spawn::is_transient(error),
        }
    }
}

struct RenderRequest {
    services: Vec<String>,
    profile: String,
    after: AfterRender,
    client: Option<UnixStream>,
    /// Started by initd to finish a failed render's journal.
    retry: bool,
    /// Only finish the journal and report its change set (`initctl render
    /// --applied`: a watcher applied files in process).
    journal_only: bool,
}

/// The renderer's journal inside the root (see crates/render/src/sync.rs):
/// present while an apply is unfinished or its change set not yet acted on.
const RENDER_JOURNAL: &str = "var/lib/nodows/render-journal.json";

pub struct Runtime {
    options: Options,
    /// Services whose crashed main process had its group killed in this
    /// turn's reap; their escapees are killed after the respawn.
    crash_killed: Vec<String>,
    supervisor: Supervisor,
    groups: Groups,
    logs: BTreeMap<String, ServiceLog>,
    notify: BTreeMap<String, RawFd>,
    /// The services of `notify` whose fd is an sd_notify datagram socket,
    /// and its path (`NOTIFY_SOCKET`), removed with it.
    sd_notify: BTreeMap<String, PathBuf>,
    /// Control connections whose request line is not complete yet.
    clients: Vec<Client>,
    /// Children not yet known to have exec'd: pid -> (service, program, pipe).
    exec_pipes: BTreeMap<i32, (String, String, RawFd)>,
    signal_fd: RawFd,
    listener: UnixListener,
    console: Console,
    started: Instant,
    log_dir: PathBuf,
    /// What every child starts from: `spawn::defined_environment`.
    child_env: Vec<(String, String)>,
    /// Children's RLIMIT_NOFILE (`sys::raise_nofile_limit`).
    child_nofile: Option<libc::rlimit>,
    /// accept(2) ran out of file descriptors: the listener is not polled
    /// until then (no busy loop on a level-triggered poll).
    accept_paused_until: Option<Instant>,
    /// The next pause; doubles up to ACCEPT_BACKOFF_MAX, reset by an accept.
    accept_backoff: Duration,
    /// When the last "pausing accepts" line was written.
    accept_logged: Option<Instant>,
    render_job: Option<RenderJob>,
    render_queue: VecDeque<RenderRequest>,
    shutdown: Option<(Shutdown, Instant)>,
    /// Not in a container: PID 1 of the machine.
    machine: bool,
    next_readiness_poll: Instant,
    finished: bool,
    assessment: Option<Assessment>,
    /// The running assessment child: pid, job, its output file.
    assessment_job: Option<(i32, Job, PathBuf)>,
    /// The kernel's uevent socket (`runtime/events.rs`), when a service
    /// starts on a device event.
    uevents: Option<RawFd>,
    timers: crate::timers::Timers,
}

const READINESS_POLL: Duration = Duration::from_millis(50);
/// The open-file hard limit PID 1 of a machine raises itself to.
const NOFILE_FLOOR: u64 = 65536;
/// Control connections open at once; a new one closes the oldest.
pub const MAX_CLIENTS: usize = 64;
/// Connections accepted per turn of the loop.
const ACCEPT_BATCH: usize = 16;
/// A client that has not sent its whole request by then is closed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(20);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

impl Runtime {
    /// Set up everything that may fail before supervising: returns a message
    /// for exit code 2 (bad input) or 1.
    pub fn new(
        options: Options,
        definitions: Vec<ServiceDefinition>,
        mode: String,
        machine: bool,
    ) -> Result<Runtime, (i32, String)> {
        let console = Console::new(options.pid1);
        let log_dir = options
            .log_dir
            .clone()
            .unwrap_or_else(|| options.state.join("log"));
        for directory in [&options.state, &log_dir] {
            std::fs::create_dir_all(directory).map_err(|error| {
                (
                    1,
                    format!("{}: cannot create directory: {error}", directory.display()),
                )
            })?;
        }
        if let Err(error) = sys::set_subreaper() {
            if !options.pid1 {
                console.line(&format!("initd: cannot become a child subreaper: {error}"));
            }
        }
        let signal_fd = sys::install_signal_handlers()
            .map_err(|error| (1, format!("cannot install signal handlers: {error}")))?;
        if let Some(parent) = options.socket.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::remove_file(&options.socket);
        // SAFETY: umask is process-wide; the socket is created 0600.
        let old_umask = unsafe { libc::umask(0o077) };
        let listener = UnixListener::bind(&options.socket);
        // SAFETY: restore the umask.
        unsafe { libc::umask(old_umask) };
        let listener = listener.map_err(|error| {
            (
                1,
                format!("{}: cannot listen: {error}", options.socket.display()),
            )
        })?;
        let _ = std::fs::set_permissions(&options.socket, std::fs::Permissions::from_mode(0o600));
        listener
            .set_nonblocking(true)
            .map_err(|error| (1, format!("{}: {error}", options.socket.display())))?;
        // Out of file descriptors is weather, not death: initd takes all
        // the soft limit allows (as the machine's PID 1 at least
        // NOFILE_FLOOR); its children get the soft limit it was given.
        let child_nofile = match sys::raise_nofile_limit(machine.then_some(NOFILE_FLOOR)) {
            Ok((before, now)) => Some(libc::rlimit {
                rlim_cur: (before as libc::rlim_t).min(now.rlim_max),
                rlim_max: now.rlim_max,
            }),
            Err(error) => {
                console.line(&format!("initd: cannot raise its open-file limit: {error}"));
                None
            }
        };
        let groups = Groups::new(options.use_cgroups);
        // Children get a defined environment, never initd's own (as PID 1
        // the kernel hands it every unknown KEY=value of its command line).
        let child_env = crate::spawn::defined_environment(&options.pass_env);
        console.line(&format!(
            "initd: supervising {} services in mode {mode}; whole-service tracking by {}",
            definitions.len(),
            groups.describe()
        ));
        let timers = events::timers_of(&definitions);
        let wants_devices = events::wants_devices(&definitions);
        let mut runtime = Runtime {
            supervisor: Supervisor::new(definitions, &mode),
            groups,
            logs: BTreeMap::new(),
            notify: BTreeMap::new(),
            sd_notify: BTreeMap::new(),
            clients: Vec::new(),
            exec_pipes: BTreeMap::new(),
            signal_fd,
            listener,
            console,
            started: Instant::now(),
            log_dir,
            child_env,
            child_nofile,
            accept_paused_until: None,
            accept_backoff: ACCEPT_BACKOFF_MIN,
            accept_logged: None,
            render_job: None,
            render_queue: VecDeque::new(),
            shutdown: None,
            machine,
            next_readiness_poll: Instant::now(),
            crash_killed: Vec::new(),
            finished: false,
            assessment: options
                .boot_slot
                .as_deref()
                .map(|slot| Assessment::new(slot, options.trial_timeout)),
            assessment_job: None,
            options,
            uevents: None,
            timers,
        };
        if wants_devices {
            runtime.listen_to_devices_now();
        }
        Ok(runtime)
    }

    /// Run until shutdown. As PID 1 this only returns if reboot(2) failed.
    pub fn run(&mut self) -> i32 {
        self.start_render(RenderRequest {
            services: Vec::new(),
            profile: self.supervisor.mode().to_string(),
            after: AfterRender::Boot,
            client: None,
            retry: false,
            journal_only: false,
        });
        if let Some(assessment) = self.assessment.as_mut() {
            let steps = assessment.boot();
            self.assessment_steps(steps);
        }
        while !self.finished {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.iteration()));
            if result.is_err() {
                self.console.line(
                    "initd: internal error in service handling (panic caught); still running",
                );
            }
        }
        0
    }

    fn iteration(&mut self) {
        self.groups.begin_turn();
        let now = Instant::now();
        let mut deadline = self.supervisor.next_deadline();
        let polling = !self.supervisor.waiting_for_empty().is_empty()
            || self.supervisor.starting().iter().any(|service| {
                matches!(
                    service.definition.ready,
                    Readiness::Tcp { .. } | Readiness::Pidfile { .. }
                ) || (service.pid.is_none()
                    && matches!(service.definition.ready, Readiness::Pidfile { .. }))
            })
            || self.shutdown.is_some();
        if polling {
            let next = self.next_readiness_poll.max(now);
            deadline = Some(deadline.map_or(next, |deadline| deadline.min(next)));
        }
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
        }
        if let Some(until) = self.accept_paused_until {
            deadline = Some(deadline.map_or(until, |deadline| deadline.min(until)));
        }
        // Idle clients are closed on time even when nothing else happens.
        if let Some(oldest) = self.clients.iter().map(|client| client.since).min() {
            let until = oldest + CLIENT_TIMEOUT;
            deadline = Some(deadline.map_or(until, |deadline| deadline.min(until)));
        }
        if let Some(trial) = self.assessment.as_ref().and_then(|a| a.deadline) {
            deadline = Some(deadline.map_or(trial, |deadline| deadline.min(trial)));
        }
        if let Some(job) = self.render_job.as_ref().filter(|job| !job.timed_out) {
            let kill_at = job.started + self.options.render_timeout;
            deadline = Some(deadline.map_or(kill_at, |deadline| deadline.min(kill_at)));
        }
        if let Some(due) = self.timers.next_deadline() {
            deadline = Some(deadline.map_or(due, |deadline| deadline.min(due)));
        }
        let timeout_ms = crate::timers::poll_timeout_ms(now, deadline);
        let mut fds = vec![
            libc::pollfd {
                fd: self.signal_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: if self.accept_paused_until.is_some() {
                    0
                } else {
                    libc::POLLIN
                },
                revents: 0,
            },
        ];
        let log_names: Vec<String> = self.logs.keys().cloned().collect();
        for name in &log_names {
            if let Some(log) = self.logs.get(name) {
                fds.push(libc::pollfd {
                    fd: log.read_fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let notify_names: Vec<String> = self.notify.keys().cloned().collect();
        for name in &notify_names {
            if let Some(fd) = self.notify.get(name) {
                fds.push(libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let exec_pids: Vec<i32> = self.exec_pipes.keys().copied().collect();
        for pid in &exec_pids {
            if let Some((_, _, fd)) = self.exec_pipes.get(pid) {
                fds.push(libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let client_count = self.clients.len();
        for client in &self.clients {
            fds.push(libc::pollfd {
                fd: client.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let render_fd = self
            .render_job
            .as_ref()
            .filter(|job| !job.eof)
            .map(|job| job.stdout);
        if let Some(fd) = render_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let uevent_index = fds.len();
        if let Some(fd) = self.uevents {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Err(error) = sys::poll(&mut fds, timeout_ms) {
            if error.kind() != std::io::ErrorKind::Interrupted {
                self.console.line(&format!("initd: poll: {error}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        if fds[0].revents != 0 {
            self.handle_signals();
        }
        // What poll waited for may have changed the process table.
        self.groups.begin_turn();
        // Reap on every iteration: cheap, and no SIGCHLD can be lost.
        self.reap();
        let mut index = 2;
        for name in &log_names {
            if fds[index].revents != 0 {
                if let Some(log) = self.logs.get_mut(name) {
                    log.drain();
                }
            }
            index += 1;
        }
        for name in &notify_names {
            if fds[index].revents != 0 {
                self.read_notify(name);
            }
            index += 1;
        }
        for pid in &exec_pids {
            if fds[index].revents != 0 {
                self.check_exec(*pid);
            }
            index += 1;
        }
        // Highest index first: read_client may swap_remove.
        let client_start = index;
        for client_index in (0..client_count).rev() {
            if fds[client_start + client_index].revents != 0 {
                self.read_client(client_index);
            }
        }
        index += client_count;
        // Forget clients that never finished their request.
        self.clients
            .retain(|client| client.since.elapsed() < CLIENT_TIMEOUT);
        if render_fd.is_some() && fds[index].revents != 0 {
            self.read_render_output();
        }
        if fds[1].revents & libc::POLLIN != 0 {
            self.accept_clients();
        }
        if fds.get(uevent_index).is_some_and(|fd| fd.revents != 0) {
            self.read_uevents();
        }
        self.fire_timers();
        let now = Instant::now();
        if now >= self.next_readiness_poll {
            self.next_readiness_poll = now + READINESS_POLL;
            self.poll_readiness();
        }
        self.check_empty();
        let actions = self.supervisor.tick(Instant::now());
        self.apply(actions);
        for name in std::mem::take(&mut self.crash_killed) {
            self.groups.kill_escapees(&name);
        }
        self.kill_hung_render();
        self.finish_render();
        if let Some(assessment) = self.assessment.as_mut() {
            let steps = assessment.tick(Instant::now());
            self.assessment_steps(steps);
        }
        self.progress_shutdown();
    }

    // --- boot assessment (A/B images) ---

    fn assessment_steps(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Say(text) => self.say(&text),
                Step::Reboot(text) => {
                    self.say(&text);
                    self.request_shutdown(Shutdown::Reboot);
                }
                Step::Spawn(job) => self.spawn_assessment(job),
            }
        }
    }

    fn spawn_assessment(&mut self, job: Job) {
        let output = self.options.state.join("boot-assessment.out");
        let verb = match job {
            Job::Status => "boot-status",
            Job::Bless => "bless",
        };
        let spawned = std::fs::File::create(&output).and_then(|file| {
            let stderr = file.try_clone()?;
            std::process::Command::new(&self.options.render_command)
                .arg(verb)
                .env_clear()
                .envs(self.child_env.iter().map(|(key, value)| (key, value)))
                .stdin(std::process::Stdio::null())
                .stdout(file)
                .stderr(stderr)
                .spawn()
        });
        match spawned {
            Ok(child) => self.assessment_job = Some((child.id() as i32, job, output)),
            Err(error) => {
                let text = format!(
                    "cannot run {}: {error}",
                    self.options.render_command.display()
                );
                if let Some(assessment) = self.assessment.as_mut() {
                    let steps = assessment.finished(job, 127, &text, Instant::now());
                    self.assessment_steps(steps);
                }
            }
        }
    }

    fn say(&self, text: &str) {
        self.console.line(text);
    }

    // --- signals and children ---

    fn handle_signals(&mut self) {
        let mut buffer = [0u8; 64];
        while let Ok(count) = sys::read(self.signal_fd, &mut buffer) {
            if count == 0 {
                break;
            }
            for signal in buffer[..count].iter().map(|byte| *byte as i32) {
                let request = match signal {
                    libc::SIGTERM | libc::SIGUSR2 => Some(Shutdown::Poweroff),
                    libc::SIGINT => Some(Shutdown::Reboot),
                    libc::SIGUSR1 => Some(Shutdown::Halt),
                    #[cfg(target_os = "linux")]
                    libc::SIGPWR => Some(Shutdown::Poweroff),
                    _ => None,
                };
                if let Some(kind) = request {
                    self.request_shutdown(kind);
                }
            }
        }
    }

    fn reap(&mut self) {
        // A crashed main process (its service still running): without
        // cgroups, SIGKILL its process group while its zombie pins the
        // group number (no stranger can have it), so the respawn needs no
        // /proc scan first; kill_escapees finds the rest after the respawn.
        #[cfg(target_os = "linux")]
        if !self.groups.uses_cgroups() {
            while let Some((pid, exit)) = sys::peek_ended() {
                if self.daemonized(pid, exit) {
                    // Failed and killed whole; credit_exit finds no service.
                } else if let Some(name) = self.supervisor.failing_service(pid, exit) {
                    let _ = sys::kill(-pid, libc::SIGKILL);
                    self.crash_killed.push(name.to_string());
                }
                let Some((reaped, status)) = sys::reap_pid(pid) else {
                    break;
                };
                self.credit_exit(reaped, status);
            }
        }
        while let Some((pid, status)) = sys::reap_one() {
            self.credit_exit(pid, status);
        }
    }

    /// A reaped child: the renderer, a service's main process, or an orphan.
    fn credit_exit(&mut self, pid: i32, status: libc::c_int) {
        let exit = sys::decode_status(status);
        if self
            .assessment_job
            .as_ref()
            .is_some_and(|(job_pid, _, _)| *job_pid == pid)
        {
            if let (Some((_, job, output)), Some(assessment)) =
                (self.assessment_job.take(), self.assessment.as_mut())
            {
                let text = std::fs::read_to_string(&output).unwrap_or_default();
                let code = match exit {
                    Exit::Code(code) => code,
                    Exit::Signal(signal) => 128 + signal,
                };
                let steps = assessment.finished(job, code, &text, Instant::now());
                self.assessment_steps(steps);
            }
            return;
        }
        if let Some(job) = self.render_job.as_mut() {
            if job.pid == pid {
                job.exit = Some(exit);
                return;
            }
        }
        if self.exec_pipes.contains_key(&pid) {
            // The errno (if exec failed) is in the pipe before the exit.
            self.check_exec(pid);
        }
        if self.supervisor.service_by_pid(pid).is_some() && !self.daemonized(pid, exit) {
            let actions = self.supervisor.exited(pid, exit, Instant::now());
            self.apply(actions);
        }
        // Anything else is an orphan (or a failed exec): reaped, nothing
        // more to do.
    }

    /// Did the child exec? A failed exec fails its service (once, no
    /// respawn loop: a missing binary will not appear by itself).
    fn check_exec(&mut self, pid: i32) {
        let Some((_, _, fd)) = self.exec_pipes.get(&pid) else {
            return;
        };
        let Some(result) = crate::spawn::exec_result(*fd) else {
            return;
        };
        let Some((name, program, fd)) = self.exec_pipes.remove(&pid) else {
            return;
        };
        sys::close(fd);
        if let Err(error) = result {
            if self
                .supervisor
                .service(&name)
                .and_then(|service| service.pid)
                == Some(pid)
            {
                let message = format!("{program}: {error}");
                let actions = if crate::spawn::is_transient(&error) {
                    self.supervisor
                        .spawn_deferred(&name, &message, Instant::now())
                } else {
                    self.supervisor
                        .spawn_failed(&name, &message, Instant::now())
                };
                self.apply(actions);
            }
        }
    }

    /// Readiness news: a line on the s6-style fd (or its end of file), or
    /// an sd_notify datagram with the line `READY=1` (other assignments,
    /// such as `STATUS=`, are read and ignored).
    fn read_notify(&mut self, name: &str) {
        let Some(fd) = self.notify.get(name).copied() else {
            return;
        };
        let datagram = self.sd_notify.contains_key(name);
        let mut buffer = [0u8; 4096];
        let mut ready = false;
        let mut ping = false;
        let mut closed = false;
        loop {
            match sys::read(fd, &mut buffer) {
                Ok(0) if !datagram => {
                    closed = true;
                    break;
                }
                Ok(count) if datagram => {
                    for line in buffer[..count].split(|byte| *byte == b'\n') {
                        ready |= line == b"READY=1";
                        ping |= line == b"WATCHDOG=1";
                    }
                }
                Ok(count) => ready |= buffer[..count].contains(&b'\n'),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let watchdog = self
            .supervisor
            .service(name)
            .is_some_and(|service| service.definition.watchdog.is_some());
        // A watchdog keeps the socket for its pings until the service stops.
        if closed || (ready && !(datagram && watchdog)) {
            self.close_notify(name);
        }
        if ready {
            let actions = self.supervisor.ready(name, None, Instant::now());
            self.apply(actions);
        }
        if ping {
            let actions = self.supervisor.watchdog_ping(name, Instant::now());
            self.apply(actions);
        }
    }

    fn close_notify(&mut self, name: &str) {
        if let Some(fd) = self.notify.remove(name) {
            sys::close(fd);
        }
        if let Some(path) = self.sd_notify.remove(name) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn poll_readiness(&mut self) {
        let mut ready: Vec<(String, Option<i32>)> = Vec::new();
        for service in self.supervisor.starting() {
            match &service.definition.ready {
                Readiness::Tcp { port } if service.pid.is_some() && sys::tcp_ready(*port) => {
                    ready.push((service.definition.name.clone(), None));
                }
                Readiness::Pidfile { path } => {
                    let pid = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|text| text.trim().parse::<i32>().ok())
                        .filter(|pid| sys::alive(*pid));
                    if let Some(pid) = pid {
                        ready.push((service.definition.name.clone(), Some(pid)));
                    }
                }
                _ => {}
            }
        }
        for (name, pid) in ready {
            if let Some(pid) = pid {
                self.groups.spawned(&name, pid);
            }
            let actions = self.supervisor.ready(&name, pid, Instant::now());
            self.apply(actions);
        }
    }

    fn check_empty(&mut self) {
        let waiting = self.supervisor.waiting_for_empty();
        if waiting.is_empty() {
            return;
        }
        let members = self.groups.members_of(&waiting);
        for name in waiting {
            if members.get(&name).is_none_or(|pids| pids.is_empty()) {
                let actions = self.supervisor.service_empty(&name, Instant::now());
                self.apply(actions);
            }
        }
    }

    // --- actions ---

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let more = self.apply_one(action);
            queue.extend(more);
        }
    }

    fn apply_one(&mut self, action: Action) -> Vec<Action> {
        let now = Instant::now();
        match action {
            Action::Spawn(name) => match self.respawn(&name) {
                Ok(pid) => {
                    self.groups.spawned(&name, pid);
                    self.supervisor.spawned(&name, pid, now)
                }
                Err(failure) if failure.transient => {
                    self.supervisor.spawn_deferred(&name, &failure.message, now)
                }
                Err(failure) => self.supervisor.spawn_failed(&name, &failure.message, now),
            },
            Action::SignalService(name, signal) => {
                self.groups.signal(&name, signal);
                Vec::new()
            }
            Action::SignalProcess(pid, signal) => {
                let _ = sys::kill(pid, signal);
                Vec::new()
            }
            Action::KillService(name) => {
                // Its group is already killed (reap); the escapees wait
                // until after the respawn.
                if !self.crash_killed.contains(&name) {
                    self.groups.kill(&name);
                }
                Vec::new()
            }
            Action::WatchReadiness(_) => {
                self.next_readiness_poll = now;
                Vec::new()
            }
            Action::StateChanged { name, state, pid } => {
                match pid {
                    Some(pid) => self.say(&format!(
                        "nodows: service {name} {} pid={pid}",
                        state.as_str()
                    )),
                    None => self.say(&format!("nodows: service {name} {}", state.as_str())),
                }
                if matches!(state, State::Stopped | State::Failed) {
                    self.groups.forget(&name);
                    self.close_notify(&name);
                }
                Vec::new()
            }
            Action::Event(_) => Vec::new(),
            Action::ModeReady { mode, services } => {
                let seconds = self.started.elapsed().as_secs_f64();
                self.say(&format!(
                    "nodows: ready mode={mode} services={services} t={seconds:.2}"
                ));
                if let Some(assessment) = self.assessment.as_mut() {
                    let steps = assessment.ready();
                    self.assessment_steps(steps);
                }
                Vec::new()
            }
            Action::Log(message) => {
                self.say(&format!("initd: {message}"));
                Vec::new()
            }
        }
    }

    fn respawn(&mut self, name: &str) -> Result<i32, SpawnFailure> {
        self.groups.respawning(name);
        self.spawn(name)
    }

    fn spawn(&mut self, name: &str) -> Result<i32, SpawnFailure> {
        let Some(service) = self.supervisor.service(name) else {
            return Err(SpawnFailure {
                message: "unknown service".to_string(),
                transient: false,
            });
        };
        let definition = service.definition.clone();
        if !self.logs.contains_key(name) {
            let log = ServiceLog::open(&self.log_dir, name, self.options.log_max_bytes).map_err(
                |error| {
                    SpawnFailure::new(
                        format!("cannot open its log in {}", self.log_dir.display()),
                        &error,
                    )
                },
            )?;
            self.logs.insert(name.to_string(), log);
        }
        let output_fd = self.logs.get(name).map(|log| log.write_fd).unwrap_or(2);
        let mut notify_write = None;
        if let Readiness::Notify { fd } = definition.ready {
            let (read_end, write_end) =
                sys::pipe().map_err(|error| SpawnFailure::new("pipe".to_string(), &error))?;
            if let Some(old) = self.notify.insert(name.to_string(), read_end) {
                sys::close(old);
            }
            notify_write = Some((write_end, fd));
        }
        let mut service_env = None;
        if definition.ready == Readiness::SdNotify {
            let (fd, path) = self
                .sd_notify_socket(name, &definition)
                .map_err(|error| SpawnFailure::new("NOTIFY_SOCKET".to_string(), &error))?;
            self.close_notify(name);
            self.notify.insert(name.to_string(), fd);
            let mut env = self.child_env.clone();
            env.push(("NOTIFY_SOCKET".to_string(), path.display().to_string()));
            if let Some(every) = definition.watchdog {
                env.push(("WATCHDOG_USEC".to_string(), every.as_micros().to_string()));
            }
            self.sd_notify.insert(name.to_string(), path);
            service_env = Some(env);
        }
        let cgroup = self.groups.prepare(name);
        let result = crate::spawn::prepare(
            &definition,
            service_env.as_deref().unwrap_or(&self.child_env),
            output_fd,
            notify_write,
            cgroup,
        )
        .and_then(|mut prepared| {
            if let Some(limit) = self.child_nofile {
                prepared.child_nofile(limit);
            }
            crate::spawn::spawn(&prepared)
        });
        if let Some((write_end, _)) = notify_write {
            sys::close(write_end);
        }
        let program = definition.exec.path.display().to_string();
        match result {
            Ok(spawned) => {
                self.exec_pipes.insert(
                    spawned.pid,
                    (name.to_string(), program, spawned.exec_result),
                );
                Ok(spawned.pid)
            }
            Err(error) => Err(SpawnFailure::new(program, &error)),
        }
    }

    /// A fresh datagram socket for a service's sd_notify messages, in the
    /// state directory, writable by the service's user only.
    fn sd_notify_socket(
        &self,
        name: &str,
        definition: &ServiceDefinition,
    ) -> std::io::Result<(RawFd, PathBuf)> {
        let directory = self.options.state.join("notify");
        std::fs::create_dir_all(&directory)?;
        let path = directory.join(name);
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(user) = &definition.user {
            if let Some((uid, gid)) = sys::lookup_user(user) {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        Ok((socket.into_raw_fd(), path))
    }

    // --- shutdown ---

    fn request_shutdown(&mut self, kind: Shutdown) {
        if self.shutdown.is_some() {
            return;
        }
        let longest = self
            .supervisor
            .services()
            .map(|service| service.definition.stop_timeout)
            .max()
            .unwrap_or_default();
        // Reverse dependency order means timeouts can add up; cap the wait.
        let deadline =
            Instant::now() + (longest * 3).min(Duration::from_secs(120)) + Duration::from_secs(5);
        self.shutdown = Some((kind, deadline));
        self.say(&format!("initd: {}: stopping services", kind.as_str()));
        let actions = self.supervisor.stop_all(Instant::now());
        self.apply(actions);
    }

    fn progress_shutdown(&mut self) {
        let Some((kind, deadline)) = self.shutdown else {
            return;
        };
        if !self.supervisor.all_stopped() && Instant::now() < deadline {
            return;
        }
        self.say(&format!("nodows: {}", kind.as_str()));
        let _ = std::fs::remove_file(&self.options.socket);
        if self.options.pid1 {
            let console = &self.console;
            let logs = &mut self.logs;
            crate::pid1::final_kill_and_sync(
                self.machine,
                || {
                    for log in logs.values_mut() {
                        log.drain();
                    }
                    logs.clear();
                },
                |message| console.line(&format!("initd: {message}")),
            );
            self.groups.cleanup();
            let error = sys::reboot(kind);
            self.say(&format!("initd: reboot(2) failed: {error}; halting here"));
            // PID 1 must not exit: wait for the power to go.
            loop {
                while sys::reap_one().is_some() {}
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // Not PID 1: make sure nothing of ours is left, then leave.
        let names: Vec<String> = self
            .supervisor
            .services()
            .map(|s| s.definition.name.clone())
            .collect();
        for name in &names {
            self.groups.kill(name);
        }
        while sys::reap_one().is_some() {}
        self.groups.cleanup();
        self.finished = true;
    }
}

/// `check`: should the service run in this mode, are its binary and files
/// there. Exit 0 when it can run, 1 when something is missing.
pub fn check_service(
    definition: &ServiceDefinition,
    mode: &str,
    in_mode: bool,
    root: &Path,
) -> (i32, String) {
    let mut out = String::new();
    let mut code = 0;
    let name = &definition.name;
    if in_mode {
        out.push_str(&format!("{name}: runs in mode {mode}\n"));
    } else {
        out.push_str(&format!(
            "{name}: does not run in mode {mode} (modes: {})\n",
            definition.modes.join(" ")
        ));
    }
    let binary = &definition.exec.path;
    match std::fs::metadata(binary) {
        Ok(metadata) if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 => {
            out.push_str(&format!("{name}: binary {} present\n", binary.display()));
        }
        Ok(_) => {
            code = 1;
            out.push_str(&format!(
                "{name}: binary {} is not an executable file\n",
                binary.display()
            ));
        }
        Err(_) => {
            code = 1;
            let hint = if definition.packages.is_empty() {
                String::new()
            } else {
                format!(": install package {}", definition.packages.join(" "))
            };
            out.push_str(&format!(
                "{name}: binary {} missing{hint}\n",
                binary.display()
            ));
        }
    }
    for file in &definition.files {
        let path = root.join(file.target.trim_start_matches('/'));
        if path.exists() {
            out.push_str(&format!("{name}: file {} present\n", file.target));
        } else {
            code = 1;
            out.push_str(&format!(
                "{name}: file {} missing: run initctl configure {name}\n",
                file.target
            ));
        }
        let template = definition.dir.join(&file.template);
        if !template.is_file() {
            code = 1;
            out.push_str(&format!(
                "{name}: template {} missing\n",
                template.display()
            ));
        }
    }
    (code, out)
}
