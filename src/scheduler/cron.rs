//! Cron schedules for `[[jobs]] schedule = { cron = "…" }`: 5 fields (minute hour day month weekday)
//! or 6 (seconds first), each `*`, a number, a range `a-b`, a list `a,b` or a step `*/n` / `a-b/n`,
//! evaluated in UTC. Day-of-month and weekday follow the classic rule: when both are restricted, a day
//! matching either fires.

use std::time::Duration;

use crmsync_connectors::canonical::Timestamp;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: Vec<bool>,
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// An expression that is not valid cron.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {reason}")]
pub struct CronError {
    expression: String,
    reason: String,
}

fn parse_field(field: &str, low: u32, high: u32) -> Result<(Vec<bool>, bool), String> {
    let mut allowed = vec![false; usize::try_from(high + 1).unwrap_or(0)];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("bad step in {part:?}"))?;
                if step == 0 {
                    return Err(format!("step 0 in {part:?}"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (low, high)
        } else if let Some((start, end)) = range.split_once('-') {
            (
                start.parse().map_err(|_| format!("bad range {part:?}"))?,
                end.parse().map_err(|_| format!("bad range {part:?}"))?,
            )
        } else {
            let value: u32 = range.parse().map_err(|_| format!("bad value {part:?}"))?;
            (value, if step > 1 { high } else { value })
        };
        if start < low || end > high || start > end {
            return Err(format!("{part:?} is outside {low}..={high}"));
        }
        let mut value = start;
        while value <= end {
            allowed[usize::try_from(value).unwrap_or(0)] = true;
            value += step;
        }
    }
    Ok((allowed, field != "*"))
}

impl Cron {
    /// Parses an expression.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let error = |reason: String| CronError { expression: expression.to_owned(), reason };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            5 => std::iter::once("0").chain(fields).collect(),
            6 => fields,
            count => return Err(error(format!("{count} fields (expected 5 or 6)"))),
        };
        let (seconds, _) = parse_field(fields[0], 0, 59).map_err(error)?;
        let (minutes, _) = parse_field(fields[1], 0, 59).map_err(error)?;
        let (hours, _) = parse_field(fields[2], 0, 23).map_err(error)?;
        let (days, days_restricted) = parse_field(fields[3], 1, 31).map_err(error)?;
        let (months, _) = parse_field(fields[4], 1, 12).map_err(error)?;
        let (mut weekdays, weekdays_restricted) = parse_field(fields[5], 0, 7).map_err(error)?;
        // 7 is Sunday, like 0.
        let sunday = weekdays[0] || weekdays[7];
        weekdays[0] = sunday;
        weekdays[7] = sunday;
        Ok(Self { seconds, minutes, hours, days, months, weekdays, days_restricted, weekdays_restricted })
    }

    fn day_matches(&self, date: jiff::civil::Date) -> bool {
        let day = self.days[usize::try_from(date.day()).unwrap_or(0)];
        let weekday = self.weekdays[usize::try_from(date.weekday().to_sunday_zero_offset()).unwrap_or(0)];
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// Returns the first firing strictly after `after`, searching up to four years ahead.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = jiff::tz::Offset::UTC.to_datetime(after.as_jiff());
        let mut minute = start.date().at(start.hour(), start.minute(), 0, 0);
        for _ in 0..(4 * 366 * 24 * 60) {
            let date = minute.date();
            if self.months[usize::try_from(date.month()).unwrap_or(0)]
                && self.day_matches(date)
                && self.hours[usize::try_from(minute.hour()).unwrap_or(0)]
                && self.minutes[usize::try_from(minute.minute()).unwrap_or(0)]
            {
                for second in 0..60i8 {
                    if !self.seconds[usize::try_from(second).unwrap_or(0)] {
                        continue;
                    }
                    let candidate = minute.with().second(second).build().ok()?;
                    let instant = jiff::tz::Offset::UTC.to_timestamp(candidate).ok()?;
                    if instant > after.as_jiff() {
                        return Some(Timestamp::from_jiff(instant));
                    }
                }
            }
            minute = minute.checked_add(jiff::Span::new().minutes(1)).ok()?;
        }
        None
    }

    /// Returns how long to wait from `now` until the next firing.
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
        assert_eq!(Cron::parse("0 12 * * 7").unwrap(), Cron::parse("0 12 * * 0").unwrap());
    }

    #[test]
    fn bad_expressions_say_why() {
        assert_eq!(
            Cron::parse("* * *").unwrap_err().to_string(),
            "invalid cron expression \"* * *\": 3 fields (expected 5 or 6)"
        );
        assert!(Cron::parse("61 * * * *").unwrap_err().to_string().contains("outside 0..=59"));
        assert!(Cron::parse("*/0 * * * *").is_err());
        assert!(Cron::parse("0 0 31 2 *").unwrap().next_after(at("2026-01-01T00:00:00Z")).is_none(), "never fires");
    }
}
