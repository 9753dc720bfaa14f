//! The connector contract: what every CRM connector does for the daemon.
//!
//! # Cursors and commits
//!
//! A connector reads one entity as a sequence of [`Page`]s. Each page carries the changes it read,
//! oldest first, and the [`Cursor`] to resume *after* that page. The daemon commits a page's changes and
//! its cursor in **one** store transaction, then asks for the next page with that cursor; after a crash
//! it resumes from the last committed cursor, so a page is either wholly applied with its cursor or not
//! at all. Re-reading a page is harmless because applying a change twice is a no-op.
//!
//! The cursor is opaque to everyone but its connector: a SOQL `nextRecordsUrl` plus the last
//! `(SystemModstamp, Id)` seen, a Zoho `page_token` plus the last `(Modified_Time, id)`, an OData
//! `@odata.deltaLink`. `pull(entity, None)` starts from the configured origin (a full sync).
//! `has_more == false` means "caught up": the scheduler waits for the next tick or a webhook.
//!
//! # Pushes
//!
//! [`Connector::push`] sends a batch of one entity in the vendor's bulk form and reports the outcome of
//! **each** record. A record the vendor rejects is a [`PushOutcome::Rejected`], not a failed batch; an
//! `Err` means the call as a whole failed and may be retried. Pushes are idempotent: records carry their
//! canonical id, which connectors write into the vendor's external-id field and upsert on.
//!
//! # Webhooks
//!
//! [`WebhookParser::parse_webhook`] authenticates and decodes a delivery without network IO. Deliveries
//! that carry only ids become [`WebhookEvent::Fetch`], which the daemon answers by pulling the entity
//! now (its committed cursor reads the change). [`Connector::fetch`] reads records by id for the
//! drift sweep; like a [`Page`], its [`Fetched`] carries the records it could not decode.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalId, ConnectionId, Entity, EntityData, ExternalId, Timestamp, VendorKind};
use crate::error::{ConnectorError, WebhookError};

/// A CRM system the daemon reads changes from and writes changes to.
///
/// Implementations own everything vendor-specific: auth, paging, rate limits, wire formats and the
/// mapping to [`crate::canonical`] types. They never touch the store.
pub trait Connector: WebhookParser + Send + Sync + 'static {
    /// Returns the configured connection name (`sf_prod`) used in store keys and metric labels.
    fn id(&self) -> &ConnectionId;

    /// Returns the vendor family.
    fn kind(&self) -> VendorKind;

    /// Returns the entities this connection is configured to sync.
    fn entities(&self) -> &[Entity];

    /// Returns the largest batch [`Connector::push`] accepts in one vendor call (200 / 100 / 1000).
    fn push_batch_size(&self) -> usize;

    /// Logs in and checks that every configured object and mapped field is reachable.
    fn check(&self) -> impl Future<Output = Result<CheckReport, ConnectorError>> + Send;

    /// Fetches the page of `entity` that follows `cursor` (`None`: from the configured origin).
    fn pull(
        &self,
        entity: Entity,
        cursor: Option<&Cursor>,
    ) -> impl Future<Output = Result<Page, ConnectorError>> + Send;

    /// Fetches the current state of specific records (ids-only webhooks, the drift sweep). Ids the
    /// vendor no longer has come back as deletes; records it returned that cannot be decoded come back
    /// set aside ([`Fetched::undecodable`]), so one bad record does not lose the others' changes.
    fn fetch(&self, entity: Entity, ids: &[ExternalId])
    -> impl Future<Output = Result<Fetched, ConnectorError>> + Send;

    /// Lists every live id with its modification time, page by page (the drift sweep).
    fn list_ids(
        &self,
        entity: Entity,
        cursor: Option<&Cursor>,
    ) -> impl Future<Output = Result<IdPage, ConnectorError>> + Send;

    /// Sends local changes of one entity and reports the outcome of each one.
    fn push(
        &self,
        entity: Entity,
        batch: &[Outgoing],
    ) -> impl Future<Output = Result<PushReport, ConnectorError>> + Send;

    /// Returns the API usage counted so far (calls, budget, the vendor's own usage figures).
    fn usage(&self) -> ApiUsage;

    /// Returns what reading `data` back after pushing it would yield, as far as the vendor can
    /// represent it: a value its vocabulary has no entry for is not written (so it reads back empty),
    /// or is written as the nearest value it has. The daemon recognises its own echoes by this
    /// projection, so a vendor with a coarser vocabulary never "changes" what it was sent.
    fn representable(&self, data: &EntityData) -> EntityData {
        data.clone()
    }
}

