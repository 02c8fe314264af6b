//! The nodows renderer.
//!
//! [`render_template`] is the pure part: one template applied to one
//! effective document with the parameters `server`, `mode` and `service`.
//! [`stage`] renders every file of the selected services into memory, and
//! [`sync`] is the one module that touches the target root: it diffs the
//! staged files against it and writes only what changed, atomically.

pub mod sync;
pub mod watch;
pub mod xslt;

use model::{Effective, Model};
use servicedef::{OnChange, ServiceDefinition};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// The renderer's errors; [`Error::exit_code`] maps them to the CLI's codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (model, definitions, templates, arguments): exit 2.
    #[error("{}", .0.join("\n"))]
    BadInput(Vec<String>),
    /// The input was fine but the work failed (I/O on the target root): exit 1.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) => 2,
            Error::Failed(_) => 1,
        }
    }
}

impl From<model::Error> for Error {
    fn from(error: model::Error) -> Error {
        match error {
            model::Error::Invalid(problems) => Error::BadInput(problems),
            other => Error::BadInput(vec![other.to_string()]),
        }
    }
}

impl From<servicedef::Errors> for Error {
    fn from(errors: servicedef::Errors) -> Error {
        Error::BadInput(errors.problems)
    }
}

/// One rendered file, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Absolute path inside the target root.
    pub target: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// The service that owns the file.
    pub service: String,
    pub on_change: OnChange,
}

/// What to render.
pub struct Request<'a> {
    pub model: &'a Model,
    /// Every service definition of the image (all are validated).
    pub definitions: &'a [ServiceDefinition],
    /// The directory holding the definitions and templates; templates and
    /// `document()` may read files below it and nowhere else.
    pub services_dir: &'a Path,
    pub server: Option<&'a str>,
    /// The profile, which is also the mode (`$mode` in templates).
    pub profile: &'a str,
    /// Restrict to these services; empty means all.
    pub only: &'a [String],
}

/// Renders `template` against the effective document with the parameters
/// `server` (empty when none), `mode` and `service`: the pure function of
/// (model, template, parameters).
pub fn render_template(
    effective: &Effective,
    template: &Path,
    allowed_dir: &Path,
    service: &str,
) -> Result<Vec<u8>, String> {
    let xslt = xslt::Xslt::new(allowed_dir)?;
    let document = xslt.parse_document(&effective.to_xml(), "effective-model.xml")?;
    let stylesheet = xslt.compile(template)?;
    xslt.apply(
        &stylesheet,
        &document,
        &[
            ("server", effective.server.as_deref().unwrap_or("")),
            ("mode", &effective.profile),
            ("service", service),
        ],
        &template.display().to_string(),
    )
}

/// Checks that a target is absolute and stays inside the root: no `..`,
/// no `.`, no empty name, no NUL.
pub fn check_target(target: &str) -> Result<(), String> {
    if !target.starts_with('/') {
        return Err(format!(
            "file target \"{target}\" is not absolute; write it as /path/in/the/image"
        ));
    }
    if target.contains('\0') {
        return Err(format!("file target {target:?} contains a NUL byte"));
    }
    if target.ends_with('/') || target.contains("//") || target == "/" {
        return Err(format!(
            "file target \"{target}\" is not a file path; name a file"
        ));
    }
    for component in Path::new(target).components() {
        match component {
            Component::RootDir | Component::Normal(_) => {}
            _ => {
                return Err(format!(
                    "file target \"{target}\" escapes the root or is not normalized (`..` or `.`); use a plain absolute path"
                ))
            }
        }
    }
    if target.split('/').any(|part| part == "." || part == "..") {
        return Err(format!(
            "file target \"{target}\" escapes the root or is not normalized (`..` or `.`); use a plain absolute path"
        ));
    }
    Ok(())
}

fn definition_file(definition: &ServiceDefinition) -> String {
    format!(
        "{}:{}",
        definition.dir.join(servicedef::FILE_NAME).display(),
        definition.line
    )
}

