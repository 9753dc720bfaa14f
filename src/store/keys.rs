//! Every key byte layout of the store, in one place. Big-endian integers and length-prefixed strings,
//! so keys sort in their logical order and prefixes range-scan.
//!
//! | tree          | key                                                        | value                     |
//! |---------------|------------------------------------------------------------|---------------------------|
//! | `records`     | entity tag (u8) · canonical id (16)                         | binary record (`format`)  |
//! | `summaries`   | as `records`                                                | binary summary (`format`) |
//! | `links`       | str(connection) · entity tag · str(external id)             | canonical id (16)         |
//! | `match_keys`  | entity tag · str(key) · str(value) · canonical id (16)      | empty                     |
//! | `cursors`     | str(connection) · entity tag                                | envelope(`Option<Cursor>`) |
//! | `outbox`      | str(connection) · sequence (u64)                            | envelope(OutboxEntry)     |
//! | `conflicts`   | conflict id (UUIDv7 text: sorts by time)                    | envelope(ConflictEntry)   |
//! | `dead_letters`| dead-letter id (UUIDv7 text: sorts by time)                 | envelope(DeadLetter)      |
//! | `pushed_dead_letters` | str(connection) · canonical id (16)                 | dead-letter id (UTF-8)    |
//! |               | or str(connection) · 0xFF · entity tag · str(external id)   | (a record a pull could not decode) |
//! | `status`      | str(connection) · entity tag                                | envelope(SyncStatus)      |
//! | `state`       | str(connection) · str(key)                                  | UTF-8 text                |
//! | `full_reads`  | str(connection) · entity tag · 0x00                        | generation (u64) · state (u8: 0 none, 1 reading) |
//! |               | or str(connection) · entity tag · 0x01 · generation (u64) · str(external id) | empty (read by that full read, or linked during it) |
//! | `meta`        | ASCII name (`format_version`, `outbox_sequence`,            | u32 / u64 big-endian,     |
//! |               | `summary_version`, `pushed_dead_letters_version`)           | `view version/encoding`,  |
//! |               |                                                             | `1` (index built)         |
//!
//! `str(x)` is the UTF-8 length as u16 big-endian followed by the bytes. `match_keys` also lists each
//! record under key `@ref` with the canonical id of every record it references
//! ([`crate::reconcile::index_keys`]).

use crmsync_connectors::canonical::{CanonicalId, ConnectionId, Entity, ExternalId};

/// A key that does not decode (a bug or a corrupt store).
#[derive(Debug, thiserror::Error)]
#[error("malformed {0} key")]
pub struct KeyError(pub &'static str);

fn push_str(key: &mut Vec<u8>, text: &str) {
    let length = u16::try_from(text.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&length.to_be_bytes());
    key.extend_from_slice(&text.as_bytes()[..usize::from(length)]);
}

fn take_str<'a>(bytes: &mut &'a [u8], what: &'static str) -> Result<&'a str, KeyError> {
    if bytes.len() < 2 {
        return Err(KeyError(what));
    }
    let length = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    if bytes.len() < 2 + length {
        return Err(KeyError(what));
    }
    let text = std::str::from_utf8(&bytes[2..2 + length]).map_err(|_| KeyError(what))?;
    *bytes = &bytes[2 + length..];
    Ok(text)
}

fn take_id(bytes: &mut &[u8], what: &'static str) -> Result<CanonicalId, KeyError> {
    let id: [u8; 16] = bytes.get(..16).and_then(|slice| slice.try_into().ok()).ok_or(KeyError(what))?;
    *bytes = &bytes[16..];
    Ok(CanonicalId::from_bytes(id))
}

fn take_entity(bytes: &mut &[u8], what: &'static str) -> Result<Entity, KeyError> {
    let entity = bytes.first().copied().and_then(Entity::from_tag).ok_or(KeyError(what))?;
    *bytes = &bytes[1..];
    Ok(entity)
}

/// `records` key.
pub fn record(entity: Entity, id: CanonicalId) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(entity.tag());
    key.extend_from_slice(&id.to_bytes());
    key
}

/// `records` prefix of one entity.
pub fn record_prefix(entity: Entity) -> Vec<u8> {
    vec![entity.tag()]
}

