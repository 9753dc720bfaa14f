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

/// Joins a vendor's first and last name into the canonical full name (either may be missing).
pub fn join_name(first: Option<String>, last: Option<String>) -> Option<String> {
    match (first, last) {
        (Some(first), Some(last)) => Some(format!("{first} {last}")),
        (None, last) => last,
        (first, None) => first,
    }
}

/// Splits a canonical full name into the vendor's `(first, last)`: the last word is the last name
/// (the field every vendor requires), the words before it the first name. A single word is a last
/// name alone; surrounding spaces never make an empty last name.
pub fn split_name(name: &str) -> (Option<&str>, &str) {
    let name = name.trim();
    match name.rsplit_once(char::is_whitespace) {
        Some((first, last)) => {
            let first = first.trim_end();
            (Some(first).filter(|first| !first.is_empty()), last)
        }
        None => (None, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_on_the_last_word_and_join_back() {
        assert_eq!(split_name("Anna Maria  Smith "), (Some("Anna Maria"), "Smith"));
        assert_eq!(split_name("Smith"), (None, "Smith"));
        assert_eq!(split_name("  Smith"), (None, "Smith"));
        assert_eq!(join_name(Some("Anna Maria".into()), Some("Smith".into())).as_deref(), Some("Anna Maria Smith"));
        assert_eq!(join_name(None, Some("Smith".into())).as_deref(), Some("Smith"));
        assert_eq!(join_name(None, None), None);
    }
}
