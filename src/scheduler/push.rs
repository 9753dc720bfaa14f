//! Push: drain a connection's outbox in the vendor's batch size, in dependency order (accounts before
//! the opportunities and orders that reference them), and report each record's outcome to ingest.
//!
//! # Dead letters wait
//!
//! A record the vendor rejects (or its connector refuses before the call) is dead-lettered **once**,
//! with a fingerprint of what was sent ([`fingerprint`]). While that dead letter waits, the record is not
//! sent to that connection again as long as what would be sent is the same: re-queuing it (another
//! pass, a dependent record, a re-read) costs no API call and adds no dead letter. It is sent again
//! when it changes (or a record it references gets the connection's id), when an operator retries
//! it (`crmsync dlq retry`, `POST /api/v1/dlq`), or when the connection's configuration changed
//! (the daemon retries that connection's dead letters at start). A later success removes the letter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crmsync_connectors::canonical::{CanonicalId, Entity, EntityData};
use crmsync_connectors::settings::FieldPolicy;
use crmsync_connectors::{Connector, ConnectorError, Outgoing, OutgoingOp, PushOutcome, RetryAdvice};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Backoff, advice_label, error_chain, jittered};
use crate::ingest::{self, Batch, IngestError, IngestHandle, IngestStats, PushedRecord};
use crate::store::{OutboxOp, Store};
use crate::telemetry;

/// Why a drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The vendor call failed transiently; the entries stay queued.
    #[error("push of {entity} failed")]
    Connector {
        /// Entity.
        entity: Entity,
        /// The error.
        #[source]
        source: ConnectorError,
    },
    /// The store or the writer failed.
    #[error("push bookkeeping failed")]
    Ingest(#[from] IngestError),
    /// The store read of a page did not finish (it panicked, or the runtime is shutting down).
    #[error("reading the outbox failed")]
    Read(#[source] tokio::task::JoinError),
}

/// Counts of one drain, per entity.
#[derive(Debug, Clone, Default)]
pub struct PushSummary {
    /// What ingest recorded, per entity.
    pub per_entity: BTreeMap<Entity, IngestStats>,
}

const FETCH: usize = 2000;

/// Records of one entity queued in one outbox page, each once with every sequence that queued it.
type Queue = Vec<(CanonicalId, OutboxOp, Vec<u64>)>;

/// One page of the outbox, grouped by entity.
struct OutboxPage {
    /// The last sequence read.
    last: u64,
    /// The queued records by entity.
    grouped: BTreeMap<Entity, Queue>,
}

/// What to send for one entity of a page, and the sequences that need no call.
#[derive(Default)]
struct Plan {
    batch: Vec<(Outgoing, PushedRecord)>,
    skipped: Vec<u64>,
}

/// Runs store reads off the async workers (sled reads block on I/O, and a page of the outbox reads
/// thousands of records).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IngestError> + Send + 'static,
) -> Result<T, PushError> {
    Ok(tokio::task::spawn_blocking(work).await.map_err(PushError::Read)??)
}

/// Reads the next page of the outbox after `after` and groups it by entity (`None`: it is empty).
fn read_page(
    store: &Store,
    connection: &crmsync_connectors::canonical::ConnectionId,
    after: Option<u64>,
    entities: Option<&[Entity]>,
) -> Result<Option<OutboxPage>, IngestError> {
    let entries = store.outbox_after(connection, after, FETCH)?;
    let Some(last) = entries.last().map(|(sequence, _)| *sequence) else { return Ok(None) };
    let mut grouped: BTreeMap<Entity, Queue> = BTreeMap::new();
    for (sequence, entry) in entries {
        if entities.is_some_and(|wanted| !wanted.contains(&entry.entity)) {
            continue;
        }
        let queue = grouped.entry(entry.entity).or_default();
        match queue.iter_mut().find(|(id, _, _)| *id == entry.canonical_id) {
            // A later delete or mark supersedes an earlier upsert of the same record.
            Some(existing) => {
                existing.2.push(sequence);
                if entry.op != OutboxOp::Upsert {
                    existing.1 = entry.op;
                }
            }
            None => queue.push((entry.canonical_id, entry.op, vec![sequence])),
        }
    }
    Ok(Some(OutboxPage { last, grouped }))
}

