//! Staging, diff and atomic sync against a real target root.

use crate::support::{change_set, copy_tree, render, repo, stderr, tree, TempDir};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn render_json(model: &Path, services: &Path, root: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--services",
        services.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    render(&args)
}

/// The change set's files and actions, without the settings every change
/// set carries (`disabled`, `values`).
fn files_and_actions(mut change_set: serde_json::Value) -> serde_json::Value {
    let object = change_set.as_object_mut().unwrap();
    object.remove("disabled");
    object.remove("values");
    change_set
}

/// A copy of the demo model with `from` replaced by `to` (exactly once).
fn edited_model(dir: &Path, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("models/default.xml")).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from} must occur once in the demo model"
    );
    let path = dir.join("model.xml");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

/// (mtime, inode) of every file, to prove which files were rewritten.
fn stamps(root: &Path) -> std::collections::BTreeMap<String, (i64, i64, u64)> {
    tree(root)
        .into_keys()
        .map(|path| {
            let metadata = std::fs::metadata(root.join(&path)).unwrap();
            (
                path,
                (metadata.mtime(), metadata.mtime_nsec(), metadata.ino()),
            )
        })
        .collect()
}

#[test]
fn one_key_changed_rewrites_exactly_one_file_and_reloads_exactly_its_owner() {
    let root = TempDir::new("one-key");
    let work = TempDir::new("one-key-model");
    let services = repo().join("services");
    let model = repo().join("models/default.xml");
    let first = change_set(&render_json(
        &model,
        &services,
        root.path(),
        &["--profile", "production", "--server", "web01"],
    ));
    assert_eq!(first["written"].as_array().unwrap().len(), 12);
    let before = stamps(root.path());

    // Nothing changed: nothing written, nothing to do.
    let again = change_set(&render_json(
        &model,
        &services,
        root.path(),
        &["--profile", "production", "--server", "web01"],
    ));
    assert_eq!(
        files_and_actions(again),
        serde_json::json!({"written": [], "services": []})
    );

    let edited = edited_model(
        work.path(),
        r#"<profile name="production">"#,
        r#"<profile name="production"><service name="ssh"><key name="permit_empty_passwords">yes</key></service>"#,
    );
    let changed = change_set(&render_json(
        &edited,
        &services,
        root.path(),
        &["--profile", "production", "--server", "web01"],
    ));
    assert_eq!(
        files_and_actions(changed),
        serde_json::json!({"written": ["/etc/ssh/sshd_config"], "services": [{"name": "ssh", "action": "reload"}]})
    );
    let after = stamps(root.path());
    for (path, stamp) in &before {
        if path == "etc/ssh/sshd_config" {
            assert_ne!(after[path], *stamp, "{path} was not rewritten");
        } else {
            assert_eq!(after[path], *stamp, "{path} was rewritten");
        }
    }
    assert!(
        std::fs::read_to_string(root.path().join("etc/ssh/sshd_config"))
            .unwrap()
            .contains("PermitEmptyPasswords yes")
    );
}

#[test]
fn mode_and_owner_drift_is_repaired() {
    let root = TempDir::new("drift");
    let services = repo().join("services");
    let model = repo().join("models/default.xml");
    let args = ["--profile", "dev", "--service", "net"];
    change_set(&render_json(&model, &services, root.path(), &args));
    let script = root.path().join("etc/nodows/net.sh");
    assert_eq!(std::fs::metadata(&script).unwrap().mode() & 0o7777, 0o755);

    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o600)).unwrap();
    let repaired = change_set(&render_json(&model, &services, root.path(), &args));
    assert_eq!(
        files_and_actions(repaired),
        serde_json::json!({"written": ["/etc/nodows/net.sh"], "services": [{"name": "net", "action": "restart"}]})
    );
    assert_eq!(std::fs::metadata(&script).unwrap().mode() & 0o7777, 0o755);

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&script, Some(1), Some(1)).unwrap();
        let repaired = change_set(&render_json(&model, &services, root.path(), &args));
        assert_eq!(
            repaired["written"],
            serde_json::json!(["/etc/nodows/net.sh"])
        );
        let metadata = std::fs::metadata(&script).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (0, 0));
    }
}

#[test]
fn dry_run_reports_but_writes_nothing() {
    let root = TempDir::new("dry-run");
    let output = render_json(
        &repo().join("models/default.xml"),
        &repo().join("services"),
        root.path(),
        &["--profile", "dev", "--dry-run"],
    );
    let change = change_set(&output);
    assert_eq!(change["written"].as_array().unwrap().len(), 12);
    assert!(tree(root.path()).is_empty());
}

