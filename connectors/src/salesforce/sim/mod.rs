//! An in-process Salesforce simulator (axum) for `demo`, `bench`, `simulate salesforce` and tests.
//!
//! It serves what the connector and common third-party clients (simple-salesforce, Singer
//! tap-salesforce, Airbyte) use, with Salesforce's paths (with or without a trailing slash), headers,
//! JSON shapes, paging and error bodies: the OAuth token endpoint (refresh-token, client-credentials
//! and JWT bearer grants, optional refresh-token rotation), the versions list, a version's
//! resources, `limits`, the global describe and `describe` with the documented field attributes,
//! `query`/`queryAll` with `nextRecordsUrl` locators and `batchSize`, Bulk API 2.0 query jobs,
//! sObject Collections upsert by external id, update and delete (≤ 200 records, per-record results and
//! validation errors), the Composite resource (≤ 25 subrequests run in order under one lock,
//! `@{ref.field}` references, `allOrNone` rolling every write back), and `Sforce-Limit-Info` on every response. It parses a SOQL subset strictly
//! (`MALFORMED_QUERY`, `INVALID_FIELD`) and refuses writes as the org would: unknown or read-only
//! fields, restricted picklists, missing required fields, orders inserted in an Activated status,
//! order products deleted from an activated order.
//! An org is multi-currency (`CurrencyIsoCode` on Opportunity and Order) or single-currency (the
//! default in Salesforce and for `crmsync simulate`: no such field, amounts in the corporate currency).
//!
//! Org customisations it models (documented so nobody mistakes them for standard Salesforce): Order has
//! a `LeadSource` picklist (the sales channel), a `Crmsync_Order_Number__c` text field (the canonical
//! order number; the standard `OrderNumber` is an auto-number), and Order `Status` values Shipped,
//! Delivered, Invoiced and Cancelled besides Draft and Activated. Every object has the external-id
//! field `Crmsync_Id__c` (Text(36), unique).
//!
//! Layout: `auth` (token endpoint, JWT bearer), `schema` (objects, fields, describe), `seed` (the
//! world rendered as rows), `discovery` (versions, resources, limits), `soql` (the SOQL parser), `query` (query/queryAll paging), `bulk` (Bulk API
//! 2.0 query jobs), `collections` (sObject Collections writes), `composite` (the Composite resource).

mod auth;
mod bulk;
mod collections;
mod composite;
mod discovery;
mod query;
mod schema;
mod seed;
mod soql;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use super::wire;
use crate::canonical::{Entity, Timestamp, VendorKind};
use crate::sim::{Counters, FaultSettings, Faults, Injected, RunningSim, SimStats, Simulated, World};

/// Credentials the simulator accepts.
pub const CLIENT_ID: &str = "crmsync-demo";
/// Client secret.
pub const CLIENT_SECRET: &str = "demo-client-secret";
/// Initial refresh token.
pub const REFRESH_TOKEN: &str = "demo-refresh-token";
/// Org id of the simulated org.
pub const ORGANIZATION_ID: &str = "00D000000000001AAA";
/// The user the JWT bearer flow may act as.
pub const JWT_USERNAME: &str = "integration@crmsync.example";
/// Outbound Message shared secret.
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret";
/// Env variable names `connection_toml` refers to.
pub const ENV_CLIENT_SECRET: &str = "CRMSYNC_DEMO_SF_CLIENT_SECRET";
/// Env variable of the refresh token.
pub const ENV_REFRESH_TOKEN: &str = "CRMSYNC_DEMO_SF_REFRESH_TOKEN";
/// Env variable of the webhook secret.
pub const ENV_WEBHOOK_SECRET: &str = "CRMSYNC_DEMO_SF_WEBHOOK_SECRET";
const DAILY_LIMIT: u64 = 100_000;
const API_VERSION: &str = "v62.0";

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SalesforceSimOptions {
    /// Where to listen (`127.0.0.1:0`: any free port).
    pub addr: SocketAddr,
    /// Seed data (records whose presence includes Salesforce).
    pub world: World,
    /// Initial faults.
    pub faults: FaultSettings,
    /// Issue a new refresh token on every refresh (the old one stops working).
    pub rotate_refresh_tokens: bool,
    /// The first K seeded records of each object share one `SystemModstamp`.
    pub shared_modstamp: usize,
    /// Which slice of the world this org holds (a [`World::bit`]); the demo runs two orgs with
    /// different slices so the same customers appear in both.
    pub presence: u8,
    /// Whether the org has multi-currency enabled (records carry `CurrencyIsoCode`). Salesforce
    /// orgs are single-currency unless an admin enables it.
    pub multi_currency: bool,
    /// The corporate currency (`Organization.DefaultCurrencyIsoCode`); in a single-currency org
    /// every amount is in it.
    pub corporate_currency: String,
}

