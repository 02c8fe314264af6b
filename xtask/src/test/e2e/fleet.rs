//! The fleet on production appliances: two copies of the production image
//! (server `a` from its SMBIOS serial, `b` from `nodows.server=`) boot
//! against the host's PostgreSQL, named by `nodows.fleet=` on the kernel
//! command line, with the credentials the image was built with
//! (`cargo xtask image --secrets`). They have no test agent: every check
//! runs over SSH with an operator key that comes from the database model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::super::Runner;
use super::{ssh_with_key, READY_TIMEOUT, SERVICE_TIMEOUT};
use crate::boot::BuiltImage;
use crate::qemu::{self, Accel, Vm};

const SERVERS: [&str; 2] = ["a", "b"];

/// The e2e's secrets file: a pgpass file with a random password for each
/// server's role, outside the repository (the builder refuses a path inside
/// it), made once per checkout and kept, so that an image built by an
/// earlier run still matches.
pub fn secrets_file() -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    let checkout = qemu::workspace_root();
    let tag = hex_of(&sha2::Sha256::digest(checkout.as_os_str().as_encoded_bytes())[..6]);
    let dir = std::env::temp_dir().join(format!("nodows-e2e-fleet-{tag}"));
    let path = dir.join("fleet.pgpass");
    if path.is_file() {
        return Ok(path);
    }
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut text =
        String::from("# the e2e fleet's appliance roles (xtask/src/test/e2e/fleet.rs)\n");
    for server in SERVERS {
        let mut random = [0u8; 16];
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        text.push_str(&format!("*:*:*:{}:{}\n", role(server), hex_of(&random)));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    use std::io::Write as _;
    file.write_all(text.as_bytes())?;
    Ok(path)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The role `fleet_host` makes for `server`.
fn role(server: &str) -> String {
    format!("nodows_e2e_{server}")
}

/// The passwords of the secrets file.
fn secret_passwords(path: &Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit(':').next().map(str::to_string))
        .filter(|password| !password.is_empty())
        .collect())
}

/// The credentials are in the image and nowhere else the build wrote:
/// not in manifest.json, the SBOM, SHA256SUMS or the build log (neither
/// the passwords, nor the file's sha256, nor its path), and the image's
/// root holds them with mode 0600.
pub fn check_secrets_kept_out(image: &BuiltImage, work_root: &Path) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let secrets = secrets_file()?;
    let bytes = std::fs::read(&secrets)?;
    let digest = hex_of(&sha2::Sha256::digest(&bytes));
    let mut needles = secret_passwords(&secrets)?;
    needles.push(digest);
    needles.push("fleet.pgpass".to_string());
    let out = image.raw.parent().context("the image has no directory")?;
    let name = out
        .file_name()
        .and_then(|name| name.to_str())
        .context("the image directory's name")?;
    let documents = [
        out.join("manifest.json"),
        out.join("sbom.spdx.json"),
        out.join("SHA256SUMS"),
        out.with_file_name(format!("{name}.log")),
    ];
    for document in &documents {
        let text = std::fs::read_to_string(document)
            .with_context(|| format!("{}: cannot read", document.display()))?;
        for needle in &needles {
            ensure!(
                !text.contains(needle.as_str()),
                "{} holds a trace of the --secrets file",
                document.display()
            );
        }
    }
    let work_dir = work_root.join("production-fleet-secrets");
    std::fs::create_dir_all(&work_dir)?;
    let root = super::RootFs::extract(&image.raw, &work_dir)?;
    let stat = root.debugfs("stat /etc/nodows/fleet.pgpass")?;
    let installed = root.debugfs("cat /etc/nodows/fleet.pgpass")?;
    std::fs::remove_file(&root.path)?;
    ensure!(
        stat.contains("Mode:  0600") && stat.contains("User:     0"),
        "/etc/nodows/fleet.pgpass is not root's with mode 0600:\n{stat}"
    );
    ensure!(
        installed.as_bytes() == bytes.as_slice(),
        "/etc/nodows/fleet.pgpass is not the --secrets file"
    );
    Ok(())
}

