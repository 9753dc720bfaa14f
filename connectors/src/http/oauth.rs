//! Access tokens: one cache per connection with single-flight refresh, and the form-encoded token
//! request every vendor uses.
//!
//! oauth2 5.0 is not used: it is tied to reqwest 0.12, has no JWT-bearer grant, and cannot see the
//! vendor quirks handled here (Salesforce's `instance_url` without `expires_in`, Zoho's errors sent
//! as HTTP 200).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{RawResponse, VendorHttp};
use crate::connector::ApiEvent;
use crate::error::ConnectorError;

/// A cached access token.
pub struct AccessToken {
    /// The bearer value.
    pub secret: SecretString,
    /// Where the API lives for this token (Salesforce `instance_url`, Zoho `api_domain`), if the vendor says.
    pub api_base: Option<String>,
    /// When to stop using it (refreshed a minute early); `None`: until the vendor says 401.
    pub expires_at: Option<Instant>,
    /// Increases with every fetch; a 401 invalidates only the generation that saw it.
    pub generation: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("api_base", &self.api_base)
            .field("generation", &self.generation)
            .finish()
    }
}

impl AccessToken {
    /// Returns the bearer value.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// The token of one connection. At most one fetch runs at a time; callers that find the token
/// missing or expired wait for that fetch instead of starting their own.
#[derive(Default)]
pub struct TokenCache {
    current: Mutex<Option<Arc<AccessToken>>>,
    /// Generations only grow, even across invalidations: a late 401 for an old token must never
    /// match (and drop) a newer token that happens to reuse its number.
    generations: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    /// Returns the cached token, fetching one with `fetch` if there is none or it is about to expire.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<AccessToken>, ConnectorError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<TokenResponse, ConnectorError>>,
    {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            let fresh = token.expires_at.is_none_or(|deadline| Instant::now() < deadline);
            if fresh {
                return Ok(token.clone());
            }
        }
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let response = fetch().await?;
        let expires_at =
            response.expires_in.map(|seconds| Instant::now() + Duration::from_secs(seconds.saturating_sub(60).max(1)));
        let token = Arc::new(AccessToken {
            secret: response.access_token,
            api_base: response.api_base,
            expires_at,
            generation,
        });
        *current = Some(token.clone());
        Ok(token)
    }

    /// Drops the token of `generation` after the vendor refused it; a newer token is kept.
    pub async fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|token| token.generation == generation) {
            *current = None;
        }
    }

    /// Runs `call` with a token; if it fails with `Unauthorized`, refreshes once and runs it again.
    pub async fn with_token<T, F, Fut, C, CFut>(&self, fetch: F, mut call: C) -> Result<T, ConnectorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<TokenResponse, ConnectorError>>,
        C: FnMut(Arc<AccessToken>) -> CFut,
        CFut: std::future::Future<Output = Result<T, ConnectorError>>,
    {
        let token = self.get(&fetch).await?;
        let generation = token.generation;
        match call(token).await {
            Err(ConnectorError::Unauthorized { .. }) => {
                self.invalidate(generation).await;
                let refreshed = self.get(&fetch).await?;
                call(refreshed).await
            }
            other => other,
        }
    }
}

