//! An in-process Dataverse simulator (axum): the Microsoft identity platform token endpoint
//! (client credentials, scope `{org}/.default`), `EntityDefinitions` with attributes described as
//! the Web API describes them (`metadata`), entity sets with `$select`,
//! `$filter` (comparisons, `and`/`or`/`not`, parentheses, `Microsoft.Dynamics.CRM.In`), `$orderby`,
//! `$top`, `$expand` of an order's lines (`order_details`, and the filtered collection
//! `salesorders(<id>)/order_details`), `Prefer: odata.maxpagesize` (≤ 5,000) with `@odata.nextLink`
//! paging cookies, change tracking (`Prefer: odata.track-changes`, delta links, `$deletedEntity`
//! rows, expired tokens), `PATCH` upserts by
//! id or alternate key with `If-Match` / `If-None-Match` and etags, `DELETE`, the
//! `WinOpportunity`/`LoseOpportunity`, `FulfillSalesOrder` and `CancelSalesOrder` messages and
//! SetState on orders (`state`), the documented write rules (required columns, read-only states;
//! `write`), `$batch` (≤ 1,000 requests, `odata.continue-on-error`), real error bodies, `429` +
//! `Retry-After`, `x-ms-ratelimit-*` headers, and the shared fault switches.
//!
//! Org customisations it models: every synced table (and the order lines) has a text column
//! `crmsync_id` defined as an alternate key, and leads, opportunities and orders a text column
//! `crmsync_channel` (the sales channel). The org has one price list ([`PRICE_LIST_ID`]) and a
//! product catalogue; order lines are catalogue or write-in products.

mod batch;
mod filter;
mod metadata;
mod read;
mod reply;
mod schema;
mod state;
mod table;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::wire;
use crate::canonical::{Entity, OrderStatus, Stage, Timestamp, VendorKind, Vocabulary, decimal_json};
use crate::sim::{Counters, FaultSettings, Faults, Injected, RunningSim, SimStats, Simulated, World};
use read::select_of;
use reply::{Reply, error, not_found};
pub use schema::PRICE_LIST_ID;
use schema::{CURRENCIES, OWNER_ID, SETS};
use table::{Inner, Row};

/// Entra tenant the simulator serves.
pub const TENANT_ID: &str = "contoso.onmicrosoft.com";
/// Application (client) id.
pub const CLIENT_ID: &str = "8f0c2a4e-2b7e-4f5d-9a51-crmsync0demo";
/// Client secret.
pub const CLIENT_SECRET: &str = "demo-dataverse-client-secret";
/// Webhook key (`HttpHeader` auth, sent in [`WEBHOOK_HEADER`]).
pub const WEBHOOK_KEY: &str = "demo-dataverse-webhook-key";
/// The header the demo connection's webhook key arrives in (the service endpoint's `HttpHeader`
/// authentication names it; crm-apis.md §3.8).
pub const WEBHOOK_HEADER: &str = "x-crmsync-key";
/// Env variable of the client secret in `connection_toml`.
pub const ENV_CLIENT_SECRET: &str = "CRMSYNC_DEMO_D365_CLIENT_SECRET";
/// Env variable of the webhook key.
pub const ENV_WEBHOOK_KEY: &str = "CRMSYNC_DEMO_D365_WEBHOOK_KEY";
/// Result sets kept for paging by default; older next links answer "Invalid paging cookie".
pub const SNAPSHOTS_KEPT: usize = 64;
/// The alternate-key column.
pub const ALTERNATE_KEY: &str = "crmsync_id";

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct Dynamics365SimOptions {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Seed data (records whose presence includes Dynamics 365).
    pub world: World,
    /// Initial faults.
    pub faults: FaultSettings,
    /// Entity sets whose change tracking is off.
    pub untracked: Vec<&'static str>,
    /// `Retry-After` seconds on a throttled call.
    pub retry_after_seconds: u64,
    /// Multi-page result sets kept for paging ([`SNAPSHOTS_KEPT`]); tests shrink it.
    pub snapshots_kept: usize,
    /// The org's system price calculation (`Organization.OOBPriceCalculationEnabled`, on by
    /// default): a line write recalculates its order's total, so the order row changes too. Off,
    /// the order row stays as it was (an org that prices with its own plug-in, or not at all).
    pub price_calculation: bool,
}

