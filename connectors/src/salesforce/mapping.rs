//! Salesforce rows ↔ canonical records: the only place the two meet.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::config::SalesforceConfig;
use super::wire;
use crate::canonical::{
    Account, CanonicalId, Channel, Currency, Entity, EntityData, ExternalId, Lead, Money, Opportunity, Order,
    OrderLine, RecordRef, Stage, Timestamp, Vocabulary, decimal_json, join_name, normalise_domain, split_name,
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

/// Values a mapping table did not cover (reported, never blocking).
#[derive(Debug, Default)]
pub struct Unmapped(pub Vec<String>);

/// Maps one query row to a canonical change.
pub fn to_change(
    entity: Entity,
    row: &Map<String, Value>,
    vocabulary: &Vocabulary,
    config: &SalesforceConfig,
    default_currency: &Currency,
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
            let currency = match text(row, "CurrencyIsoCode") {
                Some(code) => Currency::new(&code)
                    .map_err(|error| ConnectorError::decode("Opportunity.CurrencyIsoCode", error))?,
                None => default_currency.clone(),
            };
            let close_date = date(row, "CloseDate")?;
            let is_closed = boolean(row, "IsClosed")?.or(stage.map(|stage| stage.is_closed()));
            EntityData::Opportunity(Opportunity {
                name: text(row, "Name"),
                account: reference(row, "AccountId"),
                amount: decimal(row, "Amount")?.map(|amount| Money::new(amount, currency)),
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
            // items in Salesforce; crmsync cannot write OrderItems (they need price-book entries), so an
            // order pushed here has none and must not clear the lines other CRMs hold.
            let lines = match items {
                Some(items) if !items.is_empty() => Some(
                    items
                        .iter()
                        .filter_map(Value::as_object)
                        .map(|item| {
                            let product = item.get("Product2").and_then(Value::as_object);
                            Ok(OrderLine {
                                product: product.and_then(|product| text(product, "Name")),
                                sku: product.and_then(|product| text(product, "ProductCode")),
                                quantity: decimal(item, "Quantity")?.unwrap_or_default(),
                                unit_price: decimal(item, "UnitPrice")?.unwrap_or_default(),
                                line_total: decimal(item, "TotalPrice")?.unwrap_or_default(),
                            })
                        })
                        .collect::<Result<Vec<_>, ConnectorError>>()?,
                ),
                _ => {
                    completeness = Completeness::Partial;
                    None
                }
            };
            let currency = match text(row, "CurrencyIsoCode") {
                Some(code) => {
                    Some(Currency::new(&code).map_err(|error| ConnectorError::decode("Order.CurrencyIsoCode", error))?)
                }
                None => Some(default_currency.clone()),
            };
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
    relationship: &str,
    reference: &RecordRef,
    config: &SalesforceConfig,
) {
    match (&reference.external, reference.canonical) {
        (Some(external), _) => {
            record.insert(id_field.to_owned(), json!(external.as_str()));
        }
        // The target does not know its own id yet: reference the parent by crmsync's external id.
        (None, Some(canonical)) => {
            record.insert(relationship.to_owned(), json!({ config.external_id_field.as_str(): canonical.to_string() }));
        }
        (None, None) => {}
    }
}

/// Builds the collection record for one upsert. Only fields the record has are sent (nothing is
/// cleared), and privacy-denied fields never are.
pub fn to_record(
    canonical_id: CanonicalId,
    data: &EntityData,
    vocabulary: &Vocabulary,
    config: &SalesforceConfig,
    denied: &BTreeSet<String>,
) -> Map<String, Value> {
    let entity = data.entity();
    let mut record = Map::new();
    record.insert("attributes".into(), json!({"type": wire::object(entity)}));
    record.insert(config.external_id_field.clone(), json!(canonical_id.to_string()));
    let channel_field = config.channel_field.clone();
    let mut put = |field: &str, value: Value| {
        if !denied.contains(field) && !value.is_null() {
            record.insert(field.to_owned(), value);
        }
    };
    match data {
        EntityData::Account(account) => {
            put("Name", json!(account.name));
            put("AccountNumber", json!(account.number));
            put("Website", json!(account.domain.as_ref().map(|domain| format!("https://{domain}"))));
            put("Industry", json!(account.industry));
            put("BillingCountry", json!(account.billing_country));
        }
        EntityData::Lead(lead) => {
            if let Some(name) = &lead.name {
                let (first, last) = split_name(name);
                if let Some(first) = first {
                    put("FirstName", json!(first));
                }
                put("LastName", json!(last));
            }
            put(
                "Company",
                json!(lead.company.clone().or_else(|| lead.name.as_ref().map(|_| "[not provided]".to_owned()))),
            );
            put("Email", json!(lead.email));
            put(&channel_field, json!(lead.channel.and_then(|channel| channel_value(channel, vocabulary))));
        }
        EntityData::Opportunity(opportunity) => {
            put("Name", json!(opportunity.name));
            put("StageName", json!(opportunity.stage.and_then(|stage| vocabulary.stages.reverse(stage))));
            put("CloseDate", json!(opportunity.close_date.map(|day| day.to_string())));
            if let Some(amount) = &opportunity.amount {
                put("Amount", decimal_json(amount.amount));
                put("CurrencyIsoCode", json!(amount.currency.as_str()));
            }
            put("Probability", json!(opportunity.probability.map(decimal_json)));
            put(&channel_field, json!(opportunity.channel.and_then(|channel| channel_value(channel, vocabulary))));
        }
        EntityData::Order(order) => {
            put("Crmsync_Order_Number__c", json!(order.number));
            put("Status", json!(order.status.and_then(|status| vocabulary.order_statuses.reverse(status))));
            put("EffectiveDate", json!(order.order_date.map(|day| day.to_string())));
            put("CurrencyIsoCode", json!(order.currency.as_ref().map(Currency::as_str)));
            put("Description", json!(order.details));
            put(&channel_field, json!(order.channel.and_then(|channel| channel_value(channel, vocabulary))));
        }
    }
    match data {
        EntityData::Opportunity(opportunity) => {
            if let Some(account) = &opportunity.account
                && !denied.contains("AccountId")
            {
                put_reference(&mut record, "AccountId", "Account", account, config);
            }
        }
        EntityData::Order(order) => {
            if let Some(account) = &order.account
                && !denied.contains("AccountId")
            {
                put_reference(&mut record, "AccountId", "Account", account, config);
            }
            if let Some(opportunity) = &order.opportunity
                && !denied.contains("OpportunityId")
            {
                put_reference(&mut record, "OpportunityId", "Opportunity", opportunity, config);
            }
        }
        _ => {}
    }
    record
}
