//! `/api/v1`: read access to the canonical store and the operator queues, behind a bearer token
//! compared in constant time. Writes go through the ingest writer like everything else.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use crmsync_connectors::canonical::{CanonicalId, Entity, Record};
use crmsync_connectors::connector::same_secret;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{ApiError, HttpState};

/// Rejects requests without the configured bearer token.
pub(crate) async fn require_token(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.api_token else {
        return Err(ApiError::NotFound("the API is disabled (set api.token)".into()));
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(presented, expected.expose_secret()) {
        return Err(ApiError::Unauthenticated("missing or invalid bearer token".into()));
    }
    Ok(next.run(request).await)
}

/// Paging of list endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// Records to return (default 100, at most 1000).
    pub(crate) limit: Option<usize>,
    /// Return records after this canonical id.
    pub(crate) after: Option<String>,
    /// Include tombstones.
    #[serde(default)]
    pub(crate) include_deleted: bool,
}

fn list(state: &HttpState, entity: Entity, query: &ListQuery) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = query.limit.unwrap_or(100).min(1000);
    let after = match &query.after {
        Some(text) => {
            Some(text.parse::<CanonicalId>().map_err(|_| ApiError::BadRequest(format!("invalid id {text:?}")))?)
        }
        None => None,
    };
    let mut records: Vec<Record> = Vec::with_capacity(limit);
    for record in state.store.scan(entity) {
        let record = record.map_err(|error| {
            tracing::error!(error = %error, "store scan failed");
            ApiError::Internal
        })?;
        if after.is_some_and(|after| record.id <= after) || (record.is_deleted() && !query.include_deleted) {
            continue;
        }
        if record.merged_into.is_some() {
            continue;
        }
        records.push(record);
        if records.len() == limit {
            break;
        }
    }
    let next = (records.len() == limit).then(|| records.last().map(|record| record.id.to_string())).flatten();
    Ok(Json(serde_json::json!({"records": records, "next": next})))
}

/// `GET /api/v1/accounts`.
pub(crate) async fn accounts(
    State(state): State<HttpState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    list(&state, Entity::Account, &query)
}

/// `GET /api/v1/opportunities`.
pub(crate) async fn opportunities(
    State(state): State<HttpState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    list(&state, Entity::Opportunity, &query)
}

/// `GET /api/v1/orders`.
pub(crate) async fn orders(
    State(state): State<HttpState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    list(&state, Entity::Order, &query)
}

/// `GET /api/v1/orders/{id}`.
pub(crate) async fn order(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<Record>, ApiError> {
    let id = id.parse::<CanonicalId>().map_err(|_| ApiError::BadRequest(format!("invalid id {id:?}")))?;
    match state.store.record(id) {
        Ok(Some(record)) if record.entity() == Entity::Order => Ok(Json(record)),
        Ok(_) => Err(ApiError::NotFound(format!("no order {id}"))),
        Err(error) => {
            tracing::error!(error = %error, "store read failed");
            Err(ApiError::Internal)
        }
    }
}

/// `GET /api/v1/status`.
pub(crate) async fn status(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let report = crate::status::collect(&state.store, &state.status_config).map_err(|error| {
        tracing::error!(error = %error, "status failed");
        ApiError::Internal
    })?;
    Ok(Json(serde_json::to_value(report).map_err(|_| ApiError::Internal)?))
}

/// Query of `GET /api/v1/metrics`.
#[derive(Debug, Deserialize)]
pub(crate) struct MetricsParams {
    /// `unified` or a connection.
    scope: Option<String>,
    /// Window start (RFC 3339 instant, or a date meaning 00:00 UTC).
    since: Option<String>,
    /// Window end, exclusive (RFC 3339 instant or date).
    until: Option<String>,
}

/// `GET /api/v1/metrics`: the same JSON as `crmsync metrics --json`.
pub(crate) async fn metrics(
    State(state): State<HttpState>,
    Query(params): Query<MetricsParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (since, until) =
        crate::metrics::parse_window(params.since.as_deref(), params.until.as_deref(), ("since", "until"))
            .map_err(ApiError::BadRequest)?;
    let scope = match params.scope.as_deref() {
        None | Some("unified") => crate::metrics::Scope::Unified,
        Some(name) => {
            let id = crmsync_connectors::canonical::ConnectionId::new(name);
            if !state.status_config.connections.contains_key(&id) {
                return Err(ApiError::NotFound(format!("no connection named {name:?}")));
            }
            crate::metrics::Scope::Connection(id)
        }
    };
    let (store, config) = (state.store.clone(), state.metrics_config.clone());
    let report =
        tokio::task::spawn_blocking(move || crate::metrics::scan::report(&store, &config, scope, since, until))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|error| {
                tracing::error!(error = %error, "metrics failed");
                ApiError::Internal
            })?;
    Ok(Json(serde_json::to_value(report).map_err(|_| ApiError::Internal)?))
}

/// `GET /api/v1/conflicts`.
pub(crate) async fn conflicts(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let conflicts = state.store.conflicts(true).map_err(|error| {
        tracing::error!(error = %error, "store read failed");
        ApiError::Internal
    })?;
    Ok(Json(serde_json::json!({"conflicts": conflicts})))
}

/// `GET /api/v1/dlq`.
pub(crate) async fn dead_letters(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let letters = state.store.dead_letters(1000).map_err(|error| {
        tracing::error!(error = %error, "store read failed");
        ApiError::Internal
    })?;
    Ok(Json(serde_json::json!({"dead_letters": letters})))
}
