//! The authenticated vendor call every connector makes, and the one table from an HTTP status to a
//! [`ConnectorError`].
//!
//! A vendor differs in how it authenticates a request, where its API lives and how it words an error
//! body; that is its [`Dialect`]. Everything else is shared: take a token (single-flight), build and
//! send the request through the connection's rate limit and budget, classify the answer, refresh the
//! token once on 401, and retry transient failures (a truncated body is a decode error and is retried
//! like a 5xx).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::{AccessToken, RawResponse, TokenResponse, VendorHttp};
use crate::error::ConnectorError;

/// How one vendor speaks HTTP.
pub trait Dialect: Send + Sync {
    /// Fetches a fresh access token from the vendor's token endpoint.
    fn fetch_access_token(&self) -> impl Future<Output = Result<TokenResponse, ConnectorError>> + Send;

    /// Returns the base URL (no trailing slash) of requests made with `token`.
    fn base_url(&self, token: &AccessToken) -> String;

    /// Adds the vendor's authentication and fixed headers to a request.
    fn authorize(&self, request: reqwest::RequestBuilder, token: &AccessToken) -> reqwest::RequestBuilder;

    /// Returns the semaphore bounding this vendor's concurrent requests per connection, if it has one.
    fn in_flight(&self) -> Option<&tokio::sync::Semaphore> {
        None
    }

    /// Returns the answer when the caller should read it, or the error it means. Vendors read their
    /// error body's code and message and hand the rest to [`error_for_status`].
    fn classify(&self, response: RawResponse, context: &str) -> Result<RawResponse, ConnectorError>;
}

/// The status table every vendor shares: 401 asks for a new token, 429 is throttling (with the
/// vendor's delay when it gave one), 408 and 5xx are the vendor's transient failures, any other
/// status is a refusal that retrying will not change. `context` names the call in messages.
pub fn error_for_status(
    status: u16,
    code: String,
    message: String,
    context: &str,
    retry_after: Option<Duration>,
) -> ConnectorError {
    match status {
        401 => ConnectorError::Unauthorized { message: format!("{code}: {message}") },
        429 => ConnectorError::RateLimited { message: format!("{code}: {message}"), retry_after },
        408 | 500..=599 => {
            ConnectorError::Server { status, url: context.to_owned(), message: format!("{code}: {message}") }
        }
        _ => ConnectorError::Rejected { status, code, message },
    }
}

impl VendorHttp {
    /// One authenticated request, no retries: refreshes the token once when the vendor answers 401.
    /// `build` gets the client and the dialect's base URL.
    pub async fn call_once<D, F>(&self, dialect: &D, context: &str, build: &F) -> Result<RawResponse, ConnectorError>
    where
        D: Dialect,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        let _permit = match dialect.in_flight() {
            Some(semaphore) => Some(
                semaphore
                    .acquire()
                    .await
                    .map_err(|_| ConnectorError::Config("the connection is shutting down".into()))?,
            ),
            None => None,
        };
        self.tokens()
            .with_token(
                || dialect.fetch_access_token(),
                |token| {
                    let base = dialect.base_url(&token);
                    let request = dialect.authorize(build(self.client(), base.trim_end_matches('/')), &token);
                    async move {
                        let response = self.send(request).await?;
                        let result = dialect.classify(response, context);
                        self.observe_outcome(context, &result);
                        result
                    }
                },
            )
            .await
    }

    /// Sends a request under the connection's retry policy and decodes its JSON body inside the retry
    /// loop (a truncated body is retried). An answer without a body (204, 304) is `None`.
    pub async fn call_json<D, T, F>(&self, dialect: &D, context: &str, build: F) -> Result<Option<T>, ConnectorError>
    where
        D: Dialect,
        T: serde::de::DeserializeOwned,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.call_decoding(dialect, context, build, |body| serde_json::from_slice(&body)).await
    }

    /// Like [`VendorHttp::call_json`] with the caller's decoder, which owns the body: it may keep
    /// views of it (`Bytes::slice`) instead of copying what it reads.
    pub async fn call_decoding<D, T, F, P>(
        &self,
        dialect: &D,
        context: &str,
        build: F,
        decode: P,
    ) -> Result<Option<T>, ConnectorError>
    where
        D: Dialect,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
        P: Fn(Bytes) -> Result<T, serde_json::Error>,
    {
        self.retrying(context, || async {
            let response = self.call_once(dialect, context, &build).await?;
            if response.status == 204 || response.status == 304 || response.body.is_empty() {
                return Ok(None);
            }
            decode(response.body).map(Some).map_err(|error| ConnectorError::decode(context, error))
        })
        .await
    }

    /// Like [`VendorHttp::call_json`] for calls whose answer always has a body: an empty one is a
    /// decode error (and retried).
    pub async fn call_json_body<D, T, F>(&self, dialect: &D, context: &str, build: F) -> Result<T, ConnectorError>
    where
        D: Dialect,
        T: serde::de::DeserializeOwned,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.retrying(context, || async { self.call_once(dialect, context, &build).await?.json::<T>(context) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RetryAdvice;

    #[test]
    fn the_status_table_classifies_every_class() {
        let error = |status| error_for_status(status, "CODE".into(), "said".into(), "Account query", None);
        assert!(matches!(error(401), ConnectorError::Unauthorized { .. }));
        assert!(matches!(error(429), ConnectorError::RateLimited { retry_after: None, .. }));
        assert!(matches!(error(408), ConnectorError::Server { status: 408, .. }));
        assert!(matches!(error(503), ConnectorError::Server { status: 503, .. }));
        assert!(matches!(error(400), ConnectorError::Rejected { status: 400, .. }));
        assert_eq!(error(408).retry_advice(), RetryAdvice::Backoff);
        assert_eq!(error(404).retry_advice(), RetryAdvice::GiveUp);
        let throttled = error_for_status(429, "C".into(), "m".into(), "x", Some(Duration::from_secs(3)));
        assert_eq!(throttled.retry_advice(), RetryAdvice::RetryAfter(Duration::from_secs(3)));
        assert_eq!(error(500).to_string(), "vendor error 500 from Account query: CODE: said");
    }
}
