//! Transition tables: inputs in, actions out, no processes.

use super::*;
use std::path::PathBuf;

fn definition(xml_body: &str, name: &str) -> ServiceDefinition {
    let text = format!(
        "<service name=\"{name}\"><exec path=\"/bin/sleep\"><arg>1</arg></exec>{xml_body}</service>"
    );
    servicedef::parse_str(&PathBuf::from(format!("/s/{name}/service.xml")), &text).unwrap()
}

fn spawns(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Spawn(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn stop_signals(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::SignalService(name, _) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn state(supervisor: &Supervisor, name: &str) -> State {
    supervisor.service(name).unwrap().state
}

/// The ready line of mode production with `services` members.
fn production_ready(services: usize) -> Action {
    Action::ModeReady {
        mode: "production".to_string(),
        services,
    }
}

/// web needs net (oneshot), db independent.
fn three() -> Supervisor {
    Supervisor::new(
        vec![
            definition("<ready kind=\"exit\"/>", "net"),
            definition("<needs>net</needs>", "web"),
            definition("", "db"),
        ],
        "production",
    )
}

#[test]
fn boot_starts_independent_services_together_and_dependents_after_ready() {
    let now = Instant::now();
    let mut supervisor = three();
    let actions = supervisor.boot(now);
    assert_eq!(spawns(&actions), vec!["db", "net"]);
    assert!(actions.contains(&Action::Event(Event::Boot)));
    assert!(spawns(&supervisor.spawned("net", 10, now)).is_empty());
    supervisor.spawned("db", 11, now);
    assert_eq!(state(&supervisor, "db"), State::Running, "ready kind none");
    assert_eq!(state(&supervisor, "net"), State::Starting);
    let actions = supervisor.exited(10, Exit::Code(0), now);
    assert_eq!(spawns(&actions), vec!["web"]);
    assert!(actions.contains(&Action::Event(Event::Started("net".to_string()))));
    let actions = supervisor.spawned("web", 12, now);
    assert!(actions.contains(&production_ready(3)));
}

#[test]
fn a_failing_oneshot_fails_and_its_dependents_never_start() {
    let now = Instant::now();
    let mut supervisor = three();
    supervisor.boot(now);
    supervisor.spawned("net", 10, now);
    let actions = supervisor.exited(10, Exit::Code(3), now);
    assert!(spawns(&actions).is_empty());
    assert_eq!(state(&supervisor, "net"), State::Failed);
    assert_eq!(state(&supervisor, "web"), State::Stopped);
    assert!(actions.contains(&Action::Event(Event::Failed("net".to_string()))));
}

#[test]
fn crash_loop_backs_off_exponentially_then_fails() {
    let start = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<restart backoff-min=\"100ms\" backoff-max=\"10s\" max=\"3\" within=\"60s\"/>",
            "crash",
        )],
        "dev",
    );
    supervisor.boot(start);
    let mut now = start;
    let mut pid = 100;
    let mut delays = Vec::new();
    supervisor.spawned("crash", pid, now);
    for _ in 0..3 {
        let actions = supervisor.exited(pid, Exit::Code(1), now);
        assert!(actions.contains(&Action::KillService("crash".to_string())));
        assert_eq!(state(&supervisor, "crash"), State::Backoff);
        let deadline = supervisor.next_deadline().unwrap();
        delays.push(deadline - now);
        // Nothing happens before the deadline.
        assert!(spawns(&supervisor.tick(deadline - Duration::from_millis(1))).is_empty());
        now = deadline;
        assert_eq!(spawns(&supervisor.tick(now)), vec!["crash"]);
        pid += 1;
        supervisor.spawned("crash", pid, now);
    }
    assert_eq!(
        delays,
        vec![
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
    let actions = supervisor.exited(pid, Exit::Code(1), now);
    assert_eq!(state(&supervisor, "crash"), State::Failed);
    assert!(spawns(&actions).is_empty());
    assert_eq!(supervisor.service("crash").unwrap().restarts, 3);
    assert!(supervisor.next_deadline().is_none());
    // Started by hand, it runs again with a fresh window.
    assert_eq!(spawns(&supervisor.start("crash", now)), vec!["crash"]);
}

#[test]
fn stop_while_restart_pending_does_not_resurrect() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(vec![definition("", "svc")], "dev");
    supervisor.boot(now);
    supervisor.spawned("svc", 5, now);
    supervisor.exited(5, Exit::Signal(libc::SIGSEGV), now);
    assert_eq!(state(&supervisor, "svc"), State::Backoff);
    supervisor.stop("svc", now);
    assert_eq!(state(&supervisor, "svc"), State::Stopped);
    assert!(spawns(&supervisor.tick(now + Duration::from_secs(3600))).is_empty());
    assert_eq!(state(&supervisor, "svc"), State::Stopped);
}

#[test]
fn stop_runs_in_reverse_dependency_order() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![
            definition("", "a"),
            definition("<needs>a</needs>", "b"),
            definition("<needs>b</needs>", "c"),
        ],
        "dev",
    );
    supervisor.boot(now);
    supervisor.spawned("a", 1, now);
    supervisor.spawned("b", 2, now);
    supervisor.spawned("c", 3, now);
    let actions = supervisor.stop_all(now);
    assert_eq!(stop_signals(&actions), vec!["c"]);
    supervisor.exited(3, Exit::Signal(libc::SIGTERM), now);
    let actions = supervisor.service_empty("c", now);
    assert_eq!(stop_signals(&actions), vec!["b"]);
    supervisor.exited(2, Exit::Signal(libc::SIGTERM), now);
    let actions = supervisor.service_empty("b", now);
    assert_eq!(stop_signals(&actions), vec!["a"]);
    supervisor.exited(1, Exit::Signal(libc::SIGTERM), now);
    supervisor.service_empty("a", now);
    assert!(supervisor.all_stopped());
}

