//! Shared vendor-HTTP plumbing: one [`VendorHttp`] per connection owns the reqwest client, the access
//! token ([`TokenCache`]), the rate limiter, the daily budget and the retry policy; each vendor adds
//! its [`Dialect`] (authentication, base URL, error bodies) and shares [`error_for_status`].
//!
//! Every vendor request goes `rate limit → budget → send → classify`; transient failures are retried
//! a bounded number of times with full-jitter back-off clamped by `Retry-After` (the scheduler is the
//! outer, patient loop).

mod call;
mod client;
mod oauth;
mod rate_limit;
mod retry;

pub use call::{Dialect, error_for_status};
pub use client::{HttpSettings, RawResponse, VendorHttp, build_client, url_for_log};
pub use oauth::{AccessToken, TokenCache, TokenResponse, request_token};
pub use rate_limit::{DailyBudget, RateLimit};
pub use retry::RetryPolicy;
