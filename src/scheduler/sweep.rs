//! Drift sweep: compares a connection × entity's live vendor ids (and modification times) with the
//! store's links and repairs what incremental reads missed — hard deletes no delete feed reported,
//! records committed late or lost to vendor quirks. What it repaired is counted and logged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crmsync_connectors::canonical::{Entity, ExternalId, Timestamp};
use crmsync_connectors::{Change, ChangeKind, Connector, ConnectorError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ingest::{Batch, IngestError, IngestHandle};
use crate::store::Store;

/// What one sweep found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Live ids the vendor listed.
    pub vendor_ids: u64,
    /// Live links the store had.
    pub store_ids: u64,
    /// Records gone from the vendor but live in the store: tombstoned now.
    pub deletes_repaired: u64,
    /// Records missing from the store or newer in the vendor: fetched and applied now.
    pub fetched: u64,
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Listing or fetching failed.
    #[error("drift sweep of {entity} failed")]
    Connector {
        /// Entity.
        entity: Entity,
        /// Cause.
        #[source]
        source: ConnectorError,
    },
    /// Applying the repairs failed.
    #[error("drift sweep could not apply its repairs")]
    Ingest(#[from] IngestError),
}

const FETCH_CHUNK: usize = 100;

/// Runs one sweep of `entity` on `connector`.
pub async fn sweep<C: Connector>(
    connector: &C,
    store: &Store,
    ingest: &IngestHandle,
    entity: Entity,
) -> Result<SweepReport, SweepError> {
    let connection = connector.id().clone();
    let mut vendor: BTreeMap<ExternalId, Timestamp> = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = connector
            .list_ids(entity, cursor.as_ref())
            .await
            .map_err(|source| SweepError::Connector { entity, source })?;
        vendor.extend(page.ids);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut report = SweepReport { vendor_ids: vendor.len() as u64, ..SweepReport::default() };
    let mut known: BTreeSet<ExternalId> = BTreeSet::new();
    let mut to_fetch: Vec<ExternalId> = Vec::new();
    let mut deletes: Vec<Change> = Vec::new();
    let now = Timestamp::now();
    for record in store.scan(entity) {
        let record = record.map_err(IngestError::from)?;
        let Some(link) = record.link(&connection) else { continue };
        if record.is_deleted() || record.merged_into.is_some() {
            continue;
        }
        report.store_ids += 1;
        known.insert(link.external_id.clone());
        match vendor.get(&link.external_id) {
            None => deletes.push(Change {
                entity,
                object: link.object.clone(),
                external_id: link.external_id.clone(),
                modified_at: now,
                version: None,
                canonical_hint: None,
                kind: ChangeKind::Delete,
                extra: serde_json::Map::new(),
            }),
            Some(modified) if link.last_modified.is_some_and(|seen| *modified > seen) => {
                to_fetch.push(link.external_id.clone())
            }
            Some(_) => {}
        }
    }
    to_fetch.extend(vendor.keys().filter(|id| !known.contains(*id)).cloned());
    report.deletes_repaired = deletes.len() as u64;
    if !deletes.is_empty() {
        ingest.submit(Batch::Delivered { connection: connection.clone(), changes: deletes }).await?;
    }
    for chunk in to_fetch.chunks(FETCH_CHUNK) {
        let changes =
            connector.fetch(entity, chunk).await.map_err(|source| SweepError::Connector { entity, source })?;
        report.fetched += changes.len() as u64;
        ingest.submit(Batch::Delivered { connection: connection.clone(), changes }).await?;
    }
    if report.deletes_repaired + report.fetched > 0 {
        tracing::warn!(connection = %connection, entity = %entity, deletes = report.deletes_repaired, fetched = report.fetched, "drift sweep repaired records incremental reads missed");
    } else {
        tracing::info!(connection = %connection, entity = %entity, ids = report.vendor_ids, "drift sweep found no drift");
    }
    Ok(report)
}

/// The daemon's sweep loop for one connection: every `interval` (jittered, the first one after a
/// full interval), sweeps each of its entities; a failed sweep is logged and tried again next time.
pub async fn run<C: Connector>(
    connector: Arc<C>,
    store: Store,
    ingest: IngestHandle,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(super::jittered(interval)) => {}
        }
        for entity in connector.entities().to_vec() {
            let span = tracing::info_span!("sweep", connection = %connector.id(), entity = %entity);
            if let Err(error) =
                tracing::Instrument::instrument(sweep(connector.as_ref(), &store, &ingest, entity), span).await
            {
                tracing::warn!(connection = %connector.id(), entity = %entity, error = %super::error_chain(&error), "drift sweep failed");
            }
        }
    }
}
