//! The write endpoints: insert/update/upsert with per-record results, and deletes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::{Row, Shared, ZohoSim, error, zoho_time};
use crate::canonical::decimal_json;
use crate::zoho::wire;

/// `PUT /crm/{v}/{Module}`: updates records by their `id`.
pub(super) async fn update(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write(sim, headers, &version, module, body, Kind::Update).await
}

/// `POST /crm/{v}/{Module}`: inserts records; a record whose unique field (`Crmsync_Id`) another
/// record holds is refused with `DUPLICATE_DATA` naming that record.
pub(super) async fn insert(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write(sim, headers, &version, module, body, Kind::Insert).await
}

/// `POST /crm/{v}/{Module}/upsert`: updates the record `duplicate_check_fields` match, else inserts.
pub(super) async fn upsert(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write(sim, headers, &version, module, body, Kind::Upsert).await
}

/// The three write endpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Update,
    Upsert,
}

async fn write(
    sim: Arc<ZohoSim>,
    headers: HeaderMap,
    version: &str,
    module: String,
    body: Bytes,
    kind: Kind,
) -> Response {
    let module = match sim.admit(&headers, version, &sim.counters.write, &module).await {
        Ok(module) => module,
        Err(response) => return response,
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            return sim.with_credits(error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "body is not valid JSON",
                json!({}),
            ));
        }
    };
    let Some(records) = request.get("data").and_then(Value::as_array) else {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({"param_name": "data"}),
        ));
    };
    if records.len() > wire::WRITE_LIMIT {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds 100",
            json!({"limit": 100}),
        ));
    }
    let checks: Vec<String> = request
        .get("duplicate_check_fields")
        .and_then(Value::as_array)
        .map(|fields| fields.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let results: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(index, record)| sim.upsert_one(module, index, record, &checks, kind))
        .collect();
    let successes = results.iter().filter(|result| result["status"] == "success").count();
    let inserted = results.iter().filter(|result| result["action"] == "insert").count();
    let status = if successes == 0 {
        StatusCode::BAD_REQUEST
    } else if successes < results.len() {
        StatusCode::MULTI_STATUS
    } else if inserted == results.len() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    sim.with_credits((status, axum::Json(json!({"data": results}))).into_response())
}

fn record_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