#[test]
fn stop_timeout_sends_sigkill_and_waits_for_the_group() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition("<stop timeout=\"2s\"/>", "stubborn")],
        "dev",
    );
    supervisor.boot(now);
    supervisor.spawned("stubborn", 7, now);
    let actions = supervisor.stop("stubborn", now);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::SignalService(_, libc::SIGTERM)))
            .count(),
        1
    );
    assert!(!supervisor
        .tick(now + Duration::from_millis(1999))
        .contains(&Action::KillService("stubborn".to_string())));
    let actions = supervisor.tick(now + Duration::from_secs(2));
    assert!(actions.contains(&Action::KillService("stubborn".to_string())));
    assert_eq!(state(&supervisor, "stubborn"), State::Stopping);
    supervisor.exited(7, Exit::Signal(libc::SIGKILL), now);
    assert_eq!(supervisor.waiting_for_empty(), vec!["stubborn"]);
    supervisor.service_empty("stubborn", now);
    assert_eq!(state(&supervisor, "stubborn"), State::Stopped);
}

#[test]
fn start_on_fires_on_an_emitted_event_only() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![
            definition("<start-on event=\"go\"/>", "late"),
            definition("", "early"),
        ],
        "dev",
    );
    assert_eq!(spawns(&supervisor.boot(now)), vec!["early"]);
    assert!(spawns(&supervisor.emit(Event::Custom("other".to_string()), now)).is_empty());
    assert_eq!(
        spawns(&supervisor.emit(Event::Custom("go".to_string()), now)),
        vec!["late"]
    );
}

#[test]
fn start_on_a_builtin_event() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![
            definition("<start-on event=\"started:early\"/>", "after"),
            definition("", "early"),
        ],
        "dev",
    );
    supervisor.boot(now);
    assert_eq!(spawns(&supervisor.spawned("early", 1, now)), vec!["after"]);
}

#[test]
fn mode_switch_stops_and_starts_the_right_services() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![
            definition("<modes>production</modes>", "prod"),
            definition("<modes>failover</modes>", "fail"),
            definition("", "both"),
        ],
        "production",
    );
    assert_eq!(spawns(&supervisor.boot(now)), vec!["both", "prod"]);
    supervisor.spawned("both", 1, now);
    supervisor.spawned("prod", 2, now);
    let actions = supervisor.set_mode("failover", now);
    // The old mode's services stop first (they may hold the new one's port).
    assert!(spawns(&actions).is_empty());
    assert_eq!(stop_signals(&actions), vec!["prod"]);
    assert!(actions.contains(&Action::Event(Event::Mode("failover".to_string()))));
    assert_eq!(supervisor.mode(), "failover");
    assert!(spawns(&supervisor.exited(2, Exit::Signal(15), now)).is_empty());
    assert_eq!(spawns(&supervisor.service_empty("prod", now)), vec!["fail"]);
}

#[test]
fn pidfile_launcher_exit_waits_for_the_daemon() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<ready kind=\"pidfile\" path=\"/run/d.pid\"/>",
            "daemon",
        )],
        "dev",
    );
    supervisor.boot(now);
    let actions = supervisor.spawned("daemon", 10, now);
    assert!(actions.contains(&Action::WatchReadiness("daemon".to_string())));
    supervisor.exited(10, Exit::Code(0), now);
    assert_eq!(state(&supervisor, "daemon"), State::Starting);
    supervisor.ready("daemon", Some(42), now);
    assert_eq!(state(&supervisor, "daemon"), State::Running);
    assert_eq!(supervisor.service("daemon").unwrap().pid, Some(42));
    supervisor.exited(42, Exit::Code(1), now);
    assert_eq!(state(&supervisor, "daemon"), State::Backoff);
}

