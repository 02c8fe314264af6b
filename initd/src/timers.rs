//! Timer events: every `every:DURATION` and `daily:HH:MM` that some
//! service's `start-on` names is due at an `Instant`; the poll loop sleeps
//! until the earliest one (and without a timeout when there is none), and
//! fires the due ones as events. Pure: the clocks come in as arguments, so
//! the tests need no sleeping.

use std::time::{Duration, Instant};

use servicedef::{Event, ServiceDefinition, Timer};

#[derive(Debug, Clone)]
struct Entry {
    timer: Timer,
    due: Instant,
}

/// The timers of the loaded definitions and when each is due next.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    entries: Vec<Entry>,
}

/// After a daily timer fired it is not due again within this margin: a
/// wall clock that steps back a little does not fire it twice.
const DAILY_MARGIN: u64 = 60;

impl Timers {
    /// `now` on the monotonic clock, `wall` seconds since the Unix epoch.
    pub fn new(definitions: &[ServiceDefinition], now: Instant, wall: u64) -> Timers {
        let mut timers = Timers::default();
        timers.load(definitions, now, wall);
        timers
    }

    /// New definitions (`initctl load`): a timer still named keeps its due
    /// time, a new one starts counting now, a timer nobody names goes.
    pub fn load(&mut self, definitions: &[ServiceDefinition], now: Instant, wall: u64) {
        let mut named: Vec<Timer> = definitions
            .iter()
            .flat_map(|definition| &definition.start_on)
            .filter_map(|event| match event {
                Event::Timer(timer) => Some(*timer),
                _ => None,
            })
            .collect();
        named.sort();
        named.dedup();
        let old = std::mem::take(&mut self.entries);
        self.entries = named
            .into_iter()
            .map(|timer| {
                old.iter()
                    .find(|entry| entry.timer == timer)
                    .cloned()
                    .unwrap_or_else(|| Entry {
                        timer,
                        due: now + first_wait(timer, wall),
                    })
            })
            .collect();
    }

    /// The earliest due time; `None` when no service names a timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|entry| entry.due).min()
    }

    /// The timers due at `now`, as events, each scheduled again.
    pub fn fire(&mut self, now: Instant, wall: u64) -> Vec<Event> {
        let mut fired = Vec::new();
        for entry in self.entries.iter_mut().filter(|entry| entry.due <= now) {
            fired.push(Event::Timer(entry.timer));
            entry.due = match entry.timer {
                // From the last due time, so the period does not drift; one
                // that fell behind (a stopped clock) waits a whole period.
                Timer::Every(interval) => Some(entry.due + interval)
                    .filter(|due| *due > now)
                    .unwrap_or(now + interval),
                Timer::Daily { hour, minute } => {
                    let wait = Timer::daily_wait(hour, minute, wall + DAILY_MARGIN);
                    now + Duration::from_secs(wait + DAILY_MARGIN)
                }
            };
        }
        fired
    }
}

fn first_wait(timer: Timer, wall: u64) -> Duration {
    match timer {
        Timer::Every(interval) => interval,
        Timer::Daily { hour, minute } => Duration::from_secs(Timer::daily_wait(hour, minute, wall)),
    }
}

/// The poll(2) timeout for the loop's next deadline: -1 (no timeout, so no
/// wake-up) without one, else the wait rounded up to whole milliseconds,
/// capped at what poll takes.
pub fn poll_timeout_ms(now: Instant, deadline: Option<Instant>) -> i32 {
    let Some(deadline) = deadline else {
        return -1;
    };
    let wait = deadline.saturating_duration_since(now);
    let milliseconds = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
    i32::try_from(milliseconds).unwrap_or(i32::MAX)
}

