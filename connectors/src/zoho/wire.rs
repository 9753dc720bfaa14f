//! Zoho CRM v8 shapes, in Zoho's words.
//! Reference: github.com/zoho/crm-oas v8.0 (record/operations getRecords, upsertRecords, getDeletedRecords).

use serde::{Deserialize, Serialize};

use crate::canonical::Entity;

/// `GET /crm/{v}/{Module}` response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordsResponse {
    /// Records.
    #[serde(default)]
    pub data: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Paging.
    #[serde(default)]
    pub info: Info,
}

/// Paging info.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Info {
    /// Page size.
    #[serde(default)]
    pub per_page: u64,
    /// Records in this page.
    #[serde(default)]
    pub count: u64,
    /// Whether more records follow.
    #[serde(default)]
    pub more_records: bool,
    /// Token of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    /// When the token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token_expiry: Option<String>,
}

/// `GET /crm/{v}/{Module}/deleted` item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedRecord {
    /// Record id.
    pub id: String,
    /// `recycle` or `permanent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was deleted.
    pub deleted_time: String,
}

/// `GET /crm/{v}/{Module}/deleted` response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeletedResponse {
    /// Deleted records.
    #[serde(default)]
    pub data: Vec<DeletedRecord>,
    /// Paging.
    #[serde(default)]
    pub info: Info,
}

/// Request-level error body (`{"code","details","message","status":"error"}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// `INVALID_TOKEN`, `TOO_MANY_REQUESTS`, `INVALID_DATA`, …
    pub code: String,
    /// Details.
    #[serde(default)]
    pub details: serde_json::Value,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// `error`.
    #[serde(default)]
    pub status: String,
}

/// One per-record write result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResult {
    /// `SUCCESS` or an error code.
    pub code: String,
    /// `insert` or `update` (upsert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `id`, `Modified_Time`, … on success; `api_name`, … on error.
    #[serde(default)]
    pub details: serde_json::Value,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// `success` or `error`.
    pub status: String,
}

/// Write response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResponse {
    /// One result per record.
    pub data: Vec<WriteResult>,
}

/// `GET /crm/{v}/settings/fields?module=…` (the parts crmsync reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldsResponse {
    /// Fields.
    pub fields: Vec<FieldMeta>,
}

/// One field's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldMeta {
    /// API name.
    pub api_name: String,
    /// `text`, `picklist`, `lookup`, `currency`, `date`, `datetime`, `subform`, …
    pub data_type: String,
}

/// The modules crmsync syncs, per entity.
pub const MODULES: &[(Entity, &str)] = &[
    (Entity::Account, "Accounts"),
    (Entity::Lead, "Leads"),
    (Entity::Opportunity, "Deals"),
    (Entity::Order, "Sales_Orders"),
];

/// Returns the module of an entity.
pub fn module(entity: Entity) -> &'static str {
    MODULES.iter().find(|(candidate, _)| *candidate == entity).map_or("Accounts", |(_, name)| name)
}

/// Returns the entity of a module.
pub fn entity_of(module: &str) -> Option<Entity> {
    MODULES.iter().find(|(_, name)| *name == module).map(|(entity, _)| *entity)
}

/// Largest page (`per_page`).
pub const PER_PAGE: usize = 200;
/// Largest write (`upsert`, `delete`).
pub const WRITE_LIMIT: usize = 100;
/// Records reachable through one chain of page tokens.
pub const PAGE_TOKEN_CAP: u64 = 100_000;
