//! Dataverse rows ↔ canonical records: the only place the two meet.
//!
//! - Stages (SPEC §2): `statecode` 1/2 are won/lost; otherwise `salesstage` through the vocabulary
//!   (`"0"`…`"3"`), with `salesstage` 0 plus a `budgetstatus` read as `budget`.
//! - Order status: the salesorder `statecode` through the vocabulary.
//! - Money: JSON numbers read as decimals, with the row's transaction currency (a lookup resolved to
//!   its ISO code through the org's `transactioncurrencies`).
//! - Lookups: `_customerid_value` (account), `_opportunityid_value`; written as `@odata.bind` by
//!   Dataverse id when the target has the record, else by the alternate key holding the canonical id.
//! - The canonical order number is the salesorder's `name` (`ordernumber` is assigned by Dataverse);
//!   the order date is `submitdate`; lines are `salesorderdetails` pointing at the org's product
//!   catalogue (matched by product number = SKU, else by name), or write-in products when the
//!   catalogue has no match.
//!
//! Dataverse has no column for some canonical fields (an account's free-text industry; the sales
//! channel unless `channel_field` names one), so its changes are [`Completeness::Partial`]: an absent
//! value is unknown, never an instruction to clear the field elsewhere.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::config::Dynamics365Config;
use super::wire::{self, LOOKUP_LOGICAL_NAME};
use crate::canonical::{
    Account, CanonicalId, Channel, Currency, Entity, EntityData, ExternalId, Lead, Money, Opportunity, Order,
    OrderLine, RecordRef, Stage, Timestamp, Vocabulary, decimal_json, join_name, normalise_domain, split_name,
};
use crate::connector::{Change, ChangeKind, Completeness};
use crate::error::ConnectorError;
use crate::row::{RawRow, date, decimal, integer, text, timestamp};
use crate::settings::FieldPolicy;

/// Formatted-value annotation suffix.
pub const FORMATTED: &str = "@OData.Community.Display.V1.FormattedValue";

/// Transaction currencies of the org: id → ISO code, and back.
#[derive(Debug, Default, Clone)]
pub struct Currencies {
    by_id: HashMap<String, String>,
}

impl Currencies {
    /// Builds the table from `(transactioncurrencyid, isocurrencycode)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { by_id: pairs.into_iter().collect() }
    }

    /// The ISO code of a currency id.
    pub fn code(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// The id of an ISO code.
    pub fn id(&self, code: &str) -> Option<&str> {
        self.by_id.iter().find(|(_, iso)| iso.eq_ignore_ascii_case(code)).map(|(id, _)| id.as_str())
    }
}

/// The org's product catalogue: id → (name, product number = SKU).
#[derive(Debug, Default, Clone)]
pub struct Products {
    by_id: HashMap<String, (String, String)>,
}

impl Products {
    /// Builds the catalogue from `(productid, name, productnumber)` rows.
    pub fn new(rows: impl IntoIterator<Item = (String, String, String)>) -> Self {
        Self { by_id: rows.into_iter().map(|(id, name, number)| (id, (name, number))).collect() }
    }

    /// A product's name and number.
    pub fn get(&self, id: &str) -> Option<(&str, &str)> {
        self.by_id.get(id).map(|(name, number)| (name.as_str(), number.as_str()))
    }

    /// The product with this SKU, else with this name.
    pub fn find(&self, sku: Option<&str>, name: Option<&str>) -> Option<&str> {
        let by = |wanted: &str, pick: fn(&(String, String)) -> &String| {
            self.by_id.iter().find(|(_, product)| pick(product).eq_ignore_ascii_case(wanted)).map(|(id, _)| id.as_str())
        };
        sku.and_then(|sku| by(sku, |product| &product.1))
            .or_else(|| name.and_then(|name| by(name, |product| &product.0)))
    }
}

