//! Operator batches: what a person does to the store through the CLI or the REST API — sales orders
//! (create, update, status changes, delete), conflict resolutions, dead-letter retries and drops,
//! identity merges and splits — applied by the single writer like every pull, webhook and push
//! result, so the daemon, the API and the CLI share one path and one transaction per action.
//!
//! Input arrives as [`OrderInput`] / [`OrderPatch`] (the JSON bodies of the API, which the CLI builds
//! from its flags); validation names the offending field ([`OperatorError::Invalid`]). An order's
//! status follows the canonical state machine ([`OrderStatus::successors`]); a change carries the
//! [`version`] the person read, and a stale one is refused with the current record
//! ([`OperatorError::Stale`]). Every accepted change is queued for the routed connections in the same
//! commit, and flushed before the answer.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::BTreeSet;

use crmsync_connectors::Change;
use crmsync_connectors::canonical::{
    CanonicalId, Channel, ConnectionId, Currency, Entity, EntityData, ExternalId, Order, OrderLine, OrderStatus,
    Provenance, Record, RecordRef, Timestamp,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Batch, Dependencies, IngestRules, queue_fan_out};
use crate::reconcile::{self, DeleteAction};
use crate::store::{Commit, ConflictEntry, DeadLetter, OutboxEntry, OutboxOp, Store, StoreError};

/// Lines an order may have (a bound on what one request can make the writer do).
pub const MAX_LINES: usize = 500;
/// Longest order number (Salesforce `OrderReferenceNumber`-sized; vendors cap their number fields).
pub const MAX_NUMBER_LENGTH: usize = 40;
/// Longest free-text details.
pub const MAX_DETAILS_LENGTH: usize = 32_000;

/// One thing a person does.
#[derive(Debug)]
pub enum OperatorAction {
    /// Create a sales order.
    CreateOrder(OrderInput),
    /// Change an order's status or other fields.
    UpdateOrder {
        /// The order.
        id: CanonicalId,
        /// The version the person read (`None`: unconditional).
        if_version: Option<String>,
        /// What to change.
        patch: OrderPatch,
    },
    /// Delete an order; each routed connection follows its route's `on_delete`.
    DeleteOrder {
        /// The order.
        id: CanonicalId,
        /// The version the person read (`None`: unconditional).
        if_version: Option<String>,
    },
    /// Resolve a held conflict by choosing a side.
    ResolveConflict {
        /// Conflict id.
        id: String,
        /// Which value wins.
        take: Side,
    },
    /// Send dead-lettered records again (pushes are queued, pulled changes are applied again).
    RetryDeadLetters(DeadLetterSelection),
    /// Forget dead letters.
    DropDeadLetters(DeadLetterSelection),
    /// Retry every dead-lettered push to a connection whose configuration changed since the
    /// rejections (what the vendor refused may now be accepted, or refused before the call).
    ReleaseHeldPushes {
        /// The connection.
        connection: ConnectionId,
    },
    /// Join `other` into `keep`.
    MergeRecords {
        /// The record that stays.
        keep: CanonicalId,
        /// The record joined into it.
        other: CanonicalId,
    },
    /// Detach a connection's copy into a new record.
    SplitRecord {
        /// The record.
        id: CanonicalId,
        /// The connection whose copy is detached.
        connection: ConnectionId,
    },
}

/// Which side of a conflict wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The value that was in the store.
    Current,
    /// The value that arrived.
    Incoming,
}

/// Which dead letters an action covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterSelection {
    /// Every dead letter.
    All,
    /// These ids.
    Ids(Vec<String>),
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OperatorOutcome {
    /// The order as it is now (created, changed, unchanged or deleted), and the connections the
    /// change was queued for.
    Order {
        /// The record.
        record: Box<Record>,
        /// Its version.
        version: String,
        /// Connections the change was queued for (empty: nothing changed or nothing is routed).
        queued: Vec<ConnectionId>,
    },
    /// A conflict was resolved.
    ConflictResolved {
        /// The conflict.
        conflict: Box<ConflictEntry>,
        /// Connections the chosen value was queued for.
        queued: Vec<ConnectionId>,
    },
    /// Dead letters were retried (`requeued` pushes queued, `reapplied` pulled changes applied).
    DeadLettersRetried {
        /// Pushes queued again.
        requeued: u64,
        /// Pulled changes applied again.
        reapplied: u64,
    },
    /// Dead letters were dropped.
    DeadLettersDropped {
        /// How many.
        dropped: u64,
    },
    /// Two records were merged.
    Merged {
        /// The merged record.
        record: Box<Record>,
        /// The absorbed record's id (it resolves to the merged one).
        absorbed: CanonicalId,
        /// Connections the merged values were queued for.
        queued: Vec<ConnectionId>,
    },
    /// A copy was split off.
    Split {
        /// The record that keeps the other copies.
        remaining: CanonicalId,
        /// The new record holding the detached copy.
        detached: Box<Record>,
    },
}

