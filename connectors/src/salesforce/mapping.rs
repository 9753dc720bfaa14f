//! Salesforce rows ↔ canonical records: the only place the two meet.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::BTreeSet;

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::config::SalesforceConfig;
use super::org::{CURRENCY_FIELD, ObjectInfo, WriteKind};
use super::wire;
use crate::canonical::{
    Account, CanonicalId, Channel, Currency, Entity, EntityData, ExternalId, FxError, FxTable, Lead, Money,
    Opportunity, Order, OrderLine, RecordRef, Stage, Timestamp, Vocabulary, decimal_json, join_name, normalise_domain,
    split_name,
};
use crate::connector::{Change, ChangeKind, Completeness};
use crate::error::ConnectorError;
use crate::row::{boolean, date, decimal, text, timestamp};
use crate::settings::FieldPolicy;

/// Canonical field → the Salesforce fields it is read from / written to (`{channel}`: the configured
/// channel field). Used to honour privacy lists and to know which fields are "mapped".
pub fn vendor_fields(entity: Entity, canonical: &str) -> &'static [&'static str] {
    match (entity, canonical) {
        (Entity::Account, "name") => &["Name"],
        (Entity::Account, "number") => &["AccountNumber"],
        (Entity::Account, "domain") => &["Website"],
        (Entity::Account, "industry") => &["Industry"],
        (Entity::Account, "billing_country") => &["BillingCountry"],
        (Entity::Account, "owner") => &["OwnerId"],
        (Entity::Lead, "name") => &["FirstName", "LastName"],
        (Entity::Lead, "company") => &["Company"],
        (Entity::Lead, "email") => &["Email"],
        (Entity::Lead, "source" | "channel") => &["{channel}"],
        (Entity::Lead, "status") => &["Status"],
        (Entity::Lead, "converted") => &["IsConverted"],
        (Entity::Lead, "converted_account") => &["ConvertedAccountId"],
        (Entity::Lead, "converted_opportunity") => &["ConvertedOpportunityId"],
        (Entity::Opportunity, "name") => &["Name"],
        (Entity::Opportunity, "account") => &["AccountId"],
        (Entity::Opportunity, "amount") => &["Amount", "CurrencyIsoCode"],
        (Entity::Opportunity, "stage" | "vendor_stage") => &["StageName"],
        (Entity::Opportunity, "probability") => &["Probability"],
        (Entity::Opportunity, "channel" | "vendor_channel") => &["{channel}"],
        (Entity::Opportunity, "close_date" | "closed_at") => &["CloseDate"],
        (Entity::Opportunity, "is_won") => &["IsWon"],
        (Entity::Opportunity, "is_closed") => &["IsClosed"],
        (Entity::Order, "number") => &["Crmsync_Order_Number__c", "OrderNumber"],
        (Entity::Order, "account") => &["AccountId"],
        (Entity::Order, "opportunity") => &["OpportunityId"],
        (Entity::Order, "channel" | "vendor_channel") => &["{channel}"],
        (Entity::Order, "status" | "vendor_status") => &["Status"],
        (Entity::Order, "currency") => &["CurrencyIsoCode"],
        (Entity::Order, "total_amount") => &["TotalAmount"],
        (Entity::Order, "order_date") => &["EffectiveDate"],
        (Entity::Order, "details") => &["Description"],
        (_, "created_at") => &["CreatedDate"],
        (_, "updated_at") => &["SystemModstamp"],
        _ => &[],
    }
}

/// The field a mapping cannot work without, per object (schema drift stops the entity if it is gone).
pub fn required_field(entity: Entity) -> &'static str {
    match entity {
        Entity::Account => "Name",
        Entity::Lead => "LastName",
        Entity::Opportunity => "StageName",
        Entity::Order => "Status",
    }
}

/// Every vendor field the mapping reads or writes for an entity (the channel field resolved).
pub fn mapped_fields(entity: Entity, config: &SalesforceConfig) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for canonical in entity.fields() {
        for field in vendor_fields(entity, canonical) {
            let field = resolve(field, config).to_owned();
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
    }
    fields
}

