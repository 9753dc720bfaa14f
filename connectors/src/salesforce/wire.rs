//! Salesforce REST shapes, in Salesforce's words.
//! Reference: developer.salesforce.com/docs/platform/api-rest/guide (resources-query, dome-composite-upsert).
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use serde::{Deserialize, Serialize};

/// A query / queryAll page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResponse {
    /// Rows in the whole result.
    pub total_size: u64,
    /// `true` on the last page.
    pub done: bool,
    /// Relative URL of the next page (absent on the last page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_records_url: Option<String>,
    /// Rows: field name → value, plus `attributes`.
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One REST error (`[{"message":…,"errorCode":…}]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestError {
    /// Human text.
    pub message: String,
    /// `INVALID_SESSION_ID`, `REQUEST_LIMIT_EXCEEDED`, `MALFORMED_QUERY`, …
    pub error_code: String,
    /// Fields involved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// `GET /sobjects/{Object}/describe` (the parts crmsync reads).
///
/// Shape: developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_sobject_describe.htm
/// (DescribeSObjectResult in the SOAP API guide, `sforce_api_calls_describesobjects_describesobjectresult.htm`).
/// `fields[]` lists a lookup by its **field** name (`AccountId`, type `reference`, `referenceTo`
/// `["Account"]`); `relationshipName` (`Account`) is only for traversal (`Account.Name`) and for
/// upserts that reference a parent by external id. Child relationships (`OrderItems`) are in
/// `childRelationships`, never in `fields`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Describe {
    /// Object API name.
    pub name: String,
    /// Fields.
    pub fields: Vec<DescribeField>,
    /// Relationships from child objects (`OrderItems` on Order).
    #[serde(default)]
    pub child_relationships: Vec<ChildRelationship>,
}

/// One described field (the DescribeFieldResult attributes crmsync uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeField {
    /// API name (`AccountId`, not the relationship name `Account`).
    pub name: String,
    /// `id`, `string`, `picklist`, `currency`, `date`, `datetime`, `boolean`, `reference`, `double`,
    /// `percent`, `textarea`, `url`, `email`, `phone`, `int`, `address` (compound), `location`, …
    #[serde(rename = "type")]
    pub field_type: String,
    /// Maximum length of text fields (0 for other types).
    #[serde(default)]
    pub length: u32,
    /// Digits of number fields.
    #[serde(default)]
    pub precision: u32,
    /// Digits after the decimal point of number fields (`Amount`: 2).
    #[serde(default)]
    pub scale: u32,
    /// Whether it can be null.
    #[serde(default)]
    pub nillable: bool,
    /// Whether it can be set on create.
    #[serde(default)]
    pub createable: bool,
    /// Whether it can be set on update.
    #[serde(default)]
    pub updateable: bool,
    /// Whether the org fills it when a create leaves it out (`OwnerId`, `Probability`, `Lead.Status`).
    #[serde(default)]
    pub defaulted_on_create: bool,
    /// Whether it is an external id.
    #[serde(default)]
    pub external_id: bool,
    /// The objects a `reference` field points to (`["Account"]`; several for polymorphic lookups).
    #[serde(default)]
    pub reference_to: Vec<String>,
    /// The relationship a `reference` field is traversed by (`AccountId` → `Account`).
    #[serde(default)]
    pub relationship_name: Option<String>,
    /// Allowed values of a picklist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub picklist_values: Vec<PicklistValue>,
}

impl DescribeField {
    /// Returns whether a create must carry this field: the org neither accepts null nor fills it.
    pub fn is_required_on_create(&self) -> bool {
        self.createable && !self.nillable && !self.defaulted_on_create
    }

    /// Returns whether this is a compound field (`BillingAddress`, geolocations), which Bulk API 2.0
    /// queries cannot select (developer.salesforce.com/docs/platform/api-asynch/guide/queries.md).
    pub fn is_compound(&self) -> bool {
        matches!(self.field_type.as_str(), "address" | "location")
    }
}

/// A picklist entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PicklistValue {
    /// API value.
    pub value: String,
    /// Active.
    pub active: bool,
    /// Shown to users.
    #[serde(default)]
    pub label: Option<String>,
    /// Whether it is the default on create.
    #[serde(default)]
    pub default_value: bool,
}

/// One `childRelationships[]` entry of a describe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildRelationship {
    /// The child object (`OrderItem`).
    pub child_s_object: String,
    /// The child's lookup field (`OrderId`).
    pub field: String,
    /// The name a parent-to-child subquery uses (`OrderItems`), absent for some relationships.
    #[serde(default)]
    pub relationship_name: Option<String>,
}

/// sObject Collections request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionRequest {
    /// `false`: each record succeeds or fails alone.
    pub all_or_none: bool,
    /// Records with `attributes.type`.
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Composite request body (`POST /services/data/vXX.X/composite`): up to 25 subrequests (at most 5
/// of them sObject Collections or queries), run in order when `collateSubrequests` is false; with
/// `allOrNone` the whole request is rolled back when one subrequest fails.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeRequest {
    /// `true`: one failing subrequest rolls every subrequest back.
    #[serde(default)]
    pub all_or_none: bool,
    /// `false`: subrequests run in the order given.
    #[serde(default)]
    pub collate_subrequests: bool,
    /// The subrequests.
    pub composite_request: Vec<CompositeSubrequest>,
}

/// One subrequest of a composite request. `@{referenceId.field}` in its `url` or `body` is
/// replaced by that field of an earlier subrequest's response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSubrequest {
    /// `GET`, `POST`, `PATCH`, `PUT` or `DELETE`.
    pub method: String,
    /// The resource, with its `/services/data/vXX.X` prefix.
    pub url: String,
    /// Names the response for later references (letters, digits and underscores).
    pub reference_id: String,
    /// The subrequest's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// Composite response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeResponse {
    /// One result per subrequest, in order.
    pub composite_response: Vec<CompositeSubresult>,
}

/// One subrequest's result: its status and body as the resource alone would answer them. When
/// `allOrNone` rolled the request back, every other subrequest answers 400 `PROCESSING_HALTED`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSubresult {
    /// The subrequest's response body (`null` for a 204).
    #[serde(default)]
    pub body: serde_json::Value,
    /// Response headers of the subrequest.
    #[serde(default)]
    pub http_headers: serde_json::Map<String, serde_json::Value>,
    /// The subrequest's HTTP status.
    pub http_status_code: u16,
    /// The subrequest's `referenceId`.
    pub reference_id: String,
}

/// The error code of subrequests not run or rolled back because another one failed.
pub const PROCESSING_HALTED: &str = "PROCESSING_HALTED";
/// The error code of collection records rolled back because another one failed.
pub const ALL_OR_NONE_ROLLED_BACK: &str = "ALL_OR_NONE_OPERATION_ROLLED_BACK";
/// Most subrequests in one composite request.
pub const COMPOSITE_LIMIT: usize = 25;
/// Most sObject Collections (or query) subrequests in one composite request.
pub const COMPOSITE_COLLECTION_LIMIT: usize = 5;

/// One per-record collection result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionResult {
    /// Record id (absent on failure of a new record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whether it worked.
    pub success: bool,
    /// Errors (`statusCode`, not `errorCode`, here).
    #[serde(default)]
    pub errors: Vec<CollectionError>,
    /// Upsert only: whether the record was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

/// One per-record error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionError {
    /// `REQUIRED_FIELD_MISSING`, `INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST`, …
    pub status_code: String,
    /// Human text.
    pub message: String,
    /// Fields involved.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// The objects crmsync syncs, per entity, with their ID key prefixes.
pub const OBJECTS: &[(crate::canonical::Entity, &str, &str)] = &[
    (crate::canonical::Entity::Account, "Account", "001"),
    (crate::canonical::Entity::Lead, "Lead", "00Q"),
    (crate::canonical::Entity::Opportunity, "Opportunity", "006"),
    (crate::canonical::Entity::Order, "Order", "801"),
];

/// Returns the entity synced from an sObject, if it is one.
pub fn object_entity(object: &str) -> Option<crate::canonical::Entity> {
    OBJECTS.iter().find(|(_, name, _)| *name == object).map(|(entity, _, _)| *entity)
}

/// Returns the sObject name of an entity.
pub fn object(entity: crate::canonical::Entity) -> &'static str {
    OBJECTS.iter().find(|(candidate, _, _)| *candidate == entity).map_or("Account", |(_, name, _)| name)
}

/// The Order `StatusCode` (status category) of an activated order; the other one is `Draft`
/// (Order object reference; OrderStatus.StatusCode, restricted picklist Activated/Draft:
/// developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_orderstatus.htm).
pub const ORDER_ACTIVATED: &str = "Activated";

/// The child relationship of OrderItem on Order (its `childRelationships` entry).
pub const ORDER_ITEMS_RELATIONSHIP: &str = "OrderItems";

/// The order-items subquery crmsync appends to Order queries.
pub const ORDER_ITEMS_SUBQUERY: &str =
    "(SELECT Id, Quantity, UnitPrice, TotalPrice, Product2.Name, Product2.ProductCode FROM OrderItems)";

/// Bulk API 2.0 query job info (`POST/GET /jobs/query`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkJob {
    /// Job id (`750…`).
    pub id: String,
    /// `query` or `queryAll`.
    pub operation: String,
    /// `UploadComplete`, `InProgress`, `JobComplete`, `Failed`, `Aborted`.
    pub state: String,
    /// Rows processed so far.
    #[serde(default)]
    pub number_records_processed: u64,
    /// Failure detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Parses RFC 4180 CSV (quoted fields, doubled quotes, line breaks inside quotes) into rows.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(character) = chars.next() {
        if quoted {
            match character {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                other => field.push(other),
            }
            continue;
        }
        match character {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                at_field_start = true;
            }
            other => {
                field.push(other);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field (truncated CSV)".into());
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// Writes one CSV field (quoted when needed).
pub fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod csv_tests {
    use super::*;

    #[test]
    fn csv_round_trips_quotes_commas_and_line_breaks() {
        let text = format!("Id,Name\n001,{}\n002,{}\n", csv_field("Acme, \"the\" best"), csv_field("two\nlines"));
        let rows = parse_csv(&text).unwrap();
        assert_eq!(rows, vec![vec!["Id", "Name"], vec!["001", "Acme, \"the\" best"], vec!["002", "two\nlines"]]);
        assert!(parse_csv("Id,Name\n001,\"cut").is_err());
    }
}
