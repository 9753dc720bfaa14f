//! The simulated org's objects and fields (what describe reports and writes are checked against).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use super::{SalesforceSim, Shared, object_name, rest_error, wire};

/// One field of the simulated org, with the describe attributes writes are checked against.
#[derive(Clone, Copy, Debug)]
pub(super) struct FieldSpec {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) createable: bool,
    pub(super) updateable: bool,
    pub(super) nillable: bool,
    pub(super) defaulted: bool,
    /// Required on create although describe reports it nillable (the object reference says
    /// "Required": Order.AccountId, nillable because contract-based orders exist).
    pub(super) documented_required: bool,
    pub(super) picklist: &'static [&'static str],
    /// `(referenceTo, relationshipName)` of a lookup.
    pub(super) reference: Option<(&'static str, &'static str)>,
    pub(super) length: u32,
    pub(super) precision: u32,
    pub(super) scale: u32,
    pub(super) external_id: bool,
    pub(super) custom: bool,
}

impl FieldSpec {
    /// Whether a create must carry it (the org neither accepts null nor fills it).
    pub(super) fn required_on_create(&self) -> bool {
        self.createable && ((!self.nillable && !self.defaulted) || self.documented_required)
    }
}

/// A field users edit: createable, updateable, nillable.
const EDITABLE: FieldSpec = FieldSpec {
    name: "",
    kind: "string",
    createable: true,
    updateable: true,
    nillable: true,
    defaulted: false,
    documented_required: false,
    picklist: &[],
    reference: None,
    length: 255,
    precision: 0,
    scale: 0,
    external_id: false,
    custom: false,
};

/// A system field: neither createable nor updateable, never null.
const SYSTEM: FieldSpec =
    FieldSpec { createable: false, updateable: false, nillable: false, defaulted: true, length: 0, ..EDITABLE };

const fn text(name: &'static str, length: u32) -> FieldSpec {
    FieldSpec { name, length, ..EDITABLE }
}

const fn required_text(name: &'static str, length: u32) -> FieldSpec {
    FieldSpec { name, length, nillable: false, ..EDITABLE }
}

const fn typed(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, length: 0, ..EDITABLE }
}

const fn system(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, length: if matches!(kind.as_bytes(), b"id" | b"reference") { 18 } else { 0 }, ..SYSTEM }
}

const fn lookup(name: &'static str, to: &'static str, relationship: &'static str) -> FieldSpec {
    FieldSpec { name, kind: "reference", length: 18, reference: Some((to, relationship)), ..EDITABLE }
}

const fn money(name: &'static str) -> FieldSpec {
    FieldSpec { name, kind: "currency", length: 0, precision: 18, scale: 2, ..EDITABLE }
}

