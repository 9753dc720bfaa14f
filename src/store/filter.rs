//! Which index keys the store certainly does not hold, answered from memory.
//!
//! Most index lookups of a pull are misses: a record read for the first time has no link yet and
//! its match-key values name no other record. Each miss is a descent through a sled tree. A
//! [`KeyFilter`] (a Bloom filter) over the `links` keys and the `match_keys` value prefixes answers
//! "certainly absent" for almost all of them without touching sled; "maybe present" goes to sled as
//! before. Only false positives are possible, so a key removed from the store may stay in the filter
//! (one wasted lookup), but every key the store holds must be in it: [`super::Store::commit`] adds the
//! keys it writes once its transaction is applied, and the filter is built from the trees, either on
//! a thread of its own when the daemon opens the store ([`super::Store::build_key_filter_in_background`]:
//! lookups meanwhile ask sled, and the keys committed meanwhile are added when it is done) or by the
//! first lookup.
//!
//! Its memory is bounded by the number of keys: about 10 bits per key (a 1,000,000-record store
//! holds about 4 million index keys: 5 MiB). When more keys than it was sized for were added, a
//! layer twice as large is added instead of rescanning the store (a scalable Bloom filter).

use std::hash::{BuildHasher, Hasher};

/// The filter's hash: foldhash's quality variant (a full avalanche, so the double hashing's two
/// halves are independent), seeded alike in every filter of the process so that two filters of the
/// same keys are equal. It is not keyed against an adversary (neither was the former SipHash with
/// the standard library's fixed keys): a crafted vendor id can only cost a false positive, one
/// sled look-up. Measured against SipHash: README, Performance (issue 16).
const HASHER: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(0x6372_6d73_796e_6331);

/// Probes per key. With 10 bits per key, about 1 % false positives.
const PROBES: u64 = 6;
/// Bits per key the filter is sized for.
const BITS_PER_KEY: u64 = 10;
/// The fewest keys a layer is sized for.
pub(super) const MIN_KEYS: u64 = 1 << 18;

/// The kind of index key (a link and a match-key value prefix never collide as filter entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// A `links` key.
    Link,
    /// A `match_keys` prefix of one value (entity · key · value).
    MatchValue,
}

/// One layer: a fixed bit array.
#[derive(Debug, PartialEq, Eq)]
struct Layer {
    bits: Vec<u64>,
    /// Bits − 1 (a power of two).
    mask: u64,
    /// Keys added.
    keys: u64,
    /// Keys it was sized for.
    capacity: u64,
}

impl Layer {
    fn sized_for(keys: u64) -> Self {
        let capacity = keys.max(MIN_KEYS);
        let bits = capacity.saturating_mul(BITS_PER_KEY).next_power_of_two();
        let words = usize::try_from(bits / 64).unwrap_or(usize::MAX);
        Self { bits: vec![0; words], mask: bits - 1, keys: 0, capacity }
    }

    fn positions(&self, hash: u64) -> impl Iterator<Item = u64> + use<> {
        // Double hashing: h1 + i·h2, h2 odd.
        let (mask, first, step) = (self.mask, hash, hash.rotate_left(32) | 1);
        (0..PROBES).map(move |probe| first.wrapping_add(probe.wrapping_mul(step)) & mask)
    }

    fn insert(&mut self, hash: u64) {
        for bit in self.positions(hash) {
            if let Some(word) = self.bits.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
        self.keys += 1;
    }

    fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|bit| self.bits.get((bit / 64) as usize).is_some_and(|word| word & (1 << (bit % 64)) != 0))
    }
}

/// A Bloom filter over index keys, growing by layers.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct KeyFilter {
    layers: Vec<Layer>,
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys (more may be added: it grows).
    pub(super) fn sized_for(keys: u64) -> Self {
        Self { layers: vec![Layer::sized_for(keys)] }
    }

    fn hash(&self, kind: KeyKind, key: &[u8]) -> u64 {
        let mut hasher = HASHER.build_hasher();
        hasher.write_u8(kind as u8);
        hasher.write(key);
        hasher.finish()
    }

    /// Adds a key the store holds.
    pub(super) fn insert(&mut self, kind: KeyKind, key: &[u8]) {
        let hash = self.hash(kind, key);
        let full = self.layers.last().is_none_or(|layer| layer.keys >= layer.capacity);
        if full {
            let capacity = self.layers.last().map_or(MIN_KEYS, |layer| layer.capacity.saturating_mul(2));
            self.layers.push(Layer::sized_for(capacity));
        }
        if let Some(layer) = self.layers.last_mut() {
            layer.insert(hash);
        }
    }

    /// `false`: the store certainly does not hold the key. `true`: it may.
    pub(super) fn may_contain(&self, kind: KeyKind, key: &[u8]) -> bool {
        let hash = self.hash(kind, key);
        self.layers.iter().any(|layer| layer.may_contain(hash))
    }

    /// The filter's size in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.layers.iter().map(|layer| layer.bits.len() * 8).sum()
    }
}

/// The store's filter.
#[derive(Debug, Default)]
pub(super) enum FilterSlot {
    /// Not built: the first lookup builds it.
    #[default]
    Absent,
    /// Being built on a thread of its own: lookups ask sled, and each commit notes the keys it wrote
    /// here, for the build to add once its pass over the trees is done (the pass may have gone past
    /// them).
    Building(Vec<(KeyKind, Vec<u8>)>),
    /// Built: it answers lookups and each commit adds its keys.
    Ready(KeyFilter),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_added_is_found_and_most_others_are_not() {
        let mut filter = KeyFilter::sized_for(1000);
        for index in 0..300_000u32 {
            filter.insert(KeyKind::Link, &index.to_be_bytes());
        }
        assert!(filter.layers.len() > 1, "it grew by layers past its first capacity");
        for index in 0..300_000u32 {
            assert!(filter.may_contain(KeyKind::Link, &index.to_be_bytes()), "key {index} was added");
        }
        let false_positives =
            (300_000..400_000u32).filter(|index| filter.may_contain(KeyKind::Link, &index.to_be_bytes())).count();
        assert!(false_positives < 5_000, "{false_positives} of 100,000 absent keys reported present");
        let other_kind =
            (0..100_000u32).filter(|index| filter.may_contain(KeyKind::MatchValue, &index.to_be_bytes())).count();
        assert!(other_kind < 5_000, "a link key is not a match-key entry ({other_kind} of 100,000)");
    }
}
