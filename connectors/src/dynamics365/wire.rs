//! Dataverse Web API shapes, in the vendor's words (crm-apis.md §3), shared by the connector and the
//! simulator: tables, collection pages, error bodies, the Entra token error, WCF dates and the
//! `multipart/mixed` framing of `$batch`.
//!
//! References: learn.microsoft.com/power-apps/developer/data-platform/webapi/query/page-results,
//! …/use-change-tracking-synchronize-data-external-systems, …/webapi/execute-batch-operations-using-web-api.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::canonical::Entity;
use crate::error::ConnectorError;
use crate::row::{RawRow, RowText, check_json};

/// Largest `Prefer: odata.maxpagesize` Dataverse honours.
pub const MAX_PAGE_SIZE: usize = 5000;
/// Requests allowed in one `$batch`.
pub const BATCH_LIMIT: usize = 1000;
/// Order-line ids per `In(...)` filter when reading lines of a page of orders.
pub const LINE_FILTER_CHUNK: usize = 100;
/// HRESULT of an expired change-tracking token ("Version stamp associated with the client has
/// expired. Please perform a full sync." — the SDK's `ExpiredVersionStamp`).
pub const EXPIRED_VERSION_STAMP: &str = "0x80044352";
/// Annotation carrying a lookup's target table.
pub const LOOKUP_LOGICAL_NAME: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";
/// The order-lines table.
pub const LINES_SET: &str = "salesorderdetails";
/// The property of an order line naming its order (the `salesorderid` lookup's value).
pub const LINE_ORDER: &str = "_salesorderid_value";
/// The collection-valued navigation property from an order to its lines, which `$expand` can join:
/// the salesorder table's one-to-many relationship `order_details` (ReferencingEntity
/// `salesorderdetail`, ReferencingAttribute `salesorderid`, ReferencedEntityNavigationPropertyName
/// `order_details`; Dataverse table reference, learn.microsoft.com/dynamics365/developer/reference/entities/salesorder).
pub const ORDER_LINES: &str = "order_details";
/// Related rows a single-level `$expand` of a collection-valued navigation property returns per
/// row: no paging applies to them, "up to 5,000 related records can be returned for each expanded
/// collection-valued navigation property" (learn.microsoft.com/power-apps/developer/data-platform/webapi/query/join-tables).
/// A row with this many may have more, readable from its `<property>@odata.nextLink`.
pub const EXPANDED_ROWS_CAP: usize = 5000;

/// One synced table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// The entity it holds.
    pub entity: Entity,
    /// Logical name (`opportunity`).
    pub logical: &'static str,
    /// Entity set name (`opportunities`).
    pub set: &'static str,
    /// Primary key column (`opportunityid`).
    pub key: &'static str,
}

/// The account table (also what [`table`] falls back to: every entity has a table).
const ACCOUNTS: Table = Table { entity: Entity::Account, logical: "account", set: "accounts", key: "accountid" };

/// The tables crmsync syncs.
pub const TABLES: &[Table] = &[
    ACCOUNTS,
    Table { entity: Entity::Lead, logical: "lead", set: "leads", key: "leadid" },
    Table { entity: Entity::Opportunity, logical: "opportunity", set: "opportunities", key: "opportunityid" },
    Table { entity: Entity::Order, logical: "salesorder", set: "salesorders", key: "salesorderid" },
];

/// The table of an entity.
pub fn table(entity: Entity) -> Table {
    TABLES.iter().copied().find(|table| table.entity == entity).unwrap_or(ACCOUNTS)
}

/// The table with a logical name (webhooks name tables by logical name).
pub fn table_by_logical(logical: &str) -> Option<Table> {
    TABLES.iter().copied().find(|table| table.logical == logical)
}

/// A collection page: `value` rows plus paging / change-tracking links.
///
/// The rows are kept as their JSON text, views of the page's body ([`RowText`]), and read one at a
/// time ([`read_row`]) while they are mapped: no row is decoded into owned values, so a page costs
/// its body and little more (a body of 5,000 orders with their lines is about 9 MiB; decoded into
/// `serde_json` maps it took 15 MiB more).
#[derive(Debug, Default)]
pub struct EntityCollection {
    /// The rows, each a JSON object keyed by column logical name (deletions carry `@odata.context`
    /// ending in `$deletedEntity`, an `id` and a `reason`).
    pub value: Vec<RowText>,
    /// Next page (`$skiptoken`), absent on the last page.
    pub next_link: Option<String>,
    /// Delta link, present on the last page of a change-tracked read.
    pub delta_link: Option<String>,
    /// The rows matching the query, up to [`COUNT_CAP`], when `$count=true` was asked (first page).
    pub count: Option<u64>,
}