/// Why an action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The record, conflict or dead letter does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Input that does not validate; `field` names it (`lines[0].quantity`).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A status change the order state machine does not allow.
    #[error("order {id} cannot go from {from} to {to}; allowed from {from}: {}", allowed_list(.allowed))]
    Transition {
        /// The order.
        id: CanonicalId,
        /// Its status.
        from: OrderStatus,
        /// The requested status.
        to: OrderStatus,
        /// The statuses it may go to.
        allowed: Vec<OrderStatus>,
    },
    /// The record changed since the version the person read.
    #[error("order {} changed since version {expected} was read; its current version is {current_version}", .current.id)]
    Stale {
        /// The version the person sent.
        expected: String,
        /// The current version.
        current_version: String,
        /// The record as it is now.
        current: Box<Record>,
    },
    /// The action cannot apply to the record as it is (already resolved, incompatible merge, …).
    #[error("{0}")]
    Refused(String),
    /// The writer has stopped (shutdown).
    #[error("the ingest writer has stopped")]
    Stopped,
    /// The store failed.
    #[error("store failed")]
    Store(#[from] StoreError),
}

fn allowed_list(allowed: &[OrderStatus]) -> String {
    if allowed.is_empty() {
        "none (it is final)".to_owned()
    } else {
        allowed.iter().map(OrderStatus::as_str).collect::<Vec<_>>().join(", ")
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> OperatorError {
    OperatorError::Invalid { field: field.into(), message: message.into() }
}

/// A new order as a person gives it (the body of `POST /api/v1/orders`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderInput {
    /// The customer: a canonical account id, or the account's id in `account_connection`.
    pub account: Option<String>,
    /// The connection `account` is an id of (absent: `account` is a canonical id).
    pub account_connection: Option<String>,
    /// `direct`, `agent`, `ecommerce` or `other`.
    pub channel: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// At least one line.
    pub lines: Option<Vec<LineInput>>,
    /// Order number (generated when absent); unique among orders.
    pub number: Option<String>,
    /// `draft` (default) or `confirmed`.
    pub status: Option<String>,
    /// `YYYY-MM-DD` (default: today, UTC).
    pub order_date: Option<String>,
    /// The opportunity it came from (canonical id).
    pub opportunity: Option<String>,
    /// Free text.
    pub details: Option<String>,
}

/// One order line as a person gives it. Amounts may be JSON numbers or strings (`"19.90"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineInput {
    /// Product name.
    pub product: Option<String>,
    /// Product code.
    pub sku: Option<String>,
    /// Quantity (> 0).
    pub quantity: Option<Value>,
    /// Unit price (≥ 0) in the order's currency.
    pub unit_price: Option<Value>,
}

/// A change to an order (the body of `PATCH /api/v1/orders/{id}`): only the fields present change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderPatch {
    /// New status (the state machine decides).
    pub status: Option<String>,
    /// New channel.
    pub channel: Option<String>,
    /// New order date.
    pub order_date: Option<String>,
    /// New lines (the total is recomputed).
    pub lines: Option<Vec<LineInput>>,
    /// New details.
    pub details: Option<String>,
}

const ORDER_INPUT_FIELDS: &[&str] = &[
    "account",
    "account_connection",
    "channel",
    "currency",
    "lines",
    "number",
    "status",
    "order_date",
    "opportunity",
    "details",
];
const ORDER_PATCH_FIELDS: &[&str] = &["status", "channel", "order_date", "lines", "details"];
const LINE_FIELDS: &[&str] = &["product", "sku", "quantity", "unit_price"];

/// Reads a JSON object's fields one by one, so a wrong type names its field.
fn fields_of<'a>(
    value: &'a Value,
    allowed: &[&str],
    prefix: &str,
) -> Result<&'a serde_json::Map<String, Value>, OperatorError> {
    let Value::Object(map) = value else {
        let field = if prefix.is_empty() { "body" } else { prefix.trim_end_matches('.') };
        return Err(invalid(field, "expected a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(invalid(
            format!("{prefix}{unknown}"),
            format!("unknown field (expected one of: {})", allowed.join(", ")),
        ));
    }
    Ok(map)
}

