//! Store tests on a real sled database in a temporary directory.

use crmsync_connectors::Cursor;
use crmsync_connectors::canonical::{
    Account, CanonicalId, ConnectionId, Entity, EntityData, ExternalId, Link, MatchReason, Record, Timestamp,
};

use super::*;

fn account(name: &str, connection: &str, external: &str) -> Record {
    let mut record = Record::new(CanonicalId::new(), Entity::Account, Timestamp::now());
    record.data = EntityData::Account(Account { name: Some(name.into()), ..Account::default() });
    record.links.push(Link {
        connection: ConnectionId::new(connection),
        object: "Account".into(),
        external_id: ExternalId::new(external),
        last_modified: None,
        last_version: None,
        pushed_hash: None,
        matched_by: MatchReason::Created,
        extra: serde_json::Map::new(),
    });
    record
}

#[test]
fn commit_then_reopen_keeps_records_links_keys_cursor_and_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let sf = ConnectionId::new("sf");
    let record = account("Acme", "sf", "001A");
    let id = record.id;
    {
        let store = Store::open(dir.path()).unwrap();
        let mut commit = Commit::default();
        commit.records.push((record.clone(), vec![("name+domain".into(), "acme|acme.example".into())]));
        commit.cursor = Some((sf.clone(), Entity::Account, Some(Cursor::new("page-2"))));
        commit.outbox.push((
            ConnectionId::new("zoho"),
            OutboxEntry::new(Entity::Account, id, OutboxOp::Upsert, Timestamp::now()),
        ));
        store.commit(commit).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.record(id).unwrap(), Some(record.clone()));
    assert_eq!(
        store.record_by_link(&sf, Entity::Account, &ExternalId::new("001A")).unwrap().map(|found| found.id),
        Some(id)
    );
    assert_eq!(store.ids_by_match_key(Entity::Account, "name+domain", "acme|acme.example").unwrap(), vec![id]);
    assert_eq!(store.cursor(&sf, Entity::Account).unwrap(), Some(Cursor::new("page-2")));
    let pending = store.outbox_after(&ConnectionId::new("zoho"), None, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.canonical_id, id);
    assert_eq!(store.scan(Entity::Account).count(), 1);
    assert_eq!(store.scan(Entity::Order).count(), 0);
}

#[test]
fn summaries_follow_every_write_and_are_rebuilt_for_a_store_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = vec![account("Acme", "sf", "001A"), account("Globex", "sf", "001B")];
    records.sort_by_key(|record| record.id);
    let summaries = |store: &Store| -> Vec<crate::metrics::RecordView> {
        store.scan_summaries(Entity::Account).collect::<Result<_, _>>().unwrap()
    };
    let expected = |records: &[Record]| -> Vec<crate::metrics::RecordView> {
        records.iter().map(crate::metrics::RecordView::of).collect()
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let mut commit = Commit::default();
        commit.records.extend(records.iter().map(|record| (record.clone(), Vec::new())));
        store.commit(commit).unwrap();
        assert_eq!(summaries(&store), expected(&records));
        // A rewrite (here a delete) rewrites the summary in the same commit.
        records[0].deleted_at = Some(Timestamp::now());
        let mut commit = Commit::default();
        commit.records.push((records[0].clone(), Vec::new()));
        store.commit(commit).unwrap();
        assert_eq!(summaries(&store), expected(&records));
        // As a store written before summaries existed looks.
        store.trees().unwrap().summaries.clear().unwrap();
        store.trees().unwrap().meta.remove(keys::SUMMARY_VERSION).unwrap();
        store.flush().unwrap();
        assert!(summaries(&store).is_empty());
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(summaries(&store), expected(&records), "rebuilt on open");
}

