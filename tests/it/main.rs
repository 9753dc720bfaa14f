//! The single integration-test binary (one link step for every scenario).

// Test helpers outside #[test] functions: a failed setup should panic loudly, and the store crash
// child reports its progress on stdout for the parent to read.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod backup;
mod cli;
mod config;
mod daemon;
mod dashboard;
mod e2e;
mod faults;
mod orders;
mod reliability;
mod store_crash;
mod support;
mod third_party;
