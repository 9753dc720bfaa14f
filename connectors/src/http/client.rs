//! The per-connection HTTP client: token cache, rate limit, budget, bounded retries, telemetry.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;

use super::{DailyBudget, RateLimit, RetryPolicy, TokenCache};
use crate::canonical::ConnectionId;
use crate::connector::{ApiEvent, ApiUsage, SharedHost};
use crate::error::ConnectorError;

/// Transport settings of one connection.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Requests per second.
    pub per_second: NonZeroU32,
    /// Calls allowed per 24 h window (`None`: unlimited).
    pub daily_budget: Option<u64>,
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

    /// Returns the `Retry-After` header in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after").and_then(|value| value.trim().parse::<u64>().ok()).map(Duration::from_secs)
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

/// The HTTP side of one connection. Shared by its pull and push tasks, so the rate limit and the
/// budget hold for the connection as a whole.
pub struct VendorHttp {
    connection: ConnectionId,
    client: reqwest::Client,
    rate: RateLimit,
    budget: DailyBudget,
    retry: RetryPolicy,
    host: SharedHost,
    tokens: TokenCache,
    calls: AtomicU64,
    vendor_used: AtomicU64,
    vendor_limit: AtomicU64,
}

impl VendorHttp {
    /// Builds the client of one connection.
    pub fn new(connection: ConnectionId, settings: &HttpSettings, host: SharedHost) -> Result<Self, ConnectorError> {
        Ok(Self {
            client: build_client(settings.timeout)?,
            rate: RateLimit::per_second(settings.per_second),
            budget: DailyBudget::load(connection.clone(), settings.daily_budget, host.clone()),
            retry: settings.retry,
            connection,
            host,
            tokens: TokenCache::default(),
            calls: AtomicU64::new(0),
            vendor_used: AtomicU64::new(0),
            vendor_limit: AtomicU64::new(0),
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

    /// Sends one request: waits for the rate limiter, reserves budget, reads the whole body.
    /// Only transport failures are errors here; every HTTP status comes back for the vendor to classify.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<RawResponse, ConnectorError> {
        let request = request.build().map_err(|error| ConnectorError::Config(format!("invalid request: {error}")))?;
        let url = url_for_log(request.url().as_str());
        if self.rate.until_ready().await {
            self.host.observe(ApiEvent::RateLimitWait { connection: &self.connection });
        }
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

    /// Runs `operation` under this connection's retry policy, reporting retries to the host.
    pub async fn retrying<T, F, Fut>(&self, operation: F) -> Result<T, ConnectorError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectorError>>,
    {
        self.retry.run(operation, |_| self.host.observe(ApiEvent::Retry { connection: &self.connection })).await
    }

    /// Records the vendor's own usage report (`Sforce-Limit-Info`, Zoho credits).
    pub fn record_vendor_usage(&self, used: u64, limit: u64) {
        self.vendor_used.store(used, Ordering::Relaxed);
        self.vendor_limit.store(limit, Ordering::Relaxed);
        self.host.observe(ApiEvent::VendorUsage { connection: &self.connection, used, limit });
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
        }
    }
}
