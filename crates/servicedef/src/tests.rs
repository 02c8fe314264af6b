use super::*;

const WEB: &str = r#"<service name="web" type="service" package="nginx-light">
  <description>Status page</description>
  <exec path="/usr/sbin/nginx"><arg>-g</arg><arg>daemon off;</arg></exec>
  <env name="LANG" value="C.UTF-8"/>
  <needs>net</needs>
  <modes>dev test production failover</modes>
  <ready kind="tcp" port="80" timeout="10s"/>
  <restart policy="always" backoff-min="100ms" backoff-max="30s" max="5" within="60s"/>
  <stop signal="TERM" timeout="5s"/>
  <reload signal="HUP"/>
  <file target="/etc/nginx/sites-enabled/default" template="site.xsl" mode="0644" on-change="reload"/>
</service>
"#;

const NET: &str = r#"<service name="net" type="network">
  <exec path="/bin/true"/>
  <ready kind="exit"/>
</service>
"#;

struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(files: &[(&str, &str)]) -> Tree {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "servicedef-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (name, text) in files {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join(FILE_NAME), text).unwrap();
        }
        Tree { root }
    }

    fn errors(&self) -> String {
        load_dir(&self.root).unwrap_err().to_string()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn service(name: &str, body: &str) -> String {
    format!("<service name=\"{name}\">\n  <exec path=\"/bin/sleep\"><arg>100</arg></exec>\n{body}</service>\n")
}

#[test]
fn the_issue_example_parses_unchanged() {
    let tree = Tree::new(&[("web", WEB), ("net", NET)]);
    let definitions = load_dir(&tree.root).unwrap();
    assert_eq!(definitions.len(), 2);
    let web = &definitions[1];
    assert_eq!(web.name, "web");
    assert_eq!(web.service_type, ServiceType::Service);
    assert_eq!(web.packages, vec!["nginx-light"]);
    assert_eq!(web.description, "Status page");
    assert_eq!(web.exec.path, PathBuf::from("/usr/sbin/nginx"));
    assert_eq!(web.exec.args, vec!["-g", "daemon off;"]);
    assert_eq!(web.env, vec![("LANG".to_string(), "C.UTF-8".to_string())]);
    assert_eq!(web.needs, vec!["net"]);
    assert_eq!(web.modes, vec!["dev", "test", "production", "failover"]);
    assert_eq!(web.ready, Readiness::Tcp { port: 80 });
    assert_eq!(web.ready_timeout, Duration::from_secs(10));
    assert_eq!(
        web.restart,
        Restart {
            policy: RestartPolicy::Always,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max: 5,
            within: Duration::from_secs(60),
        }
    );
    assert_eq!(web.stop_signal, libc::SIGTERM);
    assert_eq!(web.stop_timeout, Duration::from_secs(5));
    assert_eq!(web.reload_signal, Some(libc::SIGHUP));
    assert_eq!(web.files.len(), 1);
    assert_eq!(web.files[0].target, "/etc/nginx/sites-enabled/default");
    assert_eq!(web.files[0].template, PathBuf::from("site.xsl"));
    assert_eq!(web.files[0].mode, 0o644);
    assert_eq!(web.files[0].on_change, OnChange::Reload);
    assert_eq!(web.dir, tree.root.join("web"));
    assert_eq!(web.line, 1);
    let net = &definitions[0];
    assert_eq!(net.ready, Readiness::Exit);
    assert_eq!(
        net.restart.policy,
        RestartPolicy::Never,
        "a oneshot defaults to never"
    );
}

#[test]
fn every_optional_element_parses() {
    let text = service(
        "full",
        r#"  <package os="freebsd">nginx</package>
  <package>extra</package>
  <start-on event="started:net"/>
  <start-on event="custom"/>
  <ready kind="notify" fd="3"/>
  <user>www-data</user>
  <group>adm</group>
  <workdir>/var/www</workdir>
  <umask>0027</umask>
  <rlimit name="nofile" soft="1024" hard="4096"/>
  <rlimit name="core" soft="unlimited"/>
"#,
    );
    let definition = parse_str(Path::new("/x/full/service.xml"), &text).unwrap();
    assert_eq!(definition.freebsd_packages, Some(vec!["nginx".to_string()]));
    assert_eq!(definition.packages, vec!["extra"]);
    assert_eq!(
        definition.start_on,
        vec![
            Event::Started("net".to_string()),
            Event::Custom("custom".to_string())
        ]
    );
    assert_eq!(definition.ready, Readiness::Notify { fd: 3 });
    assert_eq!(definition.user.as_deref(), Some("www-data"));
    assert_eq!(definition.group.as_deref(), Some("adm"));
    assert_eq!(definition.workdir, Some(PathBuf::from("/var/www")));
    assert_eq!(definition.umask, Some(0o027));
    assert_eq!(
        definition.rlimits,
        vec![
            ("nofile".to_string(), 1024, 4096),
            ("core".to_string(), u64::MAX, u64::MAX)
        ]
    );
    assert_eq!(definition.dir, PathBuf::from("/x/full"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    for bad in ["10", "s", "", "1.5s", "-1s", "10 s", "10sec", "ten"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn signals() {
    assert_eq!(signal_number("TERM"), Some(libc::SIGTERM));
    assert_eq!(signal_number("SIGHUP"), Some(libc::SIGHUP));
    assert_eq!(signal_number("USR1"), Some(libc::SIGUSR1));
    assert_eq!(signal_number("TERMINATE"), None);
    assert_eq!(signal_name(libc::SIGKILL), Some("KILL"));
}

#[test]
fn malformed_xml_names_file_line_and_column() {
    let tree = Tree::new(&[(
        "bad",
        "<service name=\"bad\">\n  <exec path=\"/bin/true\">\n</service>\n",
    )]);
    let errors = tree.errors();
    let file = tree.root.join("bad/service.xml");
    assert!(
        errors.starts_with(&format!("{}:3:", file.display())),
        "{errors}"
    );
    assert!(errors.contains("malformed XML"), "{errors}");
}

#[test]
fn unclosed_element_is_reported() {
    let tree = Tree::new(&[(
        "bad",
        "<service name=\"bad\">\n  <exec path=\"/bin/true\"/>\n",
    )]);
    let errors = tree.errors();
    assert!(errors.contains("malformed XML"), "{errors}");
    assert!(errors.contains("<service>"), "{errors}");
}

#[test]
fn unknown_elements_and_attributes_are_reported_together() {
    let text = "<service name=\"one\" colour=\"red\">\n  <exec path=\"/bin/true\"/>\n  <frobnicate/>\n  <stop signal=\"TERM\" grace=\"1s\"/>\n</service>\n";
    let tree = Tree::new(&[("one", text)]);
    let errors = tree.errors();
    let file = tree.root.join("one/service.xml").display().to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 3, "{errors}");
    assert!(
        lines[0].starts_with(&format!("{file}:1:1: unknown attribute \"colour\"")),
        "{errors}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:3:3: unknown element <frobnicate>")),
        "{errors}"
    );
    assert!(
        lines[2].starts_with(&format!("{file}:4:3: unknown attribute \"grace\"")),
        "{errors}"
    );
}

#[test]
fn bad_durations_and_signals_are_reported() {
    let text = service(
        "one",
        "  <stop signal=\"TERMINATE\" timeout=\"5 seconds\"/>\n  <restart backoff-min=\"10\"/>\n",
    );
    let tree = Tree::new(&[("one", &text)]);
    let errors = tree.errors();
    let file = tree.root.join("one/service.xml").display().to_string();
    assert!(
        errors.contains(&format!("{file}:3:3: bad signal name \"TERMINATE\"")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{file}:3:3: bad duration \"5 seconds\"")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{file}:4:3: bad duration \"10\"")),
        "{errors}"
    );
}