/// Mapped fields whose describe type the mapping relies on, with the types it can read.
fn typed_fields(entity: Entity) -> &'static [(&'static str, &'static [&'static str])] {
    const TEXT: &[&str] = &["string", "picklist", "textarea", "combobox"];
    match entity {
        Entity::Account => &[("Name", TEXT)],
        Entity::Lead => &[("LastName", TEXT), ("Company", TEXT), ("IsConverted", &["boolean"])],
        Entity::Opportunity => &[
            ("StageName", TEXT),
            ("Amount", &["currency", "double", "int"]),
            ("CloseDate", &["date"]),
            ("AccountId", &["reference"]),
            ("Probability", &["percent", "double", "int"]),
        ],
        Entity::Order => &[
            ("Status", TEXT),
            ("EffectiveDate", &["date"]),
            ("AccountId", &["reference"]),
            ("TotalAmount", &["currency", "double"]),
        ],
    }
}

/// Stops an entity whose mapped field was retyped (SPEC §3 schema drift): a `CloseDate` turned text
/// would otherwise be read as garbage or written as nulls. Missing fields are not this check's
/// business (`describe::require` and `check` report them).
pub fn check_types(entity: Entity, info: &ObjectInfo, policy: &FieldPolicy) -> Result<(), ConnectorError> {
    for (name, types) in typed_fields(entity) {
        let Some(field) = info.field(name) else { continue };
        if policy.allows(entity, name) && !types.contains(&field.field_type.as_str()) {
            return Err(ConnectorError::SchemaDrift {
                object: info.object.clone(),
                message: format!(
                    "field {name} of {} is now of type {} (the mapping reads {})",
                    info.object,
                    field.field_type,
                    types.join(" or ")
                ),
            });
        }
    }
    Ok(())
}

/// Fields crmsync always selects and never treats as `extra`.
pub const SYSTEM_FIELDS: &[&str] = &["Id", "SystemModstamp", "IsDeleted"];

fn resolve<'a>(field: &'a str, config: &'a SalesforceConfig) -> &'a str {
    if field == "{channel}" { &config.channel_field } else { field }
}

/// Returns the Salesforce fields privacy forbids for an entity.
pub fn denied_fields(
    entity: Entity,
    policy: &FieldPolicy,
    config: &SalesforceConfig,
    described: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut denied = BTreeSet::new();
    for canonical in entity.fields() {
        if !policy.allows(entity, canonical) {
            denied.extend(vendor_fields(entity, canonical).iter().map(|field| resolve(field, config).to_owned()));
        }
    }
    for field in described {
        if !policy.allows(entity, field)
            && !SYSTEM_FIELDS.contains(&field.as_str())
            && field != &config.external_id_field
        {
            denied.insert(field.clone());
        }
    }
    denied
}

/// The SELECT list: every described field the privacy lists allow (vendor fields beyond the mapping
/// go to `extra`), always with Id, SystemModstamp, IsDeleted and the external-id field.
pub fn select_list(
    entity: Entity,
    described: &BTreeSet<String>,
    denied: &BTreeSet<String>,
    config: &SalesforceConfig,
) -> Vec<String> {
    let mut fields: Vec<String> = SYSTEM_FIELDS.iter().map(|field| (*field).to_owned()).collect();
    for field in described {
        if !fields.contains(field) && !denied.contains(field) {
            fields.push(field.clone());
        }
    }
    if described.contains(&config.external_id_field) && !fields.contains(&config.external_id_field) {
        fields.push(config.external_id_field.clone());
    }
    let _ = entity;
    fields
}