fn text_field(map: &serde_json::Map<String, Value>, name: &str, prefix: &str) -> Result<Option<String>, OperatorError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid(format!("{prefix}{name}"), "expected a string")),
    }
}

fn lines_field(map: &serde_json::Map<String, Value>) -> Result<Option<Vec<LineInput>>, OperatorError> {
    let Some(value) = map.get("lines").filter(|value| !value.is_null()) else { return Ok(None) };
    let Value::Array(items) = value else { return Err(invalid("lines", "expected an array of lines")) };
    if items.len() > MAX_LINES {
        return Err(invalid("lines", format!("at most {MAX_LINES} lines")));
    }
    let mut lines = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let prefix = format!("lines[{index}].");
        let line = fields_of(item, LINE_FIELDS, &prefix)?;
        let number = |name: &str| match line.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value @ (Value::String(_) | Value::Number(_))) => Ok(Some(value.clone())),
            Some(_) => Err(invalid(format!("{prefix}{name}"), "expected a decimal number or a string holding one")),
        };
        lines.push(LineInput {
            product: text_field(line, "product", &prefix)?,
            sku: text_field(line, "sku", &prefix)?,
            quantity: number("quantity")?,
            unit_price: number("unit_price")?,
        });
    }
    Ok(Some(lines))
}

impl OrderInput {
    /// Reads a `POST /api/v1/orders` body; an unknown field or a wrong type is named.
    pub fn from_json(value: &Value) -> Result<Self, OperatorError> {
        let map = fields_of(value, ORDER_INPUT_FIELDS, "")?;
        Ok(Self {
            account: text_field(map, "account", "")?,
            account_connection: text_field(map, "account_connection", "")?,
            channel: text_field(map, "channel", "")?,
            currency: text_field(map, "currency", "")?,
            lines: lines_field(map)?,
            number: text_field(map, "number", "")?,
            status: text_field(map, "status", "")?,
            order_date: text_field(map, "order_date", "")?,
            opportunity: text_field(map, "opportunity", "")?,
            details: text_field(map, "details", "")?,
        })
    }
}

impl OrderPatch {
    /// Reads a `PATCH /api/v1/orders/{id}` body; an unknown field or a wrong type is named.
    pub fn from_json(value: &Value) -> Result<Self, OperatorError> {
        let map = fields_of(value, ORDER_PATCH_FIELDS, "")?;
        let patch = Self {
            status: text_field(map, "status", "")?,
            channel: text_field(map, "channel", "")?,
            order_date: text_field(map, "order_date", "")?,
            lines: lines_field(map)?,
            details: text_field(map, "details", "")?,
        };
        if patch == Self::default() {
            return Err(invalid("body", format!("nothing to change (give one of: {})", ORDER_PATCH_FIELDS.join(", "))));
        }
        Ok(patch)
    }
}

/// The version of a record as a person changes it: a hash of its propagating values (what crmsync
/// writes to the CRMs; not the vendor-local ones such as `vendor_status`, which every pull may
/// refresh) and its tombstone. Vendor bookkeeping (links, push hashes) does not change it either, so
/// a push or the read-back of one never makes a person's read stale; any change of a value does.
pub fn version(record: &Record) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&reconcile::propagating_fields(&record.data)).unwrap_or_default());
    hasher.update([0]);
    hasher.update(record.deleted_at.map(|at| at.to_string()).unwrap_or_default().as_bytes());
    hasher.finalize().iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

/// Applies one operator action in one commit, flushed before it returns.
pub(super) fn apply(
    store: &Store,
    rules: &IngestRules,
    action: OperatorAction,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    match action {
        OperatorAction::CreateOrder(input) => create_order(store, rules, input, now),
        OperatorAction::UpdateOrder { id, if_version, patch } => {
            update_order(store, rules, id, if_version.as_deref(), patch, now)
        }
        OperatorAction::DeleteOrder { id, if_version } => delete_order(store, rules, id, if_version.as_deref(), now),
        OperatorAction::ResolveConflict { id, take } => resolve_conflict(store, rules, &id, take, now),
        OperatorAction::RetryDeadLetters(selection) => {
            let letters = select_dead_letters(store, &selection)?;
            retry_dead_letters(store, rules, letters, now)
        }
        OperatorAction::DropDeadLetters(selection) => {
            let letters = select_dead_letters(store, &selection)?;
            let mut commit = Commit::default();
            commit.dead_letters_remove.extend(letters.iter().map(|letter| letter.id.clone()));
            finish(store, commit)?;
            Ok(OperatorOutcome::DeadLettersDropped { dropped: letters.len() as u64 })
        }
        OperatorAction::ReleaseHeldPushes { connection } => {
            let letters: Vec<DeadLetter> = store
                .dead_letters(usize::MAX)?
                .into_iter()
                .filter(|letter| letter.connection == connection && letter.canonical_id.is_some())
                .collect();
            retry_dead_letters(store, rules, letters, now)
        }
        OperatorAction::MergeRecords { keep, other } => merge(store, rules, keep, other, now),
        OperatorAction::SplitRecord { id, connection } => split(store, rules, id, &connection, now),
    }
}

