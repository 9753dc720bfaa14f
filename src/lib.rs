//! temp
pub use crmsync_connectors::canonical;
pub mod config;
pub mod ingest;
pub mod reconcile;
pub mod scheduler;
pub mod store;
pub mod telemetry;