/// The host's PostgreSQL: the renderer's example `fleet_host` (a real
/// PostgreSQL 15, the schema, the demo model and a role per server),
/// driven over its stdin; stopped on drop.
pub struct FleetDatabase {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    output: std::io::BufReader<std::process::ChildStdout>,
    pub port: u16,
    pub database: String,
    roles: BTreeMap<String, String>,
    passwords: BTreeMap<String, String>,
}

impl FleetDatabase {
    pub fn start(
        dir: &Path,
        servers: &[&str],
        passfile: Option<&Path>,
    ) -> anyhow::Result<FleetDatabase> {
        super::super::run_command(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())).args([
                "build",
                "--quiet",
                "--release",
                "--package",
                "render",
                "--example",
                "fleet_host",
            ]),
        )?;
        let program = qemu::target_dir()?.join("release/examples/fleet_host");
        let mut command = Command::new(&program);
        command.arg(dir).args(servers);
        if let Some(passfile) = passfile {
            command.arg("--passfile").arg(passfile);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let input = Some(child.stdin.take().context("no stdin")?);
        let output = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
        let mut database = FleetDatabase {
            child,
            input,
            output,
            port: 0,
            database: String::new(),
            roles: BTreeMap::new(),
            passwords: BTreeMap::new(),
        };
        loop {
            let line = database.read_line()?;
            let words: Vec<&str> = line.splitn(3, ' ').collect();
            match words.as_slice() {
                ["port", port] => database.port = port.parse()?,
                ["database", name] => database.database = name.to_string(),
                ["role", server, role] => {
                    database.roles.insert(server.to_string(), role.to_string());
                }
                ["password", server, password] => {
                    database
                        .passwords
                        .insert(server.to_string(), password.to_string());
                }
                ["ready"] => return Ok(database),
                _ => anyhow::bail!("fleet_host: unexpected line {line:?}"),
            }
        }
    }

    pub fn role(&self, server: &str) -> anyhow::Result<String> {
        self.roles
            .get(server)
            .cloned()
            .with_context(|| format!("fleet_host made no role for {server}"))
    }

    /// The password fleet_host made (servers without a passfile line).
    pub fn password(&self, server: &str) -> anyhow::Result<String> {
        self.passwords
            .get(server)
            .cloned()
            .with_context(|| format!("fleet_host made no password for {server}"))
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            anyhow::bail!("fleet_host ended (its PostgreSQL did not start?)");
        }
        Ok(line.trim_end().to_string())
    }

    fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        use std::io::Write;
        ensure!(
            !command.contains('\n'),
            "fleet_host reads one command per line: {command:?}"
        );
        let input = self
            .input
            .as_mut()
            .context("fleet_host's input is closed")?;
        writeln!(input, "{command}")?;
        input.flush()?;
        self.read_line()
    }

    /// Runs SQL as the superuser; the revision afterwards.
    pub fn sql(&mut self, statement: &str) -> anyhow::Result<i64> {
        let answer = self.ask(&format!("sql {statement}"))?;
        match answer.strip_prefix("ok ") {
            Some(revision) => Ok(revision.parse()?),
            None => anyhow::bail!("{statement}: {answer}"),
        }
    }

    /// Stops PostgreSQL (`halt`) or starts it again (`resume`).
    fn control(&mut self, command: &str) -> anyhow::Result<()> {
        let answer = self.ask(command)?;
        ensure!(answer == "ok", "fleet_host {command}: {answer}");
        Ok(())
    }

    /// `server`'s status row: (revision, result, error).
    fn status(&mut self, server: &str) -> anyhow::Result<Option<(i64, String, String)>> {
        let answer = self.ask(&format!("status {server}"))?;
        let words: Vec<&str> = answer.splitn(4, ' ').collect();
        Ok(match words.as_slice() {
            ["status", revision, result, error] => {
                Some((revision.parse()?, result.to_string(), error.to_string()))
            }
            ["status", revision, result] => {
                Some((revision.parse()?, result.to_string(), String::new()))
            }
            _ => None,
        })
    }

    /// Waits until `server`'s status row says `applied` for `revision` or
    /// later.
    pub fn wait_applied(
        &mut self,
        server: &str,
        revision: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_status(server, revision, "applied", timeout)
            .map(|_| ())
    }

    /// Waits until `server`'s status row says `result` for `revision` or
    /// later; its error text.
    pub fn wait_status(
        &mut self,
        server: &str,
        revision: i64,
        result: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(server)?;
            if let Some((seen, seen_result, error)) = &status {
                if *seen >= revision && seen_result == result {
                    return Ok(error.clone());
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "server {server}: no status row `{result}` for revision {revision}: {status:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for FleetDatabase {
    fn drop(&mut self) {
        // End of input stops the server; kill it only if it does not end.
        drop(self.input.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nodows watch` in a booted test-image guest against the host's
/// PostgreSQL (QEMU's user-network gateway 10.0.2.2 is the host's
/// 127.0.0.1), applying through `initctl render`: used by the e2e step and
/// by the `fleet-booted` benchmark.
pub struct GuestWatch {
    pub database: FleetDatabase,
    /// The server whose role the watcher uses.
    pub server: String,
    /// The rows the guest's model takes web's keys from: its server's, or
    /// (a guest without a server id renders as web01) the test profile's,
    /// as `(column, value)` of `nodows.value`.
    pub scope: (&'static str, String),
    pub role: String,
    pub password: String,
    /// `postgres://ROLE@10.0.2.2:PORT/DATABASE`, as initctl status shows it.
    pub url: String,
}

impl GuestWatch {
    /// Starts the database under `dir` and the watcher in the guest, and
    /// waits until the guest applied the database's model.
    pub fn start(vm: &mut Vm, dir: &Path) -> anyhow::Result<GuestWatch> {
        // The watcher needs a server id (its role is that server's); a
        // guest that renders without one takes web01's role, and its
        // changes go to the profile's rows, which is what it renders.
        let guest = super::guest_server(vm)?;
        let server = guest.clone().unwrap_or_else(|| "web01".to_string());
        let scope = match guest {
            Some(server) => ("server", server),
            None => ("profile", "test".to_string()),
        };
        let database = FleetDatabase::start(dir, &[&server], None)?;
        let (port, role, name) = (
            database.port,
            database.role(&server)?,
            database.database.clone(),
        );
        let password = database.password(&server)?;
        // The password reaches the guest through the agent (not the
        // console) into a file only root can read.
        vm.succeed(&format!(
            "umask 077 && printf '%s\\n' '10.0.2.2:{port}:{name}:{role}:{password}' > /run/nodows-fleet.pgpass"
        ))?;
        let url = format!("postgres://{role}@10.0.2.2:{port}/{name}");
        vm.succeed(&format!(
            "setsid /usr/bin/nodows watch --model '{url}?passfile=/run/nodows-fleet.pgpass' --server {server} --profile test --services /etc/nodows/services --last-good /var/lib/nodows/model.xml --command '/sbin/initctl render' --poll 60s --max-backoff 2s > /var/log/nodows/fleet-watch.log 2>&1 < /dev/null & echo $! > /run/nodows-fleet-watch.pid"
        ))?;
        let mut watch = GuestWatch {
            database,
            server,
            scope,
            role,
            password,
            url,
        };
        let first = watch.database.sql("SELECT 1")?;
        if let Err(error) = watch
            .database
            .wait_applied(&watch.server, first, SERVICE_TIMEOUT)
        {
            let error = vm.failure(&format!("{error:#}"));
            watch.stop(vm);
            return Err(error);
        }
        Ok(watch)
    }

    /// The SQL condition of the rows in scope.
    pub fn in_scope(&self) -> String {
        format!("{} = '{}'", self.scope.0, self.scope.1)
    }

    /// Sets web's `key` to `value` in scope (replacing any row) in one
    /// commit; the revision.
    pub fn set_web_key(&mut self, key: &str, value: &str) -> anyhow::Result<i64> {
        let (column, owner) = &self.scope;
        let statement = format!(
            "BEGIN; \
             DELETE FROM nodows.value WHERE {column} = '{owner}' AND service = 'web' AND key = '{key}'; \
             INSERT INTO nodows.value ({column}, service, key, value) VALUES ('{owner}', 'web', '{key}', '{value}'); \
             COMMIT"
        );
        self.database.sql(&statement)
    }

    /// An UPDATE of web's `key` in scope, committed; the revision.
    pub fn update_web_key(&mut self, key: &str, value: &str) -> anyhow::Result<i64> {
        let statement = format!(
            "UPDATE nodows.value SET value = '{value}' WHERE {} AND service = 'web' AND key = '{key}'",
            self.in_scope()
        );
        self.database.sql(&statement)
    }

    /// Back to the baked model: the watcher, its last-good model, status
    /// and credentials go, and the guest renders again.
    pub fn stop(&mut self, vm: &mut Vm) {
        let _ = vm.succeed(
            "kill $(cat /run/nodows-fleet-watch.pid); rm -f /var/lib/nodows/model.xml /run/nodows/model-status.json /run/nodows-fleet.pgpass; initctl render",
        );
    }
}

/// The children of the web service's main process (nginx's workers, new
/// ones after a reload), read through the agent.
pub fn web_workers(vm: &mut Vm, pid: i64) -> anyhow::Result<Vec<i64>> {
    parse_pids(&vm.succeed(&workers_command(pid))?)
}

/// The shell command that prints the children of `pid`.
fn workers_command(pid: i64) -> String {
    format!("cat /proc/{pid}/task/*/children")
}

fn parse_pids(text: &str) -> anyhow::Result<Vec<i64>> {
    text.split_whitespace()
        .map(|word| {
            word.parse()
                .with_context(|| format!("not a pid: {word:?} in {text:?}"))
        })
        .collect()
}

/// The two appliances, their database and the operator key.
struct Fleet {
    database: FleetDatabase,
    machines: BTreeMap<&'static str, Vm>,
    key: PathBuf,
}

impl Fleet {
    fn vm(&mut self, server: &str) -> anyhow::Result<&mut Vm> {
        self.machines
            .get_mut(server)
            .with_context(|| format!("no appliance {server}"))
    }

    /// Runs `command` on `server` over SSH as root with the operator key.
    fn ssh(&mut self, server: &str, command: &str) -> anyhow::Result<String> {
        let key = self.key.clone();
        let vm = self.vm(server)?;
        match ssh_with_key(vm, &key, command)? {
            Ok(output) => Ok(output),
            Err(error) => Err(vm.failure(&format!(
                "ssh to {server} with the operator key: `{command}`: {error}"
            ))),
        }
    }

    /// `initctl status --json` over SSH: service name to (pid, restarts).
    fn services(&mut self, server: &str) -> anyhow::Result<BTreeMap<String, (i64, u64)>> {
        let output = self.ssh(server, "initctl status --json")?;
        Ok(qemu::parse_status(&output)?
            .into_iter()
            .filter(|status| status.state == "running")
            .filter_map(|status| Some((status.name, (status.pid?, status.restarts))))
            .collect())
    }

    /// The web service's nginx workers (new ones after a reload).
    fn nginx_workers(&mut self, server: &str) -> anyhow::Result<String> {
        let pid = self
            .services(server)?
            .get("web")
            .map(|(pid, _)| *pid)
            .context("web is not running")?;
        Ok(self.ssh(server, &workers_command(pid))?.trim().to_string())
    }

    /// Waits until `server`'s page shows `text`.
    fn wait_for_page(&mut self, server: &str, text: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVICE_TIMEOUT;
        loop {
            let vm = self.vm(server)?;
            let (status, body) = vm.http_get(vm.host_port(80), "/")?;
            if status == 200 && body.contains(text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(vm.failure(&format!(
                    "the page of {server} did not show {text:?}:\n{body}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until both status rows say `applied` for `revision`.
    fn wait_converged(&mut self, revision: i64) -> anyhow::Result<()> {
        for server in SERVERS {
            self.database
                .wait_applied(server, revision, SERVICE_TIMEOUT)?;
        }
        Ok(())
    }
}

/// Makes the operator's key pair on the host; the private key's path and
/// the public key's line.
fn operator_key() -> anyhow::Result<(PathBuf, String)> {
    let dir = qemu::target_dir()?.join("e2e-fleet-operator-key");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    super::super::run_command(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "e2e-fleet-operator",
                "-f",
            ])
            .arg(&key),
    )?;
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub"))?;
    Ok((key, public.trim().to_string()))
}

/// Starts the database with the operator key in its defaults, then boots
/// both appliances at once and waits until both applied the model and the
/// key logs in.
fn boot_fleet(image: &BuiltImage, work_root: &Path, accel: Accel) -> anyhow::Result<Fleet> {
    let secrets = secrets_file()?;
    let mut database =
        FleetDatabase::start(&work_root.join("fleet-pair-db"), &SERVERS, Some(&secrets))?;
    let (key, public) = operator_key()?;
    let revision = database.sql(&format!(
        "INSERT INTO nodows.value (service, key, value) VALUES ('ssh', 'authorized_key.e2e', '{public}')"
    ))?;
    let remote = format!(
        "postgres://nodows_e2e_{{server}}@10.0.2.2:{}/{}",
        database.port, database.database
    );
    let mut machines = BTreeMap::new();
    for server in SERVERS {
        // a's id is its SMBIOS serial, b's the kernel command line's.
        let identity = if server == "a" {
            String::new()
        } else {
            format!("nodows.server={server}")
        };
        let mut config = image.config(
            &format!("production-fleet-{server}"),
            false,
            &format!("nodows.fleet={remote} {identity}"),
            work_root,
        );
        config.accel = accel;
        config.forward_tcp = vec![22, 80];
        if server == "a" {
            config.smbios_serial = Some(server.to_string());
        }
        machines.insert(server, Vm::start(&config)?);
    }
    let mut fleet = Fleet {
        database,
        machines,
        key,
    };
    for server in SERVERS {
        let vm = fleet.vm(server)?;
        vm.wait_for_ready(READY_TIMEOUT)?;
        eprintln!(
            "    {server}: qemu start to ready {:.1}s",
            vm.uptime().as_secs_f64()
        );
    }
    fleet.wait_converged(revision)?;
    for server in SERVERS {
        let vm = fleet.vm(server)?;
        vm.wait_for_open_port(vm.host_port(22), SERVICE_TIMEOUT)?;
        let mode = fleet.ssh(server, "cat /etc/nodows/mode")?;
        ensure!(
            mode.trim() == "production",
            "{server} runs in mode {mode:?}"
        );
        fleet.wait_for_page(server, &format!("fleet appliance {server}"))?;
        fleet.wait_for_page(server, &format!("server={server} mode=production"))?;
    }
    Ok(fleet)
}

/// a's title and worker_processes in one commit: a's page shows the
/// title, web reloaded on a (same pid, two new workers), nothing else on a
/// and nothing at all on b restarted or reloaded.
fn check_one_server_change(fleet: &mut Fleet) -> anyhow::Result<()> {
    let before: BTreeMap<&str, _> =
        [("a", fleet.services("a")?), ("b", fleet.services("b")?)].into();
    let workers_a = fleet.nginx_workers("a")?;
    let workers_b = fleet.nginx_workers("b")?;
    let title = "a, renamed in PostgreSQL";
    let started = Instant::now();
    // One revision: the title (the page, which nginx serves without a
    // reload) and worker_processes (nginx.conf, on-change reload).
    let revision = fleet.database.sql(&format!(
        "BEGIN; \
         UPDATE nodows.value SET value = '{title}' WHERE server = 'a' AND service = 'web' AND key = 'title'; \
         INSERT INTO nodows.value (server, service, key, value) VALUES ('a', 'web', 'worker_processes', '2'); \
         COMMIT"
    ))?;
    fleet.wait_for_page("a", title)?;
    eprintln!(
        "    commit to a's page: {} ms",
        started.elapsed().as_millis()
    );
    fleet
        .database
        .wait_applied("a", revision, SERVICE_TIMEOUT)?;
    let workers = fleet.nginx_workers("a")?;
    ensure!(
        workers.split_whitespace().count() == 2
            && workers
                .split_whitespace()
                .all(|worker| !workers_a.split_whitespace().any(|old| old == worker)),
        "a's nginx was not reloaded into 2 new workers: before {workers_a:?}, after {workers:?}"
    );
    ensure!(
        fleet.services("a")? == before["a"],
        "a service of a restarted: before {:?}",
        before["a"]
    );
    ensure!(
        fleet.services("b")? == before["b"] && fleet.nginx_workers("b")? == workers_b,
        "b restarted or reloaded for a change of a"
    );
    let b_page = {
        let vm = fleet.vm("b")?;
        vm.http_get(vm.host_port(80), "/")?.1
    };
    ensure!(!b_page.contains(title), "b shows a's title:\n{b_page}");
    Ok(())
}

/// A default (web's error_log_level) reaches both; both rows show the
/// revision.
fn check_default_change(fleet: &mut Fleet) -> anyhow::Result<()> {
    let revision = fleet.database.sql(
        "INSERT INTO nodows.value (service, key, value) VALUES ('web', 'error_log_level', 'error')",
    )?;
    fleet.wait_converged(revision)?;
    for server in SERVERS {
        let config = fleet.ssh(server, "grep '^error_log' /etc/nginx/nginx.conf")?;
        ensure!(
            config.trim() == "error_log stderr error;",
            "{server}'s nginx.conf after the default changed: {config}"
        );
    }
    Ok(())
}

/// PostgreSQL stops: both keep serving and say so; a change committed
/// while neither appliance is connected (their roles NOLOGIN, their
/// sessions ended) arrives once they can log in again.
fn check_outage(fleet: &mut Fleet) -> anyhow::Result<()> {
    fleet.database.control("halt")?;
    std::thread::sleep(Duration::from_secs(3));
    for server in SERVERS {
        let title = if server == "a" {
            "a, renamed in PostgreSQL".to_string()
        } else {
            format!("fleet appliance {server}")
        };
        fleet.wait_for_page(server, &title)?;
        let status = fleet.ssh(server, "initctl status")?;
        ensure!(
            status.contains("database unreachable; running last-good revision"),
            "{server}'s initctl status does not say the database is unreachable:\n{status}"
        );
    }
    fleet.database.control("resume")?;
    let roles = SERVERS.map(role).join(", ");
    fleet.database.sql(&format!(
        "ALTER ROLE {} NOLOGIN; ALTER ROLE {} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ('{}')",
        role("a"),
        role("b"),
        roles.replace(", ", "', '")
    ))?;
    let title = "b, changed while away";
    let revision = fleet.database.sql(&format!(
        "UPDATE nodows.value SET value = '{title}' WHERE server = 'b' AND service = 'web' AND key = 'title'"
    ))?;
    fleet.database.sql(&format!(
        "ALTER ROLE {} LOGIN; ALTER ROLE {} LOGIN",
        role("a"),
        role("b")
    ))?;
    fleet.wait_for_page("b", title)?;
    fleet.database.wait_applied("b", revision, SERVICE_TIMEOUT)
}

/// A value web's port cannot take is refused on a: the last-good model and
/// the page stay, the row says `refused` with the reason; removing it
/// converges again.
fn check_refusal(fleet: &mut Fleet) -> anyhow::Result<()> {
    let last_good = fleet.ssh("a", "cat /var/lib/nodows/model.xml")?;
    let refused = fleet.database.sql(
        "INSERT INTO nodows.value (server, service, key, value) VALUES ('a', 'web', 'port', '80; evil')",
    )?;
    let error = fleet
        .database
        .wait_status("a", refused, "refused", SERVICE_TIMEOUT)?;
    ensure!(
        error.contains("expected a port number 1-65535"),
        "a's status row does not give the reason: {error:?}"
    );
    ensure!(
        fleet.ssh("a", "cat /var/lib/nodows/model.xml")? == last_good,
        "the refused model replaced a's last-good model"
    );
    fleet.wait_for_page("a", "a, renamed in PostgreSQL")?;
    let restored = fleet
        .database
        .sql("DELETE FROM nodows.value WHERE server = 'a' AND service = 'web' AND key = 'port'")?;
    fleet.database.wait_applied("a", restored, SERVICE_TIMEOUT)
}

/// Neither appliance's serial console ever showed a password of the
/// secrets file.
fn check_consoles_hold_no_secret(fleet: &mut Fleet) -> anyhow::Result<()> {
    let passwords = secret_passwords(&secrets_file()?)?;
    for server in SERVERS {
        let console = fleet.vm(server)?.console_text();
        ensure!(
            !passwords
                .iter()
                .any(|password| console.contains(password.as_str())),
            "{server}'s serial console shows a password of the secrets file"
        );
    }
    Ok(())
}

/// The steps on the production pair.
pub fn run(
    runner: &mut Runner,
    image: &dyn Fn() -> anyhow::Result<BuiltImage>,
    work_root: &Path,
    accel: Accel,
) {
    runner.step(
        "e2e 3 fleet pair: the fleet's --secrets file is in the image only (not in manifest, SBOM, checksums or build log)",
        || check_secrets_kept_out(&image()?, work_root),
    );
    let mut fleet: Option<Fleet> = None;
    runner.step(
        "e2e 3 fleet pair: two appliances (a by SMBIOS serial, b by nodows.server=) boot against PostgreSQL; an operator key from it logs in",
        || {
            fleet = Some(boot_fleet(&image()?, work_root, accel)?);
            Ok(())
        },
    );
    let mut on_fleet = |name: &str, check: fn(&mut Fleet) -> anyhow::Result<()>| {
        runner.step(name, || {
            check(fleet.as_mut().context("no fleet: an earlier step failed")?)
        });
    };
    on_fleet(
        "e2e 3 fleet pair: keys of a reload a's web only and its page shows them; b restarts nothing",
        check_one_server_change,
    );
    on_fleet(
        "e2e 3 fleet pair: a changed default converges a and b (both status rows)",
        check_default_change,
    );
    on_fleet(
        "e2e 3 fleet pair: PostgreSQL stopped, both keep serving; a change made while away arrives",
        check_outage,
    );
    on_fleet(
        "e2e 3 fleet pair: a value that breaks a template is refused, last-good kept, error in the status row",
        check_refusal,
    );
    on_fleet(
        "e2e 3 fleet pair: SSH refuses passwords; no secret on either serial console",
        |fleet| {
            super::check_ssh_refuses_passwords(fleet.vm("a")?)?;
            check_consoles_hold_no_secret(fleet)
        },
    );
}
