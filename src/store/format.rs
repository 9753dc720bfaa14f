//! Every value encoding of the store, in one place (keys are in [`super::keys`]).
//!
//! **Records** are written in a compact binary form, version byte first ([`RECORD_V2`]); the id is
//! not repeated (it is in the key). Store format 1 wrote them as JSON envelopes (`{"v":1,"data":…}`,
//! first byte `{`): [`decode_record`] still reads those, and opening a format-1 store rewrites them
//! (see `Store::open_with`). What shrank a record from about 3.8 KB to a few hundred bytes:
//! - field values in the canonical field order behind a presence bitmap, no field names;
//! - per-field provenance as groups of (connection index, time, vendor version) with a bitmap of the
//!   fields each group set: a record read from one vendor page has one group, not one JSON object
//!   per field. The connection index points into the record's own connection table (written once);
//! - times as seconds + nanoseconds varints, amounts as mantissa varint + scale, dates as y/m/d;
//! - vendor extras (unmapped fields) as compact JSON, only when a link has any.
//!
//! Every integer is a LEB128 varint (signed ones zigzag-encoded); strings are varint length + UTF-8.
//! Decoding checks every length against the bytes left, so a damaged value is an error, never a
//! panic or a huge allocation.
//!
//! Other values (cursors, outbox entries, conflicts, dead letters, sync status) are small and rarely
//! written; they stay JSON in a versioned envelope ([`encode_json`]/[`decode_json`]).

use std::collections::BTreeMap;

use crmsync_connectors::canonical::{
    Account, CanonicalId, Channel, ConnectionId, Currency, Entity, EntityData, ExternalId, Lead, Link, MatchReason,
    Money, Opportunity, Order, OrderLine, OrderStatus, Provenance, Record, RecordRef, Stage, StageEntry, Timestamp,
};
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics::RecordView;
use crate::metrics::view::{DataView, LeadView, LinkView, Nothing, OpportunityView, OrderView, RefView, StageView};

/// The first byte of a binary record (format 2). A format-1 record is JSON and starts with `{`.
pub const RECORD_V2: u8 = 2;

/// A stored value that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A binary value is cut short or holds an impossible value.
    #[error("stored {what} is malformed ({detail})")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A JSON value does not decode.
    #[error("stored {what} does not decode")]
    Json {
        /// What was being decoded.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Malformed { what, detail: detail.into() }
}

// ---- JSON envelope (format 1, still used for the small values) ----

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    data: T,
}

/// The envelope version of the JSON values.
const JSON_VERSION: u32 = 1;

/// Encodes a small value as JSON in a versioned envelope.
pub fn encode_json<T: Serialize>(data: &T, what: &'static str) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(&Envelope { v: JSON_VERSION, data }).map_err(|source| FormatError::Json { what, source })
}

/// Decodes a value written by [`encode_json`].
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, FormatError> {
    serde_json::from_slice::<Envelope<T>>(bytes)
        .map(|envelope| envelope.data)
        .map_err(|source| FormatError::Json { what, source })
}

// ---- records ----

/// The match-key values a record is indexed under, as stored with it.
pub type MatchKeys = Vec<(String, String)>;

/// Encodes a record and the match keys it is indexed under.
pub fn encode_record(record: &Record, match_keys: &[(String, String)]) -> Vec<u8> {
    let mut out = Writer(Vec::with_capacity(256));
    out.byte(RECORD_V2);
    out.byte(record.entity().tag());
    // The connection table: every connection a link or a provenance entry names, each once.
    let mut table: Vec<&ConnectionId> = Vec::new();
    let mut link_indices = Vec::with_capacity(record.links.len());
    for link in &record.links {
        link_indices.push(index_of(&mut table, &link.connection));
    }
    // Provenance grouped by (connection, time, version); fields outside the entity's field list
    // (none today) are kept by name.
    let fields = record.entity().fields();
    let mut groups: Vec<(Option<u64>, &Provenance, u64)> = Vec::new();
    let mut named: Vec<(&String, Option<u64>, &Provenance)> = Vec::new();
    for (field, provenance) in &record.provenance {
        let connection = provenance.connection.as_ref().map(|connection| index_of(&mut table, connection));
        match fields.iter().position(|known| known == field).filter(|position| *position < 64) {
            Some(position) => {
                let bit = 1u64 << position;
                match groups.iter_mut().find(|(group_connection, group, _)| {
                    *group_connection == connection
                        && group.modified_at == provenance.modified_at
                        && group.version == provenance.version
                }) {
                    Some(group) => group.2 |= bit,
                    None => groups.push((connection, provenance, bit)),
                }
            }
            None => named.push((field, connection, provenance)),
        }
    }
    out.varint(table.len() as u64);
    for connection in &table {
        out.str(connection.as_str());
    }
    // Links and match keys first: a rewrite reads only them to update the indexes.
    out.varint(record.links.len() as u64);
    for (link, connection) in record.links.iter().zip(link_indices) {
        write_link(&mut out, link, connection);
    }
    out.varint(match_keys.len() as u64);
    for (name, value) in match_keys {
        out.str(name);
        out.str(value);
    }
    out.timestamp(record.created_at);
    out.timestamp(record.updated_at);
    let flags = u8::from(record.deleted_at.is_some()) | (u8::from(record.merged_into.is_some()) << 1);
    out.byte(flags);
    if let Some(deleted_at) = record.deleted_at {
        out.timestamp(deleted_at);
    }
    if let Some(merged_into) = record.merged_into {
        out.bytes(&merged_into.to_bytes());
    }
    write_data(&mut out, &record.data);
    out.varint(groups.len() as u64);
    for (connection, provenance, bits) in groups {
        write_provenance(&mut out, connection, provenance);
        out.varint(bits);
    }
    out.varint(named.len() as u64);
    for (field, connection, provenance) in named {
        out.str(field);
        write_provenance(&mut out, connection, provenance);
    }
    out.0
}

