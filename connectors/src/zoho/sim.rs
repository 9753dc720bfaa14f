//! An in-process Zoho CRM simulator (axum): the accounts server's token endpoint (errors as HTTP 200
//! bodies, like Zoho), `settings/fields`, the records API with `fields` (required, ≤ 50),
//! `per_page` ≤ 200, `sort_by=Modified_Time`, `If-Modified-Since` (304 when nothing changed, 204 when
//! empty), page numbers up to 2,000 records (`DISCRETE_PAGINATION_LIMIT_EXCEEDED` beyond) and
//! `page_token` chains up to 100,000 (`PAGINATION_LIMIT_EXCEEDED`), the deleted-records API, `upsert`
//! with `duplicate_check_fields` (≤ 100 records, per-record codes, 201/200/207/400), Products,
//! `actions/watch`, and the fault switches. `Modified_Time` has second granularity and is rendered in
//! the org's time zone (`+05:30`), as Zoho does.
//!
//! Org customisations it models: every module has a unique text field `Crmsync_Id` (the external id);
//! Sales_Orders carry `Lead_Source` (the sales channel); `Due_Date` is the order date.

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
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::wire;
use crate::canonical::{Entity, OrderStatus, Timestamp, VendorKind, Vocabulary, decimal_json};
use crate::sim::{Counters, FaultSettings, Faults, Injected, RunningSim, SimStats, Simulated, World, truncate};

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
}

impl ZohoSimOptions {
    /// Options serving `world` on a free loopback port.
    pub fn with_world(world: World) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            world,
            faults: FaultSettings::default(),
            shared_modified_time: 0,
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

struct FieldSpec {
    name: &'static str,
    kind: &'static str,
    writable: bool,
    required: bool,
    picklist: &'static [&'static str],
}

const fn field(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: false, picklist: &[] }
}

const fn read_only(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: false, required: false, picklist: &[] }
}

const fn required(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: true, picklist: &[] }
}

const fn picklist(name: &'static str, required: bool, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec { name, kind: "picklist", writable: true, required, picklist: values }
}

const STAGES: &[&str] = &[
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Identify Decision Makers",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed-Lost to Competition",
];
const LEAD_SOURCES: &[&str] =
    &["Web", "Phone Inquiry", "Partner Referral", "Partner", "Purchased List", "Online Store", "Other", "-None-"];
const SO_STATUSES: &[&str] = &["Created", "Approved", "Delivered", "Cancelled"];