fn reference(row: &Map<String, Value>, field: &str) -> Option<RecordRef> {
    text(row, field).map(RecordRef::external)
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected value {0}")]
struct TypeError(String);

/// A row's currency: its `CurrencyIsoCode` (multi-currency orgs), else the org's corporate currency
/// (single-currency orgs have no such field and keep every amount in the corporate currency).
fn row_currency(
    row: &Map<String, Value>,
    object: &str,
    corporate: Option<&Currency>,
) -> Result<Currency, ConnectorError> {
    match text(row, super::org::CURRENCY_FIELD) {
        Some(code) => {
            Currency::new(&code).map_err(|error| ConnectorError::decode(format!("{object}.CurrencyIsoCode"), error))
        }
        None => corporate.cloned().ok_or_else(|| {
            ConnectorError::decode(
                format!("{object} row"),
                TypeError("no CurrencyIsoCode and the org's corporate currency is unknown".into()),
            )
        }),
    }
}

/// Values a mapping table did not cover (reported, never blocking).
#[derive(Debug, Default)]
pub struct Unmapped(pub Vec<String>);

/// Maps one query row to a canonical change.
pub fn to_change(
    entity: Entity,
    row: &Map<String, Value>,
    vocabulary: &Vocabulary,
    config: &SalesforceConfig,
    corporate_currency: Option<&Currency>,
    unmapped: &mut Unmapped,
) -> Result<Change, ConnectorError> {
    let object = wire::object(entity);
    let id = text(row, "Id")
        .ok_or_else(|| ConnectorError::decode(format!("{object} row"), TypeError("missing Id".into())))?;
    let modified_at = timestamp(row, "SystemModstamp")?
        .ok_or_else(|| ConnectorError::decode(format!("{object} row"), TypeError("missing SystemModstamp".into())))?;
    let canonical_hint = text(row, &config.external_id_field).and_then(|value| value.parse::<CanonicalId>().ok());
    let mut change = Change {
        entity,
        object: object.to_owned(),
        external_id: ExternalId::new(id),
        modified_at,
        version: None,
        canonical_hint,
        kind: ChangeKind::Delete,
        extra: Map::new(),
    };
    if boolean(row, "IsDeleted")? == Some(true) {
        return Ok(change);
    }
    let channel_raw = text(row, &config.channel_field);
    let channel = channel_raw.as_deref().map(|raw| {
        let mapped = vocabulary.channels.get(raw);
        if mapped.is_none() {
            unmapped.0.push(format!("{object}.{} = {raw:?}", config.channel_field));
        }
        mapped.unwrap_or(Channel::Other)
    });
    let mut completeness = Completeness::Full;
    let data = match entity {
        Entity::Account => EntityData::Account(Account {
            name: text(row, "Name"),
            number: text(row, "AccountNumber"),
            domain: text(row, "Website").and_then(|website| normalise_domain(&website)),
            industry: text(row, "Industry"),
            billing_country: text(row, "BillingCountry"),
            owner: text(row, "OwnerId"),
            created_at: timestamp(row, "CreatedDate")?,
            updated_at: Some(modified_at),
        }),
        Entity::Lead => {
            let name = join_name(text(row, "FirstName"), text(row, "LastName"));
            EntityData::Lead(Lead {
                name,
                company: text(row, "Company"),
                email: text(row, "Email"),
                source: channel_raw.clone(),
                channel,
                status: text(row, "Status"),
                converted: boolean(row, "IsConverted")?,
                converted_account: reference(row, "ConvertedAccountId"),
                converted_opportunity: reference(row, "ConvertedOpportunityId"),
                created_at: timestamp(row, "CreatedDate")?,
            })
        }
        Entity::Opportunity => {
            let vendor_stage = text(row, "StageName");
            let stage = vendor_stage.as_deref().and_then(|raw| {
                let mapped = vocabulary.stages.get(raw);
                if mapped.is_none() {
                    unmapped.0.push(format!("Opportunity.StageName = {raw:?}"));
                }
                mapped
            });
            // The currency only matters with an amount (an Outbound Message may carry neither).
            let amount = match decimal(row, "Amount")? {
                Some(amount) => Some(Money::new(amount, row_currency(row, "Opportunity", corporate_currency)?)),
                None => None,
            };
            let close_date = date(row, "CloseDate")?;
            let is_closed = boolean(row, "IsClosed")?.or(stage.map(|stage| stage.is_closed()));
            EntityData::Opportunity(Opportunity {
                name: text(row, "Name"),
                account: reference(row, "AccountId"),
                amount,
                stage,
                vendor_stage,
                probability: decimal(row, "Probability")?,
                channel,
                vendor_channel: channel_raw,
                close_date,
                created_at: timestamp(row, "CreatedDate")?,
                // Salesforce has no close timestamp: a closed deal closed on its CloseDate.
                closed_at: if is_closed == Some(true) {
                    close_date
                        .and_then(|day| jiff::tz::Offset::UTC.to_timestamp(day.at(0, 0, 0, 0)).ok())
                        .map(Timestamp::from_jiff)
                } else {
                    None
                },
                is_won: boolean(row, "IsWon")?.or(stage.map(|stage| stage == Stage::Won)),
                is_closed,
                stage_history: Vec::new(),
            })
        }
        Entity::Order => {
            let vendor_status = text(row, "Status");
            let status = vendor_status.as_deref().and_then(|raw| {
                let mapped = vocabulary.order_statuses.get(raw);
                if mapped.is_none() {
                    unmapped.0.push(format!("Order.Status = {raw:?}"));
                }
                mapped
            });
            let items = row.get("OrderItems").and_then(|items| items.get("records")).and_then(Value::as_array);
            // Lines (and the roll-up total that depends on them) are only known when the order has
            // items in Salesforce; an order without any (its lines had no price-book entry) must not
            // clear the lines other CRMs hold.
            let lines = match items {
                Some(items) if !items.is_empty() => Some(
                    items
                        .iter()
                        .filter_map(Value::as_object)
                        .map(order_item_line)
                        .collect::<Result<Vec<_>, ConnectorError>>()?,
                ),
                _ => {
                    completeness = Completeness::Partial;
                    None
                }
            };
            let currency = Some(row_currency(row, "Order", corporate_currency)?);
            EntityData::Order(Order {
                number: text(row, "Crmsync_Order_Number__c").or_else(|| text(row, "OrderNumber")),
                account: reference(row, "AccountId"),
                opportunity: reference(row, "OpportunityId"),
                channel,
                vendor_channel: channel_raw,
                status,
                vendor_status,
                currency,
                total_amount: if lines.is_some() { decimal(row, "TotalAmount")? } else { None },
                order_date: date(row, "EffectiveDate")?,
                lines,
                details: text(row, "Description"),
            })
        }
    };
    let mapped: BTreeSet<&str> = entity
        .fields()
        .iter()
        .flat_map(|field| vendor_fields(entity, field).iter().map(|vendor| resolve(vendor, config)))
        .chain(SYSTEM_FIELDS.iter().copied())
        .chain([
            "attributes",
            "OrderItems",
            "OwnerId",
            "CreatedDate",
            "LastModifiedDate",
            config.external_id_field.as_str(),
        ])
        .collect();
    for (field, value) in row {
        if !mapped.contains(field.as_str()) {
            change.extra.insert(field.clone(), value.clone());
        }
    }
    change.kind = ChangeKind::Upsert { data, completeness };
    Ok(change)
}

/// Preferred `LeadSource` values for a channel (values of Salesforce's default picklist), used
/// when the vocabulary maps them back to the same channel.
fn channel_value(channel: Channel, vocabulary: &Vocabulary) -> Option<String> {
    let preferred = match channel {
        Channel::Direct => "Phone Inquiry",
        Channel::Agent => "Partner Referral",
        Channel::Ecommerce => "Web",
        Channel::Other => "Other",
    };
    vocabulary.vendor_channel(channel, preferred)
}

fn put_reference(
    record: &mut Map<String, Value>,
    id_field: &str,
    relationship: Option<&str>,
    reference: &RecordRef,
    config: &SalesforceConfig,
) {
    match (&reference.external, reference.canonical, relationship) {
        (Some(external), _, _) => {
            record.insert(id_field.to_owned(), json!(external.as_str()));
        }
        // The target does not know its own id yet: reference the parent by crmsync's external id,
        // through the relationship name describe gives the lookup (`AccountId` → `Account`).
        (None, Some(canonical), Some(relationship)) => {
            record.insert(relationship.to_owned(), json!({ config.external_id_field.as_str(): canonical.to_string() }));
        }
        _ => {}
    }
}

/// Where a record is written: the object as the org describes it, the kind of write, and what
/// decides the values that need more than the record (currency, privacy, configured defaults).
pub struct WriteTarget<'a> {
    /// The object's describe.
    pub info: &'a ObjectInfo,
    /// Create (upsert by external id) or update (by Id).
    pub kind: WriteKind,
    /// Vendor fields privacy forbids.
    pub denied: &'a BTreeSet<String>,
    /// The org's corporate currency (needed for single-currency orgs).
    pub corporate_currency: Option<&'a Currency>,
    /// Exchange rates for amounts in another currency than a single-currency org keeps.
    pub fx: Option<&'a FxTable>,
}

