//! Typed reads out of a vendor's JSON row, shared by every vendor mapping.
//!
//! A reader returns `Ok(None)` for an absent or empty value and decodes a value only when it is
//! unambiguous: a number column that arrives as the string `"1112.5"` or `"5.0"` (a column whose type
//! was changed in the vendor) reads as that number, while `"1,112.50"`, `true` or an object is a
//! [`ConnectorError::Decode`] naming the field: a reader never guesses a value.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::canonical::{Money, Timestamp};
use crate::error::ConnectorError;

/// A vendor row: one record's JSON object.
pub type Row = Map<String, Value>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

fn undecodable(field: &str, expected: &str, found: &Value) -> ConnectorError {
    let mut shown = found.to_string();
    if shown.chars().count() > 80 {
        shown = shown.chars().take(80).collect::<String>() + "…";
    }
    ConnectorError::decode(format!("field {field}"), Unexpected(format!("expected {expected}, found {shown}")))
}

/// Reads a text value. A number is read as its decimal text (a text column that arrives as a number
/// is still unambiguous); an empty string is `None`; anything else is not text and reads as `None`.
pub fn text(row: &Row, field: &str) -> Option<String> {
    match row.get(field)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Reads a boolean: a JSON bool, or the strings `"true"` / `"false"` (CSV exports, drifted columns).
pub fn boolean(row: &Row, field: &str) -> Result<Option<bool>, ConnectorError> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(text)) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(undecodable(field, "a boolean", other)),
    }
}

/// Reads a decimal from a JSON number or an unambiguous numeric string (`"1112.5"`, `"5.0"`).
pub fn decimal(row: &Row, field: &str) -> Result<Option<Decimal>, ConnectorError> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => Money::parse_amount(&number.to_string())
            .map(Some)
            .map_err(|error| ConnectorError::decode(format!("field {field}"), error)),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(value @ Value::String(text)) => {
            parse_number(text).map(Some).ok_or_else(|| undecodable(field, "a number", value))
        }
        Some(other) => Err(undecodable(field, "a number", other)),
    }
}

/// Reads a whole number (a choice value, a count) from a JSON number or numeric string; `5.0` is 5,
/// `5.5` is not a whole number and fails.
pub fn integer(row: &Row, field: &str) -> Result<Option<i64>, ConnectorError> {
    let Some(value) = decimal(row, field)? else { return Ok(None) };
    if value.fract().is_zero()
        && let Ok(whole) = i64::try_from(value)
    {
        return Ok(Some(whole));
    }
    Err(undecodable(field, "a whole number", &Value::String(value.to_string())))
}

/// A plain decimal number: optional sign, digits, at most one point. Thousands separators,
/// currency symbols, exponents and spaces inside are ambiguous across locales and are refused.
fn parse_number(text: &str) -> Option<Decimal> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
    let plain = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    if !plain {
        return None;
    }
    Money::parse_amount(trimmed.strip_prefix('+').unwrap_or(trimmed)).ok()
}

/// Reads an instant (`2024-05-01T12:34:56.000+0000`, `…Z`, `…+05:30`).
pub fn timestamp(row: &Row, field: &str) -> Result<Option<Timestamp>, ConnectorError> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => {
            text.parse::<Timestamp>().map(Some).map_err(|error| ConnectorError::decode(format!("field {field}"), error))
        }
        Some(other) => Err(undecodable(field, "a date and time", other)),
    }
}

/// Reads a calendar date (`2024-03-31`). A date-and-time value (a column configured as date and time)
/// reads as the date it names, once the whole value is checked to be a valid instant.
pub fn date(row: &Row, field: &str) -> Result<Option<jiff::civil::Date>, ConnectorError> {
    let text = match row.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.is_empty() => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => return Err(undecodable(field, "a date", other)),
    };
    let day = match text.split_once('T') {
        Some((day, _)) => {
            text.parse::<Timestamp>().map_err(|error| ConnectorError::decode(format!("field {field}"), error))?;
            day
        }
        None => text.as_str(),
    };
    day.parse::<jiff::civil::Date>().map(Some).map_err(|error| ConnectorError::decode(format!("field {field}"), error))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(value: Value) -> Row {
        let mut row = Map::new();
        row.insert("f".into(), value);
        row
    }

    #[test]
    fn numbers_read_from_numbers_and_unambiguous_numeric_strings() {
        assert_eq!(decimal(&row(json!(1112.5)), "f").unwrap(), Some(Decimal::new(11125, 1)));
        assert_eq!(decimal(&row(json!("1112.5")), "f").unwrap(), Some(Decimal::new(11125, 1)));
        assert_eq!(decimal(&row(json!("5.0")), "f").unwrap(), Some(Decimal::new(50, 1)));
        assert_eq!(decimal(&row(json!(" -3 ")), "f").unwrap(), Some(Decimal::new(-3, 0)));
        assert_eq!(decimal(&row(json!(null)), "f").unwrap(), None);
        assert_eq!(decimal(&row(json!("")), "f").unwrap(), None);
        assert_eq!(decimal(&Map::new(), "f").unwrap(), None);
    }

    #[test]
    fn ambiguous_numbers_are_errors_naming_the_field() {
        for value in [json!("1,112.50"), json!("1.112,50"), json!("$5"), json!("1e3"), json!("."), json!(true)] {
            let error = decimal(&row(value.clone()), "f").unwrap_err();
            assert!(matches!(error, ConnectorError::Decode { .. }), "{value}");
            assert_eq!(error.to_string(), "could not decode field f", "{value}");
        }
    }

    #[test]
    fn integers_accept_whole_decimals_only() {
        assert_eq!(integer(&row(json!(2)), "f").unwrap(), Some(2));
        assert_eq!(integer(&row(json!("2")), "f").unwrap(), Some(2));
        assert_eq!(integer(&row(json!(2.0)), "f").unwrap(), Some(2));
        assert!(integer(&row(json!(2.5)), "f").is_err());
    }

    #[test]
    fn text_booleans_and_times() {
        assert_eq!(text(&row(json!("a")), "f").as_deref(), Some("a"));
        assert_eq!(text(&row(json!(12)), "f").as_deref(), Some("12"));
        assert_eq!(text(&row(json!("")), "f"), None);
        assert_eq!(boolean(&row(json!("true")), "f").unwrap(), Some(true));
        assert_eq!(boolean(&row(json!(false)), "f").unwrap(), Some(false));
        assert!(boolean(&row(json!("yes")), "f").is_err());
        let stamp = timestamp(&row(json!("2024-05-01T12:34:56.000+0000")), "f").unwrap().unwrap();
        assert_eq!(stamp, "2024-05-01T12:34:56Z".parse::<Timestamp>().unwrap());
        assert!(timestamp(&row(json!(1714566896)), "f").is_err());
        assert_eq!(date(&row(json!("2024-03-31")), "f").unwrap().unwrap().to_string(), "2024-03-31");
        assert_eq!(date(&row(json!("2024-03-31T00:00:00Z")), "f").unwrap().unwrap().to_string(), "2024-03-31");
        assert!(date(&row(json!("2024-03-31Tnonsense")), "f").is_err());
        assert!(date(&row(json!("31/03/2024")), "f").is_err());
    }
}
