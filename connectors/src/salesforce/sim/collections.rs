//! sObject Collections writes: upsert by external id, update by id, delete (≤ 200 records, per-record results).

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::canonical::decimal_json;

use super::schema::{ACTIVATED_STATUSES, schema, stage_probability};
use super::wire::{CollectionError, CollectionResult};
use super::{Inner, Row, SalesforceSim, Shared, object_name, rest_error, stamp_text, wire};

pub(super) async fn upsert(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, object, field)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let response = match (object_name(&object), field.as_str()) {
        (None, _) => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
        (Some(_), field) if field != "Crmsync_Id__c" => {
            rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist")
        }
        (Some(object), _) => match serde_json::from_slice::<wire::CollectionRequest>(&body) {
            Err(error) => rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()),
            Ok(request) if request.records.len() > 200 => rest_error(
                StatusCode::BAD_REQUEST,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            ),
            Ok(request) => {
                let mut inner = sim.lock();
                let results: Vec<CollectionResult> =
                    request.records.into_iter().map(|record| sim.upsert_one(&mut inner, object, record)).collect();
                inner.commit();
                drop(inner);
                axum::Json(results).into_response()
            }
        },
    };
    sim.with_limit_info(response)
}

fn failure(code: &str, message: String, fields: &[&str]) -> CollectionResult {
    CollectionResult {
        id: None,
        success: false,
        errors: vec![CollectionError {
            status_code: code.into(),
            message,
            fields: fields.iter().map(|field| (*field).to_owned()).collect(),
        }],
        created: None,
    }
}

impl SalesforceSim {
    /// sObject Collections upsert by external id: inserts when no row has the key, else updates it.
    pub(super) fn upsert_one(
        &self,
        inner: &mut Inner,
        object: &'static str,
        mut record: Map<String, Value>,
    ) -> CollectionResult {
        let declared = record
            .remove("attributes")
            .and_then(|attributes| attributes.get("type").and_then(Value::as_str).map(str::to_owned));
        if declared.as_deref() != Some(object) {
            return failure("INVALID_TYPE", format!("attributes.type must be {object}"), &[]);
        }
        let Some(external) = record.remove("Crmsync_Id__c").and_then(|value| value.as_str().map(str::to_owned)) else {
            return failure(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [Crmsync_Id__c]".into(),
                &["Crmsync_Id__c"],
            );
        };
        let existing = inner.tables.get(object).and_then(|table| table.by_external.get(&external)).cloned();
        self.write_one(inner, object, existing, Some(external), record)
    }