#[test]
fn counts_are_the_records_of_each_entity_tombstones_included_and_after_a_summary_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let records_of = |store: &Store| -> BTreeMap<Entity, u64> {
        Entity::ALL.iter().map(|entity| (*entity, store.scan(*entity).count() as u64)).collect()
    };
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.counts().unwrap().values().all(|count| *count == 0));
        let mut deleted = account("Globex", "sf", "001B");
        deleted.deleted_at = Some(Timestamp::now());
        let mut lead = Record::new(CanonicalId::new(), Entity::Lead, Timestamp::now());
        lead.data = EntityData::Lead(Default::default());
        let mut commit = Commit::default();
        for record in [account("Acme", "sf", "001A"), deleted, account("Initech", "sf", "001C"), lead] {
            commit.records.push((record, Vec::new()));
        }
        store.commit(commit).unwrap();
        let counts = store.counts().unwrap();
        assert_eq!(counts, records_of(&store));
        assert_eq!((counts[&Entity::Account], counts[&Entity::Lead], counts[&Entity::Order]), (3, 1, 0));
        // As a store written before summaries existed looks: they are rebuilt on open.
        store.trees().unwrap().summaries.clear().unwrap();
        store.trees().unwrap().meta.remove(keys::SUMMARY_VERSION).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.counts().unwrap(), records_of(&store));
    assert_eq!(store.counts().unwrap()[&Entity::Account], 3);
}

#[test]
fn rewriting_a_record_replaces_its_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut record = account("Acme", "sf", "001A");
    let mut commit = Commit::default();
    commit.records.push((record.clone(), vec![("name".into(), "acme".into())]));
    store.commit(commit).unwrap();
    record.links[0].external_id = ExternalId::new("001B");
    let mut commit = Commit::default();
    commit.records.push((record.clone(), vec![("name".into(), "acme corp".into())]));
    store.commit(commit).unwrap();
    let sf = ConnectionId::new("sf");
    assert!(store.record_by_link(&sf, Entity::Account, &ExternalId::new("001A")).unwrap().is_none());
    assert!(store.record_by_link(&sf, Entity::Account, &ExternalId::new("001B")).unwrap().is_some());
    assert!(store.ids_by_match_key(Entity::Account, "name", "acme").unwrap().is_empty());
    assert_eq!(store.ids_by_match_key(Entity::Account, "name", "acme corp").unwrap(), vec![record.id]);
}

#[test]
fn outbox_sequences_increase_and_done_entries_leave() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let zoho = ConnectionId::new("zoho");
    for _ in 0..3 {
        let mut commit = Commit::default();
        commit.outbox.push((
            zoho.clone(),
            OutboxEntry::new(Entity::Order, CanonicalId::new(), OutboxOp::Upsert, Timestamp::now()),
        ));
        store.commit(commit).unwrap();
    }
    let pending = store.outbox_after(&zoho, None, 10).unwrap();
    let sequences: Vec<u64> = pending.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert_eq!(store.outbox_after(&zoho, Some(1), 10).unwrap().len(), 2);
    let mut commit = Commit::default();
    commit.outbox_done.push((zoho.clone(), 1));
    commit.outbox_retry.push((zoho.clone(), 2, "busy".into()));
    store.commit(commit).unwrap();
    let pending = store.outbox_after(&zoho, None, 10).unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].1.attempts, 1);
    assert_eq!(store.outbox_depth(&zoho).unwrap(), 2);
    assert_eq!(store.outbox_depth(&ConnectionId::new("zo")).unwrap(), 0);
}

#[test]
fn a_newer_format_version_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.trees().unwrap().meta.insert(keys::FORMAT_VERSION, &(FORMAT_VERSION + 1).to_be_bytes()).unwrap();
        store.flush().unwrap();
    }
    let error = Store::open(dir.path()).err().expect("newer format must be refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "has format version {}, newer than this crmsync understands ({FORMAT_VERSION}); upgrade crmsync",
            FORMAT_VERSION + 1
        )),
        "{message}"
    );
}

#[test]
fn a_store_in_use_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    // The store's lock file is an advisory lock; a second open in the same process is refused the
    // same way a second process is.
    match Store::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of a locked store succeeded"),
    }
}

#[test]
fn connector_state_and_status_persist() {
    let dir = tempfile::tempdir().unwrap();
    let sf = ConnectionId::new("sf");
    {
        let store = Store::open(dir.path()).unwrap();
        store.save_state(&sf, "refresh_token", "rotated").unwrap();
        let mut commit = Commit::default();
        commit.status.push(SyncStatusUpdate::Failed {
            connection: sf.clone(),
            entity: Entity::Lead,
            at: Timestamp::now(),
            message: "boom".into(),
        });
        store.commit(commit).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load_state(&sf, "refresh_token").unwrap().as_deref(), Some("rotated"));
    assert_eq!(store.sync_status(&sf, Entity::Lead).unwrap().unwrap().last_error.as_deref(), Some("boom"));
}