impl ZohoSim {
    fn upsert_one(&self, module: &'static str, index: usize, record: &Value, checks: &[String], kind: Kind) -> Value {
        let by_id = kind == Kind::Update;
        let Some(record) = record.as_object() else {
            return record_error("INVALID_DATA", "invalid data", json!({"json_path": format!("$.data[{index}]")}));
        };
        let specs = self.schema(module);
        let mut inner = self.lock();
        let target = if by_id {
            let id = record.get("id").and_then(Value::as_str).unwrap_or_default();
            if inner.modules.get(module).is_none_or(|rows| rows.get(id).is_none_or(|row| row.deleted.is_some())) {
                return record_error(
                    "INVALID_DATA",
                    "the id given seems to be invalid",
                    json!({"api_name": "id", "json_path": format!("$.data[{index}].id")}),
                );
            }
            Some(id.to_owned())
        } else {
            None
        };
        let mut record = record.clone();
        if by_id {
            record.remove("id");
        }
        for (name, value) in &record {
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                return record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                );
            };
            if !spec.writable {
                return record_error("INVALID_DATA", "the field is read only", json!({"api_name": name}));
            }
            if !spec.picklist.is_empty() && !value.as_str().is_some_and(|text| spec.picklist.contains(&text)) {
                return record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"expected_data_type": "picklist", "api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                );
            }
            if let Some(target) = spec.lookup {
                let id = value.get("id").and_then(Value::as_str).unwrap_or_default();
                if inner.modules.get(target).is_none_or(|rows| rows.get(id).is_none_or(|row| row.deleted.is_some())) {
                    return record_error(
                        "INVALID_DATA",
                        "invalid data",
                        json!({"expected_data_type": "lookup", "api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                    );
                }
            }
            if spec.kind == "date" && value.as_str().is_none_or(|text| text.parse::<jiff::civil::Date>().is_err()) {
                return record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"expected_data_type": "date", "api_name": name}),
                );
            }
            if spec.kind == "subform" {
                // Rows without an id are new (product and quantity required); rows with an id change or,
                // with `_delete`, remove that row (zoho/crm-oas v8.0 updateRecords operation.md).
                let valid = value.as_array().is_some_and(|items| {
                    items.iter().all(|item| {
                        let product =
                            item.get("Product_Name").and_then(|product| product.get("id")).and_then(Value::as_str);
                        let known = |product: &str| inner.products.iter().any(|(id, _, _)| id == product);
                        match item.get("id") {
                            Some(id) => id.is_string() && product.is_none_or(known),
                            None => product.is_some_and(known) && item.get("Quantity").is_some_and(Value::is_number),
                        }
                    })
                });
                if !valid {
                    return record_error(
                        "INVALID_DATA",
                        "invalid data",
                        json!({"api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                    );
                }
            }
        }
        let key = record.get("Crmsync_Id").and_then(Value::as_str).map(str::to_owned);
        let holder = key.as_ref().and_then(|key| {
            inner
                .modules
                .get(module)?
                .iter()
                .find(|(_, row)| {
                    row.deleted.is_none()
                        && row
                            .fields
                            .get("Crmsync_Id")
                            .and_then(Value::as_str)
                            .is_some_and(|held| held.eq_ignore_ascii_case(key))
                })
                .map(|(id, _)| id.clone())
        });
        let existing = match kind {
            Kind::Update => target,
            Kind::Upsert if checks.iter().any(|check| check == "Crmsync_Id") => holder,
            Kind::Upsert => None,
            Kind::Insert => {
                // `Crmsync_Id` is a unique field (case-insensitive): an insert that repeats a held
                // value is refused in the documented shape (zoho/crm-oas v8.0 createRecords
                // response-400-duplicatedataerror.md), nothing written.
                if let Some(id) = holder {
                    return record_error(
                        "DUPLICATE_DATA",
                        "duplicate data",
                        json!({
                            "api_name": "Crmsync_Id",
                            "duplicate_record": {"id": id},
                            "json_path": format!("$.data[{index}].Crmsync_Id"),
                            "id": id,
                            "more_records": false,
                        }),
                    );
                }
                None
            }
        };
        if existing.is_none()
            && let Some(missing) = specs.iter().find(|spec| {
                spec.required
                    && record
                        .get(spec.name)
                        .is_none_or(|value| value.is_null() || value.as_array().is_some_and(Vec::is_empty))
            })
        {
            return record_error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                json!({"api_name": missing.name, "json_path": format!("$.data[{index}].{}", missing.name)}),
            );
        }
        let stamp = inner.tick();
        let (id, action) = match existing {
            Some(id) => (id, "update"),
            None => (inner.new_id(), "insert"),
        };
        let products = inner.products.clone();
        let subforms: Vec<&str> = specs.iter().filter(|spec| spec.kind == "subform").map(|spec| spec.name).collect();
        for name in subforms {
            let Some(incoming) = record.get(name).and_then(Value::as_array).cloned() else { continue };
            let current = inner
                .modules
                .get(module)
                .and_then(|rows| rows.get(&id))
                .and_then(|row| row.fields.get(name))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match merge_subform(current, incoming, || inner.new_id()) {
                Ok(merged) => {
                    record.insert(name.to_owned(), Value::Array(merged));
                }
                Err(unknown) => {
                    return record_error(
                        "INVALID_DATA",
                        "the id given seems to be invalid",
                        json!({"api_name": "id", "json_path": format!("$.data[{index}].{name}"), "id": unknown}),
                    );
                }
            }
        }
        let Some(rows) = inner.modules.get_mut(module) else {
            return record_error("INVALID_MODULE", "invalid module", json!({}));
        };
        let row = rows.entry(id.clone()).or_insert_with(|| Row { fields: Map::new(), modified: stamp, deleted: None });
        if action == "insert" {
            row.fields.insert("Created_Time".into(), json!(zoho_time(stamp)));
            if module == "Sales_Orders" && !record.contains_key("Status") {
                row.fields.insert("Status".into(), json!("Created"));
            }
        }
        for (name, value) in record {
            row.fields.insert(name.clone(), value.clone());
        }
        if module == "Sales_Orders"
            && let Some(items) = row.fields.get_mut("Ordered_Items").and_then(Value::as_array_mut)
        {
            let mut total = Decimal::ZERO;
            for item in items.iter_mut() {
                let quantity: Decimal = item
                    .get("Quantity")
                    .map(|value| value.to_string())
                    .and_then(|text| text.parse().ok())
                    .unwrap_or_default();
                let price: Decimal = item
                    .get("List_Price")
                    .map(|value| value.to_string())
                    .and_then(|text| text.parse().ok())
                    .unwrap_or_default();
                let product_id = item
                    .get("Product_Name")
                    .and_then(|product| product.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some((_, name, code)) = products.iter().find(|(id, _, _)| *id == product_id) {
                    item["Product_Name"] = json!({"id": product_id, "name": name});
                    item["Product_Code"] = json!(code);
                }
                item["Total"] = decimal_json(quantity * price);
                total += quantity * price;
            }
            row.fields.insert("Grand_Total".into(), decimal_json(total));
        }
        row.modified = stamp;
        json!({
            "code": "SUCCESS",
            "duplicate_field": if action == "update" { json!("Crmsync_Id") } else { Value::Null },
            "action": action,
            "details": {"id": id, "Modified_Time": zoho_time(stamp), "Created_Time": row.fields.get("Created_Time")},
            "message": if action == "update" { "record updated" } else { "record added" },
            "status": "success",
        })
    }
}

pub(super) async fn delete_records(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let module = match sim.admit(&headers, &version, &sim.counters.write, &module).await {
        Ok(module) => module,
        Err(response) => return response,
    };
    let ids: Vec<String> = query
        .get("ids")
        .map(|ids| ids.split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if ids.is_empty() || ids.len() > wire::WRITE_LIMIT {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "give 1 to 100 ids",
            json!({"param_name": "ids", "limit": 100}),
        ));
    }
    let mut inner = sim.lock();
    let stamp = inner.tick();
    let results: Vec<Value> = ids
        .iter()
        .map(|id| {
            match inner.modules.get_mut(module).and_then(|rows| rows.get_mut(id)).filter(|row| row.deleted.is_none()) {
                Some(row) => {
                    row.deleted = Some(stamp);
                    json!({"code": "SUCCESS", "details": {"id": id}, "message": "record deleted", "status": "success"})
                }
                None => record_error("INVALID_DATA", "the related id given seems to be invalid", json!({"id": id})),
            }
        })
        .collect();
    drop(inner);
    sim.with_credits(axum::Json(json!({"data": results})).into_response())
}

/// Applies a subform write to a record's rows as Zoho documents it (zoho/crm-oas v8.0 updateRecords
/// operation.md): a row without an id is appended, a row with an id updates that row, a row with an id
/// and `_delete` removes it, and an empty array removes every row. Returns an unknown row id as an error.
fn merge_subform(
    mut current: Vec<Value>,
    incoming: Vec<Value>,
    mut new_id: impl FnMut() -> String,
) -> Result<Vec<Value>, String> {
    if incoming.is_empty() {
        return Ok(Vec::new());
    }
    for item in incoming {
        let Some(map) = item.as_object() else { continue };
        match map.get("id").and_then(Value::as_str) {
            Some(id) => {
                let Some(position) = current.iter().position(|row| row.get("id").and_then(Value::as_str) == Some(id))
                else {
                    return Err(id.to_owned());
                };
                if map.contains_key("_delete") {
                    current.remove(position);
                } else if let Some(row) = current[position].as_object_mut() {
                    for (key, value) in map {
                        row.insert(key.clone(), value.clone());
                    }
                }
            }
            None => {
                let mut row = map.clone();
                row.insert("id".into(), json!(new_id()));
                current.push(Value::Object(row));
            }
        }
    }
    Ok(current)
}