    /// Validates and applies one write: an insert (`existing` is `None`) or an update of a live row.
    /// Checks follow the org's describe (unknown field → `INVALID_FIELD`, not createable/updateable →
    /// `INVALID_FIELD_FOR_INSERT_UPDATE`, restricted picklists, lookups, dates, required fields on
    /// insert) and the Order object reference (inserted with a Draft status; activation is an update
    /// of `Status` alone; `AccountId` changes only while Draft).
    pub(super) fn write_one(
        &self,
        inner: &mut Inner,
        object: &'static str,
        existing: Option<String>,
        external: Option<String>,
        mut record: Map<String, Value>,
    ) -> CollectionResult {
        if let Some(external) = &external
            && (external.is_empty() || external.len() > 36)
        {
            return failure(
                "STRING_TOO_LONG",
                format!("Crmsync Id: data value too large: {external}"),
                &["Crmsync_Id__c"],
            );
        }
        let created = existing.is_none();
        let specs = schema(object, self.multi_currency);
        // Relationship references by external id: "Account": {"Crmsync_Id__c": "…"}.
        for spec in &specs {
            let Some((target, relationship)) = spec.reference else { continue };
            let Some(reference) = record.remove(relationship) else { continue };
            let key = reference.get("Crmsync_Id__c").and_then(Value::as_str).unwrap_or_default().to_owned();
            match inner.tables.get(target).and_then(|table| table.by_external.get(&key)).cloned() {
                Some(id) => {
                    record.insert(spec.name.into(), json!(id));
                }
                None => {
                    return failure(
                        "INVALID_FIELD",
                        format!("Foreign key external ID: {key} not found for field Crmsync_Id__c in entity {target}"),
                        &[spec.name],
                    );
                }
            }
        }
        for (name, value) in &record {
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                return failure(
                    "INVALID_FIELD",
                    format!("No such column '{name}' on sobject of type {object}"),
                    &[name],
                );
            };
            let settable = if created { spec.createable } else { spec.updateable };
            if !settable {
                return failure(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    format!(
                        "Unable to create/update fields: {name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."
                    ),
                    &[name],
                );
            }
            if !spec.picklist.is_empty()
                && !value.is_null()
                && !value.as_str().is_some_and(|text| spec.picklist.contains(&text))
            {
                return failure(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!(
                        "{}: bad value for restricted picklist field: {}",
                        spec.name,
                        value.as_str().unwrap_or("?")
                    ),
                    &[name],
                );
            }
            if let (Some((target, _)), false) = (spec.reference, value.is_null()) {
                let exists = target == "User"
                    || value.as_str().is_some_and(|id| {
                        inner.tables.get(target).is_some_and(|table| table.rows.get(id).is_some_and(|row| !row.deleted))
                    });
                if !exists {
                    return failure(
                        "INVALID_CROSS_REFERENCE_KEY",
                        format!("invalid cross reference id: {value}"),
                        &[name],
                    );
                }
            }
            if spec.kind == "date"
                && !value.is_null()
                && value.as_str().is_none_or(|text| text.parse::<jiff::civil::Date>().is_err())
            {
                return failure(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    format!("{name}: value not of required type: {value}"),
                    &[name],
                );
            }
            if spec.length > 0
                && spec.kind != "reference"
                && value.as_str().is_some_and(|text| text.chars().count() > spec.length as usize)
            {
                return failure(
                    "STRING_TOO_LONG",
                    format!("{name}: data value too large (max length={})", spec.length),
                    &[name],
                );
            }
        }
        if created {
            let missing: Vec<&str> = specs
                .iter()
                .filter(|spec| spec.required_on_create() && record.get(spec.name).is_none_or(Value::is_null))
                .map(|spec| spec.name)
                .filter(|name| *name != "Crmsync_Id__c" || external.is_none())
                .collect();
            if !missing.is_empty() {
                return failure(
                    "REQUIRED_FIELD_MISSING",
                    format!("Required fields are missing: [{}]", missing.join(", ")),
                    &missing,
                );
            }
        }
        if object == "Order" {
            let activated = |status: Option<&Value>| {
                status.and_then(Value::as_str).is_some_and(|status| ACTIVATED_STATUSES.contains(&status))
            };
            let current = existing
                .as_ref()
                .and_then(|id| inner.tables.get("Order").and_then(|table| table.rows.get(id)))
                .map(|row| activated(row.fields.get("Status")));
            match current {
                // "You can only insert Orders with a Draft status" (error code unconfirmed).
                None if activated(record.get("Status")) => {
                    return failure(
                        "FIELD_INTEGRITY_EXCEPTION",
                        "Choose a valid status: a new order must have a status in the Draft category".into(),
                        &["Status"],
                    );
                }
                // Activating or deactivating: "the Status field is the only field you can update".
                Some(was) if record.contains_key("Status") && activated(record.get("Status")) != was => {
                    if let Some(other) = record.keys().find(|name| name.as_str() != "Status") {
                        return failure(
                            "FIELD_INTEGRITY_EXCEPTION",
                            format!(
                                "Status is the only field you can update when activating an order ({other} was sent too)"
                            ),
                            &[other.as_str()],
                        );
                    }
                }
                Some(true) if record.contains_key("AccountId") => {
                    return failure(
                        "FIELD_INTEGRITY_EXCEPTION",
                        "Account ID can only be updated while the order is in a Draft status".into(),
                        &["AccountId"],
                    );
                }
                _ => {}
            }
        }
        let stamp = inner.tick();
        let prefix = wire::OBJECTS.iter().find(|(_, name, _)| *name == object).map_or("001", |(_, _, prefix)| prefix);
        let id = match existing {
            Some(id) => id,
            None => inner.new_id(prefix),
        };
        let order_number = if created && object == "Order" { Some(format!("{:08}", inner.next_id)) } else { None };
        let Some(table) = inner.tables.get_mut(object) else {
            return failure("INVALID_TYPE", "unknown object".into(), &[]);
        };
        let row = table.rows.entry(id.clone()).or_insert_with(|| Row {
            fields: Map::new(),
            modstamp: stamp,
            deleted: false,
            items: Vec::new(),
        });
        if created {
            row.fields.insert("CreatedDate".into(), json!(stamp_text(stamp)));
            row.fields.insert("OwnerId".into(), json!("005000000000001AAA"));
            if let Some(number) = order_number {
                row.fields.insert("OrderNumber".into(), json!(number));
            }
        }
        for (name, value) in record {
            row.fields.insert(name, value);
        }
        if let Some(external) = &external {
            row.fields.insert("Crmsync_Id__c".into(), json!(external));
        }
        if object == "Opportunity" {
            let stage = row.fields.get("StageName").and_then(Value::as_str).unwrap_or("").to_owned();
            row.fields.insert("IsWon".into(), json!(stage == "Closed Won"));
            row.fields.insert("IsClosed".into(), json!(stage.starts_with("Closed")));
            if row.fields.get("Probability").is_none_or(Value::is_null) {
                row.fields.insert("Probability".into(), json!(stage_probability(&stage)));
            }
        }
        if object == "Order" && created {
            row.fields.insert("TotalAmount".into(), json!(0));
        }
        if object == "Lead" && created {
            row.fields.insert("IsConverted".into(), json!(false));
            if row.fields.get("Status").is_none_or(Value::is_null) {
                // The org's default lead status.
                row.fields.insert("Status".into(), json!("Open - Not Contacted"));
            }
        }
        if multi_currency_default(self.multi_currency, object, created) {
            row.fields.entry("CurrencyIsoCode").or_insert_with(|| json!(self.corporate_currency));
        }
        row.modstamp = stamp;
        row.deleted = false;
        if let Some(external) = external {
            table.by_external.insert(external, id.clone());
        }
        if object == "Order" {
            inner.touched.insert(id.clone());
        }
        CollectionResult { id: Some(id), success: true, errors: Vec::new(), created: Some(created) }
    }
}

