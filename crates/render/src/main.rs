//! `nodows`: the renderer's command line.
//!
//! ```text
//! nodows render --model PATH|sqlite:PATH|postgres://... --services DIR --root DIR --profile P
//!               [--server ID] [--service NAME]... [--dry-run] [--json] [--timings] [--keep-journal]
//! nodows journal --root DIR [--json] [--keep-journal]
//! nodows watch --model PATH|sqlite:PATH --command "PROGRAM ARGS" [--debounce 200ms] [--poll 60s]
//! nodows watch --model postgres://... --server ID --profile P --services DIR --last-good PATH
//!              --command "PROGRAM ARGS" [--status-file PATH] [--poll 60s] [--debounce 50ms] [--max-backoff 30s]
//!              [--apply-root DIR]
//! nodows watch --appliance --command "PROGRAM ARGS" [...]   (the image's model sources, see appliance.rs)
//! nodows keys --model PATH|sqlite:PATH --services DIR --profile P [--server ID] [--service NAME]...
//! nodows keys --services DIR --reference
//! nodows update FILE|http://HOST/PATH [--tries N]
//! nodows boot-status
//! nodows bless
//! nodows model import|export|migrate|history|revert ...   (see model_cli.rs)
//! ```
//!
//! Exit codes: 0 success (with or without changes), 1 failure, 2 bad input or usage.

mod model_cli;

use std::path::PathBuf;
use std::process::ExitCode;

/// Rust's allocations go to mimalloc too, like libxml2's (see
/// `render::xslt`): loading the model and 1,000 definitions makes many
/// small, short-lived blocks.
struct Mimalloc;

// SAFETY: mimalloc's aligned functions honour the layout's size and
// alignment, and memory from them is freed by mi_free.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr as *mut std::ffi::c_void)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        libmimalloc_sys::mi_realloc_aligned(ptr as *mut std::ffi::c_void, new_size, layout.align())
            as *mut u8
    }
}

#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

const USAGE: &str = "usage:
  nodows render --model PATH|sqlite:PATH|postgres://... --services DIR --root DIR --profile P [--server ID] [--service NAME]... [--dry-run] [--json] [--timings] [--keep-journal]
  nodows journal --root DIR [--json] [--keep-journal]
  nodows watch --model PATH|sqlite:PATH --command \"PROGRAM ARGS\" [--debounce 200ms] [--poll 60s]
  nodows watch --model postgres://... --server ID --profile P --services DIR --last-good PATH --command \"PROGRAM ARGS\"
               [--status-file PATH] [--poll 60s] [--debounce 50ms] [--max-backoff 30s] [--apply-root DIR]
  nodows watch --appliance --command \"PROGRAM ARGS\" [--apply-root DIR] [...]   (the image's base model or its fleet)
  nodows keys --model PATH|sqlite:PATH --services DIR --profile P [--server ID] [--service NAME]...
  nodows keys --services DIR --reference
  nodows update FILE|http://HOST/PATH [--tries N]
  nodows boot-status
  nodows bless
";

/// A usage error: printed with the usage, exit 2.
struct Usage(String);

