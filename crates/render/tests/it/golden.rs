//! Golden files for rendered configs.
//!
//! `test_data/render/<case>/` holds `args` (the `nodows render` arguments
//! besides `--root`; `$REPO` and `$CASE` are replaced by their paths), an
//! optional `model.xml` and `services/` (default: the repo's
//! `models/default.xml` and `services/`) and `expected/<target path>`, the
//! exact files the render must produce (and nothing else).
//! `test_data/render/fails/<case>/` holds the same inputs and
//! `expected-error`, the exact stderr; the run must exit 2 and write nothing.
//!
//! Bless new output with `UPDATE_EXPECT=1 cargo test -p render --test it golden`.

use crate::support::{render, repo, stderr, tree, TempDir};
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

/// The case's arguments with defaults for --model and --services.
fn arguments(case: &Path) -> Vec<String> {
    let repo = repo();
    let text = std::fs::read_to_string(case.join("args")).unwrap();
    let mut args: Vec<String> = text
        .split_whitespace()
        .map(|a| {
            a.replace("$REPO", &repo.to_string_lossy())
                .replace("$CASE", &case.to_string_lossy())
        })
        .collect();
    if !args.iter().any(|a| a == "--model") {
        let model = if case.join("model.xml").is_file() {
            case.join("model.xml")
        } else {
            repo.join("models/default.xml")
        };
        args.extend(["--model".to_string(), model.to_string_lossy().into_owned()]);
    }
    if !args.iter().any(|a| a == "--services") {
        let services = if case.join("services").is_dir() {
            case.join("services")
        } else {
            repo.join("services")
        };
        args.extend([
            "--services".to_string(),
            services.to_string_lossy().into_owned(),
        ]);
    }
    args
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

/// Writes the blessed files, each with the permission bits of its
/// rendered copy under `rendered_root` (an rc.d script stays executable).
fn write_tree(
    dir: &Path,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    rendered_root: &Path,
) {
    let _ = std::fs::remove_dir_all(dir);
    for (path, bytes) in files {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, bytes).unwrap();
        let permissions = std::fs::metadata(rendered_root.join(path))
            .unwrap()
            .permissions();
        std::fs::set_permissions(&target, permissions).unwrap();
    }
}

#[test]
fn rendered_files_match_the_goldens() {
    let data = repo().join("test_data/render");
    let mut failures = Vec::new();
    let cases = cases(&data);
    assert!(
        cases.len() >= 4,
        "no golden cases found in {}",
        data.display()
    );
    for case in cases {
        let root = TempDir::new("golden");
        let output = run(&case, root.path(), true);
        if !output.status.success() {
            failures.push(format!(
                "{}: nodows failed:\n{}",
                case.display(),
                stderr(&output)
            ));
            continue;
        }
        let rendered = tree(root.path());
        let change_set: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let written: Vec<String> = change_set["written"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().trim_start_matches('/').to_string())
            .collect();
        let files: Vec<String> = rendered.keys().cloned().collect();
        if written != files {
            failures.push(format!(
                "{}: change set {written:?} but files {files:?}",
                case.display()
            ));
        }
        let expected_dir = case.join("expected");
        if update() {
            write_tree(&expected_dir, &rendered, root.path());
            continue;
        }
        let expected = tree(&expected_dir);
        for (path, bytes) in &rendered {
            match expected.get(path) {
                None => failures.push(format!("{}: unexpected file {path}", case.display())),
                Some(want) if want != bytes => failures.push(format!(
                    "{}: {path} differs\n--- expected\n{}\n--- rendered\n{}",
                    case.display(),
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(bytes)
                )),
                Some(_) => {}
            }
        }
        for path in expected.keys() {
            if !rendered.contains_key(path) {
                failures.push(format!("{}: {path} was not rendered", case.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(bless with UPDATE_EXPECT=1 if the change is intended)",
        failures.join("\n")
    );
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
    for case in cases(&repo.join("test_data/render")) {
        covered.extend(tree(&case.join("expected")).into_keys());
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
    let data = repo().join("test_data/render");
    let mut failures = Vec::new();
    let cases = cases(&data);
    assert!(cases.len() >= 4);
    for case in cases {
        let work = TempDir::new("sources");
        let args = arguments(&case);
        let model_index = args.iter().position(|a| a == "--model").unwrap() + 1;
        let xml = args[model_index].clone();
        let sqlite = format!("sqlite:{}", work.path().join("model.db").display());
        let database = cluster.database(case.file_name().unwrap().to_str().unwrap());
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
                case.display(),
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
                case.display(),
                stderr(&output)
            );
            trees.push(tree(root.path()));
        }
        assert!(!trees[0].is_empty(), "{}: nothing rendered", case.display());
        for (name, other) in [("sqlite", &trees[1]), ("postgres", &trees[2])] {
            if *other != trees[0] {
                failures.push(format!(
                    "{}: the {name} model renders other files than the XML model",
                    case.display()
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
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