/// Whether a new row gets the corporate currency by default (multi-currency orgs' money objects).
fn multi_currency_default(multi_currency: bool, object: &str, created: bool) -> bool {
    multi_currency && created && matches!(object, "Opportunity" | "Order")
}

pub(super) async fn update(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    write_collection(&sim, &headers, &body, SalesforceSim::update_one).await
}

/// An sObject Collections create or update: ≤ 200 records per request (more: 400
/// `EXCEEDED_ID_LIMIT`), each written by `write_one`, per-record results in request order, one
/// API call counted as a write.
async fn write_collection(
    sim: &SalesforceSim,
    headers: &HeaderMap,
    body: &[u8],
    write_one: fn(&SalesforceSim, &mut Inner, Map<String, Value>) -> CollectionResult,
) -> Response {
    if let Err(response) = sim.gate(headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let response = match serde_json::from_slice::<wire::CollectionRequest>(body) {
        Err(error) => rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()),
        Ok(request) if request.records.len() > 200 => rest_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ),
        Ok(request) => {
            let mut inner = sim.lock();
            let results: Vec<CollectionResult> =
                request.records.into_iter().map(|record| write_one(sim, &mut inner, record)).collect();
            inner.commit();
            drop(inner);
            axum::Json(results).into_response()
        }
    };
    sim.with_limit_info(response)
}

impl SalesforceSim {
    /// sObject Collections update: each record names its `id`; it must exist. Setting the external-id
    /// field here is how a record that predates crmsync gets stamped.
    pub(super) fn update_one(&self, inner: &mut Inner, mut record: Map<String, Value>) -> CollectionResult {
        let Some(id) = record.remove("id").and_then(|value| value.as_str().map(str::to_owned)) else {
            return failure("MISSING_ARGUMENT", "Id not specified in an update call".into(), &[]);
        };
        let object = match record
            .remove("attributes")
            .and_then(|attributes| attributes.get("type").and_then(Value::as_str).map(str::to_owned))
            .as_deref()
            .and_then(object_name)
        {
            Some(object) => object,
            None => return failure("INVALID_TYPE", "attributes.type is missing or unknown".into(), &[]),
        };
        let exists = inner.tables.get(object).is_some_and(|table| table.rows.get(&id).is_some_and(|row| !row.deleted));
        if !exists {
            return failure("ENTITY_IS_DELETED", format!("entity is deleted or does not exist: {id}"), &[]);
        }
        let external = record.remove("Crmsync_Id__c").and_then(|value| value.as_str().map(str::to_owned));
        if let Some(external) = &external {
            let taken = inner
                .tables
                .get(object)
                .and_then(|table| table.by_external.get(external))
                .is_some_and(|owner| owner != &id);
            if taken {
                return failure(
                    "DUPLICATE_VALUE",
                    format!("duplicate value found: Crmsync_Id__c duplicates value on record with id: {external}"),
                    &["Crmsync_Id__c"],
                );
            }
            if let Some(table) = inner.tables.get_mut(object) {
                table.by_external.insert(external.clone(), id.clone());
            }
        }
        let result = self.write_one(inner, object, Some(id), external, record);
        CollectionResult { created: None, ..result }
    }
}

