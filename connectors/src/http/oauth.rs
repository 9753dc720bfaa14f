//! Access tokens: one cache per connection with single-flight refresh, and the token requests.
//!
//! The refresh-token and client-credentials grants are made with the `oauth2` crate, through its
//! [`oauth2::AsyncHttpClient`] trait implemented on [`OAuthHttp`], a thin wrapper that sends through
//! the connection's own [`VendorHttp`] (reqwest 0.13 client, rate limit, budget, telemetry). The
//! vendor quirks live in that adapter and in the extra token fields ([`VendorTokenFields`]):
//! Salesforce's `instance_url` and its answers without `expires_in`, Zoho's `api_domain` and its
//! errors sent as HTTP 200 (rewritten to 400 so oauth2 reads them as the error responses they are).
//! The JWT-bearer grant (RFC 7523, Salesforce), which oauth2 has no request type for, posts the
//! assertion through the same adapter and reads the answer as the same oauth2 types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse as _, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{RawResponse, VendorHttp, url_for_log};
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
    /// Lifetime in seconds, when the vendor says (Salesforce does not).
    pub expires_in: Option<u64>,
    /// API base URL from the response (Salesforce `instance_url`, Zoho `api_domain`).
    pub api_base: Option<String>,
    /// A new refresh token (rotation), if one was issued.
    pub refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// The vendors' fields of a token response beyond RFC 6749 §5.1.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VendorTokenFields {
    /// Salesforce: the org's API host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    /// Zoho: the data centre's API host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_domain: Option<String>,
    /// Salesforce: the identity URL of the user the token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Salesforce: when the token was issued (epoch milliseconds, as a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
}

impl oauth2::ExtraTokenFields for VendorTokenFields {}

/// A token response as oauth2 reads it, with the vendors' extra fields.
pub type VendorTokenResponse = StandardTokenResponse<VendorTokenFields, BasicTokenType>;

/// An oauth2 client of one token endpoint (client id and secret sent in the form body, as every
/// vendor here accepts and the Zoho documentation shows).
type VendorClient = oauth2::Client<
    BasicErrorResponse,
    VendorTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The grant type URN of RFC 7523's JWT bearer assertion.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What to ask the token endpoint for.
pub enum Grant<'a> {
    /// `refresh_token` (Salesforce, Zoho); the client secret is optional for Salesforce.
    RefreshToken {
        /// OAuth client id (consumer key).
        client_id: &'a str,
        /// OAuth client secret.
        client_secret: Option<&'a SecretString>,
        /// The refresh token.
        refresh_token: &'a SecretString,
    },
    /// `client_credentials` (Salesforce, Microsoft Entra ID for Dataverse), with an optional scope.
    ClientCredentials {
        /// OAuth client id.
        client_id: &'a str,
        /// OAuth client secret.
        client_secret: &'a SecretString,
        /// Requested scope (Entra ID: `{org}/.default`).
        scope: Option<&'a str>,
    },
    /// RFC 7523 JWT bearer (Salesforce): a signed assertion, no client secret.
    JwtBearer {
        /// The signed JWT.
        assertion: &'a str,
    },
}

impl Grant<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::RefreshToken { .. } => "refresh_token",
            Self::ClientCredentials { .. } => "client_credentials",
            Self::JwtBearer { .. } => "jwt_bearer",
        }
    }
}

/// The `oauth2` HTTP client: sends through the connection's [`VendorHttp`] and applies the vendor
/// quirks to the answer before oauth2 reads it.
pub struct OAuthHttp<'h> {
    http: &'h VendorHttp,
    /// The endpoint without its query, for errors.
    endpoint: String,
}

impl<'c, 'h> oauth2::AsyncHttpClient<'c> for OAuthHttp<'h> {
    type Error = ConnectorError;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, ConnectorError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let builder =
                self.http.client().request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body);
            let response = self.http.send(builder).await?;
            vendor_quirks(&self.endpoint, response)
        })
    }
}

