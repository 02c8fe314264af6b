//! The profile's model rendered in memory, as the image's bake and every
//! server's boot would render it: for the profile's mode without a server
//! and with each server the model names (`cargo xtask check`, `image
//! --plan` and the first step of a build).

use std::path::{Path, PathBuf};

use servicedef::ServiceDefinition;

use super::{freebsd, plan, BadInput};

/// What the image x profile renders: its mode, model and service
/// definitions, and the services its bake selects.
struct Renders {
    /// Where the templates are (`document()` may read below it too).
    services_dir: PathBuf,
    mode: String,
    model: PathBuf,
    definitions: Vec<ServiceDefinition>,
    selected: Vec<String>,
}

/// Resolves the image x profile and renders its model for the mode and
/// every server; returns how many renders ran and every problem (each
/// once, prefixed with the server it was found for).
pub fn check(source: &Path, image: &str, profile: &str) -> Result<(usize, Vec<String>), BadInput> {
    let renders = if freebsd::is_freebsd_image(source, image) {
        freebsd_renders(source, image, profile)?
    } else {
        debian_renders(source, image, profile)?
    };
    let model = model::Model::load(&source.join(&renders.model).to_string_lossy())
        .map_err(|e| BadInput(e.to_string()))?;
    let servers = std::iter::once(None).chain(model.servers.keys().map(|id| Some(id.as_str())));
    let mut count = 0;
    let mut problems: Vec<String> = Vec::new();
    for server in servers {
        count += 1;
        let request = render::Request {
            model: &model,
            definitions: &renders.definitions,
            services_dir: &renders.services_dir,
            server,
            profile: &renders.mode,
            only: &renders.selected,
        };
        if let Err(error) = render::stage(&request) {
            let at = match server {
                Some(id) => format!("profile {profile}, server {id}"),
                None => format!("profile {profile}, no server"),
            };
            for problem in error.to_lines() {
                if !problems.iter().any(|seen| seen.ends_with(&problem)) {
                    problems.push(format!("{at}: {problem}"));
                }
            }
        }
    }
    Ok((count, problems))
}

fn parse(dir: &Path) -> Result<ServiceDefinition, BadInput> {
    servicedef::parse_file(&dir.join(servicedef::FILE_NAME))
        .map_err(|errors| BadInput(errors.to_string()))
}

/// The Debian bake: the image's and the profile's services, nothing else.
fn debian_renders(source: &Path, image: &str, profile: &str) -> Result<Renders, BadInput> {
    let plan = plan::resolve_with(source, image, profile, Vec::new(), true)?;
    let definitions = plan
        .services
        .iter()
        .map(|service| parse(&source.join("services").join(&service.name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Renders {
        services_dir: source.join("services"),
        mode: plan.mode,
        model: plan.model,
        selected: plan.services.into_iter().map(|s| s.name).collect(),
        definitions,
    })
}

/// The FreeBSD bake: every service in its FreeBSD form, the image's
/// services and the rc.d glue selected.
fn freebsd_renders(source: &Path, image: &str, profile: &str) -> Result<Renders, BadInput> {
    let plan = freebsd::resolve(source, image, profile)?;
    let mut definitions = Vec::new();
    for (_, dir) in freebsd::definition_dirs(source).map_err(|e| BadInput(e.to_string()))? {
        definitions.push(parse(&dir)?);
    }
    let mut selected: Vec<String> = plan.services.into_iter().map(|s| s.name).collect();
    selected.push(freebsd::GLUE_SERVICE.to_owned());
    Ok(Renders {
        // The FreeBSD forms lie in services/, the glue in freebsd/services/.
        services_dir: source.to_path_buf(),
        mode: plan.mode,
        model: plan.model,
        definitions,
        selected,
    })
}
