//! An in-process Dataverse simulator (axum): the Microsoft identity platform token endpoint
//! (client credentials, scope `{org}/.default`), `EntityDefinitions`, entity sets with `$select`,
//! `$filter` (comparisons, `and`/`or`/`not`, parentheses, `Microsoft.Dynamics.CRM.In`), `$orderby`,
//! `$top`, `Prefer: odata.maxpagesize` (≤ 5,000) with `@odata.nextLink` paging cookies, change tracking
//! (`Prefer: odata.track-changes`, delta links, `$deletedEntity` rows, expired tokens), `PATCH` upserts by
//! id or alternate key with `If-Match` / `If-None-Match` and etags, `DELETE`, the
//! `WinOpportunity`/`LoseOpportunity` actions, `$batch` (≤ 1,000 requests, `odata.continue-on-error`),
//! real error bodies, `429` + `Retry-After`, `x-ms-ratelimit-*` headers, and the shared fault switches.
//!
//! Org customisations it models: every synced table has a text column `crmsync_id` defined as an
//! alternate key, plus a text column `crmsync_channel` (the sales channel); order lines are write-in
//! products.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::wire::{self, BatchResponse};
use crate::canonical::{Entity, OrderStatus, Stage, Timestamp, VendorKind, Vocabulary, decimal_json};
use crate::sim::{Counters, FaultSettings, Faults, Injected, RunningSim, SimStats, Simulated, World, truncate};

/// Entra tenant the simulator serves.
pub const TENANT_ID: &str = "contoso.onmicrosoft.com";
/// Application (client) id.
pub const CLIENT_ID: &str = "8f0c2a4e-2b7e-4f5d-9a51-crmsync0demo";
/// Client secret.
pub const CLIENT_SECRET: &str = "demo-dataverse-client-secret";
/// Webhook key (`HttpHeader` auth, header `x-crmsync-key`).
pub const WEBHOOK_KEY: &str = "demo-dataverse-webhook-key";
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Text(usize),
    Int(i64, i64),
    Money,
    Decimal,
    Date,
    DateTime,
    Bool,
    /// A lookup: (navigation property for binds, target set).
    Lookup(&'static str, &'static str),
    ReadOnly,
}

struct Column {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: false }
}

const fn req(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: true }
}

const ACCOUNTS: &[Column] = &[
    col("accountid", Kind::Key),
    req("name", Kind::Text(160)),
    col("accountnumber", Kind::Text(20)),
    col("websiteurl", Kind::Text(200)),
    col("address1_country", Kind::Text(80)),
    col("telephone1", Kind::Text(50)),
    col("statecode", Kind::Int(0, 1)),
    col("_ownerid_value", Kind::ReadOnly),
];
const LEADS: &[Column] = &[
    col("leadid", Kind::Key),
    col("subject", Kind::Text(300)),
    col("firstname", Kind::Text(50)),
    req("lastname", Kind::Text(50)),
    col("companyname", Kind::Text(100)),
    col("emailaddress1", Kind::Text(100)),
    col("statecode", Kind::Int(0, 2)),
    col("crmsync_channel", Kind::Text(100)),
];
const OPPORTUNITIES: &[Column] = &[
    col("opportunityid", Kind::Key),
    req("name", Kind::Text(300)),
    col("_customerid_value", Kind::Lookup("customerid_account", "accounts")),
    col("estimatedvalue", Kind::Money),
    col("_transactioncurrencyid_value", Kind::Lookup("transactioncurrencyid", "transactioncurrencies")),
    col("salesstage", Kind::Int(0, 3)),
    col("budgetstatus", Kind::Int(0, 3)),
    col("statecode", Kind::ReadOnly),
    col("statuscode", Kind::ReadOnly),
    col("closeprobability", Kind::Int(0, 100)),
    col("estimatedclosedate", Kind::Date),
    col("actualclosedate", Kind::Date),
    col("crmsync_channel", Kind::Text(100)),
];
const SALESORDERS: &[Column] = &[
    col("salesorderid", Kind::Key),
    req("name", Kind::Text(300)),
    col("ordernumber", Kind::ReadOnly),
    req("_customerid_value", Kind::Lookup("customerid_account", "accounts")),
    col("_opportunityid_value", Kind::Lookup("opportunityid", "opportunities")),
    col("_transactioncurrencyid_value", Kind::Lookup("transactioncurrencyid", "transactioncurrencies")),
    col("statecode", Kind::Int(0, 4)),
    col("totalamount", Kind::ReadOnly),
    col("submitdate", Kind::DateTime),
    col("description", Kind::Text(2000)),
    col("crmsync_channel", Kind::Text(100)),
];
const LINES: &[Column] = &[
    col("salesorderdetailid", Kind::Key),
    req("_salesorderid_value", Kind::Lookup("salesorderid", "salesorders")),
    col("_productid_value", Kind::Lookup("productid", "products")),
    col("productdescription", Kind::Text(500)),
    col("isproductoverridden", Kind::Bool),
    req("quantity", Kind::Decimal),
    col("priceperunit", Kind::Money),
    col("extendedamount", Kind::ReadOnly),
];
const PRODUCT_COLUMNS: &[Column] =
    &[col("productid", Kind::Key), req("name", Kind::Text(100)), col("productnumber", Kind::Text(100))];
const CURRENCY_COLUMNS: &[Column] = &[
    col("transactioncurrencyid", Kind::Key),
    col("isocurrencycode", Kind::Text(5)),
    col("currencyname", Kind::Text(100)),
];
const CURRENCIES: &[(&str, &str, &str)] = &[
    ("a1b2c3d4-0000-4000-8000-000000000001", "USD", "US Dollar"),
    ("a1b2c3d4-0000-4000-8000-000000000002", "EUR", "Euro"),
    ("a1b2c3d4-0000-4000-8000-000000000003", "GBP", "Pound Sterling"),
];

fn columns(set: &str) -> &'static [Column] {
    match set {
        "accounts" => ACCOUNTS,
        "leads" => LEADS,
        "opportunities" => OPPORTUNITIES,
        "salesorders" => SALESORDERS,
        "transactioncurrencies" => CURRENCY_COLUMNS,
        "products" => PRODUCT_COLUMNS,
        _ => LINES,
    }
}

