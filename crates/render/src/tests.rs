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