/// A record the org would refuse, caught before the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// A Salesforce-style code (`REQUIRED_FIELD_MISSING`, `CURRENCY_NOT_CONVERTIBLE`, …).
    pub code: String,
    /// Why, naming the field.
    pub message: String,
}

/// Fields the object reference documents as required on create although describe may report them
/// nillable or defaulted (Order: developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_order.htm,
/// "AccountId: Required", "EffectiveDate: Required", "Status: Required";
/// Opportunity: sforce_api_objects_opportunity.htm, "CloseDate: Required", "StageName: Required").
pub fn documented_required(entity: Entity) -> &'static [&'static str] {
    match entity {
        Entity::Account => &["Name"],
        Entity::Lead => &["LastName", "Company"],
        Entity::Opportunity => &["Name", "CloseDate", "StageName"],
        Entity::Order => &["AccountId", "EffectiveDate", "Status"],
    }
}

/// Returns the amount to write into a currency field of `target` and the currency code to send
/// with it (multi-currency orgs only): amounts in another currency than a single-currency org keeps
/// are converted with the FX table and rounded to the field's scale, or refused.
fn writable_amount(
    money: &Money,
    field: &str,
    target: &WriteTarget<'_>,
) -> Result<(Decimal, Option<Currency>), Rejection> {
    let object = &target.info.object;
    if target.info.is_multi_currency() {
        let active = target.info.field(CURRENCY_FIELD).map(|currency| &currency.picklist_values);
        if let Some(values) = active.filter(|values| !values.is_empty())
            && !values.iter().any(|value| value.active && value.value == money.currency.as_str())
        {
            return Err(Rejection {
                code: "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST".into(),
                message: format!("{object}.{CURRENCY_FIELD}: {} is not an active currency of this org", money.currency),
            });
        }
        return Ok((money.amount, Some(money.currency.clone())));
    }
    let Some(corporate) = target.corporate_currency else {
        return Err(Rejection {
            code: "CURRENCY_UNKNOWN".into(),
            message: format!("{object}.{field}: the org's corporate currency is unknown"),
        });
    };
    if &money.currency == corporate {
        return Ok((money.amount, None));
    }
    let converted =
        target.fx.ok_or_else(|| fx_rejection(object, field, money, corporate, None))?.convert(money, corporate);
    match converted {
        Ok(converted) => {
            let scale = target.info.field(field).map_or(2, |described| described.scale);
            Ok((
                converted.amount.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointAwayFromZero),
                None,
            ))
        }
        Err(error) => Err(fx_rejection(object, field, money, corporate, Some(&error))),
    }
}

