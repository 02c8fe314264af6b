//! The model crate's integration tests: one binary, modules by topic.
//! The PostgreSQL tests run against a real PostgreSQL 15 that this binary
//! starts itself (`pgtest`), one database per test.

mod postgres;
