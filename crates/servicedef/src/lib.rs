//! Service definitions: one `services/<name>/service.xml` per service.
//!
//! This crate is pure Rust (quick-xml only) so that initd, the renderer and
//! the xtask share one parser. The schema is documented in
//! `services/service.rng`.

mod keys;
mod trigger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use keys::{
    closest, is_key_name, wildcard_prefix, KeyDeclaration, KeyType, ANY_KEY, SSH_KEY_ALGORITHMS,
    TYPE_NAMES,
};
pub use trigger::{glob, is_device_name, Device, DeviceAction, Subsystem, Timer, MIN_EVERY};

/// The seed notes' script types (`<service type="...">`), each with its
/// own start order, user, readiness and failure rules (README, "Script
/// types"; initd's supervisor carries them out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// Sets the machine up (modules, console): runs first, as root only.
    System,
    /// Brings the network up: after the system services.
    Network,
    /// A daemon (the default): after the system and network services.
    Service,
    /// A user's program: as its `<user>` (required, not root), after every
    /// system, network and service member; the ready line does not wait.
    User,
    /// A job for the others (appliers, watchers, agents): starts as soon as
    /// its needs are up; the ready line does not wait for it.
    Helper,
}

impl ServiceType {
    /// Its place in the start order: a service starts only once every
    /// wanted service of a lower phase is up or failed. Helpers have none.
    pub fn phase(self) -> Option<u8> {
        match self {
            ServiceType::System => Some(0),
            ServiceType::Network => Some(1),
            ServiceType::Service => Some(2),
            ServiceType::User => Some(3),
            ServiceType::Helper => None,
        }
    }

    /// Whether the mode's ready line waits for services of this type.
    pub fn blocks_ready(self) -> bool {
        !matches!(self, ServiceType::User | ServiceType::Helper)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::System => "system",
            ServiceType::Network => "network",
            ServiceType::Service => "service",
            ServiceType::User => "user",
            ServiceType::Helper => "helper",
        }
    }
}

/// How initd decides that a started service is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready as soon as it is spawned.
    None,
    /// A oneshot: ready when it exits 0.
    Exit,
    /// Ready when the pidfile exists and names a live process (the daemon forks).
    Pidfile { path: PathBuf },
    /// Ready when a TCP connect to 127.0.0.1:port succeeds.
    Tcp { port: u16 },
    /// Ready when the service writes a line to the fd named by `fd` (s6 style).
    Notify { fd: i32 },
    /// Ready when the service sends `READY=1` to the datagram socket named
    /// by `NOTIFY_SOCKET` (systemd's sd_notify protocol).
    SdNotify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// At most this many restarts within `within`, then the service is failed.
    pub max: u32,
    pub within: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    None,
    Reload,
    Restart,
}

/// One configuration file of a service, rendered from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// Absolute path inside the target root, e.g. `/etc/nginx/nginx.conf`.
    pub target: String,
    /// Template path relative to the service's directory.
    pub template: PathBuf,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub on_change: OnChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub path: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub name: String,
    pub service_type: ServiceType,
    /// Debian package names (the `package` attribute and `<package>` elements
    /// without `os` or with `os="debian"`).
    pub packages: Vec<String>,
    /// FreeBSD package names (`<package os="freebsd">`); `Some` of none
    /// (an empty `<package os="freebsd"/>`): the FreeBSD base system has the
    /// program; `None`: the service is not available to FreeBSD images.
    pub freebsd_packages: Option<Vec<String>>,
    pub description: String,
    pub exec: Exec,
    pub env: Vec<(String, String)>,
    pub needs: Vec<String>,
    /// Empty means every mode.
    pub modes: Vec<String>,
    /// Events that start this service (`<start-on event="..."/>`).
    pub start_on: Vec<Event>,
    /// Custom events this service declares (`<event name="...">what it means</event>`):
    /// the only custom events a `start-on` may name and `initctl emit` sends.
    pub events: Vec<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    /// sd-notify only: once ready, the service must send `WATCHDOG=1` at
    /// least this often or it is killed and restarted (`watchdog="10s"`).
    pub watchdog: Option<Duration>,
    pub restart: Restart,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    /// `None` means reload is a restart.
    pub reload_signal: Option<i32>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub workdir: Option<PathBuf>,
    pub umask: Option<u32>,
    /// (resource name as in `<rlimit name="nofile" soft=".." hard=".."/>`, soft, hard)
    pub rlimits: Vec<(String, u64, u64)>,
    pub files: Vec<FileTarget>,
    /// The model keys the service reads (`<key>`), in file order, then the
    /// built-in `enabled` unless declared.
    pub keys: Vec<KeyDeclaration>,
    /// Fields written `{KEY}`: their values come from the model.
    pub model_fields: Vec<ModelField>,
    /// The service's directory (where service.xml and its templates live).
    pub dir: PathBuf,
    /// Line of the `<service>` element, for messages.
    pub line: u32,
}

/// A definition field whose value is one of the service's model keys,
/// written `{KEY}` (`<ready kind="tcp" port="{port}"/>`): the renderer
/// reports the key's value with every change set, and initd uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelField {
    pub field: Field,
    pub key: String,
    /// Line of the element, for messages.
    pub line: u32,
}

/// The definition fields that can come from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `<ready kind="tcp" port="{KEY}"/>`, a key of type port.
    ReadyPort,
    /// `<ready kind="pidfile" path="{KEY}"/>`, a key of type path.
    PidfilePath,
}

impl Field {
    /// The type a key must have to fill the field, and its name.
    fn key_type(self) -> (&'static str, KeyType) {
        match self {
            Field::ReadyPort => ("port", KeyType::Port),
            Field::PidfilePath => ("path", KeyType::Path),
        }
    }

    /// Sets the field of `definition` to `value` (already checked against
    /// the key's type); a value that does not fit is ignored.
    fn set(self, definition: &mut ServiceDefinition, value: &str) {
        match (self, &mut definition.ready) {
            (Field::ReadyPort, Readiness::Tcp { port }) => {
                if let Ok(value) = value.parse::<u16>() {
                    *port = value;
                }
            }
            (Field::PidfilePath, Readiness::Pidfile { path }) if value.starts_with('/') => {
                *path = PathBuf::from(value)
            }
            _ => {}
        }
    }
}

impl ServiceDefinition {
    /// The definition with its `{KEY}` fields set from `values` (the
    /// service's effective model keys); fields whose key is unset keep
    /// their declared default.
    pub fn with_model_values(&self, values: &BTreeMap<String, String>) -> ServiceDefinition {
        let mut definition = self.clone();
        for model_field in &self.model_fields {
            if let Some(value) = values.get(&model_field.key) {
                model_field.field.set(&mut definition, value);
            }
        }
        definition
    }

    /// The keys whose values initd needs (those of the `{KEY}` fields).
    pub fn model_field_keys(&self) -> impl Iterator<Item = &str> {
        self.model_fields
            .iter()
            .map(|model_field| model_field.key.as_str())
    }
}