/// Options as `--name value` pairs and `--flag`s.
struct Arguments {
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Arguments {
    fn parse(args: &[String], with_value: &[&str], flags: &[&str]) -> Result<Arguments, Usage> {
        let mut parsed = Arguments {
            values: Vec::new(),
            flags: Vec::new(),
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            if with_value.contains(&name) {
                let value = match inline {
                    Some(value) => value,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| Usage(format!("{name} needs a value")))?,
                };
                parsed.values.push((name.to_string(), value));
            } else if flags.contains(&name) && inline.is_none() {
                parsed.flags.push(name.to_string());
            } else {
                return Err(Usage(format!("unknown argument `{arg}`")));
            }
        }
        Ok(parsed)
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn one(&self, name: &str) -> Result<Option<String>, Usage> {
        let mut all = self.all(name);
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.pop()),
            _ => Err(Usage(format!("{name} is given more than once"))),
        }
    }

    fn required(&self, name: &str) -> Result<String, Usage> {
        self.one(name)?
            .ok_or_else(|| Usage(format!("{name} is required")))
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

enum Failure {
    Usage(Usage),
    Render(render::Error),
    Update(update::Error),
    Other(anyhow::Error),
}

impl From<update::Error> for Failure {
    fn from(error: update::Error) -> Failure {
        Failure::Update(error)
    }
}

/// `nodows update SOURCE`: writes a signed artifact (a file, or an http://
/// URL streamed) into the slot that is not running and makes it the default
/// boot entry with a try counter.
fn update_command(args: &[String]) -> Result<(), Failure> {
    let (source, rest) = match args.split_first() {
        Some((source, rest)) if !source.starts_with("--") => (source.clone(), rest),
        _ => return Err(Usage("update needs an artifact: a file or an http:// URL".into()).into()),
    };
    let parsed = Arguments::parse(rest, &["--tries"], &[])?;
    let tries = match parsed.one("--tries")? {
        Some(text) => text
            .parse()
            .map_err(|_| Usage(format!("--tries {text}: not a number")))?,
        None => update::artifact::DEFAULT_TRIES,
    };
    let started = std::time::Instant::now();
    let reader: Box<dyn std::io::Read> = if source.starts_with("http://") {
        update::http::get(&source)?
    } else {
        Box::new(std::fs::File::open(&source).map_err(|error| Usage(format!("{source}: {error}")))?)
    };
    let applied = update::system::update(reader, tries)?;
    println!(
        "nodows: update {} {} written to slot {} ({} bytes in {:.1}s); boot entry {} ({tries} tries); reboot to run it",
        applied.manifest.image,
        applied.manifest.version,
        applied.slot,
        applied.bytes_read,
        started.elapsed().as_secs_f64(),
        applied.entry
    );
    Ok(())
}

/// `nodows boot-status`: one line, `slot=S version=V state=trial|good ...`.
fn boot_status_command(args: &[String]) -> Result<(), Failure> {
    Arguments::parse(args, &[], &[])?;
    println!("{}", update::system::boot_state()?.to_line());
    Ok(())
}

/// `nodows bless`: marks the running slot's entry good (drops its counter).
fn bless_command(args: &[String]) -> Result<(), Failure> {
    Arguments::parse(args, &[], &[])?;
    let (_, state) = update::system::bless()?;
    println!("{}", state.to_line());
    Ok(())
}

impl From<Usage> for Failure {
    fn from(usage: Usage) -> Failure {
        Failure::Usage(usage)
    }
}

impl From<render::Error> for Failure {
    fn from(error: render::Error) -> Failure {
        Failure::Render(error)
    }
}

/// The change-set JSON initd reads: the files and actions of the sync, and
/// the settings of every service.
#[derive(serde::Serialize)]
struct ChangeSetReport<'a> {
    #[serde(flatten)]
    change_set: &'a render::sync::ChangeSet,
    #[serde(flatten)]
    settings: &'a render::ServiceSettings,
}

fn render_command(args: &[String]) -> Result<(), Failure> {
    let arguments = Arguments::parse(
        args,
        &[
            "--model",
            "--services",
            "--root",
            "--profile",
            "--server",
            "--service",
        ],
        &["--dry-run", "--json", "--timings", "--keep-journal"],
    )?;
    let started = std::time::Instant::now();
    let model_spec = arguments.required("--model")?;
    let services_dir = PathBuf::from(arguments.required("--services")?);
    let root = PathBuf::from(arguments.required("--root")?);
    let profile = arguments.required("--profile")?;
    let server = arguments.one("--server")?;
    let only = arguments.all("--service");

    let model = model::Model::load(&model_spec).map_err(render::Error::from)?;
    let model_loaded = started.elapsed();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let definitions =
        servicedef::load_dir_on_threads(&services_dir, threads).map_err(render::Error::from)?;
    let definitions_loaded = started.elapsed();
    let (staged, timings) = render::stage_timed(&render::Request {
        model: &model,
        definitions: &definitions,
        services_dir: &services_dir,
        server: server.as_deref(),
        profile: &profile,
        only: &only,
    })?;
    let staged_at = started.elapsed();
    let dry_run = arguments.flag("--dry-run");
    let change_set = render::sync::sync(&root, &staged, dry_run)?;
    if arguments.flag("--timings") {
        let ms = |duration: std::time::Duration| duration.as_secs_f64() * 1000.0;
        eprintln!(
            "nodows: timings model={:.3}ms definitions={:.3}ms validate={:.3}ms render={:.3}ms sync={:.3}ms total={:.3}ms",
            ms(model_loaded),
            ms(definitions_loaded - model_loaded),
            ms(timings.validate),
            ms(timings.render),
            ms(started.elapsed() - staged_at),
            ms(started.elapsed())
        );
    }
    // initd reads every service's settings (enabled, named key values)
    // beside the change set.
    let settings = match arguments.flag("--json") {
        true => Some(render::service_settings(
            &model,
            &definitions,
            server.as_deref(),
            &profile,
        )?),
        false => None,
    };
    report_change_set(
        &root,
        &change_set,
        arguments.flag("--json"),
        settings.as_ref(),
        dry_run || arguments.flag("--keep-journal"),
    )
}

