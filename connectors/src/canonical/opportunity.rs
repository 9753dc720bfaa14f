//! The canonical opportunity (a deal in the pipeline).

use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Channel, Money, RecordRef, Stage, Timestamp};

/// When a deal entered a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEntry {
    /// The stage entered.
    pub stage: Stage,
    /// When it was entered (vendor modification time of the change that showed it).
    pub entered_at: Timestamp,
}

/// A deal walking the sales flow from `qualified` to `won` or `lost`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opportunity {
    /// Deal name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The customer account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<RecordRef>,
    /// Expected amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    /// Canonical stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Raw vendor stage (`Needs Analysis`, Dataverse `salesstage` code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_stage: Option<String>,
    /// Win probability in percent (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<Decimal>,
    /// Canonical channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Raw vendor channel value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_channel: Option<String>,
    /// Expected or actual close date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_date: Option<Date>,
    /// Created in the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// Closed (won or lost) at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// Won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_won: Option<bool>,
    /// Closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_closed: Option<bool>,
    /// Stages entered, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_history: Vec<StageEntry>,
}

impl Opportunity {
    /// The field names, in export order.
    pub const FIELDS: &'static [&'static str] = &[
        "name",
        "account",
        "amount",
        "stage",
        "vendor_stage",
        "probability",
        "channel",
        "vendor_channel",
        "close_date",
        "created_at",
        "closed_at",
        "is_won",
        "is_closed",
        "stage_history",
    ];
}
