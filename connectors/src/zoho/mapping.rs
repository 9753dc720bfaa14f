//! Zoho records ↔ canonical records: the only place the two meet.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::config::ZohoConfig;
use super::wire;
use crate::canonical::{
    Account, CanonicalId, Channel, Currency, Entity, EntityData, ExternalId, Lead, Money, Opportunity, Order,
    OrderLine, RecordRef, Stage, Timestamp, Vocabulary, decimal_json, join_name, normalise_domain, split_name,
};
use crate::connector::{Change, ChangeKind, Completeness};
use crate::error::ConnectorError;
use crate::row::{self, date, decimal, timestamp};
use crate::settings::FieldPolicy;

/// Canonical field → Zoho fields (`{channel}`: the configured channel field).
pub fn vendor_fields(entity: Entity, canonical: &str) -> &'static [&'static str] {
    match (entity, canonical) {
        (Entity::Account, "name") => &["Account_Name"],
        (Entity::Account, "number") => &["Account_Number"],
        (Entity::Account, "domain") => &["Website"],
        (Entity::Account, "industry") => &["Industry"],
        (Entity::Account, "billing_country") => &["Billing_Country"],
        (Entity::Account, "owner") => &["Owner"],
        (Entity::Lead, "name") => &["First_Name", "Last_Name"],
        (Entity::Lead, "company") => &["Company"],
        (Entity::Lead, "email") => &["Email"],
        (Entity::Lead, "source" | "channel") => &["{channel}"],
        (Entity::Lead, "status") => &["Lead_Status"],
        (Entity::Opportunity, "name") => &["Deal_Name"],
        (Entity::Opportunity, "account") => &["Account_Name"],
        (Entity::Opportunity, "amount") => &["Amount", "Currency"],
        (Entity::Opportunity, "stage" | "vendor_stage" | "is_won" | "is_closed") => &["Stage"],
        (Entity::Opportunity, "probability") => &["Probability"],
        (Entity::Opportunity, "channel" | "vendor_channel") => &["{channel}"],
        (Entity::Opportunity, "close_date" | "closed_at") => &["Closing_Date"],
        (Entity::Order, "number") => &["Subject"],
        (Entity::Order, "account") => &["Account_Name"],
        (Entity::Order, "opportunity") => &["Deal_Name"],
        (Entity::Order, "channel" | "vendor_channel") => &["{channel}"],
        (Entity::Order, "status" | "vendor_status") => &["Status"],
        (Entity::Order, "currency") => &["Currency"],
        (Entity::Order, "total_amount") => &["Grand_Total"],
        (Entity::Order, "order_date") => &["Due_Date"],
        (Entity::Order, "lines") => &["Ordered_Items", "Product_Details"],
        (Entity::Order, "details") => &["Description"],
        (_, "created_at") => &["Created_Time"],
        (_, "updated_at") => &["Modified_Time"],
        _ => &[],
    }
}

/// What `settings/fields` says about a module: its fields, what a create must carry, the picklists,
/// and (Sales_Orders) which line-item field the org has.
#[derive(Debug, Default)]
pub struct ModuleInfo {
    /// API names.
    pub fields: BTreeSet<String>,
    /// Fields a create must carry: `system_mandatory` and not system-computed (`read_only`).
    pub mandatory: Vec<String>,
    /// Picklist fields and the `actual_value`s a write may send (fields with no listed values are
    /// not checked).
    pub picklists: HashMap<String, Vec<String>>,
    /// `Ordered_Items` or `Product_Details`, when the module has one of them.
    pub line_items: Option<String>,
}

impl ModuleInfo {
    /// Reads the documented `settings/fields` metadata.
    pub fn new(fields: Vec<wire::FieldMeta>) -> Self {
        let mut info = Self::default();
        for field in fields {
            if field.system_mandatory && !field.read_only && field.api_name != "id" {
                info.mandatory.push(field.api_name.clone());
            }
            if field.data_type == "picklist" && !field.pick_list_values.is_empty() {
                let values = field.pick_list_values.iter().map(|value| value.actual_value.clone()).collect();
                info.picklists.insert(field.api_name.clone(), values);
            }
            if info.line_items.is_none() && wire::LINE_ITEM_FIELDS.contains(&field.api_name.as_str()) {
                info.line_items = Some(field.api_name.clone());
            }
            info.fields.insert(field.api_name);
        }
        info
    }
}

