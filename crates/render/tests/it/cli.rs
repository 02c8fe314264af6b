//! The command line: usage errors and exit codes.

use crate::support::{nodows, render, stderr};

#[test]
fn usage_errors_exit_2_with_the_usage() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["render", "--profile", "dev"],
        vec!["render", "--bogus"],
        vec![
            "watch",
            "--model",
            "m.xml",
            "--command",
            "true",
            "--debounce",
            "soon",
        ],
    ] {
        let output = nodows().args(&args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("usage:"), "{args:?}");
    }
}

#[test]
fn missing_model_file_is_bad_input() {
    let output = render(&[
        "--model",
        "/nonexistent/model.xml",
        "--services",
        "/nonexistent",
        "--root",
        "/nonexistent",
        "--profile",
        "dev",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).starts_with("nodows: /nonexistent/model.xml: cannot read the model"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn command_lines_are_split_without_a_shell() {
    use render::watch::split_command;
    assert_eq!(
        split_command("/sbin/initctl render").unwrap(),
        ["/sbin/initctl", "render"]
    );
    assert_eq!(
        split_command(r#"sh -c 'echo "a b" > f' x\ y"#).unwrap(),
        ["sh", "-c", "echo \"a b\" > f", "x y"]
    );
    assert!(split_command("  ").is_err());
    assert!(split_command("'open").is_err());
}
