//! The supervisor as a state machine: inputs (requests, exits, readiness,
//! time) go in through methods, `Action`s come out. It does no syscalls, so
//! its transitions are tested with tables and no processes.
//!
//! Model: every service has a `wanted` flag (the goal) and a `State` (what is
//! true now). `reconcile` moves each service towards its goal: a wanted,
//! stopped service is spawned once everything it needs is up (so independent
//! services start in parallel); an unwanted service is stopped once nothing
//! that needs it is still up (so stop runs in reverse dependency order).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use servicedef::{Event, Readiness, RestartPolicy, ServiceDefinition};

/// Whether the main process ending with `exit` (the service starting or
/// running) is a failure: not a oneshot's success, not a pidfile launcher
/// that left its daemon behind while starting.
fn exit_is_failure(service: &Service, exit: Exit) -> bool {
    let oneshot = service.definition.ready == Readiness::Exit;
    let pidfile = matches!(service.definition.ready, Readiness::Pidfile { .. });
    !(exit.success() && (oneshot || (pidfile && service.state == State::Starting)))
}

/// A service that dies after running this long is respawned without delay;
/// one that dies sooner is crash-looping and waits out its backoff.
pub const SETTLED: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    Starting,
    Running,
    Stopping,
    Backoff,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Failed => "failed",
        }
    }
}

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exit {code}"),
            Exit::Signal(signal) => format!(
                "signal {}",
                servicedef::signal_name(signal)
                    .map(str::to_string)
                    .unwrap_or_else(|| signal.to_string())
            ),
        }
    }
}

/// What the driver must do. Each is carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec the service; answer with `spawned` or `spawn_failed`.
    Spawn(String),
    /// Send a signal to the whole service (cgroup, or process group plus
    /// tracked descendants).
    SignalService(String, i32),
    /// Send a signal to one process (reload goes to the main process).
    SignalProcess(i32, i32),
    /// SIGKILL every process of the service.
    KillService(String),
    /// Start watching readiness (tcp, pidfile, notify) of a starting service.
    WatchReadiness(String),
    /// Print the console line for a state change.
    StateChanged {
        name: String,
        state: State,
        pid: Option<i32>,
    },
    /// An event fired (for the log; start-on is handled inside).
    Event(Event),
    /// Every service of the mode is up: print the ready line.
    ModeReady { mode: String, services: usize },
    /// A message for the console/log.
    Log(String),
}

#[derive(Debug, Clone)]
pub struct Service {
    pub definition: ServiceDefinition,
    pub state: State,
    /// The main process, when there is one.
    pub pid: Option<i32>,
    /// Respawns since initd started (or since started by hand).
    pub restarts: u32,
    pub wanted: bool,
    pub last_exit: Option<Exit>,
    /// Why the service failed, for status.
    pub reason: Option<String>,
    /// The current backoff delay (grows after each respawn).
    pub backoff: Duration,
    restart_times: VecDeque<Instant>,
    deadline: Option<Instant>,
    started_at: Option<Instant>,
    /// When the current (or last) instance became ready.
    ready_at: Option<Instant>,
    /// Stopping and the main process is gone: waiting for the rest of the
    /// service to disappear (`service_empty`).
    main_gone: bool,
    /// SIGKILL already sent in this stop.
    killed: bool,
    /// The model's key `enabled` (from the last render): a disabled service
    /// is no member of any mode and is never wanted.
    pub enabled: bool,
    /// The model's values of the keys its `{KEY}` fields name (from the
    /// last render), applied again when `initctl load` replaces it.
    model_values: BTreeMap<String, String>,
}

impl Service {
    /// When the current (or last) instance was spawned and became ready,
    /// for `initctl blame` and `critical-chain`.
    pub fn timestamps(&self) -> (Option<Instant>, Option<Instant>) {
        (self.started_at, self.ready_at)
    }

    fn new(definition: ServiceDefinition) -> Service {
        let backoff = definition.restart.backoff_min;
        Service {
            definition,
            state: State::Stopped,
            pid: None,
            restarts: 0,
            wanted: false,
            last_exit: None,
            reason: None,
            backoff,
            restart_times: VecDeque::new(),
            deadline: None,
            started_at: None,
            ready_at: None,
            main_gone: false,
            killed: false,
            enabled: true,
            model_values: BTreeMap::new(),
        }
    }

    fn is_up(&self) -> bool {
        self.state == State::Running
    }

    /// Has processes or is about to (counts for reverse-order stop).
    fn is_active(&self) -> bool {
        matches!(
            self.state,
            State::Starting | State::Running | State::Stopping | State::Backoff
        )
    }
}

