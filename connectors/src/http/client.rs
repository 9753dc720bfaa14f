//! The per-connection HTTP client: token cache, adaptive rate limit, budget, time-bounded retries,
//! the vendor's daily-limit pause and telemetry.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;

use super::{DailyBudget, RateLimit, RetryPolicy, TokenCache};
use crate::canonical::{ConnectionId, Timestamp};
use crate::connector::{ApiEvent, ApiUsage, SharedHost, Throttling};
use crate::error::ConnectorError;

/// How long calls stay paused once the vendor's daily limit is reached; the first call after that
/// is the probe (Salesforce reports the org's usage on every answer, `Sforce-Limit-Info`).
pub const QUOTA_PROBE_INTERVAL: Duration = Duration::from_secs(600);

/// Transport settings of one connection.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Requests per second.
    pub per_second: NonZeroU32,
    /// Calls allowed per 24 h window (`None`: unlimited).
    pub daily_budget: Option<u64>,
    /// Share of the vendor's own daily API limit left for others (0.1: stop at 90 % used, and slow
    /// down from 80 %), when the vendor reports its usage.
    pub headroom: f64,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retry policy of one request.
    pub retry: RetryPolicy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            daily_budget: None,
            headroom: 0.1,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// A whole HTTP response, read into memory.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl RawResponse {
    /// Returns a header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Returns whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Decodes the body as JSON, naming `context` on failure (a truncated body is a `Decode` error).
    pub fn json<T: serde::de::DeserializeOwned>(&self, context: &str) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|error| ConnectorError::decode(context, error))
    }

    /// Returns the body as (lossy) text, shortened for error messages.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut excerpt: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            excerpt.push('…');
        }
        excerpt
    }

    /// Returns the `Retry-After` header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.header("retry-after")?.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
        let millis = at.as_millisecond() - Timestamp::now().unix_millis();
        Some(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
    }

    /// Returns the delay until the instant a rate-limit reset header names (`X-RATELIMIT-RESET`):
    /// an epoch time in milliseconds or seconds, or, for a small number, seconds from now.
    pub fn reset_after(&self, name: &str) -> Option<Duration> {
        let value = self.header(name)?.trim().parse::<u64>().ok()?;
        let now_ms = u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0);
        let at_ms = match value {
            value if value >= 100_000_000_000 => value,
            value if value >= 1_000_000_000 => value.saturating_mul(1000),
            seconds => return Some(Duration::from_secs(seconds)),
        };
        Some(Duration::from_millis(at_ms.saturating_sub(now_ms)))
    }
}

/// Builds the reqwest client every connector uses: no redirects (SSRF), bounded timeouts, gzip.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .user_agent(concat!("crmsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| ConnectorError::Config(format!("cannot build HTTP client: {error}")))
}