/// An event of initd: one of the built-in ones, or a custom one that some
/// service declares with `<event name="..."/>`. Written as text in
/// `start-on`, in `initctl emit` and on the console.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// initd has started supervising.
    Boot,
    /// `started:NAME`: the service became ready.
    Started(String),
    /// `stopped:NAME`: the service stopped (or a oneshot finished).
    Stopped(String),
    /// `failed:NAME`: the service failed for good.
    Failed(String),
    /// `mode:NAME`: a switch to that mode.
    Mode(String),
    /// `config-changed:NAME`: a render changed the service's files.
    ConfigChanged(String),
    /// A custom event, declared by a service (`<event name="..."/>`).
    Custom(String),
    /// `net-device-added:NAME` and the like: from the kernel's uevents.
    Device(Device),
    /// `every:15m`, `daily:03:30`: initd's timers.
    Timer(Timer),
}

impl Event {
    /// Parses the text form; Err says what is wrong with it.
    pub fn parse(text: &str) -> Result<Event, String> {
        let word = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if text == "boot" {
            return Ok(Event::Boot);
        }
        if let Some(event) = Event::parse_trigger(text) {
            return event;
        }
        if let Some((kind, name)) = text.split_once(':') {
            if !word(name) {
                return Err(format!(
                    "bad event \"{text}\": the name after \"{kind}:\" must be one word of letters, digits, - _ ."
                ));
            }
            let name = name.to_string();
            return match kind {
                "started" => Ok(Event::Started(name)),
                "stopped" => Ok(Event::Stopped(name)),
                "failed" => Ok(Event::Failed(name)),
                "mode" => Ok(Event::Mode(name)),
                "config-changed" => Ok(Event::ConfigChanged(name)),
                _ => Err(format!(
                    "bad event \"{text}\": \"{kind}:\" is none of started:, stopped:, failed:, mode:, config-changed:, net-device-added:, net-device-removed:, block-device-added:, block-device-removed:, every:, daily:"
                )),
            };
        }
        if word(text) {
            Ok(Event::Custom(text.to_string()))
        } else {
            Err(format!(
                "bad event name \"{text}\": one word, like boot, started:net or a custom event"
            ))
        }
    }
}

impl Event {
    /// A device or timer event (`None`: the text is neither).
    fn parse_trigger(text: &str) -> Option<Result<Event, String>> {
        let (kind, rest) = text.split_once(':')?;
        if matches!(kind, "every" | "daily") {
            return Some(Timer::parse(kind, rest).map(Event::Timer));
        }
        let (_, subsystem, action) = trigger::DEVICE_KINDS
            .iter()
            .find(|(name, _, _)| *name == kind)?;
        if !trigger::is_device_pattern(rest) {
            return Some(Err(format!(
                "bad event \"{text}\": the device name after \"{kind}:\" is letters, digits, - _ . and the wildcards * ?, like {kind}:eth1 or {kind}:eth*"
            )));
        }
        Some(Ok(Event::Device(Device {
            subsystem: *subsystem,
            action: *action,
            name: rest.to_string(),
        })))
    }

    /// Whether a `start-on` of this event fires on `fired`: the same event,
    /// or a device event whose name pattern matches the device.
    pub fn matches(&self, fired: &Event) -> bool {
        match (self, fired) {
            (Event::Device(pattern), Event::Device(device)) => pattern.matches(device),
            _ => self == fired,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Boot => write!(formatter, "boot"),
            Event::Started(name) => write!(formatter, "started:{name}"),
            Event::Stopped(name) => write!(formatter, "stopped:{name}"),
            Event::Failed(name) => write!(formatter, "failed:{name}"),
            Event::Mode(name) => write!(formatter, "mode:{name}"),
            Event::ConfigChanged(name) => write!(formatter, "config-changed:{name}"),
            Event::Custom(name) => write!(formatter, "{name}"),
            Event::Device(device) => write!(formatter, "{}:{}", device.kind(), device.name),
            Event::Timer(timer) => write!(formatter, "{timer}"),
        }
    }
}

/// Every problem found while reading service definitions, each rendered as
/// `file:line:col: message`. Validation reports all problems at once.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct Errors {
    pub problems: Vec<String>,
}

/// The file name of a definition inside its service directory.
pub const FILE_NAME: &str = "service.xml";

/// Reads and validates every `DIR/*/service.xml` (cross-service checks too:
/// duplicate names, unknown `needs`, dependency cycles).
///
/// Directories without a `service.xml` are skipped. The result is sorted by
/// service name. Missing binaries are not checked here (definitions are
/// validated on the build host): initd's `check` does that.
pub fn load_dir(dir: &Path) -> Result<Vec<ServiceDefinition>, Errors> {
    load_dir_on_threads(dir, 1)
}

/// [`load_dir`], parsing the files on up to `threads` threads (the
/// renderer's 1,000-service case; initd stays on one). The result and the
/// problems are the same and in the same order whatever `threads` is; if a
/// thread cannot be started, its share is parsed on the calling thread.
pub fn load_dir_on_threads(dir: &Path, threads: usize) -> Result<Vec<ServiceDefinition>, Errors> {
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            return Err(Errors {
                problems: vec![format!("{}: cannot read directory: {error}", dir.display())],
            })
        }
    };
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join(FILE_NAME))
        .collect();
    candidates.sort();
    // Whether each candidate is a file is asked on the parsing threads too
    // (`None`: skipped), not one by one before them.
    let results = parse_all(&candidates, threads);
    let mut parsed = Vec::new();
    for (file, result) in candidates.iter().zip(results) {
        let Some(result) = result else {
            continue;
        };
        match result {
            Ok(parsed_one) => {
                let directory_name = file
                    .parent()
                    .and_then(|parent| parent.file_name())
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if directory_name != parsed_one.definition.name {
                    problems.push(format!(
                        "{}: service name \"{}\" differs from its directory name \"{directory_name}\": rename one of them",
                        parsed_one.service_position, parsed_one.definition.name
                    ));
                }
                parsed.push(parsed_one)
            }
            Err(errors) => problems.extend(errors.problems),
        }
    }
    check_set(&parsed, &mut problems);
    if problems.is_empty() {
        let mut definitions: Vec<ServiceDefinition> =
            parsed.into_iter().map(|parsed| parsed.definition).collect();
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(definitions)
    } else {
        Err(Errors { problems })
    }
}

/// Reads and validates one `service.xml` (no cross-service checks).
pub fn parse_file(path: &Path) -> Result<ServiceDefinition, Errors> {
    parse_with_positions(path).map(|parsed| parsed.definition)
}

/// Parses a definition from a string; `path` is used for messages and for
/// `ServiceDefinition::dir` (its parent).
pub fn parse_str(path: &Path, text: &str) -> Result<ServiceDefinition, Errors> {
    parse_text(path, text).map(|parsed| parsed.definition)
}

