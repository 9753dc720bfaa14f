//! Typed reads out of a vendor's JSON row, shared by every vendor mapping.
//!
//! A reader returns `Ok(None)` for an absent or empty value and decodes a value only when it is
//! unambiguous: a number column that arrives as the string `"1112.5"` or `"5.0"` (a column whose type
//! was changed in the vendor) reads as that number, while `"1,112.50"`, `true` or an object is a
//! [`ConnectorError::Decode`] naming the field: a reader never guesses a value.
//!
//! A row is anything with [`Fields`]: a decoded `serde_json` map ([`Row`]), or a [`RawRow`] that
//! borrows its columns from the page's bytes and decodes a column only when it is read (no map of
//! owned values per row: a page of 5,000 Dataverse orders with their lines is 9 MiB of JSON and was
//! 15 MiB more as maps).
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::canonical::{Money, Timestamp};
use crate::error::ConnectorError;

/// A vendor row: one record's JSON object.
pub type Row = Map<String, Value>;

/// One column's value as a reader sees it.
#[derive(Debug, Clone)]
pub enum Field<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, read as `serde_json` reads it.
    Number(Number),
    /// A string, unescaped.
    Text(Cow<'a, str>),
    /// An array or an object: never a value a reader decodes (kept for messages).
    Composite(Composite<'a>),
}

/// An array or an object in a row.
#[derive(Debug, Clone, Copy)]
pub enum Composite<'a> {
    /// Decoded, in a `serde_json` map.
    Decoded(&'a Value),
    /// As JSON text, in a [`RawRow`].
    Raw(&'a RawValue),
}

impl Field<'_> {
    /// The text of a string value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The value as compact JSON, for messages.
    fn shown(&self) -> String {
        match self {
            Self::Null => "null".to_owned(),
            Self::Bool(value) => value.to_string(),
            Self::Number(number) => number.to_string(),
            Self::Text(text) => Value::String(text.as_ref().to_owned()).to_string(),
            Self::Composite(Composite::Decoded(value)) => value.to_string(),
            Self::Composite(Composite::Raw(json)) => serde_json::from_str::<Value>(json.get())
                .map_or_else(|_| json.get().to_owned(), |value| value.to_string()),
        }
    }

    fn of_value(value: &Value) -> Field<'_> {
        match value {
            Value::Null => Field::Null,
            Value::Bool(value) => Field::Bool(*value),
            Value::Number(number) => Field::Number(number.clone()),
            Value::String(text) => Field::Text(Cow::Borrowed(text)),
            composite @ (Value::Array(_) | Value::Object(_)) => Field::Composite(Composite::Decoded(composite)),
        }
    }

    /// Decodes one JSON value (already checked to be valid JSON: see [`RawRow`]).
    fn of_raw(raw: &RawValue) -> Field<'_> {
        let json = raw.get();
        let composite = || Field::Composite(Composite::Raw(raw));
        match json.as_bytes().first() {
            Some(b'n') => Field::Null,
            Some(b't') => Field::Bool(true),
            Some(b'f') => Field::Bool(false),
            Some(b'"') => {
                serde_json::from_str::<Text<'_>>(json).map_or_else(|_| composite(), |text| Field::Text(text.0))
            }
            Some(b'{' | b'[') | None => composite(),
            Some(_) => serde_json::from_str::<Number>(json).map_or_else(|_| composite(), Field::Number),
        }
    }
}

/// What a row reader reads from.
pub trait Fields {
    /// The value of a column, if the row has it.
    fn field(&self, name: &str) -> Option<Field<'_>>;
}

impl Fields for Row {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.get(name).map(Field::of_value)
    }
}

/// A string borrowed from the JSON text when it has no escapes (`Cow<str>`'s own `Deserialize`
/// always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// A JSON object's columns borrowed from its text: names (unescaped) and each value's JSON text,
/// decoded by the readers only when read. A column named twice reads as its last value, as in a
/// `serde_json` map.
///
/// Built from text that was checked to be valid JSON as a whole (`serde_json` skips a value it
/// only borrows without checking its numbers' range or its strings' escapes): [`RowText`] is.
#[derive(Debug, Default)]
pub struct RawRow<'a> {
    columns: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawRow<'a> {
    /// Reads the columns of a JSON object.
    ///
    /// # Errors
    ///
    /// The `serde_json` error when `json` is not one JSON object.
    pub fn parse(json: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The JSON text of a column's value.
    pub fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.columns.iter().rev().find(|(column, _)| column == name).map(|(_, value)| *value)
    }

    /// The text of a string annotation of a column (`{column}{annotation}`, such as
    /// `statecode@OData.Community.Display.V1.FormattedValue`), found without building its name.
    pub fn annotation(&self, column: &str, annotation: &str) -> Option<Cow<'a, str>> {
        let json = self
            .columns
            .iter()
            .rev()
            .find(|(name, _)| name.strip_prefix(column).is_some_and(|rest| rest == annotation))
            .map(|(_, value)| *value)?;
        text_of(json)
    }

    /// The columns in the order the object lists them (a name listed twice, twice).
    pub fn columns(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.columns.iter().map(|(name, value)| (name.as_ref(), *value))
    }

    /// The text of a string column (`None` when absent or not a string).
    pub fn text(&self, name: &str) -> Option<Cow<'a, str>> {
        text_of(self.raw(name)?)
    }
}

