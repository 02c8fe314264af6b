//! End-to-end tests: each boots a real Debian image in QEMU.

use std::path::Path;

use super::Runner;
use crate::qemu::Accel;

pub fn run(runner: &mut Runner, _work_root: &Path, _accel: Accel) {
    runner.not_run("e2e", "not written yet");
}