/// Cross-service checks over already parsed definitions: duplicate names,
/// `needs` on unknown services, dependency cycles. Messages point at each
/// definition's `<service>` element.
pub fn check_definitions(definitions: &[ServiceDefinition]) -> Result<(), Errors> {
    let parsed: Vec<Parsed> = definitions
        .iter()
        .map(|definition| {
            let position = Position {
                file: definition.dir.join(FILE_NAME),
                line: definition.line,
                column: 1,
            };
            Parsed {
                definition: definition.clone(),
                service_position: position.clone(),
                needs_positions: definition.needs.iter().map(|_| position.clone()).collect(),
                start_on_positions: definition
                    .start_on
                    .iter()
                    .map(|_| position.clone())
                    .collect(),
            }
        })
        .collect();
    let mut problems = Vec::new();
    check_set(&parsed, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Errors { problems })
    }
}

/// Services in dependency order (a service after everything it needs);
/// ties broken by name. Unknown `needs` are ignored; cycles must have been
/// refused already (the members of a cycle come last, by name).
pub fn start_order(definitions: &[ServiceDefinition]) -> Vec<String> {
    let mut sorted: Vec<&ServiceDefinition> = definitions.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut done: Vec<String> = Vec::new();
    loop {
        let mut progressed = false;
        for definition in &sorted {
            if done.contains(&definition.name) {
                continue;
            }
            let ready = definition
                .needs
                .iter()
                .all(|need| done.contains(need) || !sorted.iter().any(|other| &other.name == need));
            if ready {
                done.push(definition.name.clone());
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for definition in &sorted {
        if !done.contains(&definition.name) {
            done.push(definition.name.clone());
        }
    }
    done
}

/// The signal number of `TERM`, `SIGTERM`, `HUP`, ... (for this target).
pub fn signal_number(name: &str) -> Option<i32> {
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    SIGNALS
        .iter()
        .find(|(signal_name, _)| *signal_name == bare)
        .map(|(_, number)| *number)
}

/// The name (without `SIG`) of a signal number, for messages.
pub fn signal_name(number: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|(_, signal_number)| *signal_number == number)
        .map(|(name, _)| *name)
}

/// The kinds of `<rlimit name="...">`.
pub const RLIMIT_NAMES: &[&str] = &[
    "core", "cpu", "data", "fsize", "nofile", "nproc", "stack", "as", "memlock",
];

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("ALRM", libc::SIGALRM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
    ("ABRT", libc::SIGABRT),
    ("PIPE", libc::SIGPIPE),
];

/// Parses a duration: an integer followed by `ms`, `s`, `m` or `h`
/// (`100ms`, `10s`, `5m`, `1h`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits_end = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    let milliseconds = match unit {
        "ms" => value,
        "s" => value.checked_mul(1000)?,
        "m" => value.checked_mul(60_000)?,
        "h" => value.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(milliseconds))
}

#[derive(Debug, Clone)]
struct Position {
    file: PathBuf,
    line: u32,
    column: u32,
}

impl std::fmt::Display for Position {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}:{}:{}",
            self.file.display(),
            self.line,
            self.column
        )
    }
}

struct Parsed {
    definition: ServiceDefinition,
    service_position: Position,
    needs_positions: Vec<Position>,
    start_on_positions: Vec<Position>,
}

impl Parsed {
    /// Where the `index`-th need is written (the `<service>` element when
    /// not known).
    fn need_position(&self, index: usize) -> &Position {
        self.needs_positions
            .get(index)
            .unwrap_or(&self.service_position)
    }
}

fn check_set(parsed: &[Parsed], problems: &mut Vec<String>) {
    let mut seen: BTreeMap<&str, &Position> = BTreeMap::new();
    for one in parsed {
        let name = one.definition.name.as_str();
        if let Some(first) = seen.get(name) {
            problems.push(format!(
                "{}: duplicate service name \"{name}\" (first defined at {first}): rename or remove one",
                one.service_position
            ));
        } else {
            seen.insert(name, &one.service_position);
        }
    }
    for one in parsed {
        for (index, need) in one.definition.needs.iter().enumerate() {
            if !seen.contains_key(need.as_str()) {
                let position = one.need_position(index);
                problems.push(format!(
                    "{position}: service \"{}\" needs \"{need}\", which does not exist: add services/{need}/service.xml or remove the need",
                    one.definition.name
                ));
            }
        }
    }
    // start-on: a built-in event about a service that exists, or a custom
    // event some service declares; a typo would never fire.
    let declared: BTreeMap<&str, &str> = parsed
        .iter()
        .flat_map(|one| {
            one.definition
                .events
                .iter()
                .map(|event| (event.as_str(), one.definition.name.as_str()))
        })
        .collect();
    for one in parsed {
        for (index, event) in one.definition.start_on.iter().enumerate() {
            let position = one
                .start_on_positions
                .get(index)
                .unwrap_or(&one.service_position);
            match event {
                Event::Started(service)
                | Event::Stopped(service)
                | Event::Failed(service)
                | Event::ConfigChanged(service)
                    if !seen.contains_key(service.as_str()) =>
                {
                    problems.push(format!(
                        "{position}: start-on \"{event}\" names service \"{service}\", which does not exist: fix the name or add services/{service}/service.xml"
                    ));
                }
                Event::Custom(name) if !declared.contains_key(name.as_str()) => {
                    let known: Vec<&str> = declared.keys().copied().collect();
                    problems.push(format!(
                        "{position}: start-on \"{name}\" is no built-in event and no service declares it: declare it with <event name=\"{name}\"/> in the service that emits it (declared: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ));
                }
                _ => {}
            }
        }
    }
    check_type_order(parsed, problems);
    // Cycles: depth-first search; each cycle is reported once, at its
    // smallest member.
    let by_name: BTreeMap<&str, &Parsed> = parsed
        .iter()
        .map(|one| (one.definition.name.as_str(), one))
        .collect();
    let mut reported: Vec<Vec<String>> = Vec::new();
    for start in by_name.keys() {
        let mut path: Vec<&str> = vec![start];
        find_cycles(start, &by_name, &mut path, &mut reported, problems);
    }
}

/// A need on a service of a later phase would wait forever (it waits for
/// the dependent's phase to be up first): a service may need services of
/// its own or an earlier type; a helper counts as the latest phase among
/// what it needs. Run before the cycle check, so cycles are cut short.
fn check_type_order(parsed: &[Parsed], problems: &mut Vec<String>) {
    let by_name: BTreeMap<&str, &Parsed> = parsed
        .iter()
        .map(|one| (one.definition.name.as_str(), one))
        .collect();
    for one in parsed {
        let Some(phase) = one.definition.service_type.phase() else {
            continue;
        };
        for (index, need) in one.definition.needs.iter().enumerate() {
            let need_phase = effective_phase(need, &by_name, &mut Vec::new());
            if need_phase > phase {
                let position = one.need_position(index);
                problems.push(format!(
                    "{position}: service \"{}\" (type {}) needs \"{need}\", which starts later (a {} or what it needs): a service may need only services of its own or an earlier type (system, network, service, user; a helper takes the type of what it needs): change one of the types",
                    one.definition.name,
                    one.definition.service_type.as_str(),
                    by_name
                        .get(need.as_str())
                        .map_or("service", |needed| needed.definition.service_type.as_str())
                ));
            }
        }
    }
}

/// The phase a service starts in: its type's, or for a helper the latest
/// among its needs (0 when it needs nothing). `path` stops cycles.
fn effective_phase<'a>(
    name: &'a str,
    by_name: &BTreeMap<&'a str, &'a Parsed>,
    path: &mut Vec<&'a str>,
) -> u8 {
    let Some(one) = by_name.get(name) else {
        return 0;
    };
    if let Some(phase) = one.definition.service_type.phase() {
        return phase;
    }
    if path.contains(&name) {
        return 0;
    }
    path.push(name);
    let phase = one
        .definition
        .needs
        .iter()
        .map(|need| effective_phase(need, by_name, path))
        .max()
        .unwrap_or(0);
    path.pop();
    phase
}

fn find_cycles<'a>(
    start: &'a str,
    by_name: &BTreeMap<&'a str, &'a Parsed>,
    path: &mut Vec<&'a str>,
    reported: &mut Vec<Vec<String>>,
    problems: &mut Vec<String>,
) {
    let Some(current) = path.last().and_then(|name| by_name.get(name)) else {
        return;
    };
    for need in &current.definition.needs {
        let need = need.as_str();
        if need == start {
            let mut members: Vec<String> = path.iter().map(|name| name.to_string()).collect();
            members.sort();
            if !reported.contains(&members) {
                reported.push(members);
                let mut chain: Vec<&str> = path.clone();
                chain.push(start);
                let position = by_name
                    .get(start)
                    .map(|one| one.service_position.to_string())
                    .unwrap_or_default();
                problems.push(format!(
                    "{position}: dependency cycle: {}: remove one of these needs",
                    chain.join(" -> ")
                ));
            }
        } else if need > start && !path.contains(&need) && by_name.contains_key(need) {
            // Only explore members greater than the start so that each cycle
            // is found from its smallest member.
            path.push(need);
            find_cycles(start, by_name, path, reported, problems);
            path.pop();
        }
    }
}