/// Turns what the token endpoint answered into what oauth2 expects, or into the error the retry
/// loop classifies: 429 and 5xx are transient errors (never parsed as OAuth errors); an `error`
/// body with a 2xx status (Zoho) becomes a 400; a non-2xx answer without an OAuth error body is
/// refused with an excerpt of what came back.
fn vendor_quirks(endpoint: &str, response: RawResponse) -> Result<oauth2::HttpResponse, ConnectorError> {
    if response.status == 429 {
        return Err(ConnectorError::RateLimited {
            message: format!("token endpoint {endpoint} throttled"),
            retry_after: response.retry_after(),
        });
    }
    if response.status >= 500 {
        return Err(ConnectorError::Server {
            status: response.status,
            url: endpoint.to_owned(),
            message: response.body_excerpt(),
        });
    }
    let is_oauth_error = serde_json::from_slice::<serde_json::Value>(&response.body)
        .is_ok_and(|body| body.get("error").is_some_and(serde_json::Value::is_string));
    let status = match (response.is_success(), is_oauth_error) {
        (true, true) => 400,
        (true, false) => 200,
        (false, true) => response.status,
        (false, false) => {
            return Err(ConnectorError::Rejected {
                status: response.status,
                code: "TOKEN_REQUEST_FAILED".into(),
                message: response.body_excerpt(),
            });
        }
    };
    let mut answer = oauth2::HttpResponse::new(response.body.to_vec());
    *answer.status_mut() = oauth2::http::StatusCode::from_u16(status).unwrap_or(oauth2::http::StatusCode::BAD_REQUEST);
    *answer.headers_mut() = response.headers;
    Ok(answer)
}

/// Requests an access token (retried like any vendor call), counts it, and logs it: INFO when
/// issued, WARN when refused.
pub async fn request_token(
    http: &VendorHttp,
    endpoint: &str,
    grant: Grant<'_>,
) -> Result<TokenResponse, ConnectorError> {
    let adapter = OAuthHttp { http, endpoint: url_for_log(endpoint) };
    let token_url = TokenUrl::new(endpoint.to_owned())
        .map_err(|error| ConnectorError::Config(format!("token endpoint {}: {error}", adapter.endpoint)))?;
    let result = http.retrying("token request", || exchange(&adapter, &token_url, &grant)).await;
    http.host().observe(ApiEvent::TokenRefresh { connection: http.connection(), success: result.is_ok() });
    match &result {
        Ok(token) => tracing::info!(
            connection = %http.connection(),
            grant = grant.name(),
            expires_in = token.expires_in,
            rotated = token.refresh_token.is_some(),
            "access token issued"
        ),
        Err(error) => tracing::warn!(
            connection = %http.connection(),
            grant = grant.name(),
            error = %crate::error::chain(error),
            "access token request failed"
        ),
    }
    result
}

fn client(client_id: &str, client_secret: Option<&SecretString>, token_url: &TokenUrl) -> VendorClient {
    let client = oauth2::Client::new(ClientId::new(client_id.to_owned()))
        .set_token_uri(token_url.clone())
        .set_auth_type(AuthType::RequestBody);
    match client_secret {
        Some(secret) => client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned())),
        None => client,
    }
}

/// One attempt of a grant.
async fn exchange(
    adapter: &OAuthHttp<'_>,
    token_url: &TokenUrl,
    grant: &Grant<'_>,
) -> Result<TokenResponse, ConnectorError> {
    let answer = match grant {
        Grant::RefreshToken { client_id, client_secret, refresh_token } => {
            let client = client(client_id, *client_secret, token_url);
            let refresh_token = RefreshToken::new(refresh_token.expose_secret().to_owned());
            client.exchange_refresh_token(&refresh_token).request_async(adapter).await
        }
        Grant::ClientCredentials { client_id, client_secret, scope } => {
            let client = client(client_id, Some(client_secret), token_url);
            let mut request = client.exchange_client_credentials();
            if let Some(scope) = scope {
                request = request.add_scope(Scope::new((*scope).to_owned()));
            }
            request.request_async(adapter).await
        }
        Grant::JwtBearer { assertion } => return jwt_bearer(adapter, token_url, assertion).await,
    };
    answer.map(into_token_response).map_err(|error| token_error(&adapter.endpoint, error))
}

