//! The single integration-test binary (one link step for every scenario).

mod config;
mod daemon;
mod e2e;
mod store_crash;
mod support;
