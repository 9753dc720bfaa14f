//! `EntityDefinitions`: the tables' definitions and their attributes, shaped as the Web API
//! documents them (powerapps-docs:powerapps-docs/developer/data-platform/webapi/query-metadata-web-api.md):
//! `EntityDefinitions` (every table), `EntityDefinitions(LogicalName='x')` with `$select` and
//! `$expand=Attributes($select=…)`, the collection `EntityDefinitions(LogicalName='x')/Attributes`,
//! and that collection cast to one attribute type (`…/Attributes/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata`,
//! whose items carry `DateTimeBehavior`: `UserLocal` for `createdon`/`modifiedon`, `DateOnly` for
//! date-only columns; behavior-format-date-time-attribute.md). `MetadataId` is always returned; a
//! lookup is listed under its logical name (`customerid`) with `AttributeType` `Customer`, `Lookup` or
//! `Owner`, never as the `_customerid_value` property rows carry.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::reply::{Reply, error};
use super::schema::{Kind, SETS, attributes, column_of, key_of, logical, metadata_id, set_of};
use super::{Dynamics365Sim, Request};

/// The property names a `$select=a,b` list keeps (`None`: all).
fn selected(list: Option<&str>) -> Option<Vec<String>> {
    list.map(|list| list.split(',').map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect())
}