/// The index of a connection in a record's connection table, added if new.
fn index_of<'r>(table: &mut Vec<&'r ConnectionId>, connection: &'r ConnectionId) -> u64 {
    match table.iter().position(|known| *known == connection) {
        Some(index) => index as u64,
        None => {
            table.push(connection);
            (table.len() - 1) as u64
        }
    }
}

fn write_provenance(out: &mut Writer, connection: Option<u64>, provenance: &Provenance) {
    // 0: set locally; n: the table's connection n - 1.
    out.varint(connection.map_or(0, |index| index + 1));
    out.timestamp(provenance.modified_at);
    out.opt_str(provenance.version.as_deref());
}

fn write_link(out: &mut Writer, link: &Link, connection: u64) {
    let Link { connection: _, object, external_id, last_modified, last_version, pushed_hash, matched_by, extra } = link;
    out.varint(connection);
    out.str(object);
    out.str(external_id.as_str());
    out.opt_timestamp(*last_modified);
    out.opt_str(last_version.as_deref());
    out.opt_str(pushed_hash.as_deref());
    match matched_by {
        MatchReason::Created => out.byte(0),
        MatchReason::ExternalIdField => out.byte(1),
        MatchReason::Pushed => out.byte(2),
        MatchReason::MatchKey { key, value } => {
            out.byte(3);
            out.str(key);
            out.str(value);
        }
        MatchReason::Manual => out.byte(4),
    }
    if extra.is_empty() {
        out.varint(0);
    } else {
        // A map of JSON values with string keys always serialises.
        let json = serde_json::to_vec(extra).unwrap_or_default();
        out.varint(json.len() as u64);
        out.bytes(&json);
    }
}

/// The fields present, one bit per field in the entity's field order.
struct Present(u64);

impl Present {
    fn set(&mut self, index: u32, present: bool) {
        if present {
            self.0 |= 1 << index;
        }
    }
    fn has(&self, index: u32) -> bool {
        self.0 & (1 << index) != 0
    }
}

fn write_data(out: &mut Writer, data: &EntityData) {
    match data {
        EntityData::Account(account) => {
            let Account { name, number, domain, industry, billing_country, owner, created_at, updated_at } = account;
            let mut present = Present(0);
            for (index, is) in [
                name.is_some(),
                number.is_some(),
                domain.is_some(),
                industry.is_some(),
                billing_country.is_some(),
                owner.is_some(),
                created_at.is_some(),
                updated_at.is_some(),
            ]
            .into_iter()
            .enumerate()
            {
                present.set(index as u32, is);
            }
            out.varint(present.0);
            for text in [name, number, domain, industry, billing_country, owner].into_iter().flatten() {
                out.str(text);
            }
            for time in [created_at, updated_at].into_iter().flatten() {
                out.timestamp(*time);
            }
        }
        EntityData::Lead(lead) => {
            let Lead {
                name,
                company,
                email,
                source,
                channel,
                status,
                converted,
                converted_account,
                converted_opportunity,
                created_at,
            } = lead;
            let mut present = Present(0);
            for (index, is) in [
                name.is_some(),
                company.is_some(),
                email.is_some(),
                source.is_some(),
                channel.is_some(),
                status.is_some(),
                converted.is_some(),
                converted_account.is_some(),
                converted_opportunity.is_some(),
                created_at.is_some(),
            ]
            .into_iter()
            .enumerate()
            {
                present.set(index as u32, is);
            }
            out.varint(present.0);
            for text in [name, company, email, source].into_iter().flatten() {
                out.str(text);
            }
            if let Some(channel) = channel {
                out.str(channel.as_str());
            }
            if let Some(status) = status {
                out.str(status);
            }
            if let Some(converted) = converted {
                out.byte(u8::from(*converted));
            }
            for reference in [converted_account, converted_opportunity].into_iter().flatten() {
                out.reference(reference);
            }
            if let Some(created_at) = created_at {
                out.timestamp(*created_at);
            }
        }
        EntityData::Opportunity(deal) => {
            let Opportunity {
                name,
                account,
                amount,
                stage,
                vendor_stage,
                probability,
                channel,
                vendor_channel,
                close_date,
                created_at,
                closed_at,
                is_won,
                is_closed,
                stage_history,
            } = deal;
            let mut present = Present(0);
            for (index, is) in [
                name.is_some(),
                account.is_some(),
                amount.is_some(),
                stage.is_some(),
                vendor_stage.is_some(),
                probability.is_some(),
                channel.is_some(),
                vendor_channel.is_some(),
                close_date.is_some(),
                created_at.is_some(),
                closed_at.is_some(),
                is_won.is_some(),
                is_closed.is_some(),
                !stage_history.is_empty(),
            ]
            .into_iter()
            .enumerate()
            {
                present.set(index as u32, is);
            }
            out.varint(present.0);
            if let Some(name) = name {
                out.str(name);
            }
            if let Some(account) = account {
                out.reference(account);
            }
            if let Some(amount) = amount {
                out.decimal(amount.amount);
                out.str(amount.currency.as_str());
            }
            if let Some(stage) = stage {
                out.str(stage.as_str());
            }
            if let Some(vendor_stage) = vendor_stage {
                out.str(vendor_stage);
            }
            if let Some(probability) = probability {
                out.decimal(*probability);
            }
            if let Some(channel) = channel {
                out.str(channel.as_str());
            }
            if let Some(vendor_channel) = vendor_channel {
                out.str(vendor_channel);
            }
            if let Some(close_date) = close_date {
                out.date(*close_date);
            }
            for time in [created_at, closed_at].into_iter().flatten() {
                out.timestamp(*time);
            }
            for flag in [is_won, is_closed].into_iter().flatten() {
                out.byte(u8::from(*flag));
            }
            if !stage_history.is_empty() {
                out.varint(stage_history.len() as u64);
                for entry in stage_history {
                    out.str(entry.stage.as_str());
                    out.timestamp(entry.entered_at);
                }
            }
        }
        EntityData::Order(order) => {
            let Order {
                number,
                account,
                opportunity,
                channel,
                vendor_channel,
                status,
                vendor_status,
                currency,
                total_amount,
                order_date,
                lines,
                details,
            } = order;
            let mut present = Present(0);
            for (index, is) in [
                number.is_some(),
                account.is_some(),
                opportunity.is_some(),
                channel.is_some(),
                vendor_channel.is_some(),
                status.is_some(),
                vendor_status.is_some(),
                currency.is_some(),
                total_amount.is_some(),
                order_date.is_some(),
                lines.is_some(),
                details.is_some(),
            ]
            .into_iter()
            .enumerate()
            {
                present.set(index as u32, is);
            }
            out.varint(present.0);
            if let Some(number) = number {
                out.str(number);
            }
            for reference in [account, opportunity].into_iter().flatten() {
                out.reference(reference);
            }
            if let Some(channel) = channel {
                out.str(channel.as_str());
            }
            if let Some(vendor_channel) = vendor_channel {
                out.str(vendor_channel);
            }
            if let Some(status) = status {
                out.str(status.as_str());
            }
            if let Some(vendor_status) = vendor_status {
                out.str(vendor_status);
            }
            if let Some(currency) = currency {
                out.str(currency.as_str());
            }
            if let Some(total_amount) = total_amount {
                out.decimal(*total_amount);
            }
            if let Some(order_date) = order_date {
                out.date(*order_date);
            }
            if let Some(lines) = lines {
                out.varint(lines.len() as u64);
                for line in lines {
                    let OrderLine { product, sku, quantity, unit_price, line_total } = line;
                    out.opt_str(product.as_deref());
                    out.opt_str(sku.as_deref());
                    out.decimal(*quantity);
                    out.decimal(*unit_price);
                    out.decimal(*line_total);
                }
            }
            if let Some(details) = details {
                out.str(details);
            }
        }
    }
}

