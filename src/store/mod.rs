//! The canonical store: sled behind a typed API. The only module that touches sled.
//!
//! Trees and key layouts are documented in [`keys`]; every value encoding is in [`format`](mod@format): records
//! in a compact binary form with a version byte, the small values as JSON in a versioned envelope.
//! Opening a store of format 1 (records as JSON, crmsync before the binary records) rewrites its
//! records in place, resumably, before anything else reads them. [`Store::commit`] writes records (with
//! their link and match-key index entries), a cursor, outbox changes, conflicts, dead letters and
//! sync status in **one** multi-tree transaction: a page is either wholly stored with its cursor, or
//! not at all. sled writes reach disk on flush (every 500 ms, or [`Store::flush`]); nothing may be
//! acknowledged outward (a webhook's 2xx) before a flush.
//!
//! **Permissions.** The store holds customer data (and connector state such as a rotated refresh
//! token), so a new store directory is created `0700` and the files in it `0600`; opening an existing
//! one whose directory or files others can read logs a warning naming them (the modes are left as
//! the operator set them).
//!
//! **Storage errors.** The last storage failure (I/O, a damaged value) is kept and shown through
//! [`Store::storage_error`] (`/readyz`, `status`) until a later commit and flush succeed.
//!
//! Next to each record, in the same transaction, the store keeps its summary for the sales metrics
//! ([`crate::metrics::RecordView`], a few fields, encoded by [`format::encode_summary`]): a metrics pass scans the small `summaries` tree
//! instead of decoding every record. Summaries are rebuilt on open when their version
//! ([`crate::metrics::SUMMARY_VERSION`]) differs from the one the store recorded.

pub mod backup;
mod error;
mod filter;
pub mod format;
mod full_read;
pub mod keys;
mod permissions;
pub mod sealed;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crmsync_connectors::Cursor;
use crmsync_connectors::canonical::{CanonicalId, ConnectionId, Entity, ExternalId, Record};
use crmsync_connectors::error::chain as error_chain;
use filter::{FilterSlot, KeyKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

pub use error::StoreError;
pub use full_read::FullReadState;
pub use types::{
    Commit, ConflictEntry, ConflictValue, DeadLetter, FullReadStep, OutboxEntry, OutboxOp, SyncStatus, SyncStatusUpdate,
};

/// The format this binary writes: 3 = binary records ([`format::RECORD_V2`]) and no `ids` tree (a
/// record is found by id under its entity's key). Format 1 (JSON records) and 2 (an `ids` tree
/// written next to every new record) are migrated on open.
pub const FORMAT_VERSION: u32 = 3;

fn encode<T: Serialize>(data: &T) -> Result<Vec<u8>, StoreError> {
    Ok(format::encode_json(data, "value")?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    Ok(format::decode_json(bytes, what)?)
}

/// Decodes a `records` entry (key and value).
fn decode_record_entry(key: &[u8], bytes: &[u8]) -> Result<Record, StoreError> {
    let (_, id) = keys::decode_record(key)?;
    Ok(format::decode_record(id, bytes)?.0)
}

/// The default size of the store's page cache, MiB (`daemon.store_cache_mib`).
pub const DEFAULT_CACHE_MIB: u64 = 16;

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache in bytes. sled counts a page at its size on disk; its resident memory runs
    /// above this, and sled keeps an entry for every page of the store in memory whatever this is
    /// (about 120 MiB for a store of 1,000,000 records: README, Performance).
    pub cache_bytes: u64,
}

impl StoreOptions {
    /// Options with a page cache of `mib` MiB.
    pub fn with_cache_mib(mib: u64) -> Self {
        Self { cache_bytes: mib.saturating_mul(1024 * 1024) }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self::with_cache_mib(DEFAULT_CACHE_MIB)
    }
}

/// A handle to the store; cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Store {
    shared: std::sync::Arc<Shared>,
}

/// What every handle of one store shares.
struct Shared {
    path: PathBuf,
    options: StoreOptions,
    /// crmsync's own exclusive lock on the directory, held while any handle lives. It is taken before
    /// sled opens and released synchronously on drop, unlike sled's lock (see [`Store::open_with`]).
    /// It is kept across a reopen, so no other process can take the store meanwhile.
    _lock: std::fs::File,
    /// The open database (`None` after a reopen that failed: every operation then fails with
    /// [`StoreError::Unavailable`] until a later write reopens it).
    trees: std::sync::RwLock<Option<std::sync::Arc<Trees>>>,
    /// The last storage failure; cleared by a successful commit or flush.
    fault: std::sync::Mutex<Option<String>>,
    /// Set when a write or flush failed with an I/O error: sled then fails every later write
    /// until the database is opened again ([`Store::reopen_if_needed`], called by the writer).
    reopen: std::sync::atomic::AtomicBool,
    /// Commits hold it shared; a backup holds it exclusively, so it copies one point in time.
    gate: std::sync::RwLock<()>,
    /// The index keys the store may hold ([`filter`]): built on a thread of its own
    /// ([`Store::build_key_filter_in_background`]) or on first use.
    filter: std::sync::Mutex<FilterSlot>,
}

/// The sled database and its trees.
struct Trees {
    db: sled::Db,
    records: sled::Tree,
    summaries: sled::Tree,
    links: sled::Tree,
    match_keys: sled::Tree,
    cursors: sled::Tree,
    outbox: sled::Tree,
    conflicts: sled::Tree,
    dead_letters: sled::Tree,
    /// Index of the dead letters of pushes by connection and record (see [`Store::pushed_dead_letter`]).
    pushed_dead_letters: sled::Tree,
    status: sled::Tree,
    state: sled::Tree,
    meta: sled::Tree,
    /// Full reads in progress and the vendor ids each one saw ([`Store::full_read`]).
    full_reads: sled::Tree,
}

