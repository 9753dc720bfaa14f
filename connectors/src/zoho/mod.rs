//! Zoho CRM: records API with `page_token` paging and `If-Modified-Since`, the deleted-records API,
//! `upsert` with `duplicate_check_fields`, Notifications API callbacks, and a simulator (`sim`).
//!
//! # Writes
//!
//! Accounts, leads and deals without a Zoho id are upserted on the external-id field (a retry
//! matches the record the first attempt created); records with a Zoho id are updated by id. Orders
//! are the exception: Zoho appends the line-item rows of a write that matches an existing order, so
//! an order without a Zoho id is inserted, and a retried insert, refused with `DUPLICATE_DATA` on the
//! external-id field, becomes an update by the id Zoho names. Every order update sends the
//! difference between the lines Zoho has and the desired ones, so nothing ever doubles them and any
//! number of copies settle in one write.
//!
//! # Cursor
//!
//! Pulls list a module sorted by `Modified_Time` (second granularity) and follow `next_page_token`
//! (page numbers stop at 2,000 records; page tokens at 100,000, after which the query is re-anchored
//! on the last `Modified_Time` seen). The cursor keeps the `(id, Modified_Time)` pairs delivered within
//! the overlap window, so equal stamps across pages and overlap re-reads never repeat a record.
//! Incremental pulls send `If-Modified-Since` (304: nothing changed) and then read the deleted-records
//! API from the last delete seen: an incremental pass is one records call plus one deleted-records
//! call.

mod config;
pub mod mapping;
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

pub use config::{DATA_CENTRES, ZohoConfig, ZohoWebhook};

use crate::canonical::{ConnectionId, Currency, Entity, ExternalId, Timestamp, VendorKind};
use crate::connector::{
    ApiEvent, ApiUsage, Change, CheckReport, Connector, Cursor, Delivered, Fetched, IdPage, Mapped, Outgoing,
    OutgoingOp, Page, PushOutcome, PushReport, SharedHost, Undecodable, WebhookDelivery, WebhookParser, WebhookReply,
    deletes_to_send, deliver_page_once,
};
use crate::describe::{self, DescribeCache};
use crate::error::{ConnectorError, WebhookError};
use crate::http::{
    AccessToken, Dialect, Grant, RawResponse, TokenResponse, VendorHttp, error_for_status, request_token,
};
use crate::settings::ConnectionSettings;

const WATCH_STATE: &str = "watch_channel_expiry";

/// A Zoho CRM org.
pub struct ZohoConnector {
    settings: ConnectionSettings,
    config: ZohoConfig,
    http: VendorHttp,
    described: DescribeCache<mapping::ModuleInfo>,
    products: tokio::sync::Mutex<Option<Arc<HashMap<String, String>>>>,
    org: tokio::sync::Mutex<Option<Arc<mapping::OrgCurrencies>>>,
    /// The same, once read: `representable` (not async) needs it.
    org_known: std::sync::OnceLock<Arc<mapping::OrgCurrencies>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    #[default]
    Records,
    Deleted,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Position {
    #[serde(default)]
    phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_token: Option<String>,
    /// Lower bound (`If-Modified-Since`) of the records query in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<Timestamp>,
    #[serde(default)]
    seen: Vec<Delivered>,
    #[serde(default)]
    incremental: bool,
    /// Records read through the current page-token chain (Zoho stops at 100,000).
    #[serde(default)]
    fetched: u64,
    /// Deletes after this instant are still to be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deletes_since: Option<Timestamp>,
    #[serde(default)]
    deleted_page: u32,
    /// When the first full load started (deletes during it are read afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    load_started: Option<Timestamp>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ListPosition {
    token: String,
}

fn if_modified_since(since: Timestamp) -> String {
    // Strictly-after semantics and second precision: ask from one second earlier.
    Timestamp::from_unix_millis((since.unix_millis().div_euclid(1000) - 1) * 1000).unwrap_or(since).to_offset_seconds()
}

impl ZohoConnector {
    /// Builds the connector. Pure: no network IO.
    pub fn new(settings: ConnectionSettings, config: ZohoConfig, host: SharedHost) -> Result<Self, ConnectorError> {
        let http = VendorHttp::new(settings.id.clone(), &settings.http, host)?;
        Ok(Self {
            settings,
            config,
            http,
            described: DescribeCache::default(),
            products: tokio::sync::Mutex::new(None),
            org: tokio::sync::Mutex::new(None),
            org_known: std::sync::OnceLock::new(),
        })
    }