/// The parts of a token response crmsync uses.
pub struct TokenResponse {
    /// The access token.
    pub access_token: SecretString,
    /// Lifetime in seconds, when the vendor says.
    pub expires_in: Option<u64>,
    /// API base URL from the response (`instance_url`, `api_domain`).
    pub api_base: Option<String>,
    /// A new refresh token (rotation), if one was issued.
    pub refresh_token: Option<SecretString>,
    /// The whole response, for vendor-specific fields (`id`, `issued_at`).
    pub raw: serde_json::Value,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct WireToken {
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    instance_url: Option<String>,
    #[serde(default)]
    api_domain: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Posts a form-encoded token request and classifies the answer. Errors in the body are errors
/// whatever the status (Zoho answers `200 {"error":"invalid_code"}`); `invalid_grant`-like codes become
/// [`ConnectorError::InvalidGrant`] so the connection stops instead of retrying.
pub async fn request_token(
    http: &VendorHttp,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, ConnectorError> {
    let result = http
        .retrying("token request", || async {
            let response = http.send(http.client().post(endpoint).form(form)).await?;
            classify_token_response(endpoint, &response)
        })
        .await;
    http.host().observe(ApiEvent::TokenRefresh { connection: http.connection(), success: result.is_ok() });
    result
}

fn classify_token_response(endpoint: &str, response: &RawResponse) -> Result<TokenResponse, ConnectorError> {
    let endpoint = super::url_for_log(endpoint);
    if response.status == 429 {
        return Err(ConnectorError::RateLimited {
            message: format!("token endpoint {endpoint} throttled"),
            retry_after: response.retry_after(),
        });
    }
    if response.status >= 500 {
        return Err(ConnectorError::Server {
            status: response.status,
            url: endpoint,
            message: response.body_excerpt(),
        });
    }
    let raw: serde_json::Value = response.json("token response")?;
    let wire: WireToken =
        serde_json::from_value(raw.clone()).map_err(|error| ConnectorError::decode("token response", error))?;
    if let Some(code) = wire.error {
        let message = match wire.error_description {
            Some(description) => format!("{code}: {description}"),
            None => code.clone(),
        };
        return Err(match code.as_str() {
            "invalid_grant"
            | "invalid_client"
            | "invalid_client_id"
            | "invalid_client_secret"
            | "invalid_code"
            | "unauthorized_client"
            | "unsupported_grant_type"
            | "invalid_request"
            | "invalid_scope" => ConnectorError::InvalidGrant { endpoint, message },
            _ => ConnectorError::Rejected { status: response.status, code, message },
        });
    }
    if !response.is_success() {
        return Err(ConnectorError::Rejected {
            status: response.status,
            code: "TOKEN_REQUEST_FAILED".into(),
            message: response.body_excerpt(),
        });
    }
    let access_token =
        wire.access_token.ok_or_else(|| ConnectorError::decode("token response", MissingField("access_token")))?;
    let expires_in = wire.expires_in.and_then(|value| match value {
        serde_json::Value::Number(number) => number.as_u64(),
        serde_json::Value::String(text) => text.parse().ok(),
        _ => None,
    });
    Ok(TokenResponse {
        access_token: SecretString::from(access_token),
        expires_in,
        api_base: wire.instance_url.or(wire.api_domain),
        refresh_token: wire.refresh_token.map(SecretString::from),
        raw,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("missing field {0}")]
struct MissingField(&'static str);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn token(value: &str) -> TokenResponse {
        TokenResponse {
            access_token: SecretString::from(value.to_owned()),
            expires_in: Some(3600),
            api_base: None,
            refresh_token: None,
            raw: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(token("t1"))
                    })
                    .await
                    .map(|token| token.expose().to_owned())
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unauthorized_refreshes_once_and_retries() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let fetch = || async {
            let number = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(token(&format!("t{number}")))
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let result =
            cache
                .with_token(fetch, |token| {
                    seen.lock().unwrap().push(token.expose().to_owned());
                    let stale = token.expose() == "t1";
                    async move {
                        if stale { Err(ConnectorError::Unauthorized { message: "expired".into() }) } else { Ok(()) }
                    }
                })
                .await;
        assert!(result.is_ok());
        assert_eq!(*seen.lock().unwrap(), ["t1", "t2"]);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_late_401_for_an_old_token_never_drops_a_newer_one() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let fetch = || async {
            let number = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(token(&format!("t{number}")))
        };
        let first = cache.get(&fetch).await.unwrap();
        // Two requests saw t1 refused; the first invalidation leads to t2 ...
        cache.invalidate(first.generation).await;
        let second = cache.get(&fetch).await.unwrap();
        assert_eq!(second.expose(), "t2");
        // ... and the second, late invalidation of t1 must leave t2 alone.
        cache.invalidate(first.generation).await;
        assert_eq!(cache.get(&fetch).await.unwrap().expose(), "t2");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn token_debug_never_shows_the_secret() {
        let printed = format!(
            "{:?}",
            AccessToken {
                secret: SecretString::from("s3cr3t".to_owned()),
                api_base: None,
                expires_at: None,
                generation: 1
            }
        );
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }

    #[test]
    fn errors_in_a_200_body_are_errors() {
        let response = RawResponse {
            status: 200,
            headers: Default::default(),
            body: bytes::Bytes::from_static(br#"{"error":"invalid_code"}"#),
        };
        let error =
            classify_token_response("https://accounts.zoho.eu/oauth/v2/token?refresh_token=x", &response).unwrap_err();
        assert!(matches!(error, ConnectorError::InvalidGrant { .. }));
        assert_eq!(error.to_string(), "credentials rejected by https://accounts.zoho.eu/oauth/v2/token: invalid_code");
    }
}
