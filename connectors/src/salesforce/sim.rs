//! An in-process Salesforce simulator (axum) for `demo`, `bench`, `simulate salesforce` and tests.
//!
//! It serves what the connector uses, with Salesforce's paths, headers, JSON shapes, paging and error
//! bodies: the OAuth token endpoint (refresh-token and client-credentials grants, optional refresh-token
//! rotation), `describe`, `query`/`queryAll` with `nextRecordsUrl` locators and `batchSize`, sObject
//! Collections upsert by external id (≤ 200 records, per-record results and validation errors) and
//! delete, and `Sforce-Limit-Info` on every response. It parses exactly the SOQL subset the connector
//! emits and rejects anything else (`MALFORMED_QUERY`, `INVALID_FIELD`), like the real API would.
//!
//! Org customisations it models (documented so nobody mistakes them for standard Salesforce): Order has
//! a `LeadSource` picklist (the sales channel), a `Crmsync_Order_Number__c` text field (the canonical
//! order number; the standard `OrderNumber` is an auto-number), and Order `Status` values Shipped,
//! Delivered, Invoiced and Cancelled besides Draft and Activated. Every object has the external-id
//! field `Crmsync_Id__c` (Text(36), unique).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use super::wire::{self, CollectionError, CollectionResult};
use crate::canonical::{Entity, OrderStatus, Timestamp, VendorKind, Vocabulary, decimal_json};
use crate::sim::{Counters, FaultSettings, Faults, Injected, RunningSim, SimStats, Simulated, World, truncate};

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
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    fields: Map<String, Value>,
    modstamp: i64,
    deleted: bool,
    items: Vec<Map<String, Value>>,
}

#[derive(Debug, Default)]
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
         mapping = {{ order_statuses = {{ \"Shipped\" = \"shipped\", \"Delivered\" = \"delivered\", \"Invoiced\" = \"invoiced\", \"Cancelled\" = \"cancelled\" }} }}\n"
    )
}

/// The secrets `connection_toml` refers to, as `(variable, value)`.
pub fn demo_secrets() -> Vec<(&'static str, &'static str)> {
    vec![(ENV_CLIENT_SECRET, CLIENT_SECRET), (ENV_REFRESH_TOKEN, REFRESH_TOKEN), (ENV_WEBHOOK_SECRET, WEBHOOK_SECRET)]
}

struct FieldSpec {
    name: &'static str,
    kind: &'static str,
    writable: bool,
    required: bool,
    picklist: &'static [&'static str],
}

const fn field(name: &'static str, kind: &'static str, writable: bool) -> FieldSpec {
    FieldSpec { name, kind, writable, required: false, picklist: &[] }
}

const fn required(name: &'static str, kind: &'static str) -> FieldSpec {
    FieldSpec { name, kind, writable: true, required: true, picklist: &[] }
}

const fn picklist(name: &'static str, required: bool, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec { name, kind: "picklist", writable: true, required, picklist: values }
}

const STAGES: &[&str] = &[
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
];
const LEAD_SOURCES: &[&str] = &["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"];
const ORDER_STATUSES: &[&str] = &["Draft", "Activated", "Shipped", "Delivered", "Invoiced", "Cancelled"];
const LEAD_STATUSES: &[&str] =
    &["Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];

fn schema(object: &str) -> Vec<FieldSpec> {
    let mut fields = vec![field("Id", "id", false)];
    match object {
        "Account" => fields.extend([
            required("Name", "string"),
            field("AccountNumber", "string", true),
            field("Website", "url", true),
            field("Industry", "string", true),
            field("BillingCountry", "string", true),
            field("OwnerId", "reference", false),
        ]),
        "Lead" => fields.extend([
            field("FirstName", "string", true),
            required("LastName", "string"),
            required("Company", "string"),
            field("Email", "email", true),
            picklist("LeadSource", false, LEAD_SOURCES),
            picklist("Status", false, LEAD_STATUSES),
            field("IsConverted", "boolean", false),
            field("ConvertedAccountId", "reference", false),
            field("ConvertedOpportunityId", "reference", false),
        ]),
        "Opportunity" => fields.extend([
            required("Name", "string"),
            field("AccountId", "reference", true),
            field("Amount", "currency", true),
            picklist("CurrencyIsoCode", false, CURRENCIES),
            picklist("StageName", true, STAGES),
            field("Probability", "percent", true),
            picklist("LeadSource", false, LEAD_SOURCES),
            required("CloseDate", "date"),
            field("IsWon", "boolean", false),
            field("IsClosed", "boolean", false),
        ]),
        _ => fields.extend([
            field("OrderNumber", "string", false),
            field("Crmsync_Order_Number__c", "string", true),
            required("AccountId", "reference"),
            field("OpportunityId", "reference", true),
            picklist("Status", true, ORDER_STATUSES),
            required("EffectiveDate", "date"),
            field("TotalAmount", "currency", false),
            picklist("CurrencyIsoCode", false, CURRENCIES),
            field("Description", "textarea", true),
            picklist("LeadSource", false, LEAD_SOURCES),
        ]),
    }
    fields.extend([
        field("CreatedDate", "datetime", false),
        field("SystemModstamp", "datetime", false),
        field("IsDeleted", "boolean", false),
        FieldSpec { name: "Crmsync_Id__c", kind: "string", writable: true, required: false, picklist: &[] },
    ]);
    fields
}

fn rest_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!([{"message": message, "errorCode": code}]))).into_response()
}

