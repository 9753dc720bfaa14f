//! REST `query` / `queryAll` with `nextRecordsUrl` locators and `batchSize`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::soql::{Soql, order_values, parse_soql};
use super::{API_VERSION, Inner, Locator, Row, SalesforceSim, Shared, rest_error, stamp_text, wire};
use crate::sim::truncate;

#[derive(serde::Deserialize)]
pub(super) struct QueryParams {
    q: Option<String>,
}

pub(super) async fn query(state: Shared, headers: HeaderMap, Query(params): Query<QueryParams>) -> Response {
    run_query(state, headers, params, false).await
}

pub(super) async fn query_all(state: Shared, headers: HeaderMap, Query(params): Query<QueryParams>) -> Response {
    run_query(state, headers, params, true).await
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').find_map(|part| part.trim().strip_prefix("batchSize=")))
        .and_then(|size| size.trim().parse::<usize>().ok())
        .map_or(2000, |size| size.clamp(200, 2000))
}

async fn run_query(State(sim): Shared, headers: HeaderMap, params: QueryParams, all: bool) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let Some(soql) = params.q else {
        return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "Missing the q parameter"));
    };
    sim.lock().queries.push(soql.clone());
    // The org's corporate currency (Organization object; one row).
    if soql == "SELECT DefaultCurrencyIsoCode FROM Organization" {
        let id = super::ORGANIZATION_ID;
        let row = json!({
            "attributes": {"type": "Organization", "url": format!("/services/data/{API_VERSION}/sobjects/Organization/{id}")},
            "DefaultCurrencyIsoCode": sim.corporate_currency,
        });
        return sim
            .with_limit_info(axum::Json(json!({"totalSize": 1, "done": true, "records": [row]})).into_response());
    }
    let parsed = match parse_soql(&soql) {
        Ok(parsed) => parsed,
        Err(message) => return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message)),
    };
    if let Some(response) = unknown_field(&sim, &soql, &parsed) {
        return sim.with_limit_info(response);
    }
    let mut inner = sim.lock();
    let ids = select_ids(&sim, &inner, &parsed, all);
    if parsed.count {
        drop(inner);
        return sim
            .with_limit_info(axum::Json(json!({"totalSize": ids.len(), "done": true, "records": []})).into_response());
    }
    let locator_id = format!("01g{:015}", inner.next_id);
    inner.next_id += 1;
    let locator = Locator {
        object: parsed.object,
        ids,
        fields: parsed.fields.clone(),
        items: parsed.items,
        all,
        batch: batch_size(&headers),
    };
    let response = page(&sim, &mut inner, locator_id, locator, 0);
    drop(inner);
    sim.with_limit_info(response)
}

/// The refusal of a query naming a field the object does not have (`INVALID_FIELD`, as Salesforce
/// words it), if it does.
pub(super) fn unknown_field(sim: &SalesforceSim, soql: &str, parsed: &Soql) -> Option<Response> {
    let known: HashSet<String> =
        sim.describe_fields(parsed.object).into_iter().map(|field| field.name.to_owned()).collect();
    match parsed.referenced_fields().into_iter().find(|field| !known.contains(*field)) {
        Some(unknown) => {
            let message = format!(
                "\n{soql}\nERROR at Row:1:Column:8\nNo such column '{unknown}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.",
                parsed.object
            );
            Some(rest_error(StatusCode::BAD_REQUEST, "INVALID_FIELD", &message))
        }
        None => None,
    }
}

/// The ids of the rows a query selects, in its order: its ORDER BY, else `SystemModstamp, Id`
/// (Salesforce promises no order without ORDER BY; this one keeps pages stable), after OFFSET and
/// LIMIT. `all`: `queryAll` (deleted rows too).
pub(super) fn select_ids(sim: &SalesforceSim, inner: &Inner, parsed: &Soql, all: bool) -> Vec<String> {
    let Some(table) = inner.tables.get(parsed.object) else { return Vec::new() };
    let mut rows: Vec<(&String, &Row)> = table
        .rows
        .iter()
        .filter(|(_, row)| all || !row.deleted)
        .filter(|(id, row)| {
            parsed
                .condition
                .as_ref()
                .is_none_or(|condition| condition.matches(&|field| field_value(sim, id, row, field)))
        })
        .collect();
    rows.sort_by(|(left_id, left), (right_id, right)| {
        for (field, descending) in &parsed.order {
            let ordering =
                order_values(&field_value(sim, left_id, left, field), &field_value(sim, right_id, right, field));
            let ordering = if *descending { ordering.reverse() } else { ordering };
            if ordering.is_ne() {
                return ordering;
            }
        }
        (left.modstamp, left_id).cmp(&(right.modstamp, right_id))
    });
    rows.into_iter().skip(parsed.offset).take(parsed.limit.unwrap_or(usize::MAX)).map(|(id, _)| id.clone()).collect()
}