/// The JSON shape of [`EntityCollection`](super::EntityCollection), borrowing the rows from the
/// body (a module of its own so that it has the same name in `serde`'s messages).
mod json {
    use serde::Deserialize;

    use crate::row::ObjectJson;

    #[derive(Deserialize)]
    pub(super) struct EntityCollection<'a> {
        #[serde(default, borrow)]
        pub(super) value: Vec<ObjectJson<'a>>,
        #[serde(rename = "@odata.nextLink", default)]
        pub(super) next_link: Option<String>,
        #[serde(rename = "@odata.deltaLink", default)]
        pub(super) delta_link: Option<String>,
        #[serde(rename = "@odata.count", default)]
        pub(super) count: Option<u64>,
    }
}

impl EntityCollection {
    /// Reads a page from its body.
    ///
    /// # Errors
    ///
    /// The `serde_json` error, naming the line and column, when the body is not valid JSON (a
    /// truncated body: checked as a whole first, as strictly as decoding it into values would) or
    /// not a collection (a `value` that is not an array of objects).
    pub fn parse(body: Bytes) -> Result<Self, serde_json::Error> {
        check_json(&body)?;
        let page: json::EntityCollection<'_> = serde_json::from_slice(&body)?;
        let value = page.value.into_iter().map(|row| RowText::within(&body, row)).collect();
        Ok(Self { value, next_link: page.next_link, delta_link: page.delta_link, count: page.count })
    }
}

/// Reads one row of a page of `set` (`accounts`).
///
/// # Errors
///
/// A [`ConnectorError::Decode`] when the row is not a JSON object (never, for a row of a page
/// [`EntityCollection::parse`] read).
pub fn read_row<'a>(row: &'a RowText, set: &str) -> Result<RawRow<'a>, ConnectorError> {
    row.parse().map_err(|error| ConnectorError::decode(format!("{set} row"), error))
}

/// The most `@odata.count` counts: a count of 5,000 means "5,000 or more" (MicrosoftDocs
/// powerapps-docs, webapi/query/count-rows.md).
pub const COUNT_CAP: u64 = 5000;

/// Whether a delta row is a deletion.
pub fn is_deleted_entity(row: &RawRow<'_>) -> bool {
    row.text("@odata.context").is_some_and(|context| context.ends_with("$deletedEntity"))
}

/// The orders of the created or changed lines in a page of the order lines' changes (each once,
/// in order of first appearance), and how many lines were deleted: a `$deletedEntity` row carries
/// only the line's `id` and `reason`, not its order.
///
/// # Errors
///
/// As [`read_row`].
pub fn orders_of_changed_lines(rows: &[RowText]) -> Result<(Vec<String>, usize), ConnectorError> {
    let mut seen = std::collections::HashSet::new();
    let mut orders = Vec::new();
    let mut deleted = 0;
    for text in rows {
        let row = read_row(text, LINES_SET)?;
        if is_deleted_entity(&row) {
            deleted += 1;
        } else if let Some(order) = row.text(LINE_ORDER)
            && seen.insert(order.clone())
        {
            orders.push(order.into_owned());
        }
    }
    Ok((orders, deleted))
}

/// The expanded lines of an order row (`order_details`), as the JSON text of each line: `None`
/// when the row has no expansion. Elements that are not objects are skipped.
///
/// # Errors
///
/// A [`ConnectorError::Decode`] naming the order when `order_details` is not an array.
pub fn expanded_lines<'a>(row: &RawRow<'a>, order: &str) -> Result<Option<Vec<&'a RawValue>>, ConnectorError> {
    let Some(json) = row.raw(ORDER_LINES) else { return Ok(None) };
    let not_an_array = || {
        ConnectorError::decode(
            "salesorders with their lines",
            std::io::Error::other(format!("{ORDER_LINES} of order {order} is not an array")),
        )
    };
    if !json.get().starts_with('[') {
        return Err(not_an_array());
    }
    let elements: Vec<&'a RawValue> = serde_json::from_str(json.get()).map_err(|_| not_an_array())?;
    Ok(Some(elements.into_iter().filter(|line| line.get().starts_with('{')).collect()))
}

/// The Web API error body `{"error":{"code","message"}}`.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inner part of [`ErrorBody`]; `code` is an HRESULT hex string or empty.
#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    /// HRESULT such as `0x80072322`, often empty.
    #[serde(default)]
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
}

