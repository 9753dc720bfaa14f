//! The canonical sales order with its lines.

use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Channel, Currency, OrderStatus, RecordRef};

/// One line of an order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// Product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Product code / SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Quantity.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Unit price in the order's currency.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Line total in the order's currency.
    #[serde(with = "rust_decimal::serde::str")]
    pub line_total: Decimal,
}

/// What a customer bought.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Order number (the order match key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The customer account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<RecordRef>,
    /// The opportunity it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunity: Option<RecordRef>,
    /// Canonical channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Raw vendor channel value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_channel: Option<String>,
    /// Canonical status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// Raw vendor status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_status: Option<String>,
    /// Currency of every amount on the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Order total.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "option_decimal_str")]
    pub total_amount: Option<Decimal>,
    /// Order date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_date: Option<Date>,
    /// Lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<OrderLine>>,
    /// Free-text details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl Order {
    /// The field names, in export order.
    pub const FIELDS: &'static [&'static str] = &[
        "number",
        "account",
        "opportunity",
        "channel",
        "vendor_channel",
        "status",
        "vendor_status",
        "currency",
        "total_amount",
        "order_date",
        "lines",
        "details",
    ];
}

mod option_decimal_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<Decimal>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(amount) => serializer.collect_str(amount),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| text.parse().map_err(serde::de::Error::custom)).transpose()
    }
}
