//! The rendering hook: initd runs the renderer as a child, reads its change
//! set, reloads/restarts exactly the named services and fires
//! config-changed:NAME.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

pub(crate) fn write_renderer(initd: &Initd, body: &str) -> String {
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

/// Guards `initctl render --applied` (a watcher applied in process): initd
/// renders nothing, runs `nodows journal` and reloads exactly the owners
/// its change set names.
#[test]
fn render_applied_reports_the_journal_and_reloads_exactly_its_owners() {
    let mut initd = Initd::prepare(
        "render-applied",
        &[
            ("web", shell_service("web", "trap 'echo reloaded >> \"$TEST_DIR/web-reloads\"' HUP; while :; do sleep 0.1; done", "<reload signal=\"HUP\"/>")),
            ("calm", shell_service("calm", "exec sleep 1000", "")),
        ],
    );
    let renderer = write_renderer(
        &initd,
        "if [ \"$1\" = journal ]; then echo '{\"written\": [\"/etc/web.conf\"], \"services\": [{\"name\": \"web\", \"action\": \"reload\"}]}'; else echo '{\"written\": [], \"services\": []}'; fi",
    );
    initd.launch(&["--render-command", &renderer]);
    initd.wait_for_state("web", "running");
    initd.wait_for_state("calm", "running");
    let (web, calm) = (initd.main_pid("web"), initd.main_pid("calm"));
    let reply = initd.ctl(&["render", "--applied"]);
    assert!(reply.contains("rendered: 1 files written"), "{reply}");
    assert!(reply.contains("reload web"), "{reply}");
    initd.wait_until("web reloaded", || initd.path("web-reloads").exists());
    assert_eq!(initd.main_pid("web"), web);
    assert_eq!(initd.main_pid("calm"), calm);
    let args = std::fs::read_to_string(initd.path("render-args")).unwrap();
    assert_eq!(
        args.lines().last(),
        Some("journal --root / --json --keep-journal"),
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

/// Guards: services and the renderer get a defined environment, never
/// initd's own; as PID 1 that holds every unknown `KEY=value` word of the
/// kernel command line (a boot-menu edit could otherwise set a renderer
/// variable or a service's behaviour).
#[test]
fn children_get_a_defined_environment_not_initds_own() {
    let mut initd = Initd::prepare(
        "environment",
        &[(
            "envdump",
            shell_service(
                "envdump",
                "env > \"$TEST_DIR/service-env\"; exec sleep 1000",
                "<env name=\"FROM_DEFINITION\" value=\"yes\"/>",
            ),
        )],
    );
    let renderer = write_renderer(
        &initd,
        "env > \"$TEST_DIR/renderer-env\"; echo '{\"written\": [], \"services\": []}'",
    );
    initd.env.push((
        "NODOWS_TEST_SYNC_DELAY_MS".to_string(),
        "600000".to_string(),
    ));
    initd
        .env
        .push(("FROM_KERNEL_CMDLINE".to_string(), "1".to_string()));
    initd.launch(&["--render-command", &renderer]);
    initd.wait_for_state("envdump", "running");
    // `env > FILE` creates the file before it writes: wait for its end.
    for file in ["service-env", "renderer-env"] {
        initd.wait_until(file, || {
            std::fs::read_to_string(initd.path(file)).is_ok_and(|text| text.contains("TERM="))
        });
    }
    for file in ["service-env", "renderer-env"] {
        let text = std::fs::read_to_string(initd.path(file)).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        for absent in ["NODOWS_TEST_SYNC_DELAY_MS", "FROM_KERNEL_CMDLINE", "CARGO"] {
            assert!(!names.contains(&absent), "{file} has {absent}:\n{text}");
        }
        for present in ["PATH", "HOME", "TERM", "TEST_DIR"] {
            assert!(names.contains(&present), "{file} lacks {present}:\n{text}");
        }
    }
    let service = std::fs::read_to_string(initd.path("service-env")).unwrap();
    assert!(service.contains("FROM_DEFINITION=yes\n"), "{service}");
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

/// Guards issue 12's "initd reports failure truthfully": a hung renderer is
/// killed after --render-timeout, and a renderer killed in the middle of an
/// apply (it left its journal) is not "configuration unchanged": initd
/// renders again at once, and that render's change set is acted on and its
/// journal removed.
#[test]
fn a_hung_or_killed_render_is_reported_as_such_and_its_apply_finished() {
    let mut initd = Initd::prepare(
        "render-killed",
        &[(
            "one",
            shell_service(
                "one",
                "trap 'echo reloaded >> \"$TEST_DIR/one-reloads\"' HUP; while :; do sleep 0.1; done",
                "<reload signal=\"HUP\"/>",
            ),
        )],
    );
    let root = initd.path("root");
    std::fs::create_dir_all(root.join("var/lib/nodows")).unwrap();
    let journal = root.join("var/lib/nodows/render-journal.json");
    // Boot render: fine. Later: the first call leaves a journal and dies by
    // SIGKILL, the second (initd's retry) reports a reload of `one`.
    let renderer = write_renderer(
        &initd,
        &format!(
            "case \"$(cat \"$TEST_DIR/mode\" 2>/dev/null)\" in
  hang) exec sleep 1000 ;;
  kill) echo retry > \"$TEST_DIR/mode\"; echo '{{}}' > {journal}; kill -9 $$ ;;
  retry) echo '{{\"written\":[\"/etc/one\"],\"services\":[{{\"name\":\"one\",\"action\":\"reload\"}}]}}' ;;
  *) echo '{{\"written\":[],\"services\":[]}}' ;;
esac",
            journal = journal.display()
        ),
    );
    initd.launch(&[
        "--render-command",
        &renderer,
        "--root",
        root.to_str().unwrap(),
        "--render-timeout",
        "1",
    ]);
    initd.wait_for_state("one", "running");

    std::fs::write(initd.path("mode"), "hang").unwrap();
    let output = initd.try_ctl(&["render"]);
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("hung for 1 s and was killed"), "{error}");
    assert!(error.contains("configuration unchanged"), "{error}");
    assert!(!journal.exists());

    std::fs::write(initd.path("mode"), "kill").unwrap();
    let output = initd.try_ctl(&["render"]);
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("renderer failed (signal KILL)"), "{error}");
    assert!(error.contains("rendering again to finish it"), "{error}");
    // The retry reloads `one` and removes the journal.
    initd.wait_until("one reloaded", || initd.path("one-reloads").exists());
    let started = std::time::Instant::now();
    while journal.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let args = std::fs::read_to_string(initd.path("render-args")).unwrap();
    assert!(
        args.lines().all(|line| line.contains("--keep-journal")),
        "{args}"
    );
    assert_eq!(initd.state("one"), "running");
}

