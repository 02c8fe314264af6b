//! Test support: a real PostgreSQL 15 cluster for the integration tests.
//!
//! [`Cluster::shared`] starts one cluster per test binary, the first time a
//! test asks for it: `initdb` into `TMPDIR/pgtest/PID/` (the caller passes
//! cargo's `CARGO_TARGET_TMPDIR`, a directory under `target/`), the server
//! listening on 127.0.0.1 on a free port, no Unix socket, TLS on with a CA
//! made for this cluster. Each test takes a database of its own
//! ([`Cluster::database`]).
//!
//! The server is stopped when the test binary exits, also when tests failed
//! (an `atexit` handler; the Rust test harness ends with `exit`), and dies
//! with it when the binary is killed (`PR_SET_PDEATHSIG`, set on a thread
//! that lives as long as the process). Leftovers of a killed run are
//! removed by the next one.
//!
//! PostgreSQL refuses to run as root: as root, initdb and the server run as
//! `nobody`; when `nobody` cannot reach the target directory (a checkout
//! below a private home), the cluster lives in the temporary directory
//! instead, and says so. The Debian package's own cluster (port 5432, Unix socket in
//! `/run/postgresql`) is never used and cannot get in the way.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct Cluster {
    /// `TMPDIR/pgtest/PID`.
    pub dir: PathBuf,
    pub port: u16,
    /// The superuser `postgres`'s password (scram-sha-256 over TCP).
    pub superuser_password: String,
    /// The CA that signed the server's certificate (CN and SAN `localhost`,
    /// SAN IP 127.0.0.1).
    pub ca_certificate: PathBuf,
    /// A second CA that signed nothing of this server's (for refusals).
    pub other_ca_certificate: PathBuf,
    pub bin: PathBuf,
    pid: i32,
    exited: Arc<AtomicBool>,
    stopped: AtomicBool,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop();
    }
}

