//! Supervision with real processes.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn services_start_in_dependency_order_and_log_their_output() {
    let initd = Initd::start(
        "order",
        &[
            (
                "net",
                shell_service("net", "echo net-ran", "<ready kind=\"exit\"/>"),
            ),
            (
                "web",
                shell_service(
                    "web",
                    "echo hello from web; exec sleep 1000",
                    "<needs>net</needs>",
                ),
            ),
        ],
        &[],
    );
    initd.wait_for_state("web", "running");
    assert_eq!(
        initd.state("net"),
        "running",
        "a oneshot that exited 0 stays up"
    );
    initd.wait_until("web output in its log", || {
        initd.ctl(&["log", "web"]).contains("hello from web")
    });
    assert!(initd.ctl(&["log", "net"]).contains("net-ran"));
    let console = initd.console_text();
    let net_running = console.find("nodows: service net running").unwrap();
    let web_starting = console.find("nodows: service web starting").unwrap();
    assert!(net_running < web_starting, "{console}");
    initd.wait_until("the ready line", || {
        initd
            .console_text()
            .contains("nodows: ready mode=production services=2 t=")
    });
}

/// Guards: orphans reparented to the subreaper are reaped (no zombies).
#[test]
fn orphans_of_a_double_forking_service_are_reaped() {
    let initd = Initd::start(
        "orphan",
        &[(
            "forker",
            shell_service(
                "forker",
                "( sleep 2.5 & echo $! > \"$TEST_DIR/orphan.pid\" ) ; exec sleep 1000",
                "",
            ),
        )],
        &[],
    );
    initd.wait_for_state("forker", "running");
    let orphan_file = initd.path("orphan.pid");
    initd.wait_until("orphan pid file", || !read_pids(&orphan_file).is_empty());
    let orphan = read_pids(&orphan_file)[0];
    // Its parent (the subshell) exited at once: initd, the subreaper, adopts it.
    initd.wait_until("the orphan to be adopted or gone", || {
        proc_stat(orphan).is_none_or(|(parent, _)| parent == initd.pid())
    });
    initd.wait_until("the orphan to exit and be reaped", || {
        proc_stat(orphan).is_none()
    });
    let zombies: Vec<_> = children_of(initd.pid())
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    assert_eq!(initd.state("forker"), "running");
}

#[test]
fn a_crash_looping_service_fails_after_its_limit_with_growing_backoff() {
    let initd = Initd::start(
        "crash",
        &[(
            "crash",
            shell_service(
                "crash",
                "date +%s%N >> \"$TEST_DIR/starts\"; exit 3",
                "<restart policy=\"always\" backoff-min=\"200ms\" backoff-max=\"30s\" max=\"3\" within=\"10m\"/>",
            ),
        )],
        &[],
    );
    initd.wait_for_state("crash", "failed");
    assert_eq!(initd.number("crash", "restarts"), 3.0);
    let starts: Vec<u128> = std::fs::read_to_string(initd.path("starts"))
        .unwrap()
        .lines()
        .map(|line| line.trim().parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 4, "one start and three restarts");
    // Lower bounds only: each wait is at least the (doubling) backoff.
    for (index, pair) in starts.windows(2).enumerate() {
        let gap_ms = (pair[1] - pair[0]) / 1_000_000;
        let backoff_ms = 200u128 << index;
        assert!(
            gap_ms >= backoff_ms,
            "restart {index}: waited {gap_ms}ms, backoff {backoff_ms}ms"
        );
    }
    let reason = initd
        .service("crash")
        .get("reason")
        .and_then(|r| r.as_str().map(str::to_string))
        .unwrap();
    assert!(reason.contains("3 restarts"), "{reason}");
    // Failed stays down until started by hand.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::read_to_string(initd.path("starts"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    initd.ctl(&["start", "crash"]);
    initd.wait_until("a fifth start", || {
        std::fs::read_to_string(initd.path("starts"))
            .unwrap()
            .lines()
            .count()
            >= 5
    });
}

