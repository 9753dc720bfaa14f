//! The single writer: every change to the store goes through one [`Ingestor`] task.
//!
//! Pull loops, webhooks, push results and local operations (CLI, API) send [`Batch`]es over a bounded
//! channel. The ingestor reconciles each batch (pure [`crate::reconcile`]), then commits records,
//! links, the page's cursor, the fan-out to the outbox, conflicts and dead letters in **one** store
//! transaction (a pulled page of more than 250 records in parts, each committed as soon as its
//! records are reconciled, the cursor with the last: see `BatchWriter::take_part`). Pull loops
//! `submit().await` (they wait when the channel is full); webhooks use
//! [`IngestHandle::try_submit`] and answer `503` + `Retry-After` when it is full. A webhook batch is
//! flushed to disk before its reply, so an acknowledged delivery is never lost.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crmsync_connectors::canonical::{
    CanonicalId, ConnectionId, Entity, EntityData, ExternalId, MatchReason, Order, OrderStatus, Record, RecordRef,
    Timestamp,
};
use crmsync_connectors::settings::FieldPolicy;
use crmsync_connectors::{Change, ChangeKind, Cursor, Fetched, FullRead, PushOutcome, Undecodable};
use tokio::sync::{mpsc, oneshot};

pub mod operator;

use crate::reconcile::{self, DeleteAction, Outcome, Rules};
use crate::store::{
    Commit, ConflictEntry, ConflictValue, DeadLetter, FullReadStep, OutboxEntry, OutboxOp, Store, StoreError,
    SyncStatusUpdate,
};
use crate::telemetry;

/// How far into the future a vendor's modification time is believed. A later time (a broken clock, a
/// forged or replayed delivery with a `SystemModstamp` in 2030) would win every later real change
/// under newest-wins and make every later read of the record look stale, so it is clamped to
/// now + this skew and counted ([`telemetry::CLAMPED_TIMES`]). Vendor clocks that are merely a
/// little ahead keep their exact times.
pub const MAX_FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// The payload key of the dead letter of a record a pull could not decode (`{"undecodable": …}`).
pub const UNDECODABLE: &str = "undecodable";

/// A map keyed by canonical ids, which crmsync mints (UUIDv7) and no vendor or webhook input
/// chooses: hashed with foldhash instead of SipHash (no flooding to defend against; SipHash was
/// about 4 % of a pass's instructions, README → Performance).
pub type IdMap<V> = foldhash::HashMap<CanonicalId, V>;

/// One unit of work for the writer.
#[derive(Debug)]
pub enum Batch {
    /// A page read by a pull loop, with the cursor that resumes after it.
    Pulled {
        /// Source connection.
        connection: ConnectionId,
        /// Entity pulled.
        entity: Entity,
        /// The page's changes.
        changes: Vec<Change>,
        /// Cursor after the page (`None`: reset the cursor, a full resync).
        cursor: Option<Cursor>,
        /// Whether the source is caught up after this page.
        caught_up: bool,
        /// Records of the page that could not be decoded: dead-lettered with it.
        undecodable: Vec<Undecodable>,
        /// Whether the page belongs to a full read ([`FullRead`]): the last page of one that began
        /// in this store also tombstones the records it did not deliver.
        full_read: FullRead,
    },
    /// Changes delivered by a webhook (or deletes the drift sweep repairs). Flushed before the reply.
    Delivered {
        /// Source connection.
        connection: ConnectionId,
        /// Changes.
        changes: Vec<Change>,
    },
    /// Records fetched by id (the drift sweep): the changes, and the records the connector could
    /// not decode, dead-lettered with their vendor id and the reason. Flushed before it is answered.
    Fetched {
        /// Source connection.
        connection: ConnectionId,
        /// What the fetch returned.
        fetched: Fetched,
    },
    /// The outcome of a push.
    Pushed {
        /// Target connection.
        connection: ConnectionId,
        /// Entity pushed.
        entity: Entity,
        /// One per pushed record.
        results: Vec<PushedRecord>,
    },
    /// Outbox entries about to be pushed, with the echo hash of the values sent (sequences, hash).
    /// Flushed before the push is sent.
    Sending {
        /// Target connection.
        connection: ConnectionId,
        /// The outbox sequences of each record and the hash of what is sent for it.
        sent: Vec<(Vec<u64>, String)>,
    },
    /// Outbox entries with nothing to send (the record is gone, a delete of a copy the connection never
    /// had, or a dead-lettered record that would be sent the same): done without a vendor call.
    Skipped {
        /// Target connection.
        connection: ConnectionId,
        /// Their sequence numbers.
        sequences: Vec<u64>,
    },
    /// What a person does through the CLI or the API (orders, conflicts, dead letters, identity),
    /// answered on `reply` once committed and flushed.
    Operator {
        /// The action.
        action: operator::OperatorAction,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<operator::OperatorOutcome, operator::OperatorError>>,
    },
    /// A sync error to record in the status of a connection × entity.
    Failed {
        /// Connection.
        connection: ConnectionId,
        /// Entity.
        entity: Entity,
        /// The error, already free of secrets.
        message: String,
    },
}

/// What happened to one pushed record.
#[derive(Debug, Clone)]
pub struct PushedRecord {
    /// Outbox sequence numbers this push covered (the same record may have been queued several times).
    pub sequences: Vec<u64>,
    /// The record.
    pub canonical_id: CanonicalId,
    /// Hash of the values pushed (echo suppression).
    pub pushed_hash: Option<String>,
    /// The vendor's verdict.
    pub outcome: PushOutcome,
    /// What was sent, for the dead-letter queue.
    pub payload: serde_json::Value,
    /// Fingerprint of what was sent: a rejected record is not sent again while what would be sent
    /// is the same (see [`crate::scheduler::push`]).
    pub attempt: Option<String>,
}

/// Counts of one applied batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Records tombstoned.
    pub deleted: u64,
    /// Echoes of our own pushes.
    pub echoes: u64,
    /// Re-reads and duplicates that changed nothing.
    pub unchanged: u64,
    /// Changes older than what was already applied.
    pub stale: u64,
    /// Changes dead-lettered.
    pub dead_lettered: u64,
    /// Outbox entries queued.
    pub queued: u64,
    /// Conflicts recorded.
    pub conflicts: u64,
    /// Pushed records confirmed.
    pub pushed: u64,
    /// Pushed records the vendor rejected.
    pub rejected: u64,
    /// Pushed records to retry.
    pub retried: u64,
}

impl IngestStats {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: &IngestStats) {
        self.created += other.created;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.echoes += other.echoes;
        self.unchanged += other.unchanged;
        self.stale += other.stale;
        self.dead_lettered += other.dead_lettered;
        self.queued += other.queued;
        self.conflicts += other.conflicts;
        self.pushed += other.pushed;
        self.rejected += other.rejected;
        self.retried += other.retried;
    }

    /// Records read that were applied or recognised.
    pub fn records_in(&self) -> u64 {
        self.created + self.updated + self.deleted + self.echoes + self.unchanged + self.stale + self.dead_lettered
    }
}

/// Why a batch was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The queue is full (webhooks answer 503 + Retry-After).
    #[error("ingest queue is full")]
    Saturated,
    /// The writer has stopped (shutdown).
    #[error("ingest writer has stopped")]
    Stopped,
    /// The store refused the commit.
    #[error("store commit failed")]
    Store(#[from] StoreError),
}

type Reply = oneshot::Sender<Result<IngestStats, IngestError>>;

/// The sending side of the writer.
#[derive(Clone)]
pub struct IngestHandle {
    sender: mpsc::Sender<(Batch, Reply)>,
    committed: Arc<AtomicU64>,
    busy_nanos: Arc<AtomicU64>,
    caught_up: Arc<CaughtUp>,
}

/// Whether the writer is waiting on an empty queue, or else when it last found the queue empty
/// (it had caught up with everything submitted).
struct CaughtUp(std::sync::Mutex<Option<tokio::time::Instant>>);

impl CaughtUp {
    fn now() -> Self {
        Self(std::sync::Mutex::new(Some(tokio::time::Instant::now())))
    }

    fn set(&self, value: Option<tokio::time::Instant>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    /// How long since the writer last had nothing to do (zero while it waits).
    fn behind(&self) -> std::time::Duration {
        let last = *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.map(|last| last.elapsed()).unwrap_or_default()
    }
}

/// How long the writer must have been behind (its queue never empty) while the queue is full before
/// the ingest counts as saturated (`/readyz`): a burst that fills the queue and is drained within
/// this time is not a failure.
pub const SATURATED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl IngestHandle {
    /// Returns how many vendor records the writer has committed since it started (what `bench`
    /// plots memory against).
    pub fn records_committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Returns how long the writer has spent applying batches (reconcile and commit, flushes
    /// included) since it started: next to a pass's wall time, whether the single writer set its
    /// pace (what `bench` reports).
    pub fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }

    /// Whether the writer's queue is full (webhooks get 503 then).
    pub fn is_full(&self) -> bool {
        self.sender.capacity() == 0
    }

    /// How long the ingest has been saturated (`/readyz`): `Some` when the queue is full now and the
    /// writer has not once found it empty for [`SATURATED_AFTER`] or more, with how long it has
    /// been behind. A full queue the writer emptied moments ago (a burst) is not saturation.
    pub fn saturated_for(&self) -> Option<std::time::Duration> {
        if !self.is_full() {
            return None;
        }
        let behind = self.caught_up.behind();
        (behind >= SATURATED_AFTER).then_some(behind)
    }

    /// Submits a batch, waiting for queue space, and returns once it is committed.
    pub async fn submit(&self, batch: Batch) -> Result<IngestStats, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.sender.send((batch, reply)).await.map_err(|_| IngestError::Stopped)?;
        telemetry::record_ingest_queue(self.sender.max_capacity() - self.sender.capacity());
        answer.await.map_err(|_| IngestError::Stopped)?
    }

    /// Applies an operator action through the writer and returns its outcome once it is committed
    /// and flushed (waiting for queue space like a pull).
    pub async fn operate(
        &self,
        action: operator::OperatorAction,
    ) -> Result<operator::OperatorOutcome, operator::OperatorError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Batch::Operator { action, reply }).await.map_err(|error| match error {
            IngestError::Store(error) => operator::OperatorError::Store(error),
            IngestError::Saturated | IngestError::Stopped => operator::OperatorError::Stopped,
        })?;
        answer.await.map_err(|_| operator::OperatorError::Stopped)?
    }

    /// Submits a batch only if the queue has room, and returns once it is committed and flushed.
    pub async fn try_submit(&self, batch: Batch) -> Result<IngestStats, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send((batch, reply)).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => IngestError::Saturated,
            mpsc::error::TrySendError::Closed(_) => IngestError::Stopped,
        })?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }
}

/// What the writer needs besides the store.
#[derive(Clone)]
pub struct IngestRules {
    /// Reconciliation rules (policies, match keys, routes).
    pub rules: Arc<Rules>,
    /// Privacy lists per connection.
    pub fields: Arc<BTreeMap<ConnectionId, FieldPolicy>>,
    /// What the writer remembers between batches: the echo hashes committed push answers replaced.
    pub superseded: Arc<SupersededPushes>,
}

impl IngestRules {
    /// Builds the rules and each connection's privacy lists from configuration.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let fields = config.connections.iter().map(|(id, connection)| (id.clone(), connection.settings.fields.clone()));
        Self {
            rules: Arc::new(Rules::from_config(config)),
            fields: Arc::new(fields.collect()),
            superseded: Arc::default(),
        }
    }
}

/// The echo hashes a committed push answer replaced on a link (the hash the link held before, and
/// the hashes sent for the outbox entries it confirmed), per connection and record, kept in memory
/// until the copy is next read. A pull's page read before that push reached the vendor and applied
/// after its answer was committed holds the copy as an earlier push left it: compared with the new
/// hash it is not an echo, and applied as a change it would bring in what the vendor derived by
/// itself (Salesforce's stage probability) although every value crmsync pushed in it is its own.
/// Such a read is older than what the connection holds now: it is ignored as stale. A read already
/// committed since the answer (the link's last vendor time moved on) ends the entry, so a later real
/// edit back to an earlier value is a change as ever. In memory only: the page and its commit are
/// in one process, and what a process killed before the answer had sent stays in the outbox
/// ([`crate::store::OutboxEntry::sent`]).
#[derive(Debug, Default)]
pub struct SupersededPushes(std::sync::Mutex<SupersededCopies>);

#[derive(Debug, Default)]
struct SupersededCopies {
    /// Per copy: the link's last vendor time when the answer was committed, and the replaced hashes.
    by_copy: HashMap<(ConnectionId, CanonicalId), (Option<Timestamp>, Vec<String>)>,
    /// Copies in the order they were first remembered, the oldest forgotten first.
    order: std::collections::VecDeque<(ConnectionId, CanonicalId)>,
}

impl SupersededPushes {
    /// How many copies are remembered: far more than pushes answered while one page is read.
    const KEPT: usize = 4096;