/// Decodes a `records` key.
pub fn decode_record(mut bytes: &[u8]) -> Result<(Entity, CanonicalId), KeyError> {
    let entity = take_entity(&mut bytes, "record")?;
    let id = take_id(&mut bytes, "record")?;
    if !bytes.is_empty() {
        return Err(KeyError("record"));
    }
    Ok((entity, id))
}

/// `links` key.
pub fn link(connection: &ConnectionId, entity: Entity, external_id: &ExternalId) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + connection.as_str().len() + external_id.as_str().len());
    push_str(&mut key, connection.as_str());
    key.push(entity.tag());
    push_str(&mut key, external_id.as_str());
    key
}

/// `links` prefix of one connection × entity.
pub fn link_prefix(connection: &ConnectionId, entity: Entity) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    push_str(&mut key, connection.as_str());
    key.push(entity.tag());
    key
}

/// Decodes a `links` key.
pub fn decode_link(mut bytes: &[u8]) -> Result<(ConnectionId, Entity, ExternalId), KeyError> {
    let connection = take_str(&mut bytes, "link")?.to_owned();
    let entity = take_entity(&mut bytes, "link")?;
    let external = take_str(&mut bytes, "link")?.to_owned();
    if !bytes.is_empty() {
        return Err(KeyError("link"));
    }
    Ok((ConnectionId::new(connection), entity, ExternalId::new(external)))
}

/// `match_keys` prefix of one key value.
pub fn match_key_prefix(entity: Entity, name: &str, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len() + value.len());
    key.push(entity.tag());
    push_str(&mut key, name);
    push_str(&mut key, value);
    key
}

/// `match_keys` key.
pub fn match_key(entity: Entity, name: &str, value: &str, id: CanonicalId) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + name.len() + value.len() + 16);
    key.push(entity.tag());
    push_str(&mut key, name);
    push_str(&mut key, value);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// Decodes a `match_keys` key.
pub fn decode_match_key(mut bytes: &[u8]) -> Result<(Entity, String, String, CanonicalId), KeyError> {
    let entity = take_entity(&mut bytes, "match key")?;
    let name = take_str(&mut bytes, "match key")?.to_owned();
    let value = take_str(&mut bytes, "match key")?.to_owned();
    let id = take_id(&mut bytes, "match key")?;
    if !bytes.is_empty() {
        return Err(KeyError("match key"));
    }
    Ok((entity, name, value, id))
}

/// `cursors` and `status` key.
pub fn connection_entity(connection: &ConnectionId, entity: Entity) -> Vec<u8> {
    link_prefix(connection, entity)
}

/// `full_reads` key of the state of a connection × entity's full read.
pub fn full_read_state(connection: &ConnectionId, entity: Entity) -> Vec<u8> {
    let mut key = link_prefix(connection, entity);
    key.push(0);
    key
}

/// `full_reads` prefix of every mark of a connection × entity, whatever its generation.
pub fn full_read_marks(connection: &ConnectionId, entity: Entity) -> Vec<u8> {
    let mut key = link_prefix(connection, entity);
    key.push(1);
    key
}

