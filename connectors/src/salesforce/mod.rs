//! Salesforce: REST query/queryAll with `nextRecordsUrl` paging, sObject Collections upserts by
//! external id, Outbound Message webhooks, and an in-process simulator (`sim`).
//!
//! # Cursor
//!
//! Pulls read `SELECT … ORDER BY SystemModstamp, Id` and follow `nextRecordsUrl`; the cursor holds
//! the next locator, the query's lower bound and the `(Id, SystemModstamp)` pairs already delivered
//! within the overlap window. Incremental pulls use `queryAll` (deleted rows arrive with
//! `IsDeleted = true`) from `max SystemModstamp − overlap`, so records committed late with an older
//! stamp are still read, while rows already delivered with the same stamp are skipped: a re-read
//! never yields them twice, and records sharing one stamp across a page boundary are neither lost
//! nor repeated. An expired locator restarts the query from the same lower bound.
//!
//! # Large first loads
//!
//! The first REST page of a full load reports `totalSize`; above `bulk_threshold` the load is read
//! from a Bulk API 2.0 query job instead (CSV pages with `Sforce-Locator`), whose id is saved through
//! the host before any result is read so a restart resumes it. Orders stay on REST.
//!
//! # Writes the org would refuse
//!
//! Pushes are checked against the object's describe before any call: only fields the org has and
//! lets this write set (`createable` on create, `updateable` on update) are sent, so a
//! single-currency org never receives `CurrencyIsoCode`; a create lacking a field the org requires
//! is filled from `push_defaults` or rejected naming the field; an amount in another currency than
//! a single-currency org keeps is converted with `metrics.fx` or rejected.
//!
//! Orders follow the Order object reference: an order is inserted with a Draft status and activated
//! afterwards by an update that carries only `Status`; an existing order's other fields are updated
//! first and its status by a second, Status-only update. An order's lines become OrderItems of the
//! configured price book (default: the standard one), each priced from the active entry of its SKU
//! or product name, added after the order is written and before it is activated. An order whose
//! lines changed gets its products replaced: an activated order's products cannot be deleted
//! (Salesforce Help, "Editing and Deletion Considerations for Order Products"), so it is moved back
//! to its Draft status first, its products deleted and the new ones added, then its status set
//! again; an order whose products are the lines already costs no product subrequest.
//!
//! # One order, one transaction
//!
//! Those steps are subrequests of one Composite request (`POST /services/data/vXX.X/composite`,
//! REST API Developer Guide, "Send Multiple Requests Using Composite",
//! <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-composite-post.html>,
//! and "Composite Request Body", <https://developer.salesforce.com/docs/platform/api-rest/guide/requests-composite.html>):
//! with `allOrNone: true` "the entire composite request is rolled back" when a subrequest fails, so
//! the Draft, product and activation writes of an order commit together or not at all. No pull
//! (under `run`) ever reads an order crmsync pushes as activated in its Draft status or without its
//! products, and a kill between two steps cannot leave a Draft order behind: there is no between.
//! A later subrequest names the order an earlier one inserted as `@{o3.id}` (the reference
//! notation of the same pages); `collateSubrequests: false` keeps them in order. The whole request
//! "counts as a single call toward your API limits"; it takes at most 25 subrequests, at most 5 of
//! them sObject Collections or queries. When allOrNone rolls a request back, the failing subrequest
//! keeps its error and "all other subrequests return the 400 HTTP status code" ("Composite
//! Subrequest Result", <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-subrequest-result.md>);
//! their error code is `PROCESSING_HALTED` as clients see it (the guide gives only the status); inside an allOrNone composite request an sObject
//! Collections subrequest is all-or-none too ("allOrNone Parameters in Composite and Collections
//! Requests", <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-allornone.md>).
//! Single-record subrequests answer as their resources do (crm-apis.md §1.4: 201 with the id on an
//! insert or upsert that creates, 200 on an upsert that updates, 204 on an update or delete).
//!
//! Several orders share a request as those limits allow: an order without lines is 2 subrequests
//! (12 per request, so 17 calls per 200 orders), a new order with one line 3 (8 per request), a
//! changed activated order 4 plus its old and new products. Products are single-record
//! subrequests while the order's group fits in one request, else sObject Collections subrequests.
//! An order the org refuses rolls back the request it was in; the orders it halted are sent again
//! without it, so each refused order costs one more call.

mod config;
pub mod jwt;
pub mod mapping;
pub mod org;
#[cfg(feature = "simulators")]
pub mod sim;
#[cfg(all(test, feature = "testkit"))]
mod tests;
pub mod webhook;
pub mod wire;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{SalesforceAuth, SalesforceConfig, SalesforceWebhook};

use crate::canonical::{ConnectionId, Currency, Entity, ExternalId, OrderStatus, Timestamp, VendorKind};
use crate::connector::{
    ApiEvent, ApiUsage, ChangeKind, CheckReport, Connector, Cursor, Delivered, Fetched, IdPage, Mapped, Outgoing,
    OutgoingOp, Page, PushOutcome, PushReport, SharedHost, Undecodable, WebhookDelivery, WebhookEvent, WebhookParser,
    WebhookReply, deletes_to_send, deliver_page_once,
};
use crate::describe::{self, DescribeCache};
use crate::error::{ConnectorError, WebhookError};
use crate::http::{
    AccessToken, Dialect, Grant, QUOTA_PROBE_INTERVAL, RawResponse, TokenResponse, VendorHttp, error_for_status,
    request_token,
};
use crate::settings::ConnectionSettings;

const REFRESH_TOKEN_STATE: &str = "refresh_token";
/// Largest sObject Collections request.
pub const COLLECTION_LIMIT: usize = 200;

/// A Salesforce org.
pub struct SalesforceConnector {
    settings: ConnectionSettings,
    config: SalesforceConfig,
    http: VendorHttp,
    described: DescribeCache<org::ObjectInfo>,
    /// The org's corporate currency, read once (`SELECT DefaultCurrencyIsoCode FROM Organization`).
    corporate_currency: tokio::sync::OnceCell<Currency>,
    /// The price book order products come from, with its active entries, read once.
    catalog: tokio::sync::OnceCell<Arc<PriceBook>>,
}

/// A price book's active entries, by product code and by product name.
#[derive(Debug, Default)]
struct PriceBook {
    id: String,
    by_code: HashMap<String, String>,
    by_name: HashMap<String, String>,
}

impl PriceBook {
    /// The entry of an order line: by SKU, else by product name.
    fn entry(&self, line: &crate::canonical::OrderLine) -> Option<&str> {
        line.sku
            .as_ref()
            .and_then(|sku| self.by_code.get(sku))
            .or_else(|| line.product.as_ref().and_then(|product| self.by_name.get(product)))
            .map(String::as_str)
    }
}

/// What crmsync knows of an order in the org before writing it.
#[derive(Debug, Clone)]
struct OrgOrder {
    id: String,
    /// Its `Status` value.
    status: Option<String>,
    /// Whether it is activated: its `StatusCode` (the status category, Draft or Activated, of its
    /// `Status`; Order object reference and OrderStatus.StatusCode) is Activated.
    activated: bool,
    /// Its products.
    items: Vec<OrgItem>,
}

/// One product of an order in the org, as the items subquery reads it.
#[derive(Debug, Clone)]
struct OrgItem {
    id: String,
    line: crate::canonical::OrderLine,
}

impl OrgOrder {
    fn has_items(&self) -> bool {
        !self.items.is_empty()
    }

    /// Whether the org's products are the ones `wanted` (OrderItem records as
    /// [`mapping::order_items`] builds them): the same price-book entries, quantities and prices.
    fn has_the_items(&self, wanted: &[Map<String, Value>], book: &PriceBook) -> bool {
        let number = |value: Option<&Value>| {
            value
                .and_then(|value| value.to_string().trim_matches('"').parse::<rust_decimal::Decimal>().ok())
                .map(|number| number.normalize())
        };
        let mut have: Vec<(Option<String>, Option<rust_decimal::Decimal>, Option<rust_decimal::Decimal>)> = self
            .items
            .iter()
            .map(|item| {
                (
                    book.entry(&item.line).map(str::to_owned),
                    Some(item.line.quantity.normalize()),
                    Some(item.line.unit_price.normalize()),
                )
            })
            .collect();
        let mut want: Vec<(Option<String>, Option<rust_decimal::Decimal>, Option<rust_decimal::Decimal>)> = wanted
            .iter()
            .map(|item| {
                (
                    item.get("PricebookEntryId").and_then(Value::as_str).map(str::to_owned),
                    number(item.get("Quantity")),
                    number(item.get("UnitPrice")),
                )
            })
            .collect();
        have.sort();
        want.sort();
        have == want
    }
}

