//! The single integration-test binary (one link step for every scenario).

mod config;
mod e2e;
mod support;
