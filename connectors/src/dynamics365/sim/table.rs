//! The simulated org's rows: versions, soft deletions (for change tracking), the result sets kept
//! for paging, and rendering a row as the Web API returns it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::reply::{Reply, error};
use super::schema::{Kind, column_of, formatted, key_of, logical};
use super::{ALTERNATE_KEY, guid, now_seconds, time};
use crate::canonical::decimal_json;
use crate::dynamics365::{mapping, wire};

#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) fields: Map<String, Value>,
    pub(super) version: u64,
    pub(super) deleted: Option<u64>,
}

#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) set: String,
    pub(super) select: Vec<String>,
    pub(super) rows: Vec<String>,
    pub(super) deletions: Vec<String>,
    /// Delta link to hand out on the last page (change-tracked reads).
    pub(super) delta_version: Option<u64>,
    /// Order-line columns of an `$expand=order_details(...)`, rendered into each order row.
    pub(super) expand: Option<Vec<String>>,
}

pub(super) struct Inner {
    pub(super) tables: BTreeMap<&'static str, BTreeMap<String, Row>>,
    pub(super) tokens: HashSet<String>,
    pub(super) version: u64,
    /// Delta tokens below this version have expired.
    pub(super) oldest_token: u64,
    /// Result sets being paged, by paging-cookie id; a `$skiptoken` names one and an offset in it,
    /// so a next link can be read again (after a dropped response) and gives the same page.
    pub(super) snapshots: HashMap<String, Snapshot>,
    /// Snapshot ids, least recently used first (dropped beyond `snapshots_kept`).
    pub(super) snapshot_order: VecDeque<String>,
    /// How many multi-page result sets are kept.
    pub(super) snapshots_kept: usize,
    pub(super) untracked: HashSet<String>,
    pub(super) selects: Vec<String>,
    pub(super) next_order: u64,
    /// Whether a line write recalculates its order's total ([`super::Dynamics365SimOptions`]).
    pub(super) price_calculation: bool,
}

impl Inner {
    pub(super) fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub(super) fn insert(&mut self, set: &'static str, fields: Value, stamp: i64) -> String {
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

    /// Recomputes an order's total after one of its lines changed. The order changes with it (new
    /// version and `modifiedon`) even when the total stays the same: Dataverse recalculates the
    /// parent's pricing on every line write (the salesorder `CalculatePrice` message,
    /// ce/developer/entities/salesorder.md), so a line edit shows up in the orders' change tracking.
    /// crmsync does not rely on that (the lines table has change tracking of its own); with
    /// `price_calculation` off the order row is left as it was.
    pub(super) fn recompute_total(&mut self, order: &str) {
        if !self.price_calculation {
            return;
        }
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
        if let Some(row) = self.tables.get_mut("salesorders").and_then(|rows| rows.get_mut(order)) {
            row.fields.insert("totalamount".into(), decimal_json(total));
            row.version = version;
            row.fields.insert("modifiedon".into(), json!(time(now_seconds())));
        }
    }

    /// Keeps a result set for paging and returns its id.
    pub(super) fn keep_snapshot(&mut self, snapshot: Snapshot) -> String {
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

    pub(super) fn product_by_number(&self, number: &str) -> Option<String> {
        self.tables
            .get("products")?
            .iter()
            .find(|(_, row)| row.fields.get("productnumber").and_then(Value::as_str) == Some(number))
            .map(|(id, _)| id.clone())
    }

    pub(super) fn live(&self, set: &str, id: &str) -> Option<&Row> {
        self.tables.get(set)?.get(id).filter(|row| row.deleted.is_none())
    }

    /// Finds a row by `(guid)` or `(key='value')`.
    pub(super) fn locate(&self, set: &str, address: &str) -> Result<Option<String>, Reply> {
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

    pub(super) fn render(&self, set: &str, id: &str, select: &[String], annotate: bool) -> Option<Map<String, Value>> {
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
                let target = column_of(set, column).and_then(|described| match described.kind {
                    Kind::Lookup(_, target) | Kind::Customer(_, target) => Some(logical(target)),
                    Kind::Owner => Some("systemuser"),
                    _ => None,
                });
                if let Some(target) = target {
                    out.insert(format!("{column}{}", wire::LOOKUP_LOGICAL_NAME), json!(target));
                }
                if let Some(label) = formatted(set, column, &value) {
                    out.insert(format!("{column}{}", mapping::FORMATTED), json!(label));
                }
            }
            out.insert(column.clone(), value);
        }
        out.insert(key_of(set), json!(id));
        Some(out)
    }
}

pub(super) fn number(value: Option<&Value>) -> Option<Decimal> {
    value?.as_number().and_then(|number| number.to_string().parse().ok())
}
