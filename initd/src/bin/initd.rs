//! `initd`: PID 1 (no arguments) or a foreground supervisor.
//! Exit codes: 0 success, 1 failure, 2 bad input or usage.

use std::path::PathBuf;

use initd::runtime::{Options, Runtime};
use initd::{pid1, sys};

const USAGE: &str = "usage: initd [--services DIR] [--socket PATH] [--state DIR] [--mode MODE] [--log-dir DIR]
             [--render-command PATH] [--model PATH] [--root DIR] [--server ID]
             [--log-max-bytes N] [--no-cgroups] [--pass-env NAME]... [--render-timeout SECONDS]
             [--last-good PATH]
       initd check --services DIR [--mode MODE] [--root DIR]
       initd coldplug [--modules DIR] [--with-cpu]   (load the modules of the devices present)
With no arguments as PID 1: the image defaults (/etc/nodows/services, /run/initd.sock, /run/nodows).";

fn usage_error(message: &str) -> ! {
    eprintln!("initd: {message}\n{USAGE}");
    std::process::exit(2)
}

struct Parsed {
    options: Options,
    check: bool,
    given: Vec<&'static str>,
}

/// As PID 1 the kernel passes the command-line words it does not know as
/// arguments: those are ignored (and reported), never fatal.
fn parse_arguments(arguments: &[String], pid1: bool) -> Parsed {
    let mut options = Options::image_defaults();
    let mut given = Vec::new();
    let mut check = false;
    let mut index = 0;
    while index < arguments.len() {
        let argument = arguments[index].as_str();
        let first = index == 0;
        let mut value = || -> String {
            index += 1;
            match arguments.get(index) {
                Some(value) => value.clone(),
                None if pid1 => String::new(),
                None => usage_error(&format!("{argument} needs a value")),
            }
        };
        match argument {
            "check" if first && !pid1 => check = true,
            "--services" => {
                options.services = PathBuf::from(value());
                given.push("--services");
            }
            "--socket" => {
                options.socket = PathBuf::from(value());
                given.push("--socket");
            }
            "--state" => {
                options.state = PathBuf::from(value());
                given.push("--state");
            }
            "--mode" => options.mode = Some(value()),
            "--log-dir" => {
                options.log_dir = Some(PathBuf::from(value()));
                given.push("--log-dir");
            }
            "--render-command" => options.render_command = PathBuf::from(value()),
            "--model" => {
                options.model = PathBuf::from(value());
                given.push("--model");
            }
            "--last-good" => options.last_good = Some(PathBuf::from(value())),
            "--root" => options.root = PathBuf::from(value()),
            "--server" => options.server = Some(value()),
            "--log-max-bytes" => {
                let text = value();
                options.log_max_bytes = match text.parse::<u64>() {
                    Ok(bytes) if bytes > 0 => bytes,
                    _ if pid1 => options.log_max_bytes,
                    _ => usage_error(&format!(
                        "bad --log-max-bytes {text}: a whole number of bytes"
                    )),
                }
            }
            "--render-timeout" => {
                let text = value();
                options.render_timeout = match text.parse::<u64>() {
                    Ok(seconds) if seconds > 0 => std::time::Duration::from_secs(seconds),
                    _ if pid1 => options.render_timeout,
                    _ => usage_error(&format!(
                        "bad --render-timeout {text}: a whole number of seconds"
                    )),
                }
            }
            "--no-cgroups" => options.use_cgroups = false,
            "--pass-env" => options.pass_env.push(value()),
            "--help" | "-h" if !pid1 => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other if pid1 => eprintln!("initd: ignoring argument {other}"),
            other => usage_error(&format!("unknown argument {other}")),
        }
        index += 1;
    }
    Parsed {
        options,
        check,
        given,
    }
}

fn check_command(options: &Options) -> i32 {
    let definitions = match servicedef::load_dir(&options.services) {
        Ok(definitions) => definitions,
        Err(errors) => {
            eprintln!("{errors}");
            return 2;
        }
    };
    let mode = options
        .mode
        .clone()
        .unwrap_or_else(|| "production".to_string());
    let supervisor = initd::supervisor::Supervisor::new(definitions.clone(), &mode);
    let mut code = 0;
    for definition in &definitions {
        let in_mode = supervisor.in_current_mode(&definition.name);
        let (service_code, text) =
            initd::runtime::check_service(definition, &mode, in_mode, &options.root);
        print!("{text}");
        // A missing binary matters for services that run in this mode.
        if service_code != 0 && in_mode && !definition.exec.path.exists() {
            code = 2;
        }
    }
    code
}