/// The JWT-bearer grant: the form oauth2 would post for a grant it knew, sent through the same
/// adapter, the answer read as the same oauth2 types.
async fn jwt_bearer(
    adapter: &OAuthHttp<'_>,
    token_url: &TokenUrl,
    assertion: &str,
) -> Result<TokenResponse, ConnectorError> {
    use oauth2::AsyncHttpClient;
    use oauth2::http::{Method, StatusCode, header};
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", JWT_BEARER_GRANT)
        .append_pair("assertion", assertion)
        .finish();
    let request = oauth2::http::Request::builder()
        .method(Method::POST)
        .uri(token_url.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(form.into_bytes())
        .map_err(|error| ConnectorError::Config(format!("token endpoint {}: {error}", adapter.endpoint)))?;
    let answer = adapter.call(request).await?;
    if answer.status() != StatusCode::OK {
        let error: BasicErrorResponse = serde_json::from_slice(answer.body())
            .map_err(|error| ConnectorError::decode("token error response", error))?;
        return Err(token_error(&adapter.endpoint, RequestTokenError::ServerResponse(error)));
    }
    let token: VendorTokenResponse =
        serde_json::from_slice(answer.body()).map_err(|error| ConnectorError::decode("token response", error))?;
    Ok(into_token_response(token))
}

fn into_token_response(token: VendorTokenResponse) -> TokenResponse {
    let extra = token.extra_fields();
    TokenResponse {
        access_token: SecretString::from(token.access_token().secret().clone()),
        expires_in: token.expires_in().map(|lifetime| lifetime.as_secs()),
        api_base: extra.instance_url.clone().or_else(|| extra.api_domain.clone()),
        refresh_token: token.refresh_token().map(|refresh| SecretString::from(refresh.secret().clone())),
    }
}

/// Classifies a failed grant: the OAuth error codes that mean "these credentials will not work"
/// become [`ConnectorError::InvalidGrant`] (the connection stops instead of retrying).
fn token_error(endpoint: &str, error: RequestTokenError<ConnectorError, BasicErrorResponse>) -> ConnectorError {
    match error {
        RequestTokenError::Request(error) => error,
        RequestTokenError::ServerResponse(response) => {
            let code = response.error().as_ref().to_owned();
            let message = match response.error_description() {
                Some(description) => format!("{code}: {description}"),
                None => code.clone(),
            };
            match code.as_str() {
                "invalid_grant"
                | "invalid_client"
                | "invalid_client_id"
                | "invalid_client_secret"
                | "invalid_code"
                | "unauthorized_client"
                | "unsupported_grant_type"
                | "invalid_request"
                | "invalid_scope" => ConnectorError::InvalidGrant { endpoint: endpoint.to_owned(), message },
                _ => ConnectorError::Rejected { status: 400, code, message },
            }
        }
        RequestTokenError::Parse(error, _) => ConnectorError::decode("token response", error),
        RequestTokenError::Other(message) => {
            ConnectorError::Rejected { status: 200, code: "TOKEN_REQUEST_FAILED".into(), message }
        }
    }
}

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
    fn the_adapter_turns_an_error_sent_as_200_into_a_400_and_keeps_tokens_and_5xx_apart() {
        let answer = |status: u16, body: &'static [u8]| RawResponse {
            status,
            headers: Default::default(),
            body: bytes::Bytes::from_static(body),
        };
        let endpoint = "https://accounts.zoho.eu/oauth/v2/token";
        // Zoho: `200 {"error":"invalid_code"}` goes to oauth2 as the error response it is.
        let rewritten = vendor_quirks(endpoint, answer(200, br#"{"error":"invalid_code"}"#)).unwrap();
        assert_eq!(rewritten.status(), 400);
        let error: BasicErrorResponse = serde_json::from_slice(rewritten.body()).unwrap();
        let error = token_error(endpoint, RequestTokenError::ServerResponse(error));
        assert!(matches!(error, ConnectorError::InvalidGrant { .. }));
        assert_eq!(error.to_string(), "credentials rejected by https://accounts.zoho.eu/oauth/v2/token: invalid_code");
        // A token stays a 200; a 5xx and a 429 are transient errors, never parsed as OAuth errors.
        let token = br#"{"access_token":"a","token_type":"Bearer","instance_url":"https://x.my.salesforce.com"}"#;
        assert_eq!(vendor_quirks(endpoint, answer(200, token)).unwrap().status(), 200);
        let parsed: VendorTokenResponse = serde_json::from_slice(token).unwrap();
        let parsed = into_token_response(parsed);
        assert_eq!(parsed.api_base.as_deref(), Some("https://x.my.salesforce.com"));
        assert_eq!(parsed.expires_in, None);
        let unavailable = vendor_quirks(endpoint, answer(503, b"down")).unwrap_err();
        assert!(unavailable.is_retryable(), "{unavailable:?}");
        let throttled = vendor_quirks(endpoint, answer(429, br#"{"error":"too_many_requests"}"#)).unwrap_err();
        assert!(matches!(throttled, ConnectorError::RateLimited { .. }), "{throttled:?}");
        // A refusal that is not OAuth JSON is refused with what came back.
        let html = vendor_quirks(endpoint, answer(403, b"<html>forbidden</html>")).unwrap_err();
        assert!(html.to_string().contains("forbidden") || format!("{html:?}").contains("forbidden"), "{html:?}");
    }
}

/// The adapter against each simulator's token endpoint, with the vendor's quirks.
#[cfg(all(test, feature = "simulators"))]
#[allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly
mod against_the_simulators {
    use super::*;
    use crate::canonical::{ConnectionId, Timestamp};
    use crate::connector::MemoryHost;
    use crate::http::{HttpSettings, RetryPolicy};
    use crate::sim::{World, WorldSize};
    use crate::{dynamics365, salesforce, zoho};

    fn empty_world() -> World {
        let size = WorldSize { accounts: 0, leads: 0, opportunities: 0, orders: 0 };
        World::generate(1, size, "2026-11-01T00:00:00Z".parse().unwrap(), false)
    }

    fn http(name: &str) -> VendorHttp {
        let settings = HttpSettings {
            retry: RetryPolicy {
                give_up_after: Duration::from_secs(5),
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(10),
            },
            ..HttpSettings::default()
        };
        VendorHttp::new(ConnectionId::new(name), &settings, Arc::new(MemoryHost::default())).unwrap()
    }

    fn secret(value: &str) -> SecretString {
        SecretString::from(value.to_owned())
    }

    #[tokio::test]
    async fn salesforce_tokens_carry_instance_url_no_expiry_and_a_rotated_refresh_token() {
        use salesforce::sim::{self, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN};
        let mut options = sim::SalesforceSimOptions::with_world(empty_world());
        options.rotate_refresh_tokens = true;
        let running = sim::start(options).await.unwrap();
        let base = running.base_url();
        let endpoint = format!("{}/services/oauth2/token", base.trim_end_matches('/'));
        let http = http("sf");
        let (client_secret, refresh_token) = (secret(CLIENT_SECRET), secret(REFRESH_TOKEN));
        let refresh = Grant::RefreshToken {
            client_id: CLIENT_ID,
            client_secret: Some(&client_secret),
            refresh_token: &refresh_token,
        };
        let token = request_token(&http, &endpoint, refresh).await.unwrap();
        assert!(token.access_token.expose_secret().starts_with("00D000000000001!"));
        assert_eq!(token.api_base.as_deref(), Some(base.trim_end_matches('/')), "instance_url is the API base");
        assert_eq!(token.expires_in, None, "Salesforce sends no expires_in: the token lives until a 401");
        assert!(token.refresh_token.is_some(), "the org rotates refresh tokens");
        // The old refresh token died with the rotation: invalid_grant stops the connection.
        let stale = Grant::RefreshToken {
            client_id: CLIENT_ID,
            client_secret: Some(&client_secret),
            refresh_token: &refresh_token,
        };
        let error = request_token(&http, &endpoint, stale).await.unwrap_err();
        assert!(matches!(error, ConnectorError::InvalidGrant { .. }), "{error:?}");
        assert!(error.to_string().contains("invalid_grant: expired access/refresh token"), "{error}");
        assert!(!error.to_string().contains(REFRESH_TOKEN), "no secret in errors: {error}");

        let credentials = Grant::ClientCredentials { client_id: CLIENT_ID, client_secret: &client_secret, scope: None };
        assert!(request_token(&http, &endpoint, credentials).await.is_ok());
        let wrong = secret("wrong");
        let refused = Grant::ClientCredentials { client_id: CLIENT_ID, client_secret: &wrong, scope: None };
        let error = request_token(&http, &endpoint, refused).await.unwrap_err();
        assert!(error.to_string().contains("invalid_client"), "{error}");

        // JWT bearer: an assertion signed with jsonwebtoken is accepted; one for another user is not.
        let key = salesforce::jwt::parse_private_key(&running.state().jwt_private_key_pem().unwrap()).unwrap();
        let audience = base.trim_end_matches('/');
        let signed =
            salesforce::jwt::assertion(&key, CLIENT_ID, sim::JWT_USERNAME, audience, Timestamp::now()).unwrap();
        let token = request_token(&http, &endpoint, Grant::JwtBearer { assertion: &signed }).await.unwrap();
        assert_eq!(token.api_base.as_deref(), Some(audience));
        let other =
            salesforce::jwt::assertion(&key, CLIENT_ID, "someone@else.example", audience, Timestamp::now()).unwrap();
        let error = request_token(&http, &endpoint, Grant::JwtBearer { assertion: &other }).await.unwrap_err();
        assert!(matches!(error, ConnectorError::InvalidGrant { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn zoho_errors_sent_as_http_200_are_refusals_and_api_domain_is_the_base() {
        use zoho::sim::{self, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN};
        let running = sim::start(sim::ZohoSimOptions::with_world(empty_world())).await.unwrap();
        let base = running.base_url();
        let endpoint = format!("{}/oauth/v2/token", base.trim_end_matches('/'));
        let http = http("zoho");
        let (client_secret, refresh_token) = (secret(CLIENT_SECRET), secret(REFRESH_TOKEN));
        let grant = Grant::RefreshToken {
            client_id: CLIENT_ID,
            client_secret: Some(&client_secret),
            refresh_token: &refresh_token,
        };
        let token = request_token(&http, &endpoint, grant).await.unwrap();
        assert!(token.access_token.expose_secret().starts_with("1000."));
        assert_eq!(token.api_base.as_deref(), Some(base.trim_end_matches('/')), "api_domain is the API base");
        assert_eq!(token.expires_in, Some(3600));
        // `200 {"error":"invalid_code"}`: a refusal, not a token without an access_token.
        let revoked = secret("1000.revoked");
        let grant =
            Grant::RefreshToken { client_id: CLIENT_ID, client_secret: Some(&client_secret), refresh_token: &revoked };
        let error = request_token(&http, &endpoint, grant).await.unwrap_err();
        assert!(matches!(error, ConnectorError::InvalidGrant { .. }), "{error:?}");
        assert!(error.to_string().ends_with(": invalid_code"), "{error}");
        let wrong = secret("wrong");
        let grant =
            Grant::RefreshToken { client_id: CLIENT_ID, client_secret: Some(&wrong), refresh_token: &refresh_token };
        let error = request_token(&http, &endpoint, grant).await.unwrap_err();
        assert!(error.to_string().ends_with(": invalid_client"), "{error}");
    }

    #[tokio::test]
    async fn entra_id_client_credentials_ask_for_the_org_scope_and_refusals_carry_the_aadsts_code() {
        use dynamics365::sim::{self, CLIENT_ID, CLIENT_SECRET, TENANT_ID};
        let running = sim::start(sim::Dynamics365SimOptions::with_world(empty_world())).await.unwrap();
        let base = running.base_url();
        let base = base.trim_end_matches('/');
        let endpoint = format!("{base}/{TENANT_ID}/oauth2/v2.0/token");
        let http = http("d365");
        let (client_secret, scope) = (secret(CLIENT_SECRET), format!("{base}/.default"));
        let grant =
            Grant::ClientCredentials { client_id: CLIENT_ID, client_secret: &client_secret, scope: Some(&scope) };
        let token = request_token(&http, &endpoint, grant).await.unwrap();
        assert_eq!(token.expires_in, Some(3599));
        assert_eq!(token.api_base, None, "Entra ID names no API host: the org URL is configured");
        let wrong = secret("wrong");
        let grant = Grant::ClientCredentials { client_id: CLIENT_ID, client_secret: &wrong, scope: Some(&scope) };
        let error = request_token(&http, &endpoint, grant).await.unwrap_err();
        assert!(matches!(error, ConnectorError::InvalidGrant { .. }), "{error:?}");
        assert!(error.to_string().contains("invalid_client: AADSTS7000215"), "{error}");
        let grant =
            Grant::ClientCredentials { client_id: CLIENT_ID, client_secret: &client_secret, scope: Some("nope") };
        let error = request_token(&http, &endpoint, grant).await.unwrap_err();
        assert!(error.to_string().contains("invalid_scope"), "{error}");
    }
}
