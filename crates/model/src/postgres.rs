//! The PostgreSQL form of the model (`postgres://...`), the fleet's store.
//!
//! The schema is `sql/001-model.sql` (the model, revisions, status rows)
//! and `sql/002-access.sql` (one role per appliance, row-level security);
//! [`migrate`] applies what is missing. Layers are those of the XML form:
//! a row of `nodows.value` with `server` and `profile` NULL is a default,
//! with `profile` set a profile's, with `server` set a server's.
//!
//! Connection strings are libpq URLs; besides what the `postgres` crate
//! reads, three libpq parameters are understood here: `sslmode`
//! (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (the pinned CA for the last two) and `passfile` (a
//! pgpass file, `host:port:database:user:password`, mode 0600, so that no
//! password is written in the URL, the image or a log).

use crate::{Error, Layer, Model};
pub use ::postgres::fallible_iterator::FallibleIterator;
pub use ::postgres::Client;
use ::postgres::{Config, IsolationLevel, NoTls};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

/// The schema's migrations, in order: (version, SQL). Each file inserts its
/// own version into `nodows.migration`.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../sql/001-model.sql")),
    (2, include_str!("../sql/002-access.sql")),
];

/// The channel the schema's trigger NOTIFYs, with a server id or `all`.
pub const CHANNEL: &str = "nodows_model";

