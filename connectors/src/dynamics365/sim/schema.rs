//! The tables the simulated org has, described as Dataverse describes them: each column's logical
//! name, `AttributeType`, `RequiredLevel` and whether a create or an update may set it, served by
//! `EntityDefinitions` and enforced by the write path; plus the seeded currencies, price list and
//! the option-set labels served as formatted values.
//!
//! Levels and write flags are copied from the table references (MicrosoftDocs/dynamics-365-customer-engagement:
//! ce/developer/entities/{account,lead,opportunity,salesorder,salesorderdetail}.md): for example
//! salesorder `name`, `customerid`, `pricelevelid` and `transactioncurrencyid` are
//! `ApplicationRequired`, its `statecode` is `SystemRequired` and not valid for create, its
//! `transactioncurrencyid` not valid for update; opportunity `name` and `customerid` are
//! `ApplicationRequired`; lead `subject` and `lastname` are `ApplicationRequired`; salesorderdetail
//! `quantity` is `ApplicationRequired` and `salesorderid` `SystemRequired`.

use serde_json::{Value, json};

use super::ALTERNATE_KEY;

/// A column's type (the `AttributeTypeCode` it is described with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `Uniqueidentifier`, the primary key.
    Key,
    /// `String` of at most this many characters.
    Text(usize),
    /// `Memo` of at most this many characters.
    Memo(usize),
    /// `Integer` within a range.
    Int(i64, i64),
    /// `Picklist` with its options.
    Choice(&'static [(i64, &'static str)]),
    /// `State` with its options.
    State(&'static [(i64, &'static str)]),
    /// `Status` with its options `(value, label, state)`.
    Status(&'static [(i64, &'static str, i64)]),
    /// `Money`.
    Money,
    /// `Decimal`.
    Decimal,
    /// `DateTime` with the DateOnly format (`2024-03-31`).
    Date,
    /// `DateTime` (`2024-03-31T10:00:00Z`).
    DateTime,
    /// `Boolean`.
    Bool,
    /// `Lookup`: (navigation property for binds, target set).
    Lookup(&'static str, &'static str),
    /// `Customer` (account or contact): (navigation property for an account, target set).
    Customer(&'static str, &'static str),
    /// `Owner` (systemuser or team), set by the platform.
    Owner,
}

impl Kind {
    /// The `AttributeType` value.
    pub(super) fn type_code(self) -> &'static str {
        match self {
            Self::Key => "Uniqueidentifier",
            Self::Text(_) => "String",
            Self::Memo(_) => "Memo",
            Self::Int(..) => "Integer",
            Self::Choice(_) => "Picklist",
            Self::State(_) => "State",
            Self::Status(_) => "Status",
            Self::Money => "Money",
            Self::Decimal => "Decimal",
            Self::Date | Self::DateTime => "DateTime",
            Self::Bool => "Boolean",
            Self::Lookup(..) => "Lookup",
            Self::Customer(..) => "Customer",
            Self::Owner => "Owner",
        }
    }

    /// The derived metadata type (`@odata.type`).
    fn metadata_type(self) -> &'static str {
        match self {
            Self::Key => "UniqueIdentifierAttributeMetadata",
            Self::Text(_) => "StringAttributeMetadata",
            Self::Memo(_) => "MemoAttributeMetadata",
            Self::Int(..) => "IntegerAttributeMetadata",
            Self::Choice(_) => "PicklistAttributeMetadata",
            Self::State(_) => "StateAttributeMetadata",
            Self::Status(_) => "StatusAttributeMetadata",
            Self::Money => "MoneyAttributeMetadata",
            Self::Decimal => "DecimalAttributeMetadata",
            Self::Date | Self::DateTime => "DateTimeAttributeMetadata",
            Self::Bool => "BooleanAttributeMetadata",
            Self::Lookup(..) | Self::Customer(..) | Self::Owner => "LookupAttributeMetadata",
        }
    }

    /// Whether rows carry the value as `_{name}_value`.
    pub(super) fn is_lookup(self) -> bool {
        matches!(self, Self::Lookup(..) | Self::Customer(..) | Self::Owner)
    }
}

/// `AttributeRequiredLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    None,
    SystemRequired,
    ApplicationRequired,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::SystemRequired => "SystemRequired",
            Self::ApplicationRequired => "ApplicationRequired",
        }
    }
}

/// One column.
pub(super) struct Column {
    /// Logical name (`customerid`).
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) level: Level,
    /// `IsValidForCreate`.
    pub(super) create: bool,
    /// `IsValidForUpdate`.
    pub(super) update: bool,
}

impl Column {
    /// The property rows carry the value under (`_customerid_value` for a lookup).
    pub(super) fn property(&self) -> String {
        if self.kind.is_lookup() { format!("_{}_value", self.name) } else { self.name.to_owned() }
    }