/// `initctl status` says which model initd renders from and, when the fleet
/// watcher runs, whether it reaches the database and which revision runs
/// (issue 12: "a boot without the database uses last-good and says so").
#[test]
fn status_names_the_model_and_the_fleet_watchers_state() {
    let mut initd = Initd::prepare(
        "render-status",
        &[("one", shell_service("one", "exec sleep 1000", ""))],
    );
    initd.launch(&["--model", "/var/lib/nodows/model.xml"]);
    initd.wait_for_state("one", "running");
    let reply = initd.ctl(&["status"]);
    assert!(
        reply.contains("model /var/lib/nodows/model.xml\n"),
        "{reply}"
    );
    assert!(!reply.contains("fleet"), "{reply}");
    std::fs::write(
        initd.path("state/model-status.json"),
        r#"{"source":"postgres://nodows_web01@db:5432/fleet","server":"web01","connected":false,"running":{"revision":41,"sha256":"ab"},"seen_revision":41,"result":"unreachable","error":"connection refused\nmore"}"#,
    )
    .unwrap();
    let reply = initd.ctl(&["status"]);
    assert!(
        reply.contains("fleet postgres://nodows_web01@db:5432/fleet server web01: database unreachable; running last-good revision 41; last unreachable: connection refused\n"),
        "{reply}"
    );
}

/// The model decides whether a service runs: the change set's `disabled`
/// stops exactly that service and dropping it from the list starts it
/// again, other services keep their processes; and a `{port}` readiness
/// field follows the change set's value (nothing listens on the declared
/// default, so the service is ready only through the model's port).
#[test]
fn the_models_enabled_key_stops_and_starts_exactly_that_service_live() {
    let model_port = free_port();
    let declared_port = free_port();
    let listen = format!(
        "exec python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {model_port})); s.listen(); time.sleep(1000)'"
    );
    let mut initd = Initd::prepare(
        "enabled",
        &[
            ("calm", shell_service("calm", "exec sleep 1000", "")),
            ("flip", shell_service("flip", "exec sleep 1000", "")),
            (
                "server",
                shell_service(
                    "server",
                    &listen,
                    &format!("<ready kind=\"tcp\" port=\"{{port}}\" timeout=\"5m\"/><key name=\"port\" type=\"port\" default=\"{declared_port}\">p</key>"),
                ),
            ),
        ],
    );
    let renderer = write_renderer(
        &initd,
        &format!("if [ -e \"$TEST_DIR/disable-flip\" ]; then disabled='[\"flip\"]'; else disabled='[]'; fi\necho \"{{\\\"written\\\": [], \\\"services\\\": [], \\\"disabled\\\": $disabled, \\\"values\\\": {{\\\"server\\\": {{\\\"port\\\": \\\"{model_port}\\\"}}}}}}\""),
    );
    initd.launch(&["--render-command", &renderer]);
    initd.wait_for_state("server", "running");
    initd.wait_for_state("flip", "running");
    let (calm, server) = (initd.main_pid("calm"), initd.main_pid("server"));

    std::fs::write(initd.path("disable-flip"), "").unwrap();
    initd.ctl(&["render"]);
    initd.wait_for_state("flip", "stopped");
    assert_eq!(initd.service("flip")["enabled"], false);
    assert!(initd.ctl(&["status"]).contains("disabled by the model"));
    assert_eq!(initd.service("flip")["in_mode"], false);
    assert!(initd
        .ctl(&["check", "flip"])
        .contains("flip (disabled by the model"));
    let refused = initd.try_ctl(&["start", "flip"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(initd.state("flip"), "stopped");
    assert_eq!(
        (initd.main_pid("calm"), initd.main_pid("server")),
        (calm, server),
        "only the disabled service stops"
    );

    std::fs::remove_file(initd.path("disable-flip")).unwrap();
    initd.ctl(&["render"]);
    initd.wait_for_state("flip", "running");
    assert_eq!(
        (initd.main_pid("calm"), initd.main_pid("server")),
        (calm, server),
        "only the enabled service starts"
    );
}
