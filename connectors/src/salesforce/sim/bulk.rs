//! Bulk API 2.0 query jobs: create, poll, CSV results paged with `Sforce-Locator`.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::query::render;
use super::query::{select_ids, unknown_field};
use super::soql::parse_soql;
use super::{BulkJobState, Shared, rest_error, wire};
use crate::sim::truncate;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobRequest {
    operation: String,
    query: String,
    content_type: Option<String>,
}

fn job_body(id: &str, job: &BulkJobState) -> Value {
    json!({
        "id": id,
        "operation": job.operation,
        "object": job.object,
        "state": if job.complete { "JobComplete" } else { "UploadComplete" },
        "contentType": "CSV",
        "apiVersion": 62.0,
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
        "numberRecordsProcessed": if job.complete { job.ids.len() } else { 0 },
    })
}

pub(super) async fn create_job(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let request: JobRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()));
        }
    };
    if request.content_type.as_deref().is_some_and(|kind| kind != "CSV")
        || !matches!(request.operation.as_str(), "query" | "queryAll")
    {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            "operation must be query or queryAll with contentType CSV",
        ));
    }
    // Bulk API 2.0 queries take no subqueries, COUNT(), OFFSET or compound fields
    // (developer.salesforce.com/docs/platform/api-asynch/guide/queries.md).
    let parsed = match parse_soql(&request.query) {
        Ok(parsed) if parsed.items || parsed.count || parsed.offset > 0 => {
            return sim.with_limit_info(rest_error(
                StatusCode::BAD_REQUEST,
                "INVALIDJOB",
                "Bulk API 2.0 queries do not support subqueries, COUNT() or OFFSET",
            ));
        }
        Ok(parsed) => parsed,
        Err(message) => return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message)),
    };
    if let Some(response) = unknown_field(&sim, &request.query, &parsed) {
        return sim.with_limit_info(response);
    }
    let specs = sim.describe_fields(parsed.object);
    if let Some(compound) = parsed
        .fields
        .iter()
        .find(|field| specs.iter().any(|spec| spec.name == field.as_str() && spec.kind == "address"))
    {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            &format!("Bulk API 2.0 queries cannot select the compound field {compound}"),
        ));
    }
    let all = request.operation == "queryAll";
    let mut inner = sim.lock();
    let ids = select_ids(&sim, &inner, &parsed, all);
    let id = format!("750{:012}AAA", inner.next_id);
    inner.next_id += 1;
    inner.jobs_created += 1;
    let job = BulkJobState {
        object: parsed.object,
        ids,
        fields: parsed.fields,
        operation: request.operation,
        complete: false,
    };
    let body = job_body(&id, &job);
    inner.jobs.insert(id, job);
    drop(inner);
    sim.with_limit_info(axum::Json(body).into_response())
}

pub(super) async fn job_info(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, job)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.lock();
    let response = match inner.jobs.get_mut(&job) {
        // The simulated job finishes by the first poll.
        Some(state) => {
            state.complete = true;
            axum::Json(job_body(&job, state)).into_response()
        }
        None => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    };
    drop(inner);
    sim.with_limit_info(response)
}

/// Bulk API 2.0 "Delete a Query Job" (`DELETE /jobs/query/{id}`): 204 No Content; only a job in
/// a terminal state (JobComplete, Aborted, Failed) can be deleted, else 400 `API_ERROR`
/// (developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_bulk_v2/query_delete_job.htm).
pub(super) async fn delete_job(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, job)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.lock();
    let response = match inner.jobs.get(&job).map(|state| state.complete) {
        Some(true) => {
            inner.jobs.remove(&job);
            StatusCode::NO_CONTENT.into_response()
        }
        Some(false) => rest_error(
            StatusCode::BAD_REQUEST,
            "API_ERROR",
            "Error encountered when deleting the job because the job is not terminated",
        ),
        None => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    };
    drop(inner);
    sim.with_limit_info(response)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResultParams {
    locator: Option<String>,
    max_records: Option<usize>,
}

pub(super) async fn job_results(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, job)): Path<(String, String)>,
    Query(params): Query<ResultParams>,
) -> Response {
    use base64::Engine;
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let inner = sim.lock();
    let Some(state) = inner.jobs.get(&job) else {
        drop(inner);
        return sim.with_limit_info(rest_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        ));
    };
    if !state.complete {
        drop(inner);
        return sim.with_limit_info(rest_error(
            StatusCode::PRECONDITION_FAILED,
            "JOB_NOT_COMPLETE",
            &format!("can only download query results of successfully completed bulk job {job}"),
        ));
    }
    let offset = params
        .locator
        .and_then(|locator| base64::engine::general_purpose::STANDARD.decode(locator).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(0);
    let max = params.max_records.unwrap_or(50_000).clamp(1, 50_000);
    let end = (offset + max).min(state.ids.len());
    let mut csv = state.fields.iter().map(|field| wire::csv_field(field)).collect::<Vec<_>>().join(",");
    csv.push('\n');
    let table = inner.tables.get(state.object);
    for id in state.ids.get(offset..end).unwrap_or_default() {
        let Some(row) = table.and_then(|table| table.rows.get(id)) else { continue };
        let rendered = render(&sim, state.object, id, row, &state.fields, false);
        let cells: Vec<String> = state
            .fields
            .iter()
            .map(|field| match rendered.get(field) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => wire::csv_field(text),
                Some(other) => other.to_string(),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    let locator = if end < state.ids.len() {
        base64::engine::general_purpose::STANDARD.encode(end.to_string())
    } else {
        "null".to_owned()
    };
    let count = end.saturating_sub(offset);
    drop(inner);
    let mut bytes = csv.into_bytes();
    if sim.faults.take_truncation() {
        bytes = truncate(&bytes);
    }
    let mut response = ([(header::CONTENT_TYPE, "text/csv")], bytes).into_response();
    if let Ok(value) = HeaderValue::from_str(&locator) {
        response.headers_mut().insert("sforce-locator", value);
    }
    if let Ok(value) = HeaderValue::from_str(&count.to_string()) {
        response.headers_mut().insert("sforce-numberofrecords", value);
    }
    sim.with_limit_info(response)
}
