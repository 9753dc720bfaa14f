//! `/api/v1`: the canonical store, the sales orders and the operator queues, behind a bearer token
//! compared in constant time. Reads use [`crate::queries`] (the CLI's reads too); every change is an
//! operator batch applied by the ingest writer ([`crate::ingest::operator`]), like pulls and webhooks.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use crmsync_connectors::canonical::{CanonicalId, ConnectionId, Entity};
use crmsync_connectors::connector::same_secret;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::{Params, RawParams};
use super::{ApiError, HttpState};
use crate::ingest::operator::{DeadLetterSelection, OperatorAction, OperatorOutcome, OrderInput, OrderPatch, Side};
use crate::queries::{self, ListQuery, Versioned};

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

/// Runs blocking store reads off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        tracing::error!(error = %error, "API read task failed");
        ApiError::Internal
    })?
}

const PAGE_PARAMS: &[&str] = &["limit", "after", "cursor", "include_deleted", "connection", "newest_first"];
const ORDER_PARAMS: &[&str] = &[
    "limit",
    "after",
    "cursor",
    "include_deleted",
    "connection",
    "newest_first",
    "status",
    "channel",
    "account",
    "since",
    "until",
];

fn list_query(params: &Params) -> Result<ListQuery, ApiError> {
    Ok(ListQuery {
        limit: params.number("limit")?,
        after: params.text("after"),
        cursor: params.text("cursor"),
        include_deleted: params.flag("include_deleted")?,
        newest_first: params.flag("newest_first")?,
        status: params.text("status"),
        channel: params.text("channel"),
        account: params.text("account"),
        connection: params.text("connection"),
        since: params.text("since"),
        until: params.text("until"),
    })
}

async fn list(state: HttpState, entity: Entity, raw: RawParams) -> Result<Response, ApiError> {
    let allowed = if entity == Entity::Order { ORDER_PARAMS } else { PAGE_PARAMS };
    let query = list_query(&Params::parse(raw, allowed)?)?;
    let store = state.store.clone();
    let page = blocking(move || Ok(queries::record_page(&store, entity, &query)?)).await?;
    Ok(Json(page).into_response())
}

/// `GET /api/v1/accounts`.
pub(crate) async fn accounts(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    list(state, Entity::Account, raw).await
}

/// `GET /api/v1/leads`.
pub(crate) async fn leads(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    list(state, Entity::Lead, raw).await
}

/// `GET /api/v1/opportunities`.
pub(crate) async fn opportunities(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    list(state, Entity::Opportunity, raw).await
}

/// `GET /api/v1/orders[?status=&channel=&account=&connection=&since=&until=&cursor=&limit=]`.
pub(crate) async fn orders(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    list(state, Entity::Order, raw).await
}

/// An order as a change returns it: the record, its version, and where the change was queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderChange {
    /// The order.
    #[serde(flatten)]
    pub order: Versioned,
    /// Connections the change was queued for.
    pub queued: Vec<ConnectionId>,
}

fn with_etag(mut response: Response, version: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn order_response(outcome: OperatorOutcome, status: StatusCode) -> Result<Response, ApiError> {
    let OperatorOutcome::Order { record, version, queued } = outcome else {
        tracing::error!("an order action answered something else");
        return Err(ApiError::Internal);
    };
    let order = Versioned { record: *record, version };
    let location = format!("/api/v1/orders/{}", order.record.id);
    let etag = order.version.clone();
    let mut response = with_etag((status, Json(OrderChange { order, queued })).into_response(), &etag);
    if status == StatusCode::CREATED
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Reads a JSON body (any content type: the body is what counts).
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Unprocessable { field: "body".into(), message: "a JSON object is required".into() });
    }
    serde_json::from_slice(body).map_err(|error| ApiError::BadRequest(format!("the body is not valid JSON: {error}")))
}

fn no_params(raw: RawParams) -> Result<(), ApiError> {
    Params::parse(raw, &[]).map(|_| ())
}

fn canonical_id(text: &str, field: &str) -> Result<CanonicalId, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::invalid_parameter(field, format!("{text:?} is not a canonical id (a UUID)")))
}

fn if_match(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid_parameter("If-Match", "not a valid header value"))
        })
        .transpose()
}

