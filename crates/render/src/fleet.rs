//! `nodows watch --model postgres://...`: the appliance's side of the
//! fleet.
//!
//! One connection, `LISTEN nodows_model`; a notification for this server
//! (or `all`), a periodic re-check and every (re)connect compare the
//! database's revision with the last one seen, and fetch the model when it
//! moved, so a change made while disconnected is never lost. Reconnects
//! back off, doubling up to a cap.
//!
//! A fetched model is cut down to this server (defaults, profiles, its own
//! layer), rendered in memory first (every template of every service, by a
//! [`crate::incremental::Renderer`] that keeps the templates compiled and
//! applies only those whose inputs changed), and only when that succeeds written atomically as the
//! last-good model (an XML file whose first line records the revision and
//! the sha256 of the rest), then the command runs (`initctl render`, whose
//! renderer reads the last-good file and reloads the owning services).
//! With `--apply-root` the watcher applies itself first: the files it
//! re-rendered go through [`crate::sync::sync`] (journaled, atomic, the
//! journal kept), and the command is `initctl render --applied`, for which
//! initd runs `nodows journal` and reloads exactly the journal's owners;
//! a watcher killed in between leaves the journal to the next render.
//! A model that does not validate or render is refused whole: the last-good
//! file and the running configuration stay, the refusal is logged, written
//! to the local status file and to the server's status row.

use anyhow::Context;
use model::postgres::{self as pg, FallibleIterator};
use model::Model;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Options {
    /// `postgres://...` (credentials from its `passfile`).
    pub spec: String,
    pub server: String,
    /// The profile (mode) the model is validated with.
    pub profile: String,
    pub services_dir: PathBuf,
    /// The last-good model (XML), what the command's renderer reads.
    pub last_good: PathBuf,
    /// Where the local status is written (JSON), for `initctl` and people.
    pub status_file: PathBuf,
    pub command: Vec<String>,
    /// Notifications closer than this are handled once.
    pub debounce: Duration,
    /// The periodic re-check.
    pub poll: Duration,
    /// The longest wait between reconnects.
    pub max_backoff: Duration,
    /// Apply in process: write the re-rendered files into this root
    /// (journaled, the journal kept) before the command, which is then
    /// `initctl render --applied` (initd reloads the journal's owners).
    /// Without it the command renders (`initctl render`).
    pub apply_root: Option<PathBuf>,
}

/// The last-good model on disk: its revision and the sha256 of its model
/// text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastGood {
    pub revision: i64,
    pub sha256: String,
}

const HEADER_PREFIX: &str = "<!-- nodows last-good revision=";

impl LastGood {
    /// Reads the header of a last-good file; `None` when there is none or
    /// the file does not match its recorded hash (then it is not trusted as
    /// a revision, though it is still a valid model for the renderer).
    pub fn read(path: &Path) -> Option<LastGood> {
        let text = std::fs::read_to_string(path).ok()?;
        let (header, rest) = text.split_once('\n')?;
        let fields = header.strip_prefix(HEADER_PREFIX)?.strip_suffix(" -->")?;
        let (revision, sha256) = fields.split_once(" sha256=")?;
        let last_good = LastGood {
            revision: revision.parse().ok()?,
            sha256: sha256.to_string(),
        };
        (sha256_hex(rest) == last_good.sha256).then_some(last_good)
    }

