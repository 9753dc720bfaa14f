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
    /// Records fetched that could not be decoded: dead-lettered with their vendor id and the reason.
    pub dead_lettered: u64,
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
    /// The store comparison task did not finish (it panicked or was cancelled).
    #[error("drift sweep could not compare the store with the vendor")]
    Compare(#[source] tokio::task::JoinError),
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
    // Reading every record of the entity is blocking store work: it runs on the blocking pool, not
    // on the async workers that answer health checks and signals (issue 17 §2).
    let vendor_ids = vendor.len() as u64;
    let (reader, id) = (store.clone(), connection.clone());
    let Compared { store_ids, to_fetch, deletes } =
        tokio::task::spawn_blocking(move || compare(&reader, entity, &id, &vendor))
            .await
            .map_err(SweepError::Compare)??;
    let mut report = SweepReport { vendor_ids, store_ids, ..SweepReport::default() };
    let missing: Vec<ExternalId> = deletes.into_iter().map(|change| change.external_id).collect();
    repair(connector, ingest, entity, &missing, &to_fetch, &mut report).await?;
    if report.deletes_repaired + report.fetched + report.dead_lettered > 0 {
        tracing::warn!(connection = %connection, entity = %entity, deletes = report.deletes_repaired, fetched = report.fetched, dead_lettered = report.dead_lettered, "drift sweep repaired records incremental reads missed");
    } else {
        tracing::info!(connection = %connection, entity = %entity, ids = report.vendor_ids, "drift sweep found no drift");
    }
    Ok(report)
}

/// Reads by id the linked records the listing lacked (`missing`) and those to fetch, and applies
/// what comes back. A linked id the listing lacked is not deleted on the listing's word: its link
/// may have been added after the listing began (a record crmsync pushed meanwhile, or one a webhook
/// stored), so it is read again, and only the ids the vendor no longer has come back as deletes
/// ([`Connector::fetch`]); the others come back as the records they are.
async fn repair<C: Connector>(
    connector: &C,
    ingest: &IngestHandle,
    entity: Entity,
    missing: &[ExternalId],
    to_fetch: &[ExternalId],
    report: &mut SweepReport,
) -> Result<(), SweepError> {
    let connection = connector.id();
    for chunk in missing.chunks(FETCH_CHUNK).chain(to_fetch.chunks(FETCH_CHUNK)) {
        let fetched =
            connector.fetch(entity, chunk).await.map_err(|source| SweepError::Connector { entity, source })?;
        let gone = fetched.changes.iter().filter(|change| matches!(change.kind, ChangeKind::Delete)).count() as u64;
        report.deletes_repaired += gone;
        report.fetched += fetched.changes.len() as u64 - gone;
        report.dead_lettered += fetched.undecodable.len() as u64;
        for record in &fetched.undecodable {
            tracing::warn!(connection = %connection, entity = %entity, id = %record.external_id, reason = %record.reason, "record could not be decoded: dead-lettered, the sweep goes on");
        }
        ingest.submit(Batch::Fetched { connection: connection.clone(), fetched }).await?;
    }
    Ok(())
}

/// What the store holds against the vendor's live ids.
pub(crate) struct Compared {
    /// Live links of the connection × entity in the store.
    pub(crate) store_ids: u64,
    /// Vendor ids to fetch: newer in the vendor than in the store, or unknown to the store.
    pub(crate) to_fetch: Vec<ExternalId>,
    /// Deletes of the records the vendor no longer has.
    pub(crate) deletes: Vec<Change>,
}

/// How the vendor holds a record the store links to it.
pub(crate) enum Standing {
    /// The vendor no longer has it: the record is deleted there.
    Gone,
    /// The vendor's copy changed since the store read it: fetch it.
    Newer,
    /// Nothing to repair.
    Current,
}

/// Compares the store's live links of `connection` with the vendor's live ids: links the vendor no
/// longer lists become deletes, ids newer in the vendor or unknown to the store are to fetch.
fn compare(
    store: &Store,
    entity: Entity,
    connection: &crmsync_connectors::canonical::ConnectionId,
    vendor: &BTreeMap<ExternalId, Timestamp>,
) -> Result<Compared, IngestError> {
    let mut known: BTreeSet<ExternalId> = BTreeSet::new();
    let mut compared = compare_links(store, entity, connection, |link| {
        known.insert(link.external_id.clone());
        Ok(match vendor.get(&link.external_id) {
            None => Standing::Gone,
            Some(modified) if link.last_modified.is_some_and(|seen| *modified > seen) => Standing::Newer,
            Some(_) => Standing::Current,
        })
    })?;
    compared.to_fetch.extend(vendor.keys().filter(|id| !known.contains(*id)).cloned());
    Ok(compared)
}