#[test]
fn ready_timeout_counts_as_a_failure() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<ready kind=\"tcp\" port=\"1\" timeout=\"1s\"/><restart policy=\"never\"/>",
            "slow",
        )],
        "dev",
    );
    supervisor.boot(now);
    supervisor.spawned("slow", 3, now);
    let actions = supervisor.tick(now + Duration::from_secs(1));
    assert!(actions.contains(&Action::KillService("slow".to_string())));
    assert_eq!(state(&supervisor, "slow"), State::Failed);
}

#[test]
fn spawn_failure_fails_only_that_service() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(vec![definition("", "a"), definition("", "b")], "dev");
    supervisor.boot(now);
    supervisor.spawn_failed("a", "/nope: No such file or directory", now);
    supervisor.spawned("b", 2, now);
    assert_eq!(state(&supervisor, "a"), State::Failed);
    assert_eq!(state(&supervisor, "b"), State::Running);
}

#[test]
fn reload_signals_the_main_process_or_restarts() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![
            definition("<reload signal=\"HUP\"/>", "hup"),
            definition("", "plain"),
        ],
        "dev",
    );
    supervisor.boot(now);
    supervisor.spawned("hup", 1, now);
    supervisor.spawned("plain", 2, now);
    assert_eq!(
        supervisor.reload("hup", now),
        vec![Action::SignalProcess(1, libc::SIGHUP)]
    );
    let actions = supervisor.reload("plain", now);
    assert_eq!(stop_signals(&actions), vec!["plain"]);
    supervisor.exited(2, Exit::Signal(libc::SIGTERM), now);
    let actions = supervisor.service_empty("plain", now);
    assert_eq!(spawns(&actions), vec!["plain"], "a restart starts it again");
}

#[test]
fn exits_are_credited_by_pid() {
    let now = Instant::now();
    let names: Vec<String> = (0..100).map(|index| format!("s{index:03}")).collect();
    let mut supervisor = Supervisor::new(
        names
            .iter()
            .map(|name| definition("<restart policy=\"never\"/>", name))
            .collect(),
        "dev",
    );
    supervisor.boot(now);
    for (index, name) in names.iter().enumerate() {
        supervisor.spawned(name, 1000 + index as i32, now);
    }
    for index in (0..100).rev() {
        supervisor.exited(1000 + index, Exit::Code(index % 7 + 1), now);
    }
    for (index, name) in names.iter().enumerate() {
        assert_eq!(
            supervisor.service(name).unwrap().last_exit,
            Some(Exit::Code(index as i32 % 7 + 1))
        );
    }
}

/// Guards the respawn latency: a service that ran for a while is respawned at
/// once (runit's rule), only quick deaths wait for the backoff.
#[test]
fn a_settled_service_is_respawned_at_once_and_a_quick_death_backs_off() {
    let start = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<restart backoff-min=\"100ms\" backoff-max=\"10s\" max=\"10\" within=\"60s\"/>",
            "svc",
        )],
        "dev",
    );
    supervisor.boot(start);
    supervisor.spawned("svc", 100, start);
    let died = start + SETTLED;
    supervisor.exited(100, Exit::Signal(libc::SIGKILL), died);
    assert_eq!(supervisor.next_deadline(), Some(died));
    assert_eq!(spawns(&supervisor.tick(died)), vec!["svc"]);
    supervisor.spawned("svc", 101, died);
    // Dies right away: a crash loop, so the backoff applies.
    supervisor.exited(101, Exit::Code(1), died);
    assert_eq!(
        supervisor.next_deadline(),
        Some(died + Duration::from_millis(100))
    );
    assert!(spawns(&supervisor.tick(died)).is_empty());
}