fn schema(module: &str) -> Vec<FieldSpec> {
    let mut fields = vec![read_only("id", "bigint")];
    match module {
        "Accounts" => fields.extend([
            required("Account_Name", "text"),
            field("Account_Number", "text"),
            field("Website", "website"),
            field("Industry", "text"),
            field("Billing_Country", "text"),
            read_only("Owner", "ownerlookup"),
        ]),
        "Leads" => fields.extend([
            field("First_Name", "text"),
            required("Last_Name", "text"),
            field("Company", "text"),
            field("Email", "email"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            field("Lead_Status", "picklist"),
        ]),
        "Deals" => fields.extend([
            required("Deal_Name", "text"),
            field("Account_Name", "lookup"),
            field("Amount", "currency"),
            field("Currency", "picklist"),
            picklist("Stage", true, STAGES),
            field("Probability", "integer"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            required("Closing_Date", "date"),
        ]),
        _ => fields.extend([
            required("Subject", "text"),
            required("Account_Name", "lookup"),
            field("Deal_Name", "lookup"),
            picklist("Status", false, SO_STATUSES),
            field("Due_Date", "date"),
            read_only("Grand_Total", "currency"),
            field("Currency", "picklist"),
            field("Description", "textarea"),
            picklist("Lead_Source", false, LEAD_SOURCES),
            required("Ordered_Items", "subform"),
        ]),
    }
    fields.extend([
        read_only("Created_Time", "datetime"),
        read_only("Modified_Time", "datetime"),
        field("Crmsync_Id", "text"),
    ]);
    fields
}

/// A seeded record's fields with its world creation time (never after its first modification).
fn with_created(mut fields: Value, created: Timestamp, modified: i64) -> Value {
    fields["Created_Time"] = json!(zoho_time((created.unix_millis() / 1000).min(modified)));
    fields
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
                modules: wire::MODULES.iter().map(|(_, module)| (*module, BTreeMap::new())).collect(),
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
        };
        sim.seed(&options.world, options.shared_modified_time);
        sim
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn seed(&self, world: &World, shared: usize) {
        let bit = World::bit(VendorKind::Zoho);
        let vocabulary = Vocabulary::defaults(VendorKind::Zoho);
        let mut inner = self.lock();
        let now = Timestamp::now().unix_millis() / 1000;
        let total =
            i64::try_from(world.accounts.len() + world.leads.len() + world.opportunities.len() + world.orders.len())
                .unwrap_or(0);
        let base = now - total - 1;
        let mut counter = 0i64;
        let mut per_module: HashMap<&str, usize> = HashMap::new();
        let mut stamp = |module: &'static str| {
            counter += 1;
            let seen = per_module.entry(module).or_default();
            *seen += 1;
            if *seen <= shared { base } else { base + counter }
        };
        for (name, code) in [
            ("Widget", "W-100"),
            ("Gadget", "G-200"),
            ("Gizmo", "Z-300"),
            ("Sprocket", "S-400"),
            ("Support plan", "SP-1"),
        ] {
            let id = inner.new_id();
            inner.products.push((id, name.to_owned(), code.to_owned()));
        }
        let mut account_ids = HashMap::new();
        for (index, account) in world.accounts.iter().enumerate() {
            if account.presence & bit == 0 {
                continue;
            }
            let fields = json!({
                "Account_Name": account.name, "Account_Number": account.number, "Website": format!("www.{}", account.domain),
                "Industry": account.industry, "Billing_Country": account.country,
                "Owner": {"name": "Patricia Boyle", "id": "4150868000000225013", "email": "p.boyle@zylker.example"},
            });
            let id = inner.put("Accounts", fields, stamp("Accounts"));
            account_ids.insert(index, (id, account.name.clone()));
        }
        for lead in &world.leads {
            if lead.presence & bit == 0 {
                continue;
            }
            let fields = json!({
                "First_Name": lead.first_name, "Last_Name": lead.last_name, "Company": lead.company, "Email": lead.email,
                "Lead_Source": lead.source, "Lead_Status": if lead.converted { "Converted" } else { "Not Contacted" },
            });
            let modified = stamp("Leads");
            inner.put("Leads", with_created(fields, lead.created_at, modified), modified);
        }
        for deal in &world.opportunities {
            if deal.presence & bit == 0 {
                continue;
            }
            let Some((account, account_name)) = account_ids.get(&deal.account).cloned() else { continue };
            let stage = vocabulary.stages.reverse(deal.stage).unwrap_or("Qualification");
            let fields = json!({
                "Deal_Name": deal.name, "Account_Name": {"name": account_name, "id": account}, "Amount": decimal_json(deal.amount),
                "Currency": deal.currency, "Stage": stage, "Lead_Source": deal.source, "Closing_Date": deal.close_date.to_string(),
            });
            let modified = stamp("Deals");
            inner.put("Deals", with_created(fields, deal.created_at, modified), modified);
        }
        for order in &world.orders {
            if order.presence & bit == 0 {
                continue;
            }
            let Some((account, account_name)) = account_ids.get(&order.account).cloned() else { continue };
            let status = match order.status {
                OrderStatus::Draft => "Created",
                OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Invoiced => "Approved",
                OrderStatus::Delivered => "Delivered",
                OrderStatus::Cancelled => "Cancelled",
            };
            let items: Vec<Value> = order
                .lines
                .iter()
                .map(|line| {
                    let product = inner.products.iter().find(|(_, name, _)| name == line.product).cloned();
                    let (product_id, name, code) = product.unwrap_or_default();
                    json!({"Product_Name": {"name": name, "id": product_id}, "Product_Code": code, "Quantity": decimal_json(line.quantity), "List_Price": decimal_json(line.unit_price), "Total": decimal_json(line.quantity * line.unit_price)})
                })
                .collect();
            let fields = json!({
                "Subject": order.number, "Account_Name": {"name": account_name, "id": account}, "Status": status,
                "Due_Date": order.order_date.to_string(), "Currency": order.currency, "Grand_Total": decimal_json(order.total()),
                "Lead_Source": order.source, "Ordered_Items": items,
            });
            inner.put("Sales_Orders", fields, stamp("Sales_Orders"));
        }
        inner.clock = now;
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

    /// Edits a record as a user would (new `Modified_Time`).
    pub fn edit(&self, entity: Entity, id: &str, changes: &[(&str, Value)]) -> bool {
        let mut inner = self.lock();
        let stamp = inner.tick();
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
        .route("/crm/{version}/actions/watch", post(watch).patch(watch))
        .route("/crm/{version}/{module}", get(records).delete(delete_records).put(update))
        .route("/crm/{version}/{module}/deleted", get(deleted))
        .route("/crm/{version}/{module}/upsert", post(upsert))
        .with_state(state.clone())
        .merge(crate::sim::admin_routes(state))
}

impl ZohoSim {
    async fn gate(&self, headers: &HeaderMap) -> Result<(), Response> {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.progress.send_replace(calls);
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
            Injected::RateLimited => {
                Err(error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "API limit exceeded", json!({})))
            }
            Injected::ServerError => {
                Err(error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "Internal Server Error", json!({})))
            }
        }
    }

    /// Admits a call to a module's endpoint: authentication and faults ([`Self::gate`]), the call
    /// counter, and the module name (`INVALID_MODULE` when it names none). Errors carry the credits header.
    async fn admit(&self, headers: &HeaderMap, counter: &AtomicU64, module: &str) -> Result<&'static str, Response> {
        self.gate(headers).await.map_err(|response| self.with_credits(response))?;
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

