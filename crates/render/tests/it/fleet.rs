//! The fleet: `nodows watch --model postgres://...` against a real
//! PostgreSQL (started by this test binary), each appliance a watcher
//! process with its own role, passfile, last-good file and root.

use crate::support::{repo, TempDir};
use model::postgres as pg;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cluster() -> &'static pgtest::Cluster {
    pgtest::Cluster::shared(env!("CARGO_TARGET_TMPDIR"))
}

/// A migrated database holding the demo model: its superuser URL.
fn fleet_database(label: &str) -> String {
    let cluster = cluster();
    let url = cluster.superuser_url(&cluster.database(label));
    let mut client = pg::connect(&url).unwrap();
    pg::migrate(&mut client, "test").unwrap();
    let model = model::Model::load(repo().join("models/default.xml").to_str().unwrap()).unwrap();
    pg::write(&mut client, "test", &model, "import").unwrap();
    url
}

/// Creates server `server`'s role (member of nodows_appliance, profiles
/// production and failover) and its passfile; returns its URL.
fn appliance_url(url: &str, server: &str, dir: &Path) -> String {
    let cluster = cluster();
    let database = url.rsplit('/').next().unwrap().to_string();
    let role = format!("{database}_{server}");
    let password = format!("secret-{server}-{}", std::process::id());
    pg::connect(url)
        .unwrap()
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE nodows_appliance;
             INSERT INTO nodows.appliance (server, role, profiles) VALUES ('{server}', '{role}', '{{production,failover}}');"
        ))
        .unwrap();
    let passfile = dir.join("db.pgpass");
    cluster.passfile(&passfile, &database, &role, &password);
    format!(
        "{}?passfile={}",
        cluster.url(&role, &database),
        passfile.display()
    )
}

/// One simulated appliance: a watcher process; killed on drop.
struct Appliance {
    server: String,
    dir: TempDir,
    child: Child,
}

impl Appliance {
    fn start(url: &str, server: &str, poll: &str) -> Appliance {
        let dir = TempDir::new(&format!("fleet-{server}"));
        Appliance::start_in(dir, url, server, poll)
    }

    fn start_in(dir: TempDir, url: &str, server: &str, poll: &str) -> Appliance {
        let command = format!(
            "{} render --model {} --services {} --root {} --profile production --server {server}",
            env!("CARGO_BIN_EXE_nodows"),
            dir.path().join("var/lib/nodows/model.xml").display(),
            repo().join("services").display(),
            dir.path().join("root").display()
        );
        Appliance::spawn(dir, url, server, poll, &command, &[])
    }

    /// A watcher that applies in process (`--apply-root`); its command does
    /// what initd does for `initctl render --applied`: `nodows journal`,
    /// whose change sets are appended to `changes.jsonl`.
    fn start_applying(url: &str, server: &str) -> Appliance {
        let dir = TempDir::new(&format!("fleet-apply-{server}"));
        let root = dir.path().join("root");
        let command = format!(
            "sh -c '{} journal --root {} --json >> {}'",
            env!("CARGO_BIN_EXE_nodows"),
            root.display(),
            dir.path().join("changes.jsonl").display()
        );
        let apply = ["--apply-root".to_string(), root.display().to_string()];
        Appliance::spawn(dir, url, server, "60s", &command, &apply)
    }

