//! What the sales metrics read of a stored record.
//!
//! A metrics pass reads every lead, opportunity and order in the store. Decoding each into a whole
//! [`Record`] builds every string, the per-field provenance map and the order lines only to drop
//! them; [`RecordView`] deserialises the few fields the KPIs use straight from the store's JSON and
//! skips the rest without allocating. It mirrors [`Record`]'s serde shape (field names, the
//! `entity`/`fields` tagging); [`RecordView::of`] goes through that very serialisation, so the
//! fixtures of the KPI tests check the view too.

use crmsync_connectors::canonical::{
    CanonicalId, Channel, ConnectionId, Currency, Money, OrderStatus, Record, Stage, Timestamp,
};
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The fields of a stored record the metrics use.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordView {
    /// The entity's fields the metrics use.
    pub data: DataView,
    /// The connections holding a copy.
    #[serde(default)]
    pub links: Vec<LinkView>,
    /// Tombstone.
    #[serde(default)]
    pub deleted_at: Option<Timestamp>,
    /// Merged into another record.
    #[serde(default)]
    pub merged_into: Option<CanonicalId>,
}

impl RecordView {
    /// The view of an in-memory record, through the store's serialisation (for tests and small inputs;
    /// a store scan decodes views directly).
    pub fn of(record: &Record) -> Self {
        let json = serde_json::to_value(record).unwrap_or_default();
        // A Record always serialises to the shape the view reads.
        serde_json::from_value(json).unwrap_or(Self {
            data: DataView::Account(IgnoredAny),
            links: Vec::new(),
            deleted_at: None,
            merged_into: None,
        })
    }

    /// Returns whether `connection` holds a copy.
    pub fn linked_to(&self, connection: &ConnectionId) -> bool {
        self.links.iter().any(|link| &link.connection == connection)
    }
}

/// A vendor copy: only its connection.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkView {
    /// The connection.
    pub connection: ConnectionId,
}

/// Per entity, the fields the metrics use.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "entity", content = "fields", rename_all = "snake_case")]
pub enum DataView {
    /// Accounts count through orders; nothing is read.
    Account(IgnoredAny),
    /// A lead.
    Lead(LeadView),
    /// An opportunity.
    Opportunity(OpportunityView),
    /// An order.
    Order(OrderView),
}

/// A lead's creation time.
#[derive(Debug, Clone, Deserialize)]
pub struct LeadView {
    /// Created in the vendor.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
}

/// A stage the deal entered.
#[derive(Debug, Clone, Deserialize)]
pub struct StageView {
    /// The stage.
    pub stage: Stage,
}

/// What an opportunity contributes.
#[derive(Debug, Clone, Deserialize)]
pub struct OpportunityView {
    /// Amount.
    #[serde(default)]
    pub amount: Option<Money>,
    /// Current stage.
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Created in the vendor.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// Closed.
    #[serde(default)]
    pub closed_at: Option<Timestamp>,
    /// Stages entered.
    #[serde(default)]
    pub stage_history: Vec<StageView>,
}

/// The customer a record refers to.
#[derive(Debug, Clone, Deserialize)]
pub struct RefView {
    /// Its canonical id, once resolved.
    #[serde(default)]
    pub canonical: Option<CanonicalId>,
}

/// What an order contributes.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderView {
    /// The customer.
    #[serde(default)]
    pub account: Option<RefView>,
    /// Channel.
    #[serde(default)]
    pub channel: Option<Channel>,
    /// Status.
    #[serde(default)]
    pub status: Option<OrderStatus>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<Currency>,
    /// Total.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub total_amount: Option<Decimal>,
    /// Order date.
    #[serde(default)]
    pub order_date: Option<Date>,
}
