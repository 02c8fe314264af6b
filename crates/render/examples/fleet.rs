//! The fleet's figures on the host, against a real PostgreSQL 15 started
//! for the run (`pgtest`):
//!
//! 1. commit-to-applied latency of one appliance (`nodows watch` with a
//!    real `nodows render` as its command), median and p95 of 20 changes;
//! 2. convergence of N simulated appliances (N watcher processes, each with
//!    its own role, passfile and root) on one defaults change: the time
//!    until the last status row shows the new revision, and the database's
//!    CPU time for that change;
//! 3. rendering one server of a model of 1,000 servers x 10 values from
//!    XML, from PostgreSQL as the superuser, and from PostgreSQL with the
//!    appliance's role (row-level security: only its rows travel).
//!
//! `cargo build --release -p render && cargo run --release -p render --example fleet [N [DIR]]`
//! (N defaults to 200, the scratch directory DIR to `target/tmp/fleet-bench`;
//! the cluster lives in DIR/pgtest). Figures go to stdout as `name value unit` lines, and
//! every sample as `samples name v1,v2,...` (`cargo xtask bench` reads them).

#[path = "support/etcd.rs"]
mod etcd;

use model::postgres as pg;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn nodows() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/fleet -> target/release/nodows
    let path = exe.parent().unwrap().parent().unwrap().join("nodows");
    assert!(
        path.is_file(),
        "{}: build it first: cargo build --release -p render",
        path.display()
    );
    path
}

struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What an appliance's watcher does with a revision it accepted.
enum Apply {
    /// Runs `nodows render` on the last-good model (`initctl render`).
    Render,
    /// Writes the changed files itself (`--apply-root`) and runs `nodows
    /// journal` (`initctl render --applied`).
    InProcess,
    /// Runs this command.
    Command(String),
}