/// `/init` of the nodows initrd: mount the root and execute the real init.
/// Never returns: on failure it says why, again and again, reaping orphans.
#[cfg(target_os = "linux")]
fn initrd_stage() -> ! {
    sys::ensure_standard_fds();
    let console = initd::runtime::Console::new(true);
    let reason = initd::initrd::run(&|text: &str| console.line(text));
    loop {
        console.line(&format!(
            "initrd: cannot boot: {reason}; check root= and the initrd modules of the image"
        ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            // SAFETY: waitpid with a valid status pointer.
            unsafe {
                let mut status = 0;
                libc::waitpid(-1, &mut status, libc::WNOHANG);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// `initd coldplug`: load the modules of every device present (no udev).
fn coldplug_command(arguments: &[String]) -> i32 {
    let mut directory = None;
    let mut with_cpu = false;
    let mut words = arguments.iter();
    while let Some(word) = words.next() {
        match (word.as_str(), words.len()) {
            ("--with-cpu", _) => with_cpu = true,
            ("--modules", 1..) => directory = words.next().map(PathBuf::from),
            _ => usage_error("usage: initd coldplug [--modules DIR] [--with-cpu]"),
        }
    }
    let directory = match directory.or_else(|| {
        initd::kmod::kernel_release().map(|release| PathBuf::from("/lib/modules").join(release))
    }) {
        Some(directory) => directory,
        None => {
            eprintln!("initd coldplug: cannot read the kernel release from /proc");
            return 1;
        }
    };
    let started = std::time::Instant::now();
    let index = match initd::kmod::ModuleIndex::load(&directory) {
        Ok(index) => index,
        Err(error) => {
            eprintln!("initd coldplug: {error}");
            return 1;
        }
    };
    let mut loader = initd::kmod::Loader::new(&index);
    loader.coldplug(std::path::Path::new("/sys/devices"), with_cpu);
    for error in &loader.errors {
        eprintln!("initd coldplug: module {error}");
    }
    println!(
        "initd coldplug: loaded {} modules in {:.2}s: {}",
        loader.loaded.len(),
        started.elapsed().as_secs_f64(),
        loader.loaded.join(" ")
    );
    0
}

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let pid1 = sys::getpid() == 1;
    #[cfg(target_os = "linux")]
    if pid1 && std::env::args().next().as_deref() == Some("/init") {
        initrd_stage();
    }
    if !pid1 && arguments.first().map(String::as_str) == Some("coldplug") {
        std::process::exit(coldplug_command(&arguments[1..]));
    }
    let parsed = parse_arguments(&arguments, pid1);
    let mut options = parsed.options;
    if parsed.check {
        std::process::exit(check_command(&options));
    }
    options.pid1 = pid1;
    if !pid1 {
        for required in ["--services", "--socket", "--state"] {
            if !parsed.given.contains(&required) {
                usage_error(&format!("{required} is required when not running as PID 1"));
            }
        }
        if !parsed.given.contains(&"--log-dir") {
            options.log_dir = None;
        }
    }
    let mut machine = false;
    let mut early_messages = Vec::new();
    let mut command_line = pid1::CommandLine::default();
    if pid1 {
        sys::ensure_standard_fds();
        machine = sys::disable_ctrl_alt_del().is_ok();
        early_messages = pid1::early_setup(machine);
        command_line =
            pid1::parse_command_line(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    }
    let console = initd::runtime::Console::new(pid1);
    #[cfg(target_os = "linux")]
    if pid1 && machine {
        let integrity_console = initd::runtime::Console::new(true);
        initd::pid1::watch_integrity(move |line: &str| integrity_console.line(line));
    }
    for line in early_messages {
        console.line(&line);
    }
    let mode = match (&options.mode, pid1) {
        (Some(mode), _) => mode.clone(),
        (None, true) => pid1::boot_mode(&command_line, std::path::Path::new("/")),
        (None, false) => "production".to_string(),
    };
    // The server id: nodows.server= on the kernel command line, else the
    // SMBIOS system serial, else the image's /etc/nodows/server-id.
    if options.server.is_none() && pid1 {
        options.server = pid1::server_id(&command_line, std::path::Path::new("/"));
    }
    // The model: as PID 1 with no --model, the fleet watcher's last-good
    // model whenever there is one (each render looks again), else the
    // image's baked base.
    if pid1 && !parsed.given.contains(&"--model") && options.last_good.is_none() {
        options.last_good = Some(PathBuf::from(pid1::LAST_GOOD_MODEL));
    }
    if let Some(revision) = options
        .last_good
        .as_deref()
        .and_then(pid1::last_good_revision_of)
    {
        console.line(&format!(
            "initd: model: last-good revision {revision} ({})",
            pid1::LAST_GOOD_MODEL
        ));
    }
    let definitions = match servicedef::load_dir(&options.services) {
        Ok(definitions) => definitions,
        Err(errors) => {
            if !pid1 {
                eprintln!("{errors}");
                std::process::exit(2);
            }
            console.line(&format!("{errors}"));
            console.line("initd: service definitions are invalid: starting no services");
            Vec::new()
        }
    };
    if pid1 {
        options.boot_slot = command_line.slot.clone();
        if let Some(seconds) = command_line.trial_timeout {
            options.trial_timeout = std::time::Duration::from_secs(seconds);
        }
    }
    match Runtime::new(options, definitions, mode, machine) {
        Ok(mut runtime) => {
            let code = runtime.run();
            std::process::exit(code)
        }
        Err((code, message)) => {
            console.line(&format!("initd: {message}"));
            if !pid1 {
                std::process::exit(code);
            }
            // PID 1 cannot exit: keep reaping.
            loop {
                while sys::reap_one().is_some() {}
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}
