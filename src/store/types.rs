//! What the store keeps besides records: outbox entries, dead letters, conflicts, sync status, and the
//! [`Commit`] that writes them together.

use crmsync_connectors::Cursor;
use crmsync_connectors::canonical::{CanonicalId, ConnectionId, Entity, ExternalId, Record, Timestamp};
use serde::{Deserialize, Serialize};

use crate::reconcile::Conflict;

/// What a queued push does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxOp {
    /// Create or update the target's copy with the record's current values.
    Upsert,
    /// Delete the target's copy.
    Delete,
    /// Mark the target's copy instead of deleting it (orders: cancelled).
    Mark,
}

/// One queued push. It names the record, not its values: the push sends the values current at push time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Entity.
    pub entity: Entity,
    /// Record.
    pub canonical_id: CanonicalId,
    /// Operation.
    pub op: OutboxOp,
    /// When it was queued.
    pub enqueued_at: Timestamp,
    /// Transient failures so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last transient failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Echo hashes of the values sent to the vendor for this entry whose answer was not committed
    /// (newest last, at most [`OutboxEntry::SENT_KEPT`]): a read-back of one of them after a crash
    /// between the vendor's answer and the commit is recognised as the echo it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<String>,
}

impl OutboxEntry {
    /// How many sent hashes an entry keeps.
    pub const SENT_KEPT: usize = 4;

    /// A new entry.
    pub fn new(entity: Entity, canonical_id: CanonicalId, op: OutboxOp, now: Timestamp) -> Self {
        Self { entity, canonical_id, op, enqueued_at: now, attempts: 0, last_error: None, sent: Vec::new() }
    }
}

/// A record that could not be applied or pushed, kept with its raw payload and the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Id (time-ordered).
    pub id: String,
    /// The connection it came from or was going to.
    pub connection: ConnectionId,
    /// Entity.
    pub entity: Entity,
    /// The canonical record (pushes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_id: Option<CanonicalId>,
    /// The vendor id (pulls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<ExternalId>,
    /// The change or outgoing record, verbatim.
    pub payload: serde_json::Value,
    /// Why (with the vendor's code and message for rejections).
    pub reason: String,
    /// When.
    pub at: Timestamp,
    /// Pushes: fingerprint of what was sent. The record is not sent to the connection again while
    /// what would be sent is the same (it waits for a change of the record or an operator's retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
}

impl DeadLetter {
    /// A new dead letter with a fresh id.
    pub fn new(
        connection: ConnectionId,
        entity: Entity,
        canonical_id: Option<CanonicalId>,
        external_id: Option<ExternalId>,
        payload: serde_json::Value,
        reason: String,
        at: Timestamp,
    ) -> Self {
        Self {
            id: CanonicalId::new().to_string(),
            connection,
            entity,
            canonical_id,
            external_id,
            payload,
            reason,
            at,
            attempt: None,
        }
    }
}

/// One side of a recorded conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictValue {
    /// The value.
    pub value: serde_json::Value,
    /// Who set it (`None`: local).
    pub connection: Option<ConnectionId>,
    /// Vendor modification time.
    pub modified_at: Timestamp,
}

/// A recorded conflict (kept after resolution, for the audit trail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictEntry {
    /// Id (time-ordered).
    pub id: String,
    /// Record.
    pub canonical_id: CanonicalId,
    /// Entity.
    pub entity: Entity,
    /// Field.
    pub field: String,
    /// The value in the store before.
    pub current: ConflictValue,
    /// The value that arrived.
    pub incoming: ConflictValue,
    /// The policy that decided.
    pub policy: String,
    /// Whether the incoming value won.
    pub incoming_won: bool,
    /// Held for a person (manual policy).
    pub held: bool,
    /// Resolved (automatically by policy, or by a person).
    pub resolved: bool,
    /// When it was recorded.
    pub at: Timestamp,
}

impl ConflictEntry {
    /// Records a reconcile conflict.
    pub fn from_reconcile(canonical_id: CanonicalId, entity: Entity, conflict: &Conflict, at: Timestamp) -> Self {
        let side = |side: &crate::reconcile::ConflictSide| ConflictValue {
            value: side.value.clone(),
            connection: side.connection.clone(),
            modified_at: side.modified_at,
        };
        Self {
            id: CanonicalId::new().to_string(),
            canonical_id,
            entity,
            field: conflict.field.clone(),
            current: side(&conflict.current),
            incoming: side(&conflict.incoming),
            policy: conflict.policy.clone(),
            incoming_won: conflict.incoming_won,
            held: conflict.held,
            resolved: !conflict.held,
            at,
        }
    }
}