/// Authenticates and decodes one webhook delivery. Pure: no network calls.
pub trait WebhookParser: Send + Sync {
    /// Checks the delivery's credentials and turns it into events plus the response the vendor expects.
    fn parse_webhook(&self, delivery: &WebhookDelivery<'_>) -> Result<WebhookReply, WebhookError>;
}

/// Compares two secrets (webhook secrets, the API token) in constant time; lengths leak nothing
/// either, since both are hashed first.
pub fn same_secret(left: &str, right: &str) -> bool {
    use sha2::{Digest, Sha256};
    let left = Sha256::digest(left.as_bytes());
    let right = Sha256::digest(right.as_bytes());
    left.iter().zip(right.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// One inbound webhook request.
#[derive(Debug)]
pub struct WebhookDelivery<'a> {
    /// Request headers.
    pub headers: &'a reqwest::header::HeaderMap,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
}

/// What a webhook delivery asks the daemon to do.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// The delivery carried the record's values.
    Changed(Change),
    /// The delivery carried only ids: fetch these records.
    Fetch {
        /// The entity.
        entity: Entity,
        /// The vendor ids.
        ids: Vec<ExternalId>,
    },
    /// Something changed in this entity: pull now instead of waiting for the next tick.
    PullNow(Entity),
}

/// The events of a delivery and the acknowledgement body the vendor expects on success.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookReply {
    /// What to ingest.
    pub events: Vec<WebhookEvent>,
    /// Response content type (`text/xml; charset=utf-8` for Salesforce's SOAP ack).
    pub content_type: &'static str,
    /// Response body.
    pub body: String,
}

/// One page of changes and the cursor that resumes after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Canonical upserts and deletes, oldest first.
    pub changes: Vec<Change>,
    /// Resume point after this page; committed in the same transaction as `changes`.
    pub cursor: Cursor,
    /// `false`: caught up, wait for the next tick.
    pub has_more: bool,
    /// Records of this page that could not be decoded (a value no reader accepts): they go to the
    /// dead-letter queue with the page, and the pull goes on past them.
    pub undecodable: Vec<Undecodable>,
    /// How many records the read this page belongs to holds in all, when the vendor says so on this
    /// page (Salesforce `totalSize`, Bulk API 2.0 `numberRecordsProcessed`, Dataverse
    /// `@odata.count` below its 5,000 cap); `None` when it does not. It counts the rows the vendor's
    /// query holds, the overlap window re-read included, so a pass may deliver fewer. What shows
    /// progress keeps the last total it was given for the rest of the pass.
    pub total: Option<u64>,
    /// Whether the page belongs to a read of every row of the entity, which the daemon may take as
    /// a complete enumeration once its last page is committed ([`FullRead`]).
    pub full_read: FullRead,
}

/// Where a page stands in a read of every row of an entity from the origin (not from a `start`
/// instant, not filtered): such a read that reaches its last page has delivered every row the
/// vendor held throughout it, so a record the daemon linked before the read began and the read did
/// not deliver is gone from the vendor. A connector says so only when its read is exactly that (a
/// Dataverse change-tracked initial read, also after an expired delta token); the daemon resumes an
/// interrupted one from its committed cursor and infers nothing from one it did not see begin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FullRead {
    /// An incremental read, or one the connector does not vouch for as complete.
    #[default]
    No,
    /// The first page of a full read: the read starts (over) from the origin here.
    Begins,
    /// A later page of the full read the last `Begins` page started.
    Continues,
}

/// A page's rows mapped: the changes, and the records set aside as undecodable.
pub(crate) type Mapped = (Vec<Change>, Vec<Undecodable>);