/// Keeps the selected properties of a metadata object (annotations and `MetadataId` always stay).
fn project(object: Value, select: Option<&[String]>) -> Value {
    let (Value::Object(fields), Some(select)) = (&object, select) else { return object };
    let kept: Map<String, Value> = fields
        .iter()
        .filter(|(name, _)| {
            name.starts_with('@') || *name == "MetadataId" || select.iter().any(|wanted| wanted == *name)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Value::Object(kept)
}

/// The `$select` inside `$expand=Attributes($select=…)`; `Some(None)` when Attributes are expanded
/// without one, `None` when they are not expanded.
fn expanded_attributes(expand: Option<&String>) -> Option<Option<String>> {
    let expand = expand?;
    let rest = expand.trim().strip_prefix("Attributes")?;
    let Some(options) = rest.strip_prefix('(').and_then(|rest| rest.strip_suffix(')')) else {
        return Some(None);
    };
    Some(options.split(';').find_map(|option| option.trim().strip_prefix("$select=")).map(str::to_owned))
}

impl Dynamics365Sim {
    /// Answers `EntityDefinitions` (every table, optionally `$filter=LogicalName eq '…'`),
    /// `EntityDefinitions(LogicalName='…')` and `EntityDefinitions(LogicalName='…')/Attributes`.
    pub(super) fn definitions(&self, request: &Request<'_>) -> Reply {
        let resource = request.resource.as_str();
        let context = format!("{}/api/data/{}/$metadata", request.base, request.version);
        if resource == "EntityDefinitions" {
            let only = match request.query.get("$filter").map(|filter| filter.trim()) {
                None => None,
                Some(filter) => {
                    match filter.strip_prefix("LogicalName eq '").and_then(|rest| rest.strip_suffix('\'')) {
                        Some(name) => Some(name.to_owned()),
                        None => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "0x80060888",
                                &format!(
                                    "$filter {filter:?} on EntityDefinitions is not supported by this simulator (only LogicalName eq '…')."
                                ),
                            );
                        }
                    }
                }
            };
            let value: Vec<Value> = SETS
                .iter()
                .filter(|set| only.as_deref().is_none_or(|name| logical(set) == name))
                .map(|set| self.definition_of(set, request))
                .collect();
            return Reply::json(
                StatusCode::OK,
                json!({"@odata.context": format!("{context}#EntityDefinitions"), "value": value}),
            );
        }
        // `…/Attributes/Microsoft.Dynamics.CRM.<Type>`: the attributes of that type only.
        let (resource, cast) = match resource.split_once("/Attributes/Microsoft.Dynamics.CRM.") {
            Some((entity_part, cast)) => (format!("{entity_part}/Attributes"), Some(cast)),
            None => (resource.to_owned(), None),
        };
        let (entity_part, attributes_only) = match resource.strip_suffix("/Attributes") {
            Some(entity_part) => (entity_part, true),
            None => (resource.as_str(), false),
        };
        let Some(logical_name) =
            entity_part.strip_prefix("EntityDefinitions(LogicalName='").and_then(|rest| rest.strip_suffix("')"))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80060888",
                "Only EntityDefinitions, EntityDefinitions(LogicalName='…') and its Attributes are served by this simulator.",
            );
        };
        let Some(set) = set_of(logical_name) else {
            return error(
                StatusCode::NOT_FOUND,
                "0x80040217",
                &format!("Could not find entity with name '{logical_name}'."),
            );
        };
        if attributes_only {
            let select = selected(request.query.get("$select").map(String::as_str));
            let value: Vec<Value> = self
                .attributes_of(set)
                .into_iter()
                .filter(|attribute| {
                    cast.is_none_or(|cast| attribute["@odata.type"] == json!(format!("#Microsoft.Dynamics.CRM.{cast}")))
                })
                .map(|mut attribute| {
                    if cast == Some("DateTimeAttributeMetadata") {
                        let name = attribute["LogicalName"].as_str().unwrap_or_default();
                        let date_only = column_of(set, name).is_some_and(|column| matches!(column.kind, Kind::Date));
                        attribute["DateTimeBehavior"] =
                            json!({"Value": if date_only { "DateOnly" } else { "UserLocal" }});
                    }
                    project(attribute, select.as_deref())
                })
                .collect();
            let path = match cast {
                Some(cast) => format!("Attributes/Microsoft.Dynamics.CRM.{cast}"),
                None => "Attributes".to_owned(),
            };
            return Reply::json(
                StatusCode::OK,
                json!({"@odata.context": format!("{context}#EntityDefinitions('{logical_name}')/{path}"), "value": value}),
            );
        }
        let mut definition = self.definition_of(set, request);
        definition["@odata.context"] = json!(format!("{context}#EntityDefinitions/$entity"));
        Reply::json(StatusCode::OK, definition)
    }

    /// A table's attributes, with the schema-drift faults applied.
    fn attributes_of(&self, set: &str) -> Vec<Value> {
        let mut described = attributes(set);
        if self.faults.drift_unknown_field() {
            let mut extra = described.first().cloned().unwrap_or_else(|| json!({}));
            extra["LogicalName"] = json!("new_region");
            extra["SchemaName"] = json!("New_region");
            extra["AttributeType"] = json!("String");
            extra["@odata.type"] = json!("#Microsoft.Dynamics.CRM.StringAttributeMetadata");
            extra["IsPrimaryId"] = json!(false);
            described.push(extra);
        }
        if self.faults.drift_renamed_field() && set == "opportunities" {
            described.retain(|attribute| attribute["LogicalName"] != "name");
        }
        described
    }

    /// One table's definition, with `$select` and `$expand=Attributes(...)` applied.
    fn definition_of(&self, set: &str, request: &Request<'_>) -> Value {
        let tracking = !self.lock().untracked.contains(set)
            && !matches!(set, "transactioncurrencies" | "products" | "pricelevels");
        let definition = json!({
            "LogicalName": logical(set),
            "EntitySetName": set,
            "PrimaryIdAttribute": key_of(set),
            "PrimaryNameAttribute": if set == "leads" { "fullname" } else { "name" },
            "ChangeTrackingEnabled": tracking,
            // A managed property (BooleanManagedProperty): whether "Track changes" can be turned on
            // (use-change-tracking-synchronize-data-external-systems.md filters on its `Value`).
            "CanChangeTrackingBeEnabled": {"Value": true, "CanBeChanged": false, "ManagedPropertyLogicalName": "canchangetrackingbeenabled"},
            "MetadataId": metadata_id(set, ""),
        });
        let mut definition = project(definition, selected(request.query.get("$select").map(String::as_str)).as_deref());
        if let Some(attribute_select) = expanded_attributes(request.query.get("$expand")) {
            let select = selected(attribute_select.as_deref());
            definition["Attributes"] = Value::Array(
                self.attributes_of(set).into_iter().map(|attribute| project(attribute, select.as_deref())).collect(),
            );
        }
        definition
    }
}