/// A copy of the format-1 store in `tests/fixtures/store-format-1` (written by the release before
/// binary records), in a temporary directory.
fn format_1_store() -> tempfile::TempDir {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-format-1");
    let dir = tempfile::tempdir().unwrap();
    for file in ["db", "conf"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn format_1_export() -> Vec<Record> {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-format-1/records.jsonl");
    std::fs::read_to_string(fixture).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn a_store_written_in_format_1_is_migrated_on_open_with_every_record_intact() {
    let dir = format_1_store();
    let expected = format_1_export();
    assert!(expected.len() > 50, "the fixture holds the whole small world");
    {
        let raw = sled::open(dir.path()).unwrap();
        let version = raw.open_tree("meta").unwrap().get(keys::FORMAT_VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), 1u32.to_be_bytes(), "the fixture is a format-1 store");
        let records = raw.open_tree("records").unwrap();
        assert!(records.iter().values().all(|value| value.unwrap().first() == Some(&b'{')), "JSON records");
    }
    let store = Store::open(dir.path()).unwrap();
    let mut migrated = Vec::new();
    for entity in Entity::ALL {
        migrated.extend(store.scan(*entity).map(Result::unwrap).filter(|record| record.merged_into.is_none()));
    }
    assert_eq!(migrated, expected, "every record reads back exactly as the old release exported it");
    for record in &expected {
        assert_eq!(store.record(record.id).unwrap().as_ref(), Some(record));
        for link in &record.links {
            let found = store.record_by_link(&link.connection, record.entity(), &link.external_id).unwrap();
            assert_eq!(found.map(|found| found.id), Some(record.id), "link index kept");
        }
    }
    let stored: Vec<sled::IVec> = store.trees().unwrap().records.iter().values().map(Result::unwrap).collect();
    assert!(stored.iter().all(|value| format::is_current_record(value)), "every record rewritten");
    assert!(!store.trees().unwrap().db.tree_names().iter().any(|name| name.as_ref() == b"ids"), "ids tree dropped");
    assert_eq!(
        store.trees().unwrap().meta.get(keys::FORMAT_VERSION).unwrap().unwrap().as_ref(),
        FORMAT_VERSION.to_be_bytes()
    );
    drop(store);
    // Reopening a migrated store changes nothing.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.scan(Entity::Order).filter(Result::is_ok).count(),
        expected.iter().filter(|record| record.entity() == Entity::Order).count()
    );
}

#[test]
fn a_migration_killed_halfway_finishes_on_the_next_open() {
    let dir = format_1_store();
    let expected = format_1_export();
    {
        // Rewrite half the records as the migration would, leaving the version at 1.
        let raw = sled::open(dir.path()).unwrap();
        let records = raw.open_tree("records").unwrap();
        let entries: Vec<(sled::IVec, sled::IVec)> = records.iter().map(Result::unwrap).collect();
        for (key, value) in entries.iter().step_by(2) {
            let (_, id) = keys::decode_record(key).unwrap();
            let (record, match_keys) = format::decode_record(id, value).unwrap();
            records.insert(key, format::encode_record(&record, &match_keys)).unwrap();
        }
        raw.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let mut migrated = Vec::new();
    for entity in Entity::ALL {
        migrated.extend(store.scan(*entity).map(Result::unwrap).filter(|record| record.merged_into.is_none()));
    }
    assert_eq!(migrated, expected);
}

#[test]
fn a_damaged_record_is_a_clean_error_not_a_panic() {
    let mut record = account("Acme", "sf", "001A");
    record.deleted_at = Some(Timestamp::now());
    let bytes = format::encode_record(&record, &[("name".into(), "acme".into())]);
    for cut in 0..bytes.len() {
        assert!(format::decode_record(record.id, &bytes[..cut]).is_err(), "cut at {cut} decoded");
    }
    let mut flipped = bytes.clone();
    for index in 0..flipped.len() {
        flipped[index] ^= 0xff;
        let _ = format::decode_record(record.id, &flipped);
        flipped[index] ^= 0xff;
    }
    assert_eq!(format::decode_record(record.id, &bytes).unwrap(), (record, vec![("name".into(), "acme".into())]));
}

#[test]
fn a_stored_credential_is_sealed_and_a_plaintext_one_from_an_earlier_release_is_sealed_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sf = ConnectionId::new("sf");
    let key = sealed::StateKey::derive(&sf, &["client", "configured-refresh-token"]);
    store.save_secret_state(&sf, "refresh_token", "5Aep861rotated", &key).unwrap();
    let raw = store.load_state(&sf, "refresh_token").unwrap().unwrap();
    assert!(!raw.contains("5Aep861rotated"), "stored in plaintext: {raw}");
    assert_eq!(store.load_secret_state(&sf, "refresh_token", &key).unwrap().as_deref(), Some("5Aep861rotated"));
    // Another key (the configured credentials changed): treated as absent, never an error.
    let other = sealed::StateKey::derive(&sf, &["client", "new-refresh-token"]);
    assert_eq!(store.load_secret_state(&sf, "refresh_token", &other).unwrap(), None);
    // A plaintext token written before sealing existed reads back and is sealed in place.
    store.save_state(&sf, "refresh_token", "legacy-token").unwrap();
    assert_eq!(store.load_secret_state(&sf, "refresh_token", &key).unwrap().as_deref(), Some("legacy-token"));
    assert!(sealed::is_sealed(&store.load_state(&sf, "refresh_token").unwrap().unwrap()));
}

#[test]
fn match_key_lookups_find_every_holder_of_a_value_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (first, second, other) = (account("A", "sf", "1"), account("B", "sf", "2"), account("C", "sf", "3"));
    let mut commit = Commit::default();
    commit.records.push((first.clone(), vec![("name".into(), "acme".into())]));
    commit.records.push((second.clone(), vec![("name".into(), "acme".into())]));
    commit.records.push((other.clone(), vec![("name".into(), "acme2".into())]));
    commit.created.extend([first.id, second.id, other.id]);
    store.commit(commit).unwrap();
    let mut expected = vec![first.id, second.id];
    expected.sort();
    assert_eq!(store.ids_by_match_key(Entity::Account, "name", "acme").unwrap(), expected);
    assert_eq!(store.ids_by_match_key(Entity::Account, "name", "acme2").unwrap(), vec![other.id]);
    assert!(store.ids_by_match_key(Entity::Account, "name", "acm").unwrap().is_empty());
    assert!(store.ids_by_match_key(Entity::Lead, "name", "acme").unwrap().is_empty());
    assert_eq!(
        store.id_by_link(&ConnectionId::new("sf"), Entity::Account, &ExternalId::new("2")).unwrap(),
        Some(second.id)
    );
}