/// Decodes a stored record (either format) with the match keys stored beside it.
pub fn decode_record(id: CanonicalId, bytes: &[u8]) -> Result<(Record, MatchKeys), FormatError> {
    match bytes.first() {
        Some(&RECORD_V2) => decode_record_v2(id, bytes),
        Some(b'{') => decode_record_v1(bytes),
        _ => Err(malformed("record", "unknown record format")),
    }
}

/// Whether a stored record is in the format this binary writes.
pub fn is_current_record(bytes: &[u8]) -> bool {
    bytes.first() == Some(&RECORD_V2)
}

/// Format 1: `{"v":1,"data":{"record":…,"match_keys":[…]}}`.
fn decode_record_v1(bytes: &[u8]) -> Result<(Record, MatchKeys), FormatError> {
    #[derive(Deserialize)]
    struct StoredV1 {
        record: Record,
        #[serde(default)]
        match_keys: MatchKeys,
    }
    let stored: StoredV1 = decode_json(bytes, "record (format 1)")?;
    Ok((stored.record, stored.match_keys))
}

/// What a rewrite needs of the previous version of a record: its link keys and match keys.
pub struct IndexEntries {
    /// (connection, external id) of every link.
    pub links: Vec<(ConnectionId, ExternalId)>,
    /// The match keys it is indexed under.
    pub match_keys: MatchKeys,
}

/// Reads only the index entries of a stored record (either format).
pub fn decode_index_entries(bytes: &[u8]) -> Result<IndexEntries, FormatError> {
    if bytes.first() != Some(&RECORD_V2) {
        let (record, match_keys) = decode_record_v1(bytes)?;
        let links = record.links.into_iter().map(|link| (link.connection, link.external_id)).collect();
        return Ok(IndexEntries { links, match_keys });
    }
    let mut reader = Reader::new(bytes, "record");
    reader.byte()?;
    reader.byte()?;
    let table = read_table(&mut reader)?;
    let count = reader.count()?;
    let mut links = Vec::with_capacity(count);
    for _ in 0..count {
        let link = read_link(&mut reader, &table)?;
        links.push((link.connection, link.external_id));
    }
    let match_keys = read_match_keys(&mut reader)?;
    Ok(IndexEntries { links, match_keys })
}

fn read_table(reader: &mut Reader<'_>) -> Result<Vec<ConnectionId>, FormatError> {
    let count = reader.count()?;
    let mut table = Vec::with_capacity(count);
    for _ in 0..count {
        table.push(ConnectionId::new(reader.str()?));
    }
    Ok(table)
}

fn read_match_keys(reader: &mut Reader<'_>) -> Result<MatchKeys, FormatError> {
    let count = reader.count()?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push((reader.str()?.to_owned(), reader.str()?.to_owned()));
    }
    Ok(keys)
}