/// `EntityDefinitions(LogicalName='…')` with its expanded attributes (the parts crmsync reads).
///
/// Shape: learn.microsoft.com/power-apps/developer/data-platform/webapi/query-metadata-web-api
/// (MicrosoftDocs/powerapps-docs:powerapps-docs/developer/data-platform/webapi/query-metadata-web-api.md);
/// the attribute properties are those of the `AttributeMetadata` EntityType (`LogicalName`,
/// `AttributeType`, `AttributeOf`, `IsPrimaryId`, `IsValidForCreate`, `IsValidForUpdate`, and
/// `RequiredLevel`, an `AttributeRequiredLevelManagedProperty` whose `Value` is `None`,
/// `SystemRequired`, `ApplicationRequired` or `Recommended`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntityDefinition {
    /// Whether the table has "Track changes" on.
    #[serde(default)]
    pub change_tracking_enabled: bool,
    /// Columns.
    #[serde(default)]
    pub attributes: Vec<AttributeDefinition>,
}

/// A definition response: the documented example wraps the table in a `value` array; an entity
/// addressed by key otherwise comes as the object itself. Both are accepted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DefinitionResponse {
    /// `{"value": [definition]}`.
    Wrapped {
        /// The definitions (one when addressed by logical name).
        value: Vec<EntityDefinition>,
    },
    /// The definition itself.
    Single(EntityDefinition),
}

impl DefinitionResponse {
    /// The one definition the response holds.
    pub fn into_definition(self) -> Option<EntityDefinition> {
        match self {
            Self::Wrapped { value } => value.into_iter().next(),
            Self::Single(definition) => Some(definition),
        }
    }
}

/// The attribute properties crmsync asks `EntityDefinitions` for.
pub const ATTRIBUTE_SELECT: &str =
    "LogicalName,AttributeType,AttributeOf,IsPrimaryId,IsValidForCreate,IsValidForUpdate,RequiredLevel";

/// One column of an [`EntityDefinition`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributeDefinition {
    /// Column logical name (`customerid`, never `_customerid_value`).
    pub logical_name: String,
    /// `AttributeTypeCode` (`String`, `Lookup`, `Customer`, `Owner`, `Money`, …).
    #[serde(default)]
    pub attribute_type: Option<String>,
    /// The column this one extends (`customeridname` of `customerid`); such columns are not written.
    #[serde(default)]
    pub attribute_of: Option<String>,
    /// Whether it is the table's primary key.
    #[serde(default)]
    pub is_primary_id: Option<bool>,
    /// Whether a create may set it.
    #[serde(default)]
    pub is_valid_for_create: Option<bool>,
    /// Whether an update may set it.
    #[serde(default)]
    pub is_valid_for_update: Option<bool>,
    /// How required it is.
    #[serde(default)]
    pub required_level: Option<RequiredLevel>,
}

/// `AttributeRequiredLevelManagedProperty`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequiredLevel {
    /// `None`, `SystemRequired`, `ApplicationRequired` or `Recommended`.
    pub value: String,
}

impl AttributeDefinition {
    /// Whether the column is a lookup (`Lookup`, `Customer`, `Owner`): rows carry its value as the
    /// property `_{logical}_value`, and writes set it with `{navigation}@odata.bind`.
    pub fn is_lookup(&self) -> bool {
        matches!(self.attribute_type.as_deref(), Some("Lookup" | "Customer" | "Owner"))
    }

    /// The property rows carry the column's value under.
    pub fn property(&self) -> String {
        if self.is_lookup() { lookup_property(&self.logical_name) } else { self.logical_name.clone() }
    }

    /// `SystemRequired` or `ApplicationRequired`.
    pub fn is_required(&self) -> bool {
        matches!(
            self.required_level.as_ref().map(|level| level.value.as_str()),
            Some("SystemRequired" | "ApplicationRequired")
        )
    }

    /// The requirement level as Dataverse names it (`None` when absent).
    pub fn level(&self) -> &str {
        self.required_level.as_ref().map_or("None", |level| level.value.as_str())
    }
}

/// The Web API property of a lookup column (`customerid` → `_customerid_value`).
pub fn lookup_property(logical: &str) -> String {
    format!("_{logical}_value")
}