    async fn fetch_token(&self) -> Result<TokenResponse, ConnectorError> {
        let endpoint = format!("{}/oauth/v2/token", self.config.accounts_url.as_str().trim_end_matches('/'));
        let grant = Grant::RefreshToken {
            client_id: self.config.client_id.as_str(),
            client_secret: Some(&self.config.client_secret),
            refresh_token: &self.config.refresh_token,
        };
        request_token(&self.http, &endpoint, grant).await
    }

    fn api_base(&self, token_base: Option<&str>) -> String {
        self.config
            .api_domain
            .as_ref()
            .map(|url| url.as_str().to_owned())
            .or_else(|| token_base.map(str::to_owned))
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }

    /// Sends a request with the retry policy and decodes its JSON body (204/304: `None`).
    async fn call_json<T, F>(&self, context: &str, build: F) -> Result<Option<T>, ConnectorError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.http.call_json(self, context, build).await
    }

    fn path(&self, rest: &str) -> String {
        format!("/crm/{}{rest}", self.config.api_version)
    }

    async fn describe(&self, entity: Entity) -> Result<Arc<mapping::ModuleInfo>, ConnectorError> {
        if let Some(found) = self.described.get(entity) {
            return Ok(found);
        }
        let module = wire::module(entity);
        let path = self.path("/settings/fields");
        let response: Option<wire::FieldsResponse> = self
            .call_json(&format!("{module} fields"), |client, base| {
                client.get(format!("{base}{path}")).query(&[("module", module)])
            })
            .await?;
        let info = mapping::ModuleInfo::new(response.map(|response| response.fields).unwrap_or_default());
        describe::require(
            &info.fields,
            mapping::required_field(entity),
            "field",
            module,
            entity,
            &self.settings.fields,
        )?;
        Ok(self.described.insert(entity, info))
    }

    async fn fields(&self, entity: Entity) -> Result<(Vec<String>, BTreeSet<String>), ConnectorError> {
        let described = self.describe(entity).await?;
        let denied = mapping::denied_fields(entity, &self.settings.fields, &self.config, &described.fields);
        Ok((mapping::fields_param(entity, &described.fields, &denied, &self.config), denied))
    }

    /// The org currency and, with multi-currency on, the active currencies: `GET org`, then
    /// `GET org/currencies` only when `mc_status` says multi-currency is enabled (without it that call
    /// answers 403 `CURRENCIES_NOT_ENABLED`). Read once per connection.
    async fn org_currencies(&self) -> Result<Arc<mapping::OrgCurrencies>, ConnectorError> {
        let mut cached = self.org.lock().await;
        if let Some(found) = cached.as_ref() {
            return Ok(found.clone());
        }
        let path = self.path("/org");
        let response: wire::OrgResponse = self
            .call_json("org", |client, base| client.get(format!("{base}{path}")))
            .await?
            .ok_or_else(|| ConnectorError::decode("org", std::io::Error::other("empty body")))?;
        let org = response
            .org
            .into_iter()
            .next()
            .ok_or_else(|| ConnectorError::decode("org", std::io::Error::other("no org in the response")))?;
        let code = org.currency_code().ok_or_else(|| {
            ConnectorError::decode(
                "org",
                std::io::Error::other(format!("org currency {:?} names no ISO code", org.currency)),
            )
        })?;
        let currency = Currency::new(code).map_err(|error| ConnectorError::decode("org currency", error))?;
        let (currency, active) = if org.mc_status {
            let path = self.path("/org/currencies");
            let response: Option<wire::CurrenciesResponse> =
                self.call_json("org currencies", |client, base| client.get(format!("{base}{path}"))).await?;
            let currencies = response.map(|response| response.currencies).unwrap_or_default();
            // The base currency as the currencies API marks it, when it does.
            let base = currencies
                .iter()
                .find(|meta| meta.is_base)
                .and_then(|meta| Currency::new(&meta.iso_code).ok())
                .unwrap_or(currency);
            (base, currencies.into_iter().filter(|meta| meta.is_active).map(|meta| meta.iso_code).collect())
        } else {
            let active = BTreeSet::from([currency.as_str().to_owned()]);
            (currency, active)
        };
        let found = Arc::new(mapping::OrgCurrencies { currency, multi_currency: org.mc_status, active });
        *cached = Some(found.clone());
        let _ = self.org_known.set(found.clone());
        Ok(found)
    }