// ---------------------------------------------------------------------------
// XML to a small tree with positions, then the tree to a definition.

struct Element {
    name: String,
    position: Position,
    attributes: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

/// Parses every one of `files` that is a file (`None` for the others), in
/// order, on up to `threads` threads (contiguous chunks, one per thread).
fn parse_all(files: &[PathBuf], threads: usize) -> Vec<Option<Result<Parsed, Errors>>> {
    map_on_threads(files, threads, || (), |_, file| parse_if_file(file))
}

/// `items.iter().map(f)` on up to `threads` threads, each over a contiguous
/// share with its own `state`; the results are in item order. A share whose
/// thread cannot start or panics is done on the calling thread.
pub fn map_on_threads<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    let (state, f) = (&state, &f);
    let run = move |part: &[T]| {
        let mut state = state();
        part.iter()
            .map(|item| f(&mut state, item))
            .collect::<Vec<R>>()
    };
    if threads == 1 {
        return run(items);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .skip(1)
            .map(|part| {
                let handle = std::thread::Builder::new()
                    .spawn_scoped(scope, move || run(part))
                    .ok();
                (part, handle)
            })
            .collect();
        let mut results = run(&items[..chunk.min(items.len())]);
        for (part, handle) in handles {
            match handle.map(|handle| handle.join()) {
                Some(Ok(part_results)) => results.extend(part_results),
                _ => results.extend(run(part)),
            }
        }
        results
    })
}

fn parse_if_file(path: &Path) -> Option<Result<Parsed, Errors>> {
    path.is_file().then(|| parse_with_positions(path))
}

fn parse_with_positions(path: &Path) -> Result<Parsed, Errors> {
    match read_to_string(path) {
        Ok(text) => parse_text(path, &text),
        Err(error) => Err(Errors {
            problems: vec![format!("{}: cannot read: {error}", path.display())],
        }),
    }
}

/// `std::fs::read_to_string` without its fstat and seek for a size hint
/// (definitions are small; the renderer reads 1,000 of them per render).
fn read_to_string(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(4096);
    std::fs::File::open(path)?
        .take(u64::MAX)
        .read_to_string(&mut text)?;
    Ok(text)
}

fn position_of(path: &Path, text: &str, offset: u64) -> Position {
    let offset = (offset as usize).min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|byte| **byte == b'\n').count() as u32 + 1;
    let line_start = before
        .iter()
        .rposition(|byte| *byte == b'\n')
        .map(|index| index + 1)
        .unwrap_or(0);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count() as u32
        + 1;
    Position {
        file: path.to_path_buf(),
        line,
        column,
    }
}

fn read_tree(path: &Path, text: &str) -> Result<Element, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let offset = reader.buffer_position();
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                let position = position_of(path, text, reader.error_position());
                return Err(format!("{position}: malformed XML: {error}"));
            }
        };
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let position = position_of(path, text, offset);
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                let mut attributes = Vec::new();
                for attribute in start.attributes().with_checks(true) {
                    let attribute = attribute
                        .map_err(|error| format!("{position}: malformed XML attribute: {error}"))?;
                    let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
                    let value = attribute
                        .unescape_value()
                        .map_err(|error| format!("{position}: malformed XML attribute: {error}"))?
                        .into_owned();
                    attributes.push((key, value));
                }
                if root.is_some() && stack.is_empty() {
                    return Err(format!(
                        "{position}: malformed XML: more than one root element"
                    ));
                }
                let element = Element {
                    name,
                    position,
                    attributes,
                    children: Vec::new(),
                    text: String::new(),
                };
                if matches!(event, Event::Start(_)) {
                    stack.push(element);
                } else if let Some(parent) = stack.last_mut() {
                    parent.children.push(element);
                } else {
                    root = Some(element);
                }
            }
            Event::End(_) => {
                if let Some(element) = stack.pop() {
                    if let Some(parent) = stack.last_mut() {
                        parent.children.push(element);
                    } else {
                        root = Some(element);
                    }
                }
            }
            Event::Text(text_event) => {
                let position = position_of(path, text, offset);
                let value = text_event
                    .unescape()
                    .map_err(|error| format!("{position}: malformed XML text: {error}"))?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push_str(&value),
                    None if value.trim().is_empty() => {}
                    None => {
                        return Err(format!(
                            "{position}: malformed XML: text outside the root element"
                        ))
                    }
                }
            }
            Event::CData(cdata) => {
                if let Some(parent) = stack.last_mut() {
                    parent
                        .text
                        .push_str(&String::from_utf8_lossy(&cdata.into_inner()));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        let position = position_of(path, text, text.len() as u64);
        return Err(format!(
            "{position}: malformed XML: element <{}> opened at line {} is not closed",
            open.name, open.position.line
        ));
    }
    root.ok_or_else(|| {
        let position = position_of(path, text, 0);
        format!("{position}: malformed XML: no root element")
    })
}

