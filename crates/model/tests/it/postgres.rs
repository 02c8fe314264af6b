//! The PostgreSQL source against a real server: the same model as XML and
//! SQLite, lossless round trips, revisions with NOTIFY, history and revert,
//! row-level security per appliance, TLS with a pinned CA, passfiles.

use model::postgres as pg;
use model::Model;
use postgres::fallible_iterator::FallibleIterator;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn cluster() -> &'static pgtest::Cluster {
    pgtest::Cluster::shared(env!("CARGO_TARGET_TMPDIR"))
}

/// A migrated database of its own: its superuser URL.
fn database(label: &str) -> String {
    let cluster = cluster();
    let name = cluster.database(label);
    let url = cluster.superuser_url(&name);
    let mut client = pg::connect(&url).unwrap();
    assert_eq!(pg::migrate(&mut client, "test").unwrap(), vec![1, 2]);
    assert!(pg::migrate(&mut client, "test").unwrap().is_empty());
    url
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo_model() -> Model {
    Model::load(repo().join("models/default.xml").to_str().unwrap()).unwrap()
}

fn scratch(label: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("model-it-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every (server, profile) of the model, and no server, layered.
fn every_effective(model: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for profile in model.profiles.keys() {
        out.push(model.effective(None, profile).unwrap().to_xml());
        for server in model.servers.keys() {
            out.push(model.effective(Some(server), profile).unwrap().to_xml());
        }
    }
    out
}

/// Guards the import/export promise: XML -> PostgreSQL -> SQLite -> XML
/// keeps every layer, key and value, and the layering agrees everywhere.
#[test]
fn xml_sqlite_and_postgres_hold_the_same_model() {
    let url = database("same_model");
    let dir = scratch("same");
    let xml = demo_model();
    xml.save(&url, "import").unwrap();
    let from_postgres = Model::load(&url).unwrap();
    let sqlite = format!("sqlite:{}", dir.join("model.db").display());
    from_postgres.save(&sqlite, "").unwrap();
    let from_sqlite = Model::load(&sqlite).unwrap();
    let xml_again = dir.join("model.xml");
    from_sqlite.save(xml_again.to_str().unwrap(), "").unwrap();
    let back = Model::load(xml_again.to_str().unwrap()).unwrap();

    assert_eq!(xml.to_model_xml(), from_postgres.to_model_xml());
    assert_eq!(xml.to_model_xml(), from_sqlite.to_model_xml());
    assert_eq!(xml.to_model_xml(), back.to_model_xml());
    let expected = every_effective(&xml);
    assert!(expected.len() > 4);
    assert_eq!(every_effective(&from_postgres), expected);
    assert_eq!(every_effective(&from_sqlite), expected);
    // Values that need escaping survive too.
    let tricky = Model::from_xml(
        "<model><defaults><service name=\"s\"><key name=\"k\">&lt;a&gt; &amp; \"q\" &#13;\n\ttabs </key></service></defaults><profile name=\"p\"/><server id=\"x y\"/></model>",
        "t.xml",
    )
    .unwrap();
    tricky.save(&url, "tricky").unwrap();
    assert_eq!(
        Model::load(&url).unwrap().to_model_xml(),
        tricky.to_model_xml()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Locations of PostgreSQL values name the table and row, for messages.
#[test]
fn postgres_values_carry_their_row_in_messages() {
    let url = database("locations");
    demo_model().save(&url, "import").unwrap();
    let model = Model::load(&url).unwrap();
    let (service, location) = &model.service_mentions[0];
    assert!(!service.is_empty());
    assert!(location.contains(": table value, row id "), "{location}");
    assert!(!location.contains(&cluster().superuser_password));
}

/// Bad input is refused whole: a value in two layers is a constraint
/// violation and nothing of the import is left behind.
#[test]
fn a_refused_change_leaves_no_partial_rows() {
    let url = database("refused");
    demo_model().save(&url, "import").unwrap();
    let before = pg::current_revision(&mut pg::connect(&url).unwrap(), "t").unwrap();
    let mut client = pg::connect(&url).unwrap();
    let error = client
        .batch_execute(
            "BEGIN;
             UPDATE nodows.value SET value = '81' WHERE server IS NULL AND profile IS NULL AND service = 'sysctl' AND key = 'vm.swappiness';
             INSERT INTO nodows.value (server, profile, service, key, value) VALUES ('web01', 'dev', 'web', 'port', '1');
             COMMIT;",
        )
        .unwrap_err();
    assert!(
        pg::describe(&error).contains("value_in_one_layer"),
        "{}",
        pg::describe(&error)
    );
    drop(client);
    let mut client = pg::connect(&url).unwrap();
    assert_eq!(pg::current_revision(&mut client, "t").unwrap(), before);
    let model = Model::load(&url).unwrap();
    assert_eq!(model.defaults["sysctl"].keys["vm.swappiness"], "10");
}

fn notifications(client: &mut postgres::Client, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut notifications = client.notifications();
    let mut iter = notifications.timeout_iter(wait);
    while let Ok(Some(notification)) = iter.next() {
        out.push(notification.payload().to_string());
    }
    out.sort();
    out
}

/// Every committed change is one revision with who and when, and NOTIFYs
/// exactly the servers whose effective model changed (or `all`).
#[test]
fn each_commit_is_a_revision_that_notifies_the_affected_servers() {
    let url = database("revisions");
    let mut listener = pg::connect(&url).unwrap();
    listener.batch_execute("LISTEN nodows_model").unwrap();
    let model = demo_model();
    let first = model.save(&url, "import").map(|_| ());
    first.unwrap();
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        ["all"]
    );

    let mut admin = pg::connect(&url).unwrap();
    admin
        .batch_execute("UPDATE nodows.value SET value = 'changed' WHERE server = 'web01' AND service = 'web' AND key = 'title'")
        .unwrap();
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        ["web01"]
    );

    // A transaction touching two servers' rows: one revision, two ids.
    admin
        .batch_execute(
            "BEGIN;
             INSERT INTO nodows.value (server, service, key, value) VALUES ('web01', 'web', 'server_name', 'one');
             INSERT INTO nodows.value (server, service, key, value) VALUES ('web02', 'web', 'server_name', 'two');
             COMMIT;",
        )
        .unwrap();
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        ["web01", "web02"]
    );

    // The same value again changes nothing: no revision, no notification.
    let before = pg::current_revision(&mut admin, "t").unwrap();
    admin
        .batch_execute("UPDATE nodows.value SET value = value WHERE server = 'web01'")
        .unwrap();
    assert!(notifications(&mut listener, Duration::from_millis(300)).is_empty());
    assert_eq!(pg::current_revision(&mut admin, "t").unwrap(), before);

    admin
        .batch_execute("BEGIN; SET LOCAL nodows.note = 'more workers'; UPDATE nodows.value SET value = '4' WHERE profile IS NULL AND server IS NULL AND key = 'vm.swappiness'; COMMIT;")
        .unwrap();
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        ["all"]
    );

    let history = pg::history(&mut admin, "t", 10).unwrap();
    assert_eq!(history.len(), 4);
    let newest = &history[0];
    assert_eq!(newest.note, "more workers");
    assert_eq!(newest.author, "postgres");
    assert_eq!(newest.affected, ["all"]);
    assert!(newest.at.ends_with(" UTC"));
    assert_eq!(
        pg::diff(&history[1].model, &newest.model),
        ["~ defaults: sysctl.vm.swappiness: \"10\" -> \"4\""]
    );
    assert_eq!(
        pg::diff(&history[2].model, &history[1].model),
        [
            "+ server web01: web.server_name = \"one\"",
            "+ server web02: web.server_name = \"two\""
        ]
    );
}

/// `revert REV` makes REV's model current as a new revision; the fleet
/// converges forward and only the affected servers are notified.
#[test]
fn revert_makes_an_old_revision_current_as_a_new_one() {
    let url = database("revert");
    let mut admin = pg::connect(&url).unwrap();
    let model = demo_model();
    let first = pg::write(&mut admin, "t", &model, "import")
        .unwrap()
        .unwrap();
    admin
        .batch_execute(
            "UPDATE nodows.value SET value = 'changed' WHERE server = 'web02' AND key = 'title'",
        )
        .unwrap();
    let mut listener = pg::connect(&url).unwrap();
    listener.batch_execute("LISTEN nodows_model").unwrap();
    let reverted = pg::revert(&mut admin, "t", first).unwrap().unwrap();
    assert!(reverted > first + 1);
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        ["web02"]
    );
    assert_eq!(
        Model::load(&url).unwrap().to_model_xml(),
        model.to_model_xml()
    );
    let newest = pg::revision(&mut admin, "t", reverted).unwrap();
    assert_eq!(newest.note, format!("revert to {first}"));
    // Reverting to what is current changes nothing.
    assert_eq!(pg::revert(&mut admin, "t", reverted).unwrap(), None);
    let missing = pg::revert(&mut admin, "t", 999).unwrap_err().to_string();
    assert!(missing.contains("there is no revision 999"), "{missing}");
}