fn connection_at(table: &[ConnectionId], index: u64, what: &'static str) -> Result<ConnectionId, FormatError> {
    usize::try_from(index)
        .ok()
        .and_then(|index| table.get(index))
        .cloned()
        .ok_or_else(|| malformed(what, format!("connection index {index} outside the table")))
}

fn read_link(reader: &mut Reader<'_>, table: &[ConnectionId]) -> Result<Link, FormatError> {
    let connection = connection_at(table, reader.varint()?, "record link")?;
    let object = reader.str()?.to_owned();
    let external_id = ExternalId::new(reader.str()?);
    let last_modified = reader.opt_timestamp()?;
    let last_version = reader.opt_str()?;
    let pushed_hash = reader.opt_str()?;
    let matched_by = match reader.byte()? {
        0 => MatchReason::Created,
        1 => MatchReason::ExternalIdField,
        2 => MatchReason::Pushed,
        3 => MatchReason::MatchKey { key: reader.str()?.to_owned(), value: reader.str()?.to_owned() },
        4 => MatchReason::Manual,
        other => return Err(malformed("record link", format!("unknown match reason {other}"))),
    };
    let extra_length = reader.count()?;
    let extra = if extra_length == 0 {
        serde_json::Map::new()
    } else {
        serde_json::from_slice(reader.take(extra_length)?)
            .map_err(|source| FormatError::Json { what: "vendor extras", source })?
    };
    Ok(Link { connection, object, external_id, last_modified, last_version, pushed_hash, matched_by, extra })
}

fn read_provenance(reader: &mut Reader<'_>, table: &[ConnectionId]) -> Result<Provenance, FormatError> {
    let connection = match reader.varint()? {
        0 => None,
        index => Some(connection_at(table, index - 1, "record provenance")?),
    };
    Ok(Provenance { connection, modified_at: reader.timestamp()?, version: reader.opt_str()? })
}

fn decode_record_v2(id: CanonicalId, bytes: &[u8]) -> Result<(Record, MatchKeys), FormatError> {
    let mut reader = Reader::new(bytes, "record");
    reader.byte()?;
    let entity = Entity::from_tag(reader.byte()?).ok_or_else(|| malformed("record", "unknown entity tag"))?;
    let table = read_table(&mut reader)?;
    let count = reader.count()?;
    let mut links = Vec::with_capacity(count);
    for _ in 0..count {
        links.push(read_link(&mut reader, &table)?);
    }
    let match_keys = read_match_keys(&mut reader)?;
    let created_at = reader.timestamp()?;
    let updated_at = reader.timestamp()?;
    let flags = reader.byte()?;
    let deleted_at = if flags & 1 != 0 { Some(reader.timestamp()?) } else { None };
    let merged_into = if flags & 2 != 0 { Some(reader.id()?) } else { None };
    let data = read_data(&mut reader, entity)?;
    let fields = entity.fields();
    let mut provenance = BTreeMap::new();
    for _ in 0..reader.count()? {
        let entry = read_provenance(&mut reader, &table)?;
        let bits = reader.varint()?;
        for (position, field) in fields.iter().enumerate().take(64) {
            if bits & (1 << position) != 0 {
                provenance.insert((*field).to_owned(), entry.clone());
            }
        }
    }
    for _ in 0..reader.count()? {
        let field = reader.str()?.to_owned();
        provenance.insert(field, read_provenance(&mut reader, &table)?);
    }
    reader.finish()?;
    let record = Record { id, data, provenance, links, deleted_at, merged_into, created_at, updated_at };
    Ok((record, match_keys))
}

