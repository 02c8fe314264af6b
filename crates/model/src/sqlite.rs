//! The SQLite form of the model (`sqlite:PATH`).
//!
//! ```sql
//! CREATE TABLE profile (name TEXT PRIMARY KEY NOT NULL);
//! CREATE TABLE server  (id   TEXT PRIMARY KEY NOT NULL);
//! CREATE TABLE setting (
//!     server  TEXT,           -- NULL, or the server id of a server layer
//!     profile TEXT,           -- NULL, or the profile name of a profile layer
//!     service TEXT NOT NULL,
//!     key     TEXT NOT NULL,
//!     value   TEXT NOT NULL
//! );
//! ```
//!
//! A row with both `server` and `profile` NULL is a default; at most one of
//! them may be set.

use crate::{Error, Model};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

pub(crate) fn read(path: &Path) -> Result<Model, Error> {
    let source_name = format!("sqlite:{}", path.display());
    let sql_error = |source| Error::Sqlite {
        path: source_name.clone(),
        source,
    };
    if !path.is_file() {
        return Err(Error::Io {
            path: source_name.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such database file"),
        });
    }
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_error)?;
    let mut model = Model {
        source_name: source_name.clone(),
        ..Model::default()
    };
    let mut problems = Vec::new();

    let mut statement = connection
        .prepare("SELECT name FROM profile ORDER BY name")
        .map_err(sql_error)?;
    let names = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(sql_error)?;
    for name in names {
        model
            .profiles
            .insert(name.map_err(sql_error)?, Default::default());
    }
    let mut statement = connection
        .prepare("SELECT id FROM server ORDER BY id")
        .map_err(sql_error)?;
    let ids = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(sql_error)?;
    for id in ids {
        model
            .servers
            .insert(id.map_err(sql_error)?, Default::default());
    }

    let mut statement = connection
        .prepare("SELECT rowid, server, profile, service, key, value FROM setting ORDER BY rowid")
        .map_err(sql_error)?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
            ))
        })
        .map_err(sql_error)?;
    for row in rows {
        let (rowid, server, profile, service, key, value) = row.map_err(sql_error)?;
        let here = format!("{source_name}: table setting rowid {rowid}");
        let layer = match (&server, &profile) {
            (None, None) => &mut model.defaults,
            (Some(id), None) => match model.servers.get_mut(id) {
                Some(layer) => layer,
                None => {
                    problems.push(format!(
                        "{here}: server `{id}` is not in table server; insert it there"
                    ));
                    continue;
                }
            },
            (None, Some(name)) => match model.profiles.get_mut(name) {
                Some(layer) => layer,
                None => {
                    problems.push(format!(
                        "{here}: profile `{name}` is not in table profile; insert it there"
                    ));
                    continue;
                }
            },
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{here}: both server and profile are set; a setting belongs to one layer, leave one NULL"
                ));
                continue;
            }
        };
        if service.trim().is_empty() || key.trim().is_empty() {
            problems.push(format!("{here}: service and key must not be empty"));
            continue;
        }
        model.service_mentions.push((service.clone(), here.clone()));
        let service_keys = layer.entry(service.clone()).or_default();
        if !service_keys.set(&key, value, here.clone()) {
            problems.push(format!(
                "{here}: key `{key}` of service `{service}` is set twice in the same layer; keep one"
            ));
        }
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// Writes `model` as a new SQLite database at `path`: built in a temporary
/// file beside it, then renamed over it.
pub(crate) fn write(path: &Path, model: &Model) -> Result<(), Error> {
    let source_name = format!("sqlite:{}", path.display());
    let sql_error = |source| Error::Sqlite {
        path: source_name.clone(),
        source,
    };
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(path.file_name().unwrap_or_default());
    temporary_name.push(".nodows-tmp");
    let temporary = path.with_file_name(temporary_name);
    let _ = std::fs::remove_file(&temporary);
    let result = (|| {
        let mut connection = Connection::open(&temporary).map_err(sql_error)?;
        let transaction = connection.transaction().map_err(sql_error)?;
        transaction
            .execute_batch(
                "CREATE TABLE profile (name TEXT PRIMARY KEY NOT NULL);
                 CREATE TABLE server (id TEXT PRIMARY KEY NOT NULL);
                 CREATE TABLE setting (server TEXT, profile TEXT, service TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);",
            )
            .map_err(sql_error)?;
        for name in model.profiles.keys() {
            transaction
                .execute("INSERT INTO profile (name) VALUES (?1)", [name])
                .map_err(sql_error)?;
        }
        for id in model.servers.keys() {
            transaction
                .execute("INSERT INTO server (id) VALUES (?1)", [id])
                .map_err(sql_error)?;
        }
        {
            let mut insert = transaction
                .prepare("INSERT INTO setting (server, profile, service, key, value) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(sql_error)?;
            let mut layers: Vec<(Option<&String>, Option<&String>, &crate::Layer)> =
                vec![(None, None, &model.defaults)];
            layers.extend(
                model
                    .profiles
                    .iter()
                    .map(|(name, layer)| (None, Some(name), layer)),
            );
            layers.extend(
                model
                    .servers
                    .iter()
                    .map(|(id, layer)| (Some(id), None, layer)),
            );
            for (server, profile, layer) in layers {
                for (service, keys) in layer {
                    for (key, value) in &keys.keys {
                        insert
                            .execute(rusqlite::params![server, profile, service, key, value])
                            .map_err(sql_error)?;
                    }
                }
            }
        }
        transaction.commit().map_err(sql_error)?;
        drop(connection);
        std::fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|source| Error::Io {
                path: source_name.clone(),
                source,
            })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