#[test]
fn bad_enumerations_are_reported() {
    let text = "<service name=\"one\" type=\"daemon\">\n  <exec path=\"bin/true\"/>\n  <ready kind=\"socket\"/>\n  <restart policy=\"sometimes\"/>\n</service>\n";
    let tree = Tree::new(&[("one", text)]);
    let errors = tree.errors();
    assert!(errors.contains(":1:1: bad type \"daemon\""), "{errors}");
    assert!(
        errors.contains(":2:3: exec path \"bin/true\" is not absolute"),
        "{errors}"
    );
    assert!(
        errors.contains(":3:3: bad ready kind \"socket\""),
        "{errors}"
    );
    assert!(
        errors.contains(":4:3: bad policy \"sometimes\""),
        "{errors}"
    );
}

#[test]
fn missing_exec_is_reported() {
    let tree = Tree::new(&[("one", "<service name=\"one\"/>")]);
    assert!(
        tree.errors().contains(":1:1: <service> needs an <exec"),
        "{}",
        tree.errors()
    );
}

#[test]
fn duplicate_names_are_reported() {
    let tree = Tree::new(&[("one", &service("one", "")), ("two", &service("one", ""))]);
    let errors = tree.errors();
    assert!(
        errors.contains("duplicate service name \"one\""),
        "{errors}"
    );
    assert!(errors.contains("two/service.xml:1:1"), "{errors}");
}

