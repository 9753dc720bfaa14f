//! Writes: `POST` creates, `PATCH` upserts by id or alternate key (with `If-Match`/`If-None-Match`)
//! and `DELETE`, each validated against the table's columns before anything changes: a column
//! must exist and be valid for the operation (`IsValidForCreate` / `IsValidForUpdate`), a create
//! must carry every required column the platform does not fill, lookups are set with
//! `@odata.bind`, and the record's state allows the write (won and lost opportunities and orders
//! that are not active are read-only; an order's lines change only while it is active). A
//! salesorder's `statecode`/`statuscode` PATCH is the `SetState` message (ce/developer/entities/salesorder.md,
//! "SetState | PATCH … statecode and statuscode"), allowed for Active ↔ Submitted and Fulfilled →
//! Invoiced.
//!
//! Error codes are Dataverse's (powerapps-docs:powerapps-docs/developer/data-platform/includes/data-service-errors.md):
//! `0x80040200` RequiredFieldMissing, `0x8004022e` CannotUpdateBecauseItIsReadOnly, `0x80043b09`
//! ParentReadOnly, `0x80040217` ObjectDoesNotExist, `0x80060891` RecordNotFoundByEntityKey,
//! `0x8004431A` PicklistValueOutOfRange, `0x80043afb` CannotSpecifyBothProductAndProductDesc.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::read::select_of;
use super::reply::{Reply, error, not_found};
use super::schema::{
    Column, Kind, OWNER_ID, column_named, columns, default_status, key_of, logical, state_of_status, static_set,
};
use super::table::{Inner, number};
use super::{ALTERNATE_KEY, Dynamics365Sim, Request, now_seconds, time};
use crate::canonical::{Timestamp, decimal_json};

/// A record that is not in its editable state.
pub(super) fn read_only() -> Reply {
    error(StatusCode::BAD_REQUEST, "0x8004022e", "The object cannot be updated because it is read-only.")
}

fn invalid_argument(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, "0x80040203", message)
}

fn payload_error(set: &str, message: &str) -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "0x80048d19",
        &format!("Error identified in Payload provided by the user for Entity :'{set}' ----> {message}"),
    )
}

/// The state of a live row (0 when the table has none).
pub(super) fn state_of(inner: &Inner, set: &str, id: &str) -> i64 {
    inner.live(set, id).and_then(|row| row.fields.get("statecode")).and_then(Value::as_i64).unwrap_or(0)
}

/// The order a line belongs to.
fn order_of_line(inner: &Inner, id: &str) -> Option<String> {
    inner.live("salesorderdetails", id)?.fields.get("_salesorderid_value")?.as_str().map(str::to_owned)
}

