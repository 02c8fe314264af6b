use super::*;

#[test]
fn targets_must_be_absolute_and_stay_in_the_root() {
    assert!(check_target("/etc/nginx/nginx.conf").is_ok());
    for bad in ["etc/x", "/etc/../../x", "/etc/./x", "/etc/", "/", "/etc//x"] {
        assert!(check_target(bad).is_err(), "{bad} accepted");
    }
    let e = check_target("/etc/../../x").unwrap_err();
    assert!(e.contains("escapes the root"), "{e}");
}

#[test]
fn libxslt_messages_become_file_line_lines() {
    let raw = "compilation error: file /s/web/a.xsl line 4 element value-of\nxsl:value-of : could not compile select expression 'foo('\n";
    assert_eq!(
        xslt::tidy(raw, "/s/web/a.xsl", "the template does not compile"),
        "/s/web/a.xsl:4: element value-of: xsl:value-of : could not compile select expression 'foo('"
    );
}

#[test]
fn render_template_is_a_function_of_model_template_and_parameters() {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services");
    let model = Model::from_xml(
        r#"<model>
  <defaults>
    <service name="web"><key name="port">80</key><key name="title">nodows</key></service>
  </defaults>
  <profile name="dev">
    <service name="web"><key name="title">nodows (dev)</key></service>
  </profile>
  <server id="web01">
    <service name="web"><key name="port">8080</key></service>
  </server>
</model>"#,
        "example.xml",
    )
    .unwrap();
    let effective = model.effective(Some("web01"), "dev").unwrap();
    let page = services.join("web/var/www/html/index.html.xsl");
    let html =
        String::from_utf8(render_template(&effective, &page, &services, "web").unwrap()).unwrap();
    assert!(
        html.contains("<h1>nodows (dev)</h1><p>server=web01 mode=dev</p>"),
        "{html}"
    );
    let site = services.join("web/etc/nginx/sites-enabled/default.xsl");
    let text =
        String::from_utf8(render_template(&effective, &site, &services, "web").unwrap()).unwrap();
    assert!(text.contains("listen 8080 default_server;"), "{text}");
    // xsl:output method="text" is honoured: no XML declaration.
    assert!(text.starts_with("# rendered by nodows"), "{text}");
    assert_eq!(
        render_template(&effective, &site, &services, "web").unwrap(),
        text.as_bytes()
    );
}
