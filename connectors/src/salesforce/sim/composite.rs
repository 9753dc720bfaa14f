//! The Composite resource (`POST /services/data/vXX.X/composite`): up to 25 subrequests, at most 5
//! of them sObject Collections, run in order under one lock, so no other request sees a state
//! between two of them. `@{referenceId.field}` (and `[n]` indexes) in a subrequest's `url` or body
//! is replaced by that field of an earlier response. With `allOrNone: true` a failing subrequest
//! rolls every write of the request back: it keeps its own result and every other subrequest
//! answers 400 `PROCESSING_HALTED`; the top-level status is 200 either way. With `allOrNone: false`
//! the rest run, except those referring to a failed one. Subrequests the simulator serves: sObject
//! create (`POST sobjects/{O}`), update and delete by id, upsert by external id (`PATCH
//! sobjects/{O}/{field}/{value}`), and sObject Collections create, update, upsert and delete.
//! Not modelled (documented, but crmsync sends none): query subrequests, `collateSubrequests`
//! reordering, per-subrequest `httpHeaders`. Error codes the documentation does not give (too many
//! subrequests, a reference that does not resolve) are the simulator's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::collections::delete_one;
use super::wire::{self, CollectionRequest, CollectionResult, CompositeSubresult};
use super::{Inner, SalesforceSim, Shared, Table, object_name, rest_error};

/// The message Salesforce gives subrequests rolled back because another one failed.
const HALTED_MESSAGE: &str = "The transaction was rolled back since another operation in the same transaction failed.";

pub(super) async fn composite(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let response = match serde_json::from_slice::<wire::CompositeRequest>(&body) {
        Err(error) => rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()),
        Ok(request) => sim.run_composite(request),
    };
    sim.with_limit_info(response)
}

fn halted(reference_id: &str) -> CompositeSubresult {
    CompositeSubresult {
        body: json!([{"errorCode": wire::PROCESSING_HALTED, "message": HALTED_MESSAGE}]),
        http_headers: Map::new(),
        http_status_code: 400,
        reference_id: reference_id.to_owned(),
    }
}

/// A subrequest's resource: the path after `/services/data/vXX.X/`, split, and its query.
fn resource(url: &str) -> Option<(Vec<String>, HashMap<String, String>)> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let rest = path.strip_prefix("/services/data/")?;
    let (_version, rest) = rest.split_once('/')?;
    let segments = rest.trim_end_matches('/').split('/').map(str::to_owned).collect();
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    Some((segments, query))
}

fn is_collection(url: &str) -> bool {
    resource(url).is_some_and(|(segments, _)| segments.first().is_some_and(|first| first == "composite"))
}

/// Replaces every `@{ref.field[n]…}` in `text` from the responses so far; `None` when one does not
/// resolve (an unknown reference, or one to a subrequest that failed).
fn resolve_text(text: &str, responses: &HashMap<String, Value>) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        out.push_str(rest.get(..start)?);
        let after = rest.get(start + 2..)?;
        let end = after.find('}')?;
        let expression = after.get(..end)?;
        let name_end = expression.find(['.', '[']).unwrap_or(expression.len());
        let mut value = responses.get(expression.get(..name_end)?)?;
        let mut path = expression.get(name_end..)?;
        while !path.is_empty() {
            if let Some(tail) = path.strip_prefix('.') {
                let field_end = tail.find(['.', '[']).unwrap_or(tail.len());
                value = value.get(tail.get(..field_end)?)?;
                path = tail.get(field_end..)?;
            } else if let Some(tail) = path.strip_prefix('[') {
                let close = tail.find(']')?;
                value = value.get(tail.get(..close)?.parse::<usize>().ok()?)?;
                path = tail.get(close + 1..)?;
            } else {
                return None;
            }
        }
        match value {
            Value::String(text) => out.push_str(text),
            Value::Null | Value::Object(_) | Value::Array(_) => return None,
            other => out.push_str(&other.to_string()),
        }
        rest = after.get(end + 1..)?;
    }
    out.push_str(rest);
    Some(out)
}

