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
                RenderFailure::NoRenderer,
            );
            return;
        }
        let mut process = std::process::Command::new(&command);
        if request.journal_only {
            // A watcher applied files itself: only its journal's change set.
            process.arg("journal").arg("--root").arg(&self.options.root);
        } else {
            let model = self.model_to_render();
            process
                .arg("render")
                .arg("--model")
                .arg(&model)
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
        }
        process
            .arg("--json")
            // initd removes the journal once it has acted on the change set.
            .arg("--keep-journal")
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
                    started: Instant::now(),
                    timed_out: false,
                    retry: request.retry,
                    profile: request.profile.clone(),
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
                    RenderFailure::NoRenderer,
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
        let journal = self.options.root.join(RENDER_JOURNAL);
        let mut changes = Vec::new();
        let mut failure = RenderFailure::Refused;
        let mut retry = false;
        let (code, message) = if exit == Exit::Code(2) {
            // Bad input: the renderer stops before it writes anything.
            let message =
                "renderer refused the input (exit 2): configuration unchanged".to_string();
            self.say(&format!("initd: {message}"));
            (1, message)
        } else if !exit.success() {
            let how = if job.timed_out {
                format!(
                    "hung for {} s and was killed",
                    self.options.render_timeout.as_secs()
                )
            } else {
                exit.describe()
            };
            let unfinished = journal.exists();
            let message = if unfinished {
                retry = !job.retry;
                format!(
                    "renderer failed ({how}): it left an unfinished apply; {}",
                    if retry {
                        "rendering again to finish it and report its changes"
                    } else {
                        "the next render finishes it and reports its changes"
                    }
                )
            } else {
                format!("renderer failed ({how}): configuration unchanged")
            };
            self.say(&format!("initd: {message}"));
            (1, message)
        } else {
            match protocol::parse_change_set(&String::from_utf8_lossy(&job.output)) {
                Ok(change_set) => {
                    // Acted on below: the journal's change set is reported.
                    match std::fs::remove_file(&journal) {
                        Err(error) if error.kind() != std::io::ErrorKind::NotFound => self.say(
                            &format!("initd: {}: cannot remove: {error}", journal.display()),
                        ),
                        _ => {}
                    }
                    let mut message =
                        format!("rendered: {} files written", change_set.written.len());
                    for change in &change_set.services {
                        message.push_str(&format!("\n{} {}", change.action.as_str(), change.name));
                    }
                    self.apply_model_settings(change_set.disabled.as_deref(), &change_set.values);
                    changes = change_set.services;
                    failure = RenderFailure::None;
                    (0, message)
                }
                Err(error) => {
                    let message = format!("renderer printed a bad change set: {error}");
                    self.say(&format!("initd: {message}"));
                    (1, message)
                }
            }
        };
        if retry {
            self.render_queue.push_front(RenderRequest {
                services: Vec::new(),
                profile: job.profile.clone(),
                after: AfterRender::Nothing,
                client: None,
                retry: true,
                journal_only: false,
            });
        }
        self.render_done(job.after, job.client, code, message, changes, failure);
        if let Some(next) = self.render_queue.pop_front() {
            self.start_render(next);
        }
    }

    /// The model's settings from a change set, before its reloads: the
    /// `{KEY}` fields' values, then which services the model disables.
    fn apply_model_settings(
        &mut self,
        disabled: Option<&[String]>,
        values: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    ) {
        self.supervisor.set_model_values(values);
        if let Some(disabled) = disabled {
            let actions = self.supervisor.set_disabled(disabled, Instant::now());
            self.apply(actions);
        }
    }

    /// Kills a render that has run longer than `render_timeout`; its exit
    /// is then reported by `finish_render`.
    pub(super) fn kill_hung_render(&mut self) {
        let timeout = self.options.render_timeout;
        let Some(job) = self.render_job.as_mut() else {
            return;
        };
        if job.exit.is_some() || job.timed_out || job.started.elapsed() < timeout {
            return;
        }
        job.timed_out = true;
        let pid = job.pid;
        // SAFETY: kill on the renderer's pid, a child not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        self.say(&format!(
            "initd: renderer pid {pid} hung for {} s: killed",
            timeout.as_secs()
        ));
    }

    /// The last-good model when there is one, else `--model`.
    pub(super) fn model_to_render(&self) -> PathBuf {
        match &self.options.last_good {
            Some(path) if crate::pid1::last_good_revision_of(path).is_some() => path.clone(),
            _ => self.options.model.clone(),
        }
    }

    pub(super) fn render_done(
        &mut self,
        after: AfterRender,
        client: Option<UnixStream>,
        code: i32,
        message: String,
        changes: Vec<protocol::ServiceChange>,
        failure: RenderFailure,
    ) {
        let now = Instant::now();
        for protocol::ServiceChange { name, action } in &changes {
            if self.supervisor.service(name).is_none() {
                self.say(&format!("initd: change set names unknown service {name}"));
                continue;
            }
            let actions = match action {
                protocol::ChangeAction::Reload => self.supervisor.reload(name, now),
                protocol::ChangeAction::Restart => self.supervisor.restart_if_active(name, now),
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
            AfterRender::Emit(event) => {
                let actions = self.supervisor.emit(event, now);
                self.apply(actions);
            }
            AfterRender::Boot => {
                let actions = self.supervisor.boot(now);
                self.apply(actions);
            }
            // All or nothing: a model the renderer refuses for the new mode
            // leaves the node in its old mode (the renderer wrote nothing).
            AfterRender::SwitchMode(mode) if failure == RenderFailure::Refused => {
                let old = self.supervisor.mode().to_string();
                self.say(&format!(
                    "initd: mode {mode} refused, staying in mode {old}: {reply} (the renderer's errors are above)"
                ));
                reply_code = 1;
                reply = format!(
                    "mode {mode} refused, still in mode {old}: {reply}; see the renderer's errors on the console"
                );
            }
            // Without a renderer (configs baked only) the switch goes ahead.
            AfterRender::SwitchMode(mode) => {
                // t on the clock of the ready line: switch to ready is their difference.
                let seconds = self.started.elapsed().as_secs_f64();
                self.say(&format!("nodows: mode {mode} t={seconds:.2}"));
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