fn fx_rejection(object: &str, field: &str, money: &Money, corporate: &Currency, error: Option<&FxError>) -> Rejection {
    let why = error.map_or_else(|| "no [metrics.fx] rates are configured".to_owned(), ToString::to_string);
    Rejection {
        code: "CURRENCY_NOT_CONVERTIBLE".into(),
        message: format!(
            "{object}.{field} is in {} but this single-currency org keeps amounts in {corporate} (it has no {CURRENCY_FIELD}): {why}",
            money.currency
        ),
    }
}

/// Builds the collection record for one upsert or update. Only fields the record has are sent
/// (nothing is cleared), only fields the org's describe lists as settable for this kind of write
/// (a single-currency org has no `CurrencyIsoCode`), and privacy-denied fields never are. A create
/// that lacks a field the org requires (describe, plus the documented ones) is filled from
/// `push_defaults` or refused, naming the field.
pub fn to_record(
    canonical_id: CanonicalId,
    data: &EntityData,
    vocabulary: &Vocabulary,
    config: &SalesforceConfig,
    target: &WriteTarget<'_>,
) -> Result<Map<String, Value>, Rejection> {
    let entity = data.entity();
    let object = wire::object(entity);
    let mut record = Map::new();
    record.insert("attributes".into(), json!({"type": object}));
    if target.kind == WriteKind::Create || target.info.is_writable(&config.external_id_field, WriteKind::Update) {
        record.insert(config.external_id_field.clone(), json!(canonical_id.to_string()));
    }
    let channel_field = config.channel_field.clone();
    let info = target.info;
    let kind = target.kind;
    let denied = target.denied;
    let put = |record: &mut Map<String, Value>, field: &str, value: Value| {
        if !denied.contains(field) && !value.is_null() && info.is_writable(field, kind) {
            record.insert(field.to_owned(), value);
        }
    };
    match data {
        EntityData::Account(account) => {
            put(&mut record, "Name", json!(account.name));
            put(&mut record, "AccountNumber", json!(account.number));
            put(&mut record, "Website", json!(account.domain.as_ref().map(|domain| format!("https://{domain}"))));
            put(&mut record, "Industry", json!(account.industry));
            put(&mut record, "BillingCountry", json!(account.billing_country));
        }
        EntityData::Lead(lead) => {
            if let Some(name) = &lead.name {
                let (first, last) = split_name(name);
                if let Some(first) = first {
                    put(&mut record, "FirstName", json!(first));
                }
                put(&mut record, "LastName", json!(last));
            }
            put(&mut record, "Company", json!(lead.company));
            put(&mut record, "Email", json!(lead.email));
            put(
                &mut record,
                &channel_field,
                json!(lead.channel.and_then(|channel| channel_value(channel, vocabulary))),
            );
        }
        EntityData::Opportunity(opportunity) => {
            put(&mut record, "Name", json!(opportunity.name));
            put(&mut record, "StageName", json!(opportunity.stage.and_then(|stage| vocabulary.stages.reverse(stage))));
            put(&mut record, "CloseDate", json!(opportunity.close_date.map(|day| day.to_string())));
            if let Some(amount) = &opportunity.amount
                && !denied.contains("Amount")
            {
                let (value, currency) = writable_amount(amount, "Amount", target)?;
                put(&mut record, "Amount", decimal_json(value));
                if let Some(currency) = currency {
                    put(&mut record, CURRENCY_FIELD, json!(currency.as_str()));
                }
            }
            put(&mut record, "Probability", json!(opportunity.probability.map(decimal_json)));
            put(
                &mut record,
                &channel_field,
                json!(opportunity.channel.and_then(|channel| channel_value(channel, vocabulary))),
            );
        }
        EntityData::Order(order) => {
            put(&mut record, "Crmsync_Order_Number__c", json!(order.number));
            put(&mut record, "Status", json!(order.status.and_then(|status| vocabulary.order_status_value(status))));
            put(&mut record, "EffectiveDate", json!(order.order_date.map(|day| day.to_string())));
            if let Some(currency) = &order.currency {
                if info.is_multi_currency() {
                    put(&mut record, CURRENCY_FIELD, json!(currency.as_str()));
                } else {
                    // The order's amounts are its lines' prices: in another currency than the org
                    // keeps they must be convertible (they are converted when lines are written).
                    let probe = Money::new(Decimal::ONE, currency.clone());
                    writable_amount(&probe, "TotalAmount", target)?;
                }
            }
            put(&mut record, "Description", json!(order.details));
            put(
                &mut record,
                &channel_field,
                json!(order.channel.and_then(|channel| channel_value(channel, vocabulary))),
            );
        }
    }
    let reference = |record: &mut Map<String, Value>, id_field: &str, target_object: &str, value: &RecordRef| {
        if denied.contains(id_field) || !info.is_writable(id_field, kind) {
            return;
        }
        let relationship = info.relationship_to(id_field, target_object);
        put_reference(record, id_field, relationship, value, config);
    };
    match data {
        EntityData::Opportunity(opportunity) => {
            if let Some(account) = &opportunity.account {
                reference(&mut record, "AccountId", "Account", account);
            }
        }
        EntityData::Order(order) => {
            if let Some(account) = &order.account {
                reference(&mut record, "AccountId", "Account", account);
            }
            if let Some(opportunity) = &order.opportunity {
                reference(&mut record, "OpportunityId", "Opportunity", opportunity);
            }
        }
        _ => {}
    }
    if kind == WriteKind::Create {
        fill_required(&mut record, entity, config, target)?;
    }
    Ok(record)
}

