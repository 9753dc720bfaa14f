//! Push: drain a connection's outbox in the vendor's batch size, in dependency order (accounts before
//! the opportunities and orders that reference them), and report each record's outcome to ingest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crmsync_connectors::canonical::{CanonicalId, Entity, EntityData};
use crmsync_connectors::settings::FieldPolicy;
use crmsync_connectors::{Connector, ConnectorError, Outgoing, OutgoingOp, PushOutcome, RetryAdvice};
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
}

/// Counts of one drain, per entity.
#[derive(Debug, Clone, Default)]
pub struct PushSummary {
    /// What ingest recorded, per entity.
    pub per_entity: BTreeMap<Entity, IngestStats>,
}

const FETCH: usize = 2000;

/// Pushes everything queued for the connector's connection (entries queued while draining included),
/// restricted to `entities` when given. Transient per-record failures stay queued for the next drain.
pub async fn drain<C: Connector>(
    connector: &C,
    store: &Store,
    ingest: &IngestHandle,
    policy: Option<&FieldPolicy>,
    entities: Option<&[Entity]>,
    cancel: &CancellationToken,
) -> Result<PushSummary, PushError> {
    let connection = connector.id().clone();
    let mut summary = PushSummary::default();
    let mut after: Option<u64> = None;
    loop {
        if cancel.is_cancelled() {
            return Ok(summary);
        }
        let entries = store.outbox_after(&connection, after, FETCH).map_err(IngestError::from)?;
        let Some(last) = entries.last().map(|(sequence, _)| *sequence) else {
            telemetry::record_outbox_depth(&connection, 0);
            return Ok(summary);
        };
        after = Some(last);
        // Group by entity, keeping each record once with every sequence that queued it.
        let mut grouped: BTreeMap<Entity, Vec<(CanonicalId, OutboxOp, Vec<u64>)>> = BTreeMap::new();
        let mut skipped = Vec::new();
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
        for entity in Entity::ALL {
            let Some(queue) = grouped.remove(entity) else { continue };
            let mut batch: Vec<(Outgoing, PushedRecord)> = Vec::new();
            for (id, op, sequences) in queue {
                match prepare(store, &connection, id, op, policy, &|data| connector.representable(data))? {
                    Some((outgoing, hash)) => batch.push((
                        outgoing.clone(),
                        PushedRecord {
                            sequences,
                            canonical_id: id,
                            pushed_hash: hash,
                            outcome: PushOutcome::Deleted,
                            payload: serde_json::to_value(&outgoing).unwrap_or(serde_json::Value::Null),
                        },
                    )),
                    None => skipped.extend(sequences),
                }
            }
            for chunk in batch.chunks(connector.push_batch_size().max(1)) {
                // What is about to be sent is recorded (durably) first: if the daemon dies after the
                // vendor applied it but before its answer is committed, the read-back is still known
                // for our own echo.
                let sent = chunk
                    .iter()
                    .filter_map(|(_, pushed)| Some((pushed.sequences.clone(), pushed.pushed_hash.clone()?)))
                    .collect();
                ingest.submit(Batch::Sending { connection: connection.clone(), sent }).await?;
                let outgoing: Vec<Outgoing> = chunk.iter().map(|(outgoing, _)| outgoing.clone()).collect();
                let results = match connector.push(*entity, &outgoing).await {
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
            store.outbox_remove(&connection, &skipped).map_err(IngestError::from)?;
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
        let wait = match drain(connector.as_ref(), &store, &ingest, policy.as_ref(), None, &cancel).await {
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
                    PushError::Ingest(_) => backoff.jitter(attempt),
                }
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
