//! An in-process Zoho CRM simulator (axum): the accounts server's token endpoint (errors as HTTP 200
//! bodies, like Zoho), under `/crm/v2` … `/crm/v8`: `settings/modules`, `settings/fields` (the
//! documented metadata third-party clients build schemas from), `org` and `org/currencies`
//! (multi-currency on or off), the records API with `fields` (required from v3, ≤ 50),
//! `per_page` ≤ 200, `sort_by=Modified_Time`, `If-Modified-Since` (304 when nothing changed, 204 when
//! empty), page numbers up to 2,000 records (`DISCRETE_PAGINATION_LIMIT_EXCEEDED` beyond) and
//! `page_token` chains up to 100,000 (`PAGINATION_LIMIT_EXCEEDED`), the deleted-records API, insert,
//! update by id and `upsert` with `duplicate_check_fields` (≤ 100 records, per-record codes,
//! 201/200/207/400; an insert repeating a unique `Crmsync_Id` is `DUPLICATE_DATA`), Products,
//! `actions/watch`, and the fault switches. `Modified_Time` has second granularity and is rendered in
//! the org's time zone (`+05:30`), as Zoho does.
//!
//! Layout: `schema` (field and module metadata), `seed` (the world as records), `read`, `write`, `watch`
//! (the endpoints); the token endpoint, fault gate and state live here.
//!
//! Org customisations it models: every module has a unique text field `Crmsync_Id` (the external id);
//! Sales_Orders carry `Lead_Source` (the sales channel); `Due_Date` is the order date.

mod read;
mod schema;
mod seed;
mod watch;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::wire;
use crate::canonical::{Entity, Timestamp};
use crate::sim::{Counters, FaultSettings, Faults, Injected, RunningSim, SimStats, Simulated, World};
use read::{deleted, records};
use schema::{fields, module, modules};
use watch::watch;
use write::{delete_records, insert, update, upsert};

/// OAuth client id the simulator accepts.
pub const CLIENT_ID: &str = "1000.CRMSYNCDEMO";
/// Client secret.
pub const CLIENT_SECRET: &str = "demo-zoho-client-secret";
/// Refresh token.
pub const REFRESH_TOKEN: &str = "1000.demo-zoho-refresh-token";
/// Notification channel token.
pub const WEBHOOK_TOKEN: &str = "demo-zoho-webhook-token";
/// Env variable of the client secret in `connection_toml`.
pub const ENV_CLIENT_SECRET: &str = "CRMSYNC_DEMO_ZOHO_CLIENT_SECRET";
/// Env variable of the refresh token.
pub const ENV_REFRESH_TOKEN: &str = "CRMSYNC_DEMO_ZOHO_REFRESH_TOKEN";
/// Env variable of the webhook token.
pub const ENV_WEBHOOK_TOKEN: &str = "CRMSYNC_DEMO_ZOHO_WEBHOOK_TOKEN";
const ORG_OFFSET_SECONDS: i32 = 5 * 3600 + 30 * 60;

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct ZohoSimOptions {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Seed data (records whose presence includes Zoho).
    pub world: World,
    /// Initial faults.
    pub faults: FaultSettings,
    /// The first K seeded records of each module share one `Modified_Time`.
    pub shared_modified_time: usize,
    /// Multi-currency enabled (`org.mc_status`): modules with amounts carry a `Currency` field and
    /// `org/currencies` lists the active currencies. Off: every amount is in the org currency (EUR),
    /// no module has a `Currency` field, and `org/currencies` answers `CURRENCIES_NOT_ENABLED`.
    pub multi_currency: bool,
}

impl ZohoSimOptions {
    /// Options serving `world` on a free loopback port.
    pub fn with_world(world: World) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            world,
            faults: FaultSettings::default(),
            shared_modified_time: 0,
            multi_currency: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    fields: Map<String, Value>,
    modified: i64,
    deleted: Option<i64>,
}

#[derive(Debug)]
struct Snapshot {
    module: &'static str,
    ids: Vec<String>,
    fields: Vec<String>,
}

struct Inner {
    modules: BTreeMap<&'static str, BTreeMap<String, Row>>,
    products: Vec<(String, String, String)>,
    tokens: HashSet<String>,
    clock: i64,
    next_id: u64,
    snapshots: HashMap<String, Snapshot>,
    requested_fields: Vec<String>,
    watch: Option<Value>,
}