fn finish(store: &Store, commit: Commit) -> Result<(), OperatorError> {
    store.commit(commit)?;
    // A person is told "done" only once it is on disk.
    store.flush()?;
    Ok(())
}

fn local(now: Timestamp) -> Provenance {
    Provenance { connection: None, modified_at: now, version: None }
}

/// Queues `record` for every routed connection (a local change: every route's targets).
fn fan_out(
    store: &Store,
    rules: &IngestRules,
    record: &Record,
    commit: &mut Commit,
    now: Timestamp,
) -> Result<Vec<ConnectionId>, OperatorError> {
    let mut queued = BTreeSet::new();
    queue_fan_out(
        store,
        &rules.rules,
        record,
        None,
        &super::IdMap::default(),
        &mut Dependencies::default(),
        &mut queued,
        commit,
        now,
    )?;
    Ok(queued
        .into_iter()
        .filter(|(_, id)| *id == record.id)
        .map(|(connection, _)| connection)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect())
}

fn write(rules: &IngestRules, record: Record, commit: &mut Commit) {
    let keys = reconcile::index_keys(&rules.rules, &record.data);
    commit.records.push((record, keys));
}

fn order_outcome(record: Record, queued: Vec<ConnectionId>) -> OperatorOutcome {
    let version = version(&record);
    OperatorOutcome::Order { record: Box::new(record), version, queued }
}

fn parse_status(text: &str, field: &str) -> Result<OrderStatus, OperatorError> {
    text.trim().to_ascii_lowercase().parse().map_err(|error: crmsync_connectors::canonical::UnknownValue| {
        invalid(field, format!("unknown status {:?} (expected one of {})", error.value, error.expected.join(", ")))
    })
}

fn parse_channel(text: &str) -> Result<Channel, OperatorError> {
    text.trim().to_ascii_lowercase().parse().map_err(|error: crmsync_connectors::canonical::UnknownValue| {
        invalid("channel", format!("unknown channel {:?} (expected one of {})", error.value, error.expected.join(", ")))
    })
}

fn parse_date(text: &str) -> Result<jiff::civil::Date, OperatorError> {
    text.trim().parse().map_err(|_| invalid("order_date", format!("{text:?} is not a date (expected YYYY-MM-DD)")))
}

fn parse_decimal(value: &Value, field: &str) -> Result<Decimal, OperatorError> {
    let text = match value {
        Value::String(text) => text.trim().to_owned(),
        Value::Number(number) => number.to_string(),
        _ => return Err(invalid(field, "expected a decimal number")),
    };
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| invalid(field, format!("{text:?} is not a decimal number")))
}

fn parse_lines(inputs: &[LineInput]) -> Result<Vec<OrderLine>, OperatorError> {
    if inputs.is_empty() {
        return Err(invalid("lines", "an order needs at least one line"));
    }
    let mut lines = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let field = |name: &str| format!("lines[{index}].{name}");
        let product = input.product.as_deref().map(str::trim).filter(|text| !text.is_empty());
        let sku = input.sku.as_deref().map(str::trim).filter(|text| !text.is_empty());
        if product.is_none() && sku.is_none() {
            return Err(invalid(field("product"), "a line needs a product name or a sku"));
        }
        let quantity = match &input.quantity {
            Some(value) => parse_decimal(value, &field("quantity"))?,
            None => return Err(invalid(field("quantity"), "required")),
        };
        if quantity <= Decimal::ZERO {
            return Err(invalid(field("quantity"), "must be greater than 0"));
        }
        let unit_price = match &input.unit_price {
            Some(value) => parse_decimal(value, &field("unit_price"))?,
            None => return Err(invalid(field("unit_price"), "required")),
        };
        if unit_price < Decimal::ZERO {
            return Err(invalid(field("unit_price"), "must not be negative"));
        }
        let line_total = quantity.checked_mul(unit_price).ok_or_else(|| invalid(field("quantity"), "too large"))?;
        lines.push(OrderLine {
            product: product.map(str::to_owned),
            sku: sku.map(str::to_owned),
            quantity,
            unit_price,
            line_total,
        });
    }
    Ok(lines)
}

