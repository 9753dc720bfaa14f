//! Scheduling: pull loops per connection × entity and push loops per connection, each generic over
//! the [`crmsync_connectors::Connector`] it drives, plus the one-pass [`pass::run_pass`] behind `crmsync sync`.
//!
//! Both loops keep the committed cursor as the only truth: a page's cursor moves only when the ingest
//! writer has committed the page, so a crash or an error never skips records.

pub mod cron;
pub mod pass;
pub mod progress;
pub mod pull;
pub mod push;
pub mod sweep;

use std::time::Duration;

use crmsync_connectors::{ConnectorError, RetryAdvice};
use rand::Rng;

/// Capped, jittered back-off of the outer (scheduler) retry loop.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), cap: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// Returns the delay before retry `attempt` (1-based) after `error`: the vendor's `Retry-After`
    /// when it gave one, otherwise full jitter under an exponential ceiling.
    pub fn delay(&self, attempt: u32, error: &ConnectorError) -> Duration {
        if let RetryAdvice::RetryAfter(delay) = error.retry_advice() {
            // The vendor's (or the budget's) word is honoured even beyond the cap, up to a day.
            return delay.min(Duration::from_secs(86_400));
        }
        self.jitter(attempt)
    }

    /// Returns a full-jitter delay (between half and all of the exponential ceiling) for retry `attempt`.
    pub fn jitter(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }
}

/// When a loop runs again.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A fixed interval (with ±10 % jitter).
    Every(Duration),
    /// A cron schedule.
    Cron(cron::Cron),
}

impl Cadence {
    /// Returns how long to wait before the next run.
    pub fn next_wait(&self) -> Duration {
        match self {
            Self::Every(interval) => jittered(*interval),
            Self::Cron(cron) => cron.wait_from(crmsync_connectors::canonical::Timestamp::now()),
        }
    }
}

/// Adds up to ±10 % jitter to a poll interval so connections do not poll in lockstep.
pub fn jittered(interval: Duration) -> Duration {
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let spread = millis / 10;
    if spread == 0 {
        return interval;
    }
    Duration::from_millis(millis - spread + rand::rng().random_range(0..=2 * spread))
}

/// Runs `work` every `period`, the first time at once, until `stop` is cancelled.
pub async fn every<F, Fut>(period: std::time::Duration, stop: tokio_util::sync::CancellationToken, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => work().await,
        }
    }
}

/// Returns the label for a retry advice (metrics, status).
pub fn advice_label(advice: RetryAdvice) -> &'static str {
    match advice {
        RetryAdvice::RetryAfter(_) => "retry_after",
        RetryAdvice::Backoff => "backoff",
        RetryAdvice::RefreshTokenThenRetry => "refresh_token",
        RetryAdvice::Resync => "resync",
        RetryAdvice::GiveUp => "give_up",
    }
}

/// Formats an error with its causes on one line (`a: b: c`), as status and logs show it (the
/// connectors' formatter, so a vendor error and a local one read the same).
pub use crmsync_connectors::error::chain as error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_retry_advice_label_is_a_documented_sync_error_outcome() {
        let advices = [
            RetryAdvice::RetryAfter(Duration::from_secs(1)),
            RetryAdvice::Backoff,
            RetryAdvice::RefreshTokenThenRetry,
            RetryAdvice::Resync,
            RetryAdvice::GiveUp,
        ];
        let labels: Vec<&str> = advices.into_iter().map(advice_label).collect();
        assert_eq!(labels, crate::telemetry::SYNC_ERROR_OUTCOMES);
    }
}