impl Page {
    /// A page of decoded changes only.
    pub fn new(changes: Vec<Change>, cursor: Cursor, has_more: bool) -> Self {
        Self { changes, cursor, has_more, undecodable: Vec::new(), total: None, full_read: FullRead::No }
    }

    /// The same page with the records of it that could not be decoded ([`Page::undecodable`]).
    pub fn with_undecodable(mut self, undecodable: Vec<Undecodable>) -> Self {
        self.undecodable = undecodable;
        self
    }

    /// The same page marked as part of a full read ([`Page::full_read`]).
    pub fn in_full_read(mut self, full_read: FullRead) -> Self {
        self.full_read = full_read;
        self
    }

    /// The same page with the vendor's total for its read ([`Page::total`]).
    pub fn with_total(mut self, total: Option<u64>) -> Self {
        self.total = total;
        self
    }
}

/// A vendor record read in a pull that could not be decoded: one bad record does not stop its
/// entity. Only what identifies it and why is kept (the record itself may hold fields the
/// connection's field policy denies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undecodable {
    /// The entity.
    pub entity: Entity,
    /// The vendor object (`opportunity`).
    pub object: String,
    /// The vendor's id.
    pub external_id: ExternalId,
    /// The vendor's modification time.
    pub modified_at: Timestamp,
    /// Why it could not be decoded (the field and what it held).
    pub reason: String,
}

impl Undecodable {
    /// Builds the entry for a row whose mapping failed with a [`ConnectorError::Decode`], reading its id
    /// and modification time from `id_field` and `stamp_field`. Any other failure, or a row without
    /// a readable id and stamp (it cannot be named or ordered), stays an error that stops the page.
    pub fn of_row(
        entity: Entity,
        object: &str,
        row: &(impl crate::row::Fields + ?Sized),
        (id_field, stamp_field): (&str, &str),
        error: ConnectorError,
    ) -> Result<Self, ConnectorError> {
        if !matches!(error, ConnectorError::Decode { .. }) {
            return Err(error);
        }
        let (id, stamp) = (row.field(id_field), row.field(stamp_field));
        let id = id.as_ref().and_then(crate::row::Field::as_text).filter(|id| !id.is_empty());
        let stamp = stamp.as_ref().and_then(crate::row::Field::as_text).and_then(|text| text.parse().ok());
        match (id, stamp) {
            (Some(id), Some(modified_at)) => Ok(Self {
                entity,
                object: object.to_owned(),
                external_id: ExternalId::new(id),
                modified_at,
                reason: crate::error::chain(&error),
            }),
            _ => Err(error),
        }
    }
}

/// A resume point, opaque to all but its connector.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(String);

impl Cursor {
    /// Wraps a connector's encoded position.
    pub fn new(encoded: impl Into<String>) -> Self {
        Self(encoded.into())
    }

    /// Encodes any serialisable position as a cursor.
    pub fn encode<T: Serialize>(position: &T) -> Self {
        // Positions are plain structs of strings and numbers; serialising them cannot fail.
        Self(serde_json::to_string(position).unwrap_or_default())
    }

    /// Decodes a position encoded with [`Cursor::encode`].
    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ConnectorError> {
        serde_json::from_str(&self.0).map_err(|error| ConnectorError::decode("saved cursor", error))
    }

    /// Returns the encoded form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

/// Whether a change carries every field of the entity or only some.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Completeness {
    /// Every mapped field was read: an absent value means the vendor has it empty.
    Full,
    /// Only the present fields were sent (webhooks with selected fields): absent means unknown.
    Partial,
}

/// What happened to a vendor record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ChangeKind {
    /// Created or updated, with its canonical values.
    Upsert {
        /// The mapped values.
        data: EntityData,
        /// Whether absent fields are empty or unknown.
        completeness: Completeness,
    },
    /// Deleted in the vendor.
    Delete,
}

