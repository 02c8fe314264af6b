//! The events that come from outside the services: kernel devices (net
//! and block devices added or removed, as initd reads them from the
//! kernel's uevents) and timers (`every:15m`, `daily:03:30`). Their text
//! forms are part of `Event`'s (`start-on`, `initctl emit`, the console).

use std::time::Duration;

/// The device classes initd reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subsystem {
    /// Network interfaces (the uevent's `INTERFACE`).
    Net,
    /// Disks and partitions (the uevent's `DEVNAME`).
    Block,
}

impl Subsystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Subsystem::Net => "net",
            Subsystem::Block => "block",
        }
    }
}

/// What happened to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceAction {
    Added,
    Removed,
}

impl DeviceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceAction::Added => "added",
            DeviceAction::Removed => "removed",
        }
    }
}

/// `net-device-added:eth1`: a device event. In a `start-on` the name is a
/// pattern (`*` any run of characters, `?` one character): `eth*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Device {
    pub subsystem: Subsystem,
    pub action: DeviceAction,
    pub name: String,
}

impl Device {
    /// The kind before the colon: `net-device-added` and so on.
    pub fn kind(&self) -> String {
        format!(
            "{}-device-{}",
            self.subsystem.as_str(),
            self.action.as_str()
        )
    }

    /// Whether this (a start-on's pattern) matches the fired device event.
    pub fn matches(&self, fired: &Device) -> bool {
        self.subsystem == fired.subsystem
            && self.action == fired.action
            && glob(self.name.as_bytes(), fired.name.as_bytes())
    }
}

/// The device event kinds, for `Event::parse`.
pub const DEVICE_KINDS: [(&str, Subsystem, DeviceAction); 4] = [
    ("net-device-added", Subsystem::Net, DeviceAction::Added),
    ("net-device-removed", Subsystem::Net, DeviceAction::Removed),
    ("block-device-added", Subsystem::Block, DeviceAction::Added),
    (
        "block-device-removed",
        Subsystem::Block,
        DeviceAction::Removed,
    ),
];

/// A device name or pattern: letters, digits, `- _ .` and the wildcards.
pub fn is_device_pattern(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?'))
}

/// A device's own name (no wildcards), as a fired device event carries.
pub fn is_device_name(name: &str) -> bool {
    is_device_pattern(name) && !name.contains(['*', '?'])
}

/// `*` matches any run of bytes, `?` one byte, anything else itself.
pub fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point: linear for patterns like a*b*c.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A timer event: `every:DURATION` (from initd's start, then at that
/// interval) or `daily:HH:MM` (each day at that time, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    Every(Duration),
    Daily { hour: u8, minute: u8 },
}

/// The shortest `every`: a timer is a periodic job, not a busy loop.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl Timer {
    /// Parses what follows `every:` or `daily:` (`kind` is that word).
    pub fn parse(kind: &str, text: &str) -> Result<Timer, String> {
        match kind {
            "every" => match crate::parse_duration(text) {
                Some(interval) if interval >= MIN_EVERY => Ok(Timer::Every(interval)),
                Some(_) => Err(format!(
                    "bad timer \"every:{text}\": the interval must be at least 1s"
                )),
                None => Err(format!(
                    "bad timer \"every:{text}\": the interval is a number and a unit, like every:30s, every:15m or every:6h"
                )),
            },
            _ => parse_clock(text).map_or_else(
                || {
                    Err(format!(
                        "bad timer \"daily:{text}\": the time is HH:MM in UTC, like daily:03:30"
                    ))
                },
                |(hour, minute)| Ok(Timer::Daily { hour, minute }),
            ),
        }
    }

    /// Seconds from `now` (seconds since the Unix epoch, UTC) to the next
    /// time a daily timer is due; never 0 (due now means due tomorrow).
    pub fn daily_wait(hour: u8, minute: u8, now: u64) -> u64 {
        const DAY: u64 = 86_400;
        let target = u64::from(hour) * 3600 + u64::from(minute) * 60;
        let wait = (target + DAY - now % DAY) % DAY;
        if wait == 0 {
            DAY
        } else {
            wait
        }
    }
}

impl std::fmt::Display for Timer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timer::Every(interval) => write!(formatter, "every:{}", format_duration(*interval)),
            Timer::Daily { hour, minute } => write!(formatter, "daily:{hour:02}:{minute:02}"),
        }
    }
}

/// `HH:MM` with 00 <= HH <= 23 and 00 <= MM <= 59, two digits each.
fn parse_clock(text: &str) -> Option<(u8, u8)> {
    let (hour, minute) = text.split_once(':')?;
    let two_digits = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hour) || !two_digits(minute) {
        return None;
    }
    let (hour, minute): (u8, u8) = (hour.parse().ok()?, minute.parse().ok()?);
    (hour < 24 && minute < 60).then_some((hour, minute))
}

/// The largest unit that divides the duration exactly: `every:90s` stays
/// `90s`, `every:60m` prints as `1h`.
fn format_duration(duration: Duration) -> String {
    let milliseconds = duration.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if milliseconds.is_multiple_of(size) {
            return format!("{}{unit}", milliseconds / size);
        }
    }
    format!("{milliseconds}ms")
}
