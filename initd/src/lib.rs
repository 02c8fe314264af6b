//! initd: the nodows init and service supervisor, and initctl's protocol.
//!
//! `supervisor` is the pure state machine; `runtime` is the poll loop that
//! drives it; `sys`, `group`, `pid1` and `spawn` hold the syscalls (`spawn`
//! is the only code between fork and exec).

pub mod assess;
pub mod group;
pub mod grow;
pub mod initrd;
pub mod kmod;
pub mod logfile;
pub mod partition;
pub mod pid1;
pub mod protocol;
pub mod runtime;
pub mod spawn;
pub mod supervisor;
pub mod sys;
pub mod timers;
pub mod uevent;
pub mod verity;

/// The control socket when none is given.
pub const DEFAULT_SOCKET: &str = "/run/initd.sock";
