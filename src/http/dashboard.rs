//! `GET /`: the dashboard — one self-contained page (inline CSS and script, no external asset, no
//! build step) that reads `/api/v1` with the API token a person types in (kept in the tab's session
//! storage; without it the page shows no data): the KPIs with their definitions, the funnel, the
//! channel mix, orders per day, the open pipeline, each connection's sync status, the conflict
//! queue, and a form to create an order and buttons to move it through its statuses.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use crmsync_connectors::canonical::OrderStatus;

/// The page, with the order state machine written in from [`OrderStatus::successors`] (the table
/// the API enforces), so the buttons offered are the transitions allowed.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    let transitions: serde_json::Map<String, serde_json::Value> = OrderStatus::ALL
        .iter()
        .map(|status| {
            let next: Vec<&str> = status.successors().iter().map(OrderStatus::as_str).collect();
            (status.as_str().to_owned(), serde_json::json!(next))
        })
        .collect();
    include_str!("dashboard.html").replace("__TRANSITIONS__", &serde_json::Value::Object(transitions).to_string())
});

/// Only the page's own inline script and style run, and it talks only to this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`.
pub(crate) async fn page() -> Response {
    let mut response = Html(PAGE.as_str()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
