//! Reads the REST API and the CLI share: pages of records (orders with filters), one order, the
//! conflict and dead-letter queues. Pages are read by key from where the previous one stopped
//! (`after`/`cursor`), never by rescanning from the start, and a page's work is bounded: at most
//! [`MAX_LIMIT`] records are returned and at most [`SCAN_BUDGET`] are looked at, so a filter that
//! matches little returns a short page with a cursor rather than scanning the whole store.

use crmsync_connectors::canonical::{
    CanonicalId, Channel, ConnectionId, Entity, EntityData, OrderStatus, Record, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::ingest::operator::version;
use crate::store::{ConflictEntry, DeadLetter, Store, StoreError};

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
/// Default page.
pub const DEFAULT_LIMIT: usize = 100;
/// Records a page may look at before it returns what it found with a cursor.
pub const SCAN_BUDGET: usize = 10_000;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A parameter that does not validate.
    #[error("{field}: {message}")]
    Invalid {
        /// The parameter.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such record.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("store failed")]
    Store(#[from] StoreError),
}

fn invalid(field: &str, message: impl Into<String>) -> QueryError {
    QueryError::Invalid { field: field.to_owned(), message: message.into() }
}

/// A record with the version a change must name (`If-Match`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned {
    /// The record.
    #[serde(flatten)]
    pub record: Record,
    /// Its version ([`version`]).
    pub version: String,
}

impl Versioned {
    /// Wraps a record with its version.
    pub fn of(record: Record) -> Self {
        let version = version(&record);
        Self { record, version }
    }
}

/// One page of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordPage {
    /// The records, in id (creation) order (newest first when asked).
    pub records: Vec<Versioned>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<String>,
}

/// Paging and filters of a record list (`GET /api/v1/orders?...`, `crmsync orders list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]).
    pub limit: Option<usize>,
    /// Continue after this record id (the previous page's `next`).
    pub after: Option<String>,
    /// The same as `after`.
    pub cursor: Option<String>,
    /// Include tombstones.
    #[serde(default)]
    pub include_deleted: bool,
    /// Newest first (the cursor then continues towards older records).
    #[serde(default)]
    pub newest_first: bool,
    /// Orders: only this status.
    pub status: Option<String>,
    /// Orders: only this channel.
    pub channel: Option<String>,
    /// Orders: only this customer (canonical account id).
    pub account: Option<String>,
    /// Only records with a copy in this connection.
    pub connection: Option<String>,
    /// Orders: order date on or after this (`YYYY-MM-DD` or RFC 3339).
    pub since: Option<String>,
    /// Orders: order date before this (exclusive).
    pub until: Option<String>,
}

/// Checks a page size: 1 to [`MAX_LIMIT`] (checked before any work, so `limit=0` is refused, not
/// taken as "everything").
pub fn check_limit(limit: Option<usize>) -> Result<usize, QueryError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        Some(limit) => Err(invalid("limit", format!("{limit} is out of range (1 to {MAX_LIMIT})"))),
    }
}

fn parse_id(text: &str, field: &str) -> Result<CanonicalId, QueryError> {
    text.trim().parse().map_err(|_| invalid(field, format!("{text:?} is not a canonical id (a UUID)")))
}

/// Parses a window bound: an RFC 3339 instant or a date (midnight UTC), as the metrics read them
/// ([`crate::metrics::parse_bound`]: an instant past the last one this program represents means the
/// end of time).
pub fn parse_instant(text: &str, field: &str) -> Result<Timestamp, QueryError> {
    crate::metrics::parse_bound(text).ok_or_else(|| {
        invalid(field, format!("{text:?} is not an RFC 3339 instant (2026-10-01T00:00:00Z) or a date (2026-10-01)"))
    })
}

/// Checks a window: `since` before `until` when both are given.
pub fn check_window(since: Option<Timestamp>, until: Option<Timestamp>) -> Result<(), QueryError> {
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(invalid("since", format!("since ({since}) must be before until ({until})")));
    }
    Ok(())
}

struct OrderFilter {
    status: Option<OrderStatus>,
    channel: Option<Channel>,
    account: Option<CanonicalId>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

impl OrderFilter {
    fn from_query(query: &ListQuery) -> Result<Self, QueryError> {
        let status = query
            .status
            .as_deref()
            .map(|text| {
                text.trim()
                    .to_ascii_lowercase()
                    .parse::<OrderStatus>()
                    .map_err(|error| invalid("status", error.to_string()))
            })
            .transpose()?;
        let channel = query
            .channel
            .as_deref()
            .map(|text| {
                text.trim()
                    .to_ascii_lowercase()
                    .parse::<Channel>()
                    .map_err(|error| invalid("channel", error.to_string()))
            })
            .transpose()?;
        let account = query.account.as_deref().map(|text| parse_id(text, "account")).transpose()?;
        let since = query.since.as_deref().map(|text| parse_instant(text, "since")).transpose()?;
        let until = query.until.as_deref().map(|text| parse_instant(text, "until")).transpose()?;
        check_window(since, until)?;
        Ok(Self { status, channel, account, since, until })
    }

