//! Rendering as a child process: the renderer runs with a defined
//! environment, its change set is read without blocking, and exactly the
//! services it names are reloaded or restarted (then `config-changed:NAME`).

use std::os::fd::IntoRawFd;

use super::*;

impl Runtime {
    pub(super) fn start_render(&mut self, request: RenderRequest) {
        if self.render_job.is_some() {
            self.render_queue.push_back(request);
            return;
        }
        let command = self.options.render_command.clone();
        if !command.is_file() {
            self.say(&format!(
                "initd: renderer {} not found: configuration not rendered",
                command.display()
            ));
            self.render_done(
                request.after,
                request.client,
                1,
                format!("renderer {} not found", command.display()),
                Vec::new(),
            );
            return;
        }
        let mut process = std::process::Command::new(&command);
        process
            .arg("render")
            .arg("--model")
            .arg(&self.options.model)
            .arg("--services")
            .arg(&self.options.services)
            .arg("--root")
            .arg(&self.options.root)
            .arg("--profile")
            .arg(&request.profile);
        if let Some(server) = &self.options.server {
            process.arg("--server").arg(server);
        }
        for service in &request.services {
            process.arg("--service").arg(service);
        }
        process
            .arg("--json")
            .env_clear()
            .envs(self.child_env.iter().map(|(key, value)| (key, value)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        match process.spawn() {
            Ok(mut child) => {
                let Some(stdout) = child.stdout.take() else {
                    return;
                };
                let fd = stdout.into_raw_fd();
                let _ = sys::set_nonblocking(fd);
                self.render_job = Some(RenderJob {
                    pid: child.id() as i32,
                    stdout: fd,
                    output: Vec::new(),
                    eof: false,
                    exit: None,
                    after: request.after,
                    client: request.client,
                });
            }
            Err(error) => {
                self.say(&format!(
                    "initd: cannot run renderer {}: {error}",
                    command.display()
                ));
                self.render_done(
                    request.after,
                    request.client,
                    1,
                    format!("cannot run renderer: {error}"),
                    Vec::new(),
                );
            }
        }
    }

    pub(super) fn read_render_output(&mut self) {
        let Some(job) = self.render_job.as_mut() else {
            return;
        };
        let mut buffer = [0u8; 8192];
        loop {
            match sys::read(job.stdout, &mut buffer) {
                Ok(0) => {
                    job.eof = true;
                    sys::close(job.stdout);
                    break;
                }
                Ok(count) => {
                    if job.output.len() < 16 * 1024 * 1024 {
                        job.output.extend_from_slice(&buffer[..count]);
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    pub(super) fn finish_render(&mut self) {
        let done = self
            .render_job
            .as_ref()
            .is_some_and(|job| job.eof && job.exit.is_some());
        if !done {
            return;
        }
        let Some(job) = self.render_job.take() else {
            return;
        };
        let exit = job.exit.unwrap_or(Exit::Code(1));
        let mut changes = Vec::new();
        let (code, message) = if !exit.success() {
            let message = format!(
                "renderer failed ({}): configuration unchanged",
                exit.describe()
            );
            self.say(&format!("initd: {message}"));
            (1, message)
        } else {
            match protocol::parse_change_set(&String::from_utf8_lossy(&job.output)) {
                Ok(change_set) => {
                    let mut message =
                        format!("rendered: {} files written", change_set.written.len());
                    for change in &change_set.services {
                        message.push_str(&format!("\n{} {}", change.action.as_str(), change.name));
                    }
                    changes = change_set
                        .services
                        .into_iter()
                        .map(|change| (change.name, change.action.as_str().to_string()))
                        .collect();
                    (0, message)
                }
                Err(error) => {
                    let message = format!("renderer printed a bad change set: {error}");
                    self.say(&format!("initd: {message}"));
                    (1, message)
                }
            }
        };
        self.render_done(job.after, job.client, code, message, changes);
        if let Some(next) = self.render_queue.pop_front() {
            self.start_render(next);
        }
    }

    pub(super) fn render_done(
        &mut self,
        after: AfterRender,
        client: Option<UnixStream>,
        code: i32,
        message: String,
        changes: Vec<(String, String)>,
    ) {
        let now = Instant::now();
        for (name, action) in &changes {
            if self.supervisor.service(name).is_none() {
                self.say(&format!("initd: change set names unknown service {name}"));
                continue;
            }
            let actions = if action == "reload" {
                self.supervisor.reload(name, now)
            } else {
                self.supervisor.restart(name, now)
            };
            self.apply(actions);
            let actions = self
                .supervisor
                .emit(servicedef::Event::ConfigChanged(name.clone()), now);
            self.apply(actions);
        }
        let mut reply_code = code;
        let mut reply = message;
        match after {
            AfterRender::Nothing => {}
            AfterRender::Boot => {
                let actions = self.supervisor.boot(now);
                self.apply(actions);
            }
            AfterRender::SwitchMode(mode) => {
                self.say(&format!("nodows: mode {mode}"));
                let actions = self.supervisor.set_mode(&mode, now);
                self.apply(actions);
                reply_code = 0;
                reply = format!("mode {mode}\n{reply}");
            }
        }
        if let Some(client) = client {
            reply_to(client, reply_code, &reply);
        }
    }
}
