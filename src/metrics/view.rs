//! What the sales metrics read of a record: its summary.
//!
//! A metrics pass reads every lead, opportunity and order. Decoding each whole record (names, the
//! per-field provenance map, order lines) to use a handful of fields made the pass read and parse
//! about ten times the bytes it needs. The store therefore keeps, next to each record and in the same
//! transaction, its [`RecordView`] — the fields the KPIs use — in a small binary encoding that the
//! store owns (`store::format::encode_summary`, read back by `Store::scan_summaries`), and rebuilds
//! them when [`SUMMARY_VERSION`] or that encoding changes.

use crmsync_connectors::canonical::{
    CanonicalId, Channel, ConnectionId, Currency, EntityData, Money, OrderStatus, Record, Stage, Timestamp,
};
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Names the shape of [`RecordView`]; change it whenever that shape or [`RecordView::of`] changes, so
/// stores rebuild their summaries on open.
pub const SUMMARY_VERSION: &str = "metrics-view-1";

/// The fields of a record the metrics use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    /// The entity's fields the metrics use.
    pub data: DataView,
    /// The connections holding a copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkView>,
    /// Tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Merged into another record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<CanonicalId>,
}

impl RecordView {
    /// The view of a record.
    pub fn of(record: &Record) -> Self {
        let data = match &record.data {
            EntityData::Account(_) => DataView::Account(Nothing {}),
            EntityData::Lead(lead) => DataView::Lead(LeadView { created_at: lead.created_at }),
            EntityData::Opportunity(deal) => DataView::Opportunity(OpportunityView {
                amount: deal.amount.clone(),
                stage: deal.stage,
                created_at: deal.created_at,
                closed_at: deal.closed_at,
                stage_history: deal.stage_history.iter().map(|entry| StageView { stage: entry.stage }).collect(),
            }),
            EntityData::Order(order) => DataView::Order(OrderView {
                account: order.account.as_ref().map(|reference| RefView { canonical: reference.canonical }),
                channel: order.channel,
                status: order.status,
                currency: order.currency.clone(),
                total_amount: order.total_amount,
                order_date: order.order_date,
            }),
        };
        Self {
            data,
            links: record.links.iter().map(|link| LinkView { connection: link.connection.clone() }).collect(),
            deleted_at: record.deleted_at,
            merged_into: record.merged_into,
        }
    }

    /// Returns whether `connection` holds a copy.
    pub fn linked_to(&self, connection: &ConnectionId) -> bool {
        self.links.iter().any(|link| &link.connection == connection)
    }
}

/// A vendor copy: only its connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// The connection.
    pub connection: ConnectionId,
}

/// Per entity, the fields the metrics use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", content = "fields", rename_all = "snake_case")]
pub enum DataView {
    /// Accounts count through orders; nothing is kept.
    Account(Nothing),
    /// A lead.
    Lead(LeadView),
    /// An opportunity.
    Opportunity(OpportunityView),
    /// An order.
    Order(OrderView),
}

/// No fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nothing {}

/// A lead's creation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadView {
    /// Created in the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

/// A stage the deal entered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// The stage.
    pub stage: Stage,
}

/// What an opportunity contributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpportunityView {
    /// Amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    /// Current stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Created in the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// Closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// Stages entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_history: Vec<StageView>,
}

/// The customer a record refers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefView {
    /// Its canonical id, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<CanonicalId>,
}

/// What an order contributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    /// The customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<RefView>,
    /// Channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// Currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Total.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rust_decimal::serde::str_option")]
    pub total_amount: Option<Decimal>,
    /// Order date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_date: Option<Date>,
}
