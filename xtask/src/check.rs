//! `cargo xtask check` and `cargo xtask bless`: the feedback loop of a
//! service's author, in memory and before any package is downloaded
//! (docs/image-builder.md, "Checking before building").
//!
//! check: every service definition parses, every template parses and
//! compiles (libxml2 and libxslt through the render crate, messages with
//! file and line), the image x profile resolves, its model renders for the
//! profile and every server of the model, and every golden case renders
//! exactly its expected files. bless: rewrites the golden cases' expected
//! files from the current templates.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use render::golden;

use crate::image::BadInput;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image whose profile's model is checked: images/IMAGE.xml.
    #[arg(long, default_value = "debian")]
    pub image: String,
    /// The profile whose model is checked: profiles/PROFILE.xml.
    #[arg(long, default_value = "dev")]
    pub profile: String,
    /// The directory holding images/, profiles/, services/ and models/ (default: the workspace root).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BlessArgs {
    /// Services (every case that renders them: services/NAME/tests/* and the whole-profile
    /// cases listing them) or cases (SERVICE/CASE, or a case under test_data/render); none: every case.
    pub cases: Vec<String>,
    /// The directory holding services/ and test_data/ (default: the workspace root).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

/// What a passing check went through.
#[derive(Debug, Default)]
pub struct Summary {
    pub services: usize,
    pub templates: usize,
    pub renders: usize,
    pub cases: usize,
    pub elapsed: Duration,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = args.source.unwrap_or_else(crate::image::workspace_root);
    let summary = check(&source, &args.image, &args.profile, true)?;
    println!(
        "check: {} services, {} templates compiled, the model of {} x {} rendered {} times, {} golden cases: ok in {:.2}s",
        summary.services,
        summary.templates,
        args.image,
        args.profile,
        summary.renders,
        summary.cases,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Runs every check; every problem is reported at once as bad input.
/// `golden` also renders and compares every golden case.
pub fn check(source: &Path, image: &str, profile: &str, golden: bool) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut problems = Vec::new();
    for dir in service_dirs(source) {
        match servicedef::load_dir(&dir) {
            Ok(mut definitions) => {
                definitions.extend(freebsd_forms(&definitions, &mut problems));
                summary.services += definitions.len();
                summary.templates += definitions.iter().map(|d| d.files.len()).sum::<usize>();
                problems.extend(render::check_templates(&dir, &definitions));
            }
            Err(errors) => problems.extend(errors.problems),
        }
    }
    // A template that does not compile fails every render below it: report
    // it once.
    if problems.is_empty() {
        problems.extend(renders(source, image, profile, golden, &mut summary));
    }
    summary.elapsed = started.elapsed();
    if problems.is_empty() {
        Ok(summary)
    } else {
        let count = match problems.len() {
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        };
        Err(BadInput(format!(
            "{}\n({count}; a golden case that differs on purpose is re-written with cargo xtask bless CASE)",
            problems.join("\n")
        ))
        .into())
    }
}

/// The model's renders and, with `golden`, the golden cases' problems.
fn renders(
    source: &Path,
    image: &str,
    profile: &str,
    golden: bool,
    summary: &mut Summary,
) -> Vec<String> {
    let mut problems = Vec::new();
    match crate::image::model_check(source, image, profile) {
        Ok((renders, model_problems)) => {
            summary.renders = renders;
            problems.extend(model_problems);
        }
        Err(error) => problems.push(error.to_string()),
    }
    if golden {
        let cases = golden::cases(source);
        summary.cases = cases.len();
        for case in &cases {
            problems.extend(case_problems(source, case));
        }
    }
    problems
}

/// [`check`] for every image x profile of the tree, the golden cases once
/// (a step of `cargo xtask test`).
pub fn check_every_profile(source: &Path) -> anyhow::Result<()> {
    let mut golden = true;
    for image in crate::image::list_names(&source.join("images")) {
        for profile in crate::image::list_names(&source.join("profiles")) {
            check(source, &image, &profile, golden)?;
            golden = false;
        }
    }
    Ok(())
}

/// The directories of service definitions: services/ and, when the tree has
/// one, freebsd/services/ (the FreeBSD image's rc.d glue).
fn service_dirs(source: &Path) -> Vec<PathBuf> {
    [source.join("services"), source.join("freebsd/services")]
        .into_iter()
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The FreeBSD forms (`services/NAME/freebsd/service.xml`) of `definitions`.
fn freebsd_forms(
    definitions: &[servicedef::ServiceDefinition],
    problems: &mut Vec<String>,
) -> Vec<servicedef::ServiceDefinition> {
    let mut forms = Vec::new();
    for definition in definitions {
        let path = definition.dir.join("freebsd").join(servicedef::FILE_NAME);
        if path.is_file() {
            match servicedef::parse_file(&path) {
                Ok(form) => forms.push(form),
                Err(errors) => problems.extend(errors.problems),
            }
        }
    }
    forms
}

/// How a golden case fails, each line naming the case.
fn case_problems(source: &Path, case: &golden::Case) -> Vec<String> {
    match golden::render_case(source, case) {
        Ok(staged) => golden::compare(case, &staged),
        Err(problems) => problems
            .into_iter()
            .map(|problem| format!("golden case {}: {problem}", case.name))
            .collect(),
    }
}

pub fn bless(args: BlessArgs) -> anyhow::Result<()> {
    let source = args.source.unwrap_or_else(crate::image::workspace_root);
    let cases = select(&source, &args.cases)?;
    // Every selected case renders first: a broken one writes nothing at all.
    let mut rendered = Vec::new();
    let mut problems = Vec::new();
    for case in cases {
        match golden::render_case(&source, &case) {
            Ok(staged) => rendered.push((case, staged)),
            Err(errors) => problems.extend(
                errors
                    .into_iter()
                    .map(|problem| format!("golden case {}: {problem}", case.name)),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(BadInput(format!(
            "{}\nnothing was blessed; fix the templates or the case's model first",
            problems.join("\n")
        ))
        .into());
    }
    for (case, staged) in rendered {
        let touched = golden::bless(&case, &staged)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", case.expected_dir().display()))?;
        if touched.is_empty() {
            println!("{}: unchanged", case.name);
        } else {
            println!("{}: wrote {}", case.name, touched.join(" "));
        }
    }
    Ok(())
}

/// The cases `selectors` name (a service: all its cases; a case by name);
/// every case when there are none.
fn select(source: &Path, selectors: &[String]) -> anyhow::Result<Vec<golden::Case>> {
    let cases = golden::cases(source);
    if selectors.is_empty() {
        return Ok(cases);
    }
    let mut unknown = Vec::new();
    for selector in selectors {
        if !cases.iter().any(|case| matches(source, case, selector)) {
            unknown.push(selector.as_str());
        }
    }
    if !unknown.is_empty() {
        let names: Vec<&str> = cases.iter().map(|case| case.name.as_str()).collect();
        return Err(BadInput(format!(
            "no golden case or service with cases named {} (cases: {}); a service's cases live in services/NAME/tests/CASE/",
            unknown.join(", "),
            names.join(", ")
        ))
        .into());
    }
    Ok(cases
        .into_iter()
        .filter(|case| {
            selectors
                .iter()
                .any(|selector| matches(source, case, selector))
        })
        .collect())
}

/// A case matches its name and every service it renders (a service's own
/// cases and the whole-profile cases that list it).
fn matches(source: &Path, case: &golden::Case, selector: &str) -> bool {
    case.name == selector
        || case
            .arguments(source)
            .is_ok_and(|arguments| arguments.only.iter().any(|service| service == selector))
}