#[test]
fn a_service_ignoring_sigterm_is_killed_after_its_timeout() {
    let initd = Initd::start(
        "stubborn",
        &[(
            "stubborn",
            shell_service(
                "stubborn",
                "trap '' TERM; echo $$ > \"$TEST_DIR/pid\"; while :; do sleep 0.2; done",
                "<stop signal=\"TERM\" timeout=\"1s\"/>",
            ),
        )],
        &[],
    );
    initd.wait_for_state("stubborn", "running");
    initd.wait_until("pid file", || !read_pids(&initd.path("pid")).is_empty());
    let pid = read_pids(&initd.path("pid"))[0];
    let started = std::time::Instant::now();
    initd.ctl(&["stop", "stubborn"]);
    initd.wait_for_state("stubborn", "stopped");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "stopped before its timeout: TERM was not ignored?"
    );
    assert!(!alive(pid));
    assert!(initd
        .console_text()
        .contains("still running after its stop timeout: SIGKILL"));
}

const NOTIFY: &str = "<ready kind=\"notify\" fd=\"3\"/>";

#[test]
fn stop_order_is_the_reverse_of_start_order() {
    let record = |name: &str| {
        format!(
            "echo start-{name} >> \"$TEST_DIR/order\"; trap 'echo stop-{name} >> \"$TEST_DIR/order\"; exit 0' TERM; echo ready >&3; while :; do sleep 0.1; done"
        )
    };
    let mut initd = Initd::start(
        "reverse",
        &[
            // Ready once the start is recorded (notify), so the file order is
            // the start order.
            ("a", shell_service("a", &record("a"), NOTIFY)),
            (
                "b",
                shell_service("b", &record("b"), &format!("<needs>a</needs>{NOTIFY}")),
            ),
            (
                "c",
                shell_service("c", &record("c"), &format!("<needs>b</needs>{NOTIFY}")),
            ),
        ],
        &[],
    );
    initd.wait_for_state("c", "running");
    initd.wait_until("c recorded", || {
        std::fs::read_to_string(initd.path("order"))
            .unwrap_or_default()
            .contains("start-c")
    });
    let status = initd.shutdown();
    assert!(status.success());
    let order = std::fs::read_to_string(initd.path("order")).unwrap();
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(
        lines,
        vec!["start-a", "start-b", "start-c", "stop-c", "stop-b", "stop-a"],
        "{order}"
    );
}

