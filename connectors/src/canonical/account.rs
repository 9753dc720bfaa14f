//! The canonical account (a customer company).

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// A customer company. Every field is optional: a partial change carries only what it knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Company name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Account number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Web domain (`acme.com`), normalised from the website.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Industry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    /// Billing country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_country: Option<String>,
    /// Owner (vendor user name or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Created in the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// Last modified in the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

impl Account {
    /// The field names, in export order.
    pub const FIELDS: &'static [&'static str] =
        &["name", "number", "domain", "industry", "billing_country", "owner", "created_at", "updated_at"];
}

/// Normalises a website or e-mail domain to its bare lower-case host (`https://www.Acme.com/` → `acme.com`).
pub fn normalise_domain(website: &str) -> Option<String> {
    let trimmed = website.trim().to_ascii_lowercase();
    let without_scheme = trimmed.split("://").last().unwrap_or(&trimmed);
    let host = without_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    let host = host.strip_prefix("www.").unwrap_or(host);
    (!host.is_empty() && host.contains('.')).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise() {
        assert_eq!(normalise_domain("https://www.Acme.com/about").as_deref(), Some("acme.com"));
        assert_eq!(normalise_domain("acme.co.uk").as_deref(), Some("acme.co.uk"));
        assert_eq!(normalise_domain("http://acme.com:8080").as_deref(), Some("acme.com"));
        assert_eq!(normalise_domain("n/a"), None);
    }
}
