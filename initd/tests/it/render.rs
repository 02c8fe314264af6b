//! The rendering hook: initd runs the renderer as a child, reads its change
//! set, reloads/restarts exactly the named services and fires
//! config-changed:NAME.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

fn write_renderer(initd: &Initd, body: &str) -> String {
    let path = initd.path("renderer.sh");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"$@\" >> \"$TEST_DIR/render-args\"\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn render_restarts_and_reloads_exactly_the_named_services() {
    let mut initd = Initd::prepare(
        "render",
        &[
            ("web", shell_service("web", "trap 'echo reloaded >> \"$TEST_DIR/web-reloads\"' HUP; while :; do sleep 0.1; done", "<reload signal=\"HUP\"/>")),
            ("db", shell_service("db", "exec sleep 1000", "")),
            ("calm", shell_service("calm", "exec sleep 1000", "")),
            ("watcher", shell_service("watcher", "exec sleep 1000", "<start-on event=\"config-changed:db\"/>")),
        ],
    );
    let renderer = write_renderer(
        &initd,
        "if [ -e \"$TEST_DIR/changed\" ]; then echo '{\"written\": [\"/etc/web.conf\", \"/etc/db.conf\"], \"services\": [{\"name\": \"web\", \"action\": \"reload\"}, {\"name\": \"db\", \"action\": \"restart\"}]}'; else echo '{\"written\": [], \"services\": []}'; fi",
    );
    initd.launch(&["--render-command", &renderer, "--server", "srv-1"]);
    initd.wait_for_state("web", "running");
    initd.wait_for_state("db", "running");
    initd.wait_for_state("calm", "running");
    // Boot rendered once with the mode as profile.
    let args = std::fs::read_to_string(initd.path("render-args")).unwrap();
    assert!(
        args.contains("render --model /etc/nodows/model.xml --services "),
        "{args}"
    );
    assert!(
        args.contains("--root / --profile production --server srv-1 --json"),
        "{args}"
    );
    let (web, db, calm) = (
        initd.main_pid("web"),
        initd.main_pid("db"),
        initd.main_pid("calm"),
    );
    std::fs::write(initd.path("changed"), "").unwrap();
    let reply = initd.ctl(&["render"]);
    assert!(reply.contains("rendered: 2 files written"), "{reply}");
    assert!(
        reply.contains("reload web") && reply.contains("restart db"),
        "{reply}"
    );
    initd.wait_until("db restarted", || {
        initd.state("db") == "running" && initd.main_pid("db") != db
    });
    initd.wait_until("web reloaded", || initd.path("web-reloads").exists());
    assert_eq!(initd.main_pid("web"), web, "reload keeps the process");
    assert_eq!(
        initd.main_pid("calm"),
        calm,
        "unnamed services are left alone"
    );
    initd.wait_for_state("watcher", "running");
    // configure NAME passes --service NAME.
    initd.ctl(&["configure", "calm"]);
    let args = std::fs::read_to_string(initd.path("render-args")).unwrap();
    assert!(
        args.lines()
            .last()
            .unwrap()
            .contains("--service calm --json"),
        "{args}"
    );
}

#[test]
fn a_failing_or_missing_renderer_is_logged_and_initd_keeps_running() {
    let mut initd = Initd::prepare(
        "render-fail",
        &[("one", shell_service("one", "exec sleep 1000", ""))],
    );
    let renderer = write_renderer(&initd, "echo 'not json'");
    initd.launch(&["--render-command", &renderer]);
    initd.wait_for_state("one", "running");
    let output = initd.try_ctl(&["render"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad change set"));
    write_renderer(&initd, "exit 4");
    let output = initd.try_ctl(&["render"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("renderer failed (exit 4)"));
    std::fs::remove_file(initd.path("renderer.sh")).unwrap();
    let output = initd.try_ctl(&["render"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
    assert_eq!(initd.state("one"), "running");
}

#[test]
fn a_mode_switch_renders_with_the_new_profile_first() {
    let mut initd = Initd::prepare(
        "render-mode",
        &[(
            "fail",
            shell_service(
                "fail",
                "cat \"$TEST_DIR/profile\" > \"$TEST_DIR/seen\"; exec sleep 1000",
                "<modes>failover</modes>",
            ),
        )],
    );
    // The renderer "writes" the profile into a file the service reads.
    let renderer = write_renderer(
        &initd,
        "while [ $# -gt 0 ]; do if [ \"$1\" = --profile ]; then echo \"$2\" > \"$TEST_DIR/profile\"; fi; shift; done; echo '{\"written\": [], \"services\": []}'",
    );
    initd.launch(&["--render-command", &renderer, "--mode", "production"]);
    initd.ctl(&["mode", "failover"]);
    initd.wait_for_state("fail", "running");
    // The redirect creates the file before cat fills it.
    initd.wait_until("seen", || {
        std::fs::read_to_string(initd.path("seen")).is_ok_and(|text| text.ends_with('\n'))
    });
    assert_eq!(
        std::fs::read_to_string(initd.path("seen")).unwrap().trim(),
        "failover"
    );
}

/// Guards the all-or-nothing mode switch (issue 13): when the renderer
/// refuses the new mode's model, the node stays in its old mode with its
/// services as they were, and `initctl mode` exits 1 saying so.
#[test]
fn a_mode_switch_whose_render_fails_leaves_the_old_mode() {
    let mut initd = Initd::prepare(
        "render-mode-refused",
        &[
            (
                "prod",
                shell_service("prod", "exec sleep 1000", "<modes>production</modes>"),
            ),
            (
                "fail",
                shell_service("fail", "exec sleep 1000", "<modes>failover</modes>"),
            ),
        ],
    );
    let renderer = write_renderer(
        &initd,
        "case \"$*\" in *'--profile failover'*) echo 'model.xml:3: unknown profile failover' >&2; exit 2;; esac; echo '{\"written\": [], \"services\": []}'",
    );
    initd.launch(&["--render-command", &renderer, "--mode", "production"]);
    initd.wait_for_state("prod", "running");
    let pid = initd.main_pid("prod");
    let output = initd.try_ctl(&["mode", "failover"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mode failover refused, still in mode production"),
        "{stderr}"
    );
    assert_eq!(initd.ctl(&["mode"]).trim(), "production");
    assert_eq!(initd.state("fail"), "stopped");
    assert_eq!(initd.main_pid("prod"), pid);
    // initctl status NAME: 0 unless the service is failed, 2 when unknown.
    assert_eq!(initd.ctl(&["status", "prod"]).trim(), "prod running");
    assert_eq!(initd.try_ctl(&["status", "fail"]).status.code(), Some(0));
    assert_eq!(initd.try_ctl(&["status", "nosuch"]).status.code(), Some(2));
}
