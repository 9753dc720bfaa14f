//! The canonical model: what crmsync stores, whatever CRM a record came from.
//!
//! Plain data and no vendor words. Ids ([`CanonicalId`], [`ConnectionId`], [`ExternalId`]), the four
//! entities ([`Account`], [`Lead`], [`Opportunity`], [`Order`] with [`OrderLine`]s), [`Money`]
//! (decimal + currency, never `f64`), one UTC [`Timestamp`] type, the vocabularies of the sales flow
//! ([`Stage`], [`OrderStatus`], [`Channel`]) with their default vendor tables ([`Vocabulary`]), and the
//! stored [`Record`] with its [`Link`]s, per-field [`Provenance`] and tombstone.
//!
//! Entity structs have only optional fields: a change from a vendor carries what it knows, and the
//! reconciler merges field by field. [`EntityData::to_fields`] / [`EntityData::from_fields`] give the
//! field-name view that merge, privacy lists and CSV export work on.

mod account;
mod ids;
mod lead;
mod money;
mod opportunity;
mod order;
mod record;
mod time;
mod vocab;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use account::{Account, normalise_domain};
pub use ids::{CanonicalId, ConnectionId, ExternalId};
pub use lead::{Lead, join_name, split_name};
pub use money::{
    Currency, CurrencyError, FxError, FxTable, Money, MoneyError, NotConvertible, decimal_json, in_single_currency,
};
pub use opportunity::{Opportunity, StageEntry};
pub use order::{Order, OrderLine};
pub use record::{Link, MatchReason, Provenance, Record};
pub use time::{Timestamp, TimestampError};
pub use vocab::{Channel, OrderStatus, Stage, UnknownValue, ValueMap, VendorKind, Vocabulary};

/// The kinds of record crmsync syncs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// Customer companies.
    Account,
    /// Prospects.
    Lead,
    /// Deals in the pipeline.
    Opportunity,
    /// Sales orders.
    Order,
}

impl Entity {
    /// Every entity, in dependency order (an order's account and opportunity come before it).
    pub const ALL: &'static [Self] = &[Self::Account, Self::Lead, Self::Opportunity, Self::Order];

    /// Returns the config spelling (`opportunity`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Lead => "lead",
            Self::Opportunity => "opportunity",
            Self::Order => "order",
        }
    }

    /// Returns the entity's field names, in export order.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            Self::Account => Account::FIELDS,
            Self::Lead => Lead::FIELDS,
            Self::Opportunity => Opportunity::FIELDS,
            Self::Order => Order::FIELDS,
        }
    }

    /// Returns the one-byte tag used in store keys. Never renumber: it is on disk.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Account => 1,
            Self::Lead => 2,
            Self::Opportunity => 3,
            Self::Order => 4,
        }
    }

    /// Returns the entity for a store tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|entity| entity.tag() == tag)
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entity name outside the model.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown entity {0:?} (expected one of account, lead, opportunity, order)")]
pub struct UnknownEntity(pub String);

impl FromStr for Entity {
    type Err = UnknownEntity;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|entity| entity.as_str() == text).ok_or_else(|| UnknownEntity(text.to_owned()))
    }
}

/// A reference from one record to another (an opportunity's account).
///
/// Coming from a vendor it holds that vendor's id; in the store it holds the canonical id; on the way
/// out to a vendor it holds the canonical id and, when the target already has the record, the target's id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordRef {
    /// The canonical id, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<CanonicalId>,
    /// The vendor's id, where one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalId>,
}

impl RecordRef {
    /// A reference by vendor id.
    pub fn external(id: impl Into<ExternalId>) -> Self {
        Self { canonical: None, external: Some(id.into()) }
    }

    /// A reference by canonical id.
    pub fn canonical(id: CanonicalId) -> Self {
        Self { canonical: Some(id), external: None }
    }
}

/// The values of one record of any entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entity", content = "fields", rename_all = "snake_case")]
pub enum EntityData {
    /// An account.
    Account(Account),
    /// A lead.
    Lead(Lead),
    /// An opportunity.
    Opportunity(Opportunity),
    /// An order.
    Order(Order),
}

/// Field values that do not fit an entity.
#[derive(Debug, thiserror::Error)]
#[error("invalid {entity} fields: {source}")]
pub struct FieldsError {
    entity: Entity,
    #[source]
    source: serde_json::Error,
}

impl EntityData {
    /// Returns an empty value of an entity.
    pub fn empty(entity: Entity) -> Self {
        match entity {
            Entity::Account => Self::Account(Account::default()),
            Entity::Lead => Self::Lead(Lead::default()),
            Entity::Opportunity => Self::Opportunity(Opportunity::default()),
            Entity::Order => Self::Order(Order::default()),
        }
    }

