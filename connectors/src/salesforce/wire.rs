//! Salesforce REST shapes, in Salesforce's words.
//! Reference: developer.salesforce.com/docs/platform/api-rest/guide (resources-query, dome-composite-upsert).

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Describe {
    /// Object API name.
    pub name: String,
    /// Fields.
    pub fields: Vec<DescribeField>,
}

/// One described field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeField {
    /// API name.
    pub name: String,
    /// `id`, `string`, `picklist`, `currency`, `date`, `datetime`, `boolean`, `reference`, `double`, `percent`.
    #[serde(rename = "type")]
    pub field_type: String,
    /// Whether it can be null.
    #[serde(default)]
    pub nillable: bool,
    /// Whether it is an external id.
    #[serde(default)]
    pub external_id: bool,
    /// Allowed values of a picklist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub picklist_values: Vec<PicklistValue>,
}

/// A picklist entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PicklistValue {
    /// API value.
    pub value: String,
    /// Active.
    pub active: bool,
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

/// Returns the sObject name of an entity.
pub fn object(entity: crate::canonical::Entity) -> &'static str {
    OBJECTS.iter().find(|(candidate, _, _)| *candidate == entity).map_or("Account", |(_, name, _)| name)
}

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