fn read_data(reader: &mut Reader<'_>, entity: Entity) -> Result<EntityData, FormatError> {
    let present = Present(reader.varint()?);
    let text = |reader: &mut Reader<'_>, index: u32| -> Result<Option<String>, FormatError> {
        if present.has(index) { Ok(Some(reader.str()?.to_owned())) } else { Ok(None) }
    };
    Ok(match entity {
        Entity::Account => {
            let name = text(reader, 0)?;
            let number = text(reader, 1)?;
            let domain = text(reader, 2)?;
            let industry = text(reader, 3)?;
            let billing_country = text(reader, 4)?;
            let owner = text(reader, 5)?;
            let created_at = if present.has(6) { Some(reader.timestamp()?) } else { None };
            let updated_at = if present.has(7) { Some(reader.timestamp()?) } else { None };
            EntityData::Account(Account {
                name,
                number,
                domain,
                industry,
                billing_country,
                owner,
                created_at,
                updated_at,
            })
        }
        Entity::Lead => {
            let name = text(reader, 0)?;
            let company = text(reader, 1)?;
            let email = text(reader, 2)?;
            let source = text(reader, 3)?;
            let channel = if present.has(4) { Some(reader.vocabulary::<Channel>()?) } else { None };
            let status = text(reader, 5)?;
            let converted = if present.has(6) { Some(reader.bool()?) } else { None };
            let converted_account = if present.has(7) { Some(reader.reference()?) } else { None };
            let converted_opportunity = if present.has(8) { Some(reader.reference()?) } else { None };
            let created_at = if present.has(9) { Some(reader.timestamp()?) } else { None };
            EntityData::Lead(Lead {
                name,
                company,
                email,
                source,
                channel,
                status,
                converted,
                converted_account,
                converted_opportunity,
                created_at,
            })
        }
        Entity::Opportunity => {
            let name = text(reader, 0)?;
            let account = if present.has(1) { Some(reader.reference()?) } else { None };
            let amount = if present.has(2) {
                let amount = reader.decimal()?;
                Some(Money { amount, currency: reader.currency()? })
            } else {
                None
            };
            let stage = if present.has(3) { Some(reader.vocabulary::<Stage>()?) } else { None };
            let vendor_stage = text(reader, 4)?;
            let probability = if present.has(5) { Some(reader.decimal()?) } else { None };
            let channel = if present.has(6) { Some(reader.vocabulary::<Channel>()?) } else { None };
            let vendor_channel = text(reader, 7)?;
            let close_date = if present.has(8) { Some(reader.date()?) } else { None };
            let created_at = if present.has(9) { Some(reader.timestamp()?) } else { None };
            let closed_at = if present.has(10) { Some(reader.timestamp()?) } else { None };
            let is_won = if present.has(11) { Some(reader.bool()?) } else { None };
            let is_closed = if present.has(12) { Some(reader.bool()?) } else { None };
            let mut stage_history = Vec::new();
            if present.has(13) {
                let count = reader.count()?;
                stage_history.reserve(count);
                for _ in 0..count {
                    let stage = reader.vocabulary::<Stage>()?;
                    stage_history.push(StageEntry { stage, entered_at: reader.timestamp()? });
                }
            }
            EntityData::Opportunity(Opportunity {
                name,
                account,
                amount,
                stage,
                vendor_stage,
                probability,
                channel,
                vendor_channel,
                close_date,
                created_at,
                closed_at,
                is_won,
                is_closed,
                stage_history,
            })
        }
        Entity::Order => {
            let number = text(reader, 0)?;
            let account = if present.has(1) { Some(reader.reference()?) } else { None };
            let opportunity = if present.has(2) { Some(reader.reference()?) } else { None };
            let channel = if present.has(3) { Some(reader.vocabulary::<Channel>()?) } else { None };
            let vendor_channel = text(reader, 4)?;
            let status = if present.has(5) { Some(reader.vocabulary::<OrderStatus>()?) } else { None };
            let vendor_status = text(reader, 6)?;
            let currency = if present.has(7) { Some(reader.currency()?) } else { None };
            let total_amount = if present.has(8) { Some(reader.decimal()?) } else { None };
            let order_date = if present.has(9) { Some(reader.date()?) } else { None };
            let lines = if present.has(10) {
                let count = reader.count()?;
                let mut lines = Vec::with_capacity(count);
                for _ in 0..count {
                    let product = reader.opt_str()?;
                    let sku = reader.opt_str()?;
                    let quantity = reader.decimal()?;
                    let unit_price = reader.decimal()?;
                    let line_total = reader.decimal()?;
                    lines.push(OrderLine { product, sku, quantity, unit_price, line_total });
                }
                Some(lines)
            } else {
                None
            };
            let details = text(reader, 11)?;
            EntityData::Order(Order {
                number,
                account,
                opportunity,
                channel,
                vendor_channel,
                status,
                vendor_status,
                currency,
                total_amount,
                order_date,
                lines,
                details,
            })
        }
    })
}

// ---- record summaries (the metrics' view of a record) ----

/// Names the summary encoding below; the store rebuilds its summaries when this or
/// [`crate::metrics::SUMMARY_VERSION`] (the view's shape) changes.
pub const SUMMARY_ENCODING: &str = "binary-1";

/// Encodes a record's summary: what the metrics pass reads instead of the whole record.
pub fn encode_summary(view: &RecordView) -> Vec<u8> {
    let mut out = Writer(Vec::with_capacity(64));
    let RecordView { data, links, deleted_at, merged_into } = view;
    out.varint(links.len() as u64);
    for LinkView { connection } in links {
        out.str(connection.as_str());
    }
    out.opt_timestamp(*deleted_at);
    match merged_into {
        Some(id) => {
            out.byte(1);
            out.bytes(&id.to_bytes());
        }
        None => out.byte(0),
    }
    match data {
        DataView::Account(Nothing {}) => out.byte(1),
        DataView::Lead(LeadView { created_at }) => {
            out.byte(2);
            out.opt_timestamp(*created_at);
        }
        DataView::Opportunity(OpportunityView { amount, stage, created_at, closed_at, stage_history }) => {
            out.byte(3);
            match amount {
                Some(money) => {
                    out.byte(1);
                    out.decimal(money.amount);
                    out.str(money.currency.as_str());
                }
                None => out.byte(0),
            }
            out.opt_str(stage.as_ref().map(Stage::as_str));
            out.opt_timestamp(*created_at);
            out.opt_timestamp(*closed_at);
            out.varint(stage_history.len() as u64);
            for StageView { stage } in stage_history {
                out.str(stage.as_str());
            }
        }
        DataView::Order(OrderView { account, channel, status, currency, total_amount, order_date }) => {
            out.byte(4);
            // 0: no account; 1: an account not resolved yet; 2: followed by its id.
            match account {
                None => out.byte(0),
                Some(RefView { canonical: None }) => out.byte(1),
                Some(RefView { canonical: Some(id) }) => {
                    out.byte(2);
                    out.bytes(&id.to_bytes());
                }
            }
            out.opt_str(channel.as_ref().map(Channel::as_str));
            out.opt_str(status.as_ref().map(OrderStatus::as_str));
            out.opt_str(currency.as_ref().map(Currency::as_str));
            match total_amount {
                Some(amount) => {
                    out.byte(1);
                    out.decimal(*amount);
                }
                None => out.byte(0),
            }
            match order_date {
                Some(date) => {
                    out.byte(1);
                    out.date(*date);
                }
                None => out.byte(0),
            }
        }
    }
    out.0
}