fn stage_probability(stage: &str) -> i64 {
    match stage {
        "Prospecting" | "Qualification" => 10,
        "Needs Analysis" => 20,
        "Value Proposition" => 50,
        "Id. Decision Makers" => 60,
        "Perception Analysis" => 70,
        "Proposal/Price Quote" => 75,
        "Negotiation/Review" => 90,
        "Closed Won" => 100,
        _ => 0,
    }
}

impl SalesforceSim {
    fn new(options: &SalesforceSimOptions) -> Self {
        let sim = Self {
            jwt_key: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                jobs: HashMap::new(),
                jobs_created: 0,
                tables: ["Account", "Lead", "Opportunity", "Order"]
                    .into_iter()
                    .map(|name| (name, Table::default()))
                    .collect(),
                tokens: HashSet::new(),
                refresh_token: REFRESH_TOKEN.to_owned(),
                clock: 0,
                next_id: 0,
                locators: HashMap::new(),
                queries: Vec::new(),
            }),
            faults: Faults::new(&options.faults),
            counters: Counters::default(),
            progress: tokio::sync::watch::channel(0).0,
            api_usage: AtomicU64::new(0),
            rotate: options.rotate_refresh_tokens,
        };
        sim.seed(&options.world, options.shared_modstamp, options.presence);
        sim
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn seed(&self, world: &World, shared: usize, bit: u8) {
        let vocabulary = Vocabulary::defaults(VendorKind::Salesforce);
        let total = world.accounts.len() + world.leads.len() + world.opportunities.len() + world.orders.len();
        let mut inner = self.lock();
        let now = Timestamp::now().unix_millis();
        // Seeded rows are stamped one second apart, ending one second before now.
        let base = now - 1000 * (i64::try_from(total).unwrap_or(i64::MAX) + 1);
        let mut counter = 0i64;
        let mut per_object: HashMap<&str, usize> = HashMap::new();
        let mut stamp = |object: &'static str| {
            counter += 1;
            let seen = per_object.entry(object).or_default();
            *seen += 1;
            if *seen <= shared { base } else { base + counter * 1000 }
        };
        let mut account_ids = HashMap::new();
        for (index, account) in world.accounts.iter().enumerate() {
            if account.presence & bit == 0 {
                continue;
            }
            let id = inner.new_id("001");
            let mut fields = Map::new();
            fields.insert("Name".into(), json!(account.name));
            fields.insert("AccountNumber".into(), json!(account.number));
            fields.insert("Website".into(), json!(format!("https://www.{}", account.domain)));
            fields.insert("Industry".into(), json!(account.industry));
            fields.insert("BillingCountry".into(), json!(account.country));
            fields.insert("OwnerId".into(), json!("005000000000001AAA"));
            let modstamp = stamp("Account");
            inner.put_seed("Account", id.clone(), fields, modstamp, Vec::new());
            account_ids.insert(index, id);
        }
        for lead in &world.leads {
            if lead.presence & bit == 0 {
                continue;
            }
            let id = inner.new_id("00Q");
            let mut fields = Map::new();
            fields.insert("FirstName".into(), json!(lead.first_name));
            fields.insert("LastName".into(), json!(lead.last_name));
            fields.insert("Company".into(), json!(lead.company));
            fields.insert("Email".into(), json!(lead.email));
            fields.insert("LeadSource".into(), json!(lead.source));
            fields.insert(
                "Status".into(),
                json!(if lead.converted { "Closed - Converted" } else { "Open - Not Contacted" }),
            );
            fields.insert("IsConverted".into(), json!(lead.converted));
            let modstamp = stamp("Lead");
            fields.insert("CreatedDate".into(), json!(stamp_text(lead.created_at.unix_millis().min(modstamp))));
            inner.put_seed("Lead", id, fields, modstamp, Vec::new());
        }
        for opportunity in &world.opportunities {
            if opportunity.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&opportunity.account) else { continue };
            let id = inner.new_id("006");
            let stage = vocabulary.stages.reverse(opportunity.stage).unwrap_or("Prospecting").to_owned();
            let mut fields = Map::new();
            fields.insert("Name".into(), json!(opportunity.name));
            fields.insert("AccountId".into(), json!(account));
            fields.insert("Amount".into(), decimal_json(opportunity.amount));
            fields.insert("CurrencyIsoCode".into(), json!(opportunity.currency));
            fields.insert("Probability".into(), json!(stage_probability(&stage)));
            fields.insert("IsWon".into(), json!(stage == "Closed Won"));
            fields.insert("IsClosed".into(), json!(stage.starts_with("Closed")));
            fields.insert("StageName".into(), json!(stage));
            fields.insert("LeadSource".into(), json!(opportunity.source));
            fields.insert("CloseDate".into(), json!(opportunity.close_date.to_string()));
            let modstamp = stamp("Opportunity");
            let created = opportunity.created_at.unix_millis().min(modstamp);
            fields.insert("CreatedDate".into(), json!(stamp_text(created)));
            inner.put_seed("Opportunity", id, fields, modstamp, Vec::new());
        }
        for order in &world.orders {
            if order.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&order.account) else { continue };
            let id = inner.new_id("801");
            let status = match order.status {
                OrderStatus::Draft => "Draft",
                OrderStatus::Confirmed => "Activated",
                OrderStatus::Shipped => "Shipped",
                OrderStatus::Delivered => "Delivered",
                OrderStatus::Invoiced => "Invoiced",
                OrderStatus::Cancelled => "Cancelled",
            };
            let mut fields = Map::new();
            fields.insert("OrderNumber".into(), json!(format!("{:08}", inner.next_id)));
            fields.insert("Crmsync_Order_Number__c".into(), json!(order.number));
            fields.insert("AccountId".into(), json!(account));
            fields.insert("Status".into(), json!(status));
            fields.insert("EffectiveDate".into(), json!(order.order_date.to_string()));
            fields.insert("TotalAmount".into(), decimal_json(order.total()));
            fields.insert("CurrencyIsoCode".into(), json!(order.currency));
            fields.insert("LeadSource".into(), json!(order.source));
            let items = order
                .lines
                .iter()
                .map(|line| {
                    let item_id = inner.new_id("802");
                    let mut item = Map::new();
                    item.insert("attributes".into(), json!({"type": "OrderItem", "url": format!("/services/data/{API_VERSION}/sobjects/OrderItem/{item_id}")}));
                    item.insert("Id".into(), json!(item_id));
                    item.insert("Quantity".into(), decimal_json(line.quantity));
                    item.insert("UnitPrice".into(), decimal_json(line.unit_price));
                    item.insert("TotalPrice".into(), decimal_json(line.quantity * line.unit_price));
                    item.insert("Product2".into(), json!({"attributes": {"type": "Product2"}, "Name": line.product, "ProductCode": line.sku}));
                    item
                })
                .collect();
            let modstamp = stamp("Order");
            inner.put_seed("Order", id, fields, modstamp, items);
        }
        inner.clock = now;
    }

    /// Drops every open query locator (as Salesforce does after 15 minutes of inactivity).
    pub fn expire_locators(&self) {
        self.lock().locators.clear();
    }

    /// Watches the number of API calls served (tests wait for progress instead of sleeping).
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    fn jwt_key(&self) -> Option<&aws_lc_rs::signature::RsaKeyPair> {
        self.jwt_key
            .get_or_init(|| aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).ok())
            .as_ref()
    }

    /// The private key (PKCS#8 PEM) of the simulated connected app, for a `jwt_bearer` connection.
    pub fn jwt_private_key_pem(&self) -> Option<String> {
        use aws_lc_rs::encoding::AsDer;
        let der = self.jwt_key()?.as_der().ok()?;
        Some(super::jwt::to_pem(der.as_ref()))
    }

    /// Verifies a JWT bearer assertion as Salesforce does: RS256 with the app's certificate, our
    /// consumer key as issuer, a known user, this server as audience, not expired.
    fn verify_assertion(&self, assertion: &str, audience: &str) -> Result<(), String> {
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        use base64::Engine;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else { return Err("malformed assertion".into()) };
        let decode = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed assertion".to_owned())
        };
        let key = self.jwt_key().ok_or("no certificate")?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key().as_ref())
            .verify(format!("{header}.{claims}").as_bytes(), &decode(signature)?)
            .map_err(|_| "invalid assertion signature".to_owned())?;
        let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|_| "malformed claims".to_owned())?;
        let now = Timestamp::now().unix_millis() / 1000;
        if claims["iss"] != CLIENT_ID {
            return Err("client identifier invalid".into());
        }
        if claims["sub"] != JWT_USERNAME {
            return Err("user hasn't approved this consumer".into());
        }
        if claims["aud"].as_str().map(|aud| aud.trim_end_matches('/')) != Some(audience) {
            return Err("audience is invalid".into());
        }
        match claims["exp"].as_i64() {
            Some(exp) if exp > now && exp <= now + 300 => Ok(()),
            _ => Err("expired or too distant exp claim".into()),
        }
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
        true
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
        for (name, table) in &inner.tables {
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

type Shared = State<Arc<SalesforceSim>>;

/// The simulator's routes.
pub fn router(state: Arc<SalesforceSim>) -> Router {
    let api = Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/data/{version}/sobjects/{object}/describe", get(describe))
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/queryAll", get(query_all))
        .route("/services/data/{version}/query/{locator}", get(query_more))
        .route("/services/data/{version}/queryAll/{locator}", get(query_more))
        .route("/services/data/{version}/composite/sobjects/{object}/{field}", patch(upsert))
        .route("/services/data/{version}/jobs/query", post(create_job))
        .route("/services/data/{version}/jobs/query/{job}", get(job_info))
        .route("/services/data/{version}/jobs/query/{job}/results", get(job_results))
        .route("/services/data/{version}/composite/sobjects", axum::routing::delete(delete_records).patch(update))
        .with_state(state.clone());
    api.merge(crate::sim::admin_routes(state))
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
            Injected::RateLimited => {
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

    fn describe_fields(&self, object: &str) -> Vec<wire::DescribeField> {
        let mut fields: Vec<wire::DescribeField> = schema(object)
            .into_iter()
            .map(|spec| wire::DescribeField {
                name: spec.name.to_owned(),
                field_type: spec.kind.to_owned(),
                nillable: !spec.required,
                external_id: spec.name == "Crmsync_Id__c",
                picklist_values: spec
                    .picklist
                    .iter()
                    .map(|value| wire::PicklistValue { value: (*value).to_owned(), active: true })
                    .collect(),
            })
            .collect();
        if self.faults.drift_renamed_field() && object == "Opportunity" {
            for field in &mut fields {
                if field.name == "StageName" {
                    field.name = "Stage__c".into();
                }
            }
        }
        if self.faults.drift_unknown_field() {
            fields.push(wire::DescribeField {
                name: "Region__c".into(),
                field_type: "string".into(),
                nillable: true,
                external_id: false,
                picklist_values: Vec::new(),
            });
        }
        fields
    }
}

fn object_name(name: &str) -> Option<&'static str> {
    wire::OBJECTS.iter().map(|(_, object, _)| *object).find(|object| *object == name)
}

async fn token(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    sim.counters.token.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    let client_ok = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    let invalid = |error: &str, description: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error, "error_description": description}))).into_response()
    };
    let mut new_refresh = None;
    match grant {
        "refresh_token" => {
            if !client_ok {
                return invalid("invalid_client", "invalid client credentials");
            }
            let mut inner = sim.lock();
            if form.get("refresh_token") != Some(&inner.refresh_token) {
                return invalid("invalid_grant", "expired access/refresh token");
            }
            if sim.rotate {
                let next = format!("{REFRESH_TOKEN}-{}", uuid::Uuid::new_v4().simple());
                inner.refresh_token = next.clone();
                new_refresh = Some(next);
            }
        }
        "client_credentials" => {
            if !client_ok {
                return invalid("invalid_client", "invalid client credentials");
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
            let assertion = form.get("assertion").map(String::as_str).unwrap_or("");
            if let Err(reason) = sim.verify_assertion(assertion, &format!("http://{host}")) {
                return invalid("invalid_grant", &reason);
            }
        }
        _ => return invalid("unsupported_grant_type", "grant type not supported"),
    }
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    let access = format!("{}!{}", &ORGANIZATION_ID[..15], uuid::Uuid::new_v4().simple());
    sim.lock().tokens.insert(access.clone());
    sim.faults.token_issued();
    let issued_at = Timestamp::now().unix_millis().to_string();
    let id = format!("http://{host}/id/{ORGANIZATION_ID}/005000000000001AAA");
    let mut body = json!({
        "access_token": access,
        "instance_url": format!("http://{host}"),
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature(&id, &issued_at),
        "scope": "api refresh_token",
    });
    if let Some(refresh) = new_refresh {
        body["refresh_token"] = json!(refresh);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn signature(id: &str, issued_at: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(CLIENT_SECRET.as_bytes()) else { return String::new() };
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn describe(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, object)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let response = match object_name(&object) {
        Some(name) => axum::Json(json!({"name": name, "fields": sim.describe_fields(name)})).into_response(),
        None => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    };
    sim.with_limit_info(response)
}

#[derive(serde::Deserialize)]
struct QueryParams {
    q: Option<String>,
}

async fn query(state: Shared, headers: HeaderMap, Query(params): Query<QueryParams>) -> Response {
    run_query(state, headers, params, false).await
}

async fn query_all(state: Shared, headers: HeaderMap, Query(params): Query<QueryParams>) -> Response {
    run_query(state, headers, params, true).await
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').find_map(|part| part.trim().strip_prefix("batchSize=")))
        .and_then(|size| size.trim().parse::<usize>().ok())
        .map_or(2000, |size| size.clamp(200, 2000))
}

async fn run_query(State(sim): Shared, headers: HeaderMap, params: QueryParams, all: bool) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let Some(soql) = params.q else {
        return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "Missing the q parameter"));
    };
    sim.lock().queries.push(soql.clone());
    if let Some(object) = soql.strip_prefix("SELECT COUNT() FROM ").and_then(object_name) {
        let inner = sim.lock();
        let count =
            inner.tables.get(object).map_or(0, |table| table.rows.values().filter(|row| all || !row.deleted).count());
        drop(inner);
        return sim
            .with_limit_info(axum::Json(json!({"totalSize": count, "done": true, "records": []})).into_response());
    }
    let parsed = match parse_soql(&soql) {
        Ok(parsed) => parsed,
        Err(message) => return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message)),
    };
    let known: HashSet<String> = sim.describe_fields(parsed.object).into_iter().map(|field| field.name).collect();
    if let Some(unknown) = parsed.fields.iter().find(|field| !known.contains(field.as_str())) {
        let message = format!(
            "\n{soql}\nERROR at Row:1:Column:8\nNo such column '{unknown}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.",
            parsed.object
        );
        return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "INVALID_FIELD", &message));
    }
    let mut inner = sim.lock();
    let Some(table) = inner.tables.get(parsed.object) else {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            "sObject type is not supported",
        ));
    };
    let mut ids: Vec<(i64, String)> = table
        .rows
        .iter()
        .filter(|(_, row)| all || !row.deleted)
        .filter(|(id, row)| {
            parsed.since.is_none_or(|since| row.modstamp >= since)
                && parsed.ids.as_ref().is_none_or(|wanted| wanted.contains(*id))
        })
        .filter(|(_, row)| parsed.deleted.is_none_or(|deleted| row.deleted == deleted))
        .map(|(id, row)| (row.modstamp, id.clone()))
        .collect();
    ids.sort();
    let locator_id = format!("01g{:015}", inner.next_id);
    inner.next_id += 1;
    let locator = Locator {
        object: parsed.object,
        ids: ids.into_iter().map(|(_, id)| id).collect(),
        fields: parsed.fields.clone(),
        items: parsed.items,
        all,
        batch: batch_size(&headers),
    };
    let response = page(&sim, &mut inner, locator_id, locator, 0);
    drop(inner);
    sim.with_limit_info(response)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobRequest {
    operation: String,
    query: String,
    content_type: Option<String>,
}

