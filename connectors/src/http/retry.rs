//! Bounded retries with full-jitter exponential back-off, clamped by the vendor's `Retry-After`.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::{ConnectorError, RetryAdvice};

/// How many times and how patiently one request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub max_attempts: u32,
    /// First back-off ceiling.
    pub base_delay: Duration,
    /// Largest back-off, and the largest `Retry-After` honoured inline (longer waits go back to the
    /// scheduler, which keeps the cursor).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 4, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// Returns the full-jitter delay before retry number `attempt` (1-based): uniform in
    /// `[0, min(max, base * 2^(attempt-1))]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self.base_delay.saturating_mul(1 << exponent).min(self.max_delay);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// Runs `operation` until it succeeds, fails for good, or the attempts run out.
    ///
    /// `RetryAfter` waits are honoured when they fit under `max_delay`; `Backoff` errors are retried with
    /// jitter; everything else (including `RefreshTokenThenRetry`, which the token layer handles) is
    /// returned at once. `on_retry` is called before each retry (telemetry).
    pub async fn run<T, F, Fut>(
        &self,
        mut operation: F,
        mut on_retry: impl FnMut(&ConnectorError),
    ) -> Result<T, ConnectorError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let mut attempt = 1;
        loop {
            let error = match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if attempt >= self.max_attempts {
                return Err(error);
            }
            let delay = match error.retry_advice() {
                RetryAdvice::RetryAfter(delay) if delay <= self.max_delay => delay,
                RetryAdvice::Backoff => self.backoff(attempt),
                _ => return Err(error),
            };
            on_retry(&error);
            tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "retrying vendor call");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn server_error() -> ConnectorError {
        ConnectorError::Server { status: 503, url: "u".into(), message: "busy".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::default();
        let result = policy
            .run(
                || async { if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(server_error()) } else { Ok("ok") } },
                |_| {},
            )
            .await;
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        let result: Result<(), _> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(server_error())
                },
                |_| {},
            )
            .await;
        assert!(matches!(result, Err(ConnectorError::Server { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_exactly_and_rejections_are_not_retried() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let policy = RetryPolicy::default();
        let result: Result<(), _> = policy
            .run(
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(ConnectorError::RateLimited {
                            message: "slow".into(),
                            retry_after: Some(Duration::from_secs(5)),
                        })
                    } else {
                        Err(ConnectorError::Rejected { status: 400, code: "BAD".into(), message: "no".into() })
                    }
                },
                |_| {},
            )
            .await;
        assert!(matches!(result, Err(ConnectorError::Rejected { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let policy =
            RetryPolicy { max_attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for attempt in 1..10 {
            assert!(policy.backoff(attempt) <= Duration::from_secs(1));
        }
        assert!(policy.backoff(1) <= Duration::from_millis(100));
    }
}