#[test]
fn needs_on_unknown_service_is_reported_at_the_needs_line() {
    let tree = Tree::new(&[("one", &service("one", "  <needs>ghost</needs>\n"))]);
    let errors = tree.errors();
    assert!(
        errors
            .contains("one/service.xml:3:3: service \"one\" needs \"ghost\", which does not exist"),
        "{errors}"
    );
}

#[test]
fn a_cycle_is_refused_and_named() {
    let tree = Tree::new(&[
        ("a", &service("a", "  <needs>b</needs>\n")),
        ("b", &service("b", "  <needs>c</needs>\n")),
        ("c", &service("c", "  <needs>a</needs>\n")),
        ("d", &service("d", "  <needs>a</needs>\n")),
        ("e", &service("e", "  <needs>e</needs>\n")),
    ]);
    let errors = tree.errors();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 2, "{errors}");
    assert!(
        lines[0].contains("dependency cycle: a -> b -> c -> a"),
        "{errors}"
    );
    assert!(lines[1].contains("dependency cycle: e -> e"), "{errors}");
}

#[test]
fn all_problems_of_all_files_are_reported_at_once() {
    let tree = Tree::new(&[
        (
            "a",
            "<service name=\"a\"><exec path=\"/bin/true\"/><oops/></service>",
        ),
        (
            "b",
            "<service name=\"b\"><exec path=\"/bin/true\"></service>",
        ),
        ("c", &service("c", "  <needs>zzz</needs>\n")),
    ]);
    let errors = tree.errors();
    assert_eq!(errors.lines().count(), 3, "{errors}");
}

#[test]
fn directory_name_must_match() {
    let tree = Tree::new(&[("web", &service("www", ""))]);
    assert!(
        tree.errors().contains("differs from its directory name"),
        "{}",
        tree.errors()
    );
}

#[test]
fn start_order_puts_needs_first() {
    let tree = Tree::new(&[
        ("a", &service("a", "  <needs>c b</needs>\n")),
        ("b", &service("b", "  <needs>c</needs>\n")),
        ("c", &service("c", "")),
        ("d", &service("d", "")),
    ]);
    let definitions = load_dir(&tree.root).unwrap();
    assert_eq!(start_order(&definitions), vec!["c", "d", "b", "a"]);
    assert!(check_definitions(&definitions).is_ok());
}

/// Guards: the repository's own definitions always load.
#[test]
fn the_repository_services_load() {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services");
    let definitions = load_dir(&services).unwrap_or_else(|errors| panic!("{errors}"));
    assert!(!definitions.is_empty());
}

