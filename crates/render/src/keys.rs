//! Documentation from the key declarations: `nodows keys` (every key with
//! its effective value for a profile and server) and the Markdown service
//! reference of README.md, both generated from the same declarations so
//! the docs cannot drift from what the renderer checks.

use crate::validate;
use model::Model;
use servicedef::ServiceDefinition;
use std::fmt::Write as _;

/// One declared key and its effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub service: String,
    pub key: String,
    pub type_text: String,
    pub required: bool,
    pub default: Option<String>,
    /// After layering declared defaults, the model's defaults, the profile
    /// and the server; `None` when unset.
    pub value: Option<String>,
    pub description: String,
}

/// Every declared key of `definitions` (and every key a wildcard matched)
/// with its effective value for `profile` and `server`.
pub fn rows(
    model: &Model,
    definitions: &[ServiceDefinition],
    profile: &str,
    server: Option<&str>,
) -> Result<Vec<KeyRow>, model::Error> {
    let effective =
        validate::with_declared_defaults(model.effective(server, profile)?, definitions);
    let mut rows = Vec::new();
    for definition in definitions {
        let values = effective.services.get(&definition.name);
        for declaration in &definition.keys {
            let matched: Vec<(String, Option<String>)> = if declaration.wildcard_prefix().is_some()
            {
                values
                    .into_iter()
                    .flatten()
                    .filter(|(key, _)| {
                        validate::declaration(definition, key)
                            .is_some_and(|governing| std::ptr::eq(governing, declaration))
                    })
                    .map(|(key, value)| (key.clone(), Some(value.clone())))
                    .collect()
            } else {
                vec![(
                    declaration.name.clone(),
                    values.and_then(|values| values.get(&declaration.name).cloned()),
                )]
            };
            for (key, value) in matched {
                rows.push(KeyRow {
                    service: definition.name.clone(),
                    key,
                    type_text: declaration.type_text(),
                    required: declaration.required,
                    default: declaration.default.clone(),
                    value,
                    description: declaration.description.clone(),
                });
            }
        }
    }
    Ok(rows)
}

/// The rows as aligned text columns.
pub fn to_text(rows: &[KeyRow]) -> String {
    let header = [
        "SERVICE",
        "KEY",
        "TYPE",
        "REQUIRED",
        "DEFAULT",
        "VALUE",
        "DESCRIPTION",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.service.clone(),
                row.key.clone(),
                row.type_text.clone(),
                if row.required { "yes" } else { "no" }.to_string(),
                row.default.as_deref().map_or("-".to_string(), shown),
                row.value.as_deref().map_or("-".to_string(), shown),
                row.description.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: [String; 7] = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A value in a table: empty shown as `""`.
fn shown(value: &str) -> String {
    if value.is_empty() {
        "\"\"".to_string()
    } else {
        value.to_string()
    }
}

/// The Markdown reference of every service's keys (README's "Service
/// reference"), in service order.
pub fn reference_markdown(definitions: &[ServiceDefinition]) -> String {
    let mut out = String::new();
    for definition in definitions {
        // The built-in `enabled` is described once, above the tables.
        let declared: Vec<&servicedef::KeyDeclaration> = definition
            .keys
            .iter()
            .filter(|declaration| !servicedef::is_built_in(definition, declaration))
            .collect();
        if declared.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "**{}** ({})\n",
            definition.name, definition.description
        );
        out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
        for declaration in declared {
            let default = match (&declaration.default, declaration.required) {
                (Some(default), _) => format!("`{}`", shown(default)),
                (None, true) => "required".to_string(),
                (None, false) => "unset".to_string(),
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                declaration.name,
                declaration.type_text().replace('|', "\\|"),
                default.replace('|', "\\|"),
                declaration.description.replace('|', "\\|")
            );
        }
        out.push('\n');
    }
    out
}
