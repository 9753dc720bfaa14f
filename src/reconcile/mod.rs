//! Reconciliation: turns one vendor change into a decision about one canonical record.
//!
//! Pure: no IO, no async, no store. The ingest path looks up the candidate record (by link, by the
//! canonical id found in the vendor's external-id field, or by match key — see [`match_key_values`]),
//! resolves the change's references to canonical ids, and calls [`reconcile`]; it then writes what the
//! [`Decision`] says and queues the fan-out in the same store transaction.
//!
//! # Merge
//!
//! Field by field, each with its provenance (connection, vendor modification time). A field is
//! overwritten only when the policy of [`Rules::policy`] says the incoming value wins; an older change
//! never overwrites a newer value from the same connection, so changes may arrive out of order and
//! twice. A field changed on two sides since the source last synced is a [`Conflict`], always
//! recorded with both values; under [`Policy::Manual`] the current value is held.
//!
//! # Echoes and ping-pong
//!
//! When crmsync pushes a record to a connection it remembers a hash of the pushed values on the link
//! ([`pushed_hash`]). Reading those values back is an echo: the link advances, nothing is applied or
//! propagated. Field by field too: a value read back exactly as crmsync last pushed it is not a
//! change even when other fields of the read are (a CRM that holds an order shipped as "Delivered"
//! keeps the canonical `shipped` when someone edits the order's description there); after a read
//! that is not an echo the link's hash says what the connection holds now. Only *propagating* fields fan out ([`propagates`]): vendor-local fields (creation times,
//! raw vendor values, derived flags) are stored but never cause a push, so two connections routed both
//! ways reach a fixed point.

mod rules;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crmsync_connectors::canonical::{
    CanonicalId, ConnectionId, Entity, EntityData, Link, MatchReason, Opportunity, Provenance, Record, StageEntry,
    Timestamp, normalise_domain,
};
use crmsync_connectors::{Change, ChangeKind, Completeness};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use rules::{DeleteAction, Policy, Route, Rules, default_match_keys};

/// A record's values by field name ([`EntityData::to_fields`]): what merging, matching and echo
/// checks compare. Building it costs an allocation per field, so the ingest path builds it once per
/// change and hands it to [`reconcile_fields`] and [`match_key_values_of`].
pub type Fields = serde_json::Map<String, Value>;

/// Fields that are stored but never propagated to other connections: each vendor has its own value.
pub const LOCAL_FIELDS: &[&str] = &[
    "owner",
    "created_at",
    "updated_at",
    "vendor_stage",
    "vendor_status",
    "vendor_channel",
    "source",
    "is_won",
    "is_closed",
    "closed_at",
    "stage_history",
    // Lead conversion is an action in each CRM, not a writable field: each keeps its own.
    "converted",
    "converted_account",
    "converted_opportunity",
];

/// Returns whether a change of this field is sent to other connections. A lead's `status` is the
/// vendor's raw lead status (each CRM has its own list), so it stays local too.
pub fn propagates(entity: Entity, field: &str) -> bool {
    let lead_status = entity == Entity::Lead && field == "status";
    !LOCAL_FIELDS.contains(&field) && !lead_status
}

/// What happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new canonical record.
    Created,
    /// Fields changed.
    Updated,
    /// The record was tombstoned.
    Deleted,
    /// Our own push read back: only the link advanced.
    Echo,
    /// Older than what this connection already told us: ignored.
    Stale,
    /// Nothing changed (a re-read, a duplicate delivery); at most the link advanced.
    Unchanged,
}

/// One side of a conflict.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictSide {
    /// The value.
    pub value: Value,
    /// Who set it (`None`: local).
    pub connection: Option<ConnectionId>,
    /// The vendor modification time.
    pub modified_at: Timestamp,
}

/// A field changed on two sides since the source last synced.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The field.
    pub field: String,
    /// The value in the store before the change.
    pub current: ConflictSide,
    /// The incoming value.
    pub incoming: ConflictSide,
    /// The policy that decided (`newest`, `priority`, `authoritative:sf_prod`, `manual`).
    pub policy: String,
    /// `true`: the incoming value won.
    pub incoming_won: bool,
    /// `true`: held for a person (manual policy); the current value stays until resolved.
    pub held: bool,
}

/// The decision about one change.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What happened.
    pub outcome: Outcome,
    /// The record to write (`None`: nothing to write).
    pub record: Option<Record>,
    /// Whether the change must be queued for the routed targets.
    pub fan_out: bool,
    /// Fields whose value changed.
    pub changed_fields: Vec<String>,
    /// Conflicts found (recorded whatever the policy).
    pub conflicts: Vec<Conflict>,
}