#[test]
fn a_dependency_cycle_is_refused_and_nothing_starts() {
    let initd = Initd::prepare(
        "cycle",
        &[
            (
                "a",
                shell_service(
                    "a",
                    "touch \"$TEST_DIR/started\"; exec sleep 1000",
                    "<needs>b</needs>",
                ),
            ),
            (
                "b",
                shell_service(
                    "b",
                    "touch \"$TEST_DIR/started\"; exec sleep 1000",
                    "<needs>a</needs>",
                ),
            ),
            (
                "c",
                shell_service("c", "touch \"$TEST_DIR/started\"; exec sleep 1000", ""),
            ),
        ],
    );
    let output = Command::new(initd_binary())
        .args(initd.arguments())
        .env("TEST_DIR", &initd.dir.path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dependency cycle: a -> b -> a"), "{stderr}");
    assert!(stderr.contains("a/service.xml:1:1:"), "{stderr}");
    assert!(!initd.path("started").exists());
}

#[test]
fn a_missing_binary_is_reported_and_does_not_stop_other_services() {
    let missing = "<service name=\"ghost\" package=\"ghost-pkg\"><exec path=\"/nonexistent/bin/ghostd\"/></service>".to_string();
    let initd = Initd::start(
        "missing",
        &[
            ("ghost", missing),
            ("fine", shell_service("fine", "exec sleep 1000", "")),
        ],
        &[],
    );
    initd.wait_for_state("fine", "running");
    initd.wait_for_state("ghost", "failed");
    let reason = initd
        .service("ghost")
        .get("reason")
        .and_then(|r| r.as_str().map(str::to_string))
        .unwrap();
    assert!(reason.contains("/nonexistent/bin/ghostd"), "{reason}");
    assert!(reason.contains("No such file"), "{reason}");
    let check = initd.try_ctl(&["check", "ghost"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr)
        .contains("binary /nonexistent/bin/ghostd missing: install package ghost-pkg"));
    // Offline validation: exit 2 naming the binary.
    let output = Command::new(initd_binary())
        .args(["check", "--services"])
        .arg(&initd.services)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ghostd missing"));
}

#[test]
fn a_pidfile_daemon_is_tracked() {
    let mut initd = Initd::prepare("pidfile", &[]);
    let pidfile = initd.path("daemon.pid");
    let xml = shell_service(
        "daemon",
        "setsid sleep 1000 > /dev/null 2>&1 < /dev/null & echo $! > \"$TEST_DIR/daemon.pid\"; exit 0",
        &format!("<ready kind=\"pidfile\" path=\"{}\"/>", pidfile.display()),
    );
    std::fs::create_dir_all(initd.services.join("daemon")).unwrap();
    std::fs::write(initd.services.join("daemon/service.xml"), xml).unwrap();
    initd.launch(&[]);
    initd.wait_for_state("daemon", "running");
    let daemon = read_pids(&pidfile)[0];
    assert_eq!(initd.main_pid("daemon"), Some(daemon));
    assert_eq!(
        proc_stat(daemon).unwrap().0,
        initd.pid(),
        "the daemon is adopted by initd"
    );
    // Its death is noticed and it is restarted.
    Command::new("kill")
        .arg("-KILL")
        .arg(daemon.to_string())
        .status()
        .unwrap();
    initd.wait_until("a restart", || initd.number("daemon", "restarts") >= 1.0);
    initd.wait_for_state("daemon", "running");
    assert_ne!(initd.main_pid("daemon"), Some(daemon));
    // Stop reaches the daemon, which left the launcher's session.
    let daemon = initd.main_pid("daemon").unwrap();
    initd.ctl(&["stop", "daemon"]);
    initd.wait_for_state("daemon", "stopped");
    assert!(!alive(daemon));
}

#[test]
fn readiness_by_tcp_holds_back_dependents() {
    let port = free_port();
    let listen = format!(
        "while [ ! -e \"$TEST_DIR/gate\" ]; do sleep 0.05; done; exec python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(1000)'"
    );
    let initd = Initd::start(
        "tcp",
        &[
            ("server", shell_service("server", &listen, &format!("<ready kind=\"tcp\" port=\"{port}\" timeout=\"5m\"/>"))),
            (
                "client",
                shell_service(
                    "client",
                    &format!("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))' && echo connected > \"$TEST_DIR/client\"; exec sleep 1000"),
                    "<needs>server</needs>",
                ),
            ),
        ],
        &[],
    );
    initd.wait_for_state("server", "starting");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(initd.state("server"), "starting");
    assert_eq!(
        initd.state("client"),
        "stopped",
        "waits for server readiness"
    );
    std::fs::write(initd.path("gate"), "").unwrap();
    initd.wait_for_state("server", "running");
    initd.wait_until("client connected", || initd.path("client").exists());
}

#[test]
fn readiness_by_notify_fd() {
    let initd = Initd::start(
        "notify",
        &[(
            "notifier",
            shell_service(
                "notifier",
                "while [ ! -e \"$TEST_DIR/gate\" ]; do sleep 0.05; done; echo ready >&3; exec sleep 1000",
                "<ready kind=\"notify\" fd=\"3\" timeout=\"5m\"/>",
            ),
        )],
        &[],
    );
    initd.wait_for_state("notifier", "starting");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(initd.state("notifier"), "starting");
    std::fs::write(initd.path("gate"), "").unwrap();
    initd.wait_for_state("notifier", "running");
}

/// A shell command that sends `message` to `$NOTIFY_SOCKET` as one
/// datagram, as `sd_notify(3)` does (perl-base is Essential on Debian).
fn sd_notify_send(message: &str) -> String {
    format!(
        "perl -MIO::Socket::UNIX -e 'my $s = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Peer => $ENV{{NOTIFY_SOCKET}}) or die \"no socket: $!\"; $s->send(\"{message}\") or die \"send: $!\"'"
    )
}

/// sd_notify as systemd's `sd_notify(3)` speaks it: datagrams of
/// `KEY=VALUE` lines to `$NOTIFY_SOCKET`; only `READY=1` makes the service
/// ready (perl-base, Essential on Debian, is the client). A dependent waits.
#[test]
fn readiness_by_sd_notify() {
    let initd = Initd::start(
        "sd-notify",
        &[
            (
                "notifier",
                shell_service(
                    "notifier",
                    &format!(
                        "{}; while [ ! -e \"$TEST_DIR/gate\" ]; do sleep 0.05; done; {}; exec sleep 1000",
                        sd_notify_send("STATUS=warming up\\nMAINPID=1"),
                        sd_notify_send("STATUS=up\\nREADY=1")
                    ),
                    "<ready kind=\"sd-notify\" timeout=\"5m\"/>",
                ),
            ),
            (
                "dependent",
                shell_service("dependent", "exec sleep 1000", "<needs>notifier</needs>"),
            ),
        ],
        &[],
    );
    initd.wait_for_state("notifier", "starting");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        initd.state("notifier"),
        "starting",
        "STATUS= is not READY=1"
    );
    assert_eq!(initd.state("dependent"), "stopped");
    std::fs::write(initd.path("gate"), "").unwrap();
    initd.wait_for_state("notifier", "running");
    initd.wait_for_state("dependent", "running");
    // The socket goes once it has served.
    assert!(!initd.path("state/notify/notifier").exists());
    let log = std::fs::read_to_string(initd.path("log/notifier.log")).unwrap_or_default();
    assert!(!log.contains("die") && !log.contains("no socket"), "{log}");
}