    /// Whether a create must carry it: required, settable on create, and not filled by the
    /// platform (the key, the owner, state and status, the order number, and the transaction
    /// currency, which defaults to the org's base currency — crm-apis.md §3.7).
    pub(super) fn required_on_create(&self) -> bool {
        self.level != Level::None
            && self.create
            && !matches!(self.kind, Kind::Key | Kind::Owner | Kind::State(_) | Kind::Status(_))
            && !matches!(self.name, "ordernumber" | "transactioncurrencyid")
    }
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, level: Level::None, create: true, update: true }
}

const fn app(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, level: Level::ApplicationRequired, create: true, update: true }
}

const fn sys(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, level: Level::SystemRequired, create: true, update: true }
}

/// A column no write may set (computed by the platform).
const fn computed(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, level: Level::None, create: false, update: false }
}

/// A column only a create may set.
const fn create_only(column: Column) -> Column {
    Column { update: false, ..column }
}

/// A state column (set by state-changing messages, never by a create).
const fn state(options: &'static [(i64, &'static str)]) -> Column {
    Column { name: "statecode", kind: Kind::State(options), level: Level::SystemRequired, create: false, update: true }
}

const fn key(name: &'static str) -> Column {
    Column { name, kind: Kind::Key, level: Level::SystemRequired, create: true, update: false }
}

const OWNER: Column = sys("ownerid", Kind::Owner);

/// opportunity `statecode` (table reference: "Won and lost opportunities are read-only").
pub(super) const OPPORTUNITY_STATES: &[(i64, &str)] = &[(0, "Open"), (1, "Won"), (2, "Lost")];
/// opportunity `statuscode`.
pub(super) const OPPORTUNITY_STATUSES: &[(i64, &str, i64)] =
    &[(1, "In Progress", 0), (2, "On Hold", 0), (3, "Won", 1), (4, "Canceled", 2), (5, "Out-Sold", 2)];
/// salesorder `statecode` (table reference: "Only active orders can be edited").
pub(super) const ORDER_STATES: &[(i64, &str)] =
    &[(0, "Active"), (1, "Submitted"), (2, "Canceled"), (3, "Fulfilled"), (4, "Invoiced")];
/// salesorder `statuscode`.
pub(super) const ORDER_STATUSES: &[(i64, &str, i64)] = &[
    (1, "New", 0),
    (2, "Pending", 0),
    (3, "In Progress", 1),
    (4, "No Money", 2),
    (100001, "Complete", 3),
    (100002, "Partial", 3),
    (100003, "Invoiced", 4),
];
const LEAD_STATES: &[(i64, &str)] = &[(0, "Open"), (1, "Qualified"), (2, "Disqualified")];
const LEAD_STATUSES: &[(i64, &str, i64)] = &[
    (1, "New", 0),
    (2, "Contacted", 0),
    (3, "Qualified", 1),
    (4, "Lost", 2),
    (5, "Cannot Contact", 2),
    (6, "No Longer Interested", 2),
    (7, "Canceled", 2),
];
const ACCOUNT_STATES: &[(i64, &str)] = &[(0, "Active"), (1, "Inactive")];
const ACCOUNT_STATUSES: &[(i64, &str, i64)] = &[(1, "Active", 0), (2, "Inactive", 1)];
const SALES_STAGES: &[(i64, &str)] = &[(0, "Qualify"), (1, "Develop"), (2, "Propose"), (3, "Close")];
const BUDGET_STATUSES: &[(i64, &str)] = &[(0, "No Committed Budget"), (1, "May Buy"), (2, "Can Buy"), (3, "Will Buy")];