impl Dynamics365SimOptions {
    /// Options serving `world` on a free loopback port.
    pub fn with_world(world: World) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            world,
            faults: FaultSettings::default(),
            untracked: Vec::new(),
            retry_after_seconds: 1,
            snapshots_kept: SNAPSHOTS_KEPT,
            price_calculation: true,
        }
    }
}

/// The simulator's state.
pub struct Dynamics365Sim {
    inner: Mutex<Inner>,
    faults: Faults,
    counters: Counters,
    calls: AtomicU64,
    retry_after_seconds: u64,
}

/// A running simulator.
pub type RunningDynamics365Sim = RunningSim<Dynamics365Sim>;

/// Starts a simulator.
pub async fn start(options: Dynamics365SimOptions) -> std::io::Result<RunningDynamics365Sim> {
    let state = Arc::new(Dynamics365Sim::new(&options));
    RunningSim::serve(options.addr, state.clone(), router(state)).await
}

/// The `[connections.NAME]` TOML for a connection to a simulator at `base_url`.
pub fn connection_toml(name: &str, base_url: &str) -> String {
    format!(
        "[connections.{name}]\nkind = \"dynamics365\"\norg_url = \"{base_url}\"\nauthority_url = \"{base_url}\"\n\
         tenant_id = \"{TENANT_ID}\"\nchannel_field = \"crmsync_channel\"\n\
         auth = {{ client_id = \"{CLIENT_ID}\", client_secret = {{ env = \"{ENV_CLIENT_SECRET}\" }} }}\n\
         webhook = {{ key = {{ env = \"{ENV_WEBHOOK_KEY}\" }}, header = \"{WEBHOOK_HEADER}\" }}\n\
         create_defaults = {{ lead = {{ subject = \"Lead from crmsync\" }}, salesorder = {{ pricelevelid = \"/pricelevels({PRICE_LIST_ID})\" }} }}\n"
    )
}

/// The secrets `connection_toml` refers to.
pub fn demo_secrets() -> Vec<(&'static str, &'static str)> {
    vec![(ENV_CLIENT_SECRET, CLIENT_SECRET), (ENV_WEBHOOK_KEY, WEBHOOK_KEY)]
}

fn guid(n: u64) -> String {
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", n >> 32, (n >> 16) & 0xffff, n & 0xfff, (n >> 12) & 0xfff, n)
}

fn time(seconds: i64) -> String {
    Timestamp::from_unix_seconds(seconds).map(wire::format_time).unwrap_or_default()
}

fn now_seconds() -> i64 {
    Timestamp::now().unix_millis().div_euclid(1000)
}