/// An order line from one row of the order's `OrderItems` subquery.
pub fn order_item_line(item: &Map<String, Value>) -> Result<OrderLine, ConnectorError> {
    let product = item.get("Product2").and_then(Value::as_object);
    Ok(OrderLine {
        product: product.and_then(|product| text(product, "Name")),
        sku: product.and_then(|product| text(product, "ProductCode")),
        quantity: decimal(item, "Quantity")?.unwrap_or_default(),
        unit_price: decimal(item, "UnitPrice")?.unwrap_or_default(),
        line_total: decimal(item, "TotalPrice")?.unwrap_or_default(),
    })
}

/// The OrderItem records of an order's lines (without `OrderId`, known once the order is written):
/// each line priced from its price-book entry (OrderItem needs `PricebookEntryId`, `Quantity`,
/// `UnitPrice`: OrderItem object reference), its unit price converted like any amount when the org
/// keeps another currency. A line the price book has no entry for refuses the whole order.
pub fn order_items<'a>(
    lines: &[OrderLine],
    currency: Option<&Currency>,
    price_book: &str,
    entry: impl Fn(&OrderLine) -> Option<&'a str>,
    target: &WriteTarget<'_>,
) -> Result<Vec<Map<String, Value>>, Rejection> {
    let mut items = Vec::with_capacity(lines.len());
    for line in lines {
        let Some(entry) = entry(line) else {
            return Err(Rejection {
                code: "PRICEBOOK_ENTRY_MISSING".into(),
                message: format!(
                    "order line {} (SKU {}) has no active PricebookEntry in price book {price_book}: add the product to it, or set pricebook_id",
                    line.product.as_deref().unwrap_or("(no product)"),
                    line.sku.as_deref().unwrap_or("none")
                ),
            });
        };
        let unit_price = match currency {
            Some(currency) => writable_amount(&Money::new(line.unit_price, currency.clone()), "UnitPrice", target)?.0,
            None => line.unit_price,
        };
        let mut item = Map::new();
        item.insert("attributes".into(), json!({"type": "OrderItem"}));
        item.insert("PricebookEntryId".into(), json!(entry));
        item.insert("Quantity".into(), decimal_json(line.quantity));
        item.insert("UnitPrice".into(), decimal_json(unit_price));
        items.push(item);
    }
    Ok(items)
}