/// Canonical field → Dataverse columns (`{channel}`: the configured channel column).
pub fn vendor_columns(entity: Entity, canonical: &str) -> &'static [&'static str] {
    match (entity, canonical) {
        (Entity::Account, "name") => &["name"],
        (Entity::Account, "number") => &["accountnumber"],
        (Entity::Account, "domain") => &["websiteurl"],
        (Entity::Account, "billing_country") => &["address1_country"],
        (Entity::Lead, "name") => &["firstname", "lastname"],
        (Entity::Lead, "company") => &["companyname"],
        (Entity::Lead, "email") => &["emailaddress1"],
        (Entity::Lead, "status" | "converted") => &["statecode"],
        (Entity::Lead, "source" | "channel") => &["{channel}"],
        (Entity::Opportunity, "name") => &["name"],
        (Entity::Opportunity, "account") => &["_customerid_value"],
        (Entity::Opportunity, "amount") => &["estimatedvalue", "_transactioncurrencyid_value"],
        (Entity::Opportunity, "stage" | "vendor_stage" | "is_won" | "is_closed") => {
            &["salesstage", "budgetstatus", "statecode"]
        }
        (Entity::Opportunity, "probability") => &["closeprobability"],
        (Entity::Opportunity, "close_date") => &["estimatedclosedate"],
        (Entity::Opportunity, "closed_at") => &["actualclosedate"],
        (Entity::Opportunity, "channel" | "vendor_channel") => &["{channel}"],
        (Entity::Order, "number") => &["name"],
        (Entity::Order, "account") => &["_customerid_value"],
        (Entity::Order, "opportunity") => &["_opportunityid_value"],
        (Entity::Order, "status" | "vendor_status") => &["statecode"],
        (Entity::Order, "currency") => &["_transactioncurrencyid_value"],
        (Entity::Order, "total_amount") => &["totalamount"],
        (Entity::Order, "order_date") => &["submitdate"],
        (Entity::Order, "details") => &["description"],
        (Entity::Order, "channel" | "vendor_channel") => &["{channel}"],
        (_, "created_at") => &["createdon"],
        (_, "updated_at") => &["modifiedon"],
        _ => &[],
    }
}

fn resolve<'a>(column: &'a str, config: &'a Dynamics365Config) -> Option<&'a str> {
    if column == "{channel}" { config.channel_field.as_deref() } else { Some(column) }
}

/// The logical names of the columns a push can fill from the canonical record (a lookup property
/// `_customerid_value` as `customerid`).
pub fn mapped_columns(entity: Entity, config: &Dynamics365Config) -> BTreeSet<String> {
    entity
        .fields()
        .iter()
        .flat_map(|field| vendor_columns(entity, field).iter().filter_map(|column| resolve(column, config)))
        .map(|column| {
            column.strip_prefix('_').and_then(|rest| rest.strip_suffix("_value")).unwrap_or(column).to_owned()
        })
        .collect()
}

/// The column a mapping cannot work without, per table.
pub fn required_column(entity: Entity) -> &'static str {
    match entity {
        Entity::Account | Entity::Opportunity | Entity::Order => "name",
        Entity::Lead => "lastname",
    }
}

/// Columns privacy forbids.
pub fn denied_columns(
    entity: Entity,
    policy: &FieldPolicy,
    config: &Dynamics365Config,
    described: &BTreeSet<String>,
) -> BTreeSet<String> {
    let table = wire::table(entity);
    let mut denied = BTreeSet::new();
    for canonical in entity.fields() {
        if !policy.allows(entity, canonical) {
            denied.extend(
                vendor_columns(entity, canonical)
                    .iter()
                    .filter_map(|column| resolve(column, config))
                    .map(str::to_owned),
            );
        }
    }
    for column in described {
        if !policy.allows(entity, column)
            && column != table.key
            && column != "modifiedon"
            && column != &config.alternate_key
        {
            denied.insert(column.clone());
        }
    }
    denied
}