fn text_of(json: &RawValue) -> Option<Cow<'_, str>> {
    match Field::of_raw(json) {
        Field::Text(text) => Some(text),
        _ => None,
    }
}

impl Fields for RawRow<'_> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.raw(name).map(Field::of_raw)
    }
}

impl<'de> Deserialize<'de> for RawRow<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawRow<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut columns = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    columns.push((name, value));
                }
                Ok(RawRow { columns })
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Checks that `json` is one valid JSON value as strictly as decoding it into `serde_json` values
/// would (every string unescaped, every number in range), keeping nothing: `serde_json` skips what
/// it only borrows ([`RawValue`]) without those checks.
///
/// # Errors
///
/// The `serde_json` error, naming the line and column (`EOF while parsing …` for a truncated text).
pub fn check_json(json: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Checked>(json).map(|_| ())
}

/// A JSON value checked and dropped (see [`check_json`]).
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// The JSON text of one object, borrowed from the text being deserialized: an array of rows is read
/// as these so that each row is checked to be an object without decoding its columns.
#[derive(Debug, Clone, Copy)]
pub struct ObjectJson<'a>(&'a RawValue);

impl<'de: 'a, 'a> Deserialize<'de> for ObjectJson<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = <&'a RawValue>::deserialize(deserializer)?;
        if json.get().starts_with('{') {
            return Ok(Self(json));
        }
        let found = serde_json::from_str::<Value>(json.get()).unwrap_or(Value::Null);
        let unexpected = match &found {
            Value::Null => serde::de::Unexpected::Unit,
            Value::Bool(value) => serde::de::Unexpected::Bool(*value),
            Value::Number(number) => match (number.as_u64(), number.as_i64(), number.as_f64()) {
                (Some(unsigned), _, _) => serde::de::Unexpected::Unsigned(unsigned),
                (None, Some(signed), _) => serde::de::Unexpected::Signed(signed),
                (None, None, Some(float)) => serde::de::Unexpected::Float(float),
                (None, None, None) => serde::de::Unexpected::Other("number"),
            },
            Value::String(text) => serde::de::Unexpected::Str(text),
            Value::Array(_) => serde::de::Unexpected::Seq,
            Value::Object(_) => serde::de::Unexpected::Map,
        };
        Err(serde::de::Error::invalid_type(unexpected, &"a map"))
    }
}

/// The JSON text of one row (an object) of a page, sharing the page's buffer: a page keeps its
/// rows as these and each is read into a [`RawRow`] only while it is mapped.
#[derive(Clone)]
pub struct RowText(Bytes);

impl RowText {
    /// The row `object` of `body`, which must have been checked to be valid JSON as a whole (see
    /// [`RawRow`]). Shares `body`'s buffer when `object` points into it (as when deserialized from
    /// it), else copies it.
    pub fn within(body: &Bytes, object: ObjectJson<'_>) -> Self {
        let json = object.0.get().as_bytes();
        let start = (json.as_ptr() as usize).checked_sub(body.as_ptr() as usize);
        match start.and_then(|start| Some(start..start.checked_add(json.len())?)) {
            Some(range) if range.end <= body.len() => Self(body.slice(range)),
            _ => Self(Bytes::copy_from_slice(json)),
        }
    }