impl SalesforceSimOptions {
    /// Options serving `world` on a free loopback port.
    pub fn with_world(world: World) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            world,
            faults: FaultSettings::default(),
            rotate_refresh_tokens: false,
            shared_modstamp: 0,
            presence: World::bit(VendorKind::Salesforce),
            multi_currency: true,
            corporate_currency: "EUR".to_owned(),
        }
    }

    /// A single-currency org keeping every amount in `corporate_currency` (no `CurrencyIsoCode`).
    pub fn single_currency(mut self, corporate_currency: &str) -> Self {
        self.multi_currency = false;
        corporate_currency.clone_into(&mut self.corporate_currency);
        self
    }
}

#[derive(Debug, Clone)]
struct Row {
    fields: Map<String, Value>,
    modstamp: i64,
    deleted: bool,
    items: Vec<Map<String, Value>>,
}

#[derive(Debug, Default, Clone)]
struct Table {
    rows: BTreeMap<String, Row>,
    by_external: HashMap<String, String>,
}

#[derive(Debug)]
struct Locator {
    object: &'static str,
    ids: Vec<String>,
    fields: Vec<String>,
    items: bool,
    all: bool,
    batch: usize,
}

#[derive(Debug)]
struct BulkJobState {
    object: &'static str,
    ids: Vec<String>,
    fields: Vec<String>,
    operation: String,
    complete: bool,
}

struct Inner {
    jobs: HashMap<String, BulkJobState>,
    jobs_created: u64,
    tables: BTreeMap<&'static str, Table>,
    tokens: HashSet<String>,
    refresh_token: String,
    clock: i64,
    next_id: u64,
    locators: HashMap<String, Locator>,
    queries: Vec<String>,
    /// Orders written since the last commit (a request's end).
    touched: BTreeSet<String>,
    /// Every committed state of an order a reader could see: `(Id, Status)`, oldest first.
    order_history: Vec<(String, Option<String>)>,
    /// The composite requests received: each one's subrequests as `(referenceId, method, url)`.
    composites: Vec<Vec<(String, String, String)>>,
}

/// The simulator's state.
pub struct SalesforceSim {
    /// The connected app's certificate key (generated on first use: RSA key generation is slow).
    jwt_key: std::sync::OnceLock<Option<aws_lc_rs::signature::RsaKeyPair>>,
    inner: Mutex<Inner>,
    faults: Faults,
    counters: Counters,
    /// API calls served so far (tests wait on it instead of sleeping).
    progress: tokio::sync::watch::Sender<u64>,
    api_usage: AtomicU64,
    rotate: bool,
    multi_currency: bool,
    corporate_currency: String,
}

/// A running simulator.
pub type RunningSalesforceSim = RunningSim<SalesforceSim>;

/// Starts a simulator.
pub async fn start(options: SalesforceSimOptions) -> std::io::Result<RunningSalesforceSim> {
    let state = Arc::new(SalesforceSim::new(&options));
    RunningSim::serve(options.addr, state.clone(), router(state)).await
}