/// Decodes a summary written by [`encode_summary`].
pub fn decode_summary(bytes: &[u8]) -> Result<RecordView, FormatError> {
    let mut reader = Reader::new(bytes, "record summary");
    let count = reader.count()?;
    let mut links = Vec::with_capacity(count);
    for _ in 0..count {
        links.push(LinkView { connection: ConnectionId::new(reader.str()?) });
    }
    let deleted_at = reader.opt_timestamp()?;
    let merged_into = if reader.bool()? { Some(reader.id()?) } else { None };
    let data = match reader.byte()? {
        1 => DataView::Account(Nothing {}),
        2 => DataView::Lead(LeadView { created_at: reader.opt_timestamp()? }),
        3 => {
            let amount = if reader.bool()? {
                let amount = reader.decimal()?;
                Some(Money { amount, currency: reader.currency()? })
            } else {
                None
            };
            let stage = reader.opt_vocabulary::<Stage>()?;
            let created_at = reader.opt_timestamp()?;
            let closed_at = reader.opt_timestamp()?;
            let count = reader.count()?;
            let mut stage_history = Vec::with_capacity(count);
            for _ in 0..count {
                stage_history.push(StageView { stage: reader.vocabulary()? });
            }
            DataView::Opportunity(OpportunityView { amount, stage, created_at, closed_at, stage_history })
        }
        4 => {
            let account = match reader.byte()? {
                0 => None,
                1 => Some(RefView { canonical: None }),
                2 => Some(RefView { canonical: Some(reader.id()?) }),
                other => return Err(malformed("record summary", format!("unknown account marker {other}"))),
            };
            let channel = reader.opt_vocabulary::<Channel>()?;
            let status = reader.opt_vocabulary::<OrderStatus>()?;
            let currency = match reader.opt_str()? {
                Some(code) => {
                    Some(Currency::new(&code).map_err(|error| malformed("record summary", error.to_string()))?)
                }
                None => None,
            };
            let total_amount = if reader.bool()? { Some(reader.decimal()?) } else { None };
            let order_date = if reader.bool()? { Some(reader.date()?) } else { None };
            DataView::Order(OrderView { account, channel, status, currency, total_amount, order_date })
        }
        other => return Err(malformed("record summary", format!("unknown entity marker {other}"))),
    };
    reader.finish()?;
    Ok(RecordView { data, links, deleted_at, merged_into })
}

// ---- primitives ----

struct Writer(Vec<u8>);

impl Writer {
    fn byte(&mut self, byte: u8) {
        self.0.push(byte);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn varint128(&mut self, mut value: u128) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn str(&mut self, text: &str) {
        self.varint(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn opt_str(&mut self, text: Option<&str>) {
        // 0: absent; n: a string of n - 1 bytes.
        match text {
            Some(text) => {
                self.varint(text.len() as u64 + 1);
                self.0.extend_from_slice(text.as_bytes());
            }
            None => self.varint(0),
        }
    }

    fn timestamp(&mut self, time: Timestamp) {
        let (seconds, fraction) = time.unix_seconds_and_nanos();
        self.varint(zigzag(seconds));
        self.varint(u64::from(fraction));
    }

    fn opt_timestamp(&mut self, time: Option<Timestamp>) {
        match time {
            Some(time) => {
                self.byte(1);
                self.timestamp(time);
            }
            None => self.byte(0),
        }
    }

    fn decimal(&mut self, value: Decimal) {
        let mantissa = value.mantissa();
        self.varint128(((mantissa << 1) ^ (mantissa >> 127)) as u128);
        self.byte(value.scale() as u8);
    }

    fn date(&mut self, date: Date) {
        self.varint(zigzag(i64::from(date.year())));
        self.byte(date.month() as u8);
        self.byte(date.day() as u8);
    }

    fn reference(&mut self, reference: &RecordRef) {
        let flags = u8::from(reference.canonical.is_some()) | (u8::from(reference.external.is_some()) << 1);
        self.byte(flags);
        if let Some(id) = reference.canonical {
            self.bytes(&id.to_bytes());
        }
        if let Some(external) = &reference.external {
            self.str(external.as_str());
        }
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    fn short(&self) -> FormatError {
        malformed(self.what, "cut short")
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], FormatError> {
        if count > self.bytes.len() {
            return Err(self.short());
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, FormatError> {
        let (first, rest) = self.bytes.split_first().ok_or_else(|| self.short())?;
        self.bytes = rest;
        Ok(*first)
    }

    fn bool(&mut self) -> Result<bool, FormatError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(malformed(self.what, format!("{other} is not a boolean"))),
        }
    }

    fn varint128(&mut self) -> Result<u128, FormatError> {
        let mut value = 0u128;
        for shift in (0..128).step_by(7) {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(self.what, "varint too long"))
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        u64::try_from(self.varint128()?).map_err(|_| malformed(self.what, "varint too large"))
    }

    /// A count of items that follow: never more than the bytes left (each item takes at least one
    /// byte), so a damaged count cannot reserve a huge buffer.
    fn count(&mut self) -> Result<usize, FormatError> {
        let count = self.varint()?;
        usize::try_from(count).ok().filter(|count| *count <= self.bytes.len()).ok_or_else(|| self.short())
    }

    fn str(&mut self) -> Result<&'a str, FormatError> {
        let length = self.count()?;
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes).map_err(|_| malformed(self.what, "text is not UTF-8"))
    }

    fn opt_str(&mut self) -> Result<Option<String>, FormatError> {
        let marker = self.varint()?;
        if marker == 0 {
            return Ok(None);
        }
        let length = usize::try_from(marker - 1).map_err(|_| self.short())?;
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes)
            .map(|text| Some(text.to_owned()))
            .map_err(|_| malformed(self.what, "text is not UTF-8"))
    }

    fn timestamp(&mut self) -> Result<Timestamp, FormatError> {
        let seconds = unzigzag(self.varint()?);
        let fraction = self.varint()?;
        if fraction >= 1_000_000_000 {
            return Err(malformed(self.what, "nanoseconds out of range"));
        }
        let nanos = i128::from(seconds) * 1_000_000_000 + i128::from(fraction);
        Timestamp::from_unix_nanos(nanos).ok_or_else(|| malformed(self.what, "time out of range"))
    }

    fn opt_timestamp(&mut self) -> Result<Option<Timestamp>, FormatError> {
        if self.bool()? { Ok(Some(self.timestamp()?)) } else { Ok(None) }
    }

    fn decimal(&mut self) -> Result<Decimal, FormatError> {
        let raw = self.varint128()?;
        let mantissa = ((raw >> 1) as i128) ^ -((raw & 1) as i128);
        let scale = u32::from(self.byte()?);
        Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|error| malformed(self.what, error.to_string()))
    }