/// Renders every file of the selected services into memory. If anything is
/// wrong, returns every problem found and no file.
pub fn stage(request: &Request) -> Result<Vec<StagedFile>, Error> {
    let mut problems = Vec::new();
    let known: BTreeSet<&str> = request
        .definitions
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    for name in request.only {
        if !known.contains(name.as_str()) {
            problems.push(format!(
                "{}: no service `{name}` (known: {})",
                request.services_dir.display(),
                known.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (service, location) in &request.model.service_mentions {
        if !known.contains(service.as_str()) {
            problems.push(format!(
                "{location}: service `{service}` has no definition in {}; add {}/{service}/service.xml or remove it from the model",
                request.services_dir.display(),
                request.services_dir.display()
            ));
        }
    }
    let services_dir = request.services_dir.canonicalize().map_err(|e| {
        Error::BadInput(vec![format!(
            "{}: cannot read the services directory: {e}",
            request.services_dir.display()
        )])
    })?;
    // Validate every definition's targets (not only the selected ones): the
    // image must be consistent as a whole.
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    let mut jobs: Vec<(&ServiceDefinition, &servicedef::FileTarget, PathBuf)> = Vec::new();
    for definition in request.definitions {
        let selected = request.only.is_empty() || request.only.contains(&definition.name);
        for file in &definition.files {
            if let Err(problem) = check_target(&file.target) {
                problems.push(format!(
                    "{}: service `{}`: {problem}",
                    definition_file(definition),
                    definition.name
                ));
                continue;
            }
            if let Some(other) = owners.insert(&file.target, &definition.name) {
                problems.push(format!(
                    "{}: service `{}`: file target {} is also written by service `{other}`; give each file one owner",
                    definition_file(definition),
                    definition.name,
                    file.target
                ));
            }
            let template = definition.dir.join(&file.template);
            let template = match template.canonicalize() {
                Ok(path) if path.starts_with(&services_dir) => path,
                Ok(_) => {
                    problems.push(format!(
                        "{}: service `{}`: template {} is outside {}; keep templates in the service's directory",
                        definition_file(definition),
                        definition.name,
                        file.template.display(),
                        services_dir.display()
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(format!(
                        "{}: service `{}`: template {}: {e}",
                        definition_file(definition),
                        definition.name,
                        template.display()
                    ));
                    continue;
                }
            };
            if selected {
                jobs.push((definition, file, template));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::BadInput(problems));
    }
    let effective = request.model.effective(request.server, request.profile)?;
    let xslt = xslt::Xslt::new(&services_dir).map_err(|e| Error::BadInput(vec![e]))?;
    let render_jobs: Vec<(PathBuf, Vec<(String, String)>)> = jobs
        .iter()
        .map(|(definition, _, template)| {
            (
                template.clone(),
                vec![
                    (
                        "server".to_string(),
                        request.server.unwrap_or("").to_string(),
                    ),
                    ("mode".to_string(), request.profile.to_string()),
                    ("service".to_string(), definition.name.clone()),
                ],
            )
        })
        .collect();
    // Small renders stay on one thread; big ones use every core.
    let threads = if render_jobs.len() < 32 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    };
    let rendered = xslt
        .render_all(&effective.to_xml(), &render_jobs, threads)
        .map_err(|e| Error::BadInput(vec![e]))?;
    let mut staged = Vec::with_capacity(jobs.len());
    for ((definition, file, _), result) in jobs.into_iter().zip(rendered) {
        match result {
            Ok(bytes) => staged.push(StagedFile {
                target: file.target.clone(),
                bytes,
                mode: file.mode,
                owner: file.owner.clone(),
                group: file.group.clone(),
                service: definition.name.clone(),
                on_change: file.on_change,
            }),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(Error::BadInput(problems));
    }
    staged.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(staged)
}

#[cfg(test)]
mod tests;