/// `nodows journal`: finishes the render journal under the root (a render
/// killed mid-apply, or an apply made in process by `nodows watch
/// --apply-root`) and reports its change set; no journal, no changes.
fn journal_command(args: &[String]) -> Result<(), Failure> {
    let arguments = Arguments::parse(args, &["--root"], &["--json", "--keep-journal"])?;
    let root = PathBuf::from(arguments.required("--root")?);
    let change_set = render::sync::sync(&root, &[], false)?;
    // No model here: no settings, so initd changes no service's settings.
    report_change_set(
        &root,
        &change_set,
        arguments.flag("--json"),
        None,
        arguments.flag("--keep-journal"),
    )
}

/// Prints the change set (text or JSON, with the services' settings when
/// given), then removes the journal unless `keep_journal`.
fn report_change_set(
    root: &std::path::Path,
    change_set: &render::sync::ChangeSet,
    json: bool,
    settings: Option<&render::ServiceSettings>,
    keep_journal: bool,
) -> Result<(), Failure> {
    let text = if json {
        let json = match settings {
            Some(settings) => serde_json::to_string(&ChangeSetReport {
                change_set,
                settings,
            }),
            None => serde_json::to_string(change_set),
        }
        .map_err(|e| Failure::Other(anyhow::anyhow!("cannot serialize the change set: {e}")))?;
        format!("{json}\n")
    } else {
        change_set.to_text()
    };
    // The change set is reported before the journal goes: a kill in between
    // reports it again, never loses it. With --keep-journal the caller
    // removes the journal once it has acted on the change set.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::Other(anyhow::anyhow!("cannot print the change set: {e}")))?;
    }
    if !keep_journal {
        render::sync::finish_journal(root)?;
    }
    Ok(())
}

/// The options of `nodows watch` that only a postgres:// model takes.
const POSTGRES_WATCH_OPTIONS: [&str; 7] = [
    "--server",
    "--profile",
    "--services",
    "--last-good",
    "--status-file",
    "--max-backoff",
    "--apply-root",
];

/// `nodows keys`: every declared key with its type, default and effective
/// value (the model is validated first, as a render would), or with
/// `--reference` the Markdown reference of README.
fn keys_command(args: &[String]) -> Result<(), Failure> {
    let arguments = Arguments::parse(
        args,
        &[
            "--model",
            "--services",
            "--profile",
            "--server",
            "--service",
        ],
        &["--reference"],
    )?;
    let services_dir = PathBuf::from(arguments.required("--services")?);
    let mut definitions = servicedef::load_dir(&services_dir).map_err(render::Error::from)?;
    if arguments.flag("--reference") {
        print!("{}", render::keys::reference_markdown(&definitions));
        return Ok(());
    }
    let model = model::Model::load(&arguments.required("--model")?).map_err(render::Error::from)?;
    let profile = arguments.required("--profile")?;
    let server = arguments.one("--server")?;
    let only = arguments.all("--service");
    if let Some(unknown) = only
        .iter()
        .find(|name| !definitions.iter().any(|d| &d.name == *name))
    {
        return Err(Usage(format!(
            "--service {unknown}: no such service in {}",
            services_dir.display()
        ))
        .into());
    }
    let problems = render::validate::check(
        &model,
        &definitions,
        render::validate::Scope::Render {
            profile: &profile,
            server: server.as_deref(),
            only: &only,
        },
    );
    if !problems.is_empty() {
        return Err(render::Error::BadInput(problems).into());
    }
    definitions.retain(|d| only.is_empty() || only.contains(&d.name));
    let rows = render::keys::rows(&model, &definitions, &profile, server.as_deref())
        .map_err(render::Error::from)?;
    print!("{}", render::keys::to_text(&rows));
    Ok(())
}

