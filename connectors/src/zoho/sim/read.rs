//! The read endpoints: `GET /crm/{v}/{Module}` (fields, paging by page and page token,
//! `If-Modified-Since`, `ids`) and `GET /crm/{v}/{Module}/deleted`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{Shared, Snapshot, ZohoSim, error, fields_required, invalid_module, module_name, zoho_time};
use crate::canonical::Timestamp;
use crate::sim::truncate;
use crate::zoho::wire;

pub(super) async fn records(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let response = sim.list(&headers, &version, &module, &query);
    sim.with_credits(response)
}

impl ZohoSim {
    fn list(&self, headers: &HeaderMap, version: &str, module: &str, query: &HashMap<String, String>) -> Response {
        let Some(module) = module_name(module) else {
            return invalid_module(json!({"resource_path_index": 0}));
        };
        let schema = self.schema(module);
        let fields: Vec<String> = match query.get("fields") {
            Some(fields) => fields.split(',').map(str::to_owned).collect(),
            // `fields` is optional before v3: every field of the module.
            None if !fields_required(version) => schema.iter().map(|spec| spec.name.to_owned()).collect(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "REQUIRED_PARAM_MISSING",
                    "One of the expected parameter is missing",
                    json!({"param_name": "fields"}),
                );
            }
        };
        if fields.len() > 50 {
            return error(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                "fields limit exceeded",
                json!({"param_name": "fields", "limit": 50}),
            );
        }
        let known: HashSet<&str> = schema.iter().map(|spec| spec.name).collect();
        let renamed = self.faults.drift_renamed_field() && module == "Deals";
        if let Some(unknown) = fields.iter().find(|field| {
            let stale_name = renamed && *field == "Stage";
            !(known.contains(field.as_str()) || (renamed && *field == "Deal_Stage")) || stale_name
        }) {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": unknown, "param_name": "fields"}),
            );
        }
        let per_page: usize = query.get("per_page").and_then(|value| value.parse().ok()).unwrap_or(200);
        if per_page == 0 || per_page > wire::PER_PAGE {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"param_name": "per_page", "maximum_length": 200}),
            );
        }
        if query.get("sort_by").is_some_and(|sort| !matches!(sort.as_str(), "id" | "Created_Time" | "Modified_Time")) {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"param_name": "sort_by", "supported_values": ["id", "Created_Time", "Modified_Time"]}),
            );
        }
        let since = match headers.get("if-modified-since").and_then(|value| value.to_str().ok()) {
            Some(text) => match text.parse::<Timestamp>() {
                Ok(stamp) => Some(stamp.unix_millis() / 1000),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_DATA",
                        "invalid data",
                        json!({"param_name": "If-Modified-Since"}),
                    );
                }
            },
            None => None,
        };
        let mut inner = self.lock();
        inner.requested_fields.push(fields.join(","));
        if let Some(wanted) = query.get("ids") {
            let wanted: Vec<&str> = wanted.split(',').collect();
            if wanted.len() > 100 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "LIMIT_EXCEEDED",
                    "ids limit exceeded",
                    json!({"param_name": "ids", "limit": 100}),
                );
            }
            let rows = inner.modules.get(module);
            let data: Vec<Value> = wanted
                .iter()
                .filter_map(|id| {
                    let row = rows?.get(*id).filter(|row| row.deleted.is_none())?;
                    let mut record: Map<String, Value> = fields
                        .iter()
                        .map(|field| (field.clone(), row.fields.get(field).cloned().unwrap_or(Value::Null)))
                        .collect();
                    record.insert("id".into(), json!(id));
                    record.insert("Modified_Time".into(), json!(zoho_time(row.modified)));
                    Some(Value::Object(record))
                })
                .collect();
            if data.is_empty() {
                return StatusCode::NO_CONTENT.into_response();
            }
            return axum::Json(
                json!({"data": data, "info": {"per_page": 200, "count": data.len(), "page": 1, "more_records": false}}),
            )
            .into_response();
        }
        let (snapshot_id, offset) = match (query.get("page_token"), query.get("page")) {
            (Some(_), Some(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "page and page_token cannot be combined",
                    json!({}),
                );
            }
            (Some(token), None) => match token
                .split_once('-')
                .and_then(|(id, offset)| Some((id.to_owned(), offset.parse::<usize>().ok()?)))
            {
                Some((id, offset)) if inner.snapshots.contains_key(&id) => (id, offset),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_DATA",
                        "invalid page token",
                        json!({"param_name": "page_token"}),
                    );
                }
            },
            (None, page) => {
                let page: usize = page.and_then(|page| page.parse().ok()).unwrap_or(1).max(1);
                if page * per_page > 2000 {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
                        "You can only get the first 2000 records without using page_token param",
                        json!({"limit": 2000}),
                    );
                }
                let rows = inner.modules.get(module);
                let mut ids: Vec<(i64, String)> = rows
                    .map(|rows| {
                        rows.iter()
                            .filter(|(_, row)| row.deleted.is_none() && since.is_none_or(|since| row.modified > since))
                            .map(|(id, row)| (row.modified, id.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if ids.is_empty() && since.is_some() {
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                ids.sort();
                let snapshot_id = format!("{:x}", inner.next_id);
                inner.next_id += 1;
                inner.snapshots.insert(
                    snapshot_id.clone(),
                    Snapshot { module, ids: ids.into_iter().map(|(_, id)| id).collect(), fields: fields.clone() },
                );
                (snapshot_id, (page - 1) * per_page)
            }
        };
        if offset >= usize::try_from(wire::PAGE_TOKEN_CAP).unwrap_or(usize::MAX) {
            return error(
                StatusCode::BAD_REQUEST,
                "PAGINATION_LIMIT_EXCEEDED",
                "You can only get upto 100000 records using page_token param",
                json!({"param_name": "page_token"}),
            );
        }
        let Some(snapshot) = inner.snapshots.get(&snapshot_id) else {
            return error(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid page token", json!({}));
        };
        let end = (offset + per_page).min(snapshot.ids.len());
        if offset >= end {
            return StatusCode::NO_CONTENT.into_response();
        }
        let rows = inner.modules.get(snapshot.module);
        let data: Vec<Value> = snapshot.ids[offset..end]
            .iter()
            .filter_map(|id| {
                let row = rows?.get(id)?;
                let mut record = Map::new();
                record.insert("id".into(), json!(id));
                for field in &snapshot.fields {
                    let value = match field.as_str() {
                        "id" => json!(id),
                        "Modified_Time" => json!(zoho_time(row.modified)),
                        "Deal_Stage" if renamed => row.fields.get("Stage").cloned().unwrap_or(Value::Null),
                        "Region" => json!("EMEA"),
                        name => row.fields.get(name).cloned().unwrap_or(Value::Null),
                    };
                    record.insert(field.clone(), value);
                }
                self.faults.drift(&mut record);
                if snapshot.module != "Products" {
                    self.faults.garble(id, &mut record);
                }
                Some(Value::Object(record))
            })
            .collect();
        let more = end < snapshot.ids.len();
        let next = more.then(|| format!("{snapshot_id}-{end}"));
        let body = json!({"data": data, "info": {"per_page": per_page, "count": data.len(), "page": offset / per_page + 1, "sort_by": "Modified_Time", "sort_order": "asc", "more_records": more, "next_page_token": next, "previous_page_token": null, "page_token_expiry": zoho_time(inner.clock + 86_400)}});
        drop(inner);
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        if self.faults.take_truncation() {
            bytes = truncate(&bytes);
        }
        ([(header::CONTENT_TYPE, "application/json;charset=utf-8")], bytes).into_response()
    }
}

pub(super) async fn deleted(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let module = match sim.admit(&headers, &version, &sim.counters.read, &module).await {
        Ok(module) => module,
        Err(response) => return response,
    };
    let since = headers
        .get("if-modified-since")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<Timestamp>().ok())
        .map(|stamp| stamp.unix_millis() / 1000);
    let per_page: usize = query.get("per_page").and_then(|value| value.parse().ok()).unwrap_or(200).clamp(1, 200);
    let page: usize = query.get("page").and_then(|value| value.parse().ok()).unwrap_or(1).max(1);
    let inner = sim.lock();
    let mut gone: Vec<(i64, String)> = inner
        .modules
        .get(module)
        .map(|rows| {
            rows.iter()
                .filter_map(|(id, row)| {
                    row.deleted.filter(|at| since.is_none_or(|since| *at > since)).map(|at| (at, id.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    drop(inner);
    gone.sort();
    let start = (page - 1) * per_page;
    if start >= gone.len() {
        return sim.with_credits(StatusCode::NO_CONTENT.into_response());
    }
    let end = (start + per_page).min(gone.len());
    let data: Vec<Value> = gone[start..end].iter().map(|(at, id)| json!({"id": id, "type": "recycle", "display_name": null, "deleted_time": zoho_time(*at), "deleted_by": null, "created_by": null})).collect();
    sim.with_credits(axum::Json(json!({"data": data, "info": {"per_page": per_page, "count": data.len(), "page": page, "more_records": end < gone.len()}})).into_response())
}