/// Guards: the RELAX NG schema accepts what the parser accepts (the issue's
/// example and every repository definition) and refuses an unknown element.
#[test]
fn the_schema_agrees_with_the_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema = root.join("services/service.rng");
    let tree = Tree::new(&[("web", WEB), ("bad", &service("bad", "  <frobnicate/>\n"))]);
    let mut files = vec![tree.root.join("web/service.xml")];
    for entry in std::fs::read_dir(root.join("services")).unwrap().flatten() {
        let file = entry.path().join(FILE_NAME);
        if file.is_file() {
            files.push(file);
        }
    }
    let output = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(&schema)
        .args(&files)
        .output()
        .expect("xmllint (Debian package libxml2-utils) is needed for the schema test");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(&schema)
        .arg(tree.root.join("bad/service.xml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
}

/// Guards the renderer's parallel load: any number of threads gives the
/// same definitions and the same problems in the same order.
#[test]
fn loading_on_threads_gives_the_same_result() {
    let names: Vec<String> = (0..40).map(|index| format!("svc{index:02}")).collect();
    let good: Vec<(String, String)> = names
        .iter()
        .map(|name| (name.clone(), service(name, "")))
        .collect();
    let files: Vec<(&str, &str)> = good
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let tree = Tree::new(&files);
    let one = format!("{:?}", load_dir(&tree.root).unwrap());
    for threads in [2, 3, 8, 64] {
        let many = format!("{:?}", load_dir_on_threads(&tree.root, threads).unwrap());
        assert_eq!(one, many, "{threads} threads");
    }
    // Directories without a service.xml file are skipped on the threads too
    // (the check moved there): one without it, one where it is a directory,
    // and a plain file beside the services.
    std::fs::create_dir_all(tree.root.join("empty")).unwrap();
    std::fs::create_dir_all(tree.root.join("odd").join(FILE_NAME)).unwrap();
    std::fs::write(tree.root.join("README"), "not a service\n").unwrap();
    for threads in [1, 2, 3, 8, 64] {
        let many = format!("{:?}", load_dir_on_threads(&tree.root, threads).unwrap());
        assert_eq!(one, many, "{threads} threads, with entries to skip");
    }
    let mut bad = files.clone();
    bad[5].1 = "<service name=\"svc05\">";
    bad[30].1 = "<service name=\"other\"><exec path=\"/bin/true\"/></service>";
    let tree = Tree::new(&bad);
    let one = load_dir(&tree.root).unwrap_err().to_string();
    assert!(one.contains("svc05") && one.contains("other"), "{one}");
    for threads in [2, 3, 8, 64] {
        let many = load_dir_on_threads(&tree.root, threads)
            .unwrap_err()
            .to_string();
        assert_eq!(one, many, "{threads} threads");
    }
}

#[test]
fn key_declarations_parse_with_their_types() {
    let text = service(
        "keys",
        r#"  <key name="port" type="port" default="80">the port</key>
  <key name="level" type="enum" values="debug info" default="info" required="yes">log level</key>
  <key name="workers" type="integer" min="1" max="64" also="auto">workers</key>
  <key name="peers" type="list" item="ipv4">the peers</key>
  <key name="*" type="string">any other key</key>
"#,
    );
    let tree = Tree::new(&[("keys", &text)]);
    let definitions = load_dir(&tree.root).unwrap();
    let keys = &definitions[0].keys;
    // The five declared, then the built-in `enabled`.
    assert_eq!(keys.len(), 6);
    assert_eq!(keys[5].name, ENABLED_KEY);
    assert_eq!(keys[0].key_type, KeyType::Port);
    assert_eq!(keys[0].default.as_deref(), Some("80"));
    assert_eq!(
        keys[1].key_type,
        KeyType::Enum(vec!["debug".into(), "info".into()])
    );
    assert!(keys[1].required);
    assert_eq!(keys[2].key_type, KeyType::Integer { min: 1, max: 64 });
    assert_eq!(keys[2].also, vec!["auto".to_string()]);
    assert_eq!(keys[3].key_type, KeyType::List(Box::new(KeyType::Ipv4)));
    assert_eq!(keys[4].name, ANY_KEY);
    assert_eq!(keys[0].line, 3);
}

#[test]
fn bad_key_declarations_are_reported_together() {
    let text = service(
        "keys",
        r#"  <key name="a" type="colour">a</key>
  <key name="b" type="port" default="http">b</key>
  <key name="c" type="enum">c</key>
  <key name="d" type="string"/>
  <key name="d" type="string">again</key>
  <key name="e f" type="string">space</key>
  <key name="g" type="integer" min="5" max="1">bounds</key>
"#,
    );
    let tree = Tree::new(&[("keys", &text)]);
    let errors = tree.errors();
    for fragment in [
        ":3:3: key \"a\": unknown key type \"colour\": expected one of string, identifier",
        ":4:3: key \"b\": its default \"http\" is not valid: expected a port number 1-65535",
        ":5:3: key \"c\": type enum needs values=",
        ":6:3: key \"d\" needs a one-line description",
        ":7:3: key \"d\" is declared twice",
        ":8:3: bad key name \"e f\"",
        ":9:3: key \"g\": min 5 is larger than max 1",
    ] {
        assert!(errors.contains(fragment), "{fragment}:\n{errors}");
    }
}

/// Each type accepts its plain values and refuses what could change a
/// file's structure (a table of value -> accepted).
#[test]
fn key_types_accept_and_refuse() {
    let cases: &[(KeyType, &[&str], &[&str])] = &[
        (
            KeyType::String,
            &["", "a b; c", "it's \"quoted\" $x"],
            &["a\nb", "tab\there", "nul\0", "del\u{7f}", "c1\u{85}"],
        ),
        (
            KeyType::Identifier,
            &["eth0", "br-lan", "_x.1"],
            &["", "0eth", "a b", "a;b", "x\n"],
        ),
        (
            KeyType::Hostname,
            &["web01", "a.example.org", "example.org."],
            &["", "-a", "a..b", "a_b", "a b", "a;reboot"],
        ),
        (
            KeyType::Ipv4,
            &["10.0.2.2"],
            &["10.0.2.2; reboot", "10.0.2", "::1", " 10.0.2.2"],
        ),
        (KeyType::Ipv6, &["fd00::1"], &["10.0.2.2", "fd00::1 "]),
        (KeyType::Ip, &["10.0.2.2", "::1"], &["host"]),
        (
            KeyType::Cidr,
            &["10.0.2.15/24", "fd00::1/64"],
            &["10.0.2.15", "10.0.2.15/33", "10.0.2.15/+1", "x/24"],
        ),
        (
            KeyType::Port,
            &["1", "80", "65535"],
            &["0", "65536", "+80", "80 ", "", "http"],
        ),
        (
            KeyType::Integer { min: -5, max: 5 },
            &["-5", "0", "5"],
            &["6", "-6", "1.5", "+1", ""],
        ),
        (
            KeyType::Decimal {
                min: 0.0,
                max: 10.0,
            },
            &["0.5", "3", "10"],
            &["10.5", ".5", "1.", "1e3", "-1"],
        ),
        (KeyType::Boolean, &["yes", "no"], &["true", "Yes", ""]),
        (
            KeyType::Enum(vec!["a".into(), "b".into()]),
            &["a", "b"],
            &["c", "a b"],
        ),
        (KeyType::Duration, &["100ms", "5m"], &["5", "5 m", "-5s"]),
        (
            KeyType::Path,
            &["/var/log/x.log", "/a/b-c_d+e@f:g"],
            &["var/log", "/a b", "/a/../b", "/a;b", "/a\nb"],
        ),
        (
            KeyType::Url,
            &["https://example.org/a?b=c&d=e", "http://10.0.2.2:8080/"],
            &[
                "example.org",
                "https://",
                "https://a b",
                "https://a\"b",
                "https://a\\b",
            ],
        ),
        (
            KeyType::SshPublicKey,
            &[
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2uAlpRXDz5H2C1cr7MqoibIWkvKigGXV1h/uY2tAM9 op@laptop",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2uAlpRXDz5H2C1cr7MqoibIWkvKigGXV1h/uY2tAM9",
                "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDaXYl7KR6a78bcfegjwmChTM9XprjRiE+ZLZUT6rmnrwoaFhB+f5Hv1sMcUdomx+OSRCzz/2h5h584B/yrjQtk= ",
            ],
            &[
                "",
                "ssh-ed25519",
                // The blob says ssh-ed25519, the line says ssh-rsa.
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIO2uAlpRXDz5H2C1cr7MqoibIWkvKigGXV1h/uY2tAM9",
                "ssh-ed25519 AAAA!!notbase64",
                // authorized_keys options before the key are not a key.
                "command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2uAlpRXDz5H2C1cr7MqoibIWkvKigGXV1h/uY2tAM9",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2uAlpRXDz5H2C1cr7MqoibIWkvKigGXV1h/uY2tAM9 a\nssh-rsa AAAA",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
            ],
        ),
        (
            KeyType::List(Box::new(KeyType::Ipv4)),
            &["10.0.0.1", "10.0.0.1 10.0.0.2"],
            &["", "10.0.0.1  10.0.0.2", "10.0.0.1 x", " 10.0.0.1"],
        ),
    ];
    for (key_type, good, bad) in cases {
        for value in *good {
            assert!(
                key_type.check(value).is_ok(),
                "{key_type:?} refused {value:?}"
            );
        }
        for value in *bad {
            assert!(
                key_type.check(value).is_err(),
                "{key_type:?} accepted {value:?}"
            );
        }
    }
}

#[test]
fn the_closest_key_is_suggested() {
    let names = ["title", "port", "server_name"];
    assert_eq!(closest("titel", names.iter().copied()), Some("title"));
    assert_eq!(
        closest("server-name", names.iter().copied()),
        Some("server_name")
    );
    assert_eq!(closest("colour", names.iter().copied()), None);
}

/// Guards: a `start-on` that names an event nobody emits used to pass, and
/// the service silently never started.
#[test]
fn start_on_an_event_nobody_emits_or_declares_is_refused() {
    let tree = Tree::new(&[
        ("net", &service("net", "  <event name=\"link-up\">the uplink came up</event>\n")),
        (
            "web",
            &service(
                "web",
                "  <start-on event=\"link-up\"/>\n  <start-on event=\"started:net\"/>\n  <start-on event=\"mode:failover\"/>\n  <start-on event=\"boot\"/>\n",
            ),
        ),
        (
            "typo",
            &service(
                "typo",
                "  <start-on event=\"link-upp\"/>\n  <start-on event=\"started:nett\"/>\n",
            ),
        ),
    ]);
    let errors = tree.errors();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 2, "{errors}");
    assert!(
        errors.contains("typo/service.xml:3:3: start-on \"link-upp\" is no built-in event and no service declares it: declare it with <event name=\"link-upp\"/> in the service that emits it (declared: link-up)"),
        "{errors}"
    );
    assert!(
        errors.contains("typo/service.xml:4:3: start-on \"started:nett\" names service \"nett\", which does not exist"),
        "{errors}"
    );
}