/// A change that cannot be applied (its fields do not fit the entity).
#[derive(Debug, thiserror::Error)]
#[error("cannot apply change to {entity} {external_id}: {message}")]
pub struct ReconcileError {
    /// Entity.
    pub entity: Entity,
    /// The vendor id.
    pub external_id: String,
    /// Why.
    pub message: String,
}

/// Brings values to one comparable form: exact decimals without trailing zeros, lower-case e-mails
/// and domains, order lines in a stable order. Applied to every incoming change, so stored values are
/// always canonical and a vendor's formatting never looks like a change.
pub fn canonicalise(data: &mut EntityData) {
    match data {
        EntityData::Account(account) => {
            if let Some(domain) = account.domain.as_deref().and_then(normalise_domain) {
                account.domain = Some(domain);
            }
        }
        EntityData::Lead(lead) => {
            if let Some(email) = lead.email.as_mut() {
                *email = email.trim().to_ascii_lowercase();
            }
        }
        EntityData::Opportunity(opportunity) => {
            if let Some(amount) = opportunity.amount.as_mut() {
                amount.amount = amount.amount.normalize();
            }
            if let Some(probability) = opportunity.probability.as_mut() {
                *probability = probability.normalize();
            }
        }
        EntityData::Order(order) => {
            if let Some(total) = order.total_amount.as_mut() {
                *total = total.normalize();
            }
            if let Some(lines) = order.lines.as_mut() {
                for line in lines.iter_mut() {
                    line.quantity = line.quantity.normalize();
                    line.unit_price = line.unit_price.normalize();
                    line.line_total = line.line_total.normalize();
                }
                lines.sort_by(|left, right| {
                    (&left.sku, &left.product, left.quantity, left.unit_price).cmp(&(
                        &right.sku,
                        &right.product,
                        right.quantity,
                        right.unit_price,
                    ))
                });
            }
        }
    }
}

/// Returns the match-key values of a record's data: `(key name, normalised value)` for every
/// configured key whose fields are all present. References must already be canonical. What the
/// store indexes a record under is [`index_keys`] (these plus its references).
pub fn match_key_values(rules: &Rules, data: &EntityData) -> Vec<(String, String)> {
    if !rules.match_keys.contains_key(&data.entity()) {
        return Vec::new();
    }
    match_key_values_of(rules, data.entity(), &data.to_fields())
}

/// [`match_key_values`] of data whose fields view ([`EntityData::to_fields`]) the caller already
/// holds: the ingest path builds it once per change.
pub fn match_key_values_of(rules: &Rules, entity: Entity, fields: &Fields) -> Vec<(String, String)> {
    let Some(keys) = rules.match_keys.get(&entity) else {
        return Vec::new();
    };
    let mut values = Vec::with_capacity(keys.len());
    // The normalised parts joined by `|`, written into one string as they are normalised.
    let mut joined = String::new();
    'keys: for key in keys {
        joined.clear();
        for (index, field) in key.iter().enumerate() {
            if index > 0 {
                joined.push('|');
            }
            if !fields.get(field).is_some_and(|value| push_normalised_key_part(value, &mut joined)) {
                continue 'keys;
            }
        }
        values.push((key.join("+"), joined.clone()));
    }
    values
}

/// The index key under which a record is listed for each record it references (its value is the
/// referenced canonical id). Not a match key: [`match_key_values`] never returns it, so a reference
/// alone never makes two records one. It lets ingest find every record that points at a placeholder
/// when the placeholder is merged into the record it turned out to be, and repoint them.
pub const REFERENCE_KEY: &str = "@ref";

/// Returns what the store indexes a record under: its match-key values ([`match_key_values`]) and
/// one [`REFERENCE_KEY`] entry per distinct canonical record it references. Every writer of records
/// passes these to the store, so the reference entries stay complete.
pub fn index_keys(rules: &Rules, data: &EntityData) -> Vec<(String, String)> {
    with_reference_keys(match_key_values(rules, data), data)
}

/// Adds a [`REFERENCE_KEY`] entry per distinct canonical record `data` references to its match-key
/// values (`keys`): [`index_keys`] when the caller already has the match-key values.
pub fn with_reference_keys(mut keys: Vec<(String, String)>, data: &EntityData) -> Vec<(String, String)> {
    for (_, _, reference) in data.references() {
        if let Some(id) = reference.canonical {
            let entry = (REFERENCE_KEY.to_owned(), id.to_string());
            if !keys.contains(&entry) {
                keys.push(entry);
            }
        }
    }
    keys
}

