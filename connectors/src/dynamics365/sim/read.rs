//! Reading entity sets: `$select`, `$filter`, `$orderby`, `$top`, `$count=true` (`@odata.count`,
//! up to 5,000, on the first page), `odata.maxpagesize` paging with
//! paging cookies, change tracking (delta links, `$deletedEntity` rows, expired tokens), and a
//! single-level `$expand` of an order's lines (`order_details($select=…)`).
//!
//! `$expand` of a collection-valued navigation property, as Dataverse documents it
//! (learn.microsoft.com/power-apps/developer/data-platform/webapi/query/join-tables, "Single $expand
//! on collection-valued navigation properties"): paging applies to the entity set only, each row
//! carries up to 5,000 related rows and a `<property>@odata.nextLink` without paging information
//! (the filtered collection `salesorders(<id>)/order_details`, which can be paged on its own), and
//! change tracking refuses `$expand` altogether.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::filter::{check_filter, compare, matches, parse_filter};
use super::reply::{Reply, error, not_found};
use super::schema::{logical, readable};
use super::table::{Inner, Row, Snapshot};
use super::{Dynamics365Sim, Request, now_seconds, time};
use crate::dynamics365::wire;

impl Dynamics365Sim {
    pub(super) fn list(&self, set: &str, request: &Request<'_>) -> Reply {
        let tracking = request.prefers("odata.track-changes");
        let annotate = request.prefers("odata.include-annotations");
        let page_size = page_size_of(request);
        let mut inner = self.lock();
        // A continuation: `$skiptoken` names a snapshot.
        if let Some(skiptoken) = request.query.get("$skiptoken") {
            let cookie = skiptoken
                .split("pagingcookie=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|cookie| cookie.split_once(':'))
                .and_then(|(id, offset)| Some((id.to_owned(), offset.parse::<usize>().ok()?)));
            let Some((snapshot_id, offset)) = cookie else {
                return error(StatusCode::BAD_REQUEST, "0x80040203", "Invalid paging cookie.");
            };
            // A result set still being paged stays: the least recently *used* one goes first.
            if let Some(position) = inner.snapshot_order.iter().position(|kept| kept == &snapshot_id)
                && let Some(used) = inner.snapshot_order.remove(position)
            {
                inner.snapshot_order.push_back(used);
            }
            return self.serve_snapshot(&inner, &snapshot_id, offset, page_size, annotate, request);
        }
        let select = match select_of(set, request) {
            Ok(select) => select,
            Err(reply) => return reply,
        };
        inner.selects.push(select.join(","));
        if let Some(delta) = request.query.get("$deltatoken") {
            let version: u64 = delta.split('!').next().and_then(|version| version.parse().ok()).unwrap_or(0);
            if version < inner.oldest_token {
                return error(
                    StatusCode::BAD_REQUEST,
                    wire::EXPIRED_VERSION_STAMP,
                    "Version stamp associated with the client has expired. Please perform a full sync.",
                );
            }
            let rows = inner.tables.get(set).map(|rows| {
                let mut changed: Vec<(&String, &Row)> =
                    rows.iter().filter(|(_, row)| row.deleted.is_none() && row.version > version).collect();
                changed.sort_by_key(|(_, row)| row.version);
                let changed: Vec<String> = changed.into_iter().map(|(id, _)| id.clone()).collect();
                let deletions: Vec<String> = rows
                    .iter()
                    .filter(|(_, row)| row.deleted.is_some_and(|deleted| deleted > version) && row.version <= version)
                    .map(|(id, _)| id.clone())
                    .collect();
                (changed, deletions)
            });
            let (rows, deletions) = rows.unwrap_or_default();
            let current = inner.version;
            let snapshot =
                Snapshot { set: set.to_owned(), select, rows, deletions, delta_version: Some(current), expand: None };
            return self.serve_first_page(&mut inner, snapshot, page_size, annotate, request);
        }
        if tracking {
            if inner.untracked.contains(set) || matches!(set, "transactioncurrencies" | "products") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80072491",
                    &format!("Entity {} isn't enabled for change tracking.", logical(set)),
                );
            }
            for option in ["$filter", "$orderby", "$expand", "$top"] {
                if request.query.contains_key(option) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!("The \"{option}\" query parameter isn't supported when Change Tracking is enabled."),
                    );
                }
            }
        }
        let expand = match request.query.get("$expand").map(|expand| expand_of(set, expand)) {
            None => None,
            Some(Ok(expand)) => Some(expand),
            Some(Err(reply)) => return reply,
        };
        let filter = match request.query.get("$filter").map(|filter| parse_filter(filter)) {
            Some(Ok(filter)) => Some(filter),
            Some(Err(problem)) => {
                return error(StatusCode::BAD_REQUEST, "0x80060888", &format!("Syntax error in $filter: {problem}"));
            }
            None => None,
        };
        if let Some(filter) = &filter
            && let Err(problem) = check_filter(set, filter)
        {
            return error(StatusCode::BAD_REQUEST, "0x80060888", &problem);
        }
        let order = match request.query.get("$orderby").map(|order| order_of(set, order)) {
            None => Vec::new(),
            Some(Ok(order)) => order,
            Some(Err(reply)) => return reply,
        };
        let mut rows: Vec<(Vec<Value>, String)> = inner
            .tables
            .get(set)
            .map(|rows| {
                rows.iter()
                    .filter(|(_, row)| row.deleted.is_none())
                    .filter(|(_, row)| filter.as_ref().is_none_or(|filter| matches(set, &row.fields, filter)))
                    .map(|(id, row)| {
                        let keys = order
                            .iter()
                            .map(|(property, _)| row.fields.get(property).cloned().unwrap_or(Value::Null))
                            .collect();
                        (keys, id.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !order.is_empty() {
            rows.sort_by(|(left, left_id), (right, right_id)| {
                order
                    .iter()
                    .zip(left.iter().zip(right))
                    .map(|((_, descending), (a, b))| {
                        let ordering = compare(a, b).unwrap_or(std::cmp::Ordering::Equal);
                        if *descending { ordering.reverse() } else { ordering }
                    })
                    .find(|ordering| ordering.is_ne())
                    .unwrap_or_else(|| left_id.cmp(right_id))
            });
        }
        let mut ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
        if let Some(top) = request.query.get("$top").and_then(|top| top.parse::<usize>().ok())
            && !request
                .headers
                .iter()
                .any(|(name, value)| name.eq_ignore_ascii_case("prefer") && value.contains("maxpagesize"))
        {
            ids.truncate(top);
        }
        let snapshot = Snapshot {
            set: set.to_owned(),
            select,
            rows: ids,
            deletions: Vec::new(),
            delta_version: tracking.then_some(inner.version),
            expand,
        };
        self.serve_first_page(&mut inner, snapshot, page_size, annotate, request)
    }

    /// `GET salesorders(<id>)/order_details`: the filtered collection of one order's lines, which
    /// an expansion's `order_details@odata.nextLink` names, paged like any entity set.
    pub(super) fn order_lines_of(&self, address: &str, request: &Request<'_>) -> Reply {
        let select = match select_of(wire::LINES_SET, request) {
            Ok(select) => select,
            Err(reply) => return reply,
        };
        let mut inner = self.lock();
        let order = match inner.locate("salesorders", address) {
            Err(reply) => return reply,
            Ok(None) => return not_found("salesorders", address),
            Ok(Some(order)) => order,
        };
        let rows = inner
            .tables
            .get(wire::LINES_SET)
            .map(|lines| {
                lines
                    .iter()
                    .filter(|(_, row)| {
                        row.deleted.is_none()
                            && row.fields.get(wire::LINE_ORDER).and_then(Value::as_str) == Some(order.as_str())
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let snapshot = Snapshot {
            set: wire::LINES_SET.to_owned(),
            select,
            rows,
            deletions: Vec::new(),
            delta_version: None,
            expand: None,
        };
        let page_size = page_size_of(request);
        let annotate = request.prefers("odata.include-annotations");
        self.serve_first_page(&mut inner, snapshot, page_size, annotate, request)
    }

    /// Serves the first page of a new result set. Only a result that needs a next link is kept for
    /// paging, and a continuation refreshes its set: Dataverse's cookies do not expire while a read
    /// goes on, so the many short lookups a long read makes (order lines by order id) must not push
    /// its own result set out of the kept window.
    fn serve_first_page(
        &self,
        inner: &mut Inner,
        snapshot: Snapshot,
        page_size: usize,
        annotate: bool,
        request: &Request<'_>,
    ) -> Reply {
        let one_page = snapshot.rows.len() + snapshot.deletions.len() <= page_size;
        let id = inner.keep_snapshot(snapshot);
        let reply = self.serve_snapshot(inner, &id, 0, page_size, annotate, request);
        if one_page {
            inner.snapshots.remove(&id);
            inner.snapshot_order.retain(|kept| kept != &id);
        }
        reply
    }

    fn serve_snapshot(
        &self,
        inner: &Inner,
        id: &str,
        start: usize,
        page_size: usize,
        annotate: bool,
        request: &Request<'_>,
    ) -> Reply {
        let Some(snapshot) = inner.snapshots.get(id) else {
            return error(StatusCode::BAD_REQUEST, "0x80040203", "Invalid paging cookie.");
        };
        let set = snapshot.set.clone();
        let select = snapshot.select.clone();
        let total_rows = snapshot.rows.len();
        let page_end = (start + page_size).min(total_rows);
        let mut expanded = match &snapshot.expand {
            Some(line_select) if start < page_end => {
                inner.expanded_lines(snapshot.rows.get(start..page_end).unwrap_or_default(), line_select, annotate)
            }
            _ => HashMap::new(),
        };
        let mut value: Vec<Value> = Vec::new();
        let mut position = start;
        while value.len() < page_size && position < total_rows + snapshot.deletions.len() {
            if position < total_rows {
                if let Some(mut row) = inner.render(&set, &snapshot.rows[position], &select, annotate) {
                    self.faults.drift(&mut row);
                    if matches!(set.as_str(), "accounts" | "leads" | "opportunities" | "salesorders") {
                        self.faults.garble(&snapshot.rows[position], &mut row);
                    }
                    if let Some(line_select) = &snapshot.expand {
                        let id = &snapshot.rows[position];
                        let lines = expanded.remove(id.as_str()).unwrap_or_default();
                        let select_param: String = url::form_urlencoded::Serializer::new(String::new())
                            .append_pair("$select", &line_select.join(","))
                            .finish();
                        row.insert(wire::ORDER_LINES.into(), Value::Array(lines));
                        row.insert(
                            format!("{}@odata.nextLink", wire::ORDER_LINES),
                            json!(format!(
                                "{}/api/data/{}/{set}({id})/{}?{select_param}",
                                request.base,
                                request.version,
                                wire::ORDER_LINES
                            )),
                        );
                    }
                    value.push(Value::Object(row));
                }
            } else {
                let deleted = &snapshot.deletions[position - total_rows];
                value.push(json!({
                    "@odata.context": format!("{}/api/data/{}/$metadata#{set}/$deletedEntity", request.base, request.version),
                    "id": deleted, "reason": "deleted",
                }));
            }
            position += 1;
        }
        let done = position >= total_rows + snapshot.deletions.len();
        let delta_version = snapshot.delta_version;
        let context = format!("{}/api/data/{}/$metadata#{set}({})", request.base, request.version, select.join(","));
        let mut body = json!({"@odata.context": context, "value": value});
        // `$count=true`: the rows matching, up to 5,000, on the first page (the next link does not
        // repeat `$count`).
        if start == 0 && request.query.get("$count").is_some_and(|count| count == "true") {
            body["@odata.count"] = json!((total_rows as u64).min(wire::COUNT_CAP));
        }
        let mut select_param = url::form_urlencoded::Serializer::new(String::new());
        select_param.append_pair("$select", &select.join(","));
        if let Some(line_select) = &snapshot.expand {
            select_param.append_pair("$expand", &format!("{}($select={})", wire::ORDER_LINES, line_select.join(",")));
        }
        let select_param = select_param.finish();
        if done {
            if let Some(version) = delta_version {
                let token: String =
                    url::form_urlencoded::byte_serialize(format!("{version}!{}", time(now_seconds())).as_bytes())
                        .collect();
                body["@odata.deltaLink"] = json!(format!(
                    "{}/api/data/{}/{set}?{select_param}&$deltatoken={token}",
                    request.base, request.version
                ));
            }
        } else {
            let page = position / page_size.max(1) + 1;
            let cookie = format!(
                "<cookie pagenumber=\"{page}\" pagingcookie=\"{id}:{position}\" istracking=\"{}\" />",
                if delta_version.is_some() { "True" } else { "False" }
            );
            let cookie: String = url::form_urlencoded::byte_serialize(cookie.as_bytes()).collect();
            body["@odata.nextLink"] = json!(format!(
                "{}/api/data/{}/{set}?{select_param}&$skiptoken={cookie}",
                request.base, request.version
            ));
        }
        let applied = if delta_version.is_some() {
            format!("odata.track-changes,odata.maxpagesize={page_size}")
        } else {
            format!("odata.maxpagesize={page_size}")
        };
        Reply::json(StatusCode::OK, body).with("Preference-Applied", applied)
    }
}

/// `Prefer: odata.maxpagesize` (at most, and by default, 5,000).
fn page_size_of(request: &Request<'_>) -> usize {
    request
        .header("prefer")
        .and_then(|prefer| {
            prefer
                .split(',')
                .find_map(|part| part.trim().strip_prefix("odata.maxpagesize=").and_then(|n| n.parse::<usize>().ok()))
        })
        .unwrap_or(wire::MAX_PAGE_SIZE)
        .clamp(1, wire::MAX_PAGE_SIZE)
}

pub(super) fn select_of(set: &str, request: &Request<'_>) -> Result<Vec<String>, Reply> {
    select_columns(set, request.query.get("$select").map(String::as_str))
}

fn select_columns(set: &str, select: Option<&str>) -> Result<Vec<String>, Reply> {
    let known = readable(set);
    let Some(select) = select else {
        return Ok(known);
    };
    let mut columns = Vec::new();
    for column in select.split(',').map(str::trim).filter(|column| !column.is_empty()) {
        if !known.iter().any(|property| property == column) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "0x80060888",
                &format!(
                    "Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.",
                    logical(set)
                ),
            ));
        }
        columns.push(column.to_owned());
    }
    Ok(columns)
}

/// The sort an `$orderby` asks for: `(property, descending)` pairs of structural properties.
fn order_of(set: &str, order: &str) -> Result<Vec<(String, bool)>, Reply> {
    let known = readable(set);
    order
        .split(',')
        .map(|part| {
            let mut words = part.split_whitespace();
            let property = words.next().unwrap_or_default();
            let descending = match words.next() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!("Syntax error in $orderby: unexpected '{other}'."),
                    ));
                }
            };
            if !known.iter().any(|candidate| candidate == property) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "0x80060888",
                    &format!(
                        "Could not find a property named '{property}' on type 'Microsoft.Dynamics.CRM.{}'.",
                        logical(set)
                    ),
                ));
            }
            Ok((property.to_owned(), descending))
        })
        .collect()
}