pub struct Supervisor {
    services: BTreeMap<String, Service>,
    mode: String,
    /// Ready line not yet printed for the current mode.
    mode_ready_pending: bool,
    /// Services a mode switch stops: nothing starts until they are down, so
    /// the new mode never races the old one for a port (web and standby).
    leaving: Vec<String>,
    booted: bool,
    actions: Vec<Action>,
    events: VecDeque<Event>,
    /// Events emitted before boot: fired right after `boot`.
    held: Vec<Event>,
}

impl Supervisor {
    pub fn new(definitions: Vec<ServiceDefinition>, mode: &str) -> Supervisor {
        Supervisor {
            services: definitions
                .into_iter()
                .map(|definition| (definition.name.clone(), Service::new(definition)))
                .collect(),
            mode: mode.to_string(),
            mode_ready_pending: false,
            leaving: Vec::new(),
            booted: false,
            actions: Vec::new(),
            events: VecDeque::new(),
            held: Vec::new(),
        }
    }

    pub fn mode(&self) -> &str {
        &self.mode
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    pub fn service_by_pid(&self, pid: i32) -> Option<&Service> {
        self.services
            .values()
            .find(|service| service.pid == Some(pid))
    }

    /// Services of `mode` that start without an event (boot services), plus
    /// everything they need.
    pub fn mode_members(&self, mode: &str) -> Vec<String> {
        let mut members: std::collections::BTreeSet<&str> = self
            .services
            .values()
            .filter(|service| service.enabled && in_mode(&service.definition, mode))
            .filter(|service| {
                service.definition.start_on.is_empty()
                    || service.definition.start_on.contains(&Event::Boot)
            })
            .map(|service| service.definition.name.as_str())
            .collect();
        let mut queue: Vec<&str> = members.iter().copied().collect();
        while let Some(name) = queue.pop() {
            if let Some(service) = self.services.get(name) {
                for need in &service.definition.needs {
                    if let Some((key, _)) = self
                        .services
                        .get_key_value(need)
                        .filter(|(_, needed)| needed.enabled)
                    {
                        if members.insert(key.as_str()) {
                            queue.push(key.as_str());
                        }
                    }
                }
            }
        }
        members.into_iter().map(str::to_string).collect()
    }

    /// Does the service belong to the current mode (by its modes or because
    /// a member needs it), and does the model enable it?
    pub fn in_current_mode(&self, name: &str) -> bool {
        self.services
            .get(name)
            .map(|service| service.enabled && in_mode(&service.definition, &self.mode))
            .unwrap_or(false)
            || self
                .mode_members(&self.mode)
                .iter()
                .any(|member| member == name)
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Boot: want every boot service of the mode, fire `boot`.
    pub fn boot(&mut self, now: Instant) -> Vec<Action> {
        self.booted = true;
        for name in self.mode_members(&self.mode.clone()) {
            self.want(&name);
        }
        self.mode_ready_pending = true;
        self.events.push_back(Event::Boot);
        self.events.extend(std::mem::take(&mut self.held));
        self.settle(now)
    }

    /// `initctl start NAME`: want it and what it needs; clears `failed`.
    /// A service the model disables is not started (the model decides).
    pub fn start(&mut self, name: &str, now: Instant) -> Vec<Action> {
        if self
            .services
            .get(name)
            .is_some_and(|service| !service.enabled)
        {
            self.actions.push(Action::Log(format!(
                "service {name} is disabled by the model (its key enabled is no): not started; set it to yes to run it"
            )));
            return self.settle(now);
        }
        self.clear_failure(name);
        self.want(name);
        self.settle(now)
    }

    /// `initctl stop NAME`: unwant it and everything that needs it; a pending
    /// restart (backoff) is cancelled. A `failed` service becomes `stopped`
    /// (the failure is acknowledged): a later `start` or mode switch that
    /// wants it starts it again.
    pub fn stop(&mut self, name: &str, now: Instant) -> Vec<Action> {
        self.clear_failure(name);
        self.unwant(name);
        self.settle(now)
    }

    /// A `failed` service becomes `stopped` with a fresh restart window.
    fn clear_failure(&mut self, name: &str) {
        if let Some(service) = self.services.get_mut(name) {
            if service.state == State::Failed {
                service.state = State::Stopped;
                service.reason = None;
                service.restart_times.clear();
                service.backoff = service.definition.restart.backoff_min;
                self.changed(name, State::Stopped, None);
            }
        }
    }

    /// Stop everything (shutdown).
    pub fn stop_all(&mut self, now: Instant) -> Vec<Action> {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.unwant(&name);
        }
        self.settle(now)
    }

    /// `initctl restart NAME`: stop, then start again (it stays wanted).
    pub fn restart(&mut self, name: &str, now: Instant) -> Vec<Action> {
        let state = self.services.get(name).map(|service| service.state);
        match state {
            Some(State::Starting) | Some(State::Running) => {
                self.want(name);
                self.begin_stop(name, now);
            }
            Some(State::Backoff) => {
                if let Some(service) = self.services.get_mut(name) {
                    service.deadline = None;
                    service.state = State::Stopped;
                }
                self.changed(name, State::Stopped, None);
                self.want(name);
            }
            Some(_) => return self.start(name, now),
            None => {}
        }
        self.settle(now)
    }

    /// A changed configuration (the renderer's `restart`): restart the
    /// service if it is up or about to be; a stopped or failed one is left
    /// alone (it reads the new files when it starts), so a render never
    /// starts a service its mode does not run.
    pub fn restart_if_active(&mut self, name: &str, now: Instant) -> Vec<Action> {
        match self.services.get(name).map(|service| service.state) {
            Some(State::Starting | State::Running | State::Backoff) => self.restart(name, now),
            _ => Vec::new(),
        }
    }

    /// `initctl reload NAME`: the reload signal to the main process, or a
    /// restart when the service has none.
    pub fn reload(&mut self, name: &str, now: Instant) -> Vec<Action> {
        let Some(service) = self.services.get(name) else {
            return Vec::new();
        };
        match (service.definition.reload_signal, service.pid, service.state) {
            (Some(signal), Some(pid), State::Running | State::Starting) => {
                self.actions.push(Action::SignalProcess(pid, signal));
                self.take_actions()
            }
            (Some(_), None, State::Running) => Vec::new(), // a finished oneshot
            (_, _, State::Running | State::Starting) => self.restart(name, now),
            _ => Vec::new(),
        }
    }

    /// A custom or built-in event: starts services with a matching start-on
    /// (and runs a finished oneshot among them again). Before boot the event
    /// waits: nothing starts before the first render.
    pub fn emit(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if !self.booted {
            self.held.push(event);
            return Vec::new();
        }
        self.events.push_back(event);
        self.settle(now)
    }

    /// The services a start-on of `event` starts now: of the current mode,
    /// not failed, except a oneshot on an event from outside (a periodic
    /// job whose last run failed runs at the next period, as with cron).
    pub fn starters(&self, event: &Event) -> Vec<String> {
        self.services
            .values()
            .filter(|service| {
                service
                    .definition
                    .start_on
                    .iter()
                    .any(|on| on.matches(event))
            })
            .filter(|service| in_mode(&service.definition, &self.mode))
            .filter(|service| {
                service.state != State::Failed
                    || (is_external(event) && service.definition.ready == Readiness::Exit)
            })
            .map(|service| service.definition.name.clone())
            .collect()
    }

    /// A oneshot that has finished (up, no process) runs again when its
    /// start-on fires: a periodic job, or a reapply for a new device.
    fn rerun_if_finished(&mut self, name: &str) {
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        if service.definition.ready == Readiness::Exit
            && service.state == State::Running
            && service.pid.is_none()
        {
            service.state = State::Stopped;
            self.changed(name, State::Stopped, None);
        }
    }

    /// Whether some service declares the custom event `name`.
    pub fn declares_event(&self, name: &str) -> bool {
        self.services
            .values()
            .any(|service| service.definition.events.iter().any(|event| event == name))
    }

    /// The model's `enabled` keys after a render: `disabled` names every
    /// service that must not run. A service newly disabled stops (what
    /// needs it too; the renderer refuses a model that disables a need of
    /// an enabled service of the mode) and its failure is forgotten; one
    /// newly enabled starts when its mode runs it. Nothing else changes.
    pub fn set_disabled(&mut self, disabled: &[String], now: Instant) -> Vec<Action> {
        let flipped: Vec<String> = self
            .services
            .iter_mut()
            .filter(|(name, service)| service.enabled == disabled.contains(*name))
            .map(|(name, service)| {
                service.enabled = !service.enabled;
                name.clone()
            })
            .collect();
        let members = if self.booted {
            self.mode_members(&self.mode.clone())
        } else {
            Vec::new()
        };
        for name in flipped {
            if disabled.contains(&name) {
                if self.services.get(&name).is_some_and(Service::is_active) {
                    self.actions.push(Action::Log(format!(
                        "service {name} disabled by the model: stopping it"
                    )));
                }
                self.clear_failure(&name);
                self.unwant(&name);
            } else if members.contains(&name) {
                self.actions.push(Action::Log(format!(
                    "service {name} enabled by the model: starting it"
                )));
                self.want(&name);
            }
        }
        self.settle(now)
    }

    /// The model's values of each service's `{KEY}` fields after a render:
    /// they apply from the service's next start.
    pub fn set_model_values(&mut self, values: &BTreeMap<String, BTreeMap<String, String>>) {
        for (name, service) in self.services.iter_mut() {
            let Some(service_values) = values.get(name) else {
                continue;
            };
            if service.model_values != *service_values {
                service.model_values = service_values.clone();
                service.definition = service.definition.with_model_values(service_values);
            }
        }
    }

    /// Switch mode: services outside it stop, boot services of it start.
    pub fn set_mode(&mut self, mode: &str, now: Instant) -> Vec<Action> {
        self.mode = mode.to_string();
        let members = self.mode_members(mode);
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in &names {
            if !members.contains(name) && !self.in_current_mode_by_definition(name) {
                self.unwant(name);
            }
        }
        self.leaving = names
            .into_iter()
            .filter(|name| {
                self.services
                    .get(name)
                    .is_some_and(|service| !service.wanted && service.is_active())
            })
            .collect();
        for name in &members {
            self.want(name);
        }
        self.mode_ready_pending = true;
        self.events.push_back(Event::Mode(mode.to_string()));
        self.settle(now)
    }

    fn in_current_mode_by_definition(&self, name: &str) -> bool {
        // A start-on service of the new mode that is already up stays up.
        self.services
            .get(name)
            .map(|service| {
                in_mode(&service.definition, &self.mode) && !service.definition.start_on.is_empty()
            })
            .unwrap_or(false)
    }

    /// Replace the definitions (`initctl load`): changed definitions apply
    /// on the next start; removed services are stopped, then forgotten; new
    /// ones of the mode are started.
    pub fn load(&mut self, definitions: Vec<ServiceDefinition>, now: Instant) -> Vec<Action> {
        let new_names: Vec<String> = definitions.iter().map(|d| d.name.clone()).collect();
        let old_names: Vec<String> = self.services.keys().cloned().collect();
        for name in &old_names {
            if !new_names.contains(name) {
                self.unwant(name);
            }
        }
        for definition in definitions {
            match self.services.get_mut(&definition.name) {
                Some(service) => {
                    service.definition = definition.with_model_values(&service.model_values)
                }
                None => {
                    self.services
                        .insert(definition.name.clone(), Service::new(definition));
                }
            }
        }
        let mut actions = self.settle(now);
        // Forget removed services that are down.
        self.services
            .retain(|name, service| new_names.contains(name) || service.is_active());
        if self.booted {
            for name in self.mode_members(&self.mode.clone()) {
                let fresh = self
                    .services
                    .get(&name)
                    .map(|service| {
                        service.state == State::Stopped
                            && !service.wanted
                            && service.restarts == 0
                            && service.last_exit.is_none()
                    })
                    .unwrap_or(false);
                if fresh {
                    self.want(&name);
                }
            }
            actions.extend(self.settle(now));
        }
        actions
    }

    /// The driver forked the service.
    pub fn spawned(&mut self, name: &str, pid: i32, now: Instant) -> Vec<Action> {
        if let Some(service) = self.services.get_mut(name) {
            service.pid = Some(pid);
            service.state = State::Starting;
            service.started_at = Some(now);
            service.main_gone = false;
            service.killed = false;
            service.deadline = match service.definition.ready {
                Readiness::None | Readiness::Exit => None,
                _ => Some(now + service.definition.ready_timeout),
            };
            let ready = service.definition.ready.clone();
            self.changed(name, State::Starting, Some(pid));
            match ready {
                Readiness::None => self.become_ready(name, None, now),
                Readiness::Exit => {}
                _ => self.actions.push(Action::WatchReadiness(name.to_string())),
            }
        }
        self.settle(now)
    }

    /// Fork or exec failed (missing binary, bad user): the service fails at
    /// once; others are not affected.
    pub fn spawn_failed(&mut self, name: &str, error: &str, now: Instant) -> Vec<Action> {
        self.actions
            .push(Action::Log(format!("service {name} cannot start: {error}")));
        self.fail(name, error.to_string());
        self.settle(now)
    }

    /// Fork or exec failed for want of resources (EAGAIN, ENOMEM, EMFILE,
    /// ENFILE): weather, not the service's fault. The service waits out its
    /// backoff and is tried again; this does not count toward its restart
    /// limit, so it never becomes `failed` this way.
    pub fn spawn_deferred(&mut self, name: &str, error: &str, now: Instant) -> Vec<Action> {
        if let Some(service) = self.services.get_mut(name) {
            let delay = service.backoff;
            service.backoff = (service.backoff * 2).min(service.definition.restart.backoff_max);
            service.pid = None;
            service.reason = Some(format!("{error}; trying again"));
            if service.wanted {
                service.state = State::Backoff;
                service.deadline = Some(now + delay);
                self.actions.push(Action::Log(format!(
                    "service {name} cannot start yet: {error}; trying again in {}ms",
                    delay.as_millis()
                )));
                self.changed(name, State::Backoff, None);
            } else {
                service.state = State::Stopped;
                service.deadline = None;
                self.changed(name, State::Stopped, None);
            }
        }
        self.settle(now)
    }

    /// `WATCHDOG=1` from a running sd-notify service with a watchdog: the
    /// next one is due a watchdog period from now.
    pub fn watchdog_ping(&mut self, name: &str, now: Instant) -> Vec<Action> {
        if let Some(service) = self.services.get_mut(name) {
            if service.state == State::Running {
                if let Some(every) = service.definition.watchdog {
                    service.deadline = Some(now + every);
                }
            }
        }
        self.settle(now)
    }

    /// Readiness reached (tcp connect, notify line, pidfile naming a live
    /// process: `pid` then becomes the main process).
    pub fn ready(&mut self, name: &str, pid: Option<i32>, now: Instant) -> Vec<Action> {
        if self.services.get(name).map(|service| service.state) == Some(State::Starting) {
            self.become_ready(name, pid, now);
        }
        self.settle(now)
    }

    /// A child was reaped. Returns the actions; an exit of an unknown pid (an
    /// orphan) is only logged by the driver.
    /// The service whose main process `pid` ending with `exit` would be a
    /// failure that takes the rest of the service down (`KillService`), as
    /// `exited` decides; asked before the exit is credited.
    pub fn failing_service(&self, pid: i32, exit: Exit) -> Option<&str> {
        self.services
            .values()
            .find(|service| service.pid == Some(pid))
            .filter(|service| matches!(service.state, State::Starting | State::Running))
            .filter(|service| exit_is_failure(service, exit))
            .map(|service| service.definition.name.as_str())
    }

    /// The service whose main process `pid` ended with exit 0 while the
    /// service should run (not a oneshot's success, not a pidfile launcher):
    /// if it left processes behind, it daemonized (`daemonized`).
    pub fn clean_exit_while_up(&self, pid: i32, exit: Exit) -> Option<&str> {
        self.failing_service(pid, exit).filter(|_| exit.success())
    }

    /// The main process exited 0 and left `left` processes of the service
    /// running: it forked into the background, so a respawn would only
    /// daemonize again. The service is killed whole and fails at once with
    /// what to do, instead of crash-looping.
    pub fn daemonized(&mut self, name: &str, left: usize, now: Instant) -> Vec<Action> {
        let Some(service) = self
            .services
            .get_mut(name)
            .filter(|service| matches!(service.state, State::Starting | State::Running))
        else {
            return self.settle(now);
        };
        service.pid = None;
        service.last_exit = Some(Exit::Code(0));
        let reason = format!(
            "{name} daemonized: run it in the foreground, e.g. {}",
            foreground_hint(&service.definition)
        );
        self.actions.push(Action::Log(format!(
            "{reason} (its main process exited 0 and left {left} process(es) running: killed)"
        )));
        self.actions.push(Action::KillService(name.to_string()));
        self.fail(name, reason);
        self.settle(now)
    }

    pub fn exited(&mut self, pid: i32, exit: Exit, now: Instant) -> Vec<Action> {
        let Some(name) = self
            .services
            .values()
            .find(|service| service.pid == Some(pid))
            .map(|service| service.definition.name.clone())
        else {
            return Vec::new();
        };
        let Some(service) = self.services.get_mut(&name) else {
            return Vec::new();
        };
        service.pid = None;
        service.last_exit = Some(exit);
        match service.state {
            State::Stopping => {
                service.main_gone = true;
                // The driver now reports `service_empty` once every other
                // process of the service is gone.
            }
            State::Starting | State::Running => {
                let oneshot = service.definition.ready == Readiness::Exit;
                if !exit_is_failure(service, exit) {
                    if oneshot && service.state == State::Starting {
                        self.become_ready(&name, None, now);
                    }
                    // Or a pidfile launcher that forked the daemon and left:
                    // wait for the pidfile.
                } else {
                    self.actions.push(Action::KillService(name.clone()));
                    self.after_failure(&name, exit, now);
                }
            }
            _ => {}
        }
        self.settle(now)
    }

    /// Every process of a stopping service is gone.
    pub fn service_empty(&mut self, name: &str, now: Instant) -> Vec<Action> {
        if let Some(service) = self.services.get_mut(name) {
            if service.state == State::Stopping && service.main_gone {
                service.state = State::Stopped;
                service.deadline = None;
                service.main_gone = false;
                self.changed(name, State::Stopped, None);
                self.events.push_back(Event::Stopped(name.to_string()));
            }
        }
        self.settle(now)
    }

    /// Services in `Stopping` whose main process is gone: the driver checks
    /// whether anything of them is left.
    pub fn waiting_for_empty(&self) -> Vec<String> {
        self.services
            .values()
            .filter(|service| service.state == State::Stopping && service.main_gone)
            .map(|service| service.definition.name.clone())
            .collect()
    }

    /// Services still starting that wait for readiness by polling.
    pub fn starting(&self) -> Vec<&Service> {
        self.services
            .values()
            .filter(|service| service.state == State::Starting)
            .collect()
    }

    pub fn all_stopped(&self) -> bool {
        self.services.values().all(|service| !service.is_active())
    }

    /// The earliest timer (backoff end, ready timeout, stop timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .values()
            .filter_map(|service| service.deadline)
            .min()
    }

