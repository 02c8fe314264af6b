//! Out of file descriptors is weather, not death: a flood of malformed
//! requests and more idle connections than initd's fd limit allows.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::harness::*;

/// utime + stime of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command may hold spaces: fields count from after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// One malformed request of kind `index % 4`; the reply (if any) is read
/// and dropped. Connection errors are part of the weather.
fn malformed_request(socket: &std::path::Path, index: usize) {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request: Vec<u8> = match index % 4 {
        // Garbage bytes, with a newline.
        0 => {
            let mut bytes: Vec<u8> = (0..200).map(|i| ((i * 37 + index) % 256) as u8).collect();
            bytes.push(b'\n');
            bytes
        }
        // Oversized: 20 KB without a newline.
        1 => vec![b'x'; 20_000],
        // Truncated: half a request, then the write side closed.
        2 => b"sta".to_vec(),
        // A request that names nothing.
        _ => b"stop no-such-service\n".to_vec(),
    };
    let _ = stream.write_all(&request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
}

/// Guards: with initd's fd limit at 64, 1,000 idle connections and 10,000
/// malformed requests used to make it spin on EMFILE (accept retried at
/// once), time out `initctl status`, and leave a service that crashed
/// meanwhile `failed` for good ("Too many open files" at its respawn).
#[test]
fn a_flood_of_connections_and_malformed_requests_is_weather() {
    let mut initd = Initd::prepare(
        "weather",
        &[
            ("steady", shell_service("steady", "exec sleep 1000", "")),
            (
                "crasher",
                shell_service(
                    "crasher",
                    "while [ ! -e \"$TEST_DIR/crash\" ]; do sleep 0.05; done; \
                     rm -f \"$TEST_DIR/crash\"; exit 1",
                    "",
                ),
            ),
        ],
    );
    initd.wrapper = vec![
        "prlimit".to_string(),
        "--nofile=64:64".to_string(),
        "--".to_string(),
    ];
    initd.launch(&[]);
    initd.wait_for_state("steady", "running");
    initd.wait_for_state("crasher", "running");
    let pid = initd.pid();
    let steady = initd.main_pid("steady");
    let crasher = initd.main_pid("crasher");
    for _ in 0..50 {
        initd.ctl(&["status"]);
    }
    let rss_before = rss_kib(pid);

    // More idle connections than the fd limit allows.
    let mut idle: Vec<UnixStream> = Vec::new();
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    while idle.len() < 1000 && Instant::now() < connect_deadline {
        if let Ok(stream) = UnixStream::connect(&initd.socket) {
            idle.push(stream);
        }
    }
    assert_eq!(idle.len(), 1000, "connect kept failing");
    // The crash happens while initd is out of descriptors.
    std::fs::write(initd.path("crash"), "").unwrap();
    // Idle connections only: initd must sleep, not spin.
    std::thread::sleep(Duration::from_millis(500));
    let fds_during = open_fds(pid);
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu = (cpu_ticks(pid) - ticks) as f64 / ticks_per_second() as f64;
    let wall = started.elapsed().as_secs_f64();
    assert!(
        cpu < wall * 0.2,
        "initd used {cpu:.2} s of CPU in {wall:.2} s holding idle connections: it spins"
    );

    // 10,000 malformed requests from 4 clients, the idle ones still open.
    let socket = initd.socket.clone();
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for index in 0..2500 {
                    malformed_request(&socket, sender * 2500 + index);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    drop(idle);

    let asked = Instant::now();
    let status = initd.try_ctl(&["status"]);
    let answered = asked.elapsed();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        answered < Duration::from_secs(1),
        "initctl status took {answered:?} after the flood"
    );
    assert_eq!(initd.main_pid("steady"), steady, "steady was restarted");
    initd.wait_until("crasher running again", || {
        initd.state("crasher") == "running" && initd.main_pid("crasher") != crasher
    });
    let console = initd.console_text();
    assert!(
        !console.contains("service crasher failed"),
        "crasher failed:\n{console}"
    );
    // The idle connections are closed by now; memory is back.
    initd.wait_until("the idle connections closed", || open_fds(pid) < 40);
    let rss_after = rss_kib(pid);
    assert!(
        rss_after * 10 <= rss_before * 11,
        "initd's RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Its respawn met the weather (a pipe needs two descriptors) and waited.
    assert!(
        console.contains("service crasher cannot start yet: /bin/sh: Too many open files"),
        "{console}"
    );
    let pauses = console.matches("pausing accepts").count();
    assert!(
        pauses <= 3,
        "{pauses} accept pause lines: the console is flooded"
    );
    eprintln!(
        "flood: fds during {fds_during}/64, cpu {cpu:.3} s in {wall:.1} s idle, status {answered:?} after, rss {rss_before} -> {rss_after} KiB"
    );
}

/// Guards: initd takes the fd hard limit for itself, and its services start
/// from the soft limit it was given (select(2)-era programs expect 1,024).
#[test]
fn initd_raises_its_fd_limit_and_services_get_the_one_it_was_given() {
    let mut initd = Initd::prepare(
        "nofile",
        &[(
            "limits",
            shell_service(
                "limits",
                "ulimit -n > \"$TEST_DIR/soft\"; ulimit -Hn > \"$TEST_DIR/hard\"; exec sleep 1000",
                "",
            ),
        )],
    );
    initd.wrapper = vec![
        "prlimit".to_string(),
        "--nofile=100:300".to_string(),
        "--".to_string(),
    ];
    initd.launch(&[]);
    initd.wait_for_state("limits", "running");
    initd.wait_until("the service's limits", || initd.path("hard").exists());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", initd.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["300", "300"], "{open_files}");
    let read = |name: &str| std::fs::read_to_string(initd.path(name)).unwrap();
    assert_eq!(read("soft").trim(), "100");
    assert_eq!(read("hard").trim(), "300");
}
