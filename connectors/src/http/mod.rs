//! Shared vendor-HTTP plumbing: one [`VendorHttp`] per connection owns the reqwest client, the access
//! token ([`TokenCache`]), the rate limiter, the daily budget and the retry policy; each vendor adds
//! its [`Dialect`] (authentication, base URL, error bodies) and shares [`error_for_status`].
//!
//! Every vendor request goes `daily-limit pause → rate limit → budget → send → classify`. A throttled
//! answer halves the connection's rate and pauses it for as long as the vendor asks; quiet periods
//! raise it again. Transient failures (throttling, 408/5xx, transport errors, truncated bodies) are
//! retried with jittered exponential back-off until the call's time budget is spent; past it the
//! error goes back to the scheduler, which keeps the committed cursor and resumes from it.

mod call;
mod client;
mod oauth;
mod rate_limit;
mod retry;

pub use call::{Dialect, error_for_status};
pub use client::{HttpSettings, QUOTA_PROBE_INTERVAL, RawResponse, VendorHttp, build_client, url_for_log};
pub use oauth::{
    AccessToken, Grant, JWT_BEARER_GRANT, OAuthHttp, TokenCache, TokenResponse, VendorTokenFields, VendorTokenResponse,
    request_token,
};
pub use rate_limit::{DailyBudget, RateLimit, Waited};
pub use retry::{RetryNotice, RetryPolicy};