/// An appliance role and its URL, with the password in a passfile.
fn appliance(url: &str, label: &str, server: &str, profiles: &str, dir: &Path) -> String {
    let cluster = cluster();
    let database = url.rsplit('/').next().unwrap().to_string();
    let role = format!("{database}_{label}");
    let password = format!("pw-{label}-{}", std::process::id());
    let mut admin = pg::connect(url).unwrap();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE nodows_appliance;
             INSERT INTO nodows.appliance (server, role, profiles) VALUES ('{server}', '{role}', '{profiles}');
             GRANT CONNECT ON DATABASE {database} TO {role};"
        ))
        .unwrap();
    let passfile = dir.join(format!("{label}.pgpass"));
    cluster.passfile(&passfile, &database, &role, &password);
    format!(
        "{}?passfile={}",
        cluster.url(&role, &database),
        passfile.display()
    )
}

fn connect_error(url: &str) -> String {
    match pg::connect(url) {
        Ok(_) => panic!("{url}: connected"),
        Err(e) => e.to_string(),
    }
}

fn sqlstate(result: Result<impl std::fmt::Debug, postgres::Error>) -> String {
    let error = result.unwrap_err();
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_default()
}

/// Row-level security: server a's credentials read the defaults, a's
/// profiles and a's own rows, never b's; a writes only its own status row.
#[test]
fn an_appliance_reads_only_its_rows_and_writes_only_its_status() {
    let url = database("rls");
    let dir = scratch("rls");
    demo_model().save(&url, "import").unwrap();
    let a_url = appliance(&url, "a", "web01", "{production,failover}", &dir);
    let _b_url = appliance(&url, "b", "web02", "{production}", &dir);

    let model = Model::load(&a_url).unwrap();
    assert_eq!(model.servers.keys().collect::<Vec<_>>(), ["web01"]);
    assert_eq!(
        model.profiles.keys().collect::<Vec<_>>(),
        ["failover", "production"]
    );
    assert!(!model.defaults.is_empty());
    // The layering for a is the same as with every row visible.
    let full = demo_model();
    assert_eq!(
        model.effective(Some("web01"), "production").unwrap(),
        full.effective(Some("web01"), "production").unwrap()
    );

    let mut a = pg::connect(&a_url).unwrap();
    let rows = a
        .query("SELECT * FROM nodows.value WHERE server = 'web02'", &[])
        .unwrap();
    assert!(rows.is_empty(), "a sees b's values");
    // The revision table holds every server's model: no access at all.
    assert_eq!(
        sqlstate(a.query("SELECT model FROM nodows.revision", &[])),
        "42501"
    );
    // Writing b's status row is a row-level security violation.
    assert_eq!(
        sqlstate(a.execute(
            "INSERT INTO nodows.status (server, revision, result) VALUES ('web02', 1, 'applied')",
            &[]
        )),
        "42501"
    );
    // Changing the model is not allowed.
    assert_eq!(
        sqlstate(a.execute("UPDATE nodows.value SET value = 'x'", &[])),
        "42501"
    );
    // Its own status row it may write, twice (one row per appliance).
    let revision = pg::current_revision(&mut a, "a").unwrap();
    pg::write_status(
        &mut a,
        "a",
        "web01",
        revision,
        pg::Outcome::Applied,
        "",
        Some(revision),
    )
    .unwrap();
    pg::write_status(
        &mut a,
        "a",
        "web01",
        revision,
        pg::Outcome::Refused,
        "bad",
        Some(revision),
    )
    .unwrap();
    let mut admin = pg::connect(&url).unwrap();
    let rows = admin
        .query("SELECT server, result, error FROM nodows.status", &[])
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "refused");
    let _ = std::fs::remove_dir_all(dir);
}