    /// The currency of amounts whose record names none: the org currency (read only when a page
    /// has such a record: in multi-currency orgs every record carries its `Currency`).
    async fn default_currency(&self, rows: &[Map<String, Value>]) -> Result<Option<Currency>, ConnectorError> {
        if rows.iter().all(|row| row.get("Currency").and_then(Value::as_str).is_some_and(|code| !code.is_empty())) {
            return Ok(None);
        }
        Ok(Some(self.org_currencies().await?.currency.clone()))
    }

    async fn list(
        &self,
        entity: Entity,
        token: Option<&str>,
        since: Option<Timestamp>,
        ids: Option<&[ExternalId]>,
    ) -> Result<wire::RecordsResponse, ConnectorError> {
        let module = wire::module(entity);
        let (fields, _) = self.fields(entity).await?;
        let fields = fields.join(",");
        let path = self.path(&format!("/{module}"));
        let ids = ids.map(|ids| ids.iter().map(ExternalId::as_str).collect::<Vec<_>>().join(","));
        let response: Option<wire::RecordsResponse> = self
            .call_json(&format!("{module} records"), |client, base| {
                let mut request = client.get(format!("{base}{path}")).query(&[
                    ("fields", fields.as_str()),
                    ("per_page", "200"),
                    ("sort_by", "Modified_Time"),
                    ("sort_order", "asc"),
                ]);
                if let Some(token) = token {
                    request = request.query(&[("page_token", token)]);
                }
                if let Some(ids) = &ids {
                    request = request.query(&[("ids", ids.as_str())]);
                }
                if let Some(since) = since {
                    request = request.header("If-Modified-Since", if_modified_since(since));
                }
                request
            })
            .await?;
        Ok(response.unwrap_or_default())
    }

    /// Maps a page's records; records that cannot be decoded are set aside (see [`Undecodable`]).
    async fn map(&self, entity: Entity, rows: &[Map<String, Value>]) -> Result<Mapped, ConnectorError> {
        let default_currency = match entity {
            Entity::Opportunity | Entity::Order => self.default_currency(rows).await?,
            Entity::Account | Entity::Lead => None,
        };
        let mut unmapped = Vec::new();
        let (mut changes, mut undecodable) = (Vec::with_capacity(rows.len()), Vec::new());
        for row in rows {
            let mapped = mapping::to_change(
                entity,
                row,
                &self.settings.vocabulary,
                &self.config,
                default_currency.as_ref(),
                &mut unmapped,
            );
            match mapped {
                Ok(change) => changes.push(change),
                Err(error) => undecodable.push(Undecodable::of_row(
                    entity,
                    wire::module(entity),
                    row,
                    ("id", "Modified_Time"),
                    error,
                )?),
            }
        }
        for value in &unmapped {
            tracing::debug!(connection = %self.settings.id, value = %value, "unmapped vendor value");
            self.http.host().observe(ApiEvent::UnmappedValue { connection: &self.settings.id, entity });
        }
        Ok((changes, undecodable))
    }

    fn deliver(&self, mapped: Mapped, position: &mut Position) -> Mapped {
        deliver_page_once(mapped, &mut position.seen, &mut position.max, position.deletes_since, self.settings.overlap)
    }

    async fn products(&self) -> Result<Arc<HashMap<String, String>>, ConnectorError> {
        let mut cached = self.products.lock().await;
        if let Some(products) = cached.as_ref() {
            return Ok(products.clone());
        }
        let path = self.path("/Products");
        let response: Option<wire::RecordsResponse> = self
            .call_json("Products", |client, base| {
                client
                    .get(format!("{base}{path}"))
                    .query(&[("fields", "Product_Name,Product_Code"), ("per_page", "200")])
            })
            .await?;
        let products: HashMap<String, String> = response
            .unwrap_or_default()
            .data
            .iter()
            .filter_map(|product| {
                Some((product.get("Product_Name")?.as_str()?.to_owned(), product.get("id")?.as_str()?.to_owned()))
            })
            .collect();
        let products = Arc::new(products);
        *cached = Some(products.clone());
        Ok(products)
    }

