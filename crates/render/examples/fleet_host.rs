//! The host's side of the end-to-end fleet tests (xtask/src/test/e2e.rs,
//! e2e/fleet.rs): a real PostgreSQL 15 (`pgtest`) with the schema, the demo
//! model and one appliance role per server, driven over stdin so that the
//! xtask needs no database client of its own.
//!
//! `fleet_host DIR SERVER... [--passfile PATH]` makes role
//! `nodows_e2e_SERVER` for each server (its password from the pgpass file's
//! line for that role, else a new one), adds each server to the model
//! (a server it does not have with web's title `fleet appliance SERVER`), and
//! prints `port N`, `database NAME`, per server `role SERVER NAME` and,
//! for a new password only, `password SERVER PW`, then `ready`; then it
//! reads commands, one per line, and answers each with one line:
//! - `sql STATEMENT` runs it as the superuser: `ok REVISION` (the current
//!   revision afterwards) or `error MESSAGE`;
//! - `query STATEMENT`: `value TEXT`, the first column of the first row
//!   (cast it to text), or `error MESSAGE`;
//! - `status SERVER` prints its status row: `status REVISION RESULT ERROR`
//!   or `status none`;
//! - `halt` stops PostgreSQL (its data kept), `resume` starts it again on
//!   the same port: `ok` or `error MESSAGE`.
//!
//! End of input stops the server and removes DIR.

use model::postgres as pg;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let passfile = match args.iter().position(|arg| arg == "--passfile") {
        Some(at) if at + 1 < args.len() => {
            let path = PathBuf::from(args.remove(at + 1));
            args.remove(at);
            Some(path)
        }
        _ => None,
    };
    if args.len() < 2 {
        eprintln!("usage: fleet_host DIR SERVER... [--passfile PATH]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[0]);
    let servers = args[1..].to_vec();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = pgtest::Cluster::start(&dir.join("pgtest")).unwrap_or_else(|e| {
        eprintln!("fleet_host: {e}");
        std::process::exit(1);
    });
    let database = cluster.database("fleet");
    let url = cluster.superuser_url(&database);
    let mut admin = pg::connect(&url).unwrap();
    pg::migrate(&mut admin, "fleet").unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = model::Model::load(repo.join("models/default.xml").to_str().unwrap()).unwrap();
    pg::write(&mut admin, "fleet", &model, "e2e: the demo model").unwrap();
    let known = passfile
        .as_deref()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "port {}", cluster.port).unwrap();
    writeln!(out, "database {database}").unwrap();
    for server in &servers {
        let role = format!(
            "nodows_e2e_{}",
            server.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let given = known.lines().find_map(|line| {
            let fields: Vec<&str> = line.splitn(5, ':').collect();
            (fields.len() == 5 && fields[3] == role).then(|| fields[4].to_string())
        });
        let password = given
            .clone()
            .unwrap_or_else(|| format!("e2e{}", std::process::id()));
        let known_server = admin
            .query_opt("SELECT 1 FROM nodows.server WHERE id = $1", &[server])
            .unwrap()
            .is_some();
        if !known_server {
            admin
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO nodows.server (id) VALUES ('{server}');
                     INSERT INTO nodows.value (server, service, key, value)
                     VALUES ('{server}', 'web', 'title', 'fleet appliance {server}');
                     COMMIT;"
                ))
                .unwrap();
        }
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE nodows_appliance;
                 INSERT INTO nodows.appliance (server, role, profiles)
                 VALUES ('{server}', '{role}', '{{dev,test,production,failover}}');"
            ))
            .unwrap();
        writeln!(out, "role {server} {role}").unwrap();
        if given.is_none() {
            writeln!(out, "password {server} {password}").unwrap();
        }
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.split_once(' ') {
            Some(("sql", statement)) => match admin.batch_execute(statement) {
                Ok(()) => format!(
                    "ok {}",
                    pg::current_revision(&mut admin, "fleet").unwrap_or(-1)
                ),
                Err(e) => format!("error {}", pg::describe(&e).replace('\n', " ")),
            },
            Some(("query", statement)) => match admin.query(statement, &[]) {
                Ok(rows) => format!(
                    "value {}",
                    rows.first()
                        .and_then(|row| row.get::<_, Option<String>>(0))
                        .unwrap_or_default()
                ),
                Err(e) => format!("error {}", pg::describe(&e).replace('\n', " ")),
            },
            Some(("status", server)) => match admin
                .query_opt(
                    "SELECT revision, result, error FROM nodows.status WHERE server = $1",
                    &[&server],
                )
                .unwrap()
            {
                Some(row) => format!(
                    "status {} {} {}",
                    row.get::<_, i64>(0),
                    row.get::<_, String>(1),
                    row.get::<_, String>(2).replace('\n', " ")
                ),
                None => "status none".to_string(),
            },
            _ if line == "halt" => {
                cluster.halt();
                "ok".to_string()
            }
            _ if line == "resume" => match cluster.resume() {
                Ok(()) => match pg::connect(&url) {
                    Ok(client) => {
                        admin = client;
                        "ok".to_string()
                    }
                    Err(e) => format!("error {e}"),
                },
                Err(e) => format!("error {}", e.replace('\n', " ")),
            },
            _ => format!("error unknown command: {line}"),
        };
        writeln!(out, "{answer}").unwrap();
        out.flush().unwrap();
    }
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
