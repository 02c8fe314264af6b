//! Boot assessment on A/B images (`nodows.slot=` on the kernel command
//! line): initd asks `nodows boot-status` whether this boot is on trial (its
//! boot entry still has a try counter), marks the boot good with `nodows
//! bless` once the mode is ready (every service of the mode running), and
//! reboots a trial boot that is not ready within `nodows.trial-timeout=`
//! seconds, so that systemd-boot uses up the entry's tries and falls back to
//! the other slot without an operator. The ESP work is done by those child
//! processes; initd only spawns them, reads one line of `key=value` words
//! each, and decides.

use std::time::{Duration, Instant};

/// The default time a trial boot has to reach ready.
pub const DEFAULT_TRIAL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Status,
    Bless,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not known yet (boot-status has not answered).
    Unknown,
    /// The entry has a try counter: not yet blessed.
    Trial,
    Good,
}

/// What initd should do after a job finished or time passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Say(String),
    Spawn(Job),
    Reboot(String),
}

#[derive(Debug)]
pub struct Assessment {
    pub slot: String,
    pub trial_timeout: Duration,
    /// The last line a job printed (`slot=b version=2 state=trial ...`).
    pub line: Option<String>,
    pub verdict: Verdict,
    pub ready: bool,
    /// A job is running.
    pub running: Option<Job>,
    /// Ready came while the status job ran: bless when it ends.
    bless_wanted: bool,
    /// When a trial boot that is not ready is rebooted.
    pub deadline: Option<Instant>,
    rebooting: bool,
}

/// The value of `key=` in a line of words.
pub fn word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

impl Assessment {
    pub fn new(slot: &str, trial_timeout: Duration) -> Assessment {
        Assessment {
            slot: slot.to_string(),
            trial_timeout,
            line: None,
            verdict: Verdict::Unknown,
            ready: false,
            running: None,
            bless_wanted: false,
            deadline: None,
            rebooting: false,
        }
    }

    /// At boot: ask whether this boot is on trial.
    pub fn boot(&mut self) -> Vec<Step> {
        self.running = Some(Job::Status);
        vec![Step::Spawn(Job::Status)]
    }

    /// The mode is ready: bless, unless already good.
    pub fn ready(&mut self) -> Vec<Step> {
        if self.ready {
            return Vec::new();
        }
        self.ready = true;
        self.deadline = None;
        match (&self.verdict, self.running) {
            (Verdict::Good, _) => Vec::new(),
            (_, Some(_)) => {
                self.bless_wanted = true;
                Vec::new()
            }
            (_, None) => {
                self.running = Some(Job::Bless);
                vec![Step::Spawn(Job::Bless)]
            }
        }
    }

    /// A job exited with `code` after printing `output`.
    pub fn finished(&mut self, job: Job, code: i32, output: &str, now: Instant) -> Vec<Step> {
        self.running = None;
        let line = output.lines().rev().find(|line| line.contains("slot="));
        let mut steps = Vec::new();
        if code != 0 || line.is_none() {
            let what = match job {
                Job::Status => "boot-status",
                Job::Bless => "bless",
            };
            steps.push(Step::Say(format!(
                "nodows: boot assessment: nodows {what} failed (exit {code}): {}",
                output.trim()
            )));
            return steps;
        }
        let line = line.unwrap_or_default().trim().to_string();
        let trial = word(&line, "state") == Some("trial");
        self.verdict = if trial { Verdict::Trial } else { Verdict::Good };
        match job {
            Job::Status => {
                steps.push(Step::Say(format!("nodows: boot {line}")));
                if let Some(failed) = word(&line, "failed") {
                    steps.push(Step::Say(format!(
                        "nodows: boot: version(s) {failed} ran out of tries and are not booted again (rolled back)"
                    )));
                }
                if trial && !self.ready {
                    self.deadline = Some(now + self.trial_timeout);
                }
                if self.bless_wanted || (self.ready && trial) {
                    self.bless_wanted = false;
                    if trial {
                        self.running = Some(Job::Bless);
                        steps.push(Step::Spawn(Job::Bless));
                    }
                }
            }
            Job::Bless => {
                steps.push(Step::Say(format!("nodows: boot blessed {line}")));
            }
        }
        self.line = Some(line);
        steps
    }