/// A field of a row as the API renders it.
pub(super) fn field_value(sim: &SalesforceSim, id: &str, row: &Row, field: &str) -> Value {
    match field {
        "Id" => json!(id),
        "SystemModstamp" => json!(stamp_text(row.modstamp)),
        "IsDeleted" => json!(row.deleted),
        "Stage__c" if sim.faults.drift_renamed_field() => row.fields.get("StageName").cloned().unwrap_or(Value::Null),
        "Region__c" => json!("EMEA"),
        // Only Order describes StatusCode: the category of its Status.
        "StatusCode" => row
            .fields
            .get("Status")
            .and_then(Value::as_str)
            .map_or(Value::Null, |status| json!(super::schema::status_code(status))),
        // The compound address reads as an object of its components.
        "BillingAddress" => json!({
            "city": null, "country": row.fields.get("BillingCountry").cloned().unwrap_or(Value::Null),
            "geocodeAccuracy": null, "latitude": null, "longitude": null, "postalCode": null,
            "state": null, "street": null,
        }),
        name => row.fields.get(name).cloned().unwrap_or(Value::Null),
    }
}

pub(super) async fn query_more(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, locator)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let Some((locator_id, offset)) =
        locator.rsplit_once('-').and_then(|(id, offset)| Some((id.to_owned(), offset.parse::<usize>().ok()?)))
    else {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        ));
    };
    let mut inner = sim.lock();
    let Some(found) = inner.locators.remove(&locator_id) else {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        ));
    };
    let response = page(&sim, &mut inner, locator_id, found, offset);
    drop(inner);
    sim.with_limit_info(response)
}

fn page(sim: &SalesforceSim, inner: &mut Inner, locator_id: String, locator: Locator, offset: usize) -> Response {
    let end = (offset + locator.batch).min(locator.ids.len());
    let Some(table) = inner.tables.get(locator.object) else {
        return rest_error(StatusCode::BAD_REQUEST, "INVALID_TYPE", "sObject type is not supported");
    };
    let mut records = Vec::with_capacity(end.saturating_sub(offset));
    for id in locator.ids.get(offset..end).unwrap_or_default() {
        let Some(row) = table.rows.get(id) else { continue };
        let mut record = render(sim, locator.object, id, row, &locator.fields, locator.items);
        sim.faults.drift(&mut record);
        if matches!(locator.object, "Account" | "Lead" | "Opportunity" | "Order") {
            sim.faults.garble(id, &mut record);
        }
        records.push(record);
    }
    let done = end >= locator.ids.len();
    let endpoint = if locator.all { "queryAll" } else { "query" };
    let next = (!done).then(|| format!("/services/data/{API_VERSION}/{endpoint}/{locator_id}-{end}"));
    let body = wire::QueryResponse { total_size: locator.ids.len() as u64, done, next_records_url: next, records };
    if !done {
        inner.locators.insert(locator_id, locator);
    }
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if sim.faults.take_truncation() {
        bytes = truncate(&bytes);
    }
    ([(header::CONTENT_TYPE, "application/json;charset=UTF-8")], bytes).into_response()
}

pub(super) fn render(
    sim: &SalesforceSim,
    object: &str,
    id: &str,
    row: &Row,
    fields: &[String],
    items: bool,
) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert(
        "attributes".into(),
        json!({"type": object, "url": format!("/services/data/{API_VERSION}/sobjects/{object}/{id}")}),
    );
    for field in fields {
        let value = field_value(sim, id, row, field);
        record.insert(field.clone(), value);
    }
    if items {
        let value = if row.items.is_empty() {
            Value::Null
        } else {
            // Only the subquery's fields (crmsync's: Id, Quantity, UnitPrice, TotalPrice, Product2).
            let records: Vec<Map<String, Value>> = row
                .items
                .iter()
                .map(|item| {
                    item.iter()
                        .filter(|(name, _)| name.as_str() != "PricebookEntryId")
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect()
                })
                .collect();
            json!({"totalSize": records.len(), "done": true, "records": records})
        };
        record.insert("OrderItems".into(), value);
    }
    record
}