impl Dynamics365Sim {
    fn new(options: &Dynamics365SimOptions) -> Self {
        let mut tables: BTreeMap<&'static str, BTreeMap<String, Row>> = BTreeMap::new();
        for set in SETS {
            tables.insert(set, BTreeMap::new());
        }
        let currencies = CURRENCIES
            .iter()
            .map(|(id, code, name)| {
                let fields = json!({"transactioncurrencyid": id, "isocurrencycode": code, "currencyname": name});
                (
                    (*id).to_owned(),
                    Row { fields: fields.as_object().cloned().unwrap_or_default(), version: 1, deleted: None },
                )
            })
            .collect();
        tables.insert("transactioncurrencies", currencies);
        let products = crate::sim::PRODUCTS
            .iter()
            .enumerate()
            .map(|(index, (name, number))| {
                let id = guid(0x9_0000 + index as u64);
                let fields = json!({"productid": id, "name": name, "productnumber": number});
                (id, Row { fields: fields.as_object().cloned().unwrap_or_default(), version: 1, deleted: None })
            })
            .collect();
        tables.insert("products", products);
        let price_list = json!({"pricelevelid": PRICE_LIST_ID, "name": "Default price list"});
        tables.insert(
            "pricelevels",
            BTreeMap::from([(
                PRICE_LIST_ID.to_owned(),
                Row { fields: price_list.as_object().cloned().unwrap_or_default(), version: 1, deleted: None },
            )]),
        );
        let sim = Self {
            inner: Mutex::new(Inner {
                tables,
                tokens: HashSet::new(),
                version: 1000,
                oldest_token: 0,
                snapshots: HashMap::new(),
                snapshot_order: VecDeque::new(),
                snapshots_kept: options.snapshots_kept.max(1),
                untracked: options.untracked.iter().map(|set| (*set).to_owned()).collect(),
                selects: Vec::new(),
                next_order: 1000,
                price_calculation: options.price_calculation,
            }),
            faults: Faults::new(&options.faults),
            counters: Counters::default(),
            calls: AtomicU64::new(0),
            retry_after_seconds: options.retry_after_seconds,
        };
        sim.seed(&options.world);
        sim
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn seed(&self, world: &World) {
        let bit = World::bit(VendorKind::Dynamics365);
        let vocabulary = Vocabulary::defaults(VendorKind::Dynamics365);
        let mut inner = self.lock();
        let currency = |code: &str| CURRENCIES.iter().find(|(_, iso, _)| *iso == code).map_or(CURRENCIES[0].0, |c| c.0);
        let total = world.accounts.len() + world.leads.len() + world.opportunities.len() + world.orders.len();
        let mut stamp = now_seconds() - i64::try_from(total).unwrap_or(0) - 1;
        let mut account_ids = HashMap::new();
        for (index, account) in world.accounts.iter().enumerate() {
            if account.presence & bit == 0 {
                continue;
            }
            stamp += 1;
            let id = inner.insert("accounts", json!({
                "name": account.name, "accountnumber": account.number, "websiteurl": format!("https://www.{}", account.domain),
                "address1_country": account.country, "statecode": 0, "statuscode": 1, "_ownerid_value": OWNER_ID,
            }), stamp);
            account_ids.insert(index, id);
        }
        for lead in &world.leads {
            if lead.presence & bit == 0 {
                continue;
            }
            stamp += 1;
            inner.insert("leads", json!({
                "subject": format!("Interest from {}", lead.company), "firstname": lead.first_name, "lastname": lead.last_name,
                "companyname": lead.company, "emailaddress1": lead.email, "statecode": i64::from(lead.converted),
                "statuscode": if lead.converted { 3 } else { 1 }, "_ownerid_value": OWNER_ID,
                "crmsync_channel": lead.source, "createdon": time((lead.created_at.unix_millis() / 1000).min(stamp)),
            }), stamp);
        }
        for deal in &world.opportunities {
            if deal.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&deal.account).cloned() else { continue };
            stamp += 1;
            let (salesstage, budget, state, status) = match deal.stage {
                Stage::Won => (3, None, 1, 3),
                Stage::Lost => (3, None, 2, 4),
                Stage::Budget => (0, Some(2), 0, 1),
                stage => {
                    (vocabulary.stages.reverse(stage).and_then(|value| value.parse().ok()).unwrap_or(0), None, 0, 1)
                }
            };
            inner.insert("opportunities", json!({
                "name": deal.name, "_customerid_value": account, "estimatedvalue": decimal_json(deal.amount),
                "_transactioncurrencyid_value": currency(deal.currency), "salesstage": salesstage, "budgetstatus": budget,
                "statecode": state, "statuscode": status, "estimatedclosedate": deal.close_date.to_string(),
                "actualclosedate": (state != 0).then(|| deal.close_date.to_string()), "crmsync_channel": deal.source,
                "createdon": time((deal.created_at.unix_millis() / 1000).min(stamp)), "_ownerid_value": OWNER_ID,
            }), stamp);
        }
        for order in &world.orders {
            if order.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&order.account).cloned() else { continue };
            stamp += 1;
            let (state, status) = match order.status {
                OrderStatus::Draft => (0, 1),
                OrderStatus::Confirmed => (1, 3),
                OrderStatus::Cancelled => (2, 4),
                OrderStatus::Shipped => (3, 100002),
                OrderStatus::Delivered => (3, 100001),
                OrderStatus::Invoiced => (4, 100003),
            };
            // Priced here as Dataverse would (extendedamount = quantity × price, the order's total the
            // sum of its lines): the write path's recomputation scans every line, fine for one write,
            // quadratic for a seeded world.
            let total: Decimal = order.lines.iter().map(|line| line.quantity * line.unit_price).sum();
            let id = inner.insert("salesorders", json!({
                "name": order.number, "_customerid_value": account, "_transactioncurrencyid_value": currency(order.currency),
                "statecode": state, "statuscode": status, "submitdate": format!("{}T00:00:00Z", order.order_date),
                "crmsync_channel": order.source, "totalamount": decimal_json(total), "_pricelevelid_value": PRICE_LIST_ID,
                "_ownerid_value": OWNER_ID,
            }), stamp);
            for line in &order.lines {
                let product = inner.product_by_number(line.sku);
                inner.insert(
                    "salesorderdetails",
                    json!({
                        "_salesorderid_value": id, "_productid_value": product, "isproductoverridden": false,
                        "quantity": decimal_json(line.quantity), "priceperunit": decimal_json(line.unit_price),
                        "extendedamount": decimal_json(line.quantity * line.unit_price),
                    }),
                    stamp,
                );
            }
        }
    }

    /// Live row ids of an entity.
    pub fn live_ids(&self, entity: Entity) -> Vec<String> {
        let set = wire::table(entity).set;
        self.lock()
            .tables
            .get(set)
            .map(|rows| rows.iter().filter(|(_, row)| row.deleted.is_none()).map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// A live row's columns.
    pub fn row(&self, entity: Entity, id: &str) -> Option<Map<String, Value>> {
        let set = wire::table(entity).set;
        self.lock().tables.get(set)?.get(id).filter(|row| row.deleted.is_none()).map(|row| row.fields.clone())
    }

    /// The lines of an order.
    pub fn order_lines(&self, order_id: &str) -> Vec<Map<String, Value>> {
        self.lock()
            .tables
            .get("salesorderdetails")
            .map(|rows| {
                rows.values()
                    .filter(|row| row.deleted.is_none())
                    .filter(|row| row.fields.get("_salesorderid_value").and_then(Value::as_str) == Some(order_id))
                    .map(|row| row.fields.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Edits a row as a user would (new version and `modifiedon`).
    pub fn edit(&self, entity: Entity, id: &str, changes: &[(&str, Value)]) -> bool {
        self.edit_at(entity, id, changes, Timestamp::now())
    }

    /// Edits a row as a user would at `at` (`modifiedon` has second precision, so tests that need two
    /// edits in distinct seconds say when, instead of waiting).
    pub fn edit_at(&self, entity: Entity, id: &str, changes: &[(&str, Value)], at: Timestamp) -> bool {
        let set = wire::table(entity).set;
        let mut inner = self.lock();
        let version = inner.next_version();
        let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(id)) else { return false };
        for (name, value) in changes {
            row.fields.insert((*name).to_owned(), value.clone());
        }
        row.version = version;
        row.fields.insert("modifiedon".into(), json!(time(at.unix_millis().div_euclid(1000))));
        true
    }

    /// Makes every delta token handed out so far expire (as after the org's retention period).
    pub fn expire_delta_tokens(&self) {
        let mut inner = self.lock();
        inner.oldest_token = inner.next_version();
    }

    /// The `$select` lists requested, oldest first (privacy tests).
    pub fn requested_selects(&self) -> Vec<String> {
        self.lock().selects.clone()
    }
}

// ---- routes -------------------------------------------------------------------------------------

impl Simulated for Dynamics365Sim {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn stats(&self) -> SimStats {
        let mut stats = self.counters.snapshot();
        for (set, rows) in &self.lock().tables {
            stats.records.insert((*set).to_owned(), rows.values().filter(|row| row.deleted.is_none()).count() as u64);
        }
        stats
    }
}

#[cfg(feature = "testkit")]
impl crate::testkit::SimControl for Dynamics365Sim {
    fn count(&self, entity: Entity) -> usize {
        self.live_ids(entity).len()
    }

    fn touch(&self, entity: Entity, n: usize) -> Vec<crate::canonical::ExternalId> {
        let ids: Vec<String> = self.live_ids(entity).into_iter().take(n).collect();
        let column = match entity {
            Entity::Account | Entity::Opportunity => "name",
            Entity::Lead => "companyname",
            Entity::Order => "description",
        };
        for id in &ids {
            let current = self
                .row(entity, id)
                .and_then(|row| row.get(column).and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            self.edit(entity, id, &[(column, json!(format!("{current} (edited)")))]);
        }
        ids.into_iter().map(crate::canonical::ExternalId::new).collect()
    }

    fn delete(&self, entity: Entity, n: usize) -> Vec<crate::canonical::ExternalId> {
        let ids: Vec<String> = self.live_ids(entity).into_iter().rev().take(n).collect();
        let set = wire::table(entity).set;
        let mut inner = self.lock();
        for id in &ids {
            let version = inner.next_version();
            if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(id)) {
                row.deleted = Some(version);
            }
        }
        ids.into_iter().map(crate::canonical::ExternalId::new).collect()
    }

    fn stats(&self) -> SimStats {
        Simulated::stats(self)
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }
}

type Shared = State<Arc<Dynamics365Sim>>;

/// The simulator's routes.
pub fn router(state: Arc<Dynamics365Sim>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/api/data/{version}/", get(service_document))
        .route("/api/data/{version}/{*resource}", any(api))
        .with_state(state.clone())
        .merge(crate::sim::admin_routes(state))
}

async fn token(State(sim): Shared, headers: HeaderMap, Path(tenant): Path<String>, body: Bytes) -> Response {
    sim.counters.token.fetch_add(1, Ordering::SeqCst);
    let params: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let refuse = |status: StatusCode, code: &str, number: u64, description: &str| {
        (
            status,
            axum::Json(json!({
                "error": code, "error_description": format!("AADSTS{number}: {description}"), "error_codes": [number],
                "timestamp": time(now_seconds()), "trace_id": "00000000-0000-0000-0000-000000000000",
                "correlation_id": "00000000-0000-0000-0000-000000000000",
            })),
        )
            .into_response()
    };
    if tenant != TENANT_ID {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", 90002, &format!("Tenant '{tenant}' not found."));
    }
    if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if params.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    if params.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client", 7000215, "Invalid client secret provided.");
    }
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    if params.get("scope").map(String::as_str) != Some(format!("http://{host}/.default").as_str()) {
        return refuse(StatusCode::BAD_REQUEST, "invalid_scope", 1002012, "The provided value for scope is not valid.");
    }
    let access = format!("eyJ0eXAi.{}", uuid::Uuid::new_v4().simple());
    sim.lock().tokens.insert(access.clone());
    sim.faults.token_issued();
    axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access}))
        .into_response()
}