/// Appends a match-key part's normalised form to `out`: its words (split at white space, `,` and
/// `.`) in lower case, joined by one space. Returns `false` (with `out` holding a partial part the
/// caller discards) when there is none: a null, a reference not resolved to a canonical id, no words.
fn push_normalised_key_part(value: &Value, out: &mut String) -> bool {
    let rendered;
    let text = match value {
        Value::String(text) => text.as_str(),
        // A reference: match on the canonical id it resolved to.
        Value::Object(reference) => match reference.get("canonical").and_then(Value::as_str) {
            Some(canonical) => canonical,
            None => return false,
        },
        Value::Null => return false,
        other => {
            rendered = other.to_string();
            rendered.as_str()
        }
    };
    let start = out.len();
    for word in text
        .split(|character: char| character.is_whitespace() || matches!(character, ',' | '.'))
        .filter(|word| !word.is_empty())
    {
        if out.len() > start {
            out.push(' ');
        }
        if word.is_ascii() {
            // `str::to_lowercase` of an ASCII word, without a string of its own.
            let at = out.len();
            out.push_str(word);
            out[at..].make_ascii_lowercase();
        } else {
            out.push_str(&word.to_lowercase());
        }
    }
    out.len() > start
}

/// Hash of the propagating field values pushed to a connection, stored on its link as
/// `v2:<field>=<hex>,…` (one short hash per field) so a read-back can be compared on exactly the
/// fields that were pushed, or, for a vendor that has no column for some of them, on those it carries.
pub fn pushed_hash(data: &EntityData) -> String {
    let fields = data.to_fields();
    let entity = data.entity();
    let pairs: Vec<String> = fields
        .keys()
        .map(String::as_str)
        .filter(|name| propagates(entity, name))
        .map(|name| format!("{name}={}", field_hash(name, fields.get(name).unwrap_or(&Value::Null))))
        .collect();
    format!("v2:{}", pairs.join(","))
}

/// The hash of what crmsync pushes to a connection now, given what it pushed there before
/// (`previous`, the link's [`pushed_hash`]): a field the vendor is not sent (the connector cannot
/// represent it, or it has no value) keeps its value there, so it keeps its earlier hash.
pub fn pushed_hash_over(previous: Option<&str>, data: &EntityData) -> String {
    let fresh = pushed_hash(data);
    let earlier = pushed_pairs(previous);
    if earlier.is_empty() {
        return fresh;
    }
    let mut pairs = pushed_pairs(Some(&fresh));
    for (name, hash) in earlier {
        pairs.entry(name).or_insert(hash);
    }
    format_pairs(&pairs)
}

/// The per-field hashes of a `v2:` pushed hash (empty for none or the legacy format).
fn pushed_pairs(hash: Option<&str>) -> BTreeMap<String, String> {
    let Some(pairs) = hash.and_then(|hash| hash.strip_prefix("v2:")) else { return BTreeMap::new() };
    pairs
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, hash) = pair.split_once('=').unwrap_or((pair, ""));
            (name.to_owned(), hash.to_owned())
        })
        .collect()
}

fn format_pairs(pairs: &BTreeMap<String, String>) -> String {
    let joined: Vec<String> = pairs.iter().map(|(name, hash)| format!("{name}={hash}")).collect();
    format!("v2:{}", joined.join(","))
}

/// After a read that was not an echo, the link's pushed hash says what the connection holds now:
/// each field crmsync had pushed takes the hash of the value read (fields the read does not carry
/// keep theirs). So a later read of a value crmsync pushed long ago, after the vendor had moved away
/// from it, is a change again, not an echo.
fn refresh_pushed(link: &mut Link, fields: &Fields, completeness: Completeness) {
    let mut pairs = pushed_pairs(link.pushed_hash.as_deref());
    if pairs.is_empty() {
        return;
    }
    for (name, hash) in &mut pairs {
        match fields.get(name.as_str()) {
            Some(value) => *hash = field_hash(name, value),
            None if completeness == Completeness::Full => *hash = field_hash(name, &Value::Null),
            None => {}
        }
    }
    link.pushed_hash = Some(format_pairs(&pairs));
}