fn total_of(lines: &[OrderLine]) -> Result<Decimal, OperatorError> {
    lines
        .iter()
        .try_fold(Decimal::ZERO, |sum, line| sum.checked_add(line.line_total))
        .ok_or_else(|| invalid("lines", "the order total is too large"))
}

/// Resolves the customer: a canonical account id, or an account's id in a connection.
fn resolve_account(store: &Store, account: &str, connection: Option<&str>) -> Result<CanonicalId, OperatorError> {
    let account = account.trim();
    let record = match connection {
        Some(connection) => {
            let connection = ConnectionId::new(connection.trim());
            store.record_by_link(&connection, Entity::Account, &ExternalId::new(account))?.ok_or_else(|| {
                invalid("account", format!("no account {account:?} is known in connection {connection}"))
            })?
        }
        None => {
            let id: CanonicalId = account.parse().map_err(|_| {
                invalid(
                    "account",
                    format!(
                        "{account:?} is not a canonical account id (a UUID); give a vendor id together with \
                         account_connection"
                    ),
                )
            })?;
            store.record(id)?.ok_or_else(|| invalid("account", format!("no account {id}")))?
        }
    };
    if record.entity() != Entity::Account {
        return Err(invalid("account", format!("{} is {}, not an account", record.id, record.entity())));
    }
    // An account merged into another resolves to the one it was merged into.
    let record = match record.merged_into {
        Some(target) => store.record(target)?.ok_or_else(|| invalid("account", format!("no account {target}")))?,
        None => record,
    };
    if record.is_deleted() {
        return Err(invalid("account", format!("account {} is deleted", record.id)));
    }
    Ok(record.id)
}

fn resolve_opportunity(store: &Store, text: &str) -> Result<CanonicalId, OperatorError> {
    let id: CanonicalId = text
        .trim()
        .parse()
        .map_err(|_| invalid("opportunity", format!("{text:?} is not a canonical opportunity id (a UUID)")))?;
    match store.record(id)? {
        Some(record) if record.entity() == Entity::Opportunity && !record.is_deleted() => {
            Ok(record.merged_into.unwrap_or(id))
        }
        _ => Err(invalid("opportunity", format!("no opportunity {id}"))),
    }
}

/// Returns the id of a live order other than `except` with this number, if any.
fn order_with_number(
    store: &Store,
    rules: &IngestRules,
    number: &str,
    except: CanonicalId,
) -> Result<Option<CanonicalId>, OperatorError> {
    let probe = EntityData::Order(Order { number: Some(number.to_owned()), ..Order::default() });
    for (key, value) in reconcile::match_key_values(&rules.rules, &probe) {
        if key != "number" {
            continue;
        }
        for id in store.ids_by_match_key(Entity::Order, &key, &value)? {
            if id != except
                && let Some(record) = store.record(id)?
                && !record.is_deleted()
                && record.merged_into.is_none()
            {
                return Ok(Some(id));
            }
        }
    }
    // Without a `number` match key the store has no index to ask; uniqueness is then the vendors' to check.
    Ok(None)
}

fn generated_number(id: CanonicalId, now: Timestamp) -> String {
    let date = now.date();
    // The random tail of the UUIDv7 (its head is the timestamp, shared by orders made in one millisecond).
    let simple = id.as_uuid().simple().to_string();
    let tail = simple.get(simple.len().saturating_sub(8)..).unwrap_or(&simple);
    format!("SO-{:04}{:02}{:02}-{tail}", date.year(), date.month(), date.day())
}