/// The simulator's state.
pub struct ZohoSim {
    inner: Mutex<Inner>,
    faults: Faults,
    counters: Counters,
    progress: tokio::sync::watch::Sender<u64>,
    calls: AtomicU64,
    multi_currency: bool,
}

/// The org's currency (its only one without multi-currency, the base one with it).
pub const ORG_CURRENCY: &str = "EUR";

/// API versions the simulator serves (`/crm/{version}/…`), as Zoho documents them.
pub const VERSIONS: &[&str] = &["v2", "v2.1", "v3", "v4", "v5", "v6", "v7", "v8"];

/// Whether a version requires the `fields` parameter on record reads (from v3; optional in v2 and v2.1,
/// per shared/crm-apis.md §2.2).
fn fields_required(version: &str) -> bool {
    !matches!(version, "v2" | "v2.1")
}

/// A running simulator.
pub type RunningZohoSim = RunningSim<ZohoSim>;

/// Starts a simulator.
pub async fn start(options: ZohoSimOptions) -> std::io::Result<RunningZohoSim> {
    let state = Arc::new(ZohoSim::new(&options));
    RunningSim::serve(options.addr, state.clone(), router(state)).await
}

/// The `[connections.NAME]` TOML for a connection to a simulator at `base_url`.
pub fn connection_toml(name: &str, base_url: &str) -> String {
    format!(
        "[connections.{name}]\nkind = \"zoho\"\naccounts_url = \"{base_url}\"\napi_domain = \"{base_url}\"\n\
         auth = {{ client_id = \"{CLIENT_ID}\", client_secret = {{ env = \"{ENV_CLIENT_SECRET}\" }}, refresh_token = {{ env = \"{ENV_REFRESH_TOKEN}\" }} }}\n\
         webhook = {{ token = {{ env = \"{ENV_WEBHOOK_TOKEN}\" }} }}\n"
    )
}

/// The secrets `connection_toml` refers to.
pub fn demo_secrets() -> Vec<(&'static str, &'static str)> {
    vec![(ENV_CLIENT_SECRET, CLIENT_SECRET), (ENV_REFRESH_TOKEN, REFRESH_TOKEN), (ENV_WEBHOOK_TOKEN, WEBHOOK_TOKEN)]
}

fn zoho_time(seconds: i64) -> String {
    let offset = jiff::tz::Offset::from_seconds(ORG_OFFSET_SECONDS).unwrap_or(jiff::tz::Offset::UTC);
    let Ok(instant) = jiff::Timestamp::from_second(seconds) else { return String::new() };
    offset.to_datetime(instant).strftime("%Y-%m-%dT%H:%M:%S+05:30").to_string()
}

fn error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    (status, axum::Json(json!({"code": code, "details": details, "message": message, "status": "error"})))
        .into_response()
}