    /// Returns the entity.
    pub fn entity(&self) -> Entity {
        match self {
            Self::Account(_) => Entity::Account,
            Self::Lead(_) => Entity::Lead,
            Self::Opportunity(_) => Entity::Opportunity,
            Self::Order(_) => Entity::Order,
        }
    }

    /// Returns the present fields by name (absent fields are left out).
    pub fn to_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let value = match self {
            Self::Account(data) => serde_json::to_value(data),
            Self::Lead(data) => serde_json::to_value(data),
            Self::Opportunity(data) => serde_json::to_value(data),
            Self::Order(data) => serde_json::to_value(data),
        };
        match value {
            Ok(serde_json::Value::Object(map)) => map,
            // Entity structs are plain structs of serialisable fields: they always serialise to objects.
            _ => serde_json::Map::new(),
        }
    }

    /// Builds an entity value from fields by name.
    pub fn from_fields(
        entity: Entity,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, FieldsError> {
        let value = serde_json::Value::Object(fields);
        let result = match entity {
            Entity::Account => serde_json::from_value(value).map(Self::Account),
            Entity::Lead => serde_json::from_value(value).map(Self::Lead),
            Entity::Opportunity => serde_json::from_value(value).map(Self::Opportunity),
            Entity::Order => serde_json::from_value(value).map(Self::Order),
        };
        result.map_err(|source| FieldsError { entity, source })
    }

    /// Returns the references this record holds to other records, with the field names holding them.
    pub fn references(&self) -> Vec<(&'static str, Entity, &RecordRef)> {
        let mut found = Vec::new();
        match self {
            Self::Account(_) => {}
            Self::Lead(lead) => {
                if let Some(reference) = &lead.converted_account {
                    found.push(("converted_account", Entity::Account, reference));
                }
                if let Some(reference) = &lead.converted_opportunity {
                    found.push(("converted_opportunity", Entity::Opportunity, reference));
                }
            }
            Self::Opportunity(opportunity) => {
                if let Some(reference) = &opportunity.account {
                    found.push(("account", Entity::Account, reference));
                }
            }
            Self::Order(order) => {
                if let Some(reference) = &order.account {
                    found.push(("account", Entity::Account, reference));
                }
                if let Some(reference) = &order.opportunity {
                    found.push(("opportunity", Entity::Opportunity, reference));
                }
            }
        }
        found
    }

    /// Returns mutable access to the references, with the entity each points to.
    pub fn references_mut(&mut self) -> Vec<(Entity, &mut RecordRef)> {
        let mut found = Vec::new();
        match self {
            Self::Account(_) => {}
            Self::Lead(lead) => {
                if let Some(reference) = lead.converted_account.as_mut() {
                    found.push((Entity::Account, reference));
                }
                if let Some(reference) = lead.converted_opportunity.as_mut() {
                    found.push((Entity::Opportunity, reference));
                }
            }
            Self::Opportunity(opportunity) => {
                if let Some(reference) = opportunity.account.as_mut() {
                    found.push((Entity::Account, reference));
                }
            }
            Self::Order(order) => {
                if let Some(reference) = order.account.as_mut() {
                    found.push((Entity::Account, reference));
                }
                if let Some(reference) = order.opportunity.as_mut() {
                    found.push((Entity::Opportunity, reference));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_view_round_trips_and_omits_absent_fields() {
        let order = Order {
            number: Some("SO-1".into()),
            total_amount: Some(Money::parse_amount("10.50").unwrap()),
            currency: Some(Currency::new("EUR").unwrap()),
            lines: Some(vec![OrderLine {
                product: Some("Widget".into()),
                sku: None,
                quantity: 2.into(),
                unit_price: Money::parse_amount("5.25").unwrap(),
                line_total: Money::parse_amount("10.50").unwrap(),
            }]),
            ..Order::default()
        };
        let data = EntityData::Order(order);
        let fields = data.to_fields();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["currency", "lines", "number", "total_amount"]);
        assert_eq!(fields["total_amount"], "10.50");
        assert_eq!(EntityData::from_fields(Entity::Order, fields).unwrap(), data);
    }

    #[test]
    fn unknown_field_is_an_error_naming_the_entity() {
        let mut fields = serde_json::Map::new();
        fields.insert("colour".into(), "red".into());
        let error = EntityData::from_fields(Entity::Account, fields).unwrap_err();
        assert!(error.to_string().starts_with("invalid account fields: unknown field `colour`"), "{error}");
    }

    #[test]
    fn entity_tags_are_stable() {
        for entity in Entity::ALL {
            assert_eq!(Entity::from_tag(entity.tag()), Some(*entity));
            assert_eq!(entity.as_str().parse::<Entity>().unwrap(), *entity);
        }
    }
}
