//! The nodows data model and its layering.
//!
//! A model holds keys and values per service in three kinds of layers:
//! `defaults`, one `profile` per mode and one `server` per server id.
//! [`Model::effective`] layers them (defaults, then the profile, then the
//! server) into the [`Effective`] document that every template sees.
//!
//! Three sources give the same model: an XML file (see [`Model::from_xml`]),
//! an SQLite database (see [`Model::from_sqlite`], selected with
//! `sqlite:PATH` by [`Model::load`]) and PostgreSQL (`postgres://...`, the
//! fleet's store, see [`postgres`]). [`Model::save`] writes any of them.
//! The XML reader refuses any DTD, so external entities (XXE) cannot exist.

pub mod postgres;
mod sqlite;
mod xml;

pub use xml::write_atomically;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Everything that can go wrong while reading or layering a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read the model: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// One or more problems, each already formatted as `file:line: message`.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{source_name}: unknown profile `{name}` (the model has: {known}); add <profile name=\"{name}\"> or pick another mode")]
    UnknownProfile {
        source_name: String,
        name: String,
        known: String,
    },
    #[error("{source_name}: unknown server `{name}` (the model has: {known}); add <server id=\"{name}\"> or pick another server id")]
    UnknownServer {
        source_name: String,
        name: String,
        known: String,
    },
    #[error("{path}: sqlite: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{source_name}: postgres: {message}")]
    Postgres {
        source_name: String,
        message: String,
    },
}

/// Where a value or service came from, for messages: `file:line` for XML,
/// `sqlite:PATH: table setting rowid N` for SQLite.
pub type Location = String;

/// The keys of one service in one layer, and where each was set.
#[derive(Debug, Clone, Default)]
pub struct ServiceKeys {
    pub keys: BTreeMap<String, String>,
    /// Where each key of `keys` was set (for validation messages); a source
    /// that has no positions leaves it empty.
    pub locations: BTreeMap<String, Location>,
}

/// Two layers are equal when their keys and values are, wherever they came
/// from (an XML and an SQLite model of the same data compare equal).
impl PartialEq for ServiceKeys {
    fn eq(&self, other: &ServiceKeys) -> bool {
        self.keys == other.keys
    }
}

impl Eq for ServiceKeys {}

impl ServiceKeys {
    /// Sets `key` to `value`, set at `location`; false if the key was
    /// already set in this layer (the new value wins).
    pub fn set(&mut self, key: &str, value: String, location: Location) -> bool {
        self.locations.insert(key.to_string(), location);
        self.keys.insert(key.to_string(), value).is_none()
    }

    /// Where `key` was set, or `fallback` when the source has no position.
    pub fn location_of<'a>(&'a self, key: &str, fallback: &'a str) -> &'a str {
        self.locations.get(key).map_or(fallback, String::as_str)
    }
}

/// One layer: service name to its keys.
pub type Layer = BTreeMap<String, ServiceKeys>;

/// A parsed model: the layers as written, before layering.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// How the source is named in messages (the file path or `sqlite:PATH`).
    pub source_name: String,
    pub defaults: Layer,
    pub profiles: BTreeMap<String, Layer>,
    pub servers: BTreeMap<String, Layer>,
    /// Every place a service is named, in source order (for "no definition"
    /// checks by the renderer).
    pub service_mentions: Vec<(String, Location)>,
}

/// The effective document for one (server, profile): every service's keys
/// after layering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub server: Option<String>,
    pub profile: String,
    pub services: BTreeMap<String, BTreeMap<String, String>>,
}

impl Model {
    /// Reads `sqlite:PATH` as an SQLite database and anything else as an XML
    /// file.
    pub fn load(spec: &str) -> Result<Model, Error> {
        if postgres::is_postgres(spec) {
            return postgres::load(spec);
        }
        match spec.strip_prefix("sqlite:") {
            Some(path) => Model::from_sqlite(Path::new(path)),
            None => {
                let text = std::fs::read_to_string(spec).map_err(|source| Error::Io {
                    path: spec.to_string(),
                    source,
                })?;
                Model::from_xml(&text, spec)
            }
        }
    }

    /// Parses the XML form; `source_name` is used in messages.
    pub fn from_xml(text: &str, source_name: &str) -> Result<Model, Error> {
        xml::parse(text, source_name)
    }

    /// Reads the SQLite form (read-only).
    pub fn from_sqlite(path: &Path) -> Result<Model, Error> {
        sqlite::read(path)
    }

    /// Writes the model to `spec` (an XML file, `sqlite:PATH` or
    /// `postgres://...`), replacing what is there: files atomically (a
    /// temporary file renamed over the target), PostgreSQL in one
    /// transaction that makes one revision (with `note`).
    pub fn save(&self, spec: &str, note: &str) -> Result<(), Error> {
        if postgres::is_postgres(spec) {
            let mut client = postgres::connect(spec)?;
            return postgres::write(&mut client, &postgres::display_name(spec), self, note)
                .map(|_| ());
        }
        match spec.strip_prefix("sqlite:") {
            Some(path) => sqlite::write(Path::new(path), self),
            None => xml::write(Path::new(spec), self),
        }
    }

    /// The XML form of the model (what [`Model::from_xml`] reads).
    pub fn to_model_xml(&self) -> String {
        xml::to_text(self)
    }

    /// Layers defaults, then `profile`, then `server` (if given).
    pub fn effective(&self, server: Option<&str>, profile: &str) -> Result<Effective, Error> {
        let profile_layer = self
            .profiles
            .get(profile)
            .ok_or_else(|| Error::UnknownProfile {
                source_name: self.source_name.clone(),
                name: profile.to_string(),
                known: known(self.profiles.keys()),
            })?;
        let server_layer = match server {
            None => None,
            Some(id) => Some(self.servers.get(id).ok_or_else(|| Error::UnknownServer {
                source_name: self.source_name.clone(),
                name: id.to_string(),
                known: known(self.servers.keys()),
            })?),
        };
        let mut services: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for layer in [Some(&self.defaults), Some(profile_layer), server_layer]
            .into_iter()
            .flatten()
        {
            for (service, service_keys) in layer {
                let keys = services.entry(service.clone()).or_default();
                for (key, value) in &service_keys.keys {
                    keys.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(Effective {
            server: server.map(str::to_string),
            profile: profile.to_string(),
            services,
        })
    }
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl Effective {
    /// The effective document as XML, the input of every template:
    ///
    /// ```xml
    /// <model server="web01" profile="dev">
    ///   <service name="web">
    ///     <key name="port">8080</key>
    ///   </service>
    /// </model>
    /// ```
    ///
    /// Services and keys are sorted by name; `server` is absent when no
    /// server was selected.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(64 + self.services.len() * 64);
        out.push_str("<model");
        if let Some(server) = &self.server {
            let _ = write!(out, " server=\"{}\"", escape(server));
        }
        let _ = writeln!(out, " profile=\"{}\">", escape(&self.profile));
        for (service, keys) in &self.services {
            let _ = writeln!(out, "  <service name=\"{}\">", escape(service));
            for (key, value) in keys {
                let _ = writeln!(
                    out,
                    "    <key name=\"{}\">{}</key>",
                    escape(key),
                    escape(value)
                );
            }
            out.push_str("  </service>\n");
        }
        out.push_str("</model>\n");
        out
    }
}

/// Escapes text for element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