fn job_body(id: &str, job: &BulkJobState) -> Value {
    json!({
        "id": id,
        "operation": job.operation,
        "object": job.object,
        "state": if job.complete { "JobComplete" } else { "UploadComplete" },
        "contentType": "CSV",
        "apiVersion": 62.0,
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
        "numberRecordsProcessed": if job.complete { job.ids.len() } else { 0 },
    })
}

async fn create_job(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let request: JobRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()));
        }
    };
    if request.content_type.as_deref().is_some_and(|kind| kind != "CSV")
        || !matches!(request.operation.as_str(), "query" | "queryAll")
    {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            "operation must be query or queryAll with contentType CSV",
        ));
    }
    if request.query.contains("ORDER BY") || request.query.contains('(') {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            "Bulk API 2.0 queries do not support ORDER BY or subqueries here",
        ));
    }
    let parsed = match parse_soql(&request.query) {
        Ok(parsed) => parsed,
        Err(message) => return sim.with_limit_info(rest_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message)),
    };
    let all = request.operation == "queryAll";
    let mut inner = sim.lock();
    let ids: Vec<String> = inner
        .tables
        .get(parsed.object)
        .map(|table| {
            table
                .rows
                .iter()
                .filter(|(_, row)| (all || !row.deleted) && parsed.since.is_none_or(|since| row.modstamp >= since))
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    let id = format!("750{:012}AAA", inner.next_id);
    inner.next_id += 1;
    inner.jobs_created += 1;
    let job = BulkJobState {
        object: parsed.object,
        ids,
        fields: parsed.fields,
        operation: request.operation,
        complete: false,
    };
    let body = job_body(&id, &job);
    inner.jobs.insert(id, job);
    drop(inner);
    sim.with_limit_info(axum::Json(body).into_response())
}

async fn job_info(State(sim): Shared, headers: HeaderMap, Path((_version, job)): Path<(String, String)>) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.lock();
    let response = match inner.jobs.get_mut(&job) {
        // The simulated job finishes by the first poll.
        Some(state) => {
            state.complete = true;
            axum::Json(job_body(&job, state)).into_response()
        }
        None => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
    };
    drop(inner);
    sim.with_limit_info(response)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultParams {
    locator: Option<String>,
    max_records: Option<usize>,
}

async fn job_results(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, job)): Path<(String, String)>,
    Query(params): Query<ResultParams>,
) -> Response {
    use base64::Engine;
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let inner = sim.lock();
    let Some(state) = inner.jobs.get(&job) else {
        drop(inner);
        return sim.with_limit_info(rest_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        ));
    };
    if !state.complete {
        drop(inner);
        return sim.with_limit_info(rest_error(
            StatusCode::PRECONDITION_FAILED,
            "JOB_NOT_COMPLETE",
            &format!("can only download query results of successfully completed bulk job {job}"),
        ));
    }
    let offset = params
        .locator
        .and_then(|locator| base64::engine::general_purpose::STANDARD.decode(locator).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(0);
    let max = params.max_records.unwrap_or(50_000).clamp(1, 50_000);
    let end = (offset + max).min(state.ids.len());
    let mut csv = state.fields.iter().map(|field| wire::csv_field(field)).collect::<Vec<_>>().join(",");
    csv.push('\n');
    let table = inner.tables.get(state.object);
    for id in state.ids.get(offset..end).unwrap_or_default() {
        let Some(row) = table.and_then(|table| table.rows.get(id)) else { continue };
        let rendered = render(&sim, state.object, id, row, &state.fields, false);
        let cells: Vec<String> = state
            .fields
            .iter()
            .map(|field| match rendered.get(field) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => wire::csv_field(text),
                Some(other) => other.to_string(),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    let locator = if end < state.ids.len() {
        base64::engine::general_purpose::STANDARD.encode(end.to_string())
    } else {
        "null".to_owned()
    };
    let count = end.saturating_sub(offset);
    drop(inner);
    let mut bytes = csv.into_bytes();
    if sim.faults.take_truncation() {
        bytes = truncate(&bytes);
    }
    let mut response = ([(header::CONTENT_TYPE, "text/csv")], bytes).into_response();
    if let Ok(value) = HeaderValue::from_str(&locator) {
        response.headers_mut().insert("sforce-locator", value);
    }
    if let Ok(value) = HeaderValue::from_str(&count.to_string()) {
        response.headers_mut().insert("sforce-numberofrecords", value);
    }
    sim.with_limit_info(response)
}

async fn query_more(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, locator)): Path<(String, String)>,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let Some((locator_id, offset)) =
        locator.rsplit_once('-').and_then(|(id, offset)| Some((id.to_owned(), offset.parse::<usize>().ok()?)))
    else {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        ));
    };
    let mut inner = sim.lock();
    let Some(found) = inner.locators.remove(&locator_id) else {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        ));
    };
    let response = page(&sim, &mut inner, locator_id, found, offset);
    drop(inner);
    sim.with_limit_info(response)
}