/// The `$select` list: the key, `modifiedon`, the alternate key (when the table has it) and every
/// mapped column privacy allows. Unmapped columns are not read (Dataverse tables have hundreds).
///
/// # Errors
///
/// [`ConnectorError::SchemaDrift`] naming every mapped column the table does not have (renamed or
/// removed, or a `channel_field` that does not exist): reading on would silently drop the field.
pub fn select(
    entity: Entity,
    described: &BTreeSet<String>,
    denied: &BTreeSet<String>,
    config: &Dynamics365Config,
) -> Result<Vec<String>, ConnectorError> {
    let table = wire::table(entity);
    let mapped: Vec<&str> = entity
        .fields()
        .iter()
        .flat_map(|field| vendor_columns(entity, field).iter().filter_map(|column| resolve(column, config)))
        .collect();
    let missing: Vec<&str> = mapped
        .iter()
        .copied()
        .filter(|column| !described.contains(*column) && !denied.contains(*column))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        return Err(ConnectorError::SchemaDrift {
            object: table.logical.to_owned(),
            message: format!(
                "{} lacks the mapped column(s) {} (renamed or removed, or not created); the mapping needs them",
                table.logical,
                missing.join(", ")
            ),
        });
    }
    let mut columns: Vec<String> = Vec::new();
    for column in [table.key, "modifiedon", config.alternate_key.as_str()].into_iter().chain(mapped) {
        let present = described.contains(column) || column == table.key;
        if present && !denied.contains(column) && !columns.iter().any(|known| known == column) {
            columns.push(column.to_owned());
        }
    }
    Ok(columns)
}

/// Columns of `salesorderdetails` read for order lines.
pub const LINE_COLUMNS: &[&str] = &[
    "salesorderdetailid",
    "_salesorderid_value",
    "_productid_value",
    "productdescription",
    "quantity",
    "priceperunit",
    "extendedamount",
];

fn formatted(row: &RawRow<'_>, column: &str) -> Option<String> {
    row.annotation(column, FORMATTED).map(std::borrow::Cow::into_owned)
}

/// A lookup to an account (`_customerid_value` may point at a contact: not mapped).
fn account_lookup(row: &RawRow<'_>, column: &str) -> Option<RecordRef> {
    let id = text(row, column)?;
    let target = row.annotation(column, LOOKUP_LOGICAL_NAME);
    (target.is_none_or(|target| target == "account")).then(|| RecordRef::external(id))
}

/// What a mapping needs besides the row.
pub struct MapContext<'a> {
    /// Stage, status and channel tables.
    pub vocabulary: &'a Vocabulary,
    /// The connection's settings.
    pub config: &'a Dynamics365Config,
    /// The org's currencies.
    pub currencies: &'a Currencies,
    /// The org's products (order lines).
    pub products: &'a Products,
    /// Used when a row has no transaction currency.
    pub default_currency: &'a Currency,
}

/// The canonical stage of an opportunity row and its raw vendor value.
fn stage_of(
    row: &RawRow<'_>,
    vocabulary: &Vocabulary,
    unmapped: &mut Vec<String>,
) -> Result<(Option<Stage>, Option<String>), ConnectorError> {
    match integer(row, "statecode")? {
        Some(1) => return Ok((Some(Stage::Won), Some(formatted(row, "statecode").unwrap_or_else(|| "Won".into())))),
        Some(2) => return Ok((Some(Stage::Lost), Some(formatted(row, "statecode").unwrap_or_else(|| "Lost".into())))),
        _ => {}
    }
    let Some(salesstage) = integer(row, "salesstage")? else { return Ok((None, None)) };
    let raw = formatted(row, "salesstage").unwrap_or_else(|| salesstage.to_string());
    let mapped = vocabulary.stages.get(&salesstage.to_string()).or_else(|| vocabulary.stages.get(&raw));
    if mapped.is_none() {
        unmapped.push(format!("opportunity.salesstage = {raw:?}"));
    }
    let budgeted = integer(row, "budgetstatus")?.is_some_and(|status| status >= 1);
    let stage = match mapped {
        Some(Stage::Qualified) if budgeted => Some(Stage::Budget),
        other => other,
    };
    Ok((stage, Some(raw)))
}