std::thread_local! {
    /// Set while [`catch_quietly`] runs on this thread: its panics are caught, so the hook keeps them.
    static CATCHING: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `work`, catching a panic as an error carrying its message, which is then not printed: the
/// caller reports it (a damaged store refused as corrupt), and a "thread panicked" line printed
/// before that error would read as a crash. Panics elsewhere go to the hook installed before.
fn catch_quietly<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let kept = CATCHING.with(|slot| match slot.borrow_mut().as_mut() {
                Some(message) => {
                    *message = info.to_string();
                    true
                }
                None => false,
            });
            if !kept {
                previous(info);
            }
        }));
    });
    CATCHING.with(|slot| *slot.borrow_mut() = Some(String::new()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    let message = CATCHING.with(|slot| slot.borrow_mut().take()).unwrap_or_default();
    result.map_err(|_| if message.is_empty() { "no message".to_owned() } else { message })
}

impl Trees {
    /// Opens sled in `dir` (the caller holds crmsync's lock on it).
    fn open(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = dir.to_path_buf();
        let config = sled::Config::new().path(dir).cache_capacity(options.cache_bytes).flush_every_ms(Some(500));
        // Holding our lock, no other process and no live handle has this store. sled, though, releases
        // its own lock from its IO threads a moment after the last handle of a store in this process is
        // dropped (later on a loaded machine), so its lock error is retried: yielding first, then
        // parking a millisecond at a time, for a few seconds at most.
        let (mut attempts, mut cleared) = (0, false);
        let opened = loop {
            let config = config.clone();
            // sled 0.34 can panic instead of returning an error on some damaged files.
            let opened = catch_quietly(move || config.open());
            match &opened {
                // A snapshot sled never finished writing (the disk filled, or the process was killed
                // while it wrote): sled 0.34 reads it as the newest snapshot and refuses the store.
                // It is only an index of the log, which is complete: without it sled rebuilds the
                // index from the previous snapshot and the log.
                Ok(Err(sled::Error::Corruption { .. })) if !cleared && remove_incomplete_snapshots(dir) => {
                    cleared = true;
                }
                Ok(Err(sled::Error::Io(error))) if is_lock_error(error) && attempts < LOCK_RETRIES => {
                    attempts += 1;
                    if attempts < LOCK_SPINS {
                        std::thread::yield_now();
                    } else {
                        std::thread::park_timeout(std::time::Duration::from_millis(1));
                    }
                }
                _ => break opened,
            }
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(error))) if is_lock_error(&error) => return Err(StoreError::Locked { path }),
            Ok(Err(sled::Error::Io(source))) => return Err(StoreError::Open { path, source }),
            Ok(Err(error)) => return Err(StoreError::Corrupt { path, detail: error.to_string() }),
            Err(panic) => {
                return Err(StoreError::Corrupt { path, detail: format!("sled panicked while opening: {panic}") });
            }
        };
        let tree = |name: &str| db.open_tree(name);
        Ok(Self {
            records: tree("records")?,
            summaries: tree("summaries")?,
            links: tree("links")?,
            match_keys: tree("match_keys")?,
            cursors: tree("cursors")?,
            outbox: tree("outbox")?,
            conflicts: tree("conflicts")?,
            dead_letters: tree("dead_letters")?,
            pushed_dead_letters: tree("pushed_dead_letters")?,
            status: tree("status")?,
            state: tree("state")?,
            meta: tree("meta")?,
            full_reads: tree("full_reads")?,
            db,
        })
    }
}

type Abort = ConflictableTransactionError<StoreError>;

fn abort(error: StoreError) -> Abort {
    ConflictableTransactionError::Abort(error)
}

/// Open attempts while sled's lock is still being released (see [`Store::open_with`]): the first
/// [`LOCK_SPINS`] yield, the others wait a millisecond each.
const LOCK_RETRIES: u32 = LOCK_SPINS + 3000;
/// Open attempts that only yield.
const LOCK_SPINS: u32 = 2000;
/// crmsync's lock file in the store directory.
const LOCK_FILE: &str = "crmsync.lock";
/// The file [`Store::reopen_if_needed`] writes to see whether the file system takes writes again.
const PROBE_FILE: &str = "crmsync.probe";
/// Its size: one sled segment (sled 0.34's default `segment_size`), which a reopened database may
/// need at once.
const PROBE_BYTES: usize = 512 * 1024;