/// Guards: a fork that fails for want of resources (EMFILE, EAGAIN...) is
/// weather: the service backs off and is spawned again, never `failed`,
/// however often it happens (it used to fail for good like a missing binary).
#[test]
fn a_transient_spawn_error_backs_off_and_retries_without_failing() {
    let mut now = Instant::now();
    let mut supervisor = Supervisor::new(vec![definition("", "db")], "production");
    assert_eq!(spawns(&supervisor.boot(now)), vec!["db"]);
    let mut delays = Vec::new();
    for _ in 0..20 {
        let actions =
            supervisor.spawn_deferred("db", "fork: Resource temporarily unavailable", now);
        assert!(spawns(&actions).is_empty());
        assert_eq!(state(&supervisor, "db"), State::Backoff);
        let deadline = supervisor.next_deadline().unwrap();
        delays.push(deadline - now);
        now = deadline;
        assert_eq!(spawns(&supervisor.tick(now)), vec!["db"], "tried again");
    }
    assert!(
        delays.windows(2).all(|pair| pair[0] <= pair[1]),
        "{delays:?}"
    );
    assert!(delays[19] > delays[0], "the delay grows: {delays:?}");
    let actions = supervisor.spawned("db", 42, now);
    assert!(actions.iter().any(|action| matches!(
        action,
        Action::StateChanged {
            state: State::Running,
            ..
        }
    )));
    assert_eq!(supervisor.service("db").unwrap().restarts, 0);
}

/// A stop while deferred leaves the service stopped, with no retry.
#[test]
fn a_stop_while_a_spawn_is_deferred_cancels_the_retry() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(vec![definition("", "db")], "production");
    supervisor.boot(now);
    supervisor.spawn_deferred("db", "fork: Cannot allocate memory", now);
    supervisor.stop("db", now);
    assert_eq!(state(&supervisor, "db"), State::Stopped);
    assert!(spawns(&supervisor.tick(now + Duration::from_secs(60))).is_empty());
}

/// The state × input table: one service ("svc", tcp readiness so that
/// `starting` is a state of its own, respawn always) is brought into each
/// state, then given each input; the cell is the state after it and the
/// kinds of actions asked for. Every cell is written out below.
mod table {
    use super::*;

    const PID: i32 = 100;

    fn one() -> Supervisor {
        Supervisor::new(
            vec![definition(
                "<ready kind=\"tcp\" port=\"80\"/><restart max=\"3\" within=\"60s\" backoff-min=\"100ms\" backoff-max=\"1s\"/>",
                "svc",
            )],
            "production",
        )
    }

    /// A supervisor with "svc" in `state`, and the time it is at.
    fn in_state(state: State) -> (Supervisor, Instant) {
        let now = Instant::now();
        let mut supervisor = one();
        if state == State::Stopped {
            // Never started (nothing asked of the driver yet).
            return (supervisor, now);
        }
        supervisor.boot(now);
        match state {
            State::Stopped => {}
            State::Starting => {
                supervisor.spawned("svc", PID, now);
            }
            State::Running => {
                supervisor.spawned("svc", PID, now);
                supervisor.ready("svc", None, now);
            }
            State::Stopping => {
                supervisor.spawned("svc", PID, now);
                supervisor.ready("svc", None, now);
                supervisor.stop("svc", now);
            }
            State::Backoff => {
                supervisor.spawned("svc", PID, now);
                supervisor.ready("svc", None, now);
                supervisor.exited(PID, Exit::Code(1), now);
            }
            State::Failed => {
                supervisor.spawn_failed("svc", "/bin/sleep: No such file or directory", now);
            }
        }
        assert_eq!(
            supervisor.service("svc").unwrap().state,
            state,
            "recipe for {state:?}"
        );
        (supervisor, now)
    }

    const INPUTS: [&str; 15] = [
        "start",
        "stop",
        "restart",
        "reload",
        "spawned",
        "spawn_failed",
        "spawn_deferred",
        "ready",
        "exit 0",
        "exit 1",
        "empty",
        "tick +2m",
        "disable",
        "re-enable",
        "daemonized",
    ];

    fn apply(supervisor: &mut Supervisor, now: Instant, input: &str) -> Vec<Action> {
        match input {
            "start" => supervisor.start("svc", now),
            "stop" => supervisor.stop("svc", now),
            "restart" => supervisor.restart("svc", now),
            "reload" => supervisor.reload("svc", now),
            "spawned" => supervisor.spawned("svc", PID + 1, now),
            "spawn_failed" => supervisor.spawn_failed("svc", "gone", now),
            "spawn_deferred" => supervisor.spawn_deferred("svc", "EAGAIN", now),
            "ready" => supervisor.ready("svc", None, now),
            "exit 0" => supervisor.exited(PID, Exit::Code(0), now),
            "exit 1" => supervisor.exited(PID, Exit::Code(1), now),
            "empty" => supervisor.service_empty("svc", now),
            "disable" => supervisor.set_disabled(&["svc".to_string()], now),
            "re-enable" => {
                let mut actions = supervisor.set_disabled(&["svc".to_string()], now);
                actions.extend(supervisor.set_disabled(&[], now));
                actions
            }
            "daemonized" => supervisor.daemonized("svc", 1, now),
            _ => supervisor.tick(now + Duration::from_secs(120)),
        }
    }