    /// Reads the row's columns.
    ///
    /// # Errors
    ///
    /// The `serde_json` error when the text is not one JSON object (it always is when built by
    /// [`RowText::within`]).
    pub fn parse(&self) -> Result<RawRow<'_>, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

/// Shows the row's size only: a row is customer data, not something to log.
impl fmt::Debug for RowText {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RowText({} bytes)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

fn undecodable(field: &str, expected: &str, found: &Field<'_>) -> ConnectorError {
    let mut shown = found.shown();
    if shown.chars().count() > 80 {
        shown = shown.chars().take(80).collect::<String>() + "…";
    }
    ConnectorError::decode(format!("field {field}"), Unexpected(format!("expected {expected}, found {shown}")))
}

/// Reads a text value. A number is read as its decimal text (a text column that arrives as a number
/// is still unambiguous); an empty string is `None`; anything else is not text and reads as `None`.
pub fn text(row: &(impl Fields + ?Sized), field: &str) -> Option<String> {
    match row.field(field)? {
        Field::Text(text) if !text.is_empty() => Some(text.into_owned()),
        Field::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Reads a boolean: a JSON bool, or the strings `"true"` / `"false"` (CSV exports, drifted columns).
pub fn boolean(row: &(impl Fields + ?Sized), field: &str) -> Result<Option<bool>, ConnectorError> {
    match row.field(field) {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Bool(value)) => Ok(Some(value)),
        Some(Field::Text(text)) if text.is_empty() => Ok(None),
        Some(Field::Text(text)) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Field::Text(text)) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(undecodable(field, "a boolean", &other)),
    }
}

/// Reads a decimal from a JSON number or an unambiguous numeric string (`"1112.5"`, `"5.0"`).
pub fn decimal(row: &(impl Fields + ?Sized), field: &str) -> Result<Option<Decimal>, ConnectorError> {
    match row.field(field) {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Number(number)) => Money::parse_amount(&number.to_string())
            .map(Some)
            .map_err(|error| ConnectorError::decode(format!("field {field}"), error)),
        Some(Field::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Field::Text(text)) => match parse_number(&text) {
            Some(number) => Ok(Some(number)),
            None => Err(undecodable(field, "a number", &Field::Text(text))),
        },
        Some(other) => Err(undecodable(field, "a number", &other)),
    }
}

/// Reads a whole number (a choice value, a count) from a JSON number or numeric string; `5.0` is 5,
/// `5.5` is not a whole number and fails.
pub fn integer(row: &(impl Fields + ?Sized), field: &str) -> Result<Option<i64>, ConnectorError> {
    let Some(value) = decimal(row, field)? else { return Ok(None) };
    if value.fract().is_zero()
        && let Ok(whole) = i64::try_from(value)
    {
        return Ok(Some(whole));
    }
    Err(undecodable(field, "a whole number", &Field::Text(Cow::Owned(value.to_string()))))
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
pub fn timestamp(row: &(impl Fields + ?Sized), field: &str) -> Result<Option<Timestamp>, ConnectorError> {
    match row.field(field) {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Text(text)) if text.is_empty() => Ok(None),
        Some(Field::Text(text)) => {
            text.parse::<Timestamp>().map(Some).map_err(|error| ConnectorError::decode(format!("field {field}"), error))
        }
        Some(other) => Err(undecodable(field, "a date and time", &other)),
    }
}

/// Reads a calendar date (`2024-03-31`). A date-and-time value (a column configured as date and time)
/// reads as the date it names, once the whole value is checked to be a valid instant.
pub fn date(row: &(impl Fields + ?Sized), field: &str) -> Result<Option<jiff::civil::Date>, ConnectorError> {
    let text = match row.field(field) {
        None | Some(Field::Null) => return Ok(None),
        Some(Field::Text(text)) if text.is_empty() => return Ok(None),
        Some(Field::Text(text)) => text,
        Some(other) => return Err(undecodable(field, "a date", &other)),
    };
    let day = match text.split_once('T') {
        Some((day, _)) => {
            text.parse::<Timestamp>().map_err(|error| ConnectorError::decode(format!("field {field}"), error))?;
            day
        }
        None => text.as_ref(),
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

    /// Every reader reads a column of a [`RawRow`] as it reads the same column of the decoded map:
    /// the same value, or an error with the same message and cause.
    #[test]
    fn a_raw_row_reads_every_value_as_its_decoded_map_does() {
        let values = [
            r#""a""#,
            r#""""#,
            r#""  ""#,
            r#""caf\u00e9 \"quoted\"""#,
            "12",
            "-3",
            "1112.50",
            "5000000.0001",
            "1e3",
            "18446744073709551616",
            r#""1112.5""#,
            r#""1,112.50""#,
            "2.5",
            "true",
            "false",
            "null",
            r#"{"a": [1, 2]}"#,
            "[1, {\"b\": null}]",
            r#""2024-03-31""#,
            r#""2024-03-31T00:00:00Z""#,
            r#""2024-05-01T12:34:56.000+0000""#,
            r#""yes""#,
        ];
        fn outcome<T: fmt::Debug>(result: Result<T, ConnectorError>) -> String {
            match result {
                Ok(value) => format!("{value:?}"),
                Err(error) => format!("error: {}", crate::error::chain(&error)),
            }
        }
        for value in values {
            let json = format!(r#"{{"g": 0, "f": {value}}}"#);
            let map: Row = serde_json::from_str(&json).unwrap();
            let raw = RawRow::parse(&json).unwrap();
            assert_eq!(text(&raw, "f"), text(&map, "f"), "{value}");
            assert_eq!(outcome(boolean(&raw, "f")), outcome(boolean(&map, "f")), "{value}");
            assert_eq!(outcome(decimal(&raw, "f")), outcome(decimal(&map, "f")), "{value}");
            assert_eq!(outcome(integer(&raw, "f")), outcome(integer(&map, "f")), "{value}");
            assert_eq!(outcome(timestamp(&raw, "f")), outcome(timestamp(&map, "f")), "{value}");
            assert_eq!(outcome(date(&raw, "f")), outcome(date(&map, "f")), "{value}");
            assert_eq!(text(&raw, "absent"), None);
            assert_eq!(outcome(decimal(&raw, "absent")), "None");
        }
    }

    #[test]
    fn a_raw_row_borrows_its_text_unescapes_names_and_reads_a_repeated_name_as_its_last_value() {
        let json = r#"{"name": "Contoso", "escaped": "a\nb", "caf\u00e9": 1, "name": "Fabrikam",
            "statecode": 1, "statecode@OData.Community.Display.V1.FormattedValue": "Won"}"#;
        let row = RawRow::parse(json).unwrap();
        assert!(matches!(row.text("name"), Some(Cow::Borrowed("Fabrikam"))), "a value without escapes is borrowed");
        assert_eq!(row.text("escaped").as_deref(), Some("a\nb"));
        assert!(matches!(row.text("escaped"), Some(Cow::Owned(_))));
        assert_eq!(row.raw("café").map(RawValue::get), Some("1"));
        assert_eq!(row.text("statecode"), None, "not a string");
        assert_eq!(row.annotation("statecode", "@OData.Community.Display.V1.FormattedValue").as_deref(), Some("Won"));
        assert_eq!(row.annotation("state", "@OData.Community.Display.V1.FormattedValue"), None);
        assert_eq!(row.columns().count(), 6);
        assert!(RawRow::parse("[1]").unwrap_err().to_string().contains("expected a JSON object"));
    }

    /// A body is checked as strictly as decoding it into values: what `serde_json` only skips when
    /// it borrows (a lone surrogate, a number out of range) is refused with the same message.
    #[test]
    fn checking_json_refuses_what_decoding_refuses_with_the_same_message() {
        for body in [
            r#"{"value": [{"a": "\ud800"}]}"#,
            r#"{"value": [{"a": 1e400}]}"#,
            r#"{"value": [{"a": "trunc"#,
            r#"{"value": [{"a": 1}]} trailing"#,
            "",
        ] {
            let decoded = serde_json::from_str::<Value>(body).unwrap_err().to_string();
            assert_eq!(check_json(body.as_bytes()).unwrap_err().to_string(), decoded, "{body}");
        }
        check_json(br#"{"value": [{"a": "\ud83d\ude00", "b": -1.5e3}]}"#).unwrap();
    }

    #[test]
    fn a_row_text_shares_the_body_it_was_read_from() {
        let body = Bytes::from_static(br#"[{"a": 1}, {"b": "x"}]"#);
        let rows: Vec<ObjectJson<'_>> = serde_json::from_slice(&body).unwrap();
        let texts: Vec<RowText> = rows.into_iter().map(|row| RowText::within(&body, row)).collect();
        let second = texts.get(1).unwrap();
        let at = body.windows(4).position(|window| window == br#"{"b""#).unwrap();
        assert_eq!(second.0.as_ptr(), body.as_ptr().wrapping_add(at), "a view of the body, not a copy");
        assert_eq!(second.parse().unwrap().text("b").as_deref(), Some("x"));
        let elsewhere: &RawValue = serde_json::from_str(r#"{"c": 2}"#).unwrap();
        let copied = RowText::within(&body, ObjectJson(elsewhere));
        assert_eq!(copied.parse().unwrap().raw("c").map(RawValue::get), Some("2"));
        assert_eq!(format!("{copied:?}"), "RowText(8 bytes)");
        let error = serde_json::from_str::<Vec<ObjectJson<'_>>>("[5]").unwrap_err();
        assert_eq!(error.to_string(), "invalid type: integer `5`, expected a map at line 1 column 3");
    }
}
