//! Golden cases: a model, the `nodows render` arguments and the files the
//! render must produce (docs/testing.md, "Golden files").
//!
//! A case is a directory holding `args` (the arguments besides `--root`;
//! `$REPO` and `$CASE` are replaced by their paths), an optional
//! `model.xml` and `services/` (default: the source's `models/default.xml`
//! and `services/`) and `expected/<target path>`, the exact files (and
//! their executable bit) the render must produce. Two places hold cases:
//!
//! - `services/NAME/tests/CASE/`: a case about the service NAME, which
//!   renders that service only (`--service NAME` is implied);
//! - `test_data/render/CASE/`: whole-profile cases, which name every
//!   service they render with `--service`.
//!
//! [`render_case`] renders a case in memory, [`compare`] reports how it
//! differs from `expected/`, and [`bless`] rewrites `expected/`.

use crate::{Request, StagedFile};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where whole-profile cases live, relative to the source.
pub const PROFILE_CASES: &str = "test_data/render";

/// One golden case.
#[derive(Debug, Clone)]
pub struct Case {
    /// `SERVICE/CASE` for a service's case, `CASE` for a whole-profile one.
    pub name: String,
    pub dir: PathBuf,
    /// The service a case under `services/NAME/tests/` is about.
    pub service: Option<String>,
}

/// The render a case asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arguments {
    pub model: PathBuf,
    pub services_dir: PathBuf,
    pub profile: String,
    pub server: Option<String>,
    pub only: Vec<String>,
}

impl Arguments {
    /// The same render as `nodows render` arguments (without `--root`).
    pub fn to_cli(&self) -> Vec<String> {
        let mut args = vec!["--profile".to_string(), self.profile.clone()];
        if let Some(server) = &self.server {
            args.extend(["--server".to_string(), server.clone()]);
        }
        for service in &self.only {
            args.extend(["--service".to_string(), service.clone()]);
        }
        args.extend([
            "--model".to_string(),
            self.model.to_string_lossy().into_owned(),
            "--services".to_string(),
            self.services_dir.to_string_lossy().into_owned(),
        ]);
        args
    }
}

/// The directories below `dir`, sorted; with `with_args`, only those that
/// hold an `args` file (`test_data/render/` holds `fails/` too).
fn case_dirs(dir: &Path, with_args: bool) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && (!with_args || path.join("args").is_file()))
        .collect();
    dirs.sort();
    dirs
}

/// Every golden case of the tree at `source`: each service's cases
/// (`services/*/tests/*`), then the whole-profile ones.
pub fn cases(source: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut services: Vec<PathBuf> = std::fs::read_dir(source.join("services"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.join(servicedef::FILE_NAME).is_file())
        .collect();
    services.sort();
    for service_dir in services {
        let service = service_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // Every directory is a case: one without `args` is reported.
        for dir in case_dirs(&service_dir.join("tests"), false) {
            cases.push(Case {
                name: format!("{service}/{}", file_name(&dir)),
                dir,
                service: Some(service.clone()),
            });
        }
    }
    for dir in case_dirs(&source.join(PROFILE_CASES), true) {
        cases.push(Case {
            name: file_name(&dir),
            dir,
            service: None,
        });
    }
    cases
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

impl Case {
    /// Reads `args`: `--profile P` (required), `--server ID`, `--service
    /// NAME` (repeatable), `--model M`, `--services DIR`.
    pub fn arguments(&self, source: &Path) -> Result<Arguments, String> {
        let file = self.dir.join("args");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| {
                format!(
                    "{}: cannot read ({e}); a golden case needs this file, naming at least --profile PROFILE",
                    file.display()
                )
            })?;
        let words: Vec<String> = text
            .split_whitespace()
            .map(|word| {
                word.replace("$REPO", &source.to_string_lossy())
                    .replace("$CASE", &self.dir.to_string_lossy())
            })
            .collect();
        let mut arguments = Arguments {
            model: self.default_input("model.xml", source.join("models/default.xml")),
            services_dir: self.default_input("services", source.join("services")),
            profile: String::new(),
            server: None,
            only: self.service.iter().cloned().collect(),
        };
        let mut words = words.into_iter();
        while let Some(option) = words.next() {
            let value = words
                .next()
                .ok_or_else(|| format!("{}: `{option}` needs a value", file.display()))?;
            match option.as_str() {
                "--profile" => arguments.profile = value,
                "--server" => arguments.server = Some(value),
                "--service" if !arguments.only.contains(&value) => arguments.only.push(value),
                "--service" => {}
                "--model" => arguments.model = PathBuf::from(value),
                "--services" => arguments.services_dir = PathBuf::from(value),
                _ => {
                    return Err(format!(
                        "{}: unknown option `{option}`; use --profile, --server, --service, --model or --services",
                        file.display()
                    ))
                }
            }
        }
        if arguments.profile.is_empty() {
            return Err(format!(
                "{}: name the profile with --profile PROFILE",
                file.display()
            ));
        }
        Ok(arguments)
    }

    fn default_input(&self, name: &str, otherwise: PathBuf) -> PathBuf {
        let own = self.dir.join(name);
        if own.exists() {
            own
        } else {
            otherwise
        }
    }

    pub fn expected_dir(&self) -> PathBuf {
        self.dir.join("expected")
    }
}

/// Renders a case in memory: the files it writes, or every problem.
pub fn render_case(source: &Path, case: &Case) -> Result<Vec<StagedFile>, Vec<String>> {
    let arguments = case.arguments(source).map_err(|e| vec![e])?;
    let model = model::Model::load(&arguments.model.to_string_lossy())
        .map_err(|e| crate::Error::from(e).to_lines())?;
    let definitions = servicedef::load_dir(&arguments.services_dir)
        .map_err(|e| crate::Error::from(e).to_lines())?;
    crate::stage(&Request {
        model: &model,
        definitions: &definitions,
        services_dir: &arguments.services_dir,
        server: arguments.server.as_deref(),
        profile: &arguments.profile,
        only: &arguments.only,
    })
    .map_err(|e| e.to_lines())
}

/// An expected file: its bytes and whether it is executable.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    bytes: Vec<u8>,
    executable: bool,
}