fn page(sim: &SalesforceSim, inner: &mut Inner, locator_id: String, locator: Locator, offset: usize) -> Response {
    let end = (offset + locator.batch).min(locator.ids.len());
    let Some(table) = inner.tables.get(locator.object) else {
        return rest_error(StatusCode::BAD_REQUEST, "INVALID_TYPE", "sObject type is not supported");
    };
    let mut records = Vec::with_capacity(end.saturating_sub(offset));
    for id in locator.ids.get(offset..end).unwrap_or_default() {
        let Some(row) = table.rows.get(id) else { continue };
        records.push(render(sim, locator.object, id, row, &locator.fields, locator.items));
    }
    let done = end >= locator.ids.len();
    let endpoint = if locator.all { "queryAll" } else { "query" };
    let next = (!done).then(|| format!("/services/data/{API_VERSION}/{endpoint}/{locator_id}-{end}"));
    let body = wire::QueryResponse { total_size: locator.ids.len() as u64, done, next_records_url: next, records };
    if !done {
        inner.locators.insert(locator_id, locator);
    }
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if sim.faults.take_truncation() {
        bytes = truncate(&bytes);
    }
    ([(header::CONTENT_TYPE, "application/json;charset=UTF-8")], bytes).into_response()
}

fn render(
    sim: &SalesforceSim,
    object: &str,
    id: &str,
    row: &Row,
    fields: &[String],
    items: bool,
) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert(
        "attributes".into(),
        json!({"type": object, "url": format!("/services/data/{API_VERSION}/sobjects/{object}/{id}")}),
    );
    for field in fields {
        let value = match field.as_str() {
            "Id" => json!(id),
            "SystemModstamp" => json!(stamp_text(row.modstamp)),
            "IsDeleted" => json!(row.deleted),
            "Stage__c" if sim.faults.drift_renamed_field() => {
                row.fields.get("StageName").cloned().unwrap_or(Value::Null)
            }
            "Region__c" => json!("EMEA"),
            name => row.fields.get(name).cloned().unwrap_or(Value::Null),
        };
        record.insert(field.clone(), value);
    }
    if items {
        let value = if row.items.is_empty() {
            Value::Null
        } else {
            json!({"totalSize": row.items.len(), "done": true, "records": row.items})
        };
        record.insert("OrderItems".into(), value);
    }
    record
}