#[test]
fn service_option_restricts_the_render_to_those_services() {
    let root = TempDir::new("only");
    let output = render_json(
        &repo().join("models/default.xml"),
        &repo().join("services"),
        root.path(),
        &[
            "--profile",
            "dev",
            "--service",
            "ssh",
            "--service",
            "sysctl",
        ],
    );
    assert_eq!(
        files_and_actions(change_set(&output)),
        serde_json::json!({
            "written": ["/etc/ssh/authorized_keys/root", "/etc/ssh/sshd_config", "/etc/sysctl.d/90-nodows.conf"],
            "services": [{"name": "ssh", "action": "reload"}, {"name": "sysctl", "action": "restart"}]
        })
    );
}

#[test]
fn failing_template_leaves_every_target_untouched() {
    // Why: a half-applied configuration (new nginx.conf, old site) is worse
    // than an old one; one bad template must stop the whole render.
    let root = TempDir::new("failing");
    let work = TempDir::new("failing-services");
    let services = work.path().join("services");
    copy_tree(&repo().join("services"), &services);
    let model = repo().join("models/default.xml");
    change_set(&render_json(
        &model,
        &services,
        root.path(),
        &["--profile", "dev"],
    ));
    let before = tree(root.path());
    let before_stamps = stamps(root.path());

    // Every file would change in production, but the last template in
    // target order fails at run time.
    std::fs::write(
        services.join("standby/var/www/standby/index.html.xsl"),
        r#"<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><xsl:message terminate="yes">standby page is broken</xsl:message></xsl:template>
</xsl:stylesheet>
"#,
    )
    .unwrap();
    let output = render_json(&model, &services, root.path(), &["--profile", "production"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("index.html.xsl: standby page is broken"),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
    assert_eq!(tree(root.path()), before);
    assert_eq!(stamps(root.path()), before_stamps);
}

#[test]
fn fault_between_two_renames_leaves_every_file_old_or_new() {
    // Why: the renderer can be killed at any point (power loss, OOM); a
    // target must never be seen half-written.
    let root = TempDir::new("fault");
    let old_root = TempDir::new("fault-old");
    let new_root = TempDir::new("fault-new");
    let services = repo().join("services");
    let model = repo().join("models/default.xml");
    for (dir, profile) in [(&root, "dev"), (&old_root, "dev"), (&new_root, "failover")] {
        change_set(&render_json(
            &model,
            &services,
            dir.path(),
            &["--profile", profile, "--server", "web02"],
        ));
    }
    let old = tree(old_root.path());
    let new = tree(new_root.path());
    let differing: Vec<&String> = old.keys().filter(|p| old[*p] != new[*p]).collect();
    assert!(
        differing.len() >= 4,
        "the profiles must differ in several files: {differing:?}"
    );

    let output = crate::support::nodows()
        .args([
            "render",
            "--model",
            model.to_str().unwrap(),
            "--services",
            services.to_str().unwrap(),
            "--root",
            root.path().to_str().unwrap(),
            "--profile",
            "failover",
            "--server",
            "web02",
        ])
        .env("NODOWS_FAULT_AFTER_RENAMES", "2")
        .output()
        .unwrap();
    assert!(!output.status.success(), "the fault was not injected");
    assert!(stderr(&output).contains("fault injected after 2 renames"));

    let crashed = tree(root.path());
    let mut renewed = 0;
    assert!(
        crashed.contains_key("var/lib/nodows/render-journal.json"),
        "the interrupted apply left no journal"
    );
    for (path, bytes) in crashed
        .iter()
        .filter(|(p, _)| !p.contains(".nodows-tmp") && !p.starts_with("var/lib/nodows/"))
    {
        let is_old = old.get(path) == Some(bytes);
        let is_new = new.get(path) == Some(bytes);
        assert!(is_old || is_new, "{path} is neither old nor new");
        if is_new && !is_old {
            renewed += 1;
        }
    }
    assert_eq!(renewed, 2, "exactly the two renamed files are new");

    // The next render completes the job, leaves no temporary files and
    // reports every file of the interrupted apply, also the two renamed
    // before the fault (their services were never reloaded: issue 12).
    let finished = change_set(&render_json(
        &model,
        &services,
        root.path(),
        &["--profile", "failover", "--server", "web02"],
    ));
    assert_eq!(
        finished["written"].as_array().unwrap().len(),
        differing.len()
    );
    assert_eq!(
        tree(root.path()),
        new,
        "the root differs from a clean render (or temporary files are left)"
    );
}

#[test]
fn symlinked_parents_resolve_inside_the_root() {
    // Why: at build time the root is a Debian tree whose symlinks are
    // absolute (/var/run -> /run); following them on the host would write
    // outside the image.
    let root = TempDir::new("symlink");
    std::fs::create_dir_all(root.path().join("var")).unwrap();
    std::fs::create_dir_all(root.path().join("real-www")).unwrap();
    std::os::unix::fs::symlink("/real-www", root.path().join("var/www")).unwrap();
    let output = render_json(
        &repo().join("models/default.xml"),
        &repo().join("services"),
        root.path(),
        &["--profile", "dev", "--service", "web"],
    );
    change_set(&output);
    assert!(root.path().join("real-www/html/index.html").is_file());
    assert!(std::fs::symlink_metadata(root.path().join("var/www"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn xml_and_sqlite_models_render_the_same_files() {
    let work = TempDir::new("sqlite");
    let model = model::Model::load(repo().join("models/default.xml").to_str().unwrap()).unwrap();
    let db = work.path().join("model.db");
    let connection = rusqlite::Connection::open(&db).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE profile (name TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE server (id TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE setting (server TEXT, profile TEXT, service TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);",
        )
        .unwrap();
    let insert = |server: Option<&str>, profile: Option<&str>, layer: &model::Layer| {
        for (service, keys) in layer {
            for (key, value) in &keys.keys {
                connection
                    .execute(
                        "INSERT INTO setting VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![server, profile, service, key, value],
                    )
                    .unwrap();
            }
        }
    };
    insert(None, None, &model.defaults);
    for (name, layer) in &model.profiles {
        connection
            .execute("INSERT INTO profile VALUES (?1)", [name])
            .unwrap();
        insert(None, Some(name), layer);
    }
    for (id, layer) in &model.servers {
        connection
            .execute("INSERT INTO server VALUES (?1)", [id])
            .unwrap();
        insert(Some(id), None, layer);
    }
    drop(connection);

    let sqlite_spec = format!("sqlite:{}", db.display());
    let xml_spec = repo().join("models/default.xml");
    let services = repo().join("services");
    for profile in ["dev", "test", "production", "failover", "backup"] {
        for server in [None, Some("web01"), Some("web02"), Some("fo1")] {
            let mut extra = vec!["--profile", profile];
            if let Some(server) = server {
                extra.extend(["--server", server]);
            }
            let from_xml = TempDir::new("sqlite-xml");
            let from_sqlite = TempDir::new("sqlite-db");
            change_set(&render_json(&xml_spec, &services, from_xml.path(), &extra));
            change_set(&render_json(
                Path::new(&sqlite_spec),
                &services,
                from_sqlite.path(),
                &extra,
            ));
            let xml_tree = tree(from_xml.path());
            assert_eq!(xml_tree.len(), 12);
            assert_eq!(xml_tree, tree(from_sqlite.path()), "{profile} {server:?}");
        }
    }
}

#[test]
fn many_services_render_on_several_threads_with_per_template_errors() {
    // Why: 32 or more templates are rendered on several threads; each
    // result must land in its own file and an error must name its template.
    let work = TempDir::new("many");
    let services = work.path().join("services");
    let mut model = String::from("<model>\n  <defaults>\n");
    for index in 0..40 {
        let name = format!("svc{index:02}");
        let dir = services.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("service.xml"),
            format!("<service name=\"{name}\">\n  <exec path=\"/bin/true\"/>\n  <file target=\"/etc/many/{name}.conf\" template=\"t.xsl\" on-change=\"reload\"/>\n  <key name=\"v\" type=\"string\">the value</key>\n</service>\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("t.xsl"),
            r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="service"/>
  <xsl:template match="/"><xsl:value-of select="$service"/>=<xsl:value-of select="/model/service[@name = $service]/key"/></xsl:template>
</xsl:stylesheet>
"#,
        )
        .unwrap();
        model.push_str(&format!(
            "    <service name=\"{name}\"><key name=\"v\">{}</key></service>\n",
            index * 7
        ));
    }
    model.push_str("  </defaults>\n  <profile name=\"dev\"/>\n</model>\n");
    let model_path = work.path().join("model.xml");
    std::fs::write(&model_path, model).unwrap();

    let root = TempDir::new("many-root");
    let change = change_set(&render_json(
        &model_path,
        &services,
        root.path(),
        &["--profile", "dev"],
    ));
    assert_eq!(change["written"].as_array().unwrap().len(), 40);
    for index in 0..40 {
        let text =
            std::fs::read_to_string(root.path().join(format!("etc/many/svc{index:02}.conf")))
                .unwrap();
        assert_eq!(text, format!("svc{index:02}={}", index * 7));
    }

    std::fs::write(services.join("svc17/t.xsl"), "<xsl:stylesheet version=\"1.0\" xmlns:xsl=\"http://www.w3.org/1999/XSL/Transform\">\n<xsl:template match=\"/\"><xsl:value-of select=\"(\"/></xsl:template>\n</xsl:stylesheet>\n").unwrap();
    let fresh = TempDir::new("many-fresh");
    let output = render_json(&model_path, &services, fresh.path(), &["--profile", "dev"]);
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(error.contains("svc17/t.xsl:2: element value-of"), "{error}");
    assert!(!error.contains("svc16"), "{error}");
    assert!(tree(fresh.path()).is_empty());
}

#[test]
fn a_write_failure_exits_1_and_removes_every_temporary_file() {
    // Why: an I/O error after some temporary files were written must not
    // leave any of them, and no target may change.
    let root = TempDir::new("io-failure");
    std::fs::create_dir_all(root.path().join("var")).unwrap();
    // /var/www is a file, so /var/www/html/index.html (late in target
    // order) cannot be written after the /etc files were staged on disk.
    std::fs::write(root.path().join("var/www"), "not a directory").unwrap();
    let before = tree(root.path());
    let output = render_json(
        &repo().join("models/default.xml"),
        &repo().join("services"),
        root.path(),
        &["--profile", "dev"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot write"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("no target was changed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(tree(root.path()), before);
}

#[test]
fn concurrent_renders_of_one_root_take_turns() {
    // Why: a boot render and a watch-triggered render may overlap; they
    // share temporary file names, so they must not interleave.
    let root = TempDir::new("concurrent");
    let model = repo().join("models/default.xml");
    let services = repo().join("services");
    let mut children = Vec::new();
    for round in 0..4 {
        let profile = if round % 2 == 0 { "dev" } else { "production" };
        children.push(
            crate::support::nodows()
                .args([
                    "render",
                    "--model",
                    model.to_str().unwrap(),
                    "--services",
                    services.to_str().unwrap(),
                ])
                .args([
                    "--root",
                    root.path().to_str().unwrap(),
                    "--profile",
                    profile,
                    "--json",
                ])
                .env("NODOWS_TEST_SYNC_DELAY_MS", "150")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let result = tree(root.path());
    for profile in ["dev", "production"] {
        let reference = TempDir::new("concurrent-reference");
        change_set(&render_json(
            &model,
            &services,
            reference.path(),
            &["--profile", profile],
        ));
        if tree(reference.path()) == result {
            return;
        }
    }
    panic!(
        "the root is neither a dev nor a production render: {:?}",
        result.keys()
    );
}

/// The change set tells initd which services the model disables and the
/// values of the keys definitions name (`<ready port="{port}"/>`), for
/// every service, whatever was rendered; a model that disables a need of an
/// enabled service of the mode is refused whole.
#[test]
fn the_change_set_carries_disabled_services_and_named_key_values() {
    let root = TempDir::new("settings");
    let work = TempDir::new("settings-model");
    let services = repo().join("services");
    let edited = edited_model(
        work.path(),
        r#"<profile name="test">"#,
        r#"<profile name="test"><service name="web"><key name="enabled">no</key><key name="port">8080</key></service>"#,
    );
    let args = ["--profile", "test", "--service", "sysctl"];
    let settings = change_set(&render_json(&edited, &services, root.path(), &args));
    assert_eq!(settings["disabled"], serde_json::json!(["web"]));
    assert_eq!(
        settings["values"],
        serde_json::json!({"ssh": {"port": "22"}, "standby": {"port": "80"}, "web": {"port": "8080"}})
    );

    let refused = edited_model(
        work.path(),
        r#"<profile name="test">"#,
        r#"<profile name="test"><service name="net"><key name="enabled">no</key></service>"#,
    );
    let before = tree(root.path());
    let output = render_json(&refused, &services, root.path(), &["--profile", "test"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message
            .contains("service `web` runs in mode test and needs `net`, which the model disables"),
        "{message}"
    );
    assert_eq!(tree(root.path()), before, "a refused model writes nothing");
}