    fn date(&mut self) -> Result<Date, FormatError> {
        let year = i16::try_from(unzigzag(self.varint()?)).map_err(|_| malformed(self.what, "year out of range"))?;
        let month = self.byte()? as i8;
        let day = self.byte()? as i8;
        Date::new(year, month, day).map_err(|error| malformed(self.what, error.to_string()))
    }

    fn id(&mut self) -> Result<CanonicalId, FormatError> {
        let bytes: [u8; 16] = self.take(16)?.try_into().map_err(|_| self.short())?;
        Ok(CanonicalId::from_bytes(bytes))
    }

    fn reference(&mut self) -> Result<RecordRef, FormatError> {
        let flags = self.byte()?;
        let canonical = if flags & 1 != 0 { Some(self.id()?) } else { None };
        let external = if flags & 2 != 0 { Some(ExternalId::new(self.str()?)) } else { None };
        Ok(RecordRef { canonical, external })
    }

    fn currency(&mut self) -> Result<Currency, FormatError> {
        Currency::new(self.str()?).map_err(|error| malformed(self.what, error.to_string()))
    }

    fn vocabulary<T: std::str::FromStr<Err = crmsync_connectors::canonical::UnknownValue>>(
        &mut self,
    ) -> Result<T, FormatError> {
        self.str()?
            .parse()
            .map_err(|error: crmsync_connectors::canonical::UnknownValue| malformed(self.what, error.to_string()))
    }