    /// Enables or renews the Notifications API watch channel for every synced module when it expires
    /// within two hours; returns the channel's expiry (persisted through the host).
    pub async fn ensure_watch_channel(&self) -> Result<Option<Timestamp>, ConnectorError> {
        let Some(webhook) = &self.config.webhook else { return Ok(None) };
        let Some(notify_url) = &webhook.notify_url else { return Ok(None) };
        let host = self.http.host();
        let now = Timestamp::now();
        let saved = host
            .load_state(&self.settings.id, WATCH_STATE)
            .map_err(|message| ConnectorError::State { key: WATCH_STATE.into(), message })?;
        if let Some(expiry) = saved.and_then(|text| text.parse::<Timestamp>().ok())
            && expiry.unix_millis() - now.unix_millis() > 2 * 3600 * 1000
        {
            return Ok(Some(expiry));
        }
        let expiry = now.saturating_add(std::time::Duration::from_secs(86_400 - 60), true);
        let events: Vec<String> =
            self.settings.entities.iter().map(|entity| format!("{}.all", wire::module(*entity))).collect();
        let body = serde_json::json!({"watch": [{
            "channel_id": webhook.channel_id,
            "events": events,
            "channel_expiry": expiry.to_offset_seconds(),
            "token": webhook.token.expose_secret(),
            "notify_url": notify_url.as_str(),
        }]});
        let path = self.path("/actions/watch");
        let _: Option<Value> =
            self.call_json("actions/watch", |client, base| client.post(format!("{base}{path}")).json(&body)).await?;
        host.save_state(&self.settings.id, WATCH_STATE, &expiry.to_string())
            .map_err(|message| ConnectorError::State { key: WATCH_STATE.into(), message })?;
        Ok(Some(expiry))
    }
}

impl WebhookParser for ZohoConnector {
    fn parse_webhook(&self, delivery: &WebhookDelivery<'_>) -> Result<WebhookReply, WebhookError> {
        let Some(config) = &self.config.webhook else { return Err(WebhookError::NotConfigured) };
        let events = webhook::parse(config, &self.settings.entities, delivery)?;
        Ok(WebhookReply { events, content_type: "application/json", body: "{\"status\":\"success\"}".into() })
    }
}

impl Dialect for ZohoConnector {
    fn fetch_access_token(&self) -> impl Future<Output = Result<TokenResponse, ConnectorError>> + Send {
        self.fetch_token()
    }

    fn base_url(&self, token: &AccessToken) -> String {
        self.api_base(token.api_base.as_deref())
    }

    fn authorize(&self, request: reqwest::RequestBuilder, token: &AccessToken) -> reqwest::RequestBuilder {
        request.header("Authorization", format!("Zoho-oauthtoken {}", token.expose()))
    }

    fn classify(&self, response: RawResponse, context: &str) -> Result<RawResponse, ConnectorError> {
        if response.is_success() || response.status == 304 {
            return Ok(response);
        }
        // A write where every record failed answers 400 with per-record results: not a failed call.
        if response.status == 400 && serde_json::from_slice::<wire::WriteResponse>(&response.body).is_ok() {
            return Ok(response);
        }
        let error: Option<wire::ApiError> = serde_json::from_slice(&response.body).ok();
        let (code, message) = error
            .map(|error| (error.code, error.message))
            .unwrap_or_else(|| (format!("HTTP_{}", response.status), response.body_excerpt()));
        if response.status == 400 && code == "INVALID_DATA" && message.contains("page token") {
            return Err(ConnectorError::CursorExpired { message });
        }
        // Zoho sends no Retry-After on 429 (crm-apis.md §2.6); its X-RATELIMIT-RESET names when the
        // window frees (api-evangelist/zoho rate-limits.yml, after zoho.com/crm/developer/docs/api/v2/
        // api-limits.html; epoch milliseconds there, seconds also understood).
        let retry_after = response.retry_after().or_else(|| response.reset_after("x-ratelimit-reset"));
        Err(error_for_status(response.status, code, message, context, retry_after))
    }
}