    fn spawn(
        dir: TempDir,
        url: &str,
        server: &str,
        poll: &str,
        command: &str,
        extra: &[String],
    ) -> Appliance {
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let last_good = dir.path().join("var/lib/nodows/model.xml");
        let services = repo().join("services");
        let log = std::fs::File::create(dir.path().join("watch.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nodows"))
            .args([
                "watch",
                "--model",
                url,
                "--server",
                server,
                "--profile",
                "production",
            ])
            .arg("--services")
            .arg(&services)
            .arg("--last-good")
            .arg(&last_good)
            .arg("--status-file")
            .arg(dir.path().join("run/model-status.json"))
            .args(["--command", command, "--poll", poll, "--max-backoff", "1s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Appliance {
            server: server.to_string(),
            dir,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watch.log")).unwrap_or_default()
    }

    fn status_file(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("run/model-status.json"))
            .unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    fn file(&self, target: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("root").join(target)).unwrap_or_default()
    }

    fn last_good(&self) -> PathBuf {
        self.dir.path().join("var/lib/nodows/model.xml")
    }

    /// Waits until the watcher's log contains `text`.
    fn wait_for_log(&self, text: &str) {
        let started = Instant::now();
        while !self.log().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no `{text}` in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// How many times the render command ran.
    fn renders(&self) -> usize {
        self.log().matches(" applied: ran ").count()
    }

    /// Waits until the status row says `result` for `revision`.
    fn wait_for_status(&self, url: &str, revision: i64, result: &str) -> (String, Option<i64>) {
        let mut admin = pg::connect(url).unwrap();
        let started = Instant::now();
        loop {
            let row = admin
                .query_opt(
                    "SELECT revision, result, error, running_revision FROM nodows.status WHERE server = $1",
                    &[&self.server],
                )
                .unwrap();
            if let Some(row) = &row {
                if row.get::<_, i64>(0) == revision && row.get::<_, String>(1) == result {
                    return (row.get(2), row.get(3));
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server {}: no status {result} for revision {revision}; row {:?}; log:\n{}",
                self.server,
                row.map(|r| (
                    r.get::<_, i64>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2)
                )),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Guards the in-process apply (`nodows watch --apply-root`): the watcher
/// writes the changed file itself and leaves the journal, whose change set
/// (exactly the owner) its command (initd's `nodows journal`) reports once.
#[test]
fn an_in_process_apply_hands_exactly_the_owners_to_the_journal() {
    let url = fleet_database("fleet_apply");
    let pass = TempDir::new("pass-apply");
    let a = Appliance::start_applying(&appliance_url(&url, "web01", pass.path()), "web01");
    let changes = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(a.dir.path().join("changes.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let first = revision(&url);
    a.wait_for_status(&url, first, "applied");
    assert!(a.file("var/www/html/index.html").contains("nodows web01"));
    let boot = changes();
    assert_eq!(boot.len(), 1, "{boot:?}");
    assert!(boot[0]["written"].as_array().unwrap().len() > 5, "{boot:?}");

    let changed = execute(
        &url,
        "INSERT INTO nodows.value (server, service, key, value) VALUES ('web01', 'web', 'worker_processes', '5')",
    );
    a.wait_for_status(&url, changed, "applied");
    assert!(a
        .file("etc/nginx/nginx.conf")
        .contains("worker_processes 5"));
    assert_eq!(
        changes()[1],
        serde_json::json!({"written": ["/etc/nginx/nginx.conf"], "services": [{"name": "web", "action": "reload"}]})
    );
    assert!(!a
        .dir
        .path()
        .join("root/var/lib/nodows/render-journal.json")
        .exists());
    assert!(a.log().contains("ran sh -c"), "{}", a.log());
}

fn revision(url: &str) -> i64 {
    pg::current_revision(&mut pg::connect(url).unwrap(), "t").unwrap()
}

fn execute(url: &str, sql: &str) -> i64 {
    pg::connect(url).unwrap().batch_execute(sql).unwrap();
    revision(url)
}

/// The fleet story on the host: a key of `a` reaches only `a`, a
/// default reaches both, a model that breaks a template is refused whole
/// (last-good and running files kept, the error in the status row), and a
/// revert brings the fleet forward again.
#[test]
fn a_commit_reaches_exactly_the_affected_appliances_and_a_broken_model_is_refused() {
    let url = fleet_database("fleet_story");
    let dir_a = TempDir::new("pass-a");
    let dir_b = TempDir::new("pass-b");
    let a = Appliance::start(&appliance_url(&url, "web01", dir_a.path()), "web01", "60s");
    let b = Appliance::start(&appliance_url(&url, "web02", dir_b.path()), "web02", "60s");
    let first = revision(&url);
    a.wait_for_status(&url, first, "applied");
    b.wait_for_status(&url, first, "applied");
    assert!(a.file("var/www/html/index.html").contains("nodows web01"));
    assert!(b.file("var/www/html/index.html").contains("nodows web02"));
    assert_eq!((a.renders(), b.renders()), (1, 1));
    // The last-good file holds no other server's values.
    let last_good = std::fs::read_to_string(a.last_good()).unwrap();
    assert!(last_good.starts_with(&format!("<!-- nodows last-good revision={first} sha256=")));
    assert!(!last_good.contains("web02"));

    // A key of a: a renders, b is not even notified.
    let changed = execute(
        &url,
        "UPDATE nodows.value SET value = 'a changed' WHERE server = 'web01' AND key = 'title'",
    );
    a.wait_for_status(&url, changed, "applied");
    assert!(a.file("var/www/html/index.html").contains("a changed"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((a.renders(), b.renders()), (2, 1));

    // A default: both converge, both status rows show the revision.
    let default = execute(
        &url,
        "INSERT INTO nodows.value (service, key, value) VALUES ('web', 'worker_processes', '3')",
    );
    a.wait_for_status(&url, default, "applied");
    b.wait_for_status(&url, default, "applied");
    assert!(a
        .file("etc/nginx/nginx.conf")
        .contains("worker_processes 3"));
    assert_eq!((a.renders(), b.renders()), (3, 2));

    // A model that breaks a template: refused whole on both.
    let nginx_before = a.file("etc/nginx/nginx.conf");
    let last_good_before = std::fs::read(a.last_good()).unwrap();
    let broken = execute(
        &url,
        "BEGIN; UPDATE nodows.value SET value = '4' WHERE server IS NULL AND profile IS NULL AND key = 'worker_processes';
         DELETE FROM nodows.value WHERE server IS NULL AND profile IS NULL AND service = 'net' AND key = 'address'; COMMIT;",
    );
    let (error, running) = a.wait_for_status(&url, broken, "refused");
    assert!(
        error.contains("key `address` of service `net` is required"),
        "{error}"
    );
    assert_eq!(running, Some(default));
    b.wait_for_status(&url, broken, "refused");
    assert_eq!(a.file("etc/nginx/nginx.conf"), nginx_before);
    assert_eq!(std::fs::read(a.last_good()).unwrap(), last_good_before);
    let local = a.status_file();
    assert_eq!(local["result"], "refused");
    assert_eq!(local["running"]["revision"], default);
    assert!(a.log().contains(&format!("revision {broken} refused")));

    // Revert: a new revision equal to the last good one; both apply it.
    let output = crate::support::nodows()
        .args(["model", "revert", "--model", &url, &default.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reverted = revision(&url);
    assert!(reverted > broken);
    a.wait_for_status(&url, reverted, "applied");
    b.wait_for_status(&url, reverted, "applied");

    // History names each revision with its diff.
    let output = crate::support::nodows()
        .args(["model", "history", "--model", &url, "--limit", "3"])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&output.stdout);
    assert!(
        history.contains(&format!("revision {reverted} ")),
        "{history}"
    );
    assert!(
        history.contains(&format!("revert to {default}")),
        "{history}"
    );
    assert!(
        history.contains("+ defaults: net.address = \"10.0.2.15/24\""),
        "{history}"
    );
    assert!(
        history.contains("~ defaults: web.worker_processes: \"3\" -> \"4\""),
        "{history}"
    );
    // No password in any log.
    for appliance in [&a, &b] {
        assert!(!appliance.log().contains("secret-"), "{}", appliance.log());
    }
}

/// Guards "a change while disconnected is never lost": the watcher loses
/// its connection, cannot log in for a while, a change is committed
/// meanwhile (its NOTIFY goes nowhere), and after the reconnect the watcher
/// sees the revision moved and applies it (the poll is an hour: only the
/// reconnect can have done it).
#[test]
fn a_change_made_while_disconnected_arrives_after_the_reconnect() {
    let url = fleet_database("fleet_reconnect");
    let dir = TempDir::new("pass-reconnect");
    let a_url = appliance_url(&url, "web01", dir.path());
    let role = a_url
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let a = Appliance::start(&a_url, "web01", "1h");
    a.wait_for_status(&url, revision(&url), "applied");
    execute(
        &url,
        &format!(
            "ALTER ROLE {role} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        ),
    );
    a.wait_for_log("connection lost");
    let changed = execute(
        &url,
        "UPDATE nodows.value SET value = 'while away' WHERE server = 'web01' AND key = 'title'",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!a.file("var/www/html/index.html").contains("while away"));
    assert_eq!(a.status_file()["connected"], false);
    execute(&url, &format!("ALTER ROLE {role} LOGIN"));
    a.wait_for_status(&url, changed, "applied");
    assert!(a.file("var/www/html/index.html").contains("while away"));
    assert!(a.log().contains("database unreachable"), "{}", a.log());
}

/// Without the database the watcher keeps running on the last-good model
/// and says so, in its log and its status file.
#[test]
fn without_the_database_the_last_good_model_is_used_and_said() {
    let dir = TempDir::new("fleet-offline");
    let last_good = dir.path().join("var/lib/nodows/model.xml");
    let model = model::Model::load(repo().join("models/default.xml").to_str().unwrap()).unwrap();
    let sliced = render::fleet::slice(&model, "web01").unwrap();
    let written = render::fleet::LastGood::write(&last_good, 41, &sliced.to_model_xml()).unwrap();
    assert_eq!(render::fleet::LastGood::read(&last_good), Some(written));
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/fleet");
    let a = Appliance::start_in(dir, &url, "web01", "60s");
    a.wait_for_log("database unreachable");
    assert!(
        a.log().contains("running on last-good revision 41"),
        "{}",
        a.log()
    );
    let status = a.status_file();
    assert_eq!(status["connected"], false);
    assert_eq!(status["running"]["revision"], 41);
    // A last-good file whose text does not match its hash is not trusted.
    let text = std::fs::read_to_string(a.last_good()).unwrap();
    std::fs::write(a.last_good(), text.replace("nodows web01", "tampered")).unwrap();
    assert_eq!(render::fleet::LastGood::read(&a.last_good()), None);
}

/// Bad input to `nodows model import` is refused whole: the error names the
/// file and line, the exit code is 2, and the database has no new revision.
#[test]
fn a_bad_model_import_changes_nothing_in_the_database() {
    let url = fleet_database("fleet_bad_import");
    let before = revision(&url);
    let dir = TempDir::new("bad-import");
    let bad = dir.path().join("bad.xml");
    std::fs::write(
        &bad,
        "<model>\n  <defaults>\n    <service name=\"web\"><key>no name</key></service>\n  </defaults>\n</model>\n",
    )
    .unwrap();
    let output = crate::support::nodows()
        .args(["model", "import", "--model", &url, "--from"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains(&format!(
            "{}:3: <key> needs a non-empty `name` attribute",
            bad.display()
        )),
        "{error}"
    );
    assert!(!error.contains(&cluster().superuser_password), "{error}");
    assert_eq!(revision(&url), before);
    // An unreachable destination is an error naming it; nothing is written.
    let missing = dir.path().join("no/such/dir/model.xml");
    let output = crate::support::nodows()
        .args(["model", "export", "--model", &url, "--to"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no/such/dir/model.xml"));
    assert!(!missing.exists());
}
