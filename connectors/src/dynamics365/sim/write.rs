//! Writes: `POST` creates, `PATCH` upserts by id or alternate key (with `If-Match`/`If-None-Match`),
//! `DELETE`, and the `WinOpportunity`/`LoseOpportunity` actions, each validated before anything changes.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::read::select_of;
use super::reply::{Reply, error, not_found};
use super::schema::{Kind, columns, key_of, logical, static_set};
use super::table::number;
use super::{ALTERNATE_KEY, Dynamics365Sim, Request, now_seconds, time};
use crate::canonical::{Timestamp, decimal_json};

impl Dynamics365Sim {
    pub(super) fn write(&self, set: &str, address: &str, request: &Request<'_>) -> Reply {
        if set == "transactioncurrencies" {
            return error(
                StatusCode::FORBIDDEN,
                "0x80040220",
                "Principal user is missing prvWriteTransactionCurrency privilege.",
            );
        }
        let Some(Value::Object(body)) = &request.body else {
            return error(StatusCode::BAD_REQUEST, "0x80060891", "The request body must be a JSON object.");
        };
        let logical_name = logical(set);
        let mut inner = self.lock();
        let found = match inner.locate(set, address) {
            Ok(found) if address.is_empty() => found.filter(|_| false),
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let by_key = address.contains('=');
        if by_key && body.contains_key(ALTERNATE_KEY) {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80060891",
                "Key attributes must not be repeated in the request body.",
            );
        }
        if let Some(condition) = request.header("if-match") {
            let Some(id) = &found else { return not_found(set, address) };
            let current = inner.live(set, id).map(|row| format!("W/\"{}\"", row.version)).unwrap_or_default();
            if condition != "*" && condition != current {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    "0x80060882",
                    "The version of the existing record doesn't match the RowVersion property provided.",
                );
            }
        }
        if request.header("if-none-match") == Some("*") && found.is_some() {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "0x80040237",
                "A record with matching key values already exists.",
            );
        }
        // Validate every property before touching anything.
        let mut updates = Map::new();
        for (name, value) in body {
            if let Some(navigation) = name.strip_suffix("@odata.bind") {
                let Some(column) =
                    columns(set).iter().find(|column| matches!(column.kind, Kind::Lookup(nav, _) if nav == navigation))
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!(
                            "An undeclared property '{navigation}' which only has property annotations in the payload but no property value was found in the payload."
                        ),
                    );
                };
                let Kind::Lookup(_, target) = column.kind else { continue };
                if value.is_null() {
                    updates.insert(column.name.to_owned(), Value::Null);
                    continue;
                }
                let Some(path) = value.as_str() else {
                    return error(StatusCode::BAD_REQUEST, "0x80060891", &format!("{name} must be a string"));
                };
                let Some(inside) = path
                    .trim_start_matches('/')
                    .strip_prefix(target)
                    .and_then(|rest| rest.strip_prefix('('))
                    .and_then(|rest| rest.strip_suffix(')'))
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060891",
                        &format!("{name}: {path} does not address {target}"),
                    );
                };
                let target_id = if target == "transactioncurrencies" || target == "products" {
                    inner.live(target, inside).map(|_| inside.to_owned())
                } else {
                    match inner.locate(target, inside) {
                        Ok(found) => found,
                        Err(reply) => return reply,
                    }
                };
                let Some(target_id) = target_id else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "0x80040217",
                        &format!("{} With Id = {inside} Does Not Exist", logical(target)),
                    );
                };
                updates.insert(column.name.to_owned(), json!(target_id));
                continue;
            }
            if name == ALTERNATE_KEY {
                match value {
                    Value::String(_) | Value::Null => {
                        updates.insert(name.clone(), value.clone());
                        continue;
                    }
                    _ => return error(StatusCode::BAD_REQUEST, "0x80060891", "crmsync_id must be a string"),
                }
            }
            let Some(column) = columns(set).iter().find(|column| column.name == name) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80060888",
                    &format!("Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{logical_name}'."),
                );
            };
            let invalid = |expected: &str| {
                error(
                    StatusCode::BAD_REQUEST,
                    "0x80060891",
                    &format!(
                        "Cannot convert the literal '{value}' to the expected type '{expected}' of property '{name}'."
                    ),
                )
            };
            match column.kind {
                Kind::Key => return invalid("read-only key"),
                Kind::ReadOnly if set == "opportunities" && (name == "statecode" || name == "statuscode") => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80040203",
                        "Use the WinOpportunity or LoseOpportunity message to close an opportunity; its state cannot be set by an update.",
                    );
                }
                Kind::ReadOnly | Kind::Lookup(..) => continue,
                Kind::Text(max) => match value {
                    Value::Null => {}
                    Value::String(text) if text.chars().count() > max => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "0x80044331",
                            &format!(
                                "A validation error occurred. The length of the '{name}' attribute of the '{logical_name}' entity exceeded the maximum allowed length of '{max}'."
                            ),
                        );
                    }
                    Value::String(_) => {}
                    _ => return invalid("Edm.String"),
                },
                Kind::Int(low, high) => match value {
                    Value::Null => {}
                    Value::Number(number) if number.as_i64().is_some_and(|n| (low..=high).contains(&n)) => {}
                    Value::Number(number) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "0x8004431a",
                            &format!(
                                "A validation error occurred. The value {number} of '{name}' on record of type '{logical_name}' is outside the valid range. Accepted Values: {}",
                                (low..=high).map(|n| n.to_string()).collect::<Vec<_>>().join(",")
                            ),
                        );
                    }
                    _ => return invalid("Edm.Int32"),
                },
                Kind::Money | Kind::Decimal => {
                    if !value.is_null() && !value.is_number() {
                        return invalid("Edm.Decimal");
                    }
                }
                Kind::Date => {
                    if !value.is_null() && value.as_str().is_none_or(|text| text.parse::<jiff::civil::Date>().is_err())
                    {
                        return invalid("Edm.Date");
                    }
                }
                Kind::DateTime => {
                    if !value.is_null() && value.as_str().is_none_or(|text| text.parse::<Timestamp>().is_err()) {
                        return invalid("Edm.DateTimeOffset");
                    }
                }
                Kind::Bool => {
                    if !value.is_null() && !value.is_boolean() {
                        return invalid("Edm.Boolean");
                    }
                }
            }
            updates.insert(name.clone(), value.clone());
        }
        let created = found.is_none();
        if created {
            if request.header("if-match").is_some() {
                return not_found(set, address);
            }
            for column in columns(set).iter().filter(|column| column.required) {
                if updates.get(column.name).is_none_or(Value::is_null) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80040200",
                        &format!(
                            "A validation error occurred. The value for attribute '{}' of entity '{logical_name}' is required.",
                            column.name.trim_start_matches('_').trim_end_matches("_value")
                        ),
                    );
                }
            }
            if set == "salesorderdetails"
                && updates.get("_productid_value").is_none_or(Value::is_null)
                && updates.get("productdescription").is_none_or(Value::is_null)
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80040200",
                    "A validation error occurred. A line needs an existing product or a write-in product description.",
                );
            }
            if by_key && let Some((_, value)) = address.split_once('=') {
                updates.insert(ALTERNATE_KEY.into(), json!(value.trim_matches('\'')));
            }
        }
        let stamp = time(now_seconds());
        let version = inner.next_version();
        let id = match &found {
            Some(id) => id.clone(),
            None => {
                let id = inner.insert(static_set(set), json!({}), now_seconds());
                if set == "opportunities"
                    && let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id))
                {
                    row.fields.insert("statecode".into(), json!(0));
                    row.fields.insert("statuscode".into(), json!(1));
                }
                id
            }
        };
        if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id)) {
            let before = row.fields.clone();
            for (name, value) in updates {
                if value.is_null() {
                    row.fields.remove(&name);
                } else {
                    row.fields.insert(name, value);
                }
            }
            if set == "salesorderdetails" {
                let quantity = number(row.fields.get("quantity")).unwrap_or_default();
                let price = number(row.fields.get("priceperunit")).unwrap_or_default();
                row.fields.insert("extendedamount".into(), decimal_json(quantity * price));
            }
            if created || row.fields != before {
                row.version = version;
                row.fields.insert("modifiedon".into(), json!(stamp));
            }
        }
        if set == "salesorderdetails"
            && let Some(order) = inner
                .live(set, &id)
                .and_then(|row| row.fields.get("_salesorderid_value"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        {
            inner.recompute_total(&order);
        }
        let entity_id = format!("{}/api/data/{}/{set}({id})", request.base, request.version);
        if request.prefers("return=representation") {
            let select = select_of(set, request).unwrap_or_else(|_| vec![key_of(set)]);
            let row = inner.render(set, &id, &select, false).unwrap_or_default();
            let etag = row.get("@odata.etag").and_then(Value::as_str).unwrap_or_default().to_owned();
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            return Reply::json(status, Value::Object(row)).with("ETag", etag).with("OData-EntityId", entity_id);
        }
        Reply::empty(StatusCode::NO_CONTENT).with("OData-EntityId", entity_id)
    }

    pub(super) fn remove(&self, set: &str, address: &str) -> Reply {
        let mut inner = self.lock();
        let id = match inner.locate(set, address) {
            Ok(Some(id)) => id,
            Ok(None) => return not_found(set, address),
            Err(reply) => return reply,
        };
        let version = inner.next_version();
        if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id)) {
            row.deleted = Some(version);
        }
        if set == "salesorders"
            && let Some(lines) = inner.tables.get_mut("salesorderdetails")
        {
            for line in lines.values_mut() {
                if line.fields.get("_salesorderid_value").and_then(Value::as_str) == Some(id.as_str()) {
                    line.deleted = Some(version);
                }
            }
        }
        Reply::empty(StatusCode::NO_CONTENT)
    }

    pub(super) fn close_opportunity(&self, won: bool, request: &Request<'_>) -> Reply {
        let Some(body) = request.body.as_ref().and_then(Value::as_object) else {
            return error(StatusCode::BAD_REQUEST, "0x80060891", "The request body must be a JSON object.");
        };
        let status = body.get("Status").and_then(Value::as_i64).unwrap_or(if won { 3 } else { 4 });
        let valid = if won { status == 3 } else { matches!(status, 4 | 5) };
        if !valid {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80040203",
                &format!(
                    "{status} is not a valid status code for state code OpportunityState.{}",
                    if won { "Won" } else { "Lost" }
                ),
            );
        }
        let Some(target) = body
            .get("OpportunityClose")
            .and_then(|close| close.get("opportunityid@odata.bind"))
            .and_then(Value::as_str)
            .and_then(|path| path.trim_start_matches('/').strip_prefix("opportunities("))
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            return error(StatusCode::BAD_REQUEST, "0x80040203", "OpportunityClose.opportunityid is required.");
        };
        let mut inner = self.lock();
        let id = match inner.locate("opportunities", target) {
            Ok(Some(id)) => id,
            Ok(None) => return not_found("opportunities", target),
            Err(reply) => return reply,
        };
        let version = inner.next_version();
        let Some(row) = inner.tables.get_mut("opportunities").and_then(|rows| rows.get_mut(&id)) else {
            return not_found("opportunities", target);
        };
        if row.fields.get("statecode").and_then(Value::as_i64).unwrap_or(0) != 0 {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80040203",
                "Cannot close the entity because it is not in the correct state.",
            );
        }
        row.fields.insert("statecode".into(), json!(if won { 1 } else { 2 }));
        row.fields.insert("statuscode".into(), json!(status));
        row.fields.insert("actualclosedate".into(), json!(Timestamp::now().date().to_string()));
        row.fields.insert("modifiedon".into(), json!(time(now_seconds())));
        row.version = version;
        Reply::empty(StatusCode::NO_CONTENT)
    }
}