/// One vendor record's change, mapped to canonical terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The entity.
    pub entity: Entity,
    /// The vendor object (`Opportunity`).
    pub object: String,
    /// The vendor's id.
    pub external_id: ExternalId,
    /// The vendor's modification time (`SystemModstamp`, `Modified_Time`, `modifiedon`).
    pub modified_at: Timestamp,
    /// The vendor's record version, when it has one (etag, rowversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The canonical id found in the vendor's external-id field (crmsync created or pushed this record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_hint: Option<CanonicalId>,
    /// Upsert or delete.
    pub kind: ChangeKind,
    /// Vendor fields beyond the canonical model, verbatim (kept on the link, never dropped).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    /// Returns the canonical values of an upsert.
    pub fn data(&self) -> Option<&EntityData> {
        match &self.kind {
            ChangeKind::Upsert { data, .. } => Some(data),
            ChangeKind::Delete => None,
        }
    }

    /// Returns whether this is a delete.
    pub fn is_delete(&self) -> bool {
        matches!(self.kind, ChangeKind::Delete)
    }

    /// A vendor record deleted at `at` (deleted-records APIs, delta deletions, ids a fetch no longer finds).
    pub fn deleted(entity: Entity, object: impl Into<String>, external_id: ExternalId, at: Timestamp) -> Self {
        Self {
            entity,
            object: object.into(),
            external_id,
            modified_at: at,
            version: None,
            canonical_hint: None,
            kind: ChangeKind::Delete,
            extra: serde_json::Map::new(),
        }
    }
}

/// The current state of records fetched by id ([`Connector::fetch`]).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Fetched {
    /// Upserts of the records the vendor returned, and deletes of the ids it no longer has.
    pub changes: Vec<Change>,
    /// Records the vendor returned that could not be decoded: dead-lettered by the caller, like a
    /// [`Page`]'s.
    pub undecodable: Vec<Undecodable>,
}

impl Fetched {
    /// Adds one vendor read of the ids `asked`: the records it returned, decoded or set aside, and
    /// a delete (at `at`) of every id asked for that it returned in neither form (the vendor no
    /// longer has it; an undecodable record is still there, so it is no delete).
    pub(crate) fn add_read(
        &mut self,
        (entity, object): (Entity, &str),
        asked: &[ExternalId],
        (found, undecodable): Mapped,
        at: Timestamp,
    ) {
        let returned: std::collections::HashSet<&str> = found
            .iter()
            .map(|change| change.external_id.as_str())
            .chain(undecodable.iter().map(|record| record.external_id.as_str()))
            .collect();
        let gone: Vec<Change> = asked
            .iter()
            .filter(|id| !returned.contains(id.as_str()))
            .map(|id| Change::deleted(entity, object, id.clone(), at))
            .collect();
        self.changes.extend(found);
        self.changes.extend(gone);
        self.undecodable.extend(undecodable);
    }
}

/// One page of live ids (drift sweep).
#[derive(Clone, Debug, PartialEq)]
pub struct IdPage {
    /// Ids with their vendor modification times.
    pub ids: Vec<(ExternalId, Timestamp)>,
    /// Where to continue, or `None` when the listing is complete.
    pub next: Option<Cursor>,
}

/// A canonical change to send to one connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The canonical record (written into the vendor's external-id field).
    pub canonical_id: CanonicalId,
    /// The target's id of the record, when it already has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<ExternalId>,
    /// The vendor version last seen, for conditional updates (`If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<String>,
    /// What to do.
    pub op: OutgoingOp,
}

/// The operation of an [`Outgoing`] change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum OutgoingOp {
    /// Create or update with these values. References carry the canonical id and, when the target
    /// already has the referenced record, the target's id.
    Upsert {
        /// The values to write.
        data: EntityData,
    },
    /// Delete the target's copy.
    Delete,
}

/// The outcome of a push, record by record, in batch order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PushReport {
    /// One result per pushed record.
    pub results: Vec<PushResult>,
}

/// The deletes in `batch` that target a copy the vendor has, as `(position, vendor id)`. A delete of a
/// copy the vendor never had already holds, and is recorded as done in `outcomes`.
pub fn deletes_to_send<'a>(
    batch: &'a [Outgoing],
    outcomes: &mut [Option<PushOutcome>],
) -> Vec<(usize, &'a ExternalId)> {
    let mut deletes = Vec::new();
    for (index, outgoing) in batch.iter().enumerate() {
        match (&outgoing.op, &outgoing.external_id) {
            (OutgoingOp::Delete, Some(id)) => deletes.push((index, id)),
            (OutgoingOp::Delete, None) => outcomes[index] = Some(PushOutcome::Deleted),
            (OutgoingOp::Upsert { .. }, _) => {}
        }
    }
    deletes
}