fn logical(set: &str) -> &'static str {
    match set {
        "accounts" => "account",
        "leads" => "lead",
        "opportunities" => "opportunity",
        "salesorders" => "salesorder",
        "salesorderdetails" => "salesorderdetail",
        "products" => "product",
        _ => "transactioncurrency",
    }
}

fn key_of(set: &str) -> String {
    format!("{}id", logical(set))
}

/// Every column of a table as read (key, custom and system columns included).
fn readable(set: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = columns(set).iter().map(|column| column.name).collect();
    names.extend(["createdon", "modifiedon", "versionnumber", ALTERNATE_KEY]);
    names
}

#[derive(Debug, Clone)]
struct Row {
    fields: Map<String, Value>,
    version: u64,
    deleted: Option<u64>,
}

#[derive(Debug)]
struct Snapshot {
    set: String,
    select: Vec<String>,
    rows: Vec<String>,
    deletions: Vec<String>,
    /// Delta link to hand out on the last page (change-tracked reads).
    delta_version: Option<u64>,
}

struct Inner {
    tables: BTreeMap<&'static str, BTreeMap<String, Row>>,
    tokens: HashSet<String>,
    version: u64,
    /// Delta tokens below this version have expired.
    oldest_token: u64,
    /// Result sets being paged, by paging-cookie id; a `$skiptoken` names one and an offset in it,
    /// so a next link can be read again (after a dropped response) and gives the same page.
    snapshots: HashMap<String, Snapshot>,
    /// Snapshot ids, least recently used first (dropped beyond `snapshots_kept`).
    snapshot_order: std::collections::VecDeque<String>,
    /// How many multi-page result sets are kept.
    snapshots_kept: usize,
    untracked: HashSet<String>,
    selects: Vec<String>,
    next_order: u64,
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
         webhook = {{ key = {{ env = \"{ENV_WEBHOOK_KEY}\" }}, header = \"x-crmsync-key\" }}\n"
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

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"error": {"code": code, "message": message}}))
}

/// One answer, to an HTTP call or to a part of a `$batch`.
struct Reply {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json; odata.metadata=minimal".into())],
            body: body.to_string(),
        }
    }

    fn empty(status: StatusCode) -> Self {
        Self { status, headers: Vec::new(), body: String::new() }
    }

    fn with(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    fn into_response(self, truncated: bool) -> Response {
        let mut response = if truncated {
            (self.status, truncate(self.body.as_bytes())).into_response()
        } else {
            (self.status, self.body).into_response()
        };
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) =
                (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value))
            {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

impl Dynamics365Sim {
    fn new(options: &Dynamics365SimOptions) -> Self {
        let mut tables: BTreeMap<&'static str, BTreeMap<String, Row>> = BTreeMap::new();
        for set in ["accounts", "leads", "opportunities", "salesorders", "salesorderdetails"] {
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
        let sim = Self {
            inner: Mutex::new(Inner {
                tables,
                tokens: HashSet::new(),
                version: 1000,
                oldest_token: 0,
                snapshots: HashMap::new(),
                snapshot_order: std::collections::VecDeque::new(),
                snapshots_kept: options.snapshots_kept.max(1),
                untracked: options.untracked.iter().map(|set| (*set).to_owned()).collect(),
                selects: Vec::new(),
                next_order: 1000,
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
                "address1_country": account.country, "statecode": 0, "_ownerid_value": "5d2a4f10-0000-4000-8000-00000000aa01",
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
                "createdon": time((deal.created_at.unix_millis() / 1000).min(stamp)),
            }), stamp);
        }
        for order in &world.orders {
            if order.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&order.account).cloned() else { continue };
            stamp += 1;
            let state = match order.status {
                OrderStatus::Draft => 0,
                OrderStatus::Confirmed => 1,
                OrderStatus::Cancelled => 2,
                OrderStatus::Shipped | OrderStatus::Delivered => 3,
                OrderStatus::Invoiced => 4,
            };
            // Priced here as Dataverse would (extendedamount = quantity × price, the order's total the
            // sum of its lines): the write path's recomputation scans every line, fine for one write,
            // quadratic for a seeded world.
            let total: Decimal = order.lines.iter().map(|line| line.quantity * line.unit_price).sum();
            let id = inner.insert("salesorders", json!({
                "name": order.number, "_customerid_value": account, "_transactioncurrencyid_value": currency(order.currency),
                "statecode": state, "submitdate": format!("{}T00:00:00Z", order.order_date), "crmsync_channel": order.source,
                "totalamount": decimal_json(total),
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

impl Inner {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn insert(&mut self, set: &'static str, fields: Value, stamp: i64) -> String {
        let version = self.next_version();
        let id = guid(0x5eed_0000_0000 + version);
        let mut fields = match fields {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        fields.retain(|_, value| !value.is_null());
        fields.insert(key_of(set), json!(id));
        // Seeded leads and deals carry their world creation time; the rest are created now.
        fields.entry("createdon").or_insert_with(|| json!(time(stamp)));
        fields.insert("modifiedon".into(), json!(time(stamp)));
        if set == "salesorders" {
            self.next_order += 1;
            fields.insert("ordernumber".into(), json!(format!("ORD-{:05}-C0D3", self.next_order)));
        }
        if let Some(rows) = self.tables.get_mut(set) {
            rows.insert(id.clone(), Row { fields, version, deleted: None });
        }
        id
    }

    /// An order's total is the sum of its lines; changing it changes the order.
    fn recompute_total(&mut self, order: &str) {
        let total: Decimal = self
            .tables
            .get("salesorderdetails")
            .map(|rows| {
                rows.values()
                    .filter(|row| row.deleted.is_none())
                    .filter(|row| row.fields.get("_salesorderid_value").and_then(Value::as_str) == Some(order))
                    .map(|row| number(row.fields.get("extendedamount")).unwrap_or_default())
                    .sum()
            })
            .unwrap_or_default();
        let version = self.next_version();
        if let Some(row) = self.tables.get_mut("salesorders").and_then(|rows| rows.get_mut(order))
            && row.fields.get("totalamount") != Some(&decimal_json(total))
        {
            row.fields.insert("totalamount".into(), decimal_json(total));
            row.version = version;
            row.fields.insert("modifiedon".into(), json!(time(now_seconds())));
        }
    }

    /// Keeps a result set for paging and returns its id.
    fn keep_snapshot(&mut self, snapshot: Snapshot) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.snapshots.insert(id.clone(), snapshot);
        self.snapshot_order.push_back(id.clone());
        while self.snapshot_order.len() > self.snapshots_kept {
            if let Some(oldest) = self.snapshot_order.pop_front() {
                self.snapshots.remove(&oldest);
            }
        }
        id
    }

    fn product_by_number(&self, number: &str) -> Option<String> {
        self.tables
            .get("products")?
            .iter()
            .find(|(_, row)| row.fields.get("productnumber").and_then(Value::as_str) == Some(number))
            .map(|(id, _)| id.clone())
    }

    fn live(&self, set: &str, id: &str) -> Option<&Row> {
        self.tables.get(set)?.get(id).filter(|row| row.deleted.is_none())
    }

    /// Finds a row by `(guid)` or `(key='value')`.
    fn locate(&self, set: &str, address: &str) -> Result<Option<String>, Reply> {
        match address.split_once('=') {
            None => Ok(self.live(set, address).map(|_| address.to_owned())),
            Some((column, value)) => {
                if column != ALTERNATE_KEY {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!("The key attribute '{column}' is not a valid key for entity '{}'.", logical(set)),
                    ));
                }
                let value = value.trim_matches('\'');
                Ok(self.tables.get(set).and_then(|rows| {
                    rows.iter()
                        .find(|(_, row)| {
                            row.deleted.is_none()
                                && row.fields.get(ALTERNATE_KEY).and_then(Value::as_str) == Some(value)
                        })
                        .map(|(id, _)| id.clone())
                }))
            }
        }
    }

    fn render(&self, set: &str, id: &str, select: &[String], annotate: bool) -> Option<Map<String, Value>> {
        let row = self.live(set, id)?;
        let mut out = Map::new();
        out.insert("@odata.etag".into(), json!(format!("W/\"{}\"", row.version)));
        for column in select {
            let value = if column == "versionnumber" {
                json!(row.version)
            } else {
                row.fields.get(column).cloned().unwrap_or(Value::Null)
            };
            if annotate && !value.is_null() {
                if let Some(Column { kind: Kind::Lookup(_, target), .. }) =
                    columns(set).iter().find(|candidate| candidate.name == column)
                {
                    out.insert(format!("{column}{}", wire::LOOKUP_LOGICAL_NAME), json!(logical(target)));
                }
                if let Some(label) = formatted(set, column, &value) {
                    out.insert(format!("{column}{}", super::mapping::FORMATTED), json!(label));
                }
            }
            out.insert(column.clone(), value);
        }
        out.insert(key_of(set), json!(id));
        Some(out)
    }
}

fn formatted(set: &str, column: &str, value: &Value) -> Option<&'static str> {
    let number = value.as_i64()?;
    let labels: &[&str] = match (set, column) {
        ("opportunities", "statecode") => &["Open", "Won", "Lost"],
        ("opportunities", "salesstage") => &["Qualify", "Develop", "Propose", "Close"],
        ("salesorders", "statecode") => &["Active", "Submitted", "Canceled", "Fulfilled", "Invoiced"],
        ("leads", "statecode") => &["Open", "Qualified", "Disqualified"],
        _ => return None,
    };
    labels.get(usize::try_from(number).ok()?).copied()
}

fn number(value: Option<&Value>) -> Option<Decimal> {
    value?.as_number().and_then(|number| number.to_string().parse().ok())
}

// ---- $filter --------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Open,
    Close,
    Comma,
    Equals,
    ListOpen,
    ListClose,
}

fn tokenize(filter: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let punctuation = match c {
            '(' => Some(Token::Open),
            ')' => Some(Token::Close),
            ',' => Some(Token::Comma),
            '=' => Some(Token::Equals),
            '[' => Some(Token::ListOpen),
            ']' => Some(Token::ListClose),
            _ => None,
        };
        if let Some(token) = punctuation {
            tokens.push(token);
            index += 1;
            continue;
        }
        match c {
            ' ' => index += 1,
            '\'' => {
                let mut text = String::new();
                index += 1;
                loop {
                    match chars.get(index) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if chars.get(index + 1) == Some(&'\'') => {
                            text.push('\'');
                            index += 2;
                        }
                        Some('\'') => {
                            index += 1;
                            break;
                        }
                        Some(other) => {
                            text.push(*other);
                            index += 1;
                        }
                    }
                }
                tokens.push(Token::Text(text));
            }
            _ => {
                let start = index;
                while index < chars.len() && !" (),=[]'".contains(chars[index]) {
                    index += 1;
                }
                tokens.push(Token::Ident(chars[start..index].iter().collect()));
            }
        }
    }
    Ok(tokens)
}

