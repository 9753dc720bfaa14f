//! Per-connection request rate (governor, adapted to the vendor's throttling) and daily API budget,
//! persisted through the host so a restart does not reset it.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::canonical::{ConnectionId, Timestamp};
use crate::connector::SharedHost;
use crate::error::ConnectorError;

/// How far below the configured rate throttling may push a connection (requests per second).
const FLOOR_PER_SECOND: f64 = 0.2;
/// How long a connection must go unthrottled before its rate is raised again.
const QUIET_PERIOD: Duration = Duration::from_secs(30);

/// governor's clock on tokio's time, so a paused test clock drives the limiter too.
#[derive(Clone, Copy, Debug)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl governor::clock::Clock for TokioClock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        governor::nanos::Nanos::from(self.origin.elapsed())
    }
}

type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

/// What one call to [`RateLimit::until_ready`] cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waited {
    /// Time spent waiting (the limiter's pace and any pause the vendor asked for).
    pub duration: Duration,
}

/// The request rate of one connection, shared by all its tasks, adapted to the vendor's answers:
/// halved on every throttled answer (down to a floor), paused for as long as the vendor asks
/// (`Retry-After`, Zoho's `X-RATELIMIT-RESET`), and raised by a tenth of the configured rate after
/// each quiet period without throttling, back up to the configured rate. A ceiling below the
/// configured rate (a daily quota running low) holds until it is lifted.
pub struct RateLimit {
    configured: f64,
    clock: TokioClock,
    state: Mutex<RateState>,
}

struct RateState {
    current: f64,
    ceiling: f64,
    limiter: Arc<Limiter>,
    paused_until: Option<tokio::time::Instant>,
    calm_since: tokio::time::Instant,
}

fn limiter(per_second: f64, full_burst: bool, clock: TokioClock) -> Limiter {
    let period = Duration::from_secs_f64(1.0 / per_second.max(FLOOR_PER_SECOND));
    // A connection slowed by throttling sends evenly (burst 1): a burst is what got it throttled.
    let burst = if full_burst { per_second.floor().max(1.0) } else { 1.0 };
    let burst = NonZeroU32::new(burst as u32).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock)
}

impl RateLimit {
    /// Allows `per_second` requests per second (bursts up to the same number).
    pub fn per_second(per_second: NonZeroU32) -> Self {
        let configured = f64::from(per_second.get());
        let clock = TokioClock { origin: tokio::time::Instant::now() };
        let now = tokio::time::Instant::now();
        Self {
            configured,
            clock,
            state: Mutex::new(RateState {
                current: configured,
                ceiling: configured,
                limiter: Arc::new(limiter(configured, true, clock)),
                paused_until: None,
                calm_since: now,
            }),
        }
    }

    /// Returns the configured rate (requests per second).
    pub fn configured(&self) -> f64 {
        self.configured
    }

    /// Returns the rate in force now (requests per second).
    pub fn current(&self) -> f64 {
        self.state.lock().map(|state| state.current.min(state.ceiling)).unwrap_or(self.configured)
    }

