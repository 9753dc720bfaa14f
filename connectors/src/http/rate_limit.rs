//! Per-connection request rate (governor) and daily API budget, persisted through the host so a
//! restart does not reset it.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::canonical::{ConnectionId, Timestamp};
use crate::connector::SharedHost;
use crate::error::ConnectorError;

/// A requests-per-second limiter shared by every task of one connection.
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
}

impl RateLimit {
    /// Allows `per_second` requests per second (bursts up to the same number).
    pub fn per_second(per_second: NonZeroU32) -> Self {
        Self { limiter: RateLimiter::direct(Quota::per_second(per_second)) }
    }

    /// Waits until a request may be sent; returns whether it had to wait.
    pub async fn until_ready(&self) -> bool {
        let mut waited = false;
        loop {
            match self.limiter.check() {
                Ok(()) => return waited,
                Err(not_until) => {
                    waited = true;
                    let wait = not_until
                        .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
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

    #[test]
    fn no_limit_means_counting_only() {
        let budget = DailyBudget::load(ConnectionId::new("z"), None, Arc::new(MemoryHost::default()));
        for _ in 0..100 {
            budget.reserve().unwrap();
        }
        assert_eq!(budget.used(), (100, None));
    }
}