    /// Called on every loop turn.
    pub fn tick(&mut self, now: Instant) -> Vec<Step> {
        match self.deadline {
            Some(deadline) if now >= deadline && !self.ready && !self.rebooting => {
                self.rebooting = true;
                vec![Step::Reboot(format!(
                    "nodows: boot on trial not ready after {}s: rebooting (the boot entry's tries count down; systemd-boot falls back to the other slot when they run out)",
                    self.trial_timeout.as_secs()
                ))]
            }
            _ => Vec::new(),
        }
    }

    /// The line `initctl status` shows.
    pub fn status_line(&self) -> String {
        match &self.line {
            Some(line) => format!("boot {line}\n"),
            None => format!("boot slot={} state=unknown\n", self.slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_boot_is_blessed_once_ready() {
        let now = Instant::now();
        let mut assessment = Assessment::new("b", Duration::from_secs(60));
        assert_eq!(assessment.boot(), vec![Step::Spawn(Job::Status)]);
        let steps = assessment.finished(
            Job::Status,
            0,
            "slot=b version=2 state=trial entry=nodows-2-b tries-left=2\n",
            now,
        );
        assert_eq!(steps.len(), 1);
        assert_eq!(assessment.deadline, Some(now + Duration::from_secs(60)));
        assert_eq!(assessment.ready(), vec![Step::Spawn(Job::Bless)]);
        assert_eq!(assessment.deadline, None);
        assessment.finished(
            Job::Bless,
            0,
            "slot=b version=2 state=good entry=nodows-2-b\n",
            now,
        );
        assert_eq!(assessment.verdict, Verdict::Good);
        assert_eq!(
            assessment.status_line(),
            "boot slot=b version=2 state=good entry=nodows-2-b\n"
        );
    }

    /// Guards the rollback: a trial boot that never gets ready reboots by itself.
    #[test]
    fn a_trial_boot_that_is_not_ready_in_time_reboots_once() {
        let now = Instant::now();
        let mut assessment = Assessment::new("a", Duration::from_secs(60));
        assessment.boot();
        assessment.finished(
            Job::Status,
            0,
            "slot=a version=3 state=trial tries-left=2",
            now,
        );
        assert!(assessment.tick(now + Duration::from_secs(59)).is_empty());
        assert!(matches!(
            assessment.tick(now + Duration::from_secs(61)).as_slice(),
            [Step::Reboot(_)]
        ));
        assert!(assessment.tick(now + Duration::from_secs(62)).is_empty());
    }

    #[test]
    fn ready_before_the_status_answer_blesses_after_it() {
        let now = Instant::now();
        let mut assessment = Assessment::new("b", Duration::from_secs(60));
        assessment.boot();
        assert!(assessment.ready().is_empty());
        let steps = assessment.finished(Job::Status, 0, "slot=b version=2 state=trial", now);
        assert!(steps.contains(&Step::Spawn(Job::Bless)));
        assert_eq!(assessment.deadline, None);
    }

    #[test]
    fn a_good_boot_has_no_deadline_and_reports_failed_versions() {
        let now = Instant::now();
        let mut assessment = Assessment::new("b", Duration::from_secs(60));
        assessment.boot();
        let steps = assessment.finished(
            Job::Status,
            0,
            "slot=b version=2 state=good failed=3@a",
            now,
        );
        assert!(steps
            .iter()
            .any(|step| matches!(step, Step::Say(text) if text.contains("3@a ran out of tries"))));
        assert_eq!(assessment.deadline, None);
        assert!(assessment.ready().is_empty());
    }

    #[test]
    fn a_failing_status_job_changes_nothing() {
        let now = Instant::now();
        let mut assessment = Assessment::new("b", Duration::from_secs(60));
        assessment.boot();
        let steps = assessment.finished(Job::Status, 1, "nodows: cannot mount the ESP", now);
        assert!(matches!(steps.as_slice(), [Step::Say(_)]));
        assert_eq!(assessment.verdict, Verdict::Unknown);
        assert_eq!(assessment.deadline, None);
    }
}
