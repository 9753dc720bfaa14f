//! Cron schedules for `[[jobs]] schedule = { cron = "…" }`, parsed and evaluated by the `croner` crate
//! (POSIX/Vixie cron: 5 fields, or 6 with seconds first; ranges, lists, steps, names, `L`, `#`, `W`),
//! in UTC. Day-of-month and weekday follow the classic rule: when both are restricted, a day matching
//! either fires.

use std::time::Duration;

use chrono::{DateTime, Utc};
use crmsync_connectors::canonical::Timestamp;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    schedule: croner::Cron,
}

/// An expression that is not valid cron.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {reason}")]
pub struct CronError {
    expression: String,
    reason: String,
}

fn to_chrono(at: Timestamp) -> Option<DateTime<Utc>> {
    let nanos = at.unix_nanos();
    let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let fraction = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    DateTime::from_timestamp(seconds, fraction)
}

impl Cron {
    /// Parses an expression.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let error = |reason: String| CronError { expression: expression.to_owned(), reason };
        let fields = expression.split_whitespace().count();
        // croner also takes a trailing year field; crmsync documents 5 or 6 fields, so say so.
        if !(5..=6).contains(&fields) {
            return Err(error(format!("{fields} fields (expected 5, or 6 with seconds first)")));
        }
        let schedule = expression.parse::<croner::Cron>().map_err(|reason| error(reason.to_string()))?;
        Ok(Self { schedule })
    }

    /// Returns the first firing strictly after `after` (`None`: it never fires again).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let next = self.schedule.find_next_occurrence(&to_chrono(after)?, false).ok()?;
        Timestamp::from_unix_nanos(i128::from(next.timestamp_nanos_opt()?))
    }

    /// Returns how long to wait from `now` until the next firing (a day if it never fires again).
    pub fn wait_from(&self, now: Timestamp) -> Duration {
        self.next_after(now)
            .map(|next| Duration::from_millis(u64::try_from(next.unix_millis() - now.unix_millis()).unwrap_or(0)))
            .unwrap_or(Duration::from_secs(86_400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn every_five_minutes_fires_on_the_next_multiple() {
        let cron = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(cron.next_after(at("2026-11-25T10:02:30Z")), Some(at("2026-11-25T10:05:00Z")));
        assert_eq!(cron.next_after(at("2026-11-25T10:05:00Z")), Some(at("2026-11-25T10:10:00Z")));
    }

    #[test]
    fn six_fields_have_seconds_and_weekdays_roll_over_months() {
        let cron = Cron::parse("30 0 9 * * 1").unwrap();
        // 2026-11-25 is a Wednesday; the next Monday is 2026-11-30.
        assert_eq!(cron.next_after(at("2026-11-25T10:00:00Z")), Some(at("2026-11-30T09:00:30Z")));
        let new_year = Cron::parse("0 0 1 1 *").unwrap();
        assert_eq!(new_year.next_after(at("2026-11-25T10:00:00Z")), Some(at("2027-01-01T00:00:00Z")));
        // 7 is Sunday, like 0 (2026-11-29 is a Sunday).
        for sunday in ["0 12 * * 7", "0 12 * * 0", "0 12 * * SUN"] {
            let cron = Cron::parse(sunday).unwrap();
            assert_eq!(cron.next_after(at("2026-11-25T10:00:00Z")), Some(at("2026-11-29T12:00:00Z")), "{sunday}");
        }
        // Day of month or weekday: the 1st of the month, or any Monday.
        let either = Cron::parse("0 0 1 * MON").unwrap();
        assert_eq!(either.next_after(at("2026-11-25T10:00:00Z")), Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(either.next_after(at("2026-11-30T00:00:00Z")), Some(at("2026-12-01T00:00:00Z")));
    }

    #[test]
    fn bad_expressions_say_why() {
        assert_eq!(
            Cron::parse("* * *").unwrap_err().to_string(),
            "invalid cron expression \"* * *\": 3 fields (expected 5, or 6 with seconds first)"
        );
        assert!(Cron::parse("61 * * * *").is_err());
        assert!(Cron::parse("*/0 * * * *").is_err());
        assert!(Cron::parse("0 0 31 2 *").map_or(true, |cron| cron.next_after(at("2026-01-01T00:00:00Z")).is_none()));
    }
}