/// `POST /api/v1/orders`: creates an order (201 with `Location` and `ETag`).
pub(crate) async fn create_order(
    State(state): State<HttpState>,
    raw: RawParams,
    body: Bytes,
) -> Result<Response, ApiError> {
    no_params(raw)?;
    let input = OrderInput::from_json(&json_body(&body)?)?;
    let outcome = state.ingest.operate(OperatorAction::CreateOrder(input)).await?;
    order_response(outcome, StatusCode::CREATED)
}

/// `GET /api/v1/orders/{id}` (with `ETag`).
pub(crate) async fn order(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    raw: RawParams,
) -> Result<Response, ApiError> {
    no_params(raw)?;
    let store = state.store.clone();
    let order = blocking(move || Ok(queries::order(&store, &id)?)).await?;
    let etag = order.version.clone();
    Ok(with_etag(Json(order).into_response(), &etag))
}

/// `PATCH /api/v1/orders/{id}`: changes status (state machine), channel, date, lines or details;
/// `If-Match` carries the version read (412 with the current order when it is stale).
pub(crate) async fn update_order(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawParams,
    body: Bytes,
) -> Result<Response, ApiError> {
    no_params(raw)?;
    let id = canonical_id(&id, "id")?;
    let patch = OrderPatch::from_json(&json_body(&body)?)?;
    let if_version = if_match(&headers)?;
    let outcome = state.ingest.operate(OperatorAction::UpdateOrder { id, if_version, patch }).await?;
    order_response(outcome, StatusCode::OK)
}

/// `DELETE /api/v1/orders/{id}`: each routed CRM follows its route's `on_delete`.
pub(crate) async fn delete_order(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawParams,
) -> Result<Response, ApiError> {
    no_params(raw)?;
    let id = canonical_id(&id, "id")?;
    let if_version = if_match(&headers)?;
    let outcome = state.ingest.operate(OperatorAction::DeleteOrder { id, if_version }).await?;
    order_response(outcome, StatusCode::OK)
}

/// `GET /api/v1/status`.
pub(crate) async fn status(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    no_params(raw)?;
    let (store, config) = (state.store.clone(), state.status_config.clone());
    let report = blocking(move || {
        crate::status::collect(&store, &config).map_err(|error| {
            tracing::error!(error = %error, "status failed");
            ApiError::Internal
        })
    })
    .await?;
    Ok(Json(report).into_response())
}

/// `GET /api/v1/metrics[?scope=&since=&until=]`: the same JSON as `crmsync metrics --json`.
pub(crate) async fn metrics(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    let params = Params::parse(raw, &["scope", "since", "until"])?;
    let (since, until) = crate::metrics::parse_window(
        params.text("since").as_deref(),
        params.text("until").as_deref(),
        ("since", "until"),
    )
    .map_err(|message| {
        let field = if message.starts_with("until") { "until" } else { "since" };
        ApiError::InvalidParameter { field: field.to_owned(), message }
    })?;
    let scope = match params.text("scope").as_deref() {
        None | Some("unified") => crate::metrics::Scope::Unified,
        Some(name) => {
            let id = ConnectionId::new(name);
            if !state.status_config.connections.contains_key(&id) {
                let names: Vec<&str> = state.status_config.connections.keys().map(ConnectionId::as_str).collect();
                return Err(ApiError::invalid_parameter(
                    "scope",
                    format!("unknown scope {name:?} (use unified or one of: {})", names.join(", ")),
                ));
            }
            crate::metrics::Scope::Connection(id)
        }
    };
    let (store, config) = (state.store.clone(), state.metrics_config.clone());
    let report = blocking(move || {
        crate::metrics::scan::report(&store, &config, scope, since, until).map_err(|error| {
            tracing::error!(error = %error, "metrics failed");
            ApiError::Internal
        })
    })
    .await?;
    Ok(Json(report).into_response())
}

/// `GET /api/v1/conflicts[?all=&after=&limit=]`: held conflicts (every one with `all`), oldest first.
pub(crate) async fn conflicts(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    let params = Params::parse(raw, &["all", "after", "limit"])?;
    let (all, after, limit) = (params.flag("all")?, params.text("after"), params.number("limit")?);
    let store = state.store.clone();
    let page = blocking(move || Ok(queries::conflicts(&store, all, after.as_deref(), limit)?)).await?;
    Ok(Json(page).into_response())
}

/// Body of `POST /api/v1/conflicts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The conflict.
    pub id: String,
    /// `current` or `incoming`.
    pub take: Side,
}