impl Cluster {
    /// The cluster of this test binary, started on first use.
    /// `target_tmpdir` is `env!("CARGO_TARGET_TMPDIR")`.
    pub fn shared(target_tmpdir: &str) -> &'static Cluster {
        SHARED.get_or_init(|| {
            let cluster = Cluster::start(&Path::new(target_tmpdir).join("pgtest"))
                .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
            // SAFETY: registers a plain function; it only signals and waits.
            unsafe { libc::atexit(stop_shared_at_exit) };
            cluster
        })
    }

    /// Starts a new cluster below `base`; stopped on drop.
    pub fn start(base: &Path) -> Result<Cluster, String> {
        let bin = postgres_bin()?;
        let account = unprivileged_account()?;
        std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
        // As root the server runs as `nobody`, which must reach the data
        // directory: a checkout below a private home (/root) cannot be used.
        let fallback;
        let base = if account.is_some() && !reachable_by_others(base) {
            fallback = std::env::temp_dir().join("nodows-pgtest");
            eprintln!(
                "pgtest: {} is not reachable by user nobody (a parent lacks o+x); the test cluster lives in {}",
                base.display(),
                fallback.display()
            );
            std::fs::create_dir_all(&fallback)
                .map_err(|e| format!("{}: {e}", fallback.display()))?;
            fallback.as_path()
        } else {
            base
        };
        remove_stale(base);
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let superuser_password = random_hex(16)?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{superuser_password}\n"))
            .map_err(|e| format!("{}: {e}", pwfile.display()))?;
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(|e| format!("{}: {e}", tls.display()))?;
        make_certificates(&tls)?;
        if let Some((uid, gid)) = account {
            for path in [&dir, &pwfile, &tls] {
                chown(path, uid, gid)?;
            }
            for name in ["server.key", "server.crt", "ca.crt"] {
                chown(&tls.join(name), uid, gid)?;
            }
        }
        std::fs::set_permissions(
            tls.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(|e| format!("server.key: {e}"))?;
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null());
        as_account(&mut initdb, account);
        let output = initdb
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("initdb").display()))?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let _ = std::fs::remove_file(&pwfile);

        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let exited = Arc::new(AtomicBool::new(false));
            let pid = spawn_server(&bin, &data, &tls, port, account, &dir, exited.clone())?;
            let cluster = Cluster {
                dir: dir.clone(),
                port,
                superuser_password: superuser_password.clone(),
                ca_certificate: tls.join("ca.crt"),
                other_ca_certificate: tls.join("other-ca.crt"),
                bin: bin.clone(),
                pid,
                exited,
                stopped: AtomicBool::new(false),
            };
            match cluster.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    last_error = e;
                    cluster.stop();
                }
            }
        }
        Err(last_error)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if self.exited.load(Ordering::SeqCst) {
                return Err(format!("postgres exited at start: {}", self.log_tail()));
            }
            match self.connect("postgres") {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > timeout => {
                    return Err(format!(
                        "postgres not ready after {timeout:?}: {e}; {}",
                        self.log_tail()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn superuser_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.superuser_password, self.port
        )
    }

    /// `postgres://USER@127.0.0.1:PORT/DATABASE` (no password).
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Writes a pgpass file (mode 0600) at `path` holding `role`'s
    /// `password` for `database` on this cluster.
    pub fn passfile(&self, path: &Path, database: &str, role: &str, password: &str) {
        std::fs::write(
            path,
            format!("127.0.0.1:{}:{database}:{role}:{password}\n", self.port),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// A superuser connection to `database`.
    pub fn connect(&self, database: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.superuser_url(database), postgres::NoTls)
    }

    /// A new, empty database named after `label` (unique in this cluster),
    /// returned with its name.
    pub fn database(&self, label: &str) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("t_{clean}_{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut client = self
            .connect("postgres")
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
        for statement in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name} TEMPLATE template0"),
        ] {
            client
                .batch_execute(&statement)
                .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
        }
        name
    }

    /// Stops the server (fast shutdown) and keeps its data: [`resume`]
    /// starts it again on the same port, as an outage of the database
    /// server looks to its clients.
    ///
    /// [`resume`]: Cluster::resume
    pub fn halt(&mut self) {
        self.shut_down();
    }

    /// Fast shutdown of the server, SIGKILL after 10 s.
    fn shut_down(&self) {
        // SAFETY: signals a child this process started.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let started = Instant::now();
        while !self.exited.load(Ordering::SeqCst) && process_alive(self.pid) {
            if started.elapsed() > Duration::from_secs(10) {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a [`halt`]ed server again on its port and waits until it
    /// answers.
    ///
    /// [`halt`]: Cluster::halt
    pub fn resume(&mut self) -> Result<(), String> {
        let exited = Arc::new(AtomicBool::new(false));
        self.pid = spawn_server(
            &self.bin,
            &self.dir.join("data"),
            &self.dir.join("tls"),
            self.port,
            unprivileged_account()?,
            &self.dir,
            exited.clone(),
        )?;
        self.exited = exited;
        self.wait_ready(Duration::from_secs(60))
    }

    /// Stops the server (fast shutdown, then SIGKILL after 10 s) and removes
    /// its directory. Idempotent.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shut_down();
        if let Some(base) = self.dir.parent() {
            let _ = std::fs::copy(
                self.dir.join("postgres.log"),
                base.join("last-postgres.log"),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of PostgreSQL 15's programs: `NODOWS_PG_BIN`, else
/// Debian's `/usr/lib/postgresql/15/bin`.
pub fn postgres_bin() -> Result<PathBuf, String> {
    let bin = std::env::var_os("NODOWS_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    if bin.join("initdb").is_file() && bin.join("postgres").is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{}: no initdb/postgres; install PostgreSQL 15 (apt-get install postgresql, listed in ci/apt-packages) or set NODOWS_PG_BIN",
            bin.display()
        ))
    }
}

/// As root, the uid and gid of `nobody`; otherwise none (run as ourselves).
fn unprivileged_account() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("nobody").map_err(|e| e.to_string())?;
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err("running as root and there is no user `nobody` to run PostgreSQL as".into());
    }
    // SAFETY: entry is non-null and points to a valid passwd.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// Whether every directory from `/` to `path` lets others through (o+x).
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    path.ancestors().all(|directory| {
        std::fs::metadata(directory).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

fn as_account(command: &mut Command, account: Option<(u32, u32)>) {
    if let Some((uid, gid)) = account {
        command.uid(uid).gid(gid);
        command.env("HOME", "/nonexistent");
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("{}: cannot chown: {e}", path.display()))
}

fn spawn_server(
    bin: &Path,
    data: &Path,
    tls: &Path,
    port: u16,
    account: Option<(u32, u32)>,
    dir: &Path,
    exited: Arc<AtomicBool>,
) -> Result<i32, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .map_err(|e| format!("postgres.log: {e}"))?;
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=400",
            "-c",
            "ssl=on",
        ])
        .arg("-c")
        .arg(format!(
            "ssl_cert_file={}",
            tls.join("server.crt").display()
        ))
        .arg("-c")
        .arg(format!("ssl_key_file={}", tls.join("server.key").display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    as_account(&mut command, account);
    // SAFETY: prctl is async-signal-safe; it runs after the uid change,
    // which would otherwise clear the parent-death signal.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent-death signal fires when the spawning thread ends: spawn
    // from a thread that lives until the server exits.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("pgtest-postmaster".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = sender.send(Ok(child.id() as i32));
                let _ = child.wait();
                exited.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                let _ = sender.send(Err(format!("cannot run postgres: {e}")));
                exited.store(true, Ordering::SeqCst);
            }
        })
        .map_err(|e| e.to_string())?;
    receiver.recv().map_err(|e| e.to_string())?
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Removes clusters of test binaries that no longer run (killed runs),
/// stopping their servers first.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(owner) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let pid_file = entry.path().join("data/postmaster.pid");
        if let Some(postmaster) = std::fs::read_to_string(pid_file).ok().and_then(|text| {
            text.lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
        }) {
            // SAFETY: signals a leftover server of a dead test binary.
            unsafe { libc::kill(postmaster, libc::SIGQUIT) };
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

fn random_hex(bytes: usize) -> Result<String, String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buffer))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// A CA, a server certificate for localhost/127.0.0.1 signed by it, and a
/// second, unrelated CA; with the openssl command line tool.
fn make_certificates(tls: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(tls)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    let mut extensions =
        std::fs::File::create(tls.join("server.ext")).map_err(|e| e.to_string())?;
    writeln!(extensions, "subjectAltName=DNS:localhost,IP:127.0.0.1").map_err(|e| e.to_string())?;
    // A new P-256 key and a request for it; with -x509 a self-signed CA.
    let new_key = |self_signed: bool, name: &str, subject: &str| {
        let key = format!("{name}.key");
        let out = format!("{name}.{}", if self_signed { "crt" } else { "csr" });
        let mut args = vec!["req"];
        if self_signed {
            args.extend(["-x509", "-days", "2"]);
        }
        args.extend([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &out,
            "-subj",
            subject,
        ]);
        openssl(&args)
    };
    new_key(true, "ca", "/CN=nodows test ca")?;
    new_key(true, "other-ca", "/CN=nodows test other-ca")?;
    new_key(false, "server", "/CN=localhost")?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards a checkout below a private home (/root, mode 0700): as root the
    /// server runs as `nobody`, which cannot reach it, so the cluster moves
    /// to the temporary directory instead of failing.
    #[test]
    fn a_base_that_nobody_cannot_reach_still_gets_a_cluster() {
        let private = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/pgtest-private");
        let _ = std::fs::remove_dir_all(&private);
        std::fs::create_dir_all(private.join("base")).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cluster = Cluster::start(&private.join("base")).unwrap();
        let mut client = cluster.connect("postgres").unwrap();
        let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(
                !cluster.dir.starts_with(&private),
                "{}",
                cluster.dir.display()
            );
        }
        let dir = cluster.dir.clone();
        drop(cluster);
        assert!(!dir.exists(), "the cluster's directory is left behind");
        let _ = std::fs::remove_dir_all(&private);
    }
}
