//! The renderer's integration tests: one binary (tests/it), modules by topic.
//! They run the real `nodows` binary and real libxslt on temporary roots.

mod cli;
mod crash;
mod fleet;
mod golden;
mod incremental;
mod keys;
mod properties;
mod support;
mod sync;
mod watch;
