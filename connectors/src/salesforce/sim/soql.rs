//! The SOQL subset the connector emits, parsed strictly (anything else is `MALFORMED_QUERY`).

use std::collections::HashSet;

use super::{object_name, wire};
use crate::canonical::Timestamp;

pub(super) struct Soql {
    pub(super) object: &'static str,
    pub(super) fields: Vec<String>,
    pub(super) items: bool,
    pub(super) since: Option<i64>,
    pub(super) ids: Option<HashSet<String>>,
    pub(super) deleted: Option<bool>,
}

/// Parses the SOQL subset the connector emits:
/// `SELECT f, … [, (order items subquery)] FROM O [WHERE c AND …] [ORDER BY SystemModstamp ASC, Id ASC]`
/// with conditions `SystemModstamp >= <datetime>`, `Id IN ('…', …)`, `IsDeleted = true|false`.
pub(super) fn parse_soql(soql: &str) -> Result<Soql, String> {
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