struct Soql {
    object: &'static str,
    fields: Vec<String>,
    items: bool,
    since: Option<i64>,
    ids: Option<HashSet<String>>,
    deleted: Option<bool>,
}

/// Parses the SOQL subset the connector emits:
/// `SELECT f, … [, (order items subquery)] FROM O [WHERE c AND …] [ORDER BY SystemModstamp ASC, Id ASC]`
/// with conditions `SystemModstamp >= <datetime>`, `Id IN ('…', …)`, `IsDeleted = true|false`.
fn parse_soql(soql: &str) -> Result<Soql, String> {
    let items = soql.contains(wire::ORDER_ITEMS_SUBQUERY);
    let without_items = soql.replace(&format!(", {}", wire::ORDER_ITEMS_SUBQUERY), "");
    let rest = without_items.strip_prefix("SELECT ").ok_or("unexpected token: expected SELECT")?;
    let (select, rest) = rest.split_once(" FROM ").ok_or("unexpected token: expected FROM")?;
    if select.contains('(') {
        return Err("unexpected token: '('".into());
    }
    let (object, rest) = match rest.split_once(' ') {
        Some((object, rest)) => (object, rest),
        None => (rest, ""),
    };
    let object = object_name(object).ok_or_else(|| format!("sObject type '{object}' is not supported."))?;
    let mut rest = rest.trim().to_owned();
    let mut since = None;
    let mut ids = None;
    let mut deleted = None;
    if let Some(conditions) = rest.clone().strip_prefix("WHERE ") {
        let (conditions, after) = match conditions.split_once(" ORDER BY ") {
            Some((conditions, after)) => (conditions, format!("ORDER BY {after}")),
            None => (conditions, String::new()),
        };
        for condition in conditions.split(" AND ") {
            let condition = condition.trim();
            if let Some(stamp) = condition.strip_prefix("SystemModstamp >= ") {
                since = Some(stamp.parse::<Timestamp>().map_err(|error| error.to_string())?.unix_millis());
            } else if let Some(list) = condition.strip_prefix("Id IN (").and_then(|list| list.strip_suffix(')')) {
                let parsed: Option<HashSet<String>> = list
                    .split(',')
                    .map(|id| id.trim().strip_prefix('\'').and_then(|id| id.strip_suffix('\'')).map(str::to_owned))
                    .collect();
                ids = Some(parsed.ok_or_else(|| format!("unexpected token in IN list: {list}"))?);
            } else if let Some(flag) = condition.strip_prefix("IsDeleted = ") {
                deleted = Some(match flag {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("unexpected token: {other}")),
                });
            } else {
                return Err(format!("unexpected token: {condition}"));
            }
        }
        rest = after.trim().to_owned();
    }
    if !rest.is_empty() && rest != "ORDER BY SystemModstamp ASC, Id ASC" {
        return Err(format!("unexpected token: {rest}"));
    }
    let fields: Vec<String> =
        select.split(',').map(str::trim).filter(|field| !field.is_empty()).map(str::to_owned).collect();
    Ok(Soql { object, fields, items, since, ids, deleted })
}