    /// Writes `model_text` with its header atomically.
    pub fn write(path: &Path, revision: i64, model_text: &str) -> std::io::Result<LastGood> {
        let last_good = LastGood {
            revision,
            sha256: sha256_hex(model_text),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = format!(
            "{HEADER_PREFIX}{revision} sha256={} -->\n{model_text}",
            last_good.sha256
        );
        model::write_atomically(path, text.as_bytes())?;
        Ok(last_good)
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The part of `model` one server needs: the defaults, every profile and
/// its own layer (the last-good file holds no other server's values).
pub fn slice(model: &Model, server: &str) -> Result<Model, String> {
    let Some(layer) = model.servers.get(server) else {
        return Err(format!(
            "{}: server `{server}` is not in table nodows.server, or its role cannot see it (nodows.appliance)",
            model.source_name
        ));
    };
    let mut sliced = Model {
        source_name: model.source_name.clone(),
        defaults: model.defaults.clone(),
        profiles: model.profiles.clone(),
        servers: [(server.to_string(), layer.clone())].into(),
        service_mentions: Vec::new(),
    };
    sliced.service_mentions = model
        .service_mentions
        .iter()
        .filter(|(service, _)| {
            sliced.defaults.contains_key(service)
                || layer.contains_key(service)
                || sliced.profiles.values().any(|p| p.contains_key(service))
        })
        .cloned()
        .collect();
    Ok(sliced)
}

/// What the watcher knows; written to the status file.
struct State {
    running: Option<LastGood>,
    /// The newest revision fetched and decided on (applied or refused).
    seen: Option<i64>,
    connected: bool,
    result: String,
    error: String,
}

fn log(message: &str) {
    eprintln!("nodows watch: {message}");
}

impl State {
    fn running_text(&self) -> String {
        match &self.running {
            Some(last_good) => format!("last-good revision {}", last_good.revision),
            None => "the baked base model (no last-good yet)".to_string(),
        }
    }

    fn write(&self, options: &Options) {
        let json = serde_json::json!({
            "source": pg::display_name(&options.spec),
            "server": options.server,
            "connected": self.connected,
            "running": match &self.running {
                Some(last_good) => serde_json::json!({"revision": last_good.revision, "sha256": last_good.sha256}),
                None => serde_json::json!("base"),
            },
            "seen_revision": self.seen,
            "result": self.result,
            "error": self.error,
        });
        if let Some(parent) = options.status_file.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) =
            model::write_atomically(&options.status_file, format!("{json}\n").as_bytes())
        {
            log(&format!(
                "{}: cannot write: {e}",
                options.status_file.display()
            ));
        }
    }
}

/// The watcher between connections: its options, the renderer that keeps
/// the image's templates compiled (or why they cannot be), what it knows.
struct Watcher<'a> {
    options: &'a Options,
    renderer: Result<crate::incremental::Renderer, String>,
    state: State,
}

/// Why the connection has to be made again.
struct Disconnected(String);

/// Watches forever; returns only on a setup error.
pub fn watch(options: &Options) -> anyhow::Result<()> {
    let definitions = servicedef::load_dir(&options.services_dir)
        .map_err(|e| anyhow::anyhow!("{}", e.problems.join("\n")))?;
    let renderer = crate::incremental::Renderer::new(
        &options.services_dir,
        definitions,
        Some(&options.server),
        &options.profile,
    )
    .map_err(|e| e.to_string());
    let mut watcher = Watcher {
        options,
        renderer,
        state: State {
            running: LastGood::read(&options.last_good),
            seen: None,
            connected: false,
            result: String::new(),
            error: String::new(),
        },
    };
    let source_name = pg::display_name(&options.spec);
    log(&format!(
        "server {} from {source_name}; running on {}",
        options.server,
        watcher.state.running_text()
    ));
    watcher.state.write(options);
    let mut backoff = Duration::from_secs(1).min(options.max_backoff);
    loop {
        let mut client = match connect(options) {
            Ok(client) => client,
            Err(e) => {
                if watcher.state.connected || watcher.state.result != "unreachable" {
                    log(&format!(
                        "database unreachable: {e}; running on {}; retrying with backoff up to {} s",
                        watcher.state.running_text(),
                        options.max_backoff.as_secs()
                    ));
                }
                watcher.state.connected = false;
                watcher.state.result = "unreachable".into();
                watcher.state.error = e;
                watcher.state.write(options);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(options.max_backoff);
                continue;
            }
        };
        backoff = Duration::from_secs(1).min(options.max_backoff);
        watcher.state.connected = true;
        log(&format!("connected to {source_name}, listening"));
        let reason = "connected (catching up)";
        match serve(&mut client, &mut watcher, reason) {
            Ok(()) => {}
            Err(Disconnected(e)) => {
                log(&format!("connection lost: {e}; reconnecting"));
                watcher.state.connected = false;
                watcher.state.write(options);
            }
        }
    }
}

fn connect(options: &Options) -> Result<pg::Client, String> {
    let mut client = pg::connect(&options.spec).map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {}", pg::CHANNEL))
        .map_err(|e| pg::describe(&e))?;
    Ok(client)
}

/// Checks at once, then on every relevant notification and every poll
/// interval, until the connection fails.
fn serve(
    client: &mut pg::Client,
    watcher: &mut Watcher,
    first_reason: &str,
) -> Result<(), Disconnected> {
    let options = watcher.options;
    check(client, watcher, first_reason)?;
    loop {
        let relevant = wait_for_notification(client, options, options.poll)?;
        if !relevant {
            check(client, watcher, "periodic re-check")?;
            continue;
        }
        // Debounce: one check for a burst of commits.
        let deadline = Instant::now() + options.debounce;
        while Instant::now() < deadline {
            wait_for_notification(client, options, deadline - Instant::now())?;
        }
        check(client, watcher, "notified")?;
    }
}

/// Waits up to `timeout`; true when a notification for this server (or
/// `all`) arrived.
fn wait_for_notification(
    client: &mut pg::Client,
    options: &Options,
    timeout: Duration,
) -> Result<bool, Disconnected> {
    let mut notifications = client.notifications();
    let mut iter = notifications.timeout_iter(timeout);
    let started = Instant::now();
    loop {
        match iter.next() {
            Ok(Some(notification)) => {
                let payload = notification.payload();
                if payload == options.server || payload == "all" {
                    return Ok(true);
                }
                if started.elapsed() >= timeout {
                    return Ok(false);
                }
            }
            Ok(None) => return Ok(false),
            Err(e) => return Err(Disconnected(pg::describe(&e))),
        }
    }
}

/// Fetches and applies the model when the revision moved.
fn check(client: &mut pg::Client, watcher: &mut Watcher, reason: &str) -> Result<(), Disconnected> {
    let options = watcher.options;
    let renderer = &mut watcher.renderer;
    let state = &mut watcher.state;
    let source_name = pg::display_name(&options.spec);
    let revision =
        pg::current_revision(client, &source_name).map_err(|e| Disconnected(e.to_string()))?;
    if state.seen == Some(revision) {
        return Ok(());
    }
    let (model, revision) = match pg::read(client, &source_name) {
        Ok(read) => read,
        Err(model::Error::Postgres { message, .. }) => return Err(Disconnected(message)),
        Err(e) => {
            refuse(client, options, state, revision, &e.to_string());
            return Ok(());
        }
    };
    state.seen = Some(revision);
    let sliced = match slice(&model, &options.server) {
        Ok(sliced) => sliced,
        Err(e) => {
            refuse(client, options, state, revision, &e);
            return Ok(());
        }
    };
    let text = sliced.to_model_xml();
    if state.running.as_ref().map(|r| r.sha256.as_str()) == Some(sha256_hex(&text).as_str()) {
        log(&format!(
            "{reason}: revision {revision} changes nothing for server {}",
            options.server
        ));
        finish(client, options, state, revision, pg::Outcome::Applied, "");
        return Ok(());
    }
    // Validate and render everything in memory before anything is written
    // (the templates whose inputs did not change keep their last output).
    let (renderer, rendered) = match renderer {
        Ok(renderer) => match renderer.render(&sliced) {
            Ok(rendered) => (renderer, rendered),
            Err(e) => {
                refuse(client, options, state, revision, &e.to_string());
                return Ok(());
            }
        },
        Err(problems) => {
            refuse(client, options, state, revision, problems);
            return Ok(());
        }
    };
    let outcome = apply(options, state, revision, &text, renderer, &rendered);
    match &outcome {
        Ok(took) => log(&format!(
            "{reason}: revision {revision} applied: ran {} ({took} ms)",
            options.command.join(" ")
        )),
        Err(message) => log(&format!("{reason}: revision {revision}: {message}")),
    }
    match outcome {
        Ok(_) => finish(client, options, state, revision, pg::Outcome::Applied, ""),
        Err(message) => finish(
            client,
            options,
            state,
            revision,
            pg::Outcome::Failed,
            &message,
        ),
    }
    Ok(())
}

/// Writes the last-good model, with `--apply-root` the re-rendered files,
/// then runs the command; its run time in ms (the apply's included).
fn apply(
    options: &Options,
    state: &mut State,
    revision: i64,
    text: &str,
    renderer: &mut crate::incremental::Renderer,
    rendered: &crate::incremental::Rendered,
) -> Result<u128, String> {
    let last_good = LastGood::write(&options.last_good, revision, text).map_err(|e| {
        format!(
            "{}: cannot write the last-good model: {e}",
            options.last_good.display()
        )
    })?;
    state.running = Some(last_good);
    let started = Instant::now();
    if let Some(root) = &options.apply_root {
        // The journal stays for initd (`initctl render --applied`).
        if let Err(e) = crate::sync::sync(root, &rendered.rerendered_files(), false) {
            // What was not written must be rendered and compared again.
            renderer.forget();
            return Err(format!("{}: cannot apply: {e}", root.display()));
        }
    }
    let status = std::process::Command::new(&options.command[0])
        .args(&options.command[1..])
        .status();
    let took = started.elapsed().as_millis();
    match status {
        Ok(status) if status.success() => Ok(took),
        Ok(status) => Err(format!(
            "{} failed ({status}) after {took} ms",
            options.command.join(" ")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", options.command[0])),
    }
}

fn refuse(
    client: &mut pg::Client,
    options: &Options,
    state: &mut State,
    revision: i64,
    error: &str,
) {
    state.seen = Some(revision);
    log(&format!(
        "revision {revision} refused, still running on {}: {error}",
        state.running_text()
    ));
    finish(
        client,
        options,
        state,
        revision,
        pg::Outcome::Refused,
        error,
    );
}

/// Records the outcome locally and in the server's status row.
fn finish(
    client: &mut pg::Client,
    options: &Options,
    state: &mut State,
    revision: i64,
    outcome: pg::Outcome,
    error: &str,
) {
    state.result = outcome.as_str().to_string();
    state.error = error.to_string();
    state.write(options);
    let running = state.running.as_ref().map(|r| r.revision);
    if let Err(e) = pg::write_status(
        client,
        &pg::display_name(&options.spec),
        &options.server,
        revision,
        outcome,
        error,
        running,
    ) {
        log(&format!("cannot write the status row: {e}"));
    }
}

/// The local status file's default place.
pub fn default_status_file() -> PathBuf {
    PathBuf::from("/run/nodows/model-status.json")
}

/// Checks the options that `nodows watch` cannot check by itself.
pub fn check_options(options: &Options) -> anyhow::Result<()> {
    if !options.services_dir.is_dir() {
        anyhow::bail!(
            "{}: no such services directory; give --services DIR",
            options.services_dir.display()
        );
    }
    if let Some(parent) = options.last_good.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    Ok(())
}