/// `POST /composite/sobjects`: sObject Collections create (≤ 200 records, each with
/// `attributes.type`, no `id`), per-record results in order.
pub(super) async fn create(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    write_collection(&sim, &headers, &body, SalesforceSim::create_one).await
}

impl SalesforceSim {
    pub(super) fn create_one(&self, inner: &mut Inner, mut record: Map<String, Value>) -> CollectionResult {
        let object = record
            .remove("attributes")
            .and_then(|attributes| attributes.get("type").and_then(Value::as_str).map(str::to_owned))
            .as_deref()
            .and_then(object_name);
        if record.contains_key("id") || record.contains_key("Id") {
            return failure("INVALID_FIELD", "cannot specify Id in an insert call".into(), &["Id"]);
        }
        match object {
            Some("OrderItem") => self.create_order_item(inner, record),
            Some(object) => {
                let external = record.remove("Crmsync_Id__c").and_then(|value| value.as_str().map(str::to_owned));
                let result = self.write_one(inner, object, None, external, record);
                CollectionResult { created: None, ..result }
            }
            None => failure("INVALID_TYPE", "attributes.type is missing or unknown".into(), &[]),
        }
    }

    /// Adds an order product to its order (read back through the order's `OrderItems`), rolling
    /// the order's `TotalAmount` up. The price book entry must belong to the order's price book.
    fn create_order_item(&self, inner: &mut Inner, record: Map<String, Value>) -> CollectionResult {
        let specs = schema("OrderItem", self.multi_currency);
        for name in record.keys() {
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                return failure(
                    "INVALID_FIELD",
                    format!("No such column '{name}' on sobject of type OrderItem"),
                    &[name],
                );
            };
            if !spec.createable {
                return failure(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    format!("Unable to create/update fields: {name}."),
                    &[name],
                );
            }
        }
        let missing: Vec<&str> = specs
            .iter()
            .filter(|spec| spec.required_on_create() && record.get(spec.name).is_none_or(Value::is_null))
            .map(|spec| spec.name)
            .collect();
        if !missing.is_empty() {
            return failure(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                &missing,
            );
        }
        let decimal = |name: &str| {
            record
                .get(name)
                .filter(|value| value.is_number())
                .and_then(|value| value.to_string().parse::<rust_decimal::Decimal>().ok())
        };
        let (Some(quantity), Some(unit_price)) = (decimal("Quantity"), decimal("UnitPrice")) else {
            return failure(
                "INVALID_TYPE_ON_FIELD_IN_RECORD",
                "Quantity and UnitPrice must be numbers".into(),
                &["Quantity"],
            );
        };
        let text = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (order_id, entry_id) = (text("OrderId"), text("PricebookEntryId"));
        let entry = inner
            .tables
            .get("PricebookEntry")
            .and_then(|table| table.rows.get(&entry_id))
            .filter(|row| !row.deleted)
            .map(|row| row.fields.clone());
        let Some(entry) = entry else {
            return failure(
                "INVALID_CROSS_REFERENCE_KEY",
                format!("invalid cross reference id: {entry_id}"),
                &["PricebookEntryId"],
            );
        };
        let order_book = inner
            .tables
            .get("Order")
            .and_then(|table| table.rows.get(&order_id))
            .filter(|row| !row.deleted)
            .map(|row| row.fields.get("Pricebook2Id").cloned().unwrap_or(Value::Null));
        let Some(order_book) = order_book else {
            return failure(
                "INVALID_CROSS_REFERENCE_KEY",
                format!("invalid cross reference id: {order_id}"),
                &["OrderId"],
            );
        };
        if order_book.is_null() || entry.get("Pricebook2Id") != Some(&order_book) {
            // The message Salesforce gives (FIELD_INTEGRITY_EXCEPTION on PricebookEntryId).
            return failure(
                "FIELD_INTEGRITY_EXCEPTION",
                "Order Products must have a Price Book Entry that belongs to the Price Book related to the parent Order.: Price Book Entry ID".into(),
                &["PricebookEntryId"],
            );
        }
        let item_id = inner.new_id("802");
        let stamp = inner.tick();
        let mut item = Map::new();
        item.insert(
            "attributes".into(),
            json!({"type": "OrderItem", "url": format!("/services/data/{}/sobjects/OrderItem/{item_id}", super::API_VERSION)}),
        );
        item.insert("Id".into(), json!(item_id));
        item.insert("PricebookEntryId".into(), json!(entry_id));
        item.insert("Quantity".into(), decimal_json(quantity));
        item.insert("UnitPrice".into(), decimal_json(unit_price));
        item.insert("TotalPrice".into(), decimal_json(quantity * unit_price));
        item.insert(
            "Product2".into(),
            json!({"attributes": {"type": "Product2"}, "Name": entry.get("Name"), "ProductCode": entry.get("ProductCode")}),
        );
        let Some(order) = inner.tables.get_mut("Order").and_then(|table| table.rows.get_mut(&order_id)) else {
            return failure(
                "INVALID_CROSS_REFERENCE_KEY",
                format!("invalid cross reference id: {order_id}"),
                &["OrderId"],
            );
        };
        order.items.push(item);
        let total: rust_decimal::Decimal = order
            .items
            .iter()
            .filter_map(|item| {
                item.get("TotalPrice").and_then(|value| value.to_string().parse::<rust_decimal::Decimal>().ok())
            })
            .sum();
        order.fields.insert("TotalAmount".into(), decimal_json(total));
        // The roll-up changes the order: it is read again by incremental queries.
        order.modstamp = stamp;
        inner.touched.insert(order_id);
        CollectionResult { id: Some(item_id), success: true, errors: Vec::new(), created: None }
    }
}