async fn upsert(
    State(sim): Shared,
    headers: HeaderMap,
    Path((_version, object, field)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let response = match (object_name(&object), field.as_str()) {
        (None, _) => rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist"),
        (Some(_), field) if field != "Crmsync_Id__c" => {
            rest_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist")
        }
        (Some(object), _) => match serde_json::from_slice::<wire::CollectionRequest>(&body) {
            Err(error) => rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()),
            Ok(request) if request.records.len() > 200 => rest_error(
                StatusCode::BAD_REQUEST,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            ),
            Ok(request) => {
                let results: Vec<CollectionResult> =
                    request.records.into_iter().map(|record| sim.upsert_one(object, record)).collect();
                axum::Json(results).into_response()
            }
        },
    };
    sim.with_limit_info(response)
}

fn failure(code: &str, message: String, fields: &[&str]) -> CollectionResult {
    CollectionResult {
        id: None,
        success: false,
        errors: vec![CollectionError {
            status_code: code.into(),
            message,
            fields: fields.iter().map(|field| (*field).to_owned()).collect(),
        }],
        created: None,
    }
}

impl SalesforceSim {
    fn upsert_one(&self, object: &'static str, mut record: Map<String, Value>) -> CollectionResult {
        let declared = record
            .remove("attributes")
            .and_then(|attributes| attributes.get("type").and_then(Value::as_str).map(str::to_owned));
        if declared.as_deref() != Some(object) {
            return failure("INVALID_TYPE", format!("attributes.type must be {object}"), &[]);
        }
        let Some(external) = record.remove("Crmsync_Id__c").and_then(|value| value.as_str().map(str::to_owned)) else {
            return failure(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [Crmsync_Id__c]".into(),
                &["Crmsync_Id__c"],
            );
        };
        if external.is_empty() || external.len() > 36 {
            return failure(
                "STRING_TOO_LONG",
                format!("Crmsync Id: data value too large: {external}"),
                &["Crmsync_Id__c"],
            );
        }
        let specs = schema(object);
        let mut inner = self.lock();
        // Relationship references by external id: "Account": {"Crmsync_Id__c": "…"}.
        for (relationship, target, id_field) in
            [("Account", "Account", "AccountId"), ("Opportunity", "Opportunity", "OpportunityId")]
        {
            if let Some(reference) = record.remove(relationship) {
                let key = reference.get("Crmsync_Id__c").and_then(Value::as_str).unwrap_or_default().to_owned();
                match inner.tables.get(target).and_then(|table| table.by_external.get(&key)).cloned() {
                    Some(id) => {
                        record.insert(id_field.into(), json!(id));
                    }
                    None => {
                        return failure(
                            "INVALID_FIELD",
                            format!(
                                "Foreign key external ID: {key} not found for field Crmsync_Id__c in entity {target}"
                            ),
                            &[id_field],
                        );
                    }
                }
            }
        }
        for (name, value) in &record {
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                return failure(
                    "INVALID_FIELD",
                    format!("No such column '{name}' on sobject of type {object}"),
                    &[name],
                );
            };
            if !spec.writable {
                return failure(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    format!(
                        "Unable to create/update fields: {name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."
                    ),
                    &[name],
                );
            }
            if !spec.picklist.is_empty()
                && !value.is_null()
                && !value.as_str().is_some_and(|text| spec.picklist.contains(&text))
            {
                return failure(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!(
                        "{}: bad value for restricted picklist field: {}",
                        spec.name,
                        value.as_str().unwrap_or("?")
                    ),
                    &[name],
                );
            }
            if spec.kind == "reference" && !value.is_null() {
                let target = if name == "OpportunityId" { "Opportunity" } else { "Account" };
                let exists = value.as_str().is_some_and(|id| {
                    inner.tables.get(target).is_some_and(|table| table.rows.get(id).is_some_and(|row| !row.deleted))
                });
                if !exists {
                    return failure(
                        "INVALID_CROSS_REFERENCE_KEY",
                        format!("invalid cross reference id: {value}"),
                        &[name],
                    );
                }
            }
            if spec.kind == "date"
                && !value.is_null()
                && value.as_str().is_none_or(|text| text.parse::<jiff::civil::Date>().is_err())
            {
                return failure(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    format!("{name}: value not of required type: {value}"),
                    &[name],
                );
            }
        }
        let existing = inner.tables.get(object).and_then(|table| table.by_external.get(&external)).cloned();
        let created = existing.is_none();
        if created {
            let missing: Vec<&str> = specs
                .iter()
                .filter(|spec| spec.required && record.get(spec.name).is_none_or(Value::is_null))
                .map(|spec| spec.name)
                .collect();
            if !missing.is_empty() {
                return failure(
                    "REQUIRED_FIELD_MISSING",
                    format!("Required fields are missing: [{}]", missing.join(", ")),
                    &missing,
                );
            }
        }
        let stamp = inner.tick();
        let prefix = wire::OBJECTS.iter().find(|(_, name, _)| *name == object).map_or("001", |(_, _, prefix)| prefix);
        let id = match existing {
            Some(id) => id,
            None => inner.new_id(prefix),
        };
        let order_number = if created && object == "Order" { Some(format!("{:08}", inner.next_id)) } else { None };
        let Some(table) = inner.tables.get_mut(object) else {
            return failure("INVALID_TYPE", "unknown object".into(), &[]);
        };
        let row = table.rows.entry(id.clone()).or_insert_with(|| Row {
            fields: Map::new(),
            modstamp: stamp,
            deleted: false,
            items: Vec::new(),
        });
        if created {
            row.fields.insert("CreatedDate".into(), json!(stamp_text(stamp)));
            row.fields.insert("OwnerId".into(), json!("005000000000001AAA"));
            if let Some(number) = order_number {
                row.fields.insert("OrderNumber".into(), json!(number));
            }
        }
        for (name, value) in record {
            row.fields.insert(name, value);
        }
        row.fields.insert("Crmsync_Id__c".into(), json!(external));
        if object == "Opportunity" {
            let stage = row.fields.get("StageName").and_then(Value::as_str).unwrap_or("").to_owned();
            row.fields.insert("IsWon".into(), json!(stage == "Closed Won"));
            row.fields.insert("IsClosed".into(), json!(stage.starts_with("Closed")));
            if row.fields.get("Probability").is_none_or(Value::is_null) {
                row.fields.insert("Probability".into(), json!(stage_probability(&stage)));
            }
        }
        if object == "Order" && created {
            row.fields.insert("TotalAmount".into(), json!(0));
        }
        if object == "Lead" && created {
            row.fields.insert("IsConverted".into(), json!(false));
            if row.fields.get("Status").is_none_or(Value::is_null) {
                // The org's default lead status.
                row.fields.insert("Status".into(), json!("Open - Not Contacted"));
            }
        }
        row.modstamp = stamp;
        row.deleted = false;
        table.by_external.insert(external, id.clone());
        CollectionResult { id: Some(id), success: true, errors: Vec::new(), created: Some(created) }
    }
}