/// Checks a create carries every field the org requires, filling gaps from `push_defaults`.
fn fill_required(
    record: &mut Map<String, Value>,
    entity: Entity,
    config: &SalesforceConfig,
    target: &WriteTarget<'_>,
) -> Result<(), Rejection> {
    let object = &target.info.object;
    let mut missing = Vec::new();
    for field in target.info.required_on_create(documented_required(entity)) {
        let present = record.get(field).is_some_and(|value| !value.is_null())
            // A parent referenced by external id (`"Account": {"Crmsync_Id__c": …}`) fills its lookup.
            || target.info.field(field).and_then(|described| described.relationship_name.as_deref()).is_some_and(|relationship| record.contains_key(relationship))
            || field == config.external_id_field;
        if present {
            continue;
        }
        match config.push_defaults.get(&format!("{object}.{field}")) {
            Some(value) if !target.denied.contains(field) => {
                record.insert(field.to_owned(), json!(value));
            }
            _ => missing.push(field.to_owned()),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|field| format!("{object}.{field}")).collect();
    let first = names.first().cloned().unwrap_or_default();
    Err(Rejection {
        code: "REQUIRED_FIELD_MISSING".into(),
        message: format!(
            "{} required on create and the record has no value (set it in the source, or push_defaults = {{ \"{}\" = \"…\" }})",
            if names.len() == 1 { format!("{first} is") } else { format!("{} are", names.join(", ")) },
            first
        ),
    })
}
