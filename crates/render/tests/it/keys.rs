//! Typed model keys: values are validated against the services' key
//! declarations before any template runs, and nothing is written when one
//! is refused. Each injection found in the project's own templates is a
//! regression test here.

use crate::support::{render, repo, stderr, tree, TempDir};
use std::path::{Path, PathBuf};

/// The demo model with `extra` added as a server layer `evil` (the values
/// under test), written to `dir/model.xml`.
fn model_with_server_layer(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("models/default.xml")).unwrap();
    let text = text.replace(
        "</model>",
        &format!("  <server id=\"evil\">\n{extra}\n  </server>\n</model>"),
    );
    let path = dir.join("model.xml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `nodows render` into an empty root under `work`; returns the
/// output and whether anything was written.
fn render_into_empty_root(
    work: &TempDir,
    model: &str,
    services: &Path,
    profile: &str,
    server: Option<&str>,
) -> (std::process::Output, bool) {
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let services = services.to_str().unwrap();
    let root_arg = root.to_str().unwrap();
    let mut args = vec![
        "--model",
        model,
        "--services",
        services,
        "--root",
        root_arg,
        "--profile",
        profile,
    ];
    if let Some(server) = server {
        args.extend(["--server", server]);
    }
    let output = render(&args);
    let written = !tree(&root).is_empty();
    (output, written)
}

/// Renders the `evil` server of the production profile with the repo's
/// services.
fn render_evil(work: &TempDir, extra: &str) -> (std::process::Output, bool) {
    let model = model_with_server_layer(work.path(), extra);
    let services = repo().join("services");
    render_into_empty_root(
        work,
        model.to_str().unwrap(),
        &services,
        "production",
        Some("evil"),
    )
}

/// The refusal: exit 2, every `expected` fragment in stderr, nothing written.
fn assert_refused(extra: &str, expected: &[&str]) {
    let work = TempDir::new("keys");
    let (output, written) = render_evil(&work, extra);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        !written,
        "files were written although the model was refused"
    );
    for fragment in expected {
        assert!(
            message.contains(fragment),
            "stderr lacks {fragment:?}:\n{message}"
        );
    }
    assert!(
        !message.contains("effective-model.xml"),
        "the message names the generated document, not the user's model:\n{message}"
    );
}

/// Guards the net service: a gateway of `10.0.2.2; reboot` was a shell
/// command in net.sh, which runs as root at boot.
#[test]
fn shell_injection_through_the_gateway_is_refused() {
    assert_refused(
        r#"<service name="net"><key name="gateway">10.0.2.2; reboot</key></service>"#,
        &[
            "model.xml:",
            "server evil: key `gateway` of service `net` is \"10.0.2.2; reboot\": expected an IPv4 or IPv6 address",
            "services/net/service.xml:",
        ],
    );
}

/// Guards sysctl: a newline inside a value added `kernel.modprobe = /var/evil`.
#[test]
fn a_newline_in_a_sysctl_value_is_refused() {
    assert_refused(
        r#"<service name="sysctl"><key name="vm.swappiness">10&#10;kernel.modprobe = /var/evil</key></service>"#,
        &[
            "key `vm.swappiness` of service `sysctl` is \"10\\nkernel.modprobe = /var/evil\": expected a string without control characters",
        ],
    );
}

/// Guards sshd_config: a newline added `PermitEmptyPasswords yes` before the
/// template's own line, and sshd takes the first.
#[test]
fn a_newline_in_an_sshd_value_is_refused() {
    assert_refused(
        r#"<service name="ssh"><key name="use_pam">no&#10;PermitEmptyPasswords yes</key></service>"#,
        &["key `use_pam` of service `ssh`", "expected yes or no"],
    );
}

/// Guards root's authorized_keys: an operator key from the model is one
/// plain key line, so a value cannot add `command=`/`from=` options, a
/// second key or an `authorized_key.` name that is not a key; all refused at
/// once.
#[test]
fn an_operator_key_with_options_or_a_second_line_is_refused() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2uAlpRXDz5H2C1cr7MqoibIWkvKigGXV1h/uY2tAM9";
    assert_refused(
        &format!(
            r#"<service name="ssh"><key name="authorized_key.a">command="sh" {key}</key><key name="authorized_key.b">{key} b&#10;{key} c</key><key name="authorized_key.c">yes</key></service>"#
        ),
        &[
            "key `authorized_key.a` of service `ssh`",
            "key `authorized_key.b` of service `ssh`",
            "key `authorized_key.c` of service `ssh`",
            "expected an OpenSSH public key line",
        ],
    );
}