    /// Waits until a request may be sent; returns how long it waited.
    pub async fn until_ready(&self) -> Waited {
        let started = tokio::time::Instant::now();
        loop {
            let (limiter, paused_until) = match self.state.lock() {
                Ok(mut state) => {
                    self.raise_after_quiet(&mut state);
                    (state.limiter.clone(), state.paused_until)
                }
                Err(_) => return Waited { duration: started.elapsed() },
            };
            if let Some(until) = paused_until.filter(|until| *until > tokio::time::Instant::now()) {
                tokio::time::sleep_until(until).await;
                continue;
            }
            match limiter.check() {
                Ok(()) => return Waited { duration: started.elapsed() },
                Err(not_until) => {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    }

    /// The vendor throttled a request: halves the rate and pauses every request of the connection
    /// for `pause` when the vendor said how long. Returns the new rate.
    pub fn throttled(&self, pause: Option<Duration>) -> f64 {
        let Ok(mut state) = self.state.lock() else { return self.configured };
        let now = tokio::time::Instant::now();
        state.current = (state.current / 2.0).max(FLOOR_PER_SECOND);
        state.calm_since = now;
        if let Some(pause) = pause {
            let until = now + pause;
            state.paused_until = Some(state.paused_until.map_or(until, |current| current.max(until)));
        }
        let effective = state.current.min(state.ceiling);
        state.limiter = Arc::new(limiter(effective, false, self.clock));
        effective
    }

    /// Caps the rate below the configured one (a daily quota running low); `None` lifts the cap.
    pub fn set_ceiling(&self, ceiling: Option<f64>) {
        let Ok(mut state) = self.state.lock() else { return };
        let ceiling = ceiling.map_or(self.configured, |ceiling| ceiling.clamp(FLOOR_PER_SECOND, self.configured));
        if (ceiling - state.ceiling).abs() > f64::EPSILON {
            state.ceiling = ceiling;
            let effective = state.current.min(ceiling);
            let full = effective >= self.configured;
            state.limiter = Arc::new(limiter(effective, full, self.clock));
        }
    }

    /// Additive increase: a tenth of the configured rate per quiet period without throttling.
    fn raise_after_quiet(&self, state: &mut RateState) {
        if state.current >= self.configured {
            return;
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(state.calm_since) < QUIET_PERIOD {
            return;
        }
        state.current = (state.current + (self.configured / 10.0).max(FLOOR_PER_SECOND)).min(self.configured);
        state.calm_since = now;
        let effective = state.current.min(state.ceiling);
        state.limiter = Arc::new(limiter(effective, effective >= self.configured, self.clock));
    }
}

const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
const STATE_KEY: &str = "api_budget";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BudgetWindow {
    started_at: Timestamp,
    used: u64,
}

/// Counts calls against a daily budget. Every call is reserved (and persisted) *before* it is sent,
/// so neither a crash nor concurrency can overspend.
pub struct DailyBudget {
    connection: ConnectionId,
    limit: Option<u64>,
    host: SharedHost,
    window: Mutex<BudgetWindow>,
}

impl DailyBudget {
    /// Loads the current window from the host (a fresh one when none is saved or it is over).
    pub fn load(connection: ConnectionId, limit: Option<u64>, host: SharedHost) -> Self {
        let now = Timestamp::now();
        let saved = host
            .load_state(&connection, STATE_KEY)
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_str::<BudgetWindow>(&text).ok())
            .filter(|window| now.saturating_add(WINDOW, false) < window.started_at);
        let window = saved.unwrap_or(BudgetWindow { started_at: now, used: 0 });
        Self { connection, limit, host, window: Mutex::new(window) }
    }

    /// Reserves one call, or refuses when the budget is spent.
    pub fn reserve(&self) -> Result<(), ConnectorError> {
        let now = Timestamp::now();
        let snapshot = {
            let mut window = self.window.lock().map_err(|_| state_error("budget lock poisoned"))?;
            if window.started_at.saturating_add(WINDOW, true) <= now {
                *window = BudgetWindow { started_at: now, used: 0 };
            }
            if let Some(limit) = self.limit
                && window.used >= limit
            {
                let resets_at = window.started_at.saturating_add(WINDOW, true);
                let retry_after =
                    Duration::from_millis(u64::try_from(resets_at.unix_millis() - now.unix_millis()).unwrap_or(0));
                return Err(ConnectorError::BudgetExhausted { used: window.used, limit, retry_after });
            }
            window.used += 1;
            *window
        };
        if self.limit.is_some() {
            let encoded = serde_json::to_string(&snapshot).map_err(|error| state_error(&error.to_string()))?;
            self.host
                .save_state(&self.connection, STATE_KEY, &encoded)
                .map_err(|message| ConnectorError::State { key: STATE_KEY.into(), message })?;
        }
        Ok(())
    }

    /// Returns `(used, limit)` for the current window.
    pub fn used(&self) -> (u64, Option<u64>) {
        let used = self.window.lock().map(|window| window.used).unwrap_or(0);
        (used, self.limit)
    }
}

fn state_error(message: &str) -> ConnectorError {
    ConnectorError::State { key: STATE_KEY.into(), message: message.to_owned() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::connector::MemoryHost;

    #[test]
    fn budget_refuses_past_the_limit_and_survives_a_restart() {
        let host: SharedHost = Arc::new(MemoryHost::default());
        let connection = ConnectionId::new("sf");
        let budget = DailyBudget::load(connection.clone(), Some(3), host.clone());
        for _ in 0..3 {
            budget.reserve().unwrap();
        }
        assert!(matches!(budget.reserve(), Err(ConnectorError::BudgetExhausted { used: 3, limit: 3, .. })));
        let reloaded = DailyBudget::load(connection, Some(3), host);
        assert_eq!(reloaded.used(), (3, Some(3)));
        assert!(reloaded.reserve().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_pauses_for_the_vendor_delay_and_quiet_raises_it_again() {
        let rate = RateLimit::per_second(NonZeroU32::new(10).unwrap());
        for _ in 0..10 {
            assert_eq!(rate.until_ready().await.duration, Duration::ZERO, "the configured burst goes at once");
        }
        assert_eq!(rate.throttled(Some(Duration::from_secs(3))), 5.0);
        let waited = rate.until_ready().await;
        assert!(waited.duration >= Duration::from_secs(3), "the vendor's delay holds every request: {waited:?}");
        let started = tokio::time::Instant::now();
        for _ in 0..10 {
            rate.until_ready().await;
        }
        let paced = started.elapsed();
        assert!(paced >= Duration::from_millis(1800) && paced <= Duration::from_millis(2200), "{paced:?}");
        assert_eq!(rate.throttled(None), 2.5);
        assert_eq!(rate.current(), 2.5);
        tokio::time::sleep(QUIET_PERIOD).await;
        rate.until_ready().await;
        assert_eq!(rate.current(), 3.5, "a tenth of the configured rate back after a quiet period");
        for _ in 0..6 {
            tokio::time::sleep(QUIET_PERIOD).await;
            rate.until_ready().await;
        }
        assert_eq!(rate.current(), 9.5);
        tokio::time::sleep(QUIET_PERIOD).await;
        rate.until_ready().await;
        assert_eq!(rate.current(), 10.0, "never above the configured rate");
        rate.set_ceiling(Some(4.0));
        assert_eq!(rate.current(), 4.0);
        rate.set_ceiling(None);
        assert_eq!(rate.current(), 10.0);
    }

    #[test]
    fn throttling_never_goes_below_the_floor() {
        let rate = RateLimit::per_second(NonZeroU32::new(2).unwrap());
        for _ in 0..20 {
            rate.throttled(None);
        }
        assert_eq!(rate.current(), FLOOR_PER_SECOND);
    }

    #[test]
    fn no_limit_means_counting_only() {
        let budget = DailyBudget::load(ConnectionId::new("z"), None, Arc::new(MemoryHost::default()));
        for _ in 0..100 {
            budget.reserve().unwrap();
        }
        assert_eq!(budget.used(), (100, None));
    }
}