/// Renders an instant the way Dataverse does: UTC, second precision (`2024-01-02T03:04:05Z`).
pub fn format_time(at: crate::canonical::Timestamp) -> String {
    at.as_jiff().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a WCF date `/Date(1506409448000)/` or `/Date(1506409448000-0700)/` into epoch milliseconds.
///
/// The offset suffix only says which zone the sender displayed; the number is already UTC milliseconds.
pub fn wcf_date_millis(text: &str) -> Option<i64> {
    let inner = text.strip_prefix("/Date(")?.strip_suffix(")/")?;
    let end = inner.char_indices().skip(1).find(|(_, c)| *c == '+' || *c == '-').map_or(inner.len(), |(i, _)| i);
    inner.get(..end)?.parse().ok()
}

/// One request inside a `$batch` (no change sets: every request stands alone, and with
/// `Prefer: odata.continue-on-error` each gets its own response).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// `PATCH`, `POST`, `DELETE`, `GET`.
    pub method: String,
    /// Absolute path (`/api/data/v9.2/accounts(crmsync_id='…')`).
    pub path: String,
    /// Extra headers (`If-Match`, `Prefer`).
    pub headers: Vec<(String, String)>,
    /// JSON body, if any.
    pub body: Option<Value>,
}

/// One response part of a `$batch` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResponse {
    /// Embedded HTTP status.
    pub status: u16,
    /// Embedded headers (lower-cased names).
    pub headers: Vec<(String, String)>,
    /// Embedded body (empty for 204).
    pub body: String,
}

impl BatchResponse {
    /// A header of the part.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// Renders requests as a `multipart/mixed` body with `boundary`.
pub fn encode_batch(boundary: &str, requests: &[BatchRequest]) -> String {
    let mut out = String::new();
    for request in requests {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n{} {} HTTP/1.1\r\n",
            request.method, request.path
        ));
        for (name, value) in &request.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        match &request.body {
            Some(body) => out.push_str(&format!("Content-Type: application/json; type=entry\r\n\r\n{body}\r\n")),
            None => out.push_str("\r\n"),
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

/// Renders responses as a `multipart/mixed` body with `boundary`.
pub fn encode_batch_response(boundary: &str, responses: &[BatchResponse]) -> String {
    let mut out = String::new();
    for response in responses {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 {} {}\r\n",
            response.status,
            reason(response.status)
        ));
        for (name, value) in &response.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("\r\n{}\r\n", response.body));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        _ => "Error",
    }
}

/// The boundary of a `multipart/mixed; boundary=…` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    content_type
        .split(';')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("boundary=").map(|boundary| boundary.trim_matches('"').to_owned()))
}

/// Why a multipart body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed $batch body: {0}")]
pub struct BatchFormatError(pub String);

/// Splits a multipart body into its parts' contents (after each part's MIME headers).
fn parts<'a>(boundary: &str, body: &'a str) -> Result<Vec<&'a str>, BatchFormatError> {
    let delimiter = format!("--{boundary}");
    let end = format!("--{boundary}--");
    let Some((before_end, _)) = body.split_once(&end) else {
        return Err(BatchFormatError(format!("no closing delimiter {end}")));
    };
    let mut parts = Vec::new();
    for chunk in before_end.split(&delimiter).skip(1) {
        let chunk = chunk.trim_start_matches("\r\n");
        let Some((mime, content)) = chunk.split_once("\r\n\r\n") else {
            return Err(BatchFormatError("a part has no blank line after its MIME headers".into()));
        };
        if !mime.to_ascii_lowercase().contains("application/http") {
            return Err(BatchFormatError(format!("unsupported part type: {}", mime.lines().next().unwrap_or(""))));
        }
        parts.push(content);
    }
    Ok(parts)
}

