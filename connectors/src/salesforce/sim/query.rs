//! REST `query` / `queryAll` with `nextRecordsUrl` locators and `batchSize`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::soql::parse_soql;
use super::{API_VERSION, Inner, Locator, Row, SalesforceSim, Shared, object_name, rest_error, stamp_text, wire};
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
    if let Some(object) = soql.strip_prefix("SELECT COUNT() FROM ").and_then(object_name) {
        let inner = sim.lock();
        let count =
            inner.tables.get(object).map_or(0, |table| table.rows.values().filter(|row| all || !row.deleted).count());
        drop(inner);
        return sim
            .with_limit_info(axum::Json(json!({"totalSize": count, "done": true, "records": []})).into_response());
    }
    let parsed = match parse_soql(&soql) {
        Ok(parsed) => parsed,
        Err(message) => return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message)),
    };
    let known: HashSet<String> = sim.describe_fields(parsed.object).into_iter().map(|field| field.name).collect();
    if let Some(unknown) = parsed.fields.iter().find(|field| !known.contains(field.as_str())) {
        let message = format!(
            "\n{soql}\nERROR at Row:1:Column:8\nNo such column '{unknown}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.",
            parsed.object
        );
        return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "INVALID_FIELD", &message));
    }
    let mut inner = sim.lock();
    let Some(table) = inner.tables.get(parsed.object) else {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            "sObject type is not supported",
        ));
    };
    let mut ids: Vec<(i64, String)> = table
        .rows
        .iter()
        .filter(|(_, row)| all || !row.deleted)
        .filter(|(id, row)| {
            parsed.since.is_none_or(|since| row.modstamp >= since)
                && parsed.ids.as_ref().is_none_or(|wanted| wanted.contains(*id))
        })
        .filter(|(_, row)| parsed.deleted.is_none_or(|deleted| row.deleted == deleted))
        .map(|(id, row)| (row.modstamp, id.clone()))
        .collect();
    ids.sort();
    let locator_id = format!("01g{:015}", inner.next_id);
    inner.next_id += 1;
    let locator = Locator {
        object: parsed.object,
        ids: ids.into_iter().map(|(_, id)| id).collect(),
        fields: parsed.fields.clone(),
        items: parsed.items,
        all,
        batch: batch_size(&headers),
    };
    let response = page(&sim, &mut inner, locator_id, locator, 0);
    drop(inner);
    sim.with_limit_info(response)
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
        let value = match field.as_str() {
            "Id" => json!(id),
            "SystemModstamp" => json!(stamp_text(row.modstamp)),
            "IsDeleted" => json!(row.deleted),
            "Stage__c" if sim.faults.drift_renamed_field() => {
                row.fields.get("StageName").cloned().unwrap_or(Value::Null)
            }
            "Region__c" => json!("EMEA"),
            name => row.fields.get(name).cloned().unwrap_or(Value::Null),
        };
        record.insert(field.clone(), value);
    }
    if items {
        let value = if row.items.is_empty() {
            Value::Null
        } else {
            json!({"totalSize": row.items.len(), "done": true, "records": row.items})
        };
        record.insert("OrderItems".into(), value);
    }
    record
}