/// Seconds since the Unix epoch now (0 if the clock is before it).
pub fn wall_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::Path;

    fn definition(name: &str, start_on: &[&str]) -> ServiceDefinition {
        let events: String = start_on
            .iter()
            .map(|event| format!("<start-on event=\"{event}\"/>"))
            .collect();
        let text = format!(
            "<service name=\"{name}\"><exec path=\"/bin/true\"/><ready kind=\"exit\"/>{events}</service>"
        );
        servicedef::parse_str(Path::new("/s/x/service.xml"), &text).unwrap()
    }

    fn timer(text: &str) -> Event {
        Event::parse(text).unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn no_timer_means_no_deadline_and_no_wakeup() {
        let now = Instant::now();
        let timers = Timers::new(
            &[definition("a", &["boot", "net-device-added:eth*"])],
            now,
            0,
        );
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(poll_timeout_ms(now, timers.next_deadline()), -1);
    }

    #[test]
    fn the_poll_timeout_is_the_wait_to_the_deadline_rounded_up() {
        let now = Instant::now();
        assert_eq!(poll_timeout_ms(now, Some(now)), 0);
        assert_eq!(poll_timeout_ms(now, Some(now - MINUTE)), 0);
        assert_eq!(
            poll_timeout_ms(now, Some(now + Duration::from_micros(1500))),
            2
        );
        // An hourly timer sleeps the whole hour: no wake-up every minute.
        assert_eq!(poll_timeout_ms(now, Some(now + 60 * MINUTE)), 3_600_000);
        assert_eq!(
            poll_timeout_ms(now, Some(now + Duration::from_secs(40 * 86_400))),
            i32::MAX
        );
    }

    #[test]
    fn an_every_timer_fires_each_period_without_drift() {
        let start = Instant::now();
        let mut timers = Timers::new(
            &[
                definition("a", &["every:15m"]),
                definition("b", &["every:15m", "every:1h"]),
            ],
            start,
            0,
        );
        assert_eq!(timers.next_deadline(), Some(start + 15 * MINUTE));
        assert!(timers.fire(start + 14 * MINUTE, 0).is_empty());
        // Woken late: fires once, the next due time stays on the grid.
        let late = start + 15 * MINUTE + Duration::from_millis(300);
        assert_eq!(timers.fire(late, 0), vec![timer("every:15m")]);
        assert_eq!(timers.next_deadline(), Some(start + 30 * MINUTE));
        let hour = start + 60 * MINUTE;
        timers.fire(start + 30 * MINUTE, 0);
        timers.fire(start + 45 * MINUTE, 0);
        assert_eq!(
            timers.fire(hour, 0),
            vec![timer("every:15m"), timer("every:1h")]
        );
        // Far behind (a stopped clock): one firing, then a whole period.
        let much_later = hour + 100 * MINUTE;
        assert_eq!(
            timers.fire(much_later, 0),
            vec![timer("every:15m"), timer("every:1h")]
        );
        assert_eq!(timers.next_deadline(), Some(much_later + 15 * MINUTE));
    }

    #[test]
    fn a_daily_timer_fires_at_its_wall_clock_time_once_a_day() {
        let start = Instant::now();
        // 1970-01-02 03:00:00 UTC
        let wall = 86_400 + 3 * 3600;
        let mut timers = Timers::new(&[definition("a", &["daily:03:30"])], start, wall);
        assert_eq!(timers.next_deadline(), Some(start + 30 * MINUTE));
        let due = start + 30 * MINUTE;
        let fired = timers.fire(due, wall + 30 * 60);
        assert_eq!(fired, vec![timer("daily:03:30")]);
        assert_eq!(
            timers.next_deadline(),
            Some(due + Duration::from_secs(86_400))
        );
        // Fired a second early by the wall clock: still not twice.
        let mut timers = Timers::new(&[definition("a", &["daily:03:30"])], start, wall);
        timers.fire(due, wall + 30 * 60 - 1);
        assert_eq!(
            timers.next_deadline(),
            Some(due + Duration::from_secs(86_400 + 1))
        );
    }

    #[test]
    fn loading_keeps_the_due_time_of_a_timer_still_named() {
        let start = Instant::now();
        let mut timers = Timers::new(&[definition("a", &["every:1h"])], start, 0);
        let later = start + 10 * MINUTE;
        timers.load(
            &[
                definition("a", &["every:1h"]),
                definition("b", &["every:5m"]),
            ],
            later,
            0,
        );
        assert_eq!(timers.next_deadline(), Some(later + 5 * MINUTE));
        assert_eq!(
            timers.fire(start + 60 * MINUTE, 0),
            vec![timer("every:5m"), timer("every:1h")]
        );
        timers.load(&[definition("a", &["boot"])], later, 0);
        assert_eq!(timers.next_deadline(), None);
    }
}