fn create_order(
    store: &Store,
    rules: &IngestRules,
    input: OrderInput,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let id = CanonicalId::new();
    let account = match input.account.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
        Some(account) => resolve_account(store, account, input.account_connection.as_deref())?,
        None => return Err(invalid("account", "required: the customer's canonical account id (or vendor id)")),
    };
    let channel = match input.channel.as_deref() {
        Some(text) => parse_channel(text)?,
        None => return Err(invalid("channel", "required: direct, agent, ecommerce or other")),
    };
    let currency = match input.currency.as_deref() {
        Some(text) => Currency::new(text).map_err(|error| invalid("currency", error.to_string()))?,
        None => return Err(invalid("currency", "required: an ISO 4217 code such as EUR")),
    };
    let lines = match &input.lines {
        Some(lines) => parse_lines(lines)?,
        None => return Err(invalid("lines", "required: at least one line with product, quantity and unit_price")),
    };
    let status = match input.status.as_deref() {
        None => OrderStatus::Draft,
        Some(text) => match parse_status(text, "status")? {
            status @ (OrderStatus::Draft | OrderStatus::Confirmed) => status,
            other => {
                return Err(invalid(
                    "status",
                    format!("a new order is draft or confirmed, not {other} (change the status afterwards)"),
                ));
            }
        },
    };
    let number = match input.number.as_deref().map(str::trim) {
        Some("") => return Err(invalid("number", "must not be empty (leave it out to have one generated)")),
        Some(number) if number.chars().count() > MAX_NUMBER_LENGTH => {
            return Err(invalid("number", format!("at most {MAX_NUMBER_LENGTH} characters")));
        }
        Some(number) => number.to_owned(),
        None => generated_number(id, now),
    };
    if let Some(existing) = order_with_number(store, rules, &number, id)? {
        return Err(invalid("number", format!("order number {number:?} is already used by order {existing}")));
    }
    let order_date = match input.order_date.as_deref() {
        Some(text) => parse_date(text)?,
        None => now.date(),
    };
    let opportunity = input.opportunity.as_deref().map(|text| resolve_opportunity(store, text)).transpose()?;
    let details = input.details.filter(|text| !text.trim().is_empty());
    if details.as_ref().is_some_and(|text| text.len() > MAX_DETAILS_LENGTH) {
        return Err(invalid("details", format!("at most {MAX_DETAILS_LENGTH} bytes")));
    }
    let total_amount = total_of(&lines)?;
    let order = Order {
        number: Some(number),
        account: Some(RecordRef::canonical(account)),
        opportunity: opportunity.map(RecordRef::canonical),
        channel: Some(channel),
        vendor_channel: None,
        status: Some(status),
        vendor_status: None,
        currency: Some(currency),
        total_amount: Some(total_amount),
        order_date: Some(order_date),
        lines: Some(lines),
        details,
    };
    let mut record = Record::new(id, Entity::Order, now);
    record.data = EntityData::Order(order);
    reconcile::canonicalise(&mut record.data);
    for field in record.data.to_fields().keys() {
        record.provenance.insert(field.clone(), local(now));
    }
    let mut commit = Commit::default();
    let queued = fan_out(store, rules, &record, &mut commit, now)?;
    // Its id was minted here: no earlier version exists.
    commit.created.insert(record.id);
    write(rules, record.clone(), &mut commit);
    finish(store, commit)?;
    tracing::info!(order = %record.id, queued = queued.len(), "order created");
    Ok(order_outcome(record, queued))
}

/// Loads a live order (following a merge), or says why not.
fn load_order(store: &Store, id: CanonicalId) -> Result<Record, OperatorError> {
    let record = store.record(id)?.ok_or_else(|| OperatorError::NotFound(format!("no order {id}")))?;
    let record = match record.merged_into {
        Some(target) => store.record(target)?.ok_or_else(|| OperatorError::NotFound(format!("no order {id}")))?,
        None => record,
    };
    if record.entity() != Entity::Order {
        return Err(OperatorError::NotFound(format!("no order {id} ({id} is {})", record.entity())));
    }
    if let Some(at) = record.deleted_at {
        return Err(OperatorError::NotFound(format!("order {id} was deleted at {at}")));
    }
    Ok(record)
}

fn check_version(record: &Record, expected: Option<&str>) -> Result<(), OperatorError> {
    let Some(expected) = expected.map(|text| text.trim().trim_start_matches("W/").trim_matches('"')) else {
        return Ok(());
    };
    let current = version(record);
    if expected == "*" || expected == current {
        return Ok(());
    }
    Err(OperatorError::Stale {
        expected: expected.to_owned(),
        current_version: current,
        current: Box::new(record.clone()),
    })
}