impl ZohoSim {
    fn new(options: &ZohoSimOptions) -> Self {
        let sim = Self {
            inner: Mutex::new(Inner {
                modules: schema::MODULES.iter().map(|(module, ..)| (*module, BTreeMap::new())).collect(),
                products: Vec::new(),
                tokens: HashSet::new(),
                clock: 0,
                next_id: 4_150_868_000_000_000_000,
                snapshots: HashMap::new(),
                requested_fields: Vec::new(),
                watch: None,
            }),
            faults: Faults::new(&options.faults),
            counters: Counters::default(),
            progress: tokio::sync::watch::channel(0).0,
            calls: AtomicU64::new(0),
            multi_currency: options.multi_currency,
        };
        sim.seed(&options.world, options.shared_modified_time);
        sim
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `fields=` lists requested, oldest first (privacy tests).
    pub fn requested_fields(&self) -> Vec<String> {
        self.lock().requested_fields.clone()
    }

    /// Live record ids of an entity.
    pub fn live_ids(&self, entity: Entity) -> Vec<String> {
        self.lock()
            .modules
            .get(wire::module(entity))
            .map(|rows| rows.iter().filter(|(_, row)| row.deleted.is_none()).map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// A live record's fields.
    pub fn row(&self, entity: Entity, id: &str) -> Option<Map<String, Value>> {
        self.lock()
            .modules
            .get(wire::module(entity))?
            .get(id)
            .filter(|row| row.deleted.is_none())
            .map(|row| row.fields.clone())
    }

    /// A live record's `Modified_Time` (tests).
    pub fn modified_time(&self, entity: Entity, id: &str) -> Option<Timestamp> {
        let inner = self.lock();
        let row = inner.modules.get(wire::module(entity))?.get(id).filter(|row| row.deleted.is_none())?;
        Timestamp::from_unix_seconds(row.modified)
    }

    /// Edits a record as a user would (new `Modified_Time`).
    pub fn edit(&self, entity: Entity, id: &str, changes: &[(&str, Value)]) -> bool {
        let stamp = self.lock().tick();
        self.edit_at_second(entity, id, changes, stamp)
    }

    /// Edits a record as a user would at `at` (`Modified_Time` has second precision, so tests that
    /// need an edit in a later second say when, instead of waiting). Later writes are not stamped
    /// before it.
    pub fn edit_at(&self, entity: Entity, id: &str, changes: &[(&str, Value)], at: Timestamp) -> bool {
        self.edit_at_second(entity, id, changes, at.unix_millis().div_euclid(1000))
    }

    fn edit_at_second(&self, entity: Entity, id: &str, changes: &[(&str, Value)], stamp: i64) -> bool {
        let mut inner = self.lock();
        inner.clock = inner.clock.max(stamp);
        let Some(row) = inner.modules.get_mut(wire::module(entity)).and_then(|rows| rows.get_mut(id)) else {
            return false;
        };
        for (name, value) in changes {
            row.fields.insert((*name).to_owned(), value.clone());
        }
        row.modified = stamp;
        true
    }

    /// Creates a record as a user would (new id, `Created_Time` and `Modified_Time` now).
    pub fn create(&self, entity: Entity, fields: Value) -> String {
        let mut inner = self.lock();
        let stamp = inner.tick();
        inner.put(wire::module(entity), fields, stamp)
    }

    /// The id of a product by name.
    pub fn product_id(&self, name: &str) -> Option<String> {
        self.lock().products.iter().find(|(_, product, _)| product == name).map(|(id, _, _)| id.clone())
    }

    /// Watches the number of API calls served.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// The last watch subscription received.
    pub fn watch_subscription(&self) -> Option<Value> {
        self.lock().watch.clone()
    }
}

impl Inner {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    fn tick(&mut self) -> i64 {
        // Second granularity: writes in the same second share a Modified_Time.
        self.clock = (Timestamp::now().unix_millis() / 1000).max(self.clock);
        self.clock
    }

    fn put(&mut self, module: &'static str, fields: Value, modified: i64) -> String {
        let id = self.new_id();
        let mut fields = match fields {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        fields.entry("Created_Time").or_insert_with(|| json!(zoho_time(modified)));
        if let Some(rows) = self.modules.get_mut(module) {
            rows.insert(id.clone(), Row { fields, modified, deleted: None });
        }
        id
    }
}

impl Simulated for ZohoSim {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn stats(&self) -> SimStats {
        let mut stats = self.counters.snapshot();
        for (module, rows) in &self.lock().modules {
            stats
                .records
                .insert((*module).to_owned(), rows.values().filter(|row| row.deleted.is_none()).count() as u64);
        }
        stats
    }
}

#[cfg(feature = "testkit")]
impl crate::testkit::SimControl for ZohoSim {
    fn count(&self, entity: Entity) -> usize {
        self.live_ids(entity).len()
    }

    fn touch(&self, entity: Entity, n: usize) -> Vec<crate::canonical::ExternalId> {
        let ids: Vec<String> = self.live_ids(entity).into_iter().take(n).collect();
        let field = match entity {
            Entity::Account => "Account_Name",
            Entity::Lead => "Company",
            Entity::Opportunity => "Deal_Name",
            Entity::Order => "Description",
        };
        for id in &ids {
            let current = self
                .row(entity, id)
                .and_then(|row| row.get(field).and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            self.edit(entity, id, &[(field, json!(format!("{current} (edited)")))]);
        }
        ids.into_iter().map(crate::canonical::ExternalId::new).collect()
    }

    fn delete(&self, entity: Entity, n: usize) -> Vec<crate::canonical::ExternalId> {
        let ids: Vec<String> = self.live_ids(entity).into_iter().rev().take(n).collect();
        let mut inner = self.lock();
        for id in &ids {
            let stamp = inner.tick();
            if let Some(row) = inner.modules.get_mut(wire::module(entity)).and_then(|rows| rows.get_mut(id)) {
                row.deleted = Some(stamp);
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

type Shared = State<Arc<ZohoSim>>;

/// The simulator's routes.
pub fn router(state: Arc<ZohoSim>) -> Router {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/crm/{version}/settings/fields", get(fields))
        .route("/crm/{version}/settings/modules", get(modules))
        .route("/crm/{version}/settings/modules/{module}", get(module))
        .route("/crm/{version}/org", get(org))
        .route("/crm/{version}/org/currencies", get(currencies))
        .route("/crm/{version}/actions/watch", post(watch).patch(watch))
        .route("/crm/{version}/{module}", get(records).delete(delete_records).put(update).post(insert))
        .route("/crm/{version}/{module}/deleted", get(deleted))
        .route("/crm/{version}/{module}/upsert", post(upsert))
        .with_state(state.clone())
        .merge(crate::sim::admin_routes(state))
}

impl ZohoSim {
    async fn gate(&self, headers: &HeaderMap, version: &str) -> Result<(), Response> {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.progress.send_replace(calls);
        if !VERSIONS.contains(&version) {
            // Zoho's answer to a path it does not serve (shared/crm-apis.md §2.6).
            return Err(error(
                StatusCode::NOT_FOUND,
                "INVALID_URL_PATTERN",
                "Please check if the URL trying to access is a correct one",
                json!({}),
            ));
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Zoho-oauthtoken "));
        let valid = token.is_some_and(|token| self.lock().tokens.contains(token));
        let invalid_token = || error(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", "invalid oauth token", json!({}));
        if !valid {
            self.counters.faulted.fetch_add(1, Ordering::SeqCst);
            return Err(invalid_token());
        }
        let injected = self.faults.on_api_call().await;
        if injected != Injected::None {
            self.counters.faulted.fetch_add(1, Ordering::SeqCst);
        }
        match injected {
            Injected::None => Ok(()),
            Injected::TokenExpired => {
                self.lock().tokens.clear();
                Err(invalid_token())
            }
            Injected::RateLimited | Injected::DailyLimit => {
                Err(error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "API limit exceeded", json!({})))
            }
            // 429 TOO_MANY_REQUESTS without Retry-After (crm-apis.md §2.6); the window's reset as an
            // epoch in milliseconds in X-RATELIMIT-RESET (api-evangelist/zoho rate-limits.yml, after
            // zoho.com/crm/developer/docs/api/v2/api-limits.html).
            Injected::Throttled { retry_after } => {
                let reset = Timestamp::now().saturating_add(retry_after, true).unix_millis();
                let mut response =
                    error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "API limit exceeded", json!({}));
                let limit = self.faults.settings().throttle_per_second;
                for (name, value) in [
                    ("x-ratelimit-limit", limit.to_string()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", reset.to_string()),
                ] {
                    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                        response.headers_mut().insert(name, value);
                    }
                }
                Err(response)
            }
            Injected::ServerError => {
                Err(error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal Server Error", json!({})))
            }
        }
    }

    /// Admits a call to a module's endpoint: authentication and faults ([`Self::gate`]), the call
    /// counter, and the module name (`INVALID_MODULE` when it names none). Errors carry the credits header.
    async fn admit(
        &self,
        headers: &HeaderMap,
        version: &str,
        counter: &AtomicU64,
        module: &str,
    ) -> Result<&'static str, Response> {
        self.gate(headers, version).await.map_err(|response| self.with_credits(response))?;
        counter.fetch_add(1, Ordering::SeqCst);
        wire::entity_of(module).map(wire::module).ok_or_else(|| self.with_credits(invalid_module(json!({}))))
    }

    fn with_credits(&self, mut response: Response) -> Response {
        let used = self.calls.load(Ordering::SeqCst);
        if let Ok(value) = HeaderValue::from_str(&50_000u64.saturating_sub(used).to_string()) {
            response.headers_mut().insert("x-api-credits-remaining", value);
        }
        response
    }
}

async fn token(
    State(sim): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    sim.counters.token.fetch_add(1, Ordering::SeqCst);
    let mut params: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    params.extend(query);
    // Zoho answers token errors with HTTP 200 and an `error` body.
    let refused = |code: &str| (StatusCode::OK, axum::Json(json!({"error": code}))).into_response();
    if params.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return refused("unsupported_grant_type");
    }
    if params.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || params.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return refused("invalid_client");
    }
    if params.get("refresh_token").map(String::as_str) != Some(REFRESH_TOKEN) {
        return refused("invalid_code");
    }
    let access = format!("1000.{}", uuid::Uuid::new_v4().simple());
    sim.lock().tokens.insert(access.clone());
    sim.faults.token_issued();
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    axum::Json(json!({"access_token": access, "api_domain": format!("http://{host}"), "token_type": "Bearer", "expires_in": 3600})).into_response()
}

fn invalid_module(details: Value) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_MODULE", "the module name given seems to be invalid", details)
}

fn module_name(name: &str) -> Option<&'static str> {
    schema::MODULES.iter().map(|(module, ..)| *module).find(|module| *module == name)
}

impl ZohoSim {
    /// A module's fields in this org.
    fn schema(&self, module: &str) -> Vec<schema::FieldSpec> {
        schema::schema(module, self.multi_currency)
    }
}

/// `GET /crm/{v}/org`: the org's details, shaped like the documented example
/// (zoho/crm-oas v8.0/org/operations/getOrganization/examples/response-200-orggetresponse.md):
/// `mc_status` says whether multi-currency is on, `currency` names the org currency ("Euro - EUR").
async fn org(State(sim): Shared, headers: HeaderMap, Path(version): Path<String>) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let body = json!({"org": [{
        "id": "4150868000000000001", "company_name": "Zylker (simulated)", "alias": "zylker", "domain_name": "zylker",
        "type": "production", "country": "Germany", "country_code": "DE", "iso_code": "DE", "time_zone": "Asia/Kolkata",
        "mc_status": sim.multi_currency, "currency": format!("Euro - {ORG_CURRENCY}"), "currency_symbol": "€",
        "currency_locale": "de_DE", "primary_email": "admin@zylker.example", "max_per_page": wire::PER_PAGE,
        "license_details": {"paid": true, "paid_type": "enterprise", "users_license_purchased": 10,
                            "trial_type": null, "trial_expiry": null, "paid_expiry": null, "portal_users_license_purchased": 0},
        "hipaa_compliance_enabled": false, "privacy_settings": false, "zgid": "4150868", "created_time": "2020-01-01T00:00:00+05:30",
    }]});
    sim.with_credits(axum::Json(body).into_response())
}

/// `GET /crm/{v}/org/currencies`: the active currencies (documented example
/// zoho/crm-oas v8.0/currencies/operations/getCurrencies/examples/response-200-sample.md), or 403
/// `CURRENCIES_NOT_ENABLED` in an org without multi-currency (response-403-currenciesnotenabled.md).
async fn currencies(State(sim): Shared, headers: HeaderMap, Path(version): Path<String>) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    if !sim.multi_currency {
        return sim.with_credits(error(
            StatusCode::FORBIDDEN,
            "CURRENCIES_NOT_ENABLED",
            "Multi currency is not enabled",
            json!({}),
        ));
    }
    let currencies: Vec<Value> = schema::CURRENCIES
        .iter()
        .enumerate()
        .map(|(index, code)| {
            json!({"iso_code": code, "name": code, "symbol": code, "is_base": *code == ORG_CURRENCY, "is_active": true,
                   "exchange_rate": if *code == ORG_CURRENCY { "1.000000000" } else { "1.100000000" },
                   "exchange_rate_auto_update": false, "prefix_symbol": true, "id": format!("415086800000004{index:04}"),
                   "format": {"numeral_system": "International", "decimal_places": "2", "decimal_separator": "Period", "thousand_separator": "Comma"}})
        })
        .collect();
    sim.with_credits(axum::Json(json!({"currencies": currencies})).into_response())
}