#[test]
fn an_unknown_event_kind_is_a_parse_error() {
    let text = service("typo", "  <start-on event=\"begun:net\"/>\n");
    let errors = parse_str(Path::new("/x/typo/service.xml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("/x/typo/service.xml:3:3: bad event \"begun:net\": \"begun:\" is none of"),
        "{errors}"
    );
}

#[test]
fn events_print_as_they_parse() {
    for text in [
        "boot",
        "started:a",
        "stopped:b-c",
        "failed:d_e",
        "mode:failover",
        "config-changed:web",
        "backup-window",
    ] {
        assert_eq!(Event::parse(text).unwrap().to_string(), text);
    }
    for bad in ["", "a b", "started:", "begun:x", "x:y:z", "emit!"] {
        assert!(Event::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn sd_notify_readiness_parses_and_takes_no_attributes() {
    let text = service("n", "  <ready kind=\"sd-notify\" timeout=\"30s\"/>\n");
    let definition = parse_str(Path::new("/x/n/service.xml"), &text).unwrap();
    assert_eq!(definition.ready, Readiness::SdNotify);
    let text = service("n", "  <ready kind=\"sd-notify\" fd=\"3\"/>\n");
    let errors = parse_str(Path::new("/x/n/service.xml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("attribute \"fd\" does not apply to ready kind \"sd-notify\""),
        "{errors}"
    );
}

#[test]
fn a_prefix_wildcard_is_a_wildcard_and_takes_no_default() {
    assert_eq!(wildcard_prefix("*"), Some(""));
    assert_eq!(wildcard_prefix("authorized_key.*"), Some("authorized_key."));
    assert_eq!(wildcard_prefix("authorized_key*"), None);
    assert_eq!(wildcard_prefix("a b.*"), None);
    assert_eq!(wildcard_prefix("port"), None);
    assert_eq!(
        closest("authorized_key.*", ["authorized_key.*", "port"].into_iter()),
        None
    );
}

#[test]
fn device_and_timer_events_print_as_they_parse() {
    for text in [
        "net-device-added:eth1",
        "net-device-removed:eth*",
        "block-device-added:vd?",
        "block-device-removed:nvme0n1p1",
        "every:90s",
        "every:15m",
        "every:6h",
        "daily:03:30",
        "daily:00:00",
    ] {
        assert_eq!(Event::parse(text).unwrap().to_string(), text);
    }
    assert_eq!(
        Event::parse("every:60m").unwrap(),
        Event::Timer(Timer::Every(Duration::from_secs(3600)))
    );
    for (bad, why) in [
        ("net-device-added:", "the device name"),
        ("net-device-added:eth 1", "the device name"),
        ("usb-device-added:x", "is none of"),
        ("every:0s", "at least 1s"),
        ("every:500ms", "at least 1s"),
        ("every:often", "a number and a unit"),
        ("daily:3:30", "HH:MM in UTC"),
        ("daily:24:00", "HH:MM in UTC"),
        ("daily:12:60", "HH:MM in UTC"),
        ("daily:12", "HH:MM in UTC"),
    ] {
        let error = Event::parse(bad).unwrap_err();
        assert!(error.contains(why), "{bad}: {error}");
    }
}

#[test]
fn a_device_pattern_matches_names_of_its_kind_only() {
    let pattern = Event::parse("net-device-added:eth*").unwrap();
    let fired = |text: &str| Event::parse(text).unwrap();
    assert!(pattern.matches(&fired("net-device-added:eth1")));
    assert!(pattern.matches(&fired("net-device-added:eth")));
    assert!(!pattern.matches(&fired("net-device-added:veth0")));
    assert!(!pattern.matches(&fired("net-device-removed:eth1")));
    assert!(!pattern.matches(&fired("block-device-added:eth1")));
    let exact = Event::parse("block-device-added:vdb").unwrap();
    assert!(exact.matches(&fired("block-device-added:vdb")));
    assert!(!exact.matches(&fired("block-device-added:vdb1")));
    assert!(Event::Boot.matches(&Event::Boot));
    assert!(!Event::Boot.matches(&fired("every:1h")));
    for (pattern, name, expected) in [
        ("*", "", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("vd?", "vdb", true),
        ("vd?", "vdb1", false),
        ("*1", "eth1", true),
        ("e*h*", "eth0", true),
        ("**", "x", true),
        ("", "x", false),
    ] {
        assert_eq!(
            glob(pattern.as_bytes(), name.as_bytes()),
            expected,
            "{pattern} {name}"
        );
    }
}

#[test]
fn a_daily_timer_waits_until_its_next_time_of_day() {
    // 1970-01-02 03:29:00 UTC
    let day = 86_400;
    let now = day + 3 * 3600 + 29 * 60;
    assert_eq!(Timer::daily_wait(3, 30, now), 60);
    assert_eq!(Timer::daily_wait(3, 29, now), day);
    assert_eq!(Timer::daily_wait(3, 28, now), day - 60);
    assert_eq!(Timer::daily_wait(0, 0, now), day - (3 * 3600 + 29 * 60));
}

#[test]
fn start_on_takes_device_and_timer_events_and_reports_bad_ones_with_their_line() {
    let text = service(
        "hot",
        "  <start-on event=\"net-device-added:eth*\"/>\n  <start-on event=\"every:1h\"/>\n",
    );
    let definition = parse_str(Path::new("/x/hot/service.xml"), &text).unwrap();
    assert_eq!(
        definition.start_on,
        vec![
            Event::Device(Device {
                subsystem: Subsystem::Net,
                action: DeviceAction::Added,
                name: "eth*".to_string()
            }),
            Event::Timer(Timer::Every(Duration::from_secs(3600)))
        ]
    );
    let text = service("hot", "  <start-on event=\"daily:25:00\"/>\n");
    let errors = parse_str(Path::new("/x/hot/service.xml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("/x/hot/service.xml:3:3: bad timer \"daily:25:00\""),
        "{errors}"
    );
}

#[test]
fn every_service_has_the_built_in_enabled_key_and_may_declare_it_only_as_a_boolean() {
    let plain = parse_str(Path::new("/x/n/service.xml"), &service("n", "")).unwrap();
    let enabled = plain
        .keys
        .iter()
        .find(|key| key.name == ENABLED_KEY)
        .unwrap();
    assert_eq!(enabled.key_type, KeyType::Boolean);
    assert_eq!(enabled.default, None);
    assert!(is_enabled(&plain, None));
    let off = BTreeMap::from([(ENABLED_KEY.to_string(), "no".to_string())]);
    assert!(!is_enabled(&plain, Some(&off)));
    // An opt-in service: its own declaration with default no.
    let own = service(
        "n",
        "  <key name=\"enabled\" type=\"boolean\" default=\"no\">opt in</key>\n",
    );
    let opt_in = parse_str(Path::new("/x/n/service.xml"), &own).unwrap();
    assert_eq!(
        opt_in
            .keys
            .iter()
            .filter(|key| key.name == ENABLED_KEY)
            .count(),
        1
    );
    assert!(!is_enabled(&opt_in, Some(&BTreeMap::new())));
    let on = BTreeMap::from([(ENABLED_KEY.to_string(), "yes".to_string())]);
    assert!(is_enabled(&opt_in, Some(&on)));
    let wrong = service("n", "  <key name=\"enabled\" type=\"port\">no</key>\n");
    let errors = parse_str(Path::new("/x/n/service.xml"), &wrong)
        .unwrap_err()
        .to_string();
    assert!(errors.contains("is built in as a boolean"), "{errors}");
}

/// `{KEY}` fields: the key must be declared by name, of the field's type,
/// with a default (used until a render says the model's value).
#[test]
fn a_readiness_field_from_a_model_key_is_checked_against_the_declaration() {
    let parse = |body: &str| parse_str(Path::new("/x/n/service.xml"), &service("n", body));
    let good = parse(
        "  <ready kind=\"tcp\" port=\"{port}\"/>\n  <key name=\"port\" type=\"port\" default=\"8080\">p</key>\n",
    )
    .unwrap();
    assert_eq!(good.ready, Readiness::Tcp { port: 8080 });
    assert_eq!(good.model_field_keys().collect::<Vec<_>>(), vec!["port"]);
    let moved = good.with_model_values(&BTreeMap::from([("port".to_string(), "9090".to_string())]));
    assert_eq!(moved.ready, Readiness::Tcp { port: 9090 });
    let pidfile = parse(
        "  <ready kind=\"pidfile\" path=\"{pidfile}\"/>\n  <key name=\"pidfile\" type=\"path\" default=\"/run/n.pid\">p</key>\n",
    )
    .unwrap();
    assert_eq!(
        pidfile.ready,
        Readiness::Pidfile {
            path: PathBuf::from("/run/n.pid")
        }
    );
    for (body, expected) in [
        ("  <ready kind=\"tcp\" port=\"{port}\"/>\n", "names no key of this service"),
        (
            "  <ready kind=\"tcp\" port=\"{port}\"/>\n  <key name=\"port\" type=\"string\" default=\"1\">p</key>\n",
            "must be type=\"port\"",
        ),
        (
            "  <ready kind=\"tcp\" port=\"{port}\"/>\n  <key name=\"port\" type=\"port\">p</key>\n",
            "needs a default",
        ),
    ] {
        let errors = parse(body).unwrap_err().to_string();
        assert!(errors.contains(expected), "{body}: {errors}");
    }
}

/// Script types: a system service runs as root, a user program as a user;
/// a need on a later type would wait forever and is refused.
#[test]
fn script_types_check_their_user_and_the_order_of_needs() {
    let parse = |service_type: &str, body: &str| {
        let text = service("n", body).replace(
            "<service name=\"n\"",
            &format!("<service name=\"n\" type=\"{service_type}\""),
        );
        parse_str(Path::new("/x/n/service.xml"), &text).map_err(|errors| errors.to_string())
    };
    assert!(parse("system", "").is_ok());
    assert!(parse("system", "  <user>www-data</user>\n")
        .unwrap_err()
        .contains("runs as root"));
    assert!(parse("user", "")
        .unwrap_err()
        .contains("add <user>NAME</user> (not root)"));
    assert!(parse("user", "  <user>root</user>\n").is_err());
    assert_eq!(
        parse("user", "  <user>alice</user>\n")
            .unwrap()
            .service_type,
        ServiceType::User
    );

    let typed = |name: &str, service_type: &str, needs: &str| {
        service(name, &format!("  <needs>{needs}</needs>\n")).replace(
            &format!("<service name=\"{name}\""),
            &format!("<service name=\"{name}\" type=\"{service_type}\""),
        )
    };
    let tree = Tree::new(&[
        ("early", &typed("early", "system", "job")),
        ("job", &typed("job", "helper", "web")),
        ("web", &typed("web", "service", "")),
        ("fine", &typed("fine", "service", "job")),
    ]);
    let errors = load_dir(&tree.root).unwrap_err().to_string();
    assert!(
        errors.contains("service \"early\" (type system) needs \"job\", which starts later"),
        "{errors}"
    );
    assert!(!errors.contains("service \"fine\""), "{errors}");
}
