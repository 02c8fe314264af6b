use super::*;

const ISSUE_EXAMPLE: &str = r#"<model>
  <defaults>
    <service name="web"><key name="port">80</key><key name="title">nodows</key></service>
  </defaults>
  <profile name="dev">
    <service name="web"><key name="title">nodows (dev)</key></service>
  </profile>
  <server id="web01">
    <service name="web"><key name="port">8080</key></service>
  </server>
</model>
"#;

fn error_text(result: Result<Model, Error>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn issue_example_layers_defaults_then_profile_then_server() {
    let model = Model::from_xml(ISSUE_EXAMPLE, "m.xml").unwrap();
    let effective = model.effective(Some("web01"), "dev").unwrap();
    let web = &effective.services["web"];
    assert_eq!(web["port"], "8080");
    assert_eq!(web["title"], "nodows (dev)");

    let no_server = model.effective(None, "dev").unwrap();
    assert_eq!(no_server.services["web"]["port"], "80");
    assert_eq!(no_server.server, None);
}

#[test]
fn effective_document_shape() {
    let model = Model::from_xml(ISSUE_EXAMPLE, "m.xml").unwrap();
    let xml = model.effective(Some("web01"), "dev").unwrap().to_xml();
    assert_eq!(
        xml,
        "<model server=\"web01\" profile=\"dev\">\n  <service name=\"web\">\n    <key name=\"port\">8080</key>\n    <key name=\"title\">nodows (dev)</key>\n  </service>\n</model>\n"
    );
}

#[test]
fn values_are_escaped_in_the_effective_document() {
    let model = Model::from_xml(
        r#"<model><defaults><service name="a"><key name="k">&lt;b&gt; &amp; "q" &#65;</key></service></defaults><profile name="p"/></model>"#,
        "m.xml",
    )
    .unwrap();
    let effective = model.effective(None, "p").unwrap();
    assert_eq!(effective.services["a"]["k"], "<b> & \"q\" A");
    assert!(effective
        .to_xml()
        .contains("&lt;b&gt; &amp; &quot;q&quot; A"));
}

#[test]
fn unknown_profile_and_server_are_named() {
    let model = Model::from_xml(ISSUE_EXAMPLE, "m.xml").unwrap();
    let e = model.effective(None, "prod").unwrap_err().to_string();
    assert!(e.contains("m.xml: unknown profile `prod`"), "{e}");
    assert!(e.contains("the model has: dev"), "{e}");
    let e = model
        .effective(Some("web09"), "dev")
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.xml: unknown server `web09`"), "{e}");
}

#[test]
fn doctype_and_external_entities_are_refused() {
    let xxe = "<?xml version=\"1.0\"?>\n<!DOCTYPE model [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n<model><defaults><service name=\"a\"><key name=\"k\">&x;</key></service></defaults></model>";
    let e = error_text(Model::from_xml(xxe, "m.xml"));
    assert!(e.starts_with("m.xml:2: a DOCTYPE is not allowed"), "{e}");

    let undeclared = "<model>\n<defaults><service name=\"a\"><key name=\"k\">&x;</key></service></defaults></model>";
    let e = error_text(Model::from_xml(undeclared, "m.xml"));
    assert!(e.starts_with("m.xml:2: bad character or entity"), "{e}");
}

#[test]
fn malformed_xml_names_file_and_line() {
    let e = error_text(Model::from_xml("<model>\n<defaults>\n</model>\n", "m.xml"));
    assert!(
        e.starts_with("m.xml:3: the model is not well-formed XML"),
        "{e}"
    );
}

#[test]
fn structure_problems_are_all_reported() {
    let text = "<model>\n<bogus/>\n<profile/>\n<defaults><service name=\"a\"><key name=\"k\">1</key><key name=\"k\">2</key></service></defaults>\n</model>";
    let e = error_text(Model::from_xml(text, "m.xml"));
    assert!(e.contains("m.xml:2: unknown element <bogus>"), "{e}");
    assert!(
        e.contains("m.xml:3: <profile> needs a non-empty `name`"),
        "{e}"
    );
    assert!(
        e.contains("m.xml:4: key `k` of service `a` is set twice"),
        "{e}"
    );
}

#[test]
fn service_mentions_carry_lines() {
    let model = Model::from_xml(ISSUE_EXAMPLE, "m.xml").unwrap();
    assert_eq!(
        model.service_mentions,
        vec![
            ("web".to_string(), "m.xml:3".to_string()),
            ("web".to_string(), "m.xml:6".to_string()),
            ("web".to_string(), "m.xml:9".to_string()),
        ]
    );
}

fn issue_example_as_sqlite(path: &std::path::Path) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE profile (name TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE server (id TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE setting (server TEXT, profile TEXT, service TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
             INSERT INTO profile VALUES ('dev');
             INSERT INTO server VALUES ('web01');
             INSERT INTO setting VALUES (NULL, NULL, 'web', 'port', '80');
             INSERT INTO setting VALUES (NULL, NULL, 'web', 'title', 'nodows');
             INSERT INTO setting VALUES (NULL, 'dev', 'web', 'title', 'nodows (dev)');
             INSERT INTO setting VALUES ('web01', NULL, 'web', 'port', '8080');",
        )
        .unwrap();
}

#[test]
fn sqlite_and_xml_give_the_same_effective_document() {
    let dir = std::env::temp_dir().join(format!("nodows-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("model.db");
    let _ = std::fs::remove_file(&db);
    issue_example_as_sqlite(&db);
    let from_sqlite = Model::load(&format!("sqlite:{}", db.display())).unwrap();
    let from_xml = Model::from_xml(ISSUE_EXAMPLE, "m.xml").unwrap();
    for server in [None, Some("web01")] {
        assert_eq!(
            from_sqlite.effective(server, "dev").unwrap(),
            from_xml.effective(server, "dev").unwrap()
        );
    }
    let e = from_sqlite
        .effective(Some("nope"), "dev")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("sqlite:{}: unknown server", db.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sqlite_rows_for_undeclared_layers_are_refused() {
    let dir = std::env::temp_dir().join(format!("nodows-model-test2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("model.db");
    let _ = std::fs::remove_file(&db);
    issue_example_as_sqlite(&db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "INSERT INTO setting VALUES (NULL, 'prod', 'web', 'port', '1');
             INSERT INTO setting VALUES ('web01', 'dev', 'web', 'port', '1');",
        )
        .unwrap();
    let e = Model::from_sqlite(&db).unwrap_err().to_string();
    assert!(
        e.contains("table setting rowid 5: profile `prod` is not in table profile"),
        "{e}"
    );
    assert!(
        e.contains("table setting rowid 6: both server and profile are set"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
