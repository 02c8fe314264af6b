//! The long-running renderer: what a watcher keeps between renders.
//!
//! [`Renderer::new`] does once what does not depend on the model: it
//! checks every definition's targets and templates (as [`crate::stage`]
//! does), reads and compiles every template and keeps the compiled
//! stylesheets, and classifies what each template reads
//! ([`crate::reads`]). [`Renderer::render`] then takes a model, validates
//! it whole (as [`crate::stage`] does, before any template runs) and
//! applies only the templates whose inputs changed since the last
//! successful render; the other files keep the bytes that render produced.
//!
//! The rule for "inputs did not change": a template's output is a function
//! of its bytes (fixed for the renderer's life), its parameters `server`,
//! `mode` and `service` (fixed too) and what it reads of the effective
//! model. A template that reads only `$self` and services it names with
//! `id('NAME')` ([`Reads::Services`]) is applied again when one of those
//! services' elements (every key and value after layering and declared
//! defaults) differs from the last render's; any
//! other template ([`Reads::WholeModel`]) when the effective model's text
//! differs. So the staged files are, byte for byte, those of a full
//! [`crate::stage`] of the same model (the tests compare them).
//!
//! A render is all or nothing: a model that does not validate, or any
//! template that fails, returns every problem and leaves the kept outputs
//! as they were. The files re-rendered are listed, so a caller can hand
//! only those to [`crate::sync::sync`] (journaled and atomic as always);
//! the files it skips are byte-identical to what the previous render
//! staged.

use crate::reads::{reads, Reads};
use crate::xslt::{Kept, Xslt};
use crate::{Error, Request, StagedFile};
use model::Model;
use servicedef::ServiceDefinition;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file the renderer keeps: its template, compiled, and what it
/// rendered last.
struct File {
    /// The file as staged last (`bytes` empty before the first render).
    staged: StagedFile,
    template: PathBuf,
    reads: Reads,
    stylesheet: Option<Kept>,
    /// The keys and values of the services it reads (its own first, then
    /// the named ones; `None` for a service the model did not have) that
    /// the last output was rendered from; `None` before the first render.
    inputs: Option<Vec<Option<BTreeMap<String, String>>>>,
}

impl File {
    /// The keys and values of the services this file's template reads.
    fn inputs_in(&self, effective: &model::Effective) -> Vec<Option<BTreeMap<String, String>>> {
        let named = match &self.reads {
            Reads::Services { named } => named.iter().collect(),
            Reads::WholeModel => Vec::new(),
        };
        std::iter::once(&self.staged.service)
            .chain(named)
            .map(|service| effective.services.get(service).cloned())
            .collect()
    }
}

/// Compiled templates and the last outputs, for one services directory,
/// server and profile.
pub struct Renderer {
    services_dir: PathBuf,
    canonical_services_dir: PathBuf,
    definitions: Vec<ServiceDefinition>,
    server: Option<String>,
    profile: String,
    /// Sorted by target.
    files: Vec<File>,
    /// The effective model's text of the last successful render.
    last_document: Option<String>,
}

/// What one [`Renderer::render`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Every file, sorted by target: what [`crate::stage`] returns.
    pub staged: Vec<StagedFile>,
    /// Indexes into `staged` of the files whose template ran this time.
    pub rerendered: Vec<usize>,
}

impl Rendered {
    /// The files whose template ran this time, for [`crate::sync::sync`].
    pub fn rerendered_files(&self) -> Vec<StagedFile> {
        self.rerendered
            .iter()
            .map(|index| self.staged[*index].clone())
            .collect()
    }
}

