//! Events from outside the services: the kernel's device uevents (read from
//! a netlink socket, no udev) and initd's timers. Each fires as an event;
//! a service already up that it starts again (a finished oneshot) has its
//! files rendered first, so it applies the current model.

use servicedef::Event;

use super::*;
use crate::timers::{self, Timers};
use crate::uevent;

/// Whether some definition starts on a device event: only then does initd
/// listen to the kernel's uevents.
pub(super) fn wants_devices(definitions: &[ServiceDefinition]) -> bool {
    definitions
        .iter()
        .flat_map(|definition| &definition.start_on)
        .any(|event| matches!(event, Event::Device(_)))
}

/// The timers of `definitions`, counted from now.
pub(super) fn timers_of(definitions: &[ServiceDefinition]) -> Timers {
    Timers::new(definitions, Instant::now(), timers::wall_clock())
}

impl Runtime {
    /// Opens the uevent socket when a definition needs it (at start and
    /// after `initctl load`); without one, device events are not seen.
    pub(super) fn listen_to_devices(&mut self, definitions: &[ServiceDefinition]) {
        if wants_devices(definitions) {
            self.listen_to_devices_now();
        }
    }

    pub(super) fn listen_to_devices_now(&mut self) {
        if self.uevents.is_some() {
            return;
        }
        match sys::uevent_socket() {
            Ok(fd) => self.uevents = Some(fd),
            Err(error) => self.say(&format!(
                "initd: cannot listen to kernel device events: {error}; start-on net-device-*/block-device-* will not fire"
            )),
        }
    }

    /// `initctl load`: the new definitions' timers and device listening.
    pub(super) fn load_triggers(&mut self, definitions: &[ServiceDefinition]) {
        self.timers
            .load(definitions, Instant::now(), timers::wall_clock());
        self.listen_to_devices(definitions);
    }

    /// Reads every queued uevent and fires the device events among them.
    pub(super) fn read_uevents(&mut self) {
        let Some(fd) = self.uevents else {
            return;
        };
        let mut buffer = vec![0u8; uevent::MAX_MESSAGE];
        loop {
            match sys::receive_uevent(fd, &mut buffer) {
                Ok(Some(length)) => match uevent::parse(&buffer[..length]) {
                    Ok(message) => {
                        if let Some(device) = message.device_event() {
                            self.say(&format!("initd: device {}", device.describe()));
                            self.fire_external(device.event());
                        }
                    }
                    Err(error) => self.say(&format!("initd: uevent ignored: {error}")),
                },
                Ok(None) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                // ENOBUFS: the kernel dropped events while we were busy.
                Err(error) => {
                    self.say(&format!("initd: reading device events: {error}"));
                    return;
                }
            }
        }
    }

    /// Fires the timers that are due.
    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.timers.next_deadline().is_some_and(|due| due <= now) {
            for event in self.timers.fire(now, timers::wall_clock()) {
                self.fire_external(event);
            }
        }
    }

    /// A device or timer event: rendered first when it starts a service
    /// again that is up (its files may be stale), else fired at once.
    pub(super) fn fire_external(&mut self, event: Event) {
        let starters = self.supervisor.starters(&event);
        let rerun: Vec<String> = starters
            .into_iter()
            .filter(|name| {
                self.supervisor.service(name).is_some_and(|service| {
                    service.state == State::Running && !service.definition.files.is_empty()
                })
            })
            .collect();
        if rerun.is_empty() {
            let actions = self.supervisor.emit(event, Instant::now());
            self.apply(actions);
            return;
        }
        self.say(&format!(
            "initd: {event}: rendering {} first",
            rerun.join(" ")
        ));
        self.start_render(RenderRequest {
            services: rerun,
            profile: self.supervisor.mode().to_string(),
            after: AfterRender::Emit(event),
            client: None,
            retry: false,
            journal_only: false,
        });
    }
}