/// `GET /api/data/v9.2/`: the service document, every entity set by name (Web API Service
/// Documents, powerapps-docs:…/webapi/web-api-service-documents.md). Clients probe it to check a
/// connection (Airbyte's Dataverse source does).
async fn service_document(State(sim): Shared, headers: HeaderMap, Path(version): Path<String>) -> Response {
    sim.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(refused) = sim.gate(&headers).await {
        return refused.into_response(false);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    let sets: Vec<Value> = SETS.iter().map(|set| json!({"name": set, "kind": "EntitySet", "url": set})).collect();
    Reply::json(
        StatusCode::OK,
        json!({"@odata.context": format!("http://{host}/api/data/{version}/$metadata"), "value": sets}),
    )
    .into_response(false)
}

/// One parsed request, from HTTP or from a `$batch` part.
struct Request<'a> {
    method: Method,
    resource: String,
    query: HashMap<String, String>,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    base: &'a str,
    version: &'a str,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    fn prefers(&self, preference: &str) -> bool {
        self.header("prefer").is_some_and(|prefer| prefer.split(',').any(|part| part.trim().starts_with(preference)))
    }
}

async fn api(
    State(sim): Shared,
    method: Method,
    headers: HeaderMap,
    Path((version, resource)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let calls = sim.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let remaining = 6000u64.saturating_sub(calls % 6000);
    let reply = sim.gate(&headers).await.unwrap_or_else(|| {
        let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
        let base = format!("http://{host}");
        if resource == "$batch" {
            sim.counters.write.fetch_add(1, Ordering::SeqCst);
            return sim.batch(&headers, &body, &base, &version);
        }
        let parsed_body = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice(&body) {
                Ok(value) => Some(value),
                Err(error) => {
                    return self::error(
                        StatusCode::BAD_REQUEST,
                        "0x80048d19",
                        &format!(
                            "Error identified in Payload provided by the user for Entity :'{resource}' ----> {error}"
                        ),
                    );
                }
            }
        };
        if method == Method::GET {
            sim.counters.read.fetch_add(1, Ordering::SeqCst);
        } else {
            sim.counters.write.fetch_add(1, Ordering::SeqCst);
        }
        let request = Request {
            method,
            resource,
            query: parse_query(query.as_deref().unwrap_or("")),
            headers: headers
                .iter()
                .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
                .collect(),
            body: parsed_body,
            base: &base,
            version: &version,
        };
        sim.dispatch(&request)
    });
    let truncated = reply.status.is_success() && sim.faults.take_truncation();
    reply.with("x-ms-ratelimit-burst-remaining-xrm-requests", remaining.to_string()).into_response(truncated)
}