/// Maps one row to a canonical change. `lines` are the order's `salesorderdetails` rows (an order
/// row's own expansion, `order_details`, is never read here: the caller hands its lines in).
pub fn to_change(
    entity: Entity,
    row: &RawRow<'_>,
    lines: Option<&[RawRow<'_>]>,
    context: &MapContext<'_>,
    unmapped: &mut Vec<String>,
) -> Result<Change, ConnectorError> {
    let table = wire::table(entity);
    let config = context.config;
    let missing = |what: &str| {
        ConnectorError::decode(format!("{} row", table.set), std::io::Error::other(format!("missing {what}")))
    };
    let id = text(row, table.key).ok_or_else(|| missing(table.key))?;
    let modified_at = timestamp(row, "modifiedon")?.ok_or_else(|| missing("modifiedon"))?;
    let canonical_hint = text(row, &config.alternate_key).and_then(|value| value.parse::<CanonicalId>().ok());
    let channel_raw =
        config.channel_field.as_deref().and_then(|field| formatted(row, field).or_else(|| text(row, field)));
    let channel = channel_raw.as_deref().map(|raw| {
        let mapped = context.vocabulary.channels.get(raw);
        if mapped.is_none() {
            unmapped.push(format!("{}.{} = {raw:?}", table.logical, config.channel_field.as_deref().unwrap_or("")));
        }
        mapped.unwrap_or(Channel::Other)
    });
    let currency = || -> Result<Currency, ConnectorError> {
        match text(row, "_transactioncurrencyid_value") {
            Some(currency_id) => {
                let code = context.currencies.code(&currency_id).ok_or_else(|| {
                    ConnectorError::decode(
                        format!("{}._transactioncurrencyid_value", table.logical),
                        std::io::Error::other(format!("unknown transaction currency {currency_id}")),
                    )
                })?;
                Currency::new(code).map_err(|error| ConnectorError::decode("transactioncurrency", error))
            }
            None => Ok(context.default_currency.clone()),
        }
    };
    let data = match entity {
        Entity::Account => EntityData::Account(Account {
            name: text(row, "name"),
            number: text(row, "accountnumber"),
            domain: text(row, "websiteurl").and_then(|website| normalise_domain(&website)),
            industry: None,
            billing_country: text(row, "address1_country"),
            owner: formatted(row, "_ownerid_value"),
            created_at: timestamp(row, "createdon")?,
            updated_at: Some(modified_at),
        }),
        Entity::Lead => {
            let state = integer(row, "statecode")?;
            EntityData::Lead(Lead {
                name: join_name(text(row, "firstname"), text(row, "lastname")),
                company: text(row, "companyname"),
                email: text(row, "emailaddress1"),
                source: channel_raw.clone(),
                channel,
                status: state.map(|state| {
                    formatted(row, "statecode").unwrap_or_else(|| {
                        match state {
                            0 => "Open",
                            1 => "Qualified",
                            _ => "Disqualified",
                        }
                        .to_owned()
                    })
                }),
                converted: state.map(|state| state == 1),
                converted_account: None,
                converted_opportunity: None,
                created_at: timestamp(row, "createdon")?,
            })
        }
        Entity::Opportunity => {
            let (stage, vendor_stage) = stage_of(row, context.vocabulary, unmapped)?;
            let is_closed = stage.map(|stage| stage.is_closed());
            EntityData::Opportunity(Opportunity {
                name: text(row, "name"),
                account: account_lookup(row, "_customerid_value"),
                amount: decimal(row, "estimatedvalue")?
                    .map(|amount| currency().map(|code| Money::new(amount, code)))
                    .transpose()?,
                stage,
                vendor_stage,
                probability: decimal(row, "closeprobability")?,
                channel,
                vendor_channel: channel_raw,
                close_date: date(row, "estimatedclosedate")?,
                created_at: timestamp(row, "createdon")?,
                closed_at: if is_closed == Some(true) {
                    date(row, "actualclosedate")?
                        .and_then(|day| jiff::tz::Offset::UTC.to_timestamp(day.at(0, 0, 0, 0)).ok())
                        .map(Timestamp::from_jiff)
                } else {
                    None
                },
                is_won: stage.map(|stage| stage == Stage::Won),
                is_closed,
                stage_history: Vec::new(),
            })
        }
        Entity::Order => {
            let state = integer(row, "statecode")?;
            let status = state.and_then(|state| {
                let mapped = context.vocabulary.order_statuses.get(&state.to_string());
                if mapped.is_none() {
                    unmapped.push(format!("salesorder.statecode = {state}"));
                }
                mapped
            });
            let lines = lines
                .map(|lines| {
                    lines
                        .iter()
                        .map(|line| {
                            let catalogue = text(line, "_productid_value").and_then(|id| context.products.get(&id));
                            Ok(OrderLine {
                                product: catalogue
                                    .map(|(name, _)| name.to_owned())
                                    .or_else(|| text(line, "productdescription"))
                                    .or_else(|| formatted(line, "_productid_value")),
                                sku: catalogue.map(|(_, number)| number.to_owned()).filter(|number| !number.is_empty()),
                                quantity: decimal(line, "quantity")?.unwrap_or_default(),
                                unit_price: decimal(line, "priceperunit")?.unwrap_or_default(),
                                line_total: decimal(line, "extendedamount")?.unwrap_or_default(),
                            })
                        })
                        .collect::<Result<Vec<_>, ConnectorError>>()
                })
                .transpose()?;
            EntityData::Order(Order {
                number: text(row, "name"),
                account: account_lookup(row, "_customerid_value"),
                opportunity: text(row, "_opportunityid_value").map(RecordRef::external),
                channel,
                vendor_channel: channel_raw,
                status,
                vendor_status: state.map(|state| formatted(row, "statecode").unwrap_or_else(|| state.to_string())),
                currency: Some(currency()?),
                total_amount: decimal(row, "totalamount")?,
                order_date: date(row, "submitdate")?,
                lines,
                details: text(row, "description"),
            })
        }
    };
    let mapped: BTreeSet<&str> = entity
        .fields()
        .iter()
        .flat_map(|field| vendor_columns(entity, field).iter().filter_map(|column| resolve(column, config)))
        .chain([table.key, "modifiedon", "createdon", config.alternate_key.as_str()])
        .collect();
    let mut extra = Map::new();
    for (column, json) in row.columns() {
        if mapped.contains(column) || column.contains('@') || (entity == Entity::Order && column == wire::ORDER_LINES) {
            continue;
        }
        let value = serde_json::from_str::<Value>(json.get())
            .map_err(|error| ConnectorError::decode(format!("{}.{column}", table.logical), error))?;
        extra.insert(column.to_owned(), value);
    }
    Ok(Change {
        entity,
        object: table.logical.to_owned(),
        external_id: ExternalId::new(id),
        modified_at,
        version: row.text("@odata.etag").map(std::borrow::Cow::into_owned),
        canonical_hint,
        kind: ChangeKind::Upsert { data, completeness: Completeness::Partial },
        extra,
    })
}

/// The `@odata.bind` path of a referenced record: by Dataverse id when known, else by the alternate
/// key holding the canonical id (crmsync pushes referenced records first).
pub fn bind(reference: &RecordRef, set: &str, config: &Dynamics365Config) -> Option<String> {
    match (&reference.external, &reference.canonical) {
        (Some(id), _) => Some(format!("/{set}({})", id.as_str())),
        (None, Some(canonical)) => Some(format!("/{set}({}='{canonical}')", config.alternate_key)),
        (None, None) => None,
    }
}

fn channel_value(channel: Channel, vocabulary: &Vocabulary) -> Option<String> {
    let preferred = match channel {
        Channel::Direct => "Direct",
        Channel::Agent => "Partner",
        Channel::Ecommerce => "Web",
        Channel::Other => "Other",
    };
    vocabulary.vendor_channel(channel, preferred)
}

/// What a pushed record reads back as: won, lost and budget are representable (close actions, budget
/// status), other stages and statuses through the vocabulary; a status without a state of its own is
/// written as the nearest one there is ([`Vocabulary::order_status_value`]: `shipped` as Fulfilled,
/// read back as `delivered`).
pub fn representable(data: &EntityData, vocabulary: &Vocabulary) -> EntityData {
    let mut data = data.clone();
    match &mut data {
        EntityData::Opportunity(opportunity) => {
            let special = matches!(opportunity.stage, Some(Stage::Won | Stage::Lost | Stage::Budget));
            if !special && opportunity.stage.is_some_and(|stage| vocabulary.stages.reverse(stage).is_none()) {
                opportunity.stage = None;
            }
        }
        EntityData::Order(order) => {
            order.status = order.status.and_then(|status| vocabulary.order_status_read_back(status));
        }
        EntityData::Account(_) | EntityData::Lead(_) => {}
    }
    data
}

/// How an opportunity is closed: Dataverse refuses `statecode` in an update and wants the
/// `WinOpportunity` / `LoseOpportunity` actions instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// `WinOpportunity` with status 3 (Won).
    Win,
    /// `LoseOpportunity` with status 4 (Canceled).
    Lose,
}