    /// The cell: the state after, and the actions' kinds (sorted, no logs).
    fn cell(state: State, input: &str) -> String {
        let (mut supervisor, now) = in_state(state);
        let actions = apply(&mut supervisor, now, input);
        let mut kinds: Vec<&str> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Spawn(_) => Some("spawn"),
                Action::SignalService(..) => Some("signal"),
                Action::SignalProcess(..) => Some("signal"),
                Action::KillService(_) => Some("kill"),
                Action::WatchReadiness(_) => Some("watch"),
                Action::Event(_) => Some("event"),
                _ => None,
            })
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let after = supervisor.service("svc").unwrap().state.as_str();
        if kinds.is_empty() {
            after.to_string()
        } else {
            format!("{after} ({})", kinds.join(","))
        }
    }

    #[test]
    fn every_state_and_input() {
        let states = [
            State::Stopped,
            State::Starting,
            State::Running,
            State::Stopping,
            State::Backoff,
            State::Failed,
        ];
        let mut actual = String::new();
        for state in states {
            for input in INPUTS {
                actual.push_str(&format!(
                    "{:<9} {:<15} -> {}\n",
                    state.as_str(),
                    input,
                    cell(state, input)
                ));
            }
        }
        let expected = include_str!("table.txt");
        if actual != expected {
            if std::env::var("UPDATE_EXPECT").is_ok_and(|value| value == "1") {
                std::fs::write(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("src/supervisor/table.txt"),
                    &actual,
                )
                .unwrap();
            } else {
                panic!("the state table changed (UPDATE_EXPECT=1 to bless, then read every changed line):\n{actual}");
            }
        }
    }
}

/// Guards: an sd-notify watchdog kills and restarts a service that stops
/// pinging, and each `WATCHDOG=1` moves the deadline.
#[test]
fn a_silent_watchdog_service_is_killed_and_respawned() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<ready kind=\"sd-notify\" watchdog=\"1s\"/>",
            "dog",
        )],
        "production",
    );
    supervisor.boot(now);
    supervisor.spawned("dog", 7, now);
    supervisor.ready("dog", None, now);
    assert_eq!(state(&supervisor, "dog"), State::Running);
    let at = |ms: u64| now + Duration::from_millis(ms);
    supervisor.tick(at(900));
    assert_eq!(state(&supervisor, "dog"), State::Running);
    supervisor.watchdog_ping("dog", at(900));
    supervisor.tick(at(1500));
    assert_eq!(
        state(&supervisor, "dog"),
        State::Running,
        "the ping moved the deadline"
    );
    let actions = supervisor.tick(at(1901));
    assert!(
        actions.contains(&Action::KillService("dog".to_string())),
        "{actions:?}"
    );
    assert_eq!(state(&supervisor, "dog"), State::Backoff);
    assert_eq!(spawns(&supervisor.tick(at(5000))), vec!["dog"]);
}

/// Guards a demoted failover node's way back: keepalived's track script asks
/// `initctl status web`, which fails while web is `failed`; `initctl stop`
/// acknowledges the failure without starting the service.
#[test]
fn stopping_a_failed_service_makes_it_stopped_and_a_mode_switch_starts_it_again() {
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<modes>failover</modes><restart max=\"1\" within=\"60s\"/>",
            "web",
        )],
        "failover",
    );
    let now = Instant::now();
    assert_eq!(spawns(&supervisor.boot(now)), vec!["web"]);
    supervisor.spawned("web", 10, now);
    supervisor.exited(10, Exit::Code(1), now);
    let deadline = supervisor.next_deadline().unwrap();
    assert_eq!(spawns(&supervisor.tick(deadline)), vec!["web"]);
    supervisor.spawned("web", 11, deadline);
    supervisor.exited(11, Exit::Code(1), deadline);
    assert_eq!(state(&supervisor, "web"), State::Failed);
    // A switch to a mode without it keeps the failure.
    supervisor.set_mode("backup", deadline);
    assert_eq!(state(&supervisor, "web"), State::Failed);
    let actions = supervisor.stop("web", deadline);
    assert!(spawns(&actions).is_empty());
    assert_eq!(state(&supervisor, "web"), State::Stopped);
    assert_eq!(
        spawns(&supervisor.set_mode("failover", deadline)),
        vec!["web"]
    );
}