impl PushReport {
    /// Pairs each record of `batch` with its outcome; a record the vendor answered nothing for is
    /// retried later, never assumed done.
    pub fn from_outcomes(batch: &[Outgoing], outcomes: Vec<Option<PushOutcome>>) -> Self {
        let results = batch
            .iter()
            .zip(outcomes)
            .map(|(outgoing, outcome)| PushResult {
                canonical_id: outgoing.canonical_id,
                outcome: outcome.unwrap_or(PushOutcome::Retry { message: "no result returned for this record".into() }),
            })
            .collect();
        Self { results }
    }
}

/// The outcome of one pushed record.
#[derive(Clone, Debug, PartialEq)]
pub struct PushResult {
    /// The record.
    pub canonical_id: CanonicalId,
    /// What happened.
    pub outcome: PushOutcome,
}

/// What the vendor did with one pushed record.
#[derive(Clone, Debug, PartialEq)]
pub enum PushOutcome {
    /// Created or updated; the vendor's id and version.
    Upserted {
        /// The vendor's id.
        external_id: ExternalId,
        /// `true` when the vendor created the record.
        created: bool,
        /// The version after the write, when the vendor reports it.
        version: Option<String>,
    },
    /// Deleted (or already gone).
    Deleted,
    /// The vendor refused the record (validation): goes to the dead-letter queue.
    Rejected {
        /// The vendor's code (`REQUIRED_FIELD_MISSING`).
        code: String,
        /// The vendor's message.
        message: String,
    },
    /// A transient per-record failure: retry later.
    Retry {
        /// The vendor's message.
        message: String,
    },
}

/// The result of [`Connector::check`].
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CheckReport {
    /// Observations for the operator (`opportunities: change tracking disabled, falling back to modifiedon`).
    pub notes: Vec<String>,
    /// Vendor values seen that no mapping table covers (`Opportunity.StageName = "Discovery"`).
    pub unmapped_values: Vec<String>,
}

/// API usage of one connection.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct ApiUsage {
    /// Calls made by this process.
    pub calls: u64,
    /// Calls counted against the daily budget in the current window.
    pub budget_used: u64,
    /// The configured daily budget, if any.
    pub budget_limit: Option<u64>,
    /// The vendor's own usage report (`api-usage=10018/100000`), when it sends one.
    pub vendor_used: Option<u64>,
    /// The vendor's limit from the same report.
    pub vendor_limit: Option<u64>,
    /// How the vendor has been throttling this connection.
    #[serde(default)]
    pub throttling: Throttling,
}

/// How a connection's vendor throttles it, kept per connection (status, `/metrics`, `sync` summary).
/// Saved through the host under [`Throttling::STATE_KEY`] whenever it changes.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Throttling {
    /// The configured request rate (per second).
    pub configured_per_second: f64,
    /// The rate in force now: lower after throttled answers, back up after quiet periods.
    pub current_per_second: f64,
    /// Throttled answers received (429, Salesforce `REQUEST_LIMIT_EXCEEDED`).
    pub throttled: u64,
    /// Requests that had to wait (the rate limit, or a delay the vendor asked for).
    pub waits: u64,
    /// Time those requests waited, in milliseconds.
    pub waited_ms: u64,
    /// Retries of failed calls (throttling, 5xx, timeouts, truncated bodies).
    pub retries: u64,
    /// When the vendor last throttled a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_throttled_at: Option<Timestamp>,
    /// What the vendor said then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_throttled: Option<String>,
    /// While the vendor's daily limit is reached: no calls before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Timestamp>,
    /// Why calls are paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
}

impl Throttling {
    /// The host state key the snapshot is saved under.
    pub const STATE_KEY: &'static str = "throttling";
}