/// Builds what to send for one entity's queue. Run after the entities it depends on were pushed and
/// recorded, so references carry the ids those pushes produced.
fn plan<C: Connector>(
    store: &Store,
    connector: &C,
    policy: Option<&FieldPolicy>,
    entity: Entity,
    queue: Queue,
) -> Result<Plan, IngestError> {
    let connection = connector.id();
    let mut plan = Plan::default();
    for (id, op, sequences) in queue {
        let Some((outgoing, hash)) = prepare(store, connection, id, op, policy, &|data| connector.representable(data))?
        else {
            plan.skipped.extend(sequences);
            continue;
        };
        let would_send = fingerprint(&outgoing);
        let held = store
            .pushed_dead_letter(connection, id)?
            .is_some_and(|letter| letter.attempt.as_deref() == Some(would_send.as_str()));
        if held {
            // Rejected before exactly as it would be sent now: it waits in the dead-letter queue.
            tracing::debug!(connection = %connection, entity = %entity, record = %id, "held: dead-lettered with the same values");
            plan.skipped.extend(sequences);
            continue;
        }
        plan.batch.push((
            outgoing.clone(),
            PushedRecord {
                sequences,
                canonical_id: id,
                pushed_hash: hash,
                outcome: PushOutcome::Deleted,
                payload: serde_json::to_value(&outgoing).unwrap_or(serde_json::Value::Null),
                attempt: Some(would_send),
            },
        ));
    }
    Ok(plan)
}

/// Pushes everything queued for the connector's connection (entries queued while draining included),
/// restricted to `entities` when given. Transient per-record failures stay queued for the next drain.
/// Store reads run on the blocking pool; the vendor calls and the writer's answers are awaited here.
pub async fn drain<C: Connector>(
    connector: &Arc<C>,
    store: &Store,
    ingest: &IngestHandle,
    policy: Option<&FieldPolicy>,
    entities: Option<&[Entity]>,
    cancel: &CancellationToken,
) -> Result<PushSummary, PushError> {
    let connection = connector.id().clone();
    let policy = policy.cloned().map(Arc::new);
    let entities: Option<Arc<[Entity]>> = entities.map(Arc::from);
    let mut summary = PushSummary::default();
    let mut after: Option<u64> = None;
    loop {
        if cancel.is_cancelled() {
            return Ok(summary);
        }
        let page = {
            let (store, connection, entities) = (store.clone(), connection.clone(), entities.clone());
            blocking(move || read_page(&store, &connection, after, entities.as_deref())).await?
        };
        let Some(OutboxPage { last, mut grouped }) = page else {
            telemetry::record_outbox_depth(&connection, 0);
            return Ok(summary);
        };
        after = Some(last);
        let mut skipped = Vec::new();
        for entity in Entity::ALL {
            let Some(queue) = grouped.remove(entity) else { continue };
            let plan = {
                let (store, connector, policy, entity) = (store.clone(), connector.clone(), policy.clone(), *entity);
                blocking(move || plan(&store, connector.as_ref(), policy.as_deref(), entity, queue)).await?
            };
            skipped.extend(plan.skipped);
            for chunk in plan.batch.chunks(connector.push_batch_size().max(1)) {
                // What is about to be sent is recorded (durably) first: if the daemon dies after the
                // vendor applied it but before its answer is committed, the read-back is still known
                // for our own echo.
                let sent = chunk
                    .iter()
                    .filter_map(|(_, pushed)| Some((pushed.sequences.clone(), pushed.pushed_hash.clone()?)))
                    .collect();
                ingest.submit(Batch::Sending { connection: connection.clone(), sent }).await?;
                let outgoing: Vec<Outgoing> = chunk.iter().map(|(outgoing, _)| outgoing.clone()).collect();
                // The connector's retry and throttling logs carry the connection and entity from this span.
                let span = tracing::info_span!("push", connection = %connection, entity = %entity);
                let results = match tracing::Instrument::instrument(connector.push(*entity, &outgoing), span).await {
                    Ok(report) => chunk
                        .iter()
                        .zip(report.results)
                        .map(|((_, pushed), result)| PushedRecord { outcome: result.outcome, ..pushed.clone() })
                        .collect::<Vec<_>>(),
                    Err(error) if error.retry_advice() == RetryAdvice::GiveUp => {
                        // The vendor refuses the call itself (not a transient failure): every record goes to
                        // the dead-letter queue with the vendor's message, so the rest of the outbox moves on.
                        let message = error_chain(&error);
                        chunk
                            .iter()
                            .map(|(_, pushed)| PushedRecord {
                                outcome: PushOutcome::Rejected {
                                    code: "CALL_REJECTED".into(),
                                    message: message.clone(),
                                },
                                ..pushed.clone()
                            })
                            .collect()
                    }
                    Err(source) => {
                        telemetry::record_sync_error(&connection, *entity, advice_label(source.retry_advice()));
                        return Err(PushError::Connector { entity: *entity, source });
                    }
                };
                let stats =
                    ingest.submit(Batch::Pushed { connection: connection.clone(), entity: *entity, results }).await?;
                summary.per_entity.entry(*entity).or_default().add(&stats);
            }
        }
        if !skipped.is_empty() {
            ingest.submit(Batch::Skipped { connection: connection.clone(), sequences: skipped }).await?;
        }
    }
}