#[derive(Debug)]
enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare(String, String, Value),
    In(String, Vec<String>),
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn expect(&mut self, token: &Token) -> Result<(), String> {
        match self.next() {
            Some(found) if &found == token => Ok(()),
            other => Err(format!("expected {token:?}, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some(Token::Ident(word)) if word == "or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while matches!(self.peek(), Some(Token::Ident(word)) if word == "and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Token::Ident(word)) if word == "not" => Ok(Filter::Not(Box::new(self.unary()?))),
            Some(Token::Open) => {
                let inner = self.or()?;
                self.expect(&Token::Close)?;
                Ok(inner)
            }
            Some(Token::Ident(function)) if function == "Microsoft.Dynamics.CRM.In" => {
                self.expect(&Token::Open)?;
                let property = self.named("PropertyName")?;
                self.expect(&Token::Comma)?;
                let Some(Token::Ident(name)) = self.next() else { return Err("expected PropertyValues".into()) };
                if name != "PropertyValues" {
                    return Err(format!("unexpected parameter {name}"));
                }
                self.expect(&Token::Equals)?;
                self.expect(&Token::ListOpen)?;
                let mut values = Vec::new();
                loop {
                    match self.next() {
                        Some(Token::Text(value)) => values.push(value),
                        Some(Token::Comma) => {}
                        Some(Token::ListClose) => break,
                        other => return Err(format!("unexpected {other:?} in PropertyValues")),
                    }
                }
                self.expect(&Token::Close)?;
                Ok(Filter::In(property, values))
            }
            Some(Token::Ident(column)) => {
                let Some(Token::Ident(operator)) = self.next() else {
                    return Err(format!("expected an operator after {column}"));
                };
                if !matches!(operator.as_str(), "eq" | "ne" | "gt" | "ge" | "lt" | "le") {
                    return Err(format!("unknown operator {operator}"));
                }
                let value = match self.next() {
                    Some(Token::Text(text)) => json!(text),
                    Some(Token::Ident(word)) if word == "null" => Value::Null,
                    Some(Token::Ident(word)) => match word.parse::<f64>() {
                        Ok(_) => serde_json::from_str(&word).unwrap_or(json!(word)),
                        Err(_) => json!(word),
                    },
                    other => return Err(format!("expected a value, found {other:?}")),
                };
                Ok(Filter::Compare(column, operator, value))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn named(&mut self, parameter: &str) -> Result<String, String> {
        match (self.next(), self.next(), self.next()) {
            (Some(Token::Ident(name)), Some(Token::Equals), Some(Token::Text(value))) if name == parameter => Ok(value),
            other => Err(format!("expected {parameter}='…', found {other:?}")),
        }
    }
}

fn parse_filter(filter: &str) -> Result<Filter, String> {
    let mut parser = Parser { tokens: tokenize(filter)?, at: 0 };
    let parsed = parser.or()?;
    match parser.peek() {
        None => Ok(parsed),
        Some(token) => Err(format!("unexpected {token:?} after the expression")),
    }
}

/// A property name in a filter: a column, or a lookup's logical name (`salesorderid` → `_salesorderid_value`).
fn column_for(set: &str, property: &str) -> Option<String> {
    let known = readable(set);
    if known.contains(&property) || property == key_of(set) {
        return Some(property.to_owned());
    }
    let lookup = format!("_{property}_value");
    known.contains(&lookup.as_str()).then_some(lookup)
}

fn check_filter(set: &str, filter: &Filter) -> Result<(), String> {
    match filter {
        Filter::And(left, right) | Filter::Or(left, right) => {
            check_filter(set, left)?;
            check_filter(set, right)
        }
        Filter::Not(inner) => check_filter(set, inner),
        Filter::Compare(column, ..) | Filter::In(column, _) => column_for(set, column).map(|_| ()).ok_or_else(|| {
            format!("Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.", logical(set))
        }),
    }
}

fn compare(left: &Value, right: &Value) -> Option<std::cmp::Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase())),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

fn matches(set: &str, fields: &Map<String, Value>, filter: &Filter) -> bool {
    match filter {
        Filter::And(left, right) => matches(set, fields, left) && matches(set, fields, right),
        Filter::Or(left, right) => matches(set, fields, left) || matches(set, fields, right),
        Filter::Not(inner) => !matches(set, fields, inner),
        Filter::In(property, values) => {
            let column = column_for(set, property).unwrap_or_default();
            let value = fields.get(&column).and_then(Value::as_str).unwrap_or_default();
            values.iter().any(|candidate| candidate.eq_ignore_ascii_case(value))
        }
        Filter::Compare(property, operator, value) => {
            let column = column_for(set, property).unwrap_or_default();
            let current = fields.get(&column).cloned().unwrap_or(Value::Null);
            let ordering = compare(&current, value);
            match operator.as_str() {
                "eq" => ordering == Some(std::cmp::Ordering::Equal),
                "ne" => ordering != Some(std::cmp::Ordering::Equal),
                "gt" => ordering == Some(std::cmp::Ordering::Greater),
                "ge" => matches!(ordering, Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
                "lt" => ordering == Some(std::cmp::Ordering::Less),
                _ => matches!(ordering, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
            }
        }
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
        .route("/api/data/{version}/{resource}", any(api))
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
                        "0x80060891",
                        &format!("Error parsing the request body: {error}"),
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
            Injected::ServerError => {
                Some(error(StatusCode::SERVICE_UNAVAILABLE, "0x80040216", "An unexpected error occurred."))
            }
        }
    }

    fn batch(&self, headers: &HeaderMap, body: &[u8], base: &str, version: &str) -> Reply {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let Some(boundary) = wire::boundary_of(content_type).filter(|_| content_type.starts_with("multipart/mixed"))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80048d19",
                "The content type of a $batch request must be multipart/mixed with a boundary.",
            );
        };
        let text = String::from_utf8_lossy(body);
        let requests = match wire::decode_batch(&boundary, &text) {
            Ok(requests) => requests,
            Err(problem) => return error(StatusCode::BAD_REQUEST, "0x80048d19", &problem.to_string()),
        };
        if requests.len() > wire::BATCH_LIMIT {
            return error(
                StatusCode::BAD_REQUEST,
                "0x8005f103",
                &format!(
                    "The number of requests in batch is {} which is more than the limit of {}.",
                    requests.len(),
                    wire::BATCH_LIMIT
                ),
            );
        }
        let continue_on_error = headers
            .get("prefer")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|prefer| prefer.contains("odata.continue-on-error"));
        let prefix = format!("/api/data/{version}/");
        let mut responses = Vec::with_capacity(requests.len());
        for part in requests {
            let (path, query) = part.path.split_once('?').unwrap_or((&part.path, ""));
            let path = path.strip_prefix(base).unwrap_or(path);
            let Some(resource) = path.strip_prefix(&prefix) else {
                responses.push(to_part(error(
                    StatusCode::BAD_REQUEST,
                    "0x80048d19",
                    &format!("unsupported path {path}"),
                )));
                if !continue_on_error {
                    break;
                }
                continue;
            };
            let method = Method::from_bytes(part.method.as_bytes()).unwrap_or(Method::GET);
            let request = Request {
                method,
                resource: resource.to_owned(),
                query: parse_query(query),
                headers: part.headers,
                body: part.body,
                base,
                version,
            };
            let reply = if resource == "$batch" {
                error(StatusCode::BAD_REQUEST, "0x80048d19", "Nested $batch requests are not supported.")
            } else {
                self.dispatch(&request)
            };
            let failed = !reply.status.is_success();
            responses.push(to_part(reply));
            if failed && !continue_on_error {
                // Without continue-on-error the batch stops and answers with the failing status.
                let last =
                    responses.pop().unwrap_or(BatchResponse { status: 400, headers: Vec::new(), body: String::new() });
                let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
                let status = StatusCode::from_u16(last.status).unwrap_or(StatusCode::BAD_REQUEST);
                return Reply {
                    status,
                    headers: vec![("Content-Type".into(), format!("multipart/mixed; boundary={boundary}"))],
                    body: wire::encode_batch_response(&boundary, &[last]),
                };
            }
        }
        let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
        Reply {
            status: StatusCode::OK,
            headers: vec![("Content-Type".into(), format!("multipart/mixed; boundary={boundary}"))],
            body: wire::encode_batch_response(&boundary, &responses),
        }
    }

    fn dispatch(&self, request: &Request<'_>) -> Reply {
        let resource = request.resource.as_str();
        if let Some(logical_name) =
            resource.strip_prefix("EntityDefinitions(LogicalName='").and_then(|rest| rest.strip_suffix("')"))
        {
            return self.definition(logical_name);
        }
        if matches!(resource, "WinOpportunity" | "LoseOpportunity") && request.method == Method::POST {
            return self.close_opportunity(resource == "WinOpportunity", request);
        }
        let (set, address) = match resource.split_once('(') {
            Some((set, rest)) => (set, rest.strip_suffix(')')),
            None => (resource, None),
        };
        let known = [
            "accounts",
            "leads",
            "opportunities",
            "salesorders",
            "salesorderdetails",
            "transactioncurrencies",
            "products",
        ];
        if !known.contains(&set) {
            return error(StatusCode::NOT_FOUND, "0x80060888", &format!("Resource not found for the segment '{set}'."));
        }
        match (&request.method, address) {
            (&Method::GET, None) => self.list(set, request),
            (&Method::GET, Some(address)) => {
                let inner = self.lock();
                match inner.locate(set, address) {
                    Err(reply) => reply,
                    Ok(None) => not_found(set, address),
                    Ok(Some(id)) => {
                        let select = select_of(set, request)
                            .unwrap_or_else(|_| readable(set).iter().map(|c| (*c).to_owned()).collect());
                        Reply::json(
                            StatusCode::OK,
                            Value::Object(inner.render(set, &id, &select, false).unwrap_or_default()),
                        )
                    }
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

    fn definition(&self, logical_name: &str) -> Reply {
        let Some(table) = wire::table_by_logical(logical_name) else {
            return error(
                StatusCode::NOT_FOUND,
                "0x80040217",
                &format!("Could not find entity with name '{logical_name}'."),
            );
        };
        let inner = self.lock();
        let mut attributes: Vec<Value> = readable(table.set).iter().map(|name| json!({"LogicalName": name})).collect();
        if self.faults.drift_unknown_field() {
            attributes.push(json!({"LogicalName": "new_region"}));
        }
        if self.faults.drift_renamed_field() && table.set == "opportunities" {
            attributes.retain(|attribute| attribute["LogicalName"] != "name");
        }
        Reply::json(
            StatusCode::OK,
            json!({
                "LogicalName": table.logical, "EntitySetName": table.set,
                "ChangeTrackingEnabled": !inner.untracked.contains(table.set),
                "Attributes": attributes,
            }),
        )
    }

    fn list(&self, set: &str, request: &Request<'_>) -> Reply {
        let tracking = request.prefers("odata.track-changes");
        let annotate = request.prefers("odata.include-annotations");
        let page_size = request
            .header("prefer")
            .and_then(|prefer| {
                prefer.split(',').find_map(|part| {
                    part.trim().strip_prefix("odata.maxpagesize=").and_then(|n| n.parse::<usize>().ok())
                })
            })
            .unwrap_or(wire::MAX_PAGE_SIZE)
            .clamp(1, wire::MAX_PAGE_SIZE);
        let mut inner = self.lock();
        // A continuation: `$skiptoken` names a snapshot.
        if let Some(skiptoken) = request.query.get("$skiptoken") {
            let cookie = skiptoken
                .split("pagingcookie=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|cookie| cookie.split_once(':'))
                .and_then(|(id, offset)| Some((id.to_owned(), offset.parse::<usize>().ok()?)));
            let Some((snapshot_id, offset)) = cookie else {
                return error(StatusCode::BAD_REQUEST, "0x80040203", "Invalid paging cookie.");
            };
            // A result set still being paged stays: the least recently *used* one goes first.
            if let Some(position) = inner.snapshot_order.iter().position(|kept| kept == &snapshot_id)
                && let Some(used) = inner.snapshot_order.remove(position)
            {
                inner.snapshot_order.push_back(used);
            }
            return self.serve_snapshot(&inner, &snapshot_id, offset, page_size, annotate, request);
        }
        let select = match select_of(set, request) {
            Ok(select) => select,
            Err(reply) => return reply,
        };
        inner.selects.push(select.join(","));
        if let Some(delta) = request.query.get("$deltatoken") {
            let version: u64 = delta.split('!').next().and_then(|version| version.parse().ok()).unwrap_or(0);
            if version < inner.oldest_token {
                return error(
                    StatusCode::BAD_REQUEST,
                    wire::EXPIRED_VERSION_STAMP,
                    "Version stamp associated with the client has expired. Please perform a full sync.",
                );
            }
            let rows = inner.tables.get(set).map(|rows| {
                let mut changed: Vec<(&String, &Row)> =
                    rows.iter().filter(|(_, row)| row.deleted.is_none() && row.version > version).collect();
                changed.sort_by_key(|(_, row)| row.version);
                let changed: Vec<String> = changed.into_iter().map(|(id, _)| id.clone()).collect();
                let deletions: Vec<String> = rows
                    .iter()
                    .filter(|(_, row)| row.deleted.is_some_and(|deleted| deleted > version) && row.version <= version)
                    .map(|(id, _)| id.clone())
                    .collect();
                (changed, deletions)
            });
            let (rows, deletions) = rows.unwrap_or_default();
            let current = inner.version;
            let snapshot = Snapshot { set: set.to_owned(), select, rows, deletions, delta_version: Some(current) };
            return self.serve_first_page(&mut inner, snapshot, page_size, annotate, request);
        }
        if tracking {
            if inner.untracked.contains(set)
                || matches!(set, "salesorderdetails" | "transactioncurrencies" | "products")
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80044353",
                    &format!("Entity '{}' is not enabled for change tracking.", logical(set)),
                );
            }
            for option in ["$filter", "$orderby", "$expand", "$top"] {
                if request.query.contains_key(option) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!("The \"{option}\" query parameter isn't supported when Change Tracking is enabled."),
                    );
                }
            }
        }
        let filter = match request.query.get("$filter").map(|filter| parse_filter(filter)) {
            Some(Ok(filter)) => Some(filter),
            Some(Err(problem)) => {
                return error(StatusCode::BAD_REQUEST, "0x80060888", &format!("Syntax error in $filter: {problem}"));
            }
            None => None,
        };
        if let Some(filter) = &filter
            && let Err(problem) = check_filter(set, filter)
        {
            return error(StatusCode::BAD_REQUEST, "0x80060888", &problem);
        }
        let key = key_of(set);
        let mut rows: Vec<(String, String)> = inner
            .tables
            .get(set)
            .map(|rows| {
                rows.iter()
                    .filter(|(_, row)| row.deleted.is_none())
                    .filter(|(_, row)| filter.as_ref().is_none_or(|filter| matches(set, &row.fields, filter)))
                    .map(|(id, row)| {
                        (
                            row.fields.get("modifiedon").and_then(Value::as_str).unwrap_or_default().to_owned(),
                            id.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        match request.query.get("$orderby").map(String::as_str) {
            None => {}
            Some(order) if order == format!("modifiedon asc,{key} asc") || order == "modifiedon asc" => rows.sort(),
            Some(order) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80060888",
                    &format!("$orderby {order:?} is not supported by this simulator."),
                );
            }
        }
        let mut ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
        if let Some(top) = request.query.get("$top").and_then(|top| top.parse::<usize>().ok())
            && !request
                .headers
                .iter()
                .any(|(name, value)| name.eq_ignore_ascii_case("prefer") && value.contains("maxpagesize"))
        {
            ids.truncate(top);
        }
        let snapshot = Snapshot {
            set: set.to_owned(),
            select,
            rows: ids,
            deletions: Vec::new(),
            delta_version: tracking.then_some(inner.version),
        };
        self.serve_first_page(&mut inner, snapshot, page_size, annotate, request)
    }

    /// Serves the first page of a new result set. Only a result that needs a next link is kept for
    /// paging, and a continuation refreshes its set: Dataverse's cookies do not expire while a read
    /// goes on, so the many short lookups a long read makes (order lines by order id) must not push
    /// its own result set out of the kept window.
    fn serve_first_page(
        &self,
        inner: &mut Inner,
        snapshot: Snapshot,
        page_size: usize,
        annotate: bool,
        request: &Request<'_>,
    ) -> Reply {
        let one_page = snapshot.rows.len() + snapshot.deletions.len() <= page_size;
        let id = inner.keep_snapshot(snapshot);
        let reply = self.serve_snapshot(inner, &id, 0, page_size, annotate, request);
        if one_page {
            inner.snapshots.remove(&id);
            inner.snapshot_order.retain(|kept| kept != &id);
        }
        reply
    }

    fn serve_snapshot(
        &self,
        inner: &Inner,
        id: &str,
        start: usize,
        page_size: usize,
        annotate: bool,
        request: &Request<'_>,
    ) -> Reply {
        let Some(snapshot) = inner.snapshots.get(id) else {
            return error(StatusCode::BAD_REQUEST, "0x80040203", "Invalid paging cookie.");
        };
        let set = snapshot.set.clone();
        let select = snapshot.select.clone();
        let total_rows = snapshot.rows.len();
        let mut value: Vec<Value> = Vec::new();
        let mut position = start;
        while value.len() < page_size && position < total_rows + snapshot.deletions.len() {
            if position < total_rows {
                if let Some(row) = inner.render(&set, &snapshot.rows[position], &select, annotate) {
                    value.push(Value::Object(row));
                }
            } else {
                let deleted = &snapshot.deletions[position - total_rows];
                value.push(json!({
                    "@odata.context": format!("{}/api/data/{}/$metadata#{set}/$deletedEntity", request.base, request.version),
                    "id": deleted, "reason": "deleted",
                }));
            }
            position += 1;
        }
        let done = position >= total_rows + snapshot.deletions.len();
        let delta_version = snapshot.delta_version;
        let context = format!("{}/api/data/{}/$metadata#{set}({})", request.base, request.version, select.join(","));
        let mut body = json!({"@odata.context": context, "value": value});
        let select_param: String =
            url::form_urlencoded::Serializer::new(String::new()).append_pair("$select", &select.join(",")).finish();
        if done {
            if let Some(version) = delta_version {
                let token: String =
                    url::form_urlencoded::byte_serialize(format!("{version}!{}", time(now_seconds())).as_bytes())
                        .collect();
                body["@odata.deltaLink"] = json!(format!(
                    "{}/api/data/{}/{set}?{select_param}&$deltatoken={token}",
                    request.base, request.version
                ));
            }
        } else {
            let page = position / page_size.max(1) + 1;
            let cookie = format!(
                "<cookie pagenumber=\"{page}\" pagingcookie=\"{id}:{position}\" istracking=\"{}\" />",
                if delta_version.is_some() { "True" } else { "False" }
            );
            let cookie: String = url::form_urlencoded::byte_serialize(cookie.as_bytes()).collect();
            body["@odata.nextLink"] = json!(format!(
                "{}/api/data/{}/{set}?{select_param}&$skiptoken={cookie}",
                request.base, request.version
            ));
        }
        let mut reply =
            Reply::json(StatusCode::OK, body).with("Preference-Applied", format!("odata.maxpagesize={page_size}"));
        if delta_version.is_some() {
            reply = reply.with("Preference-Applied", "odata.track-changes".into());
        }
        reply
    }

    fn write(&self, set: &str, address: &str, request: &Request<'_>) -> Reply {
        if set == "transactioncurrencies" {
            return error(
                StatusCode::FORBIDDEN,
                "0x80040220",
                "Principal user is missing prvWriteTransactionCurrency privilege.",
            );
        }
        let Some(Value::Object(body)) = &request.body else {
            return error(StatusCode::BAD_REQUEST, "0x80060891", "The request body must be a JSON object.");
        };
        let logical_name = logical(set);
        let mut inner = self.lock();
        let found = match inner.locate(set, address) {
            Ok(found) if address.is_empty() => found.filter(|_| false),
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let by_key = address.contains('=');
        if by_key && body.contains_key(ALTERNATE_KEY) {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80060891",
                "Key attributes must not be repeated in the request body.",
            );
        }
        if let Some(condition) = request.header("if-match") {
            let Some(id) = &found else { return not_found(set, address) };
            let current = inner.live(set, id).map(|row| format!("W/\"{}\"", row.version)).unwrap_or_default();
            if condition != "*" && condition != current {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    "0x80060882",
                    "The version of the existing record doesn't match the RowVersion property provided.",
                );
            }
        }
        if request.header("if-none-match") == Some("*") && found.is_some() {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "0x80040237",
                "A record with matching key values already exists.",
            );
        }
        // Validate every property before touching anything.
        let mut updates = Map::new();
        for (name, value) in body {
            if let Some(navigation) = name.strip_suffix("@odata.bind") {
                let Some(column) =
                    columns(set).iter().find(|column| matches!(column.kind, Kind::Lookup(nav, _) if nav == navigation))
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060888",
                        &format!(
                            "An undeclared property '{navigation}' which only has property annotations in the payload but no property value was found in the payload."
                        ),
                    );
                };
                let Kind::Lookup(_, target) = column.kind else { continue };
                if value.is_null() {
                    updates.insert(column.name.to_owned(), Value::Null);
                    continue;
                }
                let Some(path) = value.as_str() else {
                    return error(StatusCode::BAD_REQUEST, "0x80060891", &format!("{name} must be a string"));
                };
                let Some(inside) = path
                    .trim_start_matches('/')
                    .strip_prefix(target)
                    .and_then(|rest| rest.strip_prefix('('))
                    .and_then(|rest| rest.strip_suffix(')'))
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80060891",
                        &format!("{name}: {path} does not address {target}"),
                    );
                };
                let target_id = if target == "transactioncurrencies" || target == "products" {
                    inner.live(target, inside).map(|_| inside.to_owned())
                } else {
                    match inner.locate(target, inside) {
                        Ok(found) => found,
                        Err(reply) => return reply,
                    }
                };
                let Some(target_id) = target_id else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "0x80040217",
                        &format!("{} With Id = {inside} Does Not Exist", logical(target)),
                    );
                };
                updates.insert(column.name.to_owned(), json!(target_id));
                continue;
            }
            if name == ALTERNATE_KEY {
                match value {
                    Value::String(_) | Value::Null => {
                        updates.insert(name.clone(), value.clone());
                        continue;
                    }
                    _ => return error(StatusCode::BAD_REQUEST, "0x80060891", "crmsync_id must be a string"),
                }
            }
            let Some(column) = columns(set).iter().find(|column| column.name == name) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80060888",
                    &format!("Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{logical_name}'."),
                );
            };
            let invalid = |expected: &str| {
                error(
                    StatusCode::BAD_REQUEST,
                    "0x80060891",
                    &format!(
                        "Cannot convert the literal '{value}' to the expected type '{expected}' of property '{name}'."
                    ),
                )
            };
            match column.kind {
                Kind::Key => return invalid("read-only key"),
                Kind::ReadOnly if set == "opportunities" && (name == "statecode" || name == "statuscode") => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80040203",
                        "Use the WinOpportunity or LoseOpportunity message to close an opportunity; its state cannot be set by an update.",
                    );
                }
                Kind::ReadOnly | Kind::Lookup(..) => continue,
                Kind::Text(max) => match value {
                    Value::Null => {}
                    Value::String(text) if text.chars().count() > max => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "0x80044331",
                            &format!(
                                "A validation error occurred. The length of the '{name}' attribute of the '{logical_name}' entity exceeded the maximum allowed length of '{max}'."
                            ),
                        );
                    }
                    Value::String(_) => {}
                    _ => return invalid("Edm.String"),
                },
                Kind::Int(low, high) => match value {
                    Value::Null => {}
                    Value::Number(number) if number.as_i64().is_some_and(|n| (low..=high).contains(&n)) => {}
                    Value::Number(number) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "0x8004431a",
                            &format!(
                                "A validation error occurred. The value {number} of '{name}' on record of type '{logical_name}' is outside the valid range. Accepted Values: {}",
                                (low..=high).map(|n| n.to_string()).collect::<Vec<_>>().join(",")
                            ),
                        );
                    }
                    _ => return invalid("Edm.Int32"),
                },
                Kind::Money | Kind::Decimal => {
                    if !value.is_null() && !value.is_number() {
                        return invalid("Edm.Decimal");
                    }
                }
                Kind::Date => {
                    if !value.is_null() && value.as_str().is_none_or(|text| text.parse::<jiff::civil::Date>().is_err())
                    {
                        return invalid("Edm.Date");
                    }
                }
                Kind::DateTime => {
                    if !value.is_null() && value.as_str().is_none_or(|text| text.parse::<Timestamp>().is_err()) {
                        return invalid("Edm.DateTimeOffset");
                    }
                }
                Kind::Bool => {
                    if !value.is_null() && !value.is_boolean() {
                        return invalid("Edm.Boolean");
                    }
                }
            }
            updates.insert(name.clone(), value.clone());
        }
        let created = found.is_none();
        if created {
            if request.header("if-match").is_some() {
                return not_found(set, address);
            }
            for column in columns(set).iter().filter(|column| column.required) {
                if updates.get(column.name).is_none_or(Value::is_null) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80040200",
                        &format!(
                            "A validation error occurred. The value for attribute '{}' of entity '{logical_name}' is required.",
                            column.name.trim_start_matches('_').trim_end_matches("_value")
                        ),
                    );
                }
            }
            if set == "salesorderdetails"
                && updates.get("_productid_value").is_none_or(Value::is_null)
                && updates.get("productdescription").is_none_or(Value::is_null)
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80040200",
                    "A validation error occurred. A line needs an existing product or a write-in product description.",
                );
            }
            if by_key && let Some((_, value)) = address.split_once('=') {
                updates.insert(ALTERNATE_KEY.into(), json!(value.trim_matches('\'')));
            }
        }
        let stamp = time(now_seconds());
        let version = inner.next_version();
        let id = match &found {
            Some(id) => id.clone(),
            None => {
                let id = inner.insert(static_set(set), json!({}), now_seconds());
                if set == "opportunities"
                    && let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id))
                {
                    row.fields.insert("statecode".into(), json!(0));
                    row.fields.insert("statuscode".into(), json!(1));
                }
                id
            }
        };
        if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id)) {
            let before = row.fields.clone();
            for (name, value) in updates {
                if value.is_null() {
                    row.fields.remove(&name);
                } else {
                    row.fields.insert(name, value);
                }
            }
            if set == "salesorderdetails" {
                let quantity = number(row.fields.get("quantity")).unwrap_or_default();
                let price = number(row.fields.get("priceperunit")).unwrap_or_default();
                row.fields.insert("extendedamount".into(), decimal_json(quantity * price));
            }
            if created || row.fields != before {
                row.version = version;
                row.fields.insert("modifiedon".into(), json!(stamp));
            }
        }
        if set == "salesorderdetails"
            && let Some(order) = inner
                .live(set, &id)
                .and_then(|row| row.fields.get("_salesorderid_value"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        {
            inner.recompute_total(&order);
        }
        let entity_id = format!("{}/api/data/{}/{set}({id})", request.base, request.version);
        if request.prefers("return=representation") {
            let select = select_of(set, request).unwrap_or_else(|_| vec![key_of(set)]);
            let row = inner.render(set, &id, &select, false).unwrap_or_default();
            let etag = row.get("@odata.etag").and_then(Value::as_str).unwrap_or_default().to_owned();
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            return Reply::json(status, Value::Object(row)).with("ETag", etag).with("OData-EntityId", entity_id);
        }
        Reply::empty(StatusCode::NO_CONTENT).with("OData-EntityId", entity_id)
    }

    fn remove(&self, set: &str, address: &str) -> Reply {
        let mut inner = self.lock();
        let id = match inner.locate(set, address) {
            Ok(Some(id)) => id,
            Ok(None) => return not_found(set, address),
            Err(reply) => return reply,
        };
        let version = inner.next_version();
        if let Some(row) = inner.tables.get_mut(set).and_then(|rows| rows.get_mut(&id)) {
            row.deleted = Some(version);
        }
        if set == "salesorders"
            && let Some(lines) = inner.tables.get_mut("salesorderdetails")
        {
            for line in lines.values_mut() {
                if line.fields.get("_salesorderid_value").and_then(Value::as_str) == Some(id.as_str()) {
                    line.deleted = Some(version);
                }
            }
        }
        Reply::empty(StatusCode::NO_CONTENT)
    }

    fn close_opportunity(&self, won: bool, request: &Request<'_>) -> Reply {
        let Some(body) = request.body.as_ref().and_then(Value::as_object) else {
            return error(StatusCode::BAD_REQUEST, "0x80060891", "The request body must be a JSON object.");
        };
        let status = body.get("Status").and_then(Value::as_i64).unwrap_or(if won { 3 } else { 4 });
        let valid = if won { status == 3 } else { matches!(status, 4 | 5) };
        if !valid {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80040203",
                &format!(
                    "{status} is not a valid status code for state code OpportunityState.{}",
                    if won { "Won" } else { "Lost" }
                ),
            );
        }
        let Some(target) = body
            .get("OpportunityClose")
            .and_then(|close| close.get("opportunityid@odata.bind"))
            .and_then(Value::as_str)
            .and_then(|path| path.trim_start_matches('/').strip_prefix("opportunities("))
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            return error(StatusCode::BAD_REQUEST, "0x80040203", "OpportunityClose.opportunityid is required.");
        };
        let mut inner = self.lock();
        let id = match inner.locate("opportunities", target) {
            Ok(Some(id)) => id,
            Ok(None) => return not_found("opportunities", target),
            Err(reply) => return reply,
        };
        let version = inner.next_version();
        let Some(row) = inner.tables.get_mut("opportunities").and_then(|rows| rows.get_mut(&id)) else {
            return not_found("opportunities", target);
        };
        if row.fields.get("statecode").and_then(Value::as_i64).unwrap_or(0) != 0 {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80040203",
                "Cannot close the entity because it is not in the correct state.",
            );
        }
        row.fields.insert("statecode".into(), json!(if won { 1 } else { 2 }));
        row.fields.insert("statuscode".into(), json!(status));
        row.fields.insert("actualclosedate".into(), json!(Timestamp::now().date().to_string()));
        row.fields.insert("modifiedon".into(), json!(time(now_seconds())));
        row.version = version;
        Reply::empty(StatusCode::NO_CONTENT)
    }
}

fn static_set(set: &str) -> &'static str {
    ["accounts", "leads", "opportunities", "salesorders", "salesorderdetails"]
        .into_iter()
        .find(|known| *known == set)
        .unwrap_or("accounts")
}

fn not_found(set: &str, address: &str) -> Reply {
    error(StatusCode::NOT_FOUND, "0x80040217", &format!("{} With Id = {address} Does Not Exist", logical(set)))
}

fn select_of(set: &str, request: &Request<'_>) -> Result<Vec<String>, Reply> {
    let Some(select) = request.query.get("$select") else {
        return Ok(readable(set).iter().map(|column| (*column).to_owned()).collect());
    };
    let known = readable(set);
    let mut columns = Vec::new();
    for column in select.split(',').map(str::trim).filter(|column| !column.is_empty()) {
        if !known.contains(&column) && column != key_of(set) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "0x80060888",
                &format!(
                    "Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.",
                    logical(set)
                ),
            ));
        }
        columns.push(column.to_owned());
    }
    Ok(columns)
}

fn to_part(reply: Reply) -> BatchResponse {
    BatchResponse {
        status: reply.status.as_u16(),
        headers: reply.headers.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect(),
        body: reply.body,
    }
}