struct Checker<'a> {
    problems: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, position: &Position, message: String) {
        self.problems.push(format!("{position}: {message}"));
    }

    fn attributes(&mut self, element: &Element, allowed: &[&str], required: &[&str]) {
        for (key, _) in &element.attributes {
            if !allowed.contains(&key.as_str()) {
                let expected = if allowed.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("expected one of: {}", allowed.join(", "))
                };
                self.problem(
                    &element.position,
                    format!(
                        "unknown attribute \"{key}\" on <{}>: {expected}",
                        element.name
                    ),
                );
            }
        }
        for key in required {
            if attribute(element, key).is_none() {
                self.problem(
                    &element.position,
                    format!("<{}> needs the attribute \"{key}\"", element.name),
                );
            }
        }
    }

    fn no_children(&mut self, element: &Element) {
        for child in &element.children {
            self.problem(
                &child.position,
                format!(
                    "unknown element <{}> inside <{}>: it takes no child elements",
                    child.name, element.name
                ),
            );
        }
    }

    fn duration(&mut self, element: &Element, key: &str, default: Duration) -> Duration {
        match attribute(element, key) {
            None => default,
            Some(value) => match parse_duration(value) {
                Some(duration) => duration,
                None => {
                    self.problem(
                        &element.position,
                        format!("bad duration \"{value}\" in {key}: write a whole number with a unit, like 100ms, 10s, 5m or 1h"),
                    );
                    default
                }
            },
        }
    }

    fn signal(&mut self, element: &Element, key: &str, default: i32) -> i32 {
        match attribute(element, key) {
            None => default,
            Some(value) => match signal_number(value) {
                Some(number) => number,
                None => {
                    let names: Vec<&str> = SIGNALS.iter().map(|(name, _)| *name).collect();
                    self.problem(
                        &element.position,
                        format!(
                            "bad signal name \"{value}\" in {key}: expected one of {}",
                            names.join(", ")
                        ),
                    );
                    default
                }
            },
        }
    }

    fn number<T: std::str::FromStr>(
        &mut self,
        element: &Element,
        key: &str,
        what: &str,
    ) -> Option<T> {
        let value = attribute(element, key)?;
        match value.trim().parse() {
            Ok(number) => Some(number),
            Err(_) => {
                self.problem(
                    &element.position,
                    format!(
                        "bad {key} \"{value}\" on <{}>: expected {what}",
                        element.name
                    ),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        element: &Element,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> T {
        match attribute(element, key) {
            None => default,
            Some(value) => match choices.iter().find(|(name, _)| *name == value) {
                Some((_, choice)) => *choice,
                None => {
                    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                    self.problem(
                        &element.position,
                        format!(
                            "bad {key} \"{value}\" on <{}>: expected one of {}",
                            element.name,
                            names.join(", ")
                        ),
                    );
                    default
                }
            },
        }
    }
}

fn attribute<'a>(element: &'a Element, key: &str) -> Option<&'a str> {
    element
        .attributes
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-_.@+".contains(character))
        && !name.starts_with('.')
        && !name.starts_with('-')
}

fn parse_octal(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty()
        || !text
            .chars()
            .all(|character| ('0'..='7').contains(&character))
    {
        return None;
    }
    u32::from_str_radix(text, 8).ok()
}

fn parse_text(path: &Path, text: &str) -> Result<Parsed, Errors> {
    let root = read_tree(path, text).map_err(|problem| Errors {
        problems: vec![problem],
    })?;
    let mut problems = Vec::new();
    let parsed = build(
        path,
        &root,
        &mut Checker {
            problems: &mut problems,
        },
    );
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(Errors { problems })
    }
}

const CHILD_ELEMENTS: &[&str] = &[
    "description",
    "package",
    "exec",
    "env",
    "needs",
    "modes",
    "start-on",
    "event",
    "ready",
    "restart",
    "stop",
    "reload",
    "user",
    "group",
    "workdir",
    "umask",
    "rlimit",
    "file",
    "key",
];

