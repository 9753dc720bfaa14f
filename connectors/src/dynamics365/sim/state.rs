//! State-changing messages: `WinOpportunity` / `LoseOpportunity` (unbound actions, crm-apis.md §3.7),
//! `FulfillSalesOrder` (bound to the salesorder collection:
//! `POST salesorders/Microsoft.Dynamics.CRM.FulfillSalesOrder`) and `CancelSalesOrder` (unbound), each
//! taking a close activity (`OpportunityClose` / `OrderClose`) that binds the record, and a `Status`
//! of the closed state (learn.microsoft.com/previous-versions/dynamicscrm-2016/developers-guide/mt607784,
//! …/mt607587). Each is refused on a record that is not open: closing a closed opportunity is
//! `0x80040515` OpportunityIsAlreadyClosed ("The opportunity is already closed."), and an order
//! that is not active or submitted cannot be fulfilled or cancelled.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::reply::{Reply, error, not_found};
use super::schema::{logical, state_of_status};
use super::write::state_of;
use super::{Dynamics365Sim, Request, now_seconds, time};
use crate::canonical::Timestamp;

/// The record a close activity binds (`{binding}@odata.bind: "/{set}(…)"`).
fn bound<'a>(body: &'a Value, close: &str, binding: &str, set: &str) -> Option<&'a str> {
    body.get(close)?
        .get(format!("{binding}@odata.bind"))?
        .as_str()?
        .trim_start_matches('/')
        .strip_prefix(set)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn invalid_argument(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, "0x80040203", message)
}

impl Dynamics365Sim {
    pub(super) fn close_opportunity(&self, won: bool, request: &Request<'_>) -> Reply {
        let Some(body) = request.body.as_ref().filter(|body| body.is_object()) else {
            return invalid_argument("The request body must be a JSON object.");
        };
        let status = body.get("Status").and_then(Value::as_i64).unwrap_or(if won { 3 } else { 4 });
        let wanted_state = if won { 1 } else { 2 };
        if state_of_status("opportunities", status) != Some(wanted_state) {
            return invalid_argument(&format!(
                "{status} is not a valid status code for state code OpportunityState.{}",
                if won { "Won" } else { "Lost" }
            ));
        }
        let Some(target) = bound(body, "OpportunityClose", "opportunityid", "opportunities") else {
            return invalid_argument("OpportunityClose.opportunityid is required.");
        };
        let mut inner = self.lock();
        let id = match inner.locate("opportunities", target) {
            Ok(Some(id)) => id,
            Ok(None) => return not_found("opportunities", target),
            Err(reply) => return reply,
        };
        if state_of(&inner, "opportunities", &id) != 0 {
            return error(StatusCode::BAD_REQUEST, "0x80040515", "The opportunity is already closed.");
        }
        let version = inner.next_version();
        let Some(row) = inner.tables.get_mut("opportunities").and_then(|rows| rows.get_mut(&id)) else {
            return not_found("opportunities", target);
        };
        row.fields.insert("statecode".into(), json!(wanted_state));
        row.fields.insert("statuscode".into(), json!(status));
        row.fields.insert("actualclosedate".into(), json!(Timestamp::now().date().to_string()));
        row.fields.insert("modifiedon".into(), json!(time(now_seconds())));
        row.version = version;
        Reply::empty(StatusCode::NO_CONTENT)
    }

    /// `FulfillSalesOrder` (`fulfil`) or `CancelSalesOrder`.
    pub(super) fn close_order(&self, fulfil: bool, request: &Request<'_>) -> Reply {
        let Some(body) = request.body.as_ref().filter(|body| body.is_object()) else {
            return invalid_argument("The request body must be a JSON object.");
        };
        let (wanted_state, state_name) = if fulfil { (3, "Fulfilled") } else { (2, "Canceled") };
        let Some(status) = body.get("Status").and_then(Value::as_i64) else {
            return invalid_argument("Status is required.");
        };
        if state_of_status("salesorders", status) != Some(wanted_state) {
            return invalid_argument(&format!(
                "{status} is not a valid status code for state code SalesOrderState.{state_name}"
            ));
        }
        let Some(target) = bound(body, "OrderClose", "salesorderid", "salesorders") else {
            return invalid_argument("OrderClose.salesorderid is required.");
        };
        let mut inner = self.lock();
        let id = match inner.locate("salesorders", target) {
            Ok(Some(id)) => id,
            Ok(None) => return not_found("salesorders", target),
            Err(reply) => return reply,
        };
        let current = state_of(&inner, "salesorders", &id);
        if !matches!(current, 0 | 1) {
            return invalid_argument(&format!(
                "The {} cannot be {} because it is not active or submitted (state {current}).",
                logical("salesorders"),
                if fulfil { "fulfilled" } else { "canceled" }
            ));
        }
        let version = inner.next_version();
        let Some(row) = inner.tables.get_mut("salesorders").and_then(|rows| rows.get_mut(&id)) else {
            return not_found("salesorders", target);
        };
        row.fields.insert("statecode".into(), json!(wanted_state));
        row.fields.insert("statuscode".into(), json!(status));
        if fulfil {
            row.fields.insert("datefulfilled".into(), json!(time(now_seconds())));
        }
        row.fields.insert("modifiedon".into(), json!(time(now_seconds())));
        row.version = version;
        Reply::empty(StatusCode::NO_CONTENT)
    }
}