fn resolve_value(value: Value, responses: &HashMap<String, Value>) -> Option<Value> {
    Some(match value {
        Value::String(text) if text.contains("@{") => Value::String(resolve_text(&text, responses)?),
        Value::Array(values) => {
            Value::Array(values.into_iter().map(|value| resolve_value(value, responses)).collect::<Option<_>>()?)
        }
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| Some((name, resolve_value(value, responses)?)))
                .collect::<Option<_>>()?,
        ),
        other => other,
    })
}

/// A single-record error answer: `[{"message", "errorCode", "fields"}]`.
fn record_error(status: u16, result: &CollectionResult) -> (u16, Value) {
    let errors: Vec<Value> = result
        .errors
        .iter()
        .map(|error| json!({"message": error.message, "errorCode": error.status_code, "fields": error.fields}))
        .collect();
    (status, Value::Array(errors))
}

fn not_found() -> (u16, Value) {
    (404, json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]))
}

/// Which tables a subrequest may write (an order product lives in its order's row).
fn tables_written(
    inner: &Inner,
    segments: &[String],
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Vec<&'static str> {
    let table = |name: &str| if name == "OrderItem" { Some("Order") } else { object_name(name) };
    let mut names: Vec<&'static str> = Vec::new();
    match segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["sobjects", object, ..] => names.extend(table(object)),
        ["composite", "sobjects", object, ..] => names.extend(table(object)),
        ["composite", "sobjects"] => {
            let records = body.and_then(|body| body.get("records")).and_then(Value::as_array);
            for record in records.into_iter().flatten() {
                let declared = record.get("attributes").and_then(|attributes| attributes.get("type"));
                names.extend(declared.and_then(Value::as_str).and_then(table));
            }
            for id in query.get("ids").map(|ids| ids.split(',')).into_iter().flatten() {
                names.push("Order");
                names.extend(
                    inner.tables.iter().filter(|(_, table)| table.rows.contains_key(id)).map(|(name, _)| *name),
                );
            }
        }
        _ => {}
    }
    names
}