async fn update(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let response = match serde_json::from_slice::<wire::CollectionRequest>(&body) {
        Err(error) => rest_error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &error.to_string()),
        Ok(request) if request.records.len() > 200 => rest_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ),
        Ok(request) => {
            let results: Vec<CollectionResult> =
                request.records.into_iter().map(|record| sim.update_one(record)).collect();
            axum::Json(results).into_response()
        }
    };
    sim.with_limit_info(response)
}

impl SalesforceSim {
    /// sObject Collections update: each record names its `id`; it must exist. Setting the external-id
    /// field here is how a record that predates crmsync gets stamped.
    fn update_one(&self, mut record: Map<String, Value>) -> CollectionResult {
        let Some(id) = record.remove("id").and_then(|value| value.as_str().map(str::to_owned)) else {
            return failure("MISSING_ARGUMENT", "Id not specified in an update call".into(), &[]);
        };
        let object = match record
            .get("attributes")
            .and_then(|attributes| attributes.get("type"))
            .and_then(Value::as_str)
            .and_then(object_name)
        {
            Some(object) => object,
            None => return failure("INVALID_TYPE", "attributes.type is missing or unknown".into(), &[]),
        };
        let external = record.get("Crmsync_Id__c").and_then(Value::as_str).map(str::to_owned);
        let exists =
            self.lock().tables.get(object).is_some_and(|table| table.rows.get(&id).is_some_and(|row| !row.deleted));
        if !exists {
            return failure("ENTITY_IS_DELETED", format!("entity is deleted or does not exist: {id}"), &[]);
        }
        let Some(external) = external else {
            return failure(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [Crmsync_Id__c]".into(),
                &["Crmsync_Id__c"],
            );
        };
        // Re-use the upsert validation and write path, keyed by the (now stamped) external id.
        {
            let mut inner = self.lock();
            if let Some(table) = inner.tables.get_mut(object) {
                if let Some(row) = table.rows.get_mut(&id) {
                    row.fields.insert("Crmsync_Id__c".into(), Value::String(external.clone()));
                }
                table.by_external.insert(external, id.clone());
            }
        }
        let result = self.upsert_one(object, record);
        CollectionResult { created: None, ..result }
    }
}