/// A passfile readable by others is refused, and a wrong password is an
/// authentication error that does not print the password.
#[test]
fn credentials_come_from_a_private_passfile() {
    let url = database("passfile");
    let dir = scratch("passfile");
    demo_model().save(&url, "import").unwrap();
    let a_url = appliance(&url, "a", "web01", "{}", &dir);
    let passfile = dir.join("a.pgpass");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = connect_error(&a_url);
    assert!(error.contains("chmod 600"), "{error}");
    let text = std::fs::read_to_string(&passfile).unwrap();
    std::fs::write(&passfile, text.replace(":pw-", ":wrong-")).unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = connect_error(&a_url);
    assert!(
        error.contains("28P01") || error.contains("password"),
        "{error}"
    );
    assert!(!error.contains("wrong-"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}

/// TLS with the CA pinned (`sslmode=verify-full`): the test cluster's CA
/// is accepted, another CA is refused.
#[test]
fn tls_verify_full_accepts_the_pinned_ca_only() {
    let cluster = cluster();
    let url = database("tls");
    let good = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        cluster.ca_certificate.display()
    );
    let mut client = pg::connect(&good).unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl);
    let localhost = good.replace("127.0.0.1", "localhost");
    pg::connect(&localhost).unwrap();
    let wrong = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        cluster.other_ca_certificate.display()
    );
    let error = connect_error(&wrong);
    assert!(error.contains("certificate verify failed"), "{error}");
    let error = connect_error(&format!("{url}?sslmode=verify-full"));
    assert!(error.contains("needs sslrootcert"), "{error}");
    // The message names the source without its password.
    assert!(!error.contains(&cluster.superuser_password), "{error}");
}
