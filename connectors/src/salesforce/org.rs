//! What crmsync knows of one org: each object's describe (field names, types, and what a create or
//! update may and must carry) and the org's currency mode.
//!
//! Currency: `CurrencyIsoCode` exists on records only where multi-currency is enabled (it is off by
//! default); a single-currency org keeps every amount in its corporate currency, which
//! `SELECT DefaultCurrencyIsoCode FROM Organization` returns (Organization object reference:
//! developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_organization.htm).

use std::collections::{BTreeMap, BTreeSet};

use super::wire::{self, DescribeField};

/// The currency field of multi-currency orgs.
pub const CURRENCY_FIELD: &str = "CurrencyIsoCode";

/// One object's describe, indexed by field name.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Object API name.
    pub object: String,
    fields: BTreeMap<String, DescribeField>,
    children: Vec<wire::ChildRelationship>,
}

/// What a write is about to do, which decides the field-level permission it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A record the org may not have yet (upsert by external id): fields must be `createable`.
    Create,
    /// A record the org has (update by Id): fields must be `updateable`.
    Update,
}

impl ObjectInfo {
    /// Indexes a describe response.
    pub fn from_describe(describe: wire::Describe) -> Self {
        Self {
            object: describe.name,
            fields: describe.fields.into_iter().map(|field| (field.name.clone(), field)).collect(),
            children: describe.child_relationships,
        }
    }

    /// Returns the field names.
    pub fn names(&self) -> BTreeSet<String> {
        self.fields.keys().cloned().collect()
    }

    /// Returns whether the object has a field.
    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Returns a field's describe.
    pub fn field(&self, name: &str) -> Option<&DescribeField> {
        self.fields.get(name)
    }

    /// Returns whether records carry their own currency (multi-currency org).
    pub fn is_multi_currency(&self) -> bool {
        self.has(CURRENCY_FIELD)
    }

    /// Returns whether a write of `kind` may set `name`: the field exists and the org lets it be
    /// set on create (`createable`) or on update (`updateable`).
    pub fn is_writable(&self, name: &str, kind: WriteKind) -> bool {
        self.field(name).is_some_and(|field| match kind {
            WriteKind::Create => field.createable,
            WriteKind::Update => field.updateable,
        })
    }

    /// The relationship name a parent is referenced by in an upsert by external id (`AccountId` →
    /// `Account`), when the field is a lookup to `target`.
    pub fn relationship_to(&self, id_field: &str, target: &str) -> Option<&str> {
        let field = self.field(id_field)?;
        if field.field_type != "reference" || !field.reference_to.iter().any(|to| to == target) {
            return None;
        }
        field.relationship_name.as_deref()
    }

    /// The subquery name of a child relationship (`OrderItem` on Order → `OrderItems`).
    pub fn child_relationship(&self, child: &str) -> Option<&str> {
        self.children
            .iter()
            .find(|relationship| relationship.child_s_object == child)
            .and_then(|relationship| relationship.relationship_name.as_deref())
    }