fn headers_and_body(text: &str) -> (Vec<(String, String)>, String) {
    if let Some(body) = text.strip_prefix("\r\n") {
        return (Vec::new(), body.trim_end_matches("\r\n").to_owned());
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let headers = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (headers, body.trim_end_matches("\r\n").to_owned())
}

/// Reads the requests of a `$batch` body.
pub fn decode_batch(boundary: &str, body: &str) -> Result<Vec<BatchRequest>, BatchFormatError> {
    parts(boundary, body)?
        .into_iter()
        .map(|content| {
            let (line, rest) = content.split_once("\r\n").unwrap_or((content, ""));
            let mut words = line.split_whitespace();
            let (Some(method), Some(path), Some(_version)) = (words.next(), words.next(), words.next()) else {
                return Err(BatchFormatError(format!("bad request line {line:?}")));
            };
            let (headers, body) = headers_and_body(rest);
            let body = if body.trim().is_empty() {
                None
            } else {
                Some(serde_json::from_str(&body).map_err(|error| BatchFormatError(format!("part body: {error}")))?)
            };
            let headers = headers.into_iter().filter(|(name, _)| name != "content-type").collect();
            Ok(BatchRequest { method: method.to_owned(), path: path.to_owned(), headers, body })
        })
        .collect()
}

/// Reads the responses of a `$batch` answer.
pub fn decode_batch_response(boundary: &str, body: &str) -> Result<Vec<BatchResponse>, BatchFormatError> {
    parts(boundary, body)?
        .into_iter()
        .map(|content| {
            let (line, rest) = content.split_once("\r\n").unwrap_or((content, ""));
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|status| status.parse().ok())
                .ok_or_else(|| BatchFormatError(format!("bad status line {line:?}")))?;
            let (headers, body) = headers_and_body(rest);
            Ok(BatchResponse { status, headers, body })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wcf_dates_parse_with_and_without_offset() {
        assert_eq!(wcf_date_millis("/Date(1506409448000)/"), Some(1_506_409_448_000));
        assert_eq!(wcf_date_millis("/Date(1506409448000-0700)/"), Some(1_506_409_448_000));
        assert_eq!(wcf_date_millis("/Date(-5)/"), Some(-5));
        assert_eq!(wcf_date_millis("2024-01-01"), None);
    }

    /// A truncated or misshapen page is refused with `serde_json`'s message naming where, as when
    /// pages were decoded into maps; a good one keeps its rows as views of the body.
    #[test]
    fn a_truncated_or_misshapen_page_is_refused_naming_where() {
        let page = r#"{"@odata.context":"x","value":[{"accountid":"a1","name":"Contoso"},{"accountid":"a2","name":"Fab"}],"@odata.nextLink":"next","@odata.count":2}"#;
        let cut = page.get(..60).unwrap();
        let error = EntityCollection::parse(Bytes::from(cut)).unwrap_err().to_string();
        assert_eq!(error, serde_json::from_str::<Value>(cut).unwrap_err().to_string());
        assert_eq!(error, "EOF while parsing a string at line 1 column 60");
        for (body, message) in [
            (r#"{"value":[5]}"#, "invalid type: integer `5`, expected a map at line 1 column 12"),
            (r#"{"value":{"a":1}}"#, "invalid type: map, expected a sequence at line 1 column 9"),
            ("5", "invalid type: integer `5`, expected struct EntityCollection at line 1 column 1"),
        ] {
            assert_eq!(EntityCollection::parse(Bytes::from(body)).unwrap_err().to_string(), message, "{body}");
        }
        let page = EntityCollection::parse(Bytes::from(page)).unwrap();
        assert_eq!((page.next_link.as_deref(), page.delta_link.as_deref(), page.count), (Some("next"), None, Some(2)));
        let names: Vec<String> = page
            .value
            .iter()
            .map(|row| read_row(row, "accounts").unwrap().text("name").unwrap().into_owned())
            .collect();
        assert_eq!(names, ["Contoso", "Fab"]);
    }

    #[test]
    fn batch_bodies_round_trip() {
        let requests = vec![
            BatchRequest {
                method: "PATCH".into(),
                path: "/api/data/v9.2/accounts(crmsync_id='a')".into(),
                headers: vec![("If-Match".into(), "W/\"12\"".into())],
                body: Some(serde_json::json!({"name": "Contoso"})),
            },
            BatchRequest {
                method: "DELETE".into(),
                path: "/api/data/v9.2/accounts(x)".into(),
                headers: vec![],
                body: None,
            },
        ];
        let body = encode_batch("batch_1", &requests);
        assert_eq!(
            decode_batch("batch_1", &body).unwrap(),
            requests
                .iter()
                .cloned()
                .map(|mut request| {
                    request.headers.iter_mut().for_each(|(name, _)| *name = name.to_ascii_lowercase());
                    request
                })
                .collect::<Vec<_>>()
        );
        let responses = vec![
            BatchResponse { status: 204, headers: vec![("odata-entityid".into(), "x".into())], body: String::new() },
            BatchResponse { status: 400, headers: vec![], body: r#"{"error":{"code":"0x1","message":"no"}}"#.into() },
        ];
        let body = encode_batch_response("batchresponse_1", &responses);
        assert_eq!(decode_batch_response("batchresponse_1", &body).unwrap(), responses);
        assert!(decode_batch("batch_1", "--batch_1\r\nno end").is_err());
        assert_eq!(boundary_of("multipart/mixed; boundary=\"batch_7\"").as_deref(), Some("batch_7"));
    }
}