fn build(path: &Path, root: &Element, checker: &mut Checker) -> Parsed {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if root.name != "service" {
        checker.problem(
            &root.position,
            format!(
                "unknown root element <{}>: a definition starts with <service name=\"...\">",
                root.name
            ),
        );
    }
    checker.attributes(root, &["name", "type", "package"], &["name"]);
    let name = attribute(root, "name").unwrap_or_default().to_string();
    if attribute(root, "name").is_some() && !is_service_name(&name) {
        checker.problem(
            &root.position,
            format!("bad service name \"{name}\": use letters, digits and - _ . @ +"),
        );
    }
    let service_type = checker.choice(
        root,
        "type",
        &[
            ("system", ServiceType::System),
            ("network", ServiceType::Network),
            ("service", ServiceType::Service),
            ("user", ServiceType::User),
            ("helper", ServiceType::Helper),
        ],
        ServiceType::Service,
    );
    if !root.text.trim().is_empty() {
        checker.problem(
            &root.position,
            "text directly inside <service>: put it in <description>".to_string(),
        );
    }
    let mut definition = ServiceDefinition {
        name,
        service_type,
        packages: attribute(root, "package")
            .map(|package| package.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        freebsd_packages: None,
        description: String::new(),
        exec: Exec {
            path: PathBuf::new(),
            args: Vec::new(),
        },
        env: Vec::new(),
        needs: Vec::new(),
        modes: Vec::new(),
        start_on: Vec::new(),
        events: Vec::new(),
        ready: Readiness::None,
        ready_timeout: Duration::from_secs(90),
        watchdog: None,
        restart: Restart {
            policy: RestartPolicy::Always,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max: 5,
            within: Duration::from_secs(60),
        },
        stop_signal: libc::SIGTERM,
        stop_timeout: Duration::from_secs(10),
        reload_signal: None,
        user: None,
        group: None,
        workdir: None,
        umask: None,
        rlimits: Vec::new(),
        files: Vec::new(),
        keys: Vec::new(),
        model_fields: Vec::new(),
        dir,
        line: root.position.line,
    };
    let mut needs_positions = Vec::new();
    let mut start_on_positions = Vec::new();
    let mut seen_exec = false;
    let mut restart_policy_given = false;
    let mut model_fields: Vec<ModelField> = Vec::new();
    let mut seen_once: Vec<&str> = Vec::new();
    for child in &root.children {
        let single = [
            "description",
            "exec",
            "modes",
            "ready",
            "restart",
            "stop",
            "reload",
            "user",
            "group",
            "workdir",
            "umask",
        ];
        if single.contains(&child.name.as_str()) {
            if seen_once.contains(&child.name.as_str()) {
                checker.problem(
                    &child.position,
                    format!("<{}> given twice: keep one", child.name),
                );
            }
            seen_once.push(child.name.as_str());
        }
        match child.name.as_str() {
            "description" => {
                checker.attributes(child, &[], &[]);
                checker.no_children(child);
                definition.description = child.text.trim().to_string();
            }
            "package" => {
                checker.attributes(child, &["os"], &[]);
                checker.no_children(child);
                let os =
                    checker.choice(child, "os", &[("debian", false), ("freebsd", true)], false);
                let names = child.text.split_whitespace().map(str::to_string);
                if os {
                    definition
                        .freebsd_packages
                        .get_or_insert_with(Vec::new)
                        .extend(names);
                } else {
                    definition.packages.extend(names);
                }
            }
            "exec" => {
                seen_exec = true;
                checker.attributes(child, &["path"], &["path"]);
                let exec_path = attribute(child, "path").unwrap_or_default();
                if !exec_path.is_empty() && !exec_path.starts_with('/') {
                    checker.problem(
                        &child.position,
                        format!("exec path \"{exec_path}\" is not absolute: write the full path"),
                    );
                }
                definition.exec.path = PathBuf::from(exec_path);
                if !child.text.trim().is_empty() {
                    checker.problem(
                        &child.position,
                        "text inside <exec>: put each argument in its own <arg>".to_string(),
                    );
                }
                for argument in &child.children {
                    if argument.name == "arg" {
                        checker.attributes(argument, &[], &[]);
                        checker.no_children(argument);
                        definition.exec.args.push(argument.text.clone());
                    } else {
                        checker.problem(
                            &argument.position,
                            format!(
                                "unknown element <{}> inside <exec>: expected <arg>",
                                argument.name
                            ),
                        );
                    }
                }
            }
            "env" => {
                checker.attributes(child, &["name", "value"], &["name", "value"]);
                checker.no_children(child);
                let key = attribute(child, "name").unwrap_or_default();
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    checker.problem(
                        &child.position,
                        format!("bad environment variable name \"{key}\""),
                    );
                }
                definition.env.push((
                    key.to_string(),
                    attribute(child, "value").unwrap_or_default().to_string(),
                ));
            }
            "needs" => {
                checker.attributes(child, &[], &[]);
                checker.no_children(child);
                for need in child.text.split_whitespace() {
                    definition.needs.push(need.to_string());
                    needs_positions.push(child.position.clone());
                }
            }
            "modes" => {
                checker.attributes(child, &[], &[]);
                checker.no_children(child);
                definition.modes = child.text.split_whitespace().map(str::to_string).collect();
            }
            "start-on" => {
                checker.attributes(child, &["event"], &["event"]);
                checker.no_children(child);
                let event = attribute(child, "event").unwrap_or_default();
                match Event::parse(event) {
                    Ok(event) => {
                        definition.start_on.push(event);
                        start_on_positions.push(child.position.clone());
                    }
                    Err(message) => checker.problem(&child.position, message),
                }
            }
            "event" => {
                checker.attributes(child, &["name"], &["name"]);
                checker.no_children(child);
                let name = attribute(child, "name").unwrap_or_default();
                match Event::parse(name) {
                    Ok(Event::Custom(name)) if definition.events.contains(&name) => checker
                        .problem(
                            &child.position,
                            format!("event \"{name}\" is declared twice: remove one"),
                        ),
                    Ok(Event::Custom(name)) => definition.events.push(name),
                    Ok(built_in) => checker.problem(
                        &child.position,
                        format!("event \"{built_in}\" is built in: declare only custom events"),
                    ),
                    Err(message) => checker.problem(&child.position, message),
                }
            }
            "ready" => {
                checker.attributes(
                    child,
                    &["kind", "port", "path", "fd", "timeout", "watchdog"],
                    &["kind"],
                );
                checker.no_children(child);
                definition.ready_timeout =
                    checker.duration(child, "timeout", definition.ready_timeout);
                if attribute(child, "watchdog").is_some() {
                    definition.watchdog = Some(checker.duration(child, "watchdog", Duration::ZERO))
                        .filter(|every| !every.is_zero());
                }
                let kind = attribute(child, "kind").unwrap_or("none");
                let extra_allowed: &[&str] = match kind {
                    "tcp" => &["port"],
                    "pidfile" => &["path"],
                    "notify" => &["fd"],
                    "sd-notify" => &["watchdog"],
                    _ => &[],
                };
                for key in ["port", "path", "fd", "watchdog"] {
                    if attribute(child, key).is_some() && !extra_allowed.contains(&key) {
                        checker.problem(
                            &child.position,
                            format!("attribute \"{key}\" does not apply to ready kind \"{kind}\""),
                        );
                    }
                }
                definition.ready = match kind {
                    "none" => Readiness::None,
                    "exit" => Readiness::Exit,
                    "sd-notify" => Readiness::SdNotify,
                    "pidfile" if key_reference(child, "path").is_some() => {
                        model_fields.push(ModelField {
                            field: Field::PidfilePath,
                            key: key_reference(child, "path").unwrap_or_default().to_string(),
                            line: child.position.line,
                        });
                        Readiness::Pidfile {
                            path: PathBuf::new(),
                        }
                    }
                    "tcp" if key_reference(child, "port").is_some() => {
                        model_fields.push(ModelField {
                            field: Field::ReadyPort,
                            key: key_reference(child, "port").unwrap_or_default().to_string(),
                            line: child.position.line,
                        });
                        Readiness::Tcp { port: 0 }
                    }
                    "pidfile" => match attribute(child, "path") {
                        Some(pidfile) if pidfile.starts_with('/') => Readiness::Pidfile {
                            path: PathBuf::from(pidfile),
                        },
                        _ => {
                            checker.problem(
                                &child.position,
                                "ready kind \"pidfile\" needs an absolute path=\"...\"".to_string(),
                            );
                            Readiness::None
                        }
                    },
                    "tcp" => match checker.number::<u16>(child, "port", "a port number 1-65535") {
                        Some(port) if port > 0 => Readiness::Tcp { port },
                        Some(_) => {
                            checker.problem(
                                &child.position,
                                "bad port \"0\" on <ready>: expected a port number 1-65535"
                                    .to_string(),
                            );
                            Readiness::None
                        }
                        None => {
                            if attribute(child, "port").is_none() {
                                checker.problem(
                                    &child.position,
                                    "ready kind \"tcp\" needs port=\"...\"".to_string(),
                                );
                            }
                            Readiness::None
                        }
                    },
                    "notify" => match checker.number::<i32>(
                        child,
                        "fd",
                        "a file descriptor number 3 or more",
                    ) {
                        Some(fd) if fd >= 3 => Readiness::Notify { fd },
                        Some(fd) => {
                            checker.problem(&child.position, format!("bad fd \"{fd}\" on <ready>: 0-2 are stdin, stdout and stderr: use 3 or more"));
                            Readiness::None
                        }
                        None => {
                            if attribute(child, "fd").is_none() {
                                checker.problem(
                                    &child.position,
                                    "ready kind \"notify\" needs fd=\"...\"".to_string(),
                                );
                            }
                            Readiness::None
                        }
                    },
                    other => {
                        checker.problem(
                            &child.position,
                            format!("bad ready kind \"{other}\": expected one of none, exit, pidfile, tcp, notify, sd-notify"),
                        );
                        Readiness::None
                    }
                };
            }
            "restart" => {
                checker.attributes(
                    child,
                    &["policy", "backoff-min", "backoff-max", "max", "within"],
                    &[],
                );
                checker.no_children(child);
                restart_policy_given = attribute(child, "policy").is_some();
                let restart = &mut definition.restart;
                restart.policy = checker.choice(
                    child,
                    "policy",
                    &[
                        ("always", RestartPolicy::Always),
                        ("on-failure", RestartPolicy::OnFailure),
                        ("never", RestartPolicy::Never),
                    ],
                    restart.policy,
                );
                restart.backoff_min = checker.duration(child, "backoff-min", restart.backoff_min);
                restart.backoff_max = checker.duration(child, "backoff-max", restart.backoff_max);
                if let Some(max) = checker.number::<u32>(child, "max", "a whole number") {
                    restart.max = max;
                }
                restart.within = checker.duration(child, "within", restart.within);
                if restart.backoff_min > restart.backoff_max {
                    checker.problem(
                        &child.position,
                        "backoff-min is larger than backoff-max: swap them".to_string(),
                    );
                }
            }
            "stop" => {
                checker.attributes(child, &["signal", "timeout"], &[]);
                checker.no_children(child);
                definition.stop_signal = checker.signal(child, "signal", definition.stop_signal);
                definition.stop_timeout =
                    checker.duration(child, "timeout", definition.stop_timeout);
            }
            "reload" => {
                checker.attributes(child, &["signal"], &["signal"]);
                checker.no_children(child);
                definition.reload_signal = Some(checker.signal(child, "signal", libc::SIGHUP));
            }
            "user" | "group" | "workdir" => {
                checker.attributes(child, &[], &[]);
                checker.no_children(child);
                let value = child.text.trim().to_string();
                if value.is_empty() {
                    checker.problem(&child.position, format!("<{}> is empty", child.name));
                }
                match child.name.as_str() {
                    "user" => definition.user = Some(value),
                    "group" => definition.group = Some(value),
                    _ => {
                        if !value.starts_with('/') {
                            checker.problem(
                                &child.position,
                                format!("workdir \"{value}\" is not absolute"),
                            );
                        }
                        definition.workdir = Some(PathBuf::from(value));
                    }
                }
            }
            "umask" => {
                checker.attributes(child, &[], &[]);
                checker.no_children(child);
                match parse_octal(&child.text).filter(|umask| *umask <= 0o777) {
                    Some(umask) => definition.umask = Some(umask),
                    None => checker.problem(
                        &child.position,
                        format!(
                            "bad umask \"{}\": expected octal like 0022",
                            child.text.trim()
                        ),
                    ),
                }
            }
            "rlimit" => {
                checker.attributes(child, &["name", "soft", "hard"], &["name"]);
                checker.no_children(child);
                let limit_name = attribute(child, "name").unwrap_or_default();
                if attribute(child, "name").is_some() && !RLIMIT_NAMES.contains(&limit_name) {
                    checker.problem(
                        &child.position,
                        format!(
                            "bad rlimit name \"{limit_name}\": expected one of {}",
                            RLIMIT_NAMES.join(", ")
                        ),
                    );
                }
                let mut limit = |key: &str| -> Option<u64> {
                    match attribute(child, key) {
                        Some("unlimited") => Some(u64::MAX),
                        Some(_) => checker.number::<u64>(child, key, "a whole number or unlimited"),
                        None => None,
                    }
                };
                let soft = limit("soft");
                let hard = limit("hard");
                match (soft, hard) {
                    (None, None) => checker.problem(
                        &child.position,
                        "<rlimit> needs soft=\"...\" or hard=\"...\"".to_string(),
                    ),
                    (soft, hard) => {
                        let soft = soft.or(hard).unwrap_or(u64::MAX);
                        let hard = hard.unwrap_or(soft);
                        if soft > hard {
                            checker.problem(
                                &child.position,
                                "rlimit soft is larger than hard".to_string(),
                            );
                        }
                        definition
                            .rlimits
                            .push((limit_name.to_string(), soft, hard));
                    }
                }
            }
            "file" => {
                checker.attributes(
                    child,
                    &["target", "template", "mode", "owner", "group", "on-change"],
                    &["target", "template"],
                );
                checker.no_children(child);
                let target = attribute(child, "target").unwrap_or_default();
                if attribute(child, "target").is_some() && !target.starts_with('/') {
                    checker.problem(
                        &child.position,
                        format!("file target \"{target}\" is not absolute"),
                    );
                }
                let mode = match attribute(child, "mode") {
                    None => 0o644,
                    Some(mode) => match parse_octal(mode).filter(|mode| *mode <= 0o7777) {
                        Some(mode) => mode,
                        None => {
                            checker.problem(
                                &child.position,
                                format!("bad mode \"{mode}\": expected octal like 0644"),
                            );
                            0o644
                        }
                    },
                };
                let on_change = checker.choice(
                    child,
                    "on-change",
                    &[
                        ("none", OnChange::None),
                        ("reload", OnChange::Reload),
                        ("restart", OnChange::Restart),
                    ],
                    OnChange::Restart,
                );
                definition.files.push(FileTarget {
                    target: target.to_string(),
                    template: PathBuf::from(attribute(child, "template").unwrap_or_default()),
                    mode,
                    owner: attribute(child, "owner").unwrap_or("root").to_string(),
                    group: attribute(child, "group").unwrap_or("root").to_string(),
                    on_change,
                });
            }
            "key" => {
                if let Some(declaration) = key_declaration(child, &definition.keys, checker) {
                    definition.keys.push(declaration);
                }
            }
            other => checker.problem(
                &child.position,
                format!(
                    "unknown element <{other}> inside <service>: expected one of {}",
                    CHILD_ELEMENTS.join(", ")
                ),
            ),
        }
    }
    if !seen_exec && root.name == "service" {
        checker.problem(
            &root.position,
            "<service> needs an <exec path=\"...\"> element".to_string(),
        );
    }
    check_enabled_key(&mut definition, &root.position, checker);
    check_type_user(&definition, &root.position, checker);
    resolve_model_fields(&mut definition, model_fields, &root.position, checker);
    if definition.ready == Readiness::Exit && !restart_policy_given {
        // A oneshot runs once unless told otherwise.
        definition.restart.policy = RestartPolicy::Never;
    }
    let service_position = root.position.clone();
    Parsed {
        definition,
        service_position,
        needs_positions,
        start_on_positions,
    }
}