impl Connector for ZohoConnector {
    fn id(&self) -> &ConnectionId {
        &self.settings.id
    }

    fn kind(&self) -> VendorKind {
        VendorKind::Zoho
    }

    fn entities(&self) -> &[Entity] {
        &self.settings.entities
    }

    fn push_batch_size(&self) -> usize {
        wire::WRITE_LIMIT
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        let mut report = CheckReport::default();
        for entity in &self.settings.entities {
            let described = self.describe(*entity).await?;
            if !described.fields.contains(&self.config.external_id_field) {
                report.notes.push(format!(
                    "{}: unique field {} is missing; pushes will fail until it is created",
                    wire::module(*entity),
                    self.config.external_id_field
                ));
            }
            let missing = mapping::missing_mapped_fields(*entity, &described, &self.config);
            if !missing.is_empty() {
                report.notes.push(format!(
                    "{}: mapped fields the org does not have, neither read nor written: {}",
                    wire::module(*entity),
                    missing.join(", ")
                ));
            }
        }
        Ok(report)
    }

    async fn pull(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let mut position: Position = match cursor {
            Some(cursor) => cursor.decode()?,
            None => {
                Position { since: self.settings.start, load_started: Some(Timestamp::now()), ..Position::default() }
            }
        };
        if position.phase == Phase::Deleted {
            return self.deleted_page(entity, position).await;
        }
        let since = if position.incremental {
            position.since.map(|since| since.saturating_add(self.settings.overlap, false))
        } else {
            position.since
        };
        let page = self.list(entity, position.page_token.as_deref(), since, None).await?;
        position.fetched += page.data.len() as u64;
        let mapped = self.map(entity, &page.data).await?;
        let (changes, undecodable) = self.deliver(mapped, &mut position);
        let next = page.info.next_page_token.clone().filter(|_| page.info.more_records);
        let has_more = match next {
            Some(_) if position.fetched + wire::PER_PAGE as u64 > wire::PAGE_TOKEN_CAP => {
                // Page tokens stop at 100,000 records: re-anchor on the last Modified_Time seen.
                position.page_token = None;
                position.fetched = 0;
                position.since = position.max.or(position.since);
                true
            }
            Some(token) => {
                position.page_token = Some(token);
                true
            }
            None => {
                position.page_token = None;
                position.fetched = 0;
                position.since = position.max.or(position.since);
                if position.incremental {
                    position.phase = Phase::Deleted;
                    position.deleted_page = 1;
                    true
                } else {
                    position.incremental = true;
                    position.deletes_since = position.load_started.take();
                    false
                }
            }
        };
        Ok(Page::new(changes, Cursor::encode(&position), has_more).with_undecodable(undecodable))
    }

    async fn fetch(&self, entity: Entity, ids: &[ExternalId]) -> Result<Fetched, ConnectorError> {
        let mut fetched = Fetched::default();
        for chunk in ids.chunks(wire::WRITE_LIMIT) {
            let page = self.list(entity, None, None, Some(chunk)).await?;
            let mapped = self.map(entity, &page.data).await?;
            fetched.add_read((entity, wire::module(entity)), chunk, mapped, Timestamp::now());
        }
        Ok(fetched)
    }

