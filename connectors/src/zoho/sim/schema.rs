//! The org's field metadata: which fields each module has, their types, picklists and mandatory flags,
//! and `GET /crm/{v}/settings/fields`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use super::{Shared, invalid_module};
use crate::zoho::wire;

pub(super) struct FieldSpec {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) writable: bool,
    pub(super) required: bool,
    pub(super) picklist: &'static [&'static str],
}

const fn field(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: false, picklist: &[] }
}

const fn read_only(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: false, required: false, picklist: &[] }
}

const fn required(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: true, picklist: &[] }
}

const fn picklist(name: &'static str, required: bool, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec { name, kind: "picklist", writable: true, required, picklist: values }
}

const STAGES: &[&str] = &[
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Identify Decision Makers",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed-Lost to Competition",
];
const LEAD_SOURCES: &[&str] =
    &["Web", "Phone Inquiry", "Partner Referral", "Partner", "Purchased List", "Online Store", "Other", "-None-"];
const SO_STATUSES: &[&str] = &["Created", "Approved", "Delivered", "Cancelled"];

pub(super) fn schema(module: &str) -> Vec<FieldSpec> {
    let mut fields = vec![read_only("id", "bigint")];
    match module {
        "Accounts" => fields.extend([
            required("Account_Name", "text"),
            field("Account_Number", "text"),
            field("Website", "website"),
            field("Industry", "text"),
            field("Billing_Country", "text"),
            read_only("Owner", "ownerlookup"),
        ]),
        "Leads" => fields.extend([
            field("First_Name", "text"),
            required("Last_Name", "text"),
            field("Company", "text"),
            field("Email", "email"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            field("Lead_Status", "picklist"),
        ]),
        "Deals" => fields.extend([
            required("Deal_Name", "text"),
            field("Account_Name", "lookup"),
            field("Amount", "currency"),
            field("Currency", "picklist"),
            picklist("Stage", true, STAGES),
            field("Probability", "integer"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            required("Closing_Date", "date"),
        ]),
        _ => fields.extend([
            required("Subject", "text"),
            required("Account_Name", "lookup"),
            field("Deal_Name", "lookup"),
            picklist("Status", false, SO_STATUSES),
            field("Due_Date", "date"),
            read_only("Grand_Total", "currency"),
            field("Currency", "picklist"),
            field("Description", "textarea"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            required("Ordered_Items", "subform"),
        ]),
    }
    fields.extend([
        read_only("Created_Time", "datetime"),
        read_only("Modified_Time", "datetime"),
        field("Crmsync_Id", "text"),
    ]);
    fields
}

pub(super) async fn fields(
    State(sim): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let module = query.get("module").cloned().unwrap_or_default();
    if wire::entity_of(&module).is_none() && module != "Products" {
        return sim.with_credits(invalid_module(json!({"resource_path_index": 0})));
    }
    let mut fields: Vec<Value> =
        schema(&module).iter().map(|spec| json!({"api_name": spec.name, "data_type": spec.kind})).collect();
    if sim.faults.drift_unknown_field() {
        fields.push(json!({"api_name": "Region", "data_type": "text"}));
    }
    if sim.faults.drift_renamed_field() && module == "Deals" {
        for field in &mut fields {
            if field["api_name"] == "Stage" {
                field["api_name"] = json!("Deal_Stage");
            }
        }
    }
    sim.with_credits(axum::Json(json!({"fields": fields})).into_response())
}