/// The sync status of one connection × entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Last page committed without error.
    pub last_success: Option<Timestamp>,
    /// Last attempt of any outcome.
    pub last_attempt: Option<Timestamp>,
    /// The last error since the last success.
    pub last_error: Option<String>,
    /// Records read in total.
    pub records_pulled: u64,
    /// Whether the last page caught up.
    pub caught_up: bool,
}

/// A change to a [`SyncStatus`], applied inside a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStatusUpdate {
    /// A page was committed.
    Pulled {
        /// Connection.
        connection: ConnectionId,
        /// Entity.
        entity: Entity,
        /// When.
        at: Timestamp,
        /// Records in the page.
        records: u64,
        /// Whether the source is caught up.
        caught_up: bool,
    },
    /// A pull failed.
    Failed {
        /// Connection.
        connection: ConnectionId,
        /// Entity.
        entity: Entity,
        /// When.
        at: Timestamp,
        /// The error (no secrets).
        message: String,
    },
}

/// Everything one store transaction writes. Applied all-or-nothing by [`super::Store::commit`].
#[derive(Debug, Default)]
pub struct Commit {
    /// Records to write, each with the match-key values it is indexed under.
    pub records: Vec<(Record, Vec<(String, String)>)>,
    /// Ids among `records` that the writer created in this commit, so no earlier version exists (the
    /// store then skips reading one for its index entries). A wrong entry would leave stale index
    /// entries: only ids minted for this commit belong here.
    pub created: foldhash::HashSet<CanonicalId>,
    /// The cursor of a connection × entity (`Some(None)` inside: reset it).
    pub cursor: Option<(ConnectionId, Entity, Option<Cursor>)>,
    /// Outbox entries to append.
    pub outbox: Vec<(ConnectionId, OutboxEntry)>,
    /// Outbox entries done (pushed, rejected, or nothing to push).
    pub outbox_done: Vec<(ConnectionId, u64)>,
    /// Outbox entries that failed transiently: attempts + 1, error kept.
    pub outbox_retry: Vec<(ConnectionId, u64, String)>,
    /// Outbox entries about to be sent, with the echo hash of the values sent ([`OutboxEntry::sent`]).
    pub outbox_sent: Vec<(ConnectionId, u64, String)>,
    /// Conflicts to record.
    pub conflicts: Vec<ConflictEntry>,
    /// Conflicts a person resolved.
    pub conflicts_resolved: Vec<String>,
    /// Dead letters to add.
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters to remove (retried or dropped).
    pub dead_letters_remove: Vec<String>,
    /// Dead letters of records a pull could not decode (each names its vendor id): one replaces the
    /// letter the same record already has.
    pub undecodable_letters: Vec<DeadLetter>,
    /// Records read and decoded again: the letter of their earlier undecodable read goes.
    pub undecodable_resolved: Vec<(ConnectionId, Entity, ExternalId)>,
    /// Sync status updates.
    pub status: Vec<SyncStatusUpdate>,
    /// A page of a full read: its marks, and whether it begins or ends the read ([`FullReadStep`]).
    pub full_read: Option<FullReadStep>,
}

/// What one page of a full read of a connection × entity writes (see [`super::Store::full_read`]).
/// While a full read is in progress, every link of that connection × entity the store adds (a
/// record pushed there, a webhook's, a placeholder's) is marked with its generation too, in the
/// commit that adds it.
#[derive(Debug, Clone)]
pub struct FullReadStep {
    /// Connection.
    pub connection: ConnectionId,
    /// Entity.
    pub entity: Entity,
    /// The read's generation: one more than the last one when `begins`.
    pub generation: u64,
    /// The page starts the read (over): it is in progress from this commit on.
    pub begins: bool,
    /// The page ends the read: it is over after this commit (its inferences are in the same commit).
    pub ends: bool,
    /// The vendor ids the page delivered, undecodable ones included.
    pub seen: Vec<ExternalId>,
}