const ACCOUNTS: &[Column] = &[
    key("accountid"),
    app("name", Kind::Text(160)),
    col("accountnumber", Kind::Text(20)),
    col("websiteurl", Kind::Text(200)),
    col("address1_country", Kind::Text(80)),
    col("telephone1", Kind::Text(50)),
    state(ACCOUNT_STATES),
    col("statuscode", Kind::Status(ACCOUNT_STATUSES)),
    OWNER,
];
const LEADS: &[Column] = &[
    key("leadid"),
    app("subject", Kind::Text(300)),
    col("firstname", Kind::Text(50)),
    app("lastname", Kind::Text(50)),
    col("companyname", Kind::Text(100)),
    col("emailaddress1", Kind::Text(100)),
    state(LEAD_STATES),
    col("statuscode", Kind::Status(LEAD_STATUSES)),
    OWNER,
    col("crmsync_channel", Kind::Text(100)),
];
const OPPORTUNITIES: &[Column] = &[
    key("opportunityid"),
    app("name", Kind::Text(300)),
    app("customerid", Kind::Customer("customerid_account", "accounts")),
    col("estimatedvalue", Kind::Money),
    app("transactioncurrencyid", Kind::Lookup("transactioncurrencyid", "transactioncurrencies")),
    col("salesstage", Kind::Choice(SALES_STAGES)),
    col("budgetstatus", Kind::Choice(BUDGET_STATUSES)),
    state(OPPORTUNITY_STATES),
    col("statuscode", Kind::Status(OPPORTUNITY_STATUSES)),
    col("closeprobability", Kind::Int(0, 100)),
    col("estimatedclosedate", Kind::Date),
    col("actualclosedate", Kind::Date),
    OWNER,
    col("crmsync_channel", Kind::Text(100)),
];
const SALESORDERS: &[Column] = &[
    key("salesorderid"),
    app("name", Kind::Text(300)),
    create_only(sys("ordernumber", Kind::Text(100))),
    app("customerid", Kind::Customer("customerid_account", "accounts")),
    app("pricelevelid", Kind::Lookup("pricelevelid", "pricelevels")),
    col("opportunityid", Kind::Lookup("opportunityid", "opportunities")),
    create_only(app("transactioncurrencyid", Kind::Lookup("transactioncurrencyid", "transactioncurrencies"))),
    state(ORDER_STATES),
    col("statuscode", Kind::Status(ORDER_STATUSES)),
    computed("totalamount", Kind::Money),
    col("submitdate", Kind::DateTime),
    col("datefulfilled", Kind::DateTime),
    col("description", Kind::Memo(2000)),
    OWNER,
    col("crmsync_channel", Kind::Text(100)),
];
const LINES: &[Column] = &[
    key("salesorderdetailid"),
    sys("salesorderid", Kind::Lookup("salesorderid", "salesorders")),
    col("productid", Kind::Lookup("productid", "products")),
    col("productdescription", Kind::Text(500)),
    create_only(col("isproductoverridden", Kind::Bool)),
    app("quantity", Kind::Decimal),
    col("priceperunit", Kind::Money),
    computed("extendedamount", Kind::Money),
];
const PRODUCT_COLUMNS: &[Column] =
    &[key("productid"), app("name", Kind::Text(100)), col("productnumber", Kind::Text(100))];
const PRICE_LEVEL_COLUMNS: &[Column] = &[key("pricelevelid"), app("name", Kind::Text(100))];
const CURRENCY_COLUMNS: &[Column] =
    &[key("transactioncurrencyid"), app("isocurrencycode", Kind::Text(5)), app("currencyname", Kind::Text(100))];
pub(super) const CURRENCIES: &[(&str, &str, &str)] = &[
    ("a1b2c3d4-0000-4000-8000-000000000001", "USD", "US Dollar"),
    ("a1b2c3d4-0000-4000-8000-000000000002", "EUR", "Euro"),
    ("a1b2c3d4-0000-4000-8000-000000000003", "GBP", "Pound Sterling"),
];
/// The org's price list (`pricelevel`), the one `connection_toml` names as the orders' default.
pub const PRICE_LIST_ID: &str = "b5c6d7e8-0000-4000-8000-000000000001";
/// The system user records are owned by.
pub(super) const OWNER_ID: &str = "5d2a4f10-0000-4000-8000-00000000aa01";

/// The entity sets the simulator serves.
pub(super) const SETS: &[&str] = &[
    "accounts",
    "leads",
    "opportunities",
    "salesorders",
    "salesorderdetails",
    "transactioncurrencies",
    "products",
    "pricelevels",
];

pub(super) fn columns(set: &str) -> &'static [Column] {
    match set {
        "accounts" => ACCOUNTS,
        "leads" => LEADS,
        "opportunities" => OPPORTUNITIES,
        "salesorders" => SALESORDERS,
        "transactioncurrencies" => CURRENCY_COLUMNS,
        "products" => PRODUCT_COLUMNS,
        "pricelevels" => PRICE_LEVEL_COLUMNS,
        _ => LINES,
    }
}

pub(super) fn logical(set: &str) -> &'static str {
    match set {
        "accounts" => "account",
        "leads" => "lead",
        "opportunities" => "opportunity",
        "salesorders" => "salesorder",
        "salesorderdetails" => "salesorderdetail",
        "products" => "product",
        "pricelevels" => "pricelevel",
        _ => "transactioncurrency",
    }
}

/// The entity set of a logical name.
pub(super) fn set_of(logical_name: &str) -> Option<&'static str> {
    SETS.iter().copied().find(|set| logical(set) == logical_name)
}

pub(super) fn key_of(set: &str) -> String {
    format!("{}id", logical(set))
}