/// Guards the standby nginx config: an empty port rendered
/// `listen  default_server;` with exit 0.
#[test]
fn an_empty_port_is_refused() {
    assert_refused(
        r#"<service name="standby"><key name="port"></key></service>"#,
        &["key `port` of service `standby` is \"\": expected a port number 1-65535"],
    );
}

/// A control character is reported against the user's model file and line,
/// not the generated effective document.
#[test]
fn a_control_character_names_the_model_line() {
    let work = TempDir::new("keys");
    let (output, written) = render_evil(
        &work,
        "<service name=\"web\">\n<key name=\"title\">bell&#7;</key></service>",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(!written);
    let model_lines = std::fs::read_to_string(work.path().join("model.xml")).unwrap();
    let line = model_lines
        .lines()
        .position(|line| line.contains("bell&#7;"))
        .unwrap()
        + 1;
    let message = stderr(&output);
    assert!(
        message.contains(&format!("model.xml:{line}: server evil: key `title`")),
        "{message}"
    );
}

#[test]
fn an_undeclared_key_names_the_closest_declared_one() {
    assert_refused(
        r#"<service name="web"><key name="titel">hello</key></service>"#,
        &["service `web` has no key `titel` (did you mean `title`?)"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let work = TempDir::new("keys");
    let (output, _) = render_evil(
        &work,
        r#"<service name="web"><key name="port">http</key><key name="worker_processes">0</key></service>
    <service name="ssh"><key name="permit_root_login">maybe</key></service>"#,
    );
    let message = stderr(&output);
    for fragment in [
        "key `port` of service `web`",
        "key `worker_processes` of service `web` is \"0\": expected an integer 1..64, or one of: auto",
        "key `permit_root_login` of service `ssh` is \"maybe\": expected one of yes, prohibit-password, forced-commands-only, no",
    ] {
        assert!(message.contains(fragment), "{fragment}:\n{message}");
    }
}

#[test]
fn a_missing_required_key_is_refused() {
    let work = TempDir::new("keys");
    let model = work.path().join("model.xml");
    std::fs::write(
        &model,
        "<model><defaults/><profile name=\"dev\"/></model>\n",
    )
    .unwrap();
    let (output, written) = render_into_empty_root(
        &work,
        model.to_str().unwrap(),
        &repo().join("services"),
        "dev",
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(
            "key `address` of service `net` is required but has no value for profile dev"
        ),
        "{}",
        stderr(&output)
    );
    assert!(!written);
}

/// An SQLite model's problem names its table and row.
#[test]
fn an_sqlite_problem_names_the_table_and_row() {
    let work = TempDir::new("keys");
    let database = work.path().join("model.db");
    let connection = rusqlite::Connection::open(&database).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE profile (name TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE server (id TEXT PRIMARY KEY NOT NULL);
             CREATE TABLE setting (server TEXT, profile TEXT, service TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
             INSERT INTO profile VALUES ('dev');
             INSERT INTO setting VALUES (NULL, NULL, 'net', 'address', '10.0.2.15/24');
             INSERT INTO setting VALUES (NULL, 'dev', 'web', 'port', '80; evil');",
        )
        .unwrap();
    drop(connection);
    let (output, written) = render_into_empty_root(
        &work,
        &format!("sqlite:{}", database.display()),
        &repo().join("services"),
        "dev",
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "sqlite:{}: table setting rowid 2: profile dev: key `port` of service `web` is \"80; evil\"",
            database.display()
        )),
        "{message}"
    );
    assert!(!written);
}

/// A template that reads a key its service does not declare fails the
/// template check (a typo in a template would otherwise render nothing).
#[test]
fn a_template_reading_an_undeclared_key_is_refused() {
    let work = TempDir::new("keys");
    let service = work.path().join("services/hello");
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(
        service.join("service.xml"),
        r#"<service name="hello">
  <exec path="/bin/true"/>
  <file target="/etc/hello.conf" template="hello.conf.xsl"/>
  <key name="greeting" type="string">a greeting</key>
</service>
"#,
    )
    .unwrap();
    std::fs::write(
        service.join("hello.conf.xsl"),
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:param name="self"/>
  <xsl:output method="text"/>
  <xsl:template match="/">
    <xsl:value-of select="$self/key[@name = 'greting']"/>
  </xsl:template>
</xsl:stylesheet>
"#,
    )
    .unwrap();
    let model = work.path().join("model.xml");
    std::fs::write(&model, "<model><defaults/><profile name=\"dev\"/></model>").unwrap();
    let (output, written) = render_into_empty_root(
        &work,
        model.to_str().unwrap(),
        &work.path().join("services"),
        "dev",
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("hello.conf.xsl:5: reads key `greting` of service `hello`, which")
            && stderr(&output).contains("(did you mean `greeting`?)"),
        "{}",
        stderr(&output)
    );
    assert!(!written);
}

/// The escaping helpers on their own: `nodows:sh-quote` makes one shell
/// word of anything, `nodows:line` refuses a control character even when
/// the template makes it itself.
#[test]
fn the_escaping_helpers_quote_and_guard() {
    let effective = model::Effective {
        server: None,
        profile: "dev".to_string(),
        services: Default::default(),
    };
    let work = TempDir::new("helpers");
    let template = |name: &str, body: &str| -> PathBuf {
        let path = work.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text"/>
  <xsl:template match="/">{body}</xsl:template>
</xsl:stylesheet>
"#
            ),
        )
        .unwrap();
        path
    };
    let quoted = template(
        "quote.xsl",
        r#"<xsl:value-of select="nodows:sh-quote(&quot;it's $(reboot)&quot;)"/>"#,
    );
    let bytes = render::render_template(&effective, &quoted, work.path(), "hello").unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), r#"'it'\''s $(reboot)'"#);

    let guarded = template(
        "line.xsl",
        r#"<xsl:value-of select="nodows:line(concat('a', '&#10;', 'b'))"/>"#,
    );
    let error = render::render_template(&effective, &guarded, work.path(), "hello").unwrap_err();
    assert!(
        error.contains("nodows:line(): the value holds a control character"),
        "{error}"
    );
}