    /// Fields a create must carry: the describe's `createable && !nillable && !defaultedOnCreate`,
    /// plus the ones the object reference documents as required although describe reports them
    /// nillable (`documented`; e.g. Order.AccountId, nillable because contract orders exist).
    pub fn required_on_create<'a>(&'a self, documented: &'a [&'a str]) -> Vec<&'a str> {
        let mut required: Vec<&str> = self
            .fields
            .values()
            .filter(|field| field.is_required_on_create())
            .map(|field| field.name.as_str())
            .collect();
        for name in documented {
            if self.is_writable(name, WriteKind::Create) && !required.contains(name) {
                required.push(name);
            }
        }
        required
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A describe body shaped like the documented response (sObject Describe,
    /// developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_sobject_describe.htm;
    /// DescribeFieldResult attributes as in a recorded single-currency Developer Edition org), trimmed
    /// to a few fields: the lookup is listed by its field name with `referenceTo` and
    /// `relationshipName`, `Probability` is defaulted on create, there is no `CurrencyIsoCode`, and
    /// the top level carries the attributes crmsync ignores.
    const OPPORTUNITY_DESCRIBE: &str = r#"{
      "actionOverrides": [], "activateable": false, "createable": true, "custom": false,
      "deletable": true, "keyPrefix": "006", "label": "Opportunity", "labelPlural": "Opportunities",
      "name": "Opportunity", "queryable": true, "updateable": true,
      "childRelationships": [
        {"cascadeDelete": true, "childSObject": "OpportunityLineItem", "deprecatedAndHidden": false,
         "field": "OpportunityId", "junctionIdListNames": [], "junctionReferenceTo": [],
         "relationshipName": "OpportunityLineItems", "restrictedDelete": false},
        {"cascadeDelete": true, "childSObject": "FeedItem", "deprecatedAndHidden": false,
         "field": "ParentId", "junctionIdListNames": [], "junctionReferenceTo": [],
         "relationshipName": null, "restrictedDelete": false}
      ],
      "fields": [
        {"aggregatable": true, "autoNumber": false, "byteLength": 18, "calculated": false,
         "createable": false, "custom": false, "defaultValue": null, "defaultedOnCreate": true,
         "externalId": false, "idLookup": true, "label": "Opportunity ID", "length": 18, "name": "Id",
         "nillable": false, "picklistValues": [], "precision": 0, "referenceTo": [],
         "relationshipName": null, "scale": 0, "soapType": "tns:ID", "type": "id", "unique": false,
         "updateable": false},
        {"aggregatable": true, "autoNumber": false, "byteLength": 18, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": false,
         "externalId": false, "idLookup": false, "label": "Account ID", "length": 18,
         "name": "AccountId", "nillable": true, "picklistValues": [], "precision": 0,
         "referenceTo": ["Account"], "relationshipName": "Account", "scale": 0, "soapType": "tns:ID",
         "type": "reference", "unique": false, "updateable": true},
        {"aggregatable": true, "autoNumber": false, "byteLength": 360, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": false,
         "externalId": false, "idLookup": true, "label": "Name", "length": 120, "name": "Name",
         "nillable": false, "picklistValues": [], "precision": 0, "referenceTo": [],
         "relationshipName": null, "scale": 0, "soapType": "xsd:string", "type": "string",
         "unique": false, "updateable": true},
        {"aggregatable": true, "autoNumber": false, "byteLength": 765, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": false,
         "externalId": false, "idLookup": false, "label": "Stage", "length": 255, "name": "StageName",
         "nillable": false, "precision": 0, "referenceTo": [], "relationshipName": null, "scale": 0,
         "picklistValues": [
           {"active": true, "defaultValue": false, "label": "Prospecting", "validFor": null, "value": "Prospecting"},
           {"active": true, "defaultValue": false, "label": "Closed Won", "validFor": null, "value": "Closed Won"}
         ],
         "soapType": "xsd:string", "type": "picklist", "unique": false, "updateable": true},
        {"aggregatable": true, "autoNumber": false, "byteLength": 0, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": false,
         "externalId": false, "idLookup": false, "label": "Amount", "length": 0, "name": "Amount",
         "nillable": true, "picklistValues": [], "precision": 18, "referenceTo": [],
         "relationshipName": null, "scale": 2, "soapType": "xsd:double", "type": "currency",
         "unique": false, "updateable": true},
        {"aggregatable": true, "autoNumber": false, "byteLength": 0, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": true,
         "externalId": false, "idLookup": false, "label": "Probability (%)", "length": 0,
         "name": "Probability", "nillable": true, "picklistValues": [], "precision": 3,
         "referenceTo": [], "relationshipName": null, "scale": 0, "soapType": "xsd:double",
         "type": "percent", "unique": false, "updateable": true},
        {"aggregatable": true, "autoNumber": false, "byteLength": 0, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": false,
         "externalId": false, "idLookup": false, "label": "Close Date", "length": 0,
         "name": "CloseDate", "nillable": false, "picklistValues": [], "precision": 0,
         "referenceTo": [], "relationshipName": null, "scale": 0, "soapType": "xsd:date",
         "type": "date", "unique": false, "updateable": true},
        {"aggregatable": false, "autoNumber": false, "byteLength": 0, "calculated": false,
         "createable": false, "custom": false, "defaultValue": null, "defaultedOnCreate": true,
         "externalId": false, "idLookup": false, "label": "Won", "length": 0, "name": "IsWon",
         "nillable": false, "picklistValues": [], "precision": 0, "referenceTo": [],
         "relationshipName": null, "scale": 0, "soapType": "xsd:boolean", "type": "boolean",
         "unique": false, "updateable": false},
        {"aggregatable": true, "autoNumber": false, "byteLength": 18, "calculated": false,
         "createable": true, "custom": false, "defaultValue": null, "defaultedOnCreate": true,
         "externalId": false, "idLookup": false, "label": "Owner ID", "length": 18, "name": "OwnerId",
         "nillable": false, "picklistValues": [], "precision": 0, "referenceTo": ["User"],
         "relationshipName": "Owner", "scale": 0, "soapType": "tns:ID", "type": "reference",
         "unique": false, "updateable": true}
      ],
      "urls": {"describe": "/services/data/v62.0/sobjects/Opportunity/describe",
               "sobject": "/services/data/v62.0/sobjects/Opportunity"}
    }"#;

    fn opportunity() -> ObjectInfo {
        ObjectInfo::from_describe(serde_json::from_str(OPPORTUNITY_DESCRIBE).unwrap())
    }

    #[test]
    fn a_documented_describe_lists_lookups_by_field_name_with_their_relationship() {
        let info = opportunity();
        assert!(info.has("AccountId") && !info.has("Account"), "fields[] name the id field, not the relationship");
        assert_eq!(info.relationship_to("AccountId", "Account"), Some("Account"));
        assert_eq!(info.relationship_to("AccountId", "Opportunity"), None, "referenceTo is checked");
        assert_eq!(info.relationship_to("Name", "Account"), None, "only reference fields have one");
        assert_eq!(info.field("Amount").map(|field| (field.field_type.as_str(), field.scale)), Some(("currency", 2)));
        assert_eq!(info.child_relationship("OpportunityLineItem"), Some("OpportunityLineItems"));
        assert_eq!(info.child_relationship("FeedItem"), None, "a null relationshipName cannot be subqueried");
    }

    #[test]
    fn required_fields_come_from_nillable_defaulted_and_createable() {
        let info = opportunity();
        let mut required = info.required_on_create(&[]);
        required.sort_unstable();
        // Probability and OwnerId are defaulted on create, IsWon and Id are not createable.
        assert_eq!(required, ["CloseDate", "Name", "StageName"]);
        assert_eq!(info.required_on_create(&["AccountId", "IsWon"]).last(), Some(&"AccountId"));
        assert!(!info.is_multi_currency(), "no CurrencyIsoCode: a single-currency org");
        assert!(info.is_writable("Amount", WriteKind::Create) && !info.is_writable("IsWon", WriteKind::Update));
        assert!(!info.is_writable(CURRENCY_FIELD, WriteKind::Create));
    }
}
