//! The model checked against the services' key declarations, before any
//! template runs.
//!
//! Every value the model sets must belong to a declared key of its service
//! (by name, or the service's `*` wildcard) and parse as the key's type;
//! every required key must have a value (from the model or its declared
//! default) for the server and profile being rendered. Problems name the
//! place the value was set (`file:line` of the XML model, the table and row
//! of an SQLite one), the key, the value and the expected type.
//!
//! Declared defaults are merged under the model's defaults layer by
//! [`with_declared_defaults`], so templates see them like any other value.

use model::{Effective, Layer, Model};
use servicedef::{KeyDeclaration, ServiceDefinition};
use std::collections::BTreeMap;

/// Which layers of the model to check.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every layer: defaults, every profile and every server.
    All,
    /// The layers one render uses: defaults, `profile` and `server`;
    /// required keys are checked for the services in `only` (all when
    /// empty).
    Render {
        profile: &'a str,
        server: Option<&'a str>,
        only: &'a [String],
    },
}

/// Checks the model's values in `scope` against the declarations and, for a
/// render, that every required key of every service has a value. Returns
/// every problem, one line each.
pub fn check(model: &Model, definitions: &[ServiceDefinition], scope: Scope) -> Vec<String> {
    let by_name: BTreeMap<&str, &ServiceDefinition> = definitions
        .iter()
        .map(|definition| (definition.name.as_str(), definition))
        .collect();
    let mut problems = Vec::new();
    for (layer_name, layer) in layers(model, scope) {
        check_layer(model, &layer_name, layer, &by_name, &mut problems);
    }
    if let Scope::Render {
        profile,
        server,
        only,
    } = scope
    {
        if let Ok(effective) = model.effective(server, profile) {
            let effective = with_declared_defaults(effective, definitions);
            let selected: Vec<&ServiceDefinition> = definitions
                .iter()
                .filter(|definition| only.is_empty() || only.contains(&definition.name))
                .collect();
            check_required(&effective, &selected, &mut problems);
            check_disabled_needs(&effective, definitions, &mut problems);
        }
    }
    problems
}

/// The declaration that governs `key` of a service: by name, else the
/// wildcard with the longest prefix of it (`PREFIX.*`, then `*`).
pub fn declaration<'a>(definition: &'a ServiceDefinition, key: &str) -> Option<&'a KeyDeclaration> {
    definition
        .keys
        .iter()
        .find(|declaration| declaration.name == key)
        .or_else(|| {
            definition
                .keys
                .iter()
                .filter_map(|declaration| {
                    let prefix = declaration.wildcard_prefix()?;
                    let rest = key.strip_prefix(prefix)?;
                    (!rest.is_empty()).then_some((prefix.len(), declaration))
                })
                .max_by_key(|(length, _)| *length)
                .map(|(_, declaration)| declaration)
                .filter(|_| servicedef::is_key_name(key))
        })
}

/// `effective` with every declared default that the model leaves unset.
pub fn with_declared_defaults(
    mut effective: Effective,
    definitions: &[ServiceDefinition],
) -> Effective {
    for definition in definitions {
        for declaration in &definition.keys {
            if let Some(default) = &declaration.default {
                effective
                    .services
                    .entry(definition.name.clone())
                    .or_default()
                    .entry(declaration.name.clone())
                    .or_insert_with(|| default.clone());
            }
        }
    }
    effective
}

fn layers<'m>(model: &'m Model, scope: Scope) -> Vec<(String, &'m Layer)> {
    let mut layers = vec![("defaults".to_string(), &model.defaults)];
    match scope {
        Scope::All => {
            for (name, layer) in &model.profiles {
                layers.push((format!("profile {name}"), layer));
            }
            for (id, layer) in &model.servers {
                layers.push((format!("server {id}"), layer));
            }
        }
        Scope::Render {
            profile, server, ..
        } => {
            if let Some(layer) = model.profiles.get(profile) {
                layers.push((format!("profile {profile}"), layer));
            }
            if let Some(layer) = server.and_then(|id| model.servers.get(id)) {
                layers.push((format!("server {}", server.unwrap_or_default()), layer));
            }
        }
    }
    layers
}

fn check_layer(
    model: &Model,
    layer_name: &str,
    layer: &Layer,
    by_name: &BTreeMap<&str, &ServiceDefinition>,
    problems: &mut Vec<String>,
) {
    for (service, service_keys) in layer {
        // A service without a definition is reported by the renderer's own
        // check, once per mention.
        let Some(definition) = by_name.get(service.as_str()) else {
            continue;
        };
        let definition_file = definition.dir.join(servicedef::FILE_NAME);
        for (key, value) in &service_keys.keys {
            let here = service_keys.location_of(key, &model.source_name);
            match declaration(definition, key) {
                None => {
                    let hint = servicedef::closest(
                        key,
                        definition
                            .keys
                            .iter()
                            .map(|declaration| declaration.name.as_str()),
                    )
                    .map(|name| format!(" (did you mean `{name}`?)"))
                    .unwrap_or_default();
                    problems.push(format!(
                        "{here}: {layer_name}: service `{service}` has no key `{key}`{hint}; the keys it reads are declared in {}: fix the name or declare it there",
                        definition_file.display()
                    ));
                }
                Some(declaration) => {
                    if let Err(problem) = declaration.check(value) {
                        problems.push(format!(
                            "{here}: {layer_name}: key `{key}` of service `{service}` is {}: {problem} (declared in {}:{})",
                            shown(value),
                            definition_file.display(),
                            declaration.line
                        ));
                    }
                }
            }
        }
    }
}