#[test]
fn a_truncated_or_overwritten_store_file_is_a_clean_error_or_recovers_never_a_panic_or_a_spin() {
    let length = std::fs::metadata(format_1_store().path().join("db")).unwrap().len();
    // Overwritten at offsets across the whole file, then cut short at a few lengths.
    let damages = (0..length).step_by(16 * 1024).map(|offset| (offset, false)).chain([(length / 2, true), (100, true)]);
    for (at, truncate) in damages {
        let dir = format_1_store();
        let db = dir.path().join("db");
        if truncate {
            std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(at).unwrap();
        } else {
            use std::io::{Seek, Write};
            let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            file.seek(std::io::SeekFrom::Start(at)).unwrap();
            file.write_all(&[0xff; 64]).unwrap();
        }
        match Store::open(dir.path()) {
            Err(StoreError::Corrupt { detail, .. }) => {
                assert!(!detail.is_empty());
            }
            Err(other) => panic!("damage at {at}: expected a corrupt-store error, got {other}"),
            // sled recovers a log cut short (what a crash leaves) and may never read a damaged
            // region: the store opens, and every read ends, with records or an error.
            Ok(store) => {
                for entity in Entity::ALL {
                    let _ = store.scan(*entity).count();
                }
                let _ = store.counts();
            }
        }
    }
    // Which of these sled notices on open depends on where its live pages sit; what is asserted is
    // that none panics or spins (a spin would hang this test).
}