async fn fields(State(sim): Shared, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let module = query.get("module").cloned().unwrap_or_default();
    if wire::entity_of(&module).is_none() && module != "Products" {
        return sim.with_credits(invalid_module(json!({"resource_path_index": 0})));
    }
    let mut fields: Vec<Value> =
        schema(&module).iter().map(|spec| json!({"api_name": spec.name, "data_type": spec.kind})).collect();
    if sim.faults.drift_unknown_field() {
        fields.push(json!({"api_name": "Region", "data_type": "text"}));
    }
    if sim.faults.drift_renamed_field() && module == "Deals" {
        for field in &mut fields {
            if field["api_name"] == "Stage" {
                field["api_name"] = json!("Deal_Stage");
            }
        }
    }
    sim.with_credits(axum::Json(json!({"fields": fields})).into_response())
}

fn invalid_module(details: Value) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_MODULE", "the module name given seems to be invalid", details)
}

fn module_name(name: &str) -> Option<&'static str> {
    wire::MODULES
        .iter()
        .map(|(_, module)| *module)
        .find(|module| *module == name)
        .or((name == "Products").then_some("Products"))
}

async fn records(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, module)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_credits(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let response = sim.list(&headers, &module, &query);
    sim.with_credits(response)
}

impl ZohoSim {
    fn list(&self, headers: &HeaderMap, module: &str, query: &HashMap<String, String>) -> Response {
        let Some(module) = module_name(module) else {
            return invalid_module(json!({"resource_path_index": 0}));
        };
        if module == "Products" {
            let inner = self.lock();
            let data: Vec<Value> = inner
                .products
                .iter()
                .map(|(id, name, code)| json!({"id": id, "Product_Name": name, "Product_Code": code}))
                .collect();
            return axum::Json(
                json!({"data": data, "info": {"per_page": 200, "count": data.len(), "page": 1, "more_records": false}}),
            )
            .into_response();
        }
        let Some(fields) = query.get("fields") else {
            return error(
                StatusCode::BAD_REQUEST,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                json!({"param_name": "fields"}),
            );
        };
        let fields: Vec<String> = fields.split(',').map(str::to_owned).collect();
        if fields.len() > 50 {
            return error(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                "fields limit exceeded",
                json!({"param_name": "fields", "limit": 50}),
            );
        }
        let known: HashSet<&str> = schema(module).iter().map(|spec| spec.name).collect();
        let renamed = self.faults.drift_renamed_field() && module == "Deals";
        if let Some(unknown) = fields.iter().find(|field| {
            let stale_name = renamed && *field == "Stage";
            !(known.contains(field.as_str()) || (renamed && *field == "Deal_Stage")) || stale_name
        }) {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": unknown, "param_name": "fields"}),
            );
        }
        let per_page: usize = query.get("per_page").and_then(|value| value.parse().ok()).unwrap_or(200);
        if per_page == 0 || per_page > wire::PER_PAGE {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"param_name": "per_page", "maximum_length": 200}),
            );
        }
        if query.get("sort_by").is_some_and(|sort| !matches!(sort.as_str(), "id" | "Created_Time" | "Modified_Time")) {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"param_name": "sort_by", "supported_values": ["id", "Created_Time", "Modified_Time"]}),
            );
        }
        let since = match headers.get("if-modified-since").and_then(|value| value.to_str().ok()) {
            Some(text) => match text.parse::<Timestamp>() {
                Ok(stamp) => Some(stamp.unix_millis() / 1000),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_DATA",
                        "invalid data",
                        json!({"param_name": "If-Modified-Since"}),
                    );
                }
            },
            None => None,
        };
        let mut inner = self.lock();
        inner.requested_fields.push(fields.join(","));
        if let Some(wanted) = query.get("ids") {
            let wanted: Vec<&str> = wanted.split(',').collect();
            if wanted.len() > 100 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "LIMIT_EXCEEDED",
                    "ids limit exceeded",
                    json!({"param_name": "ids", "limit": 100}),
                );
            }
            let rows = inner.modules.get(module);
            let data: Vec<Value> = wanted
                .iter()
                .filter_map(|id| {
                    let row = rows?.get(*id).filter(|row| row.deleted.is_none())?;
                    let mut record: Map<String, Value> = fields
                        .iter()
                        .map(|field| (field.clone(), row.fields.get(field).cloned().unwrap_or(Value::Null)))
                        .collect();
                    record.insert("id".into(), json!(id));
                    record.insert("Modified_Time".into(), json!(zoho_time(row.modified)));
                    Some(Value::Object(record))
                })
                .collect();
            if data.is_empty() {
                return StatusCode::NO_CONTENT.into_response();
            }
            return axum::Json(
                json!({"data": data, "info": {"per_page": 200, "count": data.len(), "page": 1, "more_records": false}}),
            )
            .into_response();
        }
        let (snapshot_id, offset) = match (query.get("page_token"), query.get("page")) {
            (Some(_), Some(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "page and page_token cannot be combined",
                    json!({}),
                );
            }
            (Some(token), None) => match token
                .split_once('-')
                .and_then(|(id, offset)| Some((id.to_owned(), offset.parse::<usize>().ok()?)))
            {
                Some((id, offset)) if inner.snapshots.contains_key(&id) => (id, offset),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_DATA",
                        "invalid page token",
                        json!({"param_name": "page_token"}),
                    );
                }
            },
            (None, page) => {
                let page: usize = page.and_then(|page| page.parse().ok()).unwrap_or(1).max(1);
                if page * per_page > 2000 {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
                        "You can only get the first 2000 records without using page_token param",
                        json!({"limit": 2000}),
                    );
                }
                let rows = inner.modules.get(module);
                let mut ids: Vec<(i64, String)> = rows
                    .map(|rows| {
                        rows.iter()
                            .filter(|(_, row)| row.deleted.is_none() && since.is_none_or(|since| row.modified > since))
                            .map(|(id, row)| (row.modified, id.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if ids.is_empty() && since.is_some() {
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                ids.sort();
                let snapshot_id = format!("{:x}", inner.next_id);
                inner.next_id += 1;
                inner.snapshots.insert(
                    snapshot_id.clone(),
                    Snapshot { module, ids: ids.into_iter().map(|(_, id)| id).collect(), fields: fields.clone() },
                );
                (snapshot_id, (page - 1) * per_page)
            }
        };
        if offset >= usize::try_from(wire::PAGE_TOKEN_CAP).unwrap_or(usize::MAX) {
            return error(
                StatusCode::BAD_REQUEST,
                "PAGINATION_LIMIT_EXCEEDED",
                "You can only get upto 100000 records using page_token param",
                json!({"param_name": "page_token"}),
            );
        }
        let Some(snapshot) = inner.snapshots.get(&snapshot_id) else {
            return error(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid page token", json!({}));
        };
        let end = (offset + per_page).min(snapshot.ids.len());
        if offset >= end {
            return StatusCode::NO_CONTENT.into_response();
        }
        let rows = inner.modules.get(snapshot.module);
        let data: Vec<Value> = snapshot.ids[offset..end]
            .iter()
            .filter_map(|id| {
                let row = rows?.get(id)?;
                let mut record = Map::new();
                record.insert("id".into(), json!(id));
                for field in &snapshot.fields {
                    let value = match field.as_str() {
                        "id" => json!(id),
                        "Modified_Time" => json!(zoho_time(row.modified)),
                        "Deal_Stage" if renamed => row.fields.get("Stage").cloned().unwrap_or(Value::Null),
                        "Region" => json!("EMEA"),
                        name => row.fields.get(name).cloned().unwrap_or(Value::Null),
                    };
                    record.insert(field.clone(), value);
                }
                Some(Value::Object(record))
            })
            .collect();
        let more = end < snapshot.ids.len();
        let next = more.then(|| format!("{snapshot_id}-{end}"));
        let body = json!({"data": data, "info": {"per_page": per_page, "count": data.len(), "page": offset / per_page + 1, "sort_by": "Modified_Time", "sort_order": "asc", "more_records": more, "next_page_token": next, "previous_page_token": null, "page_token_expiry": zoho_time(inner.clock + 86_400)}});
        drop(inner);
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        if self.faults.take_truncation() {
            bytes = truncate(&bytes);
        }
        ([(header::CONTENT_TYPE, "application/json;charset=utf-8")], bytes).into_response()
    }
}

async fn deleted(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, module)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let module = match sim.admit(&headers, &sim.counters.read, &module).await {
        Ok(module) => module,
        Err(response) => return response,
    };
    let since = headers
        .get("if-modified-since")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<Timestamp>().ok())
        .map(|stamp| stamp.unix_millis() / 1000);
    let per_page: usize = query.get("per_page").and_then(|value| value.parse().ok()).unwrap_or(200).clamp(1, 200);
    let page: usize = query.get("page").and_then(|value| value.parse().ok()).unwrap_or(1).max(1);
    let inner = sim.lock();
    let mut gone: Vec<(i64, String)> = inner
        .modules
        .get(module)
        .map(|rows| {
            rows.iter()
                .filter_map(|(id, row)| {
                    row.deleted.filter(|at| since.is_none_or(|since| *at > since)).map(|at| (at, id.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    drop(inner);
    gone.sort();
    let start = (page - 1) * per_page;
    if start >= gone.len() {
        return sim.with_credits(StatusCode::NO_CONTENT.into_response());
    }
    let end = (start + per_page).min(gone.len());
    let data: Vec<Value> = gone[start..end].iter().map(|(at, id)| json!({"id": id, "type": "recycle", "display_name": null, "deleted_time": zoho_time(*at), "deleted_by": null, "created_by": null})).collect();
    sim.with_credits(axum::Json(json!({"data": data, "info": {"per_page": per_page, "count": data.len(), "page": page, "more_records": end < gone.len()}})).into_response())
}

/// `PUT /crm/{v}/{Module}`: updates records by their `id`.
async fn update(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, module)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write(sim, headers, module, body, true).await
}

async fn upsert(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, module)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write(sim, headers, module, body, false).await
}

async fn write(sim: Arc<ZohoSim>, headers: HeaderMap, module: String, body: Bytes, by_id: bool) -> Response {
    let module = match sim.admit(&headers, &sim.counters.write, &module).await {
        Ok(module) => module,
        Err(response) => return response,
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            return sim.with_credits(error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "body is not valid JSON",
                json!({}),
            ));
        }
    };
    let Some(records) = request.get("data").and_then(Value::as_array) else {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({"param_name": "data"}),
        ));
    };
    if records.len() > wire::WRITE_LIMIT {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds 100",
            json!({"limit": 100}),
        ));
    }
    let checks: Vec<String> = request
        .get("duplicate_check_fields")
        .and_then(Value::as_array)
        .map(|fields| fields.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let results: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(index, record)| sim.upsert_one(module, index, record, &checks, by_id))
        .collect();
    let successes = results.iter().filter(|result| result["status"] == "success").count();
    let inserted = results.iter().filter(|result| result["action"] == "insert").count();
    let status = if successes == 0 {
        StatusCode::BAD_REQUEST
    } else if successes < results.len() {
        StatusCode::MULTI_STATUS
    } else if inserted == results.len() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    sim.with_credits((status, axum::Json(json!({"data": results}))).into_response())
}