/// The org's currencies (`GET org`, `GET org/currencies`).
#[derive(Debug, Clone)]
pub struct OrgCurrencies {
    /// The org (base) currency: the currency of every amount in a single-currency org.
    pub currency: Currency,
    /// Multi-currency enabled: records may carry a `Currency`.
    pub multi_currency: bool,
    /// Currencies a record may be written in.
    pub active: BTreeSet<String>,
}

/// Why a record is not sent: Zoho would refuse it, so it is dead-lettered before the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Zoho's code for the same refusal (`MANDATORY_NOT_FOUND`, `INVALID_DATA`, `CURRENCIES_NOT_ENABLED`).
    pub code: String,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Refusal {
    fn new(code: &str, message: String) -> Self {
        Self { code: code.to_owned(), message }
    }
}

/// What a write needs besides the record: the org's rules and lookups.
pub struct WriteContext<'a> {
    /// Vendor value tables.
    pub vocabulary: &'a Vocabulary,
    /// The connection's settings.
    pub config: &'a ZohoConfig,
    /// Fields privacy forbids writing.
    pub denied: &'a BTreeSet<String>,
    /// Product name → Zoho id.
    pub products: &'a HashMap<String, String>,
    /// The module's metadata.
    pub module: &'a ModuleInfo,
    /// The org's currencies (modules with amounts).
    pub currencies: Option<&'a OrgCurrencies>,
}

/// Mapped fields the org's module lacks (a `Currency` in a single-currency org; one line-item field of
/// the two is always absent and not listed).
pub fn missing_mapped_fields(entity: Entity, module: &ModuleInfo, config: &ZohoConfig) -> Vec<String> {
    let mut missing: Vec<String> = entity
        .fields()
        .iter()
        .flat_map(|field| vendor_fields(entity, field).iter().map(|vendor| resolve(vendor, config).to_owned()))
        .filter(|field| !module.fields.contains(field) && !wire::LINE_ITEM_FIELDS.contains(&field.as_str()))
        .collect();
    if entity == Entity::Order && module.line_items.is_none() {
        missing.push(wire::LINE_ITEM_FIELDS.join(" or "));
    }
    missing.sort();
    missing.dedup();
    missing
}

/// The field a mapping cannot work without, per module.
pub fn required_field(entity: Entity) -> &'static str {
    match entity {
        Entity::Account => "Account_Name",
        Entity::Lead => "Last_Name",
        Entity::Opportunity => "Stage",
        Entity::Order => "Subject",
    }
}

fn resolve<'a>(field: &'a str, config: &'a ZohoConfig) -> &'a str {
    if field == "{channel}" { &config.channel_field } else { field }
}

/// Zoho fields privacy forbids.
pub fn denied_fields(
    entity: Entity,
    policy: &FieldPolicy,
    config: &ZohoConfig,
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
            && field != "id"
            && field != "Modified_Time"
            && field != &config.external_id_field
        {
            denied.insert(field.clone());
        }
    }
    denied
}

/// The `fields=` list: mapped fields first, then other fields up to Zoho's limit of 50.
pub fn fields_param(
    entity: Entity,
    described: &BTreeSet<String>,
    denied: &BTreeSet<String>,
    config: &ZohoConfig,
) -> Vec<String> {
    let mut fields: Vec<String> = vec!["Modified_Time".into()];
    let mapped = entity
        .fields()
        .iter()
        .flat_map(|field| vendor_fields(entity, field).iter().map(|vendor| resolve(vendor, config).to_owned()));
    let ordered = mapped.chain(std::iter::once(config.external_id_field.clone())).chain(described.iter().cloned());
    for field in ordered {
        if fields.len() >= 50 {
            break;
        }
        if described.contains(&field) && !denied.contains(&field) && !fields.contains(&field) && field != "id" {
            fields.push(field);
        }
    }
    fields
}

/// Zoho shows an unset picklist as `-None-`: that is no value, not the text "-None-".
fn text(row: &Map<String, Value>, field: &str) -> Option<String> {
    row::text(row, field).filter(|value| value != "-None-")
}

