//! Probes and Prometheus, served on the admin listener.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::HttpState;

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the store is open and the daemon has started its loops (503 while starting or stopping).
pub(crate) async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Store reads (outbox depth is a count of its entries): off the async threads.
    if let Some(refresh) = state.refresh_gauges.clone() {
        let _ = tokio::task::spawn_blocking(move || refresh()).await;
    }
    let body = state.prometheus.as_ref().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