/// Every regular file below `dir` by its path relative to `dir`.
fn expected_files(dir: &Path) -> BTreeMap<String, Expected> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(path);
            } else if let (Ok(relative), Ok(bytes)) = (path.strip_prefix(dir), std::fs::read(&path))
            {
                files.insert(
                    relative.to_string_lossy().into_owned(),
                    Expected {
                        bytes,
                        executable: metadata.permissions().mode() & 0o111 != 0,
                    },
                );
            }
        }
    }
    files
}

fn relative_target(file: &StagedFile) -> &str {
    file.target.trim_start_matches('/')
}

/// The first line where two texts differ, as `LINE: expected ... rendered ...`.
fn first_difference(want: &[u8], got: &[u8]) -> String {
    let want = String::from_utf8_lossy(want);
    let got = String::from_utf8_lossy(got);
    let mut want_lines = want.lines();
    let mut got_lines = got.lines();
    let mut line = 1;
    loop {
        match (want_lines.next(), got_lines.next()) {
            (Some(a), Some(b)) if a == b => line += 1,
            (a, b) => {
                return format!(
                    "line {line}: expected {:?}, rendered {:?}",
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of file>")
                )
            }
        }
    }
}

/// How the staged files differ from the case's `expected/`; empty when
/// they match byte for byte and executable bit for executable bit.
pub fn compare(case: &Case, staged: &[StagedFile]) -> Vec<String> {
    let expected_dir = case.expected_dir();
    let mut expected = expected_files(&expected_dir);
    let mut problems = Vec::new();
    for file in staged {
        let path = relative_target(file);
        let at = expected_dir.join(path);
        match expected.remove(path) {
            None => problems.push(format!("{}: rendered but not expected", at.display())),
            Some(want) if want.bytes != file.bytes => problems.push(format!(
                "{}: {}",
                at.display(),
                first_difference(&want.bytes, &file.bytes)
            )),
            Some(want) if want.executable != (file.mode & 0o111 != 0) => problems.push(format!(
                "{}: the rendered file has mode {:04o}, the expected one is {}executable",
                at.display(),
                file.mode,
                if want.executable { "" } else { "not " }
            )),
            Some(_) => {}
        }
    }
    for path in expected.keys() {
        problems.push(format!(
            "{}: expected but not rendered",
            expected_dir.join(path).display()
        ));
    }
    problems
}

/// The mode a blessed file gets: 0755 if the rendered one is executable,
/// else 0644 (git keeps only the executable bit).
pub fn blessed_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Rewrites the case's `expected/` with the staged files: changed files are
/// written, files no longer rendered are removed, identical ones are left
/// alone. Returns the relative paths it wrote or removed.
pub fn bless(case: &Case, staged: &[StagedFile]) -> std::io::Result<Vec<String>> {
    let expected_dir = case.expected_dir();
    let mut stale = expected_files(&expected_dir);
    let mut touched = Vec::new();
    for file in staged {
        let path = relative_target(file);
        let target = expected_dir.join(path);
        let mode = blessed_mode(file.mode);
        let unchanged = stale
            .remove(path)
            .is_some_and(|want| want.bytes == file.bytes && want.executable == (mode & 0o111 != 0));
        if unchanged {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &file.bytes)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        touched.push(path.to_string());
    }
    for path in stale.into_keys() {
        std::fs::remove_file(expected_dir.join(&path))?;
        touched.push(path);
    }
    remove_empty_dirs(&expected_dir);
    Ok(touched)
}

/// Removes the empty directories below `dir` (left by removed files).
fn remove_empty_dirs(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_empty_dirs(&path);
            let _ = std::fs::remove_dir(&path);
        }
    }
}