    fn remember(&self, connection: &ConnectionId, id: CanonicalId, last_read: Option<Timestamp>, hashes: Vec<String>) {
        let mut copies = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (connection.clone(), id);
        if copies.by_copy.insert(key.clone(), (last_read, hashes)).is_none() {
            copies.order.push_back(key);
        }
        while copies.order.len() > Self::KEPT {
            if let Some(oldest) = copies.order.pop_front() {
                copies.by_copy.remove(&oldest);
            }
        }
    }

    /// The hashes replaced on this copy's link, if no read of it was committed since (`last_read`
    /// is still the link's last vendor time).
    fn replaced(&self, connection: &ConnectionId, id: CanonicalId, last_read: Option<Timestamp>) -> Vec<String> {
        let copies = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match copies.by_copy.get(&(connection.clone(), id)) {
            Some((seen, hashes)) if *seen == last_read => hashes.clone(),
            _ => Vec::new(),
        }
    }
}

/// The writer task.
pub struct Ingestor {
    store: Store,
    rules: IngestRules,
    receiver: mpsc::Receiver<(Batch, Reply)>,
    committed: Arc<AtomicU64>,
    busy_nanos: Arc<AtomicU64>,
    caught_up: Arc<CaughtUp>,
}

impl Ingestor {
    /// Creates the writer and its handle; run it with [`Ingestor::run`].
    pub fn new(store: Store, rules: IngestRules, capacity: usize) -> (Self, IngestHandle) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let committed = Arc::new(AtomicU64::new(0));
        let busy_nanos = Arc::new(AtomicU64::new(0));
        let caught_up = Arc::new(CaughtUp::now());
        (
            Self {
                store,
                rules,
                receiver,
                committed: committed.clone(),
                busy_nanos: busy_nanos.clone(),
                caught_up: caught_up.clone(),
            },
            IngestHandle { sender, committed, busy_nanos, caught_up },
        )
    }

    /// Applies an operator action before the writer runs (start-up housekeeping: nothing else writes
    /// yet, so this is still the one writer).
    pub fn apply_at_start(
        &self,
        action: operator::OperatorAction,
    ) -> Result<operator::OperatorOutcome, operator::OperatorError> {
        operator::apply(&self.store, &self.rules, action, Timestamp::now())
    }

    /// Applies batches until every handle is dropped, then flushes.
    pub async fn run(mut self) {
        loop {
            // Each time the queue is found empty the writer has caught up (what `/readyz` judges
            // saturation by); so it has when a batch ends a wait on an empty queue.
            let first = match self.receiver.try_recv() {
                Ok(first) => first,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.caught_up.set(None);
                    let Some(first) = self.receiver.recv().await else { break };
                    self.caught_up.set(Some(tokio::time::Instant::now()));
                    first
                }
            };
            // Group commit: batches already waiting behind this one are applied with it and share
            // one flush. A flush (fsync) costs far more than a small commit, so webhook deliveries
            // arriving together no longer wait for one flush each.
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match self.receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let (batches, replies): (Vec<Batch>, Vec<Reply>) = group.into_iter().unzip();
            let store = self.store.clone();
            let rules = self.rules.clone();
            let count = batches.len();
            let started = tokio::time::Instant::now();
            let results = tokio::task::spawn_blocking(move || apply_group(&store, &rules, batches))
                .await
                .unwrap_or_else(|join_error| {
                    let message = format!("ingest task failed: {join_error}");
                    (0..count).map(|_| Err(IngestError::Store(StoreError::Internal(message.clone())))).collect()
                });
            let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.busy_nanos.fetch_add(busy, Ordering::Relaxed);
            for (result, reply) in results.into_iter().zip(replies) {
                match &result {
                    Ok(stats) => {
                        self.committed.fetch_add(stats.records_in(), Ordering::Relaxed);
                    }
                    Err(error) => tracing::error!(error = %error, "ingest batch failed"),
                }
                let _ = reply.send(result);
            }
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(error = %error, "final store flush failed");
        }
    }
}

/// The most batches one group commit takes.
const GROUP_MAX: usize = 64;

/// The records after which a pulled page's writer commits what it has reconciled so far (a part
/// ends with the change that reaches it, so it holds a few more when that change also rewrites
/// others). A sled transaction keeps every node it replaces until it ends, so its memory grows with
/// its size: a 10,000-row page in one transaction held about 100 MiB at its end, and parts of 250
/// instead of 1,000 lowered the peak of `crmsync bench --records 100000` by about 25 MiB at the same
/// CPU per record (README Performance). Committed as soon as they are reconciled, the writer holds
/// a part's records, not a page's (up to 10,000).
const COMMIT_RECORDS: usize = 250;

/// What a pulled page of a full read writes ([`FullReadStep`]), or `None` when it takes part in
/// none: an incremental page, the first read of a connection × entity the store links nothing to
/// yet (nothing it could find gone, so nothing to mark), or a later page of a read this store never
/// saw begin (its earlier pages may have been read by a binary that kept no marks).
fn full_read_step(
    store: &Store,
    connection: &ConnectionId,
    entity: Entity,
    full_read: FullRead,
    caught_up: bool,
    changes: &[Change],
    undecodable: &[Undecodable],
) -> Result<Option<FullReadStep>, StoreError> {
    let state = store.full_read(connection, entity)?;
    let (generation, begins) = match full_read {
        FullRead::No => return Ok(None),
        FullRead::Begins if !state.in_progress && !store.has_links(connection, entity)? => return Ok(None),
        FullRead::Begins => (state.generation + 1, true),
        FullRead::Continues => match state.reading() {
            Some(generation) => (generation, false),
            None => return Ok(None),
        },
    };
    let seen = changes
        .iter()
        .filter(|change| change.entity == entity)
        .map(|change| change.external_id.clone())
        .chain(undecodable.iter().filter(|record| record.entity == entity).map(|record| record.external_id.clone()))
        .collect();
    Ok(Some(FullReadStep { connection: connection.clone(), entity, generation, begins, ends: caught_up, seen }))
}

/// The deletes a complete full read infers: every live record linked to its connection × entity
/// that neither the read delivered nor the store linked while it was in progress (the same
/// comparison as the drift sweep's, against the read's marks instead of a listing of ids).
///
/// Why this is safe: a vendor row that existed when the read began and still exists at its end is
/// delivered by the read (the connector vouches for that: Dataverse pages a query's rows as
/// "consecutive pages ... representing all the records that match", learn.microsoft.com/power-apps/developer/data-platform/fetchxml/page-results,
/// and its change-tracked read takes no `$orderby`, crm-apis.md §3.3, so a row changed meanwhile
/// keeps its place in the key order the paging cookie follows). So a link the store held before
/// the read began and that the read did not deliver names a row deleted since (before the read got
/// to it; a row deleted after it was delivered is in the next delta's `$deletedEntity` rows). Links
/// the store added after the read began are marked as they are added (`Store::commit`), whatever
/// added them: a record crmsync pushed to the vendor meanwhile (which the read may have passed
/// already), one a webhook or the drift sweep stored, a placeholder; they are never taken as gone.
/// A row created in the vendor during the read and not delivered by it is delivered by the next
/// delta read. The marks are committed with each page and its cursor, so a read resumed from its
/// committed cursor after a kill or an error has every mark of its earlier pages; a read that stops
/// before its last page infers nothing, and one begun again starts a new generation.
fn gone_after_full_read(store: &Store, step: &FullReadStep) -> Result<Vec<Change>, StoreError> {
    let page: std::collections::HashSet<&ExternalId> = step.seen.iter().collect();
    let (connection, entity, generation) = (&step.connection, step.entity, step.generation);
    let compared = crate::scheduler::sweep::compare_links(store, entity, connection, |link| {
        let seen = page.contains(&link.external_id)
            || store.seen_in_full_read(connection, entity, generation, &link.external_id)?;
        Ok(if seen { crate::scheduler::sweep::Standing::Current } else { crate::scheduler::sweep::Standing::Gone })
    })
    .map_err(|error| match error {
        IngestError::Store(error) => error,
        other => StoreError::Internal(other.to_string()),
    })?;
    if !compared.deletes.is_empty() {
        tracing::warn!(
            connection = %connection,
            entity = %entity,
            deleted = compared.deletes.len(),
            linked = compared.store_ids,
            first = %compared.deletes.first().map(|change| change.external_id.as_str()).unwrap_or_default(),
            "full read complete: records it did not deliver are gone from the vendor, deleted here"
        );
    }
    Ok(compared.deletes)
}

/// Applies batches in order, each in its own commit, then flushes once if any of them must be
/// durable before its reply (webhook deliveries, pushes about to be sent). A failed flush fails every batch that needed it:
/// none of them is acknowledged.
fn apply_group(store: &Store, rules: &IngestRules, batches: Vec<Batch>) -> Vec<Result<IngestStats, IngestError>> {
    let started = tokio::time::Instant::now();
    // After a storage failure (a full disk), the database is opened again once space returns:
    // before anything of this group is read, so no decision rests on writes that were never flushed.
    store.reopen_if_needed();
    let mut results = Vec::with_capacity(batches.len());
    let mut durable = Vec::with_capacity(batches.len());
    for batch in batches {
        durable.push(matches!(batch, Batch::Delivered { .. } | Batch::Fetched { .. } | Batch::Sending { .. }));
        results.push(apply_batch(store, rules, batch, Timestamp::now()));
    }
    let needs_flush = results.iter().zip(&durable).any(|(result, durable)| *durable && result.is_ok());
    if needs_flush && let Err(error) = store.flush() {
        let message = error.to_string();
        for (result, durable) in results.iter_mut().zip(&durable) {
            if *durable && result.is_ok() {
                *result = Err(IngestError::Store(StoreError::Internal(format!("flush failed: {message}"))));
            }
        }
    }
    telemetry::record_commit(started.elapsed());
    results
}

/// Applies one batch to the store in one commit (an operator batch flushes before it answers; a
/// pulled page commits in parts of about [`COMMIT_RECORDS`] records).
fn apply_batch(store: &Store, rules: &IngestRules, batch: Batch, now: Timestamp) -> Result<IngestStats, IngestError> {
    apply_batch_in_parts(store, rules, batch, now, COMMIT_RECORDS)
}

/// [`apply_batch`], a pulled page committed in parts of about `part_records` records.
fn apply_batch_in_parts(
    store: &Store,
    rules: &IngestRules,
    batch: Batch,
    now: Timestamp,
    part_records: usize,
) -> Result<IngestStats, IngestError> {
    match batch {
        Batch::Pulled { connection, entity, changes, cursor, caught_up, undecodable, full_read } => {
            let step = full_read_step(store, &connection, entity, full_read, caught_up, &changes, &undecodable)?;
            // What the read's end infers is compared with the store as it was before this page:
            // the page's parts are committed while it is applied, and the records they link were
            // delivered by the read (`step.seen`).
            let gone = match step.as_ref().filter(|step| step.ends) {
                Some(step) => gone_after_full_read(store, step)?,
                None => Vec::new(),
            };
            let mut writer = BatchWriter::new(store, rules, &connection, now);
            for change in changes.into_iter().chain(gone) {
                writer.apply_change(change)?;
                if writer.pending_records() >= part_records {
                    store.commit(writer.take_part())?;
                }
            }
            for record in undecodable {
                writer.set_aside(record);
            }
            let (mut commit, stats) = writer.into_commit();
            let prune = step.as_ref().is_some_and(|step| step.begins || step.ends);
            commit.full_read = step;
            commit.cursor = Some((connection.clone(), entity, cursor));
            commit.status.push(SyncStatusUpdate::Pulled {
                connection: connection.clone(),
                entity,
                at: now,
                records: stats.records_in(),
                caught_up,
            });
            store.commit(commit)?;
            if prune {
                // The marks of the read that ended (or of one begun again) decide nothing any more.
                if let Err(error) = store.prune_full_read_marks(&connection, entity) {
                    tracing::warn!(connection = %connection, entity = %entity, error = %error, "could not remove the marks of an earlier full read; the next one removes them");
                }
            }
            Ok(stats)
        }
        Batch::Delivered { connection, changes } => {
            let mut writer = BatchWriter::new(store, rules, &connection, now);
            for change in changes {
                writer.apply_change(change)?;
            }
            let (commit, stats) = writer.into_commit();
            store.commit(commit)?;
            Ok(stats)
        }
        Batch::Fetched { connection, fetched: Fetched { changes, undecodable } } => {
            let mut writer = BatchWriter::new(store, rules, &connection, now);
            for change in changes {
                writer.apply_change(change)?;
            }
            for record in undecodable {
                writer.set_aside(record);
            }
            let (commit, stats) = writer.into_commit();
            store.commit(commit)?;
            Ok(stats)
        }
        Batch::Pushed { connection, entity, results } => apply_pushed(store, rules, &connection, entity, results, now),
        Batch::Sending { connection, sent } => {
            let mut commit = Commit::default();
            for (sequences, hash) in sent {
                commit
                    .outbox_sent
                    .extend(sequences.into_iter().map(|sequence| (connection.clone(), sequence, hash.clone())));
            }
            store.commit(commit)?;
            Ok(IngestStats::default())
        }
        Batch::Skipped { connection, sequences } => {
            let mut commit = Commit::default();
            commit.outbox_done.extend(sequences.into_iter().map(|sequence| (connection.clone(), sequence)));
            store.commit(commit)?;
            Ok(IngestStats::default())
        }
        Batch::Operator { action, reply } => {
            let result = operator::apply(store, rules, action, now);
            if let Err(operator::OperatorError::Store(error)) = &result {
                tracing::error!(error = %error, "operator action failed");
            }
            // The person is answered; the writer goes on whatever the outcome.
            let _ = reply.send(result);
            Ok(IngestStats::default())
        }
        Batch::Failed { connection, entity, message } => {
            let mut commit = Commit::default();
            commit.status.push(SyncStatusUpdate::Failed { connection, entity, at: now, message });
            store.commit(commit)?;
            Ok(IngestStats::default())
        }
    }
}

