//! Microsoft Dynamics 365 (Dataverse Web API): client-credentials tokens from the Microsoft identity
//! platform, change tracking with delta links (or `modifiedon` when a table does not track changes),
//! `$batch` writes by alternate key, service-endpoint webhooks, and a simulator (`sim`).
//!
//! # Tables
//!
//! Each table's definition (`EntityDefinitions` with its attributes) is read once per connection. It
//! lists a lookup by its logical name (`customerid`) with `AttributeType` `Customer`, `Lookup` or
//! `Owner`; rows carry its value as `_customerid_value`, which is what `$select` asks for. A mapped
//! column the table does not have stops the entity with a schema-drift error naming it.
//!
//! # Cursor
//!
//! With change tracking (the default), the first pull reads the table with `Prefer:
//! odata.track-changes` page by page (`@odata.nextLink`) and ends with an `@odata.deltaLink`; later
//! pulls follow the delta link, which yields changed rows and `$deletedEntity` rows in one stream, and
//! end with the next delta link. The cursor is the link to follow. An expired delta token
//! (`0x80044352`) starts a clean full read instead of failing. Orders are read in full differently,
//! so that their lines cost no call of their own beyond their delta link (`OrderRead`). The pages of an initial read (the
//! first one, or one an expired token started) are marked [`FullRead::Begins`] then
//! [`FullRead::Continues`]: a row deleted while its token expired is in no `$deletedEntity` row, so
//! the daemon takes such a read, once complete, as the list of every row and tombstones the records
//! it did not deliver (reads by `modifiedon` are never marked: only the drift sweep finds their
//! deletions).
//!
//! # Order lines
//!
//! Change tracking is per table (`ChangeTrackingEnabled` of each `EntityDefinitions` entry; "Only
//! one table is tracked in retrieve changes": learn.microsoft.com/power-apps/developer/data-platform/use-change-tracking-synchronize-data-external-systems),
//! and nothing documents that a line write changes its order's row. So the order lines
//! (`salesorderdetails`) are a change-tracked stream of their own, kept in the orders' cursor:
//! after the orders' delta link, each incremental pull follows the lines' delta link, and every
//! order one of whose lines was created or changed (the row's `_salesorderid_value`) is read again
//! with all its lines. Both delta links commit with the page that read them. A `$deletedEntity` row
//! of a line carries only the line's id, not its order's: such an order is read again when its own
//! row changes (Dataverse's system price calculation rewrites an order's totals on every line
//! write), not from the deletion. When the lines table does not track changes, `check` says so
//! and only changes of the order rows are seen.
//!
//! Without change tracking (the table's "Track changes" is off, reported by `check`, or the connection
//! has a `start` instant, which a delta link cannot begin from), pulls filter
//! `modifiedon ge since − overlap` ordered by `modifiedon, id`, and the cursor keeps the
//! `(id, modifiedon)` pairs delivered within the overlap window so nothing is read twice; deletions are
//! then found only by the drift sweep.
//!
//! # Push
//!
//! What Dataverse requires and refuses is decided before anything is sent (`push`): required
//! columns, columns valid for the operation, the current state of opportunities and orders, and the
//! documented message for each state change. Records go in `$batch` requests (≤ 1,000 requests each,
//! `Prefer: odata.continue-on-error`, no change sets, so one refused record never rolls back the
//! others): `PATCH table(crmsync_id='…')` creates records crmsync created, `PATCH table(<id>)` with
//! `If-Match` (the last etag read, else `*`) updates records Dataverse already had, and order lines
//! are written by their own alternate key (`{order}:{n}`), so a retried push never duplicates
//! anything.

mod config;
pub mod mapping;
mod push;
#[cfg(feature = "simulators")]
pub mod sim;
#[cfg(all(test, feature = "testkit"))]
mod tests;
pub mod webhook;
pub mod wire;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{Dynamics365Config, Dynamics365Webhook};
use mapping::{Currencies, MapContext, Products};
use wire::{BatchRequest, BatchResponse, EntityCollection};

use crate::canonical::{ConnectionId, Currency, Entity, ExternalId, Timestamp, VendorKind};
use crate::connector::{
    ApiEvent, ApiUsage, Change, CheckReport, Connector, Cursor, Delivered, Fetched, FullRead, IdPage, Mapped, Outgoing,
    OutgoingOp, Page, PushOutcome, PushReport, SharedHost, Undecodable, WebhookDelivery, WebhookParser, WebhookReply,
    deliver_page_once,
};
use crate::describe::{self, DescribeCache};
use crate::error::{ConnectorError, WebhookError};
use crate::http::{
    AccessToken, Dialect, Grant, RawResponse, TokenResponse, VendorHttp, error_for_status, request_token,
};
use crate::row::{RawRow, RowText};
use crate::settings::ConnectionSettings;

/// Requests in flight per connection (Dataverse allows 52 per user and web server).
pub const MAX_CONCURRENCY: usize = 16;
/// Dataverse's request allowance per five-minute window (`x-ms-ratelimit-burst-remaining-xrm-requests`).
const BURST_LIMIT: u64 = 6000;
const ANNOTATIONS: &str =
    "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue,Microsoft.Dynamics.CRM.lookuplogicalname\"";

/// What `EntityDefinitions` said about a table.
#[derive(Debug)]
struct Described {
    /// The properties its rows carry (a lookup `customerid` as `_customerid_value`).
    columns: BTreeSet<String>,
    /// Its columns by logical name, without the ones that extend another (`customeridname`).
    attributes: HashMap<String, wire::AttributeDefinition>,
    tracking: bool,
}

impl Described {
    fn new(definition: wire::EntityDefinition) -> Self {
        let columns = definition.attributes.iter().map(wire::AttributeDefinition::property).collect();
        let attributes = definition
            .attributes
            .into_iter()
            .filter(|attribute| attribute.attribute_of.is_none())
            .map(|attribute| (attribute.logical_name.clone(), attribute))
            .collect();
        Self { columns, attributes, tracking: definition.change_tracking_enabled }
    }
}

