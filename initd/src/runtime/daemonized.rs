//! A service that daemonizes: its main process exits 0 while the service
//! should run and leaves processes of the service running (a fork into
//! the background). It is reported with what to do and failed at once,
//! instead of crash-looping on respawns that would daemonize again.

use super::*;

impl Runtime {
    /// Called for every ended child before its exit is credited (and, without
    /// cgroups, before its process group is killed); true when `pid` was the
    /// main process of a service that daemonized, which is then failed.
    pub(super) fn daemonized(&mut self, pid: i32, exit: Exit) -> bool {
        let Some(name) = self
            .supervisor
            .clean_exit_while_up(pid, exit)
            .map(str::to_string)
        else {
            return false;
        };
        // A fresh look: the turn's snapshot may predate the exit.
        self.groups.begin_turn();
        let left = self
            .groups
            .members(&name)
            .into_iter()
            .filter(|member| *member != pid && !is_zombie(*member))
            .count();
        if left == 0 {
            return false;
        }
        let actions = self.supervisor.daemonized(&name, left, Instant::now());
        self.apply(actions);
        true
    }
}

/// Whether `pid` has exited and waits to be reaped (it no longer runs).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}