    fn matches(&self, record: &Record) -> bool {
        let EntityData::Order(order) = &record.data else { return false };
        if self.status.is_some() && order.status != self.status {
            return false;
        }
        if self.channel.is_some() && order.channel != self.channel {
            return false;
        }
        if self.account.is_some() && order.account.as_ref().and_then(|reference| reference.canonical) != self.account {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(date) = order.order_date else { return false };
            let Ok(at) = jiff::tz::Offset::UTC.to_timestamp(date.at(0, 0, 0, 0)) else { return false };
            let at = Timestamp::from_jiff(at);
            if self.since.is_some_and(|since| at < since) || self.until.is_some_and(|until| at >= until) {
                return false;
            }
        }
        true
    }
}

/// Returns one page of an entity's records in id (creation) order, or newest first (live ones unless
/// `include_deleted`; merged-away records never), with the order filters applied when `entity` is
/// [`Entity::Order`].
pub fn record_page(store: &Store, entity: Entity, query: &ListQuery) -> Result<RecordPage, QueryError> {
    let limit = check_limit(query.limit)?;
    let after = match (&query.after, &query.cursor) {
        (Some(_), Some(_)) => return Err(invalid("cursor", "give cursor or after, not both")),
        (Some(text), None) => Some(parse_id(text, "after")?),
        (None, Some(text)) => Some(parse_id(text, "cursor")?),
        (None, None) => None,
    };
    let order_filter = if entity == Entity::Order {
        Some(OrderFilter::from_query(query)?)
    } else {
        for (field, given) in [
            ("status", query.status.is_some()),
            ("channel", query.channel.is_some()),
            ("account", query.account.is_some()),
            ("since", query.since.is_some()),
            ("until", query.until.is_some()),
        ] {
            if given {
                return Err(invalid(field, format!("filters orders only, not {entity} records")));
            }
        }
        None
    };
    let connection = query.connection.as_deref().map(|text| ConnectionId::new(text.trim()));
    let mut records = Vec::with_capacity(limit.min(DEFAULT_LIMIT));
    let (mut scanned, mut last_seen, mut exhausted) = (0usize, None, true);
    for record in store.scan_from(entity, after, query.newest_first) {
        let record = record?;
        scanned += 1;
        last_seen = Some(record.id);
        let wanted = (query.include_deleted || !record.is_deleted())
            && record.merged_into.is_none()
            && connection.as_ref().is_none_or(|connection| record.link(connection).is_some())
            && order_filter.as_ref().is_none_or(|filter| filter.matches(&record));
        if wanted {
            records.push(Versioned::of(record));
        }
        if records.len() == limit || scanned == SCAN_BUDGET {
            exhausted = false;
            break;
        }
    }
    // A full page (or a spent budget) may have more behind it; the next page starts after the last
    // record looked at, so it never looks at one twice.
    let next = if exhausted { None } else { last_seen.map(|id| id.to_string()) };
    Ok(RecordPage { records, next })
}

/// Returns a live order (following a merge) with its version.
pub fn order(store: &Store, id: &str) -> Result<Versioned, QueryError> {
    let id = parse_id(id, "id")?;
    let record = store.record(id)?.ok_or_else(|| QueryError::NotFound(format!("no order {id}")))?;
    let record = match record.merged_into {
        Some(target) => store.record(target)?.ok_or_else(|| QueryError::NotFound(format!("no order {id}")))?,
        None => record,
    };
    if record.entity() != Entity::Order {
        return Err(QueryError::NotFound(format!("no order {id} ({id} is {})", record.entity())));
    }
    if let Some(at) = record.deleted_at {
        return Err(QueryError::NotFound(format!("order {id} was deleted at {at}")));
    }
    Ok(Versioned::of(record))
}

/// A page of conflicts or dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuePage<T> {
    /// The entries, oldest first.
    pub entries: Vec<T>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<String>,
}

/// Returns a page of conflicts (held ones unless `all`), oldest first.
pub fn conflicts(
    store: &Store,
    all: bool,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<QueuePage<ConflictEntry>, QueryError> {
    let limit = check_limit(limit)?;
    let mut entries = Vec::new();
    let (mut scanned, mut last_seen, mut exhausted) = (0usize, None, true);
    for conflict in store.conflicts_after(after) {
        let conflict = conflict?;
        scanned += 1;
        last_seen = Some(conflict.id.clone());
        if all || !conflict.resolved {
            entries.push(conflict);
        }
        if entries.len() == limit || scanned == SCAN_BUDGET {
            exhausted = false;
            break;
        }
    }
    Ok(QueuePage { entries, next: if exhausted { None } else { last_seen } })
}

/// Returns a page of dead letters, oldest first.
pub fn dead_letters(
    store: &Store,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<QueuePage<DeadLetter>, QueryError> {
    let limit = check_limit(limit)?;
    let mut entries = Vec::new();
    let mut exhausted = true;
    for letter in store.dead_letters_after(after) {
        entries.push(letter?);
        if entries.len() == limit {
            exhausted = false;
            break;
        }
    }
    let next = if exhausted { None } else { entries.last().map(|letter| letter.id.clone()) };
    Ok(QueuePage { entries, next })
}
