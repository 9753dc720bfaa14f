//! Zoho CRM v8 shapes, in Zoho's words.
//! Reference: github.com/zoho/crm-oas v8.0 (record/operations getRecords, upsertRecords, getDeletedRecords).
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

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

/// One field's metadata, in the documented shape (zoho/crm-oas v8.0 fields.json `fields` schema and
/// v8.0/fields/operations/getFields/examples/response-200-fullexample.md). Records are read and
/// written by `api_name` (a lookup's value is a `{name, id}` object under the same name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldMeta {
    /// API name: the key of the field in records and in `fields=`.
    pub api_name: String,
    /// `text`, `picklist`, `lookup`, `ownerlookup`, `currency`, `date`, `datetime`, `subform`, …
    #[serde(default)]
    pub data_type: String,
    /// `string`, `jsonobject`, `jsonarray`, `double`, `integer`, `boolean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_type: Option<String>,
    /// Mandatory on create for every layout (`MANDATORY_NOT_FOUND` without it).
    #[serde(default)]
    pub system_mandatory: bool,
    /// System-computed (`Created_Time`, totals): never written.
    #[serde(default)]
    pub read_only: bool,
    /// Read-only in the layout for the API user's profile.
    #[serde(default)]
    pub field_read_only: bool,
    /// A picklist's values; records carry `actual_value`.
    #[serde(default)]
    pub pick_list_values: Vec<PickListValue>,
    /// A lookup's target (`{}` or `null` for other fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupMeta>,
}

/// One picklist value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PickListValue {
    /// What the UI shows.
    #[serde(default)]
    pub display_value: String,
    /// What records carry and writes send.
    pub actual_value: String,
}

/// A lookup field's target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LookupMeta {
    /// The module it points to (absent for non-lookup fields, whose `lookup` is `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleRef>,
}

/// A module named in metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleRef {
    /// API name (`Accounts`).
    pub api_name: String,
}

/// `GET /crm/{v}/org` (zoho/crm-oas v8.0 org.json; example
/// v8.0/org/operations/getOrganization/examples/response-200-orggetresponse.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgResponse {
    /// One org.
    pub org: Vec<Org>,
}

/// The org fields crmsync reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Org {
    /// Multi-currency enabled: records carry `Currency`, `org/currencies` lists the active ones.
    #[serde(default)]
    pub mc_status: bool,
    /// The org (base) currency, named `"<name> - <ISO code>"` (`"US Dollar - USD"`).
    #[serde(default)]
    pub currency: String,
    /// In the documented example, the ISO code of the org currency (`"USD"`).
    #[serde(default)]
    pub currency_locale: String,
}

impl Org {
    /// The ISO code of the org currency: the part of `currency` after the last `" - "`, else
    /// `currency_locale` when it is a code.
    pub fn currency_code(&self) -> Option<&str> {
        let is_code = |code: &&str| code.len() == 3 && code.bytes().all(|byte| byte.is_ascii_uppercase());
        self.currency
            .rsplit(" - ")
            .next()
            .map(str::trim)
            .filter(is_code)
            .or_else(|| Some(self.currency_locale.trim()).filter(is_code))
    }
}

/// `GET /crm/{v}/org/currencies` (multi-currency orgs only; 403 `CURRENCIES_NOT_ENABLED` otherwise).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrenciesResponse {
    /// The org's currencies.
    pub currencies: Vec<CurrencyMeta>,
}

/// One currency of the org.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrencyMeta {
    /// ISO 4217 code.
    pub iso_code: String,
    /// Usable in records.
    #[serde(default)]
    pub is_active: bool,
    /// The org currency.
    #[serde(default)]
    pub is_base: bool,
}

/// The line-item fields of `Sales_Orders`: the `Ordered_Items` subform in current API versions
/// (zoho/crm-oas v8.0 record createRecords example `SalesOrdersCreateExample`), the `Product_Details`
/// array in older ones (v2, help.zoho.com Kaizen #53 "Sales Orders API"). Which one an org serves is
/// read from its `settings/fields`, not guessed from the version.
pub const LINE_ITEM_FIELDS: &[&str] = &["Ordered_Items", "Product_Details"];

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