fn update_order(
    store: &Store,
    rules: &IngestRules,
    id: CanonicalId,
    if_version: Option<&str>,
    patch: OrderPatch,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let mut record = load_order(store, id)?;
    check_version(&record, if_version)?;
    let EntityData::Order(mut order) = record.data.clone() else {
        return Err(OperatorError::NotFound(format!("no order {id}")));
    };
    let mut changed: Vec<&str> = Vec::new();
    if let Some(text) = patch.status.as_deref() {
        let wanted = parse_status(text, "status")?;
        // An order a vendor sent without a status is where every order starts.
        let current = order.status.unwrap_or(OrderStatus::Draft);
        if wanted != current || order.status.is_none() {
            if !current.can_become(wanted) {
                return Err(OperatorError::Transition {
                    id: record.id,
                    from: current,
                    to: wanted,
                    allowed: current.successors().to_vec(),
                });
            }
            order.status = Some(wanted);
            changed.push("status");
        }
    }
    if let Some(text) = patch.channel.as_deref() {
        let channel = parse_channel(text)?;
        if order.channel != Some(channel) {
            order.channel = Some(channel);
            changed.push("channel");
        }
    }
    if let Some(text) = patch.order_date.as_deref() {
        let date = parse_date(text)?;
        if order.order_date != Some(date) {
            order.order_date = Some(date);
            changed.push("order_date");
        }
    }
    if let Some(inputs) = &patch.lines {
        let lines = parse_lines(inputs)?;
        let total = total_of(&lines)?;
        order.lines = Some(lines);
        order.total_amount = Some(total);
        changed.extend(["lines", "total_amount"]);
    }
    if let Some(details) = patch.details {
        if details.len() > MAX_DETAILS_LENGTH {
            return Err(invalid("details", format!("at most {MAX_DETAILS_LENGTH} bytes")));
        }
        let details = Some(details).filter(|text| !text.trim().is_empty());
        if order.details != details {
            order.details = details;
            changed.push("details");
        }
    }
    let mut data = EntityData::Order(order);
    reconcile::canonicalise(&mut data);
    if changed.is_empty() || data == record.data {
        // Asking for what already is: nothing to write or send.
        return Ok(order_outcome(record, Vec::new()));
    }
    record.data = data;
    for field in changed {
        record.provenance.insert(field.to_owned(), local(now));
    }
    record.updated_at = now;
    let mut commit = Commit::default();
    let queued = fan_out(store, rules, &record, &mut commit, now)?;
    write(rules, record.clone(), &mut commit);
    finish(store, commit)?;
    tracing::info!(order = %record.id, queued = queued.len(), "order changed");
    Ok(order_outcome(record, queued))
}

fn delete_order(
    store: &Store,
    rules: &IngestRules,
    id: CanonicalId,
    if_version: Option<&str>,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let mut record = load_order(store, id)?;
    check_version(&record, if_version)?;
    record.deleted_at = Some(now);
    record.updated_at = now;
    record.provenance.insert("deleted_at".to_owned(), local(now));
    let mut commit = Commit::default();
    // Each target follows its route's on_delete: delete its copy, cancel it (mark), or leave it.
    let queued = fan_out(store, rules, &record, &mut commit, now)?;
    write(rules, record.clone(), &mut commit);
    finish(store, commit)?;
    tracing::info!(order = %record.id, queued = queued.len(), "order deleted");
    Ok(order_outcome(record, queued))
}

fn resolve_conflict(
    store: &Store,
    rules: &IngestRules,
    id: &str,
    take: Side,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let conflict = store
        .conflicts(false)?
        .into_iter()
        .find(|conflict| conflict.id == id)
        .ok_or_else(|| OperatorError::NotFound(format!("no conflict {id}")))?;
    if conflict.resolved {
        return Err(OperatorError::Refused(format!("conflict {id} is already resolved")));
    }
    let mut record = store
        .record(conflict.canonical_id)?
        .ok_or_else(|| OperatorError::Refused(format!("the record of conflict {id} no longer exists")))?;
    let value = match take {
        Side::Current => conflict.current.value.clone(),
        Side::Incoming => conflict.incoming.value.clone(),
    };
    reconcile::resolve_field(&mut record, &conflict.field, value, now)
        .map_err(|error| OperatorError::Refused(error.to_string()))?;
    let mut commit = Commit::default();
    let queued = fan_out(store, rules, &record, &mut commit, now)?;
    write(rules, record, &mut commit);
    commit.conflicts_resolved.push(conflict.id.clone());
    finish(store, commit)?;
    let mut conflict = conflict;
    conflict.resolved = true;
    Ok(OperatorOutcome::ConflictResolved { conflict: Box::new(conflict), queued })
}

fn select_dead_letters(store: &Store, selection: &DeadLetterSelection) -> Result<Vec<DeadLetter>, OperatorError> {
    let letters = store.dead_letters(usize::MAX)?;
    match selection {
        DeadLetterSelection::All => Ok(letters),
        DeadLetterSelection::Ids(ids) => {
            if ids.is_empty() {
                return Err(invalid("ids", "give dead-letter ids, or all"));
            }
            let known: BTreeSet<&str> = letters.iter().map(|letter| letter.id.as_str()).collect();
            if let Some(missing) = ids.iter().find(|id| !known.contains(id.as_str())) {
                return Err(OperatorError::NotFound(format!("no dead letter {missing:?}")));
            }
            let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            Ok(letters.into_iter().filter(|letter| wanted.contains(letter.id.as_str())).collect())
        }
    }
}