/// One appliance: role, passfile, directories, a `nodows watch` process.
fn appliance(
    cluster: &pgtest::Cluster,
    admin: &mut pg::Client,
    database: &str,
    work: &Path,
    server: &str,
    apply: Apply,
) -> Watcher {
    let dir = work.join(server);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let role = format!("{database}_{server}");
    let password = format!("bench-{server}");
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE nodows_appliance;
             INSERT INTO nodows.appliance (server, role, profiles) VALUES ('{server}', '{role}', '{{production}}')
             ON CONFLICT (server) DO NOTHING;"
        ))
        .unwrap();
    let passfile = dir.join("db.pgpass");
    cluster.passfile(&passfile, database, &role, &password);
    let url = format!(
        "{}?passfile={}",
        cluster.url(&role, database),
        passfile.display()
    );
    let last_good = dir.join("model.xml");
    let services = repo().join("services");
    let root = dir.join("root");
    let (command, extra) = match apply {
        Apply::Render => (render_command(&last_good, &root, server), Vec::new()),
        Apply::InProcess => (
            format!(
                "{} journal --root {} --json",
                nodows().display(),
                root.display()
            ),
            vec!["--apply-root".to_string(), root.display().to_string()],
        ),
        Apply::Command(command) => (command, Vec::new()),
    };
    let child = Command::new(nodows())
        .args([
            "watch",
            "--model",
            &url,
            "--server",
            server,
            "--profile",
            "production",
        ])
        .arg("--services")
        .arg(&services)
        .arg("--last-good")
        .arg(&last_good)
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .args(["--command", &command, "--poll", "1h", "--debounce", "0ms"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    Watcher(child)
}

/// `nodows render` of `model` into `root` for `server`.
fn render_command(model: &Path, root: &Path, server: &str) -> String {
    format!(
        "{} render --model {} --services {} --root {} --profile production --server {server}",
        nodows().display(),
        model.display(),
        repo().join("services").display(),
        root.display()
    )
}

/// 20 commits of one key of `server`, each timed until its status row
/// says applied; ms.
fn commit_to_applied(admin: &mut pg::Client, server: &str) -> Vec<f64> {
    let first = revision(admin);
    assert!(wait_converged(admin, first, 1, Duration::from_secs(30)));
    let mut latencies = Vec::new();
    for round in 0..20 {
        let started = Instant::now();
        admin
            .execute(
                "UPDATE nodows.value SET value = $1 WHERE server = $2 AND key = 'title'",
                &[&format!("round {round}"), &server],
            )
            .unwrap();
        let new = revision(admin);
        assert!(wait_converged(admin, new, 1, Duration::from_secs(30)));
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    admin.batch_execute("DELETE FROM nodows.status").unwrap();
    latencies
}

fn revision(admin: &mut pg::Client) -> i64 {
    pg::current_revision(admin, "bench").unwrap()
}

/// Waits until `count` status rows (of `servers`, or all) show `revision`.
fn wait_converged(admin: &mut pg::Client, revision: i64, count: i64, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let done: i64 = admin
            .query_one(
                "SELECT count(*) FROM nodows.status WHERE revision >= $1 AND result = 'applied'",
                &[&revision],
            )
            .unwrap()
            .get(0);
        if done >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// CPU time (user + system) of the cluster's server processes, in ms.
fn database_cpu_ms(cluster: &pgtest::Cluster) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let data = cluster.dir.join("data");
    let postmaster: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let parent: i32 = fields[1].parse().unwrap_or(0);
        if pid == postmaster || parent == postmaster {
            total +=
                fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 * 1000.0 / ticks
}

fn median_p95(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = values[values.len() / 2];
    let p95 = values[((values.len() as f64 * 0.95).ceil() as usize).min(values.len()) - 1];
    (median, p95)
}

fn join(samples: &[f64]) -> String {
    samples
        .iter()
        .map(|sample| format!("{sample:.4}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() {
    let appliances: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("N: a number of appliances"))
        .unwrap_or(200);
    let work = std::env::args()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tmp/fleet-bench"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let cluster = pgtest::Cluster::start(&work.join("pgtest")).unwrap();
    let database = cluster.database("fleet_bench");
    let url = cluster.superuser_url(&database);
    let mut admin = pg::connect(&url).unwrap();
    pg::migrate(&mut admin, "bench").unwrap();
    let mut model =
        model::Model::load(repo().join("models/default.xml").to_str().unwrap()).unwrap();
    let servers: Vec<String> = (1..=appliances).map(|i| format!("sim{i:04}")).collect();
    for server in &servers {
        let mut layer = model::Layer::new();
        let mut keys = model::ServiceKeys::default();
        keys.set("title", format!("nodows {server}"), String::new());
        layer.insert("web".to_string(), keys);
        model.servers.insert(server.clone(), layer);
    }
    pg::write(&mut admin, "bench", &model, "bench fleet").unwrap();

    // 1. Commit to applied, one appliance rendering for real: through a
    // `nodows render` process, then applying in process; then the same
    // change through etcd.
    for (name, apply) in [
        ("commit_to_applied", Apply::Render),
        ("commit_to_applied_in_process", Apply::InProcess),
    ] {
        let _watcher = appliance(&cluster, &mut admin, &database, &work, &servers[0], apply);
        let latencies = commit_to_applied(&mut admin, &servers[0]);
        println!("samples {name} {}", join(&latencies));
        let (median, p95) = median_p95(latencies);
        println!("{name}_median {median:.1} ms");
        println!("{name}_p95 {p95:.1} ms");
    }
    let etcd_dir = work.join("etcd");
    let etcd_render = render_command(
        &etcd_dir.join("model.xml"),
        &etcd_dir.join("root"),
        &servers[0],
    );
    match etcd::commit_to_applied(&etcd_dir, &model, &servers[0], &etcd_render) {
        Ok(latencies) => println!("samples etcd_put_to_applied {}", join(&latencies)),
        Err(why) => println!("etcd_unavailable {why}"),
    }

    // 2. N appliances converging on one defaults change (command /bin/true:
    // each watcher still validates and renders every template in memory).
    {
        let started = Instant::now();
        let watchers: Vec<Watcher> = servers
            .iter()
            .map(|server| {
                appliance(
                    &cluster,
                    &mut admin,
                    &database,
                    &work,
                    server,
                    Apply::Command("/bin/true".into()),
                )
            })
            .collect();
        let first = revision(&mut admin);
        assert!(
            wait_converged(
                &mut admin,
                first,
                appliances as i64,
                Duration::from_secs(300)
            ),
            "the fleet did not converge on the first revision"
        );
        println!(
            "fleet_start_converged {:.2} s ({appliances} appliances)",
            started.elapsed().as_secs_f64()
        );
        let connections: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE $1",
                &[&format!("{database}_%")],
            )
            .unwrap()
            .get(0);
        println!("fleet_connections {connections}");
        // Ten defaults changes, one after the other; the CPU time is read
        // in clock ticks per process, so it is averaged over all ten.
        let cpu_before = database_cpu_ms(&cluster);
        let mut times = Vec::new();
        for round in 0..10 {
            let started = Instant::now();
            admin
                .execute(
                    "UPDATE nodows.value SET value = $1 WHERE server IS NULL AND profile IS NULL AND service = 'sysctl' AND key = 'vm.swappiness'",
                    &[&(20 + round).to_string()],
                )
                .unwrap();
            let new = revision(&mut admin);
            assert!(wait_converged(
                &mut admin,
                new,
                appliances as i64,
                Duration::from_secs(300)
            ));
            times.push(started.elapsed().as_secs_f64());
        }
        let cpu = (database_cpu_ms(&cluster) - cpu_before) / 10.0;
        println!("samples fleet_converged {}", join(&times));
        let (median, _) = median_p95(times.clone());
        let slowest = times.iter().cloned().fold(0.0, f64::max);
        println!("fleet_converged_median {median:.2} s ({appliances} appliances, 10 changes)");
        println!("fleet_converged_slowest {slowest:.2} s");
        println!("fleet_database_cpu_per_change {cpu:.0} ms");
        drop(watchers);
    }

    // 3. One server of 1,000 x 10 from XML and from PostgreSQL.
    {
        let mut big =
            model::Model::load(repo().join("models/default.xml").to_str().unwrap()).unwrap();
        for i in 1..=1000 {
            let mut layer = model::Layer::new();
            let mut web = model::ServiceKeys::default();
            web.set("title", format!("server {i}"), String::new());
            layer.insert("web".to_string(), web);
            let mut sysctl = model::ServiceKeys::default();
            for j in 1..=9 {
                sysctl.set(&format!("kernel.bench{j}"), format!("{i}"), String::new());
            }
            layer.insert("sysctl".to_string(), sysctl);
            big.servers.insert(format!("big{i:04}"), layer);
        }
        let big_database = cluster.database("fleet_big");
        let big_url = cluster.superuser_url(&big_database);
        let mut big_admin = pg::connect(&big_url).unwrap();
        pg::migrate(&mut big_admin, "bench").unwrap();
        pg::write(&mut big_admin, "bench", &big, "1000 x 10").unwrap();
        let xml = work.join("big.xml");
        big.save(xml.to_str().unwrap(), "").unwrap();
        let role = format!("{big_database}_big0500");
        big_admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'big' IN ROLE nodows_appliance;
                 INSERT INTO nodows.appliance (server, role, profiles) VALUES ('big0500', '{role}', '{{production}}');"
            ))
            .unwrap();
        let passfile = work.join("big.pgpass");
        cluster.passfile(&passfile, &big_database, &role, "big");
        let role_url = format!(
            "{}?passfile={}",
            cluster.url(&role, &big_database),
            passfile.display()
        );
        for (name, spec) in [
            ("xml", xml.display().to_string()),
            ("postgres_superuser", big_url.clone()),
            ("postgres_appliance_role", role_url),
        ] {
            let mut times = Vec::new();
            for _ in 0..7 {
                let root = work.join(format!("big-root-{name}"));
                let _ = std::fs::remove_dir_all(&root);
                std::fs::create_dir_all(&root).unwrap();
                let started = Instant::now();
                let output = Command::new(nodows())
                    .args([
                        "render",
                        "--model",
                        &spec,
                        "--profile",
                        "production",
                        "--server",
                        "big0500",
                    ])
                    .arg("--services")
                    .arg(repo().join("services"))
                    .arg("--root")
                    .arg(&root)
                    .output()
                    .unwrap();
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                assert!(
                    output.status.success(),
                    "{name}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            println!(
                "samples render_one_server_of_1000x10_{name} {}",
                join(&times)
            );
            let (median, _) = median_p95(times);
            println!("render_one_server_of_1000x10_{name} {median:.1} ms");
        }
    }
    cluster.stop();
    let _ = std::fs::remove_dir_all(&work);
}
