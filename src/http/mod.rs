//! The HTTP edge. [`public_router`]: webhooks, `/api/v1` and the dashboard; [`admin_router`]:
//! `/healthz`, `/readyz` and Prometheus `/metrics` (loopback by default, never public).
//!
//! Every error of the public listener is `{"error":{"code","message"}}` JSON, axum's own included
//! (`error::json_errors`); a handler that panics answers a JSON 500 and logs it
//! (`error::catch_panic`).
//!
//! Deviation from STYLE.md §2 (http must not use the store): the read-only API endpoints read the
//! store directly (through [`crate::queries`], off the async workers); every write goes through the
//! ingest writer as an operator batch.

pub mod api;
pub mod client;
mod dashboard;
mod error;
mod health;
mod params;
#[cfg(test)]
mod tests;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use crmsync_connectors::WebhookParser;
use crmsync_connectors::canonical::{ConnectionId, Entity};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio::sync::Notify;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;

use crate::ingest::IngestHandle;
use crate::status::StatusConfig;
use crate::store::Store;

/// Largest accepted request body (Salesforce sends up to 100 notifications per message; Dataverse ≤ 256 KB).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// One connection's webhook endpoint.
#[derive(Clone)]
pub struct WebhookEndpoint {
    /// The connection.
    pub connection: ConnectionId,
    /// Authenticates and decodes deliveries.
    pub parser: Arc<dyn WebhookParser>,
    /// Wakes the pull loop of an entity.
    pub nudges: BTreeMap<Entity, Arc<Notify>>,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Webhook endpoints by connection name.
    pub webhooks: Arc<BTreeMap<String, WebhookEndpoint>>,
    /// The writer.
    pub ingest: IngestHandle,
    /// Read-only store access for the API.
    pub store: Store,
    /// What `status` needs to know.
    pub status_config: Arc<StatusConfig>,
    /// Reporting currency, FX table and default window of the sales metrics.
    pub metrics_config: Arc<crate::config::MetricsConfig>,
    /// API bearer token (`None`: API disabled).
    pub api_token: Option<SecretString>,
    /// Prometheus renderer.
    pub prometheus: Option<PrometheusHandle>,
    /// Refreshes store-derived gauges before a scrape.
    pub refresh_gauges: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Set once the daemon is running, cleared on shutdown.
    pub ready: Arc<AtomicBool>,
}

/// Webhooks, API and dashboard.
pub fn public_router(state: HttpState) -> Router {
    let api = Router::new()
        .route("/status", get(api::status))
        .route("/metrics", get(api::metrics))
        .route("/accounts", get(api::accounts))
        .route("/leads", get(api::leads))
        .route("/opportunities", get(api::opportunities))
        .route("/orders", get(api::orders).post(api::create_order))
        .route("/orders/{id}", get(api::order).patch(api::update_order).delete(api::delete_order))
        .route("/conflicts", get(api::conflicts).post(api::resolve_conflict))
        .route("/dlq", get(api::dead_letters).post(api::operate_dead_letters))
        .route("/identity/merge", post(api::merge))
        .route("/identity/split", post(api::split))
        .route_layer(from_fn_with_state(state.clone(), api::require_token));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/webhooks/{connection}", post(webhooks::receive))
        .nest("/api/v1", api)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(from_fn(error::catch_panic))
        .layer(from_fn(error::json_errors))
        .with_state(state)
}

/// Probes and Prometheus.
pub fn admin_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/status", get(api::status))
        .with_state(state)
}