fn record_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

impl ZohoSim {
    fn upsert_one(&self, module: &'static str, index: usize, record: &Value, checks: &[String], by_id: bool) -> Value {
        let Some(record) = record.as_object() else {
            return record_error("INVALID_DATA", "invalid data", json!({"json_path": format!("$.data[{index}]")}));
        };
        let specs = schema(module);
        let mut inner = self.lock();
        let target = if by_id {
            let id = record.get("id").and_then(Value::as_str).unwrap_or_default();
            if inner.modules.get(module).is_none_or(|rows| rows.get(id).is_none_or(|row| row.deleted.is_some())) {
                return record_error(
                    "INVALID_DATA",
                    "the id given seems to be invalid",
                    json!({"api_name": "id", "json_path": format!("$.data[{index}].id")}),
                );
            }
            Some(id.to_owned())
        } else {
            None
        };
        let mut record = record.clone();
        if by_id {
            record.remove("id");
        }
        for (name, value) in &record {
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                return record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                );
            };
            if !spec.writable {
                return record_error("INVALID_DATA", "the field is read only", json!({"api_name": name}));
            }
            if !spec.picklist.is_empty() && !value.as_str().is_some_and(|text| spec.picklist.contains(&text)) {
                return record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"expected_data_type": "picklist", "api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                );
            }
            if spec.kind == "lookup" {
                let target = if name == "Deal_Name" { "Deals" } else { "Accounts" };
                let id = value.get("id").and_then(Value::as_str).unwrap_or_default();
                if inner.modules.get(target).is_none_or(|rows| rows.get(id).is_none_or(|row| row.deleted.is_some())) {
                    return record_error(
                        "INVALID_DATA",
                        "invalid data",
                        json!({"expected_data_type": "lookup", "api_name": name, "json_path": format!("$.data[{index}].{name}")}),
                    );
                }
            }
            if spec.kind == "date" && value.as_str().is_none_or(|text| text.parse::<jiff::civil::Date>().is_err()) {
                return record_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"expected_data_type": "date", "api_name": name}),
                );
            }
            if name == "Ordered_Items" {
                let valid = value.as_array().is_some_and(|items| {
                    !items.is_empty()
                        && items.iter().all(|item| {
                            let product = item
                                .get("Product_Name")
                                .and_then(|product| product.get("id"))
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            inner.products.iter().any(|(id, _, _)| id == product)
                                && item.get("Quantity").is_some_and(Value::is_number)
                        })
                });
                if !valid {
                    return record_error(
                        "INVALID_DATA",
                        "invalid data",
                        json!({"api_name": "Ordered_Items", "json_path": format!("$.data[{index}].Ordered_Items")}),
                    );
                }
            }
        }
        let key = record.get("Crmsync_Id").and_then(Value::as_str).map(str::to_owned);
        let existing = if target.is_some() {
            target
        } else if checks.iter().any(|check| check == "Crmsync_Id") {
            key.as_ref().and_then(|key| {
                inner
                    .modules
                    .get(module)?
                    .iter()
                    .find(|(_, row)| {
                        row.deleted.is_none() && row.fields.get("Crmsync_Id").and_then(Value::as_str) == Some(key)
                    })
                    .map(|(id, _)| id.clone())
            })
        } else {
            None
        };
        if existing.is_none()
            && let Some(missing) =
                specs.iter().find(|spec| spec.required && record.get(spec.name).is_none_or(Value::is_null))
        {
            return record_error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                json!({"api_name": missing.name, "json_path": format!("$.data[{index}].{}", missing.name)}),
            );
        }
        let stamp = inner.tick();
        let (id, action) = match existing {
            Some(id) => (id, "update"),
            None => (inner.new_id(), "insert"),
        };
        let products = inner.products.clone();
        let Some(rows) = inner.modules.get_mut(module) else {
            return record_error("INVALID_MODULE", "invalid module", json!({}));
        };
        let row = rows.entry(id.clone()).or_insert_with(|| Row { fields: Map::new(), modified: stamp, deleted: None });
        if action == "insert" {
            row.fields.insert("Created_Time".into(), json!(zoho_time(stamp)));
            if module == "Sales_Orders" && !record.contains_key("Status") {
                row.fields.insert("Status".into(), json!("Created"));
            }
        }
        for (name, value) in record {
            row.fields.insert(name.clone(), value.clone());
        }
        if module == "Sales_Orders"
            && let Some(items) = row.fields.get_mut("Ordered_Items").and_then(Value::as_array_mut)
        {
            let mut total = Decimal::ZERO;
            for item in items.iter_mut() {
                let quantity: Decimal = item
                    .get("Quantity")
                    .map(|value| value.to_string())
                    .and_then(|text| text.parse().ok())
                    .unwrap_or_default();
                let price: Decimal = item
                    .get("List_Price")
                    .map(|value| value.to_string())
                    .and_then(|text| text.parse().ok())
                    .unwrap_or_default();
                let product_id = item
                    .get("Product_Name")
                    .and_then(|product| product.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some((_, name, code)) = products.iter().find(|(id, _, _)| *id == product_id) {
                    item["Product_Name"] = json!({"id": product_id, "name": name});
                    item["Product_Code"] = json!(code);
                }
                item["Total"] = decimal_json(quantity * price);
                total += quantity * price;
            }
            row.fields.insert("Grand_Total".into(), decimal_json(total));
        }
        row.modified = stamp;
        json!({
            "code": "SUCCESS",
            "duplicate_field": if action == "update" { json!("Crmsync_Id") } else { Value::Null },
            "action": action,
            "details": {"id": id, "Modified_Time": zoho_time(stamp), "Created_Time": row.fields.get("Created_Time")},
            "message": if action == "update" { "record updated" } else { "record added" },
            "status": "success",
        })
    }
}

