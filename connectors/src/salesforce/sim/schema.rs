//! The simulated org's objects and fields (what describe reports and writes are checked against).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::atomic::Ordering;

use super::{SalesforceSim, Shared, object_name, rest_error, wire};

pub(super) struct FieldSpec {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) writable: bool,
    pub(super) required: bool,
    pub(super) picklist: &'static [&'static str],
}

const fn field(name: &'static str, kind: &'static str, writable: bool) -> FieldSpec {
    FieldSpec { name, kind, writable, required: false, picklist: &[] }
}

const fn required(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: true, picklist: &[] }
}

const fn picklist(name: &'static str, required: bool, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec { name, kind: "picklist", writable: true, required, picklist: values }
}

const STAGES: &[&str] = &[
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
];
const LEAD_SOURCES: &[&str] = &["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"];
const ORDER_STATUSES: &[&str] = &["Draft", "Activated", "Shipped", "Delivered", "Invoiced", "Cancelled"];
const LEAD_STATUSES: &[&str] =
    &["Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];

pub(super) fn schema(object: &str) -> Vec<FieldSpec> {
    let mut fields = vec![field("Id", "id", false)];
    match object {
        "Account" => fields.extend([
            required("Name", "string"),
            field("AccountNumber", "string", true),
            field("Website", "url", true),
            field("Industry", "string", true),
            field("BillingCountry", "string", true),
            field("OwnerId", "reference", false),
        ]),
        "Lead" => fields.extend([
            field("FirstName", "string", true),
            required("LastName", "string"),
            required("Company", "string"),
            field("Email", "email", true),
            picklist("LeadSource", false, LEAD_SOURCES),
            picklist("Status", false, LEAD_STATUSES),
            field("IsConverted", "boolean", false),
            field("ConvertedAccountId", "reference", false),
            field("ConvertedOpportunityId", "reference", false),
        ]),
        "Opportunity" => fields.extend([
            required("Name", "string"),
            field("AccountId", "reference", true),
            field("Amount", "currency", true),
            picklist("CurrencyIsoCode", false, CURRENCIES),
            picklist("StageName", true, STAGES),
            field("Probability", "percent", true),
            picklist("LeadSource", false, LEAD_SOURCES),
            required("CloseDate", "date"),
            field("IsWon", "boolean", false),
            field("IsClosed", "boolean", false),
        ]),
        _ => fields.extend([
            field("OrderNumber", "string", false),
            field("Crmsync_Order_Number__c", "string", true),
            required("AccountId", "reference"),
            field("OpportunityId", "reference", true),
            picklist("Status", true, ORDER_STATUSES),
            required("EffectiveDate", "date"),
            field("TotalAmount", "currency", false),
            picklist("CurrencyIsoCode", false, CURRENCIES),
            field("Description", "textarea", true),
            picklist("LeadSource", false, LEAD_SOURCES),
        ]),
    }
    fields.extend([
        field("CreatedDate", "datetime", false),
        field("SystemModstamp", "datetime", false),
        field("IsDeleted", "boolean", false),
        FieldSpec { name: "Crmsync_Id__c", kind: "string", writable: true, required: false, picklist: &[] },
    ]);
    fields
}

pub(super) fn stage_probability(stage: &str) -> i64 {
    match stage {
        "Prospecting" | "Qualification" => 10,
        "Needs Analysis" => 20,
        "Value Proposition" => 50,
        "Id. Decision Makers" => 60,
        "Perception Analysis" => 70,
        "Proposal/Price Quote" => 75,
        "Negotiation/Review" => 90,
        "Closed Won" => 100,
        _ => 0,
    }
}
impl SalesforceSim {
    pub(super) fn describe_fields(&self, object: &str) -> Vec<wire::DescribeField> {
        let mut fields: Vec<wire::DescribeField> = schema(object)
            .into_iter()
            .map(|spec| wire::DescribeField {
                name: spec.name.to_owned(),
                field_type: spec.kind.to_owned(),
                nillable: !spec.required,
                external_id: spec.name == "Crmsync_Id__c",
                picklist_values: spec
                    .picklist
                    .iter()
                    .map(|value| wire::PicklistValue { value: (*value).to_owned(), active: true })
                    .collect(),
            })
            .collect();
        if self.faults.drift_renamed_field() && object == "Opportunity" {
            for field in &mut fields {
                if field.name == "StageName" {
                    field.name = "Stage__c".into();
                }
            }
        }
        if self.faults.drift_unknown_field() {
            fields.push(wire::DescribeField {
                name: "Region__c".into(),
                field_type: "string".into(),
                nillable: true,
                external_id: false,
                picklist_values: Vec::new(),
            });
        }
        fields
    }
}

pub(super) async fn describe(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, object)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let response = match object_name(&object) {
        Some(name) => axum::Json(json!({"name": name, "fields": sim.describe_fields(name)})).into_response(),
        None => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    };
    sim.with_limit_info(response)
}
