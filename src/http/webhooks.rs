//! `POST /webhooks/{connection}`: authenticate with the connection's parser, ingest durably, answer
//! the vendor's acknowledgement. Ids-only deliveries nudge the entity's pull loop, whose committed
//! cursor guarantees the change is read even if this process dies right after the 2xx.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use crmsync_connectors::{WebhookDelivery, WebhookError, WebhookEvent};

use super::{ApiError, HttpState};
use crate::ingest::{Batch, IngestError};
use crate::telemetry;

/// Seconds a vendor is asked to wait when ingest is saturated.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Handles one delivery.
pub(crate) async fn receive(
    State(state): State<HttpState>,
    Path(connection): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(endpoint) = state.webhooks.get(connection.as_str()) else {
        telemetry::record_webhook_unknown();
        return Err(ApiError::NotFound(format!("no connection named {connection:?}")));
    };
    let delivery = WebhookDelivery { headers: &headers, query: query.as_deref(), body: &body };
    let reply = match endpoint.parser.parse_webhook(&delivery) {
        Ok(reply) => reply,
        Err(error) => {
            let (outcome, api_error) = match &error {
                WebhookError::Unauthenticated(_) => ("unauthenticated", ApiError::Unauthenticated(error.to_string())),
                WebhookError::Malformed(_) => ("malformed", ApiError::BadRequest(error.to_string())),
                WebhookError::NotConfigured => ("not_configured", ApiError::NotFound(error.to_string())),
            };
            tracing::warn!(connection = %connection, error = %error, "webhook refused");
            telemetry::record_webhook(&endpoint.connection, outcome);
            return Err(api_error);
        }
    };
    let mut changes = Vec::new();
    for event in reply.events {
        match event {
            WebhookEvent::Changed(change) => changes.push(change),
            WebhookEvent::Fetch { entity, .. } | WebhookEvent::PullNow(entity) => {
                if let Some(nudge) = endpoint.nudges.get(&entity) {
                    nudge.notify_one();
                }
            }
        }
    }
    if !changes.is_empty() {
        let batch = Batch::Delivered { connection: endpoint.connection.clone(), changes };
        match state.ingest.try_submit(batch).await {
            Ok(_) => {}
            Err(IngestError::Saturated) => {
                telemetry::record_webhook(&endpoint.connection, "saturated");
                return Err(ApiError::Saturated { retry_after: RETRY_AFTER_SECONDS });
            }
            Err(IngestError::Stopped) => return Err(ApiError::Unavailable("shutting down".into())),
            Err(error) => {
                tracing::error!(connection = %connection, error = %error, "webhook ingest failed");
                return Err(ApiError::Internal);
            }
        }
    }
    telemetry::record_webhook(&endpoint.connection, "accepted");
    let mut response = reply.body.into_response();
    if let Ok(value) = HeaderValue::from_str(reply.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