/// A Dataverse environment.
pub struct Dynamics365Connector {
    settings: ConnectionSettings,
    config: Dynamics365Config,
    http: VendorHttp,
    described: DescribeCache<Described>,
    lines_described: tokio::sync::Mutex<Option<Arc<Described>>>,
    currencies: tokio::sync::Mutex<Option<Arc<Currencies>>>,
    products: tokio::sync::Mutex<Option<Arc<Products>>>,
    in_flight: tokio::sync::Semaphore,
    default_currency: Currency,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Position {
    /// `@odata.nextLink` of the read in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// The delta link changes are read from once the initial read is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delta: Option<String>,
    /// Without change tracking: the `modifiedon` lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<Delivered>,
    /// A full read of orders with their lines in progress (see [`OrderRead`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    orders: Option<OrderRead>,
    /// Orders: the `@odata.nextLink` of the order lines' change read in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lines_next: Option<String>,
    /// Orders: the delta link the order lines' changes are read from (see "Order lines").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lines_delta: Option<String>,
}

/// How orders are read in full with their lines: a change-tracked read cannot be joined or
/// sorted (`$expand`, `$orderby`, `$filter` and `$top` are refused with change tracking), so
/// (1) a change-tracked read of the orders, whose rows are dropped, yields the delta link later
/// reads continue from; (2) when the lines table tracks changes, a change-tracked read of the
/// lines' order ids yields the lines' delta link (`Lines`); then (3) the orders are read again with
/// a single-level `$expand` of their lines (`order_details`), which pages the orders only and
/// carries every order's lines in its row (up to 5,000 each: an order with that many reads the
/// rest from the row's `order_details@odata.nextLink`), so every page holds complete orders and
/// its cursor commits with it. Changes made during (3) are also in the delta links from (1) and
/// (2); re-reading them is harmless.
///
/// Calls: 2 × ⌈orders/5000⌉ + ⌈lines/5000⌉, against the ⌈orders/5000⌉ + ⌈lines/5000⌉ of reading
/// each table once: the rows of the change-tracked reads come in an order Dataverse does not
/// document ("determined by server side logic"), so the lines of an order could only be assembled
/// from them by holding every line until the read ends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
enum OrderRead {
    /// Reading the orders for the delta link; `next`: the page to read (`None`: the first).
    Token {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Reading the order lines for their delta link; `next`: the page to read (`None`: the first);
    /// `delta`: the orders' delta link.
    Lines {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        delta: String,
    },
    /// Reading the orders with their lines; `next`: the page to read; `delta`: the link to
    /// continue from; `lines_delta`: the lines' (when the lines table tracks changes).
    Rows {
        next: String,
        delta: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines_delta: Option<String>,
    },
}

/// The lines of orders read apart from their rows: order id → the lines' rows.
type OrderLines = HashMap<String, Vec<RowText>>;

/// Where the lines of a page's orders come from.
enum LinesOf {
    /// Read by order id (rows read without `$expand`); nothing for other entities.
    ById,
    /// Each order row's expansion (`order_details`), but for the orders read apart (these).
    Expanded(OrderLines),
}

/// The lines of an order row: read apart, or from the row's expansion when `expanded`.
fn order_lines<'a>(
    row: &RawRow<'a>,
    table: wire::Table,
    lines: &'a OrderLines,
    expanded: bool,
) -> Result<Option<Vec<RawRow<'a>>>, ConnectorError> {
    let Some(id) = row.text(table.key) else { return Ok(None) };
    if let Some(apart) = lines.get(id.as_ref()) {
        return apart.iter().map(|line| wire::read_row(line, wire::LINES_SET)).collect::<Result<_, _>>().map(Some);
    }
    if !expanded {
        return Ok(None);
    }
    let Some(in_row) = wire::expanded_lines(row, &id)? else { return Ok(None) };
    in_row
        .into_iter()
        .map(|line| {
            RawRow::parse(line.get()).map_err(|error| ConnectorError::decode(format!("{} row", wire::LINES_SET), error))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[derive(Debug, Serialize, Deserialize)]
struct ListPosition {
    next: String,
}

impl Dynamics365Connector {
    /// Builds the connector. Pure: no network IO.
    pub fn new(
        settings: ConnectionSettings,
        config: Dynamics365Config,
        host: SharedHost,
    ) -> Result<Self, ConnectorError> {
        let http = VendorHttp::new(settings.id.clone(), &settings.http, host)?;
        Ok(Self {
            settings,
            config,
            http,
            described: DescribeCache::default(),
            lines_described: tokio::sync::Mutex::new(None),
            currencies: tokio::sync::Mutex::new(None),
            products: tokio::sync::Mutex::new(None),
            in_flight: tokio::sync::Semaphore::new(MAX_CONCURRENCY),
            default_currency: Currency::new("USD").map_err(|error| ConnectorError::Config(error.to_string()))?,
        })
    }

    fn org(&self) -> &str {
        self.config.org_url.as_str().trim_end_matches('/')
    }

    fn api(&self) -> String {
        format!("{}/api/data/{}", self.org(), self.config.api_version)
    }

    /// The URL of an entity set, for adding query options.
    fn set_url(&self, set: &str) -> Result<url::Url, ConnectorError> {
        url::Url::parse(&format!("{}/{set}", self.api()))
            .map_err(|error| ConnectorError::Config(format!("org_url: {error}")))
    }

    fn api_path(&self) -> String {
        format!("/api/data/{}", self.config.api_version)
    }

    async fn fetch_token(&self) -> Result<TokenResponse, ConnectorError> {
        let endpoint = format!(
            "{}/{}/oauth2/v2.0/token",
            self.config.authority_url.as_str().trim_end_matches('/'),
            self.config.tenant_id
        );
        let scope = format!("{}/.default", self.org());
        let grant = Grant::ClientCredentials {
            client_id: self.config.client_id.as_str(),
            client_secret: &self.config.client_secret,
            scope: Some(scope.as_str()),
        };
        request_token(&self.http, &endpoint, grant).await
    }

    /// One authenticated request, no retries.
    async fn call_once<F>(&self, context: &str, build: &F) -> Result<RawResponse, ConnectorError>
    where
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.http.call_once(self, context, build).await
    }

    /// Sends a request with the retry policy and decodes its JSON body (204/304: `None`).
    async fn call_json<T, F>(&self, context: &str, build: F) -> Result<Option<T>, ConnectorError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        self.http.call_json(self, context, build).await
    }

    /// Reads a table's definition: `EntityDefinitions(LogicalName='…')` with its attributes.
    async fn definition(&self, logical: &str) -> Result<Described, ConnectorError> {
        let url = format!("{}/EntityDefinitions(LogicalName='{logical}')", self.api());
        let context = format!("{logical} definition");
        let expand = format!("Attributes($select={})", wire::ATTRIBUTE_SELECT);
        let response: wire::DefinitionResponse = self
            .call_json(&context, |client, _| {
                client
                    .get(&url)
                    .query(&[("$select", "LogicalName,ChangeTrackingEnabled"), ("$expand", expand.as_str())])
            })
            .await?
            .ok_or_else(|| ConnectorError::decode(&context, std::io::Error::other("empty body")))?;
        let definition = response
            .into_definition()
            .ok_or_else(|| ConnectorError::decode(&context, std::io::Error::other("no definition in the response")))?;
        Ok(Described::new(definition))
    }

    async fn describe(&self, entity: Entity) -> Result<Arc<Described>, ConnectorError> {
        if let Some(found) = self.described.get(entity) {
            return Ok(found);
        }
        let table = wire::table(entity);
        let described = self.definition(table.logical).await?;
        describe::require(
            &described.columns,
            mapping::required_column(entity),
            "column",
            table.logical,
            entity,
            &self.settings.fields,
        )?;
        Ok(self.described.insert(entity, described))
    }

    /// The order lines table's definition (read once, when orders are first pushed).
    async fn describe_lines(&self) -> Result<Arc<Described>, ConnectorError> {
        let mut cached = self.lines_described.lock().await;
        if let Some(described) = cached.as_ref() {
            return Ok(described.clone());
        }
        let described = Arc::new(self.definition("salesorderdetail").await?);
        *cached = Some(described.clone());
        Ok(described)
    }

    async fn select(&self, entity: Entity) -> Result<(String, BTreeSet<String>, Arc<Described>), ConnectorError> {
        let described = self.describe(entity).await?;
        let denied = mapping::denied_columns(entity, &self.settings.fields, &self.config, &described.columns);
        Ok((mapping::select(entity, &described.columns, &denied, &self.config)?.join(","), denied, described))
    }

    async fn currencies(&self) -> Result<Arc<Currencies>, ConnectorError> {
        let mut cached = self.currencies.lock().await;
        if let Some(currencies) = cached.as_ref() {
            return Ok(currencies.clone());
        }
        let url = format!("{}/transactioncurrencies", self.api());
        let page = self
            .collection("transactioncurrencies", |client, _| {
                client.get(&url).query(&[("$select", "isocurrencycode,transactioncurrencyid")])
            })
            .await?;
        let mut pairs = Vec::with_capacity(page.value.len());
        for row in &page.value {
            let row = wire::read_row(row, "transactioncurrencies")?;
            if let (Some(id), Some(code)) = (row.text("transactioncurrencyid"), row.text("isocurrencycode")) {
                pairs.push((id.into_owned(), code.into_owned()));
            }
        }
        let currencies = Arc::new(Currencies::new(pairs));
        *cached = Some(currencies.clone());
        Ok(currencies)
    }

    async fn products(&self) -> Result<Arc<Products>, ConnectorError> {
        let mut cached = self.products.lock().await;
        if let Some(products) = cached.as_ref() {
            return Ok(products.clone());
        }
        let url = format!("{}/products", self.api());
        let mut rows = Vec::new();
        let mut next = Some(url);
        let mut first = true;
        while let Some(link) = next.take() {
            let page = self
                .collection("products", |client, _| {
                    let request = client.get(&link).header("Prefer", self.page_size());
                    if first { request.query(&[("$select", "productid,name,productnumber")]) } else { request }
                })
                .await?;
            first = false;
            for row in &page.value {
                let row = wire::read_row(row, "products")?;
                if let (Some(id), Some(name)) = (row.text("productid"), row.text("name")) {
                    let number = row.text("productnumber").unwrap_or_default();
                    rows.push((id.into_owned(), name.into_owned(), number.into_owned()));
                }
            }
            next = page.next_link;
        }
        let products = Arc::new(Products::new(rows));
        *cached = Some(products.clone());
        Ok(products)
    }

    fn map_context<'a>(&'a self, currencies: &'a Currencies, products: &'a Products) -> MapContext<'a> {
        MapContext {
            vocabulary: &self.settings.vocabulary,
            config: &self.config,
            currencies,
            products,
            default_currency: &self.default_currency,
        }
    }

    fn page_size(&self) -> String {
        format!("odata.maxpagesize={}", self.config.max_page_size)
    }

    /// Reads one collection page under the retry policy; an answer without a body is an empty page.
    /// The body is checked and its rows located inside the retry loop, so a truncated body is
    /// retried ([`EntityCollection::parse`]).
    async fn collection<F>(&self, context: &str, build: F) -> Result<EntityCollection, ConnectorError>
    where
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        Ok(self.http.call_decoding(self, context, build, EntityCollection::parse).await?.unwrap_or_default())
    }

    async fn get_page(&self, context: &str, url: &str, tracking: bool) -> Result<EntityCollection, ConnectorError> {
        let mut prefer = vec![self.page_size(), ANNOTATIONS.to_owned()];
        if tracking {
            prefer.insert(0, "odata.track-changes".to_owned());
        }
        let prefer = prefer.join(",");
        self.collection(context, |client, _| client.get(url).header("Prefer", &prefer).header("If-None-Match", "null"))
            .await
    }

    /// Reads the lines of `orders` (order id → rows).
    async fn lines(&self, orders: &[&str]) -> Result<OrderLines, ConnectorError> {
        let mut lines: OrderLines = orders.iter().map(|id| ((*id).to_owned(), Vec::new())).collect();
        for chunk in orders.chunks(wire::LINE_FILTER_CHUNK) {
            let values: Vec<String> = chunk.iter().map(|id| format!("'{id}'")).collect();
            let filter =
                format!("Microsoft.Dynamics.CRM.In(PropertyName='salesorderid',PropertyValues=[{}])", values.join(","));
            let mut url = self.set_url(wire::LINES_SET)?;
            url.query_pairs_mut()
                .append_pair("$select", &mapping::LINE_COLUMNS.join(","))
                .append_pair("$filter", &filter);
            let mut next = Some(url.to_string());
            while let Some(link) = next.take() {
                let page = self.get_page("salesorderdetails", &link, false).await?;
                for row in page.value {
                    let order = wire::read_row(&row, wire::LINES_SET)?.text(wire::LINE_ORDER).map(Cow::into_owned);
                    if let Some(order) = order {
                        lines.entry(order).or_default().push(row);
                    }
                }
                next = page.next_link;
            }
        }
        Ok(lines)
    }

    /// Maps a page's rows; deletions (`$deletedEntity`) become delete changes, and rows that cannot
    /// be decoded are set aside (see [`Undecodable`]). Orders get their lines read by order id.
    async fn map_rows(&self, entity: Entity, rows: &[RowText]) -> Result<Mapped, ConnectorError> {
        self.map_rows_with(entity, rows, LinesOf::ById).await
    }

    /// Maps a page's rows, one at a time, each read from the page's body while it is mapped; an
    /// order's lines come from where `lines` says.
    async fn map_rows_with(&self, entity: Entity, rows: &[RowText], lines: LinesOf) -> Result<Mapped, ConnectorError> {
        let table = wire::table(entity);
        let mut any_live = false;
        for text in rows {
            if !wire::is_deleted_entity(&wire::read_row(text, table.set)?) {
                any_live = true;
                break;
            }
        }
        let (lines, expanded) = match lines {
            LinesOf::Expanded(fetched) => (Some(fetched), true),
            LinesOf::ById if entity == Entity::Order && any_live => {
                let mut ids = Vec::new();
                for text in rows {
                    let row = wire::read_row(text, table.set)?;
                    if !wire::is_deleted_entity(&row)
                        && let Some(id) = row.text(table.key)
                    {
                        ids.push(id.into_owned());
                    }
                }
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                (Some(self.lines(&ids).await?), false)
            }
            LinesOf::ById => (None, false),
        };
        let needs_currency = matches!(entity, Entity::Opportunity | Entity::Order) && any_live;
        let currencies = if needs_currency { self.currencies().await? } else { Arc::new(Currencies::default()) };
        let products = if lines.is_some() { self.products().await? } else { Arc::new(Products::default()) };
        let context = self.map_context(&currencies, &products);
        let mut unmapped = Vec::new();
        let now = Timestamp::now();
        let mut changes = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        for text in rows {
            let row = wire::read_row(text, table.set)?;
            if wire::is_deleted_entity(&row) {
                let id = row.text("id").ok_or_else(|| {
                    ConnectorError::decode(format!("{} deletion", table.set), std::io::Error::other("missing id"))
                })?;
                changes.push(Change::deleted(entity, table.logical, ExternalId::new(id), now));
                continue;
            }
            let order_lines = match &lines {
                Some(lines) => order_lines(&row, table, lines, expanded)?,
                None => None,
            };
            match mapping::to_change(entity, &row, order_lines.as_deref(), &context, &mut unmapped) {
                Ok(change) => changes.push(change),
                Err(error) => undecodable.push(Undecodable::of_row(
                    entity,
                    table.logical,
                    &row,
                    (table.key, "modifiedon"),
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

    fn initial_url(
        &self,
        entity: Entity,
        select: &str,
        since: Option<Timestamp>,
        tracking: bool,
    ) -> Result<String, ConnectorError> {
        let table = wire::table(entity);
        let mut url = self.set_url(table.set)?;
        url.query_pairs_mut().append_pair("$select", select);
        if !tracking {
            if let Some(since) = since {
                let floor = since.saturating_add(self.settings.overlap, false);
                let seconds = floor.unix_millis().div_euclid(1000);
                let floor = Timestamp::from_unix_seconds(seconds).unwrap_or(floor);
                url.query_pairs_mut().append_pair("$filter", &format!("modifiedon ge {}", wire::format_time(floor)));
            }
            url.query_pairs_mut().append_pair("$orderby", &format!("modifiedon asc,{} asc", table.key));
            // The number of rows the read holds, for progress (not asked with change tracking: its
            // documented query options do not include it).
            url.query_pairs_mut().append_pair("$count", "true");
        }
        Ok(url.to_string())
    }

    fn deliver(&self, mapped: Mapped, position: &mut Position) -> Mapped {
        deliver_page_once(mapped, &mut position.seen, &mut position.max, None, self.settings.overlap)
    }

    async fn pull_tracked(&self, entity: Entity, mut position: Position, select: &str) -> Result<Page, ConnectorError> {
        let table = wire::table(entity);
        let url = match (&position.next, &position.delta) {
            (Some(next), _) => next.clone(),
            (None, Some(delta)) => delta.clone(),
            (None, None) => self.initial_url(entity, select, None, true)?,
        };
        // Without a delta link yet, this is the initial read of every row: a full read the daemon
        // may take as complete at its end (rows deleted before an expired token was noticed are
        // in no delete feed; their absence from this read is what shows they are gone).
        let mut full_read = match (&position.next, &position.delta) {
            (None, None) => FullRead::Begins,
            (Some(_), None) => FullRead::Continues,
            (_, Some(_)) => FullRead::No,
        };
        let page = match self.get_page(&format!("{} changes", table.set), &url, true).await {
            Err(ConnectorError::CursorExpired { message }) => {
                tracing::warn!(
                    connection = %self.settings.id,
                    table = table.set,
                    %message,
                    "change-tracking token expired: starting a full resync of the table"
                );
                if entity == Entity::Order {
                    return self.pull_orders_full(Position::default(), select).await;
                }
                position = Position::default();
                full_read = FullRead::Begins;
                let url = self.initial_url(entity, select, None, true)?;
                self.get_page(&format!("{} full resync", table.set), &url, true).await?
            }
            other => other?,
        };
        let (changes, undecodable) = self.map_rows(entity, &page.value).await?;
        if let Some(next) = page.next_link {
            position.next = Some(next);
            return Ok(Page::new(changes, Cursor::encode(&position), true)
                .with_undecodable(undecodable)
                .in_full_read(full_read));
        }
        position.next = None;
        match page.delta_link {
            Some(delta) => position.delta = Some(delta),
            None if position.delta.is_none() => {
                return Err(ConnectorError::decode(
                    format!("{} changes", table.set),
                    std::io::Error::other("the last page of a change-tracked read has no @odata.deltaLink"),
                ));
            }
            None => {}
        }
        Ok(Page::new(changes, Cursor::encode(&position), false).with_undecodable(undecodable).in_full_read(full_read))
    }

    /// One step of a full read of orders with their lines ([`OrderRead`]).
    async fn pull_orders_full(&self, mut position: Position, select: &str) -> Result<Page, ConnectorError> {
        let table = wire::table(Entity::Order);
        // Every step is part of one full read of the orders, which begins with the token read's
        // first page and ends with the last page of the orders read with their lines.
        let read = position.orders.take().unwrap_or(OrderRead::Token { next: None });
        let full_read =
            if matches!(read, OrderRead::Token { next: None }) { FullRead::Begins } else { FullRead::Continues };
        let page = self.pull_orders_full_step(position, read, select, table).await?;
        Ok(page.in_full_read(full_read))
    }

    /// One step of [`Self::pull_orders_full`].
    async fn pull_orders_full_step(
        &self,
        mut position: Position,
        read: OrderRead,
        select: &str,
        table: wire::Table,
    ) -> Result<Page, ConnectorError> {
        match read {
            OrderRead::Token { next } => {
                let url = match next {
                    Some(next) => next,
                    // The delta link repeats this read's `$select`: the later change reads need
                    // every mapped column, so the token read asks for them too.
                    None => self.initial_url(Entity::Order, select, None, true)?,
                };
                let page = self.get_page("salesorders change-tracking token", &url, true).await?;
                position.orders = Some(match (page.next_link, page.delta_link) {
                    (Some(next), _) => OrderRead::Token { next: Some(next) },
                    (None, Some(delta)) if self.describe_lines().await?.tracking => {
                        OrderRead::Lines { next: None, delta }
                    }
                    (None, Some(delta)) => {
                        OrderRead::Rows { next: self.expanded_orders_url(select)?, delta, lines_delta: None }
                    }
                    (None, None) => {
                        return Err(ConnectorError::decode(
                            "salesorders change-tracking token",
                            std::io::Error::other("the last page of a change-tracked read has no @odata.deltaLink"),
                        ));
                    }
                });
                Ok(Page::new(Vec::new(), Cursor::encode(&position), true))
            }
            OrderRead::Lines { next, delta } => {
                let url = match next {
                    Some(next) => next,
                    None => self.lines_changes_url()?,
                };
                let page = self.get_page("salesorderdetails change-tracking token", &url, true).await?;
                position.orders = Some(match (page.next_link, page.delta_link) {
                    (Some(next), _) => OrderRead::Lines { next: Some(next), delta },
                    (None, Some(lines_delta)) => OrderRead::Rows {
                        next: self.expanded_orders_url(select)?,
                        delta,
                        lines_delta: Some(lines_delta),
                    },
                    (None, None) => {
                        return Err(ConnectorError::decode(
                            "salesorderdetails change-tracking token",
                            std::io::Error::other("the last page of a change-tracked read has no @odata.deltaLink"),
                        ));
                    }
                });
                Ok(Page::new(Vec::new(), Cursor::encode(&position), true))
            }
            OrderRead::Rows { next, delta, lines_delta } => {
                let page = self.get_page("salesorders with their lines", &next, false).await?;
                let lines = self.lines_not_expanded(&page.value, table).await?;
                let (changes, undecodable) =
                    self.map_rows_with(Entity::Order, &page.value, LinesOf::Expanded(lines)).await?;
                match page.next_link {
                    Some(next) => {
                        position.orders = Some(OrderRead::Rows { next, delta, lines_delta });
                        Ok(Page::new(changes, Cursor::encode(&position), true).with_undecodable(undecodable))
                    }
                    None => {
                        position.next = None;
                        position.delta = Some(delta);
                        position.lines_next = None;
                        position.lines_delta = lines_delta;
                        Ok(Page::new(changes, Cursor::encode(&position), false).with_undecodable(undecodable))
                    }
                }
            }
        }
    }

    /// Reads records by id (`In` filters of [`wire::LINE_FILTER_CHUNK`] ids; orders with their lines
    /// expanded, one call per chunk); an id Dataverse no longer has becomes a delete change, and a
    /// row that cannot be decoded is set aside.
    async fn read_by_ids(&self, entity: Entity, ids: &[ExternalId]) -> Result<Fetched, ConnectorError> {
        let table = wire::table(entity);
        let (select, _, _) = self.select(entity).await?;
        let mut fetched = Fetched::default();
        for chunk in ids.chunks(wire::LINE_FILTER_CHUNK) {
            let values: Vec<String> = chunk.iter().map(|id| format!("'{}'", id.as_str().replace('\'', "''"))).collect();
            let mut url = self.set_url(table.set)?;
            url.query_pairs_mut().append_pair("$select", &select).append_pair(
                "$filter",
                &format!(
                    "Microsoft.Dynamics.CRM.In(PropertyName='{}',PropertyValues=[{}])",
                    table.key,
                    values.join(",")
                ),
            );
            if entity == Entity::Order {
                url.query_pairs_mut().append_pair(
                    "$expand",
                    &format!("{}($select={})", wire::ORDER_LINES, mapping::LINE_COLUMNS.join(",")),
                );
            }
            let page = self.get_page(&format!("{} by id", table.set), url.as_str(), false).await?;
            let mapped = if entity == Entity::Order {
                let lines = self.lines_not_expanded(&page.value, table).await?;
                self.map_rows_with(entity, &page.value, LinesOf::Expanded(lines)).await?
            } else {
                self.map_rows(entity, &page.value).await?
            };
            fetched.add_read((entity, table.logical), chunk, mapped, Timestamp::now());
        }
        Ok(fetched)
    }

    /// One step of reading the changes of orders with change tracking: the orders' delta link
    /// (page by page), then on its last page the lines' (see "Order lines"); an order read by
    /// both is delivered once, as read last. Both links commit with the page.
    async fn pull_orders_delta(&self, mut position: Position, select: &str) -> Result<Page, ConnectorError> {
        let lines_tracked = self.describe_lines().await?.tracking;
        if lines_tracked && position.lines_delta.is_none() {
            // A cursor from before the lines had a delta link of their own: read in full again.
            tracing::info!(
                connection = %self.settings.id,
                "salesorderdetails: no delta link for the order lines yet: reading the orders in full again"
            );
            return self.pull_orders_full(Position::default(), select).await;
        }
        let result = async {
            let (mut changes, mut undecodable) = (Vec::new(), Vec::new());
            if position.lines_next.is_none() {
                let page = self.pull_tracked(Entity::Order, std::mem::take(&mut position), select).await?;
                position = page.cursor.decode()?;
                changes = page.changes;
                undecodable = page.undecodable;
                if page.has_more || position.orders.is_some() {
                    // More order changes to read, or an expired token restarted a full read.
                    return Ok(Page::new(changes, Cursor::encode(&position), page.has_more)
                        .with_undecodable(undecodable)
                        .in_full_read(page.full_read));
                }
            }
            let (line_changes, line_undecodable) = self.pull_line_changes(&mut position).await?;
            let reread: HashSet<&str> = line_changes.iter().map(|change| change.external_id.as_str()).collect();
            changes.retain(|change| !reread.contains(change.external_id.as_str()));
            changes.extend(line_changes);
            undecodable.extend(line_undecodable);
            let has_more = position.lines_next.is_some();
            Ok(Page::new(changes, Cursor::encode(&position), has_more).with_undecodable(undecodable))
        }
        .await;
        match result {
            Err(ConnectorError::CursorExpired { message }) => {
                tracing::warn!(
                    connection = %self.settings.id,
                    %message,
                    "order lines' change-tracking token expired: reading the orders in full again"
                );
                self.pull_orders_full(Position::default(), select).await
            }
            other => other,
        }
    }

    /// Orders with every mapped column and their lines (step 3 of [`OrderRead`]).
    fn expanded_orders_url(&self, select: &str) -> Result<String, ConnectorError> {
        let table = wire::table(Entity::Order);
        let mut url = self.set_url(table.set)?;
        url.query_pairs_mut()
            .append_pair("$select", select)
            .append_pair("$expand", &format!("{}($select={})", wire::ORDER_LINES, mapping::LINE_COLUMNS.join(",")));
        Ok(url.to_string())
    }

    /// The change-tracked read of the order lines: only their order's id, which is all a change
    /// needs to say (the order is read again with all its lines). The delta link repeats it.
    fn lines_changes_url(&self) -> Result<String, ConnectorError> {
        let mut url = self.set_url(wire::LINES_SET)?;
        url.query_pairs_mut().append_pair("$select", wire::LINE_ORDER);
        Ok(url.to_string())
    }

    /// One page of the order lines' changes: the orders of created or changed lines read again
    /// with all their lines. Updates `position`'s lines links; an expired lines token is the
    /// caller's to handle ([`ConnectorError::CursorExpired`]).
    async fn pull_line_changes(&self, position: &mut Position) -> Result<Mapped, ConnectorError> {
        let Some(url) = position.lines_next.clone().or_else(|| position.lines_delta.clone()) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let page = self.get_page("salesorderdetails changes", &url, true).await?;
        let (orders, deleted) = wire::orders_of_changed_lines(&page.value)?;
        if deleted > 0 {
            tracing::debug!(
                connection = %self.settings.id,
                deleted,
                "order lines deleted: their orders are read again when their rows change"
            );
        }
        let ids: Vec<ExternalId> = orders.into_iter().map(ExternalId::new).collect();
        let Fetched { changes, undecodable } =
            if ids.is_empty() { Fetched::default() } else { self.read_by_ids(Entity::Order, &ids).await? };
        let mapped = (changes, undecodable);
        match page.next_link {
            Some(next) => position.lines_next = Some(next),
            None => {
                position.lines_next = None;
                match page.delta_link {
                    Some(delta) => position.lines_delta = Some(delta),
                    None => {
                        return Err(ConnectorError::decode(
                            "salesorderdetails changes",
                            std::io::Error::other("the last page of a change-tracked read has no @odata.deltaLink"),
                        ));
                    }
                }
            }
        }
        Ok(mapped)
    }

    /// Reads the lines a page of order rows read with their lines expanded (`order_details`) does
    /// not hold (order id → lines; the others are read from each row as it is mapped). An order
    /// with [`wire::EXPANDED_ROWS_CAP`] expanded lines may have more: its lines are read from the
    /// row's `order_details@odata.nextLink`, page by page. A row without the expansion (a read a
    /// cursor from before the expansion continues) has its lines read by order id.
    async fn lines_not_expanded(&self, rows: &[RowText], table: wire::Table) -> Result<OrderLines, ConnectorError> {
        let link_property = format!("{}@odata.nextLink", wire::ORDER_LINES);
        let mut lines = OrderLines::new();
        let mut unexpanded = Vec::new();
        let mut capped = Vec::new();
        for text in rows {
            let row = wire::read_row(text, table.set)?;
            let Some(id) = row.text(table.key) else { continue };
            let Some(expanded) = wire::expanded_lines(&row, &id)? else {
                unexpanded.push(id.into_owned());
                continue;
            };
            if expanded.len() >= wire::EXPANDED_ROWS_CAP {
                let Some(link) = row.text(&link_property) else {
                    return Err(ConnectorError::decode(
                        "salesorders with their lines",
                        std::io::Error::other(format!(
                            "order {id} has {} expanded lines and no {link_property}",
                            expanded.len()
                        )),
                    ));
                };
                capped.push((id.into_owned(), link.into_owned()));
            }
        }
        for (id, link) in capped {
            let mut order_lines = Vec::new();
            let mut next = Some(link);
            while let Some(url) = next.take() {
                let page = self.get_page("salesorderdetails of one order", &url, false).await?;
                order_lines.extend(page.value);
                next = page.next_link;
            }
            lines.insert(id, order_lines);
        }
        if !unexpanded.is_empty() {
            let ids: Vec<&str> = unexpanded.iter().map(String::as_str).collect();
            lines.extend(self.lines(&ids).await?);
        }
        Ok(lines)
    }

    async fn pull_by_modifiedon(
        &self,
        entity: Entity,
        mut position: Position,
        select: &str,
    ) -> Result<Page, ConnectorError> {
        let table = wire::table(entity);
        let url = match &position.next {
            Some(next) => next.clone(),
            None => self.initial_url(entity, select, position.since, false)?,
        };
        let page = self.get_page(&format!("{} rows", table.set), &url, false).await?;
        // `@odata.count` (first page only: the next links do not repeat `$count`) counts up to 5,000:
        // at the cap the total is unknown.
        let total = page.count.filter(|count| *count < wire::COUNT_CAP);
        let mapped = self.map_rows(entity, &page.value).await?;
        let (changes, undecodable) = self.deliver(mapped, &mut position);
        if let Some(next) = page.next_link {
            position.next = Some(next);
            return Ok(Page::new(changes, Cursor::encode(&position), true)
                .with_undecodable(undecodable)
                .with_total(total));
        }
        position.next = None;
        position.since = position.max.or(position.since);
        Ok(Page::new(changes, Cursor::encode(&position), false).with_undecodable(undecodable).with_total(total))
    }

    async fn send_batch(&self, requests: &[BatchRequest]) -> Result<Vec<BatchResponse>, ConnectorError> {
        let boundary = format!("batch_{}", uuid::Uuid::new_v4().simple());
        let body = wire::encode_batch(&boundary, requests);
        let url = format!("{}/$batch", self.api());
        self.http
            .retrying("$batch", || async {
                let response = self
                    .call_once("$batch", &|client: &reqwest::Client, _: &str| {
                        client
                            .post(&url)
                            .header("Content-Type", format!("multipart/mixed; boundary={boundary}"))
                            .header("Prefer", "odata.continue-on-error")
                            .body(body.clone())
                    })
                    .await?;
                let content_type = response.header("content-type").unwrap_or_default();
                let answer_boundary = wire::boundary_of(content_type).ok_or_else(|| {
                    ConnectorError::decode(
                        "$batch response",
                        std::io::Error::other(format!("content type {content_type:?} has no boundary")),
                    )
                })?;
                let text = std::str::from_utf8(&response.body)
                    .map_err(|error| ConnectorError::decode("$batch response", error))?;
                let parts = wire::decode_batch_response(&answer_boundary, text)
                    .map_err(|error| ConnectorError::decode("$batch response", error))?;
                if parts.len() != requests.len() {
                    return Err(ConnectorError::decode(
                        "$batch response",
                        std::io::Error::other(format!("{} responses for {} requests", parts.len(), requests.len())),
                    ));
                }
                Ok(parts)
            })
            .await
    }
}

fn error_of(response: &BatchResponse) -> (String, String) {
    match serde_json::from_str::<wire::ErrorBody>(&response.body) {
        Ok(body) => (
            if body.error.code.is_empty() { format!("HTTP_{}", response.status) } else { body.error.code },
            body.error.message,
        ),
        Err(_) => (format!("HTTP_{}", response.status), response.body.chars().take(300).collect()),
    }
}

fn part_failure(status: u16, response: &BatchResponse) -> PushOutcome {
    let (code, message) = error_of(response);
    match status {
        412 => PushOutcome::Retry {
            message: format!(
                "changed in Dataverse since crmsync last read it ({message}); retried after the next pull"
            ),
        },
        408 | 429 | 500..=599 => PushOutcome::Retry { message: format!("{code}: {message}") },
        _ => PushOutcome::Rejected { code, message },
    }
}

/// The record id from a write's response: the body's key column or the `OData-EntityId` header.
fn main_id(response: &BatchResponse) -> Option<String> {
    if let Ok(body) = serde_json::from_str::<Map<String, Value>>(&response.body)
        && let Some(id) = wire::TABLES.iter().find_map(|table| body.get(table.key).and_then(Value::as_str))
    {
        return Some(id.to_owned());
    }
    let entity_id = response.header("odata-entityid")?;
    let inner = entity_id.rsplit_once('(')?.1.strip_suffix(')')?;
    (!inner.contains('=')).then(|| inner.to_owned())
}

impl WebhookParser for Dynamics365Connector {
    fn parse_webhook(&self, delivery: &WebhookDelivery<'_>) -> Result<WebhookReply, WebhookError> {
        let Some(config) = &self.config.webhook else { return Err(WebhookError::NotConfigured) };
        let events = webhook::parse(config, &self.settings.entities, delivery)?;
        Ok(WebhookReply { events, content_type: "application/json", body: "{}".into() })
    }
}

impl Dialect for Dynamics365Connector {
    fn fetch_access_token(&self) -> impl Future<Output = Result<TokenResponse, ConnectorError>> + Send {
        self.fetch_token()
    }

    fn base_url(&self, _token: &AccessToken) -> String {
        self.api()
    }

    /// Dataverse limits concurrent requests per user (52, `0x80072326`): at most a few run at once
    /// per connection.
    fn in_flight(&self) -> Option<&tokio::sync::Semaphore> {
        Some(&self.in_flight)
    }

    fn authorize(&self, request: reqwest::RequestBuilder, token: &AccessToken) -> reqwest::RequestBuilder {
        request
            .bearer_auth(token.expose())
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
    }

    fn classify(&self, response: RawResponse, context: &str) -> Result<RawResponse, ConnectorError> {
        if let Some(remaining) =
            response.header("x-ms-ratelimit-burst-remaining-xrm-requests").and_then(|value| value.parse::<u64>().ok())
        {
            self.http.record_vendor_usage(BURST_LIMIT.saturating_sub(remaining), BURST_LIMIT);
        }
        if response.is_success() || response.status == 304 {
            return Ok(response);
        }
        let (code, message) = match serde_json::from_slice::<wire::ErrorBody>(&response.body) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (format!("HTTP_{}", response.status), response.body_excerpt()),
        };
        if code == wire::EXPIRED_VERSION_STAMP && !matches!(response.status, 401 | 429 | 500..=599) {
            return Err(ConnectorError::CursorExpired { message });
        }
        Err(error_for_status(response.status, code, message, context, response.retry_after()))
    }
}

impl Connector for Dynamics365Connector {
    fn id(&self) -> &ConnectionId {
        &self.settings.id
    }

    fn kind(&self) -> VendorKind {
        VendorKind::Dynamics365
    }

    fn entities(&self) -> &[Entity] {
        &self.settings.entities
    }

    fn push_batch_size(&self) -> usize {
        self.config.batch_size as usize
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        let mut report = CheckReport::default();
        for entity in &self.settings.entities {
            let table = wire::table(*entity);
            let described = self.describe(*entity).await?;
            if !described.tracking {
                report.notes.push(format!(
                    "{}: change tracking is off; pulling by modifiedon instead (deletions are found only by the drift sweep). Turn on \"Track changes\" for the table to fix this.",
                    table.set
                ));
            }
            let mapped = mapping::mapped_columns(*entity, &self.config);
            let defaults = self.config.create_defaults.get(table.logical);
            for attribute in push::required_on_create(&described) {
                let name = attribute.logical_name.as_str();
                if !mapped.contains(name) && defaults.is_none_or(|defaults| !defaults.contains_key(name)) {
                    report.notes.push(format!(
                        "{}: column {name} is required on create ({}) and nothing fills it; records crmsync creates there will be dead-lettered until create_defaults.{}.{name} is set",
                        table.set,
                        attribute.level(),
                        table.logical
                    ));
                }
            }
            if *entity == Entity::Order && described.tracking && !self.describe_lines().await?.tracking {
                report.notes.push(format!(
                    "{}: change tracking is off; a change of an order's lines is seen only when the order itself changes. Turn on \"Track changes\" for the table to fix this.",
                    wire::LINES_SET
                ));
            }
            if !described.columns.contains(&self.config.alternate_key) {
                report.notes.push(format!(
                    "{}: column {} (the alternate key holding the canonical id) is missing; pushes will fail until it is created",
                    table.set, self.config.alternate_key
                ));
            }
        }
        Ok(report)
    }

    async fn pull(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        let position: Position = match cursor {
            Some(cursor) => cursor.decode()?,
            None => Position { since: self.settings.start, ..Position::default() },
        };
        let (select, _, described) = self.select(entity).await?;
        let full_order_read = entity == Entity::Order
            && (position.orders.is_some() || (position.next.is_none() && position.delta.is_none()));
        if described.tracking && position.since.is_none() && full_order_read {
            self.pull_orders_full(position, &select).await
        } else if described.tracking && position.since.is_none() && entity == Entity::Order {
            self.pull_orders_delta(position, &select).await
        } else if described.tracking && position.since.is_none() {
            self.pull_tracked(entity, position, &select).await
        } else {
            self.pull_by_modifiedon(entity, position, &select).await
        }
    }

    async fn fetch(&self, entity: Entity, ids: &[ExternalId]) -> Result<Fetched, ConnectorError> {
        self.read_by_ids(entity, ids).await
    }

    async fn list_ids(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<IdPage, ConnectorError> {
        let table = wire::table(entity);
        let url = match cursor.map(Cursor::decode::<ListPosition>).transpose()? {
            Some(position) => position.next,
            None => {
                let mut url = self.set_url(table.set)?;
                url.query_pairs_mut().append_pair("$select", &format!("{},modifiedon", table.key));
                url.to_string()
            }
        };
        let page = self.get_page(&format!("{} ids", table.set), &url, false).await?;
        let mut ids = Vec::with_capacity(page.value.len());
        for text in &page.value {
            let row = wire::read_row(text, table.set)?;
            if let (Some(id), Some(stamp)) =
                (row.text(table.key), row.text("modifiedon").and_then(|stamp| stamp.parse::<Timestamp>().ok()))
            {
                ids.push((ExternalId::new(id), stamp));
            }
        }
        Ok(IdPage { ids, next: page.next_link.map(|next| Cursor::encode(&ListPosition { next })) })
    }
    async fn push(&self, entity: Entity, batch: &[Outgoing]) -> Result<PushReport, ConnectorError> {
        let (_, denied, described) = self.select(entity).await?;
        let lines_described = if entity == Entity::Order { Some(self.describe_lines().await?) } else { None };
        let currencies = if matches!(entity, Entity::Opportunity | Entity::Order) {
            self.currencies().await?
        } else {
            Arc::new(Currencies::default())
        };
        let products = if entity == Entity::Order { self.products().await? } else { Arc::new(Products::default()) };
        let context = self.map_context(&currencies, &products);
        let found = if matches!(entity, Entity::Opportunity | Entity::Order) {
            self.read_existing(entity, batch, &described).await?
        } else {
            vec![push::Found::Absent; batch.len()]
        };
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; batch.len()];
        let mut plans = Vec::new();
        for (index, outgoing) in batch.iter().enumerate() {
            if matches!(outgoing.op, OutgoingOp::Delete) && outgoing.external_id.is_none() {
                // Dataverse never had it.
                outcomes[index] = Some(PushOutcome::Deleted);
                continue;
            }
            let write = push::write_of(outgoing, &context, &denied, true);
            let tables = push::Tables { described: &described, lines: lines_described.as_deref() };
            match self.plan(entity, index, outgoing, write, &found[index], tables) {
                Ok(plan) if plan.len() == 0 => outcomes[index] = Some(plan.outcome(&[])),
                Ok(plan) => plans.push(plan),
                Err(outcome) => outcomes[index] = Some(outcome),
            }
        }
        let mut answered = false;
        for (requests, plans) in push::batches(plans) {
            match self.send_batch(&requests).await {
                Ok(responses) => {
                    answered = true;
                    for (index, outcome) in push::outcomes(&plans, &responses) {
                        outcomes[index] = Some(outcome);
                    }
                }
                // Earlier batches were applied: report them, and let the rest be retried.
                Err(error) if answered => {
                    for plan in &plans {
                        outcomes[plan.index] = Some(PushOutcome::Retry { message: error.to_string() });
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(PushReport::from_outcomes(batch, outcomes))
    }

    fn usage(&self) -> ApiUsage {
        self.http.usage()
    }

    fn representable(&self, data: &crate::canonical::EntityData) -> crate::canonical::EntityData {
        mapping::representable(data, &self.settings.vocabulary)
    }
}
