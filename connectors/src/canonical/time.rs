//! The one timestamp type: a UTC instant that parses every vendor format losslessly.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with nanosecond precision.
///
/// Parses RFC 3339 and the vendor variants seen on the wire: Salesforce `2024-05-01T12:34:56.000+0000`,
/// Zoho `2024-01-02T03:04:05+05:30`, Dataverse `2016-09-28T23:14:00Z`. Formats as RFC 3339 in UTC
/// (`2024-05-01T12:34:56Z`, fractional seconds only when present), so parse ∘ format is the identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(jiff::Timestamp);

/// A vendor timestamp that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid timestamp {text:?}: {reason}")]
pub struct TimestampError {
    text: String,
    reason: String,
}

impl Timestamp {
    /// The earliest representable instant, used as "the beginning" of a full sync.
    pub const MIN: Self = Self(jiff::Timestamp::UNIX_EPOCH);

    /// Returns the current instant.
    pub fn now() -> Self {
        Self(jiff::Timestamp::now())
    }

    /// Builds an instant from whole seconds since the Unix epoch.
    pub fn from_unix_seconds(seconds: i64) -> Option<Self> {
        jiff::Timestamp::from_second(seconds).ok().map(Self)
    }

    /// Builds an instant from milliseconds since the Unix epoch (Salesforce `issued_at`, WCF dates).
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        jiff::Timestamp::from_millisecond(millis).ok().map(Self)
    }

    /// Returns milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        self.0.as_millisecond()
    }

    /// Returns nanoseconds since the Unix epoch (the store's key form).
    pub fn unix_nanos(&self) -> i128 {
        self.0.as_nanosecond()
    }

    /// Returns [`Timestamp::unix_nanos`] as whole seconds (rounded down) and the nanoseconds past them
    /// (`0..1_000_000_000`), without the 128-bit division of splitting `unix_nanos` (the store writes
    /// two or three times per record in this form).
    pub fn unix_seconds_and_nanos(&self) -> (i64, u32) {
        let (seconds, nanos) = (self.0.as_second(), self.0.subsec_nanosecond());
        // jiff truncates towards zero: before the epoch the fraction is negative.
        match u32::try_from(nanos) {
            Ok(nanos) => (seconds, nanos),
            Err(_) => (seconds - 1, nanos.unsigned_abs().abs_diff(1_000_000_000)),
        }
    }

    /// Rebuilds an instant from nanoseconds since the Unix epoch.
    pub fn from_unix_nanos(nanos: i128) -> Option<Self> {
        jiff::Timestamp::from_nanosecond(nanos).ok().map(Self)
    }

    /// Returns the jiff instant behind this timestamp.
    pub fn as_jiff(&self) -> jiff::Timestamp {
        self.0
    }

    /// Wraps a jiff instant.
    pub fn from_jiff(timestamp: jiff::Timestamp) -> Self {
        Self(timestamp)
    }

    /// Returns this instant shifted by a signed duration, saturating at the representable range.
    pub fn saturating_add(&self, duration: std::time::Duration, forward: bool) -> Self {
        let span = jiff::SignedDuration::try_from(duration).unwrap_or(jiff::SignedDuration::MAX);
        let shifted = if forward { self.0.checked_add(span) } else { self.0.checked_sub(span) };
        Self(shifted.unwrap_or(if forward { jiff::Timestamp::MAX } else { jiff::Timestamp::MIN }))
    }

    /// Formats with an explicit `+00:00` offset and whole seconds (Zoho `If-Modified-Since`, COQL).
    pub fn to_offset_seconds(&self) -> String {
        self.0.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    }

    /// Formats with milliseconds and a `+0000` offset (Salesforce's REST rendering).
    pub fn to_salesforce(&self) -> String {
        self.0.strftime("%Y-%m-%dT%H:%M:%S.%3f+0000").to_string()
    }

    /// Formats as RFC 3339 with `Z` and whole seconds when the instant has no fraction (Dataverse).
    pub fn to_rfc3339(&self) -> String {
        self.to_string()
    }

    /// Returns the UTC calendar date of this instant.
    pub fn date(&self) -> jiff::civil::Date {
        jiff::tz::Offset::UTC.to_datetime(self.0).date()
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        jiff::Timestamp::from_str(trimmed)
            .map(Self)
            .map_err(|error| TimestampError { text: text.to_owned(), reason: error.to_string() })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // jiff's Display is RFC 3339 in UTC with `Z`, fraction only when non-zero.
        self.0.fmt(f)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.0)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_vendor_offset_format_to_the_same_instant() {
        let salesforce: Timestamp = "2024-05-01T12:34:56.000+0000".parse().unwrap();
        let zulu: Timestamp = "2024-05-01T12:34:56Z".parse().unwrap();
        let zoho: Timestamp = "2024-05-01T18:04:56+05:30".parse().unwrap();
        assert_eq!(salesforce, zulu);
        assert_eq!(zoho, zulu);
        assert_eq!(zulu.to_string(), "2024-05-01T12:34:56Z");
    }

    #[test]
    fn keeps_fractional_seconds_exactly() {
        let precise: Timestamp = "2024-05-01T12:34:56.123456789+0000".parse().unwrap();
        assert_eq!(precise.to_string(), "2024-05-01T12:34:56.123456789Z");
        let reparsed: Timestamp = precise.to_string().parse().unwrap();
        assert_eq!(reparsed, precise);
        assert_eq!(precise.unix_nanos() % 1_000_000_000, 123_456_789);
        let before_epoch = Timestamp::from_unix_nanos(-1_500_000_000).unwrap();
        assert_eq!(before_epoch.unix_seconds_and_nanos(), (-2, 500_000_000));
        assert_eq!(Timestamp::from_unix_nanos(-1_000_000_000).unwrap().unix_seconds_and_nanos(), (-1, 0));
    }

    #[test]
    fn renders_vendor_formats() {
        let instant: Timestamp = "2024-05-01T12:34:56.5Z".parse().unwrap();
        assert_eq!(instant.to_salesforce(), "2024-05-01T12:34:56.500+0000");
        assert_eq!(instant.to_offset_seconds(), "2024-05-01T12:34:56+00:00");
        assert_eq!(instant.to_salesforce().parse::<Timestamp>().unwrap(), instant);
    }

    #[test]
    fn rejects_garbage_with_the_offending_text() {
        let error = "yesterday".parse::<Timestamp>().unwrap_err();
        assert!(error.to_string().contains("\"yesterday\""), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(nanos in -2_000_000_000_000_000_000i128..4_000_000_000_000_000_000i128) {
            let instant = Timestamp::from_unix_nanos(nanos).unwrap();
            proptest::prop_assert_eq!(instant.to_string().parse::<Timestamp>().unwrap(), instant);
        }

        #[test]
        fn seconds_and_nanos_are_the_euclidean_split_of_unix_nanos(nanos in -2_000_000_000_000_000_000i128..4_000_000_000_000_000_000i128) {
            let instant = Timestamp::from_unix_nanos(nanos).unwrap();
            let expected = (nanos.div_euclid(1_000_000_000) as i64, nanos.rem_euclid(1_000_000_000) as u32);
            proptest::prop_assert_eq!(instant.unix_seconds_and_nanos(), expected);
        }
    }
}
