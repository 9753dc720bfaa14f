//! Where a catch-up stands: records so far, the vendor's total when it says it
//! ([`crmsync_connectors::Page::total`]), the rate and the time left. What `crmsync sync` shows
//! beside its spinners and what the daemon's INFO catch-up line carries.

use std::fmt;
use std::time::Duration;

/// A catch-up's progress at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Records read so far in this catch-up.
    pub records: u64,
    /// Pages read so far.
    pub pages: u64,
    /// The vendor's total for the read, when it said one.
    pub total: Option<u64>,
    /// Time since the catch-up started.
    pub elapsed: Duration,
}

impl Progress {
    /// Records per second so far (0 before any time has passed).
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 { self.records as f64 / seconds } else { 0.0 }
    }

    /// The share read, in whole percent, when the total is known (at most 100: records changed
    /// while the read went on can make a pass read a few more than the vendor counted).
    pub fn percent(&self) -> Option<u64> {
        let total = self.total.filter(|total| *total > 0)?;
        Some((u128::from(self.records) * 100 / u128::from(total)).min(100) as u64)
    }

    /// The time left at the rate so far, when the total is known and some records were read.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.rate();
        if self.records == 0 || rate <= 0.0 {
            return None;
        }
        let left = total.saturating_sub(self.records);
        Duration::try_from_secs_f64(left as f64 / rate).ok()
    }
}

/// `1200 of 5000 records (24%), 6 pages, 400 records/s, 10s left`, or without a total
/// `1200 records, 6 pages, 400 records/s`.
impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.total, self.percent()) {
            (Some(total), Some(percent)) => write!(f, "{} of {total} records ({percent}%)", self.records)?,
            _ => write!(f, "{} records", self.records)?,
        }
        write!(f, ", {} pages, {:.0} records/s", self.pages, self.rate())?;
        if let Some(eta) = self.eta() {
            write!(f, ", {} left", short_duration(eta))?;
        }
        Ok(())
    }
}

/// `45s`, `12m05s`, `3h04m` (rounded up to the second: "0s left" only when nothing is left).
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(records: u64, pages: u64, total: Option<u64>, seconds: u64) -> Progress {
        Progress { records, pages, total, elapsed: Duration::from_secs(seconds) }
    }

    #[test]
    fn with_the_vendors_total_progress_shows_the_share_the_rate_and_the_time_left() {
        let progress = at(1200, 6, Some(5000), 3);
        assert_eq!(progress.percent(), Some(24));
        assert_eq!(progress.eta(), Some(Duration::from_millis(9500)));
        assert_eq!(progress.to_string(), "1200 of 5000 records (24%), 6 pages, 400 records/s, 10s left");
        // Long reads: minutes and hours.
        assert_eq!(
            at(10_000, 50, Some(1_000_000), 100).to_string(),
            "10000 of 1000000 records (1%), 50 pages, 100 records/s, 2h45m left"
        );
        assert_eq!(
            at(60_000, 300, Some(100_000), 60).to_string(),
            "60000 of 100000 records (60%), 300 pages, 1000 records/s, 40s left"
        );
        assert_eq!(
            at(3_000, 15, Some(100_000), 30).to_string(),
            "3000 of 100000 records (3%), 15 pages, 100 records/s, 16m10s left"
        );
    }

    #[test]
    fn without_a_total_no_share_and_no_time_left_are_claimed() {
        let progress = at(1200, 6, None, 3);
        assert_eq!((progress.percent(), progress.eta()), (None, None));
        assert_eq!(progress.to_string(), "1200 records, 6 pages, 400 records/s");
    }

    #[test]
    fn edge_cases_never_divide_by_zero_or_overshoot() {
        // Nothing read yet, or no time passed: a share but no rate-based time left.
        assert_eq!(at(0, 0, Some(5000), 0).to_string(), "0 of 5000 records (0%), 0 pages, 0 records/s");
        assert_eq!(at(10, 1, Some(5000), 0).eta(), None);
        // More read than the vendor counted (records created meanwhile): 100%, nothing left.
        let over = at(5100, 26, Some(5000), 10);
        assert_eq!((over.percent(), over.eta()), (Some(100), Some(Duration::ZERO)));
        assert_eq!(over.to_string(), "5100 of 5000 records (100%), 26 pages, 510 records/s, 0s left");
        // A total of 0 (an empty incremental read): no share.
        assert_eq!(at(0, 1, Some(0), 1).to_string(), "0 records, 1 pages, 0 records/s");
    }
}