    async fn list_ids(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<IdPage, ConnectorError> {
        let token = cursor.map(Cursor::decode::<ListPosition>).transpose()?.map(|position| position.token);
        let page = self.list(entity, token.as_deref(), None, None).await?;
        let ids = page
            .data
            .iter()
            .filter_map(|row| {
                let id = row.get("id")?.as_str()?;
                let stamp = row.get("Modified_Time")?.as_str()?.parse::<Timestamp>().ok()?;
                Some((ExternalId::new(id), stamp))
            })
            .collect();
        let next = page
            .info
            .next_page_token
            .filter(|_| page.info.more_records)
            .map(|token| Cursor::encode(&ListPosition { token }));
        Ok(IdPage { ids, next })
    }

    async fn push(&self, entity: Entity, batch: &[Outgoing]) -> Result<PushReport, ConnectorError> {
        if batch.len() > wire::WRITE_LIMIT {
            return Err(ConnectorError::Config(format!(
                "push batch of {} exceeds Zoho's {} records per call",
                batch.len(),
                wire::WRITE_LIMIT
            )));
        }
        let module = wire::module(entity);
        let (_, denied) = self.fields(entity).await?;
        let module_info = self.describe(entity).await?;
        let products = if entity == Entity::Order { self.products().await? } else { Arc::new(HashMap::new()) };
        let currencies = match entity {
            Entity::Opportunity | Entity::Order => Some(self.org_currencies().await?),
            Entity::Account | Entity::Lead => None,
        };
        let context = mapping::WriteContext {
            vocabulary: &self.settings.vocabulary,
            config: &self.config,
            denied: &denied,
            products: &products,
            module: &module_info,
            currencies: currencies.as_deref(),
        };
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; batch.len()];
        let mut upserts: Vec<(usize, Map<String, Value>)> = Vec::new();
        for (index, outgoing) in batch.iter().enumerate() {
            let OutgoingOp::Upsert { data } = &outgoing.op else { continue };
            // A single-currency org keeps every amount in the org currency: converted with
            // metrics.fx, or refused naming why.
            let data = match currencies.as_deref() {
                Some(org) => match mapping::in_org_currency(data, org, self.settings.fx.as_ref()) {
                    Ok(data) => data,
                    Err(refusal) => {
                        outcomes[index] = Some(PushOutcome::Rejected { code: refusal.code, message: refusal.message });
                        continue;
                    }
                },
                None => data.clone(),
            };
            // A record without a Zoho id is created (or, when Zoho already carries its canonical id,
            // updated: see below): it must pass the create rules.
            match mapping::to_record(outgoing.canonical_id, &data, &context, outgoing.external_id.is_none()) {
                Ok(record) => upserts.push((index, record)),
                Err(refusal) => {
                    outcomes[index] = Some(PushOutcome::Rejected { code: refusal.code, message: refusal.message });
                }
            }
        }
        // Records Zoho already has (known id) are updated by id: an upsert would match only on the
        // external-id field, which a record created in Zoho does not carry yet, and duplicate it.
        let (updates, creates): (Vec<_>, Vec<_>) =
            upserts.into_iter().partition(|(index, _)| batch[*index].external_id.is_some());
        let mut updates: Vec<(usize, String, Map<String, Value>)> = updates
            .into_iter()
            .filter_map(|(index, record)| Some((index, batch[index].external_id.as_ref()?.to_string(), record)))
            .collect();
        let line_field = if entity == Entity::Order { module_info.line_items.clone() } else { None };
        if !creates.is_empty() {
            // Zoho appends the subform rows of a write that matches an existing record, so a retried
            // create of an order (its first answer lost) must not be an upsert: it would double the
            // lines until a second call removed them. Orders are inserted: the external-id field is
            // unique, so Zoho refuses the retry with `DUPLICATE_DATA` naming the record it has
            // (zoho/crm-oas v8.0 createRecords response-400-duplicatedataerror.md), having written
            // nothing, and the order is then updated by that id like any known record (below).
            let kind = if line_field.is_some() { Write::Insert } else { Write::Upsert };
            let records: Vec<Map<String, Value>> = creates.iter().map(|(_, record)| record.clone()).collect();
            let response = self.write(module, kind, &records).await?;
            for ((index, record), result) in creates.into_iter().zip(response.data) {
                match self.already_created(&result).filter(|_| kind == Write::Insert) {
                    Some(id) => updates.push((index, id, record)),
                    None => outcomes[index] = Some(write_outcome(result)),
                }
            }
        }
        if let Some(field) = &line_field {
            // Zoho appends subform rows sent without an id: send the difference to what it has,
            // whatever it has (any number of copies of the lines settle to the desired ones).
            let ids: Vec<String> = updates
                .iter()
                .filter(|(_, _, record)| record.contains_key(field))
                .map(|(_, id, _)| id.clone())
                .collect();
            let current = self.current_lines(module, field, &ids).await?;
            for (_, id, record) in &mut updates {
                let Some(desired) = record.get(field).and_then(Value::as_array).cloned() else { continue };
                let have = current.get(id.as_str()).map(Vec::as_slice).unwrap_or_default();
                match mapping::line_item_changes(field, have, &desired) {
                    Some(rows) => record.insert(field.clone(), Value::Array(rows)),
                    None => record.remove(field),
                };
            }
        }
        if !updates.is_empty() {
            let records: Vec<Map<String, Value>> = updates
                .iter()
                .map(|(_, id, record)| {
                    let mut record = record.clone();
                    record.insert("id".into(), Value::String(id.clone()));
                    record
                })
                .collect();
            let response = self.write(module, Write::Update, &records).await?;
            for ((index, _, _), result) in updates.iter().zip(response.data) {
                outcomes[*index] = Some(write_outcome(result));
            }
        }
        let deletes = deletes_to_send(batch, &mut outcomes);
        if !deletes.is_empty() {
            let ids: Vec<&str> = deletes.iter().map(|(_, id)| id.as_str()).collect();
            let joined = ids.join(",");
            let path = self.path(&format!("/{module}"));
            let response: wire::WriteResponse = self
                .call_json(&format!("{module} delete results"), |client, base| {
                    client.delete(format!("{base}{path}")).query(&[("ids", joined.as_str())])
                })
                .await?
                .ok_or_else(|| {
                    ConnectorError::decode(format!("{module} delete results"), std::io::Error::other("empty body"))
                })?;
            for ((index, _), result) in deletes.iter().zip(response.data) {
                // An id Zoho no longer has is already deleted: the delete's goal holds.
                outcomes[*index] = Some(if result.status == "success" || result.code == "INVALID_DATA" {
                    PushOutcome::Deleted
                } else {
                    write_outcome(result)
                });
            }
        }
        Ok(PushReport::from_outcomes(batch, outcomes))
    }