/// Guards the images that carry keepalived for another mode: a render that
/// changes its files (another server id) must not start it.
#[test]
fn a_config_change_restarts_only_a_running_service() {
    let mut supervisor = Supervisor::new(
        vec![
            definition("<modes>test</modes>", "web"),
            definition("<modes>failover</modes>", "keepalived"),
        ],
        "test",
    );
    let now = Instant::now();
    assert!(spawns(&supervisor.restart_if_active("keepalived", now)).is_empty());
    assert_eq!(spawns(&supervisor.boot(now)), vec!["web"]);
    supervisor.spawned("web", 10, now);
    assert!(spawns(&supervisor.restart_if_active("keepalived", now)).is_empty());
    assert_eq!(state(&supervisor, "keepalived"), State::Stopped);
    let actions = supervisor.restart_if_active("web", now);
    assert_eq!(stop_signals(&actions), vec!["web"]);
}

/// The model's `enabled` flipped live: only that service stops, then
/// starts again; nothing else is signalled or spawned.
#[test]
fn a_disabled_service_stops_alone_and_starts_again_when_enabled() {
    let now = Instant::now();
    let mut supervisor = three();
    supervisor.boot(now);
    supervisor.spawned("net", 10, now);
    supervisor.spawned("db", 11, now);
    supervisor.exited(10, Exit::Code(0), now);
    supervisor.spawned("web", 12, now);
    let actions = supervisor.set_disabled(&["db".to_string()], now);
    assert_eq!(stop_signals(&actions), vec!["db"]);
    assert!(spawns(&actions).is_empty());
    supervisor.exited(11, Exit::Signal(libc::SIGTERM), now);
    supervisor.service_empty("db", now);
    assert_eq!(state(&supervisor, "db"), State::Stopped);
    assert_eq!(state(&supervisor, "web"), State::Running);
    // Disabled: neither a start by hand nor a mode switch runs it.
    assert!(spawns(&supervisor.start("db", now)).is_empty());
    assert!(spawns(&supervisor.set_mode("production", now)).is_empty());
    // The same list again changes nothing.
    assert!(supervisor.set_disabled(&["db".to_string()], now).is_empty());
    let actions = supervisor.set_disabled(&[], now);
    assert_eq!(spawns(&actions), vec!["db"]);
    assert!(stop_signals(&actions).is_empty());
}

/// Disabled before boot (the first render's change set): never started,
/// and the ready line does not wait for it.
#[test]
fn a_service_disabled_before_boot_never_starts_and_ready_does_not_wait_for_it() {
    let now = Instant::now();
    let mut supervisor = three();
    assert!(supervisor.set_disabled(&["db".to_string()], now).is_empty());
    let actions = supervisor.boot(now);
    assert_eq!(spawns(&actions), vec!["net"]);
    supervisor.spawned("net", 10, now);
    supervisor.exited(10, Exit::Code(0), now);
    let actions = supervisor.spawned("web", 12, now);
    assert!(actions.contains(&production_ready(2)));
}

/// A failed service that the model disables forgets its failure, so
/// enabling it again starts it afresh.
#[test]
fn disabling_a_failed_service_clears_the_failure() {
    let now = Instant::now();
    let mut supervisor = three();
    supervisor.boot(now);
    supervisor.spawned("net", 10, now);
    supervisor.exited(10, Exit::Code(3), now);
    assert_eq!(state(&supervisor, "net"), State::Failed);
    supervisor.set_disabled(&["net".to_string(), "web".to_string()], now);
    assert_eq!(state(&supervisor, "net"), State::Stopped);
    let actions = supervisor.set_disabled(&[], now);
    assert_eq!(spawns(&actions), vec!["net"]);
}

/// `<ready kind="tcp" port="{port}"/>`: the port follows the model's value.
#[test]
fn a_readiness_port_from_the_model_applies_and_survives_a_load() {
    let port_from_model = || {
        definition(
            "<ready kind=\"tcp\" port=\"{port}\"/><key name=\"port\" type=\"port\" default=\"80\">p</key>",
            "web",
        )
    };
    let mut supervisor = Supervisor::new(vec![port_from_model()], "production");
    let port =
        |supervisor: &Supervisor| supervisor.service("web").unwrap().definition.ready.clone();
    assert_eq!(port(&supervisor), Readiness::Tcp { port: 80 });
    let values = BTreeMap::from([(
        "web".to_string(),
        BTreeMap::from([("port".to_string(), "8080".to_string())]),
    )]);
    supervisor.set_model_values(&values);
    assert_eq!(port(&supervisor), Readiness::Tcp { port: 8080 });
    supervisor.load(vec![port_from_model()], Instant::now());
    assert_eq!(port(&supervisor), Readiness::Tcp { port: 8080 });
}