fn watch_command(args: &[String]) -> Result<(), Failure> {
    let mut with_value = vec!["--model", "--command", "--debounce", "--poll"];
    with_value.extend(POSTGRES_WATCH_OPTIONS);
    let arguments = Arguments::parse(args, &with_value, &["--appliance"])?;
    let command = render::watch::split_command(&arguments.required("--command")?)
        .map_err(|e| Usage(e.to_string()))?;
    let duration =
        |name: &str, default: Option<&str>| -> Result<Option<std::time::Duration>, Usage> {
            match arguments.one(name)?.as_deref().or(default) {
                None => Ok(None),
                Some(text) => servicedef::parse_duration(text).map(Some).ok_or_else(|| {
                    Usage(format!(
                        "{name} {text}: not a duration; write it like 200ms, 60s or 5m"
                    ))
                }),
            }
        };
    let fleet_options = |spec: String,
                         server: String,
                         profile: String,
                         services_dir: PathBuf,
                         last_good: PathBuf|
     -> Result<render::fleet::Options, Failure> {
        Ok(render::fleet::Options {
            spec,
            server,
            profile,
            services_dir,
            last_good,
            status_file: arguments
                .one("--status-file")?
                .map(PathBuf::from)
                .unwrap_or_else(render::fleet::default_status_file),
            command: command.clone(),
            debounce: duration("--debounce", Some("50ms"))?.unwrap_or_default(),
            poll: duration("--poll", Some("60s"))?.unwrap_or_default(),
            max_backoff: duration("--max-backoff", Some("30s"))?.unwrap_or_default(),
            apply_root: arguments.one("--apply-root")?.map(PathBuf::from),
        })
    };
    let run_fleet = |options: render::fleet::Options| -> Result<(), Failure> {
        render::fleet::check_options(&options).map_err(Failure::Other)?;
        render::fleet::watch(&options).map_err(Failure::Other)
    };
    let model_spec = if arguments.flag("--appliance") {
        for given in [
            "--model",
            "--server",
            "--profile",
            "--services",
            "--last-good",
        ] {
            if arguments.one(given)?.is_some() {
                return Err(Failure::Usage(Usage(format!(
                    "{given} and --appliance exclude each other: --appliance takes the model sources from the image and the kernel command line"
                ))));
            }
        }
        let command_line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let sources = render::appliance::resolve(std::path::Path::new("/"), &command_line)
            .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
        eprintln!(
            "nodows watch: model sources: {}",
            render::appliance::describe(&sources)
        );
        match sources {
            render::appliance::Sources::Fleet {
                remote,
                server,
                profile,
                services_dir,
                last_good,
            } => {
                return run_fleet(fleet_options(
                    remote,
                    server,
                    profile,
                    services_dir,
                    last_good,
                )?)
            }
            render::appliance::Sources::Base { model } => model.display().to_string(),
        }
    } else {
        arguments.required("--model")?
    };
    if model::postgres::is_postgres(&model_spec) {
        let options = fleet_options(
            model_spec,
            arguments.required("--server")?,
            arguments.required("--profile")?,
            PathBuf::from(arguments.required("--services")?),
            PathBuf::from(arguments.required("--last-good")?),
        )?;
        return run_fleet(options);
    }
    for postgres_only in POSTGRES_WATCH_OPTIONS {
        if arguments.one(postgres_only)?.is_some() {
            return Err(Failure::Usage(Usage(format!(
                "{postgres_only} is for a postgres:// model only"
            ))));
        }
    }
    let model = PathBuf::from(model_spec.strip_prefix("sqlite:").unwrap_or(&model_spec));
    let poll = duration("--poll", None)?;
    render::watch::watch(&render::watch::Options {
        model,
        command,
        debounce: duration("--debounce", Some("200ms"))?.unwrap_or_default(),
        poll,
    })
    .map_err(Failure::Other)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("render") => render_command(&args[1..]),
        Some("watch") => watch_command(&args[1..]),
        Some("journal") => journal_command(&args[1..]),
        Some("model") => model_cli::run(&args[1..]),
        Some("keys") => keys_command(&args[1..]),
        Some("update") => update_command(&args[1..]),
        Some("boot-status") => boot_status_command(&args[1..]),
        Some("bless") => bless_command(&args[1..]),
        Some("--help") | Some("-h") | Some("help") => {
            println!("{USAGE}{}", model_cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(Failure::Usage(Usage(format!("unknown command `{other}`")))),
        None => Err(Failure::Usage(Usage("no command given".to_string()))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(Usage(message))) => {
            eprintln!("nodows: {message}\n{USAGE}{}", model_cli::USAGE);
            ExitCode::from(2)
        }
        Err(Failure::Render(error)) => {
            for line in error.to_string().lines() {
                eprintln!("nodows: {line}");
            }
            ExitCode::from(error.exit_code() as u8)
        }
        Err(Failure::Update(error)) => {
            eprintln!("nodows: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
        Err(Failure::Other(error)) => {
            eprintln!("nodows: {error:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    /// Guards the binary's allocator: Rust's blocks come from mimalloc too
    /// (glibc's malloc was a third of a 1,000-service render's instructions).
    #[test]
    fn rust_allocates_through_mimalloc() {
        extern "C" {
            fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
        }
        let boxed = Box::new([7u8; 100]);
        // SAFETY: mi_is_in_heap_region only compares the address.
        assert!(unsafe { mi_is_in_heap_region(boxed.as_ptr() as *const std::ffi::c_void) });
    }
}
