//! Starting initd on a directory of services written to a temporary
//! directory, and asking it things with initctl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machine is shared and slow. Tests wait for conditions,
/// they never assert on how fast something happened.
pub const WAIT: Duration = Duration::from_secs(90);

pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "initd-it-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn initd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_initd")
}

pub fn initctl_binary() -> &'static str {
    env!("CARGO_BIN_EXE_initctl")
}

/// A service running `script` with /bin/sh; `extra` is more XML.
pub fn shell_service(name: &str, script: &str, extra: &str) -> String {
    let script = script
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<service name=\"{name}\">\n  <exec path=\"/bin/sh\"><arg>-c</arg><arg>{script}</arg></exec>\n  {extra}\n</service>\n"
    )
}

pub struct Initd {
    pub dir: TempDir,
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub console: PathBuf,
    pub services: PathBuf,
    /// A command line that runs initd (its last word is initd's path).
    pub wrapper: Vec<String>,
    /// More environment for initd.
    pub env: Vec<(String, String)>,
}

impl Initd {
    /// Writes the services; does not start initd.
    pub fn prepare(tag: &str, services: &[(&str, String)]) -> Initd {
        let dir = TempDir::new(tag);
        let services_dir = dir.path.join("services");
        for (name, xml) in services {
            std::fs::create_dir_all(services_dir.join(name)).unwrap();
            std::fs::write(services_dir.join(name).join("service.xml"), xml).unwrap();
        }
        std::fs::create_dir_all(&services_dir).unwrap();
        Initd {
            socket: dir.path.join("initd.sock"),
            console: dir.path.join("console.txt"),
            services: services_dir,
            dir,
            child: None,
            wrapper: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    pub fn arguments(&self) -> Vec<String> {
        vec![
            "--services".into(),
            self.services.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--state".into(),
            self.path("state").display().to_string(),
            "--log-dir".into(),
            self.path("log").display().to_string(),
            "--render-command".into(),
            self.path("no-renderer").display().to_string(),
            // Children get a defined environment; the test scripts need this.
            "--pass-env".into(),
            "TEST_DIR".into(),
        ]
    }

    pub fn start(tag: &str, services: &[(&str, String)], extra: &[&str]) -> Initd {
        let mut initd = Initd::prepare(tag, services);
        initd.launch(extra);
        initd
    }

    pub fn launch(&mut self, extra: &[&str]) {
        let mut arguments = self.arguments();
        // Later flags win: extra may override the renderer.
        arguments.extend(extra.iter().map(|s| s.to_string()));
        let console = std::fs::File::create(&self.console).unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(initd_binary());
                command
            }
            None => Command::new(initd_binary()),
        };
        let child = command
            .args(&arguments)
            .env("TEST_DIR", &self.dir.path)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_until("the control socket", || {
            self.socket.exists() && self.try_ctl(&["status"]).status.success()
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|child| child.id() as i32).unwrap()
    }

    pub fn try_ctl(&self, arguments: &[&str]) -> Output {
        Command::new(initctl_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(arguments)
            .output()
            .unwrap()
    }

    /// initctl that must succeed; its stdout.
    pub fn ctl(&self, arguments: &[&str]) -> String {
        let output = self.try_ctl(arguments);
        assert!(
            output.status.success(),
            "initctl {arguments:?} failed: {}{}\ninitd: {}\nconsole:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.child
                .as_ref()
                .map(|child| proc_stat(child.id() as i32)
                    .map(|(_, state)| format!("state {state}"))
                    .unwrap_or_else(|| "gone".to_string()))
                .unwrap_or_default(),
            self.console_text()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn status(&self) -> Vec<Value> {
        let text = self.ctl(&["status", "--json"]);
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .to_vec()
    }

    pub fn service(&self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|service| service.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no service {name} in status"))
    }

    pub fn state(&self, name: &str) -> String {
        self.service(name)
            .get("state")
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    pub fn main_pid(&self, name: &str) -> Option<i32> {
        self.service(name)
            .get("pid")
            .and_then(Value::as_i64)
            .map(|pid| pid as i32)
    }

    pub fn number(&self, name: &str, field: &str) -> f64 {
        match self.service(name).get(field).and_then(Value::as_f64) {
            Some(number) => number,
            None => panic!("{name}.{field} is not a number"),
        }
    }

    pub fn wait_for_state(&self, name: &str, state: &str) {
        self.wait_until(&format!("{name} {state}"), || self.state(name) == state);
    }

    pub fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            if let Some(child) = self.child.as_ref() {
                let _ = child;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nconsole:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// `initctl poweroff` and wait for initd to exit.
    pub fn shutdown(&mut self) -> std::process::ExitStatus {
        let _ = self.try_ctl(&["poweroff"]);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "initd did not exit\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Initd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new(initctl_binary())
                .arg("--socket")
                .arg(&self.socket)
                .arg("poweroff")
                .output();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parent pid and state letter of a process, from /proc.
pub fn proc_stat(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((parent, state))
}

pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(_, state)| state != 'Z')
}

/// Children of `parent` (including zombies).
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
            if let Some((ppid, state)) = proc_stat(pid) {
                if ppid == parent {
                    children.push((pid, state));
                }
            }
        }
    }
    children
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
