//! Retries of one vendor call, bounded by time rather than by a count: transient failures (throttling,
//! 5xx, timeouts, truncated bodies) are retried with jittered exponential back-off (backon) for as long
//! as the call's budget allows, honouring the vendor's own delay; past the budget the error goes back
//! to the scheduler, which keeps the committed cursor.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use crate::error::{ConnectorError, RetryAdvice};

/// How patiently one call (one page, one push batch) is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long a call keeps retrying transient failures before it gives up.
    pub give_up_after: Duration,
    /// First back-off delay.
    pub base_delay: Duration,
    /// Largest back-off delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            give_up_after: Duration::from_secs(300),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// One retry about to happen.
#[derive(Debug)]
pub struct RetryNotice<'a> {
    /// What failed.
    pub error: &'a ConnectorError,
    /// How long until the next attempt.
    pub delay: Duration,
    /// Attempts made so far.
    pub attempt: u32,
}

impl RetryPolicy {
    /// Runs `operation` until it succeeds, fails for good, or the next wait would end past the budget.
    ///
    /// `RetryAfter` waits are the vendor's and are honoured exactly; `Backoff` errors wait a jittered,
    /// doubling delay; anything else (a refusal, an expired cursor, bad credentials) is returned at
    /// once. A call that retried and still failed comes back as [`ConnectorError::GaveUp`] with the
    /// last error as its source. `on_retry` is called before each wait (logs, telemetry).
    pub async fn run<T, F, Fut>(
        &self,
        operation: F,
        mut on_retry: impl FnMut(RetryNotice<'_>),
    ) -> Result<T, ConnectorError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let started = Instant::now();
        let deadline = started + self.give_up_after;
        let attempts = AtomicU32::new(1);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times();
        let result = operation
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|error: &ConnectorError| {
                matches!(error.retry_advice(), RetryAdvice::RetryAfter(_) | RetryAdvice::Backoff)
            })
            .adjust(|error: &ConnectorError, next: Option<Duration>| {
                let delay = match error.retry_advice() {
                    RetryAdvice::RetryAfter(delay) => delay,
                    _ => next?.min(self.max_delay),
                };
                (Instant::now() + delay <= deadline).then_some(delay)
            })
            .notify(|error: &ConnectorError, delay: Duration| {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                on_retry(RetryNotice { error, delay, attempt });
            })
            .await;
        let attempts = attempts.load(Ordering::Relaxed);
        match result {
            Err(error)
                if attempts > 1
                    && matches!(error.retry_advice(), RetryAdvice::RetryAfter(_) | RetryAdvice::Backoff) =>
            {
                Err(ConnectorError::GaveUp { attempts, elapsed: started.elapsed(), last: Box::new(error) })
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
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
                || async { if calls.fetch_add(1, Ordering::SeqCst) < 12 { Err(server_error()) } else { Ok("ok") } },
                |_| {},
            )
            .await;
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 13, "a dozen failures in a row are no reason to give up");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_time_budget_is_spent() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy { give_up_after: Duration::from_secs(60), ..RetryPolicy::default() };
        let started = Instant::now();
        let result: Result<(), _> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(server_error())
                },
                |_| {},
            )
            .await;
        let error = result.unwrap_err();
        let ConnectorError::GaveUp { attempts, last, .. } = &error else { panic!("{error:?}") };
        assert!(matches!(**last, ConnectorError::Server { status: 503, .. }));
        assert_eq!(*attempts, calls.load(Ordering::SeqCst));
        assert!(*attempts > 3, "{attempts} attempts in a minute");
        assert!(started.elapsed() <= Duration::from_secs(60), "{:?}", started.elapsed());
        assert_eq!(error.retry_advice(), RetryAdvice::Backoff, "the scheduler still sees a transient failure");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_exactly_and_rejections_are_not_retried() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
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

    #[tokio::test(start_paused = true)]
    async fn a_vendor_delay_longer_than_the_budget_goes_back_to_the_caller_at_once() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let policy = RetryPolicy { give_up_after: Duration::from_secs(60), ..RetryPolicy::default() };
        let result: Result<(), _> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ConnectorError::RateLimited {
                        message: "later".into(),
                        retry_after: Some(Duration::from_secs(600)),
                    })
                },
                |_| {},
            )
            .await;
        assert!(matches!(result, Err(ConnectorError::RateLimited { .. })), "{result:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_grows_and_stays_under_its_ceiling() {
        let policy = RetryPolicy {
            give_up_after: Duration::from_secs(3600),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        let calls = AtomicU32::new(0);
        let mut delays = Vec::new();
        let _ = policy
            .run(
                || async { if calls.fetch_add(1, Ordering::SeqCst) < 12 { Err(server_error()) } else { Ok(()) } },
                |notice| delays.push(notice.delay),
            )
            .await;
        assert_eq!(delays.len(), 12);
        assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(2)), "{delays:?}");
        assert!(delays[0] < Duration::from_millis(250), "{delays:?}");
        assert!(delays[11] >= Duration::from_secs(1), "{delays:?}");
    }
}