/// Strips the query string from a URL for logs and errors (queries may hold tokens or ids).
pub fn url_for_log(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// The HTTP side of one connection. Shared by its pull and push tasks, so the rate limit, the
/// budget and a daily-limit pause hold for the connection as a whole.
pub struct VendorHttp {
    connection: ConnectionId,
    client: reqwest::Client,
    rate: RateLimit,
    budget: DailyBudget,
    retry: RetryPolicy,
    headroom: f64,
    host: SharedHost,
    tokens: TokenCache,
    calls: AtomicU64,
    vendor_used: AtomicU64,
    vendor_limit: AtomicU64,
    throttling: Mutex<Throttling>,
    pause: Mutex<Option<Pause>>,
}

/// Calls held back because the vendor's daily limit is reached.
#[derive(Clone, Debug)]
struct Pause {
    until: tokio::time::Instant,
    reason: String,
}

impl VendorHttp {
    /// Builds the client of one connection.
    pub fn new(connection: ConnectionId, settings: &HttpSettings, host: SharedHost) -> Result<Self, ConnectorError> {
        let rate = RateLimit::per_second(settings.per_second);
        let throttling = Throttling {
            configured_per_second: rate.configured(),
            current_per_second: rate.configured(),
            ..Throttling::default()
        };
        Ok(Self {
            client: build_client(settings.timeout)?,
            rate,
            budget: DailyBudget::load(connection.clone(), settings.daily_budget, host.clone()),
            retry: settings.retry,
            headroom: settings.headroom.clamp(0.0, 0.9),
            connection,
            host,
            tokens: TokenCache::default(),
            calls: AtomicU64::new(0),
            vendor_used: AtomicU64::new(0),
            vendor_limit: AtomicU64::new(0),
            throttling: Mutex::new(throttling),
            pause: Mutex::new(None),
        })
    }

    /// Returns the reqwest client (to build requests).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Returns the connection name.
    pub fn connection(&self) -> &ConnectionId {
        &self.connection
    }

    /// Returns the host (connector state, telemetry).
    pub fn host(&self) -> &SharedHost {
        &self.host
    }

    /// Returns the connection's access-token cache.
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// Returns the retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Sends one request: refuses while the vendor's daily limit is reached, waits for the rate
    /// limiter, reserves budget, reads the whole body. Only transport failures are errors here; every
    /// HTTP status comes back for the vendor to classify.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<RawResponse, ConnectorError> {
        let request = request.build().map_err(|error| ConnectorError::Config(format!("invalid request: {error}")))?;
        let url = url_for_log(request.url().as_str());
        self.refuse_while_paused()?;
        let waited = self.rate.until_ready().await;
        if !waited.duration.is_zero() {
            self.host.observe(ApiEvent::RateLimitWait { connection: &self.connection, waited: waited.duration });
            self.update_throttling(false, |throttling| {
                throttling.waits += 1;
                throttling.waited_ms += u64::try_from(waited.duration.as_millis()).unwrap_or(u64::MAX);
            });
        }
        self.note_rate();
        self.budget.reserve()?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(source) => {
                self.host.observe(ApiEvent::Call { connection: &self.connection, status: None });
                return Err(ConnectorError::Transport { url, source: source.without_url() });
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(source) => {
                self.host.observe(ApiEvent::Call { connection: &self.connection, status: Some(status) });
                return Err(ConnectorError::Transport { url, source: source.without_url() });
            }
        };
        self.host.observe(ApiEvent::Call { connection: &self.connection, status: Some(status) });
        Ok(RawResponse { status, headers, body })
    }

    /// Runs `operation` (named `context` in logs) under this connection's retry policy: transient
    /// failures are retried until the policy's time budget is spent.
    pub async fn retrying<T, F, Fut>(&self, context: &str, operation: F) -> Result<T, ConnectorError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectorError>>,
    {
        self.retry
            .run(operation, |notice| {
                self.host.observe(ApiEvent::Retry { connection: &self.connection });
                let vendor_delay = matches!(notice.error, ConnectorError::RateLimited { retry_after: Some(_), .. });
                self.update_throttling(false, |throttling| {
                    throttling.retries += 1;
                    if vendor_delay {
                        throttling.waits += 1;
                        throttling.waited_ms += u64::try_from(notice.delay.as_millis()).unwrap_or(u64::MAX);
                    }
                });
                tracing::info!(
                    connection = %self.connection,
                    call = context,
                    attempt = notice.attempt,
                    delay_ms = u64::try_from(notice.delay.as_millis()).unwrap_or(u64::MAX),
                    error = %crate::error::chain(notice.error),
                    "retrying vendor call"
                );
            })
            .await
    }

    /// Reacts to what a classified answer says about the vendor's limits: a throttled answer lowers
    /// the connection's rate (and pauses it for the delay the vendor asked for); a reached daily
    /// limit pauses every call of the connection.
    pub fn observe_outcome<T>(&self, context: &str, result: &Result<T, ConnectorError>) {
        match result {
            Err(ConnectorError::RateLimited { message, retry_after }) => self.throttled(context, message, *retry_after),
            Err(ConnectorError::QuotaExhausted { message, retry_after }) => self.pause_calls(message, *retry_after),
            _ => {}
        }
    }

    fn throttled(&self, context: &str, message: &str, retry_after: Option<Duration>) {
        let per_second = self.rate.throttled(retry_after);
        let said = message.chars().take(300).collect::<String>();
        tracing::warn!(
            connection = %self.connection,
            call = context,
            vendor_said = %said,
            retry_after_ms = retry_after.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            rate_per_second = per_second,
            "throttled by the vendor: slowing this connection down"
        );
        self.host.observe(ApiEvent::Throttled { connection: &self.connection });
        self.update_throttling(true, |throttling| {
            throttling.throttled += 1;
            throttling.last_throttled_at = Some(Timestamp::now());
            throttling.last_throttled = Some(said);
        });
        self.note_rate();
    }

    /// Stops calling the vendor until `retry_after` from now (its daily limit is reached).
    fn pause_calls(&self, message: &str, retry_after: Duration) {
        let until = tokio::time::Instant::now() + retry_after;
        {
            let Ok(mut pause) = self.pause.lock() else { return };
            if pause.as_ref().is_some_and(|current| current.until >= until) {
                return;
            }
            *pause = Some(Pause { until, reason: message.to_owned() });
        }
        tracing::warn!(
            connection = %self.connection,
            vendor_said = %message,
            paused_seconds = retry_after.as_secs(),
            "the vendor's daily API limit is reached: no calls to it until the pause ends"
        );
        self.host.observe(ApiEvent::QuotaPaused { connection: &self.connection, paused: true });
        self.update_throttling(true, |throttling| {
            throttling.paused_until = Some(Timestamp::now().saturating_add(retry_after, true));
            throttling.paused_reason = Some(message.to_owned());
        });
    }

    fn resume_calls(&self) {
        let was_paused = self.pause.lock().map(|mut pause| pause.take().is_some()).unwrap_or(false);
        if was_paused {
            tracing::info!(connection = %self.connection, "the vendor reports API headroom again: calls resume");
            self.host.observe(ApiEvent::QuotaPaused { connection: &self.connection, paused: false });
            self.update_throttling(true, |throttling| {
                throttling.paused_until = None;
                throttling.paused_reason = None;
            });
        }
    }

    fn refuse_while_paused(&self) -> Result<(), ConnectorError> {
        let now = tokio::time::Instant::now();
        let pause = self.pause.lock().ok().and_then(|pause| pause.clone());
        match pause {
            Some(pause) if pause.until > now => {
                Err(ConnectorError::QuotaExhausted { message: pause.reason, retry_after: pause.until - now })
            }
            _ => Ok(()),
        }
    }

    /// Publishes the rate when the limiter changed it (lowered on throttling, raised after calm).
    fn note_rate(&self) {
        let per_second = self.rate.current();
        let changed = self
            .throttling
            .lock()
            .map(|throttling| (throttling.current_per_second - per_second).abs() > 1e-9)
            .unwrap_or(false);
        if changed {
            self.host.observe(ApiEvent::RateChanged { connection: &self.connection, per_second });
            self.update_throttling(true, |throttling| throttling.current_per_second = per_second);
        }
    }

    /// Changes the throttling snapshot; `save` persists it for `status` (rare events only: every
    /// save is a durable write).
    fn update_throttling(&self, save: bool, change: impl FnOnce(&mut Throttling)) {
        let snapshot = match self.throttling.lock() {
            Ok(mut throttling) => {
                change(&mut throttling);
                save.then(|| throttling.clone())
            }
            Err(_) => None,
        };
        if let Some(snapshot) = snapshot
            && let Ok(encoded) = serde_json::to_string(&snapshot)
            && let Err(message) = self.host.save_state(&self.connection, Throttling::STATE_KEY, &encoded)
        {
            tracing::warn!(connection = %self.connection, error = %message, "could not save the throttling status");
        }
    }

    /// Records the vendor's own usage report (Zoho credits, Dataverse's burst window), for status and
    /// metrics only.
    pub fn record_vendor_usage(&self, used: u64, limit: u64) {
        self.vendor_used.store(used, Ordering::Relaxed);
        self.vendor_limit.store(limit, Ordering::Relaxed);
        self.host.observe(ApiEvent::VendorUsage { connection: &self.connection, used, limit });
    }

    /// Records the vendor's report of its daily API allocation (Salesforce `Sforce-Limit-Info:
    /// api-usage=used/limit`) and keeps the configured headroom free: past `limit × (1 − 2 × headroom)`
    /// the rate is lowered in proportion to what is left above the headroom, and at the headroom calls
    /// pause until a probe shows room again.
    pub fn record_daily_usage(&self, used: u64, limit: u64) {
        self.record_vendor_usage(used, limit);
        if limit == 0 || self.headroom <= 0.0 {
            return;
        }
        let reserve = ((limit as f64) * self.headroom).ceil() as u64;
        let spare = limit.saturating_sub(reserve).saturating_sub(used);
        if spare == 0 {
            self.rate.set_ceiling(None);
            self.pause_calls(
                &format!("api-usage={used}/{limit} leaves less than the configured headroom of {reserve} calls"),
                QUOTA_PROBE_INTERVAL,
            );
            return;
        }
        self.resume_calls();
        if spare < reserve {
            self.rate.set_ceiling(Some(self.rate.configured() * spare as f64 / reserve as f64));
        } else {
            self.rate.set_ceiling(None);
        }
        self.note_rate();
    }

    /// Returns the usage counted so far.
    pub fn usage(&self) -> ApiUsage {
        let (budget_used, budget_limit) = self.budget.used();
        let vendor_limit = self.vendor_limit.load(Ordering::Relaxed);
        ApiUsage {
            calls: self.calls.load(Ordering::Relaxed),
            budget_used,
            budget_limit,
            vendor_used: (vendor_limit > 0).then(|| self.vendor_used.load(Ordering::Relaxed)),
            vendor_limit: (vendor_limit > 0).then_some(vendor_limit),
            throttling: self.throttling.lock().map(|throttling| throttling.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::connector::MemoryHost;

    fn http(headroom: f64) -> VendorHttp {
        let settings = HttpSettings { headroom, ..HttpSettings::default() };
        VendorHttp::new(ConnectionId::new("sf"), &settings, Arc::new(MemoryHost::default())).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_daily_limit_slows_the_connection_down_before_the_headroom_and_pauses_it_at_the_headroom() {
        let http = http(0.1);
        http.record_daily_usage(50_000, 100_000);
        assert_eq!(http.usage().throttling.current_per_second, 10.0, "plenty left: full rate");
        http.record_daily_usage(85_000, 100_000);
        assert_eq!(http.usage().throttling.current_per_second, 5.0, "half the band above the headroom left");
        http.record_daily_usage(90_000, 100_000);
        let throttling = http.usage().throttling;
        assert!(throttling.paused_until.is_some(), "{throttling:?}");
        let refused = http.send(http.client().get("http://127.0.0.1:9/never")).await.unwrap_err();
        assert!(
            matches!(&refused, ConnectorError::QuotaExhausted { retry_after, .. } if *retry_after == QUOTA_PROBE_INTERVAL),
            "{refused:?}"
        );
        assert_eq!(http.usage().calls, 0, "no call leaves while paused");
        tokio::time::advance(QUOTA_PROBE_INTERVAL).await;
        http.record_daily_usage(20_000, 100_000);
        let throttling = http.usage().throttling;
        assert_eq!(throttling.paused_until, None);
        assert_eq!(throttling.current_per_second, 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_answer_lowers_the_rate_and_is_remembered_for_status() {
        let host = Arc::new(MemoryHost::default());
        let http = VendorHttp::new(ConnectionId::new("zoho"), &HttpSettings::default(), host.clone()).unwrap();
        let throttled: Result<(), _> = Err(ConnectorError::RateLimited {
            message: "TOO_MANY_REQUESTS: too many requests".into(),
            retry_after: Some(Duration::from_secs(2)),
        });
        http.observe_outcome("Deals records", &throttled);
        let throttling = http.usage().throttling;
        assert_eq!(throttling.throttled, 1);
        assert_eq!(throttling.current_per_second, 5.0);
        assert_eq!(throttling.last_throttled.as_deref(), Some("TOO_MANY_REQUESTS: too many requests"));
        let saved = crate::connector::ConnectorHost::load_state(
            host.as_ref(),
            &ConnectionId::new("zoho"),
            Throttling::STATE_KEY,
        )
        .unwrap()
        .unwrap();
        assert_eq!(serde_json::from_str::<Throttling>(&saved).unwrap(), throttling);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_resets_read_epochs() {
        let response = |name: &'static str, value: String| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            RawResponse { status: 429, headers, body: Bytes::new() }
        };
        assert_eq!(response("retry-after", "7".into()).retry_after(), Some(Duration::from_secs(7)));
        let soon = Timestamp::now().saturating_add(Duration::from_secs(120), true);
        let date = soon.as_jiff().strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let parsed = response("retry-after", date).retry_after().unwrap();
        assert!(parsed <= Duration::from_secs(120) && parsed >= Duration::from_secs(110), "{parsed:?}");
        let reset_ms = (Timestamp::now().unix_millis() + 5_000).to_string();
        let reset = response("x-ratelimit-reset", reset_ms).reset_after("x-ratelimit-reset").unwrap();
        assert!(reset <= Duration::from_secs(5) && reset >= Duration::from_secs(4), "{reset:?}");
        assert_eq!(
            response("x-ratelimit-reset", "3".into()).reset_after("x-ratelimit-reset"),
            Some(Duration::from_secs(3))
        );
    }
}
