//! Full reads: a connection × entity's read of every vendor row from the origin
//! ([`crmsync_connectors::FullRead`]), and the vendor ids it saw, kept on disk (`full_reads` tree)
//! so that a read of a million rows costs no memory and survives a restart.
//!
//! A read begins with a new generation (one more than the last); each of its pages marks the ids
//! it delivered with that generation, in the commit that stores the page and its cursor, so a read
//! resumed from its committed cursor has every mark of the pages before. While a read is in
//! progress, every link of that connection × entity the store adds, by whatever path (a push, a
//! webhook, a placeholder, the drift sweep), is marked too, in the commit that adds it. So at the
//! end of the read, a live link without a mark of its generation is one that existed before the
//! read began and that the read did not deliver: the vendor no longer has it. Marks of other
//! generations (a read that was interrupted and began again, or one that ended) are pruned.

use crmsync_connectors::canonical::{ConnectionId, Entity, ExternalId};
use sled::transaction::TransactionalTree;

use super::{Abort, FullReadStep, Store, StoreError, keys};

/// Where a connection × entity's full reads stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FullReadState {
    /// The generation of the last read begun (0: none yet).
    pub generation: u64,
    /// Whether that read is in progress (begun and not ended).
    pub in_progress: bool,
}

impl FullReadState {
    fn decode(bytes: &[u8]) -> Self {
        let generation = bytes.get(..8).and_then(|head| head.try_into().ok()).map_or(0, u64::from_be_bytes);
        Self { generation, in_progress: bytes.get(8) == Some(&1) }
    }

    fn encode(self) -> [u8; 9] {
        let mut bytes = [0; 9];
        bytes[..8].copy_from_slice(&self.generation.to_be_bytes());
        bytes[8] = u8::from(self.in_progress);
        bytes
    }

    /// The generation of the read in progress, if one is.
    pub fn reading(self) -> Option<u64> {
        self.in_progress.then_some(self.generation)
    }
}

/// The marks one commit writes, with the state of each connection × entity it touched (read once
/// per transaction attempt).
#[derive(Default)]
pub(super) struct Marks {
    reading: Vec<((ConnectionId, Entity), Option<u64>)>,
}

impl Marks {
    fn reading(
        &mut self,
        tree: &TransactionalTree,
        connection: &ConnectionId,
        entity: Entity,
    ) -> Result<Option<u64>, Abort> {
        if let Some((_, generation)) = self.reading.iter().find(|((c, e), _)| c == connection && *e == entity) {
            return Ok(*generation);
        }
        let state = tree.get(keys::full_read_state(connection, entity))?.map(|bytes| FullReadState::decode(&bytes));
        let generation = state.and_then(FullReadState::reading);
        self.reading.push(((connection.clone(), entity), generation));
        Ok(generation)
    }

    fn set(&mut self, tree: &TransactionalTree, step: &FullReadStep, in_progress: bool) -> Result<(), Abort> {
        let state = FullReadState { generation: step.generation, in_progress };
        tree.insert(keys::full_read_state(&step.connection, step.entity), &state.encode())?;
        self.reading.retain(|((c, e), _)| !(c == &step.connection && *e == step.entity));
        self.reading.push(((step.connection.clone(), step.entity), state.reading()));
        Ok(())
    }

    /// Starts the step's read: in progress from this commit on.
    pub(super) fn begin(&mut self, tree: &TransactionalTree, step: &FullReadStep) -> Result<(), Abort> {
        self.set(tree, step, true)
    }

    /// Marks a link the commit adds, when a full read of its connection × entity is in progress.
    pub(super) fn linked(
        &mut self,
        tree: &TransactionalTree,
        connection: &ConnectionId,
        entity: Entity,
        external_id: &ExternalId,
    ) -> Result<(), Abort> {
        if let Some(generation) = self.reading(tree, connection, entity)? {
            tree.insert(keys::full_read_mark(connection, entity, generation, external_id), &[])?;
        }
        Ok(())
    }

    /// Marks the page's ids and ends the read on its last page, when the read in progress is the
    /// step's (a page of a read the store never saw begin marks nothing).
    pub(super) fn page(&mut self, tree: &TransactionalTree, step: &FullReadStep) -> Result<(), Abort> {
        if self.reading(tree, &step.connection, step.entity)? != Some(step.generation) {
            return Ok(());
        }
        for external_id in &step.seen {
            tree.insert(keys::full_read_mark(&step.connection, step.entity, step.generation, external_id), &[])?;
        }
        if step.ends {
            self.set(tree, step, false)?;
        }
        Ok(())
    }
}

/// Marks removed per batch when pruning.
const PRUNE_BATCH: usize = 10_000;

impl Store {
    /// Where the full reads of `connection` × `entity` stand.
    pub fn full_read(&self, connection: &ConnectionId, entity: Entity) -> Result<FullReadState, StoreError> {
        let read = || -> Result<FullReadState, StoreError> {
            let t = self.trees()?;
            Ok(t.full_reads
                .get(keys::full_read_state(connection, entity))?
                .map(|bytes| FullReadState::decode(&bytes))
                .unwrap_or_default())
        };
        self.observe(read(), false)
    }

    /// Whether generation `generation` of the full read of `connection` × `entity` delivered (or
    /// linked) `external_id`.
    pub fn seen_in_full_read(
        &self,
        connection: &ConnectionId,
        entity: Entity,
        generation: u64,
        external_id: &ExternalId,
    ) -> Result<bool, StoreError> {
        let read = || -> Result<bool, StoreError> {
            let t = self.trees()?;
            Ok(t.full_reads.contains_key(keys::full_read_mark(connection, entity, generation, external_id))?)
        };
        self.observe(read(), false)
    }

    /// Whether the store links any record to `connection` × `entity`.
    pub fn has_links(&self, connection: &ConnectionId, entity: Entity) -> Result<bool, StoreError> {
        let read = || -> Result<bool, StoreError> {
            let t = self.trees()?;
            Ok(t.links.scan_prefix(keys::link_prefix(connection, entity)).keys().next().transpose()?.is_some())
        };
        self.observe(read(), false)
    }

    /// Removes the marks of every generation of `connection` × `entity` but the read in progress
    /// (reads that ended, or were begun again): they decide nothing any more. Returns how many.
    pub fn prune_full_read_marks(&self, connection: &ConnectionId, entity: Entity) -> Result<u64, StoreError> {
        let prune = || -> Result<u64, StoreError> {
            let t = self.trees()?;
            let keep = self.full_read(connection, entity)?.reading();
            let prefix = keys::full_read_marks(connection, entity);
            let mut removed = 0u64;
            let mut batch = sled::Batch::default();
            let mut pending = 0;
            for key in t.full_reads.scan_prefix(&prefix).keys() {
                let key = key?;
                let generation = key
                    .get(prefix.len()..prefix.len() + 8)
                    .and_then(|bytes| bytes.try_into().ok())
                    .map(u64::from_be_bytes);
                if generation.is_some() && generation == keep {
                    continue;
                }
                batch.remove(key);
                pending += 1;
                if pending == PRUNE_BATCH {
                    t.full_reads.apply_batch(std::mem::take(&mut batch))?;
                    removed += pending as u64;
                    pending = 0;
                }
            }
            t.full_reads.apply_batch(batch)?;
            Ok(removed + pending as u64)
        };
        self.observe(prune(), true)
    }
}
