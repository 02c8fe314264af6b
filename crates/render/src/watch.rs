//! `nodows watch`: runs a command when the model changes.
//!
//! The model's directory is watched (inotify on Linux, kqueue on FreeBSD,
//! through `notify`), because editors replace files by renaming; events for
//! other files are ignored. Changes are debounced: the command runs once the
//! model has been quiet for the debounce time. An optional periodic poll
//! compares the file's contents (or size and mtime for SQLite) for sources
//! that cannot be watched. The command is run directly, never by a shell.

use anyhow::{bail, Context};
use notify::Watcher;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Options {
    /// The model file (an XML file or an SQLite database).
    pub model: PathBuf,
    pub command: Vec<String>,
    pub debounce: Duration,
    pub poll: Option<Duration>,
}

/// Splits a command line into arguments: whitespace separates, single and
/// double quotes group, backslash escapes the next character. No shell.
pub fn split_command(line: &str) -> anyhow::Result<Vec<String>> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => {
                            if let Some(next) = chars.next() {
                                current.push(next)
                            }
                        }
                        Some(other) => current.push(other),
                        None => bail!("unterminated quote in command {line:?}; close the {c}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        args.push(current);
    }
    if args.is_empty() {
        bail!("the command is empty; give --command \"PROGRAM ARGS\"");
    }
    Ok(args)
}

/// What the poll compares: the contents of an XML model, size and mtime of
/// an SQLite database and its WAL.
fn fingerprint(model: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for path in watched_names(model) {
        match std::fs::metadata(&path) {
            Ok(metadata) if metadata.len() <= 16 * 1024 * 1024 => {
                out.extend_from_slice(&std::fs::read(&path).unwrap_or_default());
            }
            Ok(metadata) => {
                use std::os::unix::fs::MetadataExt;
                out.extend_from_slice(&metadata.len().to_le_bytes());
                out.extend_from_slice(&metadata.mtime_nsec().to_le_bytes());
                out.extend_from_slice(&metadata.mtime().to_le_bytes());
            }
            Err(_) => out.extend_from_slice(b"missing"),
        }
        out.push(0);
    }
    out
}

/// The model file and, for SQLite, its journal and WAL.
fn watched_names(model: &Path) -> Vec<PathBuf> {
    let mut names = vec![model.to_path_buf()];
    for suffix in ["-wal", "-journal"] {
        let mut name = model.as_os_str().to_os_string();
        name.push(suffix);
        names.push(PathBuf::from(name));
    }
    names
}

fn run(command: &[String], why: &str) {
    let started = Instant::now();
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .status();
    let took = started.elapsed().as_millis();
    match status {
        Ok(status) => eprintln!(
            "nodows watch: {why}: ran {} ({status}, {took} ms)",
            command.join(" ")
        ),
        Err(e) => eprintln!("nodows watch: {why}: cannot run {}: {e}", command[0]),
    }
}

/// Watches forever (returns only on a setup error).
pub fn watch(options: &Options) -> anyhow::Result<()> {
    let directory = match options.model.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let names: Vec<std::ffi::OsString> = watched_names(&options.model)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    let (sender, receiver) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.kind.is_access() {
                return;
            }
            let relevant = event.paths.iter().any(|path| {
                path.file_name()
                    .is_some_and(|name| names.iter().any(|n| n == name))
            });
            if relevant {
                let _ = sender.send(());
            }
        }
    })
    .context("cannot create a file watcher")?;
    watcher
        .watch(&directory, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("{}: cannot watch", directory.display()))?;
    eprintln!(
        "nodows watch: watching {} (debounce {} ms{})",
        options.model.display(),
        options.debounce.as_millis(),
        options
            .poll
            .map(|p| format!(", poll every {} s", p.as_secs()))
            .unwrap_or_default()
    );

    let mut last = fingerprint(&options.model);
    let mut next_poll = options.poll.map(|p| Instant::now() + p);
    loop {
        let wait = next_poll
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match receiver.recv_timeout(wait) {
            Ok(()) => {
                // Debounce: wait until the model has been quiet long enough.
                loop {
                    match receiver.recv_timeout(options.debounce) {
                        Ok(()) => continue,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            bail!("the file watcher stopped")
                        }
                    }
                }
                let now = fingerprint(&options.model);
                if now != last {
                    last = now;
                    run(&options.command, "model changed");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let (Some(poll), Some(_)) = (options.poll, next_poll) {
                    next_poll = Some(Instant::now() + poll);
                    let now = fingerprint(&options.model);
                    if now != last {
                        last = now;
                        run(&options.command, "model changed (poll)");
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the file watcher stopped"),
        }
    }
}
