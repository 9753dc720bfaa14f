//! crmsync: the daemon that keeps sales data consistent across Salesforce, Zoho CRM and Dynamics 365
//! and computes one set of sales metrics over all of them.
//!
//! # Layout
//!
//! Vendor code lives in the `crmsync-connectors` crate (contract, canonical model, the three
//! connectors and their simulators). Everything here is vendor-agnostic:
//!
//! - [`cli`] / [`commands`]: the command line and one handler per subcommand.
//! - [`config`]: layered loading and validation into [`config::Config`].
//! - [`app`]: wiring and lifecycle (the one `match` over vendor configs, the daemon's loops).
//! - [`store`]: the sled-backed canonical store (the only module that touches sled).
//! - [`reconcile`]: pure identity, merge, conflict, echo and routing decisions.
//! - [`ingest`]: the single writer (batch → reconcile → one store commit) for pulls, webhooks,
//!   push results and operator actions ([`ingest::operator`]: orders, conflicts, dead letters, identity).
//! - [`scheduler`]: pull loops, push loops and the one-pass sync.
//! - [`http`]: webhooks, REST API, dashboard, probes and Prometheus, and the API client the CLI uses
//!   while a daemon holds the store.
//! - [`metrics`]: the unified sales KPIs.
//! - [`queries`]: the reads the REST API and the CLI share (pages by key, order filters).
//! - [`status`]: what `status` reports.
//! - [`telemetry`]: logs and operational metrics.
//!
//! Data flow:
//!
//! ```text
//! vendor API ─pull─> scheduler::pull ─┐                                  ┌─> store: records + cursor + outbox, ONE txn
//! vendor webhook ──> http::webhooks ──┴─ Batch (bounded mpsc) ─> ingest ─ reconcile (pure)
//! store outbox ──> scheduler::push ──> connector.push ──> ingest (mark pushed / rejected)
//! ```

pub use crmsync_connectors::canonical;

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod queries;
pub mod reconcile;
pub mod scheduler;
pub mod status;
pub mod store;
pub mod telemetry;