/// Whether `spec` names a PostgreSQL model.
pub fn is_postgres(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

/// `spec` without its password and query, for messages.
pub fn display_name(spec: &str) -> String {
    let without_query = spec.split('?').next().unwrap_or(spec);
    match (without_query.find("://"), without_query.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &without_query[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!(
                "{}{}@{}",
                &without_query[..scheme_end + 3],
                user,
                &without_query[at + 1..]
            )
        }
        _ => without_query.to_string(),
    }
}

fn postgres_error(source_name: &str, error: &::postgres::Error) -> Error {
    Error::Postgres {
        source_name: source_name.to_string(),
        message: describe(error),
    }
}

/// A PostgreSQL error as one line: the server's message, detail and hint
/// with its SQLSTATE, or the client's.
pub fn describe(error: &::postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            if let Some(table) = db.table() {
                text.push_str(&format!("; table {table}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

/// How to connect: the `postgres` crate's config plus TLS settings.
struct Target {
    config: Config,
    ssl_mode: String,
    root_certificate: Option<String>,
}

fn parse_target(spec: &str) -> Result<Target, Error> {
    let source_name = display_name(spec);
    let bad = |message: String| Error::Postgres {
        source_name: source_name.clone(),
        message,
    };
    let (base, query) = match spec.split_once('?') {
        Some((base, query)) => (base, query),
        None => (spec, ""),
    };
    let mut kept = Vec::new();
    let mut ssl_mode = "prefer".to_string();
    let mut root_certificate = None;
    let mut passfile = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sslmode" => ssl_mode = value.to_string(),
            "sslrootcert" => root_certificate = Some(value.to_string()),
            "passfile" => passfile = Some(value.to_string()),
            _ => kept.push(pair),
        }
    }
    if !["disable", "prefer", "require", "verify-ca", "verify-full"].contains(&ssl_mode.as_str()) {
        return Err(bad(format!(
            "sslmode={ssl_mode} is not known; use disable, prefer, require, verify-ca or verify-full"
        )));
    }
    if ssl_mode.starts_with("verify") && root_certificate.is_none() {
        return Err(bad(format!(
            "sslmode={ssl_mode} needs sslrootcert=PATH, the CA certificate to pin"
        )));
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = Config::from_str(&rest).map_err(|e| {
        bad(format!(
            "not a connection URL ({e}); write postgres://ROLE@HOST:PORT/DATABASE"
        ))
    })?;
    config.connect_timeout(std::time::Duration::from_secs(10));
    config.keepalives_idle(std::time::Duration::from_secs(30));
    if config.get_password().is_none() {
        if let Some(passfile) = passfile {
            let password = read_passfile(Path::new(&passfile), &config)
                .map_err(|message| bad(format!("passfile {passfile}: {message}")))?;
            config.password(password);
        }
    }
    Ok(Target {
        config,
        ssl_mode,
        root_certificate,
    })
}

/// The password for `config`'s host, port, database and user from a pgpass
/// file (libpq's format; `*` matches anything, `\` escapes `:` and `\`).
fn read_passfile(path: &Path, config: &Config) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err("is readable by group or others; chmod 600 it".to_string());
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let host = match config.get_hosts().first() {
        Some(::postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("")
        .to_string();
    let user = config.get_user().unwrap_or("").to_string();
    let wanted = [host, port, database, user];
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = Vec::new();
        let mut current = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        current.push(next);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        fields.push(current);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(&wanted)
                .all(|(field, want)| field == "*" || field == want)
        {
            return Ok(fields[4].clone());
        }
    }
    Err(format!(
        "no line matches {}:{}:{}:{}",
        wanted[0], wanted[1], wanted[2], wanted[3]
    ))
}

/// Connects to the database named by `spec` (a libpq URL, see the module).
pub fn connect(spec: &str) -> Result<Client, Error> {
    let source_name = display_name(spec);
    let mut target = parse_target(spec)?;
    let tls_error = |message: String| Error::Postgres {
        source_name: source_name.clone(),
        message,
    };
    let result = match target.ssl_mode.as_str() {
        "disable" => target.config.connect(NoTls),
        mode => {
            use ::postgres::config::SslMode;
            use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
            let mut builder = SslConnector::builder(SslMethod::tls_client())
                .map_err(|e| tls_error(format!("cannot set up TLS: {e}")))?;
            match &target.root_certificate {
                Some(ca) if mode.starts_with("verify") => builder
                    .set_ca_file(ca)
                    .map_err(|e| tls_error(format!("sslrootcert {ca}: cannot read it: {e}")))?,
                _ => builder.set_verify(SslVerifyMode::NONE),
            }
            let mut connector = postgres_openssl::MakeTlsConnector::new(builder.build());
            if mode != "verify-full" {
                connector.set_callback(|configuration, _| {
                    configuration.set_verify_hostname(false);
                    Ok(())
                });
            }
            target.config.ssl_mode(if mode == "prefer" {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            target.config.connect(connector)
        }
    };
    result.map_err(|e| postgres_error(&source_name, &e))
}

/// Applies the migrations the database lacks, each in one transaction;
/// returns the versions applied.
pub fn migrate(client: &mut Client, source_name: &str) -> Result<Vec<i32>, Error> {
    let sql_error = |e: ::postgres::Error| postgres_error(source_name, &e);
    let exists: bool = client
        .query_one("SELECT to_regclass('nodows.migration') IS NOT NULL", &[])
        .map_err(sql_error)?
        .get(0);
    let applied: BTreeSet<i32> = if exists {
        client
            .query("SELECT version FROM nodows.migration", &[])
            .map_err(sql_error)?
            .iter()
            .map(|row| row.get(0))
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut done = Vec::new();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let mut transaction = client.transaction().map_err(sql_error)?;
        transaction
            .batch_execute(sql)
            .map_err(|e| Error::Postgres {
                source_name: source_name.to_string(),
                message: format!("migration {version}: {}", describe(&e)),
            })?;
        transaction.commit().map_err(sql_error)?;
        done.push(*version);
    }
    Ok(done)
}

/// Reads `postgres://...` (see [`crate::Model::load`]).
pub(crate) fn load(spec: &str) -> Result<Model, Error> {
    let mut client = connect(spec)?;
    read(&mut client, &display_name(spec)).map(|(model, _)| model)
}

/// Reads the model and its revision in one consistent snapshot (a
/// repeatable-read, read-only transaction). An appliance's role sees the
/// defaults, its profiles and its own server only (row-level security).
pub fn read(client: &mut Client, source_name: &str) -> Result<(Model, i64), Error> {
    let sql_error = |e: ::postgres::Error| postgres_error(source_name, &e);
    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(sql_error)?;
    let revision: i64 = transaction
        .query_one("SELECT nodows.current_revision()", &[])
        .map_err(sql_error)?
        .get(0);
    let mut model = Model {
        source_name: source_name.to_string(),
        ..Model::default()
    };
    for row in transaction
        .query("SELECT name FROM nodows.profile ORDER BY name", &[])
        .map_err(sql_error)?
    {
        model.profiles.insert(row.get(0), Layer::new());
    }
    for row in transaction
        .query("SELECT id FROM nodows.server ORDER BY id", &[])
        .map_err(sql_error)?
    {
        model.servers.insert(row.get(0), Layer::new());
    }
    let rows = transaction
        .query(
            "SELECT id, server, profile, service, key, value FROM nodows.value ORDER BY id",
            &[],
        )
        .map_err(sql_error)?;
    let mut problems = Vec::new();
    for row in rows {
        let id: i64 = row.get(0);
        let server: Option<String> = row.get(1);
        let profile: Option<String> = row.get(2);
        let service: String = row.get(3);
        let key: String = row.get(4);
        let value: String = row.get(5);
        let here = format!("{source_name}: table value, row id {id}");
        // The schema's constraints make both impossible; a role that sees
        // a value but not its layer's row is a broken policy.
        let layer = match (&server, &profile) {
            (None, None) => &mut model.defaults,
            (Some(id), None) => match model.servers.get_mut(id) {
                Some(layer) => layer,
                None => {
                    problems.push(format!("{here}: server `{id}` is not visible in table server; check the row-level security policies"));
                    continue;
                }
            },
            (None, Some(name)) => match model.profiles.get_mut(name) {
                Some(layer) => layer,
                None => {
                    problems.push(format!("{here}: profile `{name}` is not visible in table profile; check the row-level security policies"));
                    continue;
                }
            },
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{here}: both server and profile are set; the constraint value_in_one_layer is missing, run nodows model migrate"
                ));
                continue;
            }
        };
        model.service_mentions.push((service.clone(), here));
        layer.entry(service).or_default().keys.insert(key, value);
    }
    transaction.commit().map_err(sql_error)?;
    if problems.is_empty() {
        Ok((model, revision))
    } else {
        Err(Error::Invalid(problems))
    }
}

/// The newest revision's id (0 before the first).
pub fn current_revision(client: &mut Client, source_name: &str) -> Result<i64, Error> {
    client
        .query_one("SELECT nodows.current_revision()", &[])
        .map(|row| row.get(0))
        .map_err(|e| postgres_error(source_name, &e))
}

/// Makes the database hold exactly `model`, in one transaction that
/// changes only the rows that differ (so the trigger notifies only the
/// affected servers). Returns the new revision, or `None` when nothing
/// changed. `note` is recorded in the revision.
///
/// A service named in a layer without any key has no row to live in and is
/// not written.
pub fn write(
    client: &mut Client,
    source_name: &str,
    model: &Model,
    note: &str,
) -> Result<Option<i64>, Error> {
    let sql_error = |e: ::postgres::Error| postgres_error(source_name, &e);
    let mut transaction = client.transaction().map_err(sql_error)?;
    transaction
        .execute("SELECT set_config('nodows.note', $1, true)", &[&note])
        .map_err(sql_error)?;
    let txid: String = transaction
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .map_err(sql_error)?
        .get(0);

    // Profiles and servers: add the missing, remove the extra (their
    // values go with them).
    for (table, column, wanted) in [
        (
            "profile",
            "name",
            model.profiles.keys().cloned().collect::<Vec<String>>(),
        ),
        (
            "server",
            "id",
            model.servers.keys().cloned().collect::<Vec<String>>(),
        ),
    ] {
        transaction
            .execute(
                &format!("DELETE FROM nodows.{table} WHERE NOT ({column} = ANY($1))"),
                &[&wanted],
            )
            .map_err(sql_error)?;
        transaction
            .execute(
                &format!(
                    "INSERT INTO nodows.{table} ({column}) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
                ),
                &[&wanted],
            )
            .map_err(sql_error)?;
    }

    // Every (layer, service, key) wanted, with its value.
    type Place = (Option<String>, Option<String>, String, String);
    let mut wanted: BTreeMap<Place, String> = BTreeMap::new();
    let mut add_layer = |server: Option<&String>, profile: Option<&String>, layer: &Layer| {
        for (service, keys) in layer {
            for (key, value) in &keys.keys {
                wanted.insert(
                    (
                        server.cloned(),
                        profile.cloned(),
                        service.clone(),
                        key.clone(),
                    ),
                    value.clone(),
                );
            }
        }
    };
    add_layer(None, None, &model.defaults);
    for (name, layer) in &model.profiles {
        add_layer(None, Some(name), layer);
    }
    for (id, layer) in &model.servers {
        add_layer(Some(id), None, layer);
    }
    let services: Vec<String> = wanted
        .keys()
        .map(|(_, _, service, _)| service.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    transaction
        .execute(
            "INSERT INTO nodows.service (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            &[&services],
        )
        .map_err(sql_error)?;

    let mut updates: (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
    let mut deletes: Vec<i64> = Vec::new();
    for row in transaction
        .query(
            "SELECT id, server, profile, service, key, value FROM nodows.value",
            &[],
        )
        .map_err(sql_error)?
    {
        let place: Place = (row.get(1), row.get(2), row.get(3), row.get(4));
        let value: String = row.get(5);
        match wanted.remove(&place) {
            Some(new) if new == value => {}
            Some(new) => {
                updates.0.push(row.get(0));
                updates.1.push(new);
            }
            None => deletes.push(row.get(0)),
        }
    }
    transaction
        .execute("DELETE FROM nodows.value WHERE id = ANY($1)", &[&deletes])
        .map_err(sql_error)?;
    transaction
        .execute(
            "UPDATE nodows.value v SET value = u.value FROM unnest($1::bigint[], $2::text[]) AS u(id, value) WHERE v.id = u.id",
            &[&updates.0, &updates.1],
        )
        .map_err(sql_error)?;
    type Columns = (
        Vec<Option<String>>,
        Vec<Option<String>>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
    );
    let mut inserts: Columns = Default::default();
    for ((server, profile, service, key), value) in wanted {
        inserts.0.push(server);
        inserts.1.push(profile);
        inserts.2.push(service);
        inserts.3.push(key);
        inserts.4.push(value);
    }
    transaction
        .execute(
            "INSERT INTO nodows.value (server, profile, service, key, value) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])",
            &[&inserts.0, &inserts.1, &inserts.2, &inserts.3, &inserts.4],
        )
        .map_err(sql_error)?;
    transaction.commit().map_err(sql_error)?;
    let revision = client
        .query_opt(
            "SELECT id FROM nodows.revision WHERE txid = $1::text::xid8",
            &[&txid],
        )
        .map_err(sql_error)?
        .map(|row| row.get(0));
    Ok(revision)
}

/// One revision of the model.
#[derive(Debug, Clone)]
pub struct Revision {
    pub id: i64,
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub at: String,
    pub author: String,
    pub note: String,
    /// Server ids whose effective model changed, or `all`.
    pub affected: Vec<String>,
    pub model: Model,
}

const REVISION_COLUMNS: &str = "id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', author, note, affected, model::text";

fn revision_from_row(row: &::postgres::Row, source_name: &str) -> Result<Revision, Error> {
    let id: i64 = row.get(0);
    let json: String = row.get(5);
    Ok(Revision {
        id,
        at: row.get(1),
        author: row.get(2),
        note: row.get(3),
        affected: row.get(4),
        model: model_from_json(&json, &format!("{source_name}: revision {id}"))?,
    })
}

/// The newest `limit` revisions, newest first, plus the one before the
/// oldest of them (to diff against) when there is one.
pub fn history(client: &mut Client, source_name: &str, limit: i64) -> Result<Vec<Revision>, Error> {
    let rows = client
        .query(
            &format!("SELECT {REVISION_COLUMNS} FROM nodows.revision ORDER BY id DESC LIMIT $1"),
            &[&(limit + 1)],
        )
        .map_err(|e| postgres_error(source_name, &e))?;
    rows.iter()
        .map(|row| revision_from_row(row, source_name))
        .collect()
}

/// One revision by id.
pub fn revision(client: &mut Client, source_name: &str, id: i64) -> Result<Revision, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {REVISION_COLUMNS} FROM nodows.revision WHERE id = $1"),
            &[&id],
        )
        .map_err(|e| postgres_error(source_name, &e))?
        .ok_or_else(|| Error::Postgres {
            source_name: source_name.to_string(),
            message: format!("there is no revision {id}; `nodows model history` lists them"),
        })?;
    revision_from_row(&row, source_name)
}

/// Makes revision `id`'s model current again, as a new revision (the fleet
/// converges forward). Returns the new revision, `None` when the model
/// already equals it.
pub fn revert(client: &mut Client, source_name: &str, id: i64) -> Result<Option<i64>, Error> {
    let old = revision(client, source_name, id)?;
    write(client, source_name, &old.model, &format!("revert to {id}"))
}

/// A revision's model from its JSON snapshot.
fn model_from_json(json: &str, source_name: &str) -> Result<Model, Error> {
    type Layers = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;
    #[derive(serde::Deserialize)]
    struct Snapshot {
        defaults: BTreeMap<String, BTreeMap<String, String>>,
        profiles: Layers,
        servers: Layers,
    }
    let snapshot: Snapshot = serde_json::from_str(json).map_err(|e| Error::Postgres {
        source_name: source_name.to_string(),
        message: format!("the revision's model is not in the schema's JSON form: {e}"),
    })?;
    let layer = |services: BTreeMap<String, BTreeMap<String, String>>| -> Layer {
        services
            .into_iter()
            .map(|(service, keys)| {
                (
                    service,
                    crate::ServiceKeys {
                        keys,
                        locations: BTreeMap::new(),
                    },
                )
            })
            .collect()
    };
    Ok(Model {
        source_name: source_name.to_string(),
        defaults: layer(snapshot.defaults),
        profiles: snapshot
            .profiles
            .into_iter()
            .map(|(name, services)| (name, layer(services)))
            .collect(),
        servers: snapshot
            .servers
            .into_iter()
            .map(|(id, services)| (id, layer(services)))
            .collect(),
        service_mentions: Vec::new(),
    })
}

/// One line per difference from `old` to `new`: `+ ` added, `- ` removed,
/// `~ ` changed, e.g. `~ server web01: web.port: 80 -> 8080`.
pub fn diff(old: &Model, new: &Model) -> Vec<String> {
    let mut lines = Vec::new();
    for (kind, old_names, new_names) in [
        (
            "profile",
            old.profiles.keys().collect::<BTreeSet<_>>(),
            new.profiles.keys().collect::<BTreeSet<_>>(),
        ),
        (
            "server",
            old.servers.keys().collect::<BTreeSet<_>>(),
            new.servers.keys().collect::<BTreeSet<_>>(),
        ),
    ] {
        for name in old_names.difference(&new_names) {
            lines.push(format!("- {kind} {name}"));
        }
        for name in new_names.difference(&old_names) {
            lines.push(format!("+ {kind} {name}"));
        }
    }
    let empty = Layer::new();
    let mut layers: Vec<(String, &Layer, &Layer)> =
        vec![("defaults".to_string(), &old.defaults, &new.defaults)];
    let profiles: BTreeSet<&String> = old.profiles.keys().chain(new.profiles.keys()).collect();
    for name in profiles {
        layers.push((
            format!("profile {name}"),
            old.profiles.get(name).unwrap_or(&empty),
            new.profiles.get(name).unwrap_or(&empty),
        ));
    }
    let servers: BTreeSet<&String> = old.servers.keys().chain(new.servers.keys()).collect();
    for id in servers {
        layers.push((
            format!("server {id}"),
            old.servers.get(id).unwrap_or(&empty),
            new.servers.get(id).unwrap_or(&empty),
        ));
    }
    for (label, old_layer, new_layer) in layers {
        let flatten = |layer: &Layer| -> BTreeMap<(String, String), String> {
            layer
                .iter()
                .flat_map(|(service, keys)| {
                    keys.keys
                        .iter()
                        .map(move |(key, value)| ((service.clone(), key.clone()), value.clone()))
                })
                .collect()
        };
        let (old_values, new_values) = (flatten(old_layer), flatten(new_layer));
        for ((service, key), value) in &old_values {
            match new_values.get(&(service.clone(), key.clone())) {
                None => lines.push(format!("- {label}: {service}.{key} = {value:?}")),
                Some(new_value) if new_value != value => lines.push(format!(
                    "~ {label}: {service}.{key}: {value:?} -> {new_value:?}"
                )),
                Some(_) => {}
            }
        }
        for ((service, key), value) in &new_values {
            if !old_values.contains_key(&(service.clone(), key.clone())) {
                lines.push(format!("+ {label}: {service}.{key} = {value:?}"));
            }
        }
    }
    lines
}

/// What an appliance reports in its status row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rendered and the services reloaded.
    Applied,
    /// The model did not validate or render; the running configuration
    /// was kept.
    Refused,
    /// The render command failed on the appliance.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// Writes `server`'s status row (one row per appliance, replaced).
pub fn write_status(
    client: &mut Client,
    source_name: &str,
    server: &str,
    revision: i64,
    outcome: Outcome,
    error: &str,
    running_revision: Option<i64>,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO nodows.status (server, revision, result, error, running_revision, at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (server) DO UPDATE SET revision = EXCLUDED.revision,
                 result = EXCLUDED.result, error = EXCLUDED.error,
                 running_revision = EXCLUDED.running_revision, at = EXCLUDED.at",
            &[
                &server,
                &revision,
                &outcome.as_str(),
                &error,
                &running_revision,
            ],
        )
        .map(|_| ())
        .map_err(|e| postgres_error(source_name, &e))
}