fn retry_dead_letters(
    store: &Store,
    rules: &IngestRules,
    letters: Vec<DeadLetter>,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let (mut requeued, mut reapplied) = (0, 0);
    let mut commit = Commit::default();
    let mut changes: Vec<(ConnectionId, Change, String)> = Vec::new();
    for letter in letters {
        match letter.canonical_id {
            // A rejected push: queue the record for that connection again, with what it needs now
            // (the route's delete action for a deleted record).
            Some(id) => {
                let op = match store.record(id)? {
                    Some(record) if record.is_deleted() => rules
                        .rules
                        .targets(record.entity(), None)
                        .into_iter()
                        .find(|(target, _)| target == &letter.connection)
                        .map(|(_, action)| match action {
                            DeleteAction::Delete => OutboxOp::Delete,
                            DeleteAction::Mark => OutboxOp::Mark,
                            DeleteAction::Ignore => OutboxOp::Upsert,
                        }),
                    Some(_) => Some(OutboxOp::Upsert),
                    None => None,
                };
                if let Some(op) = op {
                    commit.outbox.push((letter.connection.clone(), OutboxEntry::new(letter.entity, id, op, now)));
                    requeued += 1;
                }
                commit.dead_letters_remove.push(letter.id);
            }
            // A record a pull could not decode holds no change to apply: it waits until the record
            // changes in the vendor (the next pull reads it again) or an operator drops it.
            None if letter.payload.get(super::UNDECODABLE).is_some() => {}
            // A change that could not be applied: apply it again (after a fix in config or code).
            None => {
                let change: Change = serde_json::from_value(letter.payload.clone()).map_err(|_| {
                    OperatorError::Refused(format!("dead letter {} does not hold a change to apply", letter.id))
                })?;
                changes.push((letter.connection, change, letter.id));
            }
        }
    }
    finish(store, commit)?;
    for (connection, change, letter) in changes {
        // The change may be dead-lettered again (with a new letter); the old one goes either way.
        super::apply_batch(store, rules, Batch::Delivered { connection, changes: vec![change] }, now).map_err(
            |error| match error {
                super::IngestError::Store(error) => OperatorError::Store(error),
                other => OperatorError::Refused(other.to_string()),
            },
        )?;
        let mut commit = Commit::default();
        commit.dead_letters_remove.push(letter);
        finish(store, commit)?;
        reapplied += 1;
    }
    Ok(OperatorOutcome::DeadLettersRetried { requeued, reapplied })
}

fn merge(
    store: &Store,
    rules: &IngestRules,
    keep: CanonicalId,
    other: CanonicalId,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let load = |id: CanonicalId| -> Result<Record, OperatorError> {
        store.record(id)?.ok_or_else(|| OperatorError::NotFound(format!("no record {id} in the store")))
    };
    let (keep, other) = (load(keep)?, load(other)?);
    let (merged, absorbed) =
        reconcile::merge_records(&keep, &other, now).map_err(|error| OperatorError::Refused(error.to_string()))?;
    let mut commit = Commit::default();
    let queued = fan_out(store, rules, &merged, &mut commit, now)?;
    let absorbed_id = absorbed.id;
    // The absorbed record first: writing it releases its links, which the merged record takes.
    commit.records.push((absorbed, Vec::new()));
    write(rules, merged.clone(), &mut commit);
    finish(store, commit)?;
    Ok(OperatorOutcome::Merged { record: Box::new(merged), absorbed: absorbed_id, queued })
}

fn split(
    store: &Store,
    rules: &IngestRules,
    id: CanonicalId,
    connection: &ConnectionId,
    now: Timestamp,
) -> Result<OperatorOutcome, OperatorError> {
    let record = store.record(id)?.ok_or_else(|| OperatorError::NotFound(format!("no record {id} in the store")))?;
    let (remaining, detached) = reconcile::split_record(&record, connection, CanonicalId::new(), now)
        .map_err(|error| OperatorError::Refused(error.to_string()))?;
    let mut commit = Commit::default();
    let remaining_id = remaining.id;
    // The remaining record first: writing it releases the link the detached record takes.
    write(rules, remaining, &mut commit);
    write(rules, detached.clone(), &mut commit);
    finish(store, commit)?;
    Ok(OperatorOutcome::Split { remaining: remaining_id, detached: Box::new(detached) })
}