/// Goes through the store's live links of `connection` × `entity` (tombstones and records merged
/// away aside), asking `standing` how the vendor holds each: the drift sweep's comparison, and the
/// one that ends a full read (`crate::ingest`, which asks whether the read saw each link).
pub(crate) fn compare_links(
    store: &Store,
    entity: Entity,
    connection: &crmsync_connectors::canonical::ConnectionId,
    mut standing: impl FnMut(&crmsync_connectors::canonical::Link) -> Result<Standing, crate::store::StoreError>,
) -> Result<Compared, IngestError> {
    let mut store_ids = 0;
    let mut to_fetch: Vec<ExternalId> = Vec::new();
    let mut deletes: Vec<Change> = Vec::new();
    let now = Timestamp::now();
    for record in store.scan(entity) {
        let record = record?;
        let Some(link) = record.link(connection) else { continue };
        if record.is_deleted() || record.merged_into.is_some() {
            continue;
        }
        store_ids += 1;
        match standing(link)? {
            Standing::Gone => deletes.push(Change {
                entity,
                object: link.object.clone(),
                external_id: link.external_id.clone(),
                modified_at: now,
                version: None,
                canonical_hint: None,
                kind: ChangeKind::Delete,
                extra: serde_json::Map::new(),
            }),
            Standing::Newer => to_fetch.push(link.external_id.clone()),
            Standing::Current => {}
        }
    }
    Ok(Compared { store_ids, to_fetch, deletes })
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

#[cfg(test)]
mod tests {
    use crmsync_connectors::canonical::{
        Account, CanonicalId, ConnectionId, EntityData, Link, MatchReason, Record, Timestamp,
    };

    use super::*;
    use crate::store::Commit;

    /// A record linked after the listing began (as if crmsync pushed it meanwhile) is missing from
    /// the listing but still in the vendor: the sweep reads it again and keeps it; only a record
    /// the vendor no longer has is deleted (real HTTP to the Dataverse simulator, a real store).
    #[tokio::test]
    async fn a_link_the_listing_lacked_is_deleted_only_when_the_vendor_no_longer_has_it() {
        use crmsync_connectors::testkit::SimControl;
        let dir = tempfile::tempdir().unwrap();
        let (simulators, app) = crate::commands::demo::test_app(13, dir.path()).await;
        let dynamics = ConnectionId::new("dynamics365");
        let connector = app.connectors[&dynamics].clone();
        let cancel = CancellationToken::new();
        crate::scheduler::pull::catch_up(
            connector.as_ref(),
            &app.store,
            &app.ingest,
            Entity::Account,
            true,
            &cancel,
            |_| {},
        )
        .await
        .unwrap();
        let gone = SimControl::delete(simulators.dynamics365.state().as_ref(), Entity::Account, 1).remove(0);
        let mut listing: BTreeMap<ExternalId, Timestamp> = BTreeMap::new();
        let mut kept = None;
        for record in app.store.scan(Entity::Account) {
            let record = record.unwrap();
            let Some(link) = record.link(&dynamics) else { continue };
            if link.external_id == gone {
                continue;
            }
            if kept.is_none() {
                kept = Some(link.external_id.clone());
                continue;
            }
            listing.insert(link.external_id.clone(), link.last_modified.unwrap());
        }
        let kept = kept.unwrap();
        let compared = compare(&app.store, Entity::Account, &dynamics, &listing).unwrap();
        let missing: Vec<ExternalId> = compared.deletes.iter().map(|change| change.external_id.clone()).collect();
        assert_eq!(missing.iter().collect::<BTreeSet<_>>(), BTreeSet::from([&gone, &kept]));
        let mut report = SweepReport::default();
        repair(connector.as_ref(), &app.ingest, Entity::Account, &missing, &compared.to_fetch, &mut report)
            .await
            .unwrap();
        assert_eq!((report.deletes_repaired, report.fetched), (1, 1));
        let state =
            |id: &ExternalId| app.store.record_by_link(&dynamics, Entity::Account, id).unwrap().unwrap().is_deleted();
        assert!(state(&gone), "the record the vendor no longer has is tombstoned");
        assert!(!state(&kept), "the record the vendor still has is kept");
        app.shutdown().await.unwrap();
    }

    #[test]
    fn the_comparison_finds_deletes_newer_and_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let connection = ConnectionId::new("sf");
        let at = |minute: i64| Timestamp::from_unix_seconds(1_780_000_000 + 60 * minute).unwrap();
        let mut commit = Commit::default();
        for (external, deleted) in [("001A", false), ("001B", false), ("001C", false), ("001E", true)] {
            let mut record = Record::new(CanonicalId::new(), Entity::Account, at(0));
            record.data = EntityData::Account(Account { name: Some(external.into()), ..Account::default() });
            record.links.push(Link {
                connection: connection.clone(),
                object: "Account".into(),
                external_id: ExternalId::new(external),
                last_modified: Some(at(1)),
                last_version: None,
                pushed_hash: None,
                matched_by: MatchReason::Created,
                extra: serde_json::Map::new(),
            });
            if deleted {
                record.deleted_at = Some(at(2));
            }
            commit.records.push((record, Vec::new()));
        }
        store.commit(commit).unwrap();
        // The vendor: 001A as stored, 001B changed since, 001C gone, 001D never stored, 001E (a
        // tombstone in the store) back.
        let vendor: BTreeMap<ExternalId, Timestamp> =
            [("001A", at(1)), ("001B", at(5)), ("001D", at(3)), ("001E", at(4))]
                .into_iter()
                .map(|(id, modified)| (ExternalId::new(id), modified))
                .collect();
        let compared = compare(&store, Entity::Account, &connection, &vendor).unwrap();
        assert_eq!(compared.store_ids, 3);
        let deleted: Vec<&str> = compared.deletes.iter().map(|change| change.external_id.as_str()).collect();
        assert_eq!(deleted, ["001C"]);
        assert!(compared.deletes.iter().all(|change| matches!(change.kind, ChangeKind::Delete)));
        let fetched: Vec<&str> = compared.to_fetch.iter().map(ExternalId::as_str).collect();
        assert_eq!(fetched, ["001B", "001D", "001E"]);
    }
}