/// The salesorder state (`statecode`) an order's canonical status is written as (SPEC §2):
/// draft → 0 Active, confirmed → 1 Submitted, shipped and delivered → 3 Fulfilled, invoiced →
/// 4 Invoiced, cancelled → 2 Canceled (through the vocabulary, which may override the values).
/// `statecode` is not valid on create and orders are edited only while active, so the state is
/// reached by state-changing messages after the order and its lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderState(pub i64);

impl OrderState {
    /// Active.
    pub const ACTIVE: Self = Self(0);
    /// Submitted.
    pub const SUBMITTED: Self = Self(1);
    /// Canceled.
    pub const CANCELED: Self = Self(2);
    /// Fulfilled.
    pub const FULFILLED: Self = Self(3);
    /// Invoiced.
    pub const INVOICED: Self = Self(4);

    /// The documented default status reason of the state (ce/developer/entities/salesorder.md:
    /// Active → 1 New, Submitted → 3 In Progress, Canceled → 4 No Money, Fulfilled → 100001
    /// Complete, Invoiced → 100003 Invoiced).
    pub fn default_status(self) -> i64 {
        match self.0 {
            1 => 3,
            2 => 4,
            3 => 100_001,
            4 => 100_003,
            _ => 1,
        }
    }
}

/// One record's write: the row body, the close action it needs, and its order lines.
#[derive(Debug, Clone, PartialEq)]
pub struct RowWrite {
    /// The PATCH body.
    pub body: Map<String, Value>,
    /// For an opportunity won or lost.
    pub close: Option<Close>,
    /// For an order whose lines are known: one body per line (written by `{alternate_key}` =
    /// `{canonical}:{n}`); `None` leaves the order's lines as they are.
    pub lines: Option<Vec<Map<String, Value>>>,
    /// For an order: the state its status maps to.
    pub order_state: Option<OrderState>,
}

