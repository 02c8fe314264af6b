//! The control socket: accepting (peer checked first, clients capped,
//! backoff when out of descriptors), reading a request line (refused over
//! `MAX_REQUEST`), answering it, and the texts of status, blame and
//! critical-chain.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

impl Runtime {
    pub(super) fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.accept_backoff = ACCEPT_BACKOFF_MIN;
                    // The peer is checked before a byte of its request is
                    // read: an unauthorised client gets its refusal at once.
                    if let Err(refusal) = authorise(&stream) {
                        reply_to(stream, 1, &refusal);
                        continue;
                    }
                    if self.clients.len() >= MAX_CLIENTS {
                        self.close_oldest_client();
                    }
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            request: Vec::new(),
                            since: Instant::now(),
                        });
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) if crate::spawn::is_transient(&error) => {
                    // Out of descriptors (or memory): free one, and stop
                    // polling the listener for a while instead of spinning.
                    self.close_oldest_client();
                    let pause = self.accept_backoff;
                    // One console line per ten seconds of weather at most.
                    let now = Instant::now();
                    if self
                        .accept_logged
                        .is_none_or(|logged| now.duration_since(logged) >= ACCEPT_LOG_EVERY)
                    {
                        self.accept_logged = Some(now);
                        self.say(&format!(
                            "initd: control socket: accept: {error}; pausing accepts"
                        ));
                    }
                    self.accept_paused_until = Some(Instant::now() + pause);
                    self.accept_backoff = (pause * 2).min(ACCEPT_BACKOFF_MAX);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn close_oldest_client(&mut self) {
        let oldest = self
            .clients
            .iter()
            .enumerate()
            .min_by_key(|(_, client)| client.since)
            .map(|(index, _)| index);
        if let Some(index) = oldest {
            // Closing the connection is the answer: it took too long.
            drop(self.clients.remove(index));
        }
    }

    /// Read what a client sent; a whole line (or end of file) is a request.
    /// Clients are read without blocking: a slow one never stalls PID 1.
    /// A request longer than `MAX_REQUEST` is refused, never cut short.
    pub(super) fn read_client(&mut self, index: usize) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        let mut buffer = [0u8; 1024];
        let mut complete = false;
        loop {
            match client.stream.read(&mut buffer) {
                Ok(0) => {
                    complete = true;
                    break;
                }
                Ok(count) => {
                    client.request.extend_from_slice(&buffer[..count]);
                    if client.request.contains(&b'\n') || client.request.len() > MAX_REQUEST {
                        complete = true;
                        break;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    complete = true;
                    break;
                }
            }
        }
        if complete {
            let client = self.clients.swap_remove(index);
            let mut request = client.request;
            match request.iter().position(|byte| *byte == b'\n') {
                Some(end) if end <= MAX_REQUEST => request.truncate(end),
                None if request.len() <= MAX_REQUEST => {}
                _ => {
                    reply_to(
                        client.stream,
                        2,
                        &format!("request refused: longer than {MAX_REQUEST} bytes"),
                    );
                    return;
                }
            }
            self.handle_client(client.stream, request);
        }
    }

    fn handle_client(&mut self, stream: UnixStream, request: Vec<u8>) {
        let text = String::from_utf8_lossy(&request).to_string();
        let words: Vec<&str> = text.split_whitespace().collect();
        let request = match Request::parse(&words) {
            Ok(request) => request,
            Err(problem) => {
                reply_to(stream, 2, &problem);
                return;
            }
        };
        // A panic while handling one request fails that request, not PID 1:
        // the client hears so, the console says which request, and every
        // service keeps running.
        let description = format!("{request:?}");
        let mut client = stream.try_clone().ok();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.request(request, &mut client)
        }));
        match outcome {
            Ok(Some((code, reply))) => reply_to(stream, code, &reply),
            Ok(None) => {}
            Err(_) => {
                self.console.line(&format!(
                    "initd: internal error handling request {description} (panic caught); the request failed, initd keeps running"
                ));
                reply_to(
                    stream,
                    1,
                    "internal error: the request failed (see the console); initd keeps running",
                );
            }
        }
    }

    /// One control request. None means the reply comes later (rendering).
    fn request(
        &mut self,
        request: Request,
        client: &mut Option<UnixStream>,
    ) -> Option<(i32, String)> {
        let now = Instant::now();
        let known = |runtime: &Runtime, name: &str| runtime.supervisor.service(name).is_some();
        let reply = match request {
            Request::Status { json: true } => (0, self.status_json()),
            Request::Status { json: false } => (0, self.status_text()),
            Request::ServiceStatus(ref name) => match self.supervisor.service(name) {
                None => (2, format!("unknown service {name}: see initctl status")),
                Some(service) => {
                    let line = format!(
                        "{name} {}{}",
                        service.state.as_str(),
                        service
                            .reason
                            .as_deref()
                            .map(|reason| format!(" ({reason})"))
                            .unwrap_or_default()
                    );
                    let code = if service.state == State::Failed { 1 } else { 0 };
                    (code, line)
                }
            },
            Request::Start(ref name)
            | Request::Stop(ref name)
            | Request::Restart(ref name)
            | Request::Reload(ref name) => {
                let name = name.as_str();
                if !known(self, name) {
                    (2, format!("unknown service {name}: see initctl status"))
                } else if matches!(request, Request::Start(_) | Request::Restart(_))
                    && self.supervisor.service(name).is_some_and(|service| !service.enabled)
                {
                    (1, format!("{name}{DISABLED}: set it to yes in the model to run it"))
                } else {
                    let (verb, actions) = match request {
                        Request::Start(_) => ("start", self.supervisor.start(name, now)),
                        Request::Stop(_) => ("stop", self.supervisor.stop(name, now)),
                        Request::Restart(_) => ("restart", self.supervisor.restart(name, now)),
                        _ => ("reload", self.supervisor.reload(name, now)),
                    };
                    self.apply(actions);
                    let state = self
                        .supervisor
                        .service(name)
                        .map(|s| s.state.as_str())
                        .unwrap_or("stopped");
                    (0, format!("{verb} {name}: {state}"))
                }
            }
            Request::Check(ref name) => match self.supervisor.service(name) {
                None => (2, format!("unknown service {name}: see initctl status")),
                Some(service) => {
                    let definition = service.definition.clone();
                    let enabled = service.enabled;
                    let in_mode = self.supervisor.in_current_mode(name);
                    let (code, text) = check_service(
                        &definition,
                        self.supervisor.mode(),
                        in_mode,
                        &self.options.root,
                    );
                    if enabled {
                        (code, text)
                    } else {
                        (code, format!("{name}{DISABLED}\n{text}"))
                    }
                }
            },
            Request::Load(ref name) => match servicedef::load_dir(&self.options.services) {
                Err(errors) => (
                    2,
                    format!("{errors}\nconfiguration not loaded: still running the previous one"),
                ),
                Ok(definitions) => {
                    let count = definitions.len();
                    if let Some(name) = name {
                        if !definitions.iter().any(|d| d.name == *name) {
                            return Some((
                                2,
                                format!(
                                    "unknown service {name} in {}",
                                    self.options.services.display()
                                ),
                            ));
                        }
                    }
                    self.load_triggers(&definitions);
                    let actions = self.supervisor.load(definitions, now);
                    self.apply(actions);
                    (0, format!("loaded {count} services"))
                }
            },
            Request::Configure(ref name) => {
                if !known(self, name) {
                    (2, format!("unknown service {name}: see initctl status"))
                } else {
                    self.start_render(RenderRequest {
                        services: vec![name.to_string()],
                        profile: self.supervisor.mode().to_string(),
                        after: AfterRender::Nothing,
                        client: client.take(),
                        retry: false,
                        journal_only: false,
                    });
                    return None;
                }
            }
            Request::Render | Request::RenderApplied => {
                self.start_render(RenderRequest {
                    services: Vec::new(),
                    profile: self.supervisor.mode().to_string(),
                    after: AfterRender::Nothing,
                    client: client.take(),
                    retry: false,
                    journal_only: request == Request::RenderApplied,
                });
                return None;
            }
            Request::Log(ref name) => {
                let is_known = known(self, name);
                match self.logs.get_mut(name) {
                    Some(log) => {
                        log.drain();
                        let path = log.path().to_path_buf();
                        (0, read_tail(&path, 1024 * 1024))
                    }
                    None if is_known => (0, String::new()),
                    None => (2, format!("unknown service {name}: see initctl status")),
                }
            }
            Request::Emit(text) => match servicedef::Event::parse(&text) {
                Err(message) => (2, message),
                Ok(servicedef::Event::Custom(name)) if !self.supervisor.declares_event(&name) => (
                    2,
                    format!(
                        "unknown event {name}: no service declares it (<event name=\"{name}\"/> in its service.xml)"
                    ),
                ),
                Ok(event @ (servicedef::Event::Device(_) | servicedef::Event::Timer(_))) => {
                    let reply = format!("emitted {event}");
                    self.fire_external(event);
                    (0, reply)
                }
                Ok(event) => {
                    let reply = format!("emitted {event}");
                    let actions = self.supervisor.emit(event, now);
                    self.apply(actions);
                    (0, reply)
                }
            },
            Request::Mode(None) => (0, self.supervisor.mode().to_string()),
            // Proves that a panic in request handling is survived; only in
            // builds with the `test-hooks` feature (never an image's).
            #[cfg(feature = "test-hooks")]
            Request::DebugPanic => {
                #[allow(clippy::panic)]
                {
                    panic!("debug-panic requested")
                }
            }
            Request::Mode(Some(ref mode)) => {
                if !mode
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    (2, format!("bad mode name {mode}"))
                } else {
                    self.start_render(RenderRequest {
                        services: Vec::new(),
                        profile: mode.to_string(),
                        after: AfterRender::SwitchMode(mode.to_string()),
                        client: client.take(),
                        retry: false,
                        journal_only: false,
                    });
                    return None;
                }
            }
            Request::Blame => (0, self.blame()),
            Request::CriticalChain => (0, self.critical_chain()),
            Request::Shutdown(kind) => {
                self.request_shutdown(kind);
                (0, kind.as_str().to_string())
            }
        };
        Some(reply)
    }

    fn status_json(&self) -> String {
        let statuses: Vec<protocol::ServiceStatus> = self
            .supervisor
            .services()
            .map(|service| protocol::ServiceStatus {
                name: &service.definition.name,
                state: service.state.as_str(),
                pid: service.pid,
                restarts: service.restarts,
                wanted: service.wanted,
                enabled: service.enabled,
                in_mode: self.supervisor.in_current_mode(&service.definition.name),
                exit: service.last_exit.map(|exit| exit.describe()),
                reason: service.reason.as_deref(),
                backoff_ms: service.backoff.as_millis(),
            })
            .collect();
        // One service per line: greppable. Serialising these plain structs
        // cannot fail.
        let lines: Vec<String> = statuses
            .iter()
            .filter_map(|status| serde_json::to_string(status).ok())
            .collect();
        format!("[\n{}\n]", lines.join(",\n"))
    }

    /// `initctl blame`: each service's time from spawn to ready (its
    /// current or last instance), slowest first, from initd's own clock.
    fn blame(&self) -> String {
        let mut rows: Vec<(Duration, Duration, &str)> = self
            .supervisor
            .services()
            .filter_map(|service| match service.timestamps() {
                (Some(spawned), Some(ready)) if ready >= spawned => Some((
                    ready - spawned,
                    ready.saturating_duration_since(self.started),
                    service.definition.name.as_str(),
                )),
                _ => None,
            })
            .collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(b.2)));
        let mut out = String::new();
        for (took, at, name) in rows {
            out.push_str(&format!(
                "{:>8.3}s {name} (ready at {:.3}s)\n",
                took.as_secs_f64(),
                at.as_secs_f64()
            ));
        }
        out
    }

    /// `initctl critical-chain`: from the service that became ready last,
    /// back through the need that became ready last at each step.
    fn critical_chain(&self) -> String {
        let ready_at = |name: &str| {
            self.supervisor
                .service(name)
                .and_then(|service| service.timestamps().1)
        };
        let mut current = self
            .supervisor
            .services()
            .filter_map(|service| Some((service.timestamps().1?, service.definition.name.clone())))
            .max()
            .map(|(_, name)| name);
        let mut out = String::new();
        let mut depth = 0;
        while let Some(name) = current.take() {
            let Some(service) = self.supervisor.service(&name) else {
                break;
            };
            let (spawned, ready) = service.timestamps();
            let at = ready.map_or(0.0, |ready| {
                ready.saturating_duration_since(self.started).as_secs_f64()
            });
            let took = match (spawned, ready) {
                (Some(spawned), Some(ready)) => {
                    ready.saturating_duration_since(spawned).as_secs_f64()
                }
                _ => 0.0,
            };
            let indent = if depth == 0 {
                String::new()
            } else {
                format!("{}└─", "  ".repeat(depth - 1))
            };
            out.push_str(&format!("{indent}{name} @{at:.3}s +{took:.3}s\n"));
            current = service
                .definition
                .needs
                .iter()
                .filter_map(|need| Some((ready_at(need)?, need.clone())))
                .max()
                .map(|(_, need)| need);
            depth += 1;
            if depth > 64 {
                break;
            }
        }
        out
    }

    /// `model PATH`, and the fleet watcher's state when it runs
    /// (`STATE/model-status.json`, written by `nodows watch --model
    /// postgres://...`).
    fn model_status_text(&self) -> String {
        let mut out = format!("model {}\n", self.model_to_render().display());
        let path = self.options.state.join("model-status.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return out;
        };
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&text) else {
            out.push_str(&format!("fleet: {} is not readable JSON\n", path.display()));
            return out;
        };
        let text_of = |key: &str| status.get(key).and_then(|v| v.as_str()).unwrap_or("");
        let connected = status.get("connected").and_then(|v| v.as_bool()) == Some(true);
        let running = match status.get("running").and_then(|r| r.get("revision")) {
            Some(serde_json::Value::Number(revision)) => format!("last-good revision {revision}"),
            _ => "the baked base model".to_string(),
        };
        out.push_str(&format!(
            "fleet {} server {}: {}; running {running}",
            text_of("source"),
            text_of("server"),
            if connected {
                "connected"
            } else {
                "database unreachable"
            },
        ));
        match (text_of("result"), text_of("error")) {
            ("", _) => {}
            (result, "") => out.push_str(&format!("; last {result}")),
            (result, error) => out.push_str(&format!(
                "; last {result}: {}",
                error.lines().next().unwrap_or("")
            )),
        }
        out.push('\n');
        out
    }

    fn status_text(&self) -> String {
        let mut out = self
            .assessment
            .as_ref()
            .map(Assessment::status_line)
            .unwrap_or_default();
        if self.options.pid1 {
            out.push_str(&crate::pid1::integrity_status(
                &std::fs::read_to_string(crate::pid1::INTEGRITY_LOG).unwrap_or_default(),
            ));
        }
        out.push_str(&format!("mode {}\n", self.supervisor.mode()));
        out.push_str(&self.model_status_text());
        for service in self.supervisor.services() {
            out.push_str(&format!(
                "{:<24} {:<9} pid={:<8} restarts={}{}\n",
                service.definition.name,
                service.state.as_str(),
                service
                    .pid
                    .map(|pid| pid.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                service.restarts,
                service
                    .reason
                    .as_deref()
                    .map(|reason| format!(" ({reason})"))
                    .or_else(|| (!service.enabled).then(|| DISABLED.to_string()))
                    .unwrap_or_default(),
            ));
        }
        out
    }
}

/// How status and a refused start show a service the model disables.
const DISABLED: &str = " (disabled by the model: its key enabled is no)";

/// The longest request line (without its newline) initd reads.
pub const MAX_REQUEST: usize = 4096;

/// The control socket's access rule: root, or initd's own uid (a
/// supervisor run by a user for tests). Err is the refusal to send.
fn authorise(stream: &UnixStream) -> Result<(), String> {
    let own = sys::geteuid();
    match sys::peer_uid(stream.as_raw_fd()) {
        Ok(uid) if uid == 0 || uid == own => Ok(()),
        Ok(uid) => Err(format!(
            "permission denied: uid {uid} is neither root nor initd's own uid {own}"
        )),
        Err(error) => Err(format!(
            "permission denied: cannot read peer credentials: {error}"
        )),
    }
}

pub(super) fn reply_to(mut stream: UnixStream, code: i32, text: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut message = format!("exit {code}\n{text}");
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let _ = stream.write_all(message.as_bytes());
}

fn read_tail(path: &Path, limit: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if length > limit {
        use std::io::Seek;
        let _ = file.seek(std::io::SeekFrom::Start(length - limit));
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
