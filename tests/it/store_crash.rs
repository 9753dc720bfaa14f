//! The store under `kill -9`: a child process commits batches (records + the cursor naming the batch,
//! in one transaction) in a loop; it is killed at random moments, the store is reopened, and every
//! batch is either wholly present with its cursor or wholly absent. Twenty kills, one store.

use std::collections::BTreeMap;

use crmsync::store::{Commit, Store};
use crmsync_connectors::Cursor;
use crmsync_connectors::canonical::{Account, CanonicalId, ConnectionId, Entity, EntityData, Record, Timestamp};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD_DIR: &str = "CRMSYNC_CRASH_CHILD_DIR";
const RECORDS_PER_BATCH: usize = 40;

fn connection() -> ConnectionId {
    ConnectionId::new("crash")
}

fn batch_of(cursor: Option<Cursor>) -> u64 {
    cursor.and_then(|cursor| cursor.as_str().strip_prefix("batch-").and_then(|number| number.parse().ok())).unwrap_or(0)
}

/// The child: commits batches until killed (when the parent set the environment variable on this
/// process only, never through `set_var`). Run normally, it writes three batches to a temporary store
/// and checks the same invariant after reopening it.
#[test]
fn child_writer() {
    match std::env::var(CHILD_DIR) {
        Ok(dir) => write_batches(std::path::Path::new(&dir), 100_000),
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            write_batches(dir.path(), 3);
            assert_eq!(check(dir.path()), 3);
        }
    }
}

fn write_batches(dir: &std::path::Path, limit: u64) {
    let store = Store::open(dir).expect("child opens the store");
    let mut batch = batch_of(store.cursor(&connection(), Entity::Account).expect("cursor"));
    while batch < limit {
        batch += 1;
        let mut commit = Commit::default();
        for index in 0..RECORDS_PER_BATCH {
            let mut record = Record::new(CanonicalId::new(), Entity::Account, Timestamp::now());
            record.data =
                EntityData::Account(Account { name: Some(format!("batch-{batch}-{index}")), ..Account::default() });
            commit.records.push((record, vec![("batch".into(), batch.to_string())]));
        }
        commit.cursor = Some((connection(), Entity::Account, Some(Cursor::new(format!("batch-{batch}")))));
        store.commit(commit).expect("commit");
        store.flush().expect("flush");
        println!("committed {batch}");
    }
}

fn check(dir: &std::path::Path) -> u64 {
    let store = Store::open(dir).expect("the store reopens after kill -9");
    let cursor = batch_of(store.cursor(&connection(), Entity::Account).unwrap());
    let mut per_batch: BTreeMap<u64, usize> = BTreeMap::new();
    for record in store.scan(Entity::Account) {
        let EntityData::Account(account) = record.unwrap().data else { panic!("not an account") };
        let name = account.name.unwrap();
        let batch: u64 = name.split('-').nth(1).unwrap().parse().unwrap();
        *per_batch.entry(batch).or_default() += 1;
    }
    for batch in 1..=cursor {
        assert_eq!(
            per_batch.get(&batch).copied().unwrap_or(0),
            RECORDS_PER_BATCH,
            "batch {batch} (≤ cursor {cursor}) is incomplete"
        );
    }
    assert!(
        per_batch.keys().all(|batch| *batch <= cursor),
        "records beyond the cursor {cursor}: {:?}",
        per_batch.keys().next_back()
    );
    // Index entries follow their records.
    assert_eq!(
        store.ids_by_match_key(Entity::Account, "batch", &cursor.to_string()).unwrap().len(),
        if cursor == 0 { 0 } else { RECORDS_PER_BATCH }
    );
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_batches_survive_sigkill_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for round in 0..20u64 {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store_crash::child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a pseudo-random number of commits; the child is mid-way through the next one.
        let target = 1 + (round * 37 + 11) % 23;
        let mut seen = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("committed ") {
                seen += 1;
                if seen >= target {
                    break;
                }
            }
        }
        child.start_kill().unwrap();
        let _ = child.wait().await;
        let cursor = check(dir.path());
        assert!(
            cursor >= last + target,
            "committed and flushed batches were lost: cursor {cursor}, expected ≥ {}",
            last + target
        );
        last = cursor;
    }
}