/// What the daemon provides to connectors: small durable state and telemetry.
///
/// The state is a per-connection key-value space for things a connector must not lose (a rotated
/// refresh token, a Bulk API job id, a notification channel, the daily budget window). `save_state`
/// returns only once the value is durable.
pub trait ConnectorHost: Send + Sync + 'static {
    /// Returns a saved value.
    fn load_state(&self, connection: &ConnectionId, key: &str) -> Result<Option<String>, String>;
    /// Saves a value durably.
    fn save_state(&self, connection: &ConnectionId, key: &str, value: &str) -> Result<(), String>;
    /// Receives telemetry about vendor calls.
    fn observe(&self, event: ApiEvent<'_>);
}

/// Telemetry a connector reports to its host.
#[derive(Debug, Clone, Copy)]
pub enum ApiEvent<'a> {
    /// A vendor call finished (`status` is `None` when no HTTP answer came).
    Call {
        /// Connection.
        connection: &'a ConnectionId,
        /// HTTP status.
        status: Option<u16>,
    },
    /// A retry is about to happen.
    Retry {
        /// Connection.
        connection: &'a ConnectionId,
    },
    /// A request waited for the rate limiter or a delay the vendor asked for.
    RateLimitWait {
        /// Connection.
        connection: &'a ConnectionId,
        /// How long.
        waited: std::time::Duration,
    },
    /// The vendor throttled a request; the connection's rate was lowered.
    Throttled {
        /// Connection.
        connection: &'a ConnectionId,
    },
    /// The connection's request rate changed (lowered on throttling, raised after quiet periods).
    RateChanged {
        /// Connection.
        connection: &'a ConnectionId,
        /// Requests per second now.
        per_second: f64,
    },
    /// Calls to the vendor are paused (daily limit reached) or resumed.
    QuotaPaused {
        /// Connection.
        connection: &'a ConnectionId,
        /// Whether calls are paused now.
        paused: bool,
    },
    /// An access token was fetched.
    TokenRefresh {
        /// Connection.
        connection: &'a ConnectionId,
        /// Whether it worked.
        success: bool,
    },
    /// The vendor reported its usage.
    VendorUsage {
        /// Connection.
        connection: &'a ConnectionId,
        /// Used.
        used: u64,
        /// Limit.
        limit: u64,
    },
    /// A vendor value no mapping covers.
    UnmappedValue {
        /// Connection.
        connection: &'a ConnectionId,
        /// Entity.
        entity: Entity,
    },
}

/// A host that keeps state in memory and ignores telemetry (tests, `simulate`).
#[derive(Default)]
pub struct MemoryHost {
    state: std::sync::Mutex<std::collections::BTreeMap<(String, String), String>>,
}

impl ConnectorHost for MemoryHost {
    fn load_state(&self, connection: &ConnectionId, key: &str) -> Result<Option<String>, String> {
        let state = self.state.lock().map_err(|_| "state lock poisoned".to_owned())?;
        Ok(state.get(&(connection.to_string(), key.to_owned())).cloned())
    }

    fn save_state(&self, connection: &ConnectionId, key: &str, value: &str) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "state lock poisoned".to_owned())?;
        state.insert((connection.to_string(), key.to_owned()), value.to_owned());
        Ok(())
    }

    fn observe(&self, _event: ApiEvent<'_>) {}
}

/// A shared host handle.
pub type SharedHost = Arc<dyn ConnectorHost>;

/// A record delivered within the overlap window, kept in the cursor: its id, its modification time in
/// milliseconds and a digest of what was delivered (`None` in cursors written before digests were kept:
/// such a record is delivered again once if it is read again with the same stamp).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Delivered(String, i64, #[serde(default)] Option<u64>);

/// A digest of what a change delivers (its canonical data, or its deletion): a record read again with
/// the same stamp and the same digest is the same version. The vendor's unmapped fields are left out:
/// they differ between two readings of one version (a Bulk API 2.0 CSV row and a REST JSON row).
fn change_digest(change: &Change) -> u64 {
    use sha2::{Digest, Sha256};
    // Serialising the canonical types cannot fail (string keys, no non-finite floats).
    first_eight(&Sha256::digest(serde_json::to_vec(&change.kind).unwrap_or_default()))
}

