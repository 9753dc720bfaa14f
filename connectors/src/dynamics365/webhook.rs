//! Dataverse service-endpoint webhooks: the body is a serialized `RemoteExecutionContext`
//! (`MessageName`, `PrimaryEntityName`, `PrimaryEntityId`, `OperationCreatedOn` as a WCF date, …).
//!
//! Dataverse signs nothing: the endpoint is registered with a shared key, sent either as an HTTP
//! header (`HttpHeader` auth, `webhook.header` names it) or as `?code=` (`WebhookKey` auth). The key is
//! compared in constant time. Create/Update messages become targeted fetches (the body's attributes
//! depend on the step's registration and may be stripped when larger than 256 KB); Delete messages
//! become deletes.
//! Reference: learn.microsoft.com/power-apps/developer/data-platform/use-webhooks
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::config::Dynamics365Webhook;
use super::wire;
use crate::canonical::{Entity, ExternalId, Timestamp};
use crate::connector::{Change, WebhookDelivery, WebhookEvent, same_secret};
use crate::error::WebhookError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteExecutionContext {
    message_name: String,
    primary_entity_name: String,
    primary_entity_id: String,
    #[serde(default)]
    operation_created_on: Option<String>,
    #[serde(default)]
    depth: Option<u32>,
}

fn presented_key<'a>(
    config: &Dynamics365Webhook,
    delivery: &'a WebhookDelivery<'_>,
) -> Option<std::borrow::Cow<'a, str>> {
    match &config.header {
        Some(header) => delivery.headers.get(header.as_str()).and_then(|value| value.to_str().ok()).map(Into::into),
        None => delivery
            .query
            .and_then(|query| url::form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "code"))
            .map(|(_, value)| value),
    }
}

/// Authenticates and decodes one delivery.
pub fn parse(
    config: &Dynamics365Webhook,
    entities: &[Entity],
    delivery: &WebhookDelivery<'_>,
) -> Result<Vec<WebhookEvent>, WebhookError> {
    let presented = presented_key(config, delivery).unwrap_or_default();
    if !same_secret(&presented, config.key.expose_secret()) {
        let place =
            config.header.as_deref().map_or("the code query parameter".to_owned(), |header| format!("header {header}"));
        return Err(WebhookError::Unauthenticated(format!("wrong or missing webhook key in {place}")));
    }
    let context: RemoteExecutionContext = serde_json::from_slice(delivery.body)
        .map_err(|error| WebhookError::Malformed(format!("not a Dataverse RemoteExecutionContext: {error}")))?;
    let Some(table) = wire::table_by_logical(&context.primary_entity_name) else { return Ok(Vec::new()) };
    if !entities.contains(&table.entity) {
        return Ok(Vec::new());
    }
    let id = context.primary_entity_id.trim_matches(|c| c == '{' || c == '}').to_ascii_lowercase();
    if id.is_empty() {
        return Err(WebhookError::Malformed("PrimaryEntityId is empty".into()));
    }
    tracing::trace!(message = %context.message_name, depth = ?context.depth, "Dataverse webhook");
    match context.message_name.as_str() {
        "Delete" => {
            let at = context
                .operation_created_on
                .as_deref()
                .and_then(wire::wcf_date_millis)
                .and_then(Timestamp::from_unix_millis)
                .unwrap_or_else(Timestamp::now);
            Ok(vec![WebhookEvent::Changed(Change::deleted(table.entity, table.logical, ExternalId::new(id), at))])
        }
        _ => Ok(vec![WebhookEvent::Fetch { entity: table.entity, ids: vec![ExternalId::new(id)] }]),
    }
}