fn field_hash(name: &str, value: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(value.to_string().as_bytes());
    hasher.finalize().iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

/// The format before per-field hashes (`<hex>:<field,field,…>`), still read from existing stores.
fn legacy_hash(fields: &serde_json::Map<String, Value>, names: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(fields.get(*name).unwrap_or(&Value::Null).to_string().as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().iter().take(16).map(|byte| format!("{byte:02x}")).collect()
}

/// Returns whether `data` read back from a connection is exactly what crmsync pushed there. A
/// partial read-back (a vendor without a column for some field) is compared on the fields it carries.
pub fn is_echo(link: &Link, data: &EntityData, completeness: Completeness) -> bool {
    if link.pushed_hash.is_none() {
        return false;
    }
    is_echo_of(link, &data.to_fields(), completeness)
}

/// [`is_echo`] of a read whose fields view the caller already holds.
fn is_echo_of(link: &Link, fields: &Fields, completeness: Completeness) -> bool {
    let Some(stored) = link.pushed_hash.as_deref() else { return false };
    if let Some(pairs) = stored.strip_prefix("v2:") {
        return pairs.split(',').filter(|pair| !pair.is_empty()).all(|pair| {
            let (name, hash) = pair.split_once('=').unwrap_or((pair, ""));
            match fields.get(name) {
                Some(value) => field_hash(name, value) == hash,
                None if completeness == Completeness::Partial => true,
                None => field_hash(name, &Value::Null) == hash,
            }
        });
    }
    let Some((hash, names)) = stored.split_once(':') else { return false };
    let names: Vec<&str> = names.split(',').filter(|name| !name.is_empty()).collect();
    legacy_hash(fields, &names) == hash
}

/// A vendor without a SKU column (Dataverse write-in order lines) reads lines back without SKUs. In a
/// partial change a missing SKU is unknown, not cleared: it is taken from the canonical line at the
/// same position when the lines otherwise describe the same products.
fn complete_partial_lines(incoming: &EntityData, current: &EntityData) -> Option<EntityData> {
    let (EntityData::Order(incoming_order), EntityData::Order(current_order)) = (incoming, current) else {
        return None;
    };
    let (Some(lines), Some(known)) = (&incoming_order.lines, &current_order.lines) else { return None };
    if lines.len() != known.len() || lines.iter().all(|line| line.sku.is_some()) {
        return None;
    }
    let mut completed = incoming_order.clone();
    for (line, known) in completed.lines.iter_mut().flatten().zip(known) {
        if line.sku.is_none() && line.product == known.product {
            line.sku.clone_from(&known.sku);
        }
    }
    Some(EntityData::Order(completed))
}

/// Decides what one change does to its canonical record.
///
/// `current` is the record the change was matched to (`None`: a new record with `new_id`), `matched_by`
/// why (used when this creates the connection's link), `source` the connection it came from.
pub fn reconcile(
    current: Option<&Record>,
    change: &Change,
    source: &ConnectionId,
    matched_by: MatchReason,
    rules: &Rules,
    now: Timestamp,
    new_id: CanonicalId,
) -> Result<Decision, ReconcileError> {
    let fields = change.data().map(EntityData::to_fields);
    reconcile_fields(current, change, fields.as_ref(), source, matched_by, rules, now, new_id)
}

/// [`reconcile`] with the fields view of the change's data (`fields`: `change.data()`'s
/// [`EntityData::to_fields`], `None` for a delete) built by the caller, who needs it for matching too.
#[allow(clippy::too_many_arguments)]
pub fn reconcile_fields(
    current: Option<&Record>,
    change: &Change,
    fields: Option<&Fields>,
    source: &ConnectionId,
    matched_by: MatchReason,
    rules: &Rules,
    now: Timestamp,
    new_id: CanonicalId,
) -> Result<Decision, ReconcileError> {
    let owned;
    let fields = match (fields, change.data()) {
        (Some(fields), _) => fields,
        (None, Some(data)) => {
            owned = data.to_fields();
            &owned
        }
        (None, None) => {
            owned = Fields::new();
            &owned
        }
    };
    let mut record = current.cloned().unwrap_or_else(|| Record::new(new_id, change.entity, now));
    let previous_link = record.link(source).cloned();
    let last_seen = previous_link.as_ref().and_then(|link| link.last_modified);
    if last_seen.is_some_and(|seen| change.modified_at < seen) {
        return Ok(Decision::ignored(Outcome::Stale));
    }
    // What crmsync last pushed to the source, per field, before this read says what the source holds.
    let pushed = pushed_pairs(previous_link.as_ref().and_then(|link| link.pushed_hash.as_deref()));
    let link_changed = update_link(&mut record, change, fields, source, matched_by, previous_link.as_ref());

    let mut provenance_touched = false;
    // Only a partial order read-back with SKU-less lines is rewritten; every other change is used as is.
    let completed = match &change.kind {
        ChangeKind::Upsert { data, completeness: Completeness::Partial } => complete_partial_lines(data, &record.data)
            .map(|data| ChangeKind::Upsert { data, completeness: Completeness::Partial }),
        _ => None,
    };
    let kind = completed.as_ref().unwrap_or(&change.kind);
    let (outcome, changed_fields, conflicts) = match kind {
        ChangeKind::Delete => apply_delete(&mut record, change, source, last_seen),
        ChangeKind::Upsert { data, completeness }
            if previous_link.as_ref().is_some_and(|link| match &completed {
                // The completed lines are another view than `fields`.
                Some(_) => is_echo(link, data, *completeness),
                None => is_echo_of(link, fields, *completeness),
            }) && !record.is_deleted() =>
        {
            (Outcome::Echo, Vec::new(), Vec::new())
        }
        ChangeKind::Upsert { data, completeness } => {
            let completed_fields;
            let incoming = match &completed {
                Some(_) => {
                    completed_fields = data.to_fields();
                    &completed_fields
                }
                None => fields,
            };
            let (changed, conflicts, touched) =
                merge_fields(&mut record, data, incoming, *completeness, change, source, last_seen, rules, &pushed)?;
            provenance_touched = touched;
            let outcome = if current.is_none() {
                Outcome::Created
            } else if changed.is_empty() {
                Outcome::Unchanged
            } else {
                Outcome::Updated
            };
            (outcome, changed, conflicts)
        }
    };
    let fan_out = match outcome {
        Outcome::Deleted => true,
        Outcome::Created | Outcome::Updated => changed_fields.iter().any(|field| propagates(change.entity, field)),
        _ => false,
    };
    let dirty = current.is_none()
        || link_changed
        || provenance_touched
        || !changed_fields.is_empty()
        || outcome == Outcome::Deleted;
    if dirty {
        record.updated_at = now;
    }
    Ok(Decision { outcome, record: dirty.then_some(record), fan_out, changed_fields, conflicts })
}

impl Decision {
    fn ignored(outcome: Outcome) -> Self {
        Self { outcome, record: None, fan_out: false, changed_fields: Vec::new(), conflicts: Vec::new() }
    }
}

fn update_link(
    record: &mut Record,
    change: &Change,
    fields: &Fields,
    source: &ConnectionId,
    matched_by: MatchReason,
    previous: Option<&Link>,
) -> bool {
    let mut link = previous.cloned().unwrap_or_else(|| Link {
        connection: source.clone(),
        object: change.object.clone(),
        external_id: change.external_id.clone(),
        last_modified: None,
        last_version: None,
        pushed_hash: None,
        matched_by,
        extra: serde_json::Map::new(),
    });
    if previous.is_some() {
        link.external_id = change.external_id.clone();
    }
    link.last_modified = Some(change.modified_at);
    if change.version.is_some() {
        link.last_version = change.version.clone();
    }
    if let ChangeKind::Upsert { completeness, .. } = &change.kind {
        refresh_pushed(&mut link, fields, *completeness);
    }
    let full = matches!(change.kind, ChangeKind::Upsert { completeness: Completeness::Full, .. });
    if full {
        link.extra = change.extra.clone();
    } else {
        for (key, value) in &change.extra {
            link.extra.insert(key.clone(), value.clone());
        }
    }
    if previous == Some(&link) {
        return false;
    }
    match record.link_mut(source) {
        Some(existing) => *existing = link,
        None => record.links.push(link),
    }
    true
}

fn apply_delete(
    record: &mut Record,
    change: &Change,
    source: &ConnectionId,
    last_seen: Option<Timestamp>,
) -> (Outcome, Vec<String>, Vec<Conflict>) {
    if record.is_deleted() {
        return (Outcome::Unchanged, Vec::new(), Vec::new());
    }
    // Deleted on one side, edited on another since the source last synced: a conflict. The delete
    // wins (the record is gone in the source), but both sides are recorded.
    let mut conflicts = Vec::new();
    if let Some(seen) = last_seen {
        let edited_elsewhere = record
            .provenance
            .values()
            .filter(|provenance| provenance.connection.as_ref() != Some(source) && provenance.modified_at > seen)
            .max_by_key(|provenance| provenance.modified_at);
        if let Some(edit) = edited_elsewhere {
            conflicts.push(Conflict {
                field: "deleted_at".to_owned(),
                current: ConflictSide {
                    value: Value::Null,
                    connection: edit.connection.clone(),
                    modified_at: edit.modified_at,
                },
                incoming: ConflictSide {
                    value: Value::String(change.modified_at.to_string()),
                    connection: Some(source.clone()),
                    modified_at: change.modified_at,
                },
                policy: "delete_wins".to_owned(),
                incoming_won: true,
                held: false,
            });
        }
    }
    record.deleted_at = Some(change.modified_at);
    (Outcome::Deleted, vec!["deleted_at".to_owned()], conflicts)
}

#[allow(clippy::too_many_arguments)]
fn merge_fields(
    record: &mut Record,
    data: &EntityData,
    fields: &Fields,
    completeness: Completeness,
    change: &Change,
    source: &ConnectionId,
    last_seen: Option<Timestamp>,
    rules: &Rules,
    pushed: &BTreeMap<String, String>,
) -> Result<(Vec<String>, Vec<Conflict>, bool), ReconcileError> {
    let entity = change.entity;
    if is_blank(record) && pushed.is_empty() {
        return Ok(fill_blank(record, data, fields, change, source));
    }
    let mut incoming = fields.clone();
    if completeness == Completeness::Full {
        for field in entity.fields() {
            if *field != "stage_history" {
                incoming.entry((*field).to_owned()).or_insert(Value::Null);
            }
        }
    }
    // crmsync keeps the stage history itself; vendors do not send one.
    incoming.remove("stage_history");
    let mut merged = record.data.to_fields();
    let mut changed = Vec::new();
    let mut conflicts = Vec::new();
    let undelete = record.deleted_at.is_some_and(|deleted| change.modified_at > deleted);
    let mut provenance_touched = false;
    for (field, value) in incoming {
        let current_value = merged.get(&field).cloned().unwrap_or(Value::Null);
        // The value crmsync itself last wrote there, read back: not the source's assertion. After the
        // canonical value moved on it is a push still on its way, or a vendor that holds the canonical
        // value as a coarser one (an order shipped, in a CRM with one value for shipped and delivered):
        // not a change. Equal to the canonical value it is our own copy, and its (later) modification
        // time must not become the field's provenance: a user's edit made in the originating CRM after
        // the copy was written, stamped earlier (Zoho's whole seconds against Salesforce's
        // milliseconds) or read later, would lose to it. (Hashed only when it decides something.)
        let ours = || pushed.get(&field).is_some_and(|hash| *hash == field_hash(&field, &value));
        if current_value != value && ours() {
            continue;
        }
        let provenance = record.provenance.get(&field);
        let verdict = judge(rules, entity, &field, provenance, &current_value, source, change.modified_at, last_seen);
        if current_value == value {
            // Same value, asserted by the source itself: no change, but a winning, newer assertion of
            // it becomes its provenance, so the outcome does not depend on the order changes arrive in.
            let incoming_provenance = Provenance {
                connection: Some(source.clone()),
                modified_at: change.modified_at,
                version: change.version.clone(),
            };
            if verdict.incoming_wins && !value.is_null() && provenance != Some(&incoming_provenance) && !ours() {
                record.provenance.insert(field, incoming_provenance);
                provenance_touched = true;
            }
            continue;
        }
        if let Some(mut conflict) = verdict.conflict {
            conflict.current.value = current_value.clone();
            conflict.incoming.value = value.clone();
            conflicts.push(conflict);
        }
        if verdict.incoming_wins {
            if value.is_null() {
                merged.remove(&field);
            } else {
                merged.insert(field.clone(), value);
            }
            record.provenance.insert(
                field.clone(),
                Provenance {
                    connection: Some(source.clone()),
                    modified_at: change.modified_at,
                    version: change.version.clone(),
                },
            );
            changed.push(field);
        }
    }
    if changed.is_empty() && !undelete {
        return Ok((changed, conflicts, provenance_touched));
    }
    let previous_stage = match &record.data {
        EntityData::Opportunity(opportunity) => opportunity.stage,
        _ => None,
    };
    record.data = EntityData::from_fields(entity, merged).map_err(|error| ReconcileError {
        entity,
        external_id: change.external_id.to_string(),
        message: error.to_string(),
    })?;
    if let EntityData::Opportunity(opportunity) = &mut record.data {
        record_stage(opportunity, previous_stage, change.modified_at);
    }
    if undelete {
        record.deleted_at = None;
        changed.push("deleted_at".to_owned());
    }
    Ok((changed, conflicts, provenance_touched))
}

/// Whether a record holds no value and no provenance yet (a new record, or a placeholder created for
/// a reference): every incoming value then wins without a conflict.
fn is_blank(record: &Record) -> bool {
    record.provenance.is_empty() && record.deleted_at.is_none() && record.data == EntityData::empty(record.entity())
}

/// [`merge_fields`] into a blank record ([`is_blank`]), without the field-by-field merge: the
/// general merge would judge every present value the winner (no provenance to weigh it against)
/// and rebuild the data from the merged fields, which is the incoming data itself. Each present
/// value gets the change's provenance; the stage history starts with the incoming stage.
fn fill_blank(
    record: &mut Record,
    data: &EntityData,
    fields: &Fields,
    change: &Change,
    source: &ConnectionId,
) -> (Vec<String>, Vec<Conflict>, bool) {
    let mut changed = Vec::new();
    for (field, value) in fields {
        if field == "stage_history" || value.is_null() {
            continue;
        }
        record.provenance.insert(
            field.clone(),
            Provenance {
                connection: Some(source.clone()),
                modified_at: change.modified_at,
                version: change.version.clone(),
            },
        );
        changed.push(field.clone());
    }
    if changed.is_empty() {
        return (changed, Vec::new(), false);
    }
    record.data = data.clone();
    if let EntityData::Opportunity(opportunity) = &mut record.data {
        // crmsync keeps the stage history itself; vendors do not send one.
        opportunity.stage_history.clear();
        record_stage(opportunity, None, change.modified_at);
    }
    (changed, Vec::new(), false)
}

fn record_stage(opportunity: &mut Opportunity, previous: Option<crmsync_connectors::canonical::Stage>, at: Timestamp) {
    if let Some(stage) = opportunity.stage
        && previous != Some(stage)
        && opportunity.stage_history.last().is_none_or(|entry| entry.stage != stage)
    {
        opportunity.stage_history.push(StageEntry { stage, entered_at: at });
    }
}

struct Verdict {
    incoming_wins: bool,
    conflict: Option<Conflict>,
}

#[allow(clippy::too_many_arguments)]
fn judge(
    rules: &Rules,
    entity: Entity,
    field: &str,
    provenance: Option<&Provenance>,
    current_value: &Value,
    source: &ConnectionId,
    modified_at: Timestamp,
    last_seen: Option<Timestamp>,
) -> Verdict {
    let Some(provenance) = provenance else {
        // Nobody set it yet (or it was set before provenance was kept): take it.
        return Verdict { incoming_wins: true, conflict: None };
    };
    let from_source = provenance.connection.as_ref() == Some(source);
    if from_source {
        // The same connection again: only a newer (or equally new) change replaces its own value.
        return Verdict { incoming_wins: modified_at >= provenance.modified_at, conflict: None };
    }
    // Equally new: `source_priority` decides, then (for connections it does not order) the connection
    // name, so the winner never depends on which change was read first.
    let newer = modified_at > provenance.modified_at
        || (modified_at == provenance.modified_at
            && (rules.rank(Some(source)), Some(source))
                < (rules.rank(provenance.connection.as_ref()), provenance.connection.as_ref()));
    let policy = rules.policy(entity, field);
    let (incoming_wins, policy_name) = match policy {
        Policy::Newest => (newer, "newest".to_owned()),
        Policy::Priority(order) => {
            let rank = |connection: Option<&ConnectionId>| {
                connection
                    .and_then(|connection| order.iter().position(|listed| listed == connection))
                    .unwrap_or(order.len())
            };
            let (incoming_rank, current_rank) = (rank(Some(source)), rank(provenance.connection.as_ref()));
            (incoming_rank < current_rank || (incoming_rank == current_rank && newer), "priority".to_owned())
        }
        Policy::Authoritative(owner) => {
            let wins = if source == owner {
                true
            } else if provenance.connection.as_ref() == Some(owner) {
                current_value.is_null()
            } else {
                newer
            };
            (wins, format!("authoritative:{owner}"))
        }
        Policy::Manual => (newer, "manual".to_owned()),
    };
    // Changed on two sides since the source last synced: the other side's value is newer than the
    // last version we saw from the source. A newer edit that priority or ownership overrules is a
    // conflict too: otherwise a double edit would be recorded or not depending on which CRM's change
    // happened to be read first.
    let overruled = !incoming_wins
        && matches!(policy, Policy::Priority(_) | Policy::Authoritative(_))
        && modified_at > provenance.modified_at;
    let is_conflict = overruled || last_seen.is_some_and(|seen| provenance.modified_at > seen);
    if !is_conflict {
        return Verdict { incoming_wins, conflict: None };
    }
    let held = matches!(policy, Policy::Manual);
    let conflict = Conflict {
        field: field.to_owned(),
        current: ConflictSide {
            value: Value::Null,
            connection: provenance.connection.clone(),
            modified_at: provenance.modified_at,
        },
        incoming: ConflictSide { value: Value::Null, connection: Some(source.clone()), modified_at },
        policy: policy_name,
        incoming_won: incoming_wins && !held,
        held,
    };
    Verdict { incoming_wins: incoming_wins && !held, conflict: Some(conflict) }
}

/// Applies a person's resolution of a held conflict: `value` becomes the field's value with local
/// provenance at `at`.
pub fn resolve_field(record: &mut Record, field: &str, value: Value, at: Timestamp) -> Result<(), ReconcileError> {
    let entity = record.entity();
    let mut fields = record.data.to_fields();
    if value.is_null() {
        fields.remove(field);
    } else {
        fields.insert(field.to_owned(), value);
    }
    record.data = EntityData::from_fields(entity, fields).map_err(|error| ReconcileError {
        entity,
        external_id: record.id.to_string(),
        message: error.to_string(),
    })?;
    record.provenance.insert(field.to_owned(), Provenance { connection: None, modified_at: at, version: None });
    record.updated_at = at;
    Ok(())
}

/// Returns the propagating fields of a record as a map (what a push sends).
pub fn propagating_fields(data: &EntityData) -> BTreeMap<String, Value> {
    let entity = data.entity();
    data.to_fields().into_iter().filter(|(field, _)| propagates(entity, field)).collect()
}

/// Why two records cannot be merged or a record cannot be split.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Different entities.
    #[error("{keep} is {keep_entity} and {other} is {other_entity}: only records of one entity can be merged")]
    EntityMismatch {
        /// The record kept.
        keep: CanonicalId,
        /// Its entity.
        keep_entity: Entity,
        /// The other record.
        other: CanonicalId,
        /// Its entity.
        other_entity: Entity,
    },
    /// Both records have a copy in the same CRM: merging would leave two copies there.
    #[error(
        "both records have a copy in {connection} ({first} and {second}): merge or delete one of them in that CRM \
         first, then sync"
    )]
    SameConnection {
        /// The connection.
        connection: ConnectionId,
        /// The kept record's copy.
        first: String,
        /// The other record's copy.
        second: String,
    },
    /// A record merged into itself, or one already merged.
    #[error("{0}")]
    Invalid(String),
}