/// Guards: `watchdog="1s"`: pings keep the service up past the period;
/// silence gets it killed and started again.
#[test]
fn a_silent_sd_notify_watchdog_service_is_restarted() {
    let initd = Initd::start(
        "watchdog",
        &[(
            "dog",
            shell_service(
                "dog",
                &format!(
                    "date +%s%N >> \"$TEST_DIR/starts\"; echo \"$WATCHDOG_USEC\" > \"$TEST_DIR/usec\"; {}; for i in 1 2 3 4 5; do sleep 0.3; {}; done; exec sleep 1000",
                    sd_notify_send("READY=1"),
                    sd_notify_send("WATCHDOG=1")
                ),
                "<ready kind=\"sd-notify\" watchdog=\"1s\"/>",
            ),
        )],
        &[],
    );
    initd.wait_until("a second start", || {
        std::fs::read_to_string(initd.path("starts"))
            .is_ok_and(|starts| starts.lines().count() >= 2)
    });
    let starts: Vec<u64> = std::fs::read_to_string(initd.path("starts"))
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    let alive_ms = (starts[1] - starts[0]) / 1_000_000;
    // Five pings 0.3 s apart, then one second of silence.
    assert!(
        alive_ms >= 2400,
        "restarted after {alive_ms} ms: the pings were ignored"
    );
    assert_eq!(
        std::fs::read_to_string(initd.path("usec")).unwrap().trim(),
        "1000000"
    );
    assert!(initd
        .console_text()
        .contains("service dog sent no WATCHDOG=1 within 1000ms: killed"));
}