/// Deletes an order product (`802…`), which lives in its order's row: refused while the order is
/// activated (Salesforce Help, "Editing and Deletion Considerations for Order Products": after an
/// order is activated its order products cannot be deleted). `None`: not an order product.
pub(super) fn delete_order_item(inner: &mut Inner, id: &str, stamp: i64) -> Option<CollectionResult> {
    let (order_id, order) = inner.tables.get_mut("Order")?.rows.iter_mut().find(|(_, row)| {
        !row.deleted && row.items.iter().any(|item| item.get("Id").and_then(Value::as_str) == Some(id))
    })?;
    let order_id = order_id.clone();
    let activated =
        order.fields.get("Status").and_then(Value::as_str).is_some_and(|status| ACTIVATED_STATUSES.contains(&status));
    if activated {
        // The error code is not documented; the message is the Help article's rule.
        return Some(failure(
            "FIELD_INTEGRITY_EXCEPTION",
            "You can't delete order products of an activated order: move the order back to Draft first".into(),
            &[],
        ));
    }
    order.items.retain(|item| item.get("Id").and_then(Value::as_str) != Some(id));
    let total: rust_decimal::Decimal = order
        .items
        .iter()
        .filter_map(|item| {
            item.get("TotalPrice").and_then(|value| value.to_string().parse::<rust_decimal::Decimal>().ok())
        })
        .sum();
    order.fields.insert("TotalAmount".into(), decimal_json(total));
    order.modstamp = stamp;
    inner.touched.insert(order_id);
    Some(CollectionResult { id: Some(id.to_owned()), success: true, errors: Vec::new(), created: None })
}

#[derive(serde::Deserialize)]
pub(super) struct DeleteParams {
    ids: Option<String>,
    #[serde(rename = "allOrNone")]
    all_or_none: Option<bool>,
}

pub(super) async fn delete_records(
    State(sim): Shared,
    headers: HeaderMap,
    Query(params): Query<DeleteParams>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let ids: Vec<String> =
        params.ids.unwrap_or_default().split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect();
    if ids.len() > 200 || params.all_or_none.unwrap_or(false) && ids.is_empty() {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ));
    }
    let mut inner = sim.lock();
    let results: Vec<CollectionResult> = ids.into_iter().map(|id| delete_one(&mut inner, id)).collect();
    inner.commit();
    drop(inner);
    sim.with_limit_info(axum::Json(results).into_response())
}

/// Deletes one record by id (an order product from its order), or says it is gone.
pub(super) fn delete_one(inner: &mut Inner, id: String) -> CollectionResult {
    let stamp = inner.tick();
    if let Some(result) = delete_order_item(inner, &id, stamp) {
        return result;
    }
    let found = inner.tables.iter_mut().find_map(|(object, table)| Some((*object, table.rows.get_mut(&id)?)));
    match found {
        Some((object, row)) if !row.deleted => {
            row.deleted = true;
            row.modstamp = stamp;
            if object == "Order" {
                inner.touched.insert(id.clone());
            }
            CollectionResult { id: Some(id), success: true, errors: Vec::new(), created: None }
        }
        _ => CollectionResult {
            id: Some(id),
            success: false,
            errors: vec![CollectionError {
                status_code: "ENTITY_IS_DELETED".into(),
                message: "entity is deleted".into(),
                fields: Vec::new(),
            }],
            created: None,
        },
    }
}