/// Whether crmsync's custom columns (`crmsync_id`, the alternate key) exist on a table.
fn customised(set: &str) -> bool {
    matches!(set, "accounts" | "leads" | "opportunities" | "salesorders" | "salesorderdetails")
}

/// Every property of a table's rows (key, lookups as `_x_value`, custom and system columns).
pub(super) fn readable(set: &str) -> Vec<String> {
    let mut names: Vec<String> = columns(set).iter().map(Column::property).collect();
    names.extend(["createdon", "modifiedon", "versionnumber"].map(str::to_owned));
    if customised(set) {
        names.push(ALTERNATE_KEY.to_owned());
    }
    names
}

/// The column of a property (`_customerid_value` → `customerid`).
pub(super) fn column_of(set: &str, property: &str) -> Option<&'static Column> {
    columns(set).iter().find(|column| column.property() == property)
}

/// The column with a logical name.
pub(super) fn column_named(set: &str, name: &str) -> Option<&'static Column> {
    columns(set).iter().find(|column| column.name == name)
}

fn schema_name(logical_name: &str) -> String {
    let mut chars = logical_name.chars();
    chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

pub(super) fn metadata_id(set: &str, name: &str) -> String {
    let hash = name
        .bytes()
        .chain(set.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    super::guid(hash & 0x0000_ffff_ffff_ffff)
}

fn attribute(
    set: &str,
    name: &str,
    kind_code: &str,
    metadata_type: &str,
    level: &str,
    flags: (bool, bool),
    attribute_of: Option<&str>,
) -> Value {
    json!({
        "@odata.type": format!("#Microsoft.Dynamics.CRM.{metadata_type}"),
        "LogicalName": name,
        "SchemaName": schema_name(name),
        "AttributeType": kind_code,
        "AttributeTypeName": {"Value": format!("{kind_code}Type")},
        "AttributeOf": attribute_of,
        "IsPrimaryId": name == key_of(set),
        "IsValidForCreate": flags.0,
        "IsValidForUpdate": flags.1,
        "IsValidForRead": true,
        "RequiredLevel": {
            "Value": level, "CanBeChanged": true, "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "MetadataId": metadata_id(set, name),
    })
}

/// The `Attributes` of a table as `EntityDefinitions` serves them: every column (a lookup by its
/// logical name, with its `…name` companion column), the system columns and crmsync's custom ones.
pub(super) fn attributes(set: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for column in columns(set) {
        let level = column.level.name();
        out.push(attribute(
            set,
            column.name,
            column.kind.type_code(),
            column.kind.metadata_type(),
            level,
            (column.create, column.update),
            None,
        ));
        if column.kind.is_lookup() {
            // The display name of the referenced record: described, never written.
            let companion = format!("{}name", column.name);
            out.push(attribute(
                set,
                &companion,
                "String",
                "StringAttributeMetadata",
                level,
                (false, false),
                Some(column.name),
            ));
        }
    }
    for (name, kind_code, metadata_type) in [
        ("createdon", "DateTime", "DateTimeAttributeMetadata"),
        ("modifiedon", "DateTime", "DateTimeAttributeMetadata"),
        ("versionnumber", "BigInt", "BigIntAttributeMetadata"),
    ] {
        out.push(attribute(set, name, kind_code, metadata_type, "None", (false, false), None));
    }
    if customised(set) {
        out.push(attribute(set, ALTERNATE_KEY, "String", "StringAttributeMetadata", "None", (true, true), None));
    }
    out
}

/// The label of a choice, state or status value (served as the formatted-value annotation).
pub(super) fn formatted(set: &str, property: &str, value: &Value) -> Option<&'static str> {
    let number = value.as_i64()?;
    match column_of(set, property)?.kind {
        Kind::Choice(options) | Kind::State(options) => {
            options.iter().find(|(option, _)| *option == number).map(|(_, label)| *label)
        }
        Kind::Status(options) => options.iter().find(|(option, ..)| *option == number).map(|(_, label, _)| *label),
        _ => None,
    }
}

/// The default status of a state (the first status that belongs to it).
pub(super) fn default_status(set: &str, state: i64) -> Option<i64> {
    match column_named(set, "statuscode")?.kind {
        Kind::Status(options) => options.iter().find(|(.., of)| *of == state).map(|(value, ..)| *value),
        _ => None,
    }
}

/// The state a status belongs to.
pub(super) fn state_of_status(set: &str, status: i64) -> Option<i64> {
    match column_named(set, "statuscode")?.kind {
        Kind::Status(options) => options.iter().find(|(value, ..)| *value == status).map(|(.., of)| *of),
        _ => None,
    }
}

pub(super) fn static_set(set: &str) -> &'static str {
    SETS.iter().copied().find(|known| *known == set).unwrap_or("accounts")
}
