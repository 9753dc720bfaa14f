//! Money: an exact decimal amount plus an ISO 4217 currency code. Never `f64`.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code (`EUR`), stored upper-case.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

/// A currency code that is not three ASCII letters.
#[derive(Debug, thiserror::Error)]
#[error("invalid currency code {0:?} (expected three letters, e.g. \"EUR\")")]
pub struct CurrencyError(String);

impl Currency {
    /// Parses a three-letter code, case-insensitively.
    pub fn new(code: &str) -> Result<Self, CurrencyError> {
        let trimmed = code.trim();
        if trimmed.len() == 3 && trimmed.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            Ok(Self(trimmed.to_ascii_uppercase()))
        } else {
            Err(CurrencyError(code.to_owned()))
        }
    }

    /// Returns the code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.0)
    }
}

/// An amount in one currency. Serialized as `{"amount":"12.50","currency":"EUR"}` (amount as a string,
/// so no JSON number ever rounds it).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The exact amount.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Its currency.
    pub currency: Currency,
}

/// Text that is not `<amount> <currency>`.
#[derive(Debug, thiserror::Error)]
pub enum MoneyError {
    /// The amount part is not a decimal number.
    #[error("invalid amount {text:?}: {source}")]
    Amount {
        /// The offending text.
        text: String,
        /// Why it failed.
        #[source]
        source: rust_decimal::Error,
    },
    /// The currency part is not a code.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
    /// The text has no currency.
    #[error("invalid money {0:?} (expected e.g. \"12.50 EUR\")")]
    Shape(String),
}

impl Money {
    /// Builds an amount in a currency.
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// Parses a vendor number (JSON number rendered as text, or a decimal string) exactly.
    pub fn parse_amount(text: &str) -> Result<Decimal, MoneyError> {
        let trimmed = text.trim();
        Decimal::from_str_exact(trimmed)
            .or_else(|_| Decimal::from_scientific(trimmed))
            .map_err(|source| MoneyError::Amount { text: text.to_owned(), source })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (amount, currency) = text.trim().rsplit_once(' ').ok_or_else(|| MoneyError::Shape(text.to_owned()))?;
        Ok(Self { amount: Self::parse_amount(amount)?, currency: Currency::new(currency)? })
    }
}

/// Exchange rates into one reporting currency (`metrics.fx`): `1 <currency> = rate × <reporting>`.
/// Connectors use it to write an amount into a CRM that keeps a single currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FxTable {
    /// The currency every rate is expressed in (rate 1).
    pub reporting: Currency,
    /// Rates by currency.
    pub rates: std::collections::BTreeMap<Currency, Decimal>,
}

/// An amount that cannot be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no exchange rate from {from} to {to} (metrics.fx has no rate for {missing}, reporting currency {reporting})")]
pub struct FxError {
    /// Source currency.
    pub from: Currency,
    /// Target currency.
    pub to: Currency,
    /// The currency without a rate.
    pub missing: Currency,
    /// The table's reporting currency.
    pub reporting: Currency,
}

impl FxTable {
    /// Builds a table.
    pub fn new(reporting: Currency, rates: std::collections::BTreeMap<Currency, Decimal>) -> Self {
        Self { reporting, rates }
    }

    fn rate(&self, currency: &Currency) -> Option<Decimal> {
        if currency == &self.reporting {
            return Some(Decimal::ONE);
        }
        self.rates.get(currency).copied().filter(|rate| !rate.is_zero())
    }

    /// Converts `money` into `to` through the reporting currency (`amount × rate(from) / rate(to)`),
    /// unrounded: the caller rounds to the scale of the field it writes.
    pub fn convert(&self, money: &Money, to: &Currency) -> Result<Money, FxError> {
        if &money.currency == to {
            return Ok(money.clone());
        }
        let error = |missing: &Currency| FxError {
            from: money.currency.clone(),
            to: to.clone(),
            missing: missing.clone(),
            reporting: self.reporting.clone(),
        };
        let from_rate = self.rate(&money.currency).ok_or_else(|| error(&money.currency))?;
        let to_rate = self.rate(to).ok_or_else(|| error(to))?;
        let reporting_amount = money.amount.checked_mul(from_rate).ok_or_else(|| error(&money.currency))?;
        let amount = reporting_amount.checked_div(to_rate).ok_or_else(|| error(to))?;
        Ok(Money::new(amount, to.clone()))
    }
}

/// Why a record cannot be held by a CRM that keeps every amount in one currency.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("an amount in {from} cannot be converted to {to}: {}", match rate {
    Some(error) => error.to_string(),
    None => "no [metrics.fx] rates are configured".to_owned(),
})]
pub struct NotConvertible {
    /// The record's currency.
    pub from: Currency,
    /// The currency the CRM keeps.
    pub to: Currency,
    /// The missing rate (`None`: no `metrics.fx` at all).
    pub rate: Option<Box<FxError>>,
}

