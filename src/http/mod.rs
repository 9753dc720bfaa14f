//! The HTTP edge. [`public_router`]: webhooks, `/api/v1` and the dashboard; [`admin_router`]:
//! `/healthz`, `/readyz` and Prometheus `/metrics` (loopback by default, never public).
//!
//! Every request gets an `x-request-id` (the caller's, or a new UUID) and a line in the access log
//! ([`REQUEST_ID`]; INFO on the public listener, DEBUG on the admin one).
//!
//! Every error of the public listener is `{"error":{"code","message"}}` JSON, axum's own included
//! (`error::json_errors`); a handler that panics answers a JSON 500 and logs it
//! (`error::catch_panic`).
//!
//! Deviation from STYLE.md §2 (http must not use the store): the read-only API endpoints read the
//! store directly (through [`crate::queries`], off the async workers); every write goes through the
//! ingest writer as an operator batch.

pub mod api;
mod backup;
pub mod client;
mod dashboard;
mod error;
mod health;
pub use health::{Readiness, UnreadyReason};
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
    /// What `/readyz` checks about the connections (`None`: only the store, ingest and `ready`).
    pub readiness: Option<Arc<Readiness>>,
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
        .route("/backup", get(backup::backup))
        .route_layer(from_fn_with_state(state.clone(), api::require_token));
    let router = Router::new()
        .route("/", get(dashboard::page))
        .route("/webhooks/{connection}", post(webhooks::receive))
        .nest("/api/v1", api)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(from_fn(error::catch_panic))
        .layer(from_fn(error::json_errors))
        .with_state(state);
    edge(router, AccessLog::Info)
}

/// Probes and Prometheus.
pub fn admin_router(state: HttpState) -> Router {
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/status", get(api::status))
        .layer(from_fn(error::json_errors))
        .with_state(state);
    // Probes and scrapes come every few seconds: their access log is DEBUG.
    edge(router, AccessLog::Debug)
}

/// The level of a listener's access log.
#[derive(Debug, Clone, Copy)]
enum AccessLog {
    Info,
    Debug,
}

/// The request id header: kept when the caller sends one, otherwise a new UUID; echoed in the answer.
pub const REQUEST_ID: &str = "x-request-id";

/// Request ids and the access log (tower-http): every request runs in an `http` span with its
/// method, path and request id (so every log line of a handler carries them), and one line per
/// answer gives the status and latency. The query string is never logged: Salesforce webhook URLs
/// carry their shared secret there.
fn edge(router: Router, level: AccessLog) -> Router {
    use axum::http::{HeaderName, Request, Response};
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;

    let header = HeaderName::from_static(REQUEST_ID);
    let trace = TraceLayer::new_for_http()
        .make_span_with(move |request: &Request<axum::body::Body>| {
            let id = request.headers().get(REQUEST_ID).and_then(|value| value.to_str().ok()).unwrap_or_default();
            let (method, path) = (request.method().as_str(), request.uri().path());
            match level {
                AccessLog::Info => tracing::info_span!("http", method, path, request_id = id),
                AccessLog::Debug => tracing::debug_span!("http", method, path, request_id = id),
            }
        })
        .on_request(())
        .on_response(move |response: &Response<axum::body::Body>, latency: Duration, _: &tracing::Span| {
            let (status, latency_ms) = (response.status().as_u16(), latency.as_secs_f64() * 1000.0);
            match level {
                AccessLog::Info if status >= 500 => tracing::warn!(status, latency_ms, "request"),
                AccessLog::Info => tracing::info!(status, latency_ms, "request"),
                AccessLog::Debug => tracing::debug!(status, latency_ms, "request"),
            }
        })
        .on_failure(());
    router
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(header, MakeRequestUuid))
}