/// A daemonized service fails at once with the foreground option of its
/// program (or common examples), is killed whole and not respawned.
#[test]
fn a_daemonized_service_fails_at_once_with_what_to_do() {
    let now = Instant::now();
    let nginx = servicedef::parse_str(
        &PathBuf::from("/s/web/service.xml"),
        "<service name=\"web\"><exec path=\"/usr/sbin/nginx\"/></service>",
    )
    .unwrap();
    let mut supervisor = Supervisor::new(vec![nginx, definition("", "other")], "production");
    supervisor.boot(now);
    supervisor.spawned("web", 10, now);
    supervisor.spawned("other", 11, now);
    assert_eq!(supervisor.clean_exit_while_up(10, Exit::Code(1)), None);
    assert_eq!(
        supervisor.clean_exit_while_up(10, Exit::Code(0)),
        Some("web")
    );
    let actions = supervisor.daemonized("web", 2, now);
    assert!(actions.contains(&Action::KillService("web".to_string())));
    assert!(spawns(&actions).is_empty());
    let web = supervisor.service("web").unwrap();
    assert_eq!(web.state, State::Failed);
    assert_eq!(
        web.reason.as_deref(),
        Some("web daemonized: run it in the foreground, e.g. nginx -g 'daemon off;' in <exec>")
    );
    let other = definition("", "other");
    assert!(foreground_hint(&other).starts_with("sleep's no-fork option in <exec>"));
    assert_eq!(state(&supervisor, "other"), State::Running);
}

/// The five script types in one mode: system, then network, then service,
/// then user programs; a helper at once; the ready line waits for system,
/// network and service only.
fn typed() -> Supervisor {
    let typed = |name: &str, service_type: &str, body: &str| {
        let text = format!(
            "<service name=\"{name}\" type=\"{service_type}\"><exec path=\"/bin/sleep\"><arg>1</arg></exec>{body}</service>"
        );
        servicedef::parse_str(&PathBuf::from(format!("/s/{name}/service.xml")), &text).unwrap()
    };
    Supervisor::new(
        vec![
            typed("mods", "system", "<ready kind=\"exit\"/>"),
            typed("link", "network", "<ready kind=\"exit\"/>"),
            typed("daemon", "service", ""),
            typed("desk", "user", "<user>nobody</user>"),
            typed("agent", "helper", "<ready kind=\"exit\"/>"),
        ],
        "production",
    )
}

#[test]
fn script_types_start_system_then_network_then_service_then_user_and_helpers_at_once() {
    let now = Instant::now();
    let mut supervisor = typed();
    assert_eq!(spawns(&supervisor.boot(now)), vec!["agent", "mods"]);
    supervisor.spawned("agent", 9, now);
    supervisor.spawned("mods", 10, now);
    assert_eq!(
        spawns(&supervisor.exited(10, Exit::Code(0), now)),
        vec!["link"]
    );
    supervisor.spawned("link", 11, now);
    assert_eq!(
        spawns(&supervisor.exited(11, Exit::Code(0), now)),
        vec!["daemon"]
    );
    let actions = supervisor.spawned("daemon", 12, now);
    // The helper (still starting) and the user program do not hold it.
    assert!(actions.contains(&production_ready(3)), "{actions:?}");
    assert_eq!(spawns(&actions), vec!["desk"]);
    assert_eq!(state(&supervisor, "agent"), State::Starting);
}

/// A failed system or network service does not hold the later types: the
/// appliance runs without it (and the ready line says nothing).
#[test]
fn a_failed_system_service_lets_the_later_types_start() {
    let now = Instant::now();
    let mut supervisor = typed();
    supervisor.boot(now);
    supervisor.spawned("mods", 10, now);
    let actions = supervisor.exited(10, Exit::Code(3), now);
    assert_eq!(state(&supervisor, "mods"), State::Failed);
    assert_eq!(spawns(&actions), vec!["link"]);
    supervisor.spawned("link", 11, now);
    supervisor.exited(11, Exit::Code(0), now);
    let actions = supervisor.spawned("daemon", 12, now);
    assert!(!actions.contains(&production_ready(3)));
}

/// A helper's failure holds nothing but what needs it.
#[test]
fn a_failed_helper_holds_neither_the_others_nor_the_ready_line() {
    let now = Instant::now();
    let mut supervisor = typed();
    supervisor.boot(now);
    supervisor.spawned("agent", 9, now);
    supervisor.exited(9, Exit::Code(1), now);
    assert_eq!(state(&supervisor, "agent"), State::Failed);
    supervisor.spawned("mods", 10, now);
    supervisor.exited(10, Exit::Code(0), now);
    supervisor.spawned("link", 11, now);
    supervisor.exited(11, Exit::Code(0), now);
    assert!(supervisor
        .spawned("daemon", 12, now)
        .contains(&production_ready(3)));
}