#[test]
fn a_count_ends_at_the_first_error_of_an_iterator_that_keeps_failing() {
    // A damaged sled tree's iterator yields the same error forever; `Tree::len` (`iter().count()`)
    // counted those errors without end (issue 17 §2). Every count of the store stops at the first.
    let failing = std::iter::repeat_with(|| Err::<sled::IVec, _>(sled::Error::Unsupported("damaged page".into())));
    assert!(matches!(count_keys(failing), Err(StoreError::Sled(sled::Error::Unsupported(_)))));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut commit = Commit::default();
    for index in 0..3 {
        commit.dead_letters.push(DeadLetter::new(
            ConnectionId::new("sf"),
            Entity::Account,
            None,
            Some(ExternalId::new(format!("001{index}"))),
            serde_json::json!({}),
            "undecodable".into(),
            Timestamp::now(),
        ));
    }
    store.commit(commit).unwrap();
    assert_eq!(store.dead_letter_count().unwrap(), 3);
}

#[test]
fn index_lookups_answered_from_memory_still_find_every_key_written_before_or_after_the_filter_was_built() {
    let dir = tempfile::tempdir().unwrap();
    let sf = ConnectionId::new("sf");
    let before = account("Before", "sf", "1");
    {
        let store = Store::open(dir.path()).unwrap();
        let mut commit = Commit::default();
        commit.records.push((before.clone(), vec![("name".into(), "before".into())]));
        commit.created.insert(before.id);
        store.commit(commit).unwrap();
        store.flush().unwrap();
    }
    // Reopened: the filter is built from the trees by the first lookup (a miss).
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("absent")).unwrap(), None);
    assert!(store.ids_by_match_key(Entity::Account, "name", "absent").unwrap().is_empty());
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("1")).unwrap(), Some(before.id));
    assert_eq!(store.ids_by_match_key(Entity::Account, "name", "before").unwrap(), vec![before.id]);
    // Written once the filter exists: the commit adds its keys.
    let after = account("After", "sf", "2");
    let mut commit = Commit::default();
    commit.records.push((after.clone(), vec![("name".into(), "after".into())]));
    commit.created.insert(after.id);
    store.commit(commit).unwrap();
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("2")).unwrap(), Some(after.id));
    assert_eq!(store.ids_by_match_key(Entity::Account, "name", "after").unwrap(), vec![after.id]);
    // A link moved to another record: the new key is found, the old one is gone from sled.
    let mut moved = after.clone();
    moved.links[0].external_id = ExternalId::new("3");
    let mut commit = Commit::default();
    commit.records.push((moved, vec![("name".into(), "after".into())]));
    store.commit(commit).unwrap();
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("3")).unwrap(), Some(after.id));
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("2")).unwrap(), None);
}

/// A store of `count` accounts linked to `sf` with one match key each, flushed and closed.
fn store_of_accounts(dir: &Path, count: usize) -> Vec<Record> {
    let store = Store::open(dir).unwrap();
    let mut commit = Commit::default();
    let records: Vec<Record> =
        (0..count).map(|index| account(&format!("Account {index}"), "sf", &format!("00{index}"))).collect();
    for (index, record) in records.iter().enumerate() {
        commit.records.push((record.clone(), vec![("name".into(), format!("account {index}"))]));
        commit.created.insert(record.id);
    }
    store.commit(commit).unwrap();
    store.flush().unwrap();
    records
}

fn take_filter(store: &Store) -> filter::KeyFilter {
    match std::mem::take(&mut *store.shared.filter.lock().unwrap()) {
        FilterSlot::Ready(filter) => filter,
        other => panic!("the filter is not built: {other:?}"),
    }
}

#[test]
fn a_key_filter_built_off_the_request_path_is_the_one_the_first_lookup_would_build() {
    let dir = tempfile::tempdir().unwrap();
    let sf = ConnectionId::new("sf");
    let records = store_of_accounts(dir.path(), 3000);
    let store = Store::open(dir.path()).unwrap();
    store.build_key_filter_in_background().expect("a build starts").join().unwrap();
    assert!(store.build_key_filter_in_background().is_none(), "built once");
    let in_background = take_filter(&store);
    // The slot is empty again: the next lookup builds the filter itself.
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("absent")).unwrap(), None);
    assert_eq!(take_filter(&store), in_background, "the same keys, the same bits");
    for record in records.iter().step_by(97) {
        let external = &record.links[0].external_id;
        assert_eq!(store.id_by_link(&sf, Entity::Account, external).unwrap(), Some(record.id));
    }
}

