//! The nodows renderer.
//!
//! [`render_template`] is the pure part: one template applied to one
//! effective document with the parameters `server`, `mode` and `service`.
//! [`stage`] renders every file of the selected services into memory, and
//! [`sync`] is the one module that touches the target root: it diffs the
//! staged files against it and writes only what changed, atomically.

pub mod appliance;
pub mod fleet;
pub mod golden;
pub mod incremental;
pub mod keys;
pub mod reads;
pub mod sync;
pub mod validate;
pub mod watch;
pub mod xslt;

use model::{Effective, Model};
use servicedef::{OnChange, ServiceDefinition};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

    /// The problems, one per line.
    pub fn to_lines(&self) -> Vec<String> {
        match self {
            Error::BadInput(problems) => problems.clone(),
            Error::Failed(message) => vec![message.clone()],
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

/// What initd needs from the model besides files, reported with every
/// change set (docs/interfaces.md, "The change set").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceSettings {
    /// Every service the model disables (its key `enabled` is no) for this
    /// server and profile, sorted: initd stops these and runs the rest.
    pub disabled: Vec<String>,
    /// Per service with `{KEY}` fields (`<ready port="{port}"/>`), the
    /// effective values of those keys.
    pub values: BTreeMap<String, BTreeMap<String, String>>,
}

/// The [`ServiceSettings`] of every definition (not only the rendered
/// ones: initd keeps them for all) for `server` and `profile`.
pub fn service_settings(
    model: &Model,
    definitions: &[ServiceDefinition],
    server: Option<&str>,
    profile: &str,
) -> Result<ServiceSettings, Error> {
    let effective =
        validate::with_declared_defaults(model.effective(server, profile)?, definitions);
    let mut values = BTreeMap::new();
    for definition in definitions {
        let keys = effective.services.get(&definition.name);
        let named: BTreeMap<String, String> = definition
            .model_field_keys()
            .filter_map(|key| Some((key.to_string(), keys?.get(key)?.clone())))
            .collect();
        if !named.is_empty() {
            values.insert(definition.name.clone(), named);
        }
    }
    Ok(ServiceSettings {
        disabled: validate::disabled(&effective, definitions),
        values,
    })
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

/// Parses and compiles every template of `definitions` (below
/// `services_dir`) without rendering anything: libxml2's and libxslt's
/// messages, each with the template's file and line.
pub fn check_templates(services_dir: &Path, definitions: &[ServiceDefinition]) -> Vec<String> {
    let allowed = match services_dir.canonicalize() {
        Ok(dir) => dir,
        Err(e) => return vec![format!("{}: cannot read: {e}", services_dir.display())],
    };
    let xslt = match xslt::Xslt::new(&allowed) {
        Ok(xslt) => xslt,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for definition in definitions {
        for file in &definition.files {
            let template = definition.dir.join(&file.template);
            let template = template.canonicalize().unwrap_or(template);
            if let Err(message) = xslt.compile(&template) {
                problems.push(message);
            }
        }
    }
    problems
}

fn definition_file(definition: &ServiceDefinition) -> String {
    format!(
        "{}:{}",
        definition.dir.join(servicedef::FILE_NAME).display(),
        definition.line
    )
}

/// Where a template is, for [`stage`]: inside the services directory (its
/// canonical path and, if it was asked for, its bytes) or outside it.
enum Located {
    Inside(PathBuf, Vec<u8>),
    Outside,
}

/// Finds templates below the canonical services directory and reads them,
/// resolving each path once: a directory's canonical path is its parent's
/// plus its name when it is a real directory (known from listing the
/// services directory, or one `lstat`, cached per directory, instead of a
/// `readlink` per component and template), and the template is opened with
/// `O_NOFOLLOW` below it. Anything else (a
/// symlink, `..`, a relative or odd path) takes the slow path,
/// `canonicalize`, so the answer is always the canonical path.
#[derive(Clone)]
struct Templates<'a> {
    /// The services directory as given, and canonical.
    given: &'a Path,
    canonical: &'a Path,
    directories: HashMap<PathBuf, PathBuf>,
    /// How many paths took the slow path, and how many directories were
    /// looked up with `lstat` (the tests count them).
    slow_paths: usize,
    directory_stats: usize,
    /// Reused by every read, so each template costs one exact allocation.
    scratch: Vec<u8>,
}

impl<'a> Templates<'a> {
    fn new(given: &'a Path, canonical: &'a Path) -> Templates<'a> {
        let mut directories = HashMap::new();
        // The service directories, from one listing of the services
        // directory (its entries' types, no stat each): a real directory's
        // canonical path is the canonical services directory plus its name.
        if let Ok(entries) = std::fs::read_dir(given) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    directories.insert(entry.path(), canonical.join(entry.file_name()));
                }
            }
        }
        Templates {
            given,
            canonical,
            directories,
            slow_paths: 0,
            directory_stats: 0,
            scratch: Vec::with_capacity(64 * 1024),
        }
    }

    fn canonical_directory(&mut self, directory: &Path) -> std::io::Result<PathBuf> {
        if let Some(canonical) = self.directories.get(directory) {
            return Ok(canonical.clone());
        }
        let canonical = if directory == self.given {
            self.canonical.to_path_buf()
        } else {
            match (directory.parent(), directory.components().next_back()) {
                (Some(parent), Some(Component::Normal(name))) if !parent.as_os_str().is_empty() => {
                    let candidate = self.canonical_directory(parent)?.join(name);
                    self.directory_stats += 1;
                    match std::fs::symlink_metadata(&candidate) {
                        Ok(metadata) if metadata.is_dir() => candidate,
                        _ => {
                            self.slow_paths += 1;
                            directory.canonicalize()?
                        }
                    }
                }
                _ => {
                    self.slow_paths += 1;
                    directory.canonicalize()?
                }
            }
        };
        self.directories
            .insert(directory.to_path_buf(), canonical.clone());
        Ok(canonical)
    }

    /// Where `template` is; with `read`, its bytes too (otherwise empty).
    fn locate(&mut self, template: &Path, read: bool) -> std::io::Result<Located> {
        if let (Some(parent), Some(name)) = (template.parent(), template.file_name()) {
            let candidate = self.canonical_directory(parent)?.join(name);
            if candidate.starts_with(self.canonical) {
                match read_template(&candidate, read, &mut self.scratch) {
                    Ok(source) => return Ok(Located::Inside(candidate, source)),
                    // A symlink: the slow path below follows it.
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.slow_paths += 1;
        let canonical = template.canonicalize()?;
        if !canonical.starts_with(self.canonical) {
            return Ok(Located::Outside);
        }
        let source = read_template(&canonical, read, &mut self.scratch)?;
        Ok(Located::Inside(canonical, source))
    }
}

/// With `read`, opens `path` without following a symlink at its end and
/// reads it to the end (open, reads, close: no stat, no seek) through
/// `scratch`, returning a copy of exactly its size; without, only checks
/// that it exists and is not a symlink (`ELOOP` if it is, as `O_NOFOLLOW`
/// says).
fn read_template(path: &Path, read: bool, scratch: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !read {
        return match std::fs::symlink_metadata(path)? {
            metadata if metadata.file_type().is_symlink() => {
                Err(std::io::Error::from_raw_os_error(libc::ELOOP))
            }
            _ => Ok(Vec::new()),
        };
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    scratch.clear();
    // Through `Take`, read_to_end does not fstat and seek for a size hint.
    file.take(u64::MAX).read_to_end(scratch)?;
    Ok(scratch.clone())
}

/// How many threads a pass over `jobs` items uses: small renders stay on
/// one thread; big ones use every core (at most 8).
pub(crate) fn worker_threads(jobs: usize) -> usize {
    if jobs < 32 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    }
}

pub(crate) use servicedef::map_on_threads;

/// Renders every file of the selected services into memory. If anything is
/// wrong, returns every problem found and no file.
pub fn stage(request: &Request) -> Result<Vec<StagedFile>, Error> {
    stage_timed(request).map(|(staged, _)| staged)
}

/// Where [`stage`]'s time went (`nodows render --timings`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimings {
    /// Checking the model against the key declarations.
    pub validate: std::time::Duration,
    /// Everything else: locating, reading, compiling and applying templates.
    pub render: std::time::Duration,
}

/// [`stage`], with the time spent validating and rendering.
pub fn stage_timed(request: &Request) -> Result<(Vec<StagedFile>, StageTimings), Error> {
    let started = std::time::Instant::now();
    let mut timings = StageTimings::default();
    let mut problems = check_only(request);
    let validating = std::time::Instant::now();
    problems.extend(check_model(request));
    timings.validate = validating.elapsed();
    let (planned, services_dir) = plan(
        request.definitions,
        request.services_dir,
        request.only,
        &mut problems,
    )?;
    if !problems.is_empty() {
        return Err(Error::BadInput(problems));
    }
    let effective = effective_model(request)?;
    let xslt = xslt::Xslt::new(&services_dir).map_err(|e| Error::BadInput(vec![e]))?;
    let jobs: Vec<xslt::Job> = planned
        .iter()
        .map(|p| p.job(request.server, request.profile))
        .collect();
    let threads = worker_threads(jobs.len());
    let rendered = xslt
        .render_all(&effective.to_xml(), &jobs, threads)
        .map_err(|e| Error::BadInput(vec![e]))?;
    let staged = collect_staged(planned.iter().zip(rendered))?;
    timings.render = started.elapsed().saturating_sub(timings.validate);
    Ok((staged, timings))
}

/// Problems with `--service` names that no definition has.
fn check_only(request: &Request) -> Vec<String> {
    let known = known_services(request.definitions);
    request
        .only
        .iter()
        .filter(|name| !known.contains(name.as_str()))
        .map(|name| {
            format!(
                "{}: no service `{name}` (known: {})",
                request.services_dir.display(),
                known.iter().copied().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

fn known_services(definitions: &[ServiceDefinition]) -> BTreeSet<&str> {
    definitions.iter().map(|d| d.name.as_str()).collect()
}

/// The model's problems before any template runs: services without a
/// definition, values that do not match their declarations, required keys
/// without a value.
pub(crate) fn check_model(request: &Request) -> Vec<String> {
    let known = known_services(request.definitions);
    let mut problems = Vec::new();
    for (service, location) in &request.model.service_mentions {
        if !known.contains(service.as_str()) {
            problems.push(format!(
                "{location}: service `{service}` has no definition in {}; add {}/{service}/service.xml or remove it from the model",
                request.services_dir.display(),
                request.services_dir.display()
            ));
        }
    }
    problems.extend(validate::check(
        request.model,
        request.definitions,
        validate::Scope::Render {
            profile: request.profile,
            server: request.server,
            only: request.only,
        },
    ));
    problems
}

/// The document templates are applied to: the model's layers for the
/// request's server and profile, over the declared defaults.
pub(crate) fn effective_model(request: &Request) -> Result<Effective, Error> {
    Ok(validate::with_declared_defaults(
        request.model.effective(request.server, request.profile)?,
        request.definitions,
    ))
}

/// One selected file to render: its owner, its target and its template
/// (canonical path and bytes, already checked).
pub(crate) struct Planned<'d> {
    pub(crate) definition: &'d ServiceDefinition,
    pub(crate) file: &'d servicedef::FileTarget,
    pub(crate) template: PathBuf,
    pub(crate) source: Vec<u8>,
}

impl Planned<'_> {
    /// The template with the parameters `server`, `mode` and `service`.
    pub(crate) fn job(&self, server: Option<&str>, profile: &str) -> xslt::Job {
        xslt::Job {
            template: self.template.clone(),
            source: self.source.clone(),
            params: template_params(server, profile, &self.definition.name),
        }
    }

    /// The staged file, with the template's output.
    pub(crate) fn staged(&self, bytes: Vec<u8>) -> StagedFile {
        StagedFile {
            target: self.file.target.clone(),
            bytes,
            mode: self.file.mode,
            owner: self.file.owner.clone(),
            group: self.file.group.clone(),
            service: self.definition.name.clone(),
            on_change: self.file.on_change,
        }
    }
}

/// A template's parameters: `server` (empty when none), `mode` and
/// `service`.
pub(crate) fn template_params(
    server: Option<&str>,
    profile: &str,
    service: &str,
) -> Vec<(String, String)> {
    vec![
        ("server".to_string(), server.unwrap_or("").to_string()),
        ("mode".to_string(), profile.to_string()),
        ("service".to_string(), service.to_string()),
    ]
}

/// The staged files sorted by target, or every template's problem.
pub(crate) fn collect_staged<'p, 'd: 'p>(
    results: impl Iterator<Item = (&'p Planned<'d>, xslt::Rendered)>,
) -> Result<Vec<StagedFile>, Error> {
    let mut staged = Vec::new();
    let mut problems = Vec::new();
    for (planned, result) in results {
        match result {
            Ok(bytes) => staged.push(planned.staged(bytes)),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(Error::BadInput(problems));
    }
    staged.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(staged)
}

/// Checks every definition's targets and templates (not only the selected
/// ones: the image must be consistent as a whole) into `problems`, and
/// returns the selected files with their templates read, and the canonical
/// services directory.
pub(crate) fn plan<'d>(
    definitions: &'d [ServiceDefinition],
    given_services_dir: &Path,
    only: &[String],
    problems: &mut Vec<String>,
) -> Result<(Vec<Planned<'d>>, PathBuf), Error> {
    let services_dir = given_services_dir.canonicalize().map_err(|e| {
        Error::BadInput(vec![format!(
            "{}: cannot read the services directory: {e}",
            given_services_dir.display()
        )])
    })?;
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    let mut planned = Vec::new();
    // Every template is located (and the selected ones read) on every core
    // first; the checks below take the answers in order, so the problems
    // are those, and in the order, of a one-thread pass.
    let files: Vec<(&ServiceDefinition, &servicedef::FileTarget, bool)> = definitions
        .iter()
        .flat_map(|definition| {
            let selected = only.is_empty() || only.contains(&definition.name);
            definition
                .files
                .iter()
                .map(move |file| (definition, file, selected))
        })
        .collect();
    let templates = Templates::new(given_services_dir, &services_dir);
    let located = map_on_threads(
        &files,
        worker_threads(files.len()),
        || templates.clone(),
        |templates, (definition, file, selected)| {
            templates.locate(&definition.dir.join(&file.template), *selected)
        },
    );
    for (&(definition, file, selected), location) in files.iter().zip(located) {
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
        // Only selected templates are read; every one is checked.
        let (template, source) = match location {
            Ok(Located::Inside(path, source)) => (path, source),
            Ok(Located::Outside) => {
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
            problems.extend(validate::check_template_keys(
                &template,
                &source,
                &definition.name,
                definitions,
            ));
            planned.push(Planned {
                definition,
                file,
                template,
                source,
            });
        }
    }
    Ok((planned, services_dir))
}

#[cfg(test)]
mod tests;