/// The order-line columns an `$expand` asks for: only `order_details` of `salesorders` exists in
/// the simulated org, with a `$select` of its own (`$filter`, `$orderby` and `$top` inside an
/// expansion are valid in Dataverse but not modelled here, so they are refused rather than ignored).
fn expand_of(set: &str, expand: &str) -> Result<Vec<String>, Reply> {
    let (property, options) = match expand.split_once('(') {
        Some((property, rest)) => (property.trim(), Some(rest.strip_suffix(')').unwrap_or(rest))),
        None => (expand.trim(), None),
    };
    if set != "salesorders" || property != wire::ORDER_LINES {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "0x80060888",
            &format!("Could not find a property named '{property}' on type 'Microsoft.Dynamics.CRM.{}'.", logical(set)),
        ));
    }
    let mut select = None;
    for option in options.into_iter().flat_map(|options| options.split(';')) {
        match option.split_once('=') {
            Some(("$select", columns)) => select = Some(columns),
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "0x80060888",
                    &format!("The simulator does not model the $expand option '{option}'."),
                ));
            }
        }
    }
    select_columns(wire::LINES_SET, select)
}

impl Inner {
    /// The lines of `orders` as an expansion renders them (by order id), at most
    /// [`wire::EXPANDED_ROWS_CAP`] each, in one pass over the lines table.
    fn expanded_lines(&self, orders: &[String], select: &[String], annotate: bool) -> HashMap<String, Vec<Value>> {
        let wanted: HashSet<&str> = orders.iter().map(String::as_str).collect();
        let mut expanded: HashMap<String, Vec<Value>> = HashMap::new();
        let Some(lines) = self.tables.get(wire::LINES_SET) else { return expanded };
        for (id, row) in lines {
            let Some(order) = row.fields.get(wire::LINE_ORDER).and_then(Value::as_str) else { continue };
            if row.deleted.is_some() || !wanted.contains(order) {
                continue;
            }
            let order_lines = expanded.entry(order.to_owned()).or_default();
            if order_lines.len() < wire::EXPANDED_ROWS_CAP
                && let Some(line) = self.render(wire::LINES_SET, id, select, annotate)
            {
                order_lines.push(Value::Object(line));
            }
        }
        expanded
    }
}