impl SalesforceSim {
    fn run_composite(&self, request: wire::CompositeRequest) -> Response {
        let subrequests = request.composite_request;
        if subrequests.len() > wire::COMPOSITE_LIMIT {
            return rest_error(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                &format!("a composite request takes at most {} subrequests", wire::COMPOSITE_LIMIT),
            );
        }
        if subrequests.iter().filter(|sub| is_collection(&sub.url)).count() > wire::COMPOSITE_COLLECTION_LIMIT {
            return rest_error(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                &format!(
                    "a composite request takes at most {} sObject Collections or query subrequests",
                    wire::COMPOSITE_COLLECTION_LIMIT
                ),
            );
        }
        let mut names = std::collections::HashSet::new();
        for sub in &subrequests {
            let valid =
                !sub.reference_id.is_empty() && sub.reference_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || !names.insert(sub.reference_id.clone()) {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "JSON_PARSER_ERROR",
                    &format!("invalid or duplicate referenceId: {}", sub.reference_id),
                );
            }
        }
        let mut inner = self.lock();
        inner.composites.push(
            subrequests.iter().map(|sub| (sub.reference_id.clone(), sub.method.clone(), sub.url.clone())).collect(),
        );
        // The tables as they were before the first write to each, for a rollback.
        let mut saved: BTreeMap<&'static str, Table> = BTreeMap::new();
        let mut responses: HashMap<String, Value> = HashMap::new();
        let mut results: Vec<CompositeSubresult> = Vec::with_capacity(subrequests.len());
        let mut failed_at = None;
        for (index, sub) in subrequests.iter().enumerate() {
            let body = match sub.body.clone() {
                None => Some(None),
                Some(body) => resolve_value(body, &responses).map(Some),
            };
            let resolved = resolve_text(&sub.url, &responses).zip(body);
            let Some((url, body)) = resolved else {
                let result = if request.all_or_none {
                    CompositeSubresult {
                        body: json!([{"errorCode": "INVALID_REFERENCE", "message": format!("a reference in {} does not resolve", sub.reference_id)}]),
                        http_headers: Map::new(),
                        http_status_code: 400,
                        reference_id: sub.reference_id.clone(),
                    }
                } else {
                    halted(&sub.reference_id)
                };
                results.push(result);
                if request.all_or_none {
                    failed_at = Some(index);
                    break;
                }
                continue;
            };
            if let Some((segments, query)) = resource(&url) {
                for name in tables_written(&inner, &segments, &query, body.as_ref()) {
                    if !saved.contains_key(name) {
                        let copy = inner.tables.get(name).cloned().unwrap_or_default();
                        saved.insert(name, copy);
                    }
                }
            }
            let (status, answer) = self.run_subrequest(&mut inner, &sub.method, &url, body, request.all_or_none);
            let failed = !(200..300).contains(&status)
                || answer.as_array().is_some_and(|records| {
                    records.iter().any(|record| record.get("success") == Some(&Value::Bool(false)))
                });
            let mut http_headers = Map::new();
            if status == 201
                && let Some(id) = answer.get("id").and_then(Value::as_str)
                && let Some((segments, _)) = resource(&url)
                && let [_, object, ..] = segments.as_slice()
            {
                http_headers.insert(
                    "Location".into(),
                    json!(format!("/services/data/{}/sobjects/{object}/{id}", super::API_VERSION)),
                );
            }
            if !failed {
                responses.insert(sub.reference_id.clone(), answer.clone());
            }
            results.push(CompositeSubresult {
                body: answer,
                http_headers,
                http_status_code: status,
                reference_id: sub.reference_id.clone(),
            });
            if failed && request.all_or_none {
                failed_at = Some(index);
                break;
            }
        }
        let results = match failed_at {
            Some(failed) => {
                for (name, table) in saved {
                    inner.tables.insert(name, table);
                }
                inner.touched.clear();
                drop(inner);
                subrequests
                    .iter()
                    .enumerate()
                    .map(|(index, sub)| match results.get(index) {
                        Some(result) if index == failed => result.clone(),
                        _ => halted(&sub.reference_id),
                    })
                    .collect()
            }
            None => {
                inner.commit();
                results
            }
        };
        axum::Json(wire::CompositeResponse { composite_response: results }).into_response()
    }

    /// One subrequest, answered as its resource alone would answer it.
    fn run_subrequest(
        &self,
        inner: &mut Inner,
        method: &str,
        url: &str,
        body: Option<Value>,
        all_or_none: bool,
    ) -> (u16, Value) {
        let Some((segments, query)) = resource(url) else { return not_found() };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let record = || match body.clone() {
            Some(Value::Object(record)) => Ok(record),
            _ => Err((400, json!([{"errorCode": "JSON_PARSER_ERROR", "message": "the body must be a JSON object"}]))),
        };
        let single = |result: CollectionResult, status: u16| {
            if result.success {
                let mut answer = json!({"id": result.id, "success": true, "errors": []});
                if let Some(created) = result.created {
                    answer["created"] = json!(created);
                }
                (status, answer)
            } else {
                record_error(400, &result)
            }
        };
        match (method, segments.as_slice()) {
            ("POST", ["sobjects", object]) => {
                let Some(object) = object_name(object) else { return not_found() };
                let mut record = match record() {
                    Ok(record) => record,
                    Err(error) => return error,
                };
                record.insert("attributes".into(), json!({"type": object}));
                let mut result = self.create_one(inner, record);
                result.created = None;
                single(result, 201)
            }
            ("PATCH", ["sobjects", object, id]) => {
                let Some(object) = object_name(object) else { return not_found() };
                let mut record = match record() {
                    Ok(record) => record,
                    Err(error) => return error,
                };
                record.insert("attributes".into(), json!({"type": object}));
                record.insert("id".into(), json!(id));
                let result = self.update_one(inner, record);
                if result.success { (204, Value::Null) } else { record_error(400, &result) }
            }
            ("DELETE", ["sobjects", _, id]) => {
                let result = delete_one(inner, (*id).to_owned());
                if result.success { (204, Value::Null) } else { record_error(404, &result) }
            }
            ("PATCH", ["sobjects", object, field, value]) => {
                let Some(object) = object_name(object) else { return not_found() };
                if *field != "Crmsync_Id__c" {
                    return not_found();
                }
                let mut record = match record() {
                    Ok(record) => record,
                    Err(error) => return error,
                };
                if record.contains_key(*field) {
                    return (
                        400,
                        json!([{"errorCode": "INVALID_FIELD", "message": format!("the body must not set {field}, the URL names it")}]),
                    );
                }
                record.insert("attributes".into(), json!({"type": object}));
                record.insert((*field).to_owned(), json!(value));
                let result = self.upsert_one(inner, object, record);
                let status = if result.created == Some(true) { 201 } else { 200 };
                single(result, status)
            }
            (_, ["composite", "sobjects", ..]) => {
                self.run_collection(inner, method, &segments, &query, body, all_or_none)
            }
            _ => not_found(),
        }
    }

    /// An sObject Collections subrequest: 200 with per-record results. Under an `allOrNone`
    /// composite request the collection is all-or-none too (it overrides the collection's own
    /// flag): once a record fails, the others are reported rolled back.
    fn run_collection(
        &self,
        inner: &mut Inner,
        method: &str,
        segments: &[&str],
        query: &HashMap<String, String>,
        body: Option<Value>,
        all_or_none: bool,
    ) -> (u16, Value) {
        let too_many = || {
            (
                400,
                json!([{"errorCode": "EXCEEDED_ID_LIMIT", "message": "record limit reached. cannot submit more than 200 records into this call"}]),
            )
        };
        let mut results: Vec<CollectionResult> = match (method, segments) {
            ("DELETE", ["composite", "sobjects"]) => {
                let ids: Vec<String> = query
                    .get("ids")
                    .map(|ids| ids.split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default();
                if ids.len() > 200 {
                    return too_many();
                }
                ids.into_iter().map(|id| delete_one(inner, id)).collect()
            }
            (method, ["composite", "sobjects", rest @ ..]) => {
                let request = match body.map(serde_json::from_value::<CollectionRequest>) {
                    Some(Ok(request)) => request,
                    _ => {
                        return (
                            400,
                            json!([{"errorCode": "JSON_PARSER_ERROR", "message": "the body must be an sObject Collections request"}]),
                        );
                    }
                };
                if request.records.len() > 200 {
                    return too_many();
                }
                match (method, rest) {
                    ("POST", []) => request.records.into_iter().map(|record| self.create_one(inner, record)).collect(),
                    ("PATCH", []) => request.records.into_iter().map(|record| self.update_one(inner, record)).collect(),
                    ("PATCH", [object, "Crmsync_Id__c"]) => match object_name(object) {
                        Some(object) => {
                            request.records.into_iter().map(|record| self.upsert_one(inner, object, record)).collect()
                        }
                        None => return not_found(),
                    },
                    _ => return not_found(),
                }
            }
            _ => return not_found(),
        };
        if all_or_none && results.iter().any(|result| !result.success) {
            for result in results.iter_mut().filter(|result| result.success) {
                *result = CollectionResult {
                    id: None,
                    success: false,
                    errors: vec![wire::CollectionError {
                        status_code: wire::ALL_OR_NONE_ROLLED_BACK.into(),
                        message: HALTED_MESSAGE.into(),
                        fields: Vec::new(),
                    }],
                    created: None,
                };
            }
        }
        (200, serde_json::to_value(results).unwrap_or(Value::Null))
    }
}
