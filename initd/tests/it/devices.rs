//! Device and timer events with a real initd: uevents from the kernel's
//! netlink socket inside a network namespace (veth pairs come and go), and an `every:` timer that runs a oneshot again and again.

use std::process::Command;

use crate::harness::{shell_service, Initd};

fn lines(initd: &Initd, name: &str) -> Vec<String> {
    std::fs::read_to_string(initd.path(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `ip` inside initd's network namespace.
fn ip_in(initd: &Initd, arguments: &[&str]) {
    let status = Command::new("nsenter")
        .args(["--net", "--target", &initd.pid().to_string(), "ip"])
        .args(arguments)
        .status()
        .unwrap();
    assert!(status.success(), "ip {arguments:?}");
}

/// A veth pair `name`, `peer`: two net devices added.
fn veth(initd: &Initd, name: &str, peer: &str) {
    ip_in(
        initd,
        &["link", "add", name, "type", "veth", "peer", "name", peer],
    );
}

#[test]
fn a_net_device_added_or_removed_in_the_namespace_starts_its_services() {
    let probe = Command::new("unshare")
        .args([
            "--net", "ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
        ])
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        println!(
            "skipped: cannot make a veth pair in a network namespace here (needs root and veth)"
        );
        return;
    }
    let mut initd = Initd::prepare(
        "devices",
        &[
            (
                "hot",
                shell_service(
                    "hot",
                    "echo added >> \"$TEST_DIR/hot\"",
                    "<ready kind=\"exit\"/><start-on event=\"net-device-added:hot*\"/>",
                ),
            ),
            (
                "gone",
                shell_service(
                    "gone",
                    "echo removed >> \"$TEST_DIR/gone\"",
                    "<ready kind=\"exit\"/><start-on event=\"net-device-removed:hot7\"/>",
                ),
            ),
        ],
    );
    initd.wrapper = ["unshare", "--net"]
        .iter()
        .map(|word| word.to_string())
        .collect();
    initd.launch(&[]);
    assert_eq!(initd.state("hot"), "stopped");
    veth(&initd, "hot7", "peer7");
    initd.wait_until("hot ran once", || lines(&initd, "hot").len() == 1);
    initd.wait_for_state("hot", "running");
    assert!(
        initd
            .console_text()
            .contains("initd: device net-device-added:hot7 IFINDEX="),
        "{}",
        initd.console_text()
    );
    // A second device runs the finished oneshot again; the peers' names
    // (peer7, peer8) match no pattern.
    veth(&initd, "hot8", "peer8");
    initd.wait_until("hot ran twice", || lines(&initd, "hot").len() == 2);
    initd.wait_until("the console names peer8", || {
        initd.console_text().contains("net-device-added:peer8")
    });
    assert_eq!(lines(&initd, "gone").len(), 0);
    ip_in(&initd, &["link", "del", "hot7"]);
    initd.wait_until("gone ran", || lines(&initd, "gone").len() == 1);
    assert_eq!(lines(&initd, "hot").len(), 2);
}

#[test]
fn an_every_timer_runs_its_oneshot_again_each_period() {
    let mut initd = Initd::prepare(
        "timer",
        &[(
            "tick",
            shell_service(
                "tick",
                "echo tick >> \"$TEST_DIR/ticks\"",
                "<ready kind=\"exit\"/><start-on event=\"every:1s\"/>",
            ),
        )],
    );
    initd.launch(&[]);
    initd.wait_until("three ticks", || lines(&initd, "ticks").len() >= 3);
    assert_eq!(initd.service("tick")["restarts"], 0);
}

#[test]
fn a_device_event_renders_a_finished_service_with_files_before_running_it_again() {
    let mut initd = Initd::prepare(
        "device-render",
        &[(
            "apply",
            shell_service(
                "apply",
                "echo applied >> \"$TEST_DIR/applied\"",
                "<ready kind=\"exit\"/><start-on event=\"boot\"/><start-on event=\"net-device-added:eth*\"/><file target=\"/etc/apply.conf\" template=\"apply.xsl\"/>",
            ),
        )],
    );
    let renderer =
        crate::render::write_renderer(&initd, "echo '{\"written\": [], \"services\": []}'");
    initd.launch(&["--render-command", &renderer]);
    initd.wait_until("apply ran at boot", || lines(&initd, "applied").len() == 1);
    initd.wait_for_state("apply", "running");
    let reply = initd.ctl(&["emit", "net-device-added:eth9"]);
    assert!(reply.contains("emitted net-device-added:eth9"), "{reply}");
    initd.wait_until("apply ran again", || lines(&initd, "applied").len() == 2);
    let renders = lines(&initd, "render-args");
    assert_eq!(renders.len(), 2, "{renders:?}");
    assert!(renders[1].contains("--service apply"), "{renders:?}");
    assert!(initd
        .console_text()
        .contains("initd: net-device-added:eth9: rendering apply first"));
    // A name the pattern does not match renders and runs nothing: the
    // render asked for next is the third (renders run in order).
    initd.ctl(&["emit", "net-device-added:wlan0"]);
    initd.ctl(&["emit", "every:1h"]);
    initd.ctl(&["render"]);
    let renders = lines(&initd, "render-args");
    assert_eq!(renders.len(), 3, "{renders:?}");
    assert!(!renders[2].contains("--service apply"), "{renders:?}");
    assert_eq!(lines(&initd, "applied").len(), 2);
}