const fn picklist(name: &'static str, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec { name, kind: "picklist", picklist: values, ..EDITABLE }
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
/// Order `StatusCode` values (the status category of each `Status` value).
const STATUS_CODES: &[&str] = &["Draft", "Activated"];
const LEAD_STATUSES: &[&str] =
    &["Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];

/// The fields of an object in this org. `multi_currency`: whether the org has multi-currency
/// enabled (then money-bearing objects have `CurrencyIsoCode`; it is off by default in Salesforce).
/// Attributes follow the documented describe of a Developer Edition org (sObject Describe,
/// developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_sobject_describe.htm).
pub(super) fn schema(object: &str, multi_currency: bool) -> Vec<FieldSpec> {
    let mut fields = vec![system("Id", "id")];
    let currency = FieldSpec {
        name: "CurrencyIsoCode",
        kind: "picklist",
        picklist: CURRENCIES,
        nillable: false,
        defaulted: true,
        length: 3,
        ..EDITABLE
    };
    match object {
        "Account" => fields.extend([
            required_text("Name", 255),
            text("AccountNumber", 40),
            FieldSpec { kind: "url", ..text("Website", 255) },
            text("Industry", 255),
            text("BillingCountry", 80),
            // Compound: readable by REST SOQL, not by Bulk API 2.0 queries, never written.
            FieldSpec { createable: false, updateable: false, ..typed("BillingAddress", "address") },
        ]),
        "Lead" => fields.extend([
            text("FirstName", 40),
            required_text("LastName", 80),
            required_text("Company", 255),
            FieldSpec { kind: "email", ..text("Email", 80) },
            picklist("LeadSource", LEAD_SOURCES),
            FieldSpec { nillable: false, defaulted: true, ..picklist("Status", LEAD_STATUSES) },
            FieldSpec { updateable: false, ..system("IsConverted", "boolean") },
            FieldSpec {
                nillable: true,
                defaulted: false,
                reference: Some(("Account", "ConvertedAccount")),
                ..system("ConvertedAccountId", "reference")
            },
            FieldSpec {
                nillable: true,
                defaulted: false,
                reference: Some(("Opportunity", "ConvertedOpportunity")),
                ..system("ConvertedOpportunityId", "reference")
            },
        ]),
        "Opportunity" => {
            fields.extend([
                required_text("Name", 120),
                lookup("AccountId", "Account", "Account"),
                money("Amount"),
                FieldSpec { nillable: false, ..picklist("StageName", STAGES) },
                FieldSpec { kind: "percent", precision: 3, defaulted: true, ..typed("Probability", "percent") },
                picklist("LeadSource", LEAD_SOURCES),
                FieldSpec { nillable: false, ..typed("CloseDate", "date") },
                system("IsWon", "boolean"),
                system("IsClosed", "boolean"),
            ]);
            if multi_currency {
                fields.push(currency);
            }
        }
        "Order" => {
            fields.extend([
                FieldSpec { kind: "string", length: 30, ..system("OrderNumber", "string") },
                FieldSpec { custom: true, ..text("Crmsync_Order_Number__c", 80) },
                // Nillable in describe, "Required" in the Order object reference.
                FieldSpec { documented_required: true, ..lookup("AccountId", "Account", "Account") },
                lookup("OpportunityId", "Opportunity", "Opportunity"),
                FieldSpec { nillable: false, documented_required: true, ..picklist("Status", ORDER_STATUSES) },
                // The status category of `Status`, set by the org (Order object reference:
                // StatusCode, restricted picklist Draft/Activated, like OrderStatus.StatusCode).
                FieldSpec { createable: false, updateable: false, ..picklist("StatusCode", STATUS_CODES) },
                FieldSpec { nillable: false, ..typed("EffectiveDate", "date") },
                // Needed before order products can be added (Order object reference).
                lookup("Pricebook2Id", "Pricebook2", "Pricebook2"),
                FieldSpec {
                    createable: false,
                    updateable: false,
                    nillable: true,
                    precision: 16,
                    ..money("TotalAmount")
                },
                FieldSpec { kind: "textarea", ..text("Description", 32_000) },
                picklist("LeadSource", LEAD_SOURCES),
            ]);
            if multi_currency {
                fields.push(currency);
            }
        }
        // The price book catalog: read-only here (an admin maintains it in the org).
        "Pricebook2" => {
            fields.extend([
                FieldSpec { createable: false, updateable: false, ..required_text("Name", 255) },
                system("IsStandard", "boolean"),
                system("IsActive", "boolean"),
                system("SystemModstamp", "datetime"),
                system("IsDeleted", "boolean"),
            ]);
            return fields;
        }
        "PricebookEntry" => {
            fields.extend([
                FieldSpec { createable: false, updateable: false, ..text("Name", 255) },
                FieldSpec { createable: false, updateable: false, ..text("ProductCode", 255) },
                FieldSpec { createable: false, updateable: false, ..lookup("Product2Id", "Product2", "Product2") },
                FieldSpec {
                    createable: false,
                    updateable: false,
                    ..lookup("Pricebook2Id", "Pricebook2", "Pricebook2")
                },
                FieldSpec { createable: false, updateable: false, ..money("UnitPrice") },
                system("IsActive", "boolean"),
                system("SystemModstamp", "datetime"),
                system("IsDeleted", "boolean"),
            ]);
            if multi_currency {
                fields.push(FieldSpec { createable: false, updateable: false, ..currency });
            }
            return fields;
        }
        // Order products: OrderId, PricebookEntryId, Quantity and UnitPrice are required on create
        // (OrderItem object reference).
        "OrderItem" => {
            fields.extend([
                FieldSpec { nillable: false, updateable: false, ..lookup("OrderId", "Order", "Order") },
                FieldSpec {
                    nillable: false,
                    updateable: false,
                    ..lookup("PricebookEntryId", "PricebookEntry", "PricebookEntry")
                },
                FieldSpec { nillable: false, kind: "double", precision: 18, scale: 2, ..typed("Quantity", "double") },
                FieldSpec { nillable: false, ..money("UnitPrice") },
                FieldSpec { createable: false, updateable: false, ..money("TotalPrice") },
                system("SystemModstamp", "datetime"),
                system("IsDeleted", "boolean"),
            ]);
            return fields;
        }
        _ => return Vec::new(),
    }
    fields.extend([
        FieldSpec {
            createable: true,
            updateable: true,
            reference: Some(("User", "Owner")),
            ..system("OwnerId", "reference")
        },
        system("CreatedDate", "datetime"),
        system("SystemModstamp", "datetime"),
        system("IsDeleted", "boolean"),
        FieldSpec { external_id: true, custom: true, ..text("Crmsync_Id__c", 36) },
    ]);
    fields
}

/// Objects the simulated org has besides the synced ones: the price book catalog and order products.
pub(super) const CATALOG_OBJECTS: &[&str] = &["Pricebook2", "PricebookEntry", "OrderItem"];

/// Order `Status` values whose status category (`StatusCode`) is Activated; the others are Draft.
/// Orders are inserted with a Draft status and activated by an update that sets only `Status`
/// (Order object reference, Status/StatusCode).
pub(super) const ACTIVATED_STATUSES: &[&str] = &["Activated", "Shipped", "Delivered", "Invoiced"];

/// The `StatusCode` (status category) of an order `Status` value.
pub(super) fn status_code(status: &str) -> &'static str {
    if ACTIVATED_STATUSES.contains(&status) { "Activated" } else { "Draft" }
}

fn soap_type(kind: &str) -> &'static str {
    match kind {
        "id" | "reference" => "tns:ID",
        "currency" | "double" | "percent" => "xsd:double",
        "date" => "xsd:date",
        "datetime" => "xsd:dateTime",
        "boolean" => "xsd:boolean",
        "int" => "xsd:int",
        "address" => "urn:address",
        _ => "xsd:string",
    }
}