    fn opt_vocabulary<T: std::str::FromStr<Err = crmsync_connectors::canonical::UnknownValue>>(
        &mut self,
    ) -> Result<Option<T>, FormatError> {
        match self.opt_str()? {
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|error: crmsync_connectors::canonical::UnknownValue| malformed(self.what, error.to_string())),
            None => Ok(None),
        }
    }

    fn finish(&self) -> Result<(), FormatError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(malformed(self.what, "trailing bytes")) }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use crmsync_connectors::canonical::Lead;
    use proptest::prelude::*;

    use super::*;

    fn time(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn link(connection: &str, matched_by: MatchReason) -> Link {
        Link {
            connection: ConnectionId::new(connection),
            object: "Order".into(),
            external_id: ExternalId::new(format!("{connection}-1")),
            last_modified: Some(time("2024-05-01T12:34:56.123Z")),
            last_version: Some("W/\"42\"".into()),
            pushed_hash: Some("abc123".into()),
            matched_by,
            extra: serde_json::Map::from_iter([("Region__c".to_owned(), serde_json::json!({"a": [1, "x"]}))]),
        }
    }

    /// A record with every field, link detail and provenance shape set.
    fn full_order() -> Record {
        let id = CanonicalId::new();
        let mut record = Record::new(id, Entity::Order, time("2024-06-01T00:00:00Z"));
        record.data = EntityData::Order(Order {
            number: Some("SO-1 ünïcode".into()),
            account: Some(RecordRef { canonical: Some(CanonicalId::new()), external: None }),
            opportunity: Some(RecordRef { canonical: None, external: Some(ExternalId::new("006X")) }),
            channel: Some(Channel::Agent),
            vendor_channel: Some("Partner Referral".into()),
            status: Some(OrderStatus::Invoiced),
            vendor_status: Some("Invoiced".into()),
            currency: Some(Currency::new("EUR").unwrap()),
            total_amount: Some(Decimal::from_str("-12345678901234567890.123456").unwrap()),
            order_date: Some(Date::new(1969, 12, 31).unwrap()),
            lines: Some(vec![
                OrderLine {
                    product: Some("Widget".into()),
                    sku: None,
                    quantity: Decimal::from_str("2.5").unwrap(),
                    unit_price: Decimal::from_str("0.0001").unwrap(),
                    line_total: Decimal::ZERO,
                },
                OrderLine::default(),
            ]),
            details: Some(String::new()),
        });
        record.links = vec![
            link("sf", MatchReason::Created),
            link("zoho", MatchReason::MatchKey { key: "number".into(), value: "so-1".into() }),
            link("d365", MatchReason::Manual),
        ];
        record.links[2].extra.clear();
        record.links[2].last_modified = None;
        let from = |connection: Option<&str>, at: &str, version: Option<&str>| Provenance {
            connection: connection.map(ConnectionId::new),
            modified_at: time(at),
            version: version.map(str::to_owned),
        };
        record.provenance.insert("number".into(), from(Some("sf"), "2024-05-01T12:34:56.123Z", None));
        record.provenance.insert("lines".into(), from(Some("sf"), "2024-05-01T12:34:56.123Z", None));
        record.provenance.insert("status".into(), from(Some("zoho"), "1901-01-01T00:00:00.000000001Z", Some("7")));
        record.provenance.insert("details".into(), from(None, "2024-05-02T00:00:00Z", None));
        record.provenance.insert("legacy_field".into(), from(Some("gone"), "2024-05-03T00:00:00Z", None));
        record.deleted_at = Some(time("2024-07-01T00:00:00Z"));
        record.merged_into = Some(CanonicalId::new());
        record.updated_at = time("2024-07-02T00:00:00.5Z");
        record
    }

    #[test]
    fn every_field_of_a_record_round_trips() {
        let record = full_order();
        let keys = vec![("number".to_owned(), "so-1".to_owned())];
        let bytes = encode_record(&record, &keys);
        assert_eq!(bytes[0], RECORD_V2);
        assert_eq!(decode_record(record.id, &bytes).unwrap(), (record.clone(), keys.clone()));
        let index = decode_index_entries(&bytes).unwrap();
        let links: Vec<(ConnectionId, ExternalId)> =
            record.links.iter().map(|link| (link.connection.clone(), link.external_id.clone())).collect();
        assert_eq!(index.links, links);
        assert_eq!(index.match_keys, keys);
    }

    #[test]
    fn a_binary_record_is_several_times_smaller_than_its_json() {
        let mut record = full_order();
        for link in &mut record.links {
            link.extra.clear();
        }
        let binary = encode_record(&record, &[]);
        let json = serde_json::to_vec(&record).unwrap();
        assert!(binary.len() * 3 < json.len(), "binary {} bytes, JSON {} bytes", binary.len(), json.len());
    }

    #[test]
    fn summaries_round_trip_for_every_entity() {
        let mut order = full_order();
        let mut records = vec![order.clone()];
        order.data = EntityData::Order(Order::default());
        order.deleted_at = None;
        records.push(order);
        let mut deal = Record::new(CanonicalId::new(), Entity::Opportunity, time("2024-01-01T00:00:00Z"));
        deal.data = EntityData::Opportunity(Opportunity {
            amount: Some(Money {
                amount: Decimal::from_str("10.50").unwrap(),
                currency: Currency::new("USD").unwrap(),
            }),
            stage: Some(Stage::Won),
            closed_at: Some(time("2024-02-01T00:00:00Z")),
            stage_history: vec![StageEntry { stage: Stage::Qualified, entered_at: time("2024-01-01T00:00:00Z") }],
            ..Opportunity::default()
        });
        records.push(deal);
        records.push(Record::new(CanonicalId::new(), Entity::Opportunity, time("2024-01-01T00:00:00Z")));
        records.push(Record::new(CanonicalId::new(), Entity::Lead, time("2024-01-01T00:00:00Z")));
        records.push(Record::new(CanonicalId::new(), Entity::Account, time("2024-01-01T00:00:00Z")));
        for record in &records {
            let view = RecordView::of(record);
            let bytes = encode_summary(&view);
            assert_eq!(decode_summary(&bytes).unwrap(), view);
            for cut in 0..bytes.len() {
                assert!(decode_summary(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn a_format_1_record_still_decodes() {
        let record = full_order();
        let json = serde_json::to_vec(
            &serde_json::json!({"v": 1, "data": {"record": record, "match_keys": [["number", "so-1"]]}}),
        )
        .unwrap();
        assert!(!is_current_record(&json));
        let (decoded, keys) = decode_record(record.id, &json).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(keys, vec![("number".to_owned(), "so-1".to_owned())]);
        assert_eq!(decode_index_entries(&json).unwrap().links.len(), 3);
    }

    proptest! {
        #[test]
        fn leads_round_trip(
            name in proptest::option::of("\\PC{0,30}"),
            email in proptest::option::of("[a-z]{1,10}@[a-z]{1,10}\\.example"),
            converted in proptest::option::of(any::<bool>()),
            nanos in -8_000_000_000_000_000_000i128..8_000_000_000_000_000_000i128,
            mantissa in any::<i64>(),
            scale in 0u32..28,
        ) {
            let at = Timestamp::from_unix_nanos(nanos).unwrap();
            let mut record = Record::new(CanonicalId::new(), Entity::Lead, at);
            record.data = EntityData::Lead(Lead { name, email, converted, created_at: Some(at), ..Lead::default() });
            record.provenance.insert("name".into(), Provenance { connection: Some(ConnectionId::new("sf")), modified_at: at, version: None });
            let keys = vec![("email".to_owned(), Decimal::new(mantissa, scale).to_string())];
            let bytes = encode_record(&record, &keys);
            prop_assert_eq!(decode_record(record.id, &bytes).unwrap(), (record, keys));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut tagged = bytes.clone();
            tagged.insert(0, RECORD_V2);
            let _ = decode_record(CanonicalId::new(), &tagged);
            let _ = decode_index_entries(&tagged);
            let _ = decode_record(CanonicalId::new(), &bytes);
        }
    }
}