    /// Time passed: fire due timers.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let due: Vec<String> = self
            .services
            .values()
            .filter(|service| service.deadline.is_some_and(|deadline| deadline <= now))
            .map(|service| service.definition.name.clone())
            .collect();
        for name in due {
            let Some(service) = self.services.get_mut(&name) else {
                continue;
            };
            service.deadline = None;
            match service.state {
                State::Backoff => {
                    service.state = State::Stopped;
                    // wanted is still set: reconcile spawns it.
                }
                State::Starting => {
                    let timeout = service.definition.ready_timeout;
                    let message =
                        format!("service {name} not ready after {}ms", timeout.as_millis());
                    self.kill_as_failed(&name, message, now);
                }
                State::Running => {
                    // Only a watchdog sets a deadline on a running service.
                    let every = service.definition.watchdog.unwrap_or_default();
                    let message = format!(
                        "service {name} sent no WATCHDOG=1 within {}ms: killed",
                        every.as_millis()
                    );
                    self.kill_as_failed(&name, message, now);
                }
                State::Stopping => {
                    if let Some(service) = self.services.get_mut(&name) {
                        service.killed = true;
                    }
                    self.actions.push(Action::Log(format!(
                        "service {name} still running after its stop timeout: SIGKILL"
                    )));
                    self.actions.push(Action::KillService(name.clone()));
                }
                _ => {}
            }
        }
        self.settle(now)
    }

    // --- internals ---

    /// A deadline missed (readiness, watchdog): say why, kill the whole
    /// service, and count it as a failure (respawn with backoff).
    fn kill_as_failed(&mut self, name: &str, message: String, now: Instant) {
        self.actions.push(Action::Log(message));
        self.actions.push(Action::KillService(name.to_string()));
        if let Some(service) = self.services.get_mut(name) {
            service.pid = None;
        }
        self.after_failure(name, Exit::Signal(libc::SIGKILL), now);
    }

    fn want(&mut self, name: &str) {
        let mut queue = vec![name.to_string()];
        while let Some(next) = queue.pop() {
            if let Some(service) = self.services.get_mut(&next) {
                if !service.wanted && service.enabled {
                    service.wanted = true;
                    queue.extend(service.definition.needs.iter().cloned());
                }
            }
        }
    }

    fn unwant(&mut self, name: &str) {
        let mut queue = vec![name.to_string()];
        while let Some(next) = queue.pop() {
            let Some(service) = self.services.get_mut(&next) else {
                continue;
            };
            let was_wanted = service.wanted;
            service.wanted = false;
            if service.state == State::Backoff {
                service.state = State::Stopped;
                service.deadline = None;
                self.changed(&next, State::Stopped, None);
            }
            if was_wanted || next == name {
                for (dependent, service) in &self.services {
                    if service.definition.needs.contains(&next) && service.wanted {
                        queue.push(dependent.clone());
                    }
                }
            }
        }
    }

    fn changed(&mut self, name: &str, state: State, pid: Option<i32>) {
        self.actions.push(Action::StateChanged {
            name: name.to_string(),
            state,
            pid,
        });
    }

    fn become_ready(&mut self, name: &str, pid: Option<i32>, now: Instant) {
        if let Some(service) = self.services.get_mut(name) {
            if pid.is_some() {
                service.pid = pid;
            }
            service.state = State::Running;
            service.ready_at = Some(now);
            // An sd-notify watchdog: the first WATCHDOG=1 is due by then.
            service.deadline = service.definition.watchdog.map(|every| now + every);
            let pid = service.pid;
            self.changed(name, State::Running, pid);
            self.events.push_back(Event::Started(name.to_string()));
        }
    }

    fn fail(&mut self, name: &str, reason: String) {
        if let Some(service) = self.services.get_mut(name) {
            service.state = State::Failed;
            service.wanted = false;
            service.deadline = None;
            service.pid = None;
            service.reason = Some(reason);
            self.changed(name, State::Failed, None);
            self.events.push_back(Event::Failed(name.to_string()));
        }
    }

    /// The main process ended (or never became ready) while it should run.
    fn after_failure(&mut self, name: &str, exit: Exit, now: Instant) {
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        let restart = service.definition.restart.clone();
        let respawn = service.wanted
            && match restart.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Never => false,
            };
        if !respawn {
            if exit.success() {
                service.state = State::Stopped;
                service.wanted = false;
                service.deadline = None;
                self.changed(name, State::Stopped, None);
                self.events.push_back(Event::Stopped(name.to_string()));
            } else {
                self.fail(name, exit.describe());
            }
            return;
        }
        let ran = service
            .started_at
            .map(|started| now.saturating_duration_since(started));
        // A service that ran longer than the window starts over with the
        // shortest backoff.
        if ran.is_some_and(|ran| ran >= restart.within) {
            service.backoff = restart.backoff_min;
        }
        while service
            .restart_times
            .front()
            .is_some_and(|time| now.saturating_duration_since(*time) >= restart.within)
        {
            service.restart_times.pop_front();
        }
        if service.restart_times.len() as u32 >= restart.max {
            let reason = format!(
                "{} restarts within {}ms, last {}",
                restart.max,
                restart.within.as_millis(),
                exit.describe()
            );
            self.fail(name, reason);
            return;
        }
        service.restart_times.push_back(now);
        service.restarts += 1;
        // As runit does: a service that was up for a while is respawned at
        // once, and only a crash loop (death within SETTLED of the start)
        // waits out the backoff, which doubles on each quick death.
        let delay = if ran.is_some_and(|ran| ran >= SETTLED) {
            service.backoff = restart.backoff_min;
            Duration::ZERO
        } else {
            let delay = service.backoff;
            service.backoff = (service.backoff * 2).min(restart.backoff_max);
            delay
        };
        service.state = State::Backoff;
        service.deadline = Some(now + delay);
        self.changed(name, State::Backoff, None);
    }

    fn begin_stop(&mut self, name: &str, now: Instant) {
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        match (service.state, service.pid) {
            (State::Running | State::Starting, Some(pid)) => {
                let signal = service.definition.stop_signal;
                service.state = State::Stopping;
                service.main_gone = false;
                service.killed = false;
                service.deadline = Some(now + service.definition.stop_timeout);
                self.changed(name, State::Stopping, Some(pid));
                self.actions
                    .push(Action::SignalService(name.to_string(), signal));
            }
            (State::Running | State::Starting, None) => {
                // A finished oneshot, or a pidfile launcher gone before the
                // pidfile: stop whatever is left of the service.
                let signal = service.definition.stop_signal;
                service.state = State::Stopping;
                service.main_gone = true;
                service.killed = false;
                service.deadline = Some(now + service.definition.stop_timeout);
                self.changed(name, State::Stopping, None);
                self.actions
                    .push(Action::SignalService(name.to_string(), signal));
            }
            _ => {}
        }
    }

    /// The earliest phase (script type) with a wanted service that is not
    /// yet up or failed: services of later phases wait for it.
    fn starting_phase(&self) -> Option<u8> {
        self.services
            .values()
            .filter(|service| {
                service.wanted && !matches!(service.state, State::Running | State::Failed)
            })
            .filter_map(|service| service.definition.service_type.phase())
            .min()
    }

    /// Process queued events, then move every service towards its goal,
    /// until nothing changes.
    fn settle(&mut self, now: Instant) -> Vec<Action> {
        loop {
            let mut progressed = false;
            while let Some(event) = self.events.pop_front() {
                progressed = true;
                self.actions.push(Action::Event(event.clone()));
                // Only events from outside run a finished oneshot again: two
                // oneshots on each other's started: would never settle.
                let external = is_external(&event);
                for name in self.starters(&event) {
                    if external {
                        self.clear_failure(&name);
                        self.rerun_if_finished(&name);
                    }
                    self.want(&name);
                }
            }
            // A mode switch starts nothing while the old mode's services stop.
            let services = &self.services;
            self.leaving.retain(|name| {
                services.get(name).is_some_and(|service| {
                    matches!(
                        service.state,
                        State::Starting | State::Running | State::Stopping
                    )
                })
            });
            let names: Vec<String> = self.services.keys().cloned().collect();
            let starting_phase = self.starting_phase();
            for name in &names {
                let Some(service) = self.services.get(name) else {
                    continue;
                };
                if service.wanted
                    && service.state == State::Stopped
                    && self.leaving.is_empty()
                    && phase_reached(service, starting_phase)
                {
                    let needs_up =
                        service.definition.needs.iter().all(|need| {
                            self.services.get(need).map(Service::is_up).unwrap_or(true)
                        });
                    if needs_up {
                        if let Some(service) = self.services.get_mut(name) {
                            // Spawning: the driver answers at once with
                            // spawned/spawn_failed.
                            service.state = State::Starting;
                        }
                        self.actions.push(Action::Spawn(name.clone()));
                        progressed = true;
                    }
                } else if !service.wanted
                    && matches!(service.state, State::Starting | State::Running)
                {
                    let dependents_down = self
                        .services
                        .values()
                        .all(|other| !other.definition.needs.contains(name) || !other.is_active());
                    if dependents_down {
                        self.begin_stop(name, now);
                        progressed = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if self.mode_ready_pending {
            // Helpers and user programs do not hold the ready line.
            let members: Vec<String> = self
                .mode_members(&self.mode.clone())
                .into_iter()
                .filter(|name| {
                    self.services
                        .get(name)
                        .is_some_and(|service| service.definition.service_type.blocks_ready())
                })
                .collect();
            let all_up = members
                .iter()
                .all(|name| self.services.get(name).map(Service::is_up).unwrap_or(false));
            if all_up {
                self.mode_ready_pending = false;
                self.actions.push(Action::ModeReady {
                    mode: self.mode.clone(),
                    services: members.len(),
                });
            }
        }
        self.take_actions()
    }
}

/// Events from outside the services: devices, timers, `initctl emit`.
fn is_external(event: &Event) -> bool {
    matches!(event, Event::Device(_) | Event::Timer(_) | Event::Custom(_))
}

/// How to keep a daemon in the foreground: the option of the program the
/// service runs when it is a known one, else common examples.
fn foreground_hint(definition: &ServiceDefinition) -> String {
    const KNOWN: &[(&str, &str)] = &[
        ("nginx", "nginx -g 'daemon off;'"),
        ("sshd", "sshd -D"),
        ("dnsmasq", "dnsmasq --keep-in-foreground"),
        ("keepalived", "keepalived --dont-fork"),
        ("haproxy", "haproxy -db"),
        ("chronyd", "chronyd -d"),
        ("rsyslogd", "rsyslogd -n"),
        ("redis-server", "redis-server --daemonize no"),
    ];
    let program = definition
        .exec
        .path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    match KNOWN.iter().find(|(name, _)| *name == program) {
        Some((_, hint)) => format!("{hint} in <exec>"),
        None => format!(
            "{program}'s no-fork option in <exec> (nginx -g 'daemon off;', sshd -D, dnsmasq --keep-in-foreground), or <ready kind=\"pidfile\" path=\"...\"/> if it must fork"
        ),
    }
}

/// Whether `service` may start while `starting_phase` is the earliest
/// phase still starting: system first, then network, then service, then
/// user programs; helpers whenever their needs are up.
fn phase_reached(service: &Service, starting_phase: Option<u8>) -> bool {
    match (service.definition.service_type.phase(), starting_phase) {
        (Some(phase), Some(starting)) => phase <= starting,
        _ => true,
    }
}

pub fn in_mode(definition: &ServiceDefinition, mode: &str) -> bool {
    definition.modes.is_empty() || definition.modes.iter().any(|m| m == mode)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
