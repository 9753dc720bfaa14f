//! The canonical lead (stage `lead` of the sales flow).

use serde::{Deserialize, Serialize};

use super::{Channel, RecordRef, Timestamp};

/// A prospective customer not yet converted into an opportunity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lead {
    /// Person's full name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Company.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// E-mail address (lower-cased; the lead match key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Raw vendor lead source (`Web`, `Partner Referral`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Canonical channel mapped from the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Raw vendor status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Whether the lead was converted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<bool>,
    /// The account the lead was converted into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_account: Option<RecordRef>,
    /// The opportunity the lead was converted into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_opportunity: Option<RecordRef>,
    /// Created in the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

impl Lead {
    /// The field names, in export order.
    pub const FIELDS: &'static [&'static str] = &[
        "name",
        "company",
        "email",
        "source",
        "channel",
        "status",
        "converted",
        "converted_account",
        "converted_opportunity",
        "created_at",
    ];
}