/// Builds one record's write. The alternate key itself is not in the body when the row is addressed
/// by it (Dataverse rejects key columns repeated in an upsert body); `by_key` says which addressing
/// the caller uses.
pub fn to_row(
    canonical_id: CanonicalId,
    data: &EntityData,
    context: &MapContext<'_>,
    denied: &BTreeSet<String>,
    by_key: bool,
) -> RowWrite {
    let config = context.config;
    let vocabulary = context.vocabulary;
    let mut body = Map::new();
    if !by_key {
        body.insert(config.alternate_key.clone(), json!(canonical_id.to_string()));
    }
    let channel_field = config.channel_field.clone();
    let mut put = |column: &str, value: Value| {
        if !denied.contains(column) && !value.is_null() {
            body.insert(column.to_owned(), value);
        }
    };
    let mut close = None;
    let mut lines = None;
    let mut order_state = None;
    let currency_bind = |code: &str| context.currencies.id(code).map(|id| format!("/transactioncurrencies({id})"));
    match data {
        EntityData::Account(account) => {
            put("name", json!(account.name));
            put("accountnumber", json!(account.number));
            put("websiteurl", json!(account.domain.as_ref().map(|domain| format!("https://www.{domain}"))));
            put("address1_country", json!(account.billing_country));
        }
        EntityData::Lead(lead) => {
            if let Some(name) = &lead.name {
                let (first, last) = split_name(name);
                if let Some(first) = first {
                    put("firstname", json!(first));
                }
                put("lastname", json!(last));
            }
            put("companyname", json!(lead.company));
            put("emailaddress1", json!(lead.email));
            if let Some(field) = &channel_field {
                put(field, json!(lead.channel.and_then(|channel| channel_value(channel, vocabulary))));
            }
        }
        EntityData::Opportunity(opportunity) => {
            put("name", json!(opportunity.name));
            let (salesstage, budget) = match opportunity.stage {
                Some(Stage::Budget) => (vocabulary.stages.reverse(Stage::Qualified), Some(2)),
                Some(Stage::Won | Stage::Lost) => (None, None),
                Some(stage) => (vocabulary.stages.reverse(stage), None),
                None => (None, None),
            };
            put("salesstage", json!(salesstage.and_then(|value| value.parse::<i64>().ok())));
            put("budgetstatus", json!(budget));
            close = match opportunity.stage {
                Some(Stage::Won) => Some(Close::Win),
                Some(Stage::Lost) => Some(Close::Lose),
                _ => None,
            };
            put("estimatedclosedate", json!(opportunity.close_date.map(|day| day.to_string())));
            if let Some(amount) = &opportunity.amount {
                put("estimatedvalue", decimal_json(amount.amount));
                put("transactioncurrencyid@odata.bind", json!(currency_bind(amount.currency.as_str())));
            }
            put(
                "closeprobability",
                json!(
                    opportunity.probability.and_then(|probability| probability.trunc().to_string().parse::<i64>().ok())
                ),
            );
            if let Some(field) = &channel_field {
                put(field, json!(opportunity.channel.and_then(|channel| channel_value(channel, vocabulary))));
            }
            put(
                "customerid_account@odata.bind",
                json!(opportunity.account.as_ref().and_then(|account| bind(account, "accounts", config))),
            );
        }
        EntityData::Order(order) => {
            put("name", json!(order.number));
            order_state = order.status.and_then(|status| {
                vocabulary.order_status_value(status).and_then(|value| value.parse::<i64>().ok()).map(OrderState)
            });
            put("submitdate", json!(order.order_date.map(|day| format!("{day}T00:00:00Z"))));
            put("description", json!(order.details));
            put(
                "transactioncurrencyid@odata.bind",
                json!(order.currency.as_ref().and_then(|currency| currency_bind(currency.as_str()))),
            );
            if let Some(field) = &channel_field {
                put(field, json!(order.channel.and_then(|channel| channel_value(channel, vocabulary))));
            }
            put(
                "customerid_account@odata.bind",
                json!(order.account.as_ref().and_then(|account| bind(account, "accounts", config))),
            );
            put(
                "opportunityid@odata.bind",
                json!(order.opportunity.as_ref().and_then(|opportunity| bind(opportunity, "opportunities", config))),
            );
            if let Some(order_lines) = &order.lines {
                let mut bodies = Vec::with_capacity(order_lines.len());
                for line in order_lines {
                    let mut row = Map::new();
                    match context.products.find(line.sku.as_deref(), line.product.as_deref()) {
                        Some(product) => {
                            row.insert("isproductoverridden".into(), json!(false));
                            row.insert("productid@odata.bind".into(), json!(format!("/products({product})")));
                        }
                        None => {
                            // Not in the catalogue: a write-in product.
                            row.insert("isproductoverridden".into(), json!(true));
                            row.insert(
                                "productdescription".into(),
                                json!(line.product.clone().unwrap_or_else(|| "Item".into())),
                            );
                        }
                    }
                    row.insert("quantity".into(), decimal_json(line.quantity));
                    row.insert("priceperunit".into(), decimal_json(line.unit_price));
                    row.insert(
                        "salesorderid@odata.bind".into(),
                        json!(format!("/salesorders({}='{canonical_id}')", config.alternate_key)),
                    );
                    bodies.push(row);
                }
                lines = Some(bodies);
            }
        }
    }
    RowWrite { body, close, lines, order_state }
}