/// Builds the outgoing change for one queued record, or `None` when there is nothing to send (the
/// record is gone, or a delete targets a copy the connection never had).
fn prepare(
    store: &Store,
    connection: &crmsync_connectors::canonical::ConnectionId,
    id: CanonicalId,
    op: OutboxOp,
    policy: Option<&FieldPolicy>,
    representable: &dyn Fn(&EntityData) -> EntityData,
) -> Result<Option<(Outgoing, Option<String>)>, IngestError> {
    let Some(record) = store.record(id)? else { return Ok(None) };
    let link = record.link(connection);
    let external_id = link.map(|link| link.external_id.clone());
    let expected_version = link.and_then(|link| link.last_version.clone());
    let (op, hash) = match op {
        OutboxOp::Delete => {
            if external_id.is_none() {
                return Ok(None);
            }
            (OutgoingOp::Delete, None)
        }
        // Cancelling a copy the connection never had would create it just to cancel it.
        OutboxOp::Mark if external_id.is_none() => return Ok(None),
        OutboxOp::Mark => match ingest::marked_data(&record) {
            Some(data) => {
                let (data, hash) = ingest::outgoing_data(
                    store,
                    &crmsync_connectors::canonical::Record { data, ..record.clone() },
                    connection,
                    policy,
                    representable,
                )?;
                (OutgoingOp::Upsert { data }, Some(hash))
            }
            None => return Ok(None),
        },
        OutboxOp::Upsert => {
            if record.is_deleted() {
                return Ok(None);
            }
            let (data, hash) = ingest::outgoing_data(store, &record, connection, policy, representable)?;
            (OutgoingOp::Upsert { data }, Some(hash))
        }
    };
    Ok(Some((Outgoing { canonical_id: id, external_id, expected_version, op }, hash)))
}

/// The fingerprint of a push: what would be written (the target's id and the operation with its
/// values), not the vendor version it is conditioned on (which the vendor moves).
pub fn fingerprint(outgoing: &Outgoing) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&outgoing.external_id).unwrap_or_default());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(&outgoing.op).unwrap_or_default());
    hasher.finalize().iter().take(16).map(|byte| format!("{byte:02x}")).collect()
}