impl Renderer {
    /// Checks every definition and template and compiles every template;
    /// all problems at once, as [`crate::stage`] reports them.
    pub fn new(
        services_dir: &Path,
        definitions: Vec<ServiceDefinition>,
        server: Option<&str>,
        profile: &str,
    ) -> Result<Renderer, Error> {
        let mut problems = Vec::new();
        let (planned, canonical_services_dir) =
            crate::plan(&definitions, services_dir, &[], &mut problems)?;
        if !problems.is_empty() {
            return Err(Error::BadInput(problems));
        }
        let xslt = Xslt::new(&canonical_services_dir).map_err(|e| Error::BadInput(vec![e]))?;
        let mut files = Vec::with_capacity(planned.len());
        for planned in &planned {
            match xslt.compile_kept(&planned.source, &planned.template) {
                Ok(kept) => files.push(File {
                    staged: planned.staged(Vec::new()),
                    template: planned.template.clone(),
                    reads: reads(&planned.source),
                    stylesheet: Some(kept),
                    inputs: None,
                }),
                Err(problem) => problems.push(problem),
            }
        }
        files.sort_by(|a, b| a.staged.target.cmp(&b.staged.target));
        let renderer = Renderer {
            services_dir: services_dir.to_path_buf(),
            canonical_services_dir,
            definitions,
            server: server.map(str::to_string),
            profile: profile.to_string(),
            files,
            last_document: None,
        };
        drop(xslt);
        if !problems.is_empty() {
            return Err(Error::BadInput(problems));
        }
        Ok(renderer)
    }

    /// Forgets every kept output, so the next render applies every
    /// template (after an apply of its files failed).
    pub fn forget(&mut self) {
        self.last_document = None;
        for file in &mut self.files {
            file.inputs = None;
        }
    }

    /// How many templates read more than their own service.
    pub fn whole_model_templates(&self) -> usize {
        self.files
            .iter()
            .filter(|file| file.reads == Reads::WholeModel)
            .count()
    }

    /// Validates `model` and applies the templates whose inputs changed
    /// since the last successful render (every template the first time).
    pub fn render(&mut self, model: &Model) -> Result<Rendered, Error> {
        let request = Request {
            model,
            definitions: &self.definitions,
            services_dir: &self.services_dir,
            server: self.server.as_deref(),
            profile: &self.profile,
            only: &[],
        };
        let problems = crate::check_model(&request);
        if !problems.is_empty() {
            return Err(Error::BadInput(problems));
        }
        let effective = crate::effective_model(&request)?;
        let document = effective.to_xml();
        let document_changed = self.last_document.as_deref() != Some(document.as_str());
        let due: Vec<usize> = (0..self.files.len())
            .filter(|index| {
                let file = &self.files[*index];
                match (&file.inputs, &file.reads) {
                    (None, _) => true,
                    (Some(_), Reads::WholeModel) => document_changed,
                    (Some(inputs), Reads::Services { .. }) => *inputs != file.inputs_in(&effective),
                }
            })
            .collect();
        let outputs = self.apply(&document, &due)?;
        for (index, bytes) in due.iter().zip(outputs) {
            let file = &mut self.files[*index];
            file.staged.bytes = bytes;
            file.inputs = Some(file.inputs_in(&effective));
        }
        self.last_document = Some(document);
        Ok(Rendered {
            staged: self.files.iter().map(|file| file.staged.clone()).collect(),
            rerendered: due,
        })
    }

    /// Applies the templates of `due` to `document`; their outputs in
    /// order, or every template's problem.
    fn apply(&self, document: &str, due: &[usize]) -> Result<Vec<Vec<u8>>, Error> {
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let xslt = Xslt::new(&self.canonical_services_dir).map_err(|e| Error::BadInput(vec![e]))?;
        let parsed = xslt
            .parse_document(document, "effective-model.xml")
            .map_err(|e| Error::BadInput(vec![e]))?;
        let mut outputs = Vec::with_capacity(due.len());
        let mut problems = Vec::new();
        for index in due {
            let file = &self.files[*index];
            let Some(stylesheet) = &file.stylesheet else {
                continue;
            };
            let params =
                crate::template_params(self.server.as_deref(), &self.profile, &file.staged.service);
            let params: Vec<(&str, &str)> = params
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let name = file.template.display().to_string();
            match xslt.apply_kept(stylesheet, &parsed, &params, &name) {
                Ok(bytes) => outputs.push(bytes),
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            return Err(Error::BadInput(problems));
        }
        Ok(outputs)
    }
}

impl Drop for Renderer {
    /// Frees the compiled stylesheets under the lock. A renderer holds the
    /// lock only inside its own methods, so this never waits on itself.
    fn drop(&mut self) {
        let Ok(xslt) = Xslt::new(&self.canonical_services_dir) else {
            return;
        };
        for file in &mut self.files {
            if let Some(stylesheet) = file.stylesheet.take() {
                xslt.free_kept(stylesheet);
            }
        }
    }
}
