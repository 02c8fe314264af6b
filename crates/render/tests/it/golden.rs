//! Golden files for rendered configs (the cases are described in
//! `render::golden`): every case under `services/*/tests/` and
//! `test_data/render/` renders exactly its `expected/` files, and the
//! `nodows render` command writes the same files as the in-memory render.
//! `test_data/render/fails/<case>/` holds the same inputs and
//! `expected-error`, the exact stderr; the run must exit 2 and write nothing.
//!
//! Bless new output with `cargo xtask bless [SERVICE|CASE...]` (the fails
//! cases with `UPDATE_EXPECT=1 cargo test -p render --test it golden`).

use crate::support::{render, repo, stderr, tree, TempDir};
use render::golden;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn update() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1")
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("args").is_file())
        .collect();
    cases.sort();
    cases
}

/// The `nodows render` arguments of a fails case (no `--service` implied).
fn arguments(case: &Path) -> Vec<String> {
    let case = golden::Case {
        name: String::new(),
        dir: case.to_path_buf(),
        service: None,
    };
    case.arguments(&repo()).unwrap().to_cli()
}

fn run(case: &Path, root: &Path, json: bool) -> std::process::Output {
    let mut args = arguments(case);
    args.extend(["--root".to_string(), root.to_string_lossy().into_owned()]);
    if json {
        args.push("--json".to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    render(&args)
}

fn golden_cases() -> Vec<golden::Case> {
    let cases = golden::cases(&repo());
    assert!(
        cases.len() >= 8 && cases.iter().any(|case| case.service.is_some()),
        "too few golden cases: {cases:?}"
    );
    cases
}

#[test]
fn rendered_files_match_the_goldens() {
    let mut failures = Vec::new();
    for case in golden_cases() {
        match golden::render_case(&repo(), &case) {
            Ok(staged) => failures.extend(golden::compare(&case, &staged)),
            Err(problems) => failures.push(format!("{}: {}", case.name, problems.join("\n"))),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(cargo xtask bless CASE if the change is intended)",
        failures.join("\n")
    );
}

/// `nodows render` writes what the in-memory render staged, with its
/// modes, and its change set names exactly those files.
#[test]
fn the_command_writes_what_the_golden_render_stages() {
    for case in golden_cases() {
        let staged = golden::render_case(&repo(), &case).unwrap();
        let root = TempDir::new("golden");
        let mut args = case.arguments(&repo()).unwrap().to_cli();
        args.extend([
            "--root".to_string(),
            root.path().to_string_lossy().into_owned(),
            "--json".to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let change_set = crate::support::change_set(&render(&args));
        let written: Vec<&str> = change_set["written"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let targets: Vec<&str> = staged.iter().map(|file| file.target.as_str()).collect();
        assert_eq!(written, targets, "{}", case.name);
        let rendered = tree(root.path());
        assert_eq!(rendered.len(), staged.len(), "{}", case.name);
        for file in &staged {
            let path = file.target.trim_start_matches('/');
            assert_eq!(rendered[path], file.bytes, "{}: {path}", case.name);
            let mode = std::fs::metadata(root.path().join(path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, file.mode, "{}: {path}", case.name);
        }
    }
}

/// A service's case renders that service only: its expected files are
/// all targets of that service.
#[test]
fn a_service_case_renders_only_its_service() {
    for case in golden_cases() {
        let Some(service) = &case.service else {
            continue;
        };
        for file in golden::render_case(&repo(), &case).unwrap() {
            assert_eq!(&file.service, service, "{}: {}", case.name, file.target);
        }
    }
}

#[test]
fn bad_inputs_match_their_expected_errors_and_write_nothing() {
    let data = repo().join("test_data/render/fails");
    let repo_text = repo().to_string_lossy().into_owned();
    let mut failures = Vec::new();
    let cases = cases(&data);
    assert!(
        cases.len() >= 10,
        "too few fails cases in {}",
        data.display()
    );
    for case in cases {
        let root = TempDir::new("fails");
        let output = run(&case, root.path(), false);
        let case_text = case.to_string_lossy().into_owned();
        let error = stderr(&output)
            .replace(&case_text, "$CASE")
            .replace(&repo_text, "$REPO");
        if output.status.code() != Some(2) {
            failures.push(format!(
                "{}: exit code {:?}, expected 2; stderr:\n{error}",
                case.display(),
                output.status.code()
            ));
        }
        if !tree(root.path()).is_empty() {
            failures.push(format!(
                "{}: files were written: {:?}",
                case.display(),
                tree(root.path()).keys()
            ));
        }
        let expected_file = case.join("expected-error");
        if update() {
            std::fs::write(&expected_file, &error).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if expected != error {
            failures.push(format!(
                "{}: stderr differs\n--- expected\n{expected}--- got\n{error}",
                case.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(bless with UPDATE_EXPECT=1 if the change is intended)",
        failures.join("\n")
    );
}

/// Tidy check: every template of every seed service has a golden case, i.e.
/// the file it writes appears in some case's expected/.
#[test]
fn every_template_has_a_golden_case() {
    let repo = repo();
    let definitions = servicedef::load_dir(&repo.join("services")).unwrap();
    let mut covered = std::collections::BTreeSet::new();
    for case in golden_cases() {
        covered.extend(tree(&case.expected_dir()).into_keys());
    }
    let mut missing = Vec::new();
    for definition in &definitions {
        for file in &definition.files {
            if !covered.contains(file.target.trim_start_matches('/')) {
                missing.push(format!("{} ({})", file.target, definition.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "templates without a golden case: {missing:?}"
    );
}

/// Guards the promise of `nodows model import/export`: every golden case
/// renders byte-identical files from its model as XML, as SQLite and in
/// PostgreSQL (a real server started by this test binary), and exports of
/// the PostgreSQL model back to XML read as the same model.
#[test]
fn xml_sqlite_and_postgres_models_render_byte_identical_files() {
    let cluster = pgtest::Cluster::shared(env!("CARGO_TARGET_TMPDIR"));
    let mut failures = Vec::new();
    for case in golden_cases() {
        let work = TempDir::new("sources");
        let args = case.arguments(&repo()).unwrap().to_cli();
        let model_index = args.iter().position(|a| a == "--model").unwrap() + 1;
        let xml = args[model_index].clone();
        let sqlite = format!("sqlite:{}", work.path().join("model.db").display());
        let database = cluster.database(&case.name.replace('/', "-"));
        let postgres = cluster.superuser_url(&database);
        for command in [
            vec!["model", "migrate", "--model", &postgres],
            vec!["model", "import", "--model", &postgres, "--from", &xml],
            vec!["model", "export", "--model", &postgres, "--to", &sqlite],
        ] {
            let output = crate::support::nodows().args(&command).output().unwrap();
            assert!(
                output.status.success(),
                "{}: nodows {}: {}",
                case.name,
                command[..2].join(" "),
                stderr(&output)
            );
            assert!(!String::from_utf8_lossy(&output.stdout).contains(&cluster.superuser_password));
        }
        let mut trees = Vec::new();
        for model in [&xml, &sqlite, &postgres] {
            let root = TempDir::new("source-root");
            let mut run_args = args.clone();
            run_args[model_index] = model.clone();
            run_args.extend([
                "--root".to_string(),
                root.path().to_string_lossy().into_owned(),
            ]);
            let run_args: Vec<&str> = run_args.iter().map(String::as_str).collect();
            let output = render(&run_args);
            assert!(
                output.status.success(),
                "{}: --model {model}: {}",
                case.name,
                stderr(&output)
            );
            trees.push(tree(root.path()));
        }
        assert!(!trees[0].is_empty(), "{}: nothing rendered", case.name);
        for (name, other) in [("sqlite", &trees[1]), ("postgres", &trees[2])] {
            if *other != trees[0] {
                failures.push(format!(
                    "{}: the {name} model renders other files than the XML model",
                    case.name
                ));
            }
        }
        // Back out to XML: the same model, text for text.
        let exported = work.path().join("exported.xml");
        let output = crate::support::nodows()
            .args(["model", "export", "--model", &postgres, "--to"])
            .arg(&exported)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let original = model::Model::load(&xml).unwrap().to_model_xml();
        let round_trip = model::Model::load(exported.to_str().unwrap())
            .unwrap()
            .to_model_xml();
        if original != round_trip {
            failures.push(format!(
                "{}: the XML exported from PostgreSQL differs:\n{round_trip}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