/// `KEY` when the attribute is written `{KEY}`: its value comes from the
/// service's model key KEY.
fn key_reference<'a>(element: &'a Element, name: &str) -> Option<&'a str> {
    attribute(element, name)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// Checks each `{KEY}` field against the service's key declarations (by
/// name, of the field's type, with a default) and sets the field to that
/// default, which holds until a render says the model's value.
fn resolve_model_fields(
    definition: &mut ServiceDefinition,
    model_fields: Vec<ModelField>,
    position: &Position,
    checker: &mut Checker,
) {
    for model_field in model_fields {
        let here = Position {
            line: model_field.line,
            ..position.clone()
        };
        let (type_name, wanted_type) = model_field.field.key_type();
        let declaration = definition
            .keys
            .iter()
            .find(|key| key.name == model_field.key);
        let default = match declaration {
            None => {
                checker.problem(&here, format!("{{{}}} names no key of this service: declare it with <key name=\"{}\" type=\"{type_name}\" default=\"...\">", model_field.key, model_field.key));
                continue;
            }
            Some(key) if key.key_type != wanted_type => {
                checker.problem(
                    &here,
                    format!(
                        "{{{}}}: key \"{}\" (line {}) must be type=\"{type_name}\" to be used here",
                        model_field.key, model_field.key, key.line
                    ),
                );
                continue;
            }
            Some(key) => match &key.default {
                Some(default) => default.clone(),
                None => {
                    checker.problem(&here, format!("{{{}}}: key \"{}\" (line {}) needs a default=\"...\" (used until the first render)", model_field.key, model_field.key, key.line));
                    continue;
                }
            },
        };
        model_field.field.set(definition, &default);
        definition.model_fields.push(model_field);
    }
}

