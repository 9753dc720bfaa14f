//! Canonical records as the store keeps them: data, links to every vendor copy, per-field provenance
//! and tombstones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CanonicalId, ConnectionId, Entity, EntityData, ExternalId, Timestamp};

/// Where one field's current value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The connection that supplied the value (`None`: set locally, by the CLI or API).
    pub connection: Option<ConnectionId>,
    /// The vendor's modification time of the change that carried it.
    pub modified_at: Timestamp,
    /// The vendor's record version (etag, rowversion), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Why a vendor record was joined to its canonical record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum MatchReason {
    /// First seen from this vendor record: it created the canonical record.
    Created,
    /// The vendor record carried crmsync's canonical id in its external-id field.
    ExternalIdField,
    /// The record was created in the vendor by crmsync's push.
    Pushed,
    /// A configured match key matched (`email`, `name+domain`, …) with this normalised value.
    MatchKey {
        /// The key's name.
        key: String,
        /// The normalised value that matched.
        value: String,
    },
    /// A person joined it (`crmsync identity merge`).
    Manual,
}

/// One vendor copy of a canonical record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The connection that holds the copy.
    pub connection: ConnectionId,
    /// The vendor object (`Opportunity`, `Deals`, `opportunities`).
    pub object: String,
    /// The vendor's id.
    pub external_id: ExternalId,
    /// The vendor modification time last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<Timestamp>,
    /// The vendor version last seen (etag, rowversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_version: Option<String>,
    /// Hash of the field values crmsync last pushed there (echo suppression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_hash: Option<String>,
    /// Why the copy was joined.
    pub matched_by: MatchReason,
    /// Vendor fields beyond the canonical model, kept verbatim.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A canonical record: one customer, lead, deal or order, whichever CRMs know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Stable canonical id.
    pub id: CanonicalId,
    /// Field values.
    pub data: EntityData,
    /// Per-field provenance, keyed by field name.
    #[serde(default)]
    pub provenance: BTreeMap<String, Provenance>,
    /// Every vendor copy.
    #[serde(default)]
    pub links: Vec<Link>,
    /// Tombstone: when the record was deleted (deletes are records, not absences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Set when a person merged this record into another one; readers follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<CanonicalId>,
    /// When crmsync first stored the record.
    pub created_at: Timestamp,
    /// When crmsync last changed the record.
    pub updated_at: Timestamp,
}

impl Record {
    /// Creates an empty record for an entity.
    pub fn new(id: CanonicalId, entity: Entity, now: Timestamp) -> Self {
        Self {
            id,
            data: EntityData::empty(entity),
            provenance: BTreeMap::new(),
            links: Vec::new(),
            deleted_at: None,
            merged_into: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Returns the record's entity.
    pub fn entity(&self) -> Entity {
        self.data.entity()
    }

    /// Returns the link to a connection's copy, if any.
    pub fn link(&self, connection: &ConnectionId) -> Option<&Link> {
        self.links.iter().find(|link| &link.connection == connection)
    }

    /// Returns the mutable link to a connection's copy, if any.
    pub fn link_mut(&mut self, connection: &ConnectionId) -> Option<&mut Link> {
        self.links.iter_mut().find(|link| &link.connection == connection)
    }

    /// Returns whether the record is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}
