//! The org's field metadata: which fields each module has, their types, picklists and mandatory flags,
//! and `GET /crm/{v}/settings/fields`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use super::{Shared, invalid_module};

pub(super) struct FieldSpec {
    pub(super) name: &'static str,
    /// `data_type`: `text`, `picklist`, `lookup`, `subform`, …
    pub(super) kind: &'static str,
    pub(super) writable: bool,
    /// `system_mandatory`: a create without it fails with `MANDATORY_NOT_FOUND`.
    pub(super) required: bool,
    pub(super) picklist: &'static [&'static str],
    /// The module a `lookup` points to.
    pub(super) lookup: Option<&'static str>,
}

const fn field(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: false, picklist: &[], lookup: None }
}

const fn read_only(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: false, required: false, picklist: &[], lookup: None }
}

const fn required(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: true, picklist: &[], lookup: None }
}

const fn picklist(name: &'static str, required: bool, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec { name, kind: "picklist", writable: true, required, picklist: values, lookup: None }
}

const fn lookup(name: &'static str, required: bool, module: &'static str) -> FieldSpec {
    FieldSpec { name, kind: "lookup", writable: true, required, picklist: &[], lookup: Some(module) }
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
/// The active currencies of a multi-currency org (base first).
pub(super) const CURRENCIES: &[&str] = &["EUR", "USD", "GBP"];
const SO_STATUSES: &[&str] = &["Created", "Approved", "Delivered", "Cancelled"];

/// The modules the simulated org serves (`settings/modules`): the synced ones and Products.
pub(super) const MODULES: &[(&str, &str, &str)] = &[
    ("Accounts", "Account", "Accounts"),
    ("Leads", "Lead", "Leads"),
    ("Deals", "Deal", "Deals"),
    ("Sales_Orders", "Sales Order", "Sales Orders"),
    ("Products", "Product", "Products"),
];

/// A module's fields. `Currency` exists only in orgs with multi-currency enabled (Zoho adds the field
/// to every module with currency fields when an admin enables it).
pub(super) fn schema(module: &str, multi_currency: bool) -> Vec<FieldSpec> {
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
            lookup("Account_Name", false, "Accounts"),
            field("Amount", "currency"),
            picklist("Currency", false, CURRENCIES),
            picklist("Stage", true, STAGES),
            field("Probability", "integer"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            required("Closing_Date", "date"),
        ]),
        "Products" => fields.extend([
            required("Product_Name", "text"),
            field("Product_Code", "text"),
            field("Unit_Price", "currency"),
            field("Product_Active", "boolean"),
        ]),
        _ => fields.extend([
            required("Subject", "text"),
            lookup("Account_Name", true, "Accounts"),
            lookup("Deal_Name", false, "Deals"),
            picklist("Status", false, SO_STATUSES),
            field("Due_Date", "date"),
            read_only("Grand_Total", "currency"),
            picklist("Currency", false, CURRENCIES),
            field("Description", "textarea"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            required("Ordered_Items", "subform"),
        ]),
    }
    if !multi_currency {
        fields.retain(|spec| spec.name != "Currency");
    }
    fields.extend([
        read_only("Created_Time", "datetime"),
        read_only("Modified_Time", "datetime"),
        field("Crmsync_Id", "text"),
    ]);
    fields
}

/// `json_type` of a `data_type`, as the documented field metadata pairs them
/// (zoho/crm-oas v8.0/fields/operations/getFields/examples/response-200-fullexample.md: `text` → `string`,
/// `ownerlookup` → `jsonobject`, `double` → `double`).
fn json_type(kind: &str) -> &'static str {
    match kind {
        "lookup" | "ownerlookup" => "jsonobject",
        "subform" | "multiselectpicklist" => "jsonarray",
        "currency" | "double" => "double",
        "integer" => "integer",
        "boolean" => "boolean",
        _ => "string",
    }
}