/// A system service runs as root; a user program as a user, never root.
fn check_type_user(definition: &ServiceDefinition, position: &Position, checker: &mut Checker) {
    let user = definition.user.as_deref();
    match definition.service_type {
        ServiceType::System if user.is_some_and(|user| user != "root") => checker.problem(
            position,
            "a type=\"system\" service runs as root: remove <user>, or make it another type"
                .to_string(),
        ),
        ServiceType::User if user.is_none_or(|user| user == "root" || user == "0") => checker
            .problem(
                position,
                "a type=\"user\" service runs a user's program: add <user>NAME</user> (not root)"
                    .to_string(),
            ),
        _ => {}
    }
}

/// The built-in key every service has: whether it runs.
pub const ENABLED_KEY: &str = "enabled";

/// The declaration of [`ENABLED_KEY`] a service gets unless it declares the
/// key itself (only as a boolean, to give it a default of its own). It has
/// no default, so an unset key leaves the effective model (and a template
/// that lists every key) as it was: unset means yes.
fn enabled_declaration(line: u32) -> KeyDeclaration {
    KeyDeclaration {
        name: ENABLED_KEY.to_string(),
        key_type: KeyType::Boolean,
        required: false,
        default: None,
        also: Vec::new(),
        description: "whether the service runs (built in, every service has it; unset: yes); changing it live starts or stops the service".to_string(),
        line,
    }
}

/// Whether `declaration` is the built-in `enabled` of `definition` (the
/// service does not declare the key itself).
pub fn is_built_in(definition: &ServiceDefinition, declaration: &KeyDeclaration) -> bool {
    *declaration == enabled_declaration(definition.line)
}

/// Adds the built-in `enabled` key, or checks the service's own
/// declaration of it.
fn check_enabled_key(
    definition: &mut ServiceDefinition,
    position: &Position,
    checker: &mut Checker,
) {
    match definition.keys.iter().find(|key| key.name == ENABLED_KEY) {
        Some(own) if own.key_type != KeyType::Boolean => checker.problem(
            position,
            format!(
                "key \"{ENABLED_KEY}\" (line {}) is built in as a boolean (whether the service runs): declare it type=\"boolean\" or rename your key",
                own.line
            ),
        ),
        Some(_) => {}
        None => definition.keys.push(enabled_declaration(definition.line)),
    }
}

/// Whether the service runs for these effective keys of it: the value of
/// [`ENABLED_KEY`], else its declared default, else yes.
pub fn is_enabled(definition: &ServiceDefinition, keys: Option<&BTreeMap<String, String>>) -> bool {
    let declared_default = definition
        .keys
        .iter()
        .find(|key| key.name == ENABLED_KEY)
        .and_then(|key| key.default.as_deref());
    keys.and_then(|keys| keys.get(ENABLED_KEY))
        .map(String::as_str)
        .or(declared_default)
        != Some("no")
}

/// One `<key name=".." type=".." [required="yes"] [default=".."]
/// [also=".."] [values|min|max|item=".."]>description</key>`; `None` (with
/// the problems recorded) when it is unusable.
fn key_declaration(
    element: &Element,
    earlier: &[KeyDeclaration],
    checker: &mut Checker,
) -> Option<KeyDeclaration> {
    checker.attributes(
        element,
        &[
            "name", "type", "required", "default", "also", "values", "min", "max", "item",
        ],
        &["name", "type"],
    );
    checker.no_children(element);
    let name = attribute(element, "name")?.to_string();
    if wildcard_prefix(&name).is_none() && !is_key_name(&name) {
        checker.problem(
            &element.position,
            format!("bad key name \"{name}\": use letters, digits and _ . - / (or * for every other key, PREFIX.* for every other key starting with PREFIX.)"),
        );
    }
    if earlier.iter().any(|other| other.name == name) {
        checker.problem(
            &element.position,
            format!("key \"{name}\" is declared twice: keep one <key name=\"{name}\">"),
        );
    }
    let lookup = |attribute_name: &str| attribute(element, attribute_name).map(str::to_string);
    let key_type = match KeyType::from_attributes(attribute(element, "type")?, &lookup) {
        Ok(key_type) => key_type,
        Err(problem) => {
            checker.problem(&element.position, format!("key \"{name}\": {problem}"));
            return None;
        }
    };
    let required = checker.choice(element, "required", &[("yes", true), ("no", false)], false);
    let description = element.text.trim().to_string();
    if description.is_empty() || description.contains('\n') {
        checker.problem(
            &element.position,
            format!("key \"{name}\" needs a one-line description as its text: say what it does"),
        );
    }
    let declaration = KeyDeclaration {
        name,
        key_type,
        required,
        default: attribute(element, "default").map(str::to_string),
        also: attribute(element, "also")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        description,
        line: element.position.line,
    };
    if let Some(default) = &declaration.default {
        if let Err(problem) = declaration.check(default) {
            checker.problem(
                &element.position,
                format!(
                    "key \"{}\": its default \"{default}\" is not valid: {problem}",
                    declaration.name
                ),
            );
        }
        if declaration.wildcard_prefix().is_some() {
            checker.problem(
                &element.position,
                format!(
                    "the wildcard key {} cannot have a default: declare the key by name",
                    declaration.name
                ),
            );
        }
    }
    Some(declaration)
}

#[cfg(test)]
mod tests;