fn lookup(row: &Map<String, Value>, field: &str) -> Option<RecordRef> {
    row.get(field).and_then(|value| value.get("id")).and_then(Value::as_str).map(RecordRef::external)
}

/// A sales order's line items, under whichever line-item field the record has.
fn line_items(row: &Map<String, Value>) -> Option<(&'static str, &Vec<Value>)> {
    wire::LINE_ITEM_FIELDS.iter().find_map(|field| Some((*field, row.get(*field)?.as_array()?)))
}

/// One line: `Ordered_Items` rows name their keys like fields (`Product_Name`, `Quantity`, `List_Price`,
/// `Total`); the older `Product_Details` rows use `product`, `quantity`, `list_price`, `total`.
fn order_line(field: &str, item: &Map<String, Value>) -> Result<OrderLine, ConnectorError> {
    let legacy = field == "Product_Details";
    let key = |current: &'static str, old: &'static str| if legacy { old } else { current };
    let product = item.get(key("Product_Name", "product"));
    Ok(OrderLine {
        product: product.and_then(|product| product.get("name")).and_then(Value::as_str).map(str::to_owned),
        sku: text(item, "Product_Code").or_else(|| {
            product.and_then(|product| product.get("Product_Code")).and_then(Value::as_str).map(str::to_owned)
        }),
        quantity: decimal(item, key("Quantity", "quantity"))?.unwrap_or_default(),
        unit_price: decimal(item, key("List_Price", "list_price"))?.unwrap_or_default(),
        line_total: decimal(item, key("Total", "total"))?.unwrap_or_default(),
    })
}

