//! What the user sees: one line per step with its duration, a spinner with
//! the tool's last output line for long steps, `--verbose` streaming, and the
//! build log. Also Ctrl-C handling and temporary directories that never
//! leave anything at a final path.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The running tools, one slot each (the binaries are built while the base
/// is made or extracted); 0 is a free slot.
static CHILDREN: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only async-signal-safe things: atomic loads and stores and kill(2).
    INTERRUPTED.store(true, Ordering::SeqCst);
    for slot in &CHILDREN {
        let child = slot.load(Ordering::SeqCst);
        if child > 0 {
            unsafe {
                libc::kill(child, libc::SIGTERM);
            }
        }
    }
}

/// Claims a slot for a running tool; cleared again by `release_child`.
fn track_child(pid: i32) -> Option<&'static AtomicI32> {
    CHILDREN.iter().find(|slot| {
        slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

/// SIGINT and SIGTERM stop the running tool; the build then unwinds, and
/// the temporary directories remove themselves.
pub fn install_interrupt_handler() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Clone)]
pub struct Ui {
    log: Arc<Mutex<std::fs::File>>,
    verbose: bool,
    /// Whether a spinner may show a running tool's last line; off for a
    /// step that runs beside another one (two spinners garble the line).
    spinner: bool,
    start: Instant,
}

impl Ui {
    pub fn new(log_path: &Path, verbose: bool) -> anyhow::Result<Ui> {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("cannot create the build log {}", log_path.display()))?;
        Ok(Ui {
            log: Arc::new(Mutex::new(log)),
            verbose,
            spinner: true,
            start: Instant::now(),
        })
    }

    /// A handle for a step run on another thread: same log, no spinner.
    pub fn background(&self) -> Ui {
        Ui {
            spinner: false,
            ..self.clone()
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn log(&self, line: &str) {
        if let Ok(mut log) = self.log.lock() {
            let _ = writeln!(log, "{line}");
        }
    }

    pub fn note(&self, line: &str) {
        println!("{line}");
        self.log(line);
    }

    /// Runs one step, printing its name and duration.
    pub fn step<T>(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Ui) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        check_interrupted()?;
        println!("==> {name}");
        self.log(&format!("==> {name}"));
        let started = Instant::now();
        let result = body(self);
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                println!("    {name}: {seconds:.2}s");
                self.log(&format!("    {name}: {seconds:.2}s"));
            }
            Err(error) => self.log(&format!("    {name} failed after {seconds:.2}s: {error:#}")),
        }
        check_interrupted()?;
        result
    }

    /// Runs a tool: output goes to the build log, to the terminal with
    /// `--verbose`, else the last line is shown on a spinner. On failure
    /// the error carries the output's tail.
    pub fn run(&self, command: xshell::Cmd<'_>) -> anyhow::Result<()> {
        self.run_command(Command::from(command), None).map(drop)
    }

    /// Like `run`, with `input` on the tool's stdin.
    pub fn run_with_input(&self, command: xshell::Cmd<'_>, input: &str) -> anyhow::Result<()> {
        self.run_command(Command::from(command), Some(input.to_owned()))
            .map(drop)
    }

    /// Like `run`; returns the last 25 lines of the tool's output.
    pub fn run_output(&self, command: xshell::Cmd<'_>) -> anyhow::Result<String> {
        self.run_command(Command::from(command), None)
    }

    fn run_command(&self, mut command: Command, input: Option<String>) -> anyhow::Result<String> {
        check_interrupted()?;
        let display = format!("{command:?}");
        self.log(&format!("$ {display}"));
        command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run {display}"))?;
        let slot = track_child(child.id() as i32);
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        let spinner = if self.verbose || !self.spinner {
            None
        } else {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.enable_steady_tick(Duration::from_millis(120));
            Some(spinner)
        };
        let tail = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
        let mut readers = Vec::new();
        let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for pipe in pipes {
            let log = Arc::clone(&self.log);
            let tail = Arc::clone(&tail);
            let spinner = spinner.clone();
            let verbose = self.verbose;
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut log) = log.lock() {
                        let _ = writeln!(log, "{line}");
                    }
                    if verbose {
                        eprintln!("{line}");
                    }
                    if let Some(spinner) = &spinner {
                        let short: String = line.chars().take(100).collect();
                        spinner.set_message(short);
                    }
                    if let Ok(mut tail) = tail.lock() {
                        tail.push_back(line);
                        if tail.len() > 25 {
                            tail.pop_front();
                        }
                    }
                }
            }));
        }
        let status = child.wait();
        if let Some(slot) = slot {
            slot.store(0, Ordering::SeqCst);
        }
        for reader in readers {
            let _ = reader.join();
        }
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
        let status = status.with_context(|| format!("cannot wait for {display}"))?;
        self.log(&format!("    ({:.2}s)", started.elapsed().as_secs_f64()));
        check_interrupted()?;
        let tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        if !status.success() {
            bail!("{display} failed ({status}); its last output:\n{tail}");
        }
        Ok(tail)
    }

    /// Removes temporary entries (`.NAME.tmp-PID`) left in DIR by builds
    /// that were killed outright (SIGKILL, power loss).
    pub fn cleanup_stale(&self, dir: &Path) {
        self.cleanup_stale_named(dir, ".");
    }

    /// `cleanup_stale` for the entries whose name starts with `prefix` (in
    /// a directory shared with other programs, such as /dev/shm).
    pub fn cleanup_stale_named(&self, dir: &Path, prefix: &str) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .rsplit_once(".tmp-")
                .and_then(|(_, pid)| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if !name.starts_with('.')
                || !name.starts_with(prefix)
                || pid == std::process::id() as i32
            {
                continue;
            }
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            if !alive {
                self.log(&format!("removing stale {}", entry.path().display()));
                let _ = std::fs::remove_dir_all(entry.path())
                    .or_else(|_| std::fs::remove_file(entry.path()));
            }
        }
    }
}

/// A directory `PARENT/.NAME.tmp-PID` removed on drop unless persisted.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn create(parent: &Path, name: &str) -> anyhow::Result<TempDir> {
        let path = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the directory to `target` unless a directory is there
    /// already (made by a build beside this one); then this one is removed.
    pub fn persist_unless_exists(mut self, target: &Path) -> anyhow::Result<()> {
        check_interrupted()?;
        match std::fs::rename(&self.path, target) {
            Ok(()) => {
                self.keep = true;
                Ok(())
            }
            Err(_) if target.is_dir() => Ok(()),
            Err(error) => Err(error).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.path.display(),
                    target.display()
                )
            }),
        }
    }

    /// Renames the directory to `target`, replacing what was there.
    pub fn persist(mut self, target: &Path) -> anyhow::Result<()> {
        check_interrupted()?;
        if target.exists() {
            let old = target.with_file_name(format!(
                ".{}.old.tmp-{}",
                target.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            std::fs::rename(target, &old)
                .with_context(|| format!("cannot move {} away", target.display()))?;
            std::fs::rename(&self.path, target).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.path.display(),
                    target.display()
                )
            })?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.path, target).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.path.display(),
                    target.display()
                )
            })?;
        }
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