fn typed_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_value(json_body(body)?)
        .map_err(|error| ApiError::Unprocessable { field: "body".into(), message: error.to_string() })
}

/// `POST /api/v1/conflicts` `{"id", "take": "current"|"incoming"}`: resolves a held conflict.
pub(crate) async fn resolve_conflict(
    State(state): State<HttpState>,
    raw: RawParams,
    body: Bytes,
) -> Result<Response, ApiError> {
    no_params(raw)?;
    let request: ResolveRequest = typed_body(&body)?;
    let outcome = state.ingest.operate(OperatorAction::ResolveConflict { id: request.id, take: request.take }).await?;
    Ok(Json(outcome).into_response())
}

/// `GET /api/v1/dlq[?after=&limit=]`: dead letters, oldest first.
pub(crate) async fn dead_letters(State(state): State<HttpState>, raw: RawParams) -> Result<Response, ApiError> {
    let params = Params::parse(raw, &["after", "limit"])?;
    let (after, limit) = (params.text("after"), params.number("limit")?);
    let store = state.store.clone();
    let page = blocking(move || Ok(queries::dead_letters(&store, after.as_deref(), limit)?)).await?;
    Ok(Json(page).into_response())
}

/// What `POST /api/v1/dlq` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    /// Send again.
    Retry,
    /// Forget.
    Drop,
}

/// Body of `POST /api/v1/dlq`: `{"action": "retry"|"drop", "ids": ["…"] | "all"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRequest {
    /// What to do.
    pub action: DeadLetterAction,
    /// Which: a list of ids, or `"all"`.
    pub ids: DeadLetterIds,
}

/// The dead letters a request names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeadLetterIds {
    /// `"all"`.
    Keyword(String),
    /// Ids.
    Ids(Vec<String>),
}

impl DeadLetterIds {
    /// The selection these name.
    pub fn selection(self) -> Result<DeadLetterSelection, ApiError> {
        match self {
            Self::Keyword(word) if word == "all" => Ok(DeadLetterSelection::All),
            Self::Keyword(word) => Err(ApiError::Unprocessable {
                field: "ids".into(),
                message: format!("{word:?}: expected \"all\" or a list of dead-letter ids"),
            }),
            Self::Ids(ids) => Ok(DeadLetterSelection::Ids(ids)),
        }
    }
}

/// `POST /api/v1/dlq`: retries or drops dead letters.
pub(crate) async fn operate_dead_letters(
    State(state): State<HttpState>,
    raw: RawParams,
    body: Bytes,
) -> Result<Response, ApiError> {
    no_params(raw)?;
    let request: DeadLetterRequest = typed_body(&body)?;
    let selection = request.ids.selection()?;
    let action = match request.action {
        DeadLetterAction::Retry => OperatorAction::RetryDeadLetters(selection),
        DeadLetterAction::Drop => OperatorAction::DropDeadLetters(selection),
    };
    Ok(Json(state.ingest.operate(action).await?).into_response())
}

/// Body of `POST /api/v1/identity/merge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The record that stays.
    pub keep: String,
    /// The record joined into it.
    pub other: String,
}

/// Body of `POST /api/v1/identity/split`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    /// The record.
    pub id: String,
    /// The connection whose copy is detached.
    pub connection: String,
}

/// `POST /api/v1/identity/merge` `{"keep", "other"}`.
pub(crate) async fn merge(State(state): State<HttpState>, raw: RawParams, body: Bytes) -> Result<Response, ApiError> {
    no_params(raw)?;
    let request: MergeRequest = typed_body(&body)?;
    let action = OperatorAction::MergeRecords {
        keep: canonical_id(&request.keep, "keep")?,
        other: canonical_id(&request.other, "other")?,
    };
    Ok(Json(state.ingest.operate(action).await?).into_response())
}

/// `POST /api/v1/identity/split` `{"id", "connection"}`.
pub(crate) async fn split(State(state): State<HttpState>, raw: RawParams, body: Bytes) -> Result<Response, ApiError> {
    no_params(raw)?;
    let request: SplitRequest = typed_body(&body)?;
    let action = OperatorAction::SplitRecord {
        id: canonical_id(&request.id, "id")?,
        connection: ConnectionId::new(request.connection),
    };
    Ok(Json(state.ingest.operate(action).await?).into_response())
}
