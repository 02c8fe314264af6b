//! The host's side of the end-to-end fleet test (xtask/src/test/e2e.rs):
//! a real PostgreSQL 15 (`pgtest`) with the schema, the demo model and one
//! appliance role, driven over stdin so that the xtask needs no database
//! client of its own.
//!
//! `fleet_host SERVER DIR` prints `port N`, `role NAME`, `password PW` and
//! `ready`, then reads commands, one per line, and answers each with one
//! line:
//! - `sql STATEMENT` runs it as the superuser: `ok REVISION` (the current
//!   revision afterwards) or `error MESSAGE`;
//! - `status` prints the appliance's status row: `status REVISION RESULT`
//!   or `status none`.
//!
//! End of input stops the server and removes DIR.

use model::postgres as pg;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(server), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: fleet_host SERVER DIR");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = pgtest::Cluster::start(&dir.join("pgtest")).unwrap_or_else(|e| {
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
    let role = format!(
        "{database}_{}",
        server.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let password = format!("e2e{}", std::process::id());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE nodows_appliance;
             INSERT INTO nodows.appliance (server, role, profiles)
             VALUES ('{server}', '{role}', '{{dev,test,production,failover}}');"
        ))
        .unwrap();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "port {}", cluster.port).unwrap();
    writeln!(out, "database {database}").unwrap();
    writeln!(out, "role {role}").unwrap();
    writeln!(out, "password {password}").unwrap();
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
            _ if line == "status" => match admin
                .query_opt(
                    "SELECT revision, result FROM nodows.status WHERE server = $1",
                    &[&server],
                )
                .unwrap()
            {
                Some(row) => format!(
                    "status {} {}",
                    row.get::<_, i64>(0),
                    row.get::<_, String>(1)
                ),
                None => "status none".to_string(),
            },
            _ => format!("error unknown command: {line}"),
        };
        writeln!(out, "{answer}").unwrap();
        out.flush().unwrap();
    }
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