/// `crmsync identity merge`: joins `other` into `keep`. The kept record's values win; fields it
/// lacks are taken from `other` with their provenance. `other` keeps no links and points at `keep`
/// (`merged_into`), so its id still resolves.
pub fn merge_records(keep: &Record, other: &Record, now: Timestamp) -> Result<(Record, Record), IdentityError> {
    if keep.id == other.id {
        return Err(IdentityError::Invalid(format!("{} cannot be merged into itself", keep.id)));
    }
    if let Some(target) = other.merged_into.or(keep.merged_into) {
        return Err(IdentityError::Invalid(format!("a record is already merged into {target}; merge into that one")));
    }
    if keep.entity() != other.entity() {
        return Err(IdentityError::EntityMismatch {
            keep: keep.id,
            keep_entity: keep.entity(),
            other: other.id,
            other_entity: other.entity(),
        });
    }
    for link in &other.links {
        if let Some(existing) = keep.link(&link.connection) {
            return Err(IdentityError::SameConnection {
                connection: link.connection.clone(),
                first: existing.external_id.to_string(),
                second: link.external_id.to_string(),
            });
        }
    }
    let entity = keep.entity();
    let mut merged = keep.clone();
    let mut fields = keep.data.to_fields();
    for (field, value) in other.data.to_fields() {
        if !fields.contains_key(&field) {
            if let Some(provenance) = other.provenance.get(&field) {
                merged.provenance.insert(field.clone(), provenance.clone());
            }
            fields.insert(field, value);
        }
    }
    merged.data = EntityData::from_fields(entity, fields)
        .map_err(|error| IdentityError::Invalid(format!("merged values do not form a valid {entity}: {error}")))?;
    merged.links.extend(other.links.iter().cloned().map(|mut link| {
        link.matched_by = MatchReason::Manual;
        link
    }));
    merged.updated_at = now;
    let mut absorbed = other.clone();
    absorbed.links.clear();
    absorbed.merged_into = Some(keep.id);
    absorbed.updated_at = now;
    Ok((merged, absorbed))
}

/// `crmsync identity split`: detaches the copy in `connection` from `record` into a new canonical
/// record `new_id` with the same values. The copy is then found by its link, so the wrong match is
/// never made again.
pub fn split_record(
    record: &Record,
    connection: &ConnectionId,
    new_id: CanonicalId,
    now: Timestamp,
) -> Result<(Record, Record), IdentityError> {
    let Some(link) = record.link(connection).cloned() else {
        return Err(IdentityError::Invalid(format!("{} has no copy in {connection}", record.id)));
    };
    if record.links.len() < 2 {
        return Err(IdentityError::Invalid(format!(
            "{} has only its {connection} copy: there is nothing to split it from",
            record.id
        )));
    }
    let mut remaining = record.clone();
    remaining.links.retain(|candidate| &candidate.connection != connection);
    remaining.updated_at = now;
    let mut detached = Record::new(new_id, record.entity(), now);
    detached.data = record.data.clone();
    detached.provenance = record.provenance.clone();
    detached.links = vec![Link { matched_by: MatchReason::Manual, pushed_hash: None, ..link }];
    Ok((remaining, detached))
}
