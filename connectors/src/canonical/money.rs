//! Money: an exact decimal amount plus an ISO 4217 currency code. Never `f64`.

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