fn label(name: &str) -> String {
    let base = name.trim_end_matches("__c").trim_end_matches("Id").replace('_', " ");
    let mut label = String::new();
    for (index, character) in base.chars().enumerate() {
        if index > 0 && character.is_ascii_uppercase() && !label.ends_with(' ') {
            label.push(' ');
        }
        label.push(character);
    }
    if label.is_empty() { name.to_owned() } else { label }
}

/// One `fields[]` entry with the attributes of the documented DescribeFieldResult.
pub(super) fn field_json(spec: &FieldSpec) -> Value {
    let (reference_to, relationship) = match spec.reference {
        Some((to, relationship)) => (vec![to], Value::String(relationship.to_owned())),
        None => (Vec::new(), Value::Null),
    };
    let picklist: Vec<Value> = spec
        .picklist
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let default = spec.defaulted && index == 0;
            json!({"active": true, "defaultValue": default, "label": value, "validFor": null, "value": value})
        })
        .collect();
    let filterable = spec.kind != "textarea" && spec.kind != "address";
    // Two halves: one `json!` of ~56 keys exceeds the macro's recursion limit.
    let mut field = json!({
        "aggregatable": filterable && spec.kind != "boolean",
        "aiPredictionField": false,
        "autoNumber": spec.name == "OrderNumber",
        "byteLength": spec.length * 3,
        "calculated": false,
        "calculatedFormula": null,
        "cascadeDelete": false,
        "caseSensitive": false,
        "compoundFieldName": null,
        "controllerName": null,
        "createable": spec.createable,
        "custom": spec.custom,
        "defaultValue": null,
        "defaultValueFormula": null,
        "defaultedOnCreate": spec.defaulted,
        "dependentPicklist": false,
        "deprecatedAndHidden": false,
        "digits": 0,
        "displayLocationInDecimal": false,
        "encrypted": false,
        "externalId": spec.external_id,
        "extraTypeInfo": null,
        "filterable": filterable,
        "filteredLookupInfo": null,
        "formulaTreatNullNumberAsZero": false,
        "groupable": filterable && !matches!(spec.kind, "currency" | "double" | "percent" | "datetime"),
        "highScaleNumber": false,
        "htmlFormatted": false,
    });
    let rest = json!({
        "idLookup": spec.name == "Id" || spec.external_id,
        "inlineHelpText": null,
        "label": label(spec.name),
        "length": spec.length,
        "mask": null,
        "maskType": null,
        "name": spec.name,
        "nameField": spec.name == "Name",
        "namePointing": false,
        "nillable": spec.nillable,
        "permissionable": spec.nillable && spec.createable,
        "picklistValues": picklist,
        "polymorphicForeignKey": false,
        "precision": spec.precision,
        "queryByDistance": false,
        "referenceTargetField": null,
        "referenceTo": reference_to,
        "relationshipName": relationship,
        "relationshipOrder": null,
        "restrictedDelete": false,
        "restrictedPicklist": !spec.picklist.is_empty(),
        "scale": spec.scale,
        "searchPrefilterable": false,
        "soapType": soap_type(spec.kind),
        "sortable": filterable,
        "type": spec.kind,
        "unique": spec.external_id,
        "updateable": spec.updateable,
        "writeRequiresMasterRead": false,
    });
    if let (Some(field), Value::Object(rest)) = (field.as_object_mut(), rest) {
        field.extend(rest);
    }
    field
}