impl Store {
    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`.
    ///
    /// A store another process (or a live handle in this one) holds is reported as
    /// [`StoreError::Locked`] at once.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = dir.to_path_buf();
        let created = !dir.join("db").exists();
        permissions::create_private_dir(dir).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        let lock = permissions::private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => return Err(StoreError::Open { path, source }),
        }
        let trees = Trees::open(dir, options)?;
        if created {
            // sled creates its files with the process umask; nothing else has opened them yet.
            permissions::restrict_contents(dir).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        } else {
            permissions::warn_if_readable_by_others(dir);
        }
        let store = Self {
            shared: std::sync::Arc::new(Shared {
                path,
                options: options.clone(),
                _lock: lock,
                trees: std::sync::RwLock::new(Some(std::sync::Arc::new(trees))),
                fault: std::sync::Mutex::default(),
                reopen: std::sync::atomic::AtomicBool::new(false),
                gate: std::sync::RwLock::default(),
                filter: std::sync::Mutex::default(),
            }),
        };
        let t = store.trees()?;
        match t.meta.get(keys::FORMAT_VERSION)? {
            Some(bytes) => {
                let found = bytes.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| StoreError::Corrupt {
                    path: store.shared.path.clone(),
                    detail: "unreadable format version".into(),
                })?;
                if found > FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: store.shared.path.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found < FORMAT_VERSION {
                    store.migrate(found)?;
                }
            }
            None => {
                t.meta.insert(keys::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
                t.db.flush()?;
            }
        }
        drop(t);
        store.ensure_summaries()?;
        store.ensure_pushed_dead_letter_index()?;
        Ok(store)
    }

    /// Brings a store of an older format to the current one, then records the new format version:
    /// format 1's records are rewritten in the binary encoding, and the `ids` tree of formats 1 and 2
    /// is dropped. Idempotent and resumable: killed halfway, the next open does what is left (a
    /// record's first byte tells its format).
    fn migrate(&self, from: u32) -> Result<(), StoreError> {
        let t = self.trees()?;
        let mut rewritten = 0u64;
        if from < 2 {
            rewritten = Self::rewrite_records(&t)?;
        }
        // Formats 1 and 2 kept each record's entity by id in `ids`; the id is now looked up under each
        // entity's key instead.
        t.db.drop_tree(b"ids")?;
        t.meta.insert(keys::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
        t.db.flush()?;
        tracing::info!(from, to = FORMAT_VERSION, records = rewritten, "store migrated to the current format");
        Ok(())
    }

    /// Rewrites every record stored as JSON (format 1) in the binary encoding; returns how many.
    fn rewrite_records(t: &Trees) -> Result<u64, StoreError> {
        let (mut batch, mut pending, mut rewritten) = (sled::Batch::default(), 0u64, 0u64);
        for entry in t.records.iter() {
            let (key, bytes) = entry?;
            if format::is_current_record(&bytes) {
                continue;
            }
            let (_, id) = keys::decode_record(&key)?;
            let (record, match_keys) = format::decode_record(id, &bytes)?;
            batch.insert(key, format::encode_record(&record, &match_keys));
            pending += 1;
            rewritten += 1;
            if pending == 10_000 {
                t.records.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        t.records.apply_batch(batch)?;
        Ok(rewritten)
    }

    /// Builds the index of pushed dead letters for a store written before it existed. Idempotent.
    fn ensure_pushed_dead_letter_index(&self) -> Result<(), StoreError> {
        let t = self.trees()?;
        if t.meta.get(keys::PUSHED_DEAD_LETTERS_VERSION)?.is_some() {
            return Ok(());
        }
        t.pushed_dead_letters.clear()?;
        let mut batch = sled::Batch::default();
        for entry in t.dead_letters.iter() {
            let (key, bytes) = entry?;
            let letter: DeadLetter = decode(&bytes, "dead letter")?;
            if let Some(id) = letter.canonical_id {
                batch.insert(keys::pushed_dead_letter(&letter.connection, id), key);
            }
        }
        t.pushed_dead_letters.apply_batch(batch)?;
        t.meta.insert(keys::PUSHED_DEAD_LETTERS_VERSION, b"1".as_slice())?;
        t.db.flush()?;
        Ok(())
    }

    /// Rebuilds every record's summary when the store's are of another version (or absent: a store
    /// written before summaries existed). Idempotent: killed halfway, it starts over on the next open.
    fn ensure_summaries(&self) -> Result<(), StoreError> {
        let t = self.trees()?;
        let version = format!("{}/{}", crate::metrics::SUMMARY_VERSION, format::SUMMARY_ENCODING);
        let version = version.as_bytes();
        if t.meta.get(keys::SUMMARY_VERSION)?.is_some_and(|found| found.as_ref() == version) {
            return Ok(());
        }
        t.summaries.clear()?;
        let (mut batch, mut count) = (sled::Batch::default(), 0u64);
        for entry in t.records.iter() {
            let (key, bytes) = entry?;
            let record = decode_record_entry(&key, &bytes)?;
            batch.insert(key, format::encode_summary(&crate::metrics::RecordView::of(&record)));
            count += 1;
            if count % 10_000 == 0 {
                t.summaries.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        t.summaries.apply_batch(batch)?;
        t.meta.insert(keys::SUMMARY_VERSION, version)?;
        t.db.flush()?;
        if count > 0 {
            tracing::info!(records = count, "record summaries rebuilt for the metrics");
        }
        Ok(())
    }

    /// Returns the store directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The open database, shared by the operations in flight (a reopen waits until none holds it).
    fn trees(&self) -> Result<std::sync::Arc<Trees>, StoreError> {
        let slot = self.shared.trees.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.clone().ok_or_else(|| StoreError::Unavailable {
            path: self.shared.path.clone(),
            detail: self.storage_error().unwrap_or_else(|| "it is being reopened".to_owned()),
        })
    }

    /// Opens the database again after a write failed with an I/O error, once the file system takes
    /// writes again. sled keeps the first I/O error (a full disk) and fails every later write with
    /// it until the database is reopened; reopening recovers what was flushed, exactly as a restart
    /// would: writes that were never flushed were never acknowledged (pull passes read their cursor
    /// from the store, pushes their outbox). Returns without reopening while the file system is
    /// still full or another operation still holds the database.
    ///
    /// The writer calls this before it reads anything for a group of batches, never between a read
    /// and the commit it decides: the old database still shows writes that were never flushed, and
    /// a decision read from them ("unchanged") would be committed to a database that lacks them.
    pub fn reopen_if_needed(&self) {
        use std::sync::atomic::Ordering;
        if !self.shared.reopen.load(Ordering::SeqCst) || !self.can_write_a_segment() {
            return;
        }
        let mut slot = self.shared.trees.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|trees| std::sync::Arc::strong_count(trees) > 1) {
            return;
        }
        // The last reference: dropping it closes sled (its lock is released as it finishes).
        drop(slot.take());
        match Trees::open(&self.shared.path, &self.shared.options) {
            Ok(trees) => {
                *slot = Some(std::sync::Arc::new(trees));
                self.shared.reopen.store(false, Ordering::SeqCst);
                tracing::warn!(store = %self.shared.path.display(), "store reopened after a storage failure");
            }
            Err(error) => {
                let message = error_chain(&error);
                tracing::error!(store = %self.shared.path.display(), error = %message, "store reopen failed; retried before the next write");
                *self.shared.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
            }
        }
    }

    /// Whether the store's file system takes a write of one sled segment again (a probe file,
    /// synced and removed).
    fn can_write_a_segment(&self) -> bool {
        use std::io::Write;
        let probe = self.shared.path.join(PROBE_FILE);
        let written =
            permissions::private_file_options().create(true).truncate(true).write(true).open(&probe).and_then(
                |mut file| {
                    file.write_all(&vec![0u8; PROBE_BYTES])?;
                    file.sync_all()
                },
            );
        let _ = std::fs::remove_file(&probe);
        written.is_ok()
    }

    /// Writes everything buffered to disk. Call before acknowledging anything outward.
    pub fn flush(&self) -> Result<(), StoreError> {
        let flushed = self.trees().and_then(|t| t.db.flush().map(drop).map_err(StoreError::from));
        self.observe(flushed, true)
    }

    /// Returns the last storage failure (`None`: the last commit or flush succeeded), for `/readyz`
    /// and `status`.
    pub fn storage_error(&self) -> Option<String> {
        self.shared.fault.lock().map_or_else(|poisoned| poisoned.into_inner().clone(), |fault| fault.clone())
    }

    /// Notes a storage failure in `result` (or clears the last one on a successful write); a write
    /// that failed with an I/O error asks for a reopen ([`Store::reopen_if_needed`]).
    fn observe<T>(&self, result: Result<T, StoreError>, is_write: bool) -> Result<T, StoreError> {
        if is_write && let Err(StoreError::Sled(sled::Error::Io(_))) = &result {
            self.shared.reopen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let update = match &result {
            Err(StoreError::Unavailable { .. }) => None,
            Err(error) if error.is_storage_failure() => Some(Some(error_chain(error))),
            Ok(_) if is_write => Some(None),
            _ => None,
        };
        if let Some(update) = update {
            let mut fault = self.shared.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if fault.is_some() && update.is_none() {
                tracing::info!("store writes succeed again");
            }
            *fault = update;
        }
        result
    }

    /// Applies a [`Commit`] in one transaction.
    pub fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let _gate = self.shared.gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let committed = self.commit_inner(commit);
        self.observe(committed, true)
    }

    fn commit_inner(&self, commit: Commit) -> Result<(), StoreError> {
        let t = self.trees()?;
        let trees = (
            &t.records,
            &t.summaries,
            &t.links,
            &t.match_keys,
            &t.cursors,
            &t.outbox,
            &t.conflicts,
            &t.dead_letters,
            &t.pushed_dead_letters,
            &t.status,
            &t.meta,
            &t.full_reads,
        );
        let result = trees.transaction(
            |(
                records,
                summaries,
                links,
                match_keys,
                cursors,
                outbox,
                conflicts,
                dead_letters,
                pushed_dead_letters,
                status,
                meta,
                full_reads,
            )| {
                let mut marks = full_read::Marks::default();
                if let Some(step) = &commit.full_read
                    && step.begins
                {
                    marks.begin(full_reads, step)?;
                }
                let mut added = Vec::new();
                for (record, record_keys) in &commit.records {
                    let is_new = commit.created.contains(&record.id);
                    added.clear();
                    write_record(records, summaries, links, match_keys, record, record_keys, is_new, &mut added)?;
                    for link in added.iter().filter_map(|index| record.links.get(*index)) {
                        marks.linked(full_reads, &link.connection, record.entity(), &link.external_id)?;
                    }
                }
                if let Some(step) = &commit.full_read {
                    marks.page(full_reads, step)?;
                }
                if let Some((connection, entity, cursor)) = &commit.cursor {
                    cursors.insert(keys::connection_entity(connection, *entity), encode(cursor).map_err(abort)?)?;
                }
                if !commit.outbox.is_empty() {
                    let mut sequence = meta
                        .get(keys::OUTBOX_SEQUENCE)?
                        .and_then(|bytes| bytes.as_ref().try_into().ok().map(u64::from_be_bytes))
                        .unwrap_or(0);
                    for (connection, entry) in &commit.outbox {
                        sequence += 1;
                        outbox.insert(keys::outbox(connection, sequence), encode(entry).map_err(abort)?)?;
                    }
                    meta.insert(keys::OUTBOX_SEQUENCE, &sequence.to_be_bytes())?;
                }
                for (connection, sequence) in &commit.outbox_done {
                    outbox.remove(keys::outbox(connection, *sequence))?;
                }
                for (connection, sequence, message) in &commit.outbox_retry {
                    let key = keys::outbox(connection, *sequence);
                    if let Some(bytes) = outbox.get(&key)? {
                        let mut entry: OutboxEntry = decode(&bytes, "outbox entry").map_err(abort)?;
                        entry.attempts += 1;
                        entry.last_error = Some(message.clone());
                        outbox.insert(key, encode(&entry).map_err(abort)?)?;
                    }
                }
                for (connection, sequence, hash) in &commit.outbox_sent {
                    let key = keys::outbox(connection, *sequence);
                    if let Some(bytes) = outbox.get(&key)? {
                        let mut entry: OutboxEntry = decode(&bytes, "outbox entry").map_err(abort)?;
                        if entry.sent.last() != Some(hash) {
                            entry.sent.push(hash.clone());
                            let excess = entry.sent.len().saturating_sub(OutboxEntry::SENT_KEPT);
                            entry.sent.drain(..excess);
                            outbox.insert(key, encode(&entry).map_err(abort)?)?;
                        }
                    }
                }
                for conflict in &commit.conflicts {
                    conflicts.insert(conflict.id.as_bytes(), encode(conflict).map_err(abort)?)?;
                }
                for id in &commit.conflicts_resolved {
                    if let Some(bytes) = conflicts.get(id.as_bytes())? {
                        let mut conflict: ConflictEntry = decode(&bytes, "conflict").map_err(abort)?;
                        conflict.resolved = true;
                        conflicts.insert(id.as_bytes(), encode(&conflict).map_err(abort)?)?;
                    }
                }
                for letter in &commit.dead_letters {
                    dead_letters.insert(letter.id.as_bytes(), encode(letter).map_err(abort)?)?;
                    if let Some(id) = letter.canonical_id {
                        pushed_dead_letters
                            .insert(keys::pushed_dead_letter(&letter.connection, id), letter.id.as_bytes())?;
                    }
                }
                for id in &commit.dead_letters_remove {
                    if let Some(bytes) = dead_letters.remove(id.as_bytes())? {
                        let letter: DeadLetter = decode(&bytes, "dead letter").map_err(abort)?;
                        if let Some(record) = letter.canonical_id {
                            // Only if the index still names this letter (a newer one may have replaced it).
                            let key = keys::pushed_dead_letter(&letter.connection, record);
                            if pushed_dead_letters.get(&key)?.is_some_and(|indexed| indexed.as_ref() == id.as_bytes()) {
                                pushed_dead_letters.remove(key)?;
                            }
                        } else if let Some(external) = &letter.external_id {
                            let key = keys::undecodable_dead_letter(&letter.connection, letter.entity, external);
                            if pushed_dead_letters.get(&key)?.is_some_and(|indexed| indexed.as_ref() == id.as_bytes()) {
                                pushed_dead_letters.remove(key)?;
                            }
                        }
                    }
                }
                for letter in &commit.undecodable_letters {
                    dead_letters.insert(letter.id.as_bytes(), encode(letter).map_err(abort)?)?;
                    if let Some(external) = &letter.external_id {
                        let key = keys::undecodable_dead_letter(&letter.connection, letter.entity, external);
                        if let Some(old) = pushed_dead_letters.insert(key, letter.id.as_bytes())?
                            && old.as_ref() != letter.id.as_bytes()
                        {
                            dead_letters.remove(old)?;
                        }
                    }
                }
                for (connection, entity, external) in &commit.undecodable_resolved {
                    if let Some(old) =
                        pushed_dead_letters.remove(keys::undecodable_dead_letter(connection, *entity, external))?
                    {
                        dead_letters.remove(old)?;
                    }
                }
                for update in &commit.status {
                    let (connection, entity) = match update {
                        SyncStatusUpdate::Pulled { connection, entity, .. }
                        | SyncStatusUpdate::Failed { connection, entity, .. } => (connection, *entity),
                    };
                    let key = keys::connection_entity(connection, entity);
                    let mut current: SyncStatus = match status.get(&key)? {
                        Some(bytes) => decode(&bytes, "sync status").map_err(abort)?,
                        None => SyncStatus::default(),
                    };
                    match update {
                        SyncStatusUpdate::Pulled { at, records, caught_up, .. } => {
                            current.last_success = Some(*at);
                            current.last_attempt = Some(*at);
                            current.last_error = None;
                            current.records_pulled += records;
                            current.caught_up = *caught_up;
                        }
                        SyncStatusUpdate::Failed { at, message, .. } => {
                            current.last_attempt = Some(*at);
                            current.last_error = Some(message.clone());
                        }
                    }
                    status.insert(key, encode(&current).map_err(abort)?)?;
                }
                Ok(())
            },
        );
        result.map_err(|error| match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => StoreError::Sled(error),
        })?;
        // Once applied: a lookup racing this commit may miss its keys, as if it ran just before it.
        let mut slot = self.shared.filter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *slot {
            FilterSlot::Ready(filter) => {
                for (kind, key) in index_keys_written(&commit) {
                    if !filter.may_contain(kind, &key) {
                        filter.insert(kind, &key);
                    }
                }
            }
            FilterSlot::Building(written) => written.extend(index_keys_written(&commit)),
            FilterSlot::Absent => {}
        }
        Ok(())
    }

    /// Whether the store may hold an index key (`false`: it certainly does not, no need to ask
    /// sled). While the filter is being built off the request path, every key may be held (sled
    /// answers); a store opened without that build builds the filter here, on the first lookup.
    fn may_hold(&self, t: &Trees, kind: KeyKind, key: &[u8]) -> Result<bool, StoreError> {
        let mut slot = self.shared.filter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*slot {
            FilterSlot::Ready(filter) => return Ok(filter.may_contain(kind, key)),
            FilterSlot::Building(_) => return Ok(true),
            FilterSlot::Absent => {}
        }
        let Some(filter) = Self::filter_from_trees(t, &|| true)? else { return Ok(true) };
        let answer = filter.may_contain(kind, key);
        *slot = FilterSlot::Ready(filter);
        Ok(answer)
    }

    /// Builds the index-key filter on a thread of its own, so that no lookup waits for its pass over
    /// every `links` and `match_keys` key (about 4 million keys, seconds, at 1,000,000 records): the
    /// daemon calls it when it opens the store, before the first webhook delivery or page can need
    /// it. Lookups meanwhile ask sled; keys committed meanwhile are added when the pass is done. The
    /// thread stops early once every handle of the store is dropped. Returns `None` when the filter
    /// is already built or being built.
    pub fn build_key_filter_in_background(&self) -> Option<std::thread::JoinHandle<()>> {
        let t = self.trees().ok()?;
        {
            let mut slot = self.shared.filter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !matches!(*slot, FilterSlot::Absent) {
                return None;
            }
            *slot = FilterSlot::Building(Vec::new());
        }
        let shared = std::sync::Arc::downgrade(&self.shared);
        let spawned = std::thread::Builder::new().name("crmsync-key-filter".into()).spawn(move || {
            let built = Self::filter_from_trees(&t, &|| shared.strong_count() > 0);
            drop(t);
            let Some(shared) = shared.upgrade() else { return };
            Self::finish_key_filter(&shared, built);
        });
        match spawned {
            Ok(thread) => Some(thread),
            Err(error) => {
                tracing::warn!(error = %error, "cannot start the store index filter's build: the first lookup builds it");
                *self.shared.filter.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = FilterSlot::Absent;
                None
            }
        }
    }

    /// Ends a build started by [`Store::build_key_filter_in_background`]: the keys committed while
    /// it ran are added and the filter answers from now on; a build that failed or stopped leaves it
    /// to the next lookup.
    fn finish_key_filter(shared: &Shared, built: Result<Option<filter::KeyFilter>, StoreError>) {
        let mut slot = shared.filter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = match std::mem::take(&mut *slot) {
            FilterSlot::Building(written) => written,
            // Nothing else replaces a build in progress; keep whatever is there.
            other => {
                *slot = other;
                return;
            }
        };
        match built {
            Ok(Some(mut filter)) => {
                for (kind, key) in written {
                    if !filter.may_contain(kind, &key) {
                        filter.insert(kind, &key);
                    }
                }
                *slot = FilterSlot::Ready(filter);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                "cannot build the store index filter: the first lookup builds it"
            ),
        }
    }

    /// The filter of every index key in the trees: one pass over the `links` and `match_keys` keys,
    /// a second one sized right when the store had more keys than a first layer holds. `None` when
    /// `keep_going` said to stop.
    fn filter_from_trees(t: &Trees, keep_going: &dyn Fn() -> bool) -> Result<Option<filter::KeyFilter>, StoreError> {
        let started = tokio::time::Instant::now();
        let Some(mut built) = Self::build_filter(t, 0, keep_going)? else { return Ok(None) };
        if built.1 > filter::MIN_KEYS {
            // Grown by layers while counting: one layer sized for twice as many answers faster.
            let Some(sized) = Self::build_filter(t, built.1.saturating_mul(2), keep_going)? else { return Ok(None) };
            built = sized;
        }
        let (filter, count) = built;
        if count > 0 {
            tracing::info!(
                keys = count,
                kib = filter.bytes() / 1024,
                ms = started.elapsed().as_millis() as u64,
                "store index filter built"
            );
        }
        Ok(Some(filter))
    }

    /// A filter of every `links` key and `match_keys` value prefix, sized for `keys` keys; with the
    /// number of keys added.
    fn build_filter(
        t: &Trees,
        keys: u64,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Option<(filter::KeyFilter, u64)>, StoreError> {
        /// Keys between two asks whether to go on.
        const ASK_EVERY: u64 = 4096;
        let mut filter = filter::KeyFilter::sized_for(keys);
        let (mut count, mut seen) = (0u64, 0u64);
        for key in t.links.iter().keys() {
            filter.insert(KeyKind::Link, &key?);
            count += 1;
            seen += 1;
            if seen % ASK_EVERY == 0 && !keep_going() {
                return Ok(None);
            }
        }
        for key in t.match_keys.iter().keys() {
            let key = key?;
            seen += 1;
            if seen % ASK_EVERY == 0 && !keep_going() {
                return Ok(None);
            }
            let prefix = key.len().checked_sub(16).and_then(|end| key.get(..end)).ok_or(keys::KeyError("match key"))?;
            if !filter.may_contain(KeyKind::MatchValue, prefix) {
                filter.insert(KeyKind::MatchValue, prefix);
                count += 1;
            }
        }
        Ok(Some((filter, count)))
    }

    /// Returns a record by id.
    pub fn record(&self, id: CanonicalId) -> Result<Option<Record>, StoreError> {
        let found = self.record_inner(id);
        self.observe(found, false)
    }

    fn record_inner(&self, id: CanonicalId) -> Result<Option<Record>, StoreError> {
        let t = self.trees()?;
        // The id alone does not tell the entity: one point lookup per entity, the likeliest first.
        for entity in [Entity::Order, Entity::Lead, Entity::Account, Entity::Opportunity] {
            if let Some(bytes) = t.records.get(keys::record(entity, id))? {
                return Ok(Some(format::decode_record(id, &bytes)?.0));
            }
        }
        Ok(None)
    }

    /// Returns a record of `entity` by id (one lookup; [`Store::record`] when the entity is unknown).
    pub fn record_of(&self, entity: Entity, id: CanonicalId) -> Result<Option<Record>, StoreError> {
        let found = self.trees().and_then(|t| match t.records.get(keys::record(entity, id))? {
            Some(bytes) => Ok(Some(format::decode_record(id, &bytes)?.0)),
            None => Ok(None),
        });
        self.observe(found, false)
    }

    /// Returns the record a vendor record is linked to.
    pub fn record_by_link(
        &self,
        connection: &ConnectionId,
        entity: Entity,
        external_id: &ExternalId,
    ) -> Result<Option<Record>, StoreError> {
        match self.id_by_link(connection, entity, external_id)? {
            Some(id) => self.record(id),
            None => Ok(None),
        }
    }

    /// Returns the id of the record a vendor record is linked to (the link index alone: no record
    /// is read).
    pub fn id_by_link(
        &self,
        connection: &ConnectionId,
        entity: Entity,
        external_id: &ExternalId,
    ) -> Result<Option<CanonicalId>, StoreError> {
        let t = self.trees()?;
        let key = keys::link(connection, entity, external_id);
        if !self.may_hold(&t, KeyKind::Link, &key)? {
            return Ok(None);
        }
        match t.links.get(key)? {
            Some(id) => {
                let bytes: [u8; 16] =
                    id.as_ref().try_into().map_err(|_| StoreError::Internal("bad link value".into()))?;
                Ok(Some(CanonicalId::from_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    /// Returns the ids of records indexed under a match-key value.
    pub fn ids_by_match_key(&self, entity: Entity, name: &str, value: &str) -> Result<Vec<CanonicalId>, StoreError> {
        let t = self.trees()?;
        // Point lookups (`get_gt`) instead of a prefix iterator: a value is almost always held by
        // none or one record, and setting up a sled iterator costs more than the lookups.
        let prefix = keys::match_key_prefix(entity, name, value);
        let mut ids = Vec::new();
        if !self.may_hold(&t, KeyKind::MatchValue, &prefix)? {
            return Ok(ids);
        }
        let mut after = sled::IVec::from(prefix.as_slice());
        while let Some((key, _)) = t.match_keys.get_gt(&after)? {
            if !key.starts_with(&prefix) {
                break;
            }
            ids.push(keys::decode_match_key(&key)?.3);
            after = key;
        }
        Ok(ids)
    }

    /// Iterates over every record of an entity (tombstones included), in id (creation) order.
    pub fn scan(&self, entity: Entity) -> Box<dyn Iterator<Item = Result<Record, StoreError>> + Send> {
        self.iterate(|t| {
            t.records.scan_prefix(keys::record_prefix(entity)).map(|entry| {
                let (key, bytes) = entry?;
                decode_record_entry(&key, &bytes)
            })
        })
    }

    /// An iteration over the open database that holds it until the iteration is dropped (so a
    /// reopen waits for it), ending after its first error (one error when the store is unavailable).
    fn iterate<T: Send + 'static, I>(
        &self,
        build: impl FnOnce(&Trees) -> I,
    ) -> Box<dyn Iterator<Item = Result<T, StoreError>> + Send>
    where
        I: Iterator<Item = Result<T, StoreError>> + Send + 'static,
    {
        match self.trees() {
            Ok(t) => Box::new(until_error(Holding { entries: build(&t), _trees: t })),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    }

    /// Iterates over an entity's records (tombstones included) after the one with id `after`, in id
    /// (creation) order, or, `descending`, before it from the newest: a page continues by key
    /// instead of rescanning from the start.
    pub fn scan_from(
        &self,
        entity: Entity,
        after: Option<CanonicalId>,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<Record, StoreError>> + Send> {
        use std::ops::Bound;
        let first = Bound::Included(keys::record_prefix(entity));
        let past_last = match entity.tag().checked_add(1) {
            Some(next) => Bound::Excluded(vec![next]),
            None => Bound::Unbounded,
        };
        let decode_record = |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (key, bytes) = entry?;
            decode_record_entry(&key, &bytes)
        };
        let after = after.map(|id| keys::record(entity, id));
        self.iterate(move |t| -> Box<dyn Iterator<Item = Result<Record, StoreError>> + Send> {
            match (after, descending) {
                (Some(key), false) => Box::new(t.records.range((Bound::Excluded(key), past_last)).map(decode_record)),
                (None, false) => Box::new(t.records.range((first, past_last)).map(decode_record)),
                (Some(key), true) => Box::new(t.records.range((first, Bound::Excluded(key))).rev().map(decode_record)),
                (None, true) => Box::new(t.records.range((first, past_last)).rev().map(decode_record)),
            }
        })
    }

    /// Iterates over the metrics summaries of every record of an entity (tombstones included), in id
    /// order: what [`Store::scan`] would yield, reduced to [`crate::metrics::RecordView`].
    pub fn scan_summaries(
        &self,
        entity: Entity,
    ) -> Box<dyn Iterator<Item = Result<crate::metrics::RecordView, StoreError>> + Send> {
        self.iterate(|t| {
            t.summaries.scan_prefix(keys::record_prefix(entity)).map(|entry| {
                let (_, bytes) = entry?;
                Ok(format::decode_summary(&bytes)?)
            })
        })
    }

    /// Returns the saved cursor of a connection × entity.
    pub fn cursor(&self, connection: &ConnectionId, entity: Entity) -> Result<Option<Cursor>, StoreError> {
        let t = self.trees()?;
        match t.cursors.get(keys::connection_entity(connection, entity))? {
            Some(bytes) => decode::<Option<Cursor>>(&bytes, "cursor"),
            None => Ok(None),
        }
    }

    /// Returns up to `limit` outbox entries of a connection after sequence `after`, oldest first.
    pub fn outbox_after(
        &self,
        connection: &ConnectionId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let t = self.trees()?;
        let prefix = keys::outbox_prefix(connection);
        let start = keys::outbox(connection, after.map_or(0, |sequence| sequence.saturating_add(1)));
        let mut entries = Vec::new();
        for entry in t.outbox.range(start..) {
            let (key, bytes) = entry?;
            if !key.starts_with(&prefix) || entries.len() >= limit {
                break;
            }
            let (_, sequence) = keys::decode_outbox(&key)?;
            entries.push((sequence, decode(&bytes, "outbox entry")?));
        }
        Ok(entries)
    }

    /// Removes outbox entries (nothing to push for them).
    pub fn outbox_remove(&self, connection: &ConnectionId, sequences: &[u64]) -> Result<(), StoreError> {
        let t = self.trees()?;
        let mut batch = sled::Batch::default();
        for sequence in sequences {
            batch.remove(keys::outbox(connection, *sequence));
        }
        t.outbox.apply_batch(batch)?;
        Ok(())
    }

    /// Returns how many entries wait in a connection's outbox.
    pub fn outbox_depth(&self, connection: &ConnectionId) -> Result<u64, StoreError> {
        let t = self.trees()?;
        count_keys(t.outbox.scan_prefix(keys::outbox_prefix(connection)).keys())
    }

    /// Returns a connector's saved state value.
    pub fn load_state(&self, connection: &ConnectionId, name: &str) -> Result<Option<String>, StoreError> {
        let t = self.trees()?;
        Ok(t.state.get(keys::state(connection, name))?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Saves a connector state value durably (flushed before returning).
    pub fn save_state(&self, connection: &ConnectionId, name: &str, value: &str) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.state.insert(keys::state(connection, name), value.as_bytes())?;
        t.state.flush()?;
        Ok(())
    }

    /// Saves a credential a connector must keep (a rotated refresh token), sealed with the
    /// connection's key ([`sealed`]), durably (flushed before returning).
    pub fn save_secret_state(
        &self,
        connection: &ConnectionId,
        name: &str,
        value: &str,
        key: &sealed::StateKey,
    ) -> Result<(), StoreError> {
        self.save_state(connection, name, &key.seal(connection, name, value)?)
    }

    /// Returns a credential saved by [`Store::save_secret_state`]. A value saved in plaintext by an
    /// earlier crmsync is sealed in place on the way; a sealed value that does not open with `key`
    /// (the configured credentials changed) is reported once and treated as absent.
    pub fn load_secret_state(
        &self,
        connection: &ConnectionId,
        name: &str,
        key: &sealed::StateKey,
    ) -> Result<Option<String>, StoreError> {
        let Some(stored) = self.load_state(connection, name)? else { return Ok(None) };
        if !sealed::is_sealed(&stored) {
            self.save_secret_state(connection, name, &stored, key)?;
            return Ok(Some(stored));
        }
        match key.open(connection, name, &stored) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                tracing::warn!(connection = %connection, error = %error, "ignoring the stored credential; using the configured one");
                Ok(None)
            }
        }
    }

    /// Returns the sync status of a connection × entity.
    pub fn sync_status(&self, connection: &ConnectionId, entity: Entity) -> Result<Option<SyncStatus>, StoreError> {
        let t = self.trees()?;
        t.status
            .get(keys::connection_entity(connection, entity))?
            .map(|bytes| decode(&bytes, "sync status"))
            .transpose()
    }

    /// Returns how many records of an entity a connection holds (links).
    pub fn link_count(&self, connection: &ConnectionId, entity: Entity) -> Result<u64, StoreError> {
        let t = self.trees()?;
        count_keys(t.links.scan_prefix(keys::link_prefix(connection, entity)).keys())
    }

    /// Returns the number of records per entity (tombstones included).
    ///
    /// Counts the keys of the `summaries` tree, which holds one entry under each record's key,
    /// written in the record's transaction and rebuilt on open when missing: the same count as the
    /// `records` tree's, read from about a twentieth of the bytes. sled reads a node's values with
    /// its keys, so counting the records read every stored record (1.8 GiB at 1,000,000 records):
    /// 35 MiB more resident after it at 1M in `crmsync bench`, 25 MiB at 100,000.
    pub fn counts(&self) -> Result<BTreeMap<Entity, u64>, StoreError> {
        let t = self.trees()?;
        let mut counts = BTreeMap::new();
        for entity in Entity::ALL {
            counts.insert(*entity, count_keys(t.summaries.scan_prefix(keys::record_prefix(*entity)).keys())?);
        }
        Ok(counts)
    }

    /// Returns up to `limit` dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let t = self.trees()?;
        t.dead_letters.iter().take(limit).map(|entry| decode(&entry?.1, "dead letter")).collect()
    }

    /// Returns the dead letter of the last rejected push of a record to a connection, if it waits.
    pub fn pushed_dead_letter(
        &self,
        connection: &ConnectionId,
        id: CanonicalId,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let t = self.trees()?;
        let Some(letter_id) = t.pushed_dead_letters.get(keys::pushed_dead_letter(connection, id))? else {
            return Ok(None);
        };
        t.dead_letters.get(letter_id)?.map(|bytes| decode(&bytes, "dead letter")).transpose()
    }

    /// Returns whether a record of `connection` that a pull could not decode waits in the dead-letter
    /// queue (a batch from it then removes the letters of the records it reads again).
    pub fn undecodable_letters_wait(&self, connection: &ConnectionId) -> Result<bool, StoreError> {
        let t = self.trees()?;
        Ok(t.pushed_dead_letters
            .scan_prefix(keys::undecodable_dead_letter_prefix(connection))
            .next()
            .transpose()?
            .is_some())
    }

    /// Iterates over the dead letters after the one with id `after` (all when `None`), oldest first:
    /// a page continues by key.
    pub fn dead_letters_after(
        &self,
        after: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<DeadLetter, StoreError>> + Send> {
        let start = match after {
            Some(id) => std::ops::Bound::Excluded(id.as_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.iterate(|t| {
            t.dead_letters
                .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
                .map(|entry| decode(&entry?.1, "dead letter"))
        })
    }

    /// Iterates over the conflicts after the one with id `after` (all when `None`), oldest first.
    pub fn conflicts_after(
        &self,
        after: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<ConflictEntry, StoreError>> + Send> {
        let start = match after {
            Some(id) => std::ops::Bound::Excluded(id.as_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.iterate(|t| {
            t.conflicts
                .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
                .map(|entry| decode(&entry?.1, "conflict"))
        })
    }

    /// Returns the number of dead letters.
    pub fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let t = self.trees()?;
        // Not `Tree::len`: it is `iter().count()`, which never ends on a damaged tree (see `count_keys`).
        count_keys(t.dead_letters.iter().keys())
    }

    /// Returns conflicts, oldest first (only those not yet resolved when `unresolved_only`).
    pub fn conflicts(&self, unresolved_only: bool) -> Result<Vec<ConflictEntry>, StoreError> {
        let t = self.trees()?;
        let mut found = Vec::new();
        for entry in t.conflicts.iter() {
            let conflict: ConflictEntry = decode(&entry?.1, "conflict")?;
            if !unresolved_only || !conflict.resolved {
                found.push(conflict);
            }
        }
        Ok(found)
    }

    /// Returns the store's size on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let t = self.trees()?;
        Ok(t.db.size_on_disk()?)
    }
}

/// An iteration over sled that keeps the database it reads open (see [`Store::reopen_if_needed`]).
struct Holding<I> {
    entries: I,
    _trees: std::sync::Arc<Trees>,
}

impl<I: Iterator> Iterator for Holding<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<Self::Item> {
        self.entries.next()
    }
}

/// Ends an iteration after its first error: a damaged sled iterator repeats the same error forever,
/// so a caller that skipped errors would never finish.
fn until_error<T>(entries: impl Iterator<Item = Result<T, StoreError>>) -> impl Iterator<Item = Result<T, StoreError>> {
    let mut failed = false;
    entries.map_while(move |entry| {
        if failed {
            return None;
        }
        failed = entry.is_err();
        Some(entry)
    })
}

/// Removes the snapshot files sled began but never finished (`snap.*.generating`: sled writes a
/// snapshot there, syncs it, then renames it). Returns whether it removed any.
fn remove_incomplete_snapshots(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    let mut removed = false;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") && std::fs::remove_file(entry.path()).is_ok() {
            tracing::warn!(store = %dir.display(), file = %name, "removed a store snapshot that was never finished (a full disk or a kill while it was written); the store index is rebuilt from its log");
            removed = true;
        }
    }
    removed
}

/// Counts the entries of a range, stopping at the first error. (`Iterator::count` would count the
/// errors too: a damaged sled iterator yields the same error forever, so counting it never ended.)
fn count_keys<K>(entries: impl Iterator<Item = sled::Result<K>>) -> Result<u64, StoreError> {
    let mut count = 0;
    for entry in entries {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// The index keys a commit wrote, as the filter holds them: each record's links and match-key value
/// prefixes.
fn index_keys_written(commit: &Commit) -> impl Iterator<Item = (KeyKind, Vec<u8>)> + '_ {
    commit.records.iter().flat_map(|(record, record_keys)| {
        let entity = record.entity();
        let links = record
            .links
            .iter()
            .map(move |link| (KeyKind::Link, keys::link(&link.connection, entity, &link.external_id)));
        let values = record_keys
            .iter()
            .map(move |(name, value)| (KeyKind::MatchValue, keys::match_key_prefix(entity, name, value)));
        links.chain(values)
    })
}

fn is_lock_error(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock || error.to_string().contains("lock")
}

/// Writes a record, its metrics summary and its index entries. `is_new`: the writer created the
/// record (no previous version to read for its index entries).
#[allow(clippy::too_many_arguments)]
fn write_record(
    records: &TransactionalTree,
    summaries: &TransactionalTree,
    links: &TransactionalTree,
    match_keys: &TransactionalTree,
    record: &Record,
    record_keys: &[(String, String)],
    is_new: bool,
    added_links: &mut Vec<usize>,
) -> Result<(), Abort> {
    let entity = record.entity();
    let key = keys::record(entity, record.id);
    let id_bytes = record.id.to_bytes();
    let new_links: Vec<Vec<u8>> =
        record.links.iter().map(|link| keys::link(&link.connection, entity, &link.external_id)).collect();
    let new_keys: Vec<Vec<u8>> =
        record_keys.iter().map(|(name, value)| keys::match_key(entity, name, value, record.id)).collect();
    // Index entries the previous version had and this one keeps are left alone; only the difference
    // is written (a re-read record usually changes no link and no key).
    let (mut old_links, mut old_keys) = (Vec::new(), Vec::new());
    let previous = if is_new { None } else { records.get(&key)? };
    if let Some(previous) = previous {
        let previous = format::decode_index_entries(&previous).map_err(|error| abort(error.into()))?;
        old_links = previous
            .links
            .iter()
            .map(|(connection, external_id)| keys::link(connection, entity, external_id))
            .collect();
        old_keys =
            previous.match_keys.iter().map(|(name, value)| keys::match_key(entity, name, value, record.id)).collect();
    }
    for stale in old_links.iter().filter(|old| !new_links.contains(old)) {
        links.remove(stale.as_slice())?;
    }
    for (index, added) in new_links.iter().enumerate().filter(|(_, new)| !old_links.contains(new)) {
        links.insert(added.as_slice(), &id_bytes)?;
        added_links.push(index);
    }
    for stale in old_keys.iter().filter(|old| !new_keys.contains(old)) {
        match_keys.remove(stale.as_slice())?;
    }
    for added in new_keys.iter().filter(|new| !old_keys.contains(new)) {
        match_keys.insert(added.as_slice(), &[])?;
    }
    summaries.insert(key.as_slice(), format::encode_summary(&crate::metrics::RecordView::of(record)))?;
    records.insert(key, format::encode_record(record, record_keys))?;
    Ok(())
}