/// [`change_digest`] of a record that could not be decoded: why.
fn undecodable_digest(record: &Undecodable) -> u64 {
    use sha2::{Digest, Sha256};
    first_eight(&Sha256::digest(record.reason.as_bytes()))
}

fn first_eight(hash: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (byte, value) in bytes.iter_mut().zip(hash) {
        *byte = *value;
    }
    u64::from_le_bytes(bytes)
}

/// Drops changes already delivered within the overlap window: a re-read of the window, or equal
/// stamps across a page boundary, never delivers a record twice. A record read again with the stamp
/// it was delivered with but other content is delivered: vendors with whole-second modification
/// times (Zoho `Modified_Time`, Dataverse `modifiedon`) stamp two edits within one second alike, and
/// the second must not be taken for a re-read of the first (found by the kill test, issue 17).
/// [`Undecodable`] records are delivered once too (a re-read of the window does not dead-letter them
/// again) and their stamps move the window like upserts.
///
/// `seen` holds the records delivered at or after the window's floor and is kept in the cursor; `max`
/// is the newest upsert stamp delivered (the next lower bound); `other_window` is the lower bound of
/// a second stream re-read with the same overlap (Zoho's deleted records). Records are kept down to
/// the floor of the *older* of the two windows: each stream re-reads its own window, so pruning by
/// the newer one would forget what the older stream is about to re-read. Digests are computed only
/// for the records kept and for the records read again with a kept stamp.
pub fn deliver_page_once(
    (changes, undecodable): (Vec<Change>, Vec<Undecodable>),
    seen: &mut Vec<Delivered>,
    max: &mut Option<Timestamp>,
    other_window: Option<Timestamp>,
    overlap: std::time::Duration,
) -> (Vec<Change>, Vec<Undecodable>) {
    let mut delivered: std::collections::HashMap<(String, i64), Option<u64>> =
        seen.drain(..).map(|Delivered(id, stamp, digest)| ((id, stamp), digest)).collect();
    // Whether the record was delivered before with this stamp and this content; else it is noted.
    let mut repeated = |key: (String, i64), digest: &dyn Fn() -> u64| match delivered.get_mut(&key) {
        Some(known) => {
            let digest = digest();
            let same = *known == Some(digest);
            *known = Some(digest);
            same
        }
        None => {
            delivered.insert(key, None);
            false
        }
    };
    let mut fresh = Vec::with_capacity(changes.len());
    for change in changes {
        let key = (change.external_id.to_string(), change.modified_at.unix_millis());
        if repeated(key, &|| change_digest(&change)) {
            continue;
        }
        if !change.is_delete() && max.is_none_or(|newest| change.modified_at > newest) {
            *max = Some(change.modified_at);
        }
        fresh.push(change);
    }
    let mut set_aside = Vec::with_capacity(undecodable.len());
    for record in undecodable {
        let key = (record.external_id.to_string(), record.modified_at.unix_millis());
        if repeated(key, &|| undecodable_digest(&record)) {
            continue;
        }
        if max.is_none_or(|newest| record.modified_at > newest) {
            *max = Some(record.modified_at);
        }
        set_aside.push(record);
    }
    let floor =
        max.iter().copied().chain(other_window).min().map(|oldest_bound| {
            oldest_bound.saturating_add(overlap, false).unix_millis().div_euclid(1000) * 1000 - 1000
        });
    if let Some(floor) = floor {
        delivered.retain(|(_, stamp), _| *stamp >= floor);
    }
    // The digests of the records just delivered that the window keeps.
    let kept = |stamp: i64| floor.is_none_or(|floor| stamp >= floor);
    for change in fresh.iter().filter(|change| kept(change.modified_at.unix_millis())) {
        let key = (change.external_id.to_string(), change.modified_at.unix_millis());
        if let Some(known @ None) = delivered.get_mut(&key) {
            *known = Some(change_digest(change));
        }
    }
    for record in set_aside.iter().filter(|record| kept(record.modified_at.unix_millis())) {
        let key = (record.external_id.to_string(), record.modified_at.unix_millis());
        if let Some(known @ None) = delivered.get_mut(&key) {
            *known = Some(undecodable_digest(record));
        }
    }
    *seen = delivered.into_iter().map(|((id, stamp), digest)| Delivered(id, stamp, digest)).collect();
    seen.sort();
    (fresh, set_aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Account, EntityData};

    #[test]
    fn a_fetch_makes_deletes_of_ids_returned_in_neither_form_only() {
        let at: Timestamp = "2026-11-02T10:00:00Z".parse().unwrap();
        let upsert = Change {
            kind: ChangeKind::Upsert {
                data: EntityData::Account(Account { name: Some("Acme".into()), ..Account::default() }),
                completeness: Completeness::Full,
            },
            ..Change::deleted(Entity::Account, "Account", ExternalId::new("001A"), at)
        };
        let bad = Undecodable {
            entity: Entity::Account,
            object: "Account".into(),
            external_id: ExternalId::new("001B"),
            modified_at: at,
            reason: "could not decode field AnnualRevenue".into(),
        };
        let asked = [ExternalId::new("001A"), ExternalId::new("001B"), ExternalId::new("001C")];
        let mut fetched = Fetched::default();
        fetched.add_read((Entity::Account, "Account"), &asked, (vec![upsert.clone()], vec![bad.clone()]), at);
        let gone = Change::deleted(Entity::Account, "Account", ExternalId::new("001C"), at);
        assert_eq!(fetched, Fetched { changes: vec![upsert, gone], undecodable: vec![bad] });
    }

    fn deal(amount: i64, at: Timestamp) -> Change {
        use crate::canonical::{Currency, Money, Opportunity};
        Change {
            kind: ChangeKind::Upsert {
                data: EntityData::Opportunity(Opportunity {
                    amount: Some(Money::new(amount.into(), Currency::new("EUR").unwrap())),
                    ..Opportunity::default()
                }),
                completeness: Completeness::Full,
            },
            ..Change::deleted(Entity::Opportunity, "Deals", ExternalId::new("z18"), at)
        }
    }

    /// Found by the kill test (issue 17): a Zoho deal edited twice within one second, read between
    /// the edits; the re-read of the window found the second edit with the first one's stamp and took
    /// it for the record already delivered, so the second amount never arrived.
    #[test]
    fn a_second_edit_stamped_in_the_same_second_is_delivered_and_a_plain_reread_is_not() {
        let second: Timestamp = "2026-11-02T10:00:05Z".parse().unwrap();
        let overlap = std::time::Duration::from_secs(1);
        let (mut seen, mut max) = (Vec::new(), None);
        let first = deliver_page_once((vec![deal(1190, second)], Vec::new()), &mut seen, &mut max, None, overlap);
        assert_eq!(first.0.len(), 1);
        // The cursor is stored and read back between pulls.
        let mut seen: Vec<Delivered> = serde_json::from_str(&serde_json::to_string(&seen).unwrap()).unwrap();
        let again = deliver_page_once((vec![deal(1190, second)], Vec::new()), &mut seen, &mut max, None, overlap);
        assert!(again.0.is_empty(), "the same version read again is not delivered twice");
        let later = deliver_page_once((vec![deal(1220, second)], Vec::new()), &mut seen, &mut max, None, overlap);
        assert_eq!(later.0, vec![deal(1220, second)], "the second edit of that second is delivered");
        let reread = deliver_page_once((vec![deal(1220, second)], Vec::new()), &mut seen, &mut max, None, overlap);
        assert!(reread.0.is_empty());
    }

    #[test]
    fn a_cursor_written_before_digests_reads_and_delivers_its_window_once_more() {
        let second: Timestamp = "2026-11-02T10:00:05Z".parse().unwrap();
        let mut seen: Vec<Delivered> = serde_json::from_str(r#"[["z18", 1793613605000]]"#).unwrap();
        assert_eq!(seen, vec![Delivered("z18".into(), second.unix_millis(), None)]);
        let mut max = Some(second);
        let overlap = std::time::Duration::from_secs(1);
        let page = || (vec![deal(1190, second)], Vec::new());
        assert_eq!(deliver_page_once(page(), &mut seen, &mut max, None, overlap).0.len(), 1);
        assert!(deliver_page_once(page(), &mut seen, &mut max, None, overlap).0.is_empty());
    }
}