/// A oneshot `job` on a timer and a device pattern, and a daemon `daemon`
/// on the same device pattern.
fn triggered() -> Supervisor {
    Supervisor::new(
        vec![
            definition(
                "<ready kind=\"exit\"/><start-on event=\"boot\"/><start-on event=\"every:1h\"/><start-on event=\"net-device-added:eth*\"/>",
                "job",
            ),
            definition("<start-on event=\"net-device-added:eth*\"/>", "daemon"),
        ],
        "dev",
    )
}

#[test]
fn a_timer_or_device_event_runs_a_finished_oneshot_again() {
    let now = Instant::now();
    let mut supervisor = triggered();
    assert_eq!(spawns(&supervisor.boot(now)), vec!["job"]);
    supervisor.spawned("job", 10, now);
    supervisor.exited(10, Exit::Code(0), now);
    assert_eq!(state(&supervisor, "job"), State::Running);
    let hourly = Event::parse("every:1h").unwrap();
    assert_eq!(spawns(&supervisor.emit(hourly.clone(), now)), vec!["job"]);
    // Still running: the event does not start a second copy.
    supervisor.spawned("job", 11, now);
    assert!(spawns(&supervisor.emit(hourly, now)).is_empty());
    supervisor.exited(11, Exit::Code(0), now);
    let eth1 = Event::parse("net-device-added:eth1").unwrap();
    assert_eq!(spawns(&supervisor.emit(eth1, now)), vec!["daemon", "job"]);
    let lo = Event::parse("net-device-added:lo").unwrap();
    assert_eq!(supervisor.starters(&lo), Vec::<String>::new());
    assert!(spawns(&supervisor.emit(lo, now)).is_empty());
}

#[test]
fn a_running_daemon_is_not_restarted_by_its_start_on() {
    let now = Instant::now();
    let mut supervisor = triggered();
    supervisor.boot(now);
    let eth1 = Event::parse("net-device-added:eth1").unwrap();
    supervisor.emit(eth1.clone(), now);
    supervisor.spawned("daemon", 20, now);
    assert!(spawns(&supervisor.emit(eth1, now)).is_empty());
    assert_eq!(supervisor.service("daemon").unwrap().pid, Some(20));
}

#[test]
fn an_event_before_boot_waits_for_boot() {
    let now = Instant::now();
    let mut supervisor = triggered();
    let eth0 = Event::parse("net-device-added:eth0").unwrap();
    assert!(supervisor.emit(eth0.clone(), now).is_empty());
    let actions = supervisor.boot(now);
    assert_eq!(spawns(&actions), vec!["daemon", "job"]);
    assert!(actions.contains(&Action::Event(eth0)));
}

#[test]
fn lifecycle_events_do_not_run_a_finished_oneshot_again() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![
            definition("<ready kind=\"exit\"/><start-on event=\"started:b\"/>", "a"),
            definition("<ready kind=\"exit\"/><start-on event=\"started:a\"/>", "b"),
            definition("<ready kind=\"exit\"/>", "kick"),
        ],
        "dev",
    );
    supervisor.boot(now);
    let actions = supervisor.emit(Event::Started("a".to_string()), now);
    assert_eq!(spawns(&actions), vec!["b"]);
    supervisor.spawned("b", 30, now);
    let actions = supervisor.exited(30, Exit::Code(0), now);
    assert_eq!(spawns(&actions), vec!["a"]);
    supervisor.spawned("a", 31, now);
    // a's started:a does not run the finished b again: no ping-pong.
    assert!(spawns(&supervisor.exited(31, Exit::Code(0), now)).is_empty());
}

#[test]
fn a_periodic_job_that_failed_runs_again_at_the_next_period() {
    let now = Instant::now();
    let mut supervisor = Supervisor::new(
        vec![definition(
            "<ready kind=\"exit\"/><restart policy=\"never\"/><start-on event=\"every:1h\"/>",
            "job",
        )],
        "dev",
    );
    supervisor.boot(now);
    let hourly = Event::parse("every:1h").unwrap();
    assert_eq!(spawns(&supervisor.emit(hourly.clone(), now)), vec!["job"]);
    supervisor.spawned("job", 40, now);
    supervisor.exited(40, Exit::Code(1), now);
    assert_eq!(state(&supervisor, "job"), State::Failed);
    assert_eq!(spawns(&supervisor.emit(hourly, now)), vec!["job"]);
}