async fn delete_records(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, module)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let module = match sim.admit(&headers, &sim.counters.write, &module).await {
        Ok(module) => module,
        Err(response) => return response,
    };
    let ids: Vec<String> = query
        .get("ids")
        .map(|ids| ids.split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if ids.is_empty() || ids.len() > wire::WRITE_LIMIT {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "give 1 to 100 ids",
            json!({"param_name": "ids", "limit": 100}),
        ));
    }
    let mut inner = sim.lock();
    let stamp = inner.tick();
    let results: Vec<Value> = ids
        .iter()
        .map(|id| {
            match inner.modules.get_mut(module).and_then(|rows| rows.get_mut(id)).filter(|row| row.deleted.is_none()) {
                Some(row) => {
                    row.deleted = Some(stamp);
                    json!({"code": "SUCCESS", "details": {"id": id}, "message": "record deleted", "status": "success"})
                }
                None => record_error("INVALID_DATA", "the related id given seems to be invalid", json!({"id": id})),
            }
        })
        .collect();
    drop(inner);
    sim.with_credits(axum::Json(json!({"data": results})).into_response())
}

async fn watch(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_credits(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return sim.with_credits(error(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data", json!({})));
    };
    let Some(watch) = request.get("watch").and_then(Value::as_array).and_then(|items| items.first()).cloned() else {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "watch is missing",
            json!({}),
        ));
    };
    let token_ok =
        watch.get("token").and_then(Value::as_str).is_some_and(|token| !token.is_empty() && token.len() <= 50);
    let expiry_ok = watch
        .get("channel_expiry")
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<Timestamp>().ok())
        .is_some_and(|expiry| {
            let now = Timestamp::now().unix_millis();
            expiry.unix_millis() > now && expiry.unix_millis() <= now + 86_400_000 + 60_000
        });
    if !token_ok || !expiry_ok || watch.get("notify_url").is_none() {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({"api_name": "channel_expiry or token"}),
        ));
    }
    let expiry = watch["channel_expiry"].clone();
    let channel = watch["channel_id"].clone();
    sim.lock().watch = Some(watch);
    sim.with_credits(
        axum::Json(json!({"watch": [{"code": "SUCCESS", "status": "success", "message": "Successfully subscribed for actions-watch of the given module", "details": {"events": [{"channel_expiry": expiry, "channel_id": channel}]}}]}))
            .into_response(),
    )
}
