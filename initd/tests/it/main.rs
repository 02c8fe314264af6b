//! Process tests: real initd, real initctl, shell scripts as services.
//! One integration test binary for the crate (compile time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod devices;
mod fuzz;
mod harness;
mod pid1;
mod render;
mod supervision;
mod weather;