/// Applies a batch of changes from one connection, keeping the records it wrote visible to the
/// changes after it (an order's account created earlier in the same page).
struct BatchWriter<'a> {
    store: &'a Store,
    rules: &'a IngestRules,
    connection: &'a ConnectionId,
    now: Timestamp,
    records: IdMap<Record>,
    order: Vec<CanonicalId>,
    /// This connection's links of the records written in this batch, by entity and vendor id.
    links: HashMap<Entity, HashMap<ExternalId, CanonicalId>>,
    /// Match keys of the records written in this batch (not in the store's index yet), so matching a
    /// change against them is a lookup, not a pass over the batch. Entries may be stale (a record's
    /// data changed later in the batch): candidates are re-checked against `record_keys`.
    keys: WrittenKeys,
    /// Each written record's current match keys, computed once per write (they are what the commit
    /// stores with the record).
    record_keys: IdMap<Vec<(String, String)>>,
    queued: BTreeSet<(ConnectionId, CanonicalId)>,
    /// Referenced records the fan-out read from the store in this batch.
    dependencies: Dependencies,
    /// Placeholders merged into the record their data turned out to be. They are committed before the
    /// other records: rewriting one releases its link, which the record it joined takes.
    absorbed: Vec<CanonicalId>,
    /// Deletes of vendor records crmsync never stored (nothing to tombstone), and the first such id.
    unknown_deletes: (u64, Option<(Entity, ExternalId)>),
    /// Changes whose vendor time was clamped ([`MAX_FUTURE_SKEW`]), and the first one's id and time.
    clamped: (u64, Option<(ExternalId, Timestamp)>),
    /// Records per (entity, outcome), counted into the metrics once per batch: a labelled counter
    /// per record cost a registry lookup and a label allocation each.
    pulled: Vec<((Entity, &'static str), u64)>,
    /// Whether the connection has undecodable records waiting in the dead-letter queue.
    undecodable_waiting: bool,
    commit: Commit,
    stats: IngestStats,
}

/// The index keys of the records a batch wrote, by entity, key name and value, each with the ids
/// listed under it. Nested so that a look-up borrows the name and value instead of building an
/// owned key (two `String`s) for every probe.
#[derive(Default)]
struct WrittenKeys(HashMap<Entity, HashMap<String, HashMap<String, Vec<CanonicalId>>>>);

impl WrittenKeys {
    /// Lists `id` under `(entity, name, value)` (once).
    fn add(&mut self, entity: Entity, name: &str, value: &str, id: CanonicalId) {
        let names = self.0.entry(entity).or_default();
        let values = match names.get_mut(name) {
            Some(values) => values,
            None => names.entry(name.to_owned()).or_default(),
        };
        let ids = match values.get_mut(value) {
            Some(ids) => ids,
            None => values.entry(value.to_owned()).or_default(),
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// The ids listed under `(entity, name, value)`.
    fn get(&self, entity: Entity, name: &str, value: &str) -> &[CanonicalId] {
        self.0
            .get(&entity)
            .and_then(|names| names.get(name))
            .and_then(|values| values.get(value))
            .map_or(&[], Vec::as_slice)
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The record a change belongs to, and why.
struct Identified {
    current: Option<Record>,
    matched_by: MatchReason,
    /// A placeholder that holds the change's link but whose data turned out to belong to `current`:
    /// it is merged into `current` when the change is applied.
    absorbs: Option<Record>,
}

/// Returns whether `record` is a placeholder of `connection`: created for a reference to a vendor
/// record whose own data has not arrived yet (no data, one link, never read).
fn is_placeholder_of(record: &Record, connection: &ConnectionId) -> bool {
    matches!(record.links.as_slice(), [link] if &link.connection == connection) && is_placeholder(record)
}

/// Returns whether a change could be crmsync's own push read back before the push's answer was
/// committed: a vendor record carrying the record's canonical id (crmsync created it there) that the
/// record has no link to yet, or a linked copy whose values are not those of the last committed push.
/// (Then the outbox is consulted: usually empty or short, as it is whenever reads are not echoes.)
fn may_echo_unconfirmed_push(record: &Record, change: &Change, connection: &ConnectionId) -> bool {
    let ChangeKind::Upsert { data, completeness } = &change.kind else { return false };
    match record.link(connection) {
        None => change.canonical_hint == Some(record.id),
        Some(link) => !reconcile::is_echo(link, data, *completeness),
    }
}

/// The daemon can be killed between a vendor's answer to a push and the commit of that answer: the
/// outbox entry stays (it is sent again, idempotently), but the link and its hash of the pushed values
/// are not written, so the next read of that copy would not look like the echo it is and would be
/// applied as a change (with whatever the vendor derived by itself, or, for a push older than the
/// record's current values, reverting them). The push loop records the hash of what it sends before
/// sending (`sent`); a read-back matching one of those hashes gets the link, with that hash, that the
/// committed answer would have given it, so reconcile treats it exactly as after an uninterrupted
/// push. Otherwise the record is returned as it is.
fn with_unconfirmed_push(mut record: Record, change: &Change, connection: &ConnectionId, sent: &[String]) -> Record {
    let ChangeKind::Upsert { data, completeness } = &change.kind else { return record };
    let mut candidate = record.link(connection).cloned().unwrap_or_else(|| crmsync_connectors::canonical::Link {
        connection: connection.clone(),
        object: change.object.clone(),
        external_id: change.external_id.clone(),
        last_modified: None,
        last_version: None,
        pushed_hash: None,
        matched_by: MatchReason::ExternalIdField,
        extra: serde_json::Map::new(),
    });
    for hash in sent.iter().rev() {
        candidate.pushed_hash = Some(hash.clone());
        if reconcile::is_echo(&candidate, data, *completeness) {
            match record.link_mut(connection) {
                Some(link) => *link = candidate,
                None => record.links.push(candidate),
            }
            return record;
        }
    }
    record
}

/// Returns whether `record` is a placeholder: no data, and no vendor copy of it read yet.
pub fn is_placeholder(record: &Record) -> bool {
    record.merged_into.is_none()
        && !record.is_deleted()
        && record.links.iter().all(|link| link.last_modified.is_none())
        && record.data == EntityData::empty(record.entity())
}

impl<'a> BatchWriter<'a> {
    fn new(store: &'a Store, rules: &'a IngestRules, connection: &'a ConnectionId, now: Timestamp) -> Self {
        Self {
            store,
            rules,
            connection,
            now,
            records: IdMap::default(),
            order: Vec::new(),
            links: HashMap::new(),
            keys: WrittenKeys::default(),
            record_keys: IdMap::default(),
            queued: BTreeSet::new(),
            dependencies: Dependencies::default(),
            absorbed: Vec::new(),
            unknown_deletes: (0, None),
            clamped: (0, None),
            pulled: Vec::new(),
            // A failed look-up only costs a removal attempt per change.
            undecodable_waiting: store.undecodable_letters_wait(connection).unwrap_or(true),
            commit: Commit::default(),
            stats: IngestStats::default(),
        }
    }

    fn record(&self, id: CanonicalId) -> Result<Option<Record>, StoreError> {
        if let Some(record) = self.records.get(&id) {
            return Ok(Some(record.clone()));
        }
        self.store.record(id)
    }

    /// [`BatchWriter::record`] when the entity is known (one store lookup instead of one per entity).
    fn record_of(&self, entity: Entity, id: CanonicalId) -> Result<Option<Record>, StoreError> {
        if let Some(record) = self.records.get(&id) {
            return Ok(Some(record.clone()).filter(|record| record.entity() == entity));
        }
        self.store.record_of(entity, id)
    }

    fn link_target(&self, entity: Entity, external_id: &ExternalId) -> Result<Option<CanonicalId>, StoreError> {
        if let Some(id) = self.links.get(&entity).and_then(|links| links.get(external_id)) {
            return Ok(Some(*id));
        }
        self.store.id_by_link(self.connection, entity, external_id)
    }

    fn put(&mut self, record: Record) {
        self.put_with_keys(record, None);
    }

    /// [`BatchWriter::put`] with the record's index keys when the caller has them
    /// ([`reconcile::index_keys`] of its data).
    fn put_with_keys(&mut self, record: Record, keys: Option<Vec<(String, String)>>) {
        for link in &record.links {
            if &link.connection == self.connection {
                self.links.entry(record.entity()).or_default().insert(link.external_id.clone(), record.id);
            }
        }
        if !self.records.contains_key(&record.id) {
            self.order.push(record.id);
        }
        let keys = keys.unwrap_or_else(|| reconcile::index_keys(&self.rules.rules, &record.data));
        for (key, value) in &keys {
            self.keys.add(record.entity(), key, value, record.id);
        }
        self.record_keys.insert(record.id, keys);
        self.records.insert(record.id, record);
    }

    fn count_pulled(&mut self, entity: Entity, outcome: &'static str) {
        match self.pulled.iter_mut().find(|(key, _)| *key == (entity, outcome)) {
            Some((_, count)) => *count += 1,
            None => self.pulled.push(((entity, outcome), 1)),
        }
    }

    fn dead_letter(&mut self, change: &Change, reason: String) {
        self.stats.dead_lettered += 1;
        self.count_pulled(change.entity, "dead_letter");
        self.commit.dead_letters.push(DeadLetter::new(
            self.connection.clone(),
            change.entity,
            None,
            Some(change.external_id.clone()),
            serde_json::to_value(change).unwrap_or(serde_json::Value::Null),
            reason,
            self.now,
        ));
    }

    /// Dead-letters a record the connector could not decode, with its vendor id and the reason; the
    /// payload names it as undecodable (an operator's retry has no change to apply: the record waits
    /// until it changes in the vendor, and the next pull reads it again). A record keeps one such
    /// letter: a later undecodable read replaces it, a decoded one removes it.
    fn set_aside(&mut self, record: Undecodable) {
        self.stats.dead_lettered += 1;
        self.count_pulled(record.entity, "dead_letter");
        let reason = format!("undecodable {} {}: {}", record.object, record.external_id, record.reason);
        self.commit.undecodable_letters.push(DeadLetter::new(
            self.connection.clone(),
            record.entity,
            None,
            Some(record.external_id.clone()),
            serde_json::json!({ UNDECODABLE: record }),
            reason,
            self.now,
        ));
    }

    fn apply_change(&mut self, mut change: Change) -> Result<(), StoreError> {
        if self.undecodable_waiting {
            // Read and decoded now: an earlier undecodable read of it no longer waits.
            self.commit.undecodable_resolved.push((self.connection.clone(), change.entity, change.external_id.clone()));
        }
        let latest = self.now.saturating_add(MAX_FUTURE_SKEW, true);
        if change.modified_at > latest {
            telemetry::record_clamped_times(self.connection, change.entity, 1);
            self.clamped.0 += 1;
            self.clamped.1.get_or_insert((change.external_id.clone(), change.modified_at));
            change.modified_at = latest;
        }
        // Privacy: a denied field is never stored, whatever the connector sent.
        if let Some(policy) = self.rules.fields.get(self.connection) {
            strip_denied(&mut change, policy);
        }
        if let ChangeKind::Upsert { data, .. } = &mut change.kind {
            reconcile::canonicalise(data);
            if let Err(reason) = self.resolve_references(data) {
                self.dead_letter(&change, reason);
                return Ok(());
            }
        }
        // The fields view of the incoming data, built once: matching, merging and the index keys
        // of a new record all read it.
        let fields = change.data().map(EntityData::to_fields);
        // Its match-key values, computed at most once: matching reads them, and a new record is
        // indexed under them.
        let match_values = OnceCell::new();
        let Identified { current, matched_by, absorbs } = self.identify(&change, fields.as_ref(), &match_values)?;
        if current.is_none() && matches!(change.kind, ChangeKind::Delete) {
            // A delete of a record crmsync never stored: there is nothing to tombstone, and an empty
            // deleted record would only stand for nothing (counted as unchanged, logged per batch).
            self.stats.unchanged += 1;
            self.count_pulled(change.entity, "unchanged");
            self.unknown_deletes.0 += 1;
            self.unknown_deletes.1.get_or_insert((change.entity, change.external_id.clone()));
            return Ok(());
        }
        let current = match current {
            Some(record) if may_echo_unconfirmed_push(&record, &change, self.connection) => {
                let sent = self.sent_hashes(record.id)?;
                let record = with_unconfirmed_push(record, &change, self.connection, &sent);
                if self.reads_superseded_push(&record, &change) {
                    self.stats.stale += 1;
                    self.count_pulled(change.entity, "stale");
                    return Ok(());
                }
                Some(record)
            }
            other => other,
        };
        let decision = match reconcile::reconcile_fields(
            current.as_ref(),
            &change,
            fields.as_ref(),
            self.connection,
            matched_by,
            &self.rules.rules,
            self.now,
            CanonicalId::new(),
        ) {
            Ok(decision) => decision,
            Err(error) => {
                self.dead_letter(&change, error.to_string());
                return Ok(());
            }
        };
        let stats = &mut self.stats;
        match decision.outcome {
            Outcome::Created => stats.created += 1,
            Outcome::Updated => stats.updated += 1,
            Outcome::Deleted => stats.deleted += 1,
            Outcome::Echo => stats.echoes += 1,
            Outcome::Stale => stats.stale += 1,
            Outcome::Unchanged => stats.unchanged += 1,
        }
        let outcome_label = match decision.outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Deleted => "deleted",
            Outcome::Echo => "echo",
            Outcome::Stale => "stale",
            Outcome::Unchanged => "unchanged",
        };
        self.count_pulled(change.entity, outcome_label);
        if let Some(record) = decision.record {
            // A record created from this change holds exactly its data (less the stage history), so
            // its match keys are the ones computed from the change's fields.
            let mut keys = None;
            if decision.outcome == Outcome::Created && current.is_none() {
                // A fresh id minted for this change: nothing of it is in the store yet.
                self.commit.created.insert(record.id);
                if let Some(fields) = &fields {
                    let values = match_values
                        .into_inner()
                        .unwrap_or_else(|| reconcile::match_key_values_of(&self.rules.rules, change.entity, fields));
                    keys = Some(reconcile::with_reference_keys(values, &record.data));
                }
            }
            for conflict in &decision.conflicts {
                self.commit.conflicts.push(ConflictEntry::from_reconcile(record.id, change.entity, conflict, self.now));
            }
            if !decision.conflicts.is_empty() {
                self.stats.conflicts += decision.conflicts.len() as u64;
                telemetry::record_conflicts(change.entity, decision.conflicts.len() as u64);
            }
            if let Some(placeholder) = absorbs {
                self.absorb(placeholder, &record)?;
            }
            if decision.fan_out {
                self.fan_out(&record, Some(self.connection.clone()))?;
            }
            self.put_with_keys(record, keys);
        }
        Ok(())
    }

    /// Returns whether a change that is no echo of the copy's link reads the copy as a push that a
    /// later, committed push answer replaced left it ([`SupersededPushes`]).
    fn reads_superseded_push(&self, record: &Record, change: &Change) -> bool {
        let ChangeKind::Upsert { data, completeness } = &change.kind else { return false };
        let Some(link) = record.link(self.connection) else { return false };
        if reconcile::is_echo(link, data, *completeness) {
            return false;
        }
        let replaced = self.rules.superseded.replaced(self.connection, record.id, link.last_modified);
        replaced.into_iter().any(|hash| {
            let earlier = crmsync_connectors::canonical::Link { pushed_hash: Some(hash), ..link.clone() };
            reconcile::is_echo(&earlier, data, *completeness)
        })
    }

    /// Returns the echo hashes of the values sent to this connection for this record whose vendor
    /// answer was never committed ([`crate::store::OutboxEntry::sent`]).
    fn sent_hashes(&self, id: CanonicalId) -> Result<Vec<String>, StoreError> {
        const PAGE: usize = 1000;
        let (mut after, mut hashes) = (None, Vec::new());
        loop {
            let entries = self.store.outbox_after(self.connection, after, PAGE)?;
            for (_, entry) in &entries {
                if entry.canonical_id == id && entry.op == OutboxOp::Upsert {
                    hashes.extend(entry.sent.iter().cloned());
                }
            }
            match entries.last() {
                Some((sequence, _)) if entries.len() == PAGE => after = Some(*sequence),
                _ => return Ok(hashes),
            }
        }
    }

    /// Merges a placeholder into the record its data turned out to be (which takes its link in the
    /// same commit), and repoints every record that referenced the placeholder. The placeholder stays
    /// as a redirect (`merged_into`), as after `crmsync identity merge`, so its id keeps resolving.
    fn absorb(&mut self, placeholder: Record, into: &Record) -> Result<(), StoreError> {
        let from = placeholder.id;
        tracing::debug!(
            connection = %self.connection,
            entity = %into.entity(),
            placeholder = %from,
            record = %into.id,
            "placeholder merged into the record its data matched"
        );
        let mut absorbed = placeholder;
        absorbed.links.clear();
        absorbed.merged_into = Some(into.id);
        absorbed.updated_at = self.now;
        self.absorbed.push(from);
        self.put(absorbed);
        self.repoint_references(from, into.id)
    }

    /// Makes every record (stored or written in this batch) that references `from` reference `to`,
    /// and queues the ones that changed for this connection's routed targets, which can now be given
    /// the reference.
    fn repoint_references(&mut self, from: CanonicalId, to: CanonicalId) -> Result<(), StoreError> {
        let value = from.to_string();
        let mut referencing: Vec<CanonicalId> = Vec::new();
        for entity in Entity::ALL {
            let written = self.keys.get(*entity, reconcile::REFERENCE_KEY, &value);
            let stored = self.store.ids_by_match_key(*entity, reconcile::REFERENCE_KEY, &value)?;
            for id in written.iter().copied().chain(stored) {
                if !referencing.contains(&id) {
                    referencing.push(id);
                }
            }
        }
        for id in referencing {
            // The index may be stale for a record rewritten in this batch: check the record itself.
            let Some(mut record) = self.record(id)? else { continue };
            let mut repointed = false;
            for (_, reference) in record.data.references_mut() {
                if reference.canonical == Some(from) {
                    reference.canonical = Some(to);
                    repointed = true;
                }
            }
            if !repointed {
                continue;
            }
            record.updated_at = self.now;
            if !record.is_deleted() && record.merged_into.is_none() {
                self.fan_out(&record, Some(self.connection.clone()))?;
            }
            self.put(record);
        }
        Ok(())
    }

    /// The record with this id, following `identity merge` redirects.
    fn live_target(&self, id: CanonicalId) -> Result<Option<Record>, StoreError> {
        let mut current = self.record(id)?;
        for _ in 0..8 {
            match current.as_ref().and_then(|record| record.merged_into) {
                Some(next) => current = self.record(next)?,
                None => break,
            }
        }
        Ok(current)
    }

    /// Finds the record a change belongs to: its link, the canonical id in the vendor's external-id
    /// field, a match key, or none (new).
    ///
    /// A link to a placeholder does not settle it: the placeholder was created for a reference before
    /// the record's own data arrived, and that data may belong to a record another CRM already
    /// created. It is matched like a new record, so the result does not depend on whether a deal or
    /// its account was read first.
    ///
    /// `match_values` holds the change's match-key values once a look-up computed them (from
    /// `fields`), so that the caller does not compute them again.
    fn identify(
        &self,
        change: &Change,
        fields: Option<&reconcile::Fields>,
        match_values: &OnceCell<Vec<(String, String)>>,
    ) -> Result<Identified, StoreError> {
        if let Some(id) = self.link_target(change.entity, &change.external_id)? {
            let linked = self.record_of(change.entity, id)?;
            if let Some(placeholder) = linked.as_ref().filter(|record| is_placeholder_of(record, self.connection))
                && change.data().is_some()
                && let Some((existing, matched_by)) = self.find_existing(change, fields, match_values)?
            {
                return Ok(Identified { current: Some(existing), matched_by, absorbs: Some(placeholder.clone()) });
            }
            return Ok(Identified { current: linked, matched_by: MatchReason::Created, absorbs: None });
        }
        let (current, matched_by) = match self.find_existing(change, fields, match_values)? {
            Some((record, matched_by)) => (Some(record), matched_by),
            None => (None, MatchReason::Created),
        };
        Ok(Identified { current, matched_by, absorbs: None })
    }

    /// Finds an existing record a change not linked yet belongs to: by the canonical id in the vendor's
    /// external-id field, then by match key (the values computed into `match_values` unless they are
    /// there already).
    fn find_existing(
        &self,
        change: &Change,
        fields: Option<&reconcile::Fields>,
        match_values: &OnceCell<Vec<(String, String)>>,
    ) -> Result<Option<(Record, MatchReason)>, StoreError> {
        if let Some(hint) = change.canonical_hint
            && let Some(record) = self.live_target(hint)?
            && record.entity() == change.entity
            && record.link(self.connection).is_none()
        {
            return Ok(Some((record, MatchReason::ExternalIdField)));
        }
        let Some(fields) = fields else {
            return Ok(None);
        };
        let values =
            match_values.get_or_init(|| reconcile::match_key_values_of(&self.rules.rules, change.entity, fields));
        for (key, value) in values {
            let written = self.keys.get(change.entity, key, value);
            let mut candidates: Vec<Record> = written
                .iter()
                .filter(|id| {
                    self.record_keys.get(id).is_some_and(|keys| keys.iter().any(|(k, v)| k == key && v == value))
                })
                .filter_map(|id| self.records.get(id))
                .cloned()
                .collect();
            for id in self.store.ids_by_match_key(change.entity, key, value)? {
                if !candidates.iter().any(|record| record.id == id)
                    && let Some(record) = self.record_of(change.entity, id)?
                {
                    candidates.push(record);
                }
            }
            // Deterministic: the oldest live record that this connection does not already hold.
            candidates.retain(|record| {
                !record.is_deleted() && record.merged_into.is_none() && record.link(self.connection).is_none()
            });
            candidates.sort_by_key(|record| record.id);
            if let Some(record) = candidates.into_iter().next() {
                return Ok(Some((record, MatchReason::MatchKey { key: key.clone(), value: value.clone() })));
            }
        }
        Ok(None)
    }

    /// Turns vendor-id references into canonical ids; unknown targets get a placeholder record with
    /// the link, so the referenced record joins it when it arrives.
    fn resolve_references(&mut self, data: &mut EntityData) -> Result<(), String> {
        let mut wanted: Vec<(Entity, ExternalId)> = Vec::new();
        for (entity, reference) in data.references_mut() {
            if reference.canonical.is_none()
                && let Some(external) = &reference.external
            {
                wanted.push((entity, external.clone()));
            }
        }
        let mut resolved: HashMap<(Entity, ExternalId), CanonicalId> = HashMap::new();
        for (entity, external) in wanted {
            let id = match self.link_target(entity, &external).map_err(|error| error.to_string())? {
                Some(id) => id,
                None => {
                    let mut placeholder = Record::new(CanonicalId::new(), entity, self.now);
                    placeholder.links.push(crmsync_connectors::canonical::Link {
                        connection: self.connection.clone(),
                        object: String::new(),
                        external_id: external.clone(),
                        last_modified: None,
                        last_version: None,
                        pushed_hash: None,
                        matched_by: MatchReason::Created,
                        extra: serde_json::Map::new(),
                    });
                    let id = placeholder.id;
                    self.commit.created.insert(id);
                    self.put(placeholder);
                    id
                }
            };
            resolved.insert((entity, external), id);
        }
        for (entity, reference) in data.references_mut() {
            if let Some(external) = reference.external.take() {
                if let Some(id) = resolved.get(&(entity, external.clone())) {
                    *reference = RecordRef::canonical(*id);
                } else {
                    reference.external = Some(external);
                }
            }
        }
        Ok(())
    }

    /// Queues a record for every routed target, with its not-yet-linked dependencies first.
    fn fan_out(&mut self, record: &Record, source: Option<ConnectionId>) -> Result<(), StoreError> {
        let queued = queue_fan_out(
            self.store,
            &self.rules.rules,
            record,
            source.as_ref(),
            &self.records,
            &mut self.dependencies,
            &mut self.queued,
            &mut self.commit,
            self.now,
        )?;
        self.stats.queued += queued;
        Ok(())
    }

    /// The records written since the last part, not committed yet.
    fn pending_records(&self) -> usize {
        self.order.len()
    }

    /// Takes off the records written since the last part, with the outbox entries and conflicts of
    /// the changes that wrote them, as a commit of their own to go to the store before the rest of
    /// the batch (a pulled page in parts of about [`COMMIT_RECORDS`]). Dead letters, the cursor and
    /// the sync status stay for the last part: a crash between parts leaves some of the page's
    /// records stored without the cursor, and the next pass reads the page again, which changes
    /// nothing in a stored record and writes the dead letters again.
    ///
    /// Taken between changes, so every outbox entry commits with the writes of the change that
    /// queued it (never after them: a crash could otherwise leave a record stored and its push not
    /// queued). Once committed, the batch finds these records in the store: they leave the writer,
    /// and so do the references the fan-out read of them and their queued pushes (a later change of
    /// one of them in this batch queues it again, since a push of the committed version may already
    /// be on its way).
    fn take_part(&mut self) -> Commit {
        let mut part = Commit {
            outbox: std::mem::take(&mut self.commit.outbox),
            conflicts: std::mem::take(&mut self.commit.conflicts),
            ..Commit::default()
        };
        let written = self.take_records();
        for (record, _) in &written {
            if self.commit.created.remove(&record.id) {
                part.created.insert(record.id);
            }
            self.dependencies.remove(&record.id);
        }
        let ids: foldhash::HashSet<CanonicalId> = written.iter().map(|(record, _)| record.id).collect();
        self.queued.retain(|(_, id)| !ids.contains(id));
        self.links.clear();
        self.keys.clear();
        part.records = written;
        part
    }

    /// The records written since the last part, absorbed placeholders first (their rewrite releases
    /// the links the records they joined take), then in the order they were first written.
    fn take_records(&mut self) -> Vec<(Record, Vec<(String, String)>)> {
        let absorbed = std::mem::take(&mut self.absorbed);
        let order = std::mem::take(&mut self.order);
        let first: foldhash::HashSet<CanonicalId> = absorbed.iter().copied().collect();
        let mut records = Vec::with_capacity(order.len());
        for id in absorbed.iter().chain(order.iter().filter(|id| !first.contains(id))) {
            if let Some(record) = self.records.remove(id) {
                let keys = self.record_keys.remove(id).unwrap_or_default();
                records.push((record, keys));
            }
        }
        records
    }

    fn into_commit(mut self) -> (Commit, IngestStats) {
        for ((entity, outcome), count) in &self.pulled {
            telemetry::record_pulled(self.connection, *entity, outcome, *count);
        }
        if let (count, Some((entity, external_id))) = &self.unknown_deletes {
            tracing::info!(
                connection = %self.connection,
                count,
                first.entity = %entity,
                first.external_id = %external_id,
                "deletes of records crmsync never stored ignored"
            );
        }
        if let (count, Some((external_id, vendor_time))) = &self.clamped {
            tracing::warn!(
                connection = %self.connection,
                count,
                first.external_id = %external_id,
                first.vendor_time = %vendor_time,
                clamped_to = %self.now.saturating_add(MAX_FUTURE_SKEW, true),
                "vendor modification times in the future clamped to now + skew"
            );
        }
        let records = self.take_records();
        self.commit.records.extend(records);
        (self.commit, self.stats)
    }
}

/// What the fan-out needs of a record another one references: whether it can be sent (not deleted,
/// not a placeholder) and the connections that already hold a copy of it.
#[derive(Debug, Clone)]
pub struct Dependency {
    sendable: bool,
    linked: Vec<ConnectionId>,
}

impl Dependency {
    fn of(record: &Record) -> Self {
        Self {
            sendable: !record.is_deleted() && !is_placeholder(record),
            linked: record.links.iter().map(|link| link.connection.clone()).collect(),
        }
    }
}

/// Referenced records read from the store by one batch's fan-out, by id (`None`: not stored). Only
/// the batch itself changes the store while it is applied (a pulled page commits in parts: the
/// records of a part leave this map when it is committed), so a record referenced by many (an
/// account by its deals and orders) is read and decoded once per batch instead of once per
/// referencing record and target.
pub type Dependencies = IdMap<Option<Arc<Dependency>>>;

/// A record's reference as the fan-out sees it: the entity, the id, the referenced record if stored.
type Referenced = (Entity, CanonicalId, Option<Arc<Dependency>>);

/// Queues `record` for each target its routes select (and, for upserts, any referenced record the
/// target does not have yet, so lookups exist before the record that needs them). Referenced
/// records are taken from `pending` (written earlier in the batch) or else read through
/// `dependencies`.
#[allow(clippy::too_many_arguments)]
pub fn queue_fan_out(
    store: &Store,
    rules: &Rules,
    record: &Record,
    source: Option<&ConnectionId>,
    pending: &IdMap<Record>,
    dependencies: &mut Dependencies,
    queued: &mut BTreeSet<(ConnectionId, CanonicalId)>,
    commit: &mut Commit,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let mut count = 0;
    // The referenced records, read once for every target: (entity, id, what the fan-out needs).
    let mut referenced: Option<Vec<Referenced>> = None;
    for (target, on_delete) in rules.targets(record.entity(), source) {
        let op = if record.is_deleted() {
            match on_delete {
                DeleteAction::Ignore => continue,
                DeleteAction::Delete if record.link(&target).is_some() => OutboxOp::Delete,
                DeleteAction::Delete => continue,
                DeleteAction::Mark => OutboxOp::Mark,
            }
        } else {
            OutboxOp::Upsert
        };
        if op == OutboxOp::Upsert {
            if referenced.is_none() {
                let mut found = Vec::new();
                for (_, entity, reference) in record.data.references() {
                    let Some(reference_id) = reference.canonical else { continue };
                    let dependency = match pending.get(&reference_id) {
                        Some(written) => Some(Arc::new(Dependency::of(written))),
                        None => dependency_in_store(store, dependencies, entity, reference_id)?,
                    };
                    found.push((entity, reference_id, dependency));
                }
                referenced = Some(found);
            }
            // A placeholder has no data to send yet: its own change queues it when its data arrives.
            for (entity, reference_id, dependency) in referenced.iter().flatten() {
                if let Some(dependency) = dependency
                    && dependency.sendable
                    && !dependency.linked.contains(&target)
                    && queued.insert((target.clone(), *reference_id))
                {
                    commit
                        .outbox
                        .push((target.clone(), OutboxEntry::new(*entity, *reference_id, OutboxOp::Upsert, now)));
                    count += 1;
                }
            }
        }
        if queued.insert((target.clone(), record.id)) {
            commit.outbox.push((target.clone(), OutboxEntry::new(record.entity(), record.id, op, now)));
            count += 1;
        }
    }
    Ok(count)
}

/// A referenced record as stored, read once per batch: under the reference's entity (one lookup),
/// or, should the id hold a record of another entity, by id alone.
fn dependency_in_store(
    store: &Store,
    dependencies: &mut Dependencies,
    entity: Entity,
    id: CanonicalId,
) -> Result<Option<Arc<Dependency>>, StoreError> {
    if let Some(known) = dependencies.get(&id) {
        return Ok(known.clone());
    }
    let stored = match store.record_of(entity, id)? {
        Some(record) => Some(record),
        None => store.record(id)?,
    };
    let dependency = stored.as_ref().map(|record| Arc::new(Dependency::of(record)));
    dependencies.insert(id, dependency.clone());
    Ok(dependency)
}

fn strip_denied(change: &mut Change, policy: &FieldPolicy) {
    let entity = change.entity;
    if policy.deny.get(&entity).is_none_or(|denied| denied.is_empty()) && !policy.allow.contains_key(&entity) {
        // Nothing of this entity is denied (the usual case): no fields view to build.
        return;
    }
    change.extra.retain(|field, _| policy.allows(entity, field));
    if let ChangeKind::Upsert { data, .. } = &mut change.kind {
        let fields = data.to_fields();
        if fields.keys().any(|field| !policy.allows(entity, field)) {
            let kept: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().filter(|(field, _)| policy.allows(entity, field)).collect();
            if let Ok(filtered) = EntityData::from_fields(entity, kept) {
                *data = filtered;
            }
        }
    }
}

/// Returns the data to push to `target` — propagating fields only, the target's privacy list applied,
/// references carrying the target's ids where it has the referenced record — and the echo hash of it
/// (computed on canonical references, the form a read-back takes after ingest resolves it).
pub fn outgoing_data(
    store: &Store,
    record: &Record,
    target: &ConnectionId,
    policy: Option<&FieldPolicy>,
    representable: &dyn Fn(&EntityData) -> EntityData,
) -> Result<(EntityData, String), StoreError> {
    let entity = record.entity();
    let fields: serde_json::Map<String, serde_json::Value> = record
        .data
        .to_fields()
        .into_iter()
        .filter(|(field, _)| reconcile::propagates(entity, field))
        .filter(|(field, _)| policy.is_none_or(|policy| policy.allows(entity, field)))
        .collect();
    let mut data = EntityData::from_fields(entity, fields).unwrap_or_else(|_| EntityData::empty(entity));
    let previous = record.link(target).and_then(|link| link.pushed_hash.as_deref());
    let hash = reconcile::pushed_hash_over(previous, &representable(&data));
    for (_, reference) in data.references_mut() {
        if let Some(id) = reference.canonical
            && let Some(referenced) = live_record(store, id)?
        {
            reference.external = referenced.link(target).map(|link| link.external_id.clone());
        }
    }
    Ok((data, hash))
}

/// The record with this id, following merge redirects (`merged_into`) to the record that holds its
/// copies now.
fn live_record(store: &Store, id: CanonicalId) -> Result<Option<Record>, StoreError> {
    let mut current = store.record(id)?;
    // Redirects never chain far (a merge always targets a live record); the bound only guards a cycle.
    for _ in 0..8 {
        match current.as_ref().and_then(|record| record.merged_into) {
            Some(next) => current = store.record(next)?,
            None => break,
        }
    }
    Ok(current)
}

/// Data for a `mark` delete: orders are cancelled instead of deleted.
pub fn marked_data(record: &Record) -> Option<EntityData> {
    match &record.data {
        EntityData::Order(order) => {
            Some(EntityData::Order(Order { status: Some(OrderStatus::Cancelled), ..order.clone() }))
        }
        _ => None,
    }
}

fn apply_pushed(
    store: &Store,
    rules: &IngestRules,
    connection: &ConnectionId,
    entity: Entity,
    results: Vec<PushedRecord>,
    now: Timestamp,
) -> Result<IngestStats, IngestError> {
    let mut commit = Commit::default();
    let mut stats = IngestStats::default();
    let mut updated: IdMap<Record> = IdMap::default();
    for pushed in results {
        match &pushed.outcome {
            PushOutcome::Upserted { external_id, created, version } => {
                stats.pushed += 1;
                telemetry::record_pushed(connection, entity, "upserted", 1);
                let record = match updated.remove(&pushed.canonical_id) {
                    Some(record) => Some(record),
                    None => store.record(pushed.canonical_id)?,
                };
                if let Some(mut record) = record {
                    remember_superseded(store, rules, connection, &record, &pushed)?;
                    let link = crmsync_connectors::canonical::Link {
                        connection: connection.clone(),
                        object: record.link(connection).map(|link| link.object.clone()).unwrap_or_default(),
                        external_id: external_id.clone(),
                        last_modified: record.link(connection).and_then(|link| link.last_modified),
                        last_version: version
                            .clone()
                            .or_else(|| record.link(connection).and_then(|link| link.last_version.clone())),
                        pushed_hash: pushed.pushed_hash.clone(),
                        matched_by: record
                            .link(connection)
                            .map(|link| link.matched_by.clone())
                            .unwrap_or(if *created { MatchReason::Pushed } else { MatchReason::ExternalIdField }),
                        extra: record.link(connection).map(|link| link.extra.clone()).unwrap_or_default(),
                    };
                    match record.link_mut(connection) {
                        Some(existing) => *existing = link,
                        None => record.links.push(link),
                    }
                    updated.insert(record.id, record);
                }
                commit.outbox_done.extend(pushed.sequences.iter().map(|sequence| (connection.clone(), *sequence)));
                // Accepted now: an earlier rejection of the record is moot.
                if let Some(letter) = store.pushed_dead_letter(connection, pushed.canonical_id)? {
                    commit.dead_letters_remove.push(letter.id);
                }
            }
            PushOutcome::Deleted => {
                stats.pushed += 1;
                telemetry::record_pushed(connection, entity, "deleted", 1);
                commit.outbox_done.extend(pushed.sequences.iter().map(|sequence| (connection.clone(), *sequence)));
                if let Some(letter) = store.pushed_dead_letter(connection, pushed.canonical_id)? {
                    commit.dead_letters_remove.push(letter.id);
                }
            }
            PushOutcome::Rejected { code, message } => {
                stats.rejected += 1;
                telemetry::record_pushed(connection, entity, "rejected", 1);
                // One dead letter per record and connection: a new rejection replaces the last one.
                if let Some(letter) = store.pushed_dead_letter(connection, pushed.canonical_id)? {
                    commit.dead_letters_remove.push(letter.id);
                }
                let mut letter = DeadLetter::new(
                    connection.clone(),
                    entity,
                    Some(pushed.canonical_id),
                    None,
                    pushed.payload.clone(),
                    format!("rejected by {connection}: {code}: {message}"),
                    now,
                );
                letter.attempt.clone_from(&pushed.attempt);
                commit.dead_letters.push(letter);
                commit.outbox_done.extend(pushed.sequences.iter().map(|sequence| (connection.clone(), *sequence)));
            }
            PushOutcome::Retry { message } => {
                stats.retried += 1;
                telemetry::record_pushed(connection, entity, "retry", 1);
                commit
                    .outbox_retry
                    .extend(pushed.sequences.iter().map(|sequence| (connection.clone(), *sequence, message.clone())));
            }
        }
    }
    for (_, record) in updated {
        let keys = reconcile::index_keys(&rules.rules, &record.data);
        commit.records.push((record, keys));
    }
    store.commit(commit)?;
    Ok(stats)
}

/// Remembers the echo hashes this push answer replaces on the record's link ([`SupersededPushes`]):
/// the link's hash, and those sent for the outbox entries the answer confirms (a push sent before a
/// kill whose answer was never committed), less the hash the link takes now.
fn remember_superseded(
    store: &Store,
    rules: &IngestRules,
    connection: &ConnectionId,
    record: &Record,
    pushed: &PushedRecord,
) -> Result<(), StoreError> {
    let link = record.link(connection);
    let mut replaced: Vec<String> = link.and_then(|link| link.pushed_hash.clone()).into_iter().collect();
    for sequence in &pushed.sequences {
        if let Some((found, entry)) = store.outbox_after(connection, sequence.checked_sub(1), 1)?.pop()
            && found == *sequence
        {
            replaced.extend(entry.sent);
        }
    }
    replaced.retain(|hash| Some(hash) != pushed.pushed_hash.as_ref());
    replaced.sort();
    replaced.dedup();
    if !replaced.is_empty() {
        rules.superseded.remember(connection, record.id, link.and_then(|link| link.last_modified), replaced);
    }
    Ok(())
}

/// A conflict side for the store, from a reconcile conflict side.
pub fn conflict_value(side: &reconcile::ConflictSide) -> ConflictValue {
    ConflictValue { value: side.value.clone(), connection: side.connection.clone(), modified_at: side.modified_at }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crmsync_connectors::canonical::{Account, Lead, Opportunity};
    use crmsync_connectors::{ChangeKind, Completeness};
    use proptest::prelude::{Just, Strategy};

    use super::*;
    use crate::ingest::operator::{DeadLetterSelection, OperatorAction};
    use crate::reconcile::Route;

    /// An incremental page of `changes` (no cursor, not caught up, nothing undecodable).
    fn pulled(connection: ConnectionId, entity: Entity, changes: Vec<Change>) -> Batch {
        Batch::Pulled {
            connection,
            entity,
            changes,
            cursor: None,
            caught_up: false,
            undecodable: Vec::new(),
            full_read: FullRead::No,
        }
    }

    fn rules(fields: BTreeMap<ConnectionId, FieldPolicy>) -> IngestRules {
        let everywhere = vec![ConnectionId::new("sf"), ConnectionId::new("zoho")];
        let rules = Rules {
            routes: vec![Route {
                entity: None,
                from: everywhere.clone(),
                to: everywhere,
                on_delete: DeleteAction::Ignore,
            }],
            ..Rules::default()
        };
        IngestRules { rules: Arc::new(rules), fields: Arc::new(fields), superseded: Arc::default() }
    }

    fn change(entity: Entity, external: &str, data: EntityData) -> Change {
        Change {
            entity,
            object: String::new(),
            external_id: ExternalId::new(external),
            modified_at: Timestamp::now(),
            version: None,
            canonical_hint: None,
            kind: ChangeKind::Upsert { data, completeness: Completeness::Full },
            extra: serde_json::Map::from_iter([("Email__c".to_owned(), serde_json::json!("x@y.example"))]),
        }
    }

    #[test]
    fn a_large_page_commits_in_parts_as_it_is_reconciled_each_entry_with_its_record_and_the_cursor_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = rules(BTreeMap::new());
        let (sf, zoho) = (ConnectionId::new("sf"), ConnectionId::new("zoho"));
        let account = |name: &str| EntityData::Account(Account { name: Some(name.into()), ..Account::default() });
        let mut writer = BatchWriter::new(&store, &rules, &sf, Timestamp::now());
        let mut parts = Vec::new();
        for index in 0..600 {
            writer
                .apply_change(change(Entity::Account, &format!("001{index}"), account(&format!("A{index}"))))
                .unwrap();
            if writer.pending_records() >= COMMIT_RECORDS {
                let part = writer.take_part();
                let records: Vec<CanonicalId> = part.records.iter().map(|(record, _)| record.id).collect();
                let entries: Vec<CanonicalId> = part.outbox.iter().map(|(_, entry)| entry.canonical_id).collect();
                assert_eq!(records.len(), COMMIT_RECORDS);
                assert_eq!(entries, records, "each entry in its record's part, in order");
                assert!(records.iter().all(|id| part.created.contains(id)), "new records are created in their part");
                assert!(part.cursor.is_none() && part.status.is_empty(), "the cursor goes with the last part only");
                store.commit(part).unwrap();
                parts.push(records);
            }
        }
        assert_eq!(parts.len(), 2);
        // A record of a committed part changed again in the same page: found in the store (no
        // second record) and queued again, since its committed version may be on its way already.
        let mut renamed = change(Entity::Account, "0010", account("A0, renamed"));
        renamed.modified_at = renamed.modified_at.saturating_add(std::time::Duration::from_secs(1), true);
        writer.apply_change(renamed).unwrap();
        let (commit, stats) = writer.into_commit();
        assert_eq!((stats.created, stats.updated), (600, 1));
        let records: Vec<CanonicalId> = commit.records.iter().map(|(record, _)| record.id).collect();
        assert_eq!(records.len(), 101);
        assert_eq!(records.last(), Some(&parts[0][0]));
        assert!(!commit.created.contains(&parts[0][0]));
        assert_eq!(commit.outbox.last().map(|(_, entry)| entry.canonical_id), Some(parts[0][0]));
        store.commit(commit).unwrap();
        assert_eq!(store.counts().unwrap().values().sum::<u64>(), 600);
        assert_eq!(store.outbox_after(&zoho, None, 1_000).unwrap().len(), 601);
    }

    #[test]
    fn a_stored_account_a_target_lacks_is_queued_once_before_the_deals_of_a_page_that_reference_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = rules(BTreeMap::new());
        let (sf, zoho) = (ConnectionId::new("sf"), ConnectionId::new("zoho"));
        let page = |entity: Entity, changes: Vec<Change>| pulled(sf.clone(), entity, changes);
        let account = EntityData::Account(Account { name: Some("Acme".into()), ..Account::default() });
        apply_batch(
            &store,
            &rules,
            page(Entity::Account, vec![change(Entity::Account, "001A", account)]),
            Timestamp::now(),
        )
        .unwrap();
        // The account's push to zoho has not happened: zoho has no copy of it yet.
        let queued: Vec<u64> =
            store.outbox_after(&zoho, None, 100).unwrap().into_iter().map(|(sequence, _)| sequence).collect();
        assert_eq!(queued.len(), 1);
        store.outbox_remove(&zoho, &queued).unwrap();
        let deal = |name: &str, account: &str| {
            EntityData::Opportunity(Opportunity {
                name: Some(name.into()),
                account: Some(RecordRef::external(account)),
                ..Opportunity::default()
            })
        };
        let deals = vec![
            change(Entity::Opportunity, "006A", deal("First", "001A")),
            change(Entity::Opportunity, "006B", deal("Second", "001A")),
            // An account never read: its placeholder has no data to send.
            change(Entity::Opportunity, "006C", deal("Third", "001Z")),
        ];
        apply_batch(&store, &rules, page(Entity::Opportunity, deals), Timestamp::now()).unwrap();
        let account_id = store.id_by_link(&sf, Entity::Account, &ExternalId::new("001A")).unwrap().unwrap();
        let deal_id =
            |external: &str| store.id_by_link(&sf, Entity::Opportunity, &ExternalId::new(external)).unwrap().unwrap();
        let entries: Vec<(Entity, CanonicalId)> = store
            .outbox_after(&zoho, None, 100)
            .unwrap()
            .into_iter()
            .map(|(_, entry)| (entry.entity, entry.canonical_id))
            .collect();
        assert_eq!(
            entries,
            [
                (Entity::Account, account_id),
                (Entity::Opportunity, deal_id("006A")),
                (Entity::Opportunity, deal_id("006B")),
                (Entity::Opportunity, deal_id("006C")),
            ],
            "the account once, before the first deal that needs it; no placeholder"
        );
    }

    #[test]
    fn an_undecodable_record_keeps_one_letter_until_it_is_read_again_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = rules(BTreeMap::new());
        let sf = ConnectionId::new("sf");
        let undecodable = |id: &str| Undecodable {
            entity: Entity::Lead,
            object: "Lead".into(),
            external_id: ExternalId::new(id),
            modified_at: Timestamp::now(),
            reason: "could not decode field AnnualRevenue: expected a number, found \"about 5\"".into(),
        };
        let page = |changes: Vec<Change>, undecodable: Vec<Undecodable>| Batch::Pulled {
            connection: sf.clone(),
            entity: Entity::Lead,
            changes,
            cursor: None,
            caught_up: false,
            undecodable,
            full_read: FullRead::No,
        };
        let lead = EntityData::Lead(Lead { name: Some("Ada".into()), ..Lead::default() });
        let stats =
            apply_batch(&store, &rules, page(vec![], vec![undecodable("00Q1"), undecodable("00Q2")]), Timestamp::now())
                .unwrap();
        assert_eq!(stats.dead_lettered, 2);
        let letters = store.dead_letters(10).unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[0].external_id, Some(ExternalId::new("00Q1")));
        assert!(letters[0].reason.starts_with("undecodable Lead 00Q1: could not decode field AnnualRevenue"));
        assert!(letters[0].payload.get(UNDECODABLE).is_some());
        // Read undecodable again (a re-read window, a full sync): still one letter for it.
        apply_batch(&store, &rules, page(vec![], vec![undecodable("00Q1")]), Timestamp::now()).unwrap();
        assert_eq!(store.dead_letter_count().unwrap(), 2);
        // A retry has nothing to apply: the letters stay.
        operator::apply(&store, &rules, OperatorAction::RetryDeadLetters(DeadLetterSelection::All), Timestamp::now())
            .unwrap();
        assert_eq!(store.dead_letter_count().unwrap(), 2);
        // Fixed in the vendor and read again: its letter goes, the record is stored.
        apply_batch(&store, &rules, page(vec![change(Entity::Lead, "00Q1", lead)], vec![]), Timestamp::now()).unwrap();
        let letters = store.dead_letters(10).unwrap();
        assert_eq!(
            letters.iter().map(|letter| letter.external_id.clone()).collect::<Vec<_>>(),
            [Some(ExternalId::new("00Q2"))]
        );
        assert_eq!(store.scan(Entity::Lead).count(), 1);
        // Dropped by an operator: gone, index and all.
        let drop = OperatorAction::DropDeadLetters(DeadLetterSelection::Ids(vec![letters[0].id.clone()]));
        operator::apply(&store, &rules, drop, Timestamp::now()).unwrap();
        assert_eq!(store.dead_letter_count().unwrap(), 0);
        assert!(!store.undecodable_letters_wait(&sf).unwrap());
    }

    #[test]
    fn a_group_commit_applies_every_batch_in_order_and_answers_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = rules(BTreeMap::new());
        let lead = |name: &str| EntityData::Lead(Lead { name: Some(name.into()), ..Lead::default() });
        let batches = vec![
            Batch::Delivered {
                connection: ConnectionId::new("sf"),
                changes: vec![change(Entity::Lead, "00Q1", lead("Ada"))],
            },
            Batch::Failed { connection: ConnectionId::new("sf"), entity: Entity::Lead, message: "boom".into() },
            Batch::Delivered {
                connection: ConnectionId::new("sf"),
                changes: vec![change(Entity::Lead, "00Q1", lead("Ada B"))],
            },
        ];
        let results = apply_group(&store, &rules, batches);
        let created: Vec<u64> = results.iter().map(|result| result.as_ref().unwrap().created).collect();
        assert_eq!(created, [1, 0, 0], "the second delivery updates the record the first created");
        let stored: Vec<Record> = store.scan(Entity::Lead).map(Result::unwrap).collect();
        assert_eq!(stored.len(), 1);
        let EntityData::Lead(stored_lead) = &stored[0].data else { panic!("not a lead") };
        assert_eq!(stored_lead.name.as_deref(), Some("Ada B"));
        assert_eq!(store.storage_error(), None);
    }

    #[test]
    fn a_denied_field_is_never_stored_or_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut policy = FieldPolicy::default();
        policy.deny.insert(Entity::Lead, BTreeSet::from(["email".to_owned(), "Email__c".to_owned()]));
        let rules = rules(BTreeMap::from([
            (ConnectionId::new("sf"), policy.clone()),
            (ConnectionId::new("zoho"), policy.clone()),
        ]));
        let lead = EntityData::Lead(Lead {
            name: Some("Ada".into()),
            email: Some("ada@example.com".into()),
            ..Lead::default()
        });
        let batch =
            Batch::Delivered { connection: ConnectionId::new("sf"), changes: vec![change(Entity::Lead, "00Q1", lead)] };
        apply_batch(&store, &rules, batch, Timestamp::now()).unwrap();
        let stored = store.scan(Entity::Lead).next().unwrap().unwrap();
        let EntityData::Lead(stored_lead) = &stored.data else { panic!("not a lead") };
        assert_eq!(stored_lead.email, None, "denied field stored");
        assert!(stored.links[0].extra.is_empty(), "denied vendor field kept in extra");
        let (outgoing, _) =
            outgoing_data(&store, &stored, &ConnectionId::new("zoho"), Some(&policy), &Clone::clone).unwrap();
        assert!(!outgoing.to_fields().contains_key("email"));
    }

    #[test]
    fn the_same_customer_from_two_connections_is_one_record_with_two_links() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = rules(BTreeMap::new());
        let account = |name: &str| {
            EntityData::Account(Account {
                name: Some(name.into()),
                domain: Some("acme.example".into()),
                ..Account::default()
            })
        };
        for (connection, external, name) in [("sf", "001A", "Acme Industries"), ("zoho", "4150", "ACME  industries")] {
            let batch = Batch::Pulled {
                connection: ConnectionId::new(connection),
                entity: Entity::Account,
                changes: vec![change(Entity::Account, external, account(name))],
                cursor: None,
                caught_up: true,
                undecodable: Vec::new(),
                full_read: FullRead::No,
            };
            apply_batch(&store, &rules, batch, Timestamp::now()).unwrap();
        }
        let records: Vec<Record> = store.scan(Entity::Account).map(Result::unwrap).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].links.len(), 2);
        assert!(matches!(&records[0].links[1].matched_by, MatchReason::MatchKey { key, .. } if key == "name+domain"));
        // The first record was queued for zoho before zoho's copy arrived; zoho's copy queued nothing new.
        assert_eq!(store.outbox_depth(&ConnectionId::new("zoho")).unwrap(), 1);
    }

    /// A small shared world: customers known to one, two or three CRMs, deals and orders that live in
    /// one CRM and point at that CRM's copy of the customer. One change per vendor record.
    fn shared_world() -> Vec<(&'static str, Change)> {
        let at = |second: i64| Timestamp::from_unix_seconds(1_780_000_000 + second).unwrap();
        let upsert = |entity, external: &str, second, data| Change {
            entity,
            object: String::new(),
            external_id: ExternalId::new(external),
            modified_at: at(second),
            version: None,
            canonical_hint: None,
            kind: ChangeKind::Upsert { data, completeness: Completeness::Full },
            extra: serde_json::Map::new(),
        };
        let account = |name: &str, number: &str, owner: &str| {
            EntityData::Account(Account {
                name: Some(name.into()),
                domain: Some(format!("{}.example", name.to_lowercase())),
                number: Some(number.into()),
                owner: Some(owner.into()),
                ..Account::default()
            })
        };
        let deal = |name: &str, account: &str| {
            EntityData::Opportunity(Opportunity {
                name: Some(name.into()),
                account: Some(RecordRef::external(account)),
                ..Opportunity::default()
            })
        };
        let order = |number: &str, account: &str, deal: Option<&str>| {
            EntityData::Order(Order {
                number: Some(number.into()),
                account: Some(RecordRef::external(account)),
                opportunity: deal.map(RecordRef::external),
                ..Order::default()
            })
        };
        vec![
            ("sf", upsert(Entity::Account, "001A", 1, account("Acme", "ACC-1", "sf-owner"))),
            ("zoho", upsert(Entity::Account, "Z1", 2, account("Acme", "ACC-1", "zoho-owner"))),
            ("d365", upsert(Entity::Account, "D1", 3, account("Acme", "ACC-1", "d365-owner"))),
            ("sf", upsert(Entity::Account, "001B", 5, account("Globex", "ACC-2", "sf-owner"))),
            ("zoho", upsert(Entity::Account, "Z2", 4, account("Globex", "ACC-2", "zoho-owner"))),
            ("zoho", upsert(Entity::Account, "Z3", 6, account("Initech", "ACC-3", "zoho-owner"))),
            ("d365", upsert(Entity::Account, "D2", 7, account("Umbrella", "ACC-4", "d365-owner"))),
            ("sf", upsert(Entity::Account, "001C", 7, account("Umbrella", "ACC-4", "sf-owner"))),
            ("sf", upsert(Entity::Opportunity, "006A", 10, deal("Acme expansion", "001A"))),
            ("zoho", upsert(Entity::Opportunity, "ZD1", 11, deal("Acme renewal", "Z1"))),
            ("zoho", upsert(Entity::Opportunity, "ZD2", 12, deal("Globex pilot", "Z2"))),
            ("d365", upsert(Entity::Opportunity, "DO1", 13, deal("Umbrella rollout", "D2"))),
            ("zoho", upsert(Entity::Order, "ZO1", 20, order("SO-1", "Z1", Some("ZD1")))),
            ("zoho", upsert(Entity::Order, "ZO2", 21, order("SO-2", "Z2", Some("ZD2")))),
            ("zoho", upsert(Entity::Order, "ZO3", 22, order("SO-3", "Z3", None))),
            ("sf", upsert(Entity::Order, "801A", 23, order("SO-4", "001A", Some("006A")))),
            ("d365", upsert(Entity::Order, "DS1", 24, order("SO-5", "D2", Some("DO1")))),
            ("d365", upsert(Entity::Order, "DS2", 25, order("SO-6", "D1", None))),
        ]
    }

    /// The canonical set with canonical ids (which depend on arrival order) replaced by what a record
    /// is: the vendor copies it links. Merged-away records are redirects, not records.
    fn canonical_set(store: &Store) -> BTreeSet<String> {
        let mut records = Vec::new();
        for entity in Entity::ALL {
            records.extend(store.scan(*entity).map(Result::unwrap).filter(|record| record.merged_into.is_none()));
        }
        let copies = |record: &Record| {
            let mut links: Vec<String> =
                record.links.iter().map(|link| format!("{}:{}", link.connection, link.external_id)).collect();
            links.sort();
            links.join(",")
        };
        let names: HashMap<CanonicalId, String> = records.iter().map(|record| (record.id, copies(record))).collect();
        records
            .iter()
            .map(|record| {
                let mut data = record.data.clone();
                let mut pointed = Vec::new();
                for (_, reference) in data.references_mut() {
                    let target = reference.canonical.and_then(|id| names.get(&id).cloned());
                    pointed.push(target.unwrap_or_else(|| format!("dangling {reference:?}")));
                    *reference = RecordRef::default();
                }
                let provenance: Vec<String> = record
                    .provenance
                    .iter()
                    .map(|(field, from)| format!("{field}<-{:?}@{}", from.connection, from.modified_at))
                    .collect();
                let mut seen: Vec<String> =
                    record.links.iter().map(|link| format!("{}@{:?}", link.connection, link.last_modified)).collect();
                seen.sort();
                format!(
                    "{} [{}] {:?} -> {pointed:?} deleted={} {provenance:?} {seen:?}",
                    record.entity(),
                    names[&record.id],
                    data.to_fields(),
                    record.is_deleted()
                )
            })
            .collect()
    }

    fn world_rules() -> IngestRules {
        IngestRules { rules: Arc::new(Rules::default()), fields: Arc::new(BTreeMap::new()), superseded: Arc::default() }
    }

    /// Ingests the world one page per (connection, change), in the given order of its changes.
    fn ingest_in_order(order: &[usize]) -> BTreeSet<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let world = shared_world();
        let rules = world_rules();
        for index in order {
            let (connection, change) = world[*index].clone();
            let batch = pulled(ConnectionId::new(connection), change.entity, vec![change]);
            apply_batch(&store, &rules, batch, Timestamp::now()).unwrap();
        }
        canonical_set(&store)
    }

    /// The shared world pulled as `sync` reads it (a page per connection × entity, accounts first),
    /// each page committed in parts of about `part_records` records.
    fn ingest_in_pages(part_records: usize) -> BTreeSet<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = world_rules();
        let mut pages: Vec<((&str, Entity), Vec<Change>)> = Vec::new();
        for (connection, change) in shared_world() {
            match pages.iter_mut().find(|(key, _)| *key == (connection, change.entity)) {
                Some((_, changes)) => changes.push(change),
                None => pages.push(((connection, change.entity), vec![change])),
            }
        }
        pages.sort_by_key(|((_, entity), _)| *entity);
        for ((connection, entity), changes) in pages {
            let batch = pulled(ConnectionId::new(connection), entity, changes);
            apply_batch_in_parts(&store, &rules, batch, Timestamp::now(), part_records).unwrap();
        }
        canonical_set(&store)
    }

    #[test]
    fn the_canonical_set_does_not_depend_on_the_size_of_a_pages_parts() {
        let whole = ingest_in_pages(usize::MAX);
        assert_eq!(whole, ingest_in_order(&(0..shared_world().len()).collect::<Vec<usize>>()));
        for part_records in [1, 2, 3] {
            assert_eq!(ingest_in_pages(part_records), whole, "parts of {part_records}");
        }
    }

    #[test]
    fn a_deal_read_before_its_account_leaves_one_customer_not_two() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let world = shared_world();
        let rules = world_rules();
        let page = |connection: &str, externals: &[&str]| {
            pulled(
                ConnectionId::new(connection),
                world.iter().find(|(_, change)| change.external_id.as_str() == externals[0]).unwrap().1.entity,
                world
                    .iter()
                    .filter(|(from, change)| *from == connection && externals.contains(&change.external_id.as_str()))
                    .map(|(_, change)| change.clone())
                    .collect(),
            )
        };
        // Salesforce's account first, then Zoho's order and deal (placeholders for Z1 and ZD1), then
        // Zoho's account: its data matches Salesforce's account.
        apply_batch(&store, &rules, page("sf", &["001A"]), Timestamp::now()).unwrap();
        apply_batch(&store, &rules, page("zoho", &["ZO1"]), Timestamp::now()).unwrap();
        apply_batch(&store, &rules, page("zoho", &["ZD1"]), Timestamp::now()).unwrap();
        let placeholder =
            store.record_by_link(&ConnectionId::new("zoho"), Entity::Account, &"Z1".into()).unwrap().unwrap();
        assert!(is_placeholder(&placeholder));
        apply_batch(&store, &rules, page("zoho", &["Z1"]), Timestamp::now()).unwrap();

        let accounts: Vec<Record> =
            store.scan(Entity::Account).map(Result::unwrap).filter(|record| record.merged_into.is_none()).collect();
        assert_eq!(accounts.len(), 1, "one customer, not two: {accounts:#?}");
        let customer = &accounts[0];
        let zoho_copy = customer.link(&ConnectionId::new("zoho")).unwrap();
        // `identity` explains the join: the Zoho copy joined by a match key, the placeholder redirects.
        assert!(matches!(&zoho_copy.matched_by, MatchReason::MatchKey { key, .. } if key == "name+domain"));
        assert_eq!(store.record(placeholder.id).unwrap().unwrap().merged_into, Some(customer.id));
        // Both records that pointed at the placeholder point at the customer now.
        let order = store.scan(Entity::Order).next().unwrap().unwrap();
        let deal = store.scan(Entity::Opportunity).next().unwrap().unwrap();
        let EntityData::Order(order) = order.data else { panic!("not an order") };
        let EntityData::Opportunity(deal_data) = &deal.data else { panic!("not a deal") };
        assert_eq!(order.account, Some(RecordRef::canonical(customer.id)));
        assert_eq!(deal_data.account, Some(RecordRef::canonical(customer.id)));
        // The order's deal placeholder was filled by the deal itself (no other CRM had it).
        assert_eq!(order.opportunity, Some(RecordRef::canonical(deal.id)));
        // The index follows: nothing references the placeholder any more.
        for entity in Entity::ALL {
            let listed =
                store.ids_by_match_key(*entity, reconcile::REFERENCE_KEY, &placeholder.id.to_string()).unwrap();
            assert!(listed.is_empty(), "{entity} still indexed under the placeholder");
        }
    }

    /// A full read (issue 17): the last page of one this store saw begin deletes every record linked
    /// before it began that it did not deliver, and nothing linked while it went on: a record pushed
    /// to the connection, one a webhook stored. A read that stops infers nothing; one begun again
    /// counts from its new beginning; a later page of a read never seen beginning infers nothing.
    #[test]
    fn a_complete_full_read_deletes_what_it_did_not_deliver_and_nothing_linked_while_it_went_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = rules(BTreeMap::new());
        let (sf, zoho) = (ConnectionId::new("sf"), ConnectionId::new("zoho"));
        let account = |id: &str| {
            let data = EntityData::Account(Account { name: Some(format!("Account {id}")), ..Account::default() });
            change(Entity::Account, id, data)
        };
        let page_of = |connection: &ConnectionId, ids: &[&str], full_read: FullRead, caught_up: bool| Batch::Pulled {
            connection: connection.clone(),
            entity: Entity::Account,
            changes: ids.iter().map(|id| account(id)).collect(),
            cursor: None,
            caught_up,
            undecodable: Vec::new(),
            full_read,
        };
        let page = |ids: &[&str], full_read: FullRead, caught_up: bool| page_of(&sf, ids, full_read, caught_up);
        let apply = |batch: Batch| apply_batch(&store, &rules, batch, Timestamp::now()).unwrap();
        let live = || -> BTreeSet<String> {
            store
                .scan(Entity::Account)
                .map(Result::unwrap)
                .filter(|record| !record.is_deleted())
                .flat_map(|record| {
                    record.links.into_iter().map(|link| format!("{}:{}", link.connection, link.external_id))
                })
                .collect()
        };
        let set = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<BTreeSet<String>>();

        // The first full read of a connection × entity linked to nothing keeps no marks.
        apply(page(&["A", "B"], FullRead::Begins, false));
        assert_eq!(store.full_read(&sf, Entity::Account).unwrap().generation, 0);
        apply(page(&["C", "D", "E", "F"], FullRead::Continues, true));
        apply(page_of(&zoho, &["Z1"], FullRead::No, true));
        assert_eq!(live(), set(&["sf:A", "sf:B", "sf:C", "sf:D", "sf:E", "sf:F", "zoho:Z1"]));

        // A read that stops before its last page infers nothing.
        let stats = apply(page(&["A"], FullRead::Begins, false));
        assert!(store.full_read(&sf, Entity::Account).unwrap().in_progress);
        assert_eq!(stats.deleted, 0);

        // Begun again: only what this read delivers counts. Meanwhile Z1 is pushed to sf (a link
        // added while the read goes on, after it passed where the vendor put P1), a webhook stores
        // W1, and C arrives undecodable (read, so not gone).
        apply(page(&["A"], FullRead::Begins, false));
        let z1 = store.record_by_link(&zoho, Entity::Account, &ExternalId::new("Z1")).unwrap().unwrap().id;
        let pushed = PushedRecord {
            sequences: Vec::new(),
            canonical_id: z1,
            pushed_hash: None,
            outcome: PushOutcome::Upserted { external_id: ExternalId::new("P1"), created: true, version: None },
            payload: serde_json::Value::Null,
            attempt: None,
        };
        apply(Batch::Pushed { connection: sf.clone(), entity: Entity::Account, results: vec![pushed] });
        apply(Batch::Delivered { connection: sf.clone(), changes: vec![account("W1")] });
        apply(page(&["B"], FullRead::Continues, false));
        let mut last = page(&["E"], FullRead::Continues, true);
        if let Batch::Pulled { undecodable, .. } = &mut last {
            undecodable.push(Undecodable {
                entity: Entity::Account,
                object: String::new(),
                external_id: ExternalId::new("C"),
                modified_at: Timestamp::now(),
                reason: "AnnualRevenue: \"many\" is not a number".into(),
            });
        }
        let stats = apply(last);
        assert_eq!(stats.deleted, 2, "D and F were linked before the read began and not delivered by it");
        assert_eq!(live(), set(&["sf:A", "sf:B", "sf:C", "sf:E", "sf:P1", "sf:W1", "zoho:Z1"]));
        let state = store.full_read(&sf, Entity::Account).unwrap();
        assert!(!state.in_progress, "the read ended");
        for (id, generation) in [("A", 1), ("A", state.generation), ("P1", state.generation)] {
            let marked = store.seen_in_full_read(&sf, Entity::Account, generation, &ExternalId::new(id)).unwrap();
            assert!(!marked, "{id}: the marks of generation {generation} were pruned");
        }

        // A later page of a read never begun in this store (its state says none is in progress).
        let stats = apply(page(&["A"], FullRead::Continues, true));
        assert_eq!(stats.deleted, 0);
        assert_eq!(live().len(), 7);
    }

    #[test]
    fn a_delete_of_a_record_never_stored_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut delete = shared_world()[0].1.clone();
        delete.kind = ChangeKind::Delete;
        let batch = Batch::Delivered { connection: ConnectionId::new("sf"), changes: vec![delete] };
        let stats = apply_batch(&store, &world_rules(), batch, Timestamp::now()).unwrap();
        assert_eq!((stats.deleted, stats.unchanged), (0, 1));
        assert_eq!(store.scan(Entity::Account).count(), 0, "an empty deleted record was stored");
    }

    #[test]
    fn a_vendor_time_far_in_the_future_is_clamped_and_cannot_win_later_real_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = world_rules();
        let minutes = |count: i64| Timestamp::from_unix_seconds(1_780_000_000 + 60 * count).unwrap();
        let renamed = |index: usize, name: &str, at: Timestamp| {
            let (connection, mut change) = shared_world()[index].clone();
            if let ChangeKind::Upsert { data: EntityData::Account(account), .. } = &mut change.kind {
                account.name = Some(name.into());
            }
            change.modified_at = at;
            Batch::Delivered { connection: ConnectionId::new(connection), changes: vec![change] }
        };
        let name = |store: &Store| match store.scan(Entity::Account).next().unwrap().unwrap().data {
            EntityData::Account(account) => account.name,
            _ => None,
        };
        // A Salesforce delivery claiming 2030 arrives at minute 0: it is stored with minute 0 + skew.
        apply_batch(&store, &rules, renamed(0, "Forged", "2030-01-01T00:00:00Z".parse().unwrap()), minutes(0)).unwrap();
        let stored = store.scan(Entity::Account).next().unwrap().unwrap();
        let clamped = minutes(0).saturating_add(MAX_FUTURE_SKEW, true);
        assert_eq!(stored.link(&ConnectionId::new("sf")).unwrap().last_modified, Some(clamped));
        assert_eq!(stored.provenance["name"].modified_at, clamped);
        // A real edit in the same org at minute 5 is not "stale" …
        apply_batch(&store, &rules, renamed(0, "Acme", minutes(5)), minutes(10)).unwrap();
        assert_eq!(name(&store).as_deref(), Some("Acme"));
        // … and a newer edit in another CRM wins under newest-wins.
        apply_batch(&store, &rules, renamed(1, "Acme Group", minutes(7)), minutes(10)).unwrap();
        assert_eq!(name(&store).as_deref(), Some("Acme Group"));
        assert_eq!(store.scan(Entity::Account).count(), 1);
    }

    /// A pull's page read before a push reached the vendor and applied after that push's answer was
    /// committed (a `run` that pulls and pushes at once, after a kill left the copy unread) holds the
    /// copy as an earlier push left it, with what the vendor derived by itself (Salesforce's stage
    /// probability, for a Zoho deal that has none): it is stale, not a change bringing the derived
    /// value in and pushing it on. The earlier push's answer committed, or lost to a kill (its hash
    /// then only in the outbox entry the later answer confirms). Found by the kill test (issue 17).
    #[test]
    fn a_read_older_than_a_committed_push_takes_nothing_the_vendor_derived() {
        use crmsync_connectors::canonical::{Currency, Money, Stage};
        for answer_lost in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let rules = rules(BTreeMap::new());
            let (sf, zoho) = (ConnectionId::new("sf"), ConnectionId::new("zoho"));
            let at = |minute: u32| -> Timestamp { format!("2026-11-01T00:{minute:02}:00Z").parse().unwrap() };
            let deal = |amount: i64, probability: Option<i64>| {
                EntityData::Opportunity(Opportunity {
                    name: Some("Deal 00016".into()),
                    amount: Some(Money::new(rust_decimal::Decimal::from(amount), Currency::new("EUR").unwrap())),
                    stage: Some(Stage::Execute),
                    probability: probability.map(rust_decimal::Decimal::from),
                    ..Opportunity::default()
                })
            };
            let read = |connection: &ConnectionId, external: &str, data: EntityData, minute: u32| {
                let mut read = change(Entity::Opportunity, external, data);
                read.modified_at = at(minute);
                let changes = vec![read];
                let batch = Batch::Delivered { connection: connection.clone(), changes };
                apply_batch(&store, &rules, batch, at(minute)).unwrap()
            };
            // Sends what the record holds now to Salesforce for every queued entry, and commits the
            // answer unless it is lost.
            let push = |answered: bool| {
                let record = store.scan(Entity::Opportunity).next().unwrap().unwrap();
                let sequences: Vec<u64> =
                    store.outbox_after(&sf, None, 10).unwrap().into_iter().map(|(sequence, _)| sequence).collect();
                let (_, hash) = outgoing_data(&store, &record, &sf, None, &Clone::clone).unwrap();
                let sending = Batch::Sending { connection: sf.clone(), sent: vec![(sequences.clone(), hash.clone())] };
                apply_batch(&store, &rules, sending, Timestamp::now()).unwrap();
                if answered {
                    let outcome = PushOutcome::Upserted {
                        external_id: ExternalId::new("006A"),
                        created: record.link(&sf).is_none(),
                        version: None,
                    };
                    let results = vec![PushedRecord {
                        sequences,
                        canonical_id: record.id,
                        pushed_hash: Some(hash),
                        outcome,
                        payload: serde_json::Value::Null,
                        attempt: None,
                    }];
                    let pushed = Batch::Pushed { connection: sf.clone(), entity: Entity::Opportunity, results };
                    apply_batch(&store, &rules, pushed, Timestamp::now()).unwrap();
                }
            };
            let stored = || {
                let record = store.scan(Entity::Opportunity).next().unwrap().unwrap();
                let EntityData::Opportunity(deal) = record.data else { panic!("not a deal") };
                (deal.amount.map(|amount| amount.amount.to_string()), deal.probability)
            };

            read(&zoho, "Z1", deal(1000, None), 1);
            push(true);
            read(&sf, "006A", deal(1000, Some(75)), 2);
            // An amount edit in Zoho, pushed; the daemon is killed before Salesforce's copy is read
            // back (and, when `answer_lost`, before the push's answer is committed).
            read(&zoho, "Z1", deal(1100, None), 3);
            push(!answer_lost);
            // The next run: a second edit; a Salesforce page read now holds the copy as the first
            // push left it, and is applied only after the second push's answer is committed.
            read(&zoho, "Z1", deal(1190, None), 5);
            push(true);
            let stats = read(&sf, "006A", deal(1100, Some(75)), 4);
            assert_eq!((stats.stale, stats.updated), (1, 0), "answer lost: {answer_lost}");
            assert_eq!(stored(), (Some("1190".to_owned()), None), "answer lost: {answer_lost}");
            assert!(store.outbox_after(&zoho, None, 10).unwrap().is_empty(), "nothing pushed on to Zoho");
            // The read-back of the second push is the echo, and it ends the memory: a real edit back
            // to the earlier amount in Salesforce later is a change as ever (and brings the
            // probability, as any change read from there does).
            assert_eq!(read(&sf, "006A", deal(1190, Some(75)), 6).echoes, 1);
            assert_eq!(stored(), (Some("1190".to_owned()), None));
            assert_eq!(read(&sf, "006A", deal(1100, Some(75)), 7).updated, 1);
            assert_eq!(stored(), (Some("1100".to_owned()), Some(rust_decimal::Decimal::from(75))));
        }
    }

    /// Killed between a vendor's answer to a push and its commit: the read-back of the pushed copy is
    /// our echo all the same (with `Batch::Sending`), not a change carrying what the vendor derived.
    #[test]
    fn a_pushed_copy_read_back_after_a_lost_push_answer_is_an_echo() {
        for recorded in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let rules = rules(BTreeMap::new());
            let (sf, zoho) = (ConnectionId::new("sf"), ConnectionId::new("zoho"));
            let account = EntityData::Account(Account {
                name: Some("Acme".into()),
                domain: Some("acme.example".into()),
                ..Account::default()
            });
            let pulled = Batch::Pulled {
                connection: sf.clone(),
                entity: Entity::Account,
                changes: vec![change(Entity::Account, "001A", account)],
                cursor: None,
                caught_up: true,
                undecodable: Vec::new(),
                full_read: FullRead::No,
            };
            apply_batch(&store, &rules, pulled, Timestamp::now()).unwrap();
            let record = store.scan(Entity::Account).next().unwrap().unwrap();
            let (sequence, _) = store.outbox_after(&zoho, None, 10).unwrap()[0].clone();
            let (sent_data, hash) = outgoing_data(&store, &record, &zoho, None, &Clone::clone).unwrap();
            if recorded {
                let sending = Batch::Sending { connection: zoho.clone(), sent: vec![(vec![sequence], hash.clone())] };
                apply_batch(&store, &rules, sending, Timestamp::now()).unwrap();
            }
            // The vendor created the copy (with our canonical id) and filled a field by itself; the
            // answer never reached the store.
            let EntityData::Account(mut read_back) = sent_data else { panic!("not an account") };
            read_back.industry = Some("Derived by the vendor".into());
            let mut copy = change(Entity::Account, "Z9", EntityData::Account(read_back));
            copy.canonical_hint = Some(record.id);
            let batch = Batch::Delivered { connection: zoho.clone(), changes: vec![copy] };
            let stats = apply_batch(&store, &rules, batch, Timestamp::now()).unwrap();
            let stored = store.record(record.id).unwrap().unwrap();
            let EntityData::Account(stored_account) = &stored.data else { panic!("not an account") };
            let link = stored.link(&zoho).unwrap();
            if recorded {
                assert_eq!((stats.echoes, stats.updated), (1, 0));
                assert_eq!(stored_account.industry, None, "the echo applied a vendor-derived value");
                assert_eq!(link.pushed_hash.as_deref(), Some(hash.as_str()));
            } else {
                assert_eq!(stats.echoes, 0);
                assert!(stored_account.industry.is_some());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// SPEC §7: the same canonical result whatever the order pages arrive in. The reference order
        /// is `sync`'s: every account first, then deals, then orders.
        #[test]
        fn the_canonical_set_does_not_depend_on_the_order_pages_arrive_in(
            order in Just((0..shared_world().len()).collect::<Vec<usize>>()).prop_shuffle()
        ) {
            let in_sync_order: Vec<usize> = (0..shared_world().len()).collect();
            let expected = ingest_in_order(&in_sync_order);
            proptest::prop_assert_eq!(ingest_in_order(&order), expected);
        }
    }
}
