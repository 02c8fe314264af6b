//! The driver: one poll loop that feeds the supervisor (signals, reaped
//! children, readiness, control requests, time) and carries out its actions.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use servicedef::{Readiness, ServiceDefinition};

use crate::assess::{Assessment, Job, Step};
use crate::group::Groups;
use crate::json;
use crate::logfile::ServiceLog;
use crate::supervisor::{Action, Exit, State, Supervisor};
use crate::sys::{self, Shutdown};

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
    /// The defaults of ARCHITECTURE.md (PID 1 in an image).
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

struct RenderRequest {
    services: Vec<String>,
    profile: String,
    after: AfterRender,
    client: Option<UnixStream>,
    /// Started by initd to finish a failed render's journal.
    retry: bool,
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
    /// Control connections whose request line is not complete yet.
    clients: Vec<Client>,
    /// Children not yet known to have exec'd: pid -> (service, program, pipe).
    exec_pipes: BTreeMap<i32, (String, String, RawFd)>,
    signal_fd: RawFd,
    listener: UnixListener,
    console: Console,
    started: Instant,
    log_dir: PathBuf,
    inherited_env: Vec<(String, String)>,
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
}

const READINESS_POLL: Duration = Duration::from_millis(50);

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
        let groups = Groups::new(options.use_cgroups);
        // Services inherit initd's environment (as PID 1: what the kernel
        // passed, e.g. HOME and TERM); spawn adds PATH when missing.
        let inherited_env: Vec<(String, String)> = std::env::vars().collect();
        console.line(&format!(
            "initd: supervising {} services in mode {mode}; whole-service tracking by {}",
            definitions.len(),
            groups.describe()
        ));
        Ok(Runtime {
            supervisor: Supervisor::new(definitions, &mode),
            groups,
            logs: BTreeMap::new(),
            notify: BTreeMap::new(),
            clients: Vec::new(),
            exec_pipes: BTreeMap::new(),
            signal_fd,
            listener,
            console,
            started: Instant::now(),
            log_dir,
            inherited_env,
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
        })
    }

    /// Run until shutdown. As PID 1 this only returns if reboot(2) failed.
    pub fn run(&mut self) -> i32 {
        self.start_render(RenderRequest {
            services: Vec::new(),
            profile: self.supervisor.mode().to_string(),
            after: AfterRender::Boot,
            client: None,
            retry: false,
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
        if let Some(trial) = self.assessment.as_ref().and_then(|a| a.deadline) {
            deadline = Some(deadline.map_or(trial, |deadline| deadline.min(trial)));
        }
        if let Some(job) = self.render_job.as_ref().filter(|job| !job.timed_out) {
            let kill_at = job.started + self.options.render_timeout;
            deadline = Some(deadline.map_or(kill_at, |deadline| deadline.min(kill_at)));
        }
        let timeout_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now);
                (wait.as_millis().min(60_000) as i32) + i32::from(wait.subsec_micros() % 1000 != 0)
            }
        };
        let mut fds = vec![
            libc::pollfd {
                fd: self.signal_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
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
            .retain(|client| client.since.elapsed() < Duration::from_secs(30));
        if render_fd.is_some() && fds[index].revents != 0 {
            self.read_render_output();
        }
        if fds[1].revents != 0 {
            self.accept_clients();
        }
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
                if let Some(name) = self.supervisor.failing_service(pid, exit) {
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
        if self.supervisor.service_by_pid(pid).is_some() {
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
                let actions = self.supervisor.spawn_failed(
                    &name,
                    &format!("{program}: {error}"),
                    Instant::now(),
                );
                self.apply(actions);
            }
        }
    }

    fn read_notify(&mut self, name: &str) {
        let Some(fd) = self.notify.get(name).copied() else {
            return;
        };
        let mut buffer = [0u8; 256];
        let mut ready = false;
        let mut closed = false;
        loop {
            match sys::read(fd, &mut buffer) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(count) => ready |= buffer[..count].contains(&b'\n'),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if ready || closed {
            sys::close(fd);
            self.notify.remove(name);
        }
        if ready {
            let actions = self.supervisor.ready(name, None, Instant::now());
            self.apply(actions);
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
                Err(error) => self.supervisor.spawn_failed(&name, &error, now),
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
                    if let Some(fd) = self.notify.remove(&name) {
                        sys::close(fd);
                    }
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

    fn respawn(&mut self, name: &str) -> Result<i32, String> {
        self.groups.respawning(name);
        self.spawn(name)
    }

    fn spawn(&mut self, name: &str) -> Result<i32, String> {
        let Some(service) = self.supervisor.service(name) else {
            return Err("unknown service".to_string());
        };
        let definition = service.definition.clone();
        if !self.logs.contains_key(name) {
            let log = ServiceLog::open(&self.log_dir, name, self.options.log_max_bytes).map_err(
                |error| format!("cannot open its log in {}: {error}", self.log_dir.display()),
            )?;
            self.logs.insert(name.to_string(), log);
        }
        let output_fd = self.logs.get(name).map(|log| log.write_fd).unwrap_or(2);
        let mut notify_write = None;
        if let Readiness::Notify { fd } = definition.ready {
            let (read_end, write_end) = sys::pipe().map_err(|error| format!("pipe: {error}"))?;
            if let Some(old) = self.notify.insert(name.to_string(), read_end) {
                sys::close(old);
            }
            notify_write = Some((write_end, fd));
        }
        let cgroup = self.groups.prepare(name);
        let result = crate::spawn::prepare(
            &definition,
            &self.inherited_env,
            output_fd,
            notify_write,
            cgroup,
        )
        .and_then(|prepared| crate::spawn::spawn(&prepared));
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
            Err(error) => Err(format!("{program}: {error}")),
        }
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

    // --- rendering ---

    fn start_render(&mut self, request: RenderRequest) {
        if self.render_job.is_some() {
            self.render_queue.push_back(request);
            return;
        }
        let command = self.options.render_command.clone();
        if !command.is_file() {
            self.say(&format!(
                "initd: renderer {} not found: configuration not rendered",
                command.display()
            ));
            self.render_done(
                request.after,
                request.client,
                1,
                format!("renderer {} not found", command.display()),
                Vec::new(),
                RenderFailure::NoRenderer,
            );
            return;
        }
        let model = self.model_to_render();
        let mut process = std::process::Command::new(&command);
        process
            .arg("render")
            .arg("--model")
            .arg(&model)
            .arg("--services")
            .arg(&self.options.services)
            .arg("--root")
            .arg(&self.options.root)
            .arg("--profile")
            .arg(&request.profile);
        if let Some(server) = &self.options.server {
            process.arg("--server").arg(server);
        }
        for service in &request.services {
            process.arg("--service").arg(service);
        }
        process
            .arg("--json")
            // initd removes the journal once it has acted on the change set.
            .arg("--keep-journal")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        match process.spawn() {
            Ok(mut child) => {
                let Some(stdout) = child.stdout.take() else {
                    return;
                };
                let fd = stdout.into_raw_fd();
                let _ = sys::set_nonblocking(fd);
                self.render_job = Some(RenderJob {
                    pid: child.id() as i32,
                    started: Instant::now(),
                    timed_out: false,
                    retry: request.retry,
                    profile: request.profile.clone(),
                    stdout: fd,
                    output: Vec::new(),
                    eof: false,
                    exit: None,
                    after: request.after,
                    client: request.client,
                });
            }
            Err(error) => {
                self.say(&format!(
                    "initd: cannot run renderer {}: {error}",
                    command.display()
                ));
                self.render_done(
                    request.after,
                    request.client,
                    1,
                    format!("cannot run renderer: {error}"),
                    Vec::new(),
                    RenderFailure::NoRenderer,
                );
            }
        }
    }

    fn read_render_output(&mut self) {
        let Some(job) = self.render_job.as_mut() else {
            return;
        };
        let mut buffer = [0u8; 8192];
        loop {
            match sys::read(job.stdout, &mut buffer) {
                Ok(0) => {
                    job.eof = true;
                    sys::close(job.stdout);
                    break;
                }
                Ok(count) => {
                    if job.output.len() < 16 * 1024 * 1024 {
                        job.output.extend_from_slice(&buffer[..count]);
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn finish_render(&mut self) {
        let done = self
            .render_job
            .as_ref()
            .is_some_and(|job| job.eof && job.exit.is_some());
        if !done {
            return;
        }
        let Some(job) = self.render_job.take() else {
            return;
        };
        let exit = job.exit.unwrap_or(Exit::Code(1));
        let journal = self.options.root.join(RENDER_JOURNAL);
        let mut changes = Vec::new();
        let mut failure = RenderFailure::Refused;
        let mut retry = false;
        let (code, message) = if exit == Exit::Code(2) {
            // Bad input: the renderer stops before it writes anything.
            let message =
                "renderer refused the input (exit 2): configuration unchanged".to_string();
            self.say(&format!("initd: {message}"));
            (1, message)
        } else if !exit.success() {
            let how = if job.timed_out {
                format!(
                    "hung for {} s and was killed",
                    self.options.render_timeout.as_secs()
                )
            } else {
                exit.describe()
            };
            let unfinished = journal.exists();
            let message = if unfinished {
                retry = !job.retry;
                format!(
                    "renderer failed ({how}): it left an unfinished apply; {}",
                    if retry {
                        "rendering again to finish it and report its changes"
                    } else {
                        "the next render finishes it and reports its changes"
                    }
                )
            } else {
                format!("renderer failed ({how}): configuration unchanged")
            };
            self.say(&format!("initd: {message}"));
            (1, message)
        } else {
            match json::parse_change_set(&String::from_utf8_lossy(&job.output)) {
                Ok(change_set) => {
                    // Acted on below: the journal's change set is reported.
                    match std::fs::remove_file(&journal) {
                        Err(error) if error.kind() != std::io::ErrorKind::NotFound => self.say(
                            &format!("initd: {}: cannot remove: {error}", journal.display()),
                        ),
                        _ => {}
                    }
                    let mut message =
                        format!("rendered: {} files written", change_set.written.len());
                    for (name, action) in &change_set.services {
                        message.push_str(&format!("\n{action} {name}"));
                    }
                    changes = change_set.services;
                    failure = RenderFailure::None;
                    (0, message)
                }
                Err(error) => {
                    let message = format!("renderer printed a bad change set: {error}");
                    self.say(&format!("initd: {message}"));
                    (1, message)
                }
            }
        };
        if retry {
            self.render_queue.push_front(RenderRequest {
                services: Vec::new(),
                profile: job.profile.clone(),
                after: AfterRender::Nothing,
                client: None,
                retry: true,
            });
        }
        self.render_done(job.after, job.client, code, message, changes, failure);
        if let Some(next) = self.render_queue.pop_front() {
            self.start_render(next);
        }
    }

    /// Kills a render that has run longer than `render_timeout`; its exit
    /// is then reported by `finish_render`.
    fn kill_hung_render(&mut self) {
        let timeout = self.options.render_timeout;
        let Some(job) = self.render_job.as_mut() else {
            return;
        };
        if job.exit.is_some() || job.timed_out || job.started.elapsed() < timeout {
            return;
        }
        job.timed_out = true;
        let pid = job.pid;
        // SAFETY: kill on the renderer's pid, a child not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        self.say(&format!(
            "initd: renderer pid {pid} hung for {} s: killed",
            timeout.as_secs()
        ));
    }

    fn render_done(
        &mut self,
        after: AfterRender,
        client: Option<UnixStream>,
        code: i32,
        message: String,
        changes: Vec<(String, String)>,
        failure: RenderFailure,
    ) {
        let now = Instant::now();
        for (name, action) in &changes {
            if self.supervisor.service(name).is_none() {
                self.say(&format!("initd: change set names unknown service {name}"));
                continue;
            }
            let actions = if action == "reload" {
                self.supervisor.reload(name, now)
            } else {
                self.supervisor.restart_if_active(name, now)
            };
            self.apply(actions);
            let actions = self.supervisor.emit(&format!("config-changed:{name}"), now);
            self.apply(actions);
        }
        let mut reply_code = code;
        let mut reply = message;
        match after {
            AfterRender::Nothing => {}
            AfterRender::Boot => {
                let actions = self.supervisor.boot(now);
                self.apply(actions);
            }
            // All or nothing: a model the renderer refuses for the new mode
            // leaves the node in its old mode (the renderer wrote nothing).
            AfterRender::SwitchMode(mode) if failure == RenderFailure::Refused => {
                let old = self.supervisor.mode().to_string();
                self.say(&format!(
                    "initd: mode {mode} refused, staying in mode {old}: {reply} (the renderer's errors are above)"
                ));
                reply_code = 1;
                reply = format!(
                    "mode {mode} refused, still in mode {old}: {reply}; see the renderer's errors on the console"
                );
            }
            // Without a renderer (configs baked only) the switch goes ahead.
            AfterRender::SwitchMode(mode) => {
                // t on the clock of the ready line: switch to ready is their difference.
                let seconds = self.started.elapsed().as_secs_f64();
                self.say(&format!("nodows: mode {mode} t={seconds:.2}"));
                let actions = self.supervisor.set_mode(&mode, now);
                self.apply(actions);
                reply_code = 0;
                reply = format!("mode {mode}\n{reply}");
            }
        }
        if let Some(client) = client {
            reply_to(client, reply_code, &reply);
        }
    }

    // --- control socket ---

    fn accept_clients(&mut self) {
        for _ in 0..64 {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            request: Vec::new(),
                            since: Instant::now(),
                        });
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Read what a client sent; a whole line (or end of file) is a request.
    /// Clients are read without blocking: a slow one never stalls PID 1.
    fn read_client(&mut self, index: usize) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        let mut buffer = [0u8; 1024];
        let mut complete = false;
        loop {
            match client.stream.read(&mut buffer) {
                Ok(0) => {
                    complete = true;
                    break;
                }
                Ok(count) => {
                    client.request.extend_from_slice(&buffer[..count]);
                    if client.request.contains(&b'\n') || client.request.len() >= 4096 {
                        complete = true;
                        break;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    complete = true;
                    break;
                }
            }
        }
        if complete {
            let client = self.clients.swap_remove(index);
            self.handle_client(client.stream, client.request);
        }
    }

    fn handle_client(&mut self, stream: UnixStream, request: Vec<u8>) {
        let own = sys::geteuid();
        match sys::peer_uid(stream.as_raw_fd()) {
            Ok(uid) if uid == 0 || uid == own => {}
            Ok(uid) => {
                reply_to(
                    stream,
                    1,
                    &format!(
                        "permission denied: uid {uid} is neither root nor initd's own uid {own}"
                    ),
                );
                return;
            }
            Err(error) => {
                reply_to(
                    stream,
                    1,
                    &format!("permission denied: cannot read peer credentials: {error}"),
                );
                return;
            }
        }
        let text = String::from_utf8_lossy(&request).to_string();
        let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        if let Some((code, reply)) =
            self.request(&words, &mut Some(stream.try_clone().ok()).flatten())
        {
            reply_to(stream, code, &reply);
        }
    }

    /// One control request. None means the reply comes later (rendering).
    fn request(
        &mut self,
        words: &[String],
        client: &mut Option<UnixStream>,
    ) -> Option<(i32, String)> {
        let now = Instant::now();
        let word = |index: usize| words.get(index).map(String::as_str);
        let known = |runtime: &Runtime, name: &str| runtime.supervisor.service(name).is_some();
        let reply = match (word(0), word(1)) {
            (Some("status"), None) => (0, self.status_text()),
            (Some("status"), Some("--json")) => (0, self.status_json()),
            // A health probe (keepalived's track script): exit 1 when the
            // service is failed, 0 in any other state.
            (Some("status"), Some(name)) => match self.supervisor.service(name) {
                None => (2, format!("unknown service {name}: see initctl status")),
                Some(service) => {
                    let line = format!(
                        "{name} {}{}",
                        service.state.as_str(),
                        service
                            .reason
                            .as_deref()
                            .map(|reason| format!(" ({reason})"))
                            .unwrap_or_default()
                    );
                    let code = if service.state == State::Failed { 1 } else { 0 };
                    (code, line)
                }
            },
            (Some(verb @ ("start" | "stop" | "restart" | "reload")), Some(name)) => {
                if !known(self, name) {
                    (2, format!("unknown service {name}: see initctl status"))
                } else {
                    let actions = match verb {
                        "start" => self.supervisor.start(name, now),
                        "stop" => self.supervisor.stop(name, now),
                        "restart" => self.supervisor.restart(name, now),
                        _ => self.supervisor.reload(name, now),
                    };
                    self.apply(actions);
                    let state = self
                        .supervisor
                        .service(name)
                        .map(|s| s.state.as_str())
                        .unwrap_or("stopped");
                    (0, format!("{verb} {name}: {state}"))
                }
            }
            (Some("check"), Some(name)) => match self.supervisor.service(name) {
                None => (2, format!("unknown service {name}: see initctl status")),
                Some(service) => {
                    let definition = service.definition.clone();
                    let in_mode = self.supervisor.in_current_mode(name);
                    check_service(
                        &definition,
                        self.supervisor.mode(),
                        in_mode,
                        &self.options.root,
                    )
                }
            },
            (Some("load"), name) => match servicedef::load_dir(&self.options.services) {
                Err(errors) => (
                    2,
                    format!("{errors}\nconfiguration not loaded: still running the previous one"),
                ),
                Ok(definitions) => {
                    let count = definitions.len();
                    if let Some(name) = name {
                        if !definitions.iter().any(|d| d.name == name) {
                            return Some((
                                2,
                                format!(
                                    "unknown service {name} in {}",
                                    self.options.services.display()
                                ),
                            ));
                        }
                    }
                    let actions = self.supervisor.load(definitions, now);
                    self.apply(actions);
                    (0, format!("loaded {count} services"))
                }
            },
            (Some("configure"), Some(name)) => {
                if !known(self, name) {
                    (2, format!("unknown service {name}: see initctl status"))
                } else {
                    self.start_render(RenderRequest {
                        services: vec![name.to_string()],
                        profile: self.supervisor.mode().to_string(),
                        after: AfterRender::Nothing,
                        client: client.take(),
                        retry: false,
                    });
                    return None;
                }
            }
            (Some("render"), None) => {
                self.start_render(RenderRequest {
                    services: Vec::new(),
                    profile: self.supervisor.mode().to_string(),
                    after: AfterRender::Nothing,
                    client: client.take(),
                    retry: false,
                });
                return None;
            }
            (Some("log"), Some(name)) => {
                let is_known = known(self, name);
                match self.logs.get_mut(name) {
                    Some(log) => {
                        log.drain();
                        let path = log.path().to_path_buf();
                        (0, read_tail(&path, 1024 * 1024))
                    }
                    None if is_known => (0, String::new()),
                    None => (2, format!("unknown service {name}: see initctl status")),
                }
            }
            (Some("emit"), Some(event)) => {
                let actions = self.supervisor.emit(event, now);
                self.apply(actions);
                (0, format!("emitted {event}"))
            }
            (Some("mode"), None) => (0, self.supervisor.mode().to_string()),
            // Proves that a panic in request handling is survived; only
            // when initd was started with INITD_TEST_HOOKS=1.
            (Some("debug-panic"), None) if std::env::var_os("INITD_TEST_HOOKS").is_some() => {
                #[allow(clippy::panic)]
                {
                    panic!("debug-panic requested")
                }
            }
            (Some("mode"), Some(mode)) => {
                if !mode
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    (2, format!("bad mode name {mode}"))
                } else {
                    self.start_render(RenderRequest {
                        services: Vec::new(),
                        profile: mode.to_string(),
                        after: AfterRender::SwitchMode(mode.to_string()),
                        client: client.take(),
                        retry: false,
                    });
                    return None;
                }
            }
            (Some(kind @ ("poweroff" | "reboot" | "halt")), None) => {
                let kind = match kind {
                    "poweroff" => Shutdown::Poweroff,
                    "reboot" => Shutdown::Reboot,
                    _ => Shutdown::Halt,
                };
                self.request_shutdown(kind);
                (0, kind.as_str().to_string())
            }
            _ => (
                2,
                format!("bad request \"{}\": see initctl --help", words.join(" ")),
            ),
        };
        Some(reply)
    }

    fn status_json(&self) -> String {
        let mut out = String::from("[");
        for (index, service) in self.supervisor.services().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "\n{{\"name\":{},\"state\":\"{}\",\"pid\":{},\"restarts\":{},\"wanted\":{},\"in_mode\":{},\"exit\":{},\"reason\":{},\"backoff_ms\":{}}}",
                json::escape(&service.definition.name),
                service.state.as_str(),
                service.pid.map(|pid| pid.to_string()).unwrap_or_else(|| "null".to_string()),
                service.restarts,
                service.wanted,
                self.supervisor.in_current_mode(&service.definition.name),
                service.last_exit.map(|exit| json::escape(&exit.describe())).unwrap_or_else(|| "null".to_string()),
                service.reason.as_deref().map(json::escape).unwrap_or_else(|| "null".to_string()),
                service.backoff.as_millis(),
            ));
        }
        out.push_str("\n]");
        out
    }

    /// The last-good model when there is one, else `--model`.
    fn model_to_render(&self) -> PathBuf {
        match &self.options.last_good {
            Some(path) if crate::pid1::last_good_revision_of(path).is_some() => path.clone(),
            _ => self.options.model.clone(),
        }
    }

    /// `model PATH`, and the fleet watcher's state when it runs
    /// (`STATE/model-status.json`, written by `nodows watch --model
    /// postgres://...`).
    fn model_status_text(&self) -> String {
        let mut out = format!("model {}\n", self.model_to_render().display());
        let path = self.options.state.join("model-status.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return out;
        };
        let Ok(status) = json::parse(&text) else {
            out.push_str(&format!("fleet: {} is not readable JSON\n", path.display()));
            return out;
        };
        let text_of = |key: &str| status.get(key).and_then(json::Value::as_str).unwrap_or("");
        let connected = status.get("connected") == Some(&json::Value::Bool(true));
        let running = match status.get("running").and_then(|r| r.get("revision")) {
            Some(json::Value::Number(revision)) => format!("last-good revision {revision}"),
            _ => "the baked base model".to_string(),
        };
        out.push_str(&format!(
            "fleet {} server {}: {}; running {running}",
            text_of("source"),
            text_of("server"),
            if connected {
                "connected"
            } else {
                "database unreachable"
            },
        ));
        match (text_of("result"), text_of("error")) {
            ("", _) => {}
            (result, "") => out.push_str(&format!("; last {result}")),
            (result, error) => out.push_str(&format!(
                "; last {result}: {}",
                error.lines().next().unwrap_or("")
            )),
        }
        out.push('\n');
        out
    }

    fn status_text(&self) -> String {
        let mut out = self
            .assessment
            .as_ref()
            .map(Assessment::status_line)
            .unwrap_or_default();
        if self.options.pid1 {
            out.push_str(&crate::pid1::integrity_status(
                &std::fs::read_to_string(crate::pid1::INTEGRITY_LOG).unwrap_or_default(),
            ));
        }
        out.push_str(&format!("mode {}\n", self.supervisor.mode()));
        out.push_str(&self.model_status_text());
        for service in self.supervisor.services() {
            out.push_str(&format!(
                "{:<24} {:<9} pid={:<8} restarts={}{}\n",
                service.definition.name,
                service.state.as_str(),
                service
                    .pid
                    .map(|pid| pid.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                service.restarts,
                service
                    .reason
                    .as_deref()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default(),
            ));
        }
        out
    }
}

fn reply_to(mut stream: UnixStream, code: i32, text: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut message = format!("exit {code}\n{text}");
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let _ = stream.write_all(message.as_bytes());
}

fn read_tail(path: &Path, limit: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if length > limit {
        use std::io::Seek;
        let _ = file.seek(std::io::SeekFrom::Start(length - limit));
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
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