    fn usage(&self) -> ApiUsage {
        self.http.usage()
    }

    fn representable(&self, data: &crate::canonical::EntityData) -> crate::canonical::EntityData {
        let data = self.settings.vocabulary.representable(data);
        // A single-currency org reads amounts back in the org currency.
        match self.org_known.get() {
            Some(org) => mapping::in_org_currency(&data, org, self.settings.fx.as_ref()).unwrap_or(data),
            None => data,
        }
    }
}

impl ZohoConnector {
    async fn deleted_page(&self, entity: Entity, mut position: Position) -> Result<Page, ConnectorError> {
        let module = wire::module(entity);
        let path = self.path(&format!("/{module}/deleted"));
        let page = position.deleted_page.max(1).to_string();
        let since = position.deletes_since.map(|since| since.saturating_add(self.settings.overlap, false));
        let response: Option<wire::DeletedResponse> = self
            .call_json(&format!("{module} deleted records"), |client, base| {
                let request = client.get(format!("{base}{path}")).query(&[
                    ("type", "all"),
                    ("per_page", "200"),
                    ("page", page.as_str()),
                ]);
                match since {
                    Some(since) => request.header("If-Modified-Since", if_modified_since(since)),
                    None => request,
                }
            })
            .await?;
        let response = response.unwrap_or_default();
        let mut changes = Vec::with_capacity(response.data.len());
        let mut newest = position.deletes_since;
        for item in &response.data {
            let at: Timestamp = item
                .deleted_time
                .parse()
                .map_err(|error| ConnectorError::decode(format!("{module} deleted record"), error))?;
            newest = newest.max(Some(at));
            changes.push(Change::deleted(entity, module, ExternalId::new(item.id.clone()), at));
        }
        let (changes, _) = self.deliver((changes, Vec::new()), &mut position);
        if response.info.more_records {
            position.deleted_page += 1;
            return Ok(Page::new(changes, Cursor::encode(&position), true));
        }
        position.deletes_since = newest.or(Some(Timestamp::now()));
        position.phase = Phase::Records;
        position.deleted_page = 0;
        Ok(Page::new(changes, Cursor::encode(&position), false))
    }
}