impl Dynamics365Sim {
    pub(super) fn write(&self, set: &str, address: &str, request: &Request<'_>) -> Reply {
        if matches!(set, "transactioncurrencies" | "pricelevels" | "products") {
            return error(
                StatusCode::FORBIDDEN,
                "0x80040220",
                &format!("Principal user is missing prvWrite{} privilege.", logical(set)),
            );
        }
        let Some(Value::Object(body)) = &request.body else {
            return payload_error(set, "the request body must be a JSON object");
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
            return payload_error(set, "key attributes must not be repeated in the request body");
        }
        if let Some(condition) = request.header("if-match") {
            let Some(id) = &found else {
                return if by_key {
                    error(
                        StatusCode::NOT_FOUND,
                        "0x80060891",
                        &format!("A record with the specified key values does not exist in {logical_name} entity"),
                    )
                } else {
                    not_found(set, address)
                };
            };
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
        let creating = found.is_none();
        // Validate every property before touching anything.
        let mut updates = Map::new();
        for (name, value) in body {
            if let Some(navigation) = name.strip_suffix("@odata.bind") {
                let column = columns(set).iter().find(|column| match column.kind {
                    Kind::Lookup(nav, _) | Kind::Customer(nav, _) => nav == navigation,
                    _ => false,
                });
                let Some(column) = column else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!(
                            "An undeclared property '{navigation}' which only has property annotations in the payload but no property value was found in the payload."
                        ),
                    );
                };
                if let Err(reply) = writable(column, creating) {
                    return reply;
                }
                let (Kind::Lookup(_, target) | Kind::Customer(_, target)) = column.kind else { continue };
                if value.is_null() {
                    updates.insert(column.property(), Value::Null);
                    continue;
                }
                let Some(path) = value.as_str() else {
                    return payload_error(set, &format!("{name} must be a string"));
                };
                let Some(inside) = path
                    .trim_start_matches('/')
                    .strip_prefix(target)
                    .and_then(|rest| rest.strip_prefix('('))
                    .and_then(|rest| rest.strip_suffix(')'))
                else {
                    return payload_error(set, &format!("{name}: {path} does not address {target}"));
                };
                let target_id = if matches!(target, "transactioncurrencies" | "products" | "pricelevels") {
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
                updates.insert(column.property(), json!(target_id));
                continue;
            }
            if name == ALTERNATE_KEY {
                match value {
                    Value::String(_) | Value::Null => {
                        updates.insert(name.clone(), value.clone());
                        continue;
                    }
                    _ => return payload_error(set, "crmsync_id must be a string"),
                }
            }
            let Some(column) = column_named(set, name).filter(|column| !column.kind.is_lookup()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80060888",
                    &format!("Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{logical_name}'."),
                );
            };
            if let Err(reply) = writable(column, creating) {
                return reply;
            }
            if let Err(reply) = check_value(set, column, value) {
                return reply;
            }
            updates.insert(name.clone(), value.clone());
        }
        // State changes: opportunities close through their actions; an order's PATCH of statecode or
        // statuscode is SetState, on its own.
        let state_change = updates.contains_key("statecode") || updates.contains_key("statuscode");
        if state_change && set == "opportunities" {
            return invalid_argument(
                "Use the WinOpportunity or LoseOpportunity message to close an opportunity; its state cannot be set by an update.",
            );
        }
        if let Some(id) = &found {
            let current = state_of(&inner, set, id);
            if state_change {
                if updates.keys().any(|name| name != "statecode" && name != "statuscode") {
                    return invalid_argument("A state change (statecode, statuscode) must be sent on its own.");
                }
                match next_state(set, current, &updates) {
                    Ok((state, status)) => {
                        updates.insert("statecode".into(), json!(state));
                        updates.insert("statuscode".into(), json!(status));
                    }
                    Err(reply) => return reply,
                }
            } else if matches!(set, "opportunities" | "salesorders") && current != 0 {
                return read_only();
            }
        }
        // An order's lines change only while the order is active.
        if set == "salesorderdetails" {
            let parent = updates
                .get("_salesorderid_value")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| found.as_deref().and_then(|id| order_of_line(&inner, id)));
            if parent.is_some_and(|order| state_of(&inner, "salesorders", &order) != 0) {
                return error(StatusCode::BAD_REQUEST, "0x80043b09", "The parent is read only and cannot be edited.");
            }
            let has = |property: &str| {
                updates.get(property).is_some_and(|value| !value.is_null())
                    || found.as_deref().and_then(|id| inner.live(set, id)).is_some_and(|row| {
                        !updates.contains_key(property)
                            && row.fields.get(property).is_some_and(|value| !value.is_null())
                    })
            };
            if has("_productid_value") && has("productdescription") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80043afb",
                    "You cannot set both 'productid' and 'productdescription' for the same record.",
                );
            }
        }
        if creating {
            if request.header("if-match").is_some() {
                return not_found(set, address);
            }
            if let Some(missing) = columns(set)
                .iter()
                .filter(|column| column.required_on_create())
                .find(|column| updates.get(&column.property()).is_none_or(Value::is_null))
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80040200",
                    &format!(
                        "Required field missing. The value for attribute '{}' of entity '{logical_name}' is required on create.",
                        missing.name
                    ),
                );
            }
            if set == "salesorderdetails"
                && updates.get("_productid_value").is_none_or(Value::is_null)
                && updates.get("productdescription").is_none_or(Value::is_null)
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80040200",
                    "Required field missing. A line needs an existing product (productid) or a write-in product (productdescription).",
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
                if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id)) {
                    // What the platform fills on create: owner, initial state and status, and the
                    // base currency of money-bearing records.
                    if columns(set).iter().any(|column| column.kind == Kind::Owner) {
                        row.fields.insert("_ownerid_value".into(), json!(OWNER_ID));
                    }
                    if column_named(set, "statecode").is_some() {
                        row.fields.insert("statecode".into(), json!(0));
                        row.fields.insert("statuscode".into(), json!(default_status(set, 0).unwrap_or(1)));
                    }
                    if column_named(set, "transactioncurrencyid").is_some() {
                        row.fields.insert("_transactioncurrencyid_value".into(), json!(super::schema::CURRENCIES[0].0));
                    }
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
            if creating || row.fields != before {
                row.version = version;
                row.fields.insert("modifiedon".into(), json!(stamp));
            }
        }
        if set == "salesorderdetails"
            && let Some(order) = order_of_line(&inner, &id)
        {
            inner.recompute_total(&order);
        }
        let entity_id = format!("{}/api/data/{}/{set}({id})", request.base, request.version);
        if request.prefers("return=representation") {
            let select = select_of(set, request).unwrap_or_else(|_| vec![key_of(set)]);
            let row = inner.render(set, &id, &select, false).unwrap_or_default();
            let etag = row.get("@odata.etag").and_then(Value::as_str).unwrap_or_default().to_owned();
            let status = if creating { StatusCode::CREATED } else { StatusCode::OK };
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
        if set == "salesorderdetails"
            && order_of_line(&inner, &id).is_some_and(|order| state_of(&inner, "salesorders", &order) != 0)
        {
            return error(StatusCode::BAD_REQUEST, "0x80043b09", "The parent is read only and cannot be edited.");
        }
        let version = inner.next_version();
        let parent = if set == "salesorderdetails" { order_of_line(&inner, &id) } else { None };
        if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id)) {
            row.deleted = Some(version);
        }
        if let Some(order) = parent {
            inner.recompute_total(&order);
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
}