#[test]
fn keys_committed_while_the_filter_is_built_are_found_once_it_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let sf = ConnectionId::new("sf");
    let before = store_of_accounts(dir.path(), 1).remove(0);
    let store = Store::open(dir.path()).unwrap();
    // A build whose pass over the trees is over before the commit below lands.
    *store.shared.filter.lock().unwrap() = FilterSlot::Building(Vec::new());
    let built = Store::filter_from_trees(&store.trees().unwrap(), &|| true);
    let after = account("After", "sf", "2");
    let mut commit = Commit::default();
    commit.records.push((after.clone(), vec![("name".into(), "after".into())]));
    commit.created.insert(after.id);
    store.commit(commit).unwrap();
    // Meanwhile sled answers every lookup.
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("2")).unwrap(), Some(after.id));
    Store::finish_key_filter(&store.shared, built);
    assert!(matches!(*store.shared.filter.lock().unwrap(), FilterSlot::Ready(_)));
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("2")).unwrap(), Some(after.id));
    assert_eq!(store.ids_by_match_key(Entity::Account, "name", "after").unwrap(), vec![after.id]);
    assert_eq!(store.id_by_link(&sf, Entity::Account, &before.links[0].external_id).unwrap(), Some(before.id));
    assert_eq!(store.id_by_link(&sf, Entity::Account, &ExternalId::new("absent")).unwrap(), None);
}

#[test]
fn a_format_2_store_loses_its_ids_tree_and_every_record_is_still_found_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (account("A", "sf", "1"), account("B", "sf", "2"));
    {
        let store = Store::open(dir.path()).unwrap();
        let mut commit = Commit::default();
        commit.records.push((first.clone(), Vec::new()));
        commit.records.push((second.clone(), Vec::new()));
        store.commit(commit).unwrap();
        // What crmsync wrote in format 2: an `ids` tree naming each record's entity.
        let t = store.trees().unwrap();
        let ids = t.db.open_tree("ids").unwrap();
        for record in [&first, &second] {
            ids.insert(record.id.to_bytes(), &[Entity::Account.tag()]).unwrap();
        }
        t.meta.insert(keys::FORMAT_VERSION, &2u32.to_be_bytes()).unwrap();
        t.db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let t = store.trees().unwrap();
    assert_eq!(t.meta.get(keys::FORMAT_VERSION).unwrap().unwrap().as_ref(), FORMAT_VERSION.to_be_bytes());
    assert!(!t.db.tree_names().iter().any(|name| name.as_ref() == b"ids"), "ids tree dropped");
    drop(t);
    for record in [&first, &second] {
        assert_eq!(store.record(record.id).unwrap().as_ref(), Some(record));
        assert_eq!(store.record_of(Entity::Account, record.id).unwrap().as_ref(), Some(record));
        assert_eq!(store.record_of(Entity::Lead, record.id).unwrap(), None);
    }
    assert_eq!(store.record(CanonicalId::new()).unwrap(), None);
}

#[test]
fn a_snapshot_sled_never_finished_writing_does_not_make_the_store_unreadable() {
    // What a disk that filled (or a kill) while sled wrote a snapshot leaves: an empty
    // `snap.<lsn>.generating` next to the store. sled 0.34 took it for the newest snapshot and
    // refused the store as corrupt (issue 17: a sync on a full disk lost the store).
    let dir = tempfile::tempdir().unwrap();
    let record = account("Acme", "sf", "001A");
    {
        let store = Store::open(dir.path()).unwrap();
        let mut commit = Commit::default();
        commit.records.push((record.clone(), Vec::new()));
        store.commit(commit).unwrap();
        store.flush().unwrap();
    }
    std::fs::write(dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.record(record.id).unwrap(), Some(record));
    assert!(!dir.path().join("snap.7FFFFFFFFFFFFFFF.generating").exists());
}

#[test]
fn a_panic_caught_while_opening_becomes_the_errors_detail_instead_of_a_printed_crash() {
    // sled 0.34 panics on some damaged files; the panic is caught and reported as a corrupt store
    // whose detail carries sled's message (printing it first would read as a crash).
    let caught = super::catch_quietly(|| -> u32 { panic!("damaged page 7") });
    let message = caught.unwrap_err();
    assert!(message.contains("damaged page 7"), "{message}");
    assert_eq!(super::catch_quietly(|| 5), Ok(5));
}