fn check_required(
    effective: &Effective,
    definitions: &[&ServiceDefinition],
    problems: &mut Vec<String>,
) {
    for definition in definitions {
        let keys = effective.services.get(&definition.name);
        for declaration in definition.keys.iter().filter(|key| key.required) {
            if keys.is_some_and(|keys| keys.contains_key(&declaration.name)) {
                continue;
            }
            let server = effective
                .server
                .as_deref()
                .map(|id| format!(", server {id}"))
                .unwrap_or_default();
            problems.push(format!(
                "{}:{}: key `{}` of service `{}` is required but has no value for profile {}{server}: set it in the model (defaults, the profile or the server) or give it a default",
                definition.dir.join(servicedef::FILE_NAME).display(),
                declaration.line,
                declaration.name,
                definition.name,
                effective.profile
            ));
        }
    }
}

/// The services of `definitions` the effective model disables (their key
/// `enabled` is no), sorted by name.
pub fn disabled(effective: &Effective, definitions: &[ServiceDefinition]) -> Vec<String> {
    let mut names: Vec<String> = definitions
        .iter()
        .filter(|definition| {
            !servicedef::is_enabled(definition, effective.services.get(&definition.name))
        })
        .map(|definition| definition.name.clone())
        .collect();
    names.sort();
    names
}

/// A disabled service that an enabled service of the mode needs (directly,
/// or through the needs of what it needs) is refused: the dependent could
/// never start. The operator disables both or neither.
fn check_disabled_needs(
    effective: &Effective,
    definitions: &[ServiceDefinition],
    problems: &mut Vec<String>,
) {
    let disabled = disabled(effective, definitions);
    let by_name: BTreeMap<&str, &ServiceDefinition> = definitions
        .iter()
        .map(|definition| (definition.name.as_str(), definition))
        .collect();
    let mut queue: Vec<&ServiceDefinition> = definitions
        .iter()
        .filter(|definition| {
            definition.modes.is_empty() || definition.modes.contains(&effective.profile)
        })
        .filter(|definition| !disabled.contains(&definition.name))
        .collect();
    let mut seen: Vec<&str> = queue
        .iter()
        .map(|definition| definition.name.as_str())
        .collect();
    while let Some(dependent) = queue.pop() {
        for need in &dependent.needs {
            if disabled.contains(need) {
                problems.push(format!(
                    "{}:{}: service `{}` runs in mode {} and needs `{need}`, which the model disables (key `enabled` of `{need}` is no): disable `{}` too, or enable `{need}`",
                    dependent.dir.join(servicedef::FILE_NAME).display(),
                    dependent.line,
                    dependent.name,
                    effective.profile,
                    dependent.name
                ));
            } else if let Some(needed) = by_name.get(need.as_str()) {
                if !seen.contains(&need.as_str()) {
                    seen.push(need);
                    queue.push(needed);
                }
            }
        }
    }
}

/// A value as a message shows it: quoted, control characters escaped, long
/// values cut.
fn shown(value: &str) -> String {
    let mut text: String = value.chars().take(80).collect();
    if value.chars().count() > 80 {
        text.push('…');
    }
    format!("{text:?}")
}

/// The keys a template reads by name: every `key[@name = 'NAME']` (either
/// quote, any spacing), as `(line, service, key)`; the service is the one of
/// an `id('SERVICE')/` just before it, else `own_service`.
pub fn keys_read(source: &[u8], own_service: &str) -> Vec<(usize, String, String)> {
    let text = String::from_utf8_lossy(source);
    let mut found = Vec::new();
    let pattern = "key[@name";
    let mut from = 0;
    while let Some(offset) = text[from..].find(pattern) {
        let start = from + offset;
        from = start + pattern.len();
        let rest = text[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            continue;
        };
        let Some(end) = rest[1..].find(quote) else {
            continue;
        };
        let key = rest[1..1 + end].to_string();
        let service = service_before(&text[..start]).unwrap_or(own_service);
        let line = text[..start].matches('\n').count() + 1;
        found.push((line, service.to_string(), key));
    }
    found
}

/// `S` when `before` ends with `id('S')/` (or `id("S")/`).
fn service_before(before: &str) -> Option<&str> {
    let before = before.strip_suffix(")/")?;
    let quote = before.chars().last().filter(|c| *c == '\'' || *c == '"')?;
    let before = &before[..before.len() - 1];
    let open = before.rfind(quote)?;
    before[..open]
        .strip_suffix("id(")
        .map(|_| &before[open + 1..])
}

/// Problems for every key a template reads that its service (or the service
/// it names with `id('...')`) does not declare.
pub fn check_template_keys(
    template: &std::path::Path,
    source: &[u8],
    own_service: &str,
    definitions: &[ServiceDefinition],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (line, service, key) in keys_read(source, own_service) {
        let Some(definition) = definitions.iter().find(|d| d.name == service) else {
            problems.push(format!(
                "{}:{line}: reads key `{key}` of service `{service}`, which has no definition: fix the service name",
                template.display()
            ));
            continue;
        };
        if declaration(definition, &key).is_none() {
            let hint = servicedef::closest(&key, definition.keys.iter().map(|d| d.name.as_str()))
                .map(|name| format!(" (did you mean `{name}`?)"))
                .unwrap_or_default();
            problems.push(format!(
                "{}:{line}: reads key `{key}` of service `{service}`, which {} does not declare{hint}: declare it with <key name=\"{key}\" type=\"...\">",
                template.display(),
                definition.dir.join(servicedef::FILE_NAME).display()
            ));
        }
    }
    problems
}