/// Whether a create (or an update) may set a column.
fn writable(column: &Column, creating: bool) -> Result<(), Reply> {
    match (creating, column.create, column.update) {
        (true, false, _) => Err(invalid_argument(&format!("The attribute '{}' is not valid for create.", column.name))),
        (false, _, false) => {
            Err(invalid_argument(&format!("The attribute '{}' is not valid for update.", column.name)))
        }
        _ => Ok(()),
    }
}

fn check_value(set: &str, column: &Column, value: &Value) -> Result<(), Reply> {
    let name = column.name;
    let logical_name = logical(set);
    let invalid = |expected: &str| {
        payload_error(
            set,
            &format!("Cannot convert the literal '{value}' to the expected type '{expected}' of property '{name}'."),
        )
    };
    if value.is_null() {
        return Ok(());
    }
    let out_of_range = |number: &serde_json::Number, accepted: String| {
        error(
            StatusCode::BAD_REQUEST,
            "0x8004431A",
            &format!(
                "A validation error occurred. The value {number} of '{name}' on record of type '{logical_name}' is outside the valid range. Accepted Values: {accepted}"
            ),
        )
    };
    match column.kind {
        Kind::Key | Kind::Lookup(..) | Kind::Customer(..) | Kind::Owner => Err(invalid("read-only key")),
        Kind::Text(max) | Kind::Memo(max) => match value {
            Value::String(text) if text.chars().count() > max => Err(error(
                StatusCode::BAD_REQUEST,
                "0x80044331",
                &format!(
                    "A validation error occurred. The length of the '{name}' attribute of the '{logical_name}' entity exceeded the maximum allowed length of '{max}'."
                ),
            )),
            Value::String(_) => Ok(()),
            _ => Err(invalid("Edm.String")),
        },
        Kind::Int(low, high) => match value {
            Value::Number(number) if number.as_i64().is_some_and(|n| (low..=high).contains(&n)) => Ok(()),
            Value::Number(number) => Err(out_of_range(number, format!("{low}..{high}"))),
            _ => Err(invalid("Edm.Int32")),
        },
        Kind::Choice(options) | Kind::State(options) => match value {
            Value::Number(number)
                if number.as_i64().is_some_and(|n| options.iter().any(|(option, _)| *option == n)) =>
            {
                Ok(())
            }
            Value::Number(number) => Err(out_of_range(
                number,
                options.iter().map(|(option, _)| option.to_string()).collect::<Vec<_>>().join(","),
            )),
            _ => Err(invalid("Edm.Int32")),
        },
        Kind::Status(options) => match value {
            Value::Number(number)
                if number.as_i64().is_some_and(|n| options.iter().any(|(option, ..)| *option == n)) =>
            {
                Ok(())
            }
            Value::Number(number) => Err(out_of_range(
                number,
                options.iter().map(|(option, ..)| option.to_string()).collect::<Vec<_>>().join(","),
            )),
            _ => Err(invalid("Edm.Int32")),
        },
        Kind::Money | Kind::Decimal => {
            if value.is_number() {
                Ok(())
            } else {
                Err(invalid("Edm.Decimal"))
            }
        }
        Kind::Date => {
            if value.as_str().is_some_and(|text| text.parse::<jiff::civil::Date>().is_ok()) {
                Ok(())
            } else {
                Err(invalid("Edm.Date"))
            }
        }
        Kind::DateTime => {
            if value.as_str().is_some_and(|text| text.parse::<Timestamp>().is_ok()) {
                Ok(())
            } else {
                Err(invalid("Edm.DateTimeOffset"))
            }
        }
        Kind::Bool => {
            if value.is_boolean() {
                Ok(())
            } else {
                Err(invalid("Edm.Boolean"))
            }
        }
    }
}

/// The `(statecode, statuscode)` a SetState PATCH moves an existing salesorder to, if the move is
/// one Dataverse allows: Active ↔ Submitted, Fulfilled → Invoiced, or another status of the same state.
/// Fulfilling and cancelling go through `FulfillSalesOrder` and `CancelSalesOrder`.
fn next_state(set: &str, current: i64, updates: &Map<String, Value>) -> Result<(i64, i64), Reply> {
    let requested_state = updates.get("statecode").and_then(Value::as_i64);
    let requested_status = updates.get("statuscode").and_then(Value::as_i64);
    let state = match (requested_state, requested_status) {
        (Some(state), _) => state,
        (None, Some(status)) => state_of_status(set, status).unwrap_or(-1),
        (None, None) => current,
    };
    let status = match requested_status {
        Some(status) => status,
        None => default_status(set, state).unwrap_or(-1),
    };
    if state_of_status(set, status) != Some(state) {
        return Err(invalid_argument(&format!(
            "{status} is not a valid status code for state code {state} of {}.",
            logical(set)
        )));
    }
    let allowed = state == current
        || matches!((set, current, state), ("salesorders", 0, 1) | ("salesorders", 1, 0) | ("salesorders", 3, 4));
    if !allowed {
        return Err(invalid_argument(&format!(
            "A {} in state {current} cannot be set to state {state} by an update.",
            logical(set)
        )));
    }
    Ok((state, status))
}
