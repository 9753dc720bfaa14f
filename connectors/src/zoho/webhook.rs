//! Zoho change notifications.
//!
//! - **Notifications API** callbacks: `{"module","ids","operation","channel_id","token","server_time",…}`;
//!   authenticated by the channel token (and channel id) registered with `actions/watch`.
//! - **Workflow webhooks** (configured by an admin): a JSON body `{"module": "Deals", "ids": ["…"]}` with
//!   the same token in an `X-Crmsync-Token` header.
//!
//! Both carry ids, not values: deletes become delete changes, everything else a targeted fetch.
//! Reference: zoho.com/crm/developer/docs/api/v8/notifications/enable.html
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::config::ZohoWebhook;
use super::wire;
use crate::canonical::{Entity, ExternalId, Timestamp};
use crate::connector::{Change, WebhookDelivery, WebhookEvent, same_secret};
use crate::error::WebhookError;

#[derive(Debug, Deserialize)]
struct Callback {
    module: String,
    #[serde(default)]
    ids: Vec<serde_json::Value>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    channel_id: Option<serde_json::Value>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    server_time: Option<i64>,
}

/// Authenticates and decodes one delivery.
pub fn parse(
    config: &ZohoWebhook,
    entities: &[Entity],
    delivery: &WebhookDelivery<'_>,
) -> Result<Vec<WebhookEvent>, WebhookError> {
    let callback: Callback = serde_json::from_slice(delivery.body)
        .map_err(|error| WebhookError::Malformed(format!("not a Zoho notification: {error}")))?;
    let header_token = delivery.headers.get("x-crmsync-token").and_then(|value| value.to_str().ok());
    let presented = callback.token.as_deref().or(header_token).unwrap_or("");
    if !same_secret(presented, config.token.expose_secret()) {
        return Err(WebhookError::Unauthenticated("wrong or missing channel token".into()));
    }
    if let Some(channel) = &callback.channel_id {
        let channel = channel.as_str().map(str::to_owned).unwrap_or_else(|| channel.to_string());
        if channel != config.channel_id.to_string() {
            return Err(WebhookError::Unauthenticated(format!("unknown channel {channel}")));
        }
    }
    let Some(entity) = wire::entity_of(&callback.module) else { return Ok(Vec::new()) };
    if !entities.contains(&entity) {
        return Ok(Vec::new());
    }
    let ids: Vec<ExternalId> = callback
        .ids
        .iter()
        .map(|id| ExternalId::new(id.as_str().map(str::to_owned).unwrap_or_else(|| id.to_string())))
        .collect();
    if ids.is_empty() {
        return Ok(vec![WebhookEvent::PullNow(entity)]);
    }
    if callback.operation.as_deref() == Some("delete") {
        let at = callback.server_time.and_then(Timestamp::from_unix_millis).unwrap_or_else(Timestamp::now);
        return Ok(ids
            .into_iter()
            .map(|id| WebhookEvent::Changed(Change::deleted(entity, callback.module.clone(), id, at)))
            .collect());
    }
    Ok(vec![WebhookEvent::Fetch { entity, ids }])
}