#[derive(serde::Deserialize)]
struct DeleteParams {
    ids: Option<String>,
    #[serde(rename = "allOrNone")]
    all_or_none: Option<bool>,
}

async fn delete_records(State(sim): Shared, headers: HeaderMap, Query(params): Query<DeleteParams>) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let ids: Vec<String> =
        params.ids.unwrap_or_default().split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect();
    if ids.len() > 200 || params.all_or_none.unwrap_or(false) && ids.is_empty() {
        return sim.with_limit_info(rest_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ));
    }
    let mut inner = sim.lock();
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let stamp = inner.tick();
        let row = inner.tables.values_mut().find_map(|table| table.rows.get_mut(&id));
        match row {
            Some(row) if !row.deleted => {
                row.deleted = true;
                row.modstamp = stamp;
                results.push(CollectionResult { id: Some(id), success: true, errors: Vec::new(), created: None });
            }
            _ => results.push(CollectionResult {
                id: Some(id.clone()),
                success: false,
                errors: vec![CollectionError {
                    status_code: "ENTITY_IS_DELETED".into(),
                    message: "entity is deleted".into(),
                    fields: Vec::new(),
                }],
                created: None,
            }),
        }
    }
    drop(inner);
    sim.with_limit_info(axum::Json(results).into_response())
}