/// The `sobjects[]` entry of the global describe, and the object-level attributes of a describe.
pub(super) fn object_json(object: &str, version: &str) -> Value {
    let prefix = wire::OBJECTS.iter().find(|(_, name, _)| *name == object).map_or("", |(_, _, prefix)| prefix);
    let plural = match object {
        "Opportunity" => "Opportunities".to_owned(),
        other => format!("{other}s"),
    };
    let base = format!("/services/data/{version}/sobjects/{object}");
    json!({
        "activateable": false, "associateEntityType": null, "associateParentEntity": null,
        "createable": true, "custom": false, "customSetting": false, "deepCloneable": false,
        "deletable": true, "deprecatedAndHidden": false, "feedEnabled": false, "hasSubtypes": false,
        "isInterface": false, "isSubtype": false, "keyPrefix": prefix, "label": object,
        "labelPlural": plural, "layoutable": true, "mergeable": object != "Opportunity" && object != "Order",
        "mruEnabled": true, "name": object, "queryable": true, "replicateable": true,
        "retrieveable": true, "searchable": true, "triggerable": true, "undeletable": true,
        "updateable": true,
        "urls": {
            "sobject": base,
            "describe": format!("{base}/describe"),
            "rowTemplate": format!("{base}/{{ID}}"),
        },
    })
}

fn child_relationships(object: &str) -> Value {
    let child = |child: &str, field: &str, relationship: &str| {
        json!({"cascadeDelete": true, "childSObject": child, "deprecatedAndHidden": false, "field": field,
               "junctionIdListNames": [], "junctionReferenceTo": [], "relationshipName": relationship,
               "restrictedDelete": false})
    };
    match object {
        "Account" => json!([child("Opportunity", "AccountId", "Opportunities"), child("Order", "AccountId", "Orders")]),
        "Opportunity" => json!([child("Order", "OpportunityId", "Orders")]),
        "Order" => json!([child("OrderItem", "OrderId", wire::ORDER_ITEMS_RELATIONSHIP)]),
        _ => json!([]),
    }
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
    /// The fields describe reports now (schema drift faults included).
    pub(super) fn describe_fields(&self, object: &str) -> Vec<FieldSpec> {
        let mut fields = schema(object, self.multi_currency);
        if self.faults.drift_renamed_field() && object == "Opportunity" {
            for field in &mut fields {
                if field.name == "StageName" {
                    field.name = "Stage__c";
                }
            }
        }
        if self.faults.drift_unknown_field() {
            fields.push(FieldSpec { custom: true, ..text("Region__c", 255) });
        }
        fields
    }
}

/// `GET /services/data/vXX.X/sobjects/{SObject}/describe`.
pub(super) async fn describe(
    State(sim): Shared,
    headers: HeaderMap,
    Path((version, object)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let response = match object_name(&object) {
        Some(name) => {
            let mut body = object_json(name, &version);
            body["fields"] = Value::Array(sim.describe_fields(name).iter().map(field_json).collect());
            body["childRelationships"] = child_relationships(name);
            body["recordTypeInfos"] = json!([]);
            body["actionOverrides"] = json!([]);
            axum::Json(body).into_response()
        }
        None => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    };
    sim.with_limit_info(response)
}

/// `GET /services/data/vXX.X/sobjects`: the global describe.
pub(super) async fn describe_global(State(sim): Shared, headers: HeaderMap, Path(version): Path<String>) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let objects: Vec<Value> = wire::OBJECTS.iter().map(|(_, object, _)| object_json(object, &version)).collect();
    sim.with_limit_info(
        axum::Json(json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": objects})).into_response(),
    )
}
