//! The REST API as the CLI uses it: while a daemon holds the store, `crmsync orders`, `conflicts`,
//! `dlq`, `identity`, `metrics`, `export` and `status` ask that daemon through `/api/v1` (the URL
//! from `daemon.listen`, the token from `api.token`, or `--url`/`--token`) and print what the local
//! path would print. An API error arrives as the same message the local path gives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crmsync_connectors::canonical::{CanonicalId, Entity, Timestamp};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::api::OrderChange;
use crate::ingest::operator::{OperatorOutcome, OrderInput, OrderPatch, Side};
use crate::metrics::MetricsReport;
use crate::queries::{ListQuery, QueuePage, RecordPage, Versioned};
use crate::status::StatusReport;
use crate::store::{ConflictEntry, DeadLetter};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error (its message, as the local path would give it).
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code (`invalid`, `not_found`, …).
        code: String,
        /// The message.
        message: String,
    },
    /// The daemon could not be reached.
    #[error("the daemon's API at {url} did not answer")]
    Transport {
        /// The URL called.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The daemon answered something this CLI does not understand (another version?).
    #[error("unexpected answer from {url}: {detail}")]
    Decode {
        /// The URL called.
        url: String,
        /// What did not parse.
        detail: String,
    },
}

/// Returns the URL of a daemon's API from its listen address: a wildcard address (`0.0.0.0`,
/// `[::]`) is reached on loopback.
pub fn api_url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(host, listen.port()))
}

/// A client of one daemon's API.
pub struct ApiClient {
    base: String,
    token: SecretString,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ApiClient").field("base", &self.base).field("token", &"[redacted]").finish()
    }
}

fn collection(entity: Entity) -> &'static str {
    match entity {
        Entity::Account => "accounts",
        Entity::Lead => "leads",
        Entity::Opportunity => "opportunities",
        Entity::Order => "orders",
    }
}

impl ApiClient {
    /// A client of the daemon at `url` (`http://127.0.0.1:8080`, with or without `/api/v1`).
    pub fn new(url: &str, token: SecretString) -> Self {
        let trimmed = url.trim_end_matches('/');
        let base = if trimmed.ends_with("/api/v1") { trimmed.to_owned() } else { format!("{trimmed}/api/v1") };
        Self { base, token, http: reqwest::Client::new() }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&(dyn erased::Query + Sync)>,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(self.token.expose_secret());
        if let Some(query) = query {
            request = request.query(&query.pairs());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(version) = if_match {
            request = request.header(reqwest::header::IF_MATCH, format!("\"{}\"", version.trim_matches('"')));
        }
        let response = request.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let error = &body["error"];
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: error["code"].as_str().unwrap_or("error").to_owned(),
                message: error["message"].as_str().map_or_else(|| format!("{status} from {url}"), str::to_owned),
            });
        }
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Decode { url, detail: error.to_string() })
    }

    /// A page of records.
    pub async fn record_page(&self, entity: Entity, query: &ListQuery) -> Result<RecordPage, ClientError> {
        self.call(Method::GET, &format!("/{}", collection(entity)), Some(query), None, None).await
    }

    /// One order.
    pub async fn order(&self, id: &str) -> Result<Versioned, ClientError> {
        self.call(Method::GET, &format!("/orders/{id}"), None, None, None).await
    }

    /// Creates an order.
    pub async fn create_order(&self, input: &OrderInput) -> Result<OrderChange, ClientError> {
        let body = serde_json::to_value(input).unwrap_or(Value::Null);
        self.call(Method::POST, "/orders", None, Some(&without_nulls(body)), None).await
    }

    /// Changes an order.
    pub async fn update_order(
        &self,
        id: CanonicalId,
        patch: &OrderPatch,
        if_version: Option<&str>,
    ) -> Result<OrderChange, ClientError> {
        let body = serde_json::to_value(patch).unwrap_or(Value::Null);
        self.call(Method::PATCH, &format!("/orders/{id}"), None, Some(&without_nulls(body)), if_version).await
    }

    /// Deletes an order.
    pub async fn delete_order(&self, id: CanonicalId, if_version: Option<&str>) -> Result<OrderChange, ClientError> {
        self.call(Method::DELETE, &format!("/orders/{id}"), None, None, if_version).await
    }

    /// A page of conflicts.
    pub async fn conflicts(
        &self,
        all: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<QueuePage<ConflictEntry>, ClientError> {
        let query = PageQuery { all: Some(all), after: after.map(str::to_owned), limit };
        self.call(Method::GET, "/conflicts", Some(&query), None, None).await
    }

    /// Resolves a conflict.
    pub async fn resolve(&self, id: &str, take: Side) -> Result<OperatorOutcome, ClientError> {
        self.call(Method::POST, "/conflicts", None, Some(&json!({"id": id, "take": take})), None).await
    }

    /// A page of dead letters.
    pub async fn dead_letters(&self, after: Option<&str>, limit: usize) -> Result<QueuePage<DeadLetter>, ClientError> {
        let query = PageQuery { all: None, after: after.map(str::to_owned), limit };
        self.call(Method::GET, "/dlq", Some(&query), None, None).await
    }

    /// Retries (`retry`) or drops (`drop`) dead letters: ids, or every one with `None`.
    pub async fn dead_letter_action(
        &self,
        action: &str,
        ids: Option<&[String]>,
    ) -> Result<OperatorOutcome, ClientError> {
        let ids = ids.map_or_else(|| json!("all"), |ids| json!(ids));
        self.call(Method::POST, "/dlq", None, Some(&json!({"action": action, "ids": ids})), None).await
    }

    /// Merges two records.
    pub async fn merge(&self, keep: &str, other: &str) -> Result<OperatorOutcome, ClientError> {
        self.call(Method::POST, "/identity/merge", None, Some(&json!({"keep": keep, "other": other})), None).await
    }

    /// Splits a copy off a record.
    pub async fn split(&self, id: &str, connection: &str) -> Result<OperatorOutcome, ClientError> {
        self.call(Method::POST, "/identity/split", None, Some(&json!({"id": id, "connection": connection})), None).await
    }

    /// The sales metrics.
    pub async fn metrics(
        &self,
        scope: &str,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<MetricsReport, ClientError> {
        let query = MetricsQuery { scope: scope.to_owned(), since, until };
        self.call(Method::GET, "/metrics", Some(&query), None, None).await
    }

    /// The status report.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.call(Method::GET, "/status", None, None, None).await
    }
}

fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| (key, without_nulls(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[derive(Serialize)]
struct PageQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    all: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    limit: usize,
}

#[derive(Serialize)]
struct MetricsQuery {
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<Timestamp>,
}

/// Query parameters as name/value pairs (what the API's parameter reader takes), from any of the
/// query types above.
mod erased {
    use serde::Serialize;

    pub(super) trait Query {
        fn pairs(&self) -> Vec<(String, String)>;
    }

    impl<T: Serialize> Query for T {
        fn pairs(&self) -> Vec<(String, String)> {
            let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) else { return Vec::new() };
            map.into_iter()
                .filter_map(|(name, value)| match value {
                    serde_json::Value::Null | serde_json::Value::Bool(false) => None,
                    serde_json::Value::String(text) => Some((name, text)),
                    other => Some((name, other.to_string())),
                })
                .collect()
        }
    }
}