/// One field's metadata in the documented `settings/fields` shape (the keys clients read: `api_name`,
/// `data_type`, `json_type`, `system_mandatory`, `read_only`, `field_read_only`, `pick_list_values`,
/// `lookup.module`, `length`, `decimal_place`, `display_label`), per zoho/crm-oas v8.0 fields.json
/// (`fields`, `pick_list_values`, `lookup` schemas) and its getFields example.
pub(super) fn field_meta(module: &str, index: usize, spec: &FieldSpec) -> Value {
    let label = spec.name.replace('_', " ");
    let id =
        format!("41508680000000{:02}{index:03}", MODULES.iter().position(|(name, ..)| *name == module).unwrap_or(0));
    let pick_list_values: Vec<Value> = spec
        .picklist
        .iter()
        .enumerate()
        .map(|(position, value)| {
            json!({"display_value": value, "actual_value": value, "type": "used", "id": format!("{id}{position:02}"),
                   "sequence_number": position + 1, "colour_code": null})
        })
        .collect();
    let lookup = match spec.lookup {
        Some(target) => json!({
            "display_label": label, "api_name": spec.name, "id": id,
            "module": {"api_name": target, "id": format!("41508680000000{:05}", MODULES.iter().position(|(name, ..)| *name == target).unwrap_or(0))},
        }),
        None => json!({}),
    };
    let system = matches!(spec.name, "id" | "Created_Time" | "Modified_Time" | "Grand_Total");
    json!({
        "api_name": spec.name,
        "field_label": label,
        "display_label": label,
        "data_type": spec.kind,
        "json_type": json_type(spec.kind),
        "system_mandatory": spec.required,
        "read_only": system,
        "field_read_only": !spec.writable,
        "custom_field": spec.name == "Crmsync_Id",
        "visible": true,
        "length": match spec.kind { "textarea" => 32_000, "bigint" => 19, "lookup" | "ownerlookup" => 120, _ => 255 },
        "decimal_place": if spec.kind == "currency" { json!(2) } else { Value::Null },
        "pick_list_values": pick_list_values,
        "lookup": lookup,
        "unique": if spec.name == "Crmsync_Id" { json!({"casesensitive": "false"}) } else { json!({}) },
        "subform": if spec.kind == "subform" { json!({"module": {"api_name": spec.name}}) } else { Value::Null },
        "auto_number": {},
        "id": id,
        "type": "used",
    })
}

pub(super) async fn fields(
    State(sim): Shared,
    headers: HeaderMap,
    Path(version): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let module = query.get("module").cloned().unwrap_or_default();
    if !MODULES.iter().any(|(name, ..)| *name == module) {
        return sim.with_credits(invalid_module(json!({"resource_path_index": 0})));
    }
    let mut fields: Vec<Value> =
        sim.schema(&module).iter().enumerate().map(|(index, spec)| field_meta(&module, index, spec)).collect();
    if sim.faults.drift_unknown_field() {
        fields.push(field_meta(&module, fields.len(), &field("Region", "text")));
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

/// One module in the documented `settings/modules` shape (zoho/crm-oas v8.0 modules.json: `api_name`,
/// `module_name`, `api_supported`, `plural_label`, `singular_label`, `generated_type`, permissions).
fn module_meta(index: usize, (api_name, singular, plural): &(&str, &str, &str)) -> Value {
    let writable = *api_name != "Products";
    json!({
        "api_name": api_name, "module_name": plural, "plural_label": plural, "singular_label": singular,
        "api_supported": true, "generated_type": "default", "id": format!("41508680000000{index:05}"),
        "creatable": writable, "editable": writable, "deletable": writable, "viewable": true, "visible": true,
        "global_search_supported": true, "sequence_number": index + 1,
    })
}

/// `GET /crm/{v}/settings/modules`.
pub(super) async fn modules(State(sim): Shared, headers: HeaderMap, Path(version): Path<String>) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let modules: Vec<Value> = MODULES.iter().enumerate().map(|(index, module)| module_meta(index, module)).collect();
    sim.with_credits(axum::Json(json!({"modules": modules})).into_response())
}

/// `GET /crm/{v}/settings/modules/{module}`.
pub(super) async fn module(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, module)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    match MODULES.iter().enumerate().find(|(_, (name, ..))| *name == module) {
        Some((index, found)) => {
            sim.with_credits(axum::Json(json!({"modules": [module_meta(index, found)]})).into_response())
        }
        None => sim.with_credits(invalid_module(json!({"resource_path_index": 0}))),
    }
}