/// `full_reads` prefix of the marks of one generation of a connection × entity's full read.
pub fn full_read_generation(connection: &ConnectionId, entity: Entity, generation: u64) -> Vec<u8> {
    let mut key = full_read_marks(connection, entity);
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

/// `full_reads` key of a vendor id seen by (or linked during) one generation of a full read.
pub fn full_read_mark(connection: &ConnectionId, entity: Entity, generation: u64, external_id: &ExternalId) -> Vec<u8> {
    let mut key = full_read_generation(connection, entity, generation);
    push_str(&mut key, external_id.as_str());
    key
}

/// `outbox` prefix of one connection.
pub fn outbox_prefix(connection: &ConnectionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    push_str(&mut key, connection.as_str());
    key
}

/// `outbox` key.
pub fn outbox(connection: &ConnectionId, sequence: u64) -> Vec<u8> {
    let mut key = outbox_prefix(connection);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// Decodes an `outbox` key.
pub fn decode_outbox(mut bytes: &[u8]) -> Result<(ConnectionId, u64), KeyError> {
    let connection = take_str(&mut bytes, "outbox")?.to_owned();
    let sequence: [u8; 8] = bytes.try_into().map_err(|_| KeyError("outbox"))?;
    Ok((ConnectionId::new(connection), u64::from_be_bytes(sequence)))
}

/// `state` key.
pub fn state(connection: &ConnectionId, name: &str) -> Vec<u8> {
    let mut key = outbox_prefix(connection);
    push_str(&mut key, name);
    key
}

/// `pushed_dead_letters` key: the dead letter of a push of one record to one connection.
pub fn pushed_dead_letter(connection: &ConnectionId, id: CanonicalId) -> Vec<u8> {
    let mut key = Vec::with_capacity(connection.as_str().len() + 18);
    push_str(&mut key, connection.as_str());
    key.extend_from_slice(&id.to_bytes());
    key
}

/// Prefix of the `pushed_dead_letters` keys of one connection's undecodable records. A canonical id's
/// first byte is the top of a UUIDv7 millisecond time, never 0xFF before the year 10889, so the two
/// kinds of keys do not meet.
pub fn undecodable_dead_letter_prefix(connection: &ConnectionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(connection.as_str().len() + 3);
    push_str(&mut key, connection.as_str());
    key.push(0xFF);
    key
}

/// `pushed_dead_letters` key of the dead letter of a record a pull could not decode.
pub fn undecodable_dead_letter(connection: &ConnectionId, entity: Entity, external_id: &ExternalId) -> Vec<u8> {
    let mut key = undecodable_dead_letter_prefix(connection);
    key.push(entity.tag());
    push_str(&mut key, external_id.as_str());
    key
}

/// `meta` key of the store format version.
pub const FORMAT_VERSION: &[u8] = b"format_version";
/// `meta` key of the version of the record summaries (`summaries` tree, same keys as `records`).
pub const SUMMARY_VERSION: &[u8] = b"summary_version";
/// `meta` key of the last outbox sequence number.
pub const OUTBOX_SEQUENCE: &[u8] = b"outbox_sequence";
/// `meta` key recording that `pushed_dead_letters` indexes every dead letter (built on open for a
/// store written before the index existed).
pub const PUSHED_DEAD_LETTERS_VERSION: &[u8] = b"pushed_dead_letters_version";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entity() -> impl Strategy<Value = Entity> {
        prop::sample::select(Entity::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn record_keys_round_trip(entity in entity(), bytes in any::<[u8; 16]>()) {
            let id = CanonicalId::from_bytes(bytes);
            prop_assert_eq!(decode_record(&record(entity, id)).unwrap(), (entity, id));
        }

        #[test]
        fn link_keys_round_trip(connection in "[a-z0-9_]{1,20}", entity in entity(), external in "\\PC{0,40}") {
            let key = link(&ConnectionId::new(connection.clone()), entity, &ExternalId::new(external.clone()));
            let (decoded_connection, decoded_entity, decoded_external) = decode_link(&key).unwrap();
            prop_assert_eq!(decoded_connection.as_str(), connection.as_str());
            prop_assert_eq!(decoded_entity, entity);
            prop_assert_eq!(decoded_external.as_str(), external.as_str());
            prop_assert!(key.starts_with(&link_prefix(&ConnectionId::new(connection), entity)));
        }

        #[test]
        fn match_keys_round_trip(entity in entity(), name in "[a-z+]{1,20}", value in "\\PC{0,40}", bytes in any::<[u8; 16]>()) {
            let id = CanonicalId::from_bytes(bytes);
            let key = match_key(entity, &name, &value, id);
            prop_assert_eq!(decode_match_key(&key).unwrap(), (entity, name.clone(), value.clone(), id));
            prop_assert!(key.starts_with(&match_key_prefix(entity, &name, &value)));
        }

        #[test]
        fn outbox_keys_sort_by_sequence(connection in "[a-z0-9_]{1,20}", left in any::<u64>(), right in any::<u64>()) {
            let id = ConnectionId::new(connection);
            let (left_key, right_key) = (outbox(&id, left), outbox(&id, right));
            prop_assert_eq!(left_key.cmp(&right_key), left.cmp(&right));
            prop_assert_eq!(decode_outbox(&left_key).unwrap(), (id, left));
        }
    }

    #[test]
    fn one_connection_prefix_never_captures_another() {
        let short = outbox_prefix(&ConnectionId::new("sf"));
        let long = outbox(&ConnectionId::new("sf_prod"), 1);
        assert!(!long.starts_with(&short), "length prefixes keep `sf` from matching `sf_prod`");
    }
}