/// The `[connections.NAME]` TOML for a connection to a simulator at `base_url`.
pub fn connection_toml(name: &str, base_url: &str) -> String {
    format!(
        "[connections.{name}]\nkind = \"salesforce\"\nlogin_url = \"{base_url}\"\n\
         auth = {{ flow = \"refresh_token\", client_id = \"{CLIENT_ID}\", client_secret = {{ env = \"{ENV_CLIENT_SECRET}\" }}, refresh_token = {{ env = \"{ENV_REFRESH_TOKEN}\" }} }}\n\
         webhook = {{ organization_id = \"{ORGANIZATION_ID}\", secret = {{ env = \"{ENV_WEBHOOK_SECRET}\" }} }}\n\
         mapping = {{ order_statuses = {{ \"Shipped\" = \"shipped\", \"Delivered\" = \"delivered\", \"Invoiced\" = \"invoiced\", \"Cancelled\" = \"cancelled\" }} }}\n\
         push_defaults = {{ \"Lead.Company\" = \"[not provided]\" }}\n"
    )
}

/// The secrets `connection_toml` refers to, as `(variable, value)`.
pub fn demo_secrets() -> Vec<(&'static str, &'static str)> {
    vec![(ENV_CLIENT_SECRET, CLIENT_SECRET), (ENV_REFRESH_TOKEN, REFRESH_TOKEN), (ENV_WEBHOOK_SECRET, WEBHOOK_SECRET)]
}

fn rest_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!([{"message": message, "errorCode": code}]))).into_response()
}