/// Maps one record to a canonical change. `unmapped` collects vendor values no table covers.
pub fn to_change(
    entity: Entity,
    row: &Map<String, Value>,
    vocabulary: &Vocabulary,
    config: &ZohoConfig,
    default_currency: Option<&Currency>,
    unmapped: &mut Vec<String>,
) -> Result<Change, ConnectorError> {
    let module = wire::module(entity);
    let missing = |what: &str| {
        ConnectorError::decode(format!("{module} record"), std::io::Error::other(format!("missing {what}")))
    };
    let id = text(row, "id").ok_or_else(|| missing("id"))?;
    let modified_at = timestamp(row, "Modified_Time")?.ok_or_else(|| missing("Modified_Time"))?;
    let canonical_hint = text(row, &config.external_id_field).and_then(|value| value.parse::<CanonicalId>().ok());
    let channel_raw = text(row, &config.channel_field);
    let channel = channel_raw.as_deref().map(|raw| {
        let mapped = vocabulary.channels.get(raw);
        if mapped.is_none() {
            unmapped.push(format!("{module}.{} = {raw:?}", config.channel_field));
        }
        mapped.unwrap_or(Channel::Other)
    });
    let currency = |field: &str| -> Result<Currency, ConnectorError> {
        match text(row, field) {
            Some(code) => {
                Currency::new(&code).map_err(|error| ConnectorError::decode(format!("{module}.{field}"), error))
            }
            None => default_currency.cloned().ok_or_else(|| missing(field)),
        }
    };
    let data = match entity {
        Entity::Account => EntityData::Account(Account {
            name: text(row, "Account_Name"),
            number: text(row, "Account_Number"),
            domain: text(row, "Website").and_then(|website| normalise_domain(&website)),
            industry: text(row, "Industry"),
            billing_country: text(row, "Billing_Country"),
            owner: row.get("Owner").and_then(|owner| owner.get("name")).and_then(Value::as_str).map(str::to_owned),
            created_at: timestamp(row, "Created_Time")?,
            updated_at: Some(modified_at),
        }),
        Entity::Lead => EntityData::Lead(Lead {
            name: join_name(text(row, "First_Name"), text(row, "Last_Name")),
            company: text(row, "Company"),
            email: text(row, "Email"),
            source: channel_raw.clone(),
            channel,
            status: text(row, "Lead_Status"),
            converted: None,
            converted_account: None,
            converted_opportunity: None,
            created_at: timestamp(row, "Created_Time")?,
        }),
        Entity::Opportunity => {
            let vendor_stage = text(row, "Stage");
            let stage = vendor_stage.as_deref().and_then(|raw| {
                let mapped = vocabulary.stages.get(raw);
                if mapped.is_none() {
                    unmapped.push(format!("Deals.Stage = {raw:?}"));
                }
                mapped
            });
            let close_date = date(row, "Closing_Date")?;
            let is_closed = stage.map(|stage| stage.is_closed());
            EntityData::Opportunity(Opportunity {
                name: text(row, "Deal_Name"),
                account: lookup(row, "Account_Name"),
                amount: decimal(row, "Amount")?
                    .map(|amount| currency("Currency").map(|currency| Money::new(amount, currency)))
                    .transpose()?,
                stage,
                vendor_stage,
                probability: decimal(row, "Probability")?,
                channel,
                vendor_channel: channel_raw,
                close_date,
                created_at: timestamp(row, "Created_Time")?,
                closed_at: if is_closed == Some(true) {
                    close_date
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
            let vendor_status = text(row, "Status");
            let status = vendor_status.as_deref().and_then(|raw| {
                let mapped = vocabulary.order_statuses.get(raw);
                if mapped.is_none() {
                    unmapped.push(format!("Sales_Orders.Status = {raw:?}"));
                }
                mapped
            });
            let lines = match line_items(row) {
                Some((field, items)) => Some(
                    items.iter().filter_map(Value::as_object).map(|item| order_line(field, item)).collect::<Result<
                        Vec<_>,
                        ConnectorError,
                    >>(
                    )?,
                ),
                None => None,
            };
            EntityData::Order(Order {
                number: text(row, "Subject"),
                account: lookup(row, "Account_Name"),
                opportunity: lookup(row, "Deal_Name"),
                channel,
                vendor_channel: channel_raw,
                status,
                vendor_status,
                currency: Some(currency("Currency")?),
                total_amount: decimal(row, "Grand_Total")?,
                order_date: date(row, "Due_Date")?,
                lines,
                details: text(row, "Description"),
            })
        }
    };
    let mapped: BTreeSet<&str> = entity
        .fields()
        .iter()
        .flat_map(|field| vendor_fields(entity, field).iter().map(|vendor| resolve(vendor, config)))
        .chain(["id", "Modified_Time", "Created_Time", config.external_id_field.as_str()])
        .collect();
    let extra = row
        .iter()
        .filter(|(field, _)| !mapped.contains(field.as_str()) && !field.starts_with('$'))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect();
    Ok(Change {
        entity,
        object: module.to_owned(),
        external_id: ExternalId::new(id),
        modified_at,
        version: None,
        canonical_hint,
        kind: ChangeKind::Upsert { data, completeness: Completeness::Full },
        extra,
    })
}

fn channel_value(channel: Channel, vocabulary: &Vocabulary) -> Option<String> {
    let preferred = match channel {
        Channel::Direct => "Phone Inquiry",
        Channel::Agent => "Partner Referral",
        Channel::Ecommerce => "Web",
        Channel::Other => "Other",
    };
    vocabulary.vendor_channel(channel, preferred)
}

/// The `Currency` to write for an amount in `currency`, or why it cannot be written: a multi-currency
/// org takes any of its active currencies; a single-currency org has no `Currency` field and takes
/// only amounts in its own currency (converting needs an FX rate crmsync does not have here).
fn currency_field(currency: &Currency, currencies: &OrgCurrencies) -> Result<Option<String>, Refusal> {
    if currencies.multi_currency {
        if currencies.active.contains(currency.as_str()) {
            return Ok(Some(currency.as_str().to_owned()));
        }
        let active: Vec<&str> = currencies.active.iter().map(String::as_str).collect();
        return Err(Refusal::new(
            "INVALID_DATA",
            format!("Currency: {currency} is not an active currency of the Zoho org (active: {})", active.join(", ")),
        ));
    }
    if *currency == currencies.currency {
        return Ok(None);
    }
    Err(Refusal::new(
        "CURRENCIES_NOT_ENABLED",
        format!(
            "the Zoho org has no multi-currency and keeps amounts in {}; an amount in {currency} cannot be written \
             without converting it",
            currencies.currency
        ),
    ))
}

/// Returns a record as the org holds it: in a single-currency org, amounts in another currency
/// converted into the org currency with `metrics.fx` (`fx`), or refused with the reason (no rates,
/// or no rate for the currency); a multi-currency org takes the record as it is.
pub fn in_org_currency(
    data: &EntityData,
    currencies: &OrgCurrencies,
    fx: Option<&crate::canonical::FxTable>,
) -> Result<EntityData, Refusal> {
    if currencies.multi_currency {
        return Ok(data.clone());
    }
    crate::canonical::in_single_currency(data, &currencies.currency, fx).map_err(|error| {
        Refusal::new(
            "CURRENCIES_NOT_ENABLED",
            format!("the Zoho org has no multi-currency and keeps amounts in {}; {error}", currencies.currency),
        )
    })
}

/// Builds one write record, or refuses it before the call when Zoho would: a create missing a
/// `system_mandatory` field (`MANDATORY_NOT_FOUND`), a picklist value the field does not list, a
/// currency the org does not take, a sales order without line items or with a product Zoho lacks.
/// Lookups are sent by Zoho id (Zoho cannot reference by another field).
pub fn to_record(
    canonical_id: CanonicalId,
    data: &EntityData,
    context: &WriteContext<'_>,
    creating: bool,
) -> Result<Map<String, Value>, Refusal> {
    let config = context.config;
    let vocabulary = context.vocabulary;
    let denied = context.denied;
    let mut record = Map::new();
    record.insert(config.external_id_field.clone(), json!(canonical_id.to_string()));
    let channel_field = config.channel_field.clone();
    let mut put = |field: &str, value: Value| {
        if !denied.contains(field) && !value.is_null() {
            record.insert(field.to_owned(), value);
        }
    };
    let reference = |reference: &Option<RecordRef>| {
        reference.as_ref().and_then(|reference| reference.external.as_ref()).map(|id| json!({"id": id.as_str()}))
    };
    let currencies = || {
        context.currencies.ok_or_else(|| Refusal::new("INVALID_DATA", "the org's currencies are unknown".to_owned()))
    };
    match data {
        EntityData::Account(account) => {
            put("Account_Name", json!(account.name));
            put("Account_Number", json!(account.number));
            put("Website", json!(account.domain.as_ref().map(|domain| format!("www.{domain}"))));
            put("Industry", json!(account.industry));
            put("Billing_Country", json!(account.billing_country));
        }
        EntityData::Lead(lead) => {
            if let Some(name) = &lead.name {
                let (first, last) = split_name(name);
                if let Some(first) = first {
                    put("First_Name", json!(first));
                }
                put("Last_Name", json!(last));
            }
            put("Company", json!(lead.company));
            put("Email", json!(lead.email));
            put(&channel_field, json!(lead.channel.and_then(|channel| channel_value(channel, vocabulary))));
        }
        EntityData::Opportunity(opportunity) => {
            put("Deal_Name", json!(opportunity.name));
            put("Stage", json!(opportunity.stage.and_then(|stage| vocabulary.stages.reverse(stage))));
            put("Closing_Date", json!(opportunity.close_date.map(|day| day.to_string())));
            if let Some(amount) = &opportunity.amount {
                let currency = currency_field(&amount.currency, currencies()?)?;
                put("Amount", decimal_json(amount.amount));
                put("Currency", json!(currency));
            }
            put("Probability", json!(opportunity.probability.map(decimal_json)));
            put(&channel_field, json!(opportunity.channel.and_then(|channel| channel_value(channel, vocabulary))));
            put("Account_Name", json!(reference(&opportunity.account)));
        }
        EntityData::Order(order) => {
            put("Subject", json!(order.number));
            put("Status", json!(order.status.and_then(|status| vocabulary.order_status_value(status))));
            put("Due_Date", json!(order.order_date.map(|day| day.to_string())));
            if let Some(currency) = &order.currency {
                put("Currency", json!(currency_field(currency, currencies()?)?));
            }
            put("Description", json!(order.details));
            put(&channel_field, json!(order.channel.and_then(|channel| channel_value(channel, vocabulary))));
            put("Account_Name", json!(reference(&order.account)));
            put("Deal_Name", json!(reference(&order.opportunity)));
            if let (Some(lines), Some(field)) = (&order.lines, &context.module.line_items) {
                let legacy = field == "Product_Details";
                let items = lines
                    .iter()
                    .map(|line| {
                        let name = line.product.as_deref().unwrap_or_default();
                        let Some(product) = context.products.get(name) else {
                            return Err(Refusal::new(
                                "INVALID_DATA",
                                format!("{field}: product {name:?} is not in the Zoho org's Products"),
                            ));
                        };
                        Ok(if legacy {
                            json!({"product": {"id": product}, "quantity": decimal_json(line.quantity), "list_price": decimal_json(line.unit_price)})
                        } else {
                            json!({"Product_Name": {"id": product}, "Quantity": decimal_json(line.quantity), "List_Price": decimal_json(line.unit_price)})
                        })
                    })
                    .collect::<Result<Vec<Value>, Refusal>>()?;
                if !items.is_empty() {
                    put(field, Value::Array(items));
                }
            }
        }
    }
    for (field, values) in &context.module.picklists {
        if let Some(value) = record.get(field).and_then(Value::as_str)
            && !values.iter().any(|allowed| allowed == value)
        {
            return Err(Refusal::new(
                "INVALID_DATA",
                format!("{field}: {value:?} is not one of the field's picklist values"),
            ));
        }
    }
    if creating && let Some(missing) = context.module.mandatory.iter().find(|field| !record.contains_key(*field)) {
        return Err(Refusal::new(
            "MANDATORY_NOT_FOUND",
            format!("{missing} is mandatory on create in Zoho and {}", why_missing(data, missing, denied)),
        ));
    }
    Ok(record)
}

/// Why a mandatory field is not in the record: privacy, or the canonical field it comes from is empty.
fn why_missing(data: &EntityData, field: &str, denied: &BTreeSet<String>) -> String {
    if denied.contains(field) {
        return "the connection's privacy settings deny it".to_owned();
    }
    let entity = data.entity();
    let canonical: Vec<&str> =
        entity.fields().iter().filter(|canonical| vendor_fields(entity, canonical).contains(&field)).copied().collect();
    match (canonical.first(), field) {
        (Some(_), "Account_Name") if entity != Entity::Account => {
            "the record's account has no Zoho id yet (push the account to Zoho first)".to_owned()
        }
        (Some(_), "Ordered_Items" | "Product_Details") => "a sales order needs at least one line item".to_owned(),
        (Some(canonical), _) => format!("the record's {canonical} is empty"),
        (None, _) => "crmsync maps no canonical field to it".to_owned(),
    }
}

/// What identifies a line for comparison: product id, quantity, unit price.
fn line_key(
    field: &str,
    item: &Value,
) -> (Option<String>, Option<rust_decimal::Decimal>, Option<rust_decimal::Decimal>) {
    let legacy = field == "Product_Details";
    let product_key = if legacy { "product" } else { "Product_Name" };
    let number =
        |key: &str| item.get(key).and_then(|value| Money::parse_amount(&value.to_string().replace('"', "")).ok());
    (
        item.get(product_key).and_then(|product| product.get("id")).and_then(Value::as_str).map(str::to_owned),
        number(if legacy { "quantity" } else { "Quantity" }),
        number(if legacy { "list_price" } else { "List_Price" }),
    )
}

/// The subform rows to send so that a record's line items become `desired`, given the rows Zoho has:
/// Zoho appends rows sent without an id, updates rows sent with one and removes rows sent with `_delete`
/// (zoho/crm-oas v8.0 updateRecords operation.md), so resending the lines as new rows would duplicate
/// them. `None`: the lines are already as desired (nothing to send).
pub fn line_item_changes(field: &str, current: &[Value], desired: &[Value]) -> Option<Vec<Value>> {
    let unchanged = current.len() == desired.len()
        && current.iter().zip(desired).all(|(have, want)| line_key(field, have) == line_key(field, want));
    if unchanged {
        return None;
    }
    let rows = (0..current.len().max(desired.len()))
        .filter_map(|index| {
            let id = current.get(index).and_then(|row| row.get("id")).cloned();
            match (id, desired.get(index)) {
                (Some(id), Some(want)) => {
                    let mut row = want.clone();
                    if let Some(fields) = row.as_object_mut() {
                        fields.insert("id".to_owned(), id);
                    }
                    Some(row)
                }
                (None, Some(want)) => Some(want.clone()),
                (Some(id), None) => Some(json!({"id": id, "_delete": null})),
                (None, None) => None,
            }
        })
        .collect();
    Some(rows)
}