/// The daemon's push loop for one connection: drain, wait, repeat; transient errors back off.
pub async fn run<C: Connector>(
    connector: Arc<C>,
    store: Store,
    ingest: IngestHandle,
    policy: Option<FieldPolicy>,
    interval: Duration,
    cancel: CancellationToken,
    backoff: Backoff,
) {
    let connection = connector.id().clone();
    let mut attempt = 0u32;
    loop {
        let pass = tracing::info_span!("push_pass", connection = %connection);
        let drained = drain(&connector, &store, &ingest, policy.as_ref(), None, &cancel);
        let wait = match tracing::Instrument::instrument(drained, pass).await {
            Ok(summary) => {
                attempt = 0;
                for (entity, stats) in &summary.per_entity {
                    tracing::info!(connection = %connection, entity = %entity, pushed = stats.pushed, rejected = stats.rejected, retried = stats.retried, "push pass");
                }
                jittered(interval)
            }
            Err(PushError::Ingest(IngestError::Stopped)) => return,
            Err(error) => {
                attempt += 1;
                tracing::warn!(connection = %connection, error = %error_chain(&error), "push failed");
                match &error {
                    PushError::Connector { source, .. } => backoff.delay(attempt, source),
                    PushError::Ingest(_) | PushError::Read(_) => backoff.jitter(attempt),
                }
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    use crmsync_connectors::canonical::{Account, CanonicalId, ConnectionId, ExternalId, Order, RecordRef, VendorKind};
    use crmsync_connectors::{
        ApiUsage, Change, ChangeKind, CheckReport, Completeness, Cursor, Fetched, IdPage, Page, PushReport, PushResult,
        WebhookDelivery, WebhookError, WebhookParser, WebhookReply,
    };

    use super::*;
    use crate::ingest::operator::{DeadLetterSelection, OperatorAction};
    use crate::ingest::{IngestRules, Ingestor};
    use crate::reconcile::{DeleteAction, Route, Rules};

    /// A target CRM that refuses accounts named "Bad…" (while `strict`) and counts what it is sent.
    struct Target {
        id: ConnectionId,
        strict: std::sync::atomic::AtomicBool,
        sent: Mutex<HashMap<CanonicalId, usize>>,
        calls: std::sync::atomic::AtomicU64,
    }

    impl WebhookParser for Target {
        fn parse_webhook(&self, _: &WebhookDelivery<'_>) -> Result<WebhookReply, WebhookError> {
            Err(WebhookError::NotConfigured)
        }
    }

    impl Connector for Target {
        fn id(&self) -> &ConnectionId {
            &self.id
        }
        fn kind(&self) -> VendorKind {
            VendorKind::Salesforce
        }
        fn entities(&self) -> &[Entity] {
            Entity::ALL
        }
        fn push_batch_size(&self) -> usize {
            200
        }
        async fn check(&self) -> Result<CheckReport, ConnectorError> {
            Ok(CheckReport::default())
        }
        async fn pull(&self, _: Entity, _: Option<&Cursor>) -> Result<Page, ConnectorError> {
            Ok(Page::new(Vec::new(), Cursor::new(""), false))
        }
        async fn fetch(&self, _: Entity, _: &[ExternalId]) -> Result<Fetched, ConnectorError> {
            Ok(Fetched::default())
        }
        async fn list_ids(&self, _: Entity, _: Option<&Cursor>) -> Result<IdPage, ConnectorError> {
            Ok(IdPage { ids: Vec::new(), next: None })
        }
        async fn push(&self, _: Entity, batch: &[Outgoing]) -> Result<PushReport, ConnectorError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let strict = self.strict.load(std::sync::atomic::Ordering::SeqCst);
            let mut results = Vec::new();
            for outgoing in batch {
                *self.sent.lock().unwrap().entry(outgoing.canonical_id).or_default() += 1;
                let bad = matches!(&outgoing.op, OutgoingOp::Upsert { data: EntityData::Account(account) }
                    if account.name.as_deref().is_some_and(|name| name.starts_with("Bad")));
                let outcome = if bad && strict {
                    PushOutcome::Rejected {
                        code: "FIELD_CUSTOM_VALIDATION_EXCEPTION".into(),
                        message: "bad name".into(),
                    }
                } else {
                    PushOutcome::Upserted {
                        external_id: ExternalId::new(format!("T-{}", outgoing.canonical_id)),
                        created: true,
                        version: None,
                    }
                };
                results.push(PushResult { canonical_id: outgoing.canonical_id, outcome });
            }
            Ok(PushReport { results })
        }
        fn usage(&self) -> ApiUsage {
            ApiUsage::default()
        }
    }

    fn change(entity: Entity, external: &str, data: EntityData, at: &str) -> Change {
        Change {
            entity,
            object: String::new(),
            external_id: ExternalId::new(external),
            modified_at: at.parse().unwrap(),
            version: None,
            canonical_hint: None,
            kind: ChangeKind::Upsert { data, completeness: Completeness::Full },
            extra: serde_json::Map::new(),
        }
    }

    fn account(name: &str) -> EntityData {
        EntityData::Account(Account { name: Some(name.into()), ..Account::default() })
    }

    fn order(number: &str) -> EntityData {
        EntityData::Order(Order {
            number: Some(number.into()),
            account: Some(RecordRef::external("001A")),
            ..Order::default()
        })
    }

    #[tokio::test]
    async fn a_rejected_record_is_dead_lettered_once_and_waits_until_it_changes_or_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (source, target) = (ConnectionId::new("src"), ConnectionId::new("dst"));
        let rules = Rules {
            routes: vec![Route {
                entity: None,
                from: vec![source.clone()],
                to: vec![target.clone()],
                on_delete: DeleteAction::Ignore,
            }],
            ..Rules::default()
        };
        let rules =
            IngestRules { rules: Arc::new(rules), fields: Arc::new(BTreeMap::new()), superseded: Arc::default() };
        let (writer, ingest) = Ingestor::new(store.clone(), rules, 8);
        let writer = tokio::spawn(writer.run());
        let connector =
            Arc::new(Target { id: target.clone(), strict: true.into(), sent: Mutex::default(), calls: 0.into() });
        let cancel = CancellationToken::new();
        let deliver = |changes: Vec<Change>| ingest.submit(Batch::Delivered { connection: source.clone(), changes });
        let drain = || drain(&connector, &store, &ingest, None, None, &cancel);
        let account_id =
            || store.record_by_link(&source, Entity::Account, &ExternalId::new("001A")).unwrap().unwrap().id;
        let sent = |id: CanonicalId| connector.sent.lock().unwrap().get(&id).copied().unwrap_or(0);

        deliver(vec![change(Entity::Account, "001A", account("Bad Co"), "2026-11-01T00:00:00Z")]).await.unwrap();
        let first = drain().await.unwrap();
        assert_eq!(first.per_entity[&Entity::Account].rejected, 1);
        let id = account_id();
        assert_eq!((sent(id), store.dead_letter_count().unwrap()), (1, 1));
        let letter = store.pushed_dead_letter(&target, id).unwrap().expect("the rejection waits in the queue");
        assert!(letter.attempt.is_some());

        // Orders that reference the account queue it again (dependencies first); while it is the same,
        // it is not sent again and no second dead letter appears, pass after pass.
        for (external, number) in [("801A", "O-1"), ("801B", "O-2"), ("801C", "O-3")] {
            deliver(vec![change(Entity::Order, external, order(number), "2026-11-01T00:00:01Z")]).await.unwrap();
            drain().await.unwrap();
        }
        assert_eq!(sent(id), 1, "a dead-lettered record with the same values is not sent again");
        assert_eq!(store.dead_letter_count().unwrap(), 1);
        assert_eq!(store.outbox_depth(&target).unwrap(), 0, "held entries leave the outbox");

        // Changed, it is sent again; refused again, it still has one dead letter (the new one).
        deliver(vec![change(Entity::Account, "001A", account("Bad Company"), "2026-11-02T00:00:00Z")]).await.unwrap();
        drain().await.unwrap();
        assert_eq!(sent(id), 2);
        assert_eq!(store.dead_letter_count().unwrap(), 1);
        let replaced = store.pushed_dead_letter(&target, id).unwrap().unwrap();
        assert_ne!(replaced.id, letter.id);

        // An operator's retry sends it once more.
        ingest.operate(OperatorAction::RetryDeadLetters(DeadLetterSelection::All)).await.unwrap();
        drain().await.unwrap();
        assert_eq!((sent(id), store.dead_letter_count().unwrap()), (3, 1));

        // Accepted at last (the vendor's rule changed): the dead letter goes.
        connector.strict.store(false, std::sync::atomic::Ordering::SeqCst);
        ingest.operate(OperatorAction::RetryDeadLetters(DeadLetterSelection::All)).await.unwrap();
        drain().await.unwrap();
        assert_eq!((sent(id), store.dead_letter_count().unwrap()), (4, 0));
        assert!(store.pushed_dead_letter(&target, id).unwrap().is_none());
        assert!(store.record(id).unwrap().unwrap().link(&target).is_some());

        drop(ingest);
        writer.await.unwrap();
    }
}