/// Returns `data` as a CRM that keeps every amount in `currency` holds it (a Salesforce org
/// without multi-currency, a Zoho org without multi-currency): an opportunity's amount, an order's
/// line prices, line totals and total converted with `fx` and rounded to two places, the order's
/// currency `currency`. A record already in `currency`, or without amounts, is returned as it is.
pub fn in_single_currency(
    data: &super::EntityData,
    currency: &Currency,
    fx: Option<&FxTable>,
) -> Result<super::EntityData, NotConvertible> {
    let round =
        |amount: Decimal| amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    let convert = |money: &Money| {
        let refuse = |rate| NotConvertible { from: money.currency.clone(), to: currency.clone(), rate };
        let fx = fx.ok_or_else(|| refuse(None))?;
        fx.convert(money, currency)
            .map(|converted| round(converted.amount))
            .map_err(|error| refuse(Some(Box::new(error))))
    };
    let mut data = data.clone();
    match &mut data {
        super::EntityData::Opportunity(opportunity) => {
            if let Some(amount) = &opportunity.amount
                && &amount.currency != currency
            {
                opportunity.amount = Some(Money::new(convert(amount)?, currency.clone()));
            }
        }
        super::EntityData::Order(order) => {
            if let Some(from) = order.currency.clone().filter(|from| from != currency) {
                for line in order.lines.iter_mut().flatten() {
                    line.unit_price = convert(&Money::new(line.unit_price, from.clone()))?;
                    line.line_total = line.quantity * line.unit_price;
                }
                order.total_amount = match &order.lines {
                    Some(lines) => Some(lines.iter().map(|line| line.line_total).sum()),
                    None => order.total_amount.map(|total| convert(&Money::new(total, from.clone()))).transpose()?,
                };
                order.currency = Some(currency.clone());
            }
        }
        super::EntityData::Account(_) | super::EntityData::Lead(_) => {}
    }
    Ok(data)
}

/// A decimal as a JSON number, without trailing zeros (`19.50` → `19.5`), as vendors send and take
/// amounts and quantities.
pub fn decimal_json(value: Decimal) -> serde_json::Value {
    serde_json::from_str(&value.normalize().to_string()).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_prints_and_parses_exactly() {
        for text in ["12.50 EUR", "0.0001 USD", "123456789012345678.99 JPY", "-5 GBP", "1000000.0000 USD"] {
            let money: Money = text.parse().unwrap();
            assert_eq!(money.to_string(), text);
        }
    }

    #[test]
    fn money_json_keeps_scale_and_precision() {
        let money: Money = "1000.10 eur".parse().unwrap();
        let json = serde_json::to_string(&money).unwrap();
        assert_eq!(json, r#"{"amount":"1000.10","currency":"EUR"}"#);
        let back: Money = serde_json::from_str(&json).unwrap();
        assert_eq!(back.amount.to_string(), "1000.10");
    }

    #[test]
    fn vendor_numbers_parse_without_float_rounding() {
        assert_eq!(Money::parse_amount("5000000.0000").unwrap().to_string(), "5000000.0000");
        assert_eq!(
            Money::parse_amount("0.1").unwrap() + Money::parse_amount("0.2").unwrap(),
            Money::parse_amount("0.3").unwrap()
        );
        assert_eq!(Money::parse_amount("1.5e3").unwrap(), Decimal::from(1500));
    }

    #[test]
    fn bad_money_is_explained() {
        assert!(matches!("12.50".parse::<Money>(), Err(MoneyError::Shape(_))));
        assert!(matches!("12.50 EURO".parse::<Money>(), Err(MoneyError::Currency(_))));
        assert!(matches!("twelve EUR".parse::<Money>(), Err(MoneyError::Amount { .. })));
    }

    #[test]
    fn fx_converts_through_the_reporting_currency_and_names_a_missing_rate() {
        let eur = Currency::new("EUR").unwrap();
        let usd = Currency::new("USD").unwrap();
        let gbp = Currency::new("GBP").unwrap();
        let table = FxTable::new(
            eur.clone(),
            std::collections::BTreeMap::from([
                (usd.clone(), "0.5".parse().unwrap()),
                (gbp.clone(), "1.25".parse().unwrap()),
            ]),
        );
        let hundred_usd: Money = "100 USD".parse().unwrap();
        assert_eq!(table.convert(&hundred_usd, &eur).unwrap().to_string(), "50.0 EUR");
        assert_eq!(table.convert(&hundred_usd, &gbp).unwrap().amount.round_dp(2), Decimal::from(40));
        assert_eq!(table.convert(&"8 EUR".parse().unwrap(), &usd).unwrap().amount, Decimal::from(16));
        assert_eq!(table.convert(&hundred_usd, &usd).unwrap(), hundred_usd, "same currency: unchanged");
        let error = table.convert(&"1 JPY".parse().unwrap(), &eur).unwrap_err();
        assert_eq!(error.missing.as_str(), "JPY");
        assert!(error.to_string().contains("metrics.fx has no rate for JPY"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn any_decimal_round_trips_through_text(mantissa in proptest::num::i64::ANY, scale in 0u32..12) {
            let amount = Decimal::new(mantissa, scale);
            let money = Money::new(amount, Currency::new("usd").unwrap());
            let back: Money = money.to_string().parse().unwrap();
            proptest::prop_assert_eq!(back.amount, amount);
            proptest::prop_assert_eq!(back.amount.scale(), amount.scale());
        }
    }
}