fn parse_query(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

impl Dynamics365Sim {
    async fn gate(&self, headers: &HeaderMap) -> Option<Reply> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let unauthorized = || {
            Reply::empty(StatusCode::UNAUTHORIZED).with(
                "WWW-Authenticate",
                format!("Bearer authorization_uri=https://login.microsoftonline.com/{TENANT_ID}/oauth2/authorize"),
            )
        };
        if !token.is_some_and(|token| self.lock().tokens.contains(token)) {
            self.counters.faulted.fetch_add(1, Ordering::SeqCst);
            return Some(unauthorized());
        }
        let injected = self.faults.on_api_call().await;
        if injected != Injected::None {
            self.counters.faulted.fetch_add(1, Ordering::SeqCst);
        }
        match injected {
            Injected::None => None,
            Injected::TokenExpired => {
                self.lock().tokens.clear();
                Some(unauthorized())
            }
            Injected::RateLimited => Some(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "0x80072322",
                    "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                )
                .with("Retry-After", self.retry_after_seconds.to_string()),
            ),
            // Service protection (crm-apis.md §3.6): 429 with Retry-After in seconds.
            Injected::Throttled { retry_after } => Some(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "0x80072322",
                    "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                )
                .with("Retry-After", retry_after.as_secs_f64().ceil().max(1.0).to_string()),
            ),
            Injected::DailyLimit => Some(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "0x80072322",
                    "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                )
                .with("Retry-After", "300".into()),
            ),
            Injected::ServerError => {
                Some(error(StatusCode::SERVICE_UNAVAILABLE, "0x80040216", "An unexpected error occurred."))
            }
        }
    }

    fn dispatch(&self, request: &Request<'_>) -> Reply {
        let resource = request.resource.as_str();
        if resource.starts_with("EntityDefinitions") {
            return self.definitions(request);
        }
        if request.method == Method::POST {
            match resource {
                "WinOpportunity" | "LoseOpportunity" => {
                    return self.close_opportunity(resource == "WinOpportunity", request);
                }
                "salesorders/Microsoft.Dynamics.CRM.FulfillSalesOrder" => return self.close_order(true, request),
                "CancelSalesOrder" => return self.close_order(false, request),
                _ => {}
            }
        }
        if request.method == Method::GET
            && let Some(address) = resource
                .strip_prefix("salesorders(")
                .and_then(|rest| rest.strip_suffix(&format!(")/{}", wire::ORDER_LINES)))
        {
            return self.order_lines_of(address, request);
        }
        let (set, address) = match resource.split_once('(') {
            Some((set, rest)) => (set, rest.strip_suffix(')')),
            None => (resource, None),
        };
        if !SETS.contains(&set) || address.is_some_and(|address| address.contains(')')) {
            let segment = resource.split('/').next_back().unwrap_or(resource);
            return error(
                StatusCode::NOT_FOUND,
                "0x80060888",
                &format!("Resource not found for the segment '{segment}'."),
            );
        }
        match (&request.method, address) {
            (&Method::GET, None) => self.list(set, request),
            (&Method::GET, Some(address)) => {
                let inner = self.lock();
                match inner.locate(set, address) {
                    Err(reply) => reply,
                    Ok(None) => not_found(set, address),
                    Ok(Some(id)) => match select_of(set, request) {
                        Err(reply) => reply,
                        Ok(select) => Reply::json(
                            StatusCode::OK,
                            Value::Object(inner.render(set, &id, &select, false).unwrap_or_default()),
                        ),
                    },
                }
            }
            (&Method::PATCH, Some(address)) => self.write(set, address, request),
            (&Method::DELETE, Some(address)) => self.remove(set, address),
            (&Method::POST, None) => self.write(set, "", request),
            _ => {
                error(StatusCode::METHOD_NOT_ALLOWED, "0x80060888", "The HTTP method is not allowed for this resource.")
            }
        }
    }
}