/// One order's writes, sent together as one all-or-none group of composite subrequests.
#[derive(Debug, Clone)]
struct OrderWrite {
    /// Its index in the batch.
    index: usize,
    /// Its id in the org when it exists (then updated by id), else it is upserted by external id.
    id: Option<String>,
    /// Its canonical id (the external-id value).
    canonical: String,
    /// The order's fields (an insert carries a Draft status).
    record: Map<String, Value>,
    /// An activated order whose products are replaced goes back to this Draft status first: an
    /// activated order's products cannot be deleted.
    draft: Option<String>,
    /// Products to delete (the order's current ones, when its lines changed).
    delete_items: Vec<String>,
    /// Products to add (OrderItem records without `OrderId`).
    items: Vec<Map<String, Value>>,
    /// The final `Status`, set by a Status-only update after the products.
    status: Option<Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Position {
    /// `nextRecordsUrl` of the query in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// Lower bound of the query in progress (`None`: the beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Timestamp>,
    /// Highest `SystemModstamp` delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<Timestamp>,
    /// `(Id, SystemModstamp ms, digest)` delivered within the overlap window below `max`.
    #[serde(default)]
    seen: Vec<Delivered>,
    /// Whether the first full read is done (then `queryAll` with deletes).
    #[serde(default)]
    incremental: bool,
    /// The Bulk API 2.0 job of a large first load, while it is being read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bulk: Option<BulkPosition>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BulkPosition {
    /// Job id.
    job: String,
    /// `Sforce-Locator` of the next results page (`None`: the first page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    locator: Option<String>,
}

/// Rows per Bulk API 2.0 results page.
const BULK_PAGE: usize = 10_000;

fn bulk_state_key(entity: Entity) -> String {
    format!("bulk_job:{entity}")
}

#[derive(Debug, Serialize, Deserialize)]
struct ListPosition {
    next: String,
}

fn soql_datetime(timestamp: Timestamp) -> String {
    timestamp.as_jiff().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The lower bound of an incremental query: `since − overlap`, floored to the whole second (SOQL
/// literals have second precision). The same bound decides which delivered rows the cursor keeps.
fn lower_bound(since: Timestamp, overlap: std::time::Duration) -> Timestamp {
    let millis = since.saturating_add(overlap, false).unix_millis();
    Timestamp::from_unix_millis(millis.div_euclid(1000) * 1000).unwrap_or(since)
}

impl SalesforceConnector {
    /// Builds the connector. Pure: no network IO until a method is called.
    pub fn new(
        settings: ConnectionSettings,
        config: SalesforceConfig,
        host: SharedHost,
    ) -> Result<Self, ConnectorError> {
        let http = VendorHttp::new(settings.id.clone(), &settings.http, host)?;
        Ok(Self {
            settings,
            config,
            http,
            described: DescribeCache::default(),
            corporate_currency: tokio::sync::OnceCell::new(),
            catalog: tokio::sync::OnceCell::new(),
        })
    }

    fn login_base(&self) -> String {
        self.config.login_url.as_str().trim_end_matches('/').to_owned()
    }

    async fn fetch_token(&self) -> Result<TokenResponse, ConnectorError> {
        let endpoint = format!("{}/services/oauth2/token", self.login_base());
        match &self.config.auth {
            SalesforceAuth::RefreshToken { client_id, client_secret, refresh_token } => {
                let host = self.http.host();
                let saved = host
                    .load_state(&self.settings.id, REFRESH_TOKEN_STATE)
                    .map_err(|message| ConnectorError::State { key: REFRESH_TOKEN_STATE.into(), message })?;
                let refresh = saved.map_or_else(|| refresh_token.clone(), secrecy::SecretString::from);
                let grant = Grant::RefreshToken {
                    client_id: client_id.as_str(),
                    client_secret: client_secret.as_ref(),
                    refresh_token: &refresh,
                };
                let response = request_token(&self.http, &endpoint, grant).await?;
                if let Some(rotated) = &response.refresh_token {
                    // Rotation: the old refresh token is dead now; the new one must survive a crash
                    // before anything relies on the new session.
                    host.save_state(&self.settings.id, REFRESH_TOKEN_STATE, rotated.expose_secret())
                        .map_err(|message| ConnectorError::State { key: REFRESH_TOKEN_STATE.into(), message })?;
                }
                Ok(response)
            }
            SalesforceAuth::ClientCredentials { client_id, client_secret } => {
                let grant = Grant::ClientCredentials { client_id: client_id.as_str(), client_secret, scope: None };
                request_token(&self.http, &endpoint, grant).await
            }
            SalesforceAuth::JwtBearer { client_id, username, private_key, audience } => {
                let key = jwt::parse_private_key(private_key.expose_secret())?;
                let audience = audience.clone().unwrap_or_else(|| self.login_base());
                let assertion = jwt::assertion(&key, client_id, username, &audience, Timestamp::now())?;
                request_token(&self.http, &endpoint, Grant::JwtBearer { assertion: &assertion }).await
            }
        }
    }

    /// Like [`Self::call_once`], decoding the JSON body inside the retry loop (a truncated body is retried).
    async fn call_json<T, F>(&self, context: &str, build: F) -> Result<T, ConnectorError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.http.call_json_body(self, context, build).await
    }

    /// One authenticated request (refreshing the token once on `INVALID_SESSION_ID`), no retries.
    async fn call_once<F>(&self, context: &str, build: &F) -> Result<RawResponse, ConnectorError>
    where
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.http.call_once(self, context, build).await
    }

    fn data_path(&self, rest: &str) -> String {
        format!("/services/data/{}{rest}", self.config.api_version)
    }

    /// Returns what the org says an object has (fetched once per connection).
    async fn describe(&self, entity: Entity) -> Result<Arc<org::ObjectInfo>, ConnectorError> {
        if let Some(found) = self.described.get(entity) {
            return Ok(found);
        }
        let object = wire::object(entity);
        let path = self.data_path(&format!("/sobjects/{object}/describe"));
        let described: wire::Describe =
            self.call_json(&format!("{object} describe"), |client, base| client.get(format!("{base}{path}"))).await?;
        let info = org::ObjectInfo::from_describe(described);
        describe::require(
            &info.names(),
            mapping::required_field(entity),
            "field",
            object,
            entity,
            &self.settings.fields,
        )?;
        mapping::check_types(entity, &info, &self.settings.fields)?;
        Ok(self.described.insert(entity, info))
    }

    /// The org's corporate currency (what a single-currency org's amounts are in), read once.
    async fn corporate_currency(&self) -> Result<Currency, ConnectorError> {
        self.corporate_currency
            .get_or_try_init(|| async {
                let soql = "SELECT DefaultCurrencyIsoCode FROM Organization";
                let path = self.data_path("/query");
                let page: wire::QueryResponse = self
                    .call_json("Organization query", |client, base| {
                        client.get(format!("{base}{path}")).query(&[("q", soql)])
                    })
                    .await?;
                let code = page
                    .records
                    .first()
                    .and_then(|row| row.get("DefaultCurrencyIsoCode"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                Currency::new(&code)
                    .map_err(|error| ConnectorError::decode("Organization.DefaultCurrencyIsoCode", error))
            })
            .await
            .cloned()
    }

    /// The currency rows of `entity` without `CurrencyIsoCode` are in: the corporate currency when
    /// the object has no currency field (single-currency org); `None` where rows carry their own.
    async fn row_currency(&self, entity: Entity) -> Result<Option<Currency>, ConnectorError> {
        if !matches!(entity, Entity::Opportunity | Entity::Order) {
            return Ok(None);
        }
        if self.describe(entity).await?.is_multi_currency() {
            return Ok(self.corporate_currency.get().cloned());
        }
        Ok(Some(self.corporate_currency().await?))
    }

    async fn select(&self, entity: Entity) -> Result<(Vec<String>, BTreeSet<String>), ConnectorError> {
        let info = self.describe(entity).await?;
        let described = info.names();
        let denied = mapping::denied_fields(entity, &self.settings.fields, &self.config, &described);
        Ok((mapping::select_list(entity, &described, &denied, &self.config), denied))
    }

    async fn soql(&self, entity: Entity, condition: Option<String>) -> Result<String, ConnectorError> {
        let (fields, _) = self.select(entity).await?;
        let mut soql = format!("SELECT {}", fields.join(", "));
        // The items subquery names the child relationship describe lists for OrderItem.
        let has_items =
            self.describe(entity).await?.child_relationship("OrderItem") == Some(wire::ORDER_ITEMS_RELATIONSHIP);
        if entity == Entity::Order && has_items && self.settings.fields.allows(entity, "lines") {
            soql.push_str(", ");
            soql.push_str(wire::ORDER_ITEMS_SUBQUERY);
        }
        soql.push_str(&format!(" FROM {}", wire::object(entity)));
        if let Some(condition) = condition {
            soql.push_str(&format!(" WHERE {condition}"));
        }
        soql.push_str(" ORDER BY SystemModstamp ASC, Id ASC");
        Ok(soql)
    }

    async fn query(&self, entity: Entity, soql: &str, all: bool) -> Result<wire::QueryResponse, ConnectorError> {
        let path = self.data_path(if all { "/queryAll" } else { "/query" });
        let batch = format!("batchSize={}", self.config.batch_size);
        let context = format!("{} query", wire::object(entity));
        self.call_json(&format!("{context} page"), |client, base| {
            client.get(format!("{base}{path}")).query(&[("q", soql)]).header("Sforce-Query-Options", batch.as_str())
        })
        .await
    }

    async fn query_more(&self, entity: Entity, next: &str) -> Result<wire::QueryResponse, ConnectorError> {
        let batch = format!("batchSize={}", self.config.batch_size);
        let context = format!("{} query page", wire::object(entity));
        self.call_json(&context, |client, base| {
            client.get(format!("{base}{next}")).header("Sforce-Query-Options", batch.as_str())
        })
        .await
    }

    /// Maps a page's records; records that cannot be decoded are set aside (see [`Undecodable`]).
    fn map_rows(
        &self,
        entity: Entity,
        rows: &[Map<String, Value>],
        currency: Option<&Currency>,
    ) -> Result<Mapped, ConnectorError> {
        let mut unmapped = mapping::Unmapped::default();
        let (mut changes, mut undecodable) = (Vec::with_capacity(rows.len()), Vec::new());
        for row in rows {
            match mapping::to_change(entity, row, &self.settings.vocabulary, &self.config, currency, &mut unmapped) {
                Ok(change) => changes.push(change),
                Err(error) => undecodable.push(Undecodable::of_row(
                    entity,
                    wire::object(entity),
                    row,
                    ("Id", "SystemModstamp"),
                    error,
                )?),
            }
        }
        for value in &unmapped.0 {
            tracing::debug!(connection = %self.settings.id, value = %value, "unmapped vendor value");
            self.http.host().observe(ApiEvent::UnmappedValue { connection: &self.settings.id, entity });
        }
        Ok((changes, undecodable))
    }

    /// Parses an Outbound Message into events (authentication included).
    fn outbound_events(&self, delivery: &WebhookDelivery<'_>) -> Result<Vec<WebhookEvent>, WebhookError> {
        let Some(webhook) = &self.config.webhook else { return Err(WebhookError::NotConfigured) };
        webhook::authenticate(webhook, delivery.query)?;
        let message = webhook::parse(delivery.body)?;
        if !webhook::same_org(&message.organization_id, &webhook.organization_id) {
            return Err(WebhookError::Unauthenticated(format!(
                "message from org {} (expected {})",
                message.organization_id, webhook.organization_id
            )));
        }
        let mut events = Vec::new();
        let mut fetch: HashMap<Entity, Vec<ExternalId>> = HashMap::new();
        for notification in message.notifications {
            let Some(entity) = webhook::entity_of(&notification.object) else { continue };
            if !self.settings.entities.contains(&entity) {
                continue;
            }
            let Some(Some(id)) = notification.fields.get("Id").cloned() else { continue };
            // Values are only trusted as a change when they carry their SystemModstamp; otherwise the
            // record is fetched (its current state, with the stamp that orders it).
            // In a single-currency org amounts carry no CurrencyIsoCode; until the corporate currency
            // is known (after the first pull) such a notification is fetched instead.
            let needs_currency = match entity {
                Entity::Opportunity => notification.fields.contains_key("Amount"),
                Entity::Order => true,
                _ => false,
            };
            let currency_known = !needs_currency
                || notification.fields.contains_key(org::CURRENCY_FIELD)
                || self.corporate_currency.get().is_some();
            if notification.fields.contains_key("SystemModstamp") && currency_known {
                let row: Map<String, Value> = notification
                    .fields
                    .iter()
                    .map(|(field, value)| {
                        let value = match value.as_deref() {
                            None => Value::Null,
                            Some("true") => Value::Bool(true),
                            Some("false") => Value::Bool(false),
                            Some(text) => Value::String(text.to_owned()),
                        };
                        (field.clone(), value)
                    })
                    .collect();
                let mut unmapped = mapping::Unmapped::default();
                let mut change = mapping::to_change(
                    entity,
                    &row,
                    &self.settings.vocabulary,
                    &self.config,
                    self.corporate_currency.get(),
                    &mut unmapped,
                )
                .map_err(|error| WebhookError::Malformed(error.to_string()))?;
                if let ChangeKind::Upsert { completeness, .. } = &mut change.kind {
                    *completeness = crate::connector::Completeness::Partial;
                }
                events.push(WebhookEvent::Changed(change));
            } else {
                fetch.entry(entity).or_default().push(ExternalId::new(id));
            }
        }
        for (entity, ids) in fetch {
            events.push(WebhookEvent::Fetch { entity, ids });
        }
        Ok(events)
    }
}

impl WebhookParser for SalesforceConnector {
    fn parse_webhook(&self, delivery: &WebhookDelivery<'_>) -> Result<WebhookReply, WebhookError> {
        let events = self.outbound_events(delivery)?;
        Ok(WebhookReply { events, content_type: "text/xml; charset=utf-8", body: webhook::ACK.to_owned() })
    }
}

impl Dialect for SalesforceConnector {
    fn fetch_access_token(&self) -> impl Future<Output = Result<TokenResponse, ConnectorError>> + Send {
        self.fetch_token()
    }

    fn base_url(&self, token: &AccessToken) -> String {
        token.api_base.clone().unwrap_or_else(|| self.login_base())
    }

    fn authorize(&self, request: reqwest::RequestBuilder, token: &AccessToken) -> reqwest::RequestBuilder {
        request.bearer_auth(token.expose()).header("Sforce-Call-Options", "client=crmsync")
    }

    fn classify(&self, response: RawResponse, context: &str) -> Result<RawResponse, ConnectorError> {
        // Every answer reports the org's rolling 24 h usage (crm-apis.md §1.7,
        // developer.salesforce.com …/api_rest/headers_api_usage.htm): the connection slows down, and
        // pauses, before the org runs out.
        if let Some(usage) = response.header("sforce-limit-info").and_then(|info| {
            let usage = info.split(';').find_map(|part| part.trim().strip_prefix("api-usage="))?;
            let (used, limit) = usage.split_once('/')?;
            Some((used.trim().parse::<u64>().ok()?, limit.trim().parse::<u64>().ok()?))
        }) {
            self.http.record_daily_usage(usage.0, usage.1);
        }
        if response.is_success() {
            return Ok(response);
        }
        let errors: Vec<wire::RestError> = serde_json::from_slice(&response.body).unwrap_or_default();
        let (code, message) = errors
            .first()
            .map(|error| (error.error_code.clone(), error.message.clone()))
            .unwrap_or_else(|| (format!("HTTP_{}", response.status), response.body_excerpt()));
        // One error code, two limits (crm-apis.md §1.7): "TotalRequests Limit exceeded." is the org's
        // rolling 24 h allocation (stop calling the org until it has room again); the concurrent
        // long-running request limit ("ConcurrentRequests …") is transient (back off and retry).
        if response.status == 403 && code == "REQUEST_LIMIT_EXCEEDED" {
            if message.contains("TotalRequests") {
                return Err(ConnectorError::QuotaExhausted {
                    message: format!("{code}: {message}"),
                    retry_after: response.retry_after().unwrap_or(QUOTA_PROBE_INTERVAL),
                });
            }
            return Err(ConnectorError::RateLimited {
                message: format!("{code}: {message}"),
                retry_after: response.retry_after(),
            });
        }
        Err(error_for_status(response.status, code, message, context, response.retry_after()))
    }
}

impl Connector for SalesforceConnector {
    fn id(&self) -> &ConnectionId {
        &self.settings.id
    }

    fn kind(&self) -> VendorKind {
        VendorKind::Salesforce
    }

    fn entities(&self) -> &[Entity] {
        &self.settings.entities
    }

    fn push_batch_size(&self) -> usize {
        COLLECTION_LIMIT
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        let mut report = CheckReport::default();
        let mut single_currency = false;
        for entity in &self.settings.entities {
            let info = self.describe(*entity).await?;
            let object = wire::object(*entity);
            if !info.has(&self.config.external_id_field) {
                report.notes.push(format!(
                    "{object}: external-id field {} is missing; pushes to this object will fail until it is created",
                    self.config.external_id_field
                ));
            }
            if !info.has(&self.config.channel_field) {
                report.notes.push(format!(
                    "{object}: channel field {} is missing; channel will be \"other\"",
                    self.config.channel_field
                ));
            }
            // Every mapped field the org lacks: it is neither read nor written.
            for field in mapping::mapped_fields(*entity, &self.config) {
                if field == self.config.channel_field
                    || info.has(&field)
                    || !self.settings.fields.allows(*entity, &field)
                {
                    continue;
                }
                let consequence = if field == org::CURRENCY_FIELD {
                    single_currency = true;
                    "single-currency org: amounts are read in its corporate currency and converted to it on push"
                } else {
                    "not read, not written"
                };
                report.notes.push(format!("{object}: mapped field {field} is not in this org ({consequence})"));
            }
        }
        if single_currency {
            let corporate = self.corporate_currency().await?;
            report.notes.push(format!("corporate currency {corporate} (Organization.DefaultCurrencyIsoCode)"));
        }
        let usage = self.http.usage();
        if let (Some(used), Some(limit)) = (usage.vendor_used, usage.vendor_limit) {
            report.notes.push(format!("API usage {used}/{limit} in the last 24 h"));
        }
        Ok(report)
    }

    async fn pull(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let mut position: Position = match cursor {
            Some(cursor) => cursor.decode()?,
            None => Position { since: self.settings.start, ..Position::default() },
        };
        if cursor.is_none() {
            position.bulk = self.bulk_resume(entity)?;
        }
        if let Some(bulk) = position.bulk.clone() {
            return self.bulk_page(entity, position, bulk).await;
        }
        let page = match &position.next {
            Some(next) => match self.query_more(entity, next).await {
                Err(ConnectorError::Rejected { code, .. }) if code == "INVALID_QUERY_LOCATOR" => {
                    tracing::info!(connection = %self.settings.id, entity = %entity, "query locator expired; resuming after the last record delivered");
                    self.resume_page(entity, &position).await?
                }
                other => other?,
            },
            None => self.first_page(entity, &position).await?,
        };
        let first_of_full_load = cursor.is_none() && position.next.is_none();
        if first_of_full_load
            && !page.done
            && self.bulk_eligible(entity)
            && page.total_size > self.config.bulk_threshold
        {
            // A large first load: its first page told the size. The whole load is read from a Bulk
            // API 2.0 job instead (this page's rows come again from the job, so nothing is delivered
            // now and a job resumed after a crash still covers everything).
            position.bulk = Some(self.bulk_start(entity, position.since, page.total_size).await?);
            return Ok(Page::new(Vec::new(), Cursor::encode(&position), true).with_total(Some(page.total_size)));
        }
        let currency = self.row_currency(entity).await?;
        let (changes, undecodable) = self.deliver(entity, &page.records, currency.as_ref(), &mut position)?;
        if page.done {
            position.next = None;
            position.since = position.max.or(position.since);
            position.incremental = true;
        } else {
            position.next = page.next_records_url.clone();
        }
        // `totalSize`: the rows of the whole query (every page of a locator repeats it).
        let total = Some(page.total_size);
        Ok(Page::new(changes, Cursor::encode(&position), !page.done).with_undecodable(undecodable).with_total(total))
    }

    async fn fetch(&self, entity: Entity, ids: &[ExternalId]) -> Result<Fetched, ConnectorError> {
        let mut fetched = Fetched::default();
        for chunk in ids.chunks(COLLECTION_LIMIT) {
            let list: Vec<String> = chunk.iter().map(|id| format!("'{}'", id.as_str().replace('\'', ""))).collect();
            let soql = self.soql(entity, Some(format!("Id IN ({})", list.join(",")))).await?;
            let mut page = self.query(entity, &soql, true).await?;
            let mut rows = std::mem::take(&mut page.records);
            while let (false, Some(next)) = (page.done, page.next_records_url.clone()) {
                page = self.query_more(entity, &next).await?;
                rows.append(&mut page.records);
            }
            let currency = self.row_currency(entity).await?;
            let mapped = self.map_rows(entity, &rows, currency.as_ref())?;
            fetched.add_read((entity, wire::object(entity)), chunk, mapped, Timestamp::now());
        }
        Ok(fetched)
    }

    async fn list_ids(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<IdPage, ConnectorError> {
        let page = match cursor {
            Some(cursor) => {
                let position: ListPosition = cursor.decode()?;
                self.query_more(entity, &position.next).await?
            }
            None => {
                let soql = format!(
                    "SELECT Id, SystemModstamp FROM {} ORDER BY SystemModstamp ASC, Id ASC",
                    wire::object(entity)
                );
                self.query(entity, &soql, false).await?
            }
        };
        let mut ids = Vec::with_capacity(page.records.len());
        for row in &page.records {
            let id = row.get("Id").and_then(Value::as_str);
            let stamp =
                row.get("SystemModstamp").and_then(Value::as_str).and_then(|text| text.parse::<Timestamp>().ok());
            if let (Some(id), Some(stamp)) = (id, stamp) {
                ids.push((ExternalId::new(id), stamp));
            }
        }
        let next = page.next_records_url.filter(|_| !page.done).map(|next| Cursor::encode(&ListPosition { next }));
        Ok(IdPage { ids, next })
    }

    async fn push(&self, entity: Entity, batch: &[Outgoing]) -> Result<PushReport, ConnectorError> {
        if batch.len() > COLLECTION_LIMIT {
            return Err(ConnectorError::Config(format!(
                "push batch of {} exceeds the {COLLECTION_LIMIT}-record collection limit",
                batch.len()
            )));
        }
        let object = wire::object(entity);
        let info = self.describe(entity).await?;
        let denied = mapping::denied_fields(entity, &self.settings.fields, &self.config, &info.names());
        let corporate = if matches!(entity, Entity::Opportunity | Entity::Order) && !info.is_multi_currency() {
            Some(self.corporate_currency().await?)
        } else {
            None
        };
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; batch.len()];
        // An order crmsync has no id for may still exist (a push whose answer was lost): look its
        // external id up first, so an existing order is updated (never re-inserted as Draft, which
        // would deactivate it) and a new one is inserted as Draft and activated once.
        let existing_orders = if entity == Entity::Order { self.orders_in_org(batch).await? } else { HashMap::new() };
        let wants_items = |data: &crate::canonical::EntityData| matches!(data, crate::canonical::EntityData::Order(order) if order.lines.as_ref().is_some_and(|lines| !lines.is_empty()));
        let price_book = if entity == Entity::Order
            && batch.iter().any(|outgoing| matches!(&outgoing.op, OutgoingOp::Upsert { data } if wants_items(data)))
        {
            Some(self.price_book().await?)
        } else {
            None
        };
        // Orders: each one's writes, sent as one all-or-none composite group.
        let mut order_writes: Vec<OrderWrite> = Vec::new();
        // A record the target already has (its id is known) is updated by Id — it may predate crmsync
        // and lack the external-id field, so an upsert by external id would duplicate it; the update
        // stamps the field. Records the target does not have are upserted by external id, so a retried
        // push never creates a second copy.
        let mut updates: Vec<(usize, Map<String, Value>)> = Vec::new();
        let mut upserts: Vec<(usize, Map<String, Value>)> = Vec::new();
        let draft = self.settings.vocabulary.order_statuses.reverse(OrderStatus::Draft).map(str::to_owned);
        for (index, outgoing) in batch.iter().enumerate() {
            let OutgoingOp::Upsert { data } = &outgoing.op else { continue };
            let in_org = existing_orders.get(&outgoing.canonical_id.to_string());
            let known = outgoing.external_id.clone().or_else(|| in_org.map(|order| ExternalId::new(order.id.clone())));
            let kind = if known.is_some() { org::WriteKind::Update } else { org::WriteKind::Create };
            let target = mapping::WriteTarget {
                info: &info,
                kind,
                denied: &denied,
                corporate_currency: corporate.as_ref(),
                fx: self.settings.fx.as_ref(),
            };
            let mut record = match mapping::to_record(
                outgoing.canonical_id,
                data,
                &self.settings.vocabulary,
                &self.config,
                &target,
            ) {
                Ok(record) => record,
                Err(rejection) => {
                    tracing::info!(connection = %self.settings.id, object, code = %rejection.code, reason = %rejection.message, "record refused before the call");
                    outcomes[index] = Some(PushOutcome::Rejected { code: rejection.code, message: rejection.message });
                    continue;
                }
            };
            if entity == Entity::Order {
                let mut write = OrderWrite {
                    index,
                    id: known.as_ref().map(ExternalId::to_string),
                    canonical: outgoing.canonical_id.to_string(),
                    record: Map::new(),
                    draft: None,
                    delete_items: Vec::new(),
                    items: Vec::new(),
                    status: None,
                };
                if let Some(status) = record.remove("Status") {
                    match (kind, &draft) {
                        // Orders are inserted Draft; the status they should have follows.
                        (org::WriteKind::Create, Some(draft)) => {
                            if status.as_str() != Some(draft.as_str()) {
                                write.status = Some(status);
                            }
                            record.insert("Status".into(), Value::String(draft.clone()));
                        }
                        (org::WriteKind::Create, None) => {
                            record.insert("Status".into(), status);
                        }
                        (org::WriteKind::Update, _) => write.status = Some(status),
                    }
                }
                if kind == org::WriteKind::Update {
                    // AccountId "can only be updated when the order's StatusCode value is Draft".
                    record.remove("AccountId");
                    record.remove("Account");
                }
                // Products: added to an order that has none yet, from its price book, or replacing
                // the ones it has when the lines changed; an order whose lines the price book cannot
                // price is refused before any call.
                if let (Some(book), crate::canonical::EntityData::Order(order)) = (&price_book, data)
                    && let Some(lines) = order.lines.as_ref().filter(|lines| !lines.is_empty())
                {
                    match mapping::order_items(
                        lines,
                        order.currency.as_ref(),
                        &book.id,
                        |line| book.entry(line),
                        &target,
                    ) {
                        Ok(order_items) => match in_org.filter(|order| order.has_items()) {
                            Some(current) if current.has_the_items(&order_items, book) => {}
                            Some(current) => {
                                if draft.is_some() && current.activated {
                                    // Back to Draft to delete its products, then activated again
                                    // with the status it has once the new ones are in.
                                    write.draft.clone_from(&draft);
                                    if write.status.is_none() {
                                        write.status = current.status.clone().map(Value::String);
                                    }
                                }
                                write.delete_items = current.items.iter().map(|item| item.id.clone()).collect();
                                write.items = order_items;
                            }
                            None => {
                                if info.is_writable("Pricebook2Id", kind) {
                                    record.insert("Pricebook2Id".into(), Value::String(book.id.clone()));
                                }
                                write.items = order_items;
                            }
                        },
                        Err(rejection) => {
                            outcomes[index] =
                                Some(PushOutcome::Rejected { code: rejection.code, message: rejection.message });
                            continue;
                        }
                    }
                }
                write.record = record;
                order_writes.push(write);
                continue;
            }
            match known {
                Some(id) => {
                    record.insert("id".into(), Value::String(id.to_string()));
                    updates.push((index, record));
                }
                None => upserts.push((index, record)),
            }
        }
        if !updates.is_empty() {
            let records: Vec<Map<String, Value>> = updates.iter().map(|(_, record)| record.clone()).collect();
            let results = self.collection_update(object, records).await?;
            for ((index, _), result) in updates.iter().zip(results) {
                outcomes[*index] = Some(match collection_outcome(result, true) {
                    PushOutcome::Upserted { external_id, version, .. } => {
                        PushOutcome::Upserted { external_id, created: false, version }
                    }
                    other => other,
                });
            }
        }
        if !upserts.is_empty() {
            let body = wire::CollectionRequest {
                all_or_none: false,
                records: upserts.iter().map(|(_, record)| record.clone()).collect(),
            };
            let path = self.data_path(&format!("/composite/sobjects/{object}/{}", self.config.external_id_field));
            let results: Vec<wire::CollectionResult> = self
                .call_json(&format!("{object} upsert results"), |client, base| {
                    client.patch(format!("{base}{path}")).json(&body)
                })
                .await?;
            if results.len() != upserts.len() {
                return Err(ConnectorError::decode(
                    format!("{object} upsert results"),
                    std::io::Error::other(format!("{} results for {} records", results.len(), upserts.len())),
                ));
            }
            for ((index, _), result) in upserts.iter().zip(results) {
                outcomes[*index] = Some(collection_outcome(result, true));
            }
        }
        if !order_writes.is_empty() {
            self.write_orders(&mut outcomes, order_writes).await?;
        }
        let deletes = deletes_to_send(batch, &mut outcomes);
        if !deletes.is_empty() {
            let ids: Vec<&str> = deletes.iter().map(|(_, id)| id.as_str()).collect();
            let path = self.data_path("/composite/sobjects");
            let joined = ids.join(",");
            let results: Vec<wire::CollectionResult> = self
                .call_json(&format!("{object} delete results"), |client, base| {
                    client.delete(format!("{base}{path}")).query(&[("ids", joined.as_str()), ("allOrNone", "false")])
                })
                .await?;
            for ((index, _), result) in deletes.iter().zip(results) {
                outcomes[*index] = Some(collection_outcome(result, false));
            }
        }
        Ok(PushReport::from_outcomes(batch, outcomes))
    }

    fn usage(&self) -> ApiUsage {
        self.http.usage()
    }

    fn representable(&self, data: &crate::canonical::EntityData) -> crate::canonical::EntityData {
        let data = self.settings.vocabulary.representable(data);
        // A single-currency org reads amounts back in its corporate currency.
        let single_currency = self.described.get(data.entity()).is_some_and(|info| !info.is_multi_currency());
        match self.corporate_currency.get() {
            Some(corporate) if single_currency => {
                crate::canonical::in_single_currency(&data, corporate, self.settings.fx.as_ref()).unwrap_or(data)
            }
            _ => data,
        }
    }
}

impl SalesforceConnector {
    /// Maps rows and keeps only those not delivered before (same `Id`, `SystemModstamp` and content),
    /// advancing the cursor's high-water mark and its overlap window.
    fn deliver(
        &self,
        entity: Entity,
        rows: &[Map<String, Value>],
        currency: Option<&Currency>,
        position: &mut Position,
    ) -> Result<Mapped, ConnectorError> {
        let mapped = self.map_rows(entity, rows, currency)?;
        Ok(deliver_page_once(mapped, &mut position.seen, &mut position.max, None, self.settings.overlap))
    }

    /// sObject Collections update (`PATCH /composite/sobjects`), one result per record in order.
    async fn collection_update(
        &self,
        object: &str,
        records: Vec<Map<String, Value>>,
    ) -> Result<Vec<wire::CollectionResult>, ConnectorError> {
        let count = records.len();
        let body = wire::CollectionRequest { all_or_none: false, records };
        let path = self.data_path("/composite/sobjects");
        let results: Vec<wire::CollectionResult> = self
            .call_json(&format!("{object} update results"), |client, base| {
                client.patch(format!("{base}{path}")).json(&body)
            })
            .await?;
        if results.len() != count {
            return Err(ConnectorError::decode(
                format!("{object} update results"),
                std::io::Error::other(format!("{} results for {count} records", results.len())),
            ));
        }
        Ok(results)
    }

    /// The orders of `batch` as the org has them, by canonical id: found by external id (crmsync has
    /// no id for them: a push whose answer was lost) or by id, with whether they have products.
    async fn orders_in_org(&self, batch: &[Outgoing]) -> Result<HashMap<String, OrgOrder>, ConnectorError> {
        let field = &self.config.external_id_field;
        let mut by_external = Vec::new();
        let mut by_id = Vec::new();
        for outgoing in batch {
            if !matches!(outgoing.op, OutgoingOp::Upsert { .. }) {
                continue;
            }
            match &outgoing.external_id {
                Some(id) => by_id.push(format!("'{}'", id.as_str().replace('\'', ""))),
                None => by_external.push(format!("'{}'", outgoing.canonical_id)),
            }
        }
        let info = self.describe(Entity::Order).await?;
        let mut conditions = Vec::new();
        if !by_external.is_empty() && info.has(field) {
            conditions.push(format!("{field} IN ({})", by_external.join(",")));
        }
        if !by_id.is_empty() {
            conditions.push(format!("Id IN ({})", by_id.join(",")));
        }
        if conditions.is_empty() {
            return Ok(HashMap::new());
        }
        // StatusCode tells whether an order is activated: a Status other than the Draft value
        // may still be in the Draft category (an org's own statuses, a cancelled draft).
        let mut selected = "Id, Status".to_owned();
        let status_code = info.has("StatusCode");
        if status_code {
            selected.push_str(", StatusCode");
        }
        if info.has(field) {
            selected.push_str(&format!(", {field}"));
        }
        let soql =
            format!("SELECT {selected}, {} FROM Order WHERE {}", wire::ORDER_ITEMS_SUBQUERY, conditions.join(" OR "));
        let mut page = self.query(Entity::Order, &soql, false).await?;
        let mut rows = std::mem::take(&mut page.records);
        while let (false, Some(next)) = (page.done, page.next_records_url.clone()) {
            page = self.query_more(Entity::Order, &next).await?;
            rows.append(&mut page.records);
        }
        let by_order_id: HashMap<String, String> = batch
            .iter()
            .filter_map(|outgoing| {
                Some((outgoing.external_id.as_ref()?.to_string(), outgoing.canonical_id.to_string()))
            })
            .collect();
        Ok(rows
            .iter()
            .filter_map(|row| {
                let id = row.get("Id")?.as_str()?.to_owned();
                let items = row
                    .get(wire::ORDER_ITEMS_RELATIONSHIP)
                    .and_then(|items| items.get("records"))
                    .and_then(Value::as_array)
                    .map(|records| {
                        records
                            .iter()
                            .filter_map(|item| {
                                let item = item.as_object()?;
                                Some(OrgItem {
                                    id: item.get("Id")?.as_str()?.to_owned(),
                                    line: mapping::order_item_line(item).ok()?,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let status = row.get("Status").and_then(Value::as_str).map(str::to_owned);
                let activated = if status_code {
                    row.get("StatusCode").and_then(Value::as_str) == Some(wire::ORDER_ACTIVATED)
                } else {
                    // An org whose Order describe lacks StatusCode (none is documented): every
                    // status but the Draft value counts as activated.
                    let draft = self.settings.vocabulary.order_statuses.reverse(OrderStatus::Draft);
                    status.as_deref().is_some_and(|status| Some(status) != draft)
                };
                let canonical = match by_order_id.get(&id) {
                    Some(canonical) => canonical.clone(),
                    None => row.get(field.as_str())?.as_str()?.to_owned(),
                };
                Some((canonical, OrgOrder { id, status, activated, items }))
            })
            .collect())
    }

    /// The price book order products come from (`pricebook_id`, else the standard one) with its
    /// active entries, read once per connection.
    async fn price_book(&self) -> Result<Arc<PriceBook>, ConnectorError> {
        self.catalog
            .get_or_try_init(|| async {
                let id = match &self.config.pricebook_id {
                    Some(id) => id.clone(),
                    None => {
                        let page = self
                            .query(Entity::Order, "SELECT Id FROM Pricebook2 WHERE IsStandard = true", false)
                            .await?;
                        page.records
                            .first()
                            .and_then(|row| row.get("Id"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| ConnectorError::Rejected {
                                status: 200,
                                code: "NO_STANDARD_PRICE_BOOK".into(),
                                message: "the org has no standard price book; set pricebook_id".into(),
                            })?
                    }
                };
                let soql = format!(
                    "SELECT Id, Name, ProductCode FROM PricebookEntry WHERE Pricebook2Id = '{}' AND IsActive = true",
                    id.replace('\'', "")
                );
                let mut page = self.query(Entity::Order, &soql, false).await?;
                let mut rows = std::mem::take(&mut page.records);
                while let (false, Some(next)) = (page.done, page.next_records_url.clone()) {
                    page = self.query_more(Entity::Order, &next).await?;
                    rows.append(&mut page.records);
                }
                let mut book = PriceBook { id, ..PriceBook::default() };
                for row in &rows {
                    let Some(entry) = row.get("Id").and_then(Value::as_str) else { continue };
                    if let Some(code) = row.get("ProductCode").and_then(Value::as_str) {
                        book.by_code.entry(code.to_owned()).or_insert_with(|| entry.to_owned());
                    }
                    if let Some(name) = row.get("Name").and_then(Value::as_str) {
                        book.by_name.entry(name.to_owned()).or_insert_with(|| entry.to_owned());
                    }
                }
                Ok(Arc::new(book))
            })
            .await
            .cloned()
    }

    /// The subrequests writing one order, all or nothing: the order itself (an update by id, or an
    /// upsert by external id inserting it Draft), back to its Draft status when its products must
    /// go, its old products deleted, its new ones added, then its final status (a Status-only
    /// update: the Order object reference allows only `Status` in the update that activates an
    /// order). Products are single-record subrequests while the group fits in one composite
    /// request, else sObject Collections subrequests. `None`: too many lines for one request.
    fn order_subrequests(&self, write: &OrderWrite) -> Option<(Vec<wire::CompositeSubrequest>, usize)> {
        let base = self.data_path("");
        let name = format!("o{}", write.index);
        let sub = |method: &str, url: String, reference_id: String, body: Option<Value>| wire::CompositeSubrequest {
            method: method.to_owned(),
            url,
            reference_id,
            body,
        };
        let field = &self.config.external_id_field;
        let mut record = write.record.clone();
        record.remove("attributes");
        let mut head = Vec::new();
        let order = match &write.id {
            Some(id) => {
                head.push(sub(
                    "PATCH",
                    format!("{base}/sobjects/Order/{id}"),
                    name.clone(),
                    Some(Value::Object(record)),
                ));
                id.clone()
            }
            None => {
                // The URL names the external id; the body must not carry it.
                record.remove(field.as_str());
                head.push(sub(
                    "PATCH",
                    format!("{base}/sobjects/Order/{field}/{}", write.canonical),
                    name.clone(),
                    Some(Value::Object(record)),
                ));
                format!("@{{{name}.id}}")
            }
        };
        if let Some(draft) = &write.draft {
            head.push(sub(
                "PATCH",
                format!("{base}/sobjects/Order/{order}"),
                format!("{name}_draft"),
                Some(serde_json::json!({ "Status": draft })),
            ));
        }
        let tail: Vec<wire::CompositeSubrequest> = write
            .status
            .iter()
            .map(|status| {
                sub(
                    "PATCH",
                    format!("{base}/sobjects/Order/{order}"),
                    format!("{name}_status"),
                    Some(serde_json::json!({ "Status": status })),
                )
            })
            .collect();
        let item = |item: &Map<String, Value>, with_attributes: bool| {
            let mut item = item.clone();
            if !with_attributes {
                item.remove("attributes");
            }
            item.insert("OrderId".into(), Value::String(order.clone()));
            item
        };
        let mut subs = head.clone();
        subs.extend(write.delete_items.iter().enumerate().map(|(number, id)| {
            sub("DELETE", format!("{base}/sobjects/OrderItem/{id}"), format!("{name}_del{number}"), None)
        }));
        subs.extend(write.items.iter().enumerate().map(|(number, record)| {
            sub(
                "POST",
                format!("{base}/sobjects/OrderItem"),
                format!("{name}_item{number}"),
                Some(Value::Object(item(record, false))),
            )
        }));
        subs.extend(tail.iter().cloned());
        if subs.len() <= wire::COMPOSITE_LIMIT {
            return Some((subs, 0));
        }
        // Too many products for single-record subrequests: sObject Collections subrequests.
        let mut subs = head;
        let mut collections = 0;
        for (number, chunk) in write.delete_items.chunks(COLLECTION_LIMIT).enumerate() {
            collections += 1;
            subs.push(sub(
                "DELETE",
                format!("{base}/composite/sobjects?ids={}&allOrNone=true", chunk.join(",")),
                format!("{name}_dels{number}"),
                None,
            ));
        }
        for (number, chunk) in write.items.chunks(COLLECTION_LIMIT).enumerate() {
            collections += 1;
            let records: Vec<Value> = chunk.iter().map(|record| Value::Object(item(record, true))).collect();
            subs.push(sub(
                "POST",
                format!("{base}/composite/sobjects"),
                format!("{name}_items{number}"),
                Some(serde_json::json!({ "allOrNone": true, "records": records })),
            ));
        }
        subs.extend(tail);
        (subs.len() <= wire::COMPOSITE_LIMIT && collections <= wire::COMPOSITE_COLLECTION_LIMIT)
            .then_some((subs, collections))
    }

    /// Writes orders through the Composite resource with `allOrNone`: each order's group of
    /// subrequests (see [`Self::order_subrequests`]) commits or rolls back as one, so no reader ever
    /// sees an order crmsync pushes as activated in its Draft status or without its products, and
    /// a kill leaves either the old order or the new one. Several orders share a request as the
    /// limits allow (25 subrequests, 5 of them collections); one order's failure rolls its
    /// request back, so the orders it halted are sent again without it.
    async fn write_orders(
        &self,
        outcomes: &mut [Option<PushOutcome>],
        writes: Vec<OrderWrite>,
    ) -> Result<(), ConnectorError> {
        let mut pending = std::collections::VecDeque::new();
        for write in writes {
            match self.order_subrequests(&write) {
                Some((subrequests, collections)) => pending.push_back((write, subrequests, collections)),
                None => {
                    outcomes[write.index] = Some(PushOutcome::Rejected {
                        code: "TOO_MANY_ORDER_LINES".into(),
                        message: format!(
                            "order of {} lines: more products than one composite request can write with the order",
                            write.items.len()
                        ),
                    });
                }
            }
        }
        let path = self.data_path("/composite");
        while !pending.is_empty() {
            let mut group = Vec::new();
            let (mut count, mut collections) = (0, 0);
            while let Some((_, subrequests, used)) = pending.front() {
                if !group.is_empty()
                    && (count + subrequests.len() > wire::COMPOSITE_LIMIT
                        || collections + used > wire::COMPOSITE_COLLECTION_LIMIT)
                {
                    break;
                }
                count += subrequests.len();
                collections += used;
                group.extend(pending.pop_front());
            }
            let request = wire::CompositeRequest {
                all_or_none: true,
                collate_subrequests: false,
                composite_request: group.iter().flat_map(|(_, subrequests, _)| subrequests.iter().cloned()).collect(),
            };
            let response: wire::CompositeResponse = self
                .call_json("Order composite results", |client, base| {
                    client.post(format!("{base}{path}")).json(&request)
                })
                .await?;
            let results: HashMap<&str, &wire::CompositeSubresult> =
                response.composite_response.iter().map(|result| (result.reference_id.as_str(), result)).collect();
            let mut failed = false;
            let mut halted = Vec::new();
            for (write, subrequests, used) in group {
                match order_result(&write, &subrequests, &results) {
                    Some(outcome) => {
                        failed |= matches!(outcome, PushOutcome::Rejected { .. } | PushOutcome::Retry { .. });
                        outcomes[write.index] = Some(outcome);
                    }
                    None => halted.push((write, subrequests, used)),
                }
            }
            if failed {
                // Rolled back for another order's sake: sent again without it.
                for entry in halted.into_iter().rev() {
                    pending.push_front(entry);
                }
            } else {
                for (write, _, _) in halted {
                    outcomes[write.index] = Some(PushOutcome::Retry {
                        message: "the composite request was rolled back without naming a failed subrequest".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Orders stay on REST: Bulk 2.0 queries cannot carry the order-items subquery.
    fn bulk_eligible(&self, entity: Entity) -> bool {
        entity != Entity::Order && self.config.bulk_threshold > 0
    }

    /// Returns the Bulk API 2.0 job a crash left behind, to resume it instead of starting over.
    fn bulk_resume(&self, entity: Entity) -> Result<Option<BulkPosition>, ConnectorError> {
        if !self.bulk_eligible(entity) {
            return Ok(None);
        }
        let key = bulk_state_key(entity);
        let saved = self
            .http
            .host()
            .load_state(&self.settings.id, &key)
            .map_err(|message| ConnectorError::State { key: key.clone(), message })?;
        Ok(saved.filter(|job| !job.is_empty()).map(|job| {
            tracing::info!(connection = %self.settings.id, entity = %entity, job = %job, "resuming a Bulk API 2.0 query job");
            BulkPosition { job, locator: None }
        }))
    }

    /// Creates the Bulk API 2.0 query job for the rest of a first load (from `since`) and saves its id
    /// before any result is read, so a restart resumes it.
    async fn bulk_start(
        &self,
        entity: Entity,
        since: Option<Timestamp>,
        rows: u64,
    ) -> Result<BulkPosition, ConnectorError> {
        let object = wire::object(entity);
        let (fields, _) = self.select(entity).await?;
        // Bulk API 2.0 queries cannot select compound fields (BillingAddress, geolocations).
        let info = self.describe(entity).await?;
        let fields: Vec<String> = fields
            .into_iter()
            .filter(|field| info.field(field).is_none_or(|described| !described.is_compound()))
            .collect();
        let mut soql = format!("SELECT {} FROM {object}", fields.join(", "));
        if let Some(since) = since {
            soql.push_str(&format!(" WHERE SystemModstamp >= {}", soql_datetime(since)));
        }
        let path = self.data_path("/jobs/query");
        let body = serde_json::json!({"operation": "query", "query": soql, "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"});
        let job: wire::BulkJob = self
            .call_json(&format!("{object} bulk query job"), |client, base| {
                client.post(format!("{base}{path}")).json(&body)
            })
            .await?;
        let key = bulk_state_key(entity);
        self.http
            .host()
            .save_state(&self.settings.id, &key, &job.id)
            .map_err(|message| ConnectorError::State { key: key.clone(), message })?;
        tracing::info!(connection = %self.settings.id, entity = %entity, rows, job = %job.id, "first load continues through Bulk API 2.0");
        Ok(BulkPosition { job: job.id, locator: None })
    }

    async fn bulk_page(
        &self,
        entity: Entity,
        mut position: Position,
        bulk: BulkPosition,
    ) -> Result<Page, ConnectorError> {
        let object = wire::object(entity);
        // The finished job's `numberRecordsProcessed`: the rows its results hold (told on its first page).
        let total = match bulk.locator {
            None => Some(self.bulk_wait(entity, &bulk.job).await?),
            Some(_) => None,
        };
        let path = self.data_path(&format!("/jobs/query/{}/results", bulk.job));
        let max = BULK_PAGE.to_string();
        let context = format!("{object} bulk results");
        let (rows, locator) = self
            .http
            .retrying(&context, || async {
                let response = self
                    .call_once(&context, &|client: &reqwest::Client, base: &str| {
                        let mut request = client.get(format!("{base}{path}")).query(&[("maxRecords", max.as_str())]);
                        if let Some(locator) = &bulk.locator {
                            request = request.query(&[("locator", locator.as_str())]);
                        }
                        request
                    })
                    .await?;
                let text = std::str::from_utf8(&response.body)
                    .map_err(|error| ConnectorError::decode(context.clone(), error))?;
                let table = wire::parse_csv(text)
                    .map_err(|message| ConnectorError::decode(context.clone(), std::io::Error::other(message)))?;
                let locator = response
                    .header("sforce-locator")
                    .filter(|value| *value != "null" && !value.is_empty())
                    .map(str::to_owned);
                Ok((table, locator))
            })
            .await?;
        let mut table = rows.into_iter();
        let header = table.next().unwrap_or_default();
        let records: Vec<Map<String, Value>> = table
            .filter(|row| row.len() == header.len())
            .map(|row| {
                header
                    .iter()
                    .zip(row)
                    .map(|(field, value)| {
                        let value = match value.as_str() {
                            "" => Value::Null,
                            "true" => Value::Bool(true),
                            "false" => Value::Bool(false),
                            _ => Value::String(value),
                        };
                        (field.clone(), value)
                    })
                    .collect()
            })
            .collect();
        let currency = self.row_currency(entity).await?;
        let (changes, undecodable) = self.deliver(entity, &records, currency.as_ref(), &mut position)?;
        let done = locator.is_none();
        if done {
            position.bulk = None;
            position.incremental = true;
            position.since = position.max.or(position.since);
            self.http
                .host()
                .save_state(&self.settings.id, &bulk_state_key(entity), "")
                .map_err(|message| ConnectorError::State { key: bulk_state_key(entity), message })?;
        } else {
            position.bulk = Some(BulkPosition { job: bulk.job, locator });
        }
        Ok(Page::new(changes, Cursor::encode(&position), !done).with_undecodable(undecodable).with_total(total))
    }

    /// Polls a job until it completes (a failed or aborted job is an error and is forgotten).
    async fn bulk_wait(&self, entity: Entity, job: &str) -> Result<u64, ConnectorError> {
        let object = wire::object(entity);
        let path = self.data_path(&format!("/jobs/query/{job}"));
        let mut delay = std::time::Duration::from_millis(500);
        loop {
            let info: wire::BulkJob = self
                .call_json(&format!("{object} bulk job"), |client, base| client.get(format!("{base}{path}")))
                .await?;
            match info.state.as_str() {
                "JobComplete" => return Ok(info.number_records_processed),
                "Failed" | "Aborted" => {
                    let _ = self.http.host().save_state(&self.settings.id, &bulk_state_key(entity), "");
                    return Err(ConnectorError::Rejected {
                        status: 200,
                        code: format!("BULK_JOB_{}", info.state.to_ascii_uppercase()),
                        message: info.error_message.unwrap_or_else(|| format!("bulk query job {job} {}", info.state)),
                    });
                }
                _ => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
    }

    /// Re-runs the query in progress after its locator expired, from the newest `SystemModstamp`
    /// delivered rather than from the query's start: the rows at that stamp are in `seen` and are not
    /// delivered twice, and nothing delivered before is read again, so an expiring locator never costs
    /// progress (re-running from the start would never finish a window larger than a few pages).
    async fn resume_page(&self, entity: Entity, position: &Position) -> Result<wire::QueryResponse, ConnectorError> {
        let lower = position.max.or(position.since);
        let soql = self.soql(entity, lower.map(|lower| format!("SystemModstamp >= {}", soql_datetime(lower)))).await?;
        self.query(entity, &soql, position.incremental).await
    }

    async fn first_page(&self, entity: Entity, position: &Position) -> Result<wire::QueryResponse, ConnectorError> {
        let lower = if position.incremental {
            position.since.map(|since| lower_bound(since, self.settings.overlap))
        } else {
            position.since
        };
        let soql = self.soql(entity, lower.map(|lower| format!("SystemModstamp >= {}", soql_datetime(lower)))).await?;
        self.query(entity, &soql, position.incremental).await
    }
}

/// What a subrequest's result says went wrong: `(code, message)`, `None` when it succeeded. A
/// collection subrequest answers 200 with per-record results, some of which may have failed.
fn subrequest_error(result: &wire::CompositeSubresult) -> Option<(String, String)> {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_owned();
    let records = result.body.as_array().map(Vec::as_slice).unwrap_or_default();
    if !(200..300).contains(&result.http_status_code) {
        return Some(match records.first() {
            Some(error) => (text(error.get("errorCode")), text(error.get("message"))),
            None => (format!("HTTP_{}", result.http_status_code), result.body.to_string()),
        });
    }
    let mut errors = records
        .iter()
        .filter(|record| record.get("success") == Some(&Value::Bool(false)))
        .filter_map(|record| record.get("errors").and_then(Value::as_array).and_then(|errors| errors.first()))
        .map(|error| (text(error.get("statusCode")), text(error.get("message"))));
    let first = errors.next()?;
    // The record that failed, rather than those rolled back for its sake.
    Some(
        std::iter::once(first.clone())
            .chain(errors)
            .find(|(code, _)| code != wire::ALL_OR_NONE_ROLLED_BACK)
            .unwrap_or(first),
    )
}

/// One order's outcome from its subrequests' results; `None` when its group was only rolled back
/// because another order's failed (it is sent again).
fn order_result(
    write: &OrderWrite,
    subrequests: &[wire::CompositeSubrequest],
    results: &HashMap<&str, &wire::CompositeSubresult>,
) -> Option<PushOutcome> {
    let mut halted = false;
    for subrequest in subrequests {
        let Some(result) = results.get(subrequest.reference_id.as_str()) else {
            return Some(PushOutcome::Retry {
                message: format!("no result for composite subrequest {}", subrequest.reference_id),
            });
        };
        let Some((code, message)) = subrequest_error(result) else { continue };
        if code == wire::PROCESSING_HALTED || code == wire::ALL_OR_NONE_ROLLED_BACK {
            halted = true;
            continue;
        }
        let step = match subrequest.reference_id.rsplit_once('_').map(|(_, step)| step) {
            None => "the order",
            Some("draft") => "the move back to Draft",
            Some(step) if step.starts_with("del") => "deleting its old products",
            Some(step) if step.starts_with("item") => "adding its products",
            Some(_) => "setting its status",
        };
        let message = format!("order not written ({step} failed; nothing of it was kept): {message}");
        return Some(match code.as_str() {
            "UNABLE_TO_LOCK_ROW" | "REQUEST_RUNNING_TOO_LONG" => {
                PushOutcome::Retry { message: format!("{code}: {message}") }
            }
            _ => PushOutcome::Rejected { code, message },
        });
    }
    if halted {
        return None;
    }
    let first = results.get(subrequests.first()?.reference_id.as_str())?;
    let id = write.id.clone().or_else(|| first.body.get("id").and_then(Value::as_str).map(str::to_owned));
    Some(match id {
        Some(id) => PushOutcome::Upserted {
            external_id: ExternalId::new(id),
            created: first.body.get("created").and_then(Value::as_bool).unwrap_or(false),
            version: None,
        },
        None => PushOutcome::Retry { message: "order upsert succeeded without an id".into() },
    })
}

fn collection_outcome(result: wire::CollectionResult, upsert: bool) -> PushOutcome {
    if result.success {
        return match (upsert, result.id) {
            (true, Some(id)) => PushOutcome::Upserted {
                external_id: ExternalId::new(id),
                created: result.created.unwrap_or(false),
                version: None,
            },
            (true, None) => PushOutcome::Retry { message: "upsert succeeded without an id".into() },
            (false, _) => PushOutcome::Deleted,
        };
    }
    let error = result.errors.into_iter().next();
    let code = error.as_ref().map_or_else(|| "UNKNOWN".to_owned(), |error| error.status_code.clone());
    let message = error.map_or_else(|| "no error detail".to_owned(), |error| error.message);
    match code.as_str() {
        // Already gone: the delete's goal holds.
        "ENTITY_IS_DELETED" if !upsert => PushOutcome::Deleted,
        // Transient per-record failures.
        "UNABLE_TO_LOCK_ROW" | "REQUEST_RUNNING_TOO_LONG" => {
            PushOutcome::Retry { message: format!("{code}: {message}") }
        }
        _ => PushOutcome::Rejected { code, message },
    }
}