#[test]
fn start_on_fires_on_an_emitted_event() {
    let initd = Initd::start(
        "event",
        &[
            (
                "waiter",
                shell_service(
                    "waiter",
                    "exec sleep 1000",
                    "<start-on event=\"backup-window\"/>",
                ),
            ),
            (
                "follower",
                shell_service(
                    "follower",
                    "exec sleep 1000",
                    "<start-on event=\"started:waiter\"/>",
                ),
            ),
            (
                "other",
                shell_service(
                    "other",
                    "exec sleep 1000",
                    "<event name=\"backup-window\">the nightly backup may run</event><event name=\"something-else\"/>",
                ),
            ),
        ],
        &[],
    );
    initd.wait_for_state("other", "running");
    assert_eq!(initd.state("waiter"), "stopped");
    initd.ctl(&["emit", "something-else"]);
    assert_eq!(initd.state("waiter"), "stopped");
    // An event nobody declares is refused, not sent into the void.
    let output = initd.try_ctl(&["emit", "backup-windw"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown event backup-windw: no service declares it"),
        "{stderr}"
    );
    initd.ctl(&["emit", "backup-window"]);
    initd.wait_for_state("waiter", "running");
    initd.wait_for_state("follower", "running");
}

#[test]
fn a_mode_switch_starts_and_stops_the_right_services() {
    let initd = Initd::start(
        "mode",
        &[
            (
                "prod",
                shell_service("prod", "exec sleep 1000", "<modes>production</modes>"),
            ),
            (
                "fail",
                shell_service("fail", "exec sleep 1000", "<modes>failover</modes>"),
            ),
            (
                "both",
                shell_service(
                    "both",
                    "exec sleep 1000",
                    "<modes>production failover</modes>",
                ),
            ),
        ],
        &["--mode", "production"],
    );
    initd.wait_for_state("prod", "running");
    initd.wait_for_state("both", "running");
    assert_eq!(initd.state("fail"), "stopped");
    let both_pid = initd.main_pid("both");
    assert_eq!(initd.ctl(&["mode"]).trim(), "production");
    initd.ctl(&["mode", "failover"]);
    initd.wait_for_state("fail", "running");
    initd.wait_for_state("prod", "stopped");
    assert_eq!(
        initd.main_pid("both"),
        both_pid,
        "a service of both modes keeps running"
    );
    assert_eq!(initd.ctl(&["mode"]).trim(), "failover");
    let console = initd.console_text();
    assert!(console.contains("nodows: mode failover"), "{console}");
    initd.wait_until("ready line of the new mode", || {
        initd
            .console_text()
            .contains("nodows: ready mode=failover services=2")
    });
}

#[test]
fn the_control_socket_refuses_a_peer_without_permission() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let initd = Initd::start(
        "peer",
        &[("one", shell_service("one", "exec sleep 1000", ""))],
        &[],
    );
    let mode = std::fs::metadata(&initd.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the peer-credential test needs root to run a client as another uid");
        return;
    }
    // Open the file permissions so that only the peer check stands in the way.
    std::fs::set_permissions(&initd.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&initd.dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(initctl_binary())
        .arg("--socket")
        .arg(&initd.socket)
        .args(["stop", "one"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("permission denied: uid 65534"), "{stderr}");
    assert_eq!(initd.state("one"), "running");
    // The peer is checked before its request is read: a client that sends
    // nothing still gets the refusal (perl-base is Essential on Debian).
    let output = Command::new("perl")
        .args([
            "-MIO::Socket::UNIX",
            "-e",
            "my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\"; \
             local $SIG{ALRM} = sub { die \"no refusal within 5 s\" }; alarm 5; \
             print while <$s>;",
        ])
        .arg(&initd.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("permission denied: uid 65534"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Guards: a request line over the limit is refused whole; initd used to
/// execute its first 4,096 bytes.
#[test]
fn an_oversized_request_is_refused_not_cut_short() {
    use std::io::{Read, Write};
    let initd = Initd::start(
        "oversized",
        &[("one", shell_service("one", "exec sleep 1000", ""))],
        &[],
    );
    let pid = initd.main_pid("one");
    // "stop one" followed by padding: cut at 4,096 bytes it would stop one.
    let mut request = format!("stop one{}", " ".repeat(5000)).into_bytes();
    request.push(b'\n');
    let mut stream = std::os::unix::net::UnixStream::connect(&initd.socket).unwrap();
    stream.write_all(&request).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply, "exit 2\nrequest refused: longer than 4096 bytes\n",
        "{reply}"
    );
    assert_eq!(initd.state("one"), "running");
    assert_eq!(initd.main_pid("one"), pid);
    // Exactly at the limit is still a request.
    let mut request = format!("status{}", " ".repeat(4096 - 6)).into_bytes();
    request.push(b'\n');
    let mut stream = std::os::unix::net::UnixStream::connect(&initd.socket).unwrap();
    stream.write_all(&request).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("exit 0\nmode "), "{reply}");
}

/// Guards: SIGCHLD coalescing must not lose or misattribute exits.
#[test]
fn a_burst_of_100_exits_is_credited_to_the_right_services() {
    let dir = TempDir::new("burst-fifo");
    let fifo = dir.path.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let services: Vec<(String, String)> = (0..100)
        .map(|index| {
            let name = format!("s{index:03}");
            let script = format!("read line < '{}'; exit {}", fifo.display(), index + 1);
            let xml = shell_service(&name, &script, "<restart policy=\"never\"/>");
            (name, xml)
        })
        .collect();
    let borrowed: Vec<(&str, String)> = services
        .iter()
        .map(|(n, x)| (n.as_str(), x.clone()))
        .collect();
    // Held open read-write by the test: the services' opens do not block,
    // and closing it is the one write-side close that releases them all.
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let initd = Initd::start("burst", &borrowed, &[]);
    initd.wait_until("all 100 running", || {
        initd
            .status()
            .iter()
            .all(|s| s.get("state").and_then(|v| v.as_str()) == Some("running"))
    });
    // Wait until every reader has the fifo open, then release them all at once.
    initd.wait_until("100 readers", || {
        let count = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy() != std::process::id().to_string())
            .filter(|entry| {
                (0..4).any(|fd| {
                    std::fs::read_link(entry.path().join(format!("fd/{fd}")))
                        .is_ok_and(|t| t == fifo)
                })
            })
            .count();
        count >= 100
    });
    drop(holder);
    initd.wait_until("all 100 exited", || {
        initd
            .status()
            .iter()
            .all(|s| s.get("state").and_then(|v| v.as_str()) == Some("failed"))
    });
    for service in initd.status() {
        let name = service
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap()
            .to_string();
        let index: i32 = name[1..].parse().unwrap();
        let exit = service
            .get("exit")
            .and_then(|v| v.as_str())
            .unwrap()
            .to_string();
        assert_eq!(exit, format!("exit {}", index + 1), "{name}");
    }
}

/// Guards the crash path without cgroups: the dead main process's group is
/// killed before the respawn and its setsid escapees right after it, and
/// neither kill touches the new instance.
#[test]
fn a_crash_takes_the_rest_of_the_service_and_spares_the_new_instance() {
    let script = "setsid sh -c 'echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000' & \
                  sh -c 'echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000' & \
                  echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000";
    for (tag, flags) in [
        ("crash-default", vec![]),
        ("crash-nocgroup", vec!["--no-cgroups"]),
    ] {
        let initd = Initd::start(
            tag,
            &[(
                "messy",
                shell_service("messy", script, "<restart policy=\"always\"/>"),
            )],
            &flags,
        );
        initd.wait_for_state("messy", "running");
        initd.wait_until("three pids", || read_pids(&initd.path("pids")).len() == 3);
        let first = read_pids(&initd.path("pids"));
        let main = initd.main_pid("messy").unwrap();
        // Ran for more than SETTLED: respawned at once.
        std::thread::sleep(Duration::from_millis(1200));
        unsafe {
            libc::kill(main, libc::SIGKILL);
        }
        initd.wait_until("the new instance's three pids", || {
            read_pids(&initd.path("pids")).len() == 6
        });
        initd.wait_until("the old instance gone", || {
            first.iter().all(|pid| !alive(*pid))
        });
        let second: Vec<i32> = read_pids(&initd.path("pids"))[3..].to_vec();
        // Give a late kill the chance to hit the new instance.
        std::thread::sleep(Duration::from_millis(300));
        for pid in &second {
            assert!(
                alive(*pid),
                "{tag}: pid {pid} of the new instance was killed"
            );
        }
        assert_eq!(initd.state("messy"), "running");
        initd.ctl(&["stop", "messy"]);
        initd.wait_for_state("messy", "stopped");
    }
}

#[test]
fn stop_leaves_nothing_of_a_service_that_called_setsid_or_double_forked() {
    let script = "setsid sh -c 'trap \"\" TERM; echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000' & \
                  ( sh -c 'echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000' & ) ; \
                  echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000";
    for (tag, flags) in [
        ("leftovers-default", vec![]),
        ("leftovers-nocgroup", vec!["--no-cgroups"]),
    ] {
        let initd = Initd::start(
            tag,
            &[(
                "messy",
                shell_service("messy", script, "<stop timeout=\"1s\"/>"),
            )],
            &flags,
        );
        initd.wait_for_state("messy", "running");
        initd.wait_until("three pids", || read_pids(&initd.path("pids")).len() == 3);
        let pids = read_pids(&initd.path("pids"));
        assert!(pids.iter().all(|pid| alive(*pid)));
        initd.ctl(&["stop", "messy"]);
        initd.wait_for_state("messy", "stopped");
        for pid in &pids {
            assert!(
                !alive(*pid),
                "{tag}: pid {pid} ({}) survived the stop",
                cmdline(*pid)
            );
        }
    }
}

#[test]
fn a_stop_while_a_restart_is_pending_does_not_resurrect_it() {
    let initd = Initd::start(
        "pending",
        &[(
            "flaky",
            shell_service(
                "flaky",
                "echo x >> \"$TEST_DIR/starts\"; exit 1",
                "<restart backoff-min=\"2s\" backoff-max=\"2s\" max=\"10\" within=\"1m\"/>",
            ),
        )],
        &[],
    );
    initd.wait_for_state("flaky", "backoff");
    initd.ctl(&["stop", "flaky"]);
    assert_eq!(initd.state("flaky"), "stopped");
    // Past the backoff: still stopped, started once.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(initd.state("flaky"), "stopped");
    assert_eq!(
        std::fs::read_to_string(initd.path("starts"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn load_of_a_bad_configuration_keeps_the_old_one() {
    let initd = Initd::start(
        "load",
        &[("one", shell_service("one", "exec sleep 1000", ""))],
        &[],
    );
    initd.wait_for_state("one", "running");
    std::fs::create_dir_all(initd.services.join("two")).unwrap();
    std::fs::write(
        initd.services.join("two/service.xml"),
        "<service name=\"two\">\n<exec path=\"/bin/true\">\n</service>",
    )
    .unwrap();
    let output = initd.try_ctl(&["load"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("two/service.xml:3:"), "{stderr}");
    assert!(
        stderr.contains("still running the previous one"),
        "{stderr}"
    );
    assert_eq!(initd.state("one"), "running");
    // Fixed, it loads and the new service starts.
    std::fs::write(
        initd.services.join("two/service.xml"),
        shell_service("two", "exec sleep 1000", ""),
    )
    .unwrap();
    initd.ctl(&["load"]);
    initd.wait_for_state("two", "running");
}

#[test]
fn logs_rotate_by_size() {
    let initd = Initd::start(
        "rotate",
        &[(
            "chatty",
            shell_service("chatty", "i=0; while [ $i -lt 300 ]; do echo line-$i-abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done; echo done >&2; exec sleep 1000", ""),
        )],
        &["--log-max-bytes", "4096"],
    );
    initd.wait_until("all output logged", || {
        initd.ctl(&["log", "chatty"]).contains("done")
    });
    let log = initd.path("log/chatty.log");
    assert!(std::fs::metadata(&log).unwrap().len() <= 4096);
    assert!(initd.path("log/chatty.log.1").exists());
    assert!(initd.path("log/chatty.log.2").exists());
    assert!(!initd.path("log/chatty.log.3").exists());
}

#[test]
fn initctl_usage_errors_exit_2() {
    let output = Command::new(initctl_binary())
        .args(["frobnicate"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(initd_binary())
        .args(["--bogus"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// The cgroup v2 path: run initd in its own mount namespace with cgroup2
/// mounted on /sys/fs/cgroup (this host may have cgroup v1 there).
#[test]
fn stop_leaves_nothing_behind_with_cgroup_v2() {
    let probe = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t cgroup2 none /sys/fs/cgroup && test -w /sys/fs/cgroup/cgroup.procs",
        ])
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        println!("skipped: cannot mount a writable cgroup2 in a mount namespace here (needs root)");
        return;
    }
    let script = "setsid sh -c 'trap \"\" TERM; echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000' & \
                  ( sh -c 'echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000' & ) ; \
                  echo $$ >> \"$TEST_DIR/pids\"; exec sleep 1000";
    let mut initd = Initd::prepare(
        "cgroup2",
        &[(
            "messy",
            shell_service("messy", script, "<stop timeout=\"1s\"/>"),
        )],
    );
    initd.wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"",
    ]
    .iter()
    .map(|word| word.to_string())
    .collect();
    initd.launch(&[]);
    initd.wait_for_state("messy", "running");
    assert!(
        initd
            .console_text()
            .contains("whole-service tracking by cgroup v2"),
        "{}",
        initd.console_text()
    );
    initd.wait_until("three pids", || read_pids(&initd.path("pids")).len() == 3);
    let pids = read_pids(&initd.path("pids"));
    initd.ctl(&["stop", "messy"]);
    initd.wait_for_state("messy", "stopped");
    for pid in &pids {
        assert!(
            !alive(*pid),
            "pid {pid} ({}) survived the stop",
            cmdline(*pid)
        );
    }
    assert!(initd
        .console_text()
        .contains("still running after its stop timeout: SIGKILL"));
}

/// Tidy: initd links no XML/XSLT C library, no CLI framework, no async
/// runtime (it must stay small and cannot die).
#[test]
fn initd_has_no_banned_dependencies() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--package",
            "initd",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    for banned in [
        "libxml", "libxslt", "clap", "tokio", "render ", "model ", "rusqlite",
    ] {
        assert!(
            !tree.lines().any(|line| line.starts_with(banned.trim_end())
                && (banned.ends_with(' ') == line.starts_with(banned))),
            "initd depends on {banned}:\n{tree}"
        );
    }
}

/// Guards: a panic while handling a request fails that request (with a
/// reply, logged); initd keeps supervising (as PID 1 it must never die). `debug-panic` exists only in
/// builds with the `test-hooks` feature, which `cargo test` turns on.
#[test]
fn a_panic_in_request_handling_is_survived() {
    use std::io::{Read, Write};
    let mut initd = Initd::prepare(
        "panic",
        &[("one", shell_service("one", "exec sleep 1000", ""))],
    );
    initd.launch(&[]);
    initd.wait_for_state("one", "running");
    let pid = initd.main_pid("one");
    let mut stream = std::os::unix::net::UnixStream::connect(&initd.socket).unwrap();
    stream.write_all(b"debug-panic\n").unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert_eq!(
        reply,
        "exit 1\ninternal error: the request failed (see the console); initd keeps running\n",
        "the request fails, with a reply"
    );
    initd.wait_until("the panic logged", || {
        initd
            .console_text()
            .contains("internal error handling request DebugPanic (panic caught)")
    });
    // The control socket still answers.
    assert!(initd.ctl(&["status"]).contains("one"));
    assert_eq!(initd.state("one"), "running");
    assert_eq!(initd.main_pid("one"), pid);
    initd.ctl(&["restart", "one"]);
    initd.wait_until("a new pid", || {
        initd.state("one") == "running" && initd.main_pid("one") != pid
    });
}

/// `initctl blame` and `critical-chain` from initd's own timestamps: the
/// slow service is first, and the chain runs from the last one ready back
/// through what it needed.
#[test]
fn blame_and_critical_chain_show_where_the_time_went() {
    let initd = Initd::start(
        "blame",
        &[
            (
                "slow",
                shell_service(
                    "slow",
                    "sleep 0.6; echo ready >&3; exec sleep 1000",
                    "<ready kind=\"notify\" fd=\"3\"/>",
                ),
            ),
            (
                "after",
                shell_service(
                    "after",
                    "sleep 0.2; echo ready >&3; exec sleep 1000",
                    "<ready kind=\"notify\" fd=\"3\"/><needs>slow</needs>",
                ),
            ),
            ("quick", shell_service("quick", "exec sleep 1000", "")),
        ],
        &[],
    );
    initd.wait_for_state("after", "running");
    let blame = initd.ctl(&["blame"]);
    let names: Vec<&str> = blame
        .lines()
        .map(|line| line.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(names, ["slow", "after", "quick"], "{blame}");
    let slow: f64 = blame
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(slow >= 0.6, "{blame}");
    let chain = initd.ctl(&["critical-chain"]);
    let lines: Vec<&str> = chain.lines().collect();
    assert_eq!(lines.len(), 2, "{chain}");
    assert!(lines[0].starts_with("after @"), "{chain}");
    assert!(lines[1].starts_with("└─slow @"), "{chain}");
}

/// A service that daemonizes (here util-linux `setsid --fork`, which forks,
/// lets the child carry on in a new session and exits 0) is reported with
/// what to do and failed at once, its daemon killed; it does not
/// crash-loop. Guards issue 17: dnsmasq without --keep-in-foreground went
/// failed after five silent restarts.
#[test]
fn a_service_that_daemonizes_is_reported_and_failed_not_respawned() {
    // As many daemons do, the parent exits once its child is set up.
    let script = "setsid --fork sh -c 'echo $$ > \"$TEST_DIR/daemon.pid\"; exec sleep 1000'; \
                  while [ ! -s \"$TEST_DIR/daemon.pid\" ]; do sleep 0.01; done; exit 0";
    for (tag, flags) in [
        ("daemonizes-default", vec![]),
        ("daemonizes-nocgroup", vec!["--no-cgroups"]),
    ] {
        let initd = Initd::start(
            tag,
            &[
                ("forks", shell_service("forks", script, "")),
                ("calm", shell_service("calm", "exec sleep 1000", "")),
            ],
            &flags,
        );
        initd.wait_for_state("forks", "failed");
        let status = initd.service("forks");
        let reason = status["reason"].as_str().unwrap_or_default().to_string();
        assert!(
            reason.starts_with("forks daemonized: run it in the foreground, e.g. "),
            "{tag}: {reason}"
        );
        assert_eq!(status["restarts"], 0, "{tag}: no respawn");
        assert!(initd
            .ctl(&["status"])
            .contains("forks daemonized: run it in the foreground"));
        assert!(initd
            .console_text()
            .contains("forks daemonized: run it in the foreground"));
        let daemon = read_pids(&initd.path("daemon.pid"));
        assert_eq!(daemon.len(), 1, "{tag}");
        initd.wait_until("the daemon killed", || {
            daemon.iter().all(|pid| !alive(*pid))
        });
        assert_eq!(initd.state("calm"), "running");
    }
}