impl SalesforceSim {
    fn new(options: &SalesforceSimOptions) -> Self {
        let sim = Self {
            jwt_key: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                jobs: HashMap::new(),
                jobs_created: 0,
                tables: ["Account", "Lead", "Opportunity", "Order", "Pricebook2", "PricebookEntry"]
                    .into_iter()
                    .map(|name| (name, Table::default()))
                    .collect(),
                tokens: HashSet::new(),
                refresh_token: REFRESH_TOKEN.to_owned(),
                clock: 0,
                next_id: 0,
                locators: HashMap::new(),
                queries: Vec::new(),
                touched: BTreeSet::new(),
                order_history: Vec::new(),
                composites: Vec::new(),
            }),
            faults: Faults::new(&options.faults),
            counters: Counters::default(),
            progress: tokio::sync::watch::channel(0).0,
            api_usage: AtomicU64::new(0),
            rotate: options.rotate_refresh_tokens,
            multi_currency: options.multi_currency,
            corporate_currency: options.corporate_currency.clone(),
        };
        sim.seed(&options.world, options.shared_modstamp, options.presence);
        sim
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops every open query locator (as Salesforce does after 15 minutes of inactivity).
    pub fn expire_locators(&self) {
        self.lock().locators.clear();
    }

    /// Watches the number of API calls served (tests wait for progress instead of sleeping).
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Bulk API 2.0 query jobs created so far.
    pub fn bulk_jobs_created(&self) -> u64 {
        self.lock().jobs_created
    }

    /// The SOQL queries received, oldest first (for tests of what was requested).
    pub fn queries(&self) -> Vec<String> {
        self.lock().queries.clone()
    }

    /// Returns a live row's fields (tests).
    pub fn row(&self, entity: Entity, id: &str) -> Option<Map<String, Value>> {
        self.lock()
            .tables
            .get(wire::object(entity))?
            .rows
            .get(id)
            .filter(|row| !row.deleted)
            .map(|row| row.fields.clone())
    }

    /// A live row's `SystemModstamp` (tests).
    pub fn modstamp(&self, entity: Entity, id: &str) -> Option<Timestamp> {
        let inner = self.lock();
        let row = inner.tables.get(wire::object(entity))?.rows.get(id).filter(|row| !row.deleted)?;
        Timestamp::from_unix_millis(row.modstamp)
    }

    /// Returns the ids of live rows (tests).
    pub fn live_ids(&self, entity: Entity) -> Vec<String> {
        self.lock()
            .tables
            .get(wire::object(entity))
            .map(|table| table.rows.iter().filter(|(_, row)| !row.deleted).map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// Sets fields of a row as a user editing in Salesforce would (new `SystemModstamp`).
    pub fn edit(&self, entity: Entity, id: &str, changes: &[(&str, Value)]) -> bool {
        let mut inner = self.lock();
        let stamp = inner.tick();
        let Some(row) = inner.tables.get_mut(wire::object(entity)).and_then(|table| table.rows.get_mut(id)) else {
            return false;
        };
        for (name, value) in changes {
            row.fields.insert((*name).to_owned(), value.clone());
        }
        row.modstamp = stamp;
        if entity == Entity::Order {
            inner.touched.insert(id.to_owned());
        }
        inner.commit();
        true
    }

    /// Every state of an order that was committed, and so could be read, oldest first: `(Id,
    /// Status)` after each request that wrote the order (a composite request's orders once, at its
    /// end, and never when it was rolled back).
    pub fn order_history(&self) -> Vec<(String, Option<String>)> {
        self.lock().order_history.clone()
    }

    /// The composite requests received, oldest first: each one's subrequests as `(referenceId,
    /// method, url)` (tests of what was sent together).
    pub fn composites(&self) -> Vec<Vec<(String, String, String)>> {
        self.lock().composites.clone()
    }

    /// Returns the current refresh token (rotation tests).
    pub fn current_refresh_token(&self) -> String {
        self.lock().refresh_token.clone()
    }
}

impl Inner {
    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:012}AAA", self.next_id)
    }

    /// Ends a request: the orders it wrote become visible in their new state.
    fn commit(&mut self) {
        for id in std::mem::take(&mut self.touched) {
            let status = self
                .tables
                .get("Order")
                .and_then(|table| table.rows.get(&id))
                .and_then(|row| row.fields.get("Status"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            self.order_history.push((id, status));
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock = Timestamp::now().unix_millis().max(self.clock + 1);
        self.clock
    }

    fn put_seed(
        &mut self,
        object: &'static str,
        id: String,
        mut fields: Map<String, Value>,
        modstamp: i64,
        items: Vec<Map<String, Value>>,
    ) {
        // Seeded leads and deals carry their world creation time; the rest are created when seeded.
        fields.entry("CreatedDate").or_insert_with(|| json!(stamp_text(modstamp)));
        if let Some(table) = self.tables.get_mut(object) {
            table.rows.insert(id, Row { fields, modstamp, deleted: false, items });
        }
    }
}

fn stamp_text(millis: i64) -> String {
    Timestamp::from_unix_millis(millis).map(|stamp| stamp.to_salesforce()).unwrap_or_default()
}

impl Simulated for SalesforceSim {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn stats(&self) -> SimStats {
        let mut stats = self.counters.snapshot();
        let inner = self.lock();
        for (name, table) in inner.tables.iter().filter(|(name, _)| wire::object_entity(name).is_some()) {
            stats.records.insert((*name).to_owned(), table.rows.values().filter(|row| !row.deleted).count() as u64);
        }
        stats
    }
}

#[cfg(feature = "testkit")]
impl crate::testkit::SimControl for SalesforceSim {
    fn count(&self, entity: Entity) -> usize {
        self.live_ids(entity).len()
    }

    fn touch(&self, entity: Entity, n: usize) -> Vec<crate::canonical::ExternalId> {
        let ids: Vec<String> = self.live_ids(entity).into_iter().take(n).collect();
        let field = match entity {
            Entity::Lead => "Company",
            Entity::Order => "Description",
            _ => "Name",
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
            if let Some(row) = inner.tables.get_mut(wire::object(entity)).and_then(|table| table.rows.get_mut(id)) {
                row.deleted = true;
                row.modstamp = stamp;
            }
            if entity == Entity::Order {
                inner.touched.insert(id.to_string());
            }
        }
        inner.commit();
        ids.into_iter().map(crate::canonical::ExternalId::new).collect()
    }

    fn stats(&self) -> SimStats {
        Simulated::stats(self)
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }
}

type Shared = State<Arc<SalesforceSim>>;

/// The simulator's routes.
pub fn router(state: Arc<SalesforceSim>) -> Router {
    type Route = axum::routing::MethodRouter<Arc<SalesforceSim>>;
    // Every path is served with and without a trailing slash, as Salesforce does and as clients
    // use them (simple-salesforce requests `query/`, `limits/` and `sobjects/X/describe/`).
    fn both(router: Router<Arc<SalesforceSim>>, path: &str, route: Route) -> Router<Arc<SalesforceSim>> {
        router.route(path, route.clone()).route(&format!("{path}/"), route)
    }
    let data = "/services/data/{version}";
    let mut api = Router::new().route("/services/oauth2/token", post(auth::token));
    api = both(api, "/services/data", get(discovery::versions));
    api = both(api, data, get(discovery::resources));
    api = both(api, &format!("{data}/limits"), get(discovery::limits));
    api = both(api, &format!("{data}/sobjects"), get(schema::describe_global));
    api = both(api, &format!("{data}/sobjects/{{object}}/describe"), get(schema::describe));
    api = both(api, &format!("{data}/query"), get(query::query));
    api = both(api, &format!("{data}/queryAll"), get(query::query_all));
    api = both(api, &format!("{data}/query/{{locator}}"), get(query::query_more));
    api = both(api, &format!("{data}/queryAll/{{locator}}"), get(query::query_more));
    api = both(api, &format!("{data}/composite/sobjects/{{object}}/{{field}}"), patch(collections::upsert));
    api = both(api, &format!("{data}/composite"), post(composite::composite));
    api = both(api, &format!("{data}/jobs/query"), post(bulk::create_job));
    api = both(api, &format!("{data}/jobs/query/{{job}}"), get(bulk::job_info).delete(bulk::delete_job));
    api = both(api, &format!("{data}/jobs/query/{{job}}/results"), get(bulk::job_results));
    api = both(
        api,
        &format!("{data}/composite/sobjects"),
        axum::routing::delete(collections::delete_records).patch(collections::update).post(collections::create),
    );
    api.with_state(state.clone()).merge(crate::sim::admin_routes(state))
}

impl SalesforceSim {
    /// Authenticates an API call and applies faults; `Err` is the response to send.
    async fn gate(&self, headers: &HeaderMap) -> Result<(), Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let valid = token.is_some_and(|token| self.lock().tokens.contains(token));
        if !valid {
            self.counters.faulted.fetch_add(1, Ordering::SeqCst);
            return Err(rest_error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid"));
        }
        match self.faults.on_api_call().await {
            Injected::None => {}
            Injected::TokenExpired => {
                self.lock().tokens.clear();
                self.counters.faulted.fetch_add(1, Ordering::SeqCst);
                return Err(rest_error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid"));
            }
            // One error code for two limits (crm-apis.md §1.7): the concurrent-request limit is
            // transient; "TotalRequests" is the org's 24 h allocation. No Retry-After on either.
            Injected::RateLimited | Injected::Throttled { .. } => {
                self.counters.faulted.fetch_add(1, Ordering::SeqCst);
                return Err(rest_error(
                    StatusCode::FORBIDDEN,
                    "REQUEST_LIMIT_EXCEEDED",
                    "ConcurrentRequests (Concurrent API Requests) Limit exceeded.",
                ));
            }
            Injected::DailyLimit => {
                self.counters.faulted.fetch_add(1, Ordering::SeqCst);
                return Err(rest_error(
                    StatusCode::FORBIDDEN,
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                ));
            }
            Injected::ServerError => {
                self.counters.faulted.fetch_add(1, Ordering::SeqCst);
                return Err(rest_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN_EXCEPTION",
                    "An unexpected error occurred. Please include this ErrorId if you contact support: 1958426129-5823 (-1307183285)",
                ));
            }
        }
        Ok(())
    }

    fn with_limit_info(&self, mut response: Response) -> Response {
        let used = self.api_usage.fetch_add(1, Ordering::SeqCst) + 1;
        self.progress.send_replace(used);
        if let Ok(value) = HeaderValue::from_str(&format!("api-usage={used}/{DAILY_LIMIT}")) {
            response.headers_mut().insert("sforce-limit-info", value);
        }
        response
    }
}

fn object_name(name: &str) -> Option<&'static str> {
    wire::OBJECTS
        .iter()
        .map(|(_, object, _)| *object)
        .chain(schema::CATALOG_OBJECTS.iter().copied())
        .find(|object| *object == name)
}

/// The standard price book of the simulated org.
pub(super) const STANDARD_PRICEBOOK_ID: &str = "01s000000000001AAA";