/// README's service reference is generated from the declarations, so the
/// docs cannot drift: `UPDATE_EXPECT=1 cargo test -p render --test it keys`
/// rewrites it.
#[test]
fn the_readme_service_reference_matches_the_declarations() {
    const BEGIN: &str = "<!-- service reference: generated by `nodows keys --services services --reference`; do not edit -->\n";
    const END: &str = "<!-- end of service reference -->";
    let readme_path = repo().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let definitions = servicedef::load_dir(&repo().join("services")).unwrap();
    let generated = render::keys::reference_markdown(&definitions);
    let start = readme
        .find(BEGIN)
        .expect("README.md lacks the service reference's begin marker")
        + BEGIN.len();
    let end = readme[start..]
        .find(END)
        .expect("README.md lacks the service reference's end marker")
        + start;
    if std::env::var_os("UPDATE_EXPECT").is_some_and(|value| value == "1") {
        let updated = format!("{}{generated}{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, updated).unwrap();
        return;
    }
    assert_eq!(
        readme[start..end],
        generated,
        "README.md's service reference is stale: bless it with UPDATE_EXPECT=1 cargo test -p render --test it keys"
    );
}

#[test]
fn nodows_keys_prints_types_defaults_and_effective_values() {
    let output = crate::support::nodows()
        .args(["keys", "--model"])
        .arg(repo().join("models/default.xml"))
        .arg("--services")
        .arg(repo().join("services"))
        .args([
            "--profile",
            "dev",
            "--server",
            "web02",
            "--service",
            "web",
            "--service",
            "sysctl",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    let row = |service: &str, key: &str| -> Vec<String> {
        text.lines()
            .find(|line| {
                line.starts_with(&format!("{service} "))
                    && line.split_whitespace().nth(1) == Some(key)
            })
            .unwrap_or_else(|| panic!("no row {service} {key}:\n{text}"))
            .split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .map(str::to_string)
            .collect()
    };
    // Declared default, profile layer over it, server layer over that.
    assert_eq!(row("web", "port")[4..6], ["80", "80"]);
    assert_eq!(row("web", "error_log_level")[5], "info");
    assert_eq!(
        row("web", "worker_processes")[2..6],
        ["integer 1..64 or auto", "no", "1", "2"]
    );
    assert_eq!(row("sysctl", "vm.swappiness")[5], "1");
    assert!(
        !text.contains("\nssh "),
        "--service limits the rows:\n{text}"
    );
}
