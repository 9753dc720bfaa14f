//! The tables the simulated org has: their columns, types and requirement levels, the seeded
//! currencies, and the option-set labels served as formatted values.

use serde_json::Value;

use super::ALTERNATE_KEY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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

pub(super) struct Column {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) required: bool,
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
pub(super) const CURRENCIES: &[(&str, &str, &str)] = &[
    ("a1b2c3d4-0000-4000-8000-000000000001", "USD", "US Dollar"),
    ("a1b2c3d4-0000-4000-8000-000000000002", "EUR", "Euro"),
    ("a1b2c3d4-0000-4000-8000-000000000003", "GBP", "Pound Sterling"),
];

pub(super) fn columns(set: &str) -> &'static [Column] {
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

pub(super) fn logical(set: &str) -> &'static str {
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

pub(super) fn key_of(set: &str) -> String {
    format!("{}id", logical(set))
}

/// Every column of a table as read (key, custom and system columns included).
pub(super) fn readable(set: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = columns(set).iter().map(|column| column.name).collect();
    names.extend(["createdon", "modifiedon", "versionnumber", ALTERNATE_KEY]);
    names
}

pub(super) fn formatted(set: &str, column: &str, value: &Value) -> Option<&'static str> {
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

pub(super) fn static_set(set: &str) -> &'static str {
    ["accounts", "leads", "opportunities", "salesorders", "salesorderdetails"]
        .into_iter()
        .find(|known| *known == set)
        .unwrap_or("accounts")
}