impl ZohoConnector {
    /// Sends one write call (`POST /{module}`, `PUT /{module}` by id, or `POST /{module}/upsert` on
    /// the external-id field) and checks there is one result per record.
    async fn write(
        &self,
        module: &str,
        kind: Write,
        records: &[Map<String, Value>],
    ) -> Result<wire::WriteResponse, ConnectorError> {
        let context = format!("{module} {} results", kind.name());
        let response: Option<wire::WriteResponse> = match kind {
            Write::Insert => {
                let path = self.path(&format!("/{module}"));
                let body = serde_json::json!({"data": records, "trigger": []});
                self.call_json(&context, |client, base| client.post(format!("{base}{path}")).json(&body)).await?
            }
            Write::Update => {
                let path = self.path(&format!("/{module}"));
                let body = serde_json::json!({"data": records, "trigger": []});
                self.call_json(&context, |client, base| client.put(format!("{base}{path}")).json(&body)).await?
            }
            Write::Upsert => {
                let path = self.path(&format!("/{module}/upsert"));
                let body = serde_json::json!({"data": records, "duplicate_check_fields": [self.config.external_id_field], "trigger": []});
                self.call_json(&context, |client, base| client.post(format!("{base}{path}")).json(&body)).await?
            }
        };
        let response =
            response.ok_or_else(|| ConnectorError::decode(context.clone(), std::io::Error::other("empty body")))?;
        if response.data.len() != records.len() {
            return Err(ConnectorError::decode(
                context,
                std::io::Error::other(format!("{} results for {} records", response.data.len(), records.len())),
            ));
        }
        Ok(response)
    }

    /// The id of the record an insert was refused for because it carries this record's external
    /// id already: `DUPLICATE_DATA` on the external-id field names it in `duplicate_record.id` (and
    /// `id`), as zoho/crm-oas v8.0 createRecords response-400-duplicatedataerror.md shows.
    fn already_created(&self, result: &wire::WriteResult) -> Option<String> {
        let details = &result.details;
        if result.code != "DUPLICATE_DATA"
            || details.get("api_name").and_then(Value::as_str) != Some(self.config.external_id_field.as_str())
        {
            return None;
        }
        details
            .get("duplicate_record")
            .and_then(|record| record.get("id"))
            .or_else(|| details.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The line-item rows (with their subform row ids) Zoho has for these records: one call.
    async fn current_lines(
        &self,
        module: &str,
        field: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<Value>>, ConnectorError> {
        let mut current = HashMap::new();
        for chunk in ids.chunks(wire::WRITE_LIMIT) {
            let joined = chunk.join(",");
            let path = self.path(&format!("/{module}"));
            let response: Option<wire::RecordsResponse> = self
                .call_json(&format!("{module} line items"), |client, base| {
                    client.get(format!("{base}{path}")).query(&[("ids", joined.as_str()), ("fields", field)])
                })
                .await?;
            for row in response.unwrap_or_default().data {
                if let (Some(id), Some(lines)) =
                    (row.get("id").and_then(Value::as_str), row.get(field).and_then(Value::as_array))
                {
                    current.insert(id.to_owned(), lines.clone());
                }
            }
        }
        Ok(current)
    }
}

/// The three write calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// `POST /{module}`: creates (orders, see `push`).
    Insert,
    /// `PUT /{module}`: updates by `id`.
    Update,
    /// `POST /{module}/upsert` with the external-id field as `duplicate_check_fields`.
    Upsert,
}

impl Write {
    fn name(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Upsert => "upsert",
        }
    }
}

fn write_outcome(result: wire::WriteResult) -> PushOutcome {
    if result.status == "success" {
        return match result.details.get("id").and_then(Value::as_str) {
            Some(id) => PushOutcome::Upserted {
                external_id: ExternalId::new(id),
                created: result.action.as_deref() == Some("insert"),
                version: None,
            },
            None => PushOutcome::Retry { message: "upsert succeeded without an id".into() },
        };
    }
    let detail =
        result.details.get("api_name").and_then(Value::as_str).map(|field| format!(" ({field})")).unwrap_or_default();
    match result.code.as_str() {
        "RECORD_LOCKED" | "INTERNAL_ERROR" => {
            PushOutcome::Retry { message: format!("{}: {}{detail}", result.code, result.message) }
        }
        _ => PushOutcome::Rejected { code: result.code, message: format!("{}{detail}", result.message) },
    }
}
